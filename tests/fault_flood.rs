//! Floods: WebSocket pings and pongs (closed by the control-frame token bucket with
//! 4006), JSON requests over the request rate (answered `rate_limited`, dropped), and
//! thousands of distinct room names (room maps use a keyed hasher, SipHash with a
//! random key, so names cannot be chosen to collide). Prints the server's CPU share
//! during each flood (utime + stime from `/proc/PID/stat` over wall time) and what a
//! normal client's round trips looked like meanwhile.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rollcall_tests::{Raw, Server, exclusive, percentile, wire};
use tokio_tungstenite::tungstenite::Message;

/// Floods of one connection in `a_ping_or_pong_flood_is_closed_with_4006`.
const ATTEMPTS: usize = 10;
/// How long each sustained flood lasts.
const FLOOD: Duration = Duration::from_secs(3);
/// Flooding connections (or reconnecting flooders) at once.
const ATTACKERS: usize = 4;
/// Pings sent at once by `a_request_flood_is_cut_off_with_4006_not_answered_forever`.
const BURST: usize = 5_000;
/// Connections and rooms each in the distinct-room-names flood.
const CONNECTIONS: usize = 60;
const ROOMS_EACH: usize = 128;

/// Sends `opcode` control frames as fast as it can until the server closes; returns
/// the frames written and the close code.
fn control_flood(addr: SocketAddr, opcode: u8) -> (u64, Option<u16>) {
    const PER_BATCH: u64 = 5;
    let stream = wire::hello(addr).unwrap();
    // Small batches, so that little is in flight when the server closes.
    let batch: Vec<u8> = (0..PER_BATCH)
        .flat_map(|_| wire::frame(opcode, true, b"flood"))
        .collect();
    let batch_len = batch.len() as u64;
    let batches = std::iter::repeat_n(batch, (1_000_000 / PER_BATCH) as usize);
    let (bytes, code, _) = wire::write_until_closed(stream, batches, |stream| {
        wire::read_close(&mut std::io::BufReader::new(stream))
    });
    (bytes / batch_len * PER_BATCH, code)
}

/// Measures a normal client's ping → pong round trips every 20 ms until `stop`, on a
/// thread of its own (so the test's own busy tasks do not delay it).
async fn round_trips(url: String, stop: Arc<AtomicBool>) -> Vec<f64> {
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(probe(url, stop))
    })
    .await
    .unwrap()
}

