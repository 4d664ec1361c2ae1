//! Sample subscriptions against the real binary: the oldest `limit` entries, kept
//! stable, and the room's counts.

use rollcall_tests::{Raw, RawEvent, Server};
use serde_json::{Value, json};

/// Says hello as `user` (an unverified claim: the server runs without auth).
async fn hello_as(url: &str, user: &str) -> Raw {
    let (raw, first) = Raw::hello_with(url, &json!({"type": "hello", "user": user})).await;
    assert!(
        matches!(&first, RawEvent::Json(w) if w["type"] == "welcome"),
        "{first:?}"
    );
    raw
}

/// Sends `message` with ref 1 and waits for its ack.
async fn acked(raw: &mut Raw, mut message: Value) {
    message["ref"] = json!(1);
    raw.send(&message.to_string()).await;
    let ack = raw.until("ack").await;
    assert_eq!(ack["ref"], 1, "{ack}");
}

fn ids(entries: &Value) -> Vec<u64> {
    entries
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["clientId"].as_u64().expect("clientId"))
        .collect()
}

/// Reads `changes` frames of `room` until `n` changes came (any other message fails
/// the test); returns them as (op, clientId).
async fn changes(raw: &mut Raw, room: &str, n: usize) -> Vec<(String, u64)> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let message = raw.json().await;
        assert_eq!(message["room"], room, "{message}");
        assert_eq!(message["type"], "changes", "{message}");
        for change in message["changes"].as_array().expect("changes") {
            seen.push((
                change["op"].as_str().expect("op").to_owned(),
                change["clientId"].as_u64().expect("clientId"),
            ));
        }
    }
    seen
}

/// Reads `occupancy` messages of `room` until one has these counts (any other
/// message fails the test).
async fn counts_until(raw: &mut Raw, room: &str, entries: u64, users: u64) {
    loop {
        let message = raw.json().await;
        assert_eq!(message["room"], room, "{message}");
        assert_eq!(message["type"], "occupancy", "{message}");
        if message["entryCount"] == entries && message["userCount"] == users {
            return;
        }
    }
}

#[tokio::test]
async fn a_sample_of_two_sees_the_two_oldest_then_the_third_when_one_leaves() {
    let server = Server::start();
    let ws = server.ws_url();
    let room = "sample:webinar";
    let beat =
        |n: u64| json!({"type": "heartbeat", "room": room, "data": {"n": n}, "ttlMs": 30_000});

    // Four clients join in order: alice in two tabs, then bob, then carol.
    let mut clients = Vec::new();
    let mut joined = Vec::new();
    for user in ["alice", "alice", "bob", "carol"] {
        let mut raw = hello_as(&ws, user).await;
        raw.send(&json!({"type": "heartbeat", "room": room, "data": {"user": user}, "ttlMs": 30_000, "ref": 1}).to_string())
            .await;
        raw.until("ack").await;
        clients.push(raw);
        joined.push(user);
    }
    // Who is who: a full subscriber's snapshot, matched by data.
    let (mut full, _) = Raw::hello(&ws).await;
    full.send(&json!({"type": "subscribe", "room": room}).to_string())
        .await;
    let snapshot = full.until("snapshot").await;
    let id_of = |user_index: usize| -> u64 {
        let entries = snapshot["entries"].as_array().expect("entries");
        let matches: Vec<u64> = entries
            .iter()
            .filter(|e| e["data"]["user"] == joined[user_index])
            .map(|e| e["clientId"].as_u64().expect("clientId"))
            .collect();
        matches[0]
    };
    let carol = id_of(3);
    let bob = id_of(2);

    let (mut watcher, _) = Raw::hello(&ws).await;
    watcher
        .send(
            &json!({"type": "subscribe", "room": room, "mode": "sample", "limit": 2, "ref": 5})
                .to_string(),
        )
        .await;
    let sample = watcher.json().await;
    assert_eq!(sample["type"], "snapshot", "{sample}");
    assert_eq!(
        (sample["entryCount"].as_u64(), sample["userCount"].as_u64()),
        (Some(4), Some(3)),
        "{sample}"
    );
    let sampled = ids(&sample["entries"]);
    assert_eq!(sampled.len(), 2, "{sample}");
    assert!(
        !sampled.contains(&bob) && !sampled.contains(&carol),
        "the two oldest: {sample}"
    );
    assert_eq!(sample["entries"][0]["data"]["user"], "alice");
    assert_eq!(sample["entries"][0]["userId"], "alice");
    let ack = watcher.json().await;
    assert_eq!(
        (ack["type"].as_str(), ack["ref"].as_u64()),
        (Some("ack"), Some(5)),
        "{ack}"
    );

    // Unsampled entries refresh: nothing. A sampled one refreshes: its upsert.
    acked(&mut clients[3], beat(1)).await;
    acked(&mut clients[2], beat(1)).await;
    acked(&mut clients[1], beat(2)).await;
    let seen = changes(&mut watcher, room, 1).await;
    assert_eq!(seen, vec![("upsert".to_owned(), sampled[1])]);

    // The oldest leaves: bob (the third to join) takes its place; counts follow.
    acked(&mut clients[0], json!({"type": "leave", "room": room})).await;
    let seen = changes(&mut watcher, room, 2).await;
    assert_eq!(
        seen,
        vec![("leave".to_owned(), sampled[0]), ("upsert".to_owned(), bob)]
    );
    counts_until(&mut watcher, room, 3, 3).await;

    // carol leaves (unsampled): no change, only the counts.
    acked(&mut clients[3], json!({"type": "leave", "room": room})).await;
    counts_until(&mut watcher, room, 2, 2).await;

    // A new subscriber of the same room and limit sees the same sample.
    let (mut second, _) = Raw::hello(&ws).await;
    second
        .send(&json!({"type": "subscribe", "room": room, "mode": "sample", "limit": 2}).to_string())
        .await;
    let again = second.until("snapshot").await;
    assert_eq!(ids(&again["entries"]), vec![sampled[1], bob], "{again}");
    assert_eq!(
        (again["entryCount"].as_u64(), again["userCount"].as_u64()),
        (Some(2), Some(2))
    );
}

#[tokio::test]
async fn a_bad_sample_limit_is_refused() {
    let server = Server::start();
    let (mut raw, _) = Raw::hello(&server.ws_url()).await;
    for (n, request) in [
        json!({"type": "subscribe", "room": "sample:b", "mode": "sample", "ref": 1}),
        json!({"type": "subscribe", "room": "sample:b", "mode": "sample", "limit": 0, "ref": 2}),
        json!({"type": "subscribe", "room": "sample:b", "mode": "sample", "limit": 1001, "ref": 3}),
        json!({"type": "subscribe", "room": "sample:b", "limit": 5, "ref": 4}),
    ]
    .into_iter()
    .enumerate()
    {
        raw.send(&request.to_string()).await;
        let error = raw.until("error").await;
        assert_eq!(error["code"], "bad_request", "{error}");
        assert_eq!(error["ref"], n + 1, "{error}");
        assert_eq!(error["room"], "sample:b", "{error}");
    }
}
