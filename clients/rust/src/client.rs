//! The client's handles ([`Client`], [`Presence`]) and the state they share with the
//! background task (`task`: connecting, reconnecting, writing; `inbound`: folding the
//! server's messages into that state).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rollcall_protocol::{ClientMessage, Json, SubscribeMode};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::view::{Diff, DiffStream, OnChange};
use crate::{Broadcast, CloseReason, Counts, Entry, Error, Event, Result, RoomEvent, ServerError};

mod inbound;
mod task;

use task::{open, run};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a [`Client`] connects.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Options {
    /// The WebSocket URLs, e.g. `ws://127.0.0.1:7700/ws`: one server, or the nodes of
    /// a cluster. The client starts with the first; whenever a connection fails or
    /// drops it tries the next (round robin, with backoff), presenting its resume
    /// token so it keeps its client id (the nodes share `--resume-secret-file`).
    pub urls: Vec<String>,
    /// A resume token from an earlier session, to get its client id back (it survives
    /// server restarts).
    pub resume: Option<String>,
    /// A JWT, when the server runs with auth.
    pub token: Option<String>,
    /// Without auth: the user behind this client (a person with several tabs or
    /// devices has one client per tab and one user). It becomes the `user_id` of this
    /// client's entries. An unverified claim: for display and counting only. With auth
    /// the server ignores it and uses the token's `sub`.
    pub user: Option<String>,
    /// Reconnect after a dropped connection (with capped exponential backoff). Never
    /// after a final close code
    /// ([`CloseCode::is_final`](rollcall_protocol::CloseCode::is_final)).
    pub reconnect: bool,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// How long `close` waits for the server to confirm the leaves.
    pub close_timeout: Duration,
    /// Keep-alive and clock-sync ping period.
    pub ping_interval: Duration,
    /// Drop and reconnect a connection that received nothing for this long.
    pub idle_timeout: Duration,
}

impl Options {
    /// Defaults for one `url`: reconnecting, 50 ms to 5 s backoff, a ping every 10 s.
    pub fn new(url: impl Into<String>) -> Options {
        Options::with_urls([url])
    }

    /// Defaults for the nodes of a cluster, tried in turn.
    pub fn with_urls(urls: impl IntoIterator<Item = impl Into<String>>) -> Options {
        Options {
            urls: urls.into_iter().map(Into::into).collect(),
            resume: None,
            token: None,
            user: None,
            reconnect: true,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            close_timeout: Duration::from_secs(2),
            ping_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(25),
        }
    }
}

/// The server's view of this client, from its `welcome`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// This client's id.
    pub client_id: u64,
    /// Present it (in [`Options::resume`]) to get the same id back.
    pub resume_token: String,
    /// Whether the id came from a resume token.
    pub resumed: bool,
    /// The URL of the node this session is on.
    pub url: String,
}

/// The state of a [`Client`]'s connection:
/// `Connected` ⇄ `Reconnecting`, and from either → `Closed` (final).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Welcomed: requests flow.
    Connected,
    /// The connection dropped; a reconnect is scheduled or in progress.
    Reconnecting,
    /// Final: closed by [`Client::close`] or by a final close code (see
    /// [`Client::close_reason`]).
    Closed,
}

enum Command {
    Subscribe(String),
    Unsubscribe(String),
    Heartbeat {
        room: String,
        data: Json,
        ttl_ms: u64,
        ack: Option<oneshot::Sender<Result<u64>>>,
    },
    Leave {
        room: String,
        ack: Option<oneshot::Sender<Result<u64>>>,
    },
    Broadcast {
        room: String,
        data: Json,
        ack: Option<oneshot::Sender<Result<u64>>>,
    },
    Raw(String),
    Close(oneshot::Sender<()>),
}

struct LastHeartbeat {
    data: Json,
    ttl: Duration,
    sent: Instant,
}

/// What a room's subscription asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Want {
    mode: Option<SubscribeMode>,
    limit: Option<u64>,
    interval_ms: Option<u64>,
}

impl Want {
    fn subscribe(self, room: String) -> ClientMessage {
        ClientMessage::Subscribe {
            room,
            interval_ms: self.interval_ms,
            mode: self.mode,
            limit: self.limit,
            reference: None,
        }
    }

    fn is_sample(self) -> bool {
        self.mode == Some(SubscribeMode::Sample)
    }
}

