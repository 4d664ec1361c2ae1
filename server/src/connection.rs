//! A WebSocket connection: reads whole messages, writes batches of frames.
//!
//! The connection owns the socket. After the `hello` handshake it splits into a
//! [`Reader`] and a [`Writer`] so that a client that does not read can still be read
//! from (its heartbeats keep flowing) while its writer waits for the socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};

use crate::protocol::close;

/// What reading produced.
#[derive(Debug)]
pub enum Inbound {
    /// A text message.
    Text(Utf8Bytes),
    /// A binary message (v1 speaks text only).
    Binary,
    /// The peer closed, the socket failed, or the stream ended.
    Closed,
    /// The message exceeded the size limit: close with 1009.
    TooBig,
    /// A ping or pong (tungstenite answers pings itself); counted for flood control.
    Control,
}

/// Time of the last frame received, shared between the reader and the writer's idle
/// check.
#[derive(Debug)]
pub struct LastSeen {
    origin: Instant,
    millis: AtomicU64,
}

impl LastSeen {
    fn new() -> LastSeen {
        LastSeen {
            origin: Instant::now(),
            millis: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let elapsed = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.millis.store(elapsed, Ordering::Relaxed);
    }

    /// When the last frame arrived.
    pub fn at(&self) -> Instant {
        self.origin + std::time::Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }
}

/// A whole WebSocket, before the handshake completes.
#[derive(Debug)]
pub struct Connection {
    socket: WebSocket,
    last_seen: Arc<LastSeen>,
}

impl Connection {
    /// Takes ownership of an upgraded socket.
    pub fn new(socket: WebSocket) -> Connection {
        Connection {
            socket,
            last_seen: Arc::new(LastSeen::new()),
        }
    }

    /// Reads the next message.
    pub async fn read(&mut self) -> Inbound {
        read_next(&mut self.socket, &self.last_seen).await
    }

    /// Sends one text frame and flushes it.
    pub async fn send(&mut self, text: String) -> bool {
        self.socket.send(Message::Text(text.into())).await.is_ok()
    }

    /// Sends a close frame.
    pub async fn close(mut self, code: u16, reason: &'static str) {
        let _ = self.socket.send(close_message(code, reason)).await;
        let _ = self.socket.close().await;
    }

    /// Splits into independent halves.
    pub fn split(self) -> (Reader, Writer) {
        let (sink, stream) = self.socket.split();
        (
            Reader {
                stream,
                last_seen: self.last_seen.clone(),
            },
            Writer {
                sink,
                last_seen: self.last_seen,
            },
        )
    }
}

fn close_message(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

async fn read_next<S>(stream: &mut S, last_seen: &LastSeen) -> Inbound
where
    S: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let Some(item) = stream.next().await else {
        return Inbound::Closed;
    };
    last_seen.touch();
    match item {
        Ok(Message::Text(text)) => Inbound::Text(text),
        Ok(Message::Binary(_)) => Inbound::Binary,
        Ok(Message::Ping(_) | Message::Pong(_)) => Inbound::Control,
        Ok(Message::Close(_)) => Inbound::Closed,
        Err(error) => {
            let too_big = error
                .into_inner()
                .downcast_ref::<tungstenite::Error>()
                .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)));
            if too_big {
                Inbound::TooBig
            } else {
                Inbound::Closed
            }
        }
    }
}

/// The reading half.
#[derive(Debug)]
pub struct Reader {
    stream: SplitStream<WebSocket>,
    last_seen: Arc<LastSeen>,
}

impl Reader {
    /// Reads the next message.
    pub async fn read(&mut self) -> Inbound {
        read_next(&mut self.stream, &self.last_seen).await
    }
}

/// The writing half.
#[derive(Debug)]
pub struct Writer {
    sink: SplitSink<WebSocket, Message>,
    last_seen: Arc<LastSeen>,
}

impl Writer {
    /// Writes `frames` and flushes once for all of them. Returns the bytes written, or
    /// `None` if the socket failed.
    pub async fn send_batch(&mut self, frames: &mut Vec<String>) -> Option<usize> {
        let mut bytes = 0;
        for frame in frames.drain(..) {
            bytes += frame.len();
            // `feed` queues into tungstenite's write buffer; only `flush` writes.
            self.sink.feed(Message::Text(frame.into())).await.ok()?;
        }
        self.sink.flush().await.ok()?;
        Some(bytes)
    }

    /// Sends a WebSocket ping (browsers answer it themselves).
    pub async fn ping(&mut self) -> bool {
        self.sink
            .send(Message::Ping(bytes::Bytes::new()))
            .await
            .is_ok()
    }

    /// When the peer last sent anything.
    pub fn last_seen(&self) -> Instant {
        self.last_seen.at()
    }

    /// Sends a close frame and shuts the socket down.
    pub async fn close(&mut self, code: u16, reason: &'static str) {
        let _ = self.sink.send(close_message(code, reason)).await;
        let _ = self.sink.close().await;
    }
}

/// The close frame for a message over the size limit.
pub const TOO_BIG: (u16, &str) = (close::MESSAGE_TOO_BIG, "message too big");
