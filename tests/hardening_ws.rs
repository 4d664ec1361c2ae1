//! Hardening of the WebSocket path (issue 19), end to end against real servers (the
//! binary where a test kills it or reads its CPU time, in-process otherwise): an
//! acknowledged `leave` survives kill -9, invalid and forbidden requests count
//! against the rate limit, empty continuation frames are capped, `data` that standard
//! JSON parsers refuse is refused (WebSocket and REST), expired entries stop counting
//! toward `too_many_rooms`, and invalid UTF-8 and protocol violations are answered
//! with a close frame (1007, 1002). Each test prints its figures (`cargo test --test
//! hardening_ws -- --nocapture`); `docs/security.md` and `docs/reliability.md` list
//! them.

use std::io::Write as _;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rollcall_tests::jwt::{SECRET, SecretFile, hs256, now_s};
use rollcall_tests::{Raw, RawEvent, Server, http_with, wire};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Reads until the ack or error of `reference`, skipping other messages.
async fn answer_to(raw: &mut Raw, reference: u64) -> Value {
    loop {
        let value = raw.json().await;
        if value["ref"] == reference && (value["type"] == "ack" || value["type"] == "error") {
            return value;
        }
    }
}

// ---- Item 2: acks never pass an earlier write's durability ----

#[tokio::test]
async fn acked_leave_survives_kill9() {
    const ROUNDS: usize = 8;
    let mut server = Server::launch().arg("--durability").arg("flush").start();
    let mut lost = 0;
    let mut out_of_order = 0;
    for round in 0..ROUNDS {
        let room = format!("leave-{round}");
        let (mut raw, _) = Raw::hello(&server.ws_url()).await;
        raw.send(
            &json!({"type": "heartbeat", "room": room, "data": round, "ttlMs": 600_000, "ref": 1})
                .to_string(),
        )
        .await;
        assert_eq!(answer_to(&mut raw, 1).await["type"], "ack");
        // Both leaves in one write: the second finds the entry already gone in memory.
        for reference in [2, 3] {
            let leave = json!({"type": "leave", "room": room, "ref": reference});
            raw.socket
                .feed(Message::Text(leave.to_string().into()))
                .await
                .expect("feed");
        }
        raw.socket.flush().await.expect("flush");
        let mut acks = Vec::new();
        while !acks.contains(&3) {
            let value = raw.json().await;
            assert_eq!(value["type"], "ack", "{value}");
            acks.push(value["ref"].as_u64().expect("ref"));
        }
        // SIGKILL the moment the last ack arrives.
        server.kill9();
        if acks != [2, 3] {
            out_of_order += 1;
        }
        drop(raw);
        server.restart();
        let entries = server.get_json(&format!("/v1/rooms/{room}"))["entries"].clone();
        if entries.as_array().is_some_and(|e| !e.is_empty()) {
            lost += 1;
        }
    }
    println!(
        "figure: acked leave after kill -9: {lost} of {ROUNDS} rounds had the entry back, \
         {out_of_order} had the acks out of order"
    );
    assert_eq!(out_of_order, 0, "an ack passed an earlier one");
    assert_eq!(lost, 0, "an acknowledged leave was lost");
}

// ---- Item 4: every message counts against the rate limit ----

