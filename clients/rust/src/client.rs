//! The client's background task and its handles.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use rollcall_protocol::{Change, ClientMessage, CloseCode, Json, ServerMessage, SubscribeMode};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::view::{Diff, DiffStream, OnChange};
use crate::{Broadcast, CloseReason, Counts, Entry, Error, Event, Result, RoomEvent, ServerError};

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
    /// after a final close code ([`CloseCode::is_final`]).
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

/// Opens a socket to `options.urls[index]` and performs the `hello`/`welcome`
/// handshake.
async fn open(options: &Options, index: usize, resume: Option<&str>) -> Result<(Socket, Session)> {
    let url = options.urls.get(index).ok_or(Error::NoUrl)?;
    // Nagle's algorithm would hold a small frame until the previous one is acked,
    // adding up to the peer's delayed-ACK time (40 ms) to a request.
    let (mut socket, _) =
        tokio_tungstenite::connect_async_with_config(url.as_str(), None, true).await?;
    let hello = ClientMessage::Hello {
        token: options.token.clone(),
        resume: resume.map(str::to_owned),
        user: options.user.clone(),
    };
    socket.send(Message::Text(hello.to_json().into())).await?;
    loop {
        let Some(message) = socket.next().await else {
            return Err(Error::Disconnected);
        };
        match message? {
            Message::Text(text) => match ServerMessage::from_json(&text) {
                Ok(ServerMessage::Welcome {
                    client_id,
                    resume_token,
                    resumed,
                    ..
                }) => {
                    let session = Session {
                        client_id,
                        resume_token,
                        resumed,
                        url: url.clone(),
                    };
                    return Ok((socket, session));
                }
                // An auth refusal comes before its close (4003); the close says it.
                Ok(ServerMessage::Error { .. }) => {}
                Ok(_) | Err(_) => {
                    return Err(Error::Protocol(format!("expected welcome, got {text}")));
                }
            },
            Message::Close(frame) => {
                return Err(match frame {
                    Some(frame) => Error::Closed(close_reason(&frame)),
                    None => Error::Disconnected,
                });
            }
            _ => {}
        }
    }
}

fn close_reason(frame: &CloseFrame) -> CloseReason {
    CloseReason {
        code: CloseCode::from_u16(frame.code.into()),
        reason: frame.reason.to_string(),
    }
}

type Pending = HashMap<u64, oneshot::Sender<Result<u64>>>;

/// Owns the socket; reconnects (round robin over the URLs) until closed.
async fn run(
    options: Options,
    mut index: usize,
    shared: Arc<Shared>,
    socket: Socket,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut socket = Some(socket);
    // The first socket needs no restore: every command issued so far is still queued.
    let mut restore = false;
    let mut attempt: u32 = 0;
    // The token of the latest session: kept apart from `shared.session`, which is
    // cleared while disconnected.
    let mut resume = shared
        .session
        .borrow()
        .as_ref()
        .map(|s| s.resume_token.clone());
    let final_reason = loop {
        let current = match socket.take() {
            Some(socket) => socket,
            None => match open(&options, index, resume.as_deref()).await {
                Ok((socket, session)) => {
                    resume = Some(session.resume_token.clone());
                    shared.session.send_replace(Some(session.clone()));
                    shared.connection.send_replace(ConnectionState::Connected);
                    shared.emit(Event::Connected(session));
                    attempt = 0;
                    socket
                }
                Err(Error::Closed(reason)) if reason.code.is_final() => break Some(reason),
                Err(error) if error.is_final() => break None,
                Err(error) => {
                    tracing::debug!(%error, url = options.urls[index], "reconnect failed");
                    index = (index + 1) % options.urls.len();
                    if !backoff(&options, &mut attempt, &shared, &mut commands).await {
                        break None;
                    }
                    continue;
                }
            },
        };
        let ended = connected(&shared, current, &mut commands, &options, restore).await;
        restore = true;
        match ended {
            Ended::Closed => break None,
            Ended::Fatal(reason) => break Some(reason),
            Ended::Dropped(reason) => {
                shared.session.send_replace(None);
                shared.emit(Event::Disconnected(reason));
                if !options.reconnect {
                    break None;
                }
                shared
                    .connection
                    .send_replace(ConnectionState::Reconnecting);
                index = (index + 1) % options.urls.len();
                if !backoff(&options, &mut attempt, &shared, &mut commands).await {
                    break None;
                }
            }
        }
    };
    if let Some(reason) = &final_reason {
        tracing::warn!(%reason, "closed by the server for good; not reconnecting");
    }
    shared.lock().close_reason.clone_from(&final_reason);
    shared.session.send_replace(None);
    shared.connection.send_replace(ConnectionState::Closed);
    shared.emit(Event::Closed(final_reason));
    // Unblock anything still waiting on a room.
    for room in shared.lock().rooms.values() {
        room.bump();
    }
}

