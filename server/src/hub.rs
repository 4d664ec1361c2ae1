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

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::time::Instant;

use bytes::Bytes;
use hashbrown::HashMap;
use rollcall_engine::{
    Change, ChangeKind, ClientId, Durability, Engine, Entry, Event, Heartbeat, Journal, Leave,
    Materializer, Ticket, Ttl, UnixMs,
};
use tokio::sync::{Notify, watch};

use crate::cluster::merge::{Merge, Origin, Removal, Upsert};
use crate::cluster::{Links, Outgoing, Reject, RemoteChange, RemoteKind, RoomCommand, SyncReply};
use crate::error::Result;
use crate::fanout::{Feed, Outbox, Published, Subscription};
use crate::identity::Identity;
use crate::limits::Limits;
use crate::listing::{RoomCounts, RoomsPage};
use crate::metrics::Metrics;
use crate::protocol::{self, ErrorCode, Rejection};

/// Shards per core, at least: with rooms spread by a hash, two busy rooms share a
/// shard with probability 1/shards, so a few shards per core keep collisions rare.
const SHARDS_PER_CORE: usize = 4;
/// The fewest shards, whatever the core count (see `docs/performance.md`, "More
/// cores": collisions between busy rooms cost more than the extra, empty shards).
const MIN_SHARDS: usize = 64;

/// How many shards a hub on this machine uses: a power of two, at least
/// [`SHARDS_PER_CORE`] per core and at least [`MIN_SHARDS`].
fn shard_count() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cores * SHARDS_PER_CORE)
        .max(MIN_SHARDS)
        .next_power_of_two()
}

/// A room with subscribers: its feed and who reads it.
#[derive(Debug)]
struct RoomFeed {
    /// The room's changes and subscribers, behind the room's own locks.
    feed: Arc<Feed>,
    /// Cluster mode, until the room's first sync is done: the subscriptions waiting
    /// for their snapshot, with their outbox and the reference to acknowledge. Nothing
    /// is published on the feed meanwhile (nobody has a snapshot yet).
    waiting: Option<Vec<Waiting>>,
    /// Cluster mode with webhooks: followed for this node's part in sending the
    /// room's webhooks (see `cluster::owner`), subscribers or not.
    held: bool,
}

#[derive(Debug)]
struct Waiting {
    subscription: Arc<Subscription>,
    outbox: Arc<Outbox>,
    reference: Option<u64>,
}

/// Cluster mode: this node's side of the bus, shared by every shard (the merge state
/// is per shard, in [`Shard::merge`]).
#[derive(Debug)]
struct Cluster {
    links: Links,
    /// The last sequence number used. Starts from the clock, so it keeps growing
    /// across restarts. Taken under the lock of the change's shard, so within a room
    /// sequence numbers follow the fold's order.
    seq: AtomicU64,
}

impl Cluster {
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Queues a change of an owned entry for the other nodes.
    fn publish(&self, change: &Change, metrics: &Metrics) {
        let outgoing = Outgoing {
            seq: self.next_seq(),
            change: change.clone(),
        };
        if self.links.changes.try_send(outgoing).is_err() {
            metrics.cluster_dropped.increment(1);
        }
    }
}

/// Rooms with subscribers. Room names come from clients, so the map uses a keyed
/// hasher.
type Subscribers = HashMap<Arc<str>, RoomFeed, RandomState>;

/// A live WebSocket session, by client id.
#[derive(Debug)]
struct Session {
    connection: u64,
    kick: Arc<Notify>,
}

/// The rooms of one shard: everything a heartbeat, leave or sweep of them touches,
/// except the log's queue (shared, with its own lock) and the room counts (shared,
/// taken only when an entry comes or goes).
struct Shard {
    /// This shard's rooms' entries and expiry order.
    materializer: Materializer,
    /// Changes published under this shard's lock: serialized and their subscribers
    /// woken once it is released (see [`Locked`]).
    published: Vec<(Arc<Feed>, Arc<Published>)>,
    /// This shard's rooms with subscribers.
    subscribers: Subscribers,
    scratch: Vec<Change>,
    /// Cluster mode: who owns which entry of this shard's followed rooms.
    merge: Option<Merge>,
}

