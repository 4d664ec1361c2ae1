//! A raw protocol client over tokio-tungstenite, for testing exact messages and close
//! codes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// How long a test waits for a message before it fails: a bound for a server that
/// stopped answering, not a timing under test, so generous for a loaded machine.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The next text message on any WebSocket (plain, TLS, through a proxy), parsed;
/// other frames are skipped. Panics after 30 s without one, or if the socket closes.
pub async fn next_json<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let message = tokio::time::timeout(MESSAGE_TIMEOUT, socket.next())
            .await
            .expect("a message within 30 s")
            .expect("open")
            .expect("a frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).expect("JSON");
        }
    }
}

type RawSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw protocol client, for testing exact messages and close codes.
#[derive(Debug)]
pub struct Raw {
    /// The socket.
    pub socket: RawSocket,
}

/// How a raw read ended.
#[derive(Debug, PartialEq)]
pub enum RawEvent {
    /// A text message, parsed.
    Json(Value),
    /// A close frame with this code.
    Closed(u16),
    /// The stream ended without a close frame.
    Ended,
}

impl Raw {
    /// Connects without saying hello.
    pub async fn connect(url: &str) -> Raw {
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .expect("connect");
        Raw { socket }
    }

    /// Connects and completes the handshake; returns the welcome.
    pub async fn hello(url: &str) -> (Raw, Value) {
        let mut raw = Raw::connect(url).await;
        raw.send(r#"{"type":"hello"}"#).await;
        let welcome = raw.json().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (raw, welcome)
    }

    /// Sends a text frame.
    pub async fn send(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.to_owned().into()))
            .await
            .expect("send");
    }

    /// The next message or close (30 s at most).
    pub async fn next(&mut self) -> RawEvent {
        loop {
            let next = tokio::time::timeout(MESSAGE_TIMEOUT, self.socket.next())
                .await
                .expect("a message within 30 s");
            match next {
                Some(Ok(Message::Text(text))) => {
                    return RawEvent::Json(serde_json::from_str(&text).expect("JSON"));
                }
                Some(Ok(Message::Close(frame))) => {
                    return RawEvent::Closed(frame.map_or(1005, |f| u16::from(f.code)));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return RawEvent::Ended,
            }
        }
    }

    /// The next message, which must be JSON text.
    pub async fn json(&mut self) -> Value {
        match self.next().await {
            RawEvent::Json(value) => value,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Reads until a message with this `type` (skipping others).
    pub async fn until(&mut self, kind: &str) -> Value {
        loop {
            let value = self.json().await;
            if value["type"] == kind {
                return value;
            }
        }
    }

    /// The messages up to and including the first with this `type`.
    pub async fn through(&mut self, kind: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let value = self.json().await;
            let done = value["type"] == kind;
            seen.push(value);
            if done {
                return seen;
            }
        }
    }
}

impl Raw {
    /// Connects and sends this `hello` (e.g. with a token or a resume token); returns
    /// the first answer, which is a `welcome` or an `error`.
    pub async fn hello_with(url: &str, hello: &Value) -> (Raw, RawEvent) {
        let mut raw = Raw::connect(url).await;
        raw.send(&hello.to_string()).await;
        let first = raw.next().await;
        (raw, first)
    }

    /// Says hello as `user` (an unverified claim, for a server without auth); panics
    /// unless the answer is a `welcome`.
    pub async fn hello_as(url: &str, user: &str) -> Raw {
        let hello = serde_json::json!({"type": "hello", "user": user});
        let (raw, first) = Raw::hello_with(url, &hello).await;
        assert!(
            matches!(&first, RawEvent::Json(welcome) if welcome["type"] == "welcome"),
            "{first:?}"
        );
        raw
    }

    /// Says hello as `user` (see [`Raw::hello_as`]) and sends `message` (a heartbeat,
    /// say), waiting for its `ack`.
    pub async fn joined(url: &str, user: &str, message: &Value) -> Raw {
        let mut raw = Raw::hello_as(url, user).await;
        raw.acked(message.clone()).await;
        raw
    }

    /// Sends `message` with `ref` 1 and waits for its `ack` (other messages are
    /// skipped); panics on an ack of another ref.
    pub async fn acked(&mut self, mut message: Value) {
        message["ref"] = 1.into();
        self.send(&message.to_string()).await;
        let ack = self.until("ack").await;
        assert_eq!(ack["ref"], 1, "{ack}");
    }

    /// Says hello (with `token` when given): `Ok((raw, welcome))`, or the refusal as
    /// `Err((error code, close code that followed))`.
    pub async fn hello_token(
        url: &str,
        token: Option<&str>,
    ) -> Result<(Raw, Value), (String, Option<u16>)> {
        let mut message = serde_json::json!({"type": "hello"});
        if let Some(token) = token {
            message["token"] = token.into();
        }
        let (mut raw, first) = Raw::hello_with(url, &message).await;
        match first {
            RawEvent::Json(value) if value["type"] == "welcome" => Ok((raw, value)),
            RawEvent::Json(value) if value["type"] == "error" => {
                let code = value["code"].as_str().unwrap_or_default().to_owned();
                let close = match raw.next().await {
                    RawEvent::Closed(code) => Some(code),
                    _ => None,
                };
                Err((code, close))
            }
            other => panic!("unexpected answer to hello: {other:?}"),
        }
    }

    /// Reads for `window` and returns every JSON message received (stops early if the
    /// connection closes).
    pub async fn drain_for(&mut self, window: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + window;
        let mut messages = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    messages.push(serde_json::from_str(&text).expect("JSON"));
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) | Err(_) => return messages,
            }
        }
    }
}
