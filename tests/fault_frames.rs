//! Oversized input written at the raw TCP level after a real WebSocket upgrade: one
//! 64 MiB frame, a 100 MiB message in 1 KiB continuation frames, and a 1 MB HTTP
//! header. Each is refused early (close 1009, or HTTP 431 for the header), the client
//! manages to write only what the kernel's socket buffers absorb, the server's memory
//! does not grow with it, and other clients are unaffected. Prints the close code, the bytes the
//! client wrote before the server closed, and the server's RSS growth.
//!
//! For comparison, tungstenite's defaults would accept a 64 MiB message and a 16 MiB
//! frame; Rollcall caps both at `--max-message-bytes` (64 KiB).

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use rollcall_tests::{Raw, Server, wire};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The server refused an oversized message with 1009 before reading much of it, and
/// without its memory growing with it; prints the figures.
fn assert_refused_early(
    label: &str,
    (written, code): (u64, Option<u16>),
    total: u64,
    server: &Server,
    rss_before: u64,
) {
    report(label, code, written, total, server, rss_before);
    assert_eq!(code, Some(1009));
    assert!(
        written < 16 * MIB,
        "the server kept reading: {written} bytes"
    );
    assert!(server.peak_rss_kib().saturating_sub(rss_before) < 32 * 1024);
    bystander_still_answers(server);
}

/// A client that was there before the flood still gets answers.
fn bystander_still_answers(server: &Server) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (mut raw, _) = Raw::hello(&server.ws_url()).await;
        raw.send(r#"{"type":"heartbeat","room":"pr:calm","data":1,"ttlMs":60000,"ref":1}"#)
            .await;
        assert_eq!(raw.until("ack").await["ref"], 1);
    });
}

fn report(
    what: &str,
    code: Option<u16>,
    written: u64,
    total: u64,
    server: &Server,
    rss_before: u64,
) {
    let growth = server.peak_rss_kib().saturating_sub(rss_before);
    println!(
        "figure: {what}: closed with {code:?}; client wrote {written} of {total} bytes ({:.3}%) before the close; server peak RSS growth {growth} KiB",
        written as f64 * 100.0 / total as f64
    );
}

#[test]
fn one_64_mib_frame_is_refused_at_its_header() {
    let server = Server::start();
    let stream = wire::hello(server.addr).unwrap();
    let rss_before = server.rss_kib();
    let total = 64 * MIB;
    let chunk = vec![b'x'; 64 * KIB as usize];
    let chunks = std::iter::once(wire::header(wire::TEXT, true, total))
        .chain(std::iter::repeat_n(chunk, (total / (64 * KIB)) as usize));
    let (written, code, _) =
        wire::write_until_closed(stream, chunks, |mut s| wire::read_close(&mut s));
    assert_refused_early(
        "one 64 MiB frame",
        (written, code),
        total,
        &server,
        rss_before,
    );
}

#[test]
fn a_100_mib_message_in_1_kib_fragments_is_refused() {
    let server = Server::start();
    let stream = wire::hello(server.addr).unwrap();
    let rss_before = server.rss_kib();
    let total = 100 * MIB;
    let payload = vec![b'y'; KIB as usize];
    let fragments = (total / KIB) as usize;
    // 64 fragments per write: a first text frame without FIN, then continuations.
    let chunks = (0..fragments / 64).map(move |batch| {
        let mut out = Vec::with_capacity(64 * (KIB as usize + 8));
        for i in 0..64 {
            let opcode = if batch == 0 && i == 0 {
                wire::TEXT
            } else {
                wire::CONTINUATION
            };
            out.extend_from_slice(&wire::frame(opcode, false, &payload));
        }
        out
    });
    let (written, code, _) =
        wire::write_until_closed(stream, chunks, |mut s| wire::read_close(&mut s));
    assert_refused_early(
        "100 MiB in 1 KiB continuation frames",
        (written, code),
        total,
        &server,
        rss_before,
    );
}

#[test]
fn a_1_mb_handshake_header_is_answered_431() {
    let server = Server::start();
    let rss_before = server.rss_kib();
    let stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let total = MIB;
    let head = wire::upgrade_request(server.addr, &[]);
    // The request line and upgrade headers, then 1 MB of one more header, in 16 KiB writes.
    let head = head.trim_end_matches("\r\n").to_owned() + "\r\nX-Padding: ";
    let chunks = std::iter::once(head.into_bytes())
        .chain(std::iter::repeat_n(
            vec![b'p'; 16 * KIB as usize],
            (total / (16 * KIB)) as usize,
        ))
        .chain(std::iter::once(b"\r\n\r\n".to_vec()));
    let (written, status, _) = wire::write_until_closed(stream, chunks, |mut s| {
        wire::read_head(&mut s).map(|h| h.0).ok()
    });
    let growth = server.peak_rss_kib().saturating_sub(rss_before);
    println!(
        "figure: 1 MB handshake header: answered {status:?}; client wrote {written} of {total} bytes before the close; server peak RSS growth {growth} KiB"
    );
    assert_eq!(status, Some(431));
    // Loopback socket buffers (several MiB with autotuning) take the whole megabyte
    // whatever the server does; what matters is that it answered 431 without holding
    // the head in memory.
    assert!(
        growth < 8 * 1024,
        "the server's memory grew by {growth} KiB"
    );
    bystander_still_answers(&server);
}

#[test]
fn a_message_at_the_size_limit_is_read_and_one_byte_more_closes_1009() {
    let server = Server::in_process();
    let limit = 65_536usize;
    let message = |len: usize| {
        let prefix = r#"{"type":"heartbeat","room":"pr:size","ttlMs":1000,"data":""#;
        let suffix = r#""}"#;
        let fill = len - prefix.len() - suffix.len();
        format!("{prefix}{}{suffix}", "z".repeat(fill))
    };
    // At the limit: read whole, answered data_too_large (4 KiB data cap), still open.
    let mut stream = wire::hello(server.addr).unwrap();
    stream
        .write_all(&wire::frame(wire::TEXT, true, message(limit).as_bytes()))
        .unwrap();
    let (_, payload) = wire::read_frame(&mut stream).unwrap();
    let answer = String::from_utf8_lossy(&payload).into_owned();
    assert!(answer.contains("data_too_large"), "{answer}");
    stream
        .write_all(&wire::frame(
            wire::TEXT,
            true,
            br#"{"type":"ping","ref":1}"#,
        ))
        .unwrap();
    let (_, payload) = wire::read_frame(&mut stream).unwrap();
    assert!(String::from_utf8_lossy(&payload).contains("pong"));
    // One byte more: closed with 1009.
    stream
        .write_all(&wire::frame(
            wire::TEXT,
            true,
            message(limit + 1).as_bytes(),
        ))
        .unwrap();
    assert_eq!(wire::read_close(&mut stream), Some(1009));
    println!(
        "figure: a {limit}-byte message is read (answered data_too_large, connection kept); {} bytes close with 1009",
        limit + 1
    );
    bystander_still_answers(&server);
}
