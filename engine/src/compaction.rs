//! Which records the log still needs.
//!
//! The writer keeps, for every (room, client) key, where its latest event lives, and
//! for every record how many of its events are still the latest for their key. Two
//! rules keep the log small without ever changing what a replay yields:
//!
//! 1. A record whose every event has been superseded by a later event for the same key
//!    is deleted, wherever it sits in the log: replay keeps only the last event per key,
//!    so superseded events never matter.
//! 2. When the log holds more than twice its live bytes (plus some slack), the oldest
//!    record is rewritten: its events that are still the live latest for their key are
//!    copied into the next record, and the record is deleted in the same atomic batch.
//!    A leave or an expired heartbeat in the oldest record is simply dropped, which is
//!    safe only there: no older record can hold an event it would have to hide.

use std::collections::BTreeMap;
use std::hash::RandomState;
use std::sync::Arc;

use hashbrown::HashMap;

use crate::event::Event;
use crate::types::{ClientId, Seq};

/// The identity of an entry: replay keeps the last event per key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) room: Arc<str>,
    pub(crate) client: ClientId,
}

impl Key {
    pub(crate) fn of(event: &Event) -> Key {
        Key {
            room: event.room().clone(),
            client: event.client(),
        }
    }
}

/// Where the latest event of a key lives.
#[derive(Clone, Copy, Debug)]
struct Latest {
    seq: Seq,
    size: u32,
    /// A heartbeat not yet known to have expired. Leaves are never live: they are kept
    /// only to hide older events of their key.
    live: bool,
}

#[derive(Clone, Copy, Debug)]
struct RecordMeta {
    events: u32,
    superseded: u32,
    bytes: u64,
}

/// An event as the index sees it: its key, encoded size and whether it makes an entry
/// live.
#[derive(Debug)]
pub(crate) struct Indexed {
    pub(crate) key: Key,
    pub(crate) size: u32,
    pub(crate) live: bool,
}

/// Bookkeeping of live and dead bytes in the log.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Keys come from client-chosen room names: keyed hasher.
    latest: HashMap<Key, Latest, RandomState>,
    records: BTreeMap<Seq, RecordMeta>,
    total_bytes: u64,
    live_bytes: u64,
    /// Records found fully superseded, to delete with the next batch.
    dead: Vec<Seq>,
}

impl Index {
    /// Registers a record that is now in the log, in sequence order.
    pub(crate) fn add_record(&mut self, seq: Seq, bytes: u64, events: Vec<Indexed>) {
        self.records.insert(
            seq,
            RecordMeta {
                events: u32::try_from(events.len()).unwrap_or(u32::MAX),
                superseded: 0,
                bytes,
            },
        );
        self.total_bytes += bytes;
        for event in events {
            if event.live {
                self.live_bytes += u64::from(event.size);
            }
            let latest = Latest {
                seq,
                size: event.size,
                live: event.live,
            };
            if let Some(old) = self.latest.insert(event.key, latest) {
                self.supersede(old);
            }
        }
        if events_all_superseded(&self.records, seq) {
            self.dead.push(seq);
        }
    }

    fn supersede(&mut self, old: Latest) {
        if old.live {
            self.live_bytes -= u64::from(old.size);
        }
        if let Some(meta) = self.records.get_mut(&old.seq) {
            meta.superseded += 1;
            if meta.superseded == meta.events {
                self.dead.push(old.seq);
            }
        }
    }

    /// The entry of `key` expired: its bytes no longer count as live.
    pub(crate) fn mark_expired(&mut self, key: &Key) {
        if let Some(latest) = self.latest.get_mut(key) {
            if latest.live {
                latest.live = false;
                self.live_bytes -= u64::from(latest.size);
            }
        }
    }

    /// Whether `key`'s latest event is in record `seq` and is a live heartbeat.
    pub(crate) fn is_live_latest(&self, key: &Key, seq: Seq) -> bool {
        self.latest
            .get(key)
            .is_some_and(|latest| latest.seq == seq && latest.live)
    }

    /// Removes a deleted record. `dropped` are keys whose latest event was in it and
    /// was not copied forward: they no longer have any event in the log.
    pub(crate) fn remove_record(&mut self, seq: Seq, dropped: &[Key]) {
        if let Some(meta) = self.records.remove(&seq) {
            self.total_bytes -= meta.bytes;
        }
        for key in dropped {
            if let Some(latest) = self.latest.get(key) {
                if latest.seq == seq {
                    if latest.live {
                        self.live_bytes -= u64::from(latest.size);
                    }
                    self.latest.remove(key);
                }
            }
        }
    }

    /// Records found fully superseded since the last call.
    pub(crate) fn take_dead(&mut self) -> Vec<Seq> {
        std::mem::take(&mut self.dead)
    }

    /// Whether the log holds more than twice its live bytes plus `slack`.
    pub(crate) fn needs_compaction(&self, slack: u64, reclaiming: u64) -> bool {
        self.total_bytes.saturating_sub(reclaiming) > 2 * self.live_bytes + slack
    }

    /// The oldest records, in order, with their sizes.
    pub(crate) fn oldest(&self) -> impl Iterator<Item = (Seq, u64)> + '_ {
        self.records.iter().map(|(&seq, meta)| (seq, meta.bytes))
    }

    pub(crate) fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub(crate) fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    pub(crate) fn record_count(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn last_seq(&self) -> Option<Seq> {
        self.records.keys().next_back().copied()
    }
}

fn events_all_superseded(records: &BTreeMap<Seq, RecordMeta>, seq: Seq) -> bool {
    records
        .get(&seq)
        .is_some_and(|meta| meta.superseded == meta.events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(client: u64) -> Key {
        Key {
            room: "r".into(),
            client: ClientId(client),
        }
    }

    fn ev(client: u64, live: bool) -> Indexed {
        Indexed {
            key: key(client),
            size: 10,
            live,
        }
    }

    #[test]
    fn superseded_records_die() {
        let mut index = Index::default();
        index.add_record(Seq(1), 25, vec![ev(1, true), ev(2, true)]);
        index.add_record(Seq(2), 15, vec![ev(1, true)]);
        assert!(index.take_dead().is_empty());
        assert_eq!(index.live_bytes(), 20);
        index.add_record(Seq(3), 15, vec![ev(2, false)]);
        assert_eq!(index.take_dead(), vec![Seq(1)]);
        assert_eq!(index.live_bytes(), 10);
        index.remove_record(Seq(1), &[]);
        assert_eq!(index.total_bytes(), 30);
    }

    #[test]
    fn empty_record_is_dead_at_once() {
        let mut index = Index::default();
        index.add_record(Seq(1), 9, vec![]);
        assert_eq!(index.take_dead(), vec![Seq(1)]);
    }

    #[test]
    fn expiry_and_drop_release_live_bytes() {
        let mut index = Index::default();
        index.add_record(Seq(1), 30, vec![ev(1, true), ev(2, true)]);
        index.mark_expired(&key(1));
        index.mark_expired(&key(1));
        assert_eq!(index.live_bytes(), 10);
        assert!(!index.is_live_latest(&key(1), Seq(1)));
        assert!(index.is_live_latest(&key(2), Seq(1)));
        assert!(index.needs_compaction(0, 0));
        index.remove_record(Seq(1), &[key(1), key(2)]);
        assert_eq!(index.live_bytes(), 0);
        assert_eq!(index.total_bytes(), 0);
        assert_eq!(index.record_count(), 0);
    }
}
