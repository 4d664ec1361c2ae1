//! Every row of the limits table (SPEC §3): each bad input gets its own answer, the
//! connection survives where the table says so, and nobody else's state is touched.

use std::time::{Duration, Instant};

use rollcall_tests::{Raw, RawEvent, Server};
use serde_json::{Value, json};

/// A bystander with an entry and a subscription, to prove others are unaffected.
struct Bystander {
    raw: Raw,
    id: u64,
}

impl Bystander {
    async fn join(server: &Server) -> Bystander {
        let (mut raw, welcome) = Raw::hello(&server.ws_url()).await;
        raw.send(r#"{"type":"heartbeat","room":"pr:calm","data":"calm","ttlMs":600000,"ref":1}"#)
            .await;
        assert_eq!(raw.until("ack").await["ref"], 1);
        raw.send(r#"{"type":"subscribe","room":"pr:calm"}"#).await;
        raw.until("snapshot").await;
        Bystander {
            raw,
            id: welcome["clientId"].as_u64().unwrap(),
        }
    }

    /// Its entry is intact and its connection still delivers changes.
    async fn unaffected(&mut self, server: &Server) {
        let body = server.get_json("/v1/rooms/pr%3Acalm");
        let entries = body["entries"].as_array().unwrap();
        assert!(
            entries
                .iter()
                .any(|e| e["clientId"] == self.id && e["data"] == "calm"),
            "{body}"
        );
        self.raw
            .send(r#"{"type":"heartbeat","room":"pr:calm","data":"calm","ttlMs":600000}"#)
            .await;
        let changes = self.raw.until("changes").await;
        assert_eq!(changes["changes"][0]["clientId"], self.id);
    }
}

/// The connection still answers and still accepts a valid heartbeat.
async fn still_works(raw: &mut Raw) {
    raw.send(r#"{"type":"ping","ref":777}"#).await;
    assert_eq!(raw.until("pong").await["ref"], 777);
    raw.send(r#"{"type":"heartbeat","room":"pr:ok","data":1,"ttlMs":1000,"ref":778}"#)
        .await;
    assert_eq!(raw.until("ack").await["ref"], 778);
}

async fn expect_error(raw: &mut Raw, request: &str, code: &str) -> Value {
    raw.send(request).await;
    let error = raw.until("error").await;
    assert_eq!(error["code"], code, "{request} -> {error}");
    assert!(!error["message"].as_str().unwrap().is_empty());
    error
}

#[tokio::test]
async fn welcome_announces_the_default_limits() {
    let server = Server::in_process();
    let (_, welcome) = Raw::hello(&server.ws_url()).await;
    assert_eq!(
        welcome["limits"],
        json!({
            "maxMessageBytes": 65_536,
            "maxDataBytes": 4096,
            "maxTtlMs": 3_600_000,
            "maxRoomsPerConnection": 128,
            "maxEntriesPerRoom": 10_000,
            "heartbeatsPerSecond": 120,
            "heartbeatBurst": 240
        })
    );
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let server = Server::in_process();
    let mut bystander = Bystander::join(&server).await;
    let (mut raw, _) = Raw::hello(&server.ws_url()).await;
    let big = format!(
        r#"{{"type":"heartbeat","room":"pr:big","data":"{}","ttlMs":1000}}"#,
        "x".repeat(70_000)
    );
    raw.send(&big).await;
    assert_eq!(raw.next().await, RawEvent::Closed(1009));
    bystander.unaffected(&server).await;
    assert_eq!(server.get_json("/v1/rooms/pr%3Abig")["entries"], json!([]));
}

#[tokio::test]
async fn data_too_large_ttl_room_and_malformed_keep_the_connection() {
    let server = Server::in_process();
    let mut bystander = Bystander::join(&server).await;
    let (mut raw, _) = Raw::hello(&server.ws_url()).await;

    let data = format!("\"{}\"", "d".repeat(4_095)); // 4,097 bytes of JSON
    let error = expect_error(
        &mut raw,
        &format!(r#"{{"type":"heartbeat","room":"pr:x","data":{data},"ttlMs":1000,"ref":5}}"#),
        "data_too_large",
    )
    .await;
    assert_eq!(error["ref"], 5);
    assert_eq!(error["room"], "pr:x");
    still_works(&mut raw).await;

    for ttl in ["0", "-1", "1e300", "1.5", "3600001", "\"1000\"", "null"] {
        expect_error(
            &mut raw,
            &format!(r#"{{"type":"heartbeat","room":"pr:x","data":1,"ttlMs":{ttl}}}"#),
            "invalid_ttl",
        )
        .await;
    }
    expect_error(
        &mut raw,
        r#"{"type":"heartbeat","room":"pr:x","data":1}"#,
        "invalid_ttl",
    )
    .await;
    still_works(&mut raw).await;

    let long = "r".repeat(257);
    for request in [
        format!(r#"{{"type":"heartbeat","room":"{long}","data":1,"ttlMs":1000}}"#),
        format!(r#"{{"type":"subscribe","room":"{long}"}}"#),
        r#"{"type":"subscribe","room":""}"#.to_string(),
        r#"{"type":"subscribe","room":"tab\there"}"#.to_string(),
        r#"{"type":"leave"}"#.to_string(),
    ] {
        expect_error(&mut raw, &request, "invalid_room").await;
    }
    still_works(&mut raw).await;

    for request in [
        "not json",
        "[1,2]",
        "{}",
        r#"{"type":"teleport"}"#,
        r#"{"type":"ping","ref":"seven"}"#,
        r#"{"type":"hello"}"#,
    ] {
        expect_error(&mut raw, request, "bad_request").await;
    }
    raw.socket
        .send(tokio_tungstenite::tungstenite::Message::Binary(
            vec![1, 2, 3].into(),
        ))
        .await
        .unwrap();
    assert_eq!(raw.until("error").await["code"], "bad_request");
    still_works(&mut raw).await;

    // None of it reached the room.
    assert_eq!(server.get_json("/v1/rooms/pr%3Ax")["entries"], json!([]));
    bystander.unaffected(&server).await;
}

use futures_util::SinkExt as _;

#[tokio::test]
async fn too_many_rooms_per_connection() {
    let server = Server::in_process();
    let mut bystander = Bystander::join(&server).await;
    let (mut raw, _) = Raw::hello(&server.ws_url()).await;
    for i in 0..128 {
        raw.send(&format!(
            r#"{{"type":"subscribe","room":"pr:many-{i}","ref":{i}}}"#
        ))
        .await;
    }
    for _ in 0..128 {
        raw.until("ack").await;
    }
    let error = expect_error(
        &mut raw,
        r#"{"type":"heartbeat","room":"pr:one-more","data":1,"ttlMs":1000,"ref":999}"#,
        "too_many_rooms",
    )
    .await;
    assert_eq!(error["ref"], 999);
    expect_error(
        &mut raw,
        r#"{"type":"subscribe","room":"pr:one-more"}"#,
        "too_many_rooms",
    )
    .await;
    // Rooms already in use still work; freeing one makes room for another.
    raw.send(r#"{"type":"heartbeat","room":"pr:many-0","data":1,"ttlMs":1000,"ref":1000}"#)
        .await;
    assert_eq!(raw.until("ack").await["ref"], 1000);
    raw.send(r#"{"type":"unsubscribe","room":"pr:many-1","ref":1001}"#)
        .await;
    assert_eq!(raw.until("ack").await["ref"], 1001);
    raw.send(r#"{"type":"subscribe","room":"pr:one-more","ref":1002}"#)
        .await;
    assert_eq!(raw.until("snapshot").await["room"], "pr:one-more");
    bystander.unaffected(&server).await;
}

#[tokio::test]
async fn room_full() {
    let server = Server::launch()
        .arg("--max-entries-per-room")
        .arg("5")
        .in_process();
    let mut bystander = Bystander::join(&server).await;
    let mut members = Vec::new();
    for i in 0..5 {
        let (mut raw, _) = Raw::hello(&server.ws_url()).await;
        raw.send(&format!(
            r#"{{"type":"heartbeat","room":"pr:full","data":{i},"ttlMs":60000,"ref":1}}"#
        ))
        .await;
        assert_eq!(raw.until("ack").await["ref"], 1);
        members.push(raw);
    }
    let (mut late, _) = Raw::hello(&server.ws_url()).await;
    let error = expect_error(
        &mut late,
        r#"{"type":"heartbeat","room":"pr:full","data":"late","ttlMs":60000,"ref":2}"#,
        "room_full",
    )
    .await;
    assert_eq!(error["room"], "pr:full");
    // Members can still refresh their entries; the room holds exactly five.
    members[0]
        .send(r#"{"type":"heartbeat","room":"pr:full","data":"again","ttlMs":60000,"ref":3}"#)
        .await;
    assert_eq!(members[0].until("ack").await["ref"], 3);
    let body = server.get_json("/v1/rooms/pr%3Afull");
    assert_eq!(body["entries"].as_array().unwrap().len(), 5);
    // Once someone leaves, the late client gets in.
    members[1]
        .send(r#"{"type":"leave","room":"pr:full","ref":4}"#)
        .await;
    assert_eq!(members[1].until("ack").await["ref"], 4);
    late.send(r#"{"type":"heartbeat","room":"pr:full","data":"late","ttlMs":60000,"ref":5}"#)
        .await;
    assert_eq!(late.until("ack").await["ref"], 5);
    still_works(&mut late).await;
    bystander.unaffected(&server).await;
}

#[tokio::test]
async fn heartbeat_rate_is_limited() {
    let server = Server::in_process();
    let mut bystander = Bystander::join(&server).await;
    let (mut raw, _) = Raw::hello(&server.ws_url()).await;
    let started = Instant::now();
    for i in 0..400 {
        raw.socket
            .feed(tokio_tungstenite::tungstenite::Message::Text(
                format!(
                    r#"{{"type":"heartbeat","room":"pr:fast","data":{i},"ttlMs":60000,"ref":{i}}}"#
                )
                .into(),
            ))
            .await
            .unwrap();
    }
    raw.socket.flush().await.unwrap();
    let (mut acked, mut limited) = (0u64, 0u64);
    while acked + limited < 400 {
        let message = raw.json().await;
        match message["type"].as_str() {
            Some("ack") => acked += 1,
            Some("error") => {
                assert_eq!(message["code"], "rate_limited");
                limited += 1;
            }
            _ => {}
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = 240.0 + 120.0 * elapsed;
    assert!(
        acked as f64 <= allowed.ceil(),
        "{acked} accepted in {elapsed:.2}s"
    );
    assert!(acked >= 240, "the burst is allowed: {acked}");
    assert!(limited > 0);
    // The bucket refills: after a pause, heartbeats are accepted again.
    tokio::time::sleep(Duration::from_millis(50)).await;
    still_works(&mut raw).await;
    bystander.unaffected(&server).await;
}

#[tokio::test]
async fn no_hello_in_time_closes_and_a_non_hello_first_message_too() {
    let server = Server::launch()
        .arg("--hello-timeout-ms")
        .arg("300")
        .in_process();
    let mut bystander = Bystander::join(&server).await;
    let mut silent = Raw::connect(&server.ws_url()).await;
    let started = Instant::now();
    assert_eq!(silent.next().await, RawEvent::Closed(4002));
    assert!(started.elapsed() >= Duration::from_millis(250));

    let mut rude = Raw::connect(&server.ws_url()).await;
    rude.send(r#"{"type":"heartbeat","room":"pr:x","data":1,"ttlMs":1000}"#)
        .await;
    assert_eq!(rude.next().await, RawEvent::Closed(4000));
    bystander.unaffected(&server).await;
}
