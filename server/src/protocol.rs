//! The wire protocol: parsing client requests and encoding server messages.
//!
//! Every request is parsed and validated here, in one place; the handler only sees
//! well-formed [`Request`]s. Outgoing messages are encoded in `encode`: those on the
//! hot path (change fragments, `changes` frames) are written by hand into strings that
//! are shared between all subscribers of a room; the rest go through the typed
//! messages of the protocol crate (`rollcall-protocol`), which defines every message,
//! code and validator. The tests there prove the hand-written encoders produce exactly
//! what those types serialize to.

use std::borrow::Cow;

use rollcall_engine::Ttl;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::limits::Limits;
pub use crate::rejection::{ErrorCode, Rejection};

mod encode;

pub use encode::{
    CHANGES_SUFFIX, ack, broadcast, change_fragment, changes_prefix, entries_json, error,
    occupancy, pong, push_entry_fields, push_json_str, snapshot, welcome,
};

/// WebSocket close codes as numbers, for the connection code (defined by
/// [`rollcall_protocol::CloseCode`]; see `docs/protocol.md`).
pub mod close {
    use rollcall_protocol::CloseCode;

    /// The server is shutting down.
    pub const GOING_AWAY: u16 = CloseCode::GoingAway.as_u16();
    /// The client broke the WebSocket protocol (e.g. an unmasked, fragmented control
    /// or unexpected continuation frame, or non-zero reserved bits).
    pub const PROTOCOL_ERROR: u16 = CloseCode::ProtocolError.as_u16();
    /// A text message was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = CloseCode::InvalidPayload.as_u16();
    /// A message exceeded the size limit, or spanned too many frames.
    pub const MESSAGE_TOO_BIG: u16 = CloseCode::MessageTooBig.as_u16();
    /// The server failed.
    pub const INTERNAL: u16 = CloseCode::Internal.as_u16();
    /// The first message was not a valid `hello`.
    pub const BAD_HELLO: u16 = CloseCode::BadHello.as_u16();
    /// Another connection resumed this client id.
    pub const REPLACED: u16 = CloseCode::Replaced.as_u16();
    /// No `hello` in time.
    pub const HELLO_TIMEOUT: u16 = CloseCode::HelloTimeout.as_u16();
    /// Authentication failed.
    pub const UNAUTHORIZED: u16 = CloseCode::Unauthorized.as_u16();
    /// The token expired and was not renewed.
    pub const TOKEN_EXPIRED: u16 = CloseCode::TokenExpired.as_u16();
    /// The client stopped reading.
    pub const SLOW_CONSUMER: u16 = CloseCode::SlowConsumer.as_u16();
    /// Too many control frames or pings.
    pub const CONTROL_FLOOD: u16 = CloseCode::Flood.as_u16();
    /// No traffic and no pong within the idle timeout.
    pub const IDLE: u16 = CloseCode::Idle.as_u16();
}

/// The longest `user` a hello may claim (without auth), in bytes.
pub const MAX_USER_BYTES: usize = 256;

/// A parsed, validated client request.
#[derive(Debug)]
pub enum Request<'a> {
    /// Opens the session.
    Hello {
        /// A JWT, when auth is on.
        token: Option<Cow<'a, str>>,
        /// A resume token from an earlier welcome.
        resume: Option<Cow<'a, str>>,
        /// Without auth: the claimed user (unverified).
        user: Option<Cow<'a, str>>,
    },
    /// Start receiving a room's snapshot and changes.
    Subscribe {
        /// The room.
        room: Cow<'a, str>,
        /// Correlation id.
        reference: Option<u64>,
        /// `intervalMs`: changes at most once per this many milliseconds, conflated to
        /// the latest state per client (zero: as they come).
        interval_ms: u64,
        /// `mode: "occupancy"`: counts instead of entries.
        occupancy: bool,
    },
    /// Stop receiving a room's changes.
    Unsubscribe {
        /// The room.
        room: Cow<'a, str>,
        /// Correlation id.
        reference: Option<u64>,
    },
    /// Upsert this client's entry.
    Heartbeat {
        /// The room.
        room: Cow<'a, str>,
        /// The JSON value, verbatim.
        data: &'a str,
        /// Validated lifetime.
        ttl: Ttl,
        /// Correlation id.
        reference: Option<u64>,
    },
    /// Remove this client's entry.
    Leave {
        /// The room.
        room: Cow<'a, str>,
        /// Correlation id.
        reference: Option<u64>,
    },
    /// Clock sample and keep-alive.
    Ping {
        /// Correlation id.
        reference: Option<u64>,
    },
    /// An ephemeral message to the room's current subscribers.
    Broadcast {
        /// The room.
        room: Cow<'a, str>,
        /// The JSON value, verbatim.
        data: &'a str,
        /// Correlation id.
        reference: Option<u64>,
    },
    /// Replace the connection's token.
    Auth {
        /// The new JWT.
        token: Cow<'a, str>,
        /// Correlation id.
        reference: Option<u64>,
    },
}

