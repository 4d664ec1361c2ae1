//! What a client sees: entries, room events, client events, server errors and closes.

use serde_json::Value;

use crate::{CloseCode, ErrorCode, Session};

/// One live entry of a room, as the server sent it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The client's JSON value (`null` when this parser cannot read it, e.g. a lone
    /// surrogate escape from a server that did not validate it).
    pub data: Value,
    /// When the entry expires, by the server's clock (ms since the Unix epoch).
    pub expires_at_ms: u64,
    /// The authenticated user behind the entry, if any.
    pub user_id: Option<String>,
}

/// A room's counts: from an `occupancy` subscription, or a `sample` subscription's
/// snapshot and later `occupancy` messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Counts {
    /// Live entries in the room (one per client: a tab, a device).
    pub entries: u64,
    /// Distinct users among them (entries without a `user_id` are not counted).
    pub users: u64,
}

/// Another client's broadcast to a subscribed room: ephemeral, never stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Broadcast {
    /// The room.
    pub room: String,
    /// The sender's client id.
    pub client_id: u64,
    /// The sender's user (its token's `sub`), with auth on.
    pub user_id: Option<String>,
    /// What it sent (`null` when this parser cannot read it).
    pub data: Value,
    /// The server's clock when it was sent.
    pub server_time_ms: u64,
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

/// Why the server closed a connection: its close code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReason {
    /// The close code ([`CloseCode::is_final`]: the client does not reconnect after it).
    pub code: CloseCode,
    /// The reason text the server gave.
    pub reason: String,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.reason.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{}: {}", self.code, self.reason)
        }
    }
}

/// Everything a [`Client`] sees, typed (see [`Client::events`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A connection was opened and welcomed (also after every reconnect).
    Connected(Session),
    /// A room's complete state.
    Snapshot {
        /// The room.
        room: String,
        /// The server's clock when it was taken.
        server_time_ms: u64,
        /// Every live entry, by client id (a `sample` subscription: the sampled
        /// ones, oldest first).
        entries: Vec<(u64, Entry)>,
        /// A `sample` subscription's snapshot: the room's counts.
        counts: Option<Counts>,
    },
    /// A room's counts (an `occupancy` or `sample` subscription).
    Occupancy {
        /// The room.
        room: String,
        /// The server's clock when they were taken.
        server_time_ms: u64,
        /// The counts.
        counts: Counts,
    },
    /// Another client's broadcast to a subscribed room.
    Broadcast(Broadcast),
    /// Changes in a subscribed room.
    Changes {
        /// The room.
        room: String,
        /// The server's clock when they were sent.
        server_time_ms: u64,
        /// The changes, in order per client.
        changes: Vec<RoomEvent>,
    },
    /// The server refused a request.
    Error(ServerError),
    /// The connection dropped; the client reconnects (with its resume token).
    Disconnected(Option<CloseReason>),
    /// The client stopped for good: closed by [`Client::close`] (`None`) or by a
    /// final close code from the server.
    Closed(Option<CloseReason>),
}

/// An `error` message from the server.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServerError {
    /// The error code ([`ErrorCode::Unknown`] for a code this version does not know).
    pub code: ErrorCode,
    /// The server's explanation.
    pub message: String,
    /// The `ref` of the request that failed.
    pub reference: Option<u64>,
    /// The room of the request that failed.
    pub room: Option<String>,
}
