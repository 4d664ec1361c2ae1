//! Shared state: rooms (partitioned into shards), admission, and the log they share.
//!
//! Rooms are independent, so their state is split into shards by a keyed hash of the
//! room name. Each shard (`Shard`, behind its own `std::sync::Mutex`) owns its rooms'
//! slice of the materializer, their feeds and subscribers, and their cluster merge
//! state: heartbeats, leaves and sweeps of rooms in different shards never wait for
//! each other. The log stays one ordered group-commit writer: a change is appended to
//! its queue while its shard's lock is held, so within a room the log's order is the
//! fold's. Admission (client ids, resume tokens, live sessions) has its own lock.
//! Every critical section is short and never awaits. Within a shard, a heartbeat's
//! fold, log append and publication are atomic with respect to subscribes (a
//! subscriber never misses a change between its snapshot and its first `changes`
//! frame).
//!
//! The parts, by concept:
//!
//! - this module: the [`Hub`] and what sessions and handlers ask of it (subscribe,
//!   heartbeat, leave, sweep), and the room view a snapshot is serialized from;
//! - `shard`: a shard's rooms, its lock (`Locked`) and what runs under it;
//! - `admission`: client ids, resume tokens, live sessions and kicks;
//! - `queries`: REST room reads, room listings and gauges;
//! - `cluster`: cluster mode, the glue between the shards and the merge state machine
//!   (`crate::cluster::merge`).

use std::hash::RandomState;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::time::Instant;

use bytes::Bytes;
use hashbrown::HashMap;
use rollcall_engine::{
    ClientId, Durability, Engine, Entry, Event, Heartbeat, Journal, Leave, Ticket, Ttl, UnixMs,
};
use tokio::sync::watch;

use crate::cluster::RoomCommand;
use crate::error::Result;
use crate::fanout::{Feed, Mode, Outbox, Subscription};
use crate::identity::Identity;
use crate::limits::Limits;
use crate::listing::RoomCounts;
use crate::metrics::Metrics;
use crate::protocol::{self, ErrorCode, Rejection};
use crate::sample::Samples;

mod admission;
mod cluster;
mod queries;
mod shard;

use admission::Admission;
pub use admission::Admitted;
use cluster::Cluster;
use shard::{Locked, RoomFeed, Shard, ShardLock, Waiting, shard_count, shard_index};

/// The server's shared state.
pub struct Hub {
    /// The rooms, by `shard_of(room)`.
    shards: Box<[ShardLock]>,
    /// Keys the hash that spreads rooms over shards (room names come from clients).
    route: RandomState,
    /// The log, shared by every shard.
    journal: Journal,
    admission: Mutex<Admission>,
    /// Set once, when cluster mode is turned on.
    cluster: OnceLock<Cluster>,
    /// Entries per room, for listings that take no shard lock.
    counts: Arc<RoomCounts>,
    limits: Limits,
    durability: Durability,
    durable: watch::Receiver<Ticket>,
    metrics: Metrics,
}

impl Hub {
    /// A hub over an in-memory engine with default limits and no log (benches, tests).
    pub(crate) fn in_memory(node: u16) -> Result<Hub> {
        Hub::in_memory_sharded(node, shard_count())
    }

    /// [`Hub::in_memory`] with `shards` shards (rounded up to a power of two).
    pub(crate) fn in_memory_sharded(node: u16, shards: usize) -> Result<Hub> {
        let (_, durable) = watch::channel(Ticket(0));
        Hub::with_shards(
            Engine::memory(),
            shards.max(1).next_power_of_two(),
            node,
            None,
            Limits::default(),
            durable,
            Metrics::new(),
        )
    }

    /// Wraps an opened engine: its replayed state is split into shards. `durable`
    /// follows the engine's durable watermark; `resume_secret` (shared by a cluster's
    /// nodes) signs resume tokens if given.
    pub fn new(
        engine: Engine,
        node: u16,
        resume_secret: Option<&[u8]>,
        limits: Limits,
        durable: watch::Receiver<Ticket>,
        metrics: Metrics,
    ) -> Result<Hub> {
        Hub::with_shards(
            engine,
            shard_count(),
            node,
            resume_secret,
            limits,
            durable,
            metrics,
        )
    }