/// Waits out a reconnect delay; false if the client was closed meanwhile.
async fn backoff(
    options: &Options,
    attempt: &mut u32,
    shared: &Shared,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> bool {
    shared.session.send_replace(None);
    shared
        .connection
        .send_replace(ConnectionState::Reconnecting);
    let base = options
        .backoff_min
        .saturating_mul(2u32.saturating_pow(*attempt));
    let capped = base.min(options.backoff_max);
    // Full jitter, so that many clients of a restarted server do not reconnect at once.
    let delay = capped.mul_f64(0.5 + fastrand::f64() / 2.0);
    *attempt = attempt.saturating_add(1);
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return true,
            command = commands.recv() => match command {
                None => return false,
                Some(Command::Close(done)) => {
                    let _ = done.send(());
                    return false;
                }
                // Room state was recorded by the handle; acks cannot be had offline.
                Some(
                    Command::Heartbeat { ack: Some(ack), .. }
                    | Command::Leave { ack: Some(ack), .. }
                    | Command::Broadcast { ack: Some(ack), .. },
                ) => {
                    let _ = ack.send(Err(Error::Disconnected));
                }
                Some(_) => {}
            }
        }
    }
}

enum Ended {
    /// The client closed.
    Closed,
    /// The server closed with a final code.
    Fatal(CloseReason),
    /// The connection dropped (with the server's close, if it sent one).
    Dropped(Option<CloseReason>),
}

/// A fresh `ref` answered into `ack`, when there is one.
fn with_ref(
    next_ref: &mut u64,
    pending: &mut Pending,
    ack: Option<oneshot::Sender<Result<u64>>>,
) -> Option<u64> {
    ack.map(|ack| {
        let r = *next_ref;
        *next_ref += 1;
        pending.insert(r, ack);
        r
    })
}

/// What a command puts on the socket.
enum Outgoing {
    Message(ClientMessage),
    Raw(String),
    Close(oneshot::Sender<()>),
}

fn outgoing(
    shared: &Shared,
    command: Command,
    next_ref: &mut u64,
    pending: &mut Pending,
) -> Outgoing {
    Outgoing::Message(match command {
        Command::Subscribe(room) => {
            let want = shared
                .lock()
                .rooms
                .get(&room)
                .map(|state| state.want)
                .unwrap_or_default();
            want.subscribe(room)
        }
        Command::Broadcast { room, data, ack } => ClientMessage::Broadcast {
            room,
            data,
            reference: with_ref(next_ref, pending, ack),
        },
        Command::Unsubscribe(room) => ClientMessage::Unsubscribe {
            room,
            reference: None,
        },
        Command::Heartbeat {
            room,
            data,
            ttl_ms,
            ack,
        } => ClientMessage::Heartbeat {
            room,
            data,
            ttl_ms,
            reference: with_ref(next_ref, pending, ack),
        },
        Command::Leave { room, ack } => {
            if let Some(state) = shared.lock().rooms.get_mut(&room) {
                state.pending_leave = false;
            }
            ClientMessage::Leave {
                room,
                reference: with_ref(next_ref, pending, ack),
            }
        }
        Command::Raw(text) => return Outgoing::Raw(text),
        Command::Close(done) => return Outgoing::Close(done),
    })
}

