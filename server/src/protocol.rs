//! The wire protocol: parsing client requests and encoding server messages.
//!
//! Every request is parsed and validated here, in one place; the handler only sees
//! well-formed [`Request`]s. Outgoing messages on the hot path (change fragments,
//! `changes` frames) are written by hand into strings that are shared between all
//! subscribers of a room; the rest go through the typed messages of the protocol
//! crate (`rollcall-protocol`), which defines every message, code and validator. The
//! tests below prove the hand-written encoders produce exactly what those types
//! serialize to.

use std::borrow::Cow;
use std::fmt::Write as _;

use rollcall_engine::{Change, ChangeKind, ClientId, Entry, Ttl, UnixMs};
use serde::Deserialize;
use serde_json::value::RawValue;

use rollcall_protocol::ServerMessage;

pub use crate::fanout::Mode;
use crate::limits::Limits;
pub use crate::rejection::{ErrorCode, Rejection};

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
        /// `mode` (and `limit`): entries, counts, or a sample of entries and counts.
        mode: Mode,
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
    #[serde(borrow)]
    limit: Option<&'a RawValue>,
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
            let mode = match raw.mode.as_deref() {
                None | Some("full") => Mode::Full,
                Some("occupancy") => Mode::Occupancy,
                Some("sample") => Mode::Sample(
                    rollcall_protocol::parse_sample_limit(raw.limit)
                        .map_err(|r| r.with(reference, Some(&room)))? as usize,
                ),
                Some(other) => {
                    return Err(Rejection::new(
                        ErrorCode::BadRequest,
                        format!(
                            "unknown subscribe mode {other:?}: use \"full\", \"occupancy\" or \
                             \"sample\""
                        ),
                    )
                    .with(reference, Some(&room)));
                }
            };
            if raw.limit.is_some() && !matches!(mode, Mode::Sample(_)) {
                return Err(Rejection::new(
                    ErrorCode::BadRequest,
                    "limit applies to mode \"sample\" only",
                )
                .with(reference, Some(&room)));
            }
            Ok(Request::Subscribe {
                room,
                reference,
                interval_ms,
                mode,
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
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, byte) in s.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Appends an entry's data, which was validated as JSON when it was accepted.
fn push_data(out: &mut String, data: &[u8]) {
    match std::str::from_utf8(data) {
        Ok(json) if !json.is_empty() => out.push_str(json),
        // Only reachable with a damaged log; never forward bytes that are not JSON text.
        _ => out.push_str("null"),
    }
}

/// `"clientId":7,"data":…,"expiresAtMs":…[,"userId":"…"]`
pub fn push_entry_fields(out: &mut String, entry: &Entry) {
    let _ = write!(out, "\"clientId\":{},\"data\":", entry.client.0);
    push_data(out, &entry.data);
    let _ = write!(out, ",\"expiresAtMs\":{}", entry.expires_at.0);
    if let Some(user) = &entry.user {
        out.push_str(",\"userId\":");
        push_json_str(out, user);
    }
}

/// One element of a `changes` array; built once per change and shared by every
/// subscriber of the room.
pub fn change_fragment(change: &Change) -> String {
    let mut out = String::with_capacity(72 + change.entry.data.len());
    match change.kind {
        ChangeKind::Insert | ChangeKind::Update => {
            out.push_str("{\"op\":\"upsert\",");
            push_entry_fields(&mut out, &change.entry);
            out.push('}');
        }
        ChangeKind::Leave => {
            let _ = write!(
                out,
                "{{\"op\":\"leave\",\"clientId\":{}}}",
                change.entry.client.0
            );
        }
        ChangeKind::Expire => {
            let _ = write!(
                out,
                "{{\"op\":\"expire\",\"clientId\":{}}}",
                change.entry.client.0
            );
        }
    }
    out
}

/// Appends one entry of a snapshot or of `GET /v1/rooms/{room}`.
pub fn push_entry(out: &mut String, entry: &Entry) {
    out.push('{');
    push_entry_fields(out, entry);
    out.push('}');
}

/// The `entries` array of a room.
pub fn entries_json<'e>(entries: impl IntoIterator<Item = &'e Entry>) -> String {
    let mut out = String::from("[");
    for (i, entry) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_entry(&mut out, entry);
    }
    out.push(']');
    out
}

