//! One client session: the `hello` handshake, then a read loop that applies requests
//! and a write loop that drains the outbox, running side by side on one task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rollcall_engine::{ClientId, Ticket, UnixMs};
use std::future::Future as _;
use std::task::Poll;

use tokio::sync::{Notify, oneshot, watch};
use tokio::time::{MissedTickBehavior, sleep_until, timeout};

use crate::auth::{Auth, Grant};
use crate::connection::{Connection, Inbound, Reader, TOO_BIG, Writer};
use crate::fanout::{CONTROL_CAPACITY, Drained, Outbox, Pacer, Subscription};
use crate::hub::{Admitted, Hub};
use crate::limits::TokenBucket;
use crate::protocol::{self, ErrorCode, Rejection, Request, close};
use crate::shutdown::Shutdown;

/// How long a write may wait for the disk before it is answered `storage_unavailable`.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a closing session keeps reading (and dropping) what its client still
/// sends, so that its close frame is not lost to a reset.
const LINGER: Duration = Duration::from_millis(250);
/// Broadcasts a connection may send per second, and saved up at most.
pub const BROADCASTS_PER_SECOND: u32 = 20;
/// See [`BROADCASTS_PER_SECOND`].
pub const BROADCAST_BURST: u32 = 40;

/// Per-session settings.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Time allowed for `hello`.
    pub hello_timeout: Duration,
    /// How often the server pings a client.
    pub ping_interval: Duration,
    /// A client silent for this long (no message, no pong) is closed with 4008.
    pub idle_timeout: Duration,
    /// A client whose socket accepts nothing for this long is closed with 4005.
    pub slow_consumer_timeout: Duration,
    /// Requests other than heartbeats, per second (burst twice as many).
    pub requests_per_second: u32,
    /// WebSocket pings and pongs from the client, per second (burst twice as many).
    pub control_frames_per_second: u32,
    /// Token verification, when auth is on.
    pub auth: Option<Arc<Auth>>,
    /// Fan-out pacing (see [`Pacer`]): a client averaging under one write per this
    /// interval is written to at once, a busier one once per interval.
    pub fanout_interval: Duration,
}

