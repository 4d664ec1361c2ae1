//! Every message of the protocol as a type: [`ClientMessage`] (client → server) and
//! [`ServerMessage`] (server → client), serialized exactly as `docs/protocol.md`
//! shows them (field names and order, absent optional fields left out).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{Error, ErrorCode};

/// A JSON value kept as its exact text: heartbeat `data` is stored and forwarded byte
/// for byte, so it is never re-encoded on the way. Equal when the texts are equal.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Json(Box<RawValue>);

impl Json {
    /// `null`.
    pub fn null() -> Json {
        Json::from_text("null").unwrap_or_else(|_| unreachable!("null is JSON"))
    }

    /// The JSON text of a value.
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> crate::Result<Json> {
        Ok(Json(serde_json::value::to_raw_value(value)?))
    }

    /// Checks that `text` is one JSON value and keeps it as it is.
    pub fn from_text(text: impl Into<String>) -> crate::Result<Json> {
        Ok(Json(RawValue::from_string(text.into())?))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Reads the value as `T` (e.g. [`serde_json::Value`]).
    pub fn to_value<T: serde::de::DeserializeOwned>(&self) -> crate::Result<T> {
        Ok(serde_json::from_str(self.0.get())?)
    }
}

impl PartialEq for Json {
    fn eq(&self, other: &Json) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Json {}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a subscription receives.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum SubscribeMode {
    /// A `snapshot` of the entries, then their `changes`.
    Full,
    /// `occupancy` messages: the room's counts of entries and users, at most once a
    /// second and only when they changed. For rooms too big to send everyone's entries.
    Occupancy,
    /// At most `limit` entries, the room's oldest (by when they joined), kept stable
    /// (an entry stays in while it lives; the next oldest replaces one that goes), plus
    /// the room's counts.
    Sample,
}

/// A message a client sends.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS), ts(optional_fields))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
#[serde(try_from = "WireClient")]
#[non_exhaustive]
pub enum ClientMessage {
    /// Opens the session; must be the first message.
    Hello {
        /// A JWT, required when the server runs with auth.
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// The `resumeToken` of an earlier `welcome`, to get its client id back.
        #[serde(skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
        /// Without auth only: the user behind this client, an unverified claim that
        /// becomes its entries' `userId` (with auth, the token's `sub` is used).
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// Start receiving a room's snapshot and changes.
    Subscribe {
        /// The room.
        room: String,
        /// Changes at most once per this many ms, conflated (absent: as they come).
        #[serde(skip_serializing_if = "Option::is_none")]
        interval_ms: Option<u64>,
        /// What to receive: the entries (`full`, the default), only their counts
        /// (`occupancy`), or the oldest `limit` entries and the counts (`sample`).
        #[serde(skip_serializing_if = "Option::is_none")]
        mode: Option<SubscribeMode>,
        /// `sample` mode: how many entries, in `[1, MAX_SAMPLE_LIMIT]`.
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
        /// Correlation id, answered by `ack` or `error`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<u64>,
    },
    /// Stop receiving a room's changes.
    Unsubscribe {
        /// The room.
        room: String,
        /// Correlation id.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<u64>,
    },
    /// Upsert this client's entry in a room.
    Heartbeat {
        /// The room.
        room: String,
        /// Any JSON value.
        data: Json,
        /// The entry expires this many ms after the server receives it.
        ttl_ms: u64,
        /// Correlation id, answered by `ack` once durable.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<u64>,
    },
    /// Remove this client's entry from a room.
    Leave {
        /// The room.
        room: String,
        /// Correlation id.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<u64>,
    },
    /// An ephemeral message to the room's other current subscribers (never stored).
    Broadcast {
        /// The room.
        room: String,
        /// Any JSON value.
        data: Json,
        /// Correlation id, answered by `ack` once it is queued for the subscribers.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<u64>,
    },
    /// Replace the connection's token before it expires.
    Auth {
        /// The new JWT.
        token: String,
        /// Correlation id.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<u64>,
    },
    /// Clock sample and keep-alive, answered by `pong`.
    Ping {
        /// Correlation id.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<u64>,
    },
}

/// The limits a server announces in `welcome`.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WelcomeLimits {
    /// Largest WebSocket message in bytes.
    pub max_message_bytes: u64,
    /// Largest serialized heartbeat `data` in bytes.
    pub max_data_bytes: u64,
    /// Longest TTL in ms.
    pub max_ttl_ms: u64,
    /// Rooms one connection may use.
    pub max_rooms_per_connection: u64,
    /// Live entries one room may hold.
    pub max_entries_per_room: u64,
    /// Sustained heartbeats per second.
    pub heartbeats_per_second: u32,
    /// Heartbeats in a burst.
    pub heartbeat_burst: u32,
}

impl Default for WelcomeLimits {
    fn default() -> Self {
        crate::Limits::default().announced()
    }
}

/// One live entry of a room (in `snapshot` and `GET /v1/rooms/{room}`).
#[cfg_attr(feature = "typescript", derive(ts_rs::TS), ts(optional_fields))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The client holding the entry.
    pub client_id: u64,
    /// Its data, as the client sent it.
    #[serde(default = "Json::null")]
    pub data: Json,
    /// When it expires, by the server's clock (ms since the Unix epoch).
    pub expires_at_ms: u64,
    /// The authenticated user behind it; never set by a client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// One element of a `changes` message.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS), ts(optional_fields))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
#[serde(try_from = "WireChange")]
#[non_exhaustive]
pub enum Change {
    /// The entry was created or replaced by a heartbeat.
    Upsert {
        /// The client holding the entry.
        client_id: u64,
        /// Its data.
        data: Json,
        /// When it expires, by the server's clock.
        expires_at_ms: u64,
        /// The authenticated user behind it.
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
    },
    /// The client left the room.
    Leave {
        /// The client.
        client_id: u64,
    },
    /// The entry's TTL ran out.
    Expire {
        /// The client.
        client_id: u64,
    },
}

impl Change {
    /// The client the change is about.
    pub fn client_id(&self) -> u64 {
        match self {
            Change::Upsert { client_id, .. }
            | Change::Leave { client_id }
            | Change::Expire { client_id } => *client_id,
        }
    }
}

/// A message the server sends.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS), ts(optional_fields))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
#[serde(try_from = "WireServer")]
#[non_exhaustive]
pub enum ServerMessage {
    /// The answer to `hello`.
    Welcome {
        /// This client's id: positive, below 2^53.
        client_id: u64,
        /// Present it in a later `hello` to get the same id back.
        resume_token: String,
        /// Whether the id came from a resume token.
        resumed: bool,
        /// The server's clock.
        server_time_ms: u64,
        /// The limits this server enforces.
        limits: WelcomeLimits,
    },
    /// A room's complete state; replaces whatever the client knew about it.
    Snapshot {
        /// The room.
        room: String,
        /// The server's clock.
        server_time_ms: u64,
        /// Every live entry (a `sample` subscription: the sampled ones, oldest first).
        entries: Vec<Entry>,
        /// A `sample` subscription's snapshot: the room's live entries.
        #[serde(skip_serializing_if = "Option::is_none")]
        entry_count: Option<u64>,
        /// A `sample` subscription's snapshot: the distinct users among them.
        #[serde(skip_serializing_if = "Option::is_none")]
        user_count: Option<u64>,
    },
    /// An occupancy subscription's counts: sent on subscribe, then at most once a
    /// second when they changed.
    Occupancy {
        /// The room.
        room: String,
        /// The server's clock.
        server_time_ms: u64,
        /// The room's live entries (one per client: a tab, a device).
        entry_count: u64,
        /// The distinct `userId`s among them (entries without a user not counted).
        user_count: u64,
    },
    /// What changed in a subscribed room.
    Changes {
        /// The room.
        room: String,
        /// The server's clock.
        server_time_ms: u64,
        /// The changes, in order per client.
        changes: Vec<Change>,
    },
    /// Another client's broadcast to a subscribed room.
    Broadcast {
        /// The room.
        room: String,
        /// The sender's client id.
        client_id: u64,
        /// The sender's user (its token's `sub`), with auth on.
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
        /// What it sent.
        data: Json,
        /// The server's clock.
        server_time_ms: u64,
    },
    /// A request with a `ref` succeeded.
    Ack {
        /// The request's `ref`.
        #[serde(rename = "ref")]
        reference: u64,
        /// For heartbeats: when the entry expires.
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<u64>,
    },
    /// The answer to `ping`.
    Pong {
        /// The ping's `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<u64>,
        /// The server's clock.
        server_time_ms: u64,
    },
    /// A request failed.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// A human-readable explanation.
        message: String,
        /// The failing request's `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<u64>,
        /// The failing request's room, when it named a valid one.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
    },
}

macro_rules! json_methods {
    ($ty:ty) => {
        impl $ty {
            /// Reads one message from its JSON text. Unknown fields are ignored.
            pub fn from_json(text: &str) -> crate::Result<$ty> {
                Ok(serde_json::from_str(text)?)
            }

            /// The message as JSON text, as it goes on the wire.
            pub fn to_json(&self) -> String {
                serde_json::to_string(self)
                    .unwrap_or_else(|e| unreachable!("a message always serializes: {e}"))
            }
        }
    };
}

json_methods!(ClientMessage);
json_methods!(ServerMessage);

// Deserialization goes through these flat shapes: serde's internally tagged enums
// cannot hold a `RawValue`, and a flat shape ignores unknown fields for free.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireClient {
    #[serde(rename = "type")]
    kind: String,
    room: Option<String>,
    data: Option<Json>,
    ttl_ms: Option<u64>,
    interval_ms: Option<u64>,
    mode: Option<SubscribeMode>,
    limit: Option<u64>,
    #[serde(rename = "ref")]
    reference: Option<u64>,
    token: Option<String>,
    resume: Option<String>,
    user: Option<String>,
}