/// A `snapshot` message.
pub fn snapshot<'e>(
    room: &str,
    now: UnixMs,
    entries: impl IntoIterator<Item = &'e Entry>,
) -> String {
    let mut out = String::with_capacity(96);
    out.push_str("{\"type\":\"snapshot\",\"room\":");
    push_json_str(&mut out, room);
    let _ = write!(out, ",\"serverTimeMs\":{},\"entries\":", now.0);
    out.push_str(&entries_json(entries));
    out.push('}');
    out
}

/// A `sample` subscription's `snapshot`: its entries and the room's counts.
pub fn sample_snapshot<'e>(
    room: &str,
    now: UnixMs,
    entries: impl IntoIterator<Item = &'e Entry>,
    (entry_count, user_count): (usize, usize),
) -> String {
    let mut out = snapshot(room, now, entries);
    out.pop();
    let _ = write!(
        out,
        ",\"entryCount\":{entry_count},\"userCount\":{user_count}}}"
    );
    out
}

/// An `occupancy` message: a room's counts of entries and users.
pub fn occupancy(room: &str, now: UnixMs, entries: usize, users: usize) -> String {
    let mut out = String::with_capacity(96);
    out.push_str("{\"type\":\"occupancy\",\"room\":");
    push_json_str(&mut out, room);
    let _ = write!(
        out,
        ",\"serverTimeMs\":{},\"entryCount\":{entries},\"userCount\":{users}}}",
        now.0
    );
    out
}

/// The start of a `changes` message, up to the opening bracket of the array.
pub fn changes_prefix(out: &mut String, room: &str, now: UnixMs) {
    out.push_str("{\"type\":\"changes\",\"room\":");
    push_json_str(out, room);
    let _ = write!(out, ",\"serverTimeMs\":{},\"changes\":[", now.0);
}

/// Closes what [`changes_prefix`] opened.
pub const CHANGES_SUFFIX: &str = "]}";

/// A `welcome` message.
pub fn welcome(
    client: ClientId,
    resume_token: &str,
    resumed: bool,
    now: UnixMs,
    limits: &Limits,
) -> String {
    ServerMessage::Welcome {
        client_id: client.0,
        resume_token: resume_token.to_owned(),
        resumed,
        server_time_ms: now.0,
        limits: limits.announced(),
    }
    .to_json()
}

/// An `ack` message.
pub fn ack(reference: u64, expires_at: Option<UnixMs>) -> String {
    match expires_at {
        Some(at) => format!(
            "{{\"type\":\"ack\",\"ref\":{reference},\"expiresAtMs\":{}}}",
            at.0
        ),
        None => format!("{{\"type\":\"ack\",\"ref\":{reference}}}"),
    }
}

/// A `broadcast` as its room's subscribers get it:
/// `{"type":"broadcast","room":…,"clientId":…[,"userId":…],"data":…,"serverTimeMs":…}`.
pub fn broadcast(
    room: &str,
    client: ClientId,
    user: Option<&str>,
    data: &str,
    now: UnixMs,
) -> String {
    let mut out = String::with_capacity(data.len() + room.len() + 96);
    out.push_str("{\"type\":\"broadcast\",\"room\":");
    push_json_str(&mut out, room);
    let _ = write!(out, ",\"clientId\":{}", client.0);
    if let Some(user) = user {
        out.push_str(",\"userId\":");
        push_json_str(&mut out, user);
    }
    out.push_str(",\"data\":");
    out.push_str(data);
    let _ = write!(out, ",\"serverTimeMs\":{}}}", now.0);
    out
}

/// A `pong` message.
pub fn pong(reference: Option<u64>, now: UnixMs) -> String {
    match reference {
        Some(r) => format!(
            "{{\"type\":\"pong\",\"ref\":{r},\"serverTimeMs\":{}}}",
            now.0
        ),
        None => format!("{{\"type\":\"pong\",\"serverTimeMs\":{}}}", now.0),
    }
}

