//! JWT authentication and room permissions.
//!
//! The accepted algorithm is pinned by the key the server was given: an HS256 secret,
//! or an ES256 / RS256 public key. A token signed with anything else (including
//! `alg: none`, or HS256 keyed with the public key) fails to verify. Claims:
//!
//! ```json
//! {"sub": "alice", "exp": 1764303600,
//!  "rooms": {"read": ["pr:doc-*"], "write": ["pr:doc-42"]}, "admin": false}
//! ```
//!
//! Room patterns are globs where `*` matches any run of characters (`:` included).

use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use rollcall_engine::UnixMs;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::protocol::{ErrorCode, Rejection};

/// Longest `sub` accepted (it becomes entries' `userId`).
pub const MAX_SUBJECT_BYTES: usize = 128;

/// Verifies tokens with one key and one algorithm.
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
    algorithm: Algorithm,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Room patterns of a token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomClaims {
    /// Rooms the holder may subscribe to (and read over REST).
    #[serde(default)]
    pub read: Vec<String>,
    /// Rooms the holder may heartbeat into and leave.
    #[serde(default)]
    pub write: Vec<String>,
}

/// The claims Rollcall reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user; becomes the `userId` of the holder's entries.
    pub sub: String,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// Room permissions; none means no room.
    #[serde(default)]
    pub rooms: RoomClaims,
    /// Allows the REST API's writes and listing.
    #[serde(default)]
    pub admin: bool,
}

/// What a verified token allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The user.
    pub user: Arc<str>,
    /// When the token stops being valid.
    pub expires_at: UnixMs,
    read: Vec<String>,
    write: Vec<String>,
    /// Admin rights.
    pub admin: bool,
}

impl Grant {
    /// Whether the holder may subscribe to `room`.
    pub fn can_read(&self, room: &str) -> bool {
        self.admin || self.read.iter().any(|p| glob(p, room))
    }

    /// Whether the holder may heartbeat into or leave `room`.
    pub fn can_write(&self, room: &str) -> bool {
        self.admin || self.write.iter().any(|p| glob(p, room))
    }
}

/// Matches `text` against `pattern`, where `*` stands for any run of characters.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Position of the last `*` and of the text when it was seen, to backtrack to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((star_p, star_t)) = star {
            pi = star_p + 1;
            ti = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

impl Auth {
    /// HS256 with the secret in `path` (surrounding whitespace is ignored).
    pub fn from_secret_file(path: &Path) -> Result<Auth> {
        let secret = read_secret_file(path, "auth secret")?;
        Ok(Auth::with(
            DecodingKey::from_secret(&secret),
            Algorithm::HS256,
        ))
    }

    /// ES256 or RS256, whichever the PEM public key in `path` is for.
    pub fn from_public_key_file(path: &Path) -> Result<Auth> {
        let pem = std::fs::read(path).map_err(|e| {
            Error::Config(format!(
                "cannot read the auth public key {}: {e}",
                path.display()
            ))
        })?;
        if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
            return Ok(Auth::with(key, Algorithm::ES256));
        }
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            return Ok(Auth::with(key, Algorithm::RS256));
        }
        Err(Error::Config(format!(
            "{} is not a PEM EC (P-256) or RSA public key",
            path.display()
        )))
    }

    fn with(key: DecodingKey, algorithm: Algorithm) -> Auth {
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.set_required_spec_claims(&["exp", "sub"]);
        // `nbf` is optional; when present it is checked like `exp`, without leeway.
        validation.validate_nbf = true;
        validation.leeway = 0;
        validation.validate_aud = false;
        Auth {
            key,
            validation,
            algorithm,
        }
    }

    /// The algorithm tokens must use.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Verifies a token; the rejection's code tells an expired token (or one not valid
    /// yet) from a bad one.
    pub(crate) fn verify(&self, token: &str) -> Result<Grant, Rejection> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => {
                    Rejection::new(ErrorCode::TokenExpired, "the token has expired")
                }
                ErrorKind::ImmatureSignature => Rejection::new(
                    ErrorCode::TokenNotYetValid,
                    "the token is not valid yet (its nbf is in the future)",
                ),
                _ => Rejection::new(
                    ErrorCode::InvalidToken,
                    format!("the token is not valid: {e}"),
                ),
            },
        )?;
        // RFC 7515 §4.1.11: a header's `crit` names extensions the verifier must
        // understand, or refuse the token. Rollcall understands none.
        if data.header.crit.is_some() {
            return Err(Rejection::new(
                ErrorCode::InvalidToken,
                "the token header has crit: no JWS extensions are supported",
            ));
        }
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > MAX_SUBJECT_BYTES {
            return Err(Rejection::new(
                ErrorCode::InvalidToken,
                format!("sub must be 1 to {MAX_SUBJECT_BYTES} bytes"),
            ));
        }
        Ok(Grant {
            user: claims.sub.into(),
            expires_at: UnixMs(claims.exp.saturating_mul(1_000)),
            read: claims.rooms.read,
            write: claims.rooms.write,
            admin: claims.admin,
        })
    }
}