impl Request<'_> {
    /// The request's correlation id.
    pub fn reference(&self) -> Option<u64> {
        match self {
            Request::Hello { .. } => None,
            Request::Subscribe { reference, .. }
            | Request::Unsubscribe { reference, .. }
            | Request::Heartbeat { reference, .. }
            | Request::Leave { reference, .. }
            | Request::Broadcast { reference, .. }
            | Request::Ping { reference }
            | Request::Auth { reference, .. } => *reference,
        }
    }
}

/// Every field any request may carry; which ones are required depends on `type`.
#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(rename = "ttlMs", borrow)]
    ttl_ms: Option<&'a RawValue>,
    #[serde(rename = "intervalMs", borrow)]
    interval_ms: Option<&'a RawValue>,
    #[serde(borrow)]
    mode: Option<Cow<'a, str>>,
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow)]
    resume: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
}

/// Parses and validates one text message.
pub fn parse<'a>(text: &'a str, limits: &Limits) -> Result<Request<'a>, Rejection> {
    let raw: Raw<'a> = serde_json::from_str(text).map_err(|e| {
        Rejection::new(
            ErrorCode::BadRequest,
            format!("a message must be a JSON object: {e}"),
        )
    })?;
    let reference = rollcall_protocol::parse_ref(raw.reference)?;
    let Some(kind) = raw.kind else {
        return Err(
            Rejection::new(ErrorCode::BadRequest, "a message needs a \"type\"")
                .with(reference, None),
        );
    };
    let room = |raw_room: Option<Cow<'a, str>>| -> Result<Cow<'a, str>, Rejection> {
        let room = raw_room.ok_or_else(|| {
            Rejection::new(ErrorCode::InvalidRoom, format!("{kind} needs a \"room\""))
                .with(reference, None)
        })?;
        limits
            .check_room(&room)
            .map_err(|r| r.with(reference, None))?;
        Ok(room)
    };
    match &*kind {
        "hello" => Ok(Request::Hello {
            token: raw.token,
            resume: raw.resume,
            user: raw.user,
        }),
        "subscribe" => {
            let room = room(raw.room)?;
            let interval_ms =
                parse_interval(raw.interval_ms).map_err(|r| r.with(reference, Some(&room)))?;
            let occupancy = match raw.mode.as_deref() {
                None | Some("full") => false,
                Some("occupancy") => true,
                Some(other) => {
                    return Err(Rejection::new(
                        ErrorCode::BadRequest,
                        format!("unknown subscribe mode {other:?}: use \"full\" or \"occupancy\""),
                    )
                    .with(reference, Some(&room)));
                }
            };
            Ok(Request::Subscribe {
                room,
                reference,
                interval_ms,
                occupancy,
            })
        }
        "unsubscribe" => Ok(Request::Unsubscribe {
            room: room(raw.room)?,
            reference,
        }),
        "leave" => Ok(Request::Leave {
            room: room(raw.room)?,
            reference,
        }),
        "ping" => Ok(Request::Ping { reference }),
        "auth" => {
            let token = raw.token.ok_or_else(|| {
                Rejection::new(ErrorCode::BadRequest, "auth needs a \"token\"")
                    .with(reference, None)
            })?;
            Ok(Request::Auth { token, reference })
        }
        "heartbeat" => {
            let room = room(raw.room)?;
            let ttl = parse_ttl(raw.ttl_ms, limits).map_err(|r| r.with(reference, Some(&room)))?;
            let data = raw.data.map_or("null", RawValue::get);
            check_data(data, limits).map_err(|r| r.with(reference, Some(&room)))?;
            Ok(Request::Heartbeat {
                room,
                data,
                ttl,
                reference,
            })
        }
        "broadcast" => {
            let room = room(raw.room)?;
            let data = raw.data.map_or("null", RawValue::get);
            check_data(data, limits).map_err(|r| r.with(reference, Some(&room)))?;
            Ok(Request::Broadcast {
                room,
                data,
                reference,
            })
        }
        other => Err(Rejection::new(
            ErrorCode::BadRequest,
            format!("unknown message type {other:?}"),
        )
        .with(reference, None)),
    }
}

