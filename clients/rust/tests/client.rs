//! The Rust client against the real `rollcall` binary: the README example, resume,
//! failover, typed errors, diffs, `track` and the reconnect policy.

use std::time::Duration;

use rollcall_client::{
    Client, CloseCode, ConnectionState, Diff, DiffStream, Entry, Error, ErrorCode, Event, Options,
    RoomEvent,
};
use rollcall_tests::Server;
use serde_json::json;

#[allow(dead_code, reason = "the example's `main` is not called here")]
#[path = "../examples/presence.rs"]
mod example;

const WAIT: Duration = Duration::from_secs(10);

/// Waits (bounded) until the client's state is `state`.
async fn wait_state(client: &Client, state: ConnectionState) {
    let mut changes = client.state_changes();
    tokio::time::timeout(WAIT, changes.wait_for(|s| *s == state))
        .await
        .unwrap_or_else(|_| panic!("state {state:?} not reached; it is {:?}", client.state()))
        .expect("client alive");
}

/// The next diff, bounded.
async fn next_diff(diffs: &mut DiffStream) -> (std::collections::BTreeMap<u64, Entry>, Diff) {
    tokio::time::timeout(WAIT, diffs.next())
        .await
        .expect("a diff in time")
        .expect("client alive")
}

#[tokio::test]
async fn the_readme_example_runs_as_written() {
    let server = Server::start();
    example::two_clients(&server.ws_url())
        .await
        .expect("the example runs");
}

#[test]
fn the_readme_shows_the_example_file() {
    let readme = include_str!("../README.md");
    let example = include_str!("../examples/presence.rs");
    assert!(
        readme.contains(&format!("```rust,no_run\n{example}```")),
        "clients/rust/README.md must show examples/presence.rs exactly"
    );
}

#[tokio::test]
async fn a_resume_token_gets_the_same_client_id_back_across_a_restart() {
    let mut server = Server::start();
    let mut options = Options::new(server.ws_url());
    options.backoff_max = Duration::from_millis(200);
    let alice = Client::connect_with(options).await.expect("connect");
    let first = alice.session().expect("connected");
    assert!(!first.resumed);
    let room = alice.presence("pr:resume");
    room.heartbeat_acked(json!({"n": 1}), Duration::from_secs(30))
        .await
        .expect("heartbeat");

    // The server restarts: the client comes back by itself with the same id.
    server.terminate();
    wait_state(&alice, ConnectionState::Reconnecting).await;
    server.restart();
    let again = tokio::time::timeout(WAIT, alice.wait_connected())
        .await
        .expect("reconnected in time")
        .expect("reconnected");
    assert_eq!(again.client_id, first.client_id);
    assert!(again.resumed);
    room.wait_until(WAIT, |e| e.contains_key(&first.client_id))
        .await
        .expect("its entry is back");

    // A new client presenting the token gets the id too (and takes it over).
    let mut options = Options::new(server.ws_url());
    options.resume = Some(again.resume_token.clone());
    let successor = Client::connect_with(options).await.expect("connect");
    let session = successor.session().expect("connected");
    assert_eq!(session.client_id, first.client_id);
    assert!(session.resumed);
    successor.close().await;
}

#[tokio::test]
async fn failover_lands_on_the_next_node_with_the_same_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("resume-secret");
    std::fs::write(&secret, "a resume secret shared by both nodes, 32+ bytes").expect("write");
    let secret = secret.to_string_lossy().into_owned();
    let mut node1 = Server::launch()
        .arg("--resume-secret-file")
        .arg(&secret)
        .start();
    let node2 = Server::launch()
        .arg("--resume-secret-file")
        .arg(&secret)
        .start();
    let mut options = Options::with_urls([node1.ws_url(), node2.ws_url()]);
    options.backoff_max = Duration::from_millis(200);
    let client = Client::connect_with(options).await.expect("connect");
    let first = client.session().expect("connected");
    assert_eq!(first.url, node1.ws_url());
    let room = client.presence("pr:failover");
    room.heartbeat_acked(json!("here"), Duration::from_secs(30))
        .await
        .expect("heartbeat");
    let mut events = client.events();

    node1.kill9();
    let moved = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(Event::Connected(session)) => break session,
                Ok(_) => {}
                Err(error) => panic!("events: {error}"),
            }
        }
    })
    .await
    .expect("reconnected in time");
    assert_eq!(moved.url, node2.ws_url());
    assert_eq!(moved.client_id, first.client_id);
    assert!(moved.resumed);
    // Its subscription and heartbeat were restored on node 2.
    room.wait_until(WAIT, |e| {
        e.get(&first.client_id)
            .is_some_and(|e| e.data == json!("here"))
    })
    .await
    .expect("the entry is on node 2");
    let on_node2 = Client::connect(&node2.ws_url()).await.expect("connect");
    on_node2
        .presence("pr:failover")
        .wait_until(WAIT, |e| e.contains_key(&first.client_id))
        .await
        .expect("node 2 serves the entry");
    client.close().await;
    on_node2.close().await;
}

