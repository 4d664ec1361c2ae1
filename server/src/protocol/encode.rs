//! The server's messages, encoded. Those on the hot path (change fragments,
//! `changes` frames, snapshots) are written by hand into strings shared between all
//! subscribers of a room; the rest go through the typed messages of the protocol crate.
//! The tests prove the hand-written encoders produce exactly what those types
//! serialize to.

use std::fmt::Write as _;

use rollcall_engine::{Change, ChangeKind, ClientId, Entry, UnixMs};
use rollcall_protocol::ServerMessage;

use super::Rejection;
use crate::limits::Limits;

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
    use crate::protocol::ErrorCode;

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
                };
                assert_eq!(written, expected.to_json());
                assert_eq!(
                    ServerMessage::from_json(&written).expect("parses"),
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
        let welcome = welcome(ClientId(7), "tok\"en", true, UnixMs(5), &Limits::default());
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
}
