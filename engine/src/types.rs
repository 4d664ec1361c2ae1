//! Newtypes for the numbers that must never be swapped: client ids, wall-clock
//! instants, lifetimes and sequence numbers.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Identifies one client across rooms, reconnects and restarts.
///
/// Always below 2^53 so that JavaScript can hold it in a `number` exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientId(pub u64);

impl ClientId {
    /// The largest id a client may have (2^53 - 1, `Number.MAX_SAFE_INTEGER`).
    pub const MAX: ClientId = ClientId((1 << 53) - 1);

    /// Returns the id if it is a valid client id: positive and at most [`ClientId::MAX`].
    pub fn new(id: u64) -> Option<ClientId> {
        (1..=Self::MAX.0).contains(&id).then_some(ClientId(id))
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A wall-clock instant in milliseconds since the Unix epoch.
///
/// The engine never reads the clock itself: every operation that depends on time takes
/// a `UnixMs` from its caller, which keeps replay deterministic.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMs(pub u64);

impl UnixMs {
    /// Reads the system clock. For callers of the engine; the fold never calls it.
    pub fn now() -> UnixMs {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        UnixMs(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    /// The instant `ttl` after this one, saturating instead of overflowing.
    pub fn after(self, ttl: Ttl) -> UnixMs {
        UnixMs(self.0.saturating_add(ttl.0))
    }

    /// Milliseconds from `earlier` to `self`, or zero if `earlier` is later.
    pub fn since(self, earlier: UnixMs) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for UnixMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// How long an entry lives after the heartbeat that set it, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ttl(pub u64);

impl Ttl {
    /// This lifetime as a [`Duration`].
    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

/// The key of a record in the log: records are stored and replayed in `Seq` order.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Seq(pub u64);

impl Seq {
    /// The big-endian key bytes under which the record is stored, so that sled's
    /// lexicographic order is sequence order.
    pub fn to_key(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// Parses a record key; `None` if it is not exactly eight bytes.
    pub fn from_key(key: &[u8]) -> Option<Seq> {
        Some(Seq(u64::from_be_bytes(key.try_into().ok()?)))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The position of an append in this process's stream of appends.
///
/// Appends are numbered in the order they were made; once the log's durable watermark
/// reaches a ticket, that append (or a later event that supersedes it) is on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_bounds() {
        assert_eq!(ClientId::new(0), None);
        assert_eq!(ClientId::new(1), Some(ClientId(1)));
        assert_eq!(ClientId::new((1 << 53) - 1), Some(ClientId::MAX));
        assert_eq!(ClientId::new(1 << 53), None);
    }

    #[test]
    fn seq_keys_sort_like_numbers() {
        let a = Seq(255).to_key();
        let b = Seq(256).to_key();
        assert!(a < b);
        assert_eq!(Seq::from_key(&b), Some(Seq(256)));
        assert_eq!(Seq::from_key(&[1, 2, 3]), None);
    }

    #[test]
    fn expiry_saturates() {
        assert_eq!(UnixMs(u64::MAX - 1).after(Ttl(10)), UnixMs(u64::MAX));
        assert_eq!(UnixMs(5).since(UnixMs(9)), 0);
    }
}
