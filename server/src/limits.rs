//! Configurable limits on what clients may send (defined, with their defaults, by the
//! protocol crate), and the token bucket that enforces rates.

use std::time::Instant;

pub use rollcall_protocol::Limits;
pub use rollcall_protocol::limits::*;

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
    use std::time::Duration;

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
}