#[tokio::test]
async fn refusals_are_typed_errors() {
    let server = Server::start();
    let client = Client::connect(&server.ws_url()).await.expect("connect");
    let mut errors = client.errors();
    let mut events = client.events();
    let room = client.presence("pr:errors");

    let big = "x".repeat(5_000);
    let refused = room
        .heartbeat_acked(json!(big), Duration::from_secs(30))
        .await
        .expect_err("too large");
    assert_eq!(refused.code(), Some(ErrorCode::DataTooLarge));
    assert!(matches!(refused, Error::Server(ref e) if e.room.as_deref() == Some("pr:errors")));
    let reported = tokio::time::timeout(WAIT, errors.recv())
        .await
        .expect("reported in time")
        .expect("an error");
    assert_eq!(reported.code, ErrorCode::DataTooLarge);
    // The typed event stream saw the room's snapshot, then the error.
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert!(
        matches!(
            seen.as_slice(),
            [
                Event::Snapshot { room, entries, .. },
                Event::Error(error),
            ] if room == "pr:errors" && entries.is_empty() && error.code == ErrorCode::DataTooLarge
        ),
        "{seen:?}"
    );

    let refused = room
        .heartbeat_acked(json!(1), Duration::ZERO)
        .await
        .expect_err("zero TTL");
    assert_eq!(refused.code(), Some(ErrorCode::InvalidTtl));

    // An error does not close the connection.
    room.heartbeat_acked(json!(1), Duration::from_secs(5))
        .await
        .expect("still usable");
    assert_eq!(client.state(), ConnectionState::Connected);
    client.close().await;
}

#[tokio::test]
async fn diffs_say_who_joined_changed_and_left() {
    let server = Server::start();
    let alice = Client::connect(&server.ws_url()).await.expect("connect");
    let bob = Client::connect(&server.ws_url()).await.expect("connect");
    let alice_id = alice.client_id().expect("id");
    let watch = bob.presence("pr:diffs");
    watch.synced().await.expect("synced");
    let mut diffs = watch.diffs();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let listener = watch.on_change(move |entries, diff| {
        let _ = seen_tx.send((entries.len(), diff.clone()));
    });

    let room = alice.presence("pr:diffs");
    room.heartbeat_acked(json!({"s": "online"}), Duration::from_secs(30))
        .await
        .expect("heartbeat");
    let (value, diff) = next_diff(&mut diffs).await;
    assert_eq!(
        diff,
        Diff {
            joined: vec![alice_id],
            ..Diff::default()
        }
    );
    assert_eq!(value[&alice_id].data, json!({"s": "online"}));

    // A refresh with the same data is not a change; new data is an update.
    room.heartbeat_acked(json!({"s": "online"}), Duration::from_secs(30))
        .await
        .expect("refresh");
    room.heartbeat_acked(json!({"s": "away"}), Duration::from_secs(30))
        .await
        .expect("update");
    let (_, diff) = next_diff(&mut diffs).await;
    assert_eq!(
        diff,
        Diff {
            updated: vec![alice_id],
            ..Diff::default()
        }
    );

    room.leave_acked().await.expect("leave");
    let (value, diff) = next_diff(&mut diffs).await;
    assert_eq!(
        diff,
        Diff {
            left: vec![alice_id],
            ..Diff::default()
        }
    );
    assert!(value.is_empty());

    // A short TTL: the entry leaves by the clock.
    room.heartbeat_acked(json!(1), Duration::from_millis(300))
        .await
        .expect("heartbeat");
    assert_eq!(next_diff(&mut diffs).await.1.joined, vec![alice_id]);
    assert_eq!(next_diff(&mut diffs).await.1.left, vec![alice_id]);

    // The listener saw the same sequence: (live entries, joined, updated, left).
    let mut heard = Vec::new();
    while heard.len() < 5 {
        let (n, diff) = tokio::time::timeout(WAIT, seen.recv())
            .await
            .expect("the listener in time")
            .expect("listener alive");
        heard.push((n, diff.joined.len(), diff.updated.len(), diff.left.len()));
    }
    assert_eq!(
        heard,
        [
            (1, 1, 0, 0),
            (1, 0, 1, 0),
            (0, 0, 0, 1),
            (1, 1, 0, 0),
            (0, 0, 0, 1)
        ]
    );
    drop(listener);
    alice.close().await;
    bob.close().await;
    // Once the client is closed the stream ends.
    let end = tokio::time::timeout(WAIT, diffs.next())
        .await
        .expect("ends in time");
    assert!(end.is_none());
    assert!(
        matches!(watch.synced().await, Ok(())),
        "synced before, stays so"
    );
}