/// How a session ended.
#[derive(Debug)]
enum Exit {
    /// Send this close frame.
    Close(u16, &'static str),
    /// The client sent a close frame: answer it with the same code.
    Answer,
    /// The socket is gone.
    Gone,
}

/// Reads until a text, binary, close or oversize event (pings during the handshake
/// are answered by tungstenite and otherwise ignored).
async fn read_hello(connection: &mut Connection) -> Inbound {
    loop {
        match connection.read().await {
            Inbound::Control => {}
            other => return other,
        }
    }
}

/// A session past its handshake: admitted and welcomed.
struct Welcomed {
    admitted: Admitted,
    grant: Option<Grant>,
    /// The entries' `userId`: the token's `sub`, or without auth the hello's claim.
    user: Option<Arc<str>>,
    outbox: Arc<Outbox>,
}

/// Runs a session to completion.
pub async fn serve(
    socket: crate::connection::WebSocket,
    hub: Arc<Hub>,
    mut shutdown: Shutdown,
    config: SessionConfig,
) {
    let connection = Connection::new(socket);
    let config = Arc::new(config);
    let Some((connection, welcomed)) = handshake(connection, &hub, &mut shutdown, &config).await
    else {
        return;
    };
    run(connection, hub, shutdown, config, welcomed).await;
}

/// The handshake: `hello` within the timeout, its token verified (auth on), a client
/// id admitted and `welcome` sent. `None` when the connection was closed instead.
async fn handshake(
    mut connection: Connection,
    hub: &Hub,
    shutdown: &mut Shutdown,
    config: &SessionConfig,
) -> Option<(Connection, Welcomed)> {
    let hello = tokio::select! {
        read = timeout(config.hello_timeout, read_hello(&mut connection)) => read,
        () = shutdown.recv() => {
            connection.close(close::GOING_AWAY, "server shutting down").await;
            return None;
        }
    };
    let (resume, token, claimed_user) = match hello {
        Err(_) => {
            connection
                .close(close::HELLO_TIMEOUT, "no hello in time")
                .await;
            return None;
        }
        Ok(Inbound::Text(text)) => match protocol::parse(&text, hub.limits()) {
            Ok(Request::Hello {
                resume,
                token,
                user,
            }) if user
                .as_ref()
                .is_none_or(|u| !u.is_empty() && u.len() <= protocol::MAX_USER_BYTES) =>
            {
                (
                    resume.map(std::borrow::Cow::into_owned),
                    token.map(std::borrow::Cow::into_owned),
                    user.map(|u| Arc::<str>::from(&*u)),
                )
            }
            Ok(Request::Hello { .. }) => {
                connection
                    .close(close::BAD_HELLO, "hello's user must be 1 to 256 bytes")
                    .await;
                return None;
            }
            _ => {
                connection
                    .close(close::BAD_HELLO, "the first message must be hello")
                    .await;
                return None;
            }
        },
        Ok(Inbound::TooBig) => {
            connection.close(TOO_BIG.0, TOO_BIG.1).await;
            return None;
        }
        Ok(Inbound::Violation(code, reason)) => {
            connection.close(code, reason).await;
            return None;
        }
        Ok(Inbound::Binary) => {
            connection
                .close(close::BAD_HELLO, "the first message must be hello")
                .await;
            return None;
        }
        Ok(Inbound::CloseFrame) => {
            connection.answer_close().await;
            return None;
        }
        Ok(Inbound::Closed | Inbound::Control) => return None,
    };

    let grant = match (&config.auth, token) {
        (None, _) => None,
        (Some(auth), token) => {
            let verified = token
                .ok_or_else(|| {
                    Rejection::new(
                        ErrorCode::Unauthorized,
                        "this server requires a token in hello",
                    )
                })
                .and_then(|token| auth.verify(&token));
            match verified {
                Ok(grant) => Some(grant),
                Err(rejection) => {
                    hub.metrics().error(rejection.code);
                    let _ = connection.send(protocol::error(&rejection)).await;
                    let reason = match rejection.code {
                        ErrorCode::TokenExpired => "token expired",
                        ErrorCode::Unauthorized => "token required",
                        _ => "invalid token",
                    };
                    connection.close(close::UNAUTHORIZED, reason).await;
                    return None;
                }
            }
        }
    };
    // With auth the token's `sub` is the user; without, the hello's unverified claim.
    let user = match &grant {
        Some(grant) => Some(grant.user.clone()),
        None => claimed_user,
    };

    let admitted = match hub.admit(resume.as_deref(), user.as_deref()) {
        Ok(admitted) => admitted,
        Err(error) => {
            tracing::error!(%error, "could not admit a session");
            connection.close(close::INTERNAL, "internal error").await;
            return None;
        }
    };
    let welcome = protocol::welcome(
        admitted.client,
        &admitted.resume_token,
        admitted.resumed,
        UnixMs::now(),
        hub.limits(),
    );
    let outbox = Arc::new(Outbox::new());
    if admitted.resume_rejected {
        let rejection = Rejection::new(
            ErrorCode::InvalidResume,
            "the resume token is not valid here; a new client id was assigned",
        );
        hub.metrics().error(rejection.code);
        outbox.push_reply(protocol::error(&rejection));
    }
    if !connection.send(welcome).await {
        hub.depart(admitted.client, admitted.connection, &[]);
        return None;
    }
    Some((
        connection,
        Welcomed {
            admitted,
            grant,
            user,
            outbox,
        },
    ))
}

/// Runs an admitted session: the reader here, the writer as its own task, until
/// either ends; then the lingering close and the departure.
async fn run(
    connection: Connection,
    hub: Arc<Hub>,
    shutdown: Shutdown,
    config: Arc<SessionConfig>,
    welcomed: Welcomed,
) {
    let Welcomed {
        admitted,
        grant,
        user,
        outbox,
    } = welcomed;
    hub.metrics().connections.increment(1.0);
    tracing::debug!(client = %admitted.client, resumed = admitted.resumed, "session started");

    let Admitted {
        client,
        connection: connection_id,
        kick,
        ..
    } = admitted;
    let (expiry_tx, expiry_rx) = watch::channel(grant.as_ref().map(|g| g.expires_at));
    let limits = hub.limits();
    let mut session = Session {
        hub: hub.clone(),
        outbox: outbox.clone(),
        client,
        user,
        grant,
        auth: config.auth.clone(),
        expiry: expiry_tx,
        rooms: HashMap::new(),
        heartbeats: TokenBucket::new(limits.heartbeats_per_second, limits.heartbeat_burst),
        broadcasts: TokenBucket::new(BROADCASTS_PER_SECOND, BROADCAST_BURST),
        requests: TokenBucket::new(config.requests_per_second, config.requests_per_second * 2),
        control: TokenBucket::new(
            config.control_frames_per_second,
            config.control_frames_per_second * 2,
        ),
        refused: TokenBucket::new(config.requests_per_second, config.requests_per_second * 2),
    };
    let (mut reader, writer) = connection.split();
    // Reading and writing run as two tasks: a wake-up for one (a heartbeat in, a
    // frame out) then polls only its own half.
    let (stop_writer, stop) = oneshot::channel();
    let writing = WriteTask {
        writer,
        hub: hub.clone(),
        outbox: outbox.clone(),
        kick,
        shutdown,
        token_expiry: expiry_rx,
        config: config.clone(),
        pacer: Pacer::new(config.fanout_interval),
    };
    let mut writing = tokio::spawn(writing.run(stop));
    let closed = tokio::select! {
        exit = session.read_loop(&mut reader) => {
            // The reader is done: the writer sends the close frame (if any) and stops.
            let _ = stop_writer.send(exit);
            matches!((&mut writing).await, Ok(true))
        }
        closed = &mut writing => matches!(closed, Ok(true)),
    };
    if closed {
        // Lingering close: a socket closed with unread input is reset, and the reset
        // discards the close frame still in the send queue. Read (and drop) what the
        // client still sends until it closes too; briefly.
        let _ = timeout(LINGER, async {
            while !matches!(
                reader.read().await,
                Inbound::Closed | Inbound::CloseFrame | Inbound::TooBig | Inbound::Violation(..)
            ) {
                tokio::task::consume_budget().await;
            }
        })
        .await;
    }
    let subscriptions: Vec<Arc<Subscription>> = session
        .rooms
        .values()
        .filter_map(|usage| usage.subscription.clone())
        .collect();
    hub.depart(client, connection_id, &subscriptions);
    hub.metrics().connections.decrement(1.0);
    tracing::debug!(%client, "session ended");
}

/// How a session uses a room; a room counts toward the per-connection limit while it
/// is subscribed or holds this client's entry.
#[derive(Debug, Default)]
struct RoomUse {
    subscription: Option<Arc<Subscription>>,
    joined: bool,
}

struct Session {
    hub: Arc<Hub>,
    outbox: Arc<Outbox>,
    client: ClientId,
    user: Option<Arc<str>>,
    grant: Option<Grant>,
    auth: Option<Arc<Auth>>,
    expiry: watch::Sender<Option<UnixMs>>,
    rooms: HashMap<Arc<str>, RoomUse>,
    heartbeats: TokenBucket,
    broadcasts: TokenBucket,
    requests: TokenBucket,
    control: TokenBucket,
    /// Requests answered `rate_limited`: a client that keeps sending far over its
    /// rates is closed (4006) instead of being answered forever.
    refused: TokenBucket,
}

fn forbidden() -> Rejection {
    // The same answer whether or not the room exists or has entries: nothing leaks.
    Rejection::new(ErrorCode::Forbidden, "your token does not grant this room")
}

impl Session {
    async fn read_loop(&mut self, reader: &mut Reader) -> Exit {
        loop {
            // A client that sends without reading its answers is paused here.
            if self.outbox.backlog() >= CONTROL_CAPACITY {
                self.outbox.wait_below(CONTROL_CAPACITY).await;
            }
            match reader.read().await {
                Inbound::Text(text) => {
                    // A heartbeat's own change and its ack go out in one write.
                    let hold = self.outbox.clone();
                    let _hold = hold.hold();
                    let result = match protocol::parse(&text, self.hub.limits()) {
                        Ok(request) => self.handle(request),
                        Err(rejection) => Err(self.charge(rejection)),
                    };
                    if let Err(rejection) = result {
                        if let Some(exit) = self.refuse(&rejection) {
                            return exit;
                        }
                    }
                    // Messages already buffered are read without touching the socket,
                    // which is what spends tokio's cooperative budget: spend it here.
                    tokio::task::consume_budget().await;
                }
                Inbound::Binary => {
                    let rejection = self.charge(Rejection::new(
                        ErrorCode::BadRequest,
                        "protocol v1 uses text frames only",
                    ));
                    if let Some(exit) = self.refuse(&rejection) {
                        return exit;
                    }
                    tokio::task::consume_budget().await;
                }
                Inbound::Control => {
                    if !self.control.take(Instant::now()) {
                        return Exit::Close(close::CONTROL_FLOOD, "too many control frames");
                    }
                }
                Inbound::TooBig => return Exit::Close(TOO_BIG.0, TOO_BIG.1),
                Inbound::Violation(code, reason) => return Exit::Close(code, reason),
                Inbound::CloseFrame => return Exit::Answer,
                Inbound::Closed => return Exit::Gone,
            }
        }
    }

