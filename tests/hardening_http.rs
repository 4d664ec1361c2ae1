//! Hardening of the HTTP API and auth (issue 19): request bodies are refused before
//! they are read when the headers already say no, capped at a size that fits the API
//! and timed out; the origin allow-list covers REST writes, which must be JSON; JWT
//! `nbf` and `crit` are honoured; a client id chosen over REST is never handed to
//! another client; `rollcall token` takes SEC1 EC keys. Each test is named after the
//! defect it guards against and prints its figures (`cargo test --test
//! hardening_http -- --nocapture`).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rollcall_tests::http::{request, response, send};
use rollcall_tests::jwt::{SecretFile, hs256, hs256_with, now_s};
use rollcall_tests::keys::{
    EC_PRIVATE, EC_PUBLIC, EC_SEC1, EC_SEC1_WITH_PARAMETERS, EC_WITH_PARAMETERS_PUBLIC, ED25519,
    P384_SEC1,
};
use rollcall_tests::{Launch, Raw, Server, binary, http_with};
use serde_json::{Value, json};

/// What the issue's attacker announced: the largest body axum reads by default.
const TWO_MIB: usize = 2 * 1024 * 1024;
/// The default `--max-data-bytes`.
const MAX_DATA: usize = 4_096;
/// What a heartbeat body may hold besides `data` (docs/protocol.md, HTTP API).
const ENVELOPE: usize = 1_024;
/// Connections of the issue's memory figure.
const CONNECTIONS: usize = 100;

/// A request case: name, extra header lines, expected status and error code.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);

/// A server with HS256 auth on and these extra flags, started by `start`
/// ([`Launch::in_process`] unless the test measures the process); the temp dir holds
/// the secret.
fn auth_server(extra: &[&str], start: fn(Launch) -> Server) -> (Server, tempfile::TempDir) {
    let secret = SecretFile::new();
    let launch = Server::launch()
        .arg("--auth-secret-file")
        .arg(secret.path.display().to_string())
        .args(extra.iter().copied());
    (start(launch), secret.dir)
}

fn admin_token() -> String {
    hs256(&json!({"sub": "ops", "exp": now_s() + 600, "admin": true}))
}

