//! A tokio client for the Rollcall presence server.
//!
//! One [`Client`] holds one WebSocket. It resumes its client id across reconnects and
//! server restarts, re-subscribes its rooms and re-sends each room's last heartbeat
//! with the TTL that remains, so a [`Presence`]'s [`value`](Presence::value) is right
//! again after a reconnect without any caller code.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), rollcall_client::Error> {
//! let client = rollcall_client::Client::connect("ws://127.0.0.1:7700/ws").await?;
//! let room = client.presence("pr:room-123");
//! room.heartbeat(serde_json::json!({"status": "online"}), Duration::from_secs(30));
//! room.wait_until(Duration::from_secs(5), |entries| !entries.is_empty()).await?;
//! for (client_id, entry) in room.value() {
//!     println!("{client_id}: {} until {}", entry.data, entry.expires_at_ms);
//! }
//! room.leave();
//! client.close().await;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod client;

pub use client::{Client, Options, Presence, Session};

use serde_json::Value;

/// One live entry of a room, as the server sent it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The client's JSON value.
    pub data: Value,
    /// When the entry expires, by the server's clock (ms since the Unix epoch).
    pub expires_at_ms: u64,
    /// The authenticated user behind the entry, if any.
    pub user_id: Option<String>,
}

/// Something that happened in a subscribed room.
#[derive(Clone, Debug, PartialEq)]
pub enum RoomEvent {
    /// The room's full state (after subscribing or reconnecting).
    Snapshot(Vec<(u64, Entry)>),
    /// An entry was created or replaced.
    Upsert(u64, Entry),
    /// A client left.
    Leave(u64),
    /// An entry expired.
    Expire(u64),
}

/// An `error` message from the server.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServerError {
    /// The error code (`invalid_ttl`, `room_full`, …).
    pub code: String,
    /// The server's explanation.
    pub message: String,
    /// The `ref` of the request that failed.
    pub reference: Option<u64>,
    /// The room of the request that failed.
    pub room: Option<String>,
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The WebSocket could not be opened or failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The server refused the request.
    #[error("server error {0}")]
    Server(ServerError),
    /// The server closed the connection with this code.
    #[error("closed by the server with code {code}: {reason}")]
    Closed {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// The connection dropped before the request was answered.
    #[error("disconnected before the request was answered")]
    Disconnected,
    /// The server sent something that is not the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The condition did not hold in time.
    #[error("timed out")]
    Timeout,
    /// The client was closed.
    #[error("the client is closed")]
    ClientClosed,
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