/// Signs `claims` for local testing (`rollcall token`).
pub fn mint(
    claims: &Claims,
    secret: Option<&[u8]>,
    private_key_pem: Option<&[u8]>,
) -> Result<String> {
    let (header, key) = match (secret, private_key_pem) {
        (Some(secret), None) => (
            Header::new(Algorithm::HS256),
            EncodingKey::from_secret(secret.trim_ascii()),
        ),
        (None, Some(pem)) => {
            let (algorithm, key) = signing_key(pem)?;
            (Header::new(algorithm), key)
        }
        _ => {
            return Err(Error::Config(
                "give exactly one of a secret or a private key".into(),
            ));
        }
    };
    jsonwebtoken::encode(&header, claims, &key)
        .map_err(|e| Error::Config(format!("cannot sign: {e}")))
}

/// What `--private-key` takes, for error messages.
const PRIVATE_KEY_FORMATS: &str = "use an unencrypted PEM private key: a P-256 EC key \
     (`BEGIN EC PRIVATE KEY` or `BEGIN PRIVATE KEY`) for ES256, or an RSA key \
     (`BEGIN RSA PRIVATE KEY` or `BEGIN PRIVATE KEY`) for RS256";

/// The algorithm and signing key of a PEM private key: ES256 for a P-256 EC key in
/// SEC1 (`EC PRIVATE KEY`, as `openssl ecparam -genkey` writes it) or PKCS#8 form,
/// RS256 for an RSA key in PKCS#1 or PKCS#8 form. Other blocks in the file (such as
/// `EC PARAMETERS`) are skipped.
fn signing_key(pem: &[u8]) -> Result<(Algorithm, EncodingKey)> {
    use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};

    let unsupported = |what: &str| Error::Config(format!("{what}; {PRIVATE_KEY_FORMATS}"));
    let not_p256 = || unsupported("an EC key that is not on the P-256 curve (ES256 needs P-256)");
    let blocks = std::str::from_utf8(pem).map(pem_blocks).unwrap_or_default();
    for (label, block) in &blocks {
        match *label {
            "EC PRIVATE KEY" => {
                let key = p256::SecretKey::from_sec1_pem(block).map_err(|_| not_p256())?;
                let der = key
                    .to_pkcs8_der()
                    .map_err(|e| Error::Config(format!("cannot convert the EC key: {e}")))?;
                return Ok((Algorithm::ES256, EncodingKey::from_ec_der(der.as_bytes())));
            }
            "PRIVATE KEY" => {
                if p256::SecretKey::from_pkcs8_pem(block).is_ok() {
                    if let Ok(key) = EncodingKey::from_ec_pem(block.as_bytes()) {
                        return Ok((Algorithm::ES256, key));
                    }
                }
                if let Ok(key) = EncodingKey::from_rsa_pem(block.as_bytes()) {
                    return Ok((Algorithm::RS256, key));
                }
                if EncodingKey::from_ec_pem(block.as_bytes()).is_ok() {
                    return Err(not_p256());
                }
                if EncodingKey::from_ed_pem(block.as_bytes()).is_ok() {
                    return Err(unsupported("an Ed25519 key (EdDSA is not supported)"));
                }
                return Err(unsupported("a PKCS#8 private key of an unsupported type"));
            }
            "RSA PRIVATE KEY" => {
                let key = EncodingKey::from_rsa_pem(block.as_bytes())
                    .map_err(|e| unsupported(&format!("an unreadable RSA private key ({e})")))?;
                return Ok((Algorithm::RS256, key));
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err(unsupported(
                    "an encrypted private key (decrypt it first, e.g. `openssl pkey -in KEY -out plain.pem`)",
                ));
            }
            "OPENSSH PRIVATE KEY" => {
                return Err(unsupported(
                    "an OpenSSH private key (export it as PEM, e.g. `ssh-keygen -p -m PKCS8 -f KEY`)",
                ));
            }
            _ => {}
        }
    }
    if blocks.is_empty() {
        return Err(unsupported(
            "not a PEM file (no `-----BEGIN ...-----` line)",
        ));
    }
    let labels: Vec<&str> = blocks.iter().map(|(label, _)| *label).collect();
    let found = labels.join(", ");
    if labels
        .iter()
        .any(|l| l.contains("PUBLIC KEY") || l.contains("CERTIFICATE"))
    {
        Err(unsupported(&format!(
            "a public key or certificate, not a private key (found {found})"
        )))
    } else {
        Err(unsupported(&format!(
            "no private key in it (found {found})"
        )))
    }
}

