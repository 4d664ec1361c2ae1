//! `GET /v1/rooms` from maintained counts: every change of an entry adjusts its room's
//! count in a sorted map behind its own lock, so listing a page costs O(log rooms +
//! page) and never takes a room shard's lock. Only changes that add or remove an entry
//! take this lock; a heartbeat that updates its entry does not.
//!
//! Each room also counts its entries per user (`userId`), so a user's first entry
//! and last entry are seen where they happen, in O(1): webhooks' `user.joined` /
//! `user.left` and occupancy counts come from here. Entries without a user are
//! counted as entries, not as users. In a cluster these are the entries this node
//! holds: its own, and the other nodes' in the rooms it follows.
//!
//! A count includes entries that expired but that no sweep has removed yet (at most
//! one tick, `--tick-ms`, after their expiry).

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use rollcall_engine::{Change, ChangeKind};

/// A page of `GET /v1/rooms`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RoomsPage {
    /// Rooms with their entry counts, sorted by name.
    pub(crate) rooms: Vec<(String, usize)>,
    /// The cursor for the next page.
    pub(crate) next: Option<String>,
}

/// One room's counts.
#[derive(Debug, Default)]
struct Counted {
    /// Its entries.
    entries: usize,
    /// Its entries per user, for users with any.
    users: HashMap<Arc<str>, usize>,
}

impl Counted {
    /// Counts one more entry; true if it is `user`'s first.
    fn add(&mut self, user: Option<&Arc<str>>) -> bool {
        self.entries += 1;
        user.is_some_and(|user| {
            let n = self.users.entry(user.clone()).or_default();
            *n += 1;
            *n == 1
        })
    }

    /// Counts one entry fewer; true if it was `user`'s last.
    fn remove(&mut self, user: Option<&Arc<str>>) -> bool {
        self.entries = self.entries.saturating_sub(1);
        let Some(user) = user else { return false };
        let Some(n) = self.users.get_mut(&**user) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            self.users.remove(&**user);
            return true;
        }
        false
    }
}

/// Entries (and users) per room, for rooms that hold any.
#[derive(Debug, Default)]
pub(crate) struct RoomCounts {
    counts: Mutex<BTreeMap<Arc<str>, Counted>>,
    /// Webhooks: told of every change with the room's count after it.
    webhooks: OnceLock<Arc<crate::webhooks::Sink>>,
}

