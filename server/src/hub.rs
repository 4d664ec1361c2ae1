//! Shared state: the engine, who subscribes to which room, and who is connected.
//!
//! Everything here runs under one `std::sync::Mutex`: every critical section is short
//! and never awaits, which is cheaper than an async lock and keeps a heartbeat's apply,
//! log append and fan-out atomic with respect to subscribes (a subscriber never misses
//! a change between its snapshot and its first `changes` frame).

use std::hash::RandomState;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use hashbrown::HashMap;
use rollcall_engine::{
    Change, ChangeKind, ClientId, Durability, Engine, Entry, Event, Heartbeat, Leave, Materializer,
    Ticket, Ttl, UnixMs,
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

/// A room with subscribers: its feed and who reads it.
#[derive(Debug)]
struct RoomFeed {
    /// The room's changes and subscribers, behind the room's own locks.
    feed: Arc<Feed>,
    /// Cluster mode, until the room's first sync is done: the subscriptions waiting
    /// for their snapshot, with their outbox and the reference to acknowledge. Nothing
    /// is published on the feed meanwhile (nobody has a snapshot yet).
    waiting: Option<Vec<Waiting>>,
}

#[derive(Debug)]
struct Waiting {
    subscription: Arc<Subscription>,
    outbox: Arc<Outbox>,
    reference: Option<u64>,
}

/// Cluster mode: this node's side of the bus.
#[derive(Debug)]
struct Cluster {
    links: Links,
    /// The last sequence number used. Starts from the clock, so it keeps growing
    /// across restarts.
    seq: u64,
    /// Who owns which entry of the rooms this node follows.
    merge: Merge,
}

impl Cluster {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A heartbeat or leave of a local client: the entry is this node's now, even if it
    /// was another node's before, and the other nodes hear of it.
    fn own(&mut self, change: &Change, metrics: &Metrics) {
        self.merge.owned(&change.room, change.entry.client);
        self.publish(change, metrics);
    }

    /// An expiry. Another node's entry expires here by its own TTL, like everywhere;
    /// only this node's expiries are published.
    fn expired(&mut self, change: &Change, metrics: &Metrics) {
        if self.merge.expired(&change.room, change.entry.client) {
            self.publish(change, metrics);
        }
    }

    /// Queues a change of an owned entry for the other nodes.
    fn publish(&mut self, change: &Change, metrics: &Metrics) {
        let seq = self.next_seq();
        let outgoing = Outgoing {
            seq,
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

struct Inner {
    engine: Engine,
    /// Changes published under this lock: serialized and their subscribers woken once
    /// it is released (see [`Locked`]).
    published: Vec<(Arc<Feed>, Arc<Published>)>,
    /// Entries per room, for listings that do not take this lock.
    counts: Arc<RoomCounts>,
    identity: Identity,
    subscribers: Subscribers,
    sessions: HashMap<ClientId, Session>,
    next_connection: u64,
    scratch: Vec<Change>,
    cluster: Option<Cluster>,
}

/// The hub lock, held. Releasing it records how long it was held, so a serialized
/// hub shows up in `/metrics` (`rollcall_hub_lock_hold_microseconds`), and then, with
/// the lock released, serializes the changes published meanwhile and wakes their
/// rooms' subscribers: that work is per room, under the rooms' own locks.
struct Locked<'a> {
    /// `Some` until dropped.
    guard: Option<MutexGuard<'a, Inner>>,
    since: Instant,
    metrics: &'a Metrics,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
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
        self.metrics
            .hub_lock_hold
            .record(self.since.elapsed().as_secs_f64() * 1_000_000.0);
        for (feed, change) in published {
            change.fragment();
            let subscribers = feed.wake();
            self.metrics.fanout_changes.increment(subscribers as u64);
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
    inner: Mutex<Inner>,
    counts: Arc<RoomCounts>,
    limits: Limits,
    durability: Durability,
    durable: watch::Receiver<Ticket>,
    metrics: Metrics,
}

impl Hub {
    /// A hub over an in-memory engine with default limits and no log (benches, tests).
    pub(crate) fn in_memory(node: u16) -> Result<Hub> {
        let (_, durable) = watch::channel(Ticket(0));
        Hub::new(
            Engine::memory(),
            node,
            None,
            Limits::default(),
            durable,
            Metrics::new(),
        )
    }

    /// Wraps an opened engine. `durable` follows the engine's durable watermark;
    /// `resume_secret` (shared by a cluster's nodes) signs resume tokens if given.
    pub fn new(
        mut engine: Engine,
        node: u16,
        resume_secret: Option<&[u8]>,
        limits: Limits,
        durable: watch::Receiver<Ticket>,
        metrics: Metrics,
    ) -> Result<Hub> {
        let identity = Identity::load(&mut engine, node, resume_secret)?;
        let durability = engine.durability();
        let counts = Arc::new(RoomCounts::from_rooms(
            engine.materializer().rooms(UnixMs::now()),
        ));
        Ok(Hub {
            counts: counts.clone(),
            inner: Mutex::new(Inner {
                counts,
                published: Vec::new(),
                engine,
                identity,
                subscribers: HashMap::default(),
                sessions: HashMap::new(),
                next_connection: 1,
                scratch: Vec::new(),
                cluster: None,
            }),
            limits,
            durability,
            durable,
            metrics,
        })
    }

    /// Takes the hub lock. What needs it takes `&Inner` or `&mut Inner`, which only a
    /// [`Locked`] hands out.
    fn lock(&self) -> Locked<'_> {
        Locked {
            guard: Some(self.inner.lock().unwrap_or_else(PoisonError::into_inner)),
            since: Instant::now(),
            metrics: &self.metrics,
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

    /// Starts a session: resumes the client id of a valid `resume` token (closing any
    /// other connection holding it) or assigns a new one.
    pub fn admit(&self, resume: Option<&str>, user: Option<&str>) -> Result<Admitted> {
        let mut inner = self.lock();
        let resumed_id = resume.and_then(|token| inner.identity.verify(token, user));
        let resume_rejected = resume.is_some() && resumed_id.is_none();
        let client = match resumed_id {
            Some(id) => id,
            None => {
                let Inner {
                    identity, engine, ..
                } = &mut *inner;
                identity.allocate(engine)?
            }
        };
        let connection = inner.next_connection;
        inner.next_connection += 1;
        let kick = Arc::new(Notify::new());
        if let Some(old) = inner.sessions.insert(
            client,
            Session {
                connection,
                kick: kick.clone(),
            },
        ) {
            old.kick.notify_one();
        }
        let resume_token = inner.identity.token(client, user);
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
        let mut inner = self.lock();
        for subscription in subscriptions {
            inner.remove_subscriber(subscription);
        }
        if inner
            .sessions
            .get(&client)
            .is_some_and(|s| s.connection == connection)
        {
            inner.sessions.remove(&client);
        }
    }

    /// A fresh client id (for REST heartbeats without one).
    pub fn allocate_client(&self) -> Result<ClientId> {
        let mut inner = self.lock();
        let Inner {
            identity, engine, ..
        } = &mut *inner;
        identity.allocate(engine)
    }

    /// Reserves a client id chosen over REST, so that the server never gives it to
    /// another client (see [`Identity::reserve`]).
    pub fn reserve_client(&self, client: ClientId) -> Result<(), Rejection> {
        let mut inner = self.lock();
        let Inner {
            identity, engine, ..
        } = &mut *inner;
        match identity.reserve(client, engine) {
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
        let now = UnixMs::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let room_feed = match inner.subscribers.entry(room.clone()) {
            hashbrown::hash_map::Entry::Occupied(occupied) => occupied.into_mut(),
            hashbrown::hash_map::Entry::Vacant(vacant) => {
                let waiting = inner.cluster.as_mut().map(|cluster| {
                    let generation = cluster.merge.follow(room.clone());
                    let _ = cluster.links.rooms.send(RoomCommand::Join {
                        room: room.clone(),
                        generation,
                    });
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
            None => outbox.subscribe(room.clone(), room_feed.feed.clone(), interval),
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
        let view = RoomView::take(inner, room, &feed, now);
        drop(guard);
        start(&subscription, outbox, reference, view.snapshot(), view.head);
        subscription
    }

    /// Sends a subscription that fell behind its feed the room's current state.
    pub fn resync(&self, subscription: &Subscription) {
        let now = UnixMs::now();
        let inner = self.lock();
        let view = RoomView::take(&inner, &subscription.room, subscription.feed(), now);
        drop(inner);
        subscription.reset(view.snapshot(), view.head);
    }

    /// Stops a subscription.
    pub fn unsubscribe(&self, outbox: &Outbox, subscription: &Arc<Subscription>) {
        let mut inner = self.lock();
        inner.remove_subscriber(subscription);
        drop(inner);
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
        let mut inner = self.lock();
        let materializer = inner.engine.materializer();
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
        let (change, ticket) = inner.engine.heartbeat(Heartbeat {
            room: room.clone(),
            client,
            user,
            data,
            ttl,
            at: now,
        });
        let expires_at = change.entry.expires_at;
        self.metrics.heartbeats.increment(1);
        inner.counts.apply(&change);
        inner.fan_out(&change);
        if let Some(cluster) = &mut inner.cluster {
            cluster.own(&change, &self.metrics);
        }
        Ok((expires_at, ticket))
    }

    /// Removes `client`'s entry. Returns the ticket to wait for before answering: the
    /// leave's own or, if the client had no entry, the latest write's (the entry may
    /// be gone by a write that is not durable yet, on this connection or another, so
    /// the answer must not pass it); `None` when there is nothing to wait for.
    pub fn leave(&self, room: &Arc<str>, client: ClientId) -> Option<Ticket> {
        let mut inner = self.lock();
        let Some((change, ticket)) = inner.engine.leave(Leave {
            room: room.clone(),
            client,
            at: UnixMs::now(),
        }) else {
            let latest = inner.engine.last_ticket();
            return (latest > *self.durable.borrow()).then_some(latest);
        };
        self.metrics.leaves.increment(1);
        inner.counts.apply(&change);
        inner.fan_out(&change);
        if let Some(cluster) = &mut inner.cluster {
            cluster.own(&change, &self.metrics);
        }
        Some(ticket)
    }

    /// Whether `client` holds a live entry in `room`.
    pub fn holds_entry(&self, room: &str, client: ClientId) -> bool {
        self.lock()
            .engine
            .materializer()
            .get(room, client, UnixMs::now())
            .is_some()
    }

    /// Expires due entries and fans out their removal. Returns how many expired.
    pub fn sweep(&self, now: UnixMs) -> usize {
        let mut inner = self.lock();
        if inner
            .engine
            .materializer()
            .next_expiry()
            .is_none_or(|at| at >= now)
        {
            return 0;
        }
        let Inner {
            engine,
            subscribers,
            scratch,
            cluster,
            counts,
            published,
            ..
        } = &mut *inner;
        scratch.clear();
        let expired = engine.sweep(now, scratch);
        for change in scratch.drain(..) {
            counts.apply(&change);
            fan_out(subscribers, published, &change, engine.materializer());
            if let Some(cluster) = cluster {
                cluster.expired(&change, &self.metrics);
            }
        }
        self.metrics.expirations.increment(expired as u64);
        expired
    }

    /// The live entries of `room` as a JSON array.
    pub fn entries_json(&self, room: &str) -> String {
        let now = UnixMs::now();
        let inner = self.lock();
        protocol::entries_json(inner.engine.materializer().entries(room, now))
    }

    /// Rooms with entries, sorted by name, after `after`, at most `limit`. Does not
    /// take the hub lock.
    pub fn rooms_page(&self, after: Option<&str>, limit: usize) -> RoomsPage {
        self.counts.page(after, limit)
    }

    /// Publishes gauges: rooms, entries, log size.
    pub fn record_gauges(&self) {
        let inner = self.lock();
        let materializer = inner.engine.materializer();
        self.metrics.rooms.set(materializer.room_count() as f64);
        self.metrics.entries.set(materializer.len() as f64);
        self.metrics
            .subscribed_rooms
            .set(inner.subscribers.len() as f64);
        self.metrics
            .log_failing
            .set(if inner.engine.log_failing() { 1.0 } else { 0.0 });
        self.metrics
            .log_stalled
            .set(inner.engine.log_stalled_for().as_secs_f64());
        if let Some(cluster) = &inner.cluster {
            self.metrics
                .cluster_remote_entries
                .set(cluster.merge.remote_entries() as f64);
        }
    }

    /// How long the log writer has been stuck in one storage call.
    pub fn log_stalled_for(&self) -> std::time::Duration {
        self.lock().engine.log_stalled_for()
    }

    /// Flushes the log and waits for it (blocking).
    pub fn sync(&self) -> Result<bool> {
        Ok(self.lock().engine.sync()?)
    }

    /// Closes the engine if this is the last handle; otherwise only flushes.
    pub fn close(self: Arc<Hub>) -> Result<()> {
        match Arc::try_unwrap(self) {
            Ok(hub) => {
                let inner = hub
                    .inner
                    .into_inner()
                    .unwrap_or_else(PoisonError::into_inner);
                inner.engine.close()?;
            }
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
            .field("limits", &self.limits)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn remove_subscriber(&mut self, subscription: &Arc<Subscription>) {
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
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        // Nobody here follows the room any more: forget the other nodes' entries.
        for client in cluster.merge.unfollow(&name) {
            if let Some(change) = self.engine.fold_unlogged(&Event::Leave(Leave {
                room: name.clone(),
                client,
                at: UnixMs::now(),
            })) {
                self.counts.apply(&change);
            }
        }
        let _ = cluster.links.rooms.send(RoomCommand::Part { room: name });
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
        let materializer = self.engine.materializer();
        if materializer.get(room, entry.client, now).is_none()
            && materializer.room_len(room) >= max_entries
        {
            return Err(Reject::RoomFull);
        }
        let Some(cluster) = self.cluster.as_mut() else {
            return Ok(None);
        };
        let merge = &mut cluster.merge;
        let own_expiry = if merge.is_remote(room, entry.client) {
            None
        } else {
            self.engine
                .materializer()
                .get(room, entry.client, now)
                .map(|own| own.expires_at)
        };
        let Some(action) = merge.upsert(room, origin, &entry, own_expiry, now) else {
            return Ok(None);
        };
        match action {
            Upsert::Fold => {}
            Upsert::TakeOver => {
                if let Some((change, _)) = self.engine.leave(Leave {
                    room: room.clone(),
                    client: entry.client,
                    at: now,
                }) {
                    self.counts.apply(&change);
                }
            }
        }
        // `at + ttl` is the owner's expiry, to the millisecond.
        let Some(change) = self.engine.fold_unlogged(&Event::Heartbeat(Heartbeat {
            room: room.clone(),
            client: entry.client,
            user: entry.user,
            data: entry.data,
            ttl: Ttl(0),
            at: entry.expires_at,
        })) else {
            return Ok(None);
        };
        self.counts.apply(&change);
        Ok(Some(change))
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
        let Some(cluster) = self.cluster.as_mut() else {
            return Ok(None);
        };
        let merge = &mut cluster.merge;
        let holds_own = !merge.is_remote(room, client)
            && self.engine.materializer().get(room, client, now).is_some();
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
        let change = match merge.remove(room, origin, client, kind, holds_own, now) {
            None => None,
            Some(Removal::Own) => self.engine.leave(leave).map(|(change, _)| change),
            Some(Removal::Remote(kind)) => {
                self.engine
                    .fold_unlogged(&Event::Leave(leave))
                    .map(|mut change| {
                        change.kind = kind;
                        change
                    })
            }
        };
        if let Some(change) = &change {
            self.counts.apply(change);
        }
        Ok(change)
    }

    fn fan_out(&mut self, change: &Change) {
        fan_out(
            &self.subscribers,
            &mut self.published,
            change,
            self.engine.materializer(),
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
    pub fn enable_cluster(&self, node: u16, links: Links) {
        self.lock().cluster = Some(Cluster {
            links,
            seq: UnixMs::now().0.saturating_mul(1_000_000),
            merge: Merge::new(node),
        });
    }

    /// Folds an authenticated change another node published in `room`.
    pub fn apply_remote(
        &self,
        room: &Arc<str>,
        generation: u64,
        remote: RemoteChange,
        now: UnixMs,
    ) -> Result<(), Reject> {
        let mut inner = self.lock();
        if !inner
            .cluster
            .as_ref()
            .is_some_and(|c| c.merge.accepts(room, generation, remote.node))
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
            RemoteKind::Upsert(entry) => inner.upsert_remote(room, origin, entry, max_entries, now),
            RemoteKind::Leave => inner.remove_remote(room, origin, client, ChangeKind::Leave, now),
            RemoteKind::Expire => {
                inner.remove_remote(room, origin, client, ChangeKind::Expire, now)
            }
        }?;
        if let Some(change) = change {
            inner.fan_out(&change);
        }
        Ok(())
    }

    /// Node `node` is taken for dead: removes its entries from every followed room,
    /// unlogged (subscribers see them leave). They come back when it republishes.
    pub fn node_lost(&self, node: u16, now: UnixMs) {
        let mut inner = self.lock();
        let Some(cluster) = &mut inner.cluster else {
            return;
        };
        for (room, client) in cluster.merge.lost(node, now) {
            if let Some(change) = inner.engine.fold_unlogged(&Event::Leave(Leave {
                room,
                client,
                at: now,
            })) {
                inner.counts.apply(&change);
                inner.fan_out(&change);
            }
        }
    }

    /// A page of rooms (after `after`, at most `limit`) with this node's own entries
    /// only: what it answers to another node listing the cluster's rooms. The cursor
    /// says how far the page got, whatever was left out for holding no own entry.
    pub(crate) fn owned_rooms_page(&self, after: Option<&str>, limit: usize) -> RoomsPage {
        let mut page = self.counts.page(after, limit);
        let inner = self.lock();
        if let Some(cluster) = &inner.cluster {
            for (room, count) in &mut page.rooms {
                *count = count.saturating_sub(cluster.merge.remote_in(room));
            }
            page.rooms.retain(|(_, count)| *count > 0);
        }
        page
    }

    /// The live entries of `room` this node holds, and whether they are the whole
    /// cluster's: the room is followed and synced. Otherwise they are this node's own
    /// only (a REST read asks the other nodes for theirs).
    pub fn room_entries(&self, room: &str) -> (Vec<Entry>, bool) {
        let now = UnixMs::now();
        let inner = self.lock();
        let complete = inner.cluster.is_none()
            || inner
                .subscribers
                .get(room)
                .is_some_and(|feed| feed.waiting.is_none());
        let entries = inner
            .engine
            .materializer()
            .entries(room, now)
            .cloned()
            .collect();
        (entries, complete)
    }

    /// A sync of `room` begins: removals are remembered until it ends.
    pub fn sync_started(&self, room: &str, generation: u64) {
        if let Some(cluster) = &mut self.lock().cluster {
            cluster.merge.sync_started(room, generation);
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
        let mut inner = self.lock();
        if !inner
            .cluster
            .as_ref()
            .is_some_and(|c| c.merge.follows(room, generation))
        {
            return;
        }
        for reply in replies {
            let origin = Origin {
                node: reply.node,
                seq: reply.seq,
            };
            if !inner
                .cluster
                .as_ref()
                .is_some_and(|c| c.merge.accepts(room, generation, reply.node))
            {
                continue;
            }
            let mut listed = hashbrown::HashSet::with_capacity(reply.entries.len());
            let max_entries = self.limits.max_entries_per_room;
            for entry in reply.entries {
                listed.insert(entry.client);
                match inner.upsert_remote(room, origin, entry, max_entries, now) {
                    Ok(Some(change)) => inner.fan_out(&change),
                    Ok(None) => {}
                    Err(reject) => self.metrics.cluster_rejected(reject),
                }
            }
            let gone = inner
                .cluster
                .as_ref()
                .map(|c| c.merge.unlisted(room, origin, &listed))
                .unwrap_or_default();
            for client in gone {
                match inner.remove_remote(room, origin, client, ChangeKind::Leave, now) {
                    Ok(Some(change)) => inner.fan_out(&change),
                    Ok(None) => {}
                    Err(reject) => self.metrics.cluster_rejected(reject),
                }
            }
            if let Some(cluster) = &mut inner.cluster {
                cluster.merge.reply_folded(room, origin);
            }
        }
        if let Some(cluster) = &mut inner.cluster {
            cluster.merge.sync_ended(room);
        }
        if !first {
            return;
        }
        let Some(room_feed) = inner.subscribers.get_mut(room) else {
            return;
        };
        let Some(waiting) = room_feed.waiting.take() else {
            return;
        };
        let feed = room_feed.feed.clone();
        let view = RoomView::take(&inner, room, &feed, now);
        drop(inner);
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
    /// number it used: the answer to a sync request.
    pub fn owned_entries(&self, room: &str, now: UnixMs) -> (u64, String) {
        let inner = self.lock();
        let Some(cluster) = &inner.cluster else {
            return (0, "[]".into());
        };
        let entries = protocol::entries_json(
            inner
                .engine
                .materializer()
                .entries(room, now)
                .filter(|e| !cluster.merge.is_remote(room, e.client)),
        );
        (cluster.seq, entries)
    }

    /// Every live entry this node owns, as upserts with fresh sequence numbers.
    pub fn owned_live(&self, now: UnixMs) -> Vec<Outgoing> {
        let mut inner = self.lock();
        let Inner {
            engine, cluster, ..
        } = &mut *inner;
        let Some(cluster) = cluster else {
            return Vec::new();
        };
        let materializer = engine.materializer();
        let rooms: Vec<Arc<str>> = materializer
            .rooms(now)
            .map(|(name, _)| name.clone())
            .collect();
        let mut owned = Vec::new();
        for room in rooms {
            for entry in materializer.entries(&room, now) {
                if cluster.merge.is_remote(&room, entry.client) {
                    continue;
                }
                let seq = cluster.next_seq();
                owned.push(Outgoing {
                    seq,
                    change: Change {
                        room: room.clone(),
                        kind: ChangeKind::Update,
                        entry: entry.clone(),
                    },
                });
            }
        }
        owned
    }
}

/// A room's live entries, copied under the hub lock together with its feed's head:
/// nothing was published between the two. Serializing it (O(entries)) happens after
/// the lock is released.
#[derive(Debug)]
struct RoomView {
    room: Arc<str>,
    now: UnixMs,
    entries: Vec<Entry>,
    head: u64,
}

impl RoomView {
    /// Copies `room`'s entries (each a few reference counts) and takes `feed`'s head.
    /// Taking `&Inner` means taking it under the lock.
    fn take(inner: &Inner, room: &Arc<str>, feed: &Feed, now: UnixMs) -> RoomView {
        RoomView {
            room: room.clone(),
            now,
            entries: inner
                .engine
                .materializer()
                .entries(room, now)
                .cloned()
                .collect(),
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
/// subscribers happen once the lock is released.
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
        let inner = hub.lock();
        let mut ids: Vec<u64> = inner
            .engine
            .materializer()
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
    fn room_listing_follows_every_change_without_the_hub_lock() {
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
                let inner = hub.lock();
                let materializer = inner.engine.materializer();
                let mut expected: Vec<(String, usize)> = rooms
                    .iter()
                    .map(|r| (r.to_string(), materializer.room_len(r)))
                    .filter(|(_, n)| *n > 0)
                    .collect();
                expected.sort();
                drop(inner);
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
        // Listing while the hub lock is held: it does not wait for it.
        let held = hub.lock();
        let (tx, rx) = std::sync::mpsc::channel();
        let lister = hub.clone();
        let thread = std::thread::spawn(move || tx.send(lister.rooms_page(None, 100)));
        let page = rx.recv_timeout(Duration::from_secs(30));
        drop(held);
        thread.join().unwrap().ok();
        assert!(page.is_ok(), "rooms_page waited for the hub lock");
    }
}
