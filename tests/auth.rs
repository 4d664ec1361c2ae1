//! Authentication and authorization, end to end against real servers (in-process; a
//! process of their own where a test reads `/metrics`) and the real `rollcall token`
//! binary: every kind of
//! bad token is refused with its own code, rooms outside a token are `forbidden`
//! without leaking anything, resume tokens cannot take another client or user, tokens
//! expire on open connections (4004) unless renewed with `auth`, the REST API needs
//! admin rights, `rollcall token` mints tokens the server accepts, and the origin
//! allow-list holds. Each test prints its figures (`cargo test --test auth --
//! --nocapture`); `docs/security.md` explains the model.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey};
use rollcall_tests::jwt::{SECRET, SecretFile, hs256, now_s, sign};
use rollcall_tests::keys::{EC_PRIVATE, EC_PUBLIC, OTHER_EC_PRIVATE, RSA_PRIVATE, RSA_PUBLIC};
use rollcall_tests::{Launch, Raw, RawEvent, Server, binary, http, http_with, wire};
use serde_json::{Value, json};

/// A server with auth on, and the temporary directory holding its key file.
struct AuthServer {
    server: Server,
    dir: tempfile::TempDir,
}

impl AuthServer {
    /// HS256 with [`SECRET`] (followed by a newline, as editors write it), in-process.
    fn hs256(extra: &[&str]) -> AuthServer {
        AuthServer::hs256_on(extra, Launch::in_process)
    }

    /// HS256 with [`SECRET`], as a process of its own (for tests that read
    /// `/metrics`, which are per process).
    fn hs256_process(extra: &[&str]) -> AuthServer {
        AuthServer::hs256_on(extra, Launch::start)
    }

    fn hs256_on(extra: &[&str], start: fn(Launch) -> Server) -> AuthServer {
        let secret = SecretFile::holding(&format!("{SECRET}\n"));
        let launch = Server::launch()
            .arg("--auth-secret-file")
            .arg(secret.path.display().to_string())
            .args(extra.iter().copied());
        AuthServer {
            server: start(launch),
            dir: secret.dir,
        }
    }

    /// ES256 or RS256 with this public key, in-process.
    fn public_key(pem: &str) -> AuthServer {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pub");
        std::fs::write(&key, pem).unwrap();
        let server = Server::launch()
            .arg("--auth-public-key")
            .arg(key.display().to_string())
            .in_process();
        AuthServer { server, dir }
    }

    fn url(&self) -> String {
        self.server.ws_url()
    }

    fn secret_file(&self) -> PathBuf {
        self.dir.path().join("secret")
    }

    /// An HTTP request with `Authorization: Bearer token` (none when `token` is None).
    fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| vec![("Authorization", b)])
            .unwrap_or_default();
        let (status, body) =
            http_with(self.server.addr, method, path, &headers, body).expect("HTTP request");
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&body).unwrap_or(Value::String(body))
        };
        (status, value)
    }
}

/// Claims for `sub` with these room patterns, expiring `exp_in` seconds from now.
fn claims(sub: &str, read: &[&str], write: &[&str], exp_in: i64) -> Value {
    json!({"sub": sub, "exp": now_s() + exp_in, "rooms": {"read": read, "write": write}})
}

fn b64(bytes: &[u8]) -> String {
    base64_url::encode(bytes)
}

/// Minimal base64url without padding (the tests must not trust the server's own code).
mod base64_url {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}

/// `alg: none` tokens: unsigned, with and without the trailing dot.
fn alg_none(claims: &Value) -> [String; 2] {
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64(claims.to_string().as_bytes());
    [format!("{header}.{body}."), format!("{header}.{body}")]
}

/// A valid token whose payload was swapped for another (signature kept).
fn tampered(token: &str, claims: &Value) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = b64(claims.to_string().as_bytes());
    parts.join(".")
}

/// Says hello with `token` and returns what came back: the code of an error
/// followed by close 4003, or `Ok(welcome)`.
async fn hello(url: &str, token: Option<&str>) -> Result<(Raw, Value), (String, Option<u16>)> {
    Raw::hello_token(url, token).await
}