impl RoomCounts {
    /// Counts taken from the rooms' entries (after a replay).
    pub(crate) fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a Arc<str>, Option<&'a Arc<str>>)>,
    ) -> Self {
        let mut counts: BTreeMap<Arc<str>, Counted> = BTreeMap::new();
        for (room, user) in entries {
            counts.entry(room.clone()).or_default().add(user);
        }
        RoomCounts {
            counts: Mutex::new(counts),
            webhooks: OnceLock::new(),
        }
    }

    /// Sends webhooks from now on.
    pub(crate) fn set_webhooks(&self, sink: Arc<crate::webhooks::Sink>) {
        let _ = self.webhooks.set(sink);
    }

    /// Folds a change of an entry: an insert adds one, a removal takes one.
    pub(crate) fn apply(&self, change: &Change) {
        self.count(change, true);
    }

    /// Folds the removal of an entry this node stops holding without it having
    /// left (another node's entry, in a room this node stops following): counted,
    /// but no webhook event.
    pub(crate) fn forget(&self, change: &Change) {
        self.count(change, false);
    }

    fn count(&self, change: &Change, notify: bool) {
        if change.kind == ChangeKind::Update {
            // The common heartbeat: no count moves, so the lock is not taken.
            return;
        }
        let user = change.entry.user.as_ref();
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let (after, user_edge) = match change.kind {
            ChangeKind::Insert => {
                let room = counts.entry(change.room.clone()).or_default();
                let first = room.add(user);
                (room.entries, first)
            }
            ChangeKind::Update => return,
            ChangeKind::Leave | ChangeKind::Expire => {
                let Some(room) = counts.get_mut(&*change.room) else {
                    return;
                };
                let last = room.remove(user);
                let after = room.entries;
                if after == 0 {
                    counts.remove(&*change.room);
                }
                (after, last)
            }
        };
        // Under the counts' lock: events leave in the order the counts changed.
        if let Some(webhooks) = self.webhooks.get().filter(|_| notify) {
            webhooks.change(change, after, user_edge);
        }
        drop(counts);
    }

    /// `room`'s entries and users (zero and zero for a room without entries).
    pub(crate) fn occupancy(&self, room: &str) -> (usize, usize) {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts
            .get(room)
            .map_or((0, 0), |room| (room.entries, room.users.len()))
    }

    /// Rooms after `after` (by name), at most `limit` (at least one).
    pub(crate) fn page(&self, after: Option<&str>, limit: usize) -> RoomsPage {
        let limit = limit.max(1);
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut rooms: Vec<(String, usize)> = counts
            .range::<str, _>((start, Bound::Unbounded))
            .take(limit + 1)
            .map(|(room, n)| (room.to_string(), n.entries))
            .collect();
        drop(counts);
        let next = (rooms.len() > limit).then(|| rooms[limit - 1].0.clone());
        rooms.truncate(limit);
        RoomsPage { rooms, next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_engine::{ClientId, Entry, UnixMs};

    fn change(kind: ChangeKind, client: u64, user: Option<&str>) -> Change {
        Change {
            room: "r".into(),
            kind,
            entry: Entry {
                client: ClientId(client),
                user: user.map(Arc::from),
                data: bytes::Bytes::from_static(b"1"),
                expires_at: UnixMs(1),
            },
        }
    }

    #[test]
    fn users_are_counted_once_across_their_entries() {
        let counts = RoomCounts::default();
        counts.apply(&change(ChangeKind::Insert, 1, Some("alice")));
        counts.apply(&change(ChangeKind::Insert, 2, Some("alice")));
        counts.apply(&change(ChangeKind::Insert, 3, None));
        assert_eq!(counts.occupancy("r"), (3, 1));
        // A refresh moves nothing.
        counts.apply(&change(ChangeKind::Update, 1, Some("alice")));
        assert_eq!(counts.occupancy("r"), (3, 1));
        counts.apply(&change(ChangeKind::Leave, 1, Some("alice")));
        assert_eq!(counts.occupancy("r"), (2, 1));
        counts.apply(&change(ChangeKind::Expire, 2, Some("alice")));
        assert_eq!(counts.occupancy("r"), (1, 0));
        counts.apply(&change(ChangeKind::Leave, 3, None));
        assert_eq!(counts.occupancy("r"), (0, 0));
        assert!(counts.page(None, 10).rooms.is_empty());
    }

    #[test]
    fn forgotten_entries_are_counted_out() {
        let counts = RoomCounts::default();
        counts.apply(&change(ChangeKind::Insert, 1, Some("alice")));
        counts.apply(&change(ChangeKind::Insert, 2, Some("bob")));
        counts.forget(&change(ChangeKind::Leave, 2, Some("bob")));
        assert_eq!(counts.occupancy("r"), (1, 1));
        counts.forget(&change(ChangeKind::Leave, 1, Some("alice")));
        assert_eq!(counts.occupancy("r"), (0, 0));
        assert!(counts.page(None, 10).rooms.is_empty());
    }

    #[test]
    fn counts_from_a_replay_match_the_entries() {
        let (room, alice, bob): (Arc<str>, Arc<str>, Arc<str>) =
            ("r".into(), "alice".into(), "bob".into());
        let counts = RoomCounts::from_entries([
            (&room, Some(&alice)),
            (&room, Some(&alice)),
            (&room, Some(&bob)),
            (&room, None),
        ]);
        assert_eq!(counts.occupancy("r"), (4, 2));
        assert_eq!(counts.page(None, 10).rooms, vec![("r".to_owned(), 4)]);
    }
}
