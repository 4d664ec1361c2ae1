//! `GET /v1/rooms` from maintained counts: every change of an entry adjusts its room's
//! count in a sorted map behind its own lock, so listing a page costs O(log rooms +
//! page) and never takes a room shard's lock. Only changes that add or remove an entry
//! take this lock; a heartbeat that updates its entry does not.
//!
//! A count includes entries that expired but that no sweep has removed yet (at most
//! one tick, `--tick-ms`, after their expiry).

use std::collections::BTreeMap;
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

/// Entries per room, for rooms that hold any.
#[derive(Debug, Default)]
pub(crate) struct RoomCounts {
    counts: Mutex<BTreeMap<Arc<str>, usize>>,
    /// Webhooks: told of every change with the room's count after it.
    webhooks: OnceLock<Arc<crate::webhooks::Sink>>,
}

impl RoomCounts {
    /// Counts taken from a listing of rooms and their entries (after a replay).
    pub(crate) fn from_rooms<'a>(rooms: impl IntoIterator<Item = (&'a Arc<str>, usize)>) -> Self {
        RoomCounts {
            counts: Mutex::new(
                rooms
                    .into_iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(room, n)| (room.clone(), n))
                    .collect(),
            ),
            webhooks: OnceLock::new(),
        }
    }

    /// Sends webhooks from now on.
    pub(crate) fn set_webhooks(&self, sink: Arc<crate::webhooks::Sink>) {
        let _ = self.webhooks.set(sink);
    }

    /// Folds a change of an entry: an insert adds one, a removal takes one.
    pub(crate) fn apply(&self, change: &Change) {
        if change.kind == ChangeKind::Update {
            // The common heartbeat: no count moves, so the lock is not taken.
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let after = match change.kind {
            ChangeKind::Insert => {
                let n = counts.entry(change.room.clone()).or_default();
                *n += 1;
                *n
            }
            ChangeKind::Update => return,
            ChangeKind::Leave | ChangeKind::Expire => {
                let Some(n) = counts.get_mut(&*change.room) else {
                    return;
                };
                *n -= 1;
                let after = *n;
                if after == 0 {
                    counts.remove(&*change.room);
                }
                after
            }
        };
        // Under the counts' lock: events leave in the order the counts changed.
        if let Some(webhooks) = self.webhooks.get() {
            webhooks.change(change, after);
        }
        drop(counts);
    }

    /// Rooms after `after` (by name), at most `limit` (at least one).
    pub(crate) fn page(&self, after: Option<&str>, limit: usize) -> RoomsPage {
        let limit = limit.max(1);
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut rooms: Vec<(String, usize)> = counts
            .range::<str, _>((start, Bound::Unbounded))
            .take(limit + 1)
            .map(|(room, n)| (room.to_string(), *n))
            .collect();
        drop(counts);
        let next = (rooms.len() > limit).then(|| rooms[limit - 1].0.clone());
        rooms.truncate(limit);
        RoomsPage { rooms, next }
    }
}
