//! A subscriber that stops reading while heartbeats flood its room: the server's
//! memory stays bounded (conflation), and once it reads again its view converges to
//! the room's exact state.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rollcall_tests::{Raw, Server};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

const WRITERS: usize = 12;
const RATE_PER_WRITER: u64 = 100; // 1,200 heartbeats/s in all
/// Heartbeats per writer: a fixed flood (~16 MiB in all), however busy the machine, so
/// the memory bound below does not shrink when the writers are slow.
const PER_WRITER: u64 = 400;

/// Applies snapshot and changes messages to a view of one room.
fn apply(view: &mut BTreeMap<u64, Value>, message: &Value) {
    match message["type"].as_str() {
        Some("snapshot") => {
            view.clear();
            for entry in message["entries"].as_array().unwrap() {
                view.insert(entry["clientId"].as_u64().unwrap(), entry["data"].clone());
            }
        }
        Some("changes") => {
            for change in message["changes"].as_array().unwrap() {
                let id = change["clientId"].as_u64().unwrap();
                if change["op"] == "upsert" {
                    view.insert(id, change["data"].clone());
                } else {
                    view.remove(&id);
                }
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_costs_bounded_memory_and_catches_up_exactly() {
    let server = Server::start();

    // The slow subscriber: a tiny receive buffer, so the server's socket fills quickly.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4_096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(server.ws_url(), stream)
        .await
        .unwrap();
    slow.send(Message::Text(r#"{"type":"hello"}"#.into()))
        .await
        .unwrap();
    slow.send(Message::Text(
        r#"{"type":"subscribe","room":"pr:flood"}"#.into(),
    ))
    .await
    .unwrap();
    // Read the welcome and the snapshot, then stop reading.
    let mut view = BTreeMap::new();
    loop {
        let Some(Ok(Message::Text(text))) = slow.next().await else {
            panic!("closed")
        };
        let message: Value = serde_json::from_str(&text).unwrap();
        apply(&mut view, &message);
        if message["type"] == "snapshot" {
            break;
        }
    }

    let rss_before = server.rss_kib();
    let url = server.ws_url();
    // ~3.5 KiB per heartbeat: 4,800 of them push ~16 MiB through the room.
    let payload = "p".repeat(3_500);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let url = url.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                // Writers do not subscribe: the slow reader is the room's only audience.
                let (mut raw, _) = Raw::hello(&url).await;
                let interval = Duration::from_micros(1_000_000 / RATE_PER_WRITER);
                let n = PER_WRITER;
                for n in 0..n {
                    let data = json!({"w": w, "n": n, "pad": payload});
                    raw.send(&format!(
                        r#"{{"type":"heartbeat","room":"pr:flood","data":{data},"ttlMs":600000}}"#
                    ))
                    .await;
                    tokio::time::sleep(interval).await;
                }
                // The last one, acknowledged: the room's final state.
                let data = json!({"w": w, "n": n, "final": true});
                raw.send(&format!(
                    r#"{{"type":"heartbeat","room":"pr:flood","data":{data},"ttlMs":600000,"ref":1}}"#
                ))
                .await;
                raw.until("ack").await;
                (raw, n)
            })
        })
        .collect();
    let mut sent = 0;
    let mut clients = Vec::new();
    for writer in writers {
        let (client, n) = writer.await.unwrap();
        sent += n;
        clients.push(client);
    }
    let rss_after = server.rss_kib();
    let growth_kib = rss_after.saturating_sub(rss_before);
    let flooded_kib = sent * 3_500 / 1024;
    println!(
        "slow consumer: {sent} heartbeats ({flooded_kib} KiB) while not reading; \
         server RSS {rss_before} -> {rss_after} KiB (+{growth_kib} KiB)"
    );
    assert_eq!(sent, PER_WRITER * WRITERS as u64, "the flood happened");
    // Changes queued for the reader versus changes written to it: the difference was
    // conflated away instead of piling up.
    let queued = server.metric("rollcall_fanout_changes_total");
    let delivered = server.metric("rollcall_fanout_delivered_total");
    println!("slow consumer: {queued} changes queued, {delivered} written");
    assert!(delivered > 0.0, "what was written was not counted");
    assert!(
        queued - delivered > 1_000.0,
        "{queued} queued, {delivered} written"
    );
    // Without conflation the server would queue everything the reader missed. With
    // it, the pending state is one change per writer; the bound is generous for the
    // allocator and socket buffers.
    assert!(
        growth_kib < flooded_kib / 2 && growth_kib < 24 * 1024,
        "RSS grew by {growth_kib} KiB for {flooded_kib} KiB of flood"
    );

    // Read again: the view converges to the room's exact state.
    let expected: BTreeMap<u64, Value> = server.get_json("/v1/rooms/pr%3Aflood")["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["clientId"].as_u64().unwrap(), e["data"].clone()))
        .collect();
    assert_eq!(expected.len(), WRITERS);
    let deadline = Instant::now() + Duration::from_secs(30);
    while view != expected {
        assert!(Instant::now() < deadline, "the slow reader never caught up");
        let next = tokio::time::timeout(Duration::from_secs(10), slow.next())
            .await
            .unwrap();
        let Some(Ok(Message::Text(text))) = next else {
            continue;
        };
        apply(&mut view, &serde_json::from_str(&text).unwrap());
    }
    assert!(view.values().all(|data| data["final"] == true));
}