/// An `error` message.
pub fn error(rejection: &Rejection) -> String {
    ServerMessage::Error {
        code: rejection.code,
        message: rejection.message.clone(),
        reference: rejection.reference,
        room: rejection.room.clone(),
    }
    .to_json()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

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
    fn subscribe_modes_and_the_sample_limit() {
        let mode = |text: &str| match parse(text, &limits()) {
            Ok(Request::Subscribe { mode, .. }) => Ok(mode),
            Ok(other) => panic!("{other:?}"),
            Err(rejection) => Err(rejection),
        };
        assert_eq!(mode(r#"{"type":"subscribe","room":"r"}"#), Ok(Mode::Full));
        assert_eq!(
            mode(r#"{"type":"subscribe","room":"r","mode":"occupancy"}"#),
            Ok(Mode::Occupancy)
        );
        assert_eq!(
            mode(r#"{"type":"subscribe","room":"r","mode":"sample","limit":20,"intervalMs":100}"#),
            Ok(Mode::Sample(20))
        );
        for bad in [
            r#"{"type":"subscribe","room":"r","mode":"sample","ref":2}"#,
            r#"{"type":"subscribe","room":"r","mode":"sample","limit":0,"ref":2}"#,
            r#"{"type":"subscribe","room":"r","mode":"sample","limit":1001,"ref":2}"#,
            r#"{"type":"subscribe","room":"r","mode":"sample","limit":"5","ref":2}"#,
            r#"{"type":"subscribe","room":"r","mode":"full","limit":5,"ref":2}"#,
            r#"{"type":"subscribe","room":"r","mode":"some","ref":2}"#,
        ] {
            let rejection = mode(bad).expect_err(bad);
            assert_eq!(rejection.code, ErrorCode::BadRequest, "{bad}");
            assert_eq!(rejection.reference, Some(2));
            assert_eq!(rejection.room.as_deref(), Some("r"));
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
    fn fragments_are_valid_json() {
        let entry = Entry {
            client: ClientId(7),
            user: Some(Arc::from("ali\"ce\n")),
            data: Bytes::from_static(br#"{"x":1}"#),
            expires_at: UnixMs(99),
        };
        for kind in [
            ChangeKind::Insert,
            ChangeKind::Update,
            ChangeKind::Leave,
            ChangeKind::Expire,
        ] {
            let change = Change {
                room: "r".into(),
                kind,
                entry: entry.clone(),
            };
            let fragment = change_fragment(&change);
            let value: serde_json::Value = serde_json::from_str(&fragment).unwrap();
            assert_eq!(value["clientId"], 7);
        }
        let upsert: serde_json::Value = serde_json::from_str(&change_fragment(&Change {
            room: "r".into(),
            kind: ChangeKind::Update,
            entry: entry.clone(),
        }))
        .unwrap();
        assert_eq!(upsert["op"], "upsert");
        assert_eq!(upsert["userId"], "ali\"ce\n");
        assert_eq!(upsert["data"]["x"], 1);

        let mut frame = String::new();
        changes_prefix(&mut frame, "r\u{1}\"", UnixMs(5));
        frame.push_str(&change_fragment(&Change {
            room: "r".into(),
            kind: ChangeKind::Leave,
            entry: entry.clone(),
        }));
        frame.push_str(CHANGES_SUFFIX);
        let value: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(value["room"], "r\u{1}\"");
        assert_eq!(value["changes"][0]["op"], "leave");

        let snap: serde_json::Value =
            serde_json::from_str(&snapshot("r", UnixMs(1), [&entry])).unwrap();
        assert_eq!(snap["entries"][0]["expiresAtMs"], 99);
    }

    #[test]
    fn errors_carry_ref_and_room() {
        let rejection = Rejection::new(ErrorCode::RoomFull, "full").with(Some(9), Some("r"));
        let value: serde_json::Value = serde_json::from_str(&error(&rejection)).unwrap();
        assert_eq!(value["code"], "room_full");
        assert_eq!(value["ref"], 9);
        assert_eq!(value["room"], "r");
    }

    /// Entries covering what the hand-written encoders must escape or pass through:
    /// quotes, backslashes, every control character, unicode, empty and damaged data,
    /// the largest ids and data.
    fn tricky_entries() -> Vec<Entry> {
        let controls: String = (0u8..0x20).map(char::from).chain(['\u{7f}']).collect();
        let max_data = format!(r#""{}""#, "é".repeat((4096 - 2) / 2));
        let cases: Vec<(u64, Option<String>, Vec<u8>, u64)> = vec![
            (1, None, br#"{"status":"online"}"#.to_vec(), 1),
            (
                7,
                Some(format!("a\"b\\c/{controls}")),
                br#"{ "x" : 1.50e3 }"#.to_vec(),
                99,
            ),
            (
                9,
                Some("ünïcödé 🦀 \u{2028}".into()),
                "\"🦀\\ud83e\\udd80\"".as_bytes().to_vec(),
                u64::MAX,
            ),
            ((1 << 53) - 1, Some(String::new()), b"null".to_vec(), 0),
            (3, None, Vec::new(), 5),
            (4, None, vec![0xff, 0xfe], 6),
            (5, None, max_data.into_bytes(), 7),
            (6, None, br#"[[],{},"",0,-0.0,true,false]"#.to_vec(), 8),
        ];
        cases
            .into_iter()
            .map(|(client, user, data, expires)| Entry {
                client: ClientId(client),
                user: user.map(Arc::from),
                data: Bytes::from(data),
                expires_at: UnixMs(expires),
            })
            .collect()
    }

    /// The typed entry the hand-written encoder must match.
    fn typed(entry: &Entry) -> rollcall_protocol::Entry {
        let data = std::str::from_utf8(&entry.data)
            .ok()
            .filter(|text| !text.is_empty())
            .map_or_else(rollcall_protocol::Json::null, |text| {
                rollcall_protocol::Json::from_text(text).expect("valid JSON")
            });
        rollcall_protocol::Entry {
            client_id: entry.client.0,
            data,
            expires_at_ms: entry.expires_at.0,
            user_id: entry.user.as_deref().map(str::to_owned),
        }
    }

    fn rooms() -> Vec<String> {
        vec![
            "r".into(),
            "pr:\"quoted\"\\slash/".into(),
            "ünïcödé 🦀".into(),
            "x".repeat(256),
        ]
    }

    #[test]
    fn snapshots_are_exactly_what_the_types_serialize_to() {
        let entries = tricky_entries();
        for room in rooms() {
            for set in [&entries[..0], &entries[..1], &entries[..]] {
                let written = snapshot(&room, UnixMs(1_764_300_000_000), set);
                let expected = ServerMessage::Snapshot {
                    room: room.clone(),
                    server_time_ms: 1_764_300_000_000,
                    entries: set.iter().map(typed).collect(),
                    entry_count: None,
                    user_count: None,
                };
                assert_eq!(written, expected.to_json());
                assert_eq!(
                    ServerMessage::from_json(&written).expect("parses"),
                    expected
                );
                let sampled = sample_snapshot(&room, UnixMs(1_764_300_000_000), set, (20_000, 7));
                let expected = ServerMessage::Snapshot {
                    room: room.clone(),
                    server_time_ms: 1_764_300_000_000,
                    entries: set.iter().map(typed).collect(),
                    entry_count: Some(20_000),
                    user_count: Some(7),
                };
                assert_eq!(sampled, expected.to_json());
                assert_eq!(
                    ServerMessage::from_json(&sampled).expect("parses"),
                    expected
                );
                let listed: Vec<rollcall_protocol::Entry> = set.iter().map(typed).collect();
                assert_eq!(
                    entries_json(set),
                    serde_json::to_string(&listed).expect("serializes")
                );
            }
        }
    }

    #[test]
    fn changes_are_exactly_what_the_types_serialize_to() {
        let entries = tricky_entries();
        for room in rooms() {
            let mut frame = String::new();
            changes_prefix(&mut frame, &room, UnixMs(42));
            let mut expected = Vec::new();
            for entry in &entries {
                for kind in [
                    ChangeKind::Insert,
                    ChangeKind::Update,
                    ChangeKind::Leave,
                    ChangeKind::Expire,
                ] {
                    if frame.ends_with('}') {
                        frame.push(',');
                    }
                    frame.push_str(&change_fragment(&Change {
                        room: room.as_str().into(),
                        kind,
                        entry: entry.clone(),
                    }));
                    let client_id = entry.client.0;
                    expected.push(match kind {
                        ChangeKind::Insert | ChangeKind::Update => {
                            let typed = typed(entry);
                            rollcall_protocol::Change::Upsert {
                                client_id,
                                data: typed.data,
                                expires_at_ms: typed.expires_at_ms,
                                user_id: typed.user_id,
                            }
                        }
                        ChangeKind::Leave => rollcall_protocol::Change::Leave { client_id },
                        ChangeKind::Expire => rollcall_protocol::Change::Expire { client_id },
                    });
                }
            }
            frame.push_str(CHANGES_SUFFIX);
            let expected = ServerMessage::Changes {
                room: room.clone(),
                server_time_ms: 42,
                changes: expected,
            };
            assert_eq!(frame, expected.to_json());
            assert_eq!(ServerMessage::from_json(&frame).expect("parses"), expected);
        }
    }

    #[test]
    fn acks_pongs_welcomes_and_errors_are_exactly_the_typed_messages() {
        for (reference, expires) in [
            (0, None),
            (2, Some(UnixMs(1))),
            ((1 << 53) - 1, Some(UnixMs(u64::MAX))),
        ] {
            assert_eq!(
                ack(reference, expires),
                ServerMessage::Ack {
                    reference,
                    expires_at_ms: expires.map(|at| at.0),
                }
                .to_json()
            );
        }
        for reference in [None, Some(0), Some(4)] {
            let written = pong(reference, UnixMs(1_764_300_000_100));
            let expected = ServerMessage::Pong {
                reference,
                server_time_ms: 1_764_300_000_100,
            };
            assert_eq!(written, expected.to_json());
            assert_eq!(
                ServerMessage::from_json(&written).expect("parses"),
                expected
            );
        }
        let welcome = welcome(ClientId(7), "tok\"en", true, UnixMs(5), &limits());
        assert_eq!(
            welcome,
            r#"{"type":"welcome","clientId":7,"resumeToken":"tok\"en","resumed":true,"serverTimeMs":5,"limits":{"maxMessageBytes":65536,"maxDataBytes":4096,"maxTtlMs":3600000,"maxRoomsPerConnection":128,"maxEntriesPerRoom":10000,"heartbeatsPerSecond":120,"heartbeatBurst":240}}"#
        );
        let rejection =
            Rejection::new(ErrorCode::InvalidTtl, "ttlMs \"x\"").with(Some(2), Some("r"));
        assert_eq!(
            error(&rejection),
            r#"{"type":"error","code":"invalid_ttl","message":"ttlMs \"x\"","ref":2,"room":"r"}"#
        );
    }

    #[test]
    fn broadcasts_are_the_protocol_crates_message() {
        use rollcall_protocol::ServerMessage;
        for user in [Some("ali\"ce"), None] {
            let text = broadcast("pr:a", ClientId(7), user, r#"{"emoji":"x"}"#, UnixMs(5));
            let message = ServerMessage::from_json(&text).expect(&text);
            assert!(matches!(
                message,
                ServerMessage::Broadcast { client_id: 7, .. }
            ));
            assert_eq!(message.to_json(), text);
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
                limit: None,
                reference: Some(1),
            },
            ClientMessage::Subscribe {
                room: "pr:a".into(),
                interval_ms: None,
                mode: Some(rollcall_protocol::SubscribeMode::Sample),
                limit: Some(25),
                reference: Some(7),
            },
            ClientMessage::Subscribe {
                room: "pr:a".into(),
                interval_ms: None,
                mode: Some(rollcall_protocol::SubscribeMode::Full),
                limit: None,
                reference: None,
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
                        limit,
                        reference,
                    },
                    Request::Subscribe {
                        room: parsed_room,
                        interval_ms: parsed_interval,
                        mode: parsed_mode,
                        reference: parsed_reference,
                    },
                ) => {
                    use rollcall_protocol::SubscribeMode;
                    let same_mode = match (mode, parsed_mode) {
                        (None | Some(SubscribeMode::Full), Mode::Full)
                        | (Some(SubscribeMode::Occupancy), Mode::Occupancy) => true,
                        (Some(SubscribeMode::Sample), Mode::Sample(n)) => *limit == Some(*n as u64),
                        _ => false,
                    };
                    room == parsed_room
                        && interval_ms.unwrap_or(0) == *parsed_interval
                        && reference == parsed_reference
                        && same_mode
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
