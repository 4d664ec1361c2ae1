//! Two clients in a room: heartbeats, leaves, expiry and snapshots, end to end.

use std::time::Duration;

use rollcall_client::{Client, RoomEvent};
use rollcall_tests::jwt::now_ms;
use rollcall_tests::{Raw, Server};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn heartbeat_leave_and_expiry_are_seen_by_the_other_client() {
    let server = Server::in_process();
    let alice = Client::connect(&server.ws_url()).await.unwrap();
    let bob = Client::connect(&server.ws_url()).await.unwrap();
    let alice_id = alice.client_id().unwrap();
    let bob_id = bob.client_id().unwrap();
    assert_ne!(alice_id, bob_id);

    let alice_room = alice.presence("pr:room-123");
    let bob_room = bob.presence("pr:room-123");

    // Heartbeat seen by the other, with its expiry.
    let before = now_ms();
    let expires = alice_room
        .heartbeat_acked(json!({"status": "online"}), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(expires >= before + 30_000 - 1_000 && expires <= now_ms() + 30_000 + 1_000);
    let seen = bob_room
        .wait_until(WAIT, |entries| entries.contains_key(&alice_id))
        .await
        .unwrap();
    assert_eq!(seen[&alice_id].data, json!({"status": "online"}));
    assert_eq!(seen[&alice_id].expires_at_ms, expires);
    assert_eq!(seen[&alice_id].user_id, None);

    // Leave seen.
    alice_room.leave_acked().await.unwrap();
    bob_room
        .wait_until(WAIT, |entries| !entries.contains_key(&alice_id))
        .await
        .unwrap();

    // Expiry seen within TTL + tick, and not before the TTL.
    let mut events = bob_room.events();
    let ttl = Duration::from_millis(300);
    let sent = std::time::Instant::now();
    let expires = alice_room
        .heartbeat_acked(json!({"status": "away"}), ttl)
        .await
        .unwrap();
    let expired_after = loop {
        match tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            RoomEvent::Expire(id) if id == alice_id => break sent.elapsed(),
            _ => {}
        }
    };
    assert!(
        expired_after >= ttl,
        "expired after {expired_after:?}, before its TTL"
    );
    // TTL + default tick (25 ms) + scheduling slack on a loaded machine.
    assert!(
        expired_after < ttl + Duration::from_secs(1),
        "expired after {expired_after:?}"
    );
    assert!(now_ms() > expires);
    assert!(!bob_room.value().contains_key(&alice_id));

    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn late_subscriber_gets_the_snapshot() {
    let server = Server::in_process();
    let url = server.ws_url();
    let writers: Vec<Client> =
        futures_util::future::join_all((0..5).map(|_| Client::connect(&url)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    for (i, writer) in writers.iter().enumerate() {
        writer
            .presence("pr:late")
            .heartbeat_acked(json!({"i": i}), Duration::from_secs(60))
            .await
            .unwrap();
    }

    let late = Client::connect(&server.ws_url()).await.unwrap();
    let room = late.presence("pr:late");
    let entries = room.wait_until(WAIT, |e| e.len() == 5).await.unwrap();
    for (i, writer) in writers.iter().enumerate() {
        let entry = &entries[&writer.client_id().unwrap()];
        assert_eq!(entry.data, json!({"i": i}));
        assert!(entry.expires_at_ms > now_ms());
    }

    // On the wire: one snapshot message with every entry, before any change.
    let (mut raw, _) = Raw::hello(&server.ws_url()).await;
    raw.send(r#"{"type":"subscribe","room":"pr:late"}"#).await;
    let snapshot = raw.json().await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["room"], "pr:late");
    assert_eq!(snapshot["entries"].as_array().unwrap().len(), 5);
    assert!(snapshot["serverTimeMs"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn a_client_sees_its_own_entry_and_entries_are_per_room() {
    let server = Server::in_process();
    let client = Client::connect(&server.ws_url()).await.unwrap();
    let id = client.client_id().unwrap();
    let a = client.presence("pr:a");
    let b = client.presence("pr:b");
    a.heartbeat(json!(1), Duration::from_secs(60));
    b.heartbeat(json!(2), Duration::from_secs(60));
    let in_a = a.wait_until(WAIT, |e| e.contains_key(&id)).await.unwrap();
    let in_b = b.wait_until(WAIT, |e| e.contains_key(&id)).await.unwrap();
    assert_eq!(in_a[&id].data, json!(1));
    assert_eq!(in_b[&id].data, json!(2));
    a.leave_acked().await.unwrap();
    assert!(
        a.wait_until(WAIT, std::collections::BTreeMap::is_empty)
            .await
            .is_ok()
    );
    assert_eq!(b.value().len(), 1, "leaving one room leaves only that room");

    // close() leaves every room it heartbeated in.
    let watcher = Client::connect(&server.ws_url()).await.unwrap();
    let watch_b = watcher.presence("pr:b");
    watch_b
        .wait_until(WAIT, |e| e.contains_key(&id))
        .await
        .unwrap();
    client.close().await;
    watch_b
        .wait_until(WAIT, std::collections::BTreeMap::is_empty)
        .await
        .unwrap();
}

#[tokio::test]
async fn abrupt_disconnect_keeps_the_entry_until_its_ttl() {
    let server = Server::in_process();
    let (mut raw, welcome) = Raw::hello(&server.ws_url()).await;
    let id = welcome["clientId"].as_u64().unwrap();
    raw.send(r#"{"type":"heartbeat","room":"pr:drop","data":"here","ttlMs":600,"ref":1}"#)
        .await;
    assert_eq!(raw.until("ack").await["ref"], 1);
    drop(raw); // no leave, no close frame

    let watcher = Client::connect(&server.ws_url()).await.unwrap();
    let room = watcher.presence("pr:drop");
    let entries = room
        .wait_until(WAIT, |e| e.contains_key(&id))
        .await
        .unwrap();
    assert_eq!(entries[&id].data, json!("here"));
    room.wait_until(WAIT, std::collections::BTreeMap::is_empty)
        .await
        .unwrap();
}
