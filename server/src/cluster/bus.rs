//! The bus's envelope: every message carries an HMAC-SHA256 under the cluster's key.
//!
//! A message is `<MAC>.<body>`: the MAC, base64url without padding (43 characters),
//! a dot, then the JSON body. The MAC covers the subject the message is bound to
//! (the room's subject for a change, the sync subject and the reply inbox for a
//! request, the inbox for a reply, the nodes' subject for an announcement), a zero
//! byte, and the body: a valid message cannot be moved to another room, another
//! request or another kind. Every body carries its sender's clock (`ts`): a message
//! more than [`MAX_AGE_MS`] away from the receiver's clock is refused, so a recorded
//! message is useless once that long has passed; within that window the sequence
//! numbers refuse replays (see `docs/design.md`, "Cluster mode").

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::BusKey;

type HmacSha256 = Hmac<Sha256>;

/// Length of the encoded MAC.
const MAC_CHARS: usize = 43;
/// How far a message's `ts` may be from the receiver's clock, either way: the
/// nodes' clocks must agree to within this (NTP does much better).
pub const MAX_AGE_MS: u64 = 30_000;

/// Why a message from the bus was dropped: the `reason` label of
/// `rollcall_cluster_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// No MAC, or one that does not verify under the cluster key.
    Mac,
    /// Authentic but not readable (a bug or a version mismatch).
    Malformed,
    /// Its timestamp is too far from this node's clock.
    Stale,
    /// Authentic but already seen (a replay), or older than what is known.
    Replay,
    /// `data` larger than `--max-data-bytes`.
    DataSize,
    /// Expires later than now + `--max-ttl-ms`.
    Ttl,
    /// Would put the room past `--max-entries-per-room`.
    RoomFull,
    /// Removes an entry the sending node neither set nor allocated.
    Owner,
}

impl Reject {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Mac => "mac",
            Reject::Malformed => "malformed",
            Reject::Stale => "stale",
            Reject::Replay => "replay",
            Reject::DataSize => "data_size",
            Reject::Ttl => "ttl",
            Reject::RoomFull => "room_full",
            Reject::Owner => "owner",
        }
    }
}

/// The bus key derived from the cluster secret: the secret itself never keys
/// anything else's MACs (it may be the resume secret too).
pub fn key(secret: &[u8]) -> BusKey {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key size");
    mac.update(b"rollcall cluster bus v1");
    BusKey(mac.finalize().into_bytes().into())
}

fn mac(key: &BusKey, binding: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(&key.0).expect("HMAC takes any key size");
    mac.update(binding.as_bytes());
    mac.update(&[0]);
    mac.update(body);
    mac
}

/// `body`, sealed for `binding`.
pub fn seal(key: &BusKey, binding: &str, body: &[u8]) -> Bytes {
    let tag = mac(key, binding, body).finalize().into_bytes();
    let mut out = Vec::with_capacity(MAC_CHARS + 1 + body.len());
    out.extend_from_slice(URL_SAFE_NO_PAD.encode(tag).as_bytes());
    out.push(b'.');
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// The body of a message sealed for `binding`, if its MAC verifies (in constant
/// time).
pub fn open<'a>(key: &BusKey, binding: &str, payload: &'a [u8]) -> Result<&'a [u8], Reject> {
    if payload.len() <= MAC_CHARS || payload[MAC_CHARS] != b'.' {
        return Err(Reject::Mac);
    }
    let (tag, body) = (&payload[..MAC_CHARS], &payload[MAC_CHARS + 1..]);
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| Reject::Mac)?;
    mac(key, binding, body)
        .verify_slice(&tag)
        .map_err(|_| Reject::Mac)?;
    Ok(body)
}

/// Whether a message stamped `ts` may be taken at `now`.
pub fn fresh(ts: u64, now: u64) -> Result<(), Reject> {
    if ts.abs_diff(now) > MAX_AGE_MS {
        return Err(Reject::Stale);
    }
    Ok(())
}

/// The binding of a sync request answered on `inbox`.
pub fn request_binding(subject: &str, inbox: &str) -> String {
    format!("{subject} {inbox}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_and_binding_it_was_sealed_for_open_it() {
        let key = key(b"a cluster secret of at least 32 bytes....");
        let sealed = seal(&key, "rollcall.v1.room.YQ", b"{\"x\":1}");
        assert_eq!(
            open(&key, "rollcall.v1.room.YQ", &sealed),
            Ok(&b"{\"x\":1}"[..])
        );
        assert_eq!(
            open(&key, "rollcall.v1.room.Yg", &sealed),
            Err(Reject::Mac),
            "moved to another room"
        );
        let other = super::key(b"another secret, also 32 bytes long......");
        assert_eq!(
            open(&other, "rollcall.v1.room.YQ", &sealed),
            Err(Reject::Mac)
        );
        let mut tampered = sealed.to_vec();
        *tampered.last_mut().unwrap() = b'2';
        assert_eq!(
            open(&key, "rollcall.v1.room.YQ", &tampered),
            Err(Reject::Mac)
        );
        for junk in [&b""[..], b"{\"node\":1}", &[b'a'; 44]] {
            assert_eq!(open(&key, "s", junk), Err(Reject::Mac));
        }
        assert_eq!(fresh(1_000_000, 1_000_000 + MAX_AGE_MS), Ok(()));
        assert_eq!(fresh(1_000_000, 1_000_001 + MAX_AGE_MS), Err(Reject::Stale));
        assert_eq!(fresh(1_000_001 + MAX_AGE_MS, 1_000_000), Err(Reject::Stale));
    }
}