    /// A message that is not a valid request costs a request token like any other:
    /// past the rate it is answered `rate_limited` (and a flood is closed) instead.
    fn charge(&mut self, rejection: Rejection) -> Rejection {
        if self.requests.take(Instant::now()) {
            return rejection;
        }
        Rejection {
            reference: rejection.reference,
            ..Rejection::new(
                ErrorCode::RateLimited,
                "too many requests; this one was dropped",
            )
        }
    }

    /// Answers a refused request, or ends the session (4006) when the client keeps
    /// sending far over its rates.
    fn refuse(&mut self, rejection: &Rejection) -> Option<Exit> {
        if rejection.code == ErrorCode::RateLimited && !self.refused.take(Instant::now()) {
            return Some(Exit::Close(close::CONTROL_FLOOD, "too many requests"));
        }
        self.reject(rejection);
        None
    }

    fn reject(&self, rejection: &Rejection) {
        self.hub.metrics().error(rejection.code);
        self.outbox.push_reply(protocol::error(rejection));
    }

    fn handle(&mut self, request: Request<'_>) -> Result<(), Rejection> {
        let reference = request.reference();
        let reject = |rejection: Rejection, room: &str| Rejection {
            reference,
            room: Some(room.to_owned()),
            ..rejection
        };
        if !matches!(request, Request::Heartbeat { .. }) && !self.requests.take(Instant::now()) {
            return Err(Rejection {
                reference,
                ..Rejection::new(
                    ErrorCode::RateLimited,
                    "too many requests; this one was dropped",
                )
            });
        }
        match request {
            Request::Hello { .. } => Err(Rejection {
                reference,
                ..Rejection::new(ErrorCode::BadRequest, "hello was already received")
            }),
            Request::Ping { reference } => {
                self.outbox
                    .push_reply(protocol::pong(reference, UnixMs::now()));
                Ok(())
            }
            Request::Auth { token, reference } => self.reauthenticate(&token, reference),
            Request::Subscribe {
                room,
                reference,
                interval_ms,
                occupancy,
            } => {
                if self.grant.as_ref().is_some_and(|g| !g.can_read(&room)) {
                    return Err(reject(forbidden(), &room));
                }
                let name = self.use_room(&room).map_err(|r| reject(r, &room))?;
                let mut interval = Duration::from_millis(interval_ms);
                if occupancy {
                    interval = interval.max(crate::fanout::OCCUPANCY_INTERVAL);
                }
                let mut existing = self
                    .rooms
                    .get(&*name)
                    .and_then(|usage| usage.subscription.clone());
                if let Some(old) =
                    existing.take_if(|s| s.interval() != interval || s.is_occupancy() != occupancy)
                {
                    // Another pace or mode: a new subscription replaces the old one.
                    self.hub.unsubscribe(&self.outbox, &old);
                }
                // The hub acks after the snapshot (which, in a cluster, may wait for
                // the room's first sync).
                let subscription = self.hub.subscribe_mode(
                    &name,
                    &self.outbox,
                    existing.as_ref(),
                    reference,
                    interval,
                    occupancy,
                );
                if let Some(usage) = self.rooms.get_mut(&*name) {
                    usage.subscription = Some(subscription);
                }
                Ok(())
            }
            Request::Unsubscribe { room, reference } => {
                self.unsubscribe(&room);
                self.ack(reference, None, None);
                Ok(())
            }
            Request::Heartbeat {
                room,
                data,
                ttl,
                reference,
            } => {
                // Counted first: a refused heartbeat costs the same as an accepted one.
                if !self.heartbeats.take(Instant::now()) {
                    return Err(reject(
                        Rejection::new(
                            ErrorCode::RateLimited,
                            format!(
                                "more than {} heartbeats per second; this one was dropped",
                                self.hub.limits().heartbeats_per_second
                            ),
                        ),
                        &room,
                    ));
                }
                if self.grant.as_ref().is_some_and(|g| !g.can_write(&room)) {
                    return Err(reject(forbidden(), &room));
                }
                let name = self.use_room(&room).map_err(|r| reject(r, &room))?;
                let result = self.hub.heartbeat(
                    &name,
                    self.client,
                    self.user.clone(),
                    Bytes::copy_from_slice(data.as_bytes()),
                    ttl,
                );
                match result {
                    Ok((expires_at, ticket)) => {
                        if let Some(usage) = self.rooms.get_mut(&*name) {
                            usage.joined = true;
                        }
                        self.ack(reference, Some(ticket), Some(expires_at));
                        Ok(())
                    }
                    Err(rejection) => {
                        self.release_room(&room);
                        Err(reject(rejection, &room))
                    }
                }
            }
            Request::Broadcast {
                room,
                data,
                reference,
            } => {
                if !self.broadcasts.take(Instant::now()) {
                    return Err(reject(
                        Rejection::new(
                            ErrorCode::RateLimited,
                            format!(
                                "more than {BROADCASTS_PER_SECOND} broadcasts per second; this one was dropped"
                            ),
                        ),
                        &room,
                    ));
                }
                if self.grant.as_ref().is_some_and(|g| !g.can_write(&room)) {
                    return Err(reject(forbidden(), &room));
                }
                // To the room's current subscribers on this node but the sender; never
                // stored. Nobody subscribed: nobody gets it.
                if let Some(feed) = self.hub.feed_of(&room) {
                    let message = protocol::broadcast(
                        &room,
                        self.client,
                        self.user.as_deref(),
                        data,
                        UnixMs::now(),
                    );
                    let (_, missed) = feed.broadcast(&message, &self.outbox);
                    self.hub
                        .metrics()
                        .broadcasts_missed
                        .increment(missed as u64);
                }
                self.hub.metrics().broadcasts.increment(1);
                self.ack(reference, None, None);
                Ok(())
            }
            Request::Leave { room, reference } => {
                if self.grant.as_ref().is_some_and(|g| !g.can_write(&room)) {
                    return Err(reject(forbidden(), &room));
                }
                let name = self.room_name(&room);
                let ticket = self.hub.leave(&name, self.client);
                if let Some(usage) = self.rooms.get_mut(&*room) {
                    usage.joined = false;
                }
                self.release_room(&room);
                self.ack(reference, ticket, None);
                Ok(())
            }
        }
    }

