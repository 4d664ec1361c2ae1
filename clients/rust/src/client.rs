//! The client's background task and its handles.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{Entry, Error, Result, RoomEvent, ServerError};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a [`Client`] connects.
#[derive(Clone, Debug)]
pub struct Options {
    /// The WebSocket URL, e.g. `ws://127.0.0.1:7700/ws`.
    pub url: String,
    /// A resume token from an earlier session, to get its client id back.
    pub resume: Option<String>,
    /// A JWT, when the server runs with auth.
    pub token: Option<String>,
    /// Reconnect after a dropped connection (with capped exponential backoff).
    pub reconnect: bool,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// How long `close` waits for the server to confirm the leaves.
    pub close_timeout: Duration,
}

impl Options {
    /// Defaults for `url`: reconnecting, 50 ms to 5 s backoff.
    pub fn new(url: impl Into<String>) -> Options {
        Options {
            url: url.into(),
            resume: None,
            token: None,
            reconnect: true,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            close_timeout: Duration::from_secs(2),
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
}

enum Command {
    Subscribe(String),
    Unsubscribe(String),
    Heartbeat {
        room: String,
        data: String,
        ttl_ms: u64,
        ack: Option<oneshot::Sender<Result<u64>>>,
    },
    Leave {
        room: String,
        ack: Option<oneshot::Sender<Result<u64>>>,
    },
    Raw(String),
    Close(oneshot::Sender<()>),
}

struct LastHeartbeat {
    data: String,
    ttl: Duration,
    sent: Instant,
}

struct Room {
    subscribed: bool,
    entries: BTreeMap<u64, Entry>,
    version: watch::Sender<u64>,
    events: broadcast::Sender<RoomEvent>,
    last_heartbeat: Option<LastHeartbeat>,
}

impl Room {
    fn new() -> Room {
        Room {
            subscribed: false,
            entries: BTreeMap::new(),
            version: watch::channel(0).0,
            events: broadcast::channel(1_024).0,
            last_heartbeat: None,
        }
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }
}

#[derive(Default)]
struct State {
    rooms: HashMap<String, Room>,
    /// Server clock minus local clock, in ms.
    offset_ms: i64,
    best_rtt: Option<Duration>,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    session: watch::Sender<Option<Session>>,
    errors: broadcast::Sender<ServerError>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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
            .finish_non_exhaustive()
    }
}

fn local_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Client {
    /// Connects to `url` with default [`Options`] and waits for the `welcome`.
    pub async fn connect(url: &str) -> Result<Client> {
        Client::connect_with(Options::new(url)).await
    }

    /// Connects with `options` and waits for the `welcome`.
    pub async fn connect_with(options: Options) -> Result<Client> {
        let (socket, session) = open(&options, options.resume.as_deref()).await?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            session: watch::channel(Some(session)).0,
            errors: broadcast::channel(256).0,
        });
        let (commands, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(options, shared.clone(), socket, receiver));
        Ok(Client { shared, commands })
    }

    /// The current session, `None` while reconnecting.
    pub fn session(&self) -> Option<Session> {
        self.shared.session.borrow().clone()
    }

    /// This client's id (it survives reconnects).
    pub fn client_id(&self) -> Option<u64> {
        self.session().map(|s| s.client_id)
    }

    /// Waits until the client is connected (at once if it is).
    pub async fn wait_connected(&self) -> Result<Session> {
        let mut session = self.shared.session.subscribe();
        let connected = session
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::ClientClosed)?;
        connected.clone().ok_or(Error::ClientClosed)
    }

    /// Errors the server reported.
    pub fn errors(&self) -> broadcast::Receiver<ServerError> {
        self.shared.errors.subscribe()
    }

    /// The server's clock, as estimated from its timestamps.
    pub fn server_now_ms(&self) -> u64 {
        let offset = self.shared.lock().offset_ms;
        u64::try_from(local_now_ms() + offset).unwrap_or(0)
    }

    /// A room: subscribes to it (snapshot, then changes).
    pub fn presence(&self, room: &str) -> Presence {
        let (version, events) = {
            let mut state = self.shared.lock();
            let entry = state.rooms.entry(room.to_owned()).or_insert_with(Room::new);
            entry.subscribed = true;
            (entry.version.subscribe(), entry.events.clone())
        };
        let _ = self.commands.send(Command::Subscribe(room.to_owned()));
        Presence {
            client: self.clone(),
            room: room.to_owned(),
            version,
            events,
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

/// One room of a [`Client`].
#[derive(Debug)]
pub struct Presence {
    client: Client,
    room: String,
    version: watch::Receiver<u64>,
    events: broadcast::Sender<RoomEvent>,
}

impl Presence {
    /// The room's name.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// Upserts this client's entry; errors arrive on [`Client::errors`].
    #[allow(
        clippy::needless_pass_by_value,
        reason = "callers pass `json!(..)` temporaries"
    )]
    pub fn heartbeat(&self, data: Value, ttl: Duration) {
        self.send_heartbeat(&data, ttl, None);
    }

    /// Upserts this client's entry and waits for the server's ack (sent once durable).
    /// Returns the entry's `expiresAtMs`.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "callers pass `json!(..)` temporaries"
    )]
    pub async fn heartbeat_acked(&self, data: Value, ttl: Duration) -> Result<u64> {
        let (ack, wait) = oneshot::channel();
        self.send_heartbeat(&data, ttl, Some(ack));
        wait.await.map_err(|_| Error::ClientClosed)?
    }

    fn send_heartbeat(
        &self,
        data: &Value,
        ttl: Duration,
        ack: Option<oneshot::Sender<Result<u64>>>,
    ) {
        let data = data.to_string();
        if let Some(room) = self.client.shared.lock().rooms.get_mut(&self.room) {
            room.last_heartbeat = Some(LastHeartbeat {
                data: data.clone(),
                ttl,
                sent: Instant::now(),
            });
        }
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let _ = self.client.commands.send(Command::Heartbeat {
            room: self.room.clone(),
            data,
            ttl_ms,
            ack,
        });
    }

    /// Removes this client's entry now.
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
        }
    }

    /// Live entries by client id, judged by the estimated server clock.
    pub fn value(&self) -> BTreeMap<u64, Entry> {
        let now = self.client.server_now_ms();
        self.client
            .shared
            .lock()
            .rooms
            .get(&self.room)
            .map(|room| {
                room.entries
                    .iter()
                    .filter(|(_, e)| now <= e.expires_at_ms)
                    .map(|(id, e)| (*id, e.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A stream of this room's events from now on.
    pub fn events(&self) -> broadcast::Receiver<RoomEvent> {
        self.events.subscribe()
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
            // Entries also leave `value()` by the clock alone, so look again at least
            // every 20 ms even without news from the server.
            let next = (tokio::time::Instant::now() + Duration::from_millis(20)).min(deadline);
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

/// Opens a socket and performs the `hello`/`welcome` handshake.
async fn open(options: &Options, resume: Option<&str>) -> Result<(Socket, Session)> {
    // Nagle's algorithm would hold a small frame until the previous one is acked,
    // adding up to the peer's delayed-ACK time (40 ms) to a request.
    let (mut socket, _) =
        tokio_tungstenite::connect_async_with_config(options.url.as_str(), None, true).await?;
    let mut hello = json!({"type": "hello"});
    if let Some(resume) = resume {
        hello["resume"] = resume.into();
    }
    if let Some(token) = &options.token {
        hello["token"] = token.as_str().into();
    }
    socket.send(Message::Text(hello.to_string().into())).await?;
    loop {
        let Some(message) = socket.next().await else {
            return Err(Error::Disconnected);
        };
        match message? {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text)
                    .map_err(|e| Error::Protocol(format!("{e}: {text}")))?;
                match value["type"].as_str() {
                    Some("welcome") => {
                        let session = Session {
                            client_id: value["clientId"].as_u64().ok_or_else(|| {
                                Error::Protocol("welcome without clientId".into())
                            })?,
                            resume_token: value["resumeToken"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            resumed: value["resumed"].as_bool().unwrap_or(false),
                        };
                        return Ok((socket, session));
                    }
                    Some("error") => {}
                    _ => return Err(Error::Protocol(format!("expected welcome, got {text}"))),
                }
            }
            Message::Close(frame) => {
                return Err(match frame {
                    Some(frame) => Error::Closed {
                        code: frame.code.into(),
                        reason: frame.reason.to_string(),
                    },
                    None => Error::Disconnected,
                });
            }
            _ => {}
        }
    }
}

type Pending = HashMap<u64, oneshot::Sender<Result<u64>>>;

/// Owns the socket; reconnects until closed.
async fn run(
    options: Options,
    shared: Arc<Shared>,
    socket: Socket,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut socket = Some(socket);
    let mut attempt: u32 = 0;
    // The token of the latest session: kept apart from `shared.session`, which is
    // cleared while disconnected.
    let mut resume = shared
        .session
        .borrow()
        .as_ref()
        .map(|s| s.resume_token.clone());
    loop {
        let current = match socket.take() {
            Some(socket) => socket,
            None => match open(&options, resume.as_deref()).await {
                Ok((socket, session)) => {
                    resume = Some(session.resume_token.clone());
                    shared.session.send_replace(Some(session));
                    attempt = 0;
                    socket
                }
                Err(Error::Closed { code, .. }) if is_fatal(code) => break,
                Err(error) => {
                    tracing::debug!(%error, "reconnect failed");
                    if !backoff(&options, &mut attempt, &shared, &mut commands).await {
                        break;
                    }
                    continue;
                }
            },
        };
        match connected(&shared, current, &mut commands, &options).await {
            Ended::Closed | Ended::Fatal => break,
            Ended::Dropped if !options.reconnect => break,
            Ended::Dropped => {
                if !backoff(&options, &mut attempt, &shared, &mut commands).await {
                    break;
                }
            }
        }
    }
    shared.lock().closed = true;
    shared.session.send_replace(None);
}

fn is_fatal(code: u16) -> bool {
    matches!(code, 4001 | 4003)
}

/// Waits out a reconnect delay; false if the client was closed meanwhile.
async fn backoff(
    options: &Options,
    attempt: &mut u32,
    shared: &Shared,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> bool {
    shared.session.send_replace(None);
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
                Some(Command::Heartbeat { ack: Some(ack), .. } | Command::Leave { ack: Some(ack), .. }) => {
                    let _ = ack.send(Err(Error::Disconnected));
                }
                Some(_) => {}
            }
        }
    }
}

enum Ended {
    Closed,
    Fatal,
    Dropped,
}

async fn connected(
    shared: &Shared,
    mut socket: Socket,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    options: &Options,
) -> Ended {
    let mut pending: Pending = HashMap::new();
    let mut next_ref: u64 = 1;
    let mut ping_sent: HashMap<u64, Instant> = HashMap::new();

    // Restore: subscriptions, then each room's last heartbeat with what remains of
    // its TTL (never a fresh one).
    let mut restore = Vec::new();
    {
        let state = shared.lock();
        for (name, room) in &state.rooms {
            if room.subscribed {
                restore.push(json!({"type": "subscribe", "room": name}).to_string());
            }
            if let Some(last) = &room.last_heartbeat {
                let remaining = last.ttl.saturating_sub(last.sent.elapsed());
                let remaining_ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
                if remaining_ms > 0 {
                    restore.push(format!(
                        r#"{{"type":"heartbeat","room":{},"data":{},"ttlMs":{remaining_ms}}}"#,
                        Value::from(name.as_str()),
                        last.data
                    ));
                }
            }
        }
    }
    let ping_ref = next_ref;
    next_ref += 1;
    ping_sent.insert(ping_ref, Instant::now());
    restore.push(json!({"type": "ping", "ref": ping_ref}).to_string());
    for text in restore {
        if socket.feed(Message::Text(text.into())).await.is_err() {
            return Ended::Dropped;
        }
    }
    if socket.flush().await.is_err() {
        return Ended::Dropped;
    }

    let mut ping = tokio::time::interval(Duration::from_secs(10));
    ping.reset();
    let ended = loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break Ended::Closed };
                let text = match command {
                    Command::Subscribe(room) => json!({"type": "subscribe", "room": room}).to_string(),
                    Command::Unsubscribe(room) => json!({"type": "unsubscribe", "room": room}).to_string(),
                    Command::Heartbeat { room, data, ttl_ms, ack } => {
                        let reference = ack.map(|ack| {
                            let r = next_ref;
                            next_ref += 1;
                            pending.insert(r, ack);
                            r
                        });
                        let mut text = format!(
                            r#"{{"type":"heartbeat","room":{},"data":{data},"ttlMs":{ttl_ms}"#,
                            Value::from(room)
                        );
                        if let Some(r) = reference {
                            let _ = write!(text, r#","ref":{r}"#);
                        }
                        text.push('}');
                        text
                    }
                    Command::Leave { room, ack } => {
                        let mut value = json!({"type": "leave", "room": room});
                        if let Some(ack) = ack {
                            value["ref"] = next_ref.into();
                            pending.insert(next_ref, ack);
                            next_ref += 1;
                        }
                        value.to_string()
                    }
                    Command::Raw(text) => text,
                    Command::Close(done) => {
                        close_cleanly(shared, &mut socket, &mut next_ref, options.close_timeout).await;
                        let _ = done.send(());
                        break Ended::Closed;
                    }
                };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    break Ended::Dropped;
                }
            }
            message = socket.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.map_or(1005, |f| u16::from(f.code));
                        break if is_fatal(code) { Ended::Fatal } else { Ended::Dropped };
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => break Ended::Dropped,
                };
                handle(shared, &text, &mut pending, &mut ping_sent);
            }
            _ = ping.tick() => {
                let r = next_ref;
                next_ref += 1;
                ping_sent.insert(r, Instant::now());
                if socket.send(Message::Text(json!({"type": "ping", "ref": r}).to_string().into())).await.is_err() {
                    break Ended::Dropped;
                }
            }
        }
    };
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
            .filter_map(|(name, room)| room.last_heartbeat.take().map(|_| name.clone()))
            .collect()
    };
    let mut refs = Vec::new();
    for room in rooms {
        let r = *next_ref;
        *next_ref += 1;
        refs.push(r);
        let text = json!({"type": "leave", "room": room, "ref": r}).to_string();
        if socket.feed(Message::Text(text.into())).await.is_err() {
            return;
        }
    }
    let _ = socket.flush().await;
    let deadline = tokio::time::Instant::now() + wait;
    while !refs.is_empty() {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                if let Ok(value) = serde_json::from_str::<Value>(&text) {
                    if let Some(r) = value["ref"].as_u64() {
                        refs.retain(|x| *x != r);
                    }
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "client closed".into(),
        })))
        .await;
}

