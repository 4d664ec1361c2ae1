//! The events the log records: heartbeats and leaves.

use std::sync::Arc;

use bytes::Bytes;

use crate::types::{ClientId, Ttl, UnixMs};

/// A client announcing (or refreshing) its entry in a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The room the entry lives in.
    pub room: Arc<str>,
    /// The client that owns the entry.
    pub client: ClientId,
    /// The authenticated user behind the client, set by the server, never by a client.
    pub user: Option<Arc<str>>,
    /// The client's JSON value, kept as opaque bytes.
    pub data: Bytes,
    /// How long the entry lives after `at`.
    pub ttl: Ttl,
    /// Server time when the heartbeat was accepted.
    pub at: UnixMs,
}

impl Heartbeat {
    /// The last instant at which the entry is live (`now <= expires_at`).
    pub fn expires_at(&self) -> UnixMs {
        self.at.after(self.ttl)
    }
}

/// A client removing its entry from a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leave {
    /// The room to leave.
    pub room: Arc<str>,
    /// The client whose entry is removed.
    pub client: ClientId,
    /// Server time when the leave was accepted.
    pub at: UnixMs,
}

/// One entry in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Upsert an entry.
    Heartbeat(Heartbeat),
    /// Remove an entry.
    Leave(Leave),
}

impl Event {
    /// The room this event is about.
    pub fn room(&self) -> &Arc<str> {
        match self {
            Event::Heartbeat(hb) => &hb.room,
            Event::Leave(leave) => &leave.room,
        }
    }

    /// The client this event is about.
    pub fn client(&self) -> ClientId {
        match self {
            Event::Heartbeat(hb) => hb.client,
            Event::Leave(leave) => leave.client,
        }
    }

    /// Server time of the event.
    pub fn at(&self) -> UnixMs {
        match self {
            Event::Heartbeat(hb) => hb.at,
            Event::Leave(leave) => leave.at,
        }
    }
}

impl From<Heartbeat> for Event {
    fn from(hb: Heartbeat) -> Self {
        Event::Heartbeat(hb)
    }
}

impl From<Leave> for Event {
    fn from(leave: Leave) -> Self {
        Event::Leave(leave)
    }
}