    /// Replaces the session's token; rooms the new token does not grant are dropped.
    fn reauthenticate(&mut self, token: &str, reference: Option<u64>) -> Result<(), Rejection> {
        let with_ref = |rejection: Rejection| Rejection {
            reference,
            ..rejection
        };
        let Some(auth) = &self.auth else {
            return Err(with_ref(Rejection::new(
                ErrorCode::BadRequest,
                "this server does not use tokens",
            )));
        };
        let grant = auth.verify(token).map_err(with_ref)?;
        if Some(&grant.user) != self.user.as_ref() {
            return Err(with_ref(Rejection::new(
                ErrorCode::InvalidToken,
                "the new token is for another user",
            )));
        }
        let revoked: Vec<Arc<str>> = self
            .rooms
            .iter()
            .filter(|(room, usage)| usage.subscription.is_some() && !grant.can_read(room))
            .map(|(room, _)| room.clone())
            .collect();
        for room in revoked {
            self.unsubscribe(&room);
            self.reject(&Rejection {
                room: Some(room.to_string()),
                ..Rejection::new(
                    ErrorCode::Forbidden,
                    "your new token does not grant this room; unsubscribed",
                )
            });
        }
        self.expiry.send_replace(Some(grant.expires_at));
        self.grant = Some(grant);
        self.ack(reference, None, None);
        Ok(())
    }