fn need<T>(value: Option<T>, kind: &'static str, field: &'static str) -> crate::Result<T> {
    value.ok_or(Error::MissingField { kind, field })
}

impl TryFrom<WireClient> for ClientMessage {
    type Error = Error;

    fn try_from(wire: WireClient) -> crate::Result<ClientMessage> {
        let reference = wire.reference;
        Ok(match wire.kind.as_str() {
            "hello" => ClientMessage::Hello {
                token: wire.token,
                resume: wire.resume,
                user: wire.user,
            },
            "subscribe" => ClientMessage::Subscribe {
                room: need(wire.room, "subscribe", "room")?,
                interval_ms: wire.interval_ms,
                mode: wire.mode,
                limit: wire.limit,
                reference,
            },
            "unsubscribe" => ClientMessage::Unsubscribe {
                room: need(wire.room, "unsubscribe", "room")?,
                reference,
            },
            "heartbeat" => ClientMessage::Heartbeat {
                room: need(wire.room, "heartbeat", "room")?,
                data: wire.data.unwrap_or_else(Json::null),
                ttl_ms: need(wire.ttl_ms, "heartbeat", "ttlMs")?,
                reference,
            },
            "leave" => ClientMessage::Leave {
                room: need(wire.room, "leave", "room")?,
                reference,
            },
            "broadcast" => ClientMessage::Broadcast {
                room: need(wire.room, "broadcast", "room")?,
                data: wire.data.unwrap_or_else(Json::null),
                reference,
            },
            "auth" => ClientMessage::Auth {
                token: need(wire.token, "auth", "token")?,
                reference,
            },
            "ping" => ClientMessage::Ping { reference },
            _ => return Err(Error::UnknownType(wire.kind)),
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireChange {
    op: String,
    client_id: u64,
    data: Option<Json>,
    expires_at_ms: Option<u64>,
    user_id: Option<String>,
}

impl TryFrom<WireChange> for Change {
    type Error = Error;

    fn try_from(wire: WireChange) -> crate::Result<Change> {
        let client_id = wire.client_id;
        Ok(match wire.op.as_str() {
            "upsert" => Change::Upsert {
                client_id,
                data: wire.data.unwrap_or_else(Json::null),
                expires_at_ms: need(wire.expires_at_ms, "upsert", "expiresAtMs")?,
                user_id: wire.user_id,
            },
            "leave" => Change::Leave { client_id },
            "expire" => Change::Expire { client_id },
            _ => return Err(Error::UnknownType(wire.op)),
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireServer {
    #[serde(rename = "type")]
    kind: String,
    client_id: Option<u64>,
    resume_token: Option<String>,
    resumed: Option<bool>,
    server_time_ms: Option<u64>,
    limits: Option<WelcomeLimits>,
    room: Option<String>,
    entries: Option<Vec<Entry>>,
    changes: Option<Vec<Change>>,
    #[serde(rename = "ref")]
    reference: Option<u64>,
    expires_at_ms: Option<u64>,
    code: Option<ErrorCode>,
    message: Option<String>,
    user_id: Option<String>,
    data: Option<Json>,
    entry_count: Option<u64>,
    user_count: Option<u64>,
}

impl TryFrom<WireServer> for ServerMessage {
    type Error = Error;

    fn try_from(wire: WireServer) -> crate::Result<ServerMessage> {
        Ok(match wire.kind.as_str() {
            "welcome" => ServerMessage::Welcome {
                client_id: need(wire.client_id, "welcome", "clientId")?,
                resume_token: need(wire.resume_token, "welcome", "resumeToken")?,
                resumed: wire.resumed.unwrap_or(false),
                server_time_ms: need(wire.server_time_ms, "welcome", "serverTimeMs")?,
                limits: wire.limits.unwrap_or_default(),
            },
            "snapshot" => ServerMessage::Snapshot {
                room: need(wire.room, "snapshot", "room")?,
                server_time_ms: need(wire.server_time_ms, "snapshot", "serverTimeMs")?,
                entries: wire.entries.unwrap_or_default(),
                entry_count: wire.entry_count,
                user_count: wire.user_count,
            },
            "occupancy" => ServerMessage::Occupancy {
                room: need(wire.room, "occupancy", "room")?,
                server_time_ms: need(wire.server_time_ms, "occupancy", "serverTimeMs")?,
                entry_count: need(wire.entry_count, "occupancy", "entryCount")?,
                user_count: need(wire.user_count, "occupancy", "userCount")?,
            },
            "changes" => ServerMessage::Changes {
                room: need(wire.room, "changes", "room")?,
                server_time_ms: need(wire.server_time_ms, "changes", "serverTimeMs")?,
                changes: wire.changes.unwrap_or_default(),
            },
            "broadcast" => ServerMessage::Broadcast {
                room: need(wire.room, "broadcast", "room")?,
                client_id: need(wire.client_id, "broadcast", "clientId")?,
                user_id: wire.user_id,
                data: wire.data.unwrap_or_else(Json::null),
                server_time_ms: need(wire.server_time_ms, "broadcast", "serverTimeMs")?,
            },
            "ack" => ServerMessage::Ack {
                reference: need(wire.reference, "ack", "ref")?,
                expires_at_ms: wire.expires_at_ms,
            },
            "pong" => ServerMessage::Pong {
                reference: wire.reference,
                server_time_ms: need(wire.server_time_ms, "pong", "serverTimeMs")?,
            },
            "error" => ServerMessage::Error {
                code: wire.code.unwrap_or(ErrorCode::Unknown),
                message: wire.message.unwrap_or_default(),
                reference: wire.reference,
                room: wire.room,
            },
            _ => return Err(Error::UnknownType(wire.kind)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every example of `docs/protocol.md`, read and written back byte for byte.
    #[test]
    fn documented_examples_round_trip() {
        for text in [
            r#"{"type":"hello","token":"eyJ","resume":"AAAAAAAAAAc.pQ3k"}"#,
            r#"{"type":"hello"}"#,
            r#"{"type":"subscribe","room":"pr:room-123","ref":1}"#,
            r#"{"type":"subscribe","room":"pr:lobby","intervalMs":100,"ref":2}"#,
            r#"{"type":"subscribe","room":"pr:webinar","mode":"occupancy","ref":3}"#,
            r#"{"type":"subscribe","room":"pr:webinar","mode":"sample","limit":20,"ref":4}"#,
            r#"{"type":"unsubscribe","room":"pr:room-123"}"#,
            r#"{"type":"heartbeat","room":"pr:room-123","data":{"status":"online"},"ttlMs":30000,"ref":2}"#,
            r#"{"type":"leave","room":"pr:room-123","ref":3}"#,
            r#"{"type":"auth","token":"eyJ","ref":5}"#,
            r#"{"type":"ping","ref":4}"#,
            r#"{"type":"broadcast","room":"pr:room-123","data":{"emoji":"🎉"},"ref":6}"#,
        ] {
            let message = ClientMessage::from_json(text).expect(text);
            assert_eq!(message.to_json(), text);
        }
        for text in [
            r#"{"type":"welcome","clientId":7,"resumeToken":"AAAAAAAAAAc.pQ3k","resumed":false,"serverTimeMs":1764300000000,"limits":{"maxMessageBytes":65536,"maxDataBytes":4096,"maxTtlMs":3600000,"maxRoomsPerConnection":128,"maxEntriesPerRoom":10000,"heartbeatsPerSecond":120,"heartbeatBurst":240}}"#,
            r#"{"type":"snapshot","room":"pr:room-123","serverTimeMs":1764300000000,"entries":[{"clientId":7,"data":{"status":"online"},"expiresAtMs":1764300030000},{"clientId":9,"data":{"x":1},"expiresAtMs":1764300005000,"userId":"alice"}]}"#,
            r#"{"type":"occupancy","room":"pr:room-123","serverTimeMs":1764300000000,"entryCount":3,"userCount":2}"#,
            r#"{"type":"snapshot","room":"pr:webinar","serverTimeMs":1764300000000,"entries":[{"clientId":7,"data":{"name":"Ada"},"expiresAtMs":1764300030000,"userId":"ada"}],"entryCount":20000,"userCount":18500}"#,
            r#"{"type":"changes","room":"pr:room-123","serverTimeMs":1764300000250,"changes":[{"op":"upsert","clientId":9,"data":{"x":2},"expiresAtMs":1764300005250,"userId":"alice"},{"op":"leave","clientId":7},{"op":"expire","clientId":11}]}"#,
            r#"{"type":"ack","ref":2,"expiresAtMs":1764300030000}"#,
            r#"{"type":"ack","ref":2}"#,
            r#"{"type":"broadcast","room":"pr:room-123","clientId":7,"userId":"alice","data":{"emoji":"🎉"},"serverTimeMs":1764300000100}"#,
            r#"{"type":"broadcast","room":"pr:room-123","clientId":7,"data":null,"serverTimeMs":1764300000100}"#,
            r#"{"type":"pong","ref":4,"serverTimeMs":1764300000100}"#,
            r#"{"type":"error","code":"invalid_ttl","message":"ttlMs must be an integer in [1, 3600000]","ref":2,"room":"pr:room-123"}"#,
        ] {
            let message = ServerMessage::from_json(text).expect(text);
            assert_eq!(message.to_json(), text);
        }
    }

    #[test]
    fn unknown_fields_are_ignored_and_unknown_types_refused() {
        let message =
            ServerMessage::from_json(r#"{"type":"ack","ref":1,"future":[1,2]}"#).expect("ack");
        assert_eq!(
            message,
            ServerMessage::Ack {
                reference: 1,
                expires_at_ms: None
            }
        );
        let error = ServerMessage::from_json(r#"{"type":"broadcast"}"#).expect_err("unknown");
        assert!(error.to_string().contains("broadcast"), "{error}");
        let error =
            ClientMessage::from_json(r#"{"type":"heartbeat","room":"r"}"#).expect_err("no ttl");
        assert!(error.to_string().contains("ttlMs"), "{error}");
    }

    #[test]
    fn data_is_kept_byte_for_byte() {
        let text = r#"{"type":"heartbeat","room":"r","data":{ "b" : 1.50, "a":"\u00e9\ud800" },"ttlMs":5}"#;
        let message = ClientMessage::from_json(text).expect("heartbeat");
        assert!(matches!(
            &message,
            ClientMessage::Heartbeat { data, .. } if data.as_str() == r#"{ "b" : 1.50, "a":"\u00e9\ud800" }"#
        ));
        assert_eq!(message.to_json(), text);
        let missing = ClientMessage::from_json(r#"{"type":"heartbeat","room":"r","ttlMs":5}"#)
            .expect("heartbeat");
        assert!(matches!(missing, ClientMessage::Heartbeat { data, .. } if data == Json::null()));
    }
}
