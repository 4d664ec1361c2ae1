//! The on-disk record format: a versioned, checksummed postcard envelope.
//!
//! ```text
//! +---------+----------------+----------------+---------------------------+
//! | version | payload length | crc32(payload) | payload (postcard, v1)    |
//! | u8 = 1  | u32 LE         | u32 LE         | rooms table, then events  |
//! +---------+----------------+----------------+---------------------------+
//! ```
//!
//! A record holds one event or a whole commit group's events, in the order they were
//! appended. Room names are written once per record in a table and events refer to
//! them by index, because a group usually holds many events for the same few rooms.
//! See `docs/design.md` for the reasoning.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::event::{Event, Heartbeat, Leave};
use crate::types::{ClientId, Ttl, UnixMs};

/// The current format version, the first byte of every record.
pub const VERSION: u8 = 1;

/// Bytes before the payload: version, payload length, checksum.
pub const HEADER_LEN: usize = 9;

/// Why a record could not be decoded.
///
/// [`DecodeError::Truncated`] means the record ends before its header says it does: the
/// signature of a write that was cut short (a torn tail). Every other variant means the
/// bytes are there but wrong: corruption.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The record is shorter than its header declares.
    #[error("record is truncated: expected {expected} bytes, found {found}")]
    Truncated {
        /// Bytes the header (or the header itself) needs.
        expected: usize,
        /// Bytes present.
        found: usize,
    },
    /// The first byte names a format this build does not know.
    #[error("unknown record format version {0}")]
    UnknownVersion(u8),
    /// The payload does not match its checksum.
    #[error(
        "record checksum mismatch: header says {expected:#010x}, payload hashes to {found:#010x}"
    )]
    Checksum {
        /// Checksum stored in the header.
        expected: u32,
        /// Checksum of the payload as read.
        found: u32,
    },
    /// The payload passed its checksum but does not parse as a record.
    #[error("record payload is malformed: {0}")]
    Malformed(String),
}

impl DecodeError {
    /// True when the record looks like an interrupted write rather than damaged bytes.
    pub fn is_torn(&self) -> bool {
        matches!(self, DecodeError::Truncated { .. })
    }
}

/// Borrowed bytes that postcard writes as one length-prefixed blob.
struct Blob<'a>(&'a [u8]);

impl Serialize for Blob<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Blob<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&'a [u8]>::deserialize(deserializer).map(Blob)
    }
}

impl fmt::Debug for Blob<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

/// Version 1 of an event on disk. Field order is part of the format: never reorder,
/// only add a new version.
#[derive(Debug, Serialize, Deserialize)]
enum EventV1<'a> {
    Heartbeat {
        room: u32,
        client: u64,
        #[serde(borrow)]
        user: Option<&'a str>,
        #[serde(borrow)]
        data: Blob<'a>,
        ttl_ms: u64,
        at_ms: u64,
    },
    Leave {
        room: u32,
        client: u64,
        at_ms: u64,
    },
}

#[derive(Debug, Deserialize)]
struct RecordV1<'a> {
    #[serde(borrow)]
    rooms: Vec<&'a str>,
    #[serde(borrow)]
    events: Vec<EventV1<'a>>,
}

