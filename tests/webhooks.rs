//! Webhooks against a real local HTTP receiver: signed, retried, in order, and never
//! in the way of heartbeats.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rollcall_tests::{Launch, Raw, Server};
use serde_json::{Value, json};
use tokio::net::TcpListener;

#[path = "webhook_support.rs"]
mod webhook_support;

use webhook_support::{SECRET, delivered, receiver, secret_file, verifies};

/// A server that posts its webhooks to `url`, signed with [`SECRET`].
fn posting_to(url: &str) -> Launch {
    Server::launch()
        .arg("--webhook-url")
        .arg(url)
        .file_arg("--webhook-secret-file", format!("{SECRET}\n"))
}

async fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn events_are_signed_retried_after_a_500_and_in_order() {
    let (url, received) = receiver(1).await;
    let server = posting_to(&url).start();

    let (status, body) = server.http(
        "POST",
        "/v1/rooms/wh%3Aa/heartbeat",
        Some(r#"{"data":1,"ttlMs":30000}"#),
    );
    assert_eq!(status, 200, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["clientId"]
        .as_u64()
        .unwrap();
    // A refresh is not an event.
    let refresh = format!(r#"{{"data":2,"ttlMs":30000,"clientId":{id}}}"#);
    assert_eq!(
        server
            .http("POST", "/v1/rooms/wh%3Aa/heartbeat", Some(&refresh))
            .0,
        200
    );
    let (status, _) = server.http("DELETE", &format!("/v1/rooms/wh%3Aa/entries/{id}"), None);
    assert_eq!(status, 204);

    wait_for(|| delivered(&received).len() >= 4, "four events delivered").await;
    let events = delivered(&received);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "room.occupied",
            "entry.joined",
            "entry.left",
            "room.vacated"
        ],
        "{events:?}"
    );
    for event in &events {
        assert_eq!(event["room"], "wh:a");
        assert!(
            event["id"].is_string() && event["timestampMs"].is_u64(),
            "{event}"
        );
    }
    assert_eq!(events[1]["clientId"], id);
    assert_eq!(events[2]["reason"], "leave");
    let ids: std::collections::HashSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4, "event ids are unique");

    let requests = received.lock().unwrap().clone();
    // The first POST was answered 500 and sent again, the same batch.
    assert_eq!(requests[0].status, 500);
    assert_eq!(requests[1].status, 200);
    assert_eq!(requests[0].body, requests[1].body);
    for request in &requests {
        assert!(
            request.head.starts_with("POST /hooks HTTP/1.1"),
            "{}",
            request.head
        );
        assert_eq!(
            request.header("content-type").as_deref(),
            Some("application/json")
        );
        assert!(
            verifies(request),
            "the signature does not verify: {request:?}"
        );
    }
    // A wrong secret would not verify.
    let mut forged = requests[1].clone();
    forged.body.push(' ');
    assert!(!verifies(&forged));
    assert!(server.metric("rollcall_webhook_failures_total") >= 1.0);
    assert!(server.metric("rollcall_webhook_batches_sent_total") >= 1.0);
}

#[tokio::test]
async fn a_receiver_that_never_answers_does_not_slow_heartbeats() {
    // Accepts connections and never answers: each POST waits for its 10 s timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", silent.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = silent.accept().await {
            keep.lock().unwrap().push(stream);
        }
    });
    let server = posting_to(&url).start();

    let (mut raw, _) = Raw::hello(&server.ws_url()).await;
    // The first event's POST is now stuck at the silent receiver.
    raw.send(r#"{"type":"heartbeat","room":"wh:0","data":0,"ttlMs":30000,"ref":0}"#)
        .await;
    raw.until("ack").await;
    wait_for(
        || !held.lock().unwrap().is_empty(),
        "the POST to reach the receiver",
    )
    .await;

    let started = Instant::now();
    for i in 1..=200_u64 {
        let room = format!("wh:{}", i % 50);
        raw.send(
            &json!({"type": "heartbeat", "room": room, "data": i, "ttlMs": 30000, "ref": i})
                .to_string(),
        )
        .await;
        let ack = raw.until("ack").await;
        assert_eq!(ack["ref"], i);
    }
    let took = started.elapsed();
    // The stuck POST times out after 10 s; the heartbeats never waited for it.
    assert!(
        took < Duration::from_secs(5),
        "200 heartbeats took {took:?}"
    );
}

