//! Client ids and resume tokens.
//!
//! Ids are handed out from blocks reserved in the journal's metadata, so an id is never
//! reused, even across restarts. An id a client chose for itself (over REST) moves the
//! counter past it, so it is never handed out either. A resume token is the id plus an HMAC over the id and
//! the user it was issued to, keyed by a secret that is also kept in the metadata: it
//! stays valid across restarts and cannot be forged or moved to another user.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rollcall_engine::{ClientId, Journal};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Metadata key of the resume secret, written (and flushed) on a data directory's
/// first start: a directory with files but without it has lost its content.
pub const SECRET_KEY: &str = "resume_secret";
const NEXT_ID_KEY: &str = "next_client_id";
/// Ids reserved per metadata write.
const BLOCK: u64 = 4_096;
/// Bits of an id below the node id (cluster mode puts the node id above them).
pub const NODE_SHIFT: u32 = 40;
const TAG_BYTES: usize = 16;
/// A client may choose an id of this node's space only below this counter: choosing
/// moves the allocator past the id, and one request must not use up the id space.
pub const MAX_CHOSEN_COUNTER: u64 = 1 << 32;

type HmacSha256 = Hmac<Sha256>;

/// Allocates client ids and signs and checks resume tokens.
pub struct Identity {
    secret: [u8; 32],
    node: u64,
    next: u64,
    ceiling: u64,
}

impl Identity {
    /// Loads (or creates) the secret and the id counter of node `node` (0 when alone).
    /// A `shared` secret (every node of a cluster has the same) signs tokens instead
    /// of the directory's own, which is still created: it marks the directory as used.
    pub fn load(journal: &Journal, node: u16, shared: Option<&[u8]>) -> Result<Identity> {
        let own = match journal.meta_get(SECRET_KEY)? {
            Some(bytes) if bytes.len() == 32 => {
                let mut secret = [0; 32];
                secret.copy_from_slice(&bytes);
                secret
            }
            _ => {
                let mut secret = [0; 32];
                getrandom::fill(&mut secret).map_err(|e| Error::Random(e.to_string()))?;
                journal.meta_put(SECRET_KEY, &secret)?;
                secret
            }
        };
        let secret = shared.map_or(own, |shared| {
            let mut secret = [0; 32];
            secret.copy_from_slice(&Sha256::digest(shared));
            secret
        });
        let next = match journal.meta_get(NEXT_ID_KEY)? {
            Some(bytes) if bytes.len() == 8 => {
                u64::from_be_bytes(bytes.try_into().unwrap_or([0; 8])).max(1)
            }
            _ => 1,
        };
        Ok(Identity {
            secret,
            node: u64::from(node) << NODE_SHIFT,
            next,
            // Nothing reserved yet: the first allocation writes a block.
            ceiling: next,
        })
    }

    /// Moves node `node`'s persisted id counter above `highest`, an id found in the
    /// log: writes that reserved a block of ids may have been lost (and reported)
    /// while entries with ids from that block survived, and those ids must not be
    /// handed out again. Returns whether the counter moved. Call before [`Identity::load`].
    pub fn raise_counter(journal: &Journal, node: u16, highest: ClientId) -> Result<bool> {
        if highest.0 >> NODE_SHIFT != u64::from(node) {
            return Ok(false);
        }
        let above = (highest.0 & ((1 << NODE_SHIFT) - 1)) + 1;
        let stored = match journal.meta_get(NEXT_ID_KEY)? {
            Some(bytes) if bytes.len() == 8 => {
                u64::from_be_bytes(bytes.try_into().unwrap_or([0; 8]))
            }
            _ => 0,
        };
        if stored >= above {
            return Ok(false);
        }
        journal.meta_put(NEXT_ID_KEY, &above.to_be_bytes())?;
        Ok(true)
    }

    /// A fresh client id, never handed out before.
    pub fn allocate(&mut self, journal: &Journal) -> Result<ClientId> {
        if self.next >= self.ceiling {
            let ceiling = self.next + BLOCK;
            journal.meta_put(NEXT_ID_KEY, &ceiling.to_be_bytes())?;
            self.ceiling = ceiling;
        }
        let counter = self.next;
        self.next += 1;
        ClientId::new(self.node | counter).ok_or(Error::IdsExhausted)
    }