pub use rollcall_protocol::{check_data, parse_interval};

/// Validates `ttlMs`: an integer in `[1, max_ttl_ms]` (see
/// [`rollcall_protocol::parse_ttl`]).
pub fn parse_ttl(raw: Option<&RawValue>, limits: &Limits) -> Result<Ttl, Rejection> {
    rollcall_protocol::parse_ttl(raw, limits).map(Ttl)
}

/// Appends `s` as a JSON string literal, escaped exactly as serde_json escapes it.
#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn code(text: &str) -> ErrorCode {
        parse(text, &limits()).unwrap_err().code
    }

    #[test]
    fn heartbeat_parses_with_raw_data() {
        let text = r#"{"type":"heartbeat","room":"pr:room-123","data":{"x": 1, "y":[2]},"ttlMs":30000,"ref":5,"extra":true}"#;
        let request = parse(text, &limits()).unwrap();
        assert!(matches!(
            request,
            Request::Heartbeat { ref room, data: r#"{"x": 1, "y":[2]}"#, ttl: Ttl(30_000), reference: Some(5) }
                if room == "pr:room-123"
        ));
    }

    #[test]
    fn missing_data_is_null() {
        let request = parse(r#"{"type":"heartbeat","room":"r","ttlMs":1}"#, &limits()).unwrap();
        assert!(matches!(request, Request::Heartbeat { data: "null", .. }));
    }

    #[test]
    fn subscribe_takes_an_optional_interval() {
        let parsed = parse(r#"{"type":"subscribe","room":"r","ref":1}"#, &limits()).unwrap();
        assert!(matches!(parsed, Request::Subscribe { interval_ms: 0, .. }));
        let parsed = parse(
            r#"{"type":"subscribe","room":"r","intervalMs":50}"#,
            &limits(),
        )
        .unwrap();
        assert!(matches!(
            parsed,
            Request::Subscribe {
                interval_ms: 50,
                ..
            }
        ));
        for bad in ["-1", "1.5", "\"50\"", "60001"] {
            let text = format!(r#"{{"type":"subscribe","room":"r","intervalMs":{bad},"ref":2}}"#);
            let rejection = parse(&text, &limits()).unwrap_err();
            assert_eq!(rejection.code, ErrorCode::BadRequest, "{bad}");
            assert_eq!(rejection.reference, Some(2));
        }
    }

    #[test]
    fn ttl_must_be_an_integer_in_range() {
        for ttl in [
            "0",
            "-1",
            "1e300",
            "1.5",
            "3600001",
            "\"30\"",
            "null",
            "18446744073709551616",
        ] {
            let text = format!(r#"{{"type":"heartbeat","room":"r","ttlMs":{ttl},"ref":3}}"#);
            let rejection = parse(&text, &limits()).unwrap_err();
            assert_eq!(rejection.code, ErrorCode::InvalidTtl, "ttl {ttl}");
            assert_eq!(rejection.reference, Some(3));
            assert_eq!(rejection.room.as_deref(), Some("r"));
        }
        assert_eq!(
            code(r#"{"type":"heartbeat","room":"r"}"#),
            ErrorCode::InvalidTtl
        );
        assert!(
            parse(
                r#"{"type":"heartbeat","room":"r","ttlMs":3600000}"#,
                &limits()
            )
            .is_ok()
        );
    }

    #[test]
    fn room_names_are_checked() {
        let long = "x".repeat(257);
        assert_eq!(
            code(&format!(r#"{{"type":"subscribe","room":"{long}"}}"#)),
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            code(r#"{"type":"subscribe","room":""}"#),
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            code(r#"{"type":"subscribe","room":"a\u0007b"}"#),
            ErrorCode::InvalidRoom
        );
        assert_eq!(code(r#"{"type":"subscribe"}"#), ErrorCode::InvalidRoom);
        let ok = "é".repeat(128);
        assert!(
            parse(
                &format!(r#"{{"type":"subscribe","room":"{ok}"}}"#),
                &limits()
            )
            .is_ok()
        );
    }

    #[test]
    fn data_is_checked_by_the_shared_validator() {
        let big = format!(r#""{}""#, "a".repeat(4095));
        let text = format!(r#"{{"type":"heartbeat","room":"r","data":{big},"ttlMs":5}}"#);
        assert_eq!(code(&text), ErrorCode::DataTooLarge);
        let text = r#"{"type":"heartbeat","room":"r","data":"\ud800","ttlMs":5,"ref":4}"#;
        let rejection = parse(text, &limits()).unwrap_err();
        assert_eq!(rejection.code, ErrorCode::InvalidData);
        assert_eq!(rejection.reference, Some(4));
        assert_eq!(rejection.room.as_deref(), Some("r"));
    }

    #[test]
    fn malformed_messages_are_bad_requests() {
        for text in [
            "",
            "nope",
            "[]",
            "42",
            "{}",
            r#"{"type":"dance"}"#,
            r#"{"type":7}"#,
            r#"{"type":"ping","ref":-1}"#,
            r#"{"type":"ping","ref":1.5}"#,
        ] {
            assert_eq!(code(text), ErrorCode::BadRequest, "{text:?}");
        }
    }

    #[test]
    fn the_server_reads_every_typed_client_message() {
        use rollcall_protocol::{ClientMessage, Json};
        let data = Json::from_text(r#"{"s":"é\"\\"}"#).expect("JSON");
        let messages = [
            ClientMessage::Hello {
                token: Some("t".into()),
                resume: Some("r".into()),
                user: Some("alice".into()),
            },
            ClientMessage::Subscribe {
                room: "pr:a".into(),
                interval_ms: Some(100),
                mode: Some(rollcall_protocol::SubscribeMode::Occupancy),
                reference: Some(1),
            },
            ClientMessage::Unsubscribe {
                room: "pr:a".into(),
                reference: None,
            },
            ClientMessage::Heartbeat {
                room: "pr:a".into(),
                data: data.clone(),
                ttl_ms: 30_000,
                reference: Some(2),
            },
            ClientMessage::Leave {
                room: "pr:a".into(),
                reference: Some(3),
            },
            ClientMessage::Auth {
                token: "t2".into(),
                reference: Some(4),
            },
            ClientMessage::Ping { reference: None },
            ClientMessage::Broadcast {
                room: "pr:a".into(),
                data: data.clone(),
                reference: Some(6),
            },
        ];
        for message in messages {
            let text = message.to_json();
            let parsed = parse(&text, &limits()).expect(&text);
            let same = match (&message, &parsed) {
                (
                    ClientMessage::Hello {
                        token,
                        resume,
                        user,
                    },
                    Request::Hello {
                        token: t,
                        resume: r,
                        user: u,
                    },
                ) => {
                    token.as_deref() == t.as_deref()
                        && resume.as_deref() == r.as_deref()
                        && user.as_deref() == u.as_deref()
                }
                (
                    ClientMessage::Subscribe {
                        room,
                        interval_ms,
                        mode,
                        reference,
                    },
                    Request::Subscribe {
                        room: r,
                        interval_ms: i,
                        occupancy: o,
                        reference: f,
                    },
                ) => {
                    room == r
                        && interval_ms.unwrap_or(0) == *i
                        && reference == f
                        && (*mode == Some(rollcall_protocol::SubscribeMode::Occupancy)) == *o
                }
                (
                    ClientMessage::Unsubscribe { room, reference },
                    Request::Unsubscribe {
                        room: r,
                        reference: f,
                    },
                )
                | (
                    ClientMessage::Leave { room, reference },
                    Request::Leave {
                        room: r,
                        reference: f,
                    },
                ) => room == r && reference == f,
                (
                    ClientMessage::Heartbeat {
                        room,
                        data,
                        ttl_ms,
                        reference,
                    },
                    Request::Heartbeat {
                        room: r,
                        data: d,
                        ttl,
                        reference: f,
                    },
                ) => room == r && data.as_str() == *d && Ttl(*ttl_ms) == *ttl && reference == f,
                (
                    ClientMessage::Auth { token, reference },
                    Request::Auth {
                        token: t,
                        reference: f,
                    },
                ) => token == t && reference == f,
                (ClientMessage::Ping { reference }, Request::Ping { reference: f }) => {
                    reference == f
                }
                (
                    ClientMessage::Broadcast {
                        room,
                        data,
                        reference,
                    },
                    Request::Broadcast {
                        room: r,
                        data: d,
                        reference: f,
                    },
                ) => room == r && data.as_str() == *d && reference == f,
                _ => false,
            };
            assert!(same, "{text} was read as {parsed:?}");
        }
    }
}
