//! The wire protocol: parsing client requests and encoding server messages.
//!
//! Every request is parsed and validated here, in one place; the handler only sees
//! well-formed [`Request`]s. Outgoing messages on the hot path (change fragments,
//! `changes` frames) are written by hand into strings that are shared between all
//! subscribers of a room; the rest go through serde. `docs/protocol.md` is the
//! reference for every message.

use std::borrow::Cow;
use std::fmt::Write as _;

use rollcall_engine::{Change, ChangeKind, ClientId, Entry, Ttl, UnixMs};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::limits::Limits;
pub use crate::rejection::{ErrorCode, Rejection};

/// WebSocket close codes (see `docs/protocol.md`).
pub mod close {
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol (e.g. an unmasked, fragmented control
    /// or unexpected continuation frame, or non-zero reserved bits).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message exceeded the size limit, or spanned too many frames.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server failed.
    pub const INTERNAL: u16 = 1011;
    /// The first message was not a valid `hello`.
    pub const BAD_HELLO: u16 = 4000;
    /// Another connection resumed this client id.
    pub const REPLACED: u16 = 4001;
    /// No `hello` in time.
    pub const HELLO_TIMEOUT: u16 = 4002;
    /// Authentication failed.
    pub const UNAUTHORIZED: u16 = 4003;
    /// The token expired and was not renewed.
    pub const TOKEN_EXPIRED: u16 = 4004;
    /// The client stopped reading.
    pub const SLOW_CONSUMER: u16 = 4005;
    /// Too many control frames or pings.
    pub const CONTROL_FLOOD: u16 = 4006;
    /// No traffic and no pong within the idle timeout.
    pub const IDLE: u16 = 4008;
}

/// A parsed, validated client request.
#[derive(Debug)]
pub enum Request<'a> {
    /// Opens the session.
    Hello {
        /// A JWT, when auth is on.
        token: Option<Cow<'a, str>>,
        /// A resume token from an earlier welcome.
        resume: Option<Cow<'a, str>>,
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
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow)]
    resume: Option<Cow<'a, str>>,
}