    /// Makes sure `client`, chosen by a client rather than allocated, is never
    /// allocated: an id of this node's space at or past the counter moves the counter
    /// past it (persisted before this returns, as allocation is). Ids already issued
    /// and ids of other nodes' spaces (which this node never allocates) need nothing.
    /// Returns false, reserving nothing, for an id of this node's space at or past
    /// [`MAX_CHOSEN_COUNTER`] that was not issued.
    pub fn reserve(&mut self, client: ClientId, journal: &Journal) -> Result<bool> {
        if client.0 >> NODE_SHIFT != self.node >> NODE_SHIFT {
            return Ok(true);
        }
        let counter = client.0 & ((1 << NODE_SHIFT) - 1);
        if counter < self.next {
            return Ok(true);
        }
        if counter >= MAX_CHOSEN_COUNTER {
            return Ok(false);
        }
        let next = counter + 1;
        if next > self.ceiling {
            let ceiling = next + BLOCK;
            journal.meta_put(NEXT_ID_KEY, &ceiling.to_be_bytes())?;
            self.ceiling = ceiling;
        }
        self.next = next;
        Ok(true)
    }

    fn tag(&self, client: ClientId, user: Option<&str>) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key size");
        mac.update(b"rollcall-resume-v1\0");
        mac.update(&client.0.to_be_bytes());
        match user {
            Some(user) => {
                mac.update(b"\x01");
                mac.update(user.as_bytes());
            }
            None => mac.update(b"\x00"),
        }
        mac
    }

    /// The resume token for `client`, bound to `user`.
    pub fn token(&self, client: ClientId, user: Option<&str>) -> String {
        let tag = self.tag(client, user).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(client.0.to_be_bytes()),
            URL_SAFE_NO_PAD.encode(&tag[..TAG_BYTES])
        )
    }

    /// The client id of a token issued to `user`; `None` if it is malformed, forged
    /// or was issued to someone else.
    pub fn verify(&self, token: &str, user: Option<&str>) -> Option<ClientId> {
        let (id, tag) = token.split_once('.')?;
        if id.len() > 16 || tag.len() > 32 {
            return None;
        }
        let id: [u8; 8] = URL_SAFE_NO_PAD.decode(id).ok()?.try_into().ok()?;
        let client = ClientId::new(u64::from_be_bytes(id))?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if tag.len() != TAG_BYTES {
            return None;
        }
        self.tag(client, user)
            .verify_truncated_left(&tag)
            .ok()
            .map(|()| client)
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("node", &(self.node >> NODE_SHIFT))
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use rollcall_engine::{Config, Engine};

    use super::*;

    #[test]
    fn the_counter_moves_past_ids_found_in_the_log_of_its_own_node_only() {
        let engine = Engine::memory();
        // Node 2's space: an id of node 3 or below the counter changes nothing.
        let node = 2;
        let base = u64::from(node) << NODE_SHIFT;
        assert!(Identity::raise_counter(engine.journal(), node, ClientId(base + 40)).unwrap());
        assert!(!Identity::raise_counter(engine.journal(), node, ClientId(base + 7)).unwrap());
        assert!(
            !Identity::raise_counter(engine.journal(), node, ClientId((3 << NODE_SHIFT) + 90))
                .unwrap()
        );
        let mut identity = Identity::load(engine.journal(), node, None).unwrap();
        assert_eq!(
            identity.allocate(engine.journal()).unwrap(),
            ClientId(base + 41)
        );
        // A counter already past the id stays where it is.
        let engine = Engine::memory();
        let mut identity = Identity::load(engine.journal(), 0, None).unwrap();
        let first = identity.allocate(engine.journal()).unwrap();
        assert!(!Identity::raise_counter(engine.journal(), 0, first).unwrap());
    }

    #[test]
    fn tokens_verify_only_for_their_user() {
        let engine = Engine::memory();
        let mut identity = Identity::load(engine.journal(), 0, None).unwrap();
        let a = identity.allocate(engine.journal()).unwrap();
        let b = identity.allocate(engine.journal()).unwrap();
        assert_ne!(a, b);
        let token = identity.token(a, Some("alice"));
        assert_eq!(identity.verify(&token, Some("alice")), Some(a));
        assert_eq!(identity.verify(&token, Some("bob")), None);
        assert_eq!(identity.verify(&token, None), None);
        let anonymous = identity.token(b, None);
        assert_eq!(identity.verify(&anonymous, None), Some(b));
        // Forging: another id with a's tag.
        let (_, tag) = token.split_once('.').unwrap();
        let forged = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(b.0.to_be_bytes()));
        assert_eq!(identity.verify(&forged, Some("alice")), None);
        for junk in [
            "",
            ".",
            "abc",
            "AAAAAAAAAAE.",
            "AAAAAAAAAAE.xyz",
            &"A".repeat(5000),
        ] {
            assert_eq!(identity.verify(junk, None), None, "{junk:?}");
        }
    }

    #[test]
    fn ids_and_secret_survive_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, _) = Engine::open(Config::new(dir.path())).unwrap();
        let mut identity = Identity::load(engine.journal(), 0, None).unwrap();
        let first = identity.allocate(engine.journal()).unwrap();
        let token = identity.token(first, None);
        engine.close().unwrap();

        let (engine, _) = Engine::open(Config::new(dir.path())).unwrap();
        let mut identity = Identity::load(engine.journal(), 0, None).unwrap();
        assert_eq!(identity.verify(&token, None), Some(first));
        let second = identity.allocate(engine.journal()).unwrap();
        assert!(
            second > first,
            "ids are never reused: {second} after {first}"
        );
        engine.close().unwrap();
    }

    #[test]
    fn chosen_ids_are_never_allocated_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, _) = Engine::open(Config::new(dir.path())).unwrap();
        let mut identity = Identity::load(engine.journal(), 0, None).unwrap();
        let first = identity.allocate(engine.journal()).unwrap();
        for chosen in [first.0, 2, 3, 10_000] {
            assert!(
                identity
                    .reserve(ClientId(chosen), engine.journal())
                    .unwrap()
            );
        }
        let next = identity.allocate(engine.journal()).unwrap();
        assert_eq!(next.0, 10_001);
        // Past what a client may choose, and outside this node's space.
        assert!(
            !identity
                .reserve(ClientId(MAX_CHOSEN_COUNTER), engine.journal())
                .unwrap()
        );
        assert!(
            identity
                .reserve(ClientId((5 << NODE_SHIFT) + 1_000_000), engine.journal())
                .unwrap()
        );
        assert_eq!(identity.allocate(engine.journal()).unwrap().0, 10_002);
        engine.close().unwrap();

        // The reservation was persisted before `reserve` returned.
        let (engine, _) = Engine::open(Config::new(dir.path())).unwrap();
        let mut identity = Identity::load(engine.journal(), 0, None).unwrap();
        assert!(identity.allocate(engine.journal()).unwrap().0 > 10_000);
        engine.close().unwrap();
    }

    #[test]
    fn node_id_goes_in_the_high_bits() {
        let engine = Engine::memory();
        let mut identity = Identity::load(engine.journal(), 3, None).unwrap();
        let id = identity.allocate(engine.journal()).unwrap();
        assert_eq!(id.0 >> NODE_SHIFT, 3);
        assert!(id <= ClientId::MAX);
    }

    #[test]
    fn a_shared_secret_lets_another_node_verify() {
        let shared = b"a shared secret of at least thirty-two bytes";
        let one = Engine::memory();
        let two = Engine::memory();
        let mut first = Identity::load(one.journal(), 1, Some(shared)).unwrap();
        let second = Identity::load(two.journal(), 2, Some(shared)).unwrap();
        let alone = Identity::load(Engine::memory().journal(), 2, None).unwrap();
        let id = first.allocate(one.journal()).unwrap();
        let token = first.token(id, Some("ana"));
        assert_eq!(second.verify(&token, Some("ana")), Some(id));
        assert_eq!(alone.verify(&token, Some("ana")), None);
    }
}
