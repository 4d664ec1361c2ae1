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
use crate::fanout::{Feed, Outbox, Subscription};
use crate::identity::Identity;
use crate::limits::Limits;
use crate::listing::RoomCounts;
use crate::metrics::Metrics;
use crate::protocol::{self, ErrorCode, Rejection};

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
        self.subscribe_mode(room, outbox, existing, reference, interval, false)
    }

    /// [`Hub::subscribe`], or with `occupancy` a subscription to the room's counts
    /// (`occupancy` messages) instead of its entries.
    pub fn subscribe_mode(
        &self,
        room: &Arc<str>,
        outbox: &Arc<Outbox>,
        existing: Option<&Arc<Subscription>>,
        reference: Option<u64>,
        interval: std::time::Duration,
        occupancy: bool,
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
                })
            }
        };
        let subscription = match existing {
            Some(subscription) => subscription.clone(),
            None => outbox.subscribe(
                room.clone(),
                room_feed.feed.clone(),
                interval,
                occupancy.then(|| self.counts.clone()),
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
        let feed = room_feed.feed.clone();
        let view = RoomView::take(shard, room, &feed, now);
        drop(guard);
        start(&subscription, outbox, reference, view.snapshot(), view.head);
        subscription
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
mod tests {
    use std::time::{Duration, Instant};

    use rollcall_engine::{Change, ChangeKind, Entry};

    use super::shard::{MIN_SHARDS, SHARDS_PER_CORE};
    use super::*;
    use crate::cluster::{self, Outgoing, RemoteChange, SyncReply, decode_change, encode_change};
    use crate::fanout::Drained;

    const ROOM: &str = "room";
    const NOW: UnixMs = UnixMs(1_000_000);

    fn clustered() -> (Hub, tokio::sync::mpsc::Receiver<Outgoing>) {
        let hub = Hub::in_memory(1).unwrap();
        let (links, changes, rooms) = cluster::links();
        // Joins and parts are not followed here: the tests play the cluster task.
        drop(rooms);
        hub.enable_cluster(1, links);
        (hub, changes)
    }

    fn frames(outbox: &Outbox) -> Vec<String> {
        let mut out = Drained::default();
        outbox.drain(Ticket(u64::MAX), NOW, Instant::now(), &mut out);
        out.frames.iter().map(ToString::to_string).collect()
    }

    fn remote(node: u16, seq: u64, client: u64, kind: ChangeKind) -> RemoteChange {
        let change = Change {
            room: ROOM.into(),
            kind,
            entry: Entry {
                client: ClientId(client),
                user: None,
                data: Bytes::from_static(b"{}"),
                expires_at: UnixMs(NOW.0 + 60_000),
            },
        };
        decode_change(&encode_change(node, seq, NOW, &change)).unwrap()
    }

    fn clients(hub: &Hub) -> Vec<u64> {
        let shard = hub.lock(ROOM);
        let mut ids: Vec<u64> = shard
            .materializer
            .entries(ROOM, NOW)
            .map(|e| e.client.0)
            .collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn the_first_snapshot_waits_for_the_sync_and_the_ack_follows_it() {
        let (hub, _changes) = clustered();
        let room: Arc<str> = ROOM.into();
        let outbox = Arc::new(Outbox::new());
        hub.subscribe(&room, &outbox, None, Some(7), Duration::ZERO);
        assert!(frames(&outbox).is_empty(), "no snapshot before the sync");
        let reply = SyncReply {
            node: 2,
            seq: 5,
            entries: vec![Entry {
                client: ClientId(9),
                user: None,
                data: Bytes::from_static(b"1"),
                expires_at: UnixMs(NOW.0 + 1_000),
            }],
        };
        hub.sync_finished(&room, 1, vec![reply], true, NOW);
        let sent = frames(&outbox);
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(
            sent[0].starts_with("{\"type\":\"snapshot\"") && sent[0].contains("\"clientId\":9")
        );
        assert!(sent[1].contains("\"ref\":7"), "{sent:?}");
    }

    #[test]
    fn old_messages_never_undo_newer_ones() {
        let (hub, _changes) = clustered();
        let room: Arc<str> = ROOM.into();
        let outbox = Arc::new(Outbox::new());
        hub.subscribe(&room, &outbox, None, None, Duration::ZERO);
        hub.sync_started(&room, 1);
        // During the sync: client 5 arrives (seq 10) and client 6 leaves (seq 12).
        hub.apply_remote(&room, 1, remote(2, 10, 5, ChangeKind::Insert), NOW)
            .unwrap();
        hub.apply_remote(&room, 1, remote(2, 11, 6, ChangeKind::Insert), NOW)
            .unwrap();
        hub.apply_remote(&room, 1, remote(2, 12, 6, ChangeKind::Leave), NOW)
            .unwrap();
        // A reply taken at seq 9 lists 6 but not 5: neither may change.
        let entry = |client| Entry {
            client: ClientId(client),
            user: None,
            data: Bytes::from_static(b"0"),
            expires_at: UnixMs(NOW.0 + 60_000),
        };
        let reply = SyncReply {
            node: 2,
            seq: 9,
            entries: vec![entry(6)],
        };
        hub.sync_finished(&room, 1, vec![reply], true, NOW);
        assert_eq!(clients(&hub), vec![5]);
        // A late, older upsert of 5 and a stale leave do nothing.
        hub.apply_remote(&room, 1, remote(2, 8, 5, ChangeKind::Leave), NOW)
            .unwrap();
        assert_eq!(clients(&hub), vec![5]);
        // A newer reply that no longer lists 5 removes it.
        hub.sync_started(&room, 1);
        hub.sync_finished(
            &room,
            1,
            vec![SyncReply {
                node: 2,
                seq: 20,
                entries: vec![],
            }],
            false,
            NOW,
        );
        assert!(clients(&hub).is_empty());
        // Messages of an earlier following of the room are ignored.
        hub.apply_remote(&room, 0, remote(2, 30, 5, ChangeKind::Insert), NOW)
            .unwrap();
        assert!(clients(&hub).is_empty());
    }

    #[test]
    fn own_changes_are_published_remote_ones_are_not() {
        let (hub, mut changes) = clustered();
        let room: Arc<str> = ROOM.into();
        let outbox = Arc::new(Outbox::new());
        let subscription = hub.subscribe(&room, &outbox, None, None, Duration::ZERO);
        hub.sync_finished(&room, 1, Vec::new(), true, NOW);
        hub.apply_remote(&room, 1, remote(2, 10, 5, ChangeKind::Insert), NOW)
            .unwrap();
        let own = ClientId(1 << 40 | 1);
        hub.heartbeat(&room, own, None, Bytes::from_static(b"2"), Ttl(60_000))
            .unwrap();
        let published = changes.try_recv().unwrap();
        assert_eq!(published.change.entry.client, own);
        assert!(
            changes.try_recv().is_err(),
            "a remote entry was republished"
        );
        // Both expire here by their TTL; only the own expiry goes out.
        hub.sweep(UnixMs(u64::MAX));
        let expired = changes.try_recv().unwrap();
        assert_eq!(expired.change.kind, ChangeKind::Expire);
        assert_eq!(expired.change.entry.client, own);
        assert!(expired.seq > published.seq);
        assert!(changes.try_recv().is_err());
        // The last subscriber leaving forgets the other nodes' entries.
        hub.apply_remote(&room, 1, remote(2, 11, 5, ChangeKind::Insert), NOW)
            .unwrap();
        hub.unsubscribe(&outbox, &subscription);
        assert!(clients(&hub).is_empty());
    }

    #[test]
    fn room_listing_follows_every_change_without_a_shard_lock() {
        let hub = Arc::new(Hub::in_memory(0).unwrap());
        let rooms: Vec<Arc<str>> = (0..7).map(|r| format!("r{r}").into()).collect();
        // A fixed pseudo-random walk of heartbeats (short and long TTLs), leaves and
        // sweeps over 7 rooms and 9 clients.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for step in 0..3_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let room = &rooms[(x % 7) as usize];
            let client = ClientId((x >> 8) % 9 + 1);
            match (x >> 16) % 4 {
                0 | 1 => {
                    let ttl = if (x >> 20) % 2 == 0 { 1 } else { 60_000 };
                    hub.heartbeat(room, client, None, Bytes::from_static(b"1"), Ttl(ttl))
                        .unwrap();
                }
                2 => {
                    hub.leave(room, client);
                }
                _ => {
                    hub.sweep(UnixMs::now());
                }
            }
            if step % 100 == 0 {
                let mut expected: Vec<(String, usize)> = rooms
                    .iter()
                    .map(|r| (r.to_string(), hub.lock(r).materializer.room_len(r)))
                    .filter(|(_, n)| *n > 0)
                    .collect();
                expected.sort();
                assert_eq!(hub.rooms_page(None, 100).rooms, expected, "step {step}");
                // Pages cover the same list.
                let first = hub.rooms_page(None, 3);
                if expected.len() > 3 {
                    let next = first.next.clone().unwrap();
                    assert_eq!(next, expected[2].0);
                    let rest = hub.rooms_page(Some(&next), 100);
                    assert_eq!(rest.rooms, expected[3..]);
                    assert_eq!(rest.next, None);
                } else {
                    assert_eq!(first.next, None);
                }
            }
        }
        // Listing while a shard's lock is held: it does not wait for it.
        let held = hub.lock(&rooms[0]);
        let (tx, rx) = std::sync::mpsc::channel();
        let lister = hub.clone();
        let thread = std::thread::spawn(move || tx.send(lister.rooms_page(None, 100)));
        let page = rx.recv_timeout(Duration::from_secs(30));
        drop(held);
        thread.join().unwrap().ok();
        assert!(page.is_ok(), "rooms_page waited for a shard's lock");
    }

    fn sharded(shards: usize) -> Hub {
        let (_, durable) = watch::channel(Ticket(0));
        Hub::with_shards(
            Engine::memory(),
            shards,
            0,
            None,
            Limits::default(),
            durable,
            Metrics::new(),
        )
        .unwrap()
    }

    /// Two room names that the hub keeps in different shards.
    fn rooms_in_two_shards(hub: &Hub) -> (Arc<str>, Arc<str>) {
        let first: Arc<str> = "room-0".into();
        let other = (1..1_000)
            .map(|i| -> Arc<str> { format!("room-{i}").into() })
            .find(|room| hub.shard_of(room) != hub.shard_of(&first))
            .unwrap();
        (first, other)
    }

    #[test]
    fn rooms_route_to_one_shard_each_spread_over_all_of_them() {
        let count = shard_count();
        assert!(count.is_power_of_two());
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert!(count >= SHARDS_PER_CORE * cores && count >= MIN_SHARDS);
        let hub = sharded(8);
        let mut used = [0usize; 8];
        for room in 0..1_000 {
            let room = format!("r{room}");
            let shard = hub.shard_of(&room);
            assert_eq!(hub.shard_of(&room), shard, "a room stays in its shard");
            used[shard] += 1;
        }
        assert!(used.iter().all(|&n| n > 50), "{used:?}");
        // The hash is keyed: another hub spreads the same rooms differently.
        let other = sharded(64);
        let hub = sharded(64);
        let differs = (0..64)
            .map(|room| format!("r{room}"))
            .any(|room| hub.shard_of(&room) != other.shard_of(&room));
        assert!(differs);
    }

    #[test]
    fn a_replayed_state_is_split_into_the_shards() {
        let mut engine = Engine::memory();
        for room in 0..50 {
            for client in 1..=2 {
                engine.heartbeat(Heartbeat {
                    room: format!("r{room}").into(),
                    client: ClientId(client),
                    user: None,
                    data: Bytes::from_static(b"1"),
                    ttl: Ttl(60_000),
                    at: UnixMs::now(),
                });
            }
        }
        let (_, durable) = watch::channel(Ticket(0));
        let hub = Hub::with_shards(
            engine,
            8,
            0,
            None,
            Limits::default(),
            durable,
            Metrics::new(),
        )
        .unwrap();
        assert_eq!(hub.rooms_page(None, 100).rooms.len(), 50);
        for room in 0..50 {
            let room = format!("r{room}");
            assert!(hub.holds_entry(&room, ClientId(1)));
            assert!(hub.holds_entry(&room, ClientId(2)));
            assert_eq!(hub.lock(&room).materializer.room_len(&room), 2);
        }
        let held: usize = (0..8).map(|i| hub.lock_shard(i).materializer.len()).sum();
        assert_eq!(held, 100);
        assert_eq!(hub.sweep(UnixMs(u64::MAX)), 100);
        assert!(hub.rooms_page(None, 100).rooms.is_empty());
    }

    #[test]
    fn rooms_in_other_shards_progress_while_a_shard_is_held() {
        let hub = Arc::new(sharded(8));
        let (held_room, free_room) = rooms_in_two_shards(&hub);
        let outbox = Arc::new(Outbox::new());
        hub.subscribe(&free_room, &outbox, None, None, Duration::ZERO);
        frames(&outbox);
        let held = hub.lock(&held_room);
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn({
            let (hub, outbox, room) = (hub.clone(), outbox.clone(), free_room.clone());
            move || {
                hub.heartbeat(
                    &room,
                    ClientId(1),
                    None,
                    Bytes::from_static(b"1"),
                    Ttl(60_000),
                )
                .unwrap();
                hub.heartbeat(
                    &room,
                    ClientId(2),
                    None,
                    Bytes::from_static(b"2"),
                    Ttl(60_000),
                )
                .unwrap();
                hub.leave(&room, ClientId(2));
                let other = Arc::new(Outbox::new());
                hub.subscribe(&room, &other, None, None, Duration::ZERO);
                let done = (
                    hub.holds_entry(&room, ClientId(1)),
                    hub.entries_json(&room),
                    frames(&outbox),
                    frames(&other),
                );
                tx.send(done).unwrap();
            }
        });
        // The held shard stays held until the other room's work is done: the wait
        // below ends as soon as it is (the bound only turns a hang into a failure).
        let done = rx.recv_timeout(Duration::from_secs(30));
        drop(held);
        thread.join().unwrap();
        let (holds, json, changes, snapshot) = done.expect("a room waited for another shard");
        assert!(holds);
        assert!(json.contains("\"clientId\":1") && !json.contains("\"clientId\":2"));
        let changes = changes.concat();
        assert_eq!(changes.matches("\"clientId\":2").count(), 2, "{changes}");
        assert!(snapshot[0].starts_with("{\"type\":\"snapshot\""));
    }

    #[test]
    fn a_sweep_does_not_wait_for_a_busy_shard_before_the_others() {
        let hub = Arc::new(sharded(8));
        let (busy_room, free_room) = rooms_in_two_shards(&hub);
        for room in [&busy_room, &free_room] {
            hub.heartbeat(room, ClientId(1), None, Bytes::from_static(b"1"), Ttl(1))
                .unwrap();
        }
        let busy = hub.lock(&busy_room);
        let sweeper = std::thread::spawn({
            let hub = hub.clone();
            move || hub.sweep(UnixMs(u64::MAX))
        });
        // The free shard is swept while the busy one is held (the listing takes no
        // shard lock); the bound only turns a hang into a failure.
        let deadline = Instant::now() + Duration::from_secs(30);
        let listed = |room: &Arc<str>| {
            hub.rooms_page(None, 10)
                .rooms
                .iter()
                .any(|(name, _)| **name == **room)
        };
        while listed(&free_room) && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(!listed(&free_room), "the sweep waited for the busy shard");
        assert!(
            listed(&busy_room),
            "the busy shard was swept under its lock"
        );
        drop(busy);
        assert_eq!(sweeper.join().unwrap(), 2);
        assert!(!listed(&busy_room));
    }

    #[test]
    fn threads_in_many_shards_keep_the_room_counts_true() {
        let hub = Arc::new(sharded(8));
        let rooms: Vec<Arc<str>> = (0..16).map(|r| format!("r{r}").into()).collect();
        let outboxes: Vec<Arc<Outbox>> = rooms
            .iter()
            .map(|room| {
                let outbox = Arc::new(Outbox::new());
                hub.subscribe(room, &outbox, None, None, Duration::ZERO);
                outbox
            })
            .collect();
        std::thread::scope(|scope| {
            for thread in 0..4u64 {
                let (hub, rooms) = (&hub, &rooms);
                scope.spawn(move || {
                    let mut x = 0x9E37_79B9_7F4A_7C15 ^ (thread + 1);
                    for _ in 0..2_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let room = &rooms[(x % 16) as usize];
                        let client = ClientId((x >> 8) % 6 + 1);
                        match (x >> 16) % 5 {
                            0 => {
                                hub.leave(room, client);
                            }
                            1 => {
                                hub.sweep(UnixMs::now());
                            }
                            kind => {
                                let ttl = if kind == 2 { 1 } else { 60_000 };
                                hub.heartbeat(
                                    room,
                                    client,
                                    None,
                                    Bytes::from_static(b"1"),
                                    Ttl(ttl),
                                )
                                .unwrap();
                            }
                        }
                    }
                });
            }
        });
        // The maintained counts match the shards' entries, room by room.
        let mut expected: Vec<(String, usize)> = rooms
            .iter()
            .map(|r| (r.to_string(), hub.lock(r).materializer.room_len(r)))
            .filter(|(_, n)| *n > 0)
            .collect();
        expected.sort();
        assert_eq!(hub.rooms_page(None, 100).rooms, expected);
        // Publishing from several threads left every subscriber something to read.
        for (room, outbox) in rooms.iter().zip(&outboxes) {
            assert!(!frames(outbox).is_empty(), "{room}: nothing published");
        }
    }
}