/// After a reconnect: the messages that bring the server up to the rooms' state
/// (leaves made while disconnected, subscriptions, then each room's last heartbeat
/// with what remains of its TTL, never a fresh one), and the queued commands still
/// to send after them. Queued commands the room state already holds are dropped, so
/// nothing goes out twice; those awaiting an ack (or raw, or close) are kept.
fn restore(
    shared: &Shared,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> (Vec<ClientMessage>, Vec<Command>) {
    let mut kept = Vec::new();
    let mut acked_heartbeats = HashSet::new();
    let mut acked_leaves = HashSet::new();
    while let Ok(command) = commands.try_recv() {
        match &command {
            Command::Heartbeat {
                room, ack: Some(_), ..
            } => {
                acked_heartbeats.insert(room.clone());
            }
            Command::Leave { room, ack: Some(_) } => {
                acked_leaves.insert(room.clone());
            }
            // Broadcasts are ephemeral: one that waits for its ack fails with
            // `Disconnected` below (it was never sent); others are dropped.
            Command::Broadcast { ack: Some(_), .. } | Command::Raw(_) | Command::Close(_) => {}
            // Recorded in the room's state, restored below.
            _ => continue,
        }
        kept.push(command);
    }
    let mut messages = Vec::new();
    let mut state = shared.lock();
    for (name, room) in &mut state.rooms {
        if room.pending_leave && !acked_leaves.contains(name) {
            room.pending_leave = false;
            messages.push(ClientMessage::Leave {
                room: name.clone(),
                reference: None,
            });
        }
        if room.subscribed {
            messages.push(room.want.subscribe(name.clone()));
        }
        if let Some(last) = &room.last_heartbeat {
            let remaining = millis(last.ttl.saturating_sub(last.sent.elapsed()));
            if remaining > 0 && !acked_heartbeats.contains(name) {
                messages.push(ClientMessage::Heartbeat {
                    room: name.clone(),
                    data: last.data.clone(),
                    ttl_ms: remaining,
                    reference: None,
                });
            }
        }
    }
    (messages, kept)
}

/// Sends one command's message; `Some` when the connection ends with it.
async fn send_command(
    shared: &Shared,
    socket: &mut Socket,
    command: Command,
    next_ref: &mut u64,
    pending: &mut Pending,
    options: &Options,
) -> Option<Ended> {
    let text = match outgoing(shared, command, next_ref, pending) {
        Outgoing::Message(message) => message.to_json(),
        Outgoing::Raw(text) => text,
        Outgoing::Close(done) => {
            close_cleanly(shared, socket, next_ref, options.close_timeout).await;
            let _ = done.send(());
            return Some(Ended::Closed);
        }
    };
    match socket.send(Message::Text(text.into())).await {
        Ok(()) => None,
        Err(_) => Some(Ended::Dropped(None)),
    }
}

async fn connected(
    shared: &Shared,
    mut socket: Socket,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    options: &Options,
    reconnected: bool,
) -> Ended {
    let mut pending: Pending = HashMap::new();
    let mut next_ref: u64 = 1;
    let mut ping_sent: HashMap<u64, Instant> = HashMap::new();

    let (mut messages, kept) = if reconnected {
        restore(shared, commands)
    } else {
        (Vec::new(), Vec::new())
    };
    let ping_ref = next_ref;
    next_ref += 1;
    ping_sent.insert(ping_ref, Instant::now());
    messages.push(ClientMessage::Ping {
        reference: Some(ping_ref),
    });
    for message in messages {
        if socket
            .feed(Message::Text(message.to_json().into()))
            .await
            .is_err()
        {
            return Ended::Dropped(None);
        }
    }
    if socket.flush().await.is_err() {
        return Ended::Dropped(None);
    }
    for command in kept {
        let ended = send_command(
            shared,
            &mut socket,
            command,
            &mut next_ref,
            &mut pending,
            options,
        )
        .await;
        if let Some(ended) = ended {
            return finish(ended, &mut pending);
        }
    }

    let mut ping = tokio::time::interval(options.ping_interval);
    ping.reset();
    let mut last_heard = Instant::now();
    let ended = loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break Ended::Closed };
                let ended = send_command(shared, &mut socket, command, &mut next_ref, &mut pending, options).await;
                if let Some(ended) = ended {
                    break ended;
                }
            }
            message = socket.next() => {
                last_heard = Instant::now();
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => {
                        let reason = frame.as_ref().map(close_reason);
                        break match reason {
                            Some(reason) if reason.code.is_final() => Ended::Fatal(reason),
                            reason => Ended::Dropped(reason),
                        };
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => break Ended::Dropped(None),
                };
                handle(shared, &text, &mut pending, &mut ping_sent);
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= options.idle_timeout {
                    tracing::debug!("nothing heard within the idle timeout; reconnecting");
                    break Ended::Dropped(None);
                }
                let r = next_ref;
                next_ref += 1;
                ping_sent.insert(r, Instant::now());
                let ping = ClientMessage::Ping { reference: Some(r) };
                if socket.send(Message::Text(ping.to_json().into())).await.is_err() {
                    break Ended::Dropped(None);
                }
            }
        }
    };
    finish(ended, &mut pending)
}

