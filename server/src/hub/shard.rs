//! A shard: the rooms it owns, its lock, and what runs under it.
//!
//! Holding a shard's lock is a type, [`Locked`]: code that must run under it takes
//! `&Shard` or `&mut Shard`, which only a `Locked` hands out.

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use hashbrown::HashMap;
use rollcall_engine::{Change, Event, Leave, Materializer, Ticket, UnixMs};

use super::Hub;
use crate::cluster::RoomCommand;
use crate::cluster::merge::Merge;
use crate::fanout::{Feed, Outbox, Published, Subscription};

/// Shards per core, at least: with rooms spread by a hash, two busy rooms share a
/// shard with probability 1/shards, so a few shards per core keep collisions rare.
pub(super) const SHARDS_PER_CORE: usize = 4;
/// The fewest shards, whatever the core count (see `docs/performance.md`, "More
/// cores": collisions between busy rooms cost more than the extra, empty shards).
pub(super) const MIN_SHARDS: usize = 64;

/// How many shards a hub on this machine uses: a power of two, at least
/// [`SHARDS_PER_CORE`] per core and at least [`MIN_SHARDS`].
pub(super) fn shard_count() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cores * SHARDS_PER_CORE)
        .max(MIN_SHARDS)
        .next_power_of_two()
}

/// A room with subscribers: its feed and who reads it.
#[derive(Debug)]
pub(super) struct RoomFeed {
    /// The room's changes and subscribers, behind the room's own locks.
    pub(super) feed: Arc<Feed>,
    /// Cluster mode, until the room's first sync is done: the subscriptions waiting
    /// for their snapshot, with their outbox and the reference to acknowledge. Nothing
    /// is published on the feed meanwhile (nobody has a snapshot yet).
    pub(super) waiting: Option<Vec<Waiting>>,
}

#[derive(Debug)]
pub(super) struct Waiting {
    pub(super) subscription: Arc<Subscription>,
    pub(super) outbox: Arc<Outbox>,
    pub(super) reference: Option<u64>,
}

/// Rooms with subscribers. Room names come from clients, so the map uses a keyed
/// hasher.
type Subscribers = HashMap<Arc<str>, RoomFeed, RandomState>;

/// The rooms of one shard: everything a heartbeat, leave or sweep of them touches,
/// except the log's queue (shared, with its own lock) and the room counts (shared,
/// taken only when an entry comes or goes).
pub(super) struct Shard {
    /// This shard's rooms' entries and expiry order.
    pub(super) materializer: Materializer,
    /// Changes published under this shard's lock: serialized and their subscribers
    /// woken once it is released (see [`Locked`]).
    published: Vec<(Arc<Feed>, Arc<Published>)>,
    /// This shard's rooms with subscribers.
    pub(super) subscribers: Subscribers,
    scratch: Vec<Change>,
    /// Cluster mode: who owns which entry of this shard's followed rooms.
    pub(super) merge: Option<Merge>,
}

impl Shard {
    pub(super) fn new(materializer: Materializer) -> Shard {
        Shard {
            materializer,
            published: Vec::new(),
            subscribers: HashMap::default(),
            scratch: Vec::new(),
            merge: None,
        }
    }
}

/// A shard's lock, aligned to cache lines of its own: two busy shards next to each
/// other in [`Hub::shards`] never share a line.
#[repr(align(128))]
pub(super) struct ShardLock(pub(super) Mutex<Shard>);

/// A shard's lock, held. Code that must run under it takes `&Shard` or `&mut Shard`,
/// which only a `Locked` hands out. Releasing it records how long it was held, so a
/// serialized shard shows up in `/metrics` (`rollcall_hub_lock_hold_microseconds`),
/// and then, with the lock released, serializes the changes published meanwhile and
/// wakes their rooms' subscribers: that work is per room, under the rooms' own locks.
pub(super) struct Locked<'a> {
    /// `Some` until dropped.
    pub(super) guard: Option<MutexGuard<'a, Shard>>,
    pub(super) hub: &'a Hub,
    pub(super) since: Instant,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Shard;

    fn deref(&self) -> &Shard {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Shard {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        let published = std::mem::take(&mut guard.published);
        drop(guard);
        let metrics = &self.hub.metrics;
        metrics
            .hub_lock_hold
            .record(self.since.elapsed().as_secs_f64() * 1_000_000.0);
        for (feed, change) in published {
            change.fragment();
            let subscribers = feed.wake(change.moves_counts());
            metrics.fanout_changes.increment(subscribers as u64);
        }
    }
}

