//! kill -9 in the middle of a heartbeat flood, over and over: after every restart, every
//! heartbeat the server acknowledged (in the default `flush` mode) is still there.
//!
//! 100 connections × 100 heartbeats/s (10,000/s offered), each heartbeat carrying a
//! per-client counter and a `ref`; the server is killed with SIGKILL while they are in
//! flight, restarted on the same data directory, and each client's entry must hold at
//! least the counter of its last acknowledged heartbeat (a later, unacknowledged one
//! may have reached the disk too). Prints acknowledged-and-live heartbeats missing
//! after restart (must be 0) and time to ready p50/p99.
//!
//! CI runs 20 rounds; `ROLLCALL_FAULT_ROUNDS=100 cargo test --release --test
//! fault_kill9 -- --nocapture` runs the long variant (see docs/reliability.md).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rollcall_tests::{Server, env_or, percentile};
use serde_json::{Value, json};
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;

const CONNECTIONS: usize = 100;
const ROOMS: usize = 10;
/// Heartbeats per second per connection (the server allows 120/s sustained).
const RATE: u64 = 100;
/// Long enough that every acknowledged entry is still live after the restart.
const TTL_MS: u64 = 600_000;

/// One simulated client across rounds: its id is kept with its resume token.
struct Member {
    room: String,
    id: Option<u64>,
    resume: Option<String>,
    /// The next counter to send (counters only grow, across rounds too).
    next: u64,
    /// The highest counter the server acknowledged.
    acked: u64,
}

/// What one connection did during a round.
struct Outcome {
    id: u64,
    resume: String,
    sent_up_to: u64,
    acked: u64,
    acks: u64,
}

