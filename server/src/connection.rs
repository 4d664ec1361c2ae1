//! A WebSocket connection: the upgrade, reading whole messages, writing batches of
//! frames.
//!
//! The upgrade is done here rather than by axum's extractor so that the socket sits on
//! a [`FrameGuard`], which sees every frame header and caps the fragments of one
//! message: a message's size limit alone does not stop endless empty continuation
//! frames.
//!
//! The connection owns the socket, and its session's one task drives both directions by
//! polling (see [`Connection`]).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes};

use crate::protocol::close;

/// Data frames one message may span (its first frame and its continuations).
pub const MAX_FRAGMENTS_PER_MESSAGE: u32 = rollcall_protocol::limits::MAX_FRAMES_PER_MESSAGE;

/// An upgraded WebSocket.
pub type WebSocket = Socket<TokioIo<hyper::upgrade::Upgraded>>;

/// Why an upgrade request was refused.
#[derive(Debug)]
pub struct UpgradeRejection(StatusCode, &'static str);

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

/// A WebSocket upgrade request (HTTP/1.1), checked; [`WebSocketUpgrade::on_upgrade`]
/// answers it.
#[derive(Debug)]
pub struct WebSocketUpgrade {
    config: WebSocketConfig,
    key: HeaderValue,
    requested: Vec<String>,
    protocol: Option<HeaderValue>,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

fn header_is(headers: &HeaderMap, name: header::HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|h| {
        h.to_str().is_ok_and(|h| {
            h.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let bad = |message| UpgradeRejection(StatusCode::BAD_REQUEST, message);
        if parts.method != Method::GET {
            return Err(UpgradeRejection(
                StatusCode::METHOD_NOT_ALLOWED,
                "Request method must be `GET`",
            ));
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(bad("Connection header did not include 'upgrade'"));
        }
        if !header_is(&parts.headers, header::UPGRADE, "websocket") {
            return Err(bad("`Upgrade` header did not include 'websocket'"));
        }
        if !header_is(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(bad("`Sec-WebSocket-Version` header did not include '13'"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or_else(|| bad("`Sec-WebSocket-Key` header missing"))?;
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(UpgradeRejection(
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket request couldn't be upgraded since no upgrade state was present",
            ))?;
        let requested = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|h| h.to_str().ok())
            .flat_map(|h| h.split(','))
            .map(|p| p.trim().to_owned())
            .collect();
        Ok(WebSocketUpgrade {
            config: WebSocketConfig::default(),
            key,
            requested,
            protocol: None,
            on_upgrade,
        })
    }
}

impl WebSocketUpgrade {
    /// Selects the first of the client's requested subprotocols that is in `known`.
    #[must_use]
    pub fn protocols<const N: usize>(mut self, known: [&'static str; N]) -> Self {
        self.protocol = self
            .requested
            .iter()
            .find(|p| known.contains(&p.as_str()))
            .and_then(|p| HeaderValue::from_str(p).ok());
        self
    }

    /// Largest message.
    #[must_use]
    pub fn max_message_size(mut self, max: usize) -> Self {
        self.config = self.config.max_message_size(Some(max));
        self
    }

    /// Largest frame.
    #[must_use]
    pub fn max_frame_size(mut self, max: usize) -> Self {
        self.config = self.config.max_frame_size(Some(max));
        self
    }

    /// Initial read buffer size.
    #[must_use]
    pub fn read_buffer_size(mut self, size: usize) -> Self {
        self.config = self.config.read_buffer_size(size);
        self
    }

    /// Write buffer threshold.
    #[must_use]
    pub fn write_buffer_size(mut self, size: usize) -> Self {
        self.config = self.config.write_buffer_size(size);
        self
    }

    /// Answers 101 and runs `callback` on the socket once the upgrade completes.
    pub fn on_upgrade<C, Fut>(self, callback: C) -> Response
    where
        C: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let WebSocketUpgrade {
            config,
            key,
            protocol,
            on_upgrade,
            ..
        } = self;
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let io = FrameGuard::new(TokioIo::new(upgraded));
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            // The session is a task of its own, so that what the upgrade needed is
            // freed now rather than held (unused) for the session's life.
            tokio::spawn(callback(socket));
        });
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(protocol) = protocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        response
    }
}

/// The error a [`FrameGuard`] fails the read with when a message spans too many frames.
#[derive(Debug)]
struct TooManyFragments;

impl std::fmt::Display for TooManyFragments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a message spans more than {MAX_FRAGMENTS_PER_MESSAGE} frames"
        )
    }
}

impl std::error::Error for TooManyFragments {}

/// Where the scanner is in the client's frame stream.
#[derive(Debug, Default)]
struct FrameScanner {
    /// The header being read (at most 2 + 8 + 4 bytes).
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to skip.
    payload: u64,
    /// Data frames of the message in progress.
    fragments: u32,
}

impl FrameScanner {
    /// Header length once its first two bytes are known.
    fn header_len(&self) -> usize {
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 == 0 { 0 } else { 4 };
        2 + extended + mask
    }

    /// Scans `bytes`; false once a message spans too many frames.
    fn scan(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.payload > 0 {
                let skip = usize::try_from(self.payload)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.payload -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            self.header[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have < 2 || self.have < self.header_len() {
                continue;
            }
            self.payload = match self.header[1] & 0x7f {
                126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                127 => {
                    let mut len = [0u8; 8];
                    len.copy_from_slice(&self.header[2..10]);
                    u64::from_be_bytes(len)
                }
                short => u64::from(short),
            };
            let fin = self.header[0] & 0x80 != 0;
            let opcode = self.header[0] & 0x0f;
            self.have = 0;
            // Control frames (0x8 and up) may come between fragments; the session
            // rate-limits them.
            if opcode < 0x8 {
                self.fragments = if opcode == 0 { self.fragments + 1 } else { 1 };
                if self.fragments > MAX_FRAGMENTS_PER_MESSAGE {
                    return false;
                }
                if fin {
                    self.fragments = 0;
                }
            }
        }
        true
    }
}

/// The socket under the WebSocket protocol: reads pass through a [`FrameScanner`],
/// which fails the read once a message spans more than
/// [`MAX_FRAGMENTS_PER_MESSAGE`] frames.
#[derive(Debug)]
pub struct FrameGuard<T> {
    inner: T,
    scanner: FrameScanner,
}

impl<T> FrameGuard<T> {
    /// Guards `inner`.
    pub fn new(inner: T) -> FrameGuard<T> {
        FrameGuard {
            inner,
            scanner: FrameScanner::default(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FrameGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if !this.scanner.scan(&buf.filled()[before..]) {
                return Poll::Ready(Err(io::Error::other(TooManyFragments)));
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FrameGuard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What reading produced.
#[derive(Debug)]
pub enum Inbound {
    /// A text message.
    Text(Utf8Bytes),
    /// A binary message (v1 speaks text only).
    Binary,
    /// The socket failed or the stream ended.
    Closed,
    /// The peer sent a close frame. Its answer (the same code, as RFC 6455 asks) is
    /// queued: [`Connection::answer_close`] sends it.
    CloseFrame,
    /// The message exceeded the size limit: close with 1009.
    TooBig,
    /// The client broke the protocol (or sent invalid UTF-8 as text): close with this
    /// code and reason.
    Violation(u16, &'static str),
    /// A ping or pong (tungstenite answers pings itself); counted for flood control.
    Control,
}

/// Whatever a session's socket runs on: a TCP or TLS stream behind hyper's upgrade in
/// the server, an in-memory pipe in tests.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A WebSocket over `S`, behind a [`FrameGuard`].
pub type Socket<S> = WebSocketStream<FrameGuard<S>>;

/// A WebSocket connection, driven by its session's one task: it reads messages and
/// writes batches of frames, both by polling, so that a client that does not read can
/// still be read from (its heartbeats keep flowing) while a batch waits for the socket.
#[derive(Debug)]
pub struct Connection<S> {
    socket: Socket<S>,
    /// When the last frame arrived.
    last_seen: Instant,
    /// Frames of the batch being written that the socket has not taken yet.
    queued: VecDeque<Message>,
    /// The batch's frames were all taken; the flush that writes them is pending.
    flushing: bool,
    /// The peer's close frame was read (tungstenite queued its answer).
    closed_by_peer: bool,
}

impl<S: Io> Connection<S> {
    /// Takes ownership of an upgraded socket.
    pub fn new(socket: Socket<S>) -> Connection<S> {
        Connection {
            socket,
            last_seen: Instant::now(),
            queued: VecDeque::new(),
            flushing: false,
            closed_by_peer: false,
        }
    }

    /// Reads the next message.
    pub async fn read(&mut self) -> Inbound {
        std::future::poll_fn(|cx| self.poll_read(cx)).await
    }

    /// Polls for the next message.
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        let item = std::task::ready!(self.socket.poll_next_unpin(cx));
        self.last_seen = Instant::now();
        Poll::Ready(match item {
            None => Inbound::Closed,
            Some(Ok(Message::Close(_))) => {
                self.closed_by_peer = true;
                Inbound::CloseFrame
            }
            Some(Ok(Message::Text(text))) => Inbound::Text(text),
            Some(Ok(Message::Binary(_))) => Inbound::Binary,
            // (`Frame` is never produced when reading.)
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Inbound::Control,
            Some(Err(error)) => inbound_error(&error),
        })
    }

    /// When the peer last sent anything.
    pub fn last_seen(&self) -> Instant {
        self.last_seen
    }

    /// Sends one text frame and flushes it.
    pub async fn send(&mut self, text: String) -> bool {
        self.socket.send(Message::Text(text.into())).await.is_ok()
    }

    /// Sends a close frame (after whatever is still queued) and shuts the socket down.
    pub async fn close(&mut self, code: u16, reason: &'static str) {
        self.queued.push_back(close_message(code, reason));
        if std::future::poll_fn(|cx| self.poll_write(cx)).await {
            let _ = SinkExt::close(&mut self.socket).await;
        }
    }

    /// Sends the answer to the peer's close frame (tungstenite queued it, with the
    /// peer's code, when the frame was read) and shuts the socket down.
    pub async fn answer_close(&mut self) {
        let _ = SinkExt::close(&mut self.socket).await;
    }

    /// Whether the peer's close frame was read: the session answers it with the same
    /// code instead of its own close.
    pub fn closed_by_peer(&self) -> bool {
        self.closed_by_peer
    }

    /// Adds `frames` to the batch being written (starting one if none is); returns
    /// their bytes. [`Connection::poll_write`] writes them, with one flush for all.
    pub fn queue(&mut self, frames: &mut Vec<Utf8Bytes>) -> usize {
        let mut bytes = 0;
        for frame in frames.drain(..) {
            bytes += frame.len();
            self.queued.push_back(Message::Text(frame));
        }
        bytes
    }

    /// Adds a WebSocket ping to the batch (browsers answer it themselves).
    pub fn queue_ping(&mut self) {
        self.queued.push_back(Message::Ping(bytes::Bytes::new()));
    }

    /// Whether a batch is being written.
    pub fn is_writing(&self) -> bool {
        self.flushing || !self.queued.is_empty()
    }

    /// Writes the batch: `Ready(true)` once the socket took all of it, `Ready(false)`
    /// if the socket failed.
    pub fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut socket = Pin::new(&mut self.socket);
        while !self.queued.is_empty() {
            // `start_send` queues into tungstenite's write buffer; only the flush
            // writes (or the buffer's threshold, far above a batch).
            match socket.as_mut().poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(false),
                Poll::Pending => return Poll::Pending,
            }
            let Some(message) = self.queued.pop_front() else {
                break;
            };
            if socket.as_mut().start_send(message).is_err() {
                return Poll::Ready(false);
            }
            self.flushing = true;
        }
        if !self.flushing {
            return Poll::Ready(true);
        }
        let flushed = std::task::ready!(socket.poll_flush(cx));
        self.flushing = false;
        // The queue is not kept between batches: an idle connection holds none.
        self.queued = VecDeque::new();
        Poll::Ready(flushed.is_ok())
    }
}

fn close_message(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// What a read error means for the connection.
fn inbound_error(error: &tungstenite::Error) -> Inbound {
    use tungstenite::error::ProtocolError;
    match error {
        tungstenite::Error::Capacity(_) => Inbound::TooBig,
        tungstenite::Error::Utf8(_) => {
            Inbound::Violation(close::INVALID_PAYLOAD, "invalid UTF-8 in a text message")
        }
        tungstenite::Error::Io(io)
            if io
                .get_ref()
                .is_some_and(<dyn std::error::Error + Send + Sync>::is::<TooManyFragments>) =>
        {
            Inbound::Violation(close::MESSAGE_TOO_BIG, "too many fragments in one message")
        }
        tungstenite::Error::Protocol(
            ProtocolError::ResetWithoutClosingHandshake | ProtocolError::ReceivedAfterClosing,
        ) => Inbound::Closed,
        tungstenite::Error::Protocol(_) => {
            Inbound::Violation(close::PROTOCOL_ERROR, "WebSocket protocol violation")
        }
        _ => Inbound::Closed,
    }
}

/// The close frame for a message over the size limit.
pub const TOO_BIG: (u16, &str) = (close::MESSAGE_TOO_BIG, "message too big");

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame (zero mask) of `len` payload bytes.
    fn frame(opcode: u8, fin: bool, len: usize) -> Vec<u8> {
        rollcall_testkit::wire::frame(opcode, fin, &vec![b'x'; len])
    }

    fn message(fragments: usize, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..fragments {
            let opcode = u8::from(i == 0);
            out.extend(frame(opcode, i + 1 == fragments, len));
            // Control frames between fragments do not count.
            out.extend(frame(0x9, true, 0));
        }
        out
    }

    #[test]
    fn fragments_are_counted_per_message_in_any_split() {
        let cap = MAX_FRAGMENTS_PER_MESSAGE as usize;
        let mut ok = Vec::new();
        for len in [0, 5, 300, 70_000] {
            ok.extend(message(cap, len));
            ok.extend(message(1, len));
        }
        for step in [1, 7, 4096, ok.len()] {
            let mut scanner = FrameScanner::default();
            assert!(
                ok.chunks(step).all(|chunk| scanner.scan(chunk)),
                "step {step}"
            );
        }
        let mut scanner = FrameScanner::default();
        let over = message(cap + 1, 0);
        assert!(!over.chunks(3).all(|chunk| scanner.scan(chunk)));
    }
}