fn entry_of(value: &Value) -> Option<(u64, Entry)> {
    Some((
        value["clientId"].as_u64()?,
        Entry {
            data: value.get("data").cloned().unwrap_or(Value::Null),
            expires_at_ms: value["expiresAtMs"].as_u64()?,
            user_id: value["userId"].as_str().map(str::to_owned),
        },
    ))
}

/// A JSON value from raw text; a value this parser refuses (a lone surrogate escape, a
/// number out of range, nesting past its limit) becomes `null`.
fn value_or_null(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or_else(|error| {
        tracing::warn!(%error, value = raw.get(), "unreadable value replaced by null");
        Value::Null
    })
}

/// An object's fields one by one, each unreadable field `null`.
fn object_by_field(raw: &RawValue) -> Option<Value> {
    let fields: BTreeMap<String, &RawValue> = serde_json::from_str(raw.get()).ok()?;
    Some(Value::Object(
        fields
            .into_iter()
            .map(|(key, raw)| (key, value_or_null(raw)))
            .collect(),
    ))
}

/// Reads a frame that does not parse as a whole: field by field, and the elements of
/// `entries` and `changes` one by one, so one unreadable entry costs only its own
/// unreadable part, never the frame's other changes.
fn parse_leniently(text: &str) -> Option<Value> {
    let fields: BTreeMap<String, &RawValue> = serde_json::from_str(text).ok()?;
    let mut frame = serde_json::Map::new();
    for (key, raw) in fields {
        let value = if key == "entries" || key == "changes" {
            let elements: Vec<&RawValue> = serde_json::from_str(raw.get()).ok()?;
            Value::Array(
                elements
                    .into_iter()
                    .map(|element| {
                        serde_json::from_str(element.get())
                            .ok()
                            .or_else(|| object_by_field(element))
                            .unwrap_or(Value::Null)
                    })
                    .collect(),
            )
        } else {
            value_or_null(raw)
        };
        frame.insert(key, value);
    }
    Some(Value::Object(frame))
}