pub(crate) struct Room {
    subscribed: bool,
    synced: bool,
    want: Want,
    pub(crate) entries: BTreeMap<u64, Entry>,
    /// A sample subscription: its entries' ids, oldest first.
    order: Vec<u64>,
    counts: Option<Counts>,
    broadcasts: broadcast::Sender<Broadcast>,
    pub(crate) version: watch::Sender<u64>,
    events: broadcast::Sender<RoomEvent>,
    last_heartbeat: Option<LastHeartbeat>,
    /// Bumped by every `track` and `leave`: a track loop runs while it is unchanged.
    track_generation: u64,
    /// `leave` was called and its message has not been sent on a connection yet (it
    /// was called while disconnected): sent on reconnect, since the server keeps a
    /// resumed client's entries.
    pending_leave: bool,
}

impl Room {
    fn new() -> Room {
        Room {
            subscribed: false,
            synced: false,
            want: Want::default(),
            entries: BTreeMap::new(),
            order: Vec::new(),
            counts: None,
            broadcasts: broadcast::channel(256).0,
            version: watch::channel(0).0,
            events: broadcast::channel(1_024).0,
            last_heartbeat: None,
            track_generation: 0,
            pending_leave: false,
        }
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) rooms: HashMap<String, Room>,
    /// Server clock minus local clock, in ms.
    offset_ms: i64,
    best_rtt: Option<Duration>,
    close_reason: Option<CloseReason>,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    session: watch::Sender<Option<Session>>,
    connection: watch::Sender<ConnectionState>,
    errors: broadcast::Sender<ServerError>,
    events: broadcast::Sender<Event>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn server_now_ms(&self) -> u64 {
        let offset = self.lock().offset_ms;
        u64::try_from(local_now_ms() + offset).unwrap_or(0)
    }

    pub(crate) fn is_closed(&self) -> bool {
        *self.connection.borrow() == ConnectionState::Closed
    }

    pub(crate) fn client_id(&self) -> Option<u64> {
        self.session.borrow().as_ref().map(|s| s.client_id)
    }

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }
}

/// A connection to a Rollcall server. Cheap to clone; all clones share the socket.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session", &*self.shared.session.borrow())
            .field("state", &*self.shared.connection.borrow())
            .finish_non_exhaustive()
    }
}

