//! A real `nats-server` for the cluster tests (shared by `cluster.rs` and
//! `cluster_auth.rs`).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// A `nats-server` on a loopback port, stopped on drop.
pub struct Nats {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// Extra arguments (`--user`, `--auth`, `-c FILE`, …).
    args: Vec<String>,
}

/// `nats-server` from the PATH, or where Debian puts it.
fn nats_binary() -> Option<&'static str> {
    ["nats-server", "/usr/sbin/nats-server"]
        .into_iter()
        .find(|binary| {
            Command::new(binary)
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

impl Nats {
    /// `None` when nats-server is not installed, said loudly (a failure under CI).
    pub fn start() -> Option<Nats> {
        Nats::start_with(&[])
    }

    /// [`Nats::start`] with extra arguments; `{port}` in them is replaced by the port.
    pub fn start_with(args: &[&str]) -> Option<Nats> {
        if !rollcall_tests::require::that(
            nats_binary().is_some(),
            "nats-server is not installed (apt-get install -y nats-server)",
        ) {
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let args = args
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let mut nats = Nats {
            child: None,
            port,
            args,
        };
        nats.restart();
        Some(nats)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        let child = Command::new(nats_binary().expect("nats-server"))
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            // A configuration it refuses (say, a JWT with a bad signature) ends it at once.
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "nats-server exited ({status}): it refused its arguments or configuration {:?}",
                    self.args
                );
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// NATS operator mode (decentralised JWT auth) without `nsc`: an operator, the
/// accounts it signs, and users' credentials files, all made here.
///
/// A NATS JWT (`nats-io/jwt` v2) is `base64url(header).base64url(claims).base64url(sig)`,
/// header `{"typ":"JWT","alg":"ed25519-nkey"}`, the ed25519 signature by the issuer's
/// nkey over the first two parts; `jti` is the unpadded base32 of the SHA-512/256 of
/// the standard claims (`iat`, `iss`, `name`, `sub`) without `jti`.
#[allow(dead_code, reason = "used by cluster_auth.rs only")]
pub mod operator {
    use std::path::{Path, PathBuf};

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use nkeys::KeyPair;
    use serde_json::{Value, json};
    use sha2::{Digest, Sha512_256};

    /// "Unlimited" in NATS limits.
    const NO_LIMIT: i64 = -1;

    /// A JWT for `subject`, named `name`, signed by `issuer`, with `nats` as its
    /// `nats` claim.
    fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_secs();
        let standard = json!({
            "iat": iat,
            "iss": issuer.public_key(),
            "name": name,
            "sub": subject,
        });
        let jti = data_encoding::BASE32_NOPAD.encode(&Sha512_256::digest(
            serde_json::to_vec(&standard).expect("JSON"),
        ));
        let mut claims = standard;
        claims["jti"] = json!(jti);
        claims["nats"] = nats;
        let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
        let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("JSON"));
        let signed = format!("{header}.{claims}");
        let signature = issuer.sign(signed.as_bytes()).expect("sign");
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// An account: its key and its JWT (signed by the operator), unlimited.
    pub struct Account {
        /// The account's nkey.
        pub key: KeyPair,
        /// Its JWT.
        pub jwt: String,
    }

    impl Account {
        /// A user of this account, unrestricted, as a credentials file in `dir`.
        pub fn user_creds(&self, dir: &Path, name: &str) -> PathBuf {
            user_creds(&self.key, dir, name)
        }
    }

    /// A user signed by `account` (any account key, trusted or not), written as a
    /// credentials file in the layout `nsc` writes.
    pub fn user_creds(account: &KeyPair, dir: &Path, name: &str) -> PathBuf {
        let user = KeyPair::new_user();
        let jwt = jwt(
            account,
            &user.public_key(),
            name,
            json!({
                "pub": {},
                "sub": {},
                "subs": NO_LIMIT,
                "data": NO_LIMIT,
                "payload": NO_LIMIT,
                "type": "user",
                "version": 2,
            }),
        );
        let seed = user.seed().expect("a user seed");
        let path = dir.join(format!("{name}.creds"));
        std::fs::write(
            &path,
            format!(
                "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
                 ************************* IMPORTANT *************************\n\
                 NKEY Seed printed below can be used to sign and prove identity.\n\
                 NKEYs are sensitive and should be treated as secrets.\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
                 *************************************************************\n"
            ),
        )
        .expect("write the credentials file");
        path
    }

    /// An operator and the accounts it trusts.
    pub struct Operator {
        /// The operator's self-signed JWT.
        pub jwt: String,
        /// The system account (nats-server wants one in operator mode).
        pub system: Account,
        /// An account for the nodes.
        pub app: Account,
    }

    impl Operator {
        /// A fresh operator with a system account and an application account.
        pub fn new() -> Operator {
            let key = KeyPair::new_operator();
            let jwt = jwt(
                &key,
                &key.public_key(),
                "rollcall-test-operator",
                json!({"type": "operator", "version": 2}),
            );
            let system = Operator::account(&key, "SYS");
            let app = Operator::account(&key, "APP");
            Operator { jwt, system, app }
        }

        fn account(operator: &KeyPair, name: &str) -> Account {
            let key = KeyPair::new_account();
            let jwt = jwt(
                operator,
                &key.public_key(),
                name,
                json!({
                    "limits": {
                        "subs": NO_LIMIT,
                        "data": NO_LIMIT,
                        "payload": NO_LIMIT,
                        "imports": NO_LIMIT,
                        "exports": NO_LIMIT,
                        "wildcards": true,
                        "conn": NO_LIMIT,
                        "leaf": NO_LIMIT,
                    },
                    "default_permissions": {"pub": {}, "sub": {}},
                    "type": "account",
                    "version": 2,
                }),
            );
            Account { key, jwt }
        }

        /// A nats-server configuration for this operator: a memory resolver preloaded
        /// with its accounts.
        pub fn server_config(&self) -> String {
            format!(
                "operator: \"{}\"\nsystem_account: \"{}\"\nresolver: MEMORY\n\
                 resolver_preload: {{\n  {}: \"{}\"\n  {}: \"{}\"\n}}\n",
                self.jwt,
                self.system.key.public_key(),
                self.system.key.public_key(),
                self.system.jwt,
                self.app.key.public_key(),
                self.app.jwt,
            )
        }
    }
}
