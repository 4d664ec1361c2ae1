//! The Rust client's users, occupancy, sample and broadcast API against the real
//! `rollcall` binary.

use std::time::Duration;

use rollcall_client::{Client, Counts, Error, ErrorCode, Event, Options};
use rollcall_tests::Server;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(30);

/// A client that says it is `user` (the server runs without auth).
async fn connect_as(url: &str, user: &str) -> Client {
    let mut options = Options::new(url);
    options.user = Some(user.to_owned());
    Client::connect_with(options).await.expect("connect")
}

/// Heartbeats into `room` and waits for the ack.
async fn join(client: &Client, room: &str, name: &str) -> u64 {
    // A heartbeat needs no subscription: an occupancy handle subscribes to counts only.
    client
        .occupancy(room)
        .heartbeat_acked(json!({"name": name}), TTL)
        .await
        .expect("heartbeat");
    client.client_id().expect("connected")
}

#[tokio::test]
async fn entries_carry_the_user_claimed_in_hello() {
    let server = Server::start();
    let url = server.ws_url();
    let alice = connect_as(&url, "alice").await;
    let alice_id = join(&alice, "rust:users", "a").await;
    let bob = Client::connect(&url).await.expect("connect");
    let room = bob.presence("rust:users");
    let entries = room
        .wait_until(WAIT, |entries| entries.contains_key(&alice_id))
        .await
        .expect("alice seen");
    assert_eq!(entries[&alice_id].user_id.as_deref(), Some("alice"));
}

#[tokio::test]
async fn occupancy_counts_entries_and_users() {
    let server = Server::start();
    let url = server.ws_url();
    let watcher = Client::connect(&url).await.expect("connect");
    let counts = watcher.occupancy("rust:occ");
    counts
        .wait_counts(WAIT, |c| c == Counts::default())
        .await
        .expect("empty room counted");
    let tab_1 = connect_as(&url, "alice").await;
    let tab_2 = connect_as(&url, "alice").await;
    let bob = connect_as(&url, "bob").await;
    for client in [&tab_1, &tab_2, &bob] {
        join(client, "rust:occ", "x").await;
    }
    counts
        .wait_counts(WAIT, |c| {
            c == Counts {
                entries: 3,
                users: 2,
            }
        })
        .await
        .expect("three entries, two users");
    assert!(counts.value().is_empty(), "no entries in occupancy mode");
    tab_1.close().await;
    counts
        .wait_counts(WAIT, |c| {
            c == Counts {
                entries: 2,
                users: 2,
            }
        })
        .await
        .expect("alice still here in her other tab");
}

#[tokio::test]
async fn a_sample_holds_the_oldest_and_takes_the_next_when_one_leaves() {
    let server = Server::start();
    let url = server.ws_url();
    let mut people = Vec::new();
    for name in ["ada", "bob", "cy", "dee"] {
        let client = connect_as(&url, name).await;
        let id = join(&client, "rust:sample", name).await;
        people.push((client, id));
    }
    let viewer = Client::connect(&url).await.expect("connect");
    let sample = viewer.sample("rust:sample", 2);
    sample.synced().await.expect("snapshot");
    let ids = |sample: &rollcall_client::Sample| -> Vec<u64> {
        sample.entries().into_iter().map(|(id, _)| id).collect()
    };
    assert_eq!(
        ids(&sample),
        vec![people[0].1, people[1].1],
        "the two oldest"
    );
    assert_eq!(
        sample.counts(),
        Some(Counts {
            entries: 4,
            users: 4
        })
    );
    assert_eq!(sample.entries()[0].1.user_id.as_deref(), Some("ada"));
    let (ada, _) = people.remove(0);
    ada.close().await;
    let cy = people[1].1;
    sample
        .wait_until(WAIT, |entries| entries.contains_key(&cy))
        .await
        .expect("cy joins the sample");
    assert_eq!(ids(&sample), vec![people[0].1, cy], "oldest first");
    sample
        .wait_counts(WAIT, |c| c.entries == 3)
        .await
        .expect("counts follow");
    // A bad limit is the server's typed refusal.
    let mut errors = viewer.errors();
    let _refused = viewer.sample("rust:other", 0);
    let error = tokio::time::timeout(WAIT, errors.recv())
        .await
        .expect("an error in time")
        .expect("error");
    assert_eq!(error.code, ErrorCode::BadRequest);
}

#[tokio::test]
async fn broadcasts_reach_the_others_not_the_sender() {
    let server = Server::start();
    let url = server.ws_url();
    let alice = connect_as(&url, "alice").await;
    let bob = Client::connect(&url).await.expect("connect");
    let watcher = Client::connect(&url).await.expect("connect");
    let alice_room = alice.presence("rust:cast");
    let bob_room = bob.presence("rust:cast");
    // An occupancy subscriber gets broadcasts too.
    let watching = watcher.occupancy("rust:cast");
    for room in [&alice_room, &bob_room] {
        room.synced().await.expect("subscribed");
    }
    watching
        .wait_counts(WAIT, |_| true)
        .await
        .expect("subscribed");
    let mut to_alice = alice_room.broadcasts();
    let mut to_bob = bob_room.broadcasts();
    let mut to_watcher = watching.broadcasts();
    let mut events = bob.events();
    alice_room
        .broadcast_acked(json!({"emoji": "🎉"}))
        .await
        .expect("acked");
    for receiver in [&mut to_bob, &mut to_watcher] {
        let got = tokio::time::timeout(WAIT, receiver.recv())
            .await
            .expect("in time")
            .expect("a broadcast");
        assert_eq!(got.data, json!({"emoji": "🎉"}));
        assert_eq!(got.client_id, alice.client_id().expect("connected"));
        assert_eq!(got.room, "rust:cast");
    }
    let event = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(Event::Broadcast(b)) = events.recv().await {
                return b;
            }
        }
    })
    .await
    .expect("a broadcast event");
    assert_eq!(event.data["emoji"], "🎉");
    // The sender does not get its own: bob's reply is the next thing alice gets.
    bob_room.broadcast(json!("hi"));
    let got = tokio::time::timeout(WAIT, to_alice.recv())
        .await
        .expect("in time")
        .expect("a broadcast");
    assert_eq!(got.data, json!("hi"));
    // Too large: a typed refusal.
    let refused = alice_room.broadcast_acked(json!("x".repeat(5_000))).await;
    assert!(
        matches!(&refused, Err(Error::Server(e)) if e.code == ErrorCode::DataTooLarge),
        "{refused:?}"
    );
}