    fn unsubscribe(&mut self, room: &str) {
        if let Some(usage) = self.rooms.get_mut(room) {
            if let Some(subscription) = usage.subscription.take() {
                self.hub.unsubscribe(&self.outbox, &subscription);
            }
        }
        self.release_room(room);
    }

    /// The shared name of `room`, registering it as used by this connection.
    fn use_room(&mut self, room: &str) -> Result<Arc<str>, Rejection> {
        if let Some((name, _)) = self.rooms.get_key_value(room) {
            return Ok(name.clone());
        }
        let max = self.hub.limits().max_rooms_per_connection;
        if self.rooms.len() >= max {
            // Rooms whose entry expired (or was removed elsewhere) and that are not
            // subscribed no longer count.
            let (hub, client) = (&self.hub, self.client);
            self.rooms.retain(|room, usage| {
                usage.subscription.is_some() || (usage.joined && hub.holds_entry(room, client))
            });
        }
        if self.rooms.len() >= max {
            return Err(Rejection::new(
                ErrorCode::TooManyRooms,
                format!("a connection may use at most {max} rooms; unsubscribe or leave one first"),
            ));
        }
        let name: Arc<str> = room.into();
        self.rooms.insert(name.clone(), RoomUse::default());
        Ok(name)
    }

    fn room_name(&self, room: &str) -> Arc<str> {
        self.rooms
            .get_key_value(room)
            .map_or_else(|| room.into(), |(name, _)| name.clone())
    }