/// Largest integer a JavaScript number holds exactly.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Parses and validates one text message.
pub fn parse<'a>(text: &'a str, limits: &Limits) -> Result<Request<'a>, Rejection> {
    let raw: Raw<'a> = serde_json::from_str(text).map_err(|e| {
        Rejection::new(
            ErrorCode::BadRequest,
            format!("a message must be a JSON object: {e}"),
        )
    })?;
    let reference = match raw.reference {
        None => None,
        Some(value) => Some(
            value
                .get()
                .parse::<u64>()
                .ok()
                .filter(|r| *r <= MAX_SAFE_INTEGER)
                .ok_or_else(|| {
                    Rejection::new(ErrorCode::BadRequest, "ref must be an integer in [0, 2^53)")
                })?,
        ),
    };
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
        }),
        "subscribe" => {
            let room = room(raw.room)?;
            let interval_ms =
                parse_interval(raw.interval_ms).map_err(|r| r.with(reference, Some(&room)))?;
            Ok(Request::Subscribe {
                room,
                reference,
                interval_ms,
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

/// Validates a heartbeat's `data` (syntactically valid JSON text, as serde parsed it):
/// at most `max_data_bytes`, and only what every RFC 8259 parser reads the same way:
/// no lone surrogate escapes, every number within the range of a double, and arrays
/// and objects nested at most `max_data_depth` deep. Shared by WebSocket and REST.
pub fn check_data(data: &str, limits: &Limits) -> Result<(), Rejection> {
    if data.len() > limits.max_data_bytes {
        return Err(Rejection::new(
            ErrorCode::DataTooLarge,
            format!(
                "data is {} bytes of JSON; the limit is {}",
                data.len(),
                limits.max_data_bytes
            ),
        ));
    }
    let invalid = |message: String| Rejection::new(ErrorCode::InvalidData, message);
    let bytes = data.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'[' | b'{' => {
                depth += 1;
                if depth > limits.max_data_depth {
                    return Err(invalid(format!(
                        "data is nested more than {} levels deep",
                        limits.max_data_depth
                    )));
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'"' => i = check_string(bytes, i + 1).map_err(invalid)?,
            b'-' | b'0'..=b'9' => {
                let end = bytes[i..]
                    .iter()
                    .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .map_or(bytes.len(), |n| i + n);
                let number = &data[i..end];
                if !number.parse::<f64>().is_ok_and(f64::is_finite) {
                    return Err(invalid(format!(
                        "the number {} is out of the range of a double",
                        truncate(number)
                    )));
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Checks the escapes of the string whose contents start at `start`; returns the index
/// after its closing quote.
fn check_string(bytes: &[u8], start: usize) -> Result<usize, String> {
    let hex = |at: usize| -> Option<u16> {
        let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
        u16::from_str_radix(digits, 16).ok()
    };
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return Ok(i + 1),
            b'\\' if bytes.get(i + 1) == Some(&b'u') => {
                let unit = hex(i + 2).unwrap_or(0);
                i += 6;
                if (0xDC00..=0xDFFF).contains(&unit) {
                    return Err(format!("data holds a lone surrogate \\u{unit:04x}"));
                }
                if (0xD800..=0xDBFF).contains(&unit) {
                    let low = (bytes.get(i) == Some(&b'\\') && bytes.get(i + 1) == Some(&b'u'))
                        .then(|| hex(i + 2))
                        .flatten();
                    if !low.is_some_and(|low| (0xDC00..=0xDFFF).contains(&low)) {
                        return Err(format!("data holds a lone surrogate \\u{unit:04x}"));
                    }
                    i += 6;
                }
            }
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(i)
}

/// At most 32 characters of `text`, for error messages.
fn truncate(text: &str) -> &str {
    text.char_indices()
        .nth(32)
        .map_or(text, |(at, _)| &text[..at])
}

/// The longest pacing interval a subscription may ask for.
pub const MAX_INTERVAL_MS: u64 = 60_000;

/// Validates `intervalMs` of `subscribe`: absent (zero) or an integer in
/// `[0, MAX_INTERVAL_MS]`.
pub fn parse_interval(raw: Option<&RawValue>) -> Result<u64, Rejection> {
    let Some(value) = raw else {
        return Ok(0);
    };
    value
        .get()
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms <= MAX_INTERVAL_MS)
        .ok_or_else(|| {
            Rejection::new(
                ErrorCode::BadRequest,
                format!("intervalMs must be an integer in [0, {MAX_INTERVAL_MS}]"),
            )
        })
}

/// Validates `ttlMs`: an integer in `[1, max_ttl_ms]`.
pub fn parse_ttl(raw: Option<&RawValue>, limits: &Limits) -> Result<Ttl, Rejection> {
    let invalid = || {
        Rejection::new(
            ErrorCode::InvalidTtl,
            format!("ttlMs must be an integer in [1, {}]", limits.max_ttl_ms),
        )
    };
    let value = raw.ok_or_else(invalid)?.get();
    // Only plain integer literals: `1.5`, `1e3`, `-1`, strings and `null` are refused.
    let ttl: u64 = value.parse().map_err(|_| invalid())?;
    if ttl == 0 || ttl > limits.max_ttl_ms {
        return Err(invalid());
    }
    Ok(Ttl(ttl))
}

/// Appends `s` as a JSON string literal.
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
    serde_json::json!({
        "type": "welcome",
        "clientId": client.0,
        "resumeToken": resume_token,
        "resumed": resumed,
        "serverTimeMs": now.0,
        "limits": {
            "maxMessageBytes": limits.max_message_bytes,
            "maxDataBytes": limits.max_data_bytes,
            "maxTtlMs": limits.max_ttl_ms,
            "maxRoomsPerConnection": limits.max_rooms_per_connection,
            "maxEntriesPerRoom": limits.max_entries_per_room,
            "heartbeatsPerSecond": limits.heartbeats_per_second,
            "heartbeatBurst": limits.heartbeat_burst,
        },
    })
    .to_string()
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
    let mut value = serde_json::json!({
        "type": "error",
        "code": rejection.code.as_str(),
        "message": rejection.message,
    });
    if let Some(r) = rejection.reference {
        value["ref"] = r.into();
    }
    if let Some(room) = &rejection.room {
        value["room"] = room.as_str().into();
    }
    value.to_string()
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
    fn data_size_is_checked() {
        let big = format!(r#""{}""#, "a".repeat(4095));
        let text = format!(r#"{{"type":"heartbeat","room":"r","data":{big},"ttlMs":5}}"#);
        assert_eq!(code(&text), ErrorCode::DataTooLarge);
        let fits = format!(r#""{}""#, "a".repeat(4094));
        let text = format!(r#"{{"type":"heartbeat","room":"r","data":{fits},"ttlMs":5}}"#);
        assert!(parse(&text, &limits()).is_ok());
    }

    #[test]
    fn data_every_parser_reads_alike_is_accepted() {
        for data in [
            r#"{"name":"a\"b\\","n":[1,-2.5e10,0.0,1e308],"s":"\ud83d\ude00 ok"}"#,
            r#""\u00e9\n""#,
            "null",
            "-0",
            "[[[[1]]]]",
            r#""[[[[[""#,
        ] {
            assert!(check_data(data, &limits()).is_ok(), "{data}");
        }
        let deep = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(check_data(&deep, &limits()).is_ok());
    }

    #[test]
    fn data_parsers_disagree_on_is_invalid() {
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        let huge = format!("1{}", "0".repeat(400));
        for data in [
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#"{"a":"x\uD800"}"#,
            "1e999999",
            "-1e400",
            &huge,
            &deep,
        ] {
            let rejection = check_data(data, &limits()).unwrap_err();
            assert_eq!(rejection.code, ErrorCode::InvalidData, "{data}");
        }
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
}