#[test]
fn a_webhook_url_needs_a_secret_and_http() {
    let out = std::process::Command::new(rollcall_tests::binary())
        .args(["serve", "--webhook-url", "http://127.0.0.1:9/x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("webhook-secret-file"));
    let (_dir, secret) = secret_file();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(rollcall_tests::binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--webhook-url",
            "https://example.com/x",
        ])
        .args(["--webhook-secret-file", &secret])
        .arg("--data")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only http://"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_user_joins_with_their_first_tab_and_leaves_with_their_last() {
    let (url, received) = receiver(0).await;
    let server = posting_to(&url).in_process();
    let ws = server.ws_url();
    let room = "u:a";
    let beat = json!({"type": "heartbeat", "room": room, "data": {"n": 1}, "ttlMs": 30_000});
    let leave = json!({"type": "leave", "room": room});

    let mut alice_1 = Raw::joined(&ws, "alice", &beat).await;
    let mut alice_2 = Raw::joined(&ws, "alice", &beat).await;
    let mut bob = Raw::joined(&ws, "bob", &beat).await;

    // Two users; alice with both tabs.
    let users = server.get_json("/v1/rooms/u%3Aa/users");
    assert_eq!(users["room"], room, "{users}");
    assert_eq!(users["anonymousEntries"], 0, "{users}");
    let listed = users["users"].as_array().expect("users");
    assert_eq!(listed.len(), 2, "{users}");
    assert_eq!(listed[0]["userId"], "alice");
    assert_eq!(listed[0]["entries"].as_array().unwrap().len(), 2, "{users}");
    assert_eq!(listed[1]["userId"], "bob");
    assert_eq!(listed[1]["entries"].as_array().unwrap().len(), 1, "{users}");
    for entry in listed[0]["entries"].as_array().unwrap() {
        assert_eq!(entry["userId"], "alice", "{entry}");
        assert_eq!(entry["data"], json!({"n": 1}), "{entry}");
    }

    // alice closes one tab: she is still here; then the other: she left.
    alice_1.acked(leave.clone()).await;
    let users = server.get_json("/v1/rooms/u%3Aa/users");
    assert_eq!(users["users"][0]["entries"].as_array().unwrap().len(), 1);
    alice_2.acked(leave.clone()).await;
    bob.acked(leave).await;
    let users = server.get_json("/v1/rooms/u%3Aa/users");
    assert_eq!(users["users"], json!([]), "{users}");

    wait_for(
        || {
            delivered(&received)
                .iter()
                .any(|e| e["type"] == "room.vacated")
        },
        "the room vacated",
    )
    .await;
    let events = delivered(&received);
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["userId"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expected = [
        ("room.occupied", ""),
        ("user.joined", "alice"),
        ("entry.joined", "alice"),
        ("entry.joined", "alice"),
        ("user.joined", "bob"),
        ("entry.joined", "bob"),
        ("entry.left", "alice"),
        ("entry.left", "alice"),
        ("user.left", "alice"),
        ("entry.left", "bob"),
        ("user.left", "bob"),
        ("room.vacated", ""),
    ]
    .map(|(k, u)| (k.to_owned(), u.to_owned()));
    assert_eq!(seen, expected, "{events:?}");
    let left = events.iter().find(|e| e["type"] == "user.left").unwrap();
    assert_eq!(left["reason"], "leave", "{left}");
}

#[tokio::test]
async fn a_hello_with_an_empty_user_is_refused() {
    let server = Server::in_process();
    let (mut raw, first) =
        Raw::hello_with(&server.ws_url(), &json!({"type": "hello", "user": ""})).await;
    let closed = match first {
        rollcall_tests::RawEvent::Json(_) => raw.next().await,
        other => other,
    };
    assert!(
        matches!(closed, rollcall_tests::RawEvent::Closed(4000..=4999)),
        "{closed:?}"
    );
}
