//! Cluster mode: three `rollcall` nodes and a real `nats-server` on loopback.
//!
//! Needs `nats-server` on the PATH (`.ci/run` and `scripts/test.sh` install Debian's).
//! Without it these tests say so in a banner on stderr and pass, except under CI (`CI`
//! set), where they fail.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

#[path = "cluster_support.rs"]
mod cluster_support;
#[path = "webhook_support.rs"]
mod webhook_support;

use cluster_support::Nats;
use rollcall_client::{Client, Options};
use rollcall_tests::{Launch, Raw, Server, eventually};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);
/// The nodes' sweep tick (the default).
const TICK_MS: u64 = 25;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An entry that expires at `expires_at` was just seen gone: no sooner than its TTL,
/// and within TTL + tick (plus a second of slack for a loaded CI machine).
fn assert_gone_on_time(expires_at: u64) {
    let gone_at = now_ms();
    assert!(
        gone_at >= expires_at,
        "gone {} ms before its TTL",
        expires_at - gone_at
    );
    assert!(
        gone_at <= expires_at + TICK_MS + 1_000,
        "gone {} ms after TTL + tick",
        gone_at - expires_at
    );
}

fn secret_file(dir: &Path) -> PathBuf {
    let path = dir.join("resume-secret");
    std::fs::write(
        &path,
        "a resume secret shared by every node of this cluster",
    )
    .unwrap();
    path
}

/// Node `id` of the cluster behind `nats`.
fn node(nats: &Nats, id: u16, secret: &Path) -> Server {
    node_with(nats, id, secret, &[])
}

/// Node `id` of the cluster behind `nats`, with extra flags.
fn node_with(nats: &Nats, id: u16, secret: &Path, extra: &[&str]) -> Server {
    let mut launch = Launch::default()
        .arg("--nats")
        .arg(nats.url())
        .arg("--node-id")
        .arg(id.to_string())
        .arg("--resume-secret-file")
        .arg(secret.display().to_string());
    for arg in extra {
        launch = launch.arg(*arg);
    }
    launch.start()
}

