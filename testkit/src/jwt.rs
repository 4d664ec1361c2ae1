//! Tokens for the auth tests: the HS256 secret the test servers read, and signing.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

/// The HS256 secret of the test servers (at least 32 bytes, as the server demands).
pub const SECRET: &str = "rollcall-test-secret-0123456789abcdefghijklmnop";

/// Seconds since the Unix epoch (for `exp`, `nbf`, `iat`).
pub fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs() as i64
}

/// Milliseconds since the Unix epoch (what the protocol's times are in).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_millis() as u64
}

/// `claims` signed with `algorithm` and `key`.
pub fn sign(claims: &Value, algorithm: Algorithm, key: &EncodingKey) -> String {
    sign_with(&Header::new(algorithm), claims, key)
}

/// `claims` signed with this header and `key`.
pub fn sign_with(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).expect("sign")
}

/// `claims` signed with HS256 and [`SECRET`].
pub fn hs256(claims: &Value) -> String {
    hs256_with(&Header::new(Algorithm::HS256), claims)
}

/// `claims` signed with [`SECRET`] under this header.
pub fn hs256_with(header: &Header, claims: &Value) -> String {
    sign_with(header, claims, &EncodingKey::from_secret(SECRET.as_bytes()))
}

/// A temporary directory holding `secret` (the `--auth-secret-file` of a server).
#[derive(Debug)]
pub struct SecretFile {
    /// The directory; removed on drop.
    pub dir: tempfile::TempDir,
    /// The file.
    pub path: PathBuf,
}

impl SecretFile {
    /// A file holding [`SECRET`].
    pub fn new() -> SecretFile {
        SecretFile::holding(SECRET)
    }

    /// A file holding `secret`.
    pub fn holding(secret: &str) -> SecretFile {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, secret).expect("write the secret");
        SecretFile { dir, path }
    }
}

impl Default for SecretFile {
    fn default() -> SecretFile {
        SecretFile::new()
    }
}
