//! Reads: REST room reads, room listings and gauges.

use rollcall_engine::{Entry, UnixMs};

use super::Hub;
use crate::cluster::merge::Merge;
use crate::listing::RoomsPage;
#[cfg(test)]
use crate::protocol;

impl Hub {
    /// The live entries of `room` as a JSON array: copied under its shard's lock,
    /// serialized after.
    #[cfg(test)]
    pub fn entries_json(&self, room: &str) -> String {
        let now = UnixMs::now();
        let shard = self.lock(room);
        let entries: Vec<Entry> = shard.materializer.entries(room, now).cloned().collect();
        drop(shard);
        protocol::entries_json(entries.iter())
    }

    /// Rooms with entries, sorted by name, after `after`, at most `limit`. Takes no
    /// shard lock.
    pub fn rooms_page(&self, after: Option<&str>, limit: usize) -> RoomsPage {
        self.counts.page(after, limit)
    }

    /// Publishes gauges: rooms, entries, log size. Takes each shard's lock in turn,
    /// for O(1) each.
    pub fn record_gauges(&self) {
        let (mut rooms, mut entries, mut subscribed, mut remote) = (0, 0, 0, 0);
        for index in 0..self.shards.len() {
            let shard = self.lock_shard(index);
            rooms += shard.materializer.room_count();
            entries += shard.materializer.len();
            subscribed += shard.subscribers.len();
            remote += shard.merge.as_ref().map_or(0, Merge::remote_entries);
        }
        self.metrics.rooms.set(rooms as f64);
        self.metrics.entries.set(entries as f64);
        self.metrics.subscribed_rooms.set(subscribed as f64);
        self.metrics
            .log_failing
            .set(if self.journal.log_failing() { 1.0 } else { 0.0 });
        self.metrics
            .log_stalled
            .set(self.journal.log_stalled_for().as_secs_f64());
        if self.cluster.get().is_some() {
            self.metrics.cluster_remote_entries.set(remote as f64);
        }
    }

    /// How long the log writer has been stuck in one storage call.
    pub fn log_stalled_for(&self) -> std::time::Duration {
        self.journal.log_stalled_for()
    }

    /// The live entries of `room` this node holds, and whether they are the whole
    /// cluster's: the room is followed and synced. Otherwise they are this node's own
    /// only (a REST read asks the other nodes for theirs). Copied under the room's
    /// shard lock.
    pub fn room_entries(&self, room: &str) -> (Vec<Entry>, bool) {
        let now = UnixMs::now();
        let shard = self.lock(room);
        let complete = self.cluster.get().is_none()
            || shard
                .subscribers
                .get(room)
                .is_some_and(|feed| feed.waiting.is_none());
        let entries = shard.materializer.entries(room, now).cloned().collect();
        (entries, complete)
    }
}