    /// Forgets a room that is neither subscribed nor joined.
    fn release_room(&mut self, room: &str) {
        if self
            .rooms
            .get(room)
            .is_some_and(|usage| usage.subscription.is_none() && !usage.joined)
        {
            self.rooms.remove(room);
        }
    }

    fn ack(&self, reference: Option<u64>, ticket: Option<Ticket>, expires_at: Option<UnixMs>) {
        let Some(reference) = reference else {
            return;
        };
        let message = protocol::ack(reference, expires_at);
        if !self.hub.acks_wait_for_disk() {
            self.outbox.push_control(message);
            return;
        }
        // `flush` mode: an ack goes out once its write is durable, and never before an
        // earlier ack of this connection (acks leave the queue in order).
        match ticket {
            Some(ticket) => self.outbox.push_ack_when_durable(
                ticket,
                Instant::now() + ACK_TIMEOUT,
                reference,
                message,
            ),
            None => self.outbox.push_ack_in_order(reference, message),
        }
    }
}

/// The instant (on tokio's clock) at which a wall-clock time arrives.
fn instant_of(at: UnixMs) -> tokio::time::Instant {
    let wait = at.since(UnixMs::now());
    tokio::time::Instant::now() + Duration::from_millis(wait)
}

/// A session's writer task: drains the outbox into the socket, paced, and watches
/// what ends a session from the writing side (shutdown, a resumed client id, token
/// expiry, an idle or slow client).
struct WriteTask {
    writer: Writer,
    hub: Arc<Hub>,
    outbox: Arc<Outbox>,
    kick: Arc<Notify>,
    shutdown: Shutdown,
    token_expiry: watch::Receiver<Option<UnixMs>>,
    config: Arc<SessionConfig>,
    /// Writes at once while the connection is not busy, else once per
    /// `fanout_interval`.
    pacer: Pacer,
}

/// What woke the writer.
enum Wake {
    /// Something to send may be waiting.
    Work,
    /// A pacing interval ended: send what gathered meanwhile.
    Paced,
}

impl WriteTask {
    /// Writes until the connection ends; returns whether a close frame was sent.
    async fn run(mut self, stop: oneshot::Receiver<Exit>) -> bool {
        match self.write_until_done(stop).await {
            Exit::Close(code, reason) => {
                // A slow consumer's socket may accept nothing: do not wait on it for long.
                let _ = timeout(Duration::from_secs(1), self.writer.close(code, reason)).await;
                true
            }
            Exit::Answer => {
                // The client has closed its side: nothing to linger for.
                let _ = timeout(Duration::from_secs(1), self.writer.answer_close()).await;
                false
            }
            Exit::Gone => false,
        }
    }

