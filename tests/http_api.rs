//! The REST API: rooms, entries, server-side heartbeats and removals, health, metrics.

use std::time::Duration;

use rollcall_client::Client;
use rollcall_tests::Server;
use serde_json::{Value, json};

#[tokio::test]
async fn rest_heartbeat_is_seen_over_websocket_and_can_be_deleted() {
    let server = Server::in_process();
    let watcher = Client::connect(&server.ws_url()).await.unwrap();
    let room = watcher.presence("pr:bots");

    let (status, body) = server.http(
        "POST",
        "/v1/rooms/pr%3Abots/heartbeat",
        Some(r#"{"data":{"bot":"indexer"},"ttlMs":30000}"#),
    );
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let id = answer["clientId"].as_u64().unwrap();
    let expires = answer["expiresAtMs"].as_u64().unwrap();

    let seen = room
        .wait_until(Duration::from_secs(10), |e| e.contains_key(&id))
        .await
        .unwrap();
    assert_eq!(seen[&id].data, json!({"bot": "indexer"}));
    assert_eq!(seen[&id].expires_at_ms, expires);

    // With an explicit client id, the same entry is refreshed.
    let (status, body) = server.http(
        "POST",
        "/v1/rooms/pr%3Abots/heartbeat",
        Some(&format!(
            r#"{{"data":"again","ttlMs":30000,"clientId":{id}}}"#
        )),
    );
    assert_eq!(status, 200, "{body}");
    let listed = server.get_json("/v1/rooms/pr%3Abots");
    assert_eq!(listed["room"], "pr:bots");
    assert_eq!(listed["entries"].as_array().unwrap().len(), 1);
    assert_eq!(listed["entries"][0]["data"], "again");

    let (status, _) = server.http("DELETE", &format!("/v1/rooms/pr%3Abots/entries/{id}"), None);
    assert_eq!(status, 204);
    room.wait_until(
        Duration::from_secs(10),
        std::collections::BTreeMap::is_empty,
    )
    .await
    .unwrap();
    // Deleting again is still 204.
    let (status, _) = server.http("DELETE", &format!("/v1/rooms/pr%3Abots/entries/{id}"), None);
    assert_eq!(status, 204);
}

#[tokio::test]
async fn rest_errors_use_the_protocol_codes() {
    let server = Server::in_process();
    let cases = [
        (
            "POST",
            "/v1/rooms/r/heartbeat",
            r#"{"ttlMs":0}"#,
            400,
            "invalid_ttl",
        ),
        (
            "POST",
            "/v1/rooms/r/heartbeat",
            r#"{"ttlMs":1.5}"#,
            400,
            "invalid_ttl",
        ),
        ("POST", "/v1/rooms/r/heartbeat", "nope", 400, "bad_request"),
        (
            "POST",
            "/v1/rooms/r/heartbeat",
            r#"{"ttlMs":10,"clientId":0}"#,
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/rooms/a%07b/heartbeat",
            r#"{"ttlMs":10}"#,
            400,
            "invalid_room",
        ),
        ("DELETE", "/v1/rooms/r/entries/abc", "", 400, "bad_request"),
        ("GET", "/v1/nothing-here", "", 404, "not_found"),
    ];
    for (method, path, body, status, code) in cases {
        let (got, answer) = server.http(method, path, Some(body));
        assert_eq!(got, status, "{method} {path}: {answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["error"], code, "{method} {path}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let big = format!(r#"{{"data":"{}","ttlMs":10}}"#, "x".repeat(5_000));
    let (status, answer) = server.http("POST", "/v1/rooms/r/heartbeat", Some(&big));
    assert_eq!(status, 413, "{answer}");
    let long = "r".repeat(257);
    let (status, _) = server.http("GET", &format!("/v1/rooms/{long}"), None);
    assert_eq!(status, 400);
}

#[tokio::test]
async fn rooms_are_listed_with_counts_and_paginated() {
    let server = Server::in_process();
    for room in 0..7 {
        for client in 1..=(room + 1) {
            let (status, body) = server.http(
                "POST",
                &format!("/v1/rooms/pr%3Aroom-{room}/heartbeat"),
                Some(&format!(
                    r#"{{"data":null,"ttlMs":60000,"clientId":{}}}"#,
                    room * 100 + client
                )),
            );
            assert_eq!(status, 200, "{body}");
        }
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(after) => format!("/v1/rooms?limit=3&after={}", after.replace(':', "%3A")),
            None => "/v1/rooms?limit=3".to_string(),
        };
        let page = server.get_json(&path);
        for room in page["rooms"].as_array().unwrap() {
            seen.push((
                room["room"].as_str().unwrap().to_owned(),
                room["entries"].as_u64().unwrap(),
            ));
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    let expected: Vec<(String, u64)> = (0..7).map(|r| (format!("pr:room-{r}"), r + 1)).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn health_and_metrics() {
    // A process of its own: the metrics recorder is one per process.
    let server = Server::start();
    assert_eq!(server.get_json("/healthz"), json!({"status": "ok"}));
    let client = Client::connect(&server.ws_url()).await.unwrap();
    let room = client.presence("pr:m");
    room.heartbeat_acked(json!(1), Duration::from_secs(60))
        .await
        .unwrap();
    let (status, body) = server.http("GET", "/metrics", None);
    assert_eq!(status, 200);
    for name in [
        "rollcall_connections",
        "rollcall_rooms",
        "rollcall_live_entries",
        "rollcall_heartbeats_total",
        "rollcall_fanout_frames_total",
        "rollcall_fanout_bytes_total",
        "rollcall_log_group_events",
        "rollcall_log_flush_seconds",
        "rollcall_replay_seconds",
    ] {
        assert!(body.contains(name), "missing {name} in /metrics");
    }
    assert!(server.metric("rollcall_heartbeats_total") >= 1.0);
    assert!(server.metric("rollcall_connections") >= 1.0);
    // What reached the client was counted (a batch the socket takes at once too). The
    // count follows the write, so it may trail the client's read by a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.metric("rollcall_fanout_frames_total") < 1.0
        || server.metric("rollcall_fanout_bytes_total") < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the frames written were not counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