/// Fails the requests still waiting for an answer.
fn finish(ended: Ended, pending: &mut Pending) -> Ended {
    for (_, ack) in pending.drain() {
        let _ = ack.send(Err(Error::Disconnected));
    }
    ended
}

/// Leaves every heartbeated room, waits for the acks (bounded), closes with 1000.
async fn close_cleanly(shared: &Shared, socket: &mut Socket, next_ref: &mut u64, wait: Duration) {
    let rooms: Vec<String> = {
        let mut state = shared.lock();
        state
            .rooms
            .iter_mut()
            .filter_map(|(name, room)| {
                room.track_generation += 1;
                room.last_heartbeat.take().map(|_| name.clone())
            })
            .collect()
    };
    let mut refs = Vec::new();
    for room in rooms {
        let r = *next_ref;
        *next_ref += 1;
        refs.push(r);
        let leave = ClientMessage::Leave {
            room,
            reference: Some(r),
        };
        if socket
            .feed(Message::Text(leave.to_json().into()))
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = socket.flush().await;
    let deadline = tokio::time::Instant::now() + wait;
    while !refs.is_empty() {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                if let Ok(
                    ServerMessage::Ack { reference, .. }
                    | ServerMessage::Error {
                        reference: Some(reference),
                        ..
                    },
                ) = ServerMessage::from_json(&text)
                {
                    refs.retain(|x| *x != reference);
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: WsCloseCode::Normal,
            reason: "client closed".into(),
        })))
        .await;
}

/// A JSON value this parser can read; one it refuses (a lone surrogate escape, a
/// number out of range, nesting past its limit) becomes `null`.
fn value_or_null(data: &str) -> Value {
    serde_json::from_str(data).unwrap_or_else(|error| {
        tracing::warn!(%error, value = data, "unreadable value replaced by null");
        Value::Null
    })
}

fn entry_of(entry: &rollcall_protocol::Entry) -> (u64, Entry) {
    (
        entry.client_id,
        Entry {
            data: value_or_null(entry.data.as_str()),
            expires_at_ms: entry.expires_at_ms,
            user_id: entry.user_id.clone(),
        },
    )
}

/// Reads a frame that does not parse as a whole (an element whose data is beyond
/// this parser's nesting limit, an unknown `op` from a newer server): the elements of
/// `entries` and `changes` one by one, so one unreadable element costs only itself
/// (its data read as `null`, or the element dropped), never the frame's others.
fn parse_leniently(text: &str) -> Option<ServerMessage> {
    let fields: BTreeMap<String, &RawValue> = serde_json::from_str(text).ok()?;
    let mut frame: BTreeMap<String, Box<RawValue>> = BTreeMap::new();
    for (key, raw) in fields {
        let value = if key == "entries" || key == "changes" {
            let elements: Vec<&RawValue> = serde_json::from_str(raw.get()).ok()?;
            let kept: Vec<String> = elements
                .into_iter()
                .filter_map(|element| {
                    if readable(&key, element.get()) {
                        Some(element.get().to_owned())
                    } else {
                        without_data(&key, element)
                    }
                })
                .collect();
            RawValue::from_string(format!("[{}]", kept.join(","))).ok()?
        } else {
            raw.to_owned()
        };
        frame.insert(key, value);
    }
    ServerMessage::from_json(&serde_json::to_string(&frame).ok()?).ok()
}

