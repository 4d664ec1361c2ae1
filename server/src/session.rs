//! One client session: the `hello` handshake, then one loop, on the connection's one
//! task, that applies the client's requests and drains the outbox into the socket.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rollcall_engine::{ClientId, Ticket, UnixMs};
use std::future::Future as _;
use std::task::Poll;

use tokio::sync::{Notify, watch};
use tokio::time::timeout;

use crate::auth::{Auth, Grant};
use crate::connection::{Connection, Inbound, Io, Socket, TOO_BIG};
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
async fn read_hello<S: Io>(connection: &mut Connection<S>) -> Inbound {
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

/// Runs a session to completion, on the calling task: the handshake, then one loop
/// that reads requests and writes what the outbox holds.
///
/// `keep` (the connection's slot under the connection caps) is held until the session
/// ends.
pub fn serve<S: Io, K: Send + 'static>(
    socket: Socket<S>,
    hub: Arc<Hub>,
    shutdown: Shutdown,
    config: SessionConfig,
    keep: K,
) -> impl Future<Output = ()> + Send {
    // The connection is made here, not in the session's future, which then holds it
    // once (an async fn keeps its arguments for its whole life).
    run(Connection::new(socket), hub, shutdown, config, keep)
}

/// The handshake: `hello` within the timeout, its token verified (auth on), a client
/// id admitted and `welcome` sent. `None` when the connection was closed instead.
async fn handshake<S: Io>(
    connection: &mut Connection<S>,
    hub: &Hub,
    shutdown: &mut Shutdown,
    config: &SessionConfig,
) -> Option<Welcomed> {
    let hello = tokio::select! {
        read = timeout(config.hello_timeout, read_hello(connection)) => read,
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
    Some(Welcomed {
        admitted,
        grant,
        user,
        outbox,
    })
}

/// Runs a session: the handshake, the session's loop until it ends, then the close
/// frame, the lingering close and the departure. Its arguments are used in place, so
/// the future holds each once.
async fn run<S: Io, K: Send + 'static>(
    mut connection: Connection<S>,
    hub: Arc<Hub>,
    mut shutdown: Shutdown,
    config: SessionConfig,
    _keep: K,
) {
    // Boxed: its state is only alive during the handshake, not for the whole session.
    let Some(welcomed) = Box::pin(handshake(&mut connection, &hub, &mut shutdown, &config)).await
    else {
        return;
    };
    let (mut session, kick, connection_id) = start(&hub, &config, welcomed);
    let client = session.client;
    let exit = drive(&mut connection, &mut session, &mut shutdown, &config, &kick).await;
    match exit {
        Exit::Close(code, reason) => {
            // What is queued (the answers to the last requests) goes before the close
            // frame.
            last_flush(&mut connection, &hub, &session.outbox, &config);
            // Boxed: only alive while closing.
            Box::pin(close_lingering(&mut connection, code, reason)).await;
        }
        // The client closed its side: answer with its code; nothing to linger for.
        Exit::Answer => {
            let _ = timeout(Duration::from_secs(1), connection.answer_close()).await;
        }
        Exit::Gone => {
            if connection.closed_by_peer() {
                let _ = timeout(Duration::from_secs(1), connection.answer_close()).await;
            }
        }
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

/// Queues what the outbox holds, once, for the close frame to follow (a plain function:
/// nothing of it stays in the session's future).
fn last_flush<S: Io>(
    connection: &mut Connection<S>,
    hub: &Hub,
    outbox: &Outbox,
    config: &SessionConfig,
) {
    let durable = *hub.durable().borrow();
    flush(connection, &mut Writing::new(config), hub, outbox, durable);
}

/// The session of an admitted client (and what else its loop needs: the notice that
/// another connection resumed its client id, and its connection id).
fn start(
    hub: &Arc<Hub>,
    config: &SessionConfig,
    welcomed: Welcomed,
) -> (Session, Arc<Notify>, u64) {
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
    let limits = hub.limits();
    let session = Session {
        hub: hub.clone(),
        outbox,
        client,
        user,
        grant,
        auth: config.auth.clone(),
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
    (session, kick, connection_id)
}

/// Sends the close frame, then reads (and drops) what the client still sends until it
/// closes too, briefly: a socket closed with unread input is reset, and the reset
/// discards the close frame still in the send queue.
async fn close_lingering<S: Io>(connection: &mut Connection<S>, code: u16, reason: &'static str) {
    // A slow consumer's socket may accept nothing: do not wait on it for long.
    let _ = timeout(Duration::from_secs(1), connection.close(code, reason)).await;
    let _ = timeout(LINGER, async {
        while !matches!(
            connection.read().await,
            Inbound::Closed | Inbound::CloseFrame | Inbound::TooBig | Inbound::Violation(..)
        ) {
            tokio::task::consume_budget().await;
        }
    })
    .await;
}

/// What woke a session's loop.
enum Event {
    /// The session ends.
    Exit(Exit),
    /// A message (or the end of the stream) arrived.
    Read(Inbound),
    /// The batch being written was taken by the socket.
    Wrote,
    /// Something to send may be waiting.
    Work,
    /// The earliest of the session's deadlines arrived.
    Timer,
}

/// The writing side of a session: what is being written, the pacing, and the
/// deadlines that end a session from the writing side.
struct Writing {
    pacer: Pacer,
    /// Paced: write what gathered meanwhile at this instant.
    paced_until: Option<tokio::time::Instant>,
    /// The outbox may hold something to send.
    work: bool,
    /// The batch being written must be taken by then, or the client is a slow
    /// consumer.
    write_deadline: Option<tokio::time::Instant>,
    next_ping: tokio::time::Instant,
    /// The token's expiry, and the instant it arrives on tokio's clock.
    expiry: Option<(UnixMs, tokio::time::Instant)>,
    /// The batch being written: frames, changes, bytes.
    batch: (u64, u64, u64),
}

impl Writing {
    /// The batch was taken by the socket: count it.
    fn wrote(&mut self, hub: &Hub) {
        self.write_deadline = None;
        let (frames, changes, bytes) = std::mem::take(&mut self.batch);
        let metrics = hub.metrics();
        metrics.fanout_frames.increment(frames);
        metrics.fanout_delivered.increment(changes);
        metrics.fanout_bytes.increment(bytes);
    }

    fn new(config: &SessionConfig) -> Writing {
        Writing {
            pacer: Pacer::new(config.fanout_interval),
            paced_until: None,
            work: false,
            write_deadline: None,
            next_ping: tokio::time::Instant::now() + config.ping_interval,
            expiry: None,
            batch: (0, 0, 0),
        }
    }

    /// The earliest instant something is due. While a batch is being written, what
    /// would start the next one waits for it to be taken.
    fn deadline(&self, outbox: &Outbox, writing: bool) -> tokio::time::Instant {
        let mut at = self.next_ping;
        let mut consider = |instant: Option<tokio::time::Instant>| {
            if let Some(instant) = instant {
                at = at.min(instant);
            }
        };
        consider(self.write_deadline);
        consider(self.expiry.map(|(_, at)| at));
        if !writing {
            consider(self.paced_until);
            if self.paced_until.is_none() {
                consider(outbox.next_ack_deadline().map(Into::into));
                consider(outbox.next_due().map(Into::into));
            }
        }
        at
    }
}

/// Owns `durable` while it waits for the durable watermark to move; gives it back.
async fn durable_changed(mut durable: watch::Receiver<Ticket>) -> (watch::Receiver<Ticket>, bool) {
    let changed = durable.changed().await.is_ok();
    (durable, changed)
}

/// The session's loop, on its one task: reads and applies requests, and drains the
/// outbox into the socket, paced; watches what ends a session (shutdown, a resumed
/// client id, token expiry, an idle or slow client). Everything it waits on is made
/// once and polled in place, so an idle connection holds one small future.
async fn drive<S: Io>(
    connection: &mut Connection<S>,
    session: &mut Session,
    shutdown: &mut Shutdown,
    config: &SessionConfig,
    kick: &Notify,
) -> Exit {
    let outbox = session.outbox.clone();
    let hub = session.hub.clone();
    let durable = hub.durable();
    let mut writing = Writing::new(config);
    let mut shutting_down = std::pin::pin!(shutdown.recv());
    let mut kicked = std::pin::pin!(kick.notified());
    let mut ready = std::pin::pin!(outbox.ready());
    // Made while acks wait for the disk, dropped otherwise: an idle session holds none.
    let mut durable_moved = None;
    let mut timer = std::pin::pin!(tokio::time::sleep_until(writing.next_ping));
    let mut timer_at = writing.next_ping;
    loop {
        let expires_at = session.grant.as_ref().map(|g| g.expires_at);
        if writing.expiry.map(|(at, _)| at) != expires_at {
            // `now > exp` is expired: wait one millisecond past it.
            writing.expiry = expires_at.map(|at| (at, instant_of(UnixMs(at.0 + 1))));
        }
        let deadline = writing.deadline(&outbox, connection.is_writing());
        if deadline != timer_at {
            timer.as_mut().reset(deadline);
            timer_at = deadline;
        }
        let awaits_durability = outbox.awaits_durability();
        if !awaits_durability {
            durable_moved = None;
        }
        let awaiting = awaits_durability && writing.paced_until.is_none();
        // A client that sends without reading its answers is not read from.
        let reading = outbox.backlog() < CONTROL_CAPACITY;
        let urgent = outbox.urgent();
        let event = std::future::poll_fn(|cx| {
            if shutting_down.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Exit(Exit::Close(
                    close::GOING_AWAY,
                    "server shutting down",
                )));
            }
            if kicked.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Exit(Exit::Close(
                    close::REPLACED,
                    "another connection resumed this client",
                )));
            }
            if connection.is_writing() {
                match connection.poll_write(cx) {
                    Poll::Ready(true) => return Poll::Ready(Event::Wrote),
                    Poll::Ready(false) => return Poll::Ready(Event::Exit(Exit::Gone)),
                    Poll::Pending => {}
                }
            }
            // Reading first: requests already buffered are applied in one go, and what
            // they queue goes out in one write. A reply (pong, error) goes out before
            // the next request is read, so a flood does not starve its own answers.
            if reading && !urgent {
                if let Poll::Ready(inbound) = connection.poll_read(cx) {
                    return Poll::Ready(Event::Read(inbound));
                }
            }
            if ready.as_mut().poll(cx).is_ready() {
                ready.set(outbox.ready());
                return Poll::Ready(Event::Work);
            }
            if reading && urgent {
                if let Poll::Ready(inbound) = connection.poll_read(cx) {
                    return Poll::Ready(Event::Read(inbound));
                }
            }
            if awaiting {
                let moved = durable_moved.get_or_insert_with(|| {
                    let mut durable = hub.durable();
                    // Whatever became durable before this watch began is seen too.
                    durable.mark_changed();
                    Box::pin(durable_changed(durable))
                });
                if let Poll::Ready((durable, changed)) = moved.as_mut().poll(cx) {
                    moved.set(durable_changed(durable));
                    return Poll::Ready(if changed {
                        Event::Work
                    } else {
                        Event::Exit(Exit::Close(close::INTERNAL, "the log stopped"))
                    });
                }
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Exit(exit) => return exit,
            Event::Read(inbound) => {
                let spends_budget = matches!(inbound, Inbound::Text(_) | Inbound::Binary);
                if let Some(exit) = session.receive(inbound) {
                    return exit;
                }
                if spends_budget {
                    // Messages already buffered are read without touching the socket,
                    // which is what spends tokio's cooperative budget: spend it here.
                    tokio::task::consume_budget().await;
                }
            }
            Event::Wrote => writing.wrote(&hub),
            Event::Work => writing.work = true,
            Event::Timer => {
                // Fired: the next deadline is set afresh.
                timer_at = tokio::time::Instant::now() + Duration::from_secs(86_400);
                timer.as_mut().reset(timer_at);
                let now = tokio::time::Instant::now();
                if writing.write_deadline.is_some_and(|at| at <= now) {
                    return Exit::Close(close::SLOW_CONSUMER, "the client stopped reading");
                }
                if let Some((at, _)) = writing.expiry {
                    if UnixMs::now() > at {
                        return Exit::Close(close::TOKEN_EXPIRED, "token expired");
                    }
                }
                if writing.next_ping <= now {
                    if connection.last_seen().elapsed() >= config.idle_timeout {
                        return Exit::Close(close::IDLE, "idle timeout");
                    }
                    writing.next_ping = now + config.ping_interval;
                    connection.queue_ping();
                    start_write(connection, &mut writing, &hub, config).await;
                }
                // A paced write, an ack's deadline or a paced subscription.
                writing.work = true;
            }
        }
        if writing.work && !connection.is_writing() {
            // Under one write per interval on average: at once; busier: gather until
            // the pacer's next token. Only a reply (pong, error) cuts the wait short.
            let now = Instant::now();
            let urgent = outbox.urgent();
            let wait = match writing.paced_until {
                Some(until) if until > now.into() && !urgent => true,
                Some(_) => false,
                None => match writing.pacer.wait_until(now).filter(|_| !urgent) {
                    Some(until) => {
                        writing.paced_until = Some(until.into());
                        true
                    }
                    None => false,
                },
            };
            if !wait {
                writing.paced_until = None;
                writing.work = false;
                // Let every task that is already runnable (readers applying heartbeats)
                // go first: under load this session then drains them all in one frame
                // per room instead of one frame per change; when idle the yield returns
                // at once.
                tokio::task::yield_now().await;
                let durable_now = *durable.borrow();
                flush(connection, &mut writing, &hub, &outbox, durable_now);
                if connection.is_writing() {
                    start_write(connection, &mut writing, &hub, config).await;
                }
            }
        }
    }
}

thread_local! {
    /// Scratch space for draining outboxes: a drain and the queueing of what it took
    /// happen without a pause, so one per thread serves every session, and an idle
    /// connection holds none.
    static DRAINED: RefCell<Drained> = RefCell::default();
}

/// Drains the outbox into a batch on the connection.
fn flush<S: Io>(
    connection: &mut Connection<S>,
    writing: &mut Writing,
    hub: &Hub,
    outbox: &Outbox,
    durable: Ticket,
) {
    DRAINED.with_borrow_mut(|drained| {
        outbox.drain(durable, UnixMs::now(), Instant::now(), drained);
        for subscription in drained.resync.drain(..) {
            // Fell behind its room's window: the current state replaces what was missed.
            hub.resync(&subscription);
        }
        if drained.frames.is_empty() {
            drained.release_if_large();
            return;
        }
        writing.pacer.wrote(Instant::now());
        let frames = drained.frames.len() as u64;
        let changes = drained.changes as u64;
        drained.changes = 0;
        let bytes = connection.queue(&mut drained.frames) as u64;
        drained.release_if_large();
        let batch = &mut writing.batch;
        *batch = (batch.0 + frames, batch.1 + changes, batch.2 + bytes);
    });
}

/// Tries the batch at once; only a write that cannot complete at once needs the
/// slow-consumer deadline.
async fn start_write<S: Io>(
    connection: &mut Connection<S>,
    writing: &mut Writing,
    hub: &Hub,
    config: &SessionConfig,
) {
    if writing.write_deadline.is_some() {
        return;
    }
    let polled = std::future::poll_fn(|cx| Poll::Ready(connection.poll_write(cx))).await;
    match polled {
        Poll::Pending => {
            writing.write_deadline =
                Some(tokio::time::Instant::now() + config.slow_consumer_timeout);
        }
        // Taken at once: no `Wrote` event follows, so it is counted here.
        Poll::Ready(true) => writing.wrote(hub),
        Poll::Ready(false) => {}
    }
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
    /// Applies what the client sent; `Some` when the session ends.
    fn receive(&mut self, inbound: Inbound) -> Option<Exit> {
        match inbound {
            Inbound::Text(text) => {
                // A heartbeat's own change and its ack go out in one write.
                let hold = self.outbox.clone();
                let _hold = hold.hold();
                let result = match protocol::parse(&text, self.hub.limits()) {
                    Ok(request) => self.handle(request),
                    Err(rejection) => Err(self.charge(rejection)),
                };
                match result {
                    Err(rejection) => self.refuse(&rejection),
                    Ok(()) => None,
                }
            }
            Inbound::Binary => {
                let rejection = self.charge(Rejection::new(
                    ErrorCode::BadRequest,
                    "protocol v1 uses text frames only",
                ));
                self.refuse(&rejection)
            }
            Inbound::Control => (!self.control.take(Instant::now()))
                .then_some(Exit::Close(close::CONTROL_FLOOD, "too many control frames")),
            Inbound::TooBig => Some(Exit::Close(TOO_BIG.0, TOO_BIG.1)),
            Inbound::Violation(code, reason) => Some(Exit::Close(code, reason)),
            Inbound::CloseFrame => Some(Exit::Answer),
            Inbound::Closed => Some(Exit::Gone),
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

#[cfg(test)]
mod tests {
    use tokio_tungstenite::WebSocketStream;
    use tungstenite::protocol::Role;

    use super::*;
    use crate::connection::FrameGuard;
    use crate::shutdown::Trigger;

    fn config() -> SessionConfig {
        SessionConfig {
            hello_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            slow_consumer_timeout: Duration::from_secs(10),
            requests_per_second: 50,
            control_frames_per_second: 10,
            auth: None,
            fanout_interval: Duration::from_millis(5),
        }
    }

    #[tokio::test]
    async fn a_session_is_one_small_future() {
        let (server, _client) = tokio::io::duplex(1024);
        let socket =
            WebSocketStream::from_raw_socket(FrameGuard::new(server), Role::Server, None).await;
        let hub = Arc::new(Hub::in_memory(0).unwrap());
        let trigger = Trigger::new();
        let session = serve(socket, hub, trigger.subscribe(), config(), ());
        let size = std::mem::size_of_val(&session);
        // One task per connection, holding this future: the idle fleet's largest cost
        // (two tasks of 1.9 and 3.6 KiB before; 2,264 bytes in a debug build now).
        assert!(size <= 2_400, "{size} bytes");
    }
}