    async fn write_until_done(&mut self, stop: oneshot::Receiver<Exit>) -> Exit {
        let mut durable = self.hub.durable();
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ping.reset();
        let mut drained = Drained::default();
        let mut paced_until: Option<tokio::time::Instant> = None;
        // Futures that live as long as the loop are made once, not on every wake-up.
        let outbox = self.outbox.clone();
        let kick = self.kick.clone();
        let mut shutdown = self.shutdown.clone();
        let shutting_down = shutdown.recv();
        let kicked = kick.notified();
        tokio::pin!(shutting_down, kicked, stop);
        loop {
            let awaiting = outbox.awaits_durability();
            let ack_deadline = outbox.next_ack_deadline();
            let next_due = outbox.next_due();
            let expires_at = *self.token_expiry.borrow_and_update();
            let wake = tokio::select! {
                biased;
                () = &mut shutting_down => return Exit::Close(close::GOING_AWAY, "server shutting down"),
                () = &mut kicked => return Exit::Close(close::REPLACED, "another connection resumed this client"),
                exit = &mut stop => return exit.unwrap_or(Exit::Gone),
                () = sleep_until(paced_until.unwrap_or_else(tokio::time::Instant::now)), if paced_until.is_some() => Wake::Paced,
                // While pacing, only a reply (pong, error) cuts the wait short.
                () = outbox.ready() => Wake::Work,
                changed = durable.changed(), if awaiting && paced_until.is_none() => {
                    if changed.is_err() {
                        return Exit::Close(close::INTERNAL, "the log stopped");
                    }
                    Wake::Work
                }
                () = sleep_until(ack_deadline.map_or_else(tokio::time::Instant::now, Into::into)), if ack_deadline.is_some() && paced_until.is_none() => Wake::Work,
                () = sleep_until(next_due.map_or_else(tokio::time::Instant::now, Into::into)), if next_due.is_some() && paced_until.is_none() => Wake::Work,
                // `now > exp` is expired: wait one millisecond past it.
                () = sleep_until(instant_of(UnixMs(expires_at.map_or(0, |at| at.0 + 1)))), if expires_at.is_some() => {
                    if self.token_expiry.borrow().is_some_and(|at| UnixMs::now() > at) {
                        return Exit::Close(close::TOKEN_EXPIRED, "token expired");
                    }
                    continue;
                }
                _ = self.token_expiry.changed(), if self.config.auth.is_some() => continue,
                _ = ping.tick() => {
                    if let Some(exit) = self.ping().await {
                        return exit;
                    }
                    continue;
                }
            };
            match wake {
                Wake::Paced => paced_until = None,
                Wake::Work => {
                    // Under one write per interval on average: at once; busier:
                    // gather until the pacer's next token.
                    let now = Instant::now();
                    if let Some(until) = self.pacer.wait_until(now).filter(|_| !outbox.urgent()) {
                        paced_until = Some(until.into());
                        continue;
                    }
                    paced_until = None;
                }
            }
            // Let every task that is already runnable (readers applying heartbeats) go
            // first: under load this session then drains them all in one frame per room
            // instead of one frame per change; when idle the yield returns at once.
            tokio::task::yield_now().await;
            let durable_now = *durable.borrow_and_update();
            if let Err(exit) = self.flush(durable_now, &mut drained).await {
                return exit;
            }
        }
    }

    /// Pings the client, closing an idle one or one whose socket takes nothing.
    async fn ping(&mut self) -> Option<Exit> {
        if self.writer.last_seen().elapsed() >= self.config.idle_timeout {
            return Some(Exit::Close(close::IDLE, "idle timeout"));
        }
        match timeout(self.config.slow_consumer_timeout, self.writer.ping()).await {
            Ok(true) => None,
            Ok(false) => Some(Exit::Gone),
            Err(_) => Some(Exit::Close(
                close::SLOW_CONSUMER,
                "the client stopped reading",
            )),
        }
    }

    /// Drains the outbox and writes what it held as one batch.
    async fn flush(&mut self, durable: Ticket, drained: &mut Drained) -> Result<(), Exit> {
        self.outbox
            .drain(durable, UnixMs::now(), Instant::now(), drained);
        for subscription in drained.resync.drain(..) {
            // Fell behind its room's window: the current state replaces what was missed.
            self.hub.resync(&subscription);
        }
        if drained.frames.is_empty() {
            return Ok(());
        }
        let frames = drained.frames.len() as u64;
        let changes = drained.changes as u64;
        drained.changes = 0;
        self.pacer.wrote(Instant::now());
        // Only a write that cannot complete at once needs the slow-consumer timer.
        let mut send = std::pin::pin!(self.writer.send_batch(&mut drained.frames));
        let sent = match std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await {
            Poll::Ready(sent) => sent,
            Poll::Pending => match timeout(self.config.slow_consumer_timeout, send).await {
                Ok(sent) => sent,
                Err(_) => {
                    return Err(Exit::Close(
                        close::SLOW_CONSUMER,
                        "the client stopped reading",
                    ));
                }
            },
        };
        let Some(bytes) = sent else {
            return Err(Exit::Gone);
        };
        let metrics = self.hub.metrics();
        metrics.fanout_frames.increment(frames);
        metrics.fanout_delivered.increment(changes);
        metrics.fanout_bytes.increment(bytes as u64);
        Ok(())
    }
}