/// Runs every case against `url`: each must be refused with its code and close 4003.
/// Returns how many were refused as expected.
async fn refuse_all(url: &str, cases: &[(&str, Option<String>, &str)]) -> usize {
    let mut refused = 0;
    for (name, token, expected) in cases {
        match hello(url, token.as_deref()).await {
            Ok((_, welcome)) => panic!("{name}: accepted, welcome {welcome}"),
            Err((code, close)) => {
                assert_eq!(code, *expected, "{name}: wrong error code");
                assert_eq!(close, Some(4003), "{name}: wrong close code");
                refused += 1;
                println!("  {name:<48} -> error {code}, close 4003");
            }
        }
    }
    refused
}

#[tokio::test]
async fn every_bad_token_is_refused_with_its_code_and_close_4003() {
    let auth = AuthServer::hs256_process(&[]);
    let good = claims("alice", &["pr:*"], &["pr:*"], 600);
    let valid = hs256(&good);
    let other_secret = EncodingKey::from_secret(b"another-secret-another-secret-another");
    let [none_dot, none_bare] = alg_none(&good);
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut no_sub = good.clone();
    no_sub.as_object_mut().unwrap().remove("sub");
    let mut admin = good.clone();
    admin["admin"] = true.into();
    let long_sub = claims(&"x".repeat(129), &["*"], &["*"], 600);
    let secret = EncodingKey::from_secret(SECRET.as_bytes());

    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "unauthorized"),
        ("empty token", Some(String::new()), "invalid_token"),
        ("not a JWT", Some("garbage".into()), "invalid_token"),
        (
            "bad signature (another secret)",
            Some(sign(&good, Algorithm::HS256, &other_secret)),
            "invalid_token",
        ),
        (
            "payload swapped, signature kept (admin: true)",
            Some(tampered(&valid, &admin)),
            "invalid_token",
        ),
        (
            "expired 10 s ago",
            Some(hs256(&claims("alice", &["*"], &["*"], -10))),
            "token_expired",
        ),
        ("alg: none, trailing dot", Some(none_dot), "invalid_token"),
        (
            "alg: none, no signature part",
            Some(none_bare),
            "invalid_token",
        ),
        (
            "HS384 with the right secret (alg not pinned?)",
            Some(sign(&good, Algorithm::HS384, &secret)),
            "invalid_token",
        ),
        (
            "HS512 with the right secret",
            Some(sign(&good, Algorithm::HS512, &secret)),
            "invalid_token",
        ),
        ("no exp claim", Some(hs256(&no_exp)), "invalid_token"),
        ("no sub claim", Some(hs256(&no_sub)), "invalid_token"),
        ("sub of 129 bytes", Some(hs256(&long_sub)), "invalid_token"),
    ];
    println!("HS256 server:");
    let refused = refuse_all(&auth.url(), &cases).await;
    println!(
        "figure: {refused}/{} bad tokens refused with the right code (100%)",
        cases.len()
    );
    assert_eq!(refused, cases.len());

    // The positive control: the valid token gets in, with its user on its entries.
    let (mut raw, _) = hello(&auth.url(), Some(&valid)).await.unwrap();
    raw.send(r#"{"type":"subscribe","room":"pr:ok"}"#).await;
    raw.until("snapshot").await;
    raw.send(r#"{"type":"heartbeat","room":"pr:ok","data":1,"ttlMs":60000,"userId":"mallory"}"#)
        .await;
    let changes = raw.until("changes").await;
    assert_eq!(
        changes["changes"][0]["userId"], "alice",
        "userId comes from the token, never from the client: {changes}"
    );
    assert!(auth.server.metric("rollcall_errors_total") >= cases.len() as f64);
}

#[tokio::test]
async fn public_key_servers_pin_their_algorithm() {
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let other_ec = EncodingKey::from_ec_pem(OTHER_EC_PRIVATE.as_bytes()).unwrap();
    let good = claims("alice", &["pr:*"], &["pr:*"], 600);
    let mut total = 0;

    for (name, public, own_alg, own_key) in [
        ("ES256", EC_PUBLIC, Algorithm::ES256, &ec),
        ("RS256", RSA_PUBLIC, Algorithm::RS256, &rsa),
    ] {
        let auth = AuthServer::public_key(public);
        let [none_dot, _] = alg_none(&good);
        let cases: Vec<(&str, Option<String>, &str)> = vec![
            (
                "HS256 keyed with the public key PEM (confusion)",
                Some(sign(
                    &good,
                    Algorithm::HS256,
                    &EncodingKey::from_secret(public.as_bytes()),
                )),
                "invalid_token",
            ),
            (
                "HS256 keyed with the trimmed public key PEM",
                Some(sign(
                    &good,
                    Algorithm::HS256,
                    &EncodingKey::from_secret(public.trim().as_bytes()),
                )),
                "invalid_token",
            ),
            (
                "HS256 keyed with the server's HS secret",
                Some(hs256(&good)),
                "invalid_token",
            ),
            ("alg: none", Some(none_dot), "invalid_token"),
            (
                "ES256 signed by another key",
                Some(sign(&good, Algorithm::ES256, &other_ec)),
                "invalid_token",
            ),
            (
                "the other public-key algorithm",
                Some(if own_alg == Algorithm::ES256 {
                    sign(&good, Algorithm::RS256, &rsa)
                } else {
                    sign(&good, Algorithm::ES256, &ec)
                }),
                "invalid_token",
            ),
            (
                "expired, correctly signed",
                Some(sign(
                    &claims("alice", &["*"], &["*"], -10),
                    own_alg,
                    own_key,
                )),
                "token_expired",
            ),
        ];
        println!("{name} server:");
        let refused = refuse_all(&auth.url(), &cases).await;
        assert_eq!(refused, cases.len());
        total += refused;
        // The positive control.
        let (_, welcome) = hello(&auth.url(), Some(&sign(&good, own_alg, own_key)))
            .await
            .unwrap_or_else(|e| panic!("{name}: a valid token was refused: {e:?}"));
        assert!(welcome["clientId"].as_u64().is_some());

        // `rollcall token --private-key` mints tokens this server accepts.
        let key = auth.dir.path().join("key.pem");
        std::fs::write(
            &key,
            if own_alg == Algorithm::ES256 {
                EC_PRIVATE
            } else {
                RSA_PRIVATE
            },
        )
        .unwrap();
        let minted = cli_token(&["--private-key", &key.display().to_string(), "--sub", "cli"]);
        assert!(
            hello(&auth.url(), Some(&minted)).await.is_ok(),
            "{name}: CLI token refused"
        );
    }
    println!(
        "figure: {total}/{total} forged or confused tokens refused on public-key servers (100%)"
    );
}

/// Runs `rollcall token` with these flags and returns the token it printed.
fn cli_token(args: &[&str]) -> String {
    let output = Command::new(binary())
        .arg("token")
        .args(args)
        .output()
        .expect("run rollcall token");
    assert!(
        output.status.success(),
        "rollcall token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Every message about `room` in `messages` other than a `forbidden` error.
fn leaks<'a>(messages: &'a [Value], room: &str) -> Vec<&'a Value> {
    messages
        .iter()
        .filter(|m| m["room"] == room && !(m["type"] == "error" && m["code"] == "forbidden"))
        .collect()
}

#[tokio::test]
async fn rooms_outside_the_token_are_forbidden_and_nothing_leaks() {
    let auth = AuthServer::hs256_process(&[]);
    // Bob may write the secret room; alice may read the team rooms and write one.
    let bob = hs256(&claims(
        "bob",
        &["pr:secret"],
        &["pr:secret", "pr:team-b"],
        600,
    ));
    let alice = hs256(&claims("alice", &["pr:team-*"], &["pr:team-a"], 600));
    let admin = hs256(&json!({"sub": "ops", "exp": now_s() + 600, "admin": true}));

    let (mut bob_raw, _) = hello(&auth.url(), Some(&bob)).await.unwrap();
    bob_raw
        .send(r#"{"type":"heartbeat","room":"pr:secret","data":"hidden","ttlMs":600000,"ref":1}"#)
        .await;
    assert_eq!(bob_raw.until("ack").await["ref"], 1);
    bob_raw
        .send(r#"{"type":"heartbeat","room":"pr:team-b","data":"bob","ttlMs":600000,"ref":2}"#)
        .await;
    assert_eq!(bob_raw.until("ack").await["ref"], 2);

    let (mut alice_raw, _) = hello(&auth.url(), Some(&alice)).await.unwrap();
    let mut messages = Vec::new();
    let mut forbidden = 0;
    // Reading: a room with entries and a room that never existed get the same answer.
    let mut answers = Vec::new();
    for (reference, room) in [(10, "pr:secret"), (11, "pr:never-existed")] {
        alice_raw
            .send(&json!({"type": "subscribe", "room": room, "ref": reference}).to_string())
            .await;
        let error = alice_raw.until("error").await;
        assert_eq!(error["code"], "forbidden", "{error}");
        assert_eq!(error["ref"], reference);
        assert_eq!(error["room"], room);
        answers.push((error["message"].clone(), error.as_object().unwrap().len()));
        forbidden += 1;
    }
    assert_eq!(
        answers[0], answers[1],
        "the answer must not tell a room with entries from one that never existed"
    );
    // Writing: a room alice may read but not write, and one she may do neither in.
    for (reference, request) in [
        (
            12,
            r#"{"type":"heartbeat","room":"pr:team-b","data":"alice","ttlMs":600000,"ref":12}"#,
        ),
        (
            13,
            r#"{"type":"heartbeat","room":"pr:secret","data":"alice","ttlMs":600000,"ref":13}"#,
        ),
        (14, r#"{"type":"leave","room":"pr:secret","ref":14}"#),
        (15, r#"{"type":"leave","room":"pr:team-b","ref":15}"#),
    ] {
        alice_raw.send(request).await;
        let error = alice_raw.until("error").await;
        assert_eq!(error["code"], "forbidden", "{request} -> {error}");
        assert_eq!(error["ref"], reference);
        forbidden += 1;
    }
    // What she is granted works.
    alice_raw
        .send(r#"{"type":"subscribe","room":"pr:team-b","ref":16}"#)
        .await;
    let snapshot = alice_raw.until("snapshot").await;
    assert_eq!(snapshot["entries"][0]["data"], "bob");
    assert_eq!(alice_raw.until("ack").await["ref"], 16);
    alice_raw
        .send(r#"{"type":"heartbeat","room":"pr:team-a","data":"alice","ttlMs":600000,"ref":17}"#)
        .await;
    assert_eq!(alice_raw.until("ack").await["ref"], 17);

    // Bob keeps changing the secret room; alice must hear nothing of it.
    for i in 0..20 {
        bob_raw
            .send(
                &json!({"type": "heartbeat", "room": "pr:secret", "data": i, "ttlMs": 600_000})
                    .to_string(),
            )
            .await;
    }
    bob_raw
        .send(r#"{"type":"leave","room":"pr:secret","ref":3}"#)
        .await;
    assert_eq!(bob_raw.until("ack").await["ref"], 3);
    messages.extend(alice_raw.drain_for(Duration::from_millis(500)).await);
    let leaked = leaks(&messages, "pr:secret").len() + leaks(&messages, "pr:never-existed").len();

    // Her refused writes changed nothing: the admin's view of the rooms.
    let (status, room) = auth.http("GET", "/v1/rooms/pr%3Ateam-b", Some(&admin), None);
    assert_eq!(status, 200, "{room}");
    let entries = room["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{room}");
    assert_eq!(entries[0]["userId"], "bob");

    println!(
        "figure: {forbidden}/{forbidden} out-of-token requests answered forbidden; {leaked} notifications leaked"
    );
    assert_eq!(leaked, 0, "leaked: {messages:?}");
    assert!(auth.server.metric("rollcall_errors_total") >= f64::from(forbidden));
}

#[tokio::test]
async fn resume_tokens_cannot_take_another_client_or_user() {
    let auth = AuthServer::hs256(&[]);
    let alice = hs256(&claims("alice", &["pr:*"], &["pr:*"], 600));
    let bob = hs256(&claims("bob", &["pr:*"], &["pr:*"], 600));
    let (mut alice_raw, welcome) = hello(&auth.url(), Some(&alice)).await.unwrap();
    let alice_id = welcome["clientId"].as_u64().unwrap();
    let alice_resume = welcome["resumeToken"].as_str().unwrap().to_owned();
    let (_bob_raw, bob_welcome) = hello(&auth.url(), Some(&bob)).await.unwrap();
    let bob_id = bob_welcome["clientId"].as_u64().unwrap();

    // Forged: bob's id with alice's tag; replayed: alice's whole token, by bob.
    let (_, tag) = alice_resume.split_once('.').unwrap();
    let forged = format!("{}.{tag}", b64(&bob_id.to_be_bytes()));
    let mut refused = 0;
    for (name, token, resume, victim) in [
        (
            "forged client id (bob's id, alice's tag)",
            &alice,
            forged,
            bob_id,
        ),
        (
            "alice's resume token replayed by bob",
            &bob,
            alice_resume.clone(),
            alice_id,
        ),
    ] {
        let (mut raw, first) = Raw::hello_with(
            &auth.url(),
            &json!({"type": "hello", "token": token, "resume": resume}),
        )
        .await;
        let RawEvent::Json(welcome) = first else {
            panic!("{name}: no welcome: {first:?}");
        };
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["resumed"], false, "{name}");
        assert_ne!(welcome["clientId"], victim, "{name}: took the victim's id");
        assert_eq!(raw.until("error").await["code"], "invalid_resume", "{name}");
        refused += 1;
        println!("  {name:<48} -> fresh id, invalid_resume");
    }
    // Alice was not kicked off (a stolen id would close her with 4001).
    alice_raw.send(r#"{"type":"ping","ref":1}"#).await;
    assert_eq!(alice_raw.until("pong").await["ref"], 1);

    // The positive control: alice's own token with her own user resumes her id.
    let (_, again) = Raw::hello_with(
        &auth.url(),
        &json!({"type": "hello", "token": alice, "resume": alice_resume}),
    )
    .await;
    let RawEvent::Json(again) = again else {
        panic!("no welcome")
    };
    assert_eq!(again["clientId"], alice_id);
    assert_eq!(again["resumed"], true);
    assert_eq!(alice_raw.next().await, RawEvent::Closed(4001));
    println!("figure: {refused}/{refused} stolen or forged resume tokens refused");
}

#[tokio::test]
async fn token_expiry_closes_4004_unless_renewed_on_the_same_connection() {
    let auth = AuthServer::hs256(&[]);
    // Expires at the end of the next second: 1 to 2 s from now.
    let exp = now_s() + 2;
    let short = |sub: &str, read: &[&str]| {
        hs256(&json!({"sub": sub, "exp": exp, "rooms": {"read": read, "write": ["pr:*"]}}))
    };
    let renewed = hs256(&claims("alice", &["pr:*"], &["pr:*"], 600));

    let (mut lapsing, _) = hello(&auth.url(), Some(&short("alice", &["pr:*"])))
        .await
        .unwrap();
    let (mut renewing, _) = hello(&auth.url(), Some(&short("alice", &["pr:*"])))
        .await
        .unwrap();
    let (mut wrong_user, _) = hello(&auth.url(), Some(&short("alice", &["pr:*"])))
        .await
        .unwrap();
    let (mut narrowed, _) = hello(&auth.url(), Some(&short("alice", &["pr:*"])))
        .await
        .unwrap();

    // Renewed in time: acknowledged.
    renewing
        .send(&json!({"type": "auth", "token": renewed, "ref": 9}).to_string())
        .await;
    assert_eq!(renewing.until("ack").await["ref"], 9);
    // A token for another user does not renew anything.
    let mallory = hs256(&claims("mallory", &["pr:*"], &["pr:*"], 600));
    wrong_user
        .send(&json!({"type": "auth", "token": mallory, "ref": 5}).to_string())
        .await;
    let error = wrong_user.until("error").await;
    assert_eq!(
        (error["code"].as_str(), error["ref"].as_u64()),
        (Some("invalid_token"), Some(5))
    );
    // Neither does an expired or a forged one.
    let expired = hs256(&claims("alice", &["pr:*"], &["pr:*"], -5));
    wrong_user
        .send(&json!({"type": "auth", "token": expired, "ref": 6}).to_string())
        .await;
    assert_eq!(wrong_user.until("error").await["code"], "token_expired");
    // A narrower token drops the subscriptions it no longer grants.
    narrowed
        .send(r#"{"type":"subscribe","room":"pr:wide","ref":1}"#)
        .await;
    narrowed.until("snapshot").await;
    let narrower = hs256(&claims("alice", &["pr:narrow"], &["pr:*"], 600));
    narrowed
        .send(&json!({"type": "auth", "token": narrower, "ref": 2}).to_string())
        .await;
    let dropped = narrowed.until("error").await;
    assert_eq!(dropped["code"], "forbidden");
    assert_eq!(dropped["room"], "pr:wide");
    assert_eq!(narrowed.until("ack").await["ref"], 2);
    let (mut writer, _) = hello(&auth.url(), Some(&renewed)).await.unwrap();
    writer
        .send(r#"{"type":"heartbeat","room":"pr:wide","data":1,"ttlMs":60000,"ref":1}"#)
        .await;
    assert_eq!(writer.until("ack").await["ref"], 1);
    let after_narrowing = narrowed.drain_for(Duration::from_millis(300)).await;
    assert!(
        leaks(&after_narrowing, "pr:wide").is_empty(),
        "a dropped room kept sending: {after_narrowing:?}"
    );

    // Without renewal the server closes at exp with 4004.
    let expires_at = UNIX_EPOCH + Duration::from_secs(exp as u64);
    for (name, raw) in [("lapsing", &mut lapsing), ("wrong_user", &mut wrong_user)] {
        let event = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match raw.next().await {
                    RawEvent::Json(_) => {}
                    other => return other,
                }
            }
        })
        .await
        .expect("closed within 5 s");
        let late = SystemTime::now()
            .duration_since(expires_at)
            .unwrap_or_default();
        assert_eq!(event, RawEvent::Closed(4004), "{name}");
        println!(
            "figure: {name} closed with 4004 {} ms after exp",
            late.as_millis()
        );
        assert!(
            late < Duration::from_secs(2),
            "{name}: closed {late:?} after exp"
        );
    }
    // The renewed connection outlives the first token and keeps working.
    let past = expires_at + Duration::from_millis(500);
    if let Ok(wait) = past.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    renewing
        .send(r#"{"type":"heartbeat","room":"pr:renewed","data":1,"ttlMs":60000,"ref":10}"#)
        .await;
    assert_eq!(renewing.until("ack").await["ref"], 10);
    println!("figure: renewed connection still acknowledged heartbeats 500 ms after the old exp");
}

#[tokio::test]
async fn auth_without_auth_on_the_server_is_a_bad_request() {
    let server = Server::in_process();
    let (mut raw, _) = Raw::hello(&server.ws_url()).await;
    raw.send(r#"{"type":"auth","token":"x","ref":3}"#).await;
    let error = raw.until("error").await;
    assert_eq!(error["code"], "bad_request");
    assert_eq!(error["ref"], 3);
}

#[tokio::test]
async fn rollcall_token_mints_tokens_the_server_accepts() {
    let auth = AuthServer::hs256(&[]);
    let secret = auth.secret_file().display().to_string();
    let token = cli_token(&[
        "--secret-file",
        &secret,
        "--sub",
        "alice",
        "--read",
        "pr:doc-*",
        "--write",
        "pr:doc-42",
        "--ttl-secs",
        "600",
    ]);
    let (mut raw, welcome) = hello(&auth.url(), Some(&token)).await.unwrap();
    let id = welcome["clientId"].as_u64().unwrap();
    raw.send(r#"{"type":"subscribe","room":"pr:doc-42","ref":1}"#)
        .await;
    raw.until("snapshot").await;
    raw.send(r#"{"type":"heartbeat","room":"pr:doc-42","data":"here","ttlMs":60000,"ref":2}"#)
        .await;
    let changes = raw.until("changes").await;
    assert_eq!(changes["changes"][0]["clientId"], id);
    assert_eq!(changes["changes"][0]["userId"], "alice");
    assert_eq!(raw.until("ack").await["ref"], 2);
    raw.send(r#"{"type":"heartbeat","room":"pr:doc-7","data":"no","ttlMs":60000,"ref":3}"#)
        .await;
    assert_eq!(raw.until("error").await["code"], "forbidden");
    raw.send(r#"{"type":"subscribe","room":"pr:other","ref":4}"#)
        .await;
    assert_eq!(raw.until("error").await["code"], "forbidden");

    // --admin tokens pass the REST API's admin check; others do not.
    let admin = cli_token(&["--secret-file", &secret, "--sub", "ops", "--admin"]);
    let body = r#"{"data":"bot","ttlMs":60000}"#;
    let (status, answer) = auth.http(
        "POST",
        "/v1/rooms/pr%3Adoc-1/heartbeat",
        Some(&admin),
        Some(body),
    );
    assert_eq!(status, 200, "{answer}");
    let (status, _) = auth.http(
        "POST",
        "/v1/rooms/pr%3Adoc-1/heartbeat",
        Some(&token),
        Some(body),
    );
    assert_eq!(status, 403);
}

#[tokio::test]
async fn rest_writes_and_listing_need_admin_and_reads_need_the_room() {
    let auth = AuthServer::hs256(&[]);
    let admin = hs256(&json!({"sub": "ops", "exp": now_s() + 600, "admin": true}));
    let reader = hs256(&claims("alice", &["pr:open"], &["pr:*"], 600));
    let expired_admin = hs256(&json!({"sub": "ops", "exp": now_s() - 5, "admin": true}));
    let forged_admin = sign(
        &json!({"sub": "ops", "exp": now_s() + 600, "admin": true}),
        Algorithm::HS256,
        &EncodingKey::from_secret(b"guessed-secret-guessed-secret-guessed"),
    );
    let body = r#"{"data":"bot","ttlMs":60000,"clientId":77}"#;
    let (status, answer) = auth.http(
        "POST",
        "/v1/rooms/pr%3Aopen/heartbeat",
        Some(&admin),
        Some(body),
    );
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = auth.http(
        "POST",
        "/v1/rooms/pr%3Asecret/heartbeat",
        Some(&admin),
        Some(body),
    );
    assert_eq!(status, 200, "{answer}");

    let cases: Vec<(&str, &str, Option<&str>, u16, &str)> = vec![
        (
            "POST",
            "/v1/rooms/pr%3Aopen/heartbeat",
            None,
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/v1/rooms/pr%3Aopen/heartbeat",
            Some(&reader),
            403,
            "forbidden",
        ),
        (
            "POST",
            "/v1/rooms/pr%3Aopen/heartbeat",
            Some(&expired_admin),
            401,
            "token_expired",
        ),
        (
            "POST",
            "/v1/rooms/pr%3Aopen/heartbeat",
            Some(&forged_admin),
            401,
            "invalid_token",
        ),
        (
            "POST",
            "/v1/rooms/pr%3Aopen/heartbeat",
            Some("not-a-jwt"),
            401,
            "invalid_token",
        ),
        (
            "DELETE",
            "/v1/rooms/pr%3Aopen/entries/77",
            None,
            401,
            "unauthorized",
        ),
        (
            "DELETE",
            "/v1/rooms/pr%3Aopen/entries/77",
            Some(&reader),
            403,
            "forbidden",
        ),
        ("GET", "/v1/rooms", None, 401, "unauthorized"),
        ("GET", "/v1/rooms", Some(&reader), 403, "forbidden"),
        (
            "GET",
            "/v1/rooms",
            Some(&forged_admin),
            401,
            "invalid_token",
        ),
        ("GET", "/v1/rooms/pr%3Asecret", None, 401, "unauthorized"),
        (
            "GET",
            "/v1/rooms/pr%3Asecret",
            Some(&reader),
            403,
            "forbidden",
        ),
        (
            "GET",
            "/v1/rooms/pr%3Anever-existed",
            Some(&reader),
            403,
            "forbidden",
        ),
        ("GET", "/v1/rooms/pr%3Aopen", None, 401, "unauthorized"),
    ];
    let mut wrong = Vec::new();
    for (method, path, token, status, code) in &cases {
        let (got, answer) = auth.http(method, path, *token, Some(body));
        let who = match token {
            None => "no token",
            Some(t) if *t == reader => "reader",
            Some(t) if *t == expired_admin => "expired admin",
            Some(t) if *t == forged_admin => "forged admin",
            Some(_) => "not a JWT",
        };
        let ok = got == *status && answer["error"] == *code;
        println!(
            "  {method:<6} {path:<36} {who:<14} -> {got} {}",
            answer["error"]
        );
        if !ok {
            wrong.push(format!(
                "{method} {path} ({who}): {got} {answer}, expected {status} {code}"
            ));
        }
    }
    println!(
        "figure: {}/{} unauthorized REST requests refused with the right status and code",
        cases.len() - wrong.len(),
        cases.len()
    );

    // What is allowed works, and a refused write changed nothing.
    let (status, room) = auth.http("GET", "/v1/rooms/pr%3Aopen", Some(&reader), None);
    assert_eq!(status, 200, "{room}");
    assert_eq!(room["entries"][0]["clientId"], 77);
    let (status, rooms) = auth.http("GET", "/v1/rooms", Some(&admin), None);
    assert_eq!(status, 200, "{rooms}");
    assert_eq!(rooms["rooms"].as_array().unwrap().len(), 2, "{rooms}");
    let (status, _) = auth.http(
        "DELETE",
        "/v1/rooms/pr%3Aopen/entries/77",
        Some(&admin),
        None,
    );
    assert_eq!(status, 204);

    // /healthz and /metrics stay open, and /metrics names no room and no user.
    let (status, _) = auth.http("GET", "/healthz", None, None);
    assert_eq!(status, 200);
    let (status, metrics) = auth.http("GET", "/metrics", None, None);
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    for secret in ["pr:secret", "pr:open", "alice", "ops"] {
        assert!(!metrics.contains(secret), "/metrics mentions {secret}");
    }
    assert!(
        wrong.is_empty(),
        "REST requests not refused as expected:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test]
async fn origin_allow_list_refuses_foreign_origins_and_allows_missing_ones() {
    let server = Server::launch()
        .arg("--allowed-origin")
        .arg("https://app.example.com")
        .in_process();
    let addr = server.addr;
    let own = format!("http://{addr}");
    let cases: [(&str, Option<&str>, u16); 6] = [
        ("listed origin", Some("https://app.example.com"), 101),
        ("foreign origin", Some("https://evil.example.com"), 403),
        (
            "listed host, other scheme",
            Some("http://app.example.com"),
            403,
        ),
        ("opaque origin (null)", Some("null"), 403),
        ("the server's own origin (its pages)", Some(&own), 101),
        ("no Origin (not a browser)", None, 101),
    ];
    for (name, origin, expected) in cases {
        let headers: Vec<(&str, &str)> = origin.map(|o| vec![("Origin", o)]).unwrap_or_default();
        let status = wire::upgrade_status(addr, &headers).unwrap();
        println!("  {name:<40} -> {status}");
        assert_eq!(status, expected, "{name}");
    }
    // The refusal is the API's JSON error.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let request = wire::upgrade_request(addr, &[("Origin", "https://evil.example.com")]);
    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
    let (status, body) = http::response(&mut stream, Duration::from_secs(10)).unwrap();
    assert_eq!(status, 403);
    assert_eq!(body["error"], "forbidden", "{body}");

    // Without an allow-list, every origin may connect (documented default).
    let open = Server::in_process();
    assert_eq!(
        wire::upgrade_status(open.addr, &[("Origin", "https://evil.example.com")]).unwrap(),
        101
    );
}

#[tokio::test]
async fn origin_allow_list_is_not_bypassed_by_a_rebinding_host() {
    // DNS rebinding: a page at http://evil.example:PORT whose name now resolves to
    // the server's address sends Origin and Host that agree with each other. The
    // "server's own origin" rule must not take the Host header's word for it.
    let server = Server::launch()
        .arg("--allowed-origin")
        .arg("https://app.example.com")
        .in_process();
    let port = server.addr.port();
    let evil = format!("evil.example:{port}");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {evil}\r\nOrigin: http://{evil}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
    let (status, _) = wire::read_head(&mut stream).unwrap();
    println!("figure: rebinding Host + matching Origin -> {status} (want 403)");
    assert_eq!(
        status, 403,
        "the allow-list was bypassed by a rebinding Host"
    );
}

#[tokio::test]
async fn refused_handshakes_cost_little_time() {
    // A flood of bad tokens is answered quickly and does not slow valid clients.
    let auth = AuthServer::hs256(&[]);
    let valid = hs256(&claims("alice", &["pr:*"], &["pr:*"], 600));
    let started = Instant::now();
    let attempts = 200;
    for i in 0..attempts {
        let bad = format!("{}x{i}", &valid[..valid.len() - 3]);
        assert!(hello(&auth.url(), Some(&bad)).await.is_err());
    }
    let per_refusal = started.elapsed() / attempts;
    let started = Instant::now();
    assert!(hello(&auth.url(), Some(&valid)).await.is_ok());
    println!(
        "figure: {attempts} forged tokens refused in {:?} each on average; a valid hello then took {:?}",
        per_refusal,
        started.elapsed()
    );
    assert!(per_refusal < Duration::from_millis(200));
}

/// With auth on, the token's `sub` is the user: a `user` claimed in hello is ignored.
#[tokio::test]
async fn with_auth_the_hello_user_claim_is_ignored_for_the_token_sub() {
    let auth = AuthServer::hs256(&[]);
    let token = hs256(&claims("alice", &["pr:*"], &["pr:*"], 600));
    let (mut raw, first) = Raw::hello_with(
        &auth.url(),
        &json!({"type": "hello", "token": token, "user": "mallory"}),
    )
    .await;
    assert!(
        matches!(&first, RawEvent::Json(w) if w["type"] == "welcome"),
        "{first:?}"
    );
    raw.send(r#"{"type":"heartbeat","room":"pr:u","data":1,"ttlMs":60000,"ref":1}"#)
        .await;
    assert_eq!(raw.until("ack").await["ref"], 1);
    let (status, users) = auth.http("GET", "/v1/rooms/pr%3Au/users", Some(&token), None);
    assert_eq!(status, 200, "{users}");
    assert_eq!(users["users"][0]["userId"], "alice", "{users}");
    assert_eq!(users["users"].as_array().map(Vec::len), Some(1), "{users}");
}