fn handle(shared: &Shared, text: &str, pending: &mut Pending, pings: &mut HashMap<u64, Instant>) {
    let Some(value) = serde_json::from_str::<Value>(text)
        .ok()
        .or_else(|| parse_leniently(text))
    else {
        tracing::warn!(%text, "not JSON");
        return;
    };
    match value["type"].as_str() {
        Some("snapshot") => {
            let mut state = shared.lock();
            let Some(room) = value["room"].as_str().and_then(|r| state.rooms.get_mut(r)) else {
                return;
            };
            let entries: Vec<(u64, Entry)> = value["entries"]
                .as_array()
                .map(|a| a.iter().filter_map(entry_of).collect())
                .unwrap_or_default();
            room.entries = entries.iter().cloned().collect();
            let _ = room.events.send(RoomEvent::Snapshot(entries));
            room.bump();
        }
        Some("changes") => {
            let mut state = shared.lock();
            let Some(room) = value["room"].as_str().and_then(|r| state.rooms.get_mut(r)) else {
                return;
            };
            for change in value["changes"].as_array().into_iter().flatten() {
                let Some(client) = change["clientId"].as_u64() else {
                    continue;
                };
                let event = match change["op"].as_str() {
                    Some("upsert") => {
                        let Some((_, entry)) = entry_of(change) else {
                            continue;
                        };
                        room.entries.insert(client, entry.clone());
                        RoomEvent::Upsert(client, entry)
                    }
                    Some("leave") => {
                        room.entries.remove(&client);
                        RoomEvent::Leave(client)
                    }
                    Some("expire") => {
                        room.entries.remove(&client);
                        RoomEvent::Expire(client)
                    }
                    _ => continue,
                };
                let _ = room.events.send(event);
            }
            room.bump();
        }
        Some("ack") => {
            if let Some(ack) = value["ref"].as_u64().and_then(|r| pending.remove(&r)) {
                let _ = ack.send(Ok(value["expiresAtMs"].as_u64().unwrap_or(0)));
            }
        }
        Some("pong") => {
            let (Some(r), Some(server)) = (value["ref"].as_u64(), value["serverTimeMs"].as_i64())
            else {
                return;
            };
            let Some(sent) = pings.remove(&r) else {
                return;
            };
            let rtt = sent.elapsed();
            let mut state = shared.lock();
            // Keep the sample with the smallest round trip: its midpoint is the most
            // precise estimate of when the server read its clock.
            if state.best_rtt.is_none_or(|best| rtt <= best) {
                state.best_rtt = Some(rtt);
                let half = i64::try_from(rtt.as_millis() / 2).unwrap_or(0);
                state.offset_ms = server - (local_now_ms() - half);
            }
        }
        Some("error") => {
            let error = ServerError {
                code: value["code"].as_str().unwrap_or_default().to_owned(),
                message: value["message"].as_str().unwrap_or_default().to_owned(),
                reference: value["ref"].as_u64(),
                room: value["room"].as_str().map(str::to_owned),
            };
            if let Some(ack) = error.reference.and_then(|r| pending.remove(&r)) {
                let _ = ack.send(Err(Error::Server(error.clone())));
            }
            let _ = shared.errors.send(error);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_unreadable_entry_costs_only_its_data() {
        let deep = format!("{}{}", "[".repeat(130), "]".repeat(130));
        let frame = format!(
            r#"{{"type":"changes","room":"r","serverTimeMs":1,"changes":[
                {{"op":"upsert","clientId":1,"data":{{"ok":true}},"expiresAtMs":9}},
                {{"op":"upsert","clientId":2,"data":"\ud800","expiresAtMs":9}},
                {{"op":"upsert","clientId":3,"data":1e999999,"expiresAtMs":9}},
                {{"op":"upsert","clientId":4,"data":{deep},"expiresAtMs":9}},
                {{"op":"leave","clientId":5}}]}}"#
        );
        assert!(serde_json::from_str::<Value>(&frame).is_err());
        let value = parse_leniently(&frame).expect("read leniently");
        let changes = value["changes"].as_array().expect("changes");
        assert_eq!(changes.len(), 5);
        assert_eq!(changes[0]["data"]["ok"], true);
        for (i, change) in changes[1..4].iter().enumerate() {
            assert_eq!(change["clientId"], i as u64 + 2);
            assert_eq!(change["op"], "upsert");
            assert_eq!(change["expiresAtMs"], 9);
            assert!(change["data"].is_null());
        }
        assert_eq!(changes[4]["op"], "leave");
        assert_eq!(value["room"], "r");
    }
}