/// Appends the encoding of `events` to `out` and the encoded size of each event to
/// `sizes`.
///
/// # Panics
/// Only if a record would exceed 4 GiB, which the log's group size caps prevent.
pub fn encode_into<'e, I>(events: I, out: &mut Vec<u8>, sizes: &mut Vec<u32>)
where
    I: IntoIterator<Item = &'e Event>,
    I::IntoIter: Clone,
{
    let events = events.into_iter();
    let mut room_index: HashMap<&str, u32> = HashMap::new();
    let mut rooms: Vec<&str> = Vec::new();
    let mut count = 0usize;
    for event in events.clone() {
        count += 1;
        let room: &str = event.room();
        room_index.entry(room).or_insert_with(|| {
            rooms.push(room);
            (rooms.len() - 1) as u32
        });
    }

    let start = out.len();
    out.push(VERSION);
    out.extend_from_slice(&[0; 8]);
    let payload_start = out.len();
    let mut buf = std::mem::take(out);
    buf = postcard::to_extend(&rooms, buf).expect("writing to a Vec cannot fail");
    buf = postcard::to_extend(&count, buf).expect("writing to a Vec cannot fail");
    for event in events {
        let before = buf.len();
        let on_disk = match event {
            Event::Heartbeat(hb) => EventV1::Heartbeat {
                room: room_index[&*hb.room],
                client: hb.client.0,
                user: hb.user.as_deref(),
                data: Blob(&hb.data),
                ttl_ms: hb.ttl.0,
                at_ms: hb.at.0,
            },
            Event::Leave(leave) => EventV1::Leave {
                room: room_index[&*leave.room],
                client: leave.client.0,
                at_ms: leave.at.0,
            },
        };
        buf = postcard::to_extend(&on_disk, buf).expect("writing to a Vec cannot fail");
        sizes.push(u32::try_from(buf.len() - before).expect("event larger than 4 GiB"));
    }
    *out = buf;
    let payload = &out[payload_start..];
    let len = u32::try_from(payload.len()).expect("record larger than 4 GiB");
    let crc = crc32fast::hash(payload);
    out[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
    out[start + 5..start + 9].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes `events` as one record.
pub fn encode(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(events, &mut out, &mut Vec::new());
    out
}

/// Decodes a record into its events, in order.
///
/// Never panics, and allocates at most in proportion to `record.len()`, whatever the
/// bytes.
pub fn decode(record: &[u8]) -> Result<Vec<Event>, DecodeError> {
    let Some(&version) = record.first() else {
        return Err(DecodeError::Truncated {
            expected: HEADER_LEN,
            found: 0,
        });
    };
    if version != VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    if record.len() < HEADER_LEN {
        return Err(DecodeError::Truncated {
            expected: HEADER_LEN,
            found: record.len(),
        });
    }
    let len = u32::from_le_bytes([record[1], record[2], record[3], record[4]]) as usize;
    let crc = u32::from_le_bytes([record[5], record[6], record[7], record[8]]);
    let payload = &record[HEADER_LEN..];
    if payload.len() < len {
        return Err(DecodeError::Truncated {
            expected: HEADER_LEN + len,
            found: record.len(),
        });
    }
    if payload.len() > len {
        return Err(DecodeError::Malformed(format!(
            "{} bytes after the payload",
            payload.len() - len
        )));
    }
    let found = crc32fast::hash(payload);
    if found != crc {
        return Err(DecodeError::Checksum {
            expected: crc,
            found,
        });
    }
    let (parsed, rest) = postcard::take_from_bytes::<RecordV1<'_>>(payload)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} bytes after the events",
            rest.len()
        )));
    }
    let rooms: Vec<Arc<str>> = parsed.rooms.iter().map(|r| Arc::from(*r)).collect();
    let room = |index: u32| {
        rooms
            .get(index as usize)
            .cloned()
            .ok_or_else(|| DecodeError::Malformed(format!("room index {index} out of range")))
    };
    let client = |id: u64| {
        ClientId::new(id).ok_or_else(|| DecodeError::Malformed(format!("invalid client id {id}")))
    };
    parsed
        .events
        .into_iter()
        .map(|event| {
            Ok(match event {
                EventV1::Heartbeat {
                    room: r,
                    client: c,
                    user,
                    data,
                    ttl_ms,
                    at_ms,
                } => Event::Heartbeat(Heartbeat {
                    room: room(r)?,
                    client: client(c)?,
                    user: user.map(Arc::from),
                    data: Bytes::copy_from_slice(data.0),
                    ttl: Ttl(ttl_ms),
                    at: UnixMs(at_ms),
                }),
                EventV1::Leave {
                    room: r,
                    client: c,
                    at_ms,
                } => Event::Leave(Leave {
                    room: room(r)?,
                    client: client(c)?,
                    at: UnixMs(at_ms),
                }),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(room: &str, client: u64, data: &str) -> Event {
        Event::Heartbeat(Heartbeat {
            room: room.into(),
            client: ClientId(client),
            user: (client % 2 == 0).then(|| Arc::from("user-1")),
            data: Bytes::copy_from_slice(data.as_bytes()),
            ttl: Ttl(30_000),
            at: UnixMs(1_764_300_000_000),
        })
    }

    fn sample() -> Vec<Event> {
        vec![
            hb("pr:a", 1, r#"{"x":1}"#),
            hb("pr:b", 2, r#"{"x":2}"#),
            Event::Leave(Leave {
                room: "pr:a".into(),
                client: ClientId(1),
                at: UnixMs(1_764_300_000_500),
            }),
            hb("pr:a", 3, "null"),
        ]
    }

    #[test]
    fn round_trip() {
        let events = sample();
        let mut bytes = Vec::new();
        let mut sizes = Vec::new();
        encode_into(&events, &mut bytes, &mut sizes);
        assert_eq!(sizes.len(), events.len());
        assert!(sizes.iter().sum::<u32>() < bytes.len() as u32);
        assert_eq!(decode(&bytes).unwrap(), events);
    }

    #[test]
    fn empty_record_round_trips() {
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
    }

    #[test]
    fn every_prefix_is_torn() {
        let bytes = encode(&sample());
        for cut in 1..bytes.len() {
            let err = decode(&bytes[..cut]).unwrap_err();
            assert!(err.is_torn(), "cut at {cut}: {err}");
        }
        assert!(decode(&[]).unwrap_err().is_torn());
    }

    #[test]
    fn flipped_bits_are_corruption_not_torn() {
        let bytes = encode(&sample());
        for i in HEADER_LEN..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            let err = decode(&damaged).unwrap_err();
            assert!(
                matches!(err, DecodeError::Checksum { .. }),
                "byte {i}: {err}"
            );
        }
    }

    #[test]
    fn unknown_version_is_named() {
        let mut bytes = encode(&sample());
        bytes[0] = 9;
        assert_eq!(decode(&bytes), Err(DecodeError::UnknownVersion(9)));
    }

    #[test]
    fn trailing_bytes_are_corruption() {
        let mut bytes = encode(&sample());
        bytes.push(0);
        let err = decode(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)));
        assert!(!err.is_torn());
    }

    #[test]
    fn room_table_is_shared() {
        let many: Vec<Event> = (1..=100).map(|c| hb("pr:one-room-name", c, "{}")).collect();
        let bytes = encode(&many);
        let name_count = bytes
            .windows("pr:one-room-name".len())
            .filter(|w| *w == b"pr:one-room-name")
            .count();
        assert_eq!(name_count, 1);
    }
}
