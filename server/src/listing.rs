//! `GET /v1/rooms` from maintained counts: every change of an entry adjusts its room's
//! count in a sorted map behind its own lock, so listing a page costs O(log rooms +
//! page) and never takes a room shard's lock. Only changes that add or remove an entry
//! take this lock; a heartbeat that updates its entry does not.
//!
//! A count includes entries that expired but that no sweep has removed yet (at most
//! one tick, `--tick-ms`, after their expiry).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, PoisonError};

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
        }
    }

    /// Folds a change of an entry: an insert adds one, a removal takes one.
    pub(crate) fn apply(&self, change: &Change) {
        if change.kind == ChangeKind::Update {
            // The common heartbeat: no count moves, so the lock is not taken.
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        match change.kind {
            ChangeKind::Insert => *counts.entry(change.room.clone()).or_default() += 1,
            ChangeKind::Update => {}
            ChangeKind::Leave | ChangeKind::Expire => {
                if let Some(n) = counts.get_mut(&*change.room) {
                    *n -= 1;
                    if *n == 0 {
                        counts.remove(&*change.room);
                    }
                }
            }
        }
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