impl Shard {
    fn new(materializer: Materializer) -> Shard {
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
struct ShardLock(Mutex<Shard>);

/// Client ids, resume tokens and live sessions, behind their own lock.
struct Admission {
    identity: Identity,
    sessions: HashMap<ClientId, Session>,
    next_connection: u64,
}

/// A shard's lock, held. Code that must run under it takes `&Shard` or `&mut Shard`,
/// which only a `Locked` hands out. Releasing it records how long it was held, so a
/// serialized shard shows up in `/metrics` (`rollcall_hub_lock_hold_microseconds`),
/// and then, with the lock released, serializes the changes published meanwhile and
/// wakes their rooms' subscribers: that work is per room, under the rooms' own locks.
struct Locked<'a> {
    /// `Some` until dropped.
    guard: Option<MutexGuard<'a, Shard>>,
    hub: &'a Hub,
    since: Instant,
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

/// What a new session gets.
#[derive(Debug)]
pub struct Admitted {
    /// The session's client id.
    pub client: ClientId,
    /// Its resume token.
    pub resume_token: String,
    /// Whether the client id came from a valid resume token.
    pub resumed: bool,
    /// The resume token presented was not valid (a fresh id was assigned).
    pub resume_rejected: bool,
    /// Unique per connection, to tell sessions of the same client apart.
    pub connection: u64,
    /// Notified when another connection resumes the same client id.
    pub kick: Arc<Notify>,
}

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

    fn admission(&self) -> MutexGuard<'_, Admission> {
        self.admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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

    /// Starts a session: resumes the client id of a valid `resume` token (closing any
    /// other connection holding it) or assigns a new one.
    pub fn admit(&self, resume: Option<&str>, user: Option<&str>) -> Result<Admitted> {
        let mut admission = self.admission();
        let admission = &mut *admission;
        let resumed_id = resume.and_then(|token| admission.identity.verify(token, user));
        let resume_rejected = resume.is_some() && resumed_id.is_none();
        let client = match resumed_id {
            Some(id) => id,
            None => admission.identity.allocate(&self.journal)?,
        };
        let connection = admission.next_connection;
        admission.next_connection += 1;
        let kick = Arc::new(Notify::new());
        if let Some(old) = admission.sessions.insert(
            client,
            Session {
                connection,
                kick: kick.clone(),
            },
        ) {
            old.kick.notify_one();
        }
        let resume_token = admission.identity.token(client, user);
        Ok(Admitted {
            client,
            resume_token,
            resumed: resumed_id.is_some(),
            resume_rejected,
            connection,
            kick,
        })
    }

    /// Ends a session: its subscriptions stop; its entries stay until their TTL.
    pub fn depart(&self, client: ClientId, connection: u64, subscriptions: &[Arc<Subscription>]) {
        for subscription in subscriptions {
            self.lock(&subscription.room)
                .remove_subscriber(subscription);
        }
        let mut admission = self.admission();
        if admission
            .sessions
            .get(&client)
            .is_some_and(|s| s.connection == connection)
        {
            admission.sessions.remove(&client);
        }
    }

    /// A fresh client id (for REST heartbeats without one).
    pub fn allocate_client(&self) -> Result<ClientId> {
        self.admission().identity.allocate(&self.journal)
    }

    /// Reserves a client id chosen over REST, so that the server never gives it to
    /// another client (see [`Identity::reserve`]).
    pub fn reserve_client(&self, client: ClientId) -> Result<(), Rejection> {
        let reserved = self.admission().identity.reserve(client, &self.journal);
        match reserved {
            Ok(true) => Ok(()),
            Ok(false) => Err(Rejection::new(
                ErrorCode::BadRequest,
                format!(
                    "clientId {client} is past the ids this server can reserve: choose one \
                     below {}, or omit clientId and the server assigns one",
                    crate::identity::MAX_CHOSEN_COUNTER
                ),
            )),
            Err(e) => Err(Rejection::new(
                ErrorCode::Internal,
                format!("cannot reserve the client id: {e}"),
            )),
        }
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
                    held: false,
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

    /// Cluster mode: sends a local client's broadcast (already delivered here) to the
    /// other nodes' subscribers of `room`. A full queue drops it, counted.
    pub fn publish_broadcast(
        &self,
        room: &str,
        client: ClientId,
        user: Option<Arc<str>>,
        data: &str,
    ) {
        if let Some(cluster) = self.cluster.get() {
            let broadcast = crate::cluster::OutgoingBroadcast {
                room: room.into(),
                client,
                user,
                data: Bytes::copy_from_slice(data.as_bytes()),
            };
            if cluster.links.broadcasts.try_send(broadcast).is_err() {
                self.metrics.cluster_dropped.increment(1);
            }
        }
    }

    /// Cluster mode: follows `room` whether it has subscribers or not (this node owns
    /// or backs up its webhooks), until [`Hub::release`].
    pub fn hold(&self, room: &Arc<str>) {
        let mut guard = self.lock(room);
        let shard = &mut *guard;
        if let Some(room_feed) = shard.subscribers.get_mut(&**room) {
            room_feed.held = true;
            return;
        }
        let Some(merge) = shard.merge.as_mut() else {
            return;
        };
        let generation = merge.follow(room.clone());
        if let Some(cluster) = self.cluster.get() {
            let _ = cluster.links.rooms.send(RoomCommand::Join {
                room: room.clone(),
                generation,
            });
        }
        shard.subscribers.insert(
            room.clone(),
            RoomFeed {
                feed: Feed::new(),
                waiting: Some(Vec::new()),
                held: true,
            },
        );
    }

    /// Undoes [`Hub::hold`]: the room is followed while it has subscribers.
    pub fn release(&self, room: &str) {
        let mut guard = self.lock(room);
        let Some(room_feed) = guard.subscribers.get_mut(room) else {
            return;
        };
        room_feed.held = false;
        if room_feed.feed.is_unread() {
            guard.unfollow(room);
        }
    }

    /// The number of entries this node holds in `room`.
    pub fn room_len(&self, room: &str) -> usize {
        self.counts.occupancy(room).0
    }

    /// Queues another node's broadcast for this node's subscribers of `room`.
    pub fn deliver_broadcast(&self, room: &str, frame: &str) {
        static NOBODY: std::sync::LazyLock<Outbox> = std::sync::LazyLock::new(Outbox::new);
        if let Some(feed) = self.feed_of(room) {
            let (_, missed) = feed.broadcast(frame, &NOBODY);
            self.metrics.broadcasts_missed.increment(missed as u64);
        }
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

/// The shard of `room` among `shards` (a power of two), by a keyed hash.
fn shard_index(route: &RandomState, shards: usize, room: &str) -> usize {
    // The low bits of SipHash are as good as any.
    (route.hash_one(room) as usize) & (shards - 1)
}

/// What runs under a shard's lock and needs the hub's shared parts too (the journal,
/// the counts, the cluster's links).
impl Locked<'_> {
    /// Removes `client`'s entry and logs the leave (under this lock: the log's order
    /// is the fold's). Adjusts the room's count.
    fn leave_logged(&mut self, leave: Leave) -> Option<(Change, Ticket)> {
        let change = self.materializer.leave(&leave)?;
        let ticket = self.hub.journal.append(Event::Leave(leave));
        self.hub.counts.apply(&change);
        Some((change, ticket))
    }

    /// Folds another node's event without logging it. Adjusts the room's count.
    fn fold_unlogged(&mut self, event: &Event) -> Option<Change> {
        let change = self.materializer.fold(event)?;
        self.hub.counts.apply(&change);
        Some(change)
    }

    /// Expires this shard's due entries and fans out their removal.
    fn sweep(&mut self, now: UnixMs) -> usize {
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
    fn own(&mut self, change: &Change) {
        let hub = self.hub;
        if let (Some(merge), Some(cluster)) = (&mut self.merge, hub.cluster.get()) {
            merge.owned(&change.room, change.entry.client);
            cluster.publish(change, &hub.metrics);
        }
    }

    fn remove_subscriber(&mut self, subscription: &Arc<Subscription>) {
        let Some(room) = self.subscribers.get_mut(&*subscription.room) else {
            return;
        };
        let remaining = room.feed.remove(subscription);
        if let Some(waiting) = &mut room.waiting {
            waiting.retain(|w| !Arc::ptr_eq(&w.subscription, subscription));
        }
        if remaining > 0 || room.held {
            return;
        }
        self.unfollow(&subscription.room);
    }

    /// Stops following `room` (it has no subscribers and is not held).
    fn unfollow(&mut self, room: &str) {
        let Some((name, _)) = self.subscribers.remove_entry(room) else {
            return;
        };
        let Some(merge) = &mut self.merge else {
            return;
        };
        // Nobody here follows the room any more: forget the other nodes' entries
        // (they did not leave: no webhook says so).
        for client in merge.unfollow(&name) {
            if let Some(change) = self.materializer.fold(&Event::Leave(Leave {
                room: name.clone(),
                client,
                at: UnixMs::now(),
            })) {
                self.hub.counts.forget(&change);
            }
        }
        if let Some(cluster) = self.hub.cluster.get() {
            let _ = cluster.links.rooms.send(RoomCommand::Part { room: name });
        }
    }

    /// Folds another node's upsert of `entry`, unless what this node holds is newer.
    /// A new entry that would put the room past `max_entries` is refused, as a local
    /// client's would be.
    fn upsert_remote(
        &mut self,
        room: &Arc<str>,
        origin: Origin,
        entry: Entry,
        max_entries: usize,
        now: UnixMs,
    ) -> Result<Option<Change>, Reject> {
        let shard = &mut **self.guard.as_mut().expect("held until dropped");
        let materializer = &shard.materializer;
        if materializer.get(room, entry.client, now).is_none()
            && materializer.room_len(room) >= max_entries
        {
            return Err(Reject::RoomFull);
        }
        let Some(merge) = shard.merge.as_mut() else {
            return Ok(None);
        };
        let own_expiry = if merge.is_remote(room, entry.client) {
            None
        } else {
            shard
                .materializer
                .get(room, entry.client, now)
                .map(|own| own.expires_at)
        };
        let Some(action) = merge.upsert(room, origin, &entry, own_expiry, now) else {
            return Ok(None);
        };
        match action {
            Upsert::Fold => {}
            Upsert::TakeOver => {
                self.leave_logged(Leave {
                    room: room.clone(),
                    client: entry.client,
                    at: now,
                });
            }
        }
        // `at + ttl` is the owner's expiry, to the millisecond.
        Ok(self.fold_unlogged(&Event::Heartbeat(Heartbeat {
            room: room.clone(),
            client: entry.client,
            user: entry.user,
            data: entry.data,
            ttl: Ttl(0),
            at: entry.expires_at,
        })))
    }

    /// Removes another node's entry (kind `Leave` or `Expire`). A leave of an entry
    /// this node holds as its own is taken only from the node that allocated the
    /// client's id.
    fn remove_remote(
        &mut self,
        room: &Arc<str>,
        origin: Origin,
        client: ClientId,
        kind: ChangeKind,
        now: UnixMs,
    ) -> Result<Option<Change>, Reject> {
        let shard = &mut **self.guard.as_mut().expect("held until dropped");
        let Some(merge) = shard.merge.as_mut() else {
            return Ok(None);
        };
        let holds_own =
            !merge.is_remote(room, client) && shard.materializer.get(room, client, now).is_some();
        if holds_own
            && kind == ChangeKind::Leave
            && client.0 >> crate::identity::NODE_SHIFT != u64::from(origin.node)
        {
            return Err(Reject::Owner);
        }
        let leave = Leave {
            room: room.clone(),
            client,
            at: now,
        };
        Ok(
            match merge.remove(room, origin, client, kind, holds_own, now) {
                None => None,
                Some(Removal::Own) => self.leave_logged(leave).map(|(change, _)| change),
                Some(Removal::Remote(kind)) => {
                    self.fold_unlogged(&Event::Leave(leave)).map(|mut change| {
                        change.kind = kind;
                        change
                    })
                }
            },
        )
    }

    fn fan_out(&mut self, change: &Change) {
        let shard = &mut **self.guard.as_mut().expect("held until dropped");
        fan_out(
            &shard.subscribers,
            &mut shard.published,
            change,
            &shard.materializer,
        );
    }
}

impl crate::cluster::LocalState for Hub {
    fn metrics(&self) -> &Metrics {
        Hub::metrics(self)
    }

    fn owned_live(&self, now: UnixMs) -> Vec<Outgoing> {
        Hub::owned_live(self, now)
    }

    fn owned_entries(&self, room: &str, now: UnixMs) -> (u64, String) {
        Hub::owned_entries(self, room, now)
    }

    fn limits(&self) -> &Limits {
        Hub::limits(self)
    }

    fn apply_remote(
        &self,
        room: &Arc<str>,
        generation: u64,
        change: RemoteChange,
        now: UnixMs,
    ) -> Result<(), Reject> {
        Hub::apply_remote(self, room, generation, change, now)
    }

    fn node_lost(&self, node: u16, now: UnixMs) {
        Hub::node_lost(self, node, now);
    }

    fn owned_rooms_page(&self, after: Option<&str>, limit: usize) -> RoomsPage {
        Hub::owned_rooms_page(self, after, limit)
    }

    fn deliver_broadcast(&self, room: &str, frame: &str) {
        Hub::deliver_broadcast(self, room, frame);
    }

    fn hold(&self, room: &Arc<str>) {
        Hub::hold(self, room);
    }

    fn release(&self, room: &str) {
        Hub::release(self, room);
    }

    fn room_len(&self, room: &str) -> usize {
        Hub::room_len(self, room)
    }

    fn sync_started(&self, room: &str, generation: u64) {
        Hub::sync_started(self, room, generation);
    }

    fn sync_finished(
        &self,
        room: &Arc<str>,
        generation: u64,
        replies: Vec<SyncReply>,
        first: bool,
        now: UnixMs,
    ) {
        Hub::sync_finished(self, room, generation, replies, first, now);
    }
}

/// Cluster mode.
impl Hub {
    /// Turns cluster mode on: changes of this node's entries go out through `links`.
    /// Call once, before serving.
    pub fn enable_cluster(&self, node: u16, links: Links) {
        let cluster = Cluster {
            links,
            seq: AtomicU64::new(UnixMs::now().0.saturating_mul(1_000_000)),
        };
        if self.cluster.set(cluster).is_err() {
            tracing::warn!("cluster mode was already on");
            return;
        }
        for index in 0..self.shards.len() {
            self.lock_shard(index).merge = Some(Merge::new(node));
        }
    }

    /// Folds an authenticated change another node published in `room`.
    pub fn apply_remote(
        &self,
        room: &Arc<str>,
        generation: u64,
        remote: RemoteChange,
        now: UnixMs,
    ) -> Result<(), Reject> {
        let mut shard = self.lock(room);
        if !shard
            .merge
            .as_ref()
            .is_some_and(|m| m.accepts(room, generation, remote.node))
        {
            return Ok(());
        }
        let RemoteChange {
            node,
            seq,
            client,
            kind,
            ..
        } = remote;
        let origin = Origin { node, seq };
        let max_entries = self.limits.max_entries_per_room;
        let change = match kind {
            RemoteKind::Upsert(entry) => shard.upsert_remote(room, origin, entry, max_entries, now),
            RemoteKind::Leave => shard.remove_remote(room, origin, client, ChangeKind::Leave, now),
            RemoteKind::Expire => {
                shard.remove_remote(room, origin, client, ChangeKind::Expire, now)
            }
        }?;
        if let Some(change) = change {
            shard.fan_out(&change);
        }
        Ok(())
    }

    /// Node `node` is taken for dead: removes its entries from every followed room,
    /// unlogged (subscribers see them leave), one shard at a time. They come back when
    /// it republishes.
    pub fn node_lost(&self, node: u16, now: UnixMs) {
        for index in 0..self.shards.len() {
            let mut shard = self.lock_shard(index);
            let Some(merge) = &mut shard.merge else {
                return;
            };
            for (room, client) in merge.lost(node, now) {
                if let Some(change) = shard.fold_unlogged(&Event::Leave(Leave {
                    room,
                    client,
                    at: now,
                })) {
                    shard.fan_out(&change);
                }
            }
        }
    }

    /// A page of rooms (after `after`, at most `limit`) with this node's own entries
    /// only: what it answers to another node listing the cluster's rooms. The cursor
    /// says how far the page got, whatever was left out for holding no own entry.
    /// Takes each listed room's shard lock in turn.
    pub(crate) fn owned_rooms_page(&self, after: Option<&str>, limit: usize) -> RoomsPage {
        let mut page = self.counts.page(after, limit);
        if self.cluster.get().is_some() {
            for (room, count) in &mut page.rooms {
                let remote = self
                    .lock(room)
                    .merge
                    .as_ref()
                    .map_or(0, |merge| merge.remote_in(room));
                *count = count.saturating_sub(remote);
            }
            page.rooms.retain(|(_, count)| *count > 0);
        }
        page
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

    /// A sync of `room` begins: removals are remembered until it ends.
    pub fn sync_started(&self, room: &str, generation: u64) {
        if let Some(merge) = &mut self.lock(room).merge {
            merge.sync_started(room, generation);
        }
    }

    /// Folds the other nodes' answers to a sync of `room`. Entries a node no longer
    /// lists are removed. After the room's first sync, its subscribers get their
    /// snapshots.
    pub fn sync_finished(
        &self,
        room: &Arc<str>,
        generation: u64,
        replies: Vec<SyncReply>,
        first: bool,
        now: UnixMs,
    ) {
        let mut shard = self.lock(room);
        if !shard
            .merge
            .as_ref()
            .is_some_and(|m| m.follows(room, generation))
        {
            return;
        }
        for reply in replies {
            let origin = Origin {
                node: reply.node,
                seq: reply.seq,
            };
            if !shard
                .merge
                .as_ref()
                .is_some_and(|m| m.accepts(room, generation, reply.node))
            {
                continue;
            }
            let mut listed = hashbrown::HashSet::with_capacity(reply.entries.len());
            let max_entries = self.limits.max_entries_per_room;
            for entry in reply.entries {
                listed.insert(entry.client);
                match shard.upsert_remote(room, origin, entry, max_entries, now) {
                    Ok(Some(change)) => shard.fan_out(&change),
                    Ok(None) => {}
                    Err(reject) => self.metrics.cluster_rejected(reject),
                }
            }
            let gone = shard
                .merge
                .as_ref()
                .map(|m| m.unlisted(room, origin, &listed))
                .unwrap_or_default();
            for client in gone {
                match shard.remove_remote(room, origin, client, ChangeKind::Leave, now) {
                    Ok(Some(change)) => shard.fan_out(&change),
                    Ok(None) => {}
                    Err(reject) => self.metrics.cluster_rejected(reject),
                }
            }
            if let Some(merge) = &mut shard.merge {
                merge.reply_folded(room, origin);
            }
        }
        if let Some(merge) = &mut shard.merge {
            merge.sync_ended(room);
        }
        if !first {
            return;
        }
        let Some(room_feed) = shard.subscribers.get_mut(room) else {
            return;
        };
        let Some(waiting) = room_feed.waiting.take() else {
            return;
        };
        let feed = room_feed.feed.clone();
        let view = RoomView::take(&shard, room, &feed, now);
        drop(shard);
        // One snapshot for every waiting subscriber.
        let snapshot = view.snapshot();
        for w in waiting {
            start(
                &w.subscription,
                &w.outbox,
                w.reference,
                snapshot.clone(),
                view.head,
            );
        }
    }

    /// This node's own live entries of `room` as a JSON array, and the last sequence
    /// number it used: the answer to a sync request. Copied under the room's shard
    /// lock (so the sequence number and the entries agree), serialized after.
    pub fn owned_entries(&self, room: &str, now: UnixMs) -> (u64, String) {
        let Some(cluster) = self.cluster.get() else {
            return (0, "[]".into());
        };
        let shard = self.lock(room);
        let Some(merge) = &shard.merge else {
            return (0, "[]".into());
        };
        let seq = cluster.seq.load(Ordering::Acquire);
        let entries: Vec<Entry> = shard
            .materializer
            .entries(room, now)
            .filter(|e| !merge.is_remote(room, e.client))
            .cloned()
            .collect();
        drop(shard);
        (seq, protocol::entries_json(entries.iter()))
    }

    /// Every live entry this node owns, as upserts with fresh sequence numbers. Takes
    /// one shard's lock at a time.
    pub fn owned_live(&self, now: UnixMs) -> Vec<Outgoing> {
        let Some(cluster) = self.cluster.get() else {
            return Vec::new();
        };
        let mut owned = Vec::new();
        for index in 0..self.shards.len() {
            let shard = self.lock_shard(index);
            let Some(merge) = &shard.merge else {
                continue;
            };
            let materializer = &shard.materializer;
            for (room, _) in materializer.rooms(now) {
                for entry in materializer.entries(room, now) {
                    if merge.is_remote(room, entry.client) {
                        continue;
                    }
                    owned.push(Outgoing {
                        seq: cluster.next_seq(),
                        change: Change {
                            room: room.clone(),
                            kind: ChangeKind::Update,
                            entry: entry.clone(),
                        },
                    });
                }
            }
        }
        owned
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::cluster::{self, decode_change, encode_change};
    use crate::fanout::Drained;

    const ROOM: &str = "room";
    const NOW: UnixMs = UnixMs(1_000_000);

    fn clustered() -> (Hub, tokio::sync::mpsc::Receiver<Outgoing>) {
        let hub = Hub::in_memory(1).unwrap();
        let (links, queues) = cluster::links();
        // Joins and parts are not followed here: the tests play the cluster task.
        drop(queues.rooms);
        hub.enable_cluster(1, links);
        (hub, queues.changes)
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
