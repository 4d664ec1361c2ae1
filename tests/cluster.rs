//! Cluster mode: three `rollcall` nodes and a real `nats-server` on loopback.
//!
//! Needs `nats-server` on the PATH (`.ci/run` and `scripts/test.sh` install Debian's).
//! Without it these tests say so in a banner on stderr and pass, except under CI (`CI`
//! set), where they fail.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rollcall_client::{Client, Options};
use rollcall_tests::{Launch, Server, eventually, require};
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

/// A `nats-server` on a loopback port, stopped on drop.
struct Nats {
    child: Option<Child>,
    port: u16,
}

/// `nats-server` from the PATH, or where Debian puts it.
fn nats_binary() -> Option<&'static str> {
    ["nats-server", "/usr/sbin/nats-server"]
        .into_iter()
        .find(|binary| {
            Command::new(binary)
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

impl Nats {
    /// `None` when nats-server is not installed, said loudly (a failure under CI).
    fn start() -> Option<Nats> {
        if !require::that(
            nats_binary().is_some(),
            "nats-server is not installed (apt-get install -y nats-server)",
        ) {
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut nats = Nats { child: None, port };
        nats.restart();
        Some(nats)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        let child = Command::new(nats_binary().expect("nats-server"))
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
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
    Launch::default()
        .arg("--nats")
        .arg(nats.url())
        .arg("--node-id")
        .arg(id.to_string())
        .arg("--resume-secret-file")
        .arg(secret.display().to_string())
        .start()
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
async fn a_killed_node_ages_out_by_ttl_and_comes_back_on_restart() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let mut nodes: Vec<Server> = (1..=3).map(|id| node(&nats, id, &secret)).collect();
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
        .heartbeat_acked(json!({"who": "short"}), Duration::from_secs(2))
        .await
        .unwrap();
    let mut expires_at = 0;
    for view in [&at_2, &at_3] {
        let seen = view
            .wait_until(WAIT, |e| {
                e.contains_key(&short_id) && e.contains_key(&long_id)
            })
            .await
            .expect("node 1's entries reach nodes 2 and 3");
        expires_at = seen[&short_id].expires_at_ms;
    }

    nodes[0].kill9();
    drop((short, long));
    for view in [&at_2, &at_3] {
        view.wait_until(WAIT, |e| !e.contains_key(&short_id))
            .await
            .expect("a dead node's entry expires by its TTL");
        assert_gone_on_time(expires_at);
        assert!(
            view.value().contains_key(&long_id),
            "an entry went before its TTL"
        );
    }

    // Node 3 stops following the room, so it forgets node 1's entries.
    drop(at_3);
    watcher3.close().await;
    assert!(
        eventually(WAIT, || nodes[2].metric("rollcall_subscribed_rooms") == 0.0).await
            || nodes[2].get_json("/v1/rooms/cl%3Akill")["entries"]
                .as_array()
                .is_some_and(Vec::is_empty)
    );

    // Node 1 comes back with its log: the long entry is back everywhere.
    nodes[0].restart();
    assert!(cluster_healthy(&nodes[0], true).await);
    let rest = nodes[0].get_json("/v1/rooms/cl%3Akill");
    let entries = rest["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "node 1 replays only what is live: {rest}");
    assert_eq!(entries[0]["clientId"], long_id);
    let fresh = Client::connect(&nodes[2].ws_url()).await.unwrap();
    let at_3 = fresh.presence(room);
    let seen = at_3
        .wait_until(WAIT, |e| e.contains_key(&long_id))
        .await
        .expect("node 1's live entry is back on node 3");
    assert!(!seen.contains_key(&short_id));
    assert!(at_2.value().contains_key(&long_id));
    assert!(!at_2.value().contains_key(&short_id));
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