/// Whether `text` reads as one element of `key` (`entries` or `changes`).
fn readable(key: &str, text: &str) -> bool {
    if key == "entries" {
        serde_json::from_str::<rollcall_protocol::Entry>(text).is_ok()
    } else {
        serde_json::from_str::<Change>(text).is_ok()
    }
}

/// An element with its `data` replaced by `null`, if it then reads as an element of
/// `key`.
fn without_data(key: &str, element: &RawValue) -> Option<String> {
    let mut fields: BTreeMap<String, &RawValue> = serde_json::from_str(element.get()).ok()?;
    let null = RawValue::from_string("null".into()).ok()?;
    fields.insert("data".into(), &null);
    let text = serde_json::to_string(&fields).ok()?;
    readable(key, &text).then_some(text)
}

fn room_event(change: &Change) -> Option<RoomEvent> {
    Some(match change {
        Change::Upsert {
            client_id,
            data,
            expires_at_ms,
            user_id,
        } => RoomEvent::Upsert(
            *client_id,
            Entry {
                data: value_or_null(data.as_str()),
                expires_at_ms: *expires_at_ms,
                user_id: user_id.clone(),
            },
        ),
        Change::Leave { client_id } => RoomEvent::Leave(*client_id),
        Change::Expire { client_id } => RoomEvent::Expire(*client_id),
        _ => return None,
    })
}