/// Sends `count` copies of `message` as fast as the socket takes them (stopping when
/// the server closes) while counting answers; returns (answers, close code).
async fn flood(raw: Raw, message: &str, count: usize) -> (usize, Option<u16>) {
    let (mut sink, mut stream) = raw.socket.split();
    let message = message.to_owned();
    let writer = tokio::spawn(async move {
        for _ in 0..count {
            if sink
                .feed(Message::Text(message.clone().into()))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = sink.flush().await;
        // Keep the sink open until the reader is done.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let mut answers = 0;
    let mut code = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => {
                answers += 1;
                if answers >= count {
                    break;
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                code = Some(frame.map_or(1005, |f| u16::from(f.code)));
                break;
            }
            Ok(Some(Ok(_))) => {}
            // Quiet for 5 s with the flood answered, or the stream ended.
            Ok(Some(Err(_)) | None) | Err(_) => break,
        }
    }
    writer.abort();
    (answers, code)
}

#[tokio::test]
async fn invalid_messages_count_against_the_rate_limit() {
    const COUNT: usize = 20_000;
    let server = Server::in_process();
    let (raw, _) = Raw::hello(&server.ws_url()).await;
    let started = Instant::now();
    let (answers, code) = flood(raw, "nope", COUNT).await;
    println!(
        "figure: {COUNT} invalid messages: {answers} answers, close {code:?} after {:?}",
        started.elapsed()
    );
    assert_eq!(
        code,
        Some(4006),
        "a flood of invalid messages must be closed"
    );
    assert!(answers < 1_000, "{answers} answers to a flood");

    // Binary messages count too.
    let (mut raw, _) = Raw::hello(&server.ws_url()).await;
    let mut answers = 0;
    let code = loop {
        if raw
            .socket
            .send(Message::Binary(vec![1, 2, 3].into()))
            .await
            .is_err()
        {
            break None;
        }
        match raw.socket.next().await {
            Some(Ok(Message::Text(_))) => answers += 1,
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            _ => break None,
        }
        assert!(answers < COUNT, "binary messages are never closed");
    };
    println!("figure: binary messages: {answers} answers, close {code:?}");
    assert_eq!(code, Some(4006));

    // A bystander is still served.
    let (mut bystander, _) = Raw::hello(&server.ws_url()).await;
    bystander.send(r#"{"type":"ping","ref":1}"#).await;
    assert_eq!(bystander.json().await["type"], "pong");
}

fn token(read: &[&str], write: &[&str]) -> String {
    let exp = now_s() + 3_600;
    hs256(&json!({"sub": "mallory", "exp": exp, "rooms": {"read": read, "write": write}}))
}

#[tokio::test]
async fn forbidden_requests_count_against_the_rate_limit() {
    const COUNT: usize = 20_000;
    let secret = SecretFile::holding(&format!("{SECRET}\n"));
    let server = Server::launch()
        .arg("--auth-secret-file")
        .arg(secret.path.display().to_string())
        .in_process();
    let hello = json!({"type": "hello", "token": token(&["own:*"], &["own:*"])});
    for (what, message) in [
        (
            "heartbeats",
            r#"{"type":"heartbeat","room":"other","data":1,"ttlMs":1000}"#,
        ),
        ("subscribes", r#"{"type":"subscribe","room":"other"}"#),
        ("leaves", r#"{"type":"leave","room":"other"}"#),
    ] {
        let (raw, first) = Raw::hello_with(&server.ws_url(), &hello).await;
        assert!(
            matches!(&first, RawEvent::Json(v) if v["type"] == "welcome"),
            "{first:?}"
        );
        let started = Instant::now();
        let (answers, code) = flood(raw, message, COUNT).await;
        println!(
            "figure: {COUNT} forbidden {what}: {answers} answers, close {code:?} after {:?}",
            started.elapsed()
        );
        assert_eq!(
            code,
            Some(4006),
            "a flood of forbidden {what} must be closed"
        );
        assert!(answers < 1_000, "{answers} answers to forbidden {what}");
    }
}

// ---- Item 5: frames, not only messages, are limited ----

#[test]
fn empty_continuation_frames_are_limited() {
    const PER_CHUNK: usize = 1_000;
    let server = Server::start();
    let stream = wire::hello(server.addr).expect("hello");
    let cpu_before = server.cpu_time();
    // A text frame without FIN, then up to 2 million empty continuation frames.
    let chunks = (0..2_000).map(|batch| {
        let mut out = Vec::with_capacity(PER_CHUNK * 6 + 8);
        if batch == 0 {
            out.extend_from_slice(&wire::frame(wire::TEXT, false, b"{"));
        }
        for _ in 0..PER_CHUNK {
            out.extend_from_slice(&wire::header(wire::CONTINUATION, false, 0));
        }
        out
    });
    let started = Instant::now();
    let (written, code, _) =
        wire::write_until_closed(stream, chunks, |mut s| wire::read_close(&mut s));
    println!(
        "figure: empty continuation frames: closed {code:?} after {:?}, {written} bytes (~{} frames) \
         written, server CPU {:?}",
        started.elapsed(),
        written / 6,
        server.cpu_time().saturating_sub(cpu_before)
    );
    assert_eq!(
        code,
        Some(1009),
        "endless fragments must be closed with 1009"
    );

    // Messages under the fragment cap are each counted as a message: a flood of them
    // is closed 4006.
    let stream = wire::hello(server.addr).expect("hello");
    let message = {
        let mut out = wire::frame(wire::TEXT, false, b"{");
        for _ in 0..62 {
            out.extend_from_slice(&wire::header(wire::CONTINUATION, false, 0));
        }
        out.extend_from_slice(&wire::frame(wire::CONTINUATION, true, b"}"));
        out
    };
    let chunks = std::iter::repeat_n(message, 100_000);
    let (_, (answers, code), _) = wire::write_until_closed(stream, chunks, |mut s| {
        let mut answers = 0;
        loop {
            match wire::read_frame(&mut s) {
                Ok((wire::TEXT, _)) => answers += 1,
                Ok((wire::CLOSE, payload)) if payload.len() >= 2 => {
                    break (answers, Some(u16::from_be_bytes([payload[0], payload[1]])));
                }
                Ok(_) => {}
                Err(_) => break (answers, None),
            }
        }
    });
    println!("figure: messages of 64 frames each: {answers} answers, close {code:?}");
    assert_eq!(code, Some(4006));
    assert!(answers < 1_000, "{answers} answers");
}

// ---- Item 6: data every JSON parser reads alike ----

#[tokio::test]
async fn data_json_parsers_refuse_is_refused() {
    let server = Server::in_process();
    let (mut raw, _) = Raw::hello(&server.ws_url()).await;
    let deep = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
    let refused = [
        r#""\ud800""#.to_owned(),
        r#"{"name":"x\udc00y"}"#.to_owned(),
        "1e999999".to_owned(),
        "-1e400".to_owned(),
        deep(65),
        deep(126),
    ];
    for (i, data) in refused.iter().enumerate() {
        let reference = i as u64 + 1;
        raw.send(&format!(
            r#"{{"type":"heartbeat","room":"d","data":{data},"ttlMs":60000,"ref":{reference}}}"#
        ))
        .await;
        let answer = answer_to(&mut raw, reference).await;
        assert_eq!(answer["code"], "invalid_data", "{data}: {answer}");
        let (status, body) = server.http(
            "POST",
            "/v1/rooms/d/heartbeat",
            Some(&format!(r#"{{"data":{data},"ttlMs":60000}}"#)),
        );
        assert_eq!(status, 400, "REST {data}: {body}");
        assert!(body.contains("invalid_data"), "REST {data}: {body}");
    }
    let accepted = [r#""\ud83d\ude00""#.to_owned(), "1e308".to_owned(), deep(64)];
    for (i, data) in accepted.iter().enumerate() {
        let reference = 100 + i as u64;
        raw.send(&format!(
            r#"{{"type":"heartbeat","room":"d","data":{data},"ttlMs":60000,"ref":{reference}}}"#
        ))
        .await;
        let answer = answer_to(&mut raw, reference).await;
        assert_eq!(answer["type"], "ack", "{data}: {answer}");
    }
    // Nothing refused reached the room; what is there parses with serde_json.
    let room = server.get_json("/v1/rooms/d");
    assert_eq!(room["entries"].as_array().map(Vec::len), Some(1));
    println!(
        "figure: refused {} kinds of data on WebSocket and REST",
        refused.len()
    );
}

// ---- Item 7: expired entries stop counting toward too_many_rooms ----

#[tokio::test]
async fn expired_entries_stop_counting_toward_too_many_rooms() {
    const ROOMS: usize = 128;
    let server = Server::in_process();
    let (mut watcher, _) = Raw::hello(&server.ws_url()).await;
    let last = format!("room-{}", ROOMS - 1);
    watcher
        .send(&json!({"type": "subscribe", "room": last, "ref": 1}).to_string())
        .await;
    assert_eq!(answer_to(&mut watcher, 1).await["type"], "ack");

    let (mut raw, welcome) = Raw::hello(&server.ws_url()).await;
    // All in one write, so the room limit is reached well within the TTL.
    for i in 0..ROOMS {
        let heartbeat = json!({"type": "heartbeat", "room": format!("room-{i}"), "ttlMs": 1_000});
        raw.socket
            .feed(Message::Text(heartbeat.to_string().into()))
            .await
            .expect("feed");
    }
    let one_more = r#"{"type":"heartbeat","room":"one-more","ttlMs":1000,"ref":1000}"#;
    raw.socket
        .feed(Message::Text(one_more.into()))
        .await
        .expect("feed");
    raw.socket.flush().await.expect("flush");
    assert_eq!(answer_to(&mut raw, 1000).await["code"], "too_many_rooms");

    // The last entry's expiry, seen by the watcher: every earlier one expired too.
    let started = Instant::now();
    let client = welcome["clientId"].clone();
    loop {
        let value = watcher.json().await;
        let expired = value["type"] == "changes"
            && value["changes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["op"] == "expire" && c["clientId"] == client);
        if expired {
            break;
        }
    }
    println!("figure: entries expired after {:?}", started.elapsed());
    raw.send(r#"{"type":"heartbeat","room":"one-more","ttlMs":500,"ref":1001}"#)
        .await;
    let answer = answer_to(&mut raw, 1001).await;
    assert_eq!(answer["type"], "ack", "{answer}");
    // Rooms can be subscribed again too.
    raw.send(r#"{"type":"subscribe","room":"room-0","ref":1002}"#)
        .await;
    assert_eq!(answer_to(&mut raw, 1002).await["type"], "ack");
}

// ---- Item 9: a close frame with the right code ----

fn close_code_after(bytes: &[u8]) -> Option<u16> {
    let server = Server::in_process();
    let mut stream: TcpStream = wire::hello(server.addr).expect("hello");
    stream.write_all(bytes).expect("write");
    wire::read_close(&mut stream)
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let code = close_code_after(&wire::frame(wire::TEXT, true, b"{\"type\":\"\xff\xfe\"}"));
    println!("figure: invalid UTF-8 in one frame: close {code:?}");
    assert_eq!(code, Some(1007));
    // Split across fragments.
    let mut bytes = wire::frame(wire::TEXT, false, b"{\"a\":\"\xe2");
    bytes.extend_from_slice(&wire::frame(wire::CONTINUATION, true, b"(\"}"));
    let code = close_code_after(&bytes);
    println!("figure: invalid UTF-8 across fragments: close {code:?}");
    assert_eq!(code, Some(1007));
}

#[test]
fn protocol_violations_close_with_1002() {
    let unmasked = vec![0x81, 0x02, b'{', b'}'];
    let mut reserved = wire::frame(wire::TEXT, true, b"{}");
    reserved[0] |= 0x40;
    let cases = [
        (
            "continuation without a start",
            wire::frame(wire::CONTINUATION, true, b"x"),
        ),
        ("unmasked frame", unmasked),
        ("reserved bit", reserved),
        ("fragmented ping", wire::frame(wire::PING, false, b"")),
        ("unknown opcode", wire::frame(0x3, true, b"")),
    ];
    for (what, bytes) in cases {
        let code = close_code_after(&bytes);
        println!("figure: {what}: close {code:?}");
        assert_eq!(code, Some(1002), "{what}");
    }
    // Before hello too.
    let server = Server::in_process();
    let mut stream = wire::connect_upgraded(server.addr).expect("upgrade");
    stream
        .write_all(&wire::frame(wire::CONTINUATION, true, b"x"))
        .expect("write");
    assert_eq!(wire::read_close(&mut stream), Some(1002));
    let (status, _) = http_with(server.addr, "GET", "/healthz", &[], None).expect("healthz");
    assert_eq!(status, 200);
}