async fn run_connection(
    url: String,
    room: String,
    resume: Option<String>,
    first: u64,
    connected: Arc<AtomicUsize>,
    stop_sending: Arc<AtomicU64>,
) -> Option<Outcome> {
    let (socket, _) = tokio_tungstenite::connect_async_with_config(&url, None, true)
        .await
        .ok()?;
    let (mut sink, mut stream) = socket.split();
    let mut hello = json!({"type": "hello"});
    if let Some(resume) = &resume {
        hello["resume"] = resume.as_str().into();
    }
    sink.send(Message::Text(hello.to_string().into()))
        .await
        .ok()?;
    let welcome: Value = loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => break serde_json::from_str(&text).ok()?,
            Some(Ok(_)) => {}
            _ => return None,
        }
    };
    let id = welcome["clientId"].as_u64()?;
    if resume.is_some() {
        assert_eq!(welcome["resumed"], true, "a resume token was refused");
    }
    let resume = welcome["resumeToken"].as_str()?.to_owned();
    connected.fetch_add(1, Ordering::Relaxed);
    let acked = Arc::new(AtomicU64::new(0));
    let acks = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let acked = acked.clone();
        let acks = acks.clone();
        async move {
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Text(text) = message {
                    let value: Value = serde_json::from_str(&text).unwrap_or_default();
                    match value["type"].as_str() {
                        Some("ack") => {
                            let r = value["ref"].as_u64().unwrap_or(0);
                            acked.fetch_max(r, Ordering::Relaxed);
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                        Some("error") => panic!("heartbeat refused: {value}"),
                        _ => {}
                    }
                }
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(1_000 / RATE));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut counter = first;
    // Send until the socket fails (the kill) or the round says stop.
    while stop_sending.load(Ordering::Relaxed) == 0 {
        tick.tick().await;
        let text = format!(
            r#"{{"type":"heartbeat","room":"{room}","data":{counter},"ttlMs":{TTL_MS},"ref":{counter}}}"#
        );
        if sink.send(Message::Text(text.into())).await.is_err() {
            break;
        }
        counter += 1;
    }
    // The kill ends the reader; acks that arrived before it count.
    let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    Some(Outcome {
        id,
        resume,
        sent_up_to: counter.saturating_sub(1),
        acked: acked.load(Ordering::Relaxed),
        acks: acks.load(Ordering::Relaxed),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loop_loses_no_acknowledged_heartbeat() {
    let _guard = rollcall_tests::exclusive().await;
    let rounds: usize = env_or("ROLLCALL_FAULT_ROUNDS", 20);
    let mut server = Server::start();
    let mut members: Vec<Member> = (0..CONNECTIONS)
        .map(|i| Member {
            room: format!("pr:kill-{}", i % ROOMS),
            id: None,
            resume: None,
            next: 1,
            acked: 0,
        })
        .collect();
    let mut ready_ms = Vec::new();
    let mut replay_ms = Vec::new();
    let (mut missing_total, mut acked_total, mut sent_total) = (0usize, 0u64, 0u64);
    let mut load_total = Duration::ZERO;
    for round in 0..rounds {
        // Vary where in the flood the kill lands: 300 to 700 ms of load.
        let load = Duration::from_millis(300 + (round as u64 * 137) % 400);
        let stop = Arc::new(AtomicU64::new(0));
        let connected = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = members
            .iter()
            .map(|m| {
                tokio::spawn(run_connection(
                    server.ws_url(),
                    m.room.clone(),
                    m.resume.clone(),
                    m.next,
                    connected.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        let all_connected = rollcall_tests::eventually(Duration::from_secs(30), || {
            connected.load(Ordering::Relaxed) == CONNECTIONS
        })
        .await;
        assert!(all_connected, "round {round}: not every client connected");
        tokio::time::sleep(load).await;
        let ready = server.kill9_and_restart();
        stop.store(1, Ordering::Relaxed);
        let mut acked_round = 0;
        let mut sent_round = 0;
        for (member, task) in members.iter_mut().zip(tasks) {
            let outcome = task
                .await
                .expect("connection task")
                .expect("connected before the kill");
            if let Some(id) = member.id {
                assert_eq!(id, outcome.id, "the client id changed across a restart");
            }
            member.id = Some(outcome.id);
            member.resume = Some(outcome.resume);
            sent_round += outcome.sent_up_to + 1 - member.next;
            member.next = outcome.sent_up_to + 1;
            acked_round += outcome.acks;
            member.acked = member.acked.max(outcome.acked);
        }
        // Every member's entry must hold its last acknowledged counter or a later one.
        let mut rooms: HashMap<String, HashMap<u64, u64>> = HashMap::new();
        for r in 0..ROOMS {
            let room = format!("pr:kill-{r}");
            let body = server.get_json(&format!("/v1/rooms/pr%3Akill-{r}"));
            let entries = body["entries"].as_array().unwrap();
            rooms.insert(
                room,
                entries
                    .iter()
                    .map(|e| (e["clientId"].as_u64().unwrap(), e["data"].as_u64().unwrap()))
                    .collect(),
            );
        }
        let mut missing = 0;
        for member in &members {
            if member.acked == 0 {
                continue;
            }
            let found = rooms[&member.room].get(&member.id.unwrap()).copied();
            match found {
                Some(value) if value >= member.acked => {
                    assert!(value < member.next, "an entry holds a value never sent");
                }
                other => {
                    missing += 1;
                    eprintln!(
                        "round {round}: client {:?} acked {} but the log has {other:?}",
                        member.id, member.acked
                    );
                }
            }
        }
        let replay = server.metric("rollcall_replay_seconds") * 1_000.0;
        println!(
            "round {round:>3}: {sent_round:>5} sent, {acked_round:>5} acked in {load:?} of load, ready in {:>4} ms (replay {replay:.1} ms), missing {missing}",
            ready.as_millis()
        );
        ready_ms.push(ready.as_secs_f64() * 1_000.0);
        replay_ms.push(replay);
        missing_total += missing;
        acked_total += acked_round;
        sent_total += sent_round;
        load_total += load;
    }
    let rate = acked_total as f64 / load_total.as_secs_f64();
    let sent_rate = sent_total as f64 / load_total.as_secs_f64();
    println!(
        "figure: {rounds} kill -9 rounds, {CONNECTIONS} connections x {RATE}/s offered; {sent_total} heartbeats sent ({sent_rate:.0}/s), {acked_total} acknowledged ({rate:.0}/s); acknowledged-and-live missing after restart: {missing_total}"
    );
    println!(
        "figure: time to ready after kill -9 (spawn to /healthz 200): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; replay p50 {:.1} ms, p99 {:.1} ms",
        percentile(&ready_ms, 50.0),
        percentile(&ready_ms, 99.0),
        percentile(&ready_ms, 100.0),
        percentile(&replay_ms, 50.0),
        percentile(&replay_ms, 99.0),
    );
    assert_eq!(missing_total, 0, "acknowledged heartbeats were lost");
    assert!(
        acked_total > 0,
        "nothing was acknowledged: the test proved nothing"
    );
}