/// The entries of `room` (percent-encoded name) over REST, as `(clientId, data)`.
fn entries(server: &Server, room: &str) -> Vec<(u64, Value)> {
    let listed = server.get_json(&format!("/v1/rooms/{room}"));
    listed["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| (e["clientId"].as_u64().unwrap(), e["data"].clone()))
        .collect()
}

// ---- Item 1: unauthenticated bodies ----

#[test]
fn unauthenticated_bodies_are_refused_before_reading() {
    let (server, _dir) = auth_server(
        &["--allowed-origin", "https://app.example.com"],
        Launch::start,
    );
    let addr = server.addr;
    let admin = format!("Bearer {}", admin_token());
    let reader = format!(
        "Bearer {}",
        hs256(
            &json!({"sub": "alice", "exp": now_s() + 600, "rooms": {"read": ["*"], "write": ["*"]}})
        )
    );
    let forged = format!(
        "Bearer {}",
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "ops", "exp": now_s() + 600, "admin": true}),
            &EncodingKey::from_secret(b"guessed-secret-guessed-secret-guessed"),
        )
        .unwrap()
    );
    // The issue's figure: 100 connections each announce 2 MiB without a token and
    // send all of it but the last 16 bytes.
    let rss_before = server.rss_kib();
    let peak_before = server.peak_rss_kib();
    let body: Arc<Vec<u8>> = Arc::new(vec![b' '; TWO_MIB - 16]);
    let (written_tx, written_rx) = mpsc::channel();
    let started = Instant::now();
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let body = body.clone();
            let written = written_tx.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
                stream
                    .set_write_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                let head = format!(
                    "POST /v1/rooms/pr%3Abig/heartbeat HTTP/1.1\r\nHost: {addr}\r\n\
                     Content-Type: application/json\r\nContent-Length: {TWO_MIB}\r\n\r\n"
                );
                stream.write_all(head.as_bytes()).unwrap();
                // A refused request may be closed under the writer: that is the point.
                let refused_while_writing = stream.write_all(&body).is_err();
                let _ = written.send(());
                // What the server says (or whether it closes) while the body is withheld.
                let answer = response(&mut stream, Duration::from_secs(20));
                let closed = match &answer {
                    Ok(_) => true,
                    Err(e) => {
                        e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::TimedOut
                    }
                };
                (
                    answer.ok().map(|(status, _)| status),
                    closed,
                    refused_while_writing,
                    started.elapsed(),
                )
            })
        })
        .collect();
    for _ in 0..CONNECTIONS {
        written_rx.recv().unwrap();
    }
    let rss_written = server.rss_kib();
    let outcomes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let rss_after = server.rss_kib();
    let peak_after = server.peak_rss_kib();
    let answered = outcomes.iter().filter(|o| o.0 == Some(401)).count();
    let closed = outcomes.iter().filter(|o| o.1).count();
    let cut_off = outcomes.iter().filter(|o| o.2).count();
    let slowest = outcomes.iter().map(|o| o.3).max().unwrap_or_default();
    println!(
        "figure: {CONNECTIONS} connections x 2 MiB announced without a token: server RSS \
         {} -> {} KiB (+{} KiB) once written, {} KiB after; peak +{} KiB; {answered} \
         answered 401, {closed} closed by the server, {cut_off} cut off while writing; \
         all ended within {slowest:?}",
        rss_before,
        rss_written,
        rss_written.saturating_sub(rss_before),
        rss_after,
        peak_after.saturating_sub(peak_before),
    );
    assert_eq!(
        closed,
        CONNECTIONS,
        "{} connections still open, unanswered, after 20 s",
        CONNECTIONS - closed
    );
    assert!(
        peak_after.saturating_sub(peak_before) < 20 * 1024,
        "the server's peak RSS grew by {} KiB",
        peak_after.saturating_sub(peak_before)
    );
    assert!(outcomes.iter().all(|o| o.0.is_none_or(|s| s == 401)));
    let length = TWO_MIB.to_string();
    // Each request announces 2 MiB and sends 1 KiB of it: the answer can only come
    // from the headers.
    let cases: [Case<'_>; 4] = [
        ("no token", vec![], 401, "unauthorized"),
        (
            "forged token",
            vec![("Authorization", forged.as_str())],
            401,
            "invalid_token",
        ),
        (
            "token without admin",
            vec![("Authorization", reader.as_str())],
            403,
            "forbidden",
        ),
        (
            "admin token, foreign Origin",
            vec![
                ("Authorization", admin.as_str()),
                ("Origin", "https://evil.example"),
            ],
            403,
            "forbidden",
        ),
    ];
    for (name, extra, status, code) in cases {
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("Content-Length", length.as_str()),
        ];
        headers.extend(extra);
        let started = Instant::now();
        let mut stream = send(
            addr,
            "POST /v1/rooms/pr%3Abig/heartbeat",
            &headers,
            &[b' '; 1024],
        );
        let answer = response(&mut stream, Duration::from_secs(10));
        println!("  {name:<30} -> {answer:?} after {:?}", started.elapsed());
        let (got, body) = answer
            .unwrap_or_else(|e| panic!("{name}: no answer while the body was withheld ({e})"));
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(code)),
            "{name}: {body}"
        );
    }

    // And it still serves.
    let (status, _) = http_with(addr, "GET", "/healthz", &[], None).unwrap();
    assert_eq!(status, 200);
}