/// The shard of `room` among `shards` (a power of two), by a keyed hash.
pub(super) fn shard_index(route: &RandomState, shards: usize, room: &str) -> usize {
    // The low bits of SipHash are as good as any.
    (route.hash_one(room) as usize) & (shards - 1)
}

/// What runs under a shard's lock and needs the hub's shared parts too (the journal,
/// the counts, the cluster's links).
impl Locked<'_> {
    /// Removes `client`'s entry and logs the leave (under this lock: the log's order
    /// is the fold's). Adjusts the room's count.
    pub(super) fn leave_logged(&mut self, leave: Leave) -> Option<(Change, Ticket)> {
        let change = self.materializer.leave(&leave)?;
        let ticket = self.hub.journal.append(Event::Leave(leave));
        self.hub.counts.apply(&change);
        Some((change, ticket))
    }

    /// Folds another node's event without logging it. Adjusts the room's count.
    pub(super) fn fold_unlogged(&mut self, event: &Event) -> Option<Change> {
        let change = self.materializer.fold(event)?;
        self.hub.counts.apply(&change);
        Some(change)
    }

    /// Expires this shard's due entries and fans out their removal.
    pub(super) fn sweep(&mut self, now: UnixMs) -> usize {
        if self.materializer.next_expiry().is_none_or(|at| at >= now) {
            return 0;
        }
        let hub = self.hub;
        let shard = &mut **self.guard.as_mut().expect("held until dropped");
        shard.scratch.clear();
        let expired = shard.materializer.sweep_due(now, &mut shard.scratch);
        hub.journal.expired(&shard.scratch);
        for change in &shard.scratch {
            hub.counts.apply(change);
            fan_out(
                &shard.subscribers,
                &mut shard.published,
                change,
                &shard.materializer,
            );
            // Another node's entry expires here by its own TTL, like everywhere; only
            // this node's expiries are published.
            if let (Some(merge), Some(cluster)) = (&mut shard.merge, hub.cluster.get()) {
                if merge.expired(&change.room, change.entry.client) {
                    cluster.publish(change, &hub.metrics);
                }
            }
        }
        shard.scratch.clear();
        expired
    }

    /// A heartbeat or leave of a local client: in cluster mode the entry is this
    /// node's now, even if it was another node's before, and the other nodes hear of
    /// it.
    pub(super) fn own(&mut self, change: &Change) {
        let hub = self.hub;
        if let (Some(merge), Some(cluster)) = (&mut self.merge, hub.cluster.get()) {
            merge.owned(&change.room, change.entry.client);
            cluster.publish(change, &hub.metrics);
        }
    }

    pub(super) fn remove_subscriber(&mut self, subscription: &Arc<Subscription>) {
        let Some(room) = self.subscribers.get_mut(&*subscription.room) else {
            return;
        };
        let remaining = room.feed.remove(subscription);
        if let Some(waiting) = &mut room.waiting {
            waiting.retain(|w| !Arc::ptr_eq(&w.subscription, subscription));
        }
        if remaining > 0 {
            return;
        }
        let (name, _) = self
            .subscribers
            .remove_entry(&*subscription.room)
            .expect("the room was just found");
        let Some(merge) = &mut self.merge else {
            return;
        };
        // Nobody here follows the room any more: forget the other nodes' entries.
        for client in merge.unfollow(&name) {
            self.fold_unlogged(&Event::Leave(Leave {
                room: name.clone(),
                client,
                at: UnixMs::now(),
            }));
        }
        if let Some(cluster) = self.hub.cluster.get() {
            let _ = cluster.links.rooms.send(RoomCommand::Part { room: name });
        }
    }

    pub(super) fn fan_out(&mut self, change: &Change) {
        let shard = &mut **self.guard.as_mut().expect("held until dropped");
        fan_out(
            &shard.subscribers,
            &mut shard.published,
            change,
            &shard.materializer,
        );
    }
}

/// Publishes a change on its room's feed, if the room has subscribers (sized by the
/// room's entries, looked up only then). O(1): serializing it and waking the
/// subscribers happen once the shard's lock is released.
fn fan_out(
    subscribers: &Subscribers,
    published: &mut Vec<(Arc<Feed>, Arc<Published>)>,
    change: &Change,
    materializer: &Materializer,
) {
    let Some(room) = subscribers.get(&*change.room) else {
        return;
    };
    if room.waiting.is_some() {
        // Its subscribers get the state after the sync, in their snapshots.
        return;
    }
    let room_len = materializer.room_len(&change.room);
    let change = Published::new(change.clone());
    room.feed.publish(change.clone(), room_len);
    published.push((room.feed.clone(), change));
}