/// The `rollcall_cluster_rejected_total` series of `reason`.
fn rejected(server: &Server, reason: &str) -> f64 {
    let (_, body) = server.http("GET", "/metrics", None);
    let series = format!("rollcall_cluster_rejected_total{{reason=\"{reason}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Seals bus messages as a node holding the cluster secret does (see
/// `server/src/cluster/bus.rs`): `<base64url HMAC-SHA256>.<body>`, keyed by
/// HMAC-SHA256(secret, "rollcall cluster bus v1"), over `binding`, a zero byte and
/// the body.
struct Sealer([u8; 32]);

impl Sealer {
    fn new(secret: &Path) -> Sealer {
        let secret = std::fs::read(secret).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.trim_ascii()).unwrap();
        mac.update(b"rollcall cluster bus v1");
        Sealer(mac.finalize().into_bytes().into())
    }

    fn seal(&self, binding: &str, body: &str) -> bytes::Bytes {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).unwrap();
        mac.update(binding.as_bytes());
        mac.update(&[0]);
        mac.update(body.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{tag}.{body}").into()
    }
}

fn room_subject(room: &str) -> String {
    format!("rollcall.v1.room.{}", URL_SAFE_NO_PAD.encode(room))
}

fn upsert(node: u16, seq: u64, client: u64, data: &str, expires_at_ms: u64) -> String {
    format!(
        r#"{{"node":{node},"seq":{seq},"ts":{},"op":"upsert","clientId":{client},"userId":"admin","data":{data},"expiresAtMs":{expires_at_ms}}}"#,
        now_ms()
    )
}

fn leave(node: u16, seq: u64, client: u64) -> String {
    format!(
        r#"{{"node":{node},"seq":{seq},"ts":{},"op":"leave","clientId":{client}}}"#,
        now_ms()
    )
}

fn clients_at(server: &Server, path: &str) -> Vec<u64> {
    let rest = server.get_json(path);
    let mut ids: Vec<u64> = rest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["clientId"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

async fn cluster_healthy(server: &Server, connected: bool) -> bool {
    let want = if connected {
        "\"cluster\":\"connected\""
    } else {
        "\"cluster\":\"disconnected\""
    };
    eventually(WAIT, || {
        server.http("GET", "/healthz", None).1.contains(want)
    })
    .await
}

#[tokio::test]
async fn nodes_share_heartbeats_leaves_expiries_and_late_snapshots() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let nodes: Vec<Server> = (1..=3).map(|id| node(&nats, id, &secret)).collect();
    for node in &nodes {
        assert!(
            cluster_healthy(node, true).await,
            "node not connected to NATS"
        );
    }
    let room = "cl:shared";
    let a = Client::connect(&nodes[0].ws_url()).await.unwrap();
    let c = Client::connect(&nodes[2].ws_url()).await.unwrap();
    let (a_id, c_id) = (a.client_id().unwrap(), c.client_id().unwrap());
    assert_ne!(a_id >> 40, c_id >> 40, "client ids carry their node");
    let at_a = a.presence(room);
    let at_c = c.presence(room);
    at_a.heartbeat_acked(json!({"who": "a"}), Duration::from_secs(60))
        .await
        .unwrap();
    at_c.heartbeat_acked(json!({"who": "c"}), Duration::from_secs(60))
        .await
        .unwrap();
    for view in [&at_a, &at_c] {
        let seen = view
            .wait_until(WAIT, |e| e.contains_key(&a_id) && e.contains_key(&c_id))
            .await
            .expect("both nodes see both clients");
        assert_eq!(seen[&a_id].data, json!({"who": "a"}));
        assert_eq!(seen[&c_id].data, json!({"who": "c"}));
    }
    // An update crosses too.
    at_c.heartbeat_acked(json!({"who": "c", "x": 2}), Duration::from_secs(60))
        .await
        .unwrap();
    at_a.wait_until(WAIT, |e| e.get(&c_id).is_some_and(|e| e.data["x"] == 2))
        .await
        .expect("an update crosses nodes");

    // A late subscriber on node 2 gets both in its first snapshot: nobody heartbeats
    // meanwhile, so they can only come from the sync.
    let b = Client::connect(&nodes[1].ws_url()).await.unwrap();
    let at_b = b.presence(room);
    let first = at_b
        .wait_until(WAIT, |e| !e.is_empty())
        .await
        .expect("a snapshot on node 2");
    assert!(
        first.contains_key(&a_id) && first.contains_key(&c_id),
        "late snapshot: {first:?}"
    );
    let rest = nodes[1].get_json("/v1/rooms/cl%3Ashared");
    assert_eq!(rest["entries"].as_array().unwrap().len(), 2, "{rest}");

    // A leave on node 3 reaches nodes 1 and 2.
    at_c.leave_acked().await.unwrap();
    for view in [&at_a, &at_b] {
        view.wait_until(WAIT, |e| !e.contains_key(&c_id))
            .await
            .expect("the leave crosses nodes");
    }

    // An expiry: on node 1 it happens no sooner than the entry's TTL, and soon after.
    let short = Client::connect(&nodes[2].ws_url()).await.unwrap();
    let short_id = short.client_id().unwrap();
    short
        .presence(room)
        .heartbeat_acked(json!({"who": "short"}), Duration::from_millis(1_500))
        .await
        .unwrap();
    let seen = at_a
        .wait_until(WAIT, |e| e.contains_key(&short_id))
        .await
        .unwrap();
    let expires_at = seen[&short_id].expires_at_ms;
    at_a.wait_until(WAIT, |e| !e.contains_key(&short_id))
        .await
        .expect("the expiry crosses nodes");
    assert_gone_on_time(expires_at);

    // Resume works on any node: the token from node 1, presented to node 2.
    let token = a.session().unwrap().resume_token;
    let mut options = Options::new(nodes[1].ws_url());
    options.resume = Some(token);
    let moved = Client::connect_with(options).await.unwrap();
    let session = moved.wait_connected().await.unwrap();
    assert_eq!(session.client_id, a_id);
    assert!(session.resumed);
}

#[tokio::test]
async fn a_killed_node_is_dropped_within_the_node_timeout_and_comes_back_on_restart() {
    const TIMEOUT_MS: u64 = 2_000;
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let timeout = TIMEOUT_MS.to_string();
    let mut nodes: Vec<Server> = (1..=3)
        .map(|id| node_with(&nats, id, &secret, &["--node-timeout-ms", &timeout]))
        .collect();
    for node in &nodes {
        assert!(cluster_healthy(node, true).await);
    }
    let room = "cl:kill";
    let watcher2 = Client::connect(&nodes[1].ws_url()).await.unwrap();
    let watcher3 = Client::connect(&nodes[2].ws_url()).await.unwrap();
    let at_2 = watcher2.presence(room);
    let at_3 = watcher3.presence(room);

    let short = Client::connect(&nodes[0].ws_url()).await.unwrap();
    let long = Client::connect(&nodes[0].ws_url()).await.unwrap();
    let (short_id, long_id) = (short.client_id().unwrap(), long.client_id().unwrap());
    long.presence(room)
        .heartbeat_acked(json!({"who": "long"}), Duration::from_secs(120))
        .await
        .unwrap();
    short
        .presence(room)
        .heartbeat_acked(json!({"who": "short"}), Duration::from_secs(60))
        .await
        .unwrap();
    for view in [&at_2, &at_3] {
        view.wait_until(WAIT, |e| {
            e.contains_key(&short_id) && e.contains_key(&long_id)
        })
        .await
        .expect("node 1's entries reach nodes 2 and 3");
    }

    // Killed: its entries (TTLs of a minute and more) leave within the node timeout
    // and a second, on both other nodes.
    nodes[0].kill9();
    let killed = Instant::now();
    drop((short, long));
    for view in [&at_2, &at_3] {
        view.wait_until(WAIT, |e| {
            !e.contains_key(&short_id) && !e.contains_key(&long_id)
        })
        .await
        .expect("a dead node's entries leave");
    }
    let gone_after = killed.elapsed();
    eprintln!("a killed node's entries left after {gone_after:?} (--node-timeout-ms {TIMEOUT_MS})");
    assert!(
        gone_after <= Duration::from_millis(TIMEOUT_MS + 1_000),
        "gone {gone_after:?} after kill -9"
    );
    assert!(
        gone_after >= Duration::from_millis(TIMEOUT_MS - 1_000),
        "gone {gone_after:?} after kill -9: before the node could be silent for the timeout"
    );
    assert!((nodes[1].metric("rollcall_cluster_nodes") - 1.0).abs() < 0.5);

    // Node 1 comes back with its log: its live entries are back everywhere.
    nodes[0].restart();
    assert!(cluster_healthy(&nodes[0], true).await);
    for view in [&at_2, &at_3] {
        view.wait_until(WAIT, |e| {
            e.contains_key(&short_id) && e.contains_key(&long_id)
        })
        .await
        .expect("node 1's live entries are back");
    }
    assert!(
        eventually(WAIT, || (nodes[1].metric("rollcall_cluster_nodes") - 2.0)
            .abs()
            < 0.5)
        .await
    );
}

#[tokio::test]
async fn a_frozen_node_is_dropped_and_comes_back_when_it_thaws() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let timeout = ["--node-timeout-ms", "1500"];
    let nodes: Vec<Server> = (1..=2)
        .map(|id| node_with(&nats, id, &secret, &timeout))
        .collect();
    for node in &nodes {
        assert!(cluster_healthy(node, true).await);
    }
    let room = "cl:frozen";
    let frozen = Client::connect(&nodes[0].ws_url()).await.unwrap();
    let frozen_id = frozen.client_id().unwrap();
    frozen
        .presence(room)
        .heartbeat_acked(json!({"who": "frozen"}), Duration::from_secs(120))
        .await
        .unwrap();
    let watcher = Client::connect(&nodes[1].ws_url()).await.unwrap();
    let view = watcher.presence(room);
    view.wait_until(WAIT, |e| e.contains_key(&frozen_id))
        .await
        .expect("node 1's entry reaches node 2");
    // SIGSTOP: node 1 neither dies nor announces itself; its NATS connection stays.
    let signal = |name: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([name, &nodes[0].pid().to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP");
    view.wait_until(WAIT, |e| !e.contains_key(&frozen_id))
        .await
        .expect("a silent node's entry leaves");
    // Thawed, it announces itself again: node 2 resyncs the room and the entry (it
    // never left node 1) is back, without a restart or a heartbeat.
    signal("-CONT");
    view.wait_until(WAIT, |e| e.contains_key(&frozen_id))
        .await
        .expect("the entry is back once the node is heard again");
    assert!(cluster_healthy(&nodes[0], true).await);
}

#[tokio::test]
async fn a_rest_read_on_any_node_lists_every_node_entries() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let nodes: Vec<Server> = (1..=3).map(|id| node(&nats, id, &secret)).collect();
    for node in &nodes {
        assert!(cluster_healthy(node, true).await);
    }
    // Entries on nodes 1 and 3, and no subscriber anywhere.
    let mut ids = Vec::new();
    for node in [&nodes[0], &nodes[2]] {
        let (status, body) = node.http(
            "POST",
            "/v1/rooms/cl%3Arest/heartbeat",
            Some(r#"{"data":{"via":"rest"},"ttlMs":60000}"#),
        );
        assert_eq!(status, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        ids.push(answer["clientId"].as_u64().unwrap());
    }
    ids.sort_unstable();
    // Every node gives the same answer, node 2 (which holds nothing) included, once
    // the nodes have heard of each other.
    assert!(
        eventually(WAIT, || (nodes[1].metric("rollcall_cluster_nodes") - 2.0)
            .abs()
            < 0.5)
        .await,
        "nodes 1 and 3 announced themselves to node 2"
    );
    for round in 1..=2 {
        for node in &nodes {
            let started = Instant::now();
            assert_eq!(clients_at(node, "/v1/rooms/cl%3Arest"), ids);
            eprintln!(
                "REST read of an unfollowed room, round {round}: {:?}",
                started.elapsed()
            );
        }
    }
    // The room list counts every node's entries, on every node.
    let listed = json!([{"room": "cl:rest", "entries": 2}]);
    for node in &nodes {
        let rooms = node.get_json("/v1/rooms");
        assert_eq!(rooms["rooms"], listed, "{rooms}");
        assert!(rooms["next"].is_null(), "{rooms}");
    }
    // A followed room is read locally and still lists both.
    let watcher = Client::connect(&nodes[1].ws_url()).await.unwrap();
    let view = watcher.presence("cl:rest");
    view.wait_until(WAIT, |e| ids.iter().all(|id| e.contains_key(id)))
        .await
        .expect("node 2's subscriber sees both");
    let started = Instant::now();
    assert_eq!(clients_at(&nodes[1], "/v1/rooms/cl%3Arest"), ids);
    eprintln!("REST read of a followed room: {:?}", started.elapsed());
    // Node 2 now holds the others' entries too: they are not counted twice.
    for node in &nodes {
        let rooms = node.get_json("/v1/rooms");
        assert_eq!(rooms["rooms"], listed, "{rooms}");
    }
    // Pages: a room on node 1 only, one on node 3 only, listed one per page.
    for (node, room) in [(&nodes[0], "cl%3Aa"), (&nodes[2], "cl%3Ab")] {
        let (status, body) = node.http(
            "POST",
            &format!("/v1/rooms/{room}/heartbeat"),
            Some(r#"{"data":1,"ttlMs":60000}"#),
        );
        assert_eq!(status, 200, "{body}");
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = nodes[1].get_json(&format!("/v1/rooms?limit=1{after}"));
        for room in page["rooms"].as_array().unwrap() {
            seen.push(room["room"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => after = format!("&after={}", next.replace(':', "%3A")),
            None => break,
        }
    }
    assert_eq!(seen, ["cl:a", "cl:b", "cl:rest"]);
}

#[tokio::test]
async fn forged_bus_messages_are_refused_and_counted() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let cap = ["--max-entries-per-room", "20"];
    let nodes = [
        node_with(&nats, 1, &secret, &cap),
        node_with(&nats, 2, &secret, &cap),
    ];
    for node in &nodes {
        assert!(cluster_healthy(node, true).await);
    }
    let room = "cl:forged";
    let path = "/v1/rooms/cl%3Aforged";
    let subject = room_subject(room);
    let a = Client::connect(&nodes[0].ws_url()).await.unwrap();
    let a_id = a.client_id().unwrap();
    let at_a = a.presence(room);
    at_a.heartbeat_acked(json!({"who": "a"}), Duration::from_secs(120))
        .await
        .unwrap();
    let w = Client::connect(&nodes[1].ws_url()).await.unwrap();
    let at_w = w.presence(room);
    at_w.wait_until(WAIT, |e| e.contains_key(&a_id))
        .await
        .expect("node 1's entry reaches node 2");

    // Without the secret: the attacks that worked on an unauthenticated bus.
    let raw = async_nats::connect(nats.url()).await.unwrap();
    let node2_space = 2u64 << 40;
    let mut sent = 0.0;
    let forged = [
        upsert(2, 1, node2_space + 7, "{}", 9_007_199_254_740_991),
        upsert(
            2,
            2,
            node2_space + 8,
            &format!("\"{}\"", "x".repeat(200_000)),
            now_ms() + 60_000,
        ),
        leave(1, u64::MAX / 2, a_id),
    ];
    for body in &forged {
        raw.publish(subject.clone(), body.clone().into())
            .await
            .unwrap();
        sent += 1.0;
    }
    // A MAC that does not verify.
    let bad_mac = format!("{}.{}", "A".repeat(43), forged[0]);
    raw.publish(subject.clone(), bad_mac.into()).await.unwrap();
    sent += 1.0;
    // 20,000 upserts past the room's cap.
    for i in 0..20_000u64 {
        let body = upsert(2, 10 + i, node2_space + 100 + i, "1", now_ms() + 60_000);
        raw.publish(subject.clone(), body.into()).await.unwrap();
    }
    sent += 20_000.0;
    raw.flush().await.unwrap();
    for node in &nodes {
        assert!(
            eventually(WAIT, || rejected(node, "mac") >= sent).await,
            "node {} counted {} of {sent} unauthenticated changes",
            node.addr,
            rejected(node, "mac")
        );
    }
    // A sync request without the secret gets no answer; one sealed for its inbox
    // does (so the first would have been answered by now).
    let forged_inbox = raw.new_inbox();
    let mut forged_replies = raw.subscribe(forged_inbox.clone()).await.unwrap();
    let request = format!(r#"{{"node":9,"seq":1,"ts":{},"room":"{room}"}}"#, now_ms());
    raw.publish_with_reply("rollcall.v1.sync", forged_inbox, request.clone().into())
        .await
        .unwrap();
    let sealer = Sealer::new(&secret);
    let inbox = raw.new_inbox();
    let mut replies = raw.subscribe(inbox.clone()).await.unwrap();
    let sealed = sealer.seal(&format!("rollcall.v1.sync {inbox}"), &request);
    raw.publish_with_reply("rollcall.v1.sync", inbox, sealed)
        .await
        .unwrap();
    for _ in 0..2 {
        let reply = tokio::time::timeout(WAIT, replies.next())
            .await
            .expect("a sealed sync request is answered")
            .unwrap();
        assert!(String::from_utf8_lossy(&reply.payload).contains("\"entries\""));
    }
    assert!(
        tokio::time::timeout(Duration::ZERO, forged_replies.next())
            .await
            .is_err(),
        "a sync request without the secret was answered"
    );
    for node in &nodes {
        assert!(eventually(WAIT, || rejected(node, "mac") >= sent + 1.0).await);
    }
    // Nothing forged reached subscribers or REST; the real entry survived.
    assert_eq!(at_w.value().keys().copied().collect::<Vec<_>>(), [a_id]);
    assert_eq!(at_a.value().keys().copied().collect::<Vec<_>>(), [a_id]);
    for node in &nodes {
        assert_eq!(clients_at(node, path), [a_id]);
    }

    // With the secret (a node gone wrong): the limits still hold.
    let node5 = 5u64 << 40;
    let ahead = now_ms() + 60_000;
    let checked = [
        (
            "data_size",
            upsert(
                5,
                1,
                node5 + 1,
                &format!("\"{}\"", "x".repeat(200_000)),
                ahead,
            ),
        ),
        ("ttl", upsert(5, 2, node5 + 2, "{}", 9_007_199_254_740_991)),
        ("owner", leave(5, 3, a_id)),
    ];
    let stale = format!(
        r#"{{"node":5,"seq":4,"ts":{},"op":"upsert","clientId":{},"data":{{}},"expiresAtMs":{ahead}}}"#,
        now_ms() - 120_000,
        node5 + 3
    );
    for (reason, body) in &checked {
        let before = rejected(&nodes[0], reason);
        raw.publish(subject.clone(), sealer.seal(&subject, body))
            .await
            .unwrap();
        assert!(
            eventually(WAIT, || rejected(&nodes[0], reason) > before).await,
            "{reason} not counted"
        );
    }
    raw.publish(subject.clone(), sealer.seal(&subject, &stale))
        .await
        .unwrap();
    assert!(eventually(WAIT, || rejected(&nodes[1], "stale") >= 1.0).await);
    // 25 new entries into a room capped at 20 that holds 1: 19 get in.
    for i in 0..25u64 {
        let body = upsert(5, 10 + i, node5 + 100 + i, "1", ahead);
        raw.publish(subject.clone(), sealer.seal(&subject, &body))
            .await
            .unwrap();
    }
    for node in &nodes {
        assert!(eventually(WAIT, || rejected(node, "room_full") >= 6.0).await);
        assert_eq!(clients_at(node, path).len(), 20);
    }
    at_w.wait_until(WAIT, |e| e.len() == 20).await.unwrap();
    assert!(at_w.value().contains_key(&a_id), "the real entry stays");

    // A replay is useless: an upsert that a later leave undid stays undone.
    let replayed = upsert(5, 100, node5 + 100, "2", ahead);
    raw.publish(
        subject.clone(),
        sealer.seal(&subject, &leave(5, 101, node5 + 100)),
    )
    .await
    .unwrap();
    at_w.wait_until(WAIT, |e| !e.contains_key(&(node5 + 100)))
        .await
        .unwrap();
    raw.publish(subject.clone(), sealer.seal(&subject, &replayed))
        .await
        .unwrap();
    let marker = upsert(5, 102, node5 + 200, "3", ahead);
    raw.publish(subject.clone(), sealer.seal(&subject, &marker))
        .await
        .unwrap();
    at_w.wait_until(WAIT, |e| e.contains_key(&(node5 + 200)))
        .await
        .expect("the marker after the replay");
    assert!(
        !at_w.value().contains_key(&(node5 + 100)),
        "a replay brought an entry back"
    );
    assert!(at_a.value().contains_key(&a_id));
}

#[tokio::test]
async fn nodes_converge_after_nats_restarts() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let mut nodes: Vec<Server> = (1..=3).map(|id| node(&nats, id, &secret)).collect();
    for node in &nodes {
        assert!(cluster_healthy(node, true).await);
    }
    let room = "cl:outage";
    let a = Client::connect(&nodes[0].ws_url()).await.unwrap();
    let c = Client::connect(&nodes[2].ws_url()).await.unwrap();
    let (a_id, c_id) = (a.client_id().unwrap(), c.client_id().unwrap());
    let at_a = a.presence(room);
    let at_c = c.presence(room);
    at_a.heartbeat_acked(json!({"v": 1}), Duration::from_secs(120))
        .await
        .unwrap();
    at_c.heartbeat_acked(json!({"v": 1}), Duration::from_secs(120))
        .await
        .unwrap();
    for view in [&at_a, &at_c] {
        view.wait_until(WAIT, |e| e.contains_key(&a_id) && e.contains_key(&c_id))
            .await
            .unwrap();
    }

    nats.stop();
    for node in &nodes {
        assert!(
            cluster_healthy(node, false).await,
            "/healthz says the cluster is down"
        );
        assert!(eventually(WAIT, || node.metric("rollcall_cluster_connected") == 0.0).await);
    }
    // Regression: shutdown waited forever for a flush to the absent NATS.
    let stopping = Instant::now();
    assert!(nodes[1].terminate().success());
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?} without NATS",
        stopping.elapsed()
    );
    // Local rooms keep working meanwhile.
    at_a.heartbeat_acked(json!({"v": 2}), Duration::from_secs(120))
        .await
        .unwrap();
    at_c.leave_acked().await.unwrap();
    let d = Client::connect(&nodes[2].ws_url()).await.unwrap();
    let d_id = d.client_id().unwrap();
    d.presence(room)
        .heartbeat_acked(json!({"v": "d"}), Duration::from_secs(120))
        .await
        .unwrap();
    at_c.wait_until(WAIT, |e| e.contains_key(&d_id) && !e.contains_key(&c_id))
        .await
        .unwrap();

    nats.restart();
    let restarted = Instant::now();
    at_a.wait_until(WAIT, |e| e.contains_key(&d_id) && !e.contains_key(&c_id))
        .await
        .expect("node 1 converges: node 3's join and leave");
    at_c.wait_until(WAIT, |e| {
        e.get(&a_id).is_some_and(|e| e.data == json!({"v": 2}))
    })
    .await
    .expect("node 3 converges: node 1's update");
    eprintln!(
        "converged {:?} after nats-server restarted",
        restarted.elapsed()
    );
    for node in [&nodes[0], &nodes[2]] {
        assert!(cluster_healthy(node, true).await);
    }
}

/// A raw WebSocket client of `server` subscribed to `room` (the ack comes after the
/// room's first sync), with its client id.
async fn raw_subscriber(server: &Server, room: &str, hello: serde_json::Value) -> (Raw, u64) {
    let (mut raw, welcome) = Raw::hello_with(&server.ws_url(), &hello).await;
    let rollcall_tests::RawEvent::Json(welcome) = welcome else {
        panic!("no welcome: {welcome:?}");
    };
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    raw.send(&json!({"type": "subscribe", "room": room, "ref": 1}).to_string())
        .await;
    assert_eq!(raw.until("ack").await["ref"], 1);
    (raw, welcome["clientId"].as_u64().unwrap())
}

#[tokio::test]
async fn a_broadcast_reaches_the_subscribers_of_every_node_once() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let nodes = [node(&nats, 1, &secret), node(&nats, 2, &secret)];
    for node in &nodes {
        assert!(cluster_healthy(node, true).await);
    }
    let room = "cl:bcast";
    let hello = json!({"type": "hello", "user": "alice"});
    let (mut sender, sender_id) = raw_subscriber(&nodes[0], room, hello).await;
    let (mut near, _) = raw_subscriber(&nodes[0], room, json!({"type": "hello"})).await;
    let (mut far, _) = raw_subscriber(&nodes[1], room, json!({"type": "hello"})).await;
    let (mut elsewhere, _) =
        raw_subscriber(&nodes[1], "cl:bcast-other", json!({"type": "hello"})).await;

    sender
        .send(
            &json!({"type": "broadcast", "room": room, "data": {"emoji": "🎉"}, "ref": 7})
                .to_string(),
        )
        .await;
    let before_ack = sender.through("ack").await;
    assert!(
        before_ack.iter().all(|m| m["type"] != "broadcast"),
        "{before_ack:?}"
    );
    for raw in [&mut near, &mut far] {
        let message = raw.until("broadcast").await;
        assert_eq!(message["room"], room);
        assert_eq!(message["clientId"], sender_id);
        assert_eq!(message["userId"], "alice");
        assert_eq!(message["data"], json!({"emoji": "🎉"}));
        assert!(message["serverTimeMs"].as_u64().is_some());
    }
    // Once each: a ping's answer comes after anything queued before it, and a second
    // broadcast after the first shows that nothing was delivered twice.
    sender
        .send(&json!({"type": "broadcast", "room": room, "data": 2, "ref": 8}).to_string())
        .await;
    for raw in [&mut near, &mut far] {
        assert_eq!(
            raw.until("broadcast").await["data"],
            2,
            "the first came once"
        );
        raw.send(r#"{"type":"ping","ref":9}"#).await;
        let seen = raw.through("pong").await;
        assert!(seen.iter().all(|m| m["type"] != "broadcast"), "{seen:?}");
    }
    // The sender never hears its own broadcast back from the other node.
    sender.send(r#"{"type":"ping","ref":10}"#).await;
    let seen = sender.through("pong").await;
    assert!(seen.iter().all(|m| m["type"] != "broadcast"), "{seen:?}");
    // Another room's subscriber gets nothing.
    elsewhere.send(r#"{"type":"ping","ref":9}"#).await;
    let seen = elsewhere.through("pong").await;
    assert!(seen.iter().all(|m| m["type"] != "broadcast"), "{seen:?}");
    // Never stored.
    assert_eq!(
        nodes[1].get_json("/v1/rooms/cl%3Abcast")["entries"],
        json!([])
    );
    assert!(nodes[0].metric("rollcall_cluster_broadcasts_published_total") >= 2.0);
    assert!(nodes[1].metric("rollcall_cluster_broadcasts_received_total") >= 2.0);

    // From the bus: one without a valid MAC is refused; a sealed one is delivered
    // once, and its replay refused.
    let raw = async_nats::connect(nats.url()).await.unwrap();
    let subject = room_subject(room);
    let body = format!(
        r#"{{"node":9,"seq":5,"ts":{},"op":"broadcast","clientId":{},"data":"forged"}}"#,
        now_ms(),
        (9u64 << 40) + 1
    );
    let macs_before = rejected(&nodes[1], "mac");
    raw.publish(subject.clone(), format!("{}.{body}", "A".repeat(43)).into())
        .await
        .unwrap();
    raw.flush().await.unwrap();
    assert!(
        eventually(WAIT, || rejected(&nodes[1], "mac") > macs_before).await,
        "a broadcast without a valid MAC is counted"
    );
    let replays_before = rejected(&nodes[1], "replay");
    let sealed = Sealer::new(&secret).seal(&subject, &body);
    for _ in 0..2 {
        raw.publish(subject.clone(), sealed.clone()).await.unwrap();
    }
    raw.flush().await.unwrap();
    assert_eq!(far.until("broadcast").await["data"], "forged");
    assert!(
        eventually(WAIT, || rejected(&nodes[1], "replay") > replays_before).await,
        "the replay is refused and counted"
    );
    far.send(r#"{"type":"ping","ref":11}"#).await;
    let seen = far.through("pong").await;
    assert!(
        seen.iter().all(|m| m["type"] != "broadcast"),
        "no forged broadcast, no replay: {seen:?}"
    );
}

/// The node that sends `room`'s webhooks among `nodes`: rendezvous hashing, as
/// `server/src/cluster/owner.rs` ranks them.
fn webhook_owner(room: &str, nodes: &[u16]) -> u16 {
    use sha2::Digest as _;
    let rank = |node: u16| {
        let mut hash = Sha256::new();
        hash.update(b"rollcall owner v1");
        hash.update(node.to_be_bytes());
        hash.update(room.as_bytes());
        let digest = hash.finalize();
        (
            u64::from_be_bytes(digest[..8].try_into().unwrap()),
            std::cmp::Reverse(node),
        )
    };
    *nodes.iter().max_by_key(|&&n| rank(n)).unwrap()
}

/// The node that sent a webhook event (its id is `<node>-<start>-<seq>`).
fn sender_of(event: &serde_json::Value) -> u16 {
    event["id"]
        .as_str()
        .unwrap()
        .split('-')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Waits for an `occupancy` frame with these counts.
async fn occupancy_reaches(raw: &mut Raw, entries: u64, users: u64) {
    let wanted = tokio::time::timeout(WAIT, async {
        loop {
            let frame = raw.until("occupancy").await;
            if frame["entryCount"] == entries && frame["userCount"] == users {
                return;
            }
        }
    })
    .await;
    assert!(
        wanted.is_ok(),
        "no occupancy frame with {entries} entries, {users} users"
    );
}

/// The users of a room as `GET /v1/rooms/{room}/users` lists them: each user with
/// how many entries.
fn users_at(server: &Server, path: &str) -> Vec<(String, usize)> {
    let body = server.get_json(path);
    body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["userId"].as_str().unwrap().to_owned(),
                u["entries"].as_array().unwrap().len(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_user_on_two_nodes_joins_once_and_leaves_once_and_each_webhook_comes_once() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let (url, received) = webhook_support::receiver(0).await;
    let (_hook_dir, hook_secret) = webhook_support::secret_file();
    let hooks = [
        "--webhook-url",
        url.as_str(),
        "--webhook-secret-file",
        hook_secret.as_str(),
    ];
    let nodes = [
        node_with(&nats, 1, &secret, &hooks),
        node_with(&nats, 2, &secret, &hooks),
    ];
    for node in &nodes {
        assert!(cluster_healthy(node, true).await);
    }
    for node in &nodes {
        assert!(
            eventually(WAIT, || node.metric("rollcall_cluster_nodes") >= 1.0).await,
            "the nodes hear each other"
        );
    }
    let room = "cl:users";
    let path = "/v1/rooms/cl%3Ausers/users";
    let owner = webhook_owner(room, &[1, 2]);
    let (mut watcher, _) = raw_subscriber(&nodes[1], room, json!({"type": "hello"})).await;
    watcher
        .send(
            &json!({"type": "subscribe", "room": room, "mode": "occupancy", "ref": 2}).to_string(),
        )
        .await;
    occupancy_reaches(&mut watcher, 0, 0).await;

    let (mut tab_a, _) =
        raw_subscriber(&nodes[0], room, json!({"type": "hello", "user": "alice"})).await;
    let (mut tab_b, _) =
        raw_subscriber(&nodes[1], room, json!({"type": "hello", "user": "alice"})).await;
    let beat =
        json!({"type": "heartbeat", "room": room, "data": {"tab": 1}, "ttlMs": 60_000, "ref": 3});
    let leave = json!({"type": "leave", "room": room, "ref": 4});
    tab_a.send(&beat.to_string()).await;
    assert_eq!(tab_a.until("ack").await["ref"], 3);
    occupancy_reaches(&mut watcher, 1, 1).await;
    tab_b.send(&beat.to_string()).await;
    assert_eq!(tab_b.until("ack").await["ref"], 3);
    // One user with two entries, whichever node is asked.
    occupancy_reaches(&mut watcher, 2, 1).await;
    for node in &nodes {
        assert!(
            eventually(WAIT, || users_at(node, path) == [("alice".to_owned(), 2)]).await,
            "{:?}",
            users_at(node, path)
        );
    }
    // One tab closes: alice is still here.
    tab_a.send(&leave.to_string()).await;
    assert_eq!(tab_a.until("ack").await["ref"], 4);
    occupancy_reaches(&mut watcher, 1, 1).await;
    for node in &nodes {
        assert!(
            eventually(WAIT, || users_at(node, path) == [("alice".to_owned(), 1)]).await,
            "{:?}",
            users_at(node, path)
        );
    }
    // The other: she left.
    tab_b.send(&leave.to_string()).await;
    assert_eq!(tab_b.until("ack").await["ref"], 4);
    occupancy_reaches(&mut watcher, 0, 0).await;
    for node in &nodes {
        assert!(eventually(WAIT, || users_at(node, path).is_empty()).await);
    }

    // A room owned by each node, touched last: each node sends its events in order,
    // so once both rooms' events are in, everything sent before them is too.
    let sentinels: Vec<String> = [1u16, 2]
        .iter()
        .map(|&n| {
            (0..10_000)
                .map(|i| format!("cl:sentinel-{i}"))
                .find(|r| webhook_owner(r, &[1, 2]) == n)
                .unwrap()
        })
        .collect();
    for (node, sentinel) in nodes.iter().zip(&sentinels) {
        let (mut raw, _) = Raw::hello(&node.ws_url()).await;
        let beat =
            json!({"type": "heartbeat", "room": sentinel, "data": 1, "ttlMs": 60_000, "ref": 5});
        raw.send(&beat.to_string()).await;
        assert_eq!(raw.until("ack").await["ref"], 5);
    }
    assert!(
        eventually(WAIT, || {
            let events = webhook_support::delivered(&received);
            sentinels.iter().all(|s| {
                events
                    .iter()
                    .any(|e| e["room"] == s.as_str() && e["type"] == "room.occupied")
            })
        })
        .await,
        "both sentinel rooms' events arrive"
    );
    let events: Vec<serde_json::Value> = webhook_support::delivered(&received)
        .into_iter()
        .filter(|e| e["room"] == room)
        .collect();
    let seen: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        seen,
        [
            "room.occupied",
            "user.joined",
            "entry.joined",
            "entry.joined",
            "entry.left",
            "entry.left",
            "user.left",
            "room.vacated",
        ],
        "each event once: {events:?}"
    );
    assert!(
        events.iter().all(|e| sender_of(e) == owner),
        "every event from the room's owner, node {owner}: {events:?}"
    );
    for e in events
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("user."))
    {
        assert_eq!(e["userId"], "alice", "{e}");
    }
    assert!(
        received
            .lock()
            .unwrap()
            .iter()
            .all(webhook_support::verifies),
        "every batch is signed"
    );
}

#[tokio::test]
async fn when_a_rooms_webhook_owner_dies_the_next_owner_reports_its_entries_leaving() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let (url, received) = webhook_support::receiver(0).await;
    let (_hook_dir, hook_secret) = webhook_support::secret_file();
    let flags = [
        "--webhook-url",
        url.as_str(),
        "--webhook-secret-file",
        hook_secret.as_str(),
        "--node-timeout-ms",
        "1500",
    ];
    let mut nodes = [
        node_with(&nats, 1, &secret, &flags),
        node_with(&nats, 2, &secret, &flags),
    ];
    for node in &nodes {
        assert!(cluster_healthy(node, true).await);
        assert!(eventually(WAIT, || node.metric("rollcall_cluster_nodes") >= 1.0).await);
    }
    // A room node 2 owns, with alice on node 2 and bob on node 1.
    let room = (0..10_000)
        .map(|i| format!("cl:takeover-{i}"))
        .find(|r| webhook_owner(r, &[1, 2]) == 2)
        .unwrap();
    let beat = json!({"type": "heartbeat", "room": room, "data": 1, "ttlMs": 60_000, "ref": 3});
    let (mut alice, _) = Raw::hello_with(
        &nodes[1].ws_url(),
        &json!({"type": "hello", "user": "alice"}),
    )
    .await;
    alice.send(&beat.to_string()).await;
    assert_eq!(alice.until("ack").await["ref"], 3);
    let (mut bob, _) =
        Raw::hello_with(&nodes[0].ws_url(), &json!({"type": "hello", "user": "bob"})).await;
    bob.send(&beat.to_string()).await;
    assert_eq!(bob.until("ack").await["ref"], 3);
    let joined = |user: &str| {
        webhook_support::delivered(&received).iter().any(|e| {
            e["room"] == room.as_str() && e["type"] == "user.joined" && e["userId"] == user
        })
    };
    assert!(
        eventually(WAIT, || joined("alice") && joined("bob")).await,
        "both joins reported"
    );
    let before: Vec<serde_json::Value> = webhook_support::delivered(&received)
        .into_iter()
        .filter(|e| e["room"] == room.as_str())
        .collect();
    assert!(before.iter().all(|e| sender_of(e) == 2), "{before:?}");

    nodes[1].kill9();
    // Node 1 takes node 2 for dead, owns the room now, and reports alice leaving.
    let left = |events: &[serde_json::Value]| {
        events.iter().any(|e| {
            e["room"] == room.as_str()
                && e["type"] == "user.left"
                && e["userId"] == "alice"
                && sender_of(e) == 1
        })
    };
    assert!(
        eventually(WAIT, || left(&webhook_support::delivered(&received))).await,
        "the new owner reports the dead node's entry leaving: {:?}",
        webhook_support::delivered(&received)
    );
    // bob is still there: no user.left for him, and the room is not vacated.
    let events = webhook_support::delivered(&received);
    assert!(
        !events.iter().any(|e| e["room"] == room.as_str()
            && (e["type"] == "room.vacated" || (e["type"] == "user.left" && e["userId"] == "bob"))),
        "{events:?}"
    );
    assert_eq!(
        users_at(
            &nodes[0],
            &format!("/v1/rooms/{}/users", room.replace(':', "%3A"))
        ),
        [("bob".to_owned(), 1)]
    );
}
