//! Configurable limits on what clients may send, and the token bucket that enforces
//! rates.

use std::time::{Duration, Instant};

use crate::rejection::{ErrorCode, Rejection};

/// Limits on client input, each with the default of SPEC §3.
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
            max_message_bytes: 64 * 1024,
            max_data_bytes: 4 * 1024,
            max_data_depth: 64,
            max_ttl_ms: 3_600_000,
            max_room_bytes: 256,
            max_rooms_per_connection: 128,
            max_entries_per_room: 10_000,
            heartbeats_per_second: 120,
            heartbeat_burst: 240,
            hello_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// A room name is 1–256 bytes of UTF-8 without control characters.
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
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes one token at `now`; false if the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(120, 240);
        let allowed = (0..300).filter(|_| bucket.take(start)).count();
        assert_eq!(allowed, 240);
        // One second later: 120 more.
        let later = start + Duration::from_secs(1);
        let allowed = (0..300).filter(|_| bucket.take(later)).count();
        assert_eq!(allowed, 120);
        // Never more than the burst, however long the pause.
        let much_later = later + Duration::from_secs(3600);
        let allowed = (0..1000).filter(|_| bucket.take(much_later)).count();
        assert_eq!(allowed, 240);
    }

    #[test]
    fn room_rules() {
        let limits = Limits::default();
        assert!(limits.check_room("pr:room-123").is_ok());
        assert!(limits.check_room(&"r".repeat(256)).is_ok());
        assert_eq!(
            limits.check_room(&"r".repeat(257)).unwrap_err().code,
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            limits.check_room("").unwrap_err().code,
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            limits.check_room("a\nb").unwrap_err().code,
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            limits.check_room("a\u{7f}b").unwrap_err().code,
            ErrorCode::InvalidRoom
        );
    }
}