    /// [`Hub::new`] with `shards` shards (a power of two).
    fn with_shards(
        engine: Engine,
        shards: usize,
        node: u16,
        resume_secret: Option<&[u8]>,
        limits: Limits,
        durable: watch::Receiver<Ticket>,
        metrics: Metrics,
    ) -> Result<Hub> {
        debug_assert!(shards.is_power_of_two());
        let (materializer, journal) = engine.into_parts();
        let identity = Identity::load(&journal, node, resume_secret)?;
        let durability = journal.durability();
        let now = UnixMs::now();
        let counts = Arc::new(RoomCounts::from_entries(materializer.rooms(now).flat_map(
            |(room, _)| {
                materializer
                    .entries(room, now)
                    .map(move |entry| (room, entry.user.as_ref()))
            },
        )));
        let route = RandomState::new();
        let parts = materializer.split(shards, |room| shard_index(&route, shards, room));
        Ok(Hub {
            shards: parts
                .into_iter()
                .map(|part| ShardLock(Mutex::new(Shard::new(part))))
                .collect(),
            route,
            journal,
            admission: Mutex::new(Admission {
                identity,
                sessions: HashMap::new(),
                next_connection: 1,
            }),
            cluster: OnceLock::new(),
            counts,
            limits,
            durability,
            durable,
            metrics,
        })
    }

    /// The shard that holds `room`.
    fn shard_of(&self, room: &str) -> usize {
        shard_index(&self.route, self.shards.len(), room)
    }

