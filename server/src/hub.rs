//! Shared state: the engine, who subscribes to which room, and who is connected.
//!
//! Everything here runs under one `std::sync::Mutex`: every critical section is short
//! and never awaits, which is cheaper than an async lock and keeps a heartbeat's apply,
//! log append and fan-out atomic with respect to subscribes (a subscriber never misses
//! a change between its snapshot and its first `changes` frame).

use std::hash::RandomState;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use hashbrown::HashMap;
use rollcall_engine::{
    Change, ClientId, Durability, Engine, Heartbeat, Leave, Ticket, Ttl, UnixMs,
};
use tokio::sync::{Notify, watch};

use crate::error::Result;
use crate::fanout::{Feed, Outbox, Subscription};
use crate::identity::Identity;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::protocol::{self, ErrorCode, Rejection};

/// A room with subscribers: its feed and who reads it.
#[derive(Debug)]
struct RoomFeed {
    feed: Arc<Feed>,
    subscriptions: Vec<Arc<Subscription>>,
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
    identity: Identity,
    subscribers: Subscribers,
    sessions: HashMap<ClientId, Session>,
    next_connection: u64,
    scratch: Vec<Change>,
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
    limits: Limits,
    durability: Durability,
    durable: watch::Receiver<Ticket>,
    metrics: Metrics,
}

/// A page of `GET /v1/rooms`.
#[derive(Debug)]
pub struct RoomsPage {
    /// Rooms with their live-entry counts, sorted by name.
    pub rooms: Vec<(String, usize)>,
    /// The cursor for the next page.
    pub next: Option<String>,
}

impl Hub {
    /// Wraps an opened engine. `durable` follows the engine's durable watermark.
    pub fn new(
        mut engine: Engine,
        node: u16,
        limits: Limits,
        durable: watch::Receiver<Ticket>,
        metrics: Metrics,
    ) -> Result<Hub> {
        let identity = Identity::load(&mut engine, node)?;
        let durability = engine.durability();
        Ok(Hub {
            inner: Mutex::new(Inner {
                engine,
                identity,
                subscribers: HashMap::default(),
                sessions: HashMap::new(),
                next_connection: 1,
                scratch: Vec::new(),
            }),
            limits,
            durability,
            durable,
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// The durable watermark now.
    pub fn durable_now(&self) -> Ticket {
        *self.durable.borrow()
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
            remove_subscriber(&mut inner.subscribers, subscription);
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

    /// Subscribes `outbox` to `room` and queues the room's snapshot. Pass an existing
    /// subscription to re-send the snapshot.
    pub fn subscribe(
        &self,
        room: &Arc<str>,
        outbox: &Arc<Outbox>,
        existing: Option<&Arc<Subscription>>,
    ) -> Arc<Subscription> {
        let now = UnixMs::now();
        let mut inner = self.lock();
        let snapshot =
            protocol::snapshot(room, now, inner.engine.materializer().entries(room, now));
        let room_feed = inner
            .subscribers
            .entry(room.clone())
            .or_insert_with(|| RoomFeed {
                feed: Feed::new(),
                subscriptions: Vec::new(),
            });
        let subscription = match existing {
            Some(subscription) => subscription.clone(),
            None => {
                let subscription = outbox.subscribe(room.clone(), room_feed.feed.clone());
                room_feed.subscriptions.push(subscription.clone());
                subscription
            }
        };
        // Under the hub lock: nothing is published between the snapshot and the head.
        subscription.reset(snapshot, room_feed.feed.head());
        subscription
    }

    /// Sends a subscription that fell behind its feed the room's current state.
    pub fn resync(&self, subscription: &Subscription) {
        let now = UnixMs::now();
        let inner = self.lock();
        let snapshot = protocol::snapshot(
            &subscription.room,
            now,
            inner.engine.materializer().entries(&subscription.room, now),
        );
        subscription.reset(snapshot, subscription.feed().head());
    }

    /// Stops a subscription.
    pub fn unsubscribe(&self, outbox: &Outbox, subscription: &Arc<Subscription>) {
        let mut inner = self.lock();
        remove_subscriber(&mut inner.subscribers, subscription);
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
        let room_len = inner.engine.materializer().room_len(&change.room);
        fan_out(&inner.subscribers, &change, room_len, &self.metrics);
        Ok((expires_at, ticket))
    }

    /// Removes `client`'s entry; `None` if it had none.
    pub fn leave(&self, room: &Arc<str>, client: ClientId) -> Option<Ticket> {
        let mut inner = self.lock();
        let (change, ticket) = inner.engine.leave(Leave {
            room: room.clone(),
            client,
            at: UnixMs::now(),
        })?;
        self.metrics.leaves.increment(1);
        let room_len = inner.engine.materializer().room_len(&change.room);
        fan_out(&inner.subscribers, &change, room_len, &self.metrics);
        Some(ticket)
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
            ..
        } = &mut *inner;
        scratch.clear();
        let expired = engine.sweep(now, scratch);
        for change in scratch.drain(..) {
            let room_len = engine.materializer().room_len(&change.room);
            fan_out(subscribers, &change, room_len, &self.metrics);
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

    /// Rooms with live entries, sorted by name, after `after`, at most `limit`.
    pub fn rooms_page(&self, after: Option<&str>, limit: usize) -> RoomsPage {
        let now = UnixMs::now();
        let inner = self.lock();
        let mut rooms: Vec<(String, usize)> = inner
            .engine
            .materializer()
            .rooms(now)
            .filter(|(name, _)| after.is_none_or(|after| &***name > after))
            .map(|(name, live)| (name.to_string(), live))
            .collect();
        drop(inner);
        rooms.sort_unstable();
        let next = (rooms.len() > limit).then(|| rooms[limit - 1].0.clone());
        rooms.truncate(limit);
        RoomsPage { rooms, next }
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

fn remove_subscriber(subscribers: &mut Subscribers, subscription: &Arc<Subscription>) {
    if let Some(room) = subscribers.get_mut(&*subscription.room) {
        room.subscriptions.retain(|s| !Arc::ptr_eq(s, subscription));
        if room.subscriptions.is_empty() {
            subscribers.remove(&*subscription.room);
        }
    }
}

/// Serializes a change once and publishes it on its room's feed.
fn fan_out(subscribers: &Subscribers, change: &Change, room_len: usize, metrics: &Metrics) {
    let Some(room) = subscribers.get(&*change.room) else {
        return;
    };
    let fragment: Arc<str> = protocol::change_fragment(change).into();
    room.feed
        .publish(change.entry.client, fragment, &room.subscriptions, room_len);
    metrics
        .fanout_changes
        .increment(room.subscriptions.len() as u64);
}
