//! One client session: the `hello` handshake, then a read loop that applies requests
//! and a write loop that drains the outbox, running side by side on one task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rollcall_engine::{ClientId, UnixMs};
use tokio::sync::Notify;
use tokio::time::{MissedTickBehavior, sleep_until, timeout};

use crate::connection::{Connection, Inbound, Reader, TOO_BIG, Writer};
use crate::fanout::{CONTROL_CAPACITY, Drained, Outbox, Slot};
use crate::hub::{Admitted, Hub};
use crate::limits::TokenBucket;
use crate::protocol::{self, ErrorCode, Rejection, Request, close};
use crate::shutdown::Shutdown;

/// How long a write may wait for the disk before it is answered `storage_unavailable`.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Timing of a session's keep-alive.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Time allowed for `hello`.
    pub hello: Duration,
    /// How often the server pings an idle client.
    pub ping_interval: Duration,
    /// A client silent for this long is closed with 4008.
    pub idle: Duration,
}

/// How a session ended.
enum Exit {
    /// Send this close frame.
    Close(u16, &'static str),
    /// The socket is gone.
    Gone,
}

/// Runs a session to completion.
pub async fn serve(
    socket: axum::extract::ws::WebSocket,
    hub: Arc<Hub>,
    mut shutdown: Shutdown,
    timeouts: Timeouts,
) {
    let mut connection = Connection::new(socket);

    let hello = tokio::select! {
        read = timeout(timeouts.hello, connection.read()) => read,
        () = shutdown.recv() => {
            connection.close(close::GOING_AWAY, "server shutting down").await;
            return;
        }
    };
    let (resume, _token) = match hello {
        Err(_) => {
            connection
                .close(close::HELLO_TIMEOUT, "no hello in time")
                .await;
            return;
        }
        Ok(Inbound::Text(text)) => match protocol::parse(&text, hub.limits()) {
            Ok(Request::Hello { resume, token }) => (
                resume.map(std::borrow::Cow::into_owned),
                token.map(std::borrow::Cow::into_owned),
            ),
            _ => {
                connection
                    .close(close::BAD_HELLO, "the first message must be hello")
                    .await;
                return;
            }
        },
        Ok(Inbound::TooBig) => {
            connection.close(TOO_BIG.0, TOO_BIG.1).await;
            return;
        }
        Ok(Inbound::Binary) => {
            connection
                .close(close::BAD_HELLO, "the first message must be hello")
                .await;
            return;
        }
        Ok(Inbound::Closed) => return,
    };

    let user: Option<Arc<str>> = None;
    let admitted = match hub.admit(resume.as_deref(), user.as_deref()) {
        Ok(admitted) => admitted,
        Err(error) => {
            tracing::error!(%error, "could not admit a session");
            connection.close(close::INTERNAL, "internal error").await;
            return;
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
        outbox.push_control(protocol::error(&rejection));
    }
    if !connection.send(welcome).await {
        hub.depart(admitted.client, admitted.connection, &outbox, &[]);
        return;
    }
    hub.metrics().connections.increment(1.0);
    tracing::debug!(client = %admitted.client, resumed = admitted.resumed, "session started");

    let Admitted {
        client,
        connection: connection_id,
        kick,
        ..
    } = admitted;
    let mut session = Session {
        hub: hub.clone(),
        outbox: outbox.clone(),
        client,
        user,
        rooms: HashMap::new(),
        bucket: TokenBucket::new(
            hub.limits().heartbeats_per_second,
            hub.limits().heartbeat_burst,
        ),
    };
    let (mut reader, mut writer) = connection.split();
    let exit = tokio::select! {
        exit = session.read_loop(&mut reader) => exit,
        exit = write_loop(&mut writer, &hub, &outbox, &kick, &mut shutdown, timeouts) => exit,
    };
    if let Exit::Close(code, reason) = exit {
        writer.close(code, reason).await;
    }
    let rooms: Vec<Arc<str>> = session
        .rooms
        .iter()
        .filter(|(_, usage)| usage.slot.is_some())
        .map(|(room, _)| room.clone())
        .collect();
    hub.depart(client, connection_id, &outbox, &rooms);
    hub.metrics().connections.decrement(1.0);
    tracing::debug!(%client, "session ended");
}

/// How a session uses a room; a room counts toward the per-connection limit while it
/// is subscribed or holds this client's entry.
#[derive(Debug, Default)]
struct RoomUse {
    slot: Option<Slot>,
    joined: bool,
}

struct Session {
    hub: Arc<Hub>,
    outbox: Arc<Outbox>,
    client: ClientId,
    user: Option<Arc<str>>,
    rooms: HashMap<Arc<str>, RoomUse>,
    bucket: TokenBucket,
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
                    let result = match protocol::parse(&text, self.hub.limits()) {
                        Ok(request) => self.handle(request),
                        Err(rejection) => Err(rejection),
                    };
                    if let Err(rejection) = result {
                        self.hub.metrics().error(rejection.code);
                        self.outbox.push_control(protocol::error(&rejection));
                    }
                }
                Inbound::Binary => {
                    let rejection =
                        Rejection::new(ErrorCode::BadRequest, "protocol v1 uses text frames only");
                    self.hub.metrics().error(rejection.code);
                    self.outbox.push_control(protocol::error(&rejection));
                }
                Inbound::TooBig => return Exit::Close(TOO_BIG.0, TOO_BIG.1),
                Inbound::Closed => return Exit::Gone,
            }
        }
    }

    fn handle(&mut self, request: Request<'_>) -> Result<(), Rejection> {
        let reference = request.reference();
        let reject = |rejection: Rejection, room: &str| Rejection {
            reference,
            room: Some(room.to_owned()),
            ..rejection
        };
        match request {
            Request::Hello { .. } => Err(Rejection {
                reference,
                ..Rejection::new(ErrorCode::BadRequest, "hello was already received")
            }),
            Request::Ping { reference } => {
                self.outbox
                    .push_control(protocol::pong(reference, UnixMs::now()));
                Ok(())
            }
            Request::Auth { .. } => Err(Rejection {
                reference,
                ..Rejection::new(ErrorCode::BadRequest, "this server does not use tokens")
            }),
            Request::Subscribe { room, reference } => {
                let name = self.use_room(&room).map_err(|r| reject(r, &room))?;
                let existing = self.rooms.get(&*name).and_then(|usage| usage.slot);
                let slot = self.hub.subscribe(&name, &self.outbox, existing);
                if let Some(usage) = self.rooms.get_mut(&*name) {
                    usage.slot = Some(slot);
                }
                self.ack(reference, None, None);
                Ok(())
            }
            Request::Unsubscribe { room, reference } => {
                if let Some(usage) = self.rooms.get_mut(&*room) {
                    if let Some(slot) = usage.slot.take() {
                        let name = self.room_name(&room);
                        self.hub.unsubscribe(&name, &self.outbox, slot);
                    }
                }
                self.release_room(&room);
                self.ack(reference, None, None);
                Ok(())
            }
            Request::Heartbeat {
                room,
                data,
                ttl,
                reference,
            } => {
                if !self.bucket.take(Instant::now()) {
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
            Request::Leave { room, reference } => {
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

    /// The shared name of `room`, registering it as used by this connection.
    fn use_room(&mut self, room: &str) -> Result<Arc<str>, Rejection> {
        if let Some((name, _)) = self.rooms.get_key_value(room) {
            return Ok(name.clone());
        }
        let max = self.hub.limits().max_rooms_per_connection;
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
            .is_some_and(|usage| usage.slot.is_none() && !usage.joined)
        {
            self.rooms.remove(room);
        }
    }

    fn ack(
        &self,
        reference: Option<u64>,
        ticket: Option<rollcall_engine::Ticket>,
        expires_at: Option<UnixMs>,
    ) {
        let Some(reference) = reference else {
            return;
        };
        let message = protocol::ack(reference, expires_at);
        match ticket {
            Some(ticket) if self.hub.acks_wait_for_disk() => self.outbox.push_ack_when_durable(
                ticket,
                Instant::now() + ACK_TIMEOUT,
                reference,
                message,
            ),
            _ => self.outbox.push_control(message),
        }
    }
}

async fn write_loop(
    writer: &mut Writer,
    hub: &Hub,
    outbox: &Outbox,
    kick: &Notify,
    shutdown: &mut Shutdown,
    timeouts: Timeouts,
) -> Exit {
    let mut durable = hub.durable();
    let mut ping = tokio::time::interval(timeouts.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping.reset();
    let mut drained = Drained::default();
    let metrics = hub.metrics();
    loop {
        let awaiting = outbox.awaits_durability();
        let deadline = outbox.next_ack_deadline();
        tokio::select! {
            () = shutdown.recv() => return Exit::Close(close::GOING_AWAY, "server shutting down"),
            () = kick.notified() => return Exit::Close(close::REPLACED, "another connection resumed this client"),
            () = outbox.ready() => {}
            changed = durable.changed(), if awaiting => {
                if changed.is_err() {
                    return Exit::Close(close::INTERNAL, "the log stopped");
                }
            }
            () = sleep_until(deadline.map_or_else(tokio::time::Instant::now, Into::into)), if deadline.is_some() => {}
            _ = ping.tick() => {
                if writer.last_seen().elapsed() >= timeouts.idle {
                    return Exit::Close(close::IDLE, "idle timeout");
                }
                if !writer.ping().await {
                    return Exit::Gone;
                }
                continue;
            }
        }
        let durable_now = *durable.borrow_and_update();
        outbox.drain(durable_now, UnixMs::now(), Instant::now(), &mut drained);
        if drained.frames.is_empty() {
            continue;
        }
        let frames = drained.frames.len() as u64;
        let changes = drained.changes as u64;
        drained.changes = 0;
        let Some(bytes) = writer.send_batch(&mut drained.frames).await else {
            return Exit::Gone;
        };
        metrics.fanout_frames.increment(frames);
        metrics.fanout_delivered.increment(changes);
        metrics.fanout_bytes.increment(bytes as u64);
    }
}
