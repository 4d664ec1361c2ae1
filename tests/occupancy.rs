//! Occupancy subscriptions: counts of entries and users instead of the entries, at
//! most once a second and only when they changed.

use rollcall_tests::{Raw, Server};
use serde_json::{Value, json};

/// Reads occupancy messages until one has these counts; every message read must be
/// an occupancy message of `room`. Returns them all.
async fn occupancy_until(raw: &mut Raw, room: &str, entries: u64, users: u64) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let message = raw.json().await;
        assert_eq!(message["type"], "occupancy", "{message}");
        assert_eq!(message["room"], room, "{message}");
        let done = message["entryCount"] == entries && message["userCount"] == users;
        seen.push(message);
        if done {
            return seen;
        }
    }
}

#[tokio::test]
async fn an_occupancy_subscriber_gets_counts_not_entries_at_most_once_a_second() {
    let server = Server::in_process();
    let ws = server.ws_url();
    let room = "occ:a";
    let beat = json!({"type": "heartbeat", "room": room, "data": {"n": 1}, "ttlMs": 30_000});

    let (mut watcher, _) = Raw::hello(&ws).await;
    watcher
        .send(
            &json!({"type": "subscribe", "room": room, "mode": "occupancy", "ref": 9}).to_string(),
        )
        .await;
    // The counts at once (an empty room), then the ack.
    let first = watcher.json().await;
    assert_eq!(
        (
            first["type"].as_str(),
            first["entryCount"].as_u64(),
            first["userCount"].as_u64()
        ),
        (Some("occupancy"), Some(0), Some(0)),
        "{first}"
    );
    let ack = watcher.json().await;
    assert_eq!(
        (ack["type"].as_str(), ack["ref"].as_u64()),
        (Some("ack"), Some(9)),
        "{ack}"
    );

    // alice in two tabs, bob in one: three entries, two users.
    let mut alice_1 = Raw::joined(&ws, "alice", &beat).await;
    let mut alice_2 = Raw::joined(&ws, "alice", &beat).await;
    let mut bob = Raw::joined(&ws, "bob", &beat).await;
    let mut messages = vec![first];
    messages.extend(occupancy_until(&mut watcher, room, 3, 2).await);

    // Refreshes move no count: nothing is sent. Then alice closes a tab: 2 entries,
    // still 2 users.
    for _ in 0..5 {
        alice_1.acked(beat.clone()).await;
        bob.acked(beat.clone()).await;
    }
    alice_1.acked(json!({"type": "leave", "room": room})).await;
    let after = occupancy_until(&mut watcher, room, 2, 2).await;
    assert_eq!(after.len(), 1, "refreshes sent counts: {after:?}");
    messages.extend(after);
    alice_2.acked(json!({"type": "leave", "room": room})).await;
    messages.extend(occupancy_until(&mut watcher, room, 1, 1).await);

    // Never two messages within a second, and never the same counts twice in a row.
    for pair in messages.windows(2) {
        let gap =
            pair[1]["serverTimeMs"].as_u64().unwrap() - pair[0]["serverTimeMs"].as_u64().unwrap();
        assert!(gap >= 990, "{gap} ms between {} and {}", pair[0], pair[1]);
        assert!(
            (pair[0]["entryCount"].clone(), pair[0]["userCount"].clone())
                != (pair[1]["entryCount"].clone(), pair[1]["userCount"].clone()),
            "{messages:?}"
        );
    }

    // A full subscriber of the same room still gets the entries.
    let (mut full, _) = Raw::hello(&ws).await;
    full.send(&json!({"type": "subscribe", "room": room}).to_string())
        .await;
    let snapshot = full.until("snapshot").await;
    assert_eq!(
        snapshot["entries"].as_array().map(Vec::len),
        Some(1),
        "{snapshot}"
    );
}

#[tokio::test]
async fn an_unknown_mode_is_refused() {
    let server = Server::in_process();
    let (mut raw, _) = Raw::hello(&server.ws_url()).await;
    raw.send(&json!({"type": "subscribe", "room": "occ:b", "mode": "all", "ref": 3}).to_string())
        .await;
    let error = raw.until("error").await;
    assert_eq!(error["code"], "bad_request", "{error}");
    assert_eq!(error["ref"], 3, "{error}");
}