async fn probe(url: String, stop: Arc<AtomicBool>) -> Vec<f64> {
    let (mut raw, _) = Raw::hello(&url).await;
    let mut samples = Vec::new();
    let mut reference = 0u64;
    while !stop.load(Ordering::Relaxed) {
        reference += 1;
        let sent = Instant::now();
        raw.send(&format!(r#"{{"type":"ping","ref":{reference}}}"#))
            .await;
        assert_eq!(raw.until("pong").await["ref"], reference);
        samples.push(sent.elapsed().as_secs_f64() * 1_000.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    samples
}

/// CPU share of `server` (1.0 = one core) while `during` runs.
async fn cpu_share<T>(server: &Server, during: impl std::future::Future<Output = T>) -> (f64, T) {
    let cpu = server.cpu_time();
    let wall = Instant::now();
    let result = during.await;
    let share = server.cpu_time().saturating_sub(cpu).as_secs_f64() / wall.elapsed().as_secs_f64();
    (share, result)
}

#[test]
fn a_ping_or_pong_flood_is_closed_with_4006() {
    let server = Server::in_process();
    for (name, opcode) in [("ping", wire::PING), ("pong", wire::PONG)] {
        let started = Instant::now();
        let mut codes = Vec::new();
        let mut written = 0;
        for _ in 0..ATTEMPTS {
            let (frames, code) = control_flood(server.addr, opcode);
            written += frames;
            codes.push(code);
        }
        let seen = codes.iter().filter(|c| **c == Some(4006)).count();
        println!(
            "figure: {name} flood on one connection, {ATTEMPTS} times: closed with 4006 seen by the client {seen}/{ATTEMPTS} times ({codes:?}); {} frames accepted by the kernel per flood on average, {:?} per flood (limit 10/s, burst 20)",
            written / ATTEMPTS as u64,
            started.elapsed() / ATTEMPTS as u32
        );
        // Every flood is cut off; the close frame must also reach the client, which
        // needs a lingering close on the server (a socket closed with unread input is
        // reset, and the reset discards the close frame still queued).
        assert_eq!(
            seen,
            ATTEMPTS,
            "{name} flood: close frame lost in {} of {ATTEMPTS} floods",
            ATTEMPTS - seen
        );
    }
    // Pings at a normal pace are fine: 5 per second for 2 seconds.
    let mut stream = wire::hello(server.addr).unwrap();
    for _ in 0..10 {
        stream
            .write_all(&wire::frame(wire::PING, true, b"ok"))
            .unwrap();
        let (opcode, payload) = wire::read_frame(&mut stream).unwrap();
        assert_eq!((opcode, payload.as_slice()), (wire::PONG, &b"ok"[..]));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_cost_bounded_cpu_and_a_normal_client_is_still_served() {
    let _guard = exclusive().await;
    let server = Server::start();
    let url = server.ws_url();
    let addr = server.addr;

    // Baseline round trips with nobody else around.
    let stop = Arc::new(AtomicBool::new(false));
    let (idle_cpu, baseline) = cpu_share(&server, async {
        let probe = tokio::spawn(round_trips(url.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        probe.await.unwrap()
    })
    .await;

    // 1. Control frames: attackers reconnect and flood pings, over and over.
    let stop = Arc::new(AtomicBool::new(false));
    let closed_4006 = Arc::new(AtomicU64::new(0));
    let (control_cpu, (control_rtt, frames)) = cpu_share(&server, async {
        let probe = tokio::spawn(round_trips(url.clone(), stop.clone()));
        let attackers: Vec<_> = (0..ATTACKERS)
            .map(|_| {
                let stop = stop.clone();
                let closed = closed_4006.clone();
                tokio::task::spawn_blocking(move || {
                    let mut frames = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let (written, code) = control_flood(addr, wire::PING);
                        frames += written;
                        if code == Some(4006) {
                            closed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    frames
                })
            })
            .collect();
        tokio::time::sleep(FLOOD).await;
        stop.store(true, Ordering::Relaxed);
        let mut frames = 0;
        for attacker in attackers {
            frames += attacker.await.unwrap();
        }
        (probe.await.unwrap(), frames)
    })
    .await;

    // 2. JSON requests far over the request rate, read back as fast as they come.
    let stop = Arc::new(AtomicBool::new(false));
    let request_started = Instant::now();
    let (request_cpu, (request_rtt, (sent, pongs, limited))) = cpu_share(&server, async {
        let probe = tokio::spawn(round_trips(url.clone(), stop.clone()));
        let attackers: Vec<_> = (0..ATTACKERS)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    let (raw, _) = Raw::hello(&url).await;
                    let (mut sink, mut stream) = raw.socket.split();
                    let reader = tokio::spawn(async move {
                        let (mut pongs, mut limited) = (0u64, 0u64);
                        while let Some(Ok(Message::Text(text))) = stream.next().await {
                            if text.starts_with(r#"{"type":"pong""#) {
                                pongs += 1;
                            } else if text.contains(r#""code":"rate_limited""#) {
                                limited += 1;
                            }
                        }
                        (pongs, limited)
                    });
                    let mut sent = 0u64;
                    let until = Instant::now() + FLOOD;
                    // Until the time is up or the server cuts the connection off.
                    'flood: while Instant::now() < until {
                        for _ in 0..100 {
                            let ping = Message::Text(r#"{"type":"ping","ref":1}"#.into());
                            if sink.feed(ping).await.is_err() {
                                break 'flood;
                            }
                        }
                        if sink.flush().await.is_err() {
                            break;
                        }
                        sent += 100;
                    }
                    let _ = sink.close().await;
                    (sent, reader.await.unwrap())
                })
            })
            .collect();
        tokio::time::sleep(FLOOD).await;
        let (mut sent, mut pongs, mut limited) = (0, 0, 0);
        for attacker in attackers {
            let (s, (p, l)) = attacker.await.unwrap();
            sent += s;
            pongs += p;
            limited += l;
        }
        stop.store(true, Ordering::Relaxed);
        (probe.await.unwrap(), (sent, pongs, limited))
    })
    .await;
    // Until the server had worked through every request queued in the sockets.
    let request_took = request_started.elapsed();

    let summary = |samples: &[f64]| {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms",
            percentile(samples, 50.0),
            percentile(samples, 99.0)
        )
    };
    println!(
        "figure: idle server: CPU {:.0}% of a core; normal client ping round trip {}",
        idle_cpu * 100.0,
        summary(&baseline)
    );
    println!(
        "figure: control-frame flood ({ATTACKERS} reconnecting attackers, {FLOOD:?}): {frames} pings written, {} connections closed with 4006; server CPU {:.0}% of a core; normal client {}",
        closed_4006.load(Ordering::Relaxed),
        control_cpu * 100.0,
        summary(&control_rtt)
    );
    let per_second = (pongs as f64) / request_took.as_secs_f64() / ATTACKERS as f64;
    println!(
        "figure: request flood ({ATTACKERS} connections sending for {FLOOD:?}, drained in {request_took:.1?}): {sent} requests sent, {pongs} answered ({per_second:.0}/s per connection, limit 100/s + burst 200), {limited} rate_limited; server CPU {:.0}% of a core; normal client {}",
        request_cpu * 100.0,
        summary(&request_rtt)
    );
    assert!(closed_4006.load(Ordering::Relaxed) >= ATTACKERS as u64);
    assert!(limited > 0);
    // The token bucket holds: at most the burst plus the rate for as long as the
    // server was reading the flood.
    let allowed = (200.0 + 100.0 * request_took.as_secs_f64()) * ATTACKERS as f64;
    assert!(
        pongs as f64 <= allowed,
        "{pongs} answered, more than {allowed}"
    );
    // Generous: the point is that the normal client is still served. (A request
    // flood is answered rather than cut off; see the test below.)
    assert!(
        percentile(&control_rtt, 99.0) < 1_000.0,
        "{}",
        summary(&control_rtt)
    );
    assert!(!request_rtt.is_empty());
    assert!(
        percentile(&request_rtt, 99.0) < 5_000.0,
        "{}",
        summary(&request_rtt)
    );
}

#[tokio::test]
async fn a_request_flood_is_cut_off_with_4006_not_answered_forever() {
    // docs/protocol.md: 4006 is "too many control frames or pings". A connection that
    // keeps sending far over the request rate costs the server a parse and an error
    // frame per request for as long as it likes; it should be closed instead.
    let server = Server::in_process();
    let (mut raw, _) = Raw::hello(&server.ws_url()).await;
    for _ in 0..BURST {
        raw.socket
            .feed(Message::Text(r#"{"type":"ping"}"#.into()))
            .await
            .unwrap();
    }
    raw.socket.flush().await.unwrap();
    let mut answered = 0;
    let closed = loop {
        match raw.next().await {
            rollcall_tests::RawEvent::Json(_) => {
                answered += 1;
                if answered == BURST {
                    break None;
                }
            }
            rollcall_tests::RawEvent::Closed(code) => break Some(code),
            rollcall_tests::RawEvent::Ended => break None,
        }
    };
    println!(
        "figure: {BURST} pings sent at once (limit 100/s, burst 200): {answered} answered, then closed with {closed:?}"
    );
    assert_eq!(
        closed,
        Some(4006),
        "the flood was answered {answered} times and never cut off"
    );
    assert!(answered < 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_distinct_room_names_do_not_slow_a_normal_client() {
    let _guard = exclusive().await;
    rollcall_tests::raise_fd_limit();
    let server = Server::launch().arg("--durability").arg("memory").start();
    let url = server.ws_url();

    // A normal client: heartbeat into its subscribed room, time until the change.
    let (mut normal, welcome) = Raw::hello(&url).await;
    let id = welcome["clientId"].as_u64().unwrap();
    normal
        .send(r#"{"type":"subscribe","room":"pr:normal"}"#)
        .await;
    normal.until("snapshot").await;
    let mut sample = async |n: usize| {
        let mut samples = Vec::new();
        for i in 0..n {
            let sent = Instant::now();
            normal
                .send(&format!(
                    r#"{{"type":"heartbeat","room":"pr:normal","data":{i},"ttlMs":600000}}"#
                ))
                .await;
            loop {
                let changes = normal.until("changes").await;
                if changes["changes"][0]["clientId"] == id && changes["changes"][0]["data"] == i {
                    break;
                }
            }
            samples.push(sent.elapsed().as_secs_f64() * 1_000.0);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        samples
    };
    let before = sample(100).await;

    // The flood: many connections, each using its 128 rooms (the cap), every name
    // distinct, long and sharing a long prefix.
    let prefix = "flood:".to_string() + &"a".repeat(200);
    let started = Instant::now();
    let flooders: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let url = url.clone();
            let prefix = prefix.clone();
            tokio::spawn(async move {
                let (mut raw, _) = Raw::hello(&url).await;
                for r in 0..ROOMS_EACH {
                    let room = format!("{prefix}-{c:04}-{r:04}");
                    raw.socket
                        .feed(Message::Text(
                            format!(r#"{{"type":"subscribe","room":"{room}"}}"#).into(),
                        ))
                        .await
                        .unwrap();
                    raw.socket
                        .feed(Message::Text(
                            format!(r#"{{"type":"heartbeat","room":"{room}","data":{r},"ttlMs":600000,"ref":{r}}}"#)
                                .into(),
                        ))
                        .await
                        .unwrap();
                }
                raw.socket.flush().await.unwrap();
                let mut acks = 0;
                while acks < ROOMS_EACH {
                    let message = raw.json().await;
                    match message["type"].as_str() {
                        Some("ack") => acks += 1,
                        Some("error") => panic!("{message}"),
                        _ => {}
                    }
                }
                raw
            })
        })
        .collect();
    let mut held = Vec::new();
    for flooder in flooders {
        held.push(flooder.await.unwrap());
    }
    let flood_took = started.elapsed();
    let rooms = server.metric("rollcall_rooms");
    let after = sample(100).await;
    println!(
        "figure: {} distinct room names ({} subscriptions) created in {flood_took:?}; rollcall_rooms {rooms}; normal client heartbeat -> change: before p50 {:.2} ms p99 {:.2} ms, after p50 {:.2} ms p99 {:.2} ms",
        CONNECTIONS * ROOMS_EACH,
        CONNECTIONS * ROOMS_EACH,
        percentile(&before, 50.0),
        percentile(&before, 99.0),
        percentile(&after, 50.0),
        percentile(&after, 99.0),
    );
    assert!(rooms >= (CONNECTIONS * ROOMS_EACH) as f64);
    // Generous bound: a collision attack would turn lookups linear in the room count
    // (milliseconds per operation at this size); keyed hashing keeps them flat.
    assert!(
        percentile(&after, 50.0) < percentile(&before, 50.0) * 5.0 + 5.0,
        "the normal client slowed down"
    );
    drop(held);
}