#[tokio::test]
async fn track_keeps_an_entry_alive_past_its_ttl() {
    let server = Server::start();
    let alice = Client::connect(&server.ws_url()).await.expect("connect");
    let bob = Client::connect(&server.ws_url()).await.expect("connect");
    let alice_id = alice.client_id().expect("id");
    let watch = bob.presence("pr:track");
    watch.synced().await.expect("synced");
    let mut events = watch.events();
    let room = alice.presence("pr:track");
    room.track(json!("typing"), Duration::from_millis(600));
    watch
        .wait_until(WAIT, |e| e.contains_key(&alice_id))
        .await
        .expect("present");
    // For three TTLs it is refreshed and never expires.
    let mut upserts = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1_800);
    while let Ok(event) = tokio::time::timeout_at(deadline, events.recv()).await {
        match event.expect("events") {
            RoomEvent::Upsert(id, _) if id == alice_id => upserts += 1,
            RoomEvent::Expire(id) | RoomEvent::Leave(id) => {
                panic!("{id} went away while tracked");
            }
            _ => {}
        }
    }
    assert!(upserts >= 4, "refreshed {upserts} times in 3 TTLs");
    assert!(watch.value().contains_key(&alice_id));
    room.leave();
    watch
        .wait_until(WAIT, |e| !e.contains_key(&alice_id))
        .await
        .expect("left");
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn a_final_close_is_not_reconnected() {
    let server = Server::start();
    let mut options = Options::new(server.ws_url());
    options.backoff_max = Duration::from_millis(50);
    let first = Client::connect_with(options.clone())
        .await
        .expect("connect");
    let token = first.session().expect("connected").resume_token;

    // Another connection resumes the id: the first is closed with 4001 and stays down.
    options.resume = Some(token);
    let second = Client::connect_with(options).await.expect("connect");
    wait_state(&first, ConnectionState::Closed).await;
    let reason = first.close_reason().expect("a reason");
    assert_eq!(reason.code, CloseCode::Replaced);
    assert!(matches!(
        first.wait_connected().await,
        Err(Error::Closed(r)) if r.code == CloseCode::Replaced
    ));
    // Had it reconnected, it would have taken the id back and closed `second`.
    let room = second.presence("pr:final");
    room.heartbeat_acked(json!(1), Duration::from_secs(5))
        .await
        .expect("second is undisturbed");
    assert_eq!(second.state(), ConnectionState::Connected);

    // 1009: a message over maxMessageBytes.
    let third = Client::connect(&server.ws_url()).await.expect("connect");
    third.send_raw(format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(70_000)
    ));
    wait_state(&third, ConnectionState::Closed).await;
    assert_eq!(
        third.close_reason().map(|r| r.code),
        Some(CloseCode::MessageTooBig)
    );
    second.close().await;
}

#[tokio::test]
async fn a_refused_token_is_final() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("auth-secret");
    std::fs::write(&secret, "an HS256 secret of at least thirty-two bytes").expect("write");
    let server = Server::launch()
        .arg("--auth-secret-file")
        .arg(secret.to_string_lossy())
        .start();
    for token in [None, Some("not.a.jwt".to_owned())] {
        let mut options = Options::new(server.ws_url());
        options.token.clone_from(&token);
        let refused = tokio::time::timeout(WAIT, Client::connect_with(options))
            .await
            .expect("answered in time")
            .expect_err("refused");
        assert!(refused.is_final(), "{token:?}: {refused}");
        assert!(
            matches!(&refused, Error::Closed(r) if r.code == CloseCode::Unauthorized),
            "{token:?}: {refused}"
        );
    }
}

#[tokio::test]
async fn a_leave_while_disconnected_is_sent_on_reconnect() {
    let mut server = Server::start();
    let mut options = Options::new(server.ws_url());
    options.backoff_max = Duration::from_millis(200);
    let alice = Client::connect_with(options).await.expect("connect");
    let alice_id = alice.client_id().expect("id");
    let room = alice.presence("pr:leave-offline");
    room.heartbeat_acked(json!("here"), Duration::from_secs(60))
        .await
        .expect("heartbeat");

    server.terminate();
    wait_state(&alice, ConnectionState::Reconnecting).await;
    room.leave();
    server.restart();
    // The restarted server replayed alice's entry; her reconnect removes it.
    let watcher = Client::connect(&server.ws_url()).await.expect("connect");
    let watch = watcher.presence("pr:leave-offline");
    watch.synced().await.expect("synced");
    watch
        .wait_until(WAIT, |e| !e.contains_key(&alice_id))
        .await
        .expect("the entry is gone long before its TTL");
    let session = tokio::time::timeout(WAIT, alice.wait_connected())
        .await
        .expect("reconnected in time")
        .expect("reconnected");
    assert_eq!(session.client_id, alice_id);
    alice.close().await;
    watcher.close().await;
}