#[test]
fn rest_bodies_over_the_size_cap_are_refused_with_413() {
    let server = Server::in_process();
    let addr = server.addr;
    let cap = MAX_DATA + ENVELOPE;

    // A Content-Length over the cap is refused from the head, before any body byte.
    let length = TWO_MIB.to_string();
    let started = Instant::now();
    let mut stream = send(
        addr,
        "POST /v1/rooms/r/heartbeat",
        &[
            ("Content-Type", "application/json"),
            ("Content-Length", length.as_str()),
        ],
        b"",
    );
    let (status, body) =
        response(&mut stream, Duration::from_secs(10)).expect("an answer to the head alone");
    println!(
        "  Content-Length 2 MiB, no body -> {status} {body} after {:?}",
        started.elapsed()
    );
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "data_too_large", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains(&cap.to_string()))
    );

    // A chunked body is cut off once past the cap (its end is never sent).
    let chunk = format!("400\r\n{}\r\n", " ".repeat(1024));
    let mut stream = send(
        addr,
        "POST /v1/rooms/r/heartbeat",
        &[
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        chunk.repeat(8).as_bytes(),
    );
    let (status, body) =
        response(&mut stream, Duration::from_secs(10)).expect("an answer past the cap");
    println!("  8 KiB chunked, no end -> {status} {body}");
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("data_too_large"))
    );

    // Exactly at the cap is fine (data at its own limit, the rest whitespace); one
    // byte more is not.
    for (max_data, server) in [(MAX_DATA, None), (100, Some("100"))] {
        let server = match server {
            Some(flag) => Server::launch()
                .arg("--max-data-bytes")
                .arg(flag)
                .in_process(),
            None => Server::in_process(),
        };
        let cap = max_data + ENVELOPE;
        let data = format!("\"{}\"", "x".repeat(max_data - 2));
        let mut body = format!(r#"{{"data":{data},"ttlMs":60000}}"#);
        body.push_str(&" ".repeat(cap - body.len()));
        let (status, answer) = request(
            server.addr,
            "POST /v1/rooms/r/heartbeat",
            &[("Content-Type", "application/json")],
            &body,
        );
        assert_eq!(status, 200, "a {cap}-byte body: {answer}");
        body.push(' ');
        let (status, answer) = request(
            server.addr,
            "POST /v1/rooms/r/heartbeat",
            &[("Content-Type", "application/json")],
            &body,
        );
        println!(
            "  --max-data-bytes {max_data}: {cap} bytes -> 200, {} -> {status}",
            cap + 1
        );
        assert_eq!(
            (status, answer["error"].as_str()),
            (413, Some("data_too_large"))
        );
    }
}