fn handle(shared: &Shared, text: &str, pending: &mut Pending, pings: &mut HashMap<u64, Instant>) {
    let Some(message) = ServerMessage::from_json(text)
        .ok()
        .or_else(|| parse_leniently(text))
    else {
        tracing::warn!(%text, "not a message of this protocol version");
        return;
    };
    match message {
        ServerMessage::Snapshot {
            room,
            server_time_ms,
            entries,
            entry_count,
            user_count,
            ..
        } => {
            let entries: Vec<(u64, Entry)> = entries.iter().map(entry_of).collect();
            let counts = entry_count.map(|entries| Counts {
                entries,
                users: user_count.unwrap_or(0),
            });
            {
                let mut state = shared.lock();
                let Some(state_room) = state.rooms.get_mut(&room) else {
                    return;
                };
                state_room.entries = entries.iter().cloned().collect();
                state_room.order = if state_room.want.is_sample() {
                    entries.iter().map(|(id, _)| *id).collect()
                } else {
                    Vec::new()
                };
                state_room.counts = counts;
                state_room.synced = true;
                let _ = state_room.events.send(RoomEvent::Snapshot(entries.clone()));
                state_room.bump();
            }
            shared.emit(Event::Snapshot {
                room,
                server_time_ms,
                entries,
                counts,
            });
        }
        ServerMessage::Changes {
            room,
            server_time_ms,
            changes,
        } => {
            let events: Vec<RoomEvent> = changes.iter().filter_map(room_event).collect();
            {
                let mut state = shared.lock();
                let Some(state_room) = state.rooms.get_mut(&room) else {
                    return;
                };
                let sample = state_room.want.is_sample();
                for event in &events {
                    match event {
                        RoomEvent::Upsert(client, entry) => {
                            // An entry joining a sample is newer than every sampled one.
                            let new = state_room.entries.insert(*client, entry.clone()).is_none();
                            if sample && new {
                                state_room.order.push(*client);
                            }
                        }
                        RoomEvent::Leave(client) | RoomEvent::Expire(client) => {
                            state_room.entries.remove(client);
                            if sample {
                                state_room.order.retain(|id| id != client);
                            }
                        }
                        RoomEvent::Snapshot(_) => {}
                    }
                    let _ = state_room.events.send(event.clone());
                }
                state_room.bump();
            }
            shared.emit(Event::Changes {
                room,
                server_time_ms,
                changes: events,
            });
        }
        ServerMessage::Occupancy {
            room,
            server_time_ms,
            entry_count,
            user_count,
        } => {
            let counts = Counts {
                entries: entry_count,
                users: user_count,
            };
            {
                let mut state = shared.lock();
                let Some(state_room) = state.rooms.get_mut(&room) else {
                    return;
                };
                state_room.counts = Some(counts);
                state_room.synced = true;
                state_room.bump();
            }
            shared.emit(Event::Occupancy {
                room,
                server_time_ms,
                counts,
            });
        }
        ServerMessage::Broadcast {
            room,
            client_id,
            user_id,
            data,
            server_time_ms,
        } => {
            let broadcast = Broadcast {
                room,
                client_id,
                user_id,
                data: value_or_null(data.as_str()),
                server_time_ms,
            };
            if let Some(state_room) = shared.lock().rooms.get(&broadcast.room) {
                let _ = state_room.broadcasts.send(broadcast.clone());
            }
            shared.emit(Event::Broadcast(broadcast));
        }
        ServerMessage::Ack {
            reference,
            expires_at_ms,
        } => {
            if let Some(ack) = pending.remove(&reference) {
                let _ = ack.send(Ok(expires_at_ms.unwrap_or(0)));
            }
        }
        ServerMessage::Pong {
            reference: Some(reference),
            server_time_ms,
        } => {
            let Some(sent) = pings.remove(&reference) else {
                return;
            };
            let rtt = sent.elapsed();
            let mut state = shared.lock();
            // Keep the sample with the smallest round trip: its midpoint is the most
            // precise estimate of when the server read its clock.
            if state.best_rtt.is_none_or(|best| rtt <= best) {
                state.best_rtt = Some(rtt);
                let half = i64::try_from(rtt.as_millis() / 2).unwrap_or(0);
                let server = i64::try_from(server_time_ms).unwrap_or(i64::MAX);
                state.offset_ms = server - (local_now_ms() - half);
            }
        }
        ServerMessage::Error {
            code,
            message,
            reference,
            room,
        } => {
            let error = ServerError {
                code,
                message,
                reference,
                room,
            };
            if let Some(ack) = reference.and_then(|r| pending.remove(&r)) {
                let _ = ack.send(Err(Error::Server(error.clone())));
            }
            let _ = shared.errors.send(error.clone());
            shared.emit(Event::Error(error));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_unreadable_entry_costs_only_itself() {
        let deep = format!("{}{}", "[".repeat(130), "]".repeat(130));
        let frame = format!(
            r#"{{"type":"changes","room":"r","serverTimeMs":1,"changes":[
                {{"op":"upsert","clientId":1,"data":{{"ok":true}},"expiresAtMs":9}},
                {{"op":"upsert","clientId":2,"data":"\ud800","expiresAtMs":9}},
                {{"op":"upsert","clientId":3,"data":1e999999,"expiresAtMs":9}},
                {{"op":"upsert","clientId":4,"data":{deep},"expiresAtMs":9}},
                {{"op":"teleport","clientId":6}},
                {{"op":"leave","clientId":5}}]}}"#
        );
        assert!(ServerMessage::from_json(&frame).is_err());
        let message = parse_leniently(&frame).expect("read leniently");
        let ServerMessage::Changes { room, changes, .. } = message else {
            panic!("not changes: {message:?}");
        };
        assert_eq!(room, "r");
        let events: Vec<RoomEvent> = changes.iter().filter_map(room_event).collect();
        assert_eq!(events.len(), 5, "{events:?}");
        assert!(matches!(&events[0], RoomEvent::Upsert(1, e) if e.data["ok"] == true));
        for (i, event) in events[1..4].iter().enumerate() {
            assert!(
                matches!(event, RoomEvent::Upsert(id, e) if *id == i as u64 + 2 && e.data.is_null() && e.expires_at_ms == 9),
                "{event:?}"
            );
        }
        assert_eq!(events[4], RoomEvent::Leave(5));
    }
}
