//! Restarts: kill -9 and SIGTERM, replay, resume tokens.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rollcall_client::{Client, Options, RoomEvent};
use rollcall_tests::{Raw, RawEvent, Server};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn live_entries_survive_kill_9_and_expired_ones_do_not_come_back() {
    let mut server = Server::start();
    let long = Client::connect(&server.ws_url()).await.unwrap();
    let short = Client::connect(&server.ws_url()).await.unwrap();
    let long_id = long.client_id().unwrap();
    let short_id = short.client_id().unwrap();
    long.presence("pr:restart")
        .heartbeat_acked(json!({"who": "long"}), Duration::from_secs(600))
        .await
        .unwrap();
    let short_ttl = Duration::from_millis(400);
    let sent = Instant::now();
    short
        .presence("pr:restart")
        .heartbeat_acked(json!({"who": "short"}), short_ttl)
        .await
        .unwrap();

    server.kill9();
    drop((long, short));
    // The short entry expires while the server is down.
    if let Some(left) = (short_ttl + Duration::from_millis(50)).checked_sub(sent.elapsed()) {
        tokio::time::sleep(left).await;
    }
    server.restart();

    let rest = server.get_json("/v1/rooms/pr%3Arestart");
    let entries = rest["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{rest}");
    assert_eq!(entries[0]["clientId"], long_id);
    assert_eq!(entries[0]["data"], json!({"who": "long"}));

    let fresh = Client::connect(&server.ws_url()).await.unwrap();
    let room = fresh.presence("pr:restart");
    let seen = room.wait_until(WAIT, |e| !e.is_empty()).await.unwrap();
    assert!(seen.contains_key(&long_id));
    assert!(
        !seen.contains_key(&short_id),
        "an entry that expired while down came back"
    );
    let rooms = server.get_json("/v1/rooms");
    assert_eq!(
        rooms["rooms"],
        json!([{"room": "pr:restart", "entries": 1}])
    );
}

#[tokio::test]
async fn a_resumed_client_keeps_its_id_and_never_appears_twice() {
    let mut server = Server::start();
    let mut options = Options::new(server.ws_url());
    options.backoff_max = Duration::from_millis(200);
    let alice = Client::connect_with(options.clone()).await.unwrap();
    let watcher = Client::connect_with(options).await.unwrap();
    let alice_id = alice.client_id().unwrap();
    let alice_room = alice.presence("pr:resume");
    alice_room
        .heartbeat_acked(json!("alice"), Duration::from_secs(600))
        .await
        .unwrap();
    let watch_room = watcher.presence("pr:resume");
    let mut events = watch_room.events();
    watch_room
        .wait_until(WAIT, |e| e.contains_key(&alice_id))
        .await
        .unwrap();

    server.kill9();
    server.restart();

    // Both clients reconnect by themselves; alice keeps her id.
    let session = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(session) = alice.session() {
                if session.resumed {
                    return session;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(session.client_id, alice_id);
    assert!(watcher.wait_connected().await.unwrap().resumed);

    // The watcher's view holds alice exactly once, now and at every step on the way.
    let view = watch_room
        .wait_until(WAIT, |e| e.contains_key(&alice_id))
        .await
        .unwrap();
    assert_eq!(view.len(), 1);
    let mut ids = BTreeSet::new();
    while let Ok(event) = events.try_recv() {
        match event {
            RoomEvent::Snapshot(entries) => ids.extend(entries.iter().map(|(id, _)| *id)),
            RoomEvent::Upsert(id, _) | RoomEvent::Leave(id) | RoomEvent::Expire(id) => {
                ids.insert(id);
            }
        }
    }
    assert_eq!(ids, BTreeSet::from([alice_id]), "only alice ever appeared");

    // The restored heartbeat kept the TTL it had (restore, never extend).
    let entry = &view[&alice_id];
    assert!(entry.expires_at_ms <= watcher.server_now_ms() + 600_000);
}

#[tokio::test]
async fn a_second_connection_with_the_same_token_replaces_the_first() {
    let server = Server::start();
    let (mut first, welcome) = Raw::hello(&server.ws_url()).await;
    let token = welcome["resumeToken"].as_str().unwrap().to_owned();
    let id = welcome["clientId"].as_u64().unwrap();

    let mut second = Raw::connect(&server.ws_url()).await;
    second
        .send(&json!({"type": "hello", "resume": token}).to_string())
        .await;
    let again = second.json().await;
    assert_eq!(again["type"], "welcome");
    assert_eq!(again["clientId"], id);
    assert_eq!(again["resumed"], true);
    assert_eq!(first.next().await, RawEvent::Closed(4001));

    // A forged token gets a fresh id and an error, not someone else's id.
    let mut forged = Raw::connect(&server.ws_url()).await;
    let fake = format!("{}x", &token[..token.len() - 1]);
    forged
        .send(&json!({"type": "hello", "resume": fake}).to_string())
        .await;
    let welcome = forged.until("welcome").await;
    assert_ne!(welcome["clientId"], id);
    assert_eq!(welcome["resumed"], false);
    assert_eq!(forged.until("error").await["code"], "invalid_resume");
}

#[tokio::test]
async fn sigterm_exits_cleanly_and_keeps_every_acknowledged_heartbeat() {
    let mut server = Server::start();
    let url = server.ws_url();
    let clients: Vec<Client> =
        futures_util::future::join_all((0..8).map(|_| Client::connect(&url)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let mut expected = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        for round in 0..25 {
            let room = format!("pr:term-{}", i % 3);
            client
                .presence(&room)
                .heartbeat_acked(json!({"i": i, "round": round}), Duration::from_secs(600))
                .await
                .unwrap();
        }
        expected.push((format!("pr:term-{}", i % 3), client.client_id().unwrap(), i));
    }
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    drop(clients);

    server.restart();
    for (room, id, i) in expected {
        let body = server.get_json(&format!("/v1/rooms/{}", room.replace(':', "%3A")));
        let entry = body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["clientId"] == id)
            .unwrap_or_else(|| panic!("client {id} missing from {room}"));
        assert_eq!(entry["data"], json!({"i": i, "round": 24}));
    }
}

#[tokio::test]
async fn sigterm_closes_sessions_with_going_away() {
    let mut server = Server::start();
    let (mut raw, _) = Raw::hello(&server.ws_url()).await;
    let status = server.terminate();
    assert!(status.success());
    assert_eq!(raw.next().await, RawEvent::Closed(1001));
}