#[test]
fn a_withheld_rest_body_times_out_with_408() {
    // The default timeout (10 s): a body announced and never finished.
    let server = Server::in_process();
    let started = Instant::now();
    let mut stream = send(
        server.addr,
        "POST /v1/rooms/r/heartbeat",
        &[
            ("Content-Type", "application/json"),
            ("Content-Length", "100"),
        ],
        b"{\"data\":",
    );
    let answer = response(&mut stream, Duration::from_secs(30));
    let waited = started.elapsed();
    println!("figure: a withheld body (default timeout) -> {answer:?} after {waited:?}");
    let (status, body) = answer.expect("an answer within 30 s");
    assert_eq!(
        (status, body["error"].as_str()),
        (408, Some("request_timeout")),
        "{body}"
    );
    assert!(waited >= Duration::from_millis(9_900), "{waited:?}");
    // The connection is closed after the answer (not left open until a timeout).
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let end = stream.read_to_end(&mut rest);
    assert!(
        matches!(&end, Ok(0))
            || matches!(&end, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
        "{end:?}"
    );

    // Configured: 300 ms, for the whole body (dripping it does not extend it).
    let server = Server::launch()
        .arg("--body-timeout-ms")
        .arg("300")
        .in_process();
    let started = Instant::now();
    let mut stream = send(
        server.addr,
        "POST /v1/rooms/r/heartbeat",
        &[
            ("Content-Type", "application/json"),
            ("Content-Length", "1000"),
        ],
        b"",
    );
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = stream.try_clone().unwrap();
    let answer = std::thread::spawn(move || response(&mut reader, Duration::from_secs(30)));
    // One byte every 50 ms, until the server answers and closes.
    let mut dripped = 0;
    while !answer.is_finished() && dripped < 1000 && stream.write_all(b" ").is_ok() {
        dripped += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = answer.join().unwrap();
    let waited = started.elapsed();
    println!(
        "  --body-timeout-ms 300, one byte per 50 ms -> {answer:?} after {waited:?} ({dripped} bytes)"
    );
    let (status, body) = answer.expect("an answer");
    assert_eq!(
        (status, body["error"].as_str()),
        (408, Some("request_timeout")),
        "{body}"
    );
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
}

// ---- Item 8: the origin allow-list covers REST writes ----

#[test]
fn the_origin_allow_list_covers_rest_writes() {
    let server = Server::launch()
        .arg("--allowed-origin")
        .arg("https://app.example.com")
        .in_process();
    let addr = server.addr;
    let beat = r#"{"data":"x","ttlMs":60000}"#;
    let post = "POST /v1/rooms/pr%3Aorigin/heartbeat";
    let evil = ("Origin", "https://evil.example");
    // A "simple" CORS request any page can send: text/plain, foreign origin.
    let cases: [Case<'_>; 8] = [
        (
            "text/plain, foreign Origin",
            vec![("Content-Type", "text/plain"), evil],
            403,
            "forbidden",
        ),
        (
            "JSON, foreign Origin",
            vec![("Content-Type", "application/json"), evil],
            403,
            "forbidden",
        ),
        (
            "JSON, Origin null",
            vec![("Content-Type", "application/json"), ("Origin", "null")],
            403,
            "forbidden",
        ),
        (
            "text/plain, no Origin",
            vec![("Content-Type", "text/plain")],
            415,
            "unsupported_media_type",
        ),
        (
            "form, listed Origin",
            vec![
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Origin", "https://app.example.com"),
            ],
            415,
            "unsupported_media_type",
        ),
        ("no Content-Type", vec![], 415, "unsupported_media_type"),
        (
            "JSON with charset, listed Origin",
            vec![
                ("Content-Type", "application/json; charset=utf-8"),
                ("Origin", "https://app.example.com"),
            ],
            200,
            "",
        ),
        (
            "JSON, no Origin (curl, servers)",
            vec![("Content-Type", "application/json")],
            200,
            "",
        ),
    ];
    for (name, headers, status, code) in cases {
        let (got, body) = request(addr, post, &headers, beat);
        println!("  POST {name:<36} -> {got} {}", body["error"]);
        assert_eq!(got, status, "{name}: {body}");
        if status != 200 {
            assert_eq!(body["error"], code, "{name}: {body}");
        }
    }
    // Exactly the two allowed writes are stored.
    let stored = entries(&server, "pr%3Aorigin");
    assert_eq!(stored.len(), 2, "{stored:?}");

    // DELETE from a foreign origin is refused too, and removes nothing.
    let id = stored[0].0;
    let path = format!("DELETE /v1/rooms/pr%3Aorigin/entries/{id}");
    let (status, body) = request(addr, &path, &[evil], "");
    println!("  DELETE foreign Origin -> {status} {}", body["error"]);
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    assert_eq!(entries(&server, "pr%3Aorigin").len(), 2);
    let (status, _) = request(addr, &path, &[("Origin", "https://app.example.com")], "");
    assert_eq!(status, 204);
    assert_eq!(entries(&server, "pr%3Aorigin").len(), 1);

    // Reads are not writes: a page cannot read the answer without CORS headers, and
    // the server sends none.
    let (status, _) = request(addr, "GET /v1/rooms/pr%3Aorigin", &[evil], "");
    assert_eq!(status, 200);

    // Without an allow-list any origin may write JSON, but text/plain (which a page
    // can send cross-origin without a preflight) is still refused.
    let open = Server::in_process();
    let (status, _) = request(
        open.addr,
        post,
        &[("Content-Type", "text/plain"), evil],
        beat,
    );
    assert_eq!(status, 415);
    assert!(entries(&open, "pr%3Aorigin").is_empty());
}

// ---- Item 9a: JWT nbf and crit ----

/// Says hello with `token`: `Ok(welcome)` or `Err((error code, close code))`.
async fn hello(url: &str, token: &str) -> Result<(Raw, Value), (String, Option<u16>)> {
    Raw::hello_token(url, Some(token)).await
}

#[tokio::test]
async fn jwt_nbf_in_the_future_is_refused_as_token_not_yet_valid() {
    let (server, _dir) = auth_server(&[], Launch::in_process);
    let url = server.ws_url();
    let rooms = json!({"read": ["pr:*"], "write": ["pr:*"]});
    let later =
        hs256(&json!({"sub": "alice", "exp": now_s() + 600, "nbf": now_s() + 300, "rooms": rooms}));
    let now =
        hs256(&json!({"sub": "alice", "exp": now_s() + 600, "nbf": now_s() - 1, "rooms": rooms}));

    let refused = hello(&url, &later).await.err();
    println!("  hello, nbf in 5 minutes -> {refused:?}");
    assert_eq!(
        refused,
        Some(("token_not_yet_valid".to_owned(), Some(4003)))
    );
    let (mut raw, welcome) = hello(&url, &now).await.expect("nbf in the past is valid");
    assert_eq!(welcome["type"], "welcome");

    // Renewing with a token not valid yet is refused; the connection keeps its token.
    raw.send(&json!({"type": "auth", "token": later, "ref": 5}).to_string())
        .await;
    let answer = raw.until("error").await;
    println!("  auth, nbf in 5 minutes -> {answer}");
    assert_eq!(answer["code"], "token_not_yet_valid");
    assert_eq!(answer["ref"], 5);
    raw.send(r#"{"type":"ping","ref":6}"#).await;
    assert_eq!(raw.until("pong").await["ref"], 6);

    // Over HTTP: 401 with the same code.
    let admin_later =
        hs256(&json!({"sub": "ops", "exp": now_s() + 600, "nbf": now_s() + 300, "admin": true}));
    let bearer = format!("Bearer {admin_later}");
    let (status, body) = http_with(
        server.addr,
        "GET",
        "/v1/rooms",
        &[("Authorization", &bearer)],
        None,
    )
    .unwrap();
    println!("  GET /v1/rooms, nbf in 5 minutes -> {status} {body}");
    assert_eq!(status, 401);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "token_not_yet_valid");
}

#[tokio::test]
async fn jwt_with_a_crit_header_is_refused() {
    let (server, _dir) = auth_server(&[], Launch::in_process);
    let url = server.ws_url();
    let claims = json!({"sub": "alice", "exp": now_s() + 600, "admin": true});
    let mut cases = Vec::new();
    for crit in [vec!["exp".to_owned()], vec!["b64".to_owned()], vec![]] {
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(crit.clone());
        cases.push((format!("crit {crit:?}"), hs256_with(&header, &claims)));
    }
    for (name, token) in &cases {
        let refused = hello(&url, token).await.err();
        println!("  hello, {name} -> {refused:?}");
        assert_eq!(
            refused,
            Some(("invalid_token".to_owned(), Some(4003))),
            "{name}"
        );
        let bearer = format!("Bearer {token}");
        let (status, body) = http_with(
            server.addr,
            "GET",
            "/v1/rooms",
            &[("Authorization", &bearer)],
            None,
        )
        .unwrap();
        assert_eq!(status, 401, "{name}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains("crit")),
            "{body}"
        );
    }
    // The same token without crit is fine.
    let plain = hs256(&claims);
    assert!(hello(&url, &plain).await.is_ok());
}

// ---- Item 9b: client ids chosen over REST ----

#[tokio::test]
async fn a_rest_client_id_is_never_given_to_a_websocket_client() {
    let mut server = Server::start();
    let url = server.ws_url();
    // Ids a bot picks for itself, including one past the first block of ids the
    // server reserves on disk (4,096).
    let chosen = [1u64, 2, 3, 5_000];
    for id in chosen {
        let (status, body) = server.http(
            "POST",
            "/v1/rooms/pr%3Abots/heartbeat",
            Some(&format!(
                r#"{{"data":"bot-{id}","ttlMs":600000,"clientId":{id}}}"#
            )),
        );
        assert_eq!(status, 200, "clientId {id}: {body}");
    }
    let mut given = Vec::new();
    for _ in 0..3 {
        let (mut raw, welcome) = Raw::hello(&url).await;
        let id = welcome["clientId"].as_u64().unwrap();
        // Its view of the room holds the bots, none of them under its own id.
        raw.send(r#"{"type":"subscribe","room":"pr:bots"}"#).await;
        let snapshot = raw.until("snapshot").await;
        let ids: Vec<u64> = snapshot["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["clientId"].as_u64().unwrap())
            .collect();
        println!("  websocket client got {id}; the room holds {ids:?}");
        assert!(!chosen.contains(&id), "a REST id was handed out: {id}");
        assert!(!ids.contains(&id), "inherited an entry: {snapshot}");
        given.push(id);
    }
    // One the server assigns over REST is new too.
    let (status, body) = server.http(
        "POST",
        "/v1/rooms/pr%3Abots/heartbeat",
        Some(r#"{"data":"assigned","ttlMs":600000}"#),
    );
    assert_eq!(status, 200, "{body}");
    let assigned = serde_json::from_str::<Value>(&body).unwrap()["clientId"]
        .as_u64()
        .unwrap();
    assert!(!chosen.contains(&assigned) && !given.contains(&assigned));

    // The reservation survives a crash.
    server.kill9_and_restart();
    let (_raw, welcome) = Raw::hello(&url).await;
    let id = welcome["clientId"].as_u64().unwrap();
    println!("  after kill -9: websocket client got {id}");
    assert!(!chosen.contains(&id) && !given.contains(&id) && id != assigned);

    // An id far past what the server hands out cannot be chosen (it would use up the
    // id space); ids outside this server's space (another node's) can.
    let (status, body) = server.http(
        "POST",
        "/v1/rooms/pr%3Abots/heartbeat",
        Some(r#"{"data":"far","ttlMs":600000,"clientId":4294967296}"#),
    );
    println!("  clientId 2^32 -> {status} {body}");
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "bad_request"
    );
    let other_node = (1u64 << 40) + 7;
    let (status, body) = server.http(
        "POST",
        "/v1/rooms/pr%3Abots/heartbeat",
        Some(&format!(
            r#"{{"data":"node 1","ttlMs":600000,"clientId":{other_node}}}"#
        )),
    );
    assert_eq!(status, 200, "{body}");
}

// ---- Item 9c: `rollcall token --private-key` with SEC1 keys ----

/// `rollcall token --private-key FILE --sub bot --admin`: the token, or the error.
fn mint_with(dir: &Path, pem: &str) -> Result<String, String> {
    let key = dir.join("key.pem");
    std::fs::write(&key, pem).unwrap();
    let output = Command::new(binary())
        .arg("token")
        .arg("--private-key")
        .arg(&key)
        .args(["--sub", "bot", "--admin"])
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("run rollcall token");
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).unwrap().trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[tokio::test]
async fn rollcall_token_accepts_sec1_ec_keys_and_explains_unsupported_ones() {
    let dir = tempfile::tempdir().unwrap();
    for (name, private, public) in [
        ("SEC1 (BEGIN EC PRIVATE KEY)", EC_SEC1, EC_PUBLIC),
        ("PKCS#8 (BEGIN PRIVATE KEY)", EC_PRIVATE, EC_PUBLIC),
        (
            "SEC1 after EC PARAMETERS (openssl ecparam -genkey)",
            EC_SEC1_WITH_PARAMETERS,
            EC_WITH_PARAMETERS_PUBLIC,
        ),
    ] {
        let token = mint_with(dir.path(), private)
            .unwrap_or_else(|e| panic!("{name}: rollcall token refused the key: {e}"));
        let public_key = dir.path().join("key.pub");
        std::fs::write(&public_key, public).unwrap();
        let server = Server::launch()
            .arg("--auth-public-key")
            .arg(public_key.display().to_string())
            .in_process();
        let answer = hello(&server.ws_url(), &token)
            .await
            .map(|(_, w)| w["type"].clone());
        println!("  {name:<52} -> {answer:?}");
        assert_eq!(answer, Ok(json!("welcome")), "{name}");
    }

    // Keys it cannot use are refused with a message that says what it needs.
    for (name, pem, says) in [
        ("P-384 EC key", P384_SEC1, "P-256"),
        ("Ed25519 key", ED25519, "Ed25519"),
        ("a public key", EC_PUBLIC, "public key"),
        (
            "encrypted PKCS#8",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            "encrypted",
        ),
        ("not PEM", "just some text\n", "PEM"),
    ] {
        let error = mint_with(dir.path(), pem).expect_err(name);
        let first = error.lines().next().unwrap_or_default();
        println!("  {name:<20} -> {first}");
        assert!(error.contains(says), "{name}: {error}");
        assert!(!error.contains("InvalidKeyFormat"), "{name}: {error}");
    }
}