fn local_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Client {
    /// Connects to `url` with default [`Options`] and waits for the `welcome`.
    pub async fn connect(url: &str) -> Result<Client> {
        Client::connect_with(Options::new(url)).await
    }

    /// Connects with `options` and waits for the `welcome`: tries each URL once, in
    /// order, and fails with the last error if none answers (at once on a final one,
    /// such as a refused token).
    pub async fn connect_with(options: Options) -> Result<Client> {
        let mut last = Error::NoUrl;
        let mut opened = None;
        for index in 0..options.urls.len() {
            match open(&options, index, options.resume.as_deref()).await {
                Ok(found) => {
                    opened = Some((index, found));
                    break;
                }
                Err(error) if error.is_final() => return Err(error),
                Err(error) => last = error,
            }
        }
        let Some((index, (socket, session))) = opened else {
            return Err(last);
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            session: watch::channel(Some(session.clone())).0,
            connection: watch::channel(ConnectionState::Connected).0,
            errors: broadcast::channel(256).0,
            events: broadcast::channel(1_024).0,
        });
        shared.emit(Event::Connected(session));
        let (commands, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(options, index, shared.clone(), socket, receiver));
        Ok(Client { shared, commands })
    }

    /// The current session, `None` while reconnecting or closed.
    pub fn session(&self) -> Option<Session> {
        self.shared.session.borrow().clone()
    }

    /// This client's id (it survives reconnects); `None` while disconnected.
    pub fn client_id(&self) -> Option<u64> {
        self.shared.client_id()
    }

    /// The state of the connection.
    pub fn state(&self) -> ConnectionState {
        *self.shared.connection.borrow()
    }

    /// Every change of [`state`](Client::state) from now on.
    pub fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.shared.connection.subscribe()
    }

    /// Why the server closed the client for good (a final close code), once it did.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.lock().close_reason.clone()
    }

    /// Waits until the client is connected (at once if it is). Fails with
    /// [`Error::Closed`] when the server closed it for good, or
    /// [`Error::ClientClosed`] after [`close`](Client::close).
    pub async fn wait_connected(&self) -> Result<Session> {
        let mut session = self.shared.session.subscribe();
        let mut state = self.shared.connection.subscribe();
        loop {
            if let Some(session) = session.borrow_and_update().clone() {
                return Ok(session);
            }
            if *state.borrow_and_update() == ConnectionState::Closed {
                return Err(self
                    .close_reason()
                    .map_or(Error::ClientClosed, Error::Closed));
            }
            tokio::select! {
                changed = session.changed() => if changed.is_err() { return Err(Error::ClientClosed) },
                changed = state.changed() => if changed.is_err() { return Err(Error::ClientClosed) },
            }
        }
    }

    /// Errors the server reported.
    pub fn errors(&self) -> broadcast::Receiver<ServerError> {
        self.shared.errors.subscribe()
    }

    /// Every [`Event`] from now on: connections, snapshots, changes, errors, closes.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// The server's clock, as estimated from its timestamps.
    pub fn server_now_ms(&self) -> u64 {
        self.shared.server_now_ms()
    }

    /// A room: subscribes to it (snapshot, then changes).
    pub fn presence(&self, room: &str) -> Presence {
        self.subscribe_as(room, Want::default())
    }

    /// A room's counts only (`mode: "occupancy"`), for rooms too big to receive
    /// everyone's entries: at once, then whenever they change, at most once a second.
    /// Replaces any other subscription of this client to the room.
    pub fn occupancy(&self, room: &str) -> Occupancy {
        Occupancy {
            presence: self.subscribe_as(
                room,
                Want {
                    mode: Some(SubscribeMode::Occupancy),
                    ..Want::default()
                },
            ),
        }
    }

    /// A room's oldest `limit` entries (`mode: "sample"`, `limit` in `[1, 1000]`),
    /// kept stable (an entry stays while it lives; the next oldest replaces one that
    /// goes), and its counts. Replaces any other subscription of this client to the
    /// room.
    pub fn sample(&self, room: &str, limit: u64) -> Sample {
        self.sample_with(room, limit, Duration::ZERO)
    }

    /// [`sample`](Client::sample) with its changes at most once per `interval`,
    /// conflated (`intervalMs`; zero: as they come).
    pub fn sample_with(&self, room: &str, limit: u64, interval: Duration) -> Sample {
        let interval_ms = millis(interval);
        Sample {
            presence: self.subscribe_as(
                room,
                Want {
                    mode: Some(SubscribeMode::Sample),
                    limit: Some(limit),
                    interval_ms: (interval_ms > 0).then_some(interval_ms),
                },
            ),
        }
    }

    fn subscribe_as(&self, room: &str, want: Want) -> Presence {
        let (version, events, broadcasts) = {
            let mut state = self.shared.lock();
            let entry = state.rooms.entry(room.to_owned()).or_insert_with(Room::new);
            entry.subscribed = true;
            if entry.want != want {
                // Another kind of subscription: what the old one knew does not apply.
                entry.want = want;
                entry.synced = false;
                entry.entries.clear();
                entry.order.clear();
                entry.counts = None;
                entry.bump();
            }
            (
                entry.version.subscribe(),
                entry.events.clone(),
                entry.broadcasts.clone(),
            )
        };
        let _ = self.commands.send(Command::Subscribe(room.to_owned()));
        Presence {
            client: self.clone(),
            room: room.to_owned(),
            version,
            events,
            broadcasts,
        }
    }

    /// Sends a raw text frame (for tests of the protocol itself).
    pub fn send_raw(&self, text: impl Into<String>) {
        let _ = self.commands.send(Command::Raw(text.into()));
    }

    /// Leaves every room it heartbeated in, waits (briefly) for the server to confirm,
    /// and closes the socket with 1000.
    pub async fn close(self) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Close(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// One room of a [`Client`]: its live entries, this client's heartbeats in it, and
/// what changes.
#[derive(Debug)]
pub struct Presence {
    client: Client,
    room: String,
    version: watch::Receiver<u64>,
    events: broadcast::Sender<RoomEvent>,
    broadcasts: broadcast::Sender<Broadcast>,
}

/// A room's counts, from [`Client::occupancy`]: [`counts`](Presence::counts) and
/// [`wait_counts`](Presence::wait_counts). It derefs to the room's [`Presence`], so
/// this client can also heartbeat, track, leave and broadcast in the room (its
/// [`value`](Presence::value) stays empty: no entries are sent).
#[derive(Debug)]
pub struct Occupancy {
    presence: Presence,
}

impl Occupancy {
    /// Stops receiving the counts (this client's entry stays until left or expired).
    pub fn unsubscribe(self) {
        self.presence.unsubscribe();
    }
}

impl std::ops::Deref for Occupancy {
    type Target = Presence;

    fn deref(&self) -> &Presence {
        &self.presence
    }
}

/// A room's stable sample of its oldest entries and its counts, from
/// [`Client::sample`]. It derefs to the room's [`Presence`], whose
/// [`value`](Presence::value), diffs and waits are the sampled entries; this client can
/// also heartbeat, track, leave and broadcast there.
#[derive(Debug)]
pub struct Sample {
    presence: Presence,
}

impl Sample {
    /// The sampled entries, oldest first, live by the estimated server clock.
    pub fn entries(&self) -> Vec<(u64, Entry)> {
        let now = self.presence.client.shared.server_now_ms();
        let state = self.presence.client.shared.lock();
        let Some(room) = state.rooms.get(&self.presence.room) else {
            return Vec::new();
        };
        room.order
            .iter()
            .filter_map(|id| room.entries.get(id).map(|entry| (*id, entry)))
            .filter(|(_, entry)| now <= entry.expires_at_ms)
            .map(|(id, entry)| (id, entry.clone()))
            .collect()
    }

    /// Stops receiving the sample (this client's entry stays until left or expired).
    pub fn unsubscribe(self) {
        self.presence.unsubscribe();
    }
}

impl std::ops::Deref for Sample {
    type Target = Presence;

    fn deref(&self) -> &Presence {
        &self.presence
    }
}

impl Presence {
    /// The room's name.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// Upserts this client's entry; errors arrive on [`Client::errors`]. While the
    /// connection is down the heartbeat is kept and sent on reconnect with what is
    /// left of its TTL.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "callers pass `json!(..)` temporaries"
    )]
    pub fn heartbeat(&self, data: Value, ttl: Duration) {
        self.send_heartbeat(&data, ttl, None);
    }

    /// Upserts this client's entry and waits for the server's ack (sent once durable).
    /// Returns the entry's `expiresAtMs`; a refusal is [`Error::Server`] with its
    /// [`ErrorCode`](crate::ErrorCode).
    #[allow(
        clippy::needless_pass_by_value,
        reason = "callers pass `json!(..)` temporaries"
    )]
    pub async fn heartbeat_acked(&self, data: Value, ttl: Duration) -> Result<u64> {
        let (ack, wait) = oneshot::channel();
        self.send_heartbeat(&data, ttl, Some(ack));
        wait.await.map_err(|_| Error::ClientClosed)?
    }

    /// Like [`heartbeat`](Presence::heartbeat), then keeps re-sending the latest data
    /// (from this call or a later `heartbeat`) every `ttl / 3` until
    /// [`leave`](Presence::leave) or [`Client::close`].
    #[allow(
        clippy::needless_pass_by_value,
        reason = "callers pass `json!(..)` temporaries"
    )]
    pub fn track(&self, data: Value, ttl: Duration) {
        self.send_heartbeat(&data, ttl, None);
        let generation = {
            let mut state = self.client.shared.lock();
            let Some(room) = state.rooms.get_mut(&self.room) else {
                return;
            };
            room.track_generation += 1;
            room.track_generation
        };
        let shared: Weak<Shared> = Arc::downgrade(&self.client.shared);
        let commands = self.client.commands.clone();
        let name = self.room.clone();
        let every = (ttl / 3).max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.reset();
            loop {
                tick.tick().await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let data = {
                    let mut state = shared.lock();
                    let Some(room) = state.rooms.get_mut(&name) else {
                        return;
                    };
                    if room.track_generation != generation {
                        return;
                    }
                    let Some(last) = room.last_heartbeat.as_mut() else {
                        return;
                    };
                    last.ttl = ttl;
                    last.sent = Instant::now();
                    last.data.clone()
                };
                let heartbeat = Command::Heartbeat {
                    room: name.clone(),
                    data,
                    ttl_ms: millis(ttl),
                    ack: None,
                };
                if commands.send(heartbeat).is_err() {
                    return;
                }
            }
        });
    }

    fn send_heartbeat(
        &self,
        data: &Value,
        ttl: Duration,
        ack: Option<oneshot::Sender<Result<u64>>>,
    ) {
        let data = Json::from_value(data).unwrap_or_else(|_| Json::null());
        if let Some(room) = self.client.shared.lock().rooms.get_mut(&self.room) {
            room.last_heartbeat = Some(LastHeartbeat {
                data: data.clone(),
                ttl,
                sent: Instant::now(),
            });
        }
        let _ = self.client.commands.send(Command::Heartbeat {
            room: self.room.clone(),
            data,
            ttl_ms: millis(ttl),
            ack,
        });
    }

    /// Sends `data` to the room's other current subscribers: ephemeral, never stored
    /// (reactions, "said" bubbles). Refusals arrive on [`Client::errors`].
    #[allow(
        clippy::needless_pass_by_value,
        reason = "callers pass `json!(..)` temporaries"
    )]
    pub fn broadcast(&self, data: Value) {
        let data = Json::from_value(&data).unwrap_or_else(|_| Json::null());
        let _ = self.client.commands.send(Command::Broadcast {
            room: self.room.clone(),
            data,
            ack: None,
        });
    }

    /// [`broadcast`](Presence::broadcast) and wait for the server's ack (sent once it
    /// is queued for the subscribers); a refusal (`rate_limited`, `data_too_large`,
    /// `forbidden`) is [`Error::Server`].
    #[allow(
        clippy::needless_pass_by_value,
        reason = "callers pass `json!(..)` temporaries"
    )]
    pub async fn broadcast_acked(&self, data: Value) -> Result<()> {
        let data = Json::from_value(&data).unwrap_or_else(|_| Json::null());
        let (ack, wait) = oneshot::channel();
        let _ = self.client.commands.send(Command::Broadcast {
            room: self.room.clone(),
            data,
            ack: Some(ack),
        });
        wait.await.map_err(|_| Error::ClientClosed)?.map(|_| ())
    }

    /// Other clients' broadcasts to this room from now on (a client never receives
    /// its own).
    pub fn broadcasts(&self) -> broadcast::Receiver<Broadcast> {
        self.broadcasts.subscribe()
    }

    /// The room's counts, for an occupancy or sample subscription once they arrived
    /// (`None` for a full subscription: count [`value`](Presence::value) instead).
    pub fn counts(&self) -> Option<Counts> {
        self.client
            .shared
            .lock()
            .rooms
            .get(&self.room)
            .and_then(|room| room.counts)
    }

    /// Waits until the room's [`counts`](Presence::counts) satisfy `condition`, or
    /// `timeout`.
    pub async fn wait_counts(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(Counts) -> bool,
    ) -> Result<Counts> {
        let mut version = self.version.clone();
        let wait = async {
            loop {
                if let Some(counts) = self.counts().filter(|c| condition(*c)) {
                    return Ok(counts);
                }
                if self.client.shared.is_closed() {
                    return Err(Error::ClientClosed);
                }
                version.changed().await.map_err(|_| Error::ClientClosed)?;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// Removes this client's entry now (and stops [`track`](Presence::track)).
    pub fn leave(&self) {
        self.forget_heartbeat();
        let _ = self.client.commands.send(Command::Leave {
            room: self.room.clone(),
            ack: None,
        });
    }

    /// Removes this client's entry and waits for the server's ack.
    pub async fn leave_acked(&self) -> Result<()> {
        self.forget_heartbeat();
        let (ack, wait) = oneshot::channel();
        let _ = self.client.commands.send(Command::Leave {
            room: self.room.clone(),
            ack: Some(ack),
        });
        wait.await.map_err(|_| Error::ClientClosed)?.map(|_| ())
    }

    fn forget_heartbeat(&self) {
        if let Some(room) = self.client.shared.lock().rooms.get_mut(&self.room) {
            room.last_heartbeat = None;
            room.track_generation += 1;
            room.pending_leave = true;
        }
    }

    /// Live entries by client id, judged by the estimated server clock (an entry
    /// leaves as soon as it expires, before the server says so).
    pub fn value(&self) -> BTreeMap<u64, Entry> {
        live_entries(&self.client.shared, &self.room)
    }

    /// This client's own entry, as the server echoed it.
    pub fn own(&self) -> Option<Entry> {
        let me = self.client.client_id()?;
        self.value().remove(&me)
    }

    /// [`value`](Presence::value) without this client's own entry.
    pub fn others(&self) -> BTreeMap<u64, Entry> {
        let mut value = self.value();
        if let Some(me) = self.client.client_id() {
            value.remove(&me);
        }
        value
    }

    /// A stream of this room's events from now on.
    pub fn events(&self) -> broadcast::Receiver<RoomEvent> {
        self.events.subscribe()
    }

    /// What changes in [`value`](Presence::value), as [`Diff`]s (joined, left,
    /// updated), relative to the value when this is called.
    pub fn diffs(&self) -> DiffStream {
        DiffStream::new(
            Arc::downgrade(&self.client.shared),
            self.room.clone(),
            self.version.clone(),
            self.value(),
        )
    }

    /// Calls `listener` with the live entries and the [`Diff`] after every change of
    /// [`value`](Presence::value) (including local expiry; a refresh that only moves
    /// an entry's expiry is not a change), until the returned [`OnChange`] is dropped
    /// or the client closes.
    pub fn on_change(
        &self,
        mut listener: impl FnMut(&BTreeMap<u64, Entry>, &Diff) + Send + 'static,
    ) -> OnChange {
        let mut diffs = self.diffs();
        OnChange::new(tokio::spawn(async move {
            while let Some((value, diff)) = diffs.next().await {
                listener(&value, &diff);
            }
        }))
    }

    /// Waits until the room's first snapshot arrived, so that an empty
    /// [`value`](Presence::value) means "nobody here" rather than "not known yet".
    pub async fn synced(&self) -> Result<()> {
        let mut version = self.version.clone();
        loop {
            let synced = self
                .client
                .shared
                .lock()
                .rooms
                .get(&self.room)
                .is_some_and(|room| room.synced);
            if synced {
                return Ok(());
            }
            if self.client.shared.is_closed() {
                return Err(Error::ClientClosed);
            }
            version.changed().await.map_err(|_| Error::ClientClosed)?;
        }
    }

    /// Waits until `condition` holds for [`value`](Presence::value), or `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&BTreeMap<u64, Entry>) -> bool,
    ) -> Result<BTreeMap<u64, Entry>> {
        let mut version = self.version.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let value = self.value();
            if condition(&value) {
                return Ok(value);
            }
            // Entries also leave `value()` by the clock alone: wake when the next one
            // expires even without news from the server.
            let next = next_expiry(&self.client.shared, &self.room)
                .map_or(deadline, |at| at.min(deadline));
            tokio::select! {
                changed = version.changed() => {
                    if changed.is_err() {
                        return Err(Error::ClientClosed);
                    }
                }
                () = tokio::time::sleep_until(next) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                let value = self.value();
                return if condition(&value) {
                    Ok(value)
                } else {
                    Err(Error::Timeout)
                };
            }
        }
    }

    /// Stops receiving this room's changes (the entry stays until left or expired).
    pub fn unsubscribe(self) {
        if let Some(room) = self.client.shared.lock().rooms.get_mut(&self.room) {
            room.subscribed = false;
        }
        let _ = self
            .client
            .commands
            .send(Command::Unsubscribe(self.room.clone()));
    }
}

/// The room's entries that are live by the estimated server clock.
pub(crate) fn live_entries(shared: &Shared, room: &str) -> BTreeMap<u64, Entry> {
    let now = shared.server_now_ms();
    shared
        .lock()
        .rooms
        .get(room)
        .map(|room| {
            room.entries
                .iter()
                .filter(|(_, e)| now <= e.expires_at_ms)
                .map(|(id, e)| (*id, e.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// When the room's next live entry expires (by the local clock), if any.
pub(crate) fn next_expiry(shared: &Shared, room: &str) -> Option<tokio::time::Instant> {
    let now = shared.server_now_ms();
    let soonest = shared
        .lock()
        .rooms
        .get(room)?
        .entries
        .values()
        .map(|e| e.expires_at_ms)
        .filter(|at| *at >= now)
        .min()?;
    Some(tokio::time::Instant::now() + Duration::from_millis(soonest - now + 1))
}