/// The PEM blocks of `text`: each label (`EC PRIVATE KEY`) with the whole block, from
/// its `BEGIN` line to its `END` line.
fn pem_blocks(text: &str) -> Vec<(&str, &str)> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let Some(label_end) = after.find("-----") else {
            break;
        };
        let label = &after[..label_end];
        let end_line = format!("-----END {label}-----");
        let Some(end) = rest[start..].find(&end_line) else {
            break;
        };
        let block_end = start + end + end_line.len();
        blocks.push((label, &rest[start..block_end]));
        rest = &rest[block_end..];
    }
    blocks
}

/// Reads a secret of at least 32 bytes from `path` (surrounding whitespace is ignored,
/// so a base64 or hex line works); `what` names it in errors.
pub fn read_secret_file(path: &std::path::Path, what: &str) -> crate::Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| {
        crate::Error::Config(format!("cannot read the {what} {}: {e}", path.display()))
    })?;
    let secret = bytes.trim_ascii();
    if secret.len() < 32 {
        return Err(crate::Error::Config(format!(
            "the {what} in {} is {} bytes; use at least 32 random bytes",
            path.display(),
            secret.len()
        )));
    }
    Ok(secret.to_vec())
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";

    fn hs256() -> Auth {
        Auth::with(DecodingKey::from_secret(SECRET), Algorithm::HS256)
    }

    fn claims(exp_in: i64) -> Claims {
        let now = UnixMs::now().0 as i64 / 1_000;
        Claims {
            sub: "alice".into(),
            exp: (now + exp_in) as u64,
            rooms: RoomClaims {
                read: vec!["pr:doc-*".into()],
                write: vec!["pr:doc-42".into()],
            },
            admin: false,
        }
    }

    #[test]
    fn globs() {
        assert!(glob("pr:doc-*", "pr:doc-42"));
        assert!(glob("pr:doc-*", "pr:doc-"));
        assert!(!glob("pr:doc-*", "pr:do"));
        assert!(glob("*", "anything:at:all"));
        assert!(glob("a*b*c", "a-x-b-y-c"));
        assert!(!glob("a*b*c", "a-x-b-y-d"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(glob("*:cursors", "team:42:cursors"));
        assert!(!glob("", "x"));
    }

    #[test]
    fn valid_token_grants_its_rooms() {
        let token = mint(&claims(60), Some(SECRET), None).unwrap();
        let grant = hs256().verify(&token).unwrap();
        assert_eq!(&*grant.user, "alice");
        assert!(grant.can_read("pr:doc-7"));
        assert!(!grant.can_read("pr:other"));
        assert!(grant.can_write("pr:doc-42"));
        assert!(!grant.can_write("pr:doc-7"));
    }

    #[test]
    fn expired_forged_and_none_are_rejected_with_their_codes() {
        let expired = mint(&claims(-10), Some(SECRET), None).unwrap();
        assert_eq!(
            hs256().verify(&expired).unwrap_err().code,
            ErrorCode::TokenExpired
        );

        let forged = mint(&claims(60), Some(b"another-secret-another-secret-xx"), None).unwrap();
        assert_eq!(
            hs256().verify(&forged).unwrap_err().code,
            ErrorCode::InvalidToken
        );

        // alg: none with no signature.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(60)).unwrap());
        for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
            assert_eq!(
                hs256().verify(&token).unwrap_err().code,
                ErrorCode::InvalidToken
            );
        }
        assert_eq!(
            hs256().verify("garbage").unwrap_err().code,
            ErrorCode::InvalidToken
        );
    }

    #[test]
    fn oversized_subject_is_refused() {
        let mut long = claims(60);
        long.sub = "x".repeat(129);
        let token = mint(&long, Some(SECRET), None).unwrap();
        assert_eq!(
            hs256().verify(&token).unwrap_err().code,
            ErrorCode::InvalidToken
        );
    }

    #[test]
    fn nbf_is_honoured_and_crit_is_refused() {
        let now = UnixMs::now().0 / 1_000;
        let key = EncodingKey::from_secret(SECRET);
        let sign = |header: &Header, nbf: u64| {
            let claims = serde_json::json!({"sub": "alice", "exp": now + 60, "nbf": nbf});
            jsonwebtoken::encode(header, &claims, &key).unwrap()
        };
        let plain = Header::new(Algorithm::HS256);
        assert!(hs256().verify(&sign(&plain, now)).is_ok());
        assert_eq!(
            hs256().verify(&sign(&plain, now + 30)).unwrap_err().code,
            ErrorCode::TokenNotYetValid
        );
        let mut critical = Header::new(Algorithm::HS256);
        critical.crit = Some(vec!["exp".into()]);
        let refused = hs256().verify(&sign(&critical, now)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::InvalidToken);
        assert!(refused.message.contains("crit"), "{}", refused.message);
    }

    #[test]
    fn private_keys_in_sec1_and_pkcs8_form_sign() {
        // One P-256 key in both forms (`openssl ec` converts one into the other).
        let sec1 = "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n\
            -----BEGIN EC PRIVATE KEY-----\n\
            MHcCAQEEIGBeiGbCOp9qhO43vQu+jZO62nY3x0BOxAPz/clc2OgNoAoGCCqGSM49\n\
            AwEHoUQDQgAEB0QHDkOPpv9Wrfz4HFiULltYLUFYCnaB2T598176qufOkLU7kwB4\n\
            nU5YI/FXNIQcauNCvEoAn7HJs5+r1nEuqg==\n\
            -----END EC PRIVATE KEY-----\n";
        let pkcs8 = "-----BEGIN PRIVATE KEY-----\n\
            MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgYF6IZsI6n2qE7je9\n\
            C76Nk7radjfHQE7EA/P9yVzY6A2hRANCAAQHRAcOQ4+m/1at/PgcWJQuW1gtQVgK\n\
            doHZPn3zXvqq586QtTuTAHidTlgj8Vc0hBxq40K8SgCfscmzn6vWcS6q\n\
            -----END PRIVATE KEY-----\n";
        let public = "-----BEGIN PUBLIC KEY-----\n\
            MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEB0QHDkOPpv9Wrfz4HFiULltYLUFY\n\
            CnaB2T598176qufOkLU7kwB4nU5YI/FXNIQcauNCvEoAn7HJs5+r1nEuqg==\n\
            -----END PUBLIC KEY-----\n";
        let verifier = Auth::with(
            DecodingKey::from_ec_pem(public.as_bytes()).unwrap(),
            Algorithm::ES256,
        );
        for pem in [sec1, pkcs8] {
            let token = mint(&claims(60), None, Some(pem.as_bytes())).unwrap();
            assert_eq!(&*verifier.verify(&token).unwrap().user, "alice");
        }
        for junk in ["", "not a key", public] {
            let Err(Error::Config(message)) = mint(&claims(60), None, Some(junk.as_bytes())) else {
                panic!("{junk:?} was accepted");
            };
            assert!(message.contains("P-256 EC key"), "{message}");
        }
    }

    #[test]
    fn admin_can_do_everything() {
        let mut admin = claims(60);
        admin.admin = true;
        let grant = hs256()
            .verify(&mint(&admin, Some(SECRET), None).unwrap())
            .unwrap();
        assert!(grant.can_read("any") && grant.can_write("any"));
    }
}
