//! `broadcast`: ephemeral messages to a room's current subscribers, never stored.

use rollcall_tests::jwt::hs256;
use rollcall_tests::{Raw, RawEvent, Server};
use serde_json::json;

async fn subscribed(server: &Server, room: &str) -> (Raw, u64) {
    let (mut raw, welcome) = Raw::hello(&server.ws_url()).await;
    raw.send(&json!({"type": "subscribe", "room": room, "ref": 1}).to_string())
        .await;
    raw.until("ack").await;
    (raw, welcome["clientId"].as_u64().unwrap())
}

#[tokio::test]
async fn a_broadcast_reaches_the_rooms_subscribers_but_not_the_sender_and_is_not_stored() {
    let server = Server::start();
    let (mut sender, sender_id) = subscribed(&server, "bc:a").await;
    let (mut first, _) = subscribed(&server, "bc:a").await;
    let (mut second, _) = subscribed(&server, "bc:a").await;
    let (mut elsewhere, _) = subscribed(&server, "bc:other").await;

    sender
        .send(r#"{"type":"broadcast","room":"bc:a","data":{"emoji":"🎉"},"ref":7}"#)
        .await;
    // The sender gets its ack, and never its own broadcast.
    let before_ack = sender.through("ack").await;
    assert_eq!(before_ack.last().unwrap()["ref"], 7);
    assert!(
        before_ack.iter().all(|m| m["type"] != "broadcast"),
        "{before_ack:?}"
    );
    for raw in [&mut first, &mut second] {
        let message = raw.until("broadcast").await;
        assert_eq!(message["room"], "bc:a");
        assert_eq!(message["clientId"], sender_id);
        assert_eq!(message["data"], json!({"emoji": "🎉"}));
        assert!(message["serverTimeMs"].as_u64().is_some());
        assert!(message.get("userId").is_none(), "auth is off: {message}");
    }
    // Another room's subscriber gets nothing (it was queued, if at all, before this
    // pong's answer).
    elsewhere.send(r#"{"type":"ping","ref":9}"#).await;
    let seen = elsewhere.through("pong").await;
    assert!(seen.iter().all(|m| m["type"] != "broadcast"), "{seen:?}");

    // Never stored: the room has no entries, and no change was sent.
    let room = server.get_json("/v1/rooms/bc%3Aa");
    assert_eq!(room["entries"], json!([]));
    assert!(server.metric("rollcall_broadcasts_total") >= 1.0);

    // A broadcast to a room without subscribers is acknowledged and goes nowhere.
    sender
        .send(r#"{"type":"broadcast","room":"bc:empty","data":1,"ref":8}"#)
        .await;
    assert_eq!(sender.until("ack").await["ref"], 8);
}

#[tokio::test]
async fn broadcasts_are_size_and_rate_limited() {
    let server = Server::start();
    let (mut sender, _) = subscribed(&server, "bc:l").await;
    let big = json!({"type": "broadcast", "room": "bc:l", "data": "x".repeat(5_000), "ref": 1});
    sender.send(&big.to_string()).await;
    let error = sender.until("error").await;
    assert_eq!(error["code"], "data_too_large");
    assert_eq!(error["ref"], 1);
    let invalid = r#"{"type":"broadcast","room":"","data":1,"ref":2}"#;
    sender.send(invalid).await;
    assert_eq!(sender.until("error").await["code"], "invalid_room");

    // 20 a second, 40 saved up: of 60 sent at once, some are refused.
    for i in 0..60 {
        sender
            .send(
                &json!({"type": "broadcast", "room": "bc:l", "data": i, "ref": 100 + i})
                    .to_string(),
            )
            .await;
    }
    sender.send(r#"{"type":"ping","ref":1000}"#).await;
    let answers = sender.through("pong").await;
    let limited = answers
        .iter()
        .filter(|m| m["type"] == "error" && m["code"] == "rate_limited")
        .count();
    let acked = answers.iter().filter(|m| m["type"] == "ack").count();
    assert_eq!(limited + acked, 60, "{answers:?}");
    assert!((15..=25).contains(&limited), "{limited} refused of 60");
}

fn token(sub: &str, read: &[&str], write: &[&str]) -> String {
    hs256(&json!({"sub": sub, "exp": 4_000_000_000_u64, "rooms": {"read": read, "write": write}}))
}

#[tokio::test]
async fn broadcasting_needs_write_permission_and_carries_the_user() {
    let server = Server::launch().auth_secret().start();
    let hello = |token: String| json!({"type": "hello", "token": token});
    let (mut watcher, first) =
        Raw::hello_with(&server.ws_url(), &hello(token("watcher", &["bc:*"], &[]))).await;
    assert!(
        matches!(first, RawEvent::Json(ref w) if w["type"] == "welcome"),
        "{first:?}"
    );
    watcher
        .send(r#"{"type":"subscribe","room":"bc:auth","ref":1}"#)
        .await;
    watcher.until("ack").await;

    // Read-only: forbidden.
    watcher
        .send(r#"{"type":"broadcast","room":"bc:auth","data":1,"ref":2}"#)
        .await;
    let error = watcher.until("error").await;
    assert_eq!(error["code"], "forbidden");
    assert_eq!(error["ref"], 2);

    let (mut writer, first) =
        Raw::hello_with(&server.ws_url(), &hello(token("alice", &[], &["bc:*"]))).await;
    assert!(
        matches!(first, RawEvent::Json(ref w) if w["type"] == "welcome"),
        "{first:?}"
    );
    writer
        .send(r#"{"type":"broadcast","room":"bc:auth","data":"hi","ref":3}"#)
        .await;
    assert_eq!(writer.until("ack").await["ref"], 3);
    let message = watcher.until("broadcast").await;
    assert_eq!(message["userId"], "alice");
    assert_eq!(message["data"], "hi");
}
