//! Limits on what clients may send: the defaults (SPEC §3, `docs/protocol.md`) and the
//! [`Limits`] a server runs with, which also validates room names.
//!
//! These constants are the one definition of every default: the server's flags, its
//! configuration and the TypeScript SDK (through the generated
//! `clients/typescript/src/protocol.gen.ts`) all take them from here.

use std::time::Duration;

use crate::{ErrorCode, Rejection};

/// Largest WebSocket message in bytes (closed with 1009 beyond).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest serialized heartbeat `data` in bytes.
pub const DEFAULT_MAX_DATA_BYTES: usize = 4 * 1024;
/// Deepest nesting of arrays and objects in `data` (`[[1]]` is 2).
pub const DEFAULT_MAX_DATA_DEPTH: usize = 64;
/// Longest TTL a heartbeat may ask for, in milliseconds.
pub const DEFAULT_MAX_TTL_MS: u64 = 3_600_000;
/// Longest room name in bytes.
pub const DEFAULT_MAX_ROOM_BYTES: usize = 256;
/// Rooms one connection may use (subscribed or holding its live entry).
pub const DEFAULT_MAX_ROOMS_PER_CONNECTION: usize = 128;
/// Live entries one room may hold.
pub const DEFAULT_MAX_ENTRIES_PER_ROOM: usize = 10_000;
/// Sustained heartbeats per second per connection.
pub const DEFAULT_HEARTBEATS_PER_SECOND: u32 = 120;
/// Heartbeats a connection may send in a burst.
pub const DEFAULT_HEARTBEAT_BURST: u32 = 240;
/// Milliseconds a new connection has to send `hello`.
pub const DEFAULT_HELLO_TIMEOUT_MS: u64 = 10_000;
/// Requests other than heartbeats per second per connection (burst twice that).
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 100;
/// WebSocket pings/pongs per second per connection (burst twice that).
pub const DEFAULT_CONTROL_FRAMES_PER_SECOND: u32 = 10;
/// Frames one message may span (its first frame and the continuations).
pub const MAX_FRAMES_PER_MESSAGE: u32 = 64;
/// The longest `intervalMs` a subscription may ask for.
pub const MAX_INTERVAL_MS: u64 = 60_000;
/// The most entries a `sample` subscription may ask for (`limit`).
pub const MAX_SAMPLE_LIMIT: u64 = 1_000;
/// What an HTTP heartbeat body may hold beyond `maxDataBytes` (`ttlMs`, `clientId`,
/// the keys and whitespace).
pub const HTTP_BODY_SLACK_BYTES: usize = 1024;
/// Largest `ref` and client id: the largest integer a JavaScript number holds exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Limits on client input, each with its default above.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest WebSocket message (closed with 1009 beyond).
    pub max_message_bytes: usize,
    /// Largest serialized heartbeat `data`.
    pub max_data_bytes: usize,
    /// Deepest nesting of arrays and objects in `data` (`[[1]]` is 2).
    pub max_data_depth: usize,
    /// Longest TTL.
    pub max_ttl_ms: u64,
    /// Longest room name in bytes.
    pub max_room_bytes: usize,
    /// Rooms one connection may use (subscribed or heartbeated).
    pub max_rooms_per_connection: usize,
    /// Live entries one room may hold.
    pub max_entries_per_room: usize,
    /// Sustained heartbeats per second per connection.
    pub heartbeats_per_second: u32,
    /// Heartbeats a connection may send in a burst.
    pub heartbeat_burst: u32,
    /// Time allowed between the upgrade and `hello`.
    pub hello_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_data_bytes: DEFAULT_MAX_DATA_BYTES,
            max_data_depth: DEFAULT_MAX_DATA_DEPTH,
            max_ttl_ms: DEFAULT_MAX_TTL_MS,
            max_room_bytes: DEFAULT_MAX_ROOM_BYTES,
            max_rooms_per_connection: DEFAULT_MAX_ROOMS_PER_CONNECTION,
            max_entries_per_room: DEFAULT_MAX_ENTRIES_PER_ROOM,
            heartbeats_per_second: DEFAULT_HEARTBEATS_PER_SECOND,
            heartbeat_burst: DEFAULT_HEARTBEAT_BURST,
            hello_timeout: Duration::from_millis(DEFAULT_HELLO_TIMEOUT_MS),
        }
    }
}

impl Limits {
    /// A room name is 1 to `max_room_bytes` bytes of UTF-8 without control characters.
    pub fn check_room(&self, room: &str) -> Result<(), Rejection> {
        if room.is_empty() || room.len() > self.max_room_bytes {
            return Err(Rejection::new(
                ErrorCode::InvalidRoom,
                format!(
                    "a room name is 1 to {} bytes; this one is {}",
                    self.max_room_bytes,
                    room.len()
                ),
            ));
        }
        if room.chars().any(char::is_control) {
            return Err(Rejection::new(
                ErrorCode::InvalidRoom,
                "a room name may not contain control characters",
            ));
        }
        Ok(())
    }

    /// The largest HTTP heartbeat body: `max_data_bytes` plus [`HTTP_BODY_SLACK_BYTES`].
    pub fn max_http_body_bytes(&self) -> usize {
        self.max_data_bytes.saturating_add(HTTP_BODY_SLACK_BYTES)
    }

    /// The limits a `welcome` announces.
    pub fn announced(&self) -> crate::WelcomeLimits {
        crate::WelcomeLimits {
            max_message_bytes: self.max_message_bytes as u64,
            max_data_bytes: self.max_data_bytes as u64,
            max_ttl_ms: self.max_ttl_ms,
            max_rooms_per_connection: self.max_rooms_per_connection as u64,
            max_entries_per_room: self.max_entries_per_room as u64,
            heartbeats_per_second: self.heartbeats_per_second,
            heartbeat_burst: self.heartbeat_burst,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_rules() {
        let limits = Limits::default();
        assert!(limits.check_room("pr:room-123").is_ok());
        assert!(limits.check_room(&"r".repeat(256)).is_ok());
        for bad in ["", "a\nb", "a\u{7f}b", &"r".repeat(257)] {
            let rejection = limits.check_room(bad).expect_err(bad);
            assert_eq!(rejection.code, ErrorCode::InvalidRoom, "{bad:?}");
        }
    }
}