    /// Takes the lock of `room`'s shard.
    fn lock(&self, room: &str) -> Locked<'_> {
        self.lock_shard(self.shard_of(room))
    }

    /// Takes shard `index`'s lock.
    fn lock_shard(&self, index: usize) -> Locked<'_> {
        self.locked(
            self.shards[index]
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Takes shard `index`'s lock if it is free.
    fn try_lock_shard(&self, index: usize) -> Option<Locked<'_>> {
        match self.shards[index].0.try_lock() {
            Ok(guard) => Some(self.locked(guard)),
            Err(TryLockError::Poisoned(poisoned)) => Some(self.locked(poisoned.into_inner())),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn locked<'a>(&'a self, guard: MutexGuard<'a, Shard>) -> Locked<'a> {
        Locked {
            guard: Some(guard),
            hub: self,
            since: Instant::now(),
        }
    }

    /// The limits clients must respect.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The server's metrics handles.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether acks wait for the disk (`flush` mode) rather than going out at once.
    pub fn acks_wait_for_disk(&self) -> bool {
        self.durability == Durability::Flush
    }

    /// A receiver of the log's durable watermark.
    pub fn durable(&self) -> watch::Receiver<Ticket> {
        self.durable.clone()
    }

    /// Subscribes `outbox` to `room` (its changes paced to one read per `interval`, if
    /// not zero), queues the room's snapshot and then the ack of `reference`. Pass an
    /// existing subscription to re-send the snapshot. In cluster
    /// mode a room's first subscribers get their snapshot (and ack) once the other
    /// nodes' entries are in.
    pub fn subscribe(
        &self,
        room: &Arc<str>,
        outbox: &Arc<Outbox>,
        existing: Option<&Arc<Subscription>>,
        reference: Option<u64>,
        interval: std::time::Duration,
    ) -> Arc<Subscription> {
        self.subscribe_mode(room, outbox, existing, reference, interval, Mode::Full)
    }

    /// [`Hub::subscribe`], or in [`Mode::Occupancy`] a subscription to the room's counts
    /// (`occupancy` messages) instead of its entries, or in [`Mode::Sample`] to its
    /// oldest entries and its counts (see `sample.rs`).
    pub fn subscribe_mode(
        &self,
        room: &Arc<str>,
        outbox: &Arc<Outbox>,
        existing: Option<&Arc<Subscription>>,
        reference: Option<u64>,
        interval: std::time::Duration,
        mode: Mode,
    ) -> Arc<Subscription> {
        let now = UnixMs::now();
        let mut guard = self.lock(room);
        let shard = &mut *guard;
        let room_feed = match shard.subscribers.entry(room.clone()) {
            hashbrown::hash_map::Entry::Occupied(occupied) => occupied.into_mut(),
            hashbrown::hash_map::Entry::Vacant(vacant) => {
                let waiting = shard.merge.as_mut().map(|merge| {
                    let generation = merge.follow(room.clone());
                    if let Some(cluster) = self.cluster.get() {
                        let _ = cluster.links.rooms.send(RoomCommand::Join {
                            room: room.clone(),
                            generation,
                        });
                    }
                    Vec::new()
                });
                vacant.insert(RoomFeed {
                    feed: Feed::new(),
                    waiting,
                    samples: Samples::default(),
                    held: false,
                })
            }
        };
        let subscription = match (existing, mode) {
            (Some(subscription), _) => subscription.clone(),
            (None, Mode::Sample(limit)) => outbox.subscribe_sample(
                room.clone(),
                room_feed.samples.feed(room, limit, &shard.materializer),
                &room_feed.feed,
                interval,
                self.counts.clone(),
                limit,
            ),
            (None, _) => outbox.subscribe(
                room.clone(),
                room_feed.feed.clone(),
                interval,
                (mode == Mode::Occupancy).then(|| self.counts.clone()),
            ),
        };
        if let Some(waiting) = &mut room_feed.waiting {
            waiting.push(Waiting {
                subscription: subscription.clone(),
                outbox: outbox.clone(),
                reference,
            });
            return subscription;
        }
        if subscription.sample_limit().is_some() {
            let view =
                room_feed
                    .samples
                    .view(&subscription, &shard.materializer, &self.counts, now);
            drop(guard);
            view.start(&subscription, outbox, reference);
            return subscription;
        }
        let feed = room_feed.feed.clone();
        let view = RoomView::take(shard, room, &feed, now);
        drop(guard);
        start(&subscription, outbox, reference, view.snapshot(), view.head);
        subscription
    }

    /// The sample groups (distinct limits) of `room`'s sample subscriptions.
    #[cfg(test)]
    pub(crate) fn sample_groups(&self, room: &str) -> usize {
        self.lock(room)
            .subscribers
            .get(room)
            .map_or(0, |r| r.samples.groups())
    }

    /// Sends webhooks for every change of an entry from now on.
    pub fn set_webhooks(&self, sink: Arc<crate::webhooks::Sink>) {
        self.counts.set_webhooks(sink);
    }

    /// The feed of `room` while it has subscribers (for messages that go to the room's
    /// current subscribers without touching its state: broadcasts).
    pub fn feed_of(&self, room: &str) -> Option<Arc<Feed>> {
        self.lock(room)
            .subscribers
            .get(room)
            .map(|r| r.feed.clone())
    }

    /// Sends a subscription that fell behind its feed the room's current state.
    pub fn resync(&self, subscription: &Subscription) {
        self.metrics.fanout_resyncs.increment(1);
        let now = UnixMs::now();
        let shard = self.lock(&subscription.room);
        if subscription.sample_limit().is_some() {
            let Some(room) = shard.subscribers.get(&*subscription.room) else {
                return;
            };
            let view = room
                .samples
                .view(subscription, &shard.materializer, &self.counts, now);
            drop(shard);
            view.reset(subscription);
            return;
        }
        let view = RoomView::take(&shard, &subscription.room, subscription.feed(), now);
        drop(shard);
        subscription.reset(view.snapshot(), view.head);
    }

    /// Stops a subscription.
    pub fn unsubscribe(&self, outbox: &Outbox, subscription: &Arc<Subscription>) {
        self.lock(&subscription.room)
            .remove_subscriber(subscription);
        outbox.unsubscribe(subscription);
    }

    /// Upserts `client`'s entry, appends it to the log and fans the change out.
    pub fn heartbeat(
        &self,
        room: &Arc<str>,
        client: ClientId,
        user: Option<Arc<str>>,
        data: Bytes,
        ttl: Ttl,
    ) -> Result<(UnixMs, Ticket), Rejection> {
        let now = UnixMs::now();
        let mut shard = self.lock(room);
        let materializer = &shard.materializer;
        // Entries that expired within the last sweep tick still count: a room is full
        // a few milliseconds longer, and the check stays O(1).
        if materializer.get(room, client, now).is_none()
            && materializer.room_len(room) >= self.limits.max_entries_per_room
        {
            return Err(Rejection {
                code: ErrorCode::RoomFull,
                message: format!(
                    "the room already has {} entries, the limit",
                    self.limits.max_entries_per_room
                ),
                reference: None,
                room: Some(room.to_string()),
            });
        }
        let heartbeat = Heartbeat {
            room: room.clone(),
            client,
            user,
            data,
            ttl,
            at: now,
        };
        let change = shard.materializer.heartbeat(&heartbeat);
        // Under the shard's lock: the log's order is the fold's.
        let ticket = self.journal.append(Event::Heartbeat(heartbeat));
        let expires_at = change.entry.expires_at;
        self.metrics.heartbeats.increment(1);
        self.counts.apply(&change);
        shard.fan_out(&change);
        shard.own(&change);
        Ok((expires_at, ticket))
    }

    /// Removes `client`'s entry. Returns the ticket to wait for before answering: the
    /// leave's own or, if the client had no entry, the latest write's (the entry may
    /// be gone by a write that is not durable yet, on this connection or another, so
    /// the answer must not pass it); `None` when there is nothing to wait for.
    pub fn leave(&self, room: &Arc<str>, client: ClientId) -> Option<Ticket> {
        let mut shard = self.lock(room);
        let Some((change, ticket)) = shard.leave_logged(Leave {
            room: room.clone(),
            client,
            at: UnixMs::now(),
        }) else {
            let latest = self.journal.last_ticket();
            return (latest > *self.durable.borrow()).then_some(latest);
        };
        self.metrics.leaves.increment(1);
        shard.fan_out(&change);
        shard.own(&change);
        Some(ticket)
    }

    /// Whether `client` holds a live entry in `room`.
    pub fn holds_entry(&self, room: &str, client: ClientId) -> bool {
        self.lock(room)
            .materializer
            .get(room, client, UnixMs::now())
            .is_some()
    }

    /// Expires due entries and fans out their removal, one shard at a time. A shard
    /// whose lock is busy is swept after the others. Returns how many expired.
    pub fn sweep(&self, now: UnixMs) -> usize {
        let mut expired = 0;
        let mut busy = Vec::new();
        for index in 0..self.shards.len() {
            match self.try_lock_shard(index) {
                Some(mut shard) => expired += shard.sweep(now),
                None => busy.push(index),
            }
        }
        for index in busy {
            expired += self.lock_shard(index).sweep(now);
        }
        self.metrics.expirations.increment(expired as u64);
        expired
    }

    /// Flushes the log and waits for it (blocking).
    pub fn sync(&self) -> Result<bool> {
        Ok(self.journal.sync()?)
    }

    /// Closes the engine if this is the last handle; otherwise only flushes.
    pub fn close(self: Arc<Hub>) -> Result<()> {
        match Arc::try_unwrap(self) {
            Ok(hub) => hub.journal.close()?,
            Err(hub) => {
                tracing::warn!("connections still hold the engine; flushing without closing");
                hub.sync()?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("shards", &self.shards.len())
            .field("limits", &self.limits)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// A room's live entries, copied under its shard's lock together with its feed's
/// head: nothing was published between the two. Serializing it (O(entries)) happens
/// after the lock is released.
#[derive(Debug)]
struct RoomView {
    room: Arc<str>,
    now: UnixMs,
    entries: Vec<Entry>,
    head: u64,
}

impl RoomView {
    /// Copies `room`'s entries (each a few reference counts) and takes `feed`'s head.
    /// Taking `&Shard` means taking it under the shard's lock.
    fn take(shard: &Shard, room: &Arc<str>, feed: &Feed, now: UnixMs) -> RoomView {
        RoomView {
            room: room.clone(),
            now,
            entries: shard.materializer.entries(room, now).cloned().collect(),
            head: feed.head(),
        }
    }

    /// The `snapshot` message.
    fn snapshot(&self) -> String {
        protocol::snapshot(&self.room, self.now, &self.entries)
    }
}

/// Queues a subscription's snapshot (taken with the feed's head) and then the ack of
/// its `subscribe`.
fn start(
    subscription: &Subscription,
    outbox: &Outbox,
    reference: Option<u64>,
    snapshot: String,
    head: u64,
) {
    subscription.reset(snapshot, head);
    if let Some(reference) = reference {
        outbox.push_control(protocol::ack(reference, None));
    }
}

#[cfg(test)]
mod tests;
