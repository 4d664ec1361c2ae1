//! The connection task: connects, says hello, restores the rooms after a reconnect,
//! writes commands and reads the server's messages until the socket ends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rollcall_protocol::{ClientMessage, CloseCode, ServerMessage};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;

use super::inbound::handle;
use super::{Command, ConnectionState, Options, Session, Shared, Socket, millis};
use crate::{CloseReason, Error, Event, Result};

/// Opens a socket to `options.urls[index]` and performs the `hello`/`welcome`
/// handshake.
pub(super) async fn open(
    options: &Options,
    index: usize,
    resume: Option<&str>,
) -> Result<(Socket, Session)> {
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

pub(super) type Pending = HashMap<u64, oneshot::Sender<Result<u64>>>;

/// Owns the socket; reconnects (round robin over the URLs) until closed.
pub(super) async fn run(
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
