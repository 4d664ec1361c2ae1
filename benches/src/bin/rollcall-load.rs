//! `rollcall-load`: drives a running presence server over real WebSockets and reports
//! what it sustained.
//!
//! N clients in rooms of K each heartbeat R times a second with a small JSON payload;
//! every client also subscribes to its room, so each heartbeat is delivered to the
//! K - 1 others. Sends are scheduled open-loop (client i's n-th heartbeat is due at
//! `start + phase_i + n / R` whatever happened before), and each payload carries its
//! scheduled time, so a delivery's latency includes any queueing on the way: a
//! saturated server shows up as latency, not as a politely slower load.
//!
//! Targets: `rollcall` (docs/protocol.md) and `y-websocket` (the awareness protocol of
//! `@y/websocket-server`: the URL path is the room; message type 1 carries an awareness
//! update of varuint-encoded client id, clock and JSON state).
//!
//! ```text
//! rollcall-load --url ws://127.0.0.1:7700/ws --clients 2000 --room-size 50 --rate 20 \
//!     --duration 60s --server-pid $(pgrep -x rollcall) --json summary.json
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use memchr::memmem;
use rollcall_testkit::http::urlencode;
use rollcall_testkit::wire::{self, BINARY, CLOSE, PING, PONG, TEXT};
use rollcall_testkit::{metrics, procfs};
use serde_json::json;
use tokio::net::TcpSocket;
use tokio::sync::Notify;

/// Which server protocol to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    /// Rollcall's JSON protocol.
    Rollcall,
    /// The y-websocket awareness protocol.
    YWebsocket,
}

/// Drives a presence server with N clients in rooms of K.
#[derive(Clone, Debug, Parser)]
#[command(name = "rollcall-load", version, about)]
struct Args {
    /// WebSocket URL (for y-websocket: the server's base URL; the room is appended).
    /// Repeat it to spread clients over a cluster's nodes: client i uses URL i mod n,
    /// so every room has members on every node.
    #[arg(long, default_value = "ws://127.0.0.1:7700/ws")]
    url: Vec<String>,
    /// The protocol to speak.
    #[arg(long, value_enum, default_value_t = Target::Rollcall)]
    target: Target,
    /// Clients (one WebSocket each).
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Clients per room.
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    /// Heartbeats per second per client.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Approximate size of each heartbeat's JSON data, in bytes.
    #[arg(long, default_value_t = 60)]
    payload: usize,
    /// TTL of each heartbeat, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    ttl_ms: u64,
    /// Measured time after the warm-up (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load applied before measuring starts.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 2_000.0)]
    connect_rate: f64,
    /// Fraction of clients per second that leave, or drop without closing, and are
    /// replaced by a new client (e.g. 0.005).
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Server process id: report its CPU and RSS from /proc (repeat it for a
    /// cluster: the figures are the sums).
    #[arg(long)]
    server_pid: Vec<u32>,
    /// Local 127.0.0.x source addresses to spread connections over (0: one per 5,000
    /// clients, well under the server's default cap of 10,000 connections per IP).
    #[arg(long, default_value_t = 0)]
    sources: usize,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Rollcall: the `intervalMs` of every subscription (0: none), for the latest state
    /// per client at that rate instead of every change.
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Rollcall: in each room only the first N clients subscribe in full; the others
    /// subscribe with `"mode":"occupancy"` (counts only, at most once a second). All
    /// of them heartbeat. Unset: everyone subscribes in full.
    #[arg(long)]
    full_subscribers: Option<usize>,
    /// Rollcall, with `--full-subscribers`: the other clients subscribe with
    /// `"mode":"sample","limit":N` (the room's N oldest entries and its counts)
    /// instead of occupancy.
    #[arg(long, requires = "full_subscribers")]
    sample_limit: Option<u64>,
    /// Room name prefix.
    #[arg(long, default_value = "load")]
    room_prefix: String,
    /// Write the summary as JSON to this file (it is always printed).
    #[arg(long)]
    json: Option<PathBuf>,
    /// A label for the summary (e.g. the workload's name).
    #[arg(long, default_value = "")]
    label: String,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((text, "s"), |i| text.split_at(i));
    let value: f64 = number.parse().map_err(|e| format!("{text:?}: {e}"))?;
    let seconds = match unit {
        "ms" => value / 1_000.0,
        "s" => value,
        "m" => value * 60.0,
        other => return Err(format!("unknown unit {other:?} (use ms, s or m)")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// Microseconds since the generator started: the clock payloads carry.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn micros_since_epoch(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_micros() as u64
}

/// Counters and histograms shared by every client.
struct Stats {
    /// Set while the measured window is open.
    measuring: AtomicBool,
    sent: AtomicU64,
    rejected: AtomicU64,
    deliveries: AtomicU64,
    /// Bytes of the frames the clients received (payloads) in the measured window.
    received_bytes: AtomicU64,
    connected: AtomicU64,
    connect_failures: AtomicU64,
    disconnects: AtomicU64,
    /// Latency of deliveries in the current progress interval and in the whole window.
    latency: Mutex<(Histogram<u64>, Histogram<u64>)>,
    /// Latency of deliveries between clients of different cluster nodes (the node id
    /// is in the high bits of client ids), over the whole window.
    cross_node: Mutex<Histogram<u64>>,
}

impl Stats {
    fn new() -> Stats {
        let histogram = || Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
        Stats {
            measuring: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            latency: Mutex::new((histogram(), histogram())),
            cross_node: Mutex::new(histogram()),
        }
    }

    fn record(&self, latencies: &[u64], cross_node: &[u64]) {
        if latencies.is_empty() {
            return;
        }
        if !cross_node.is_empty() && self.measuring.load(Ordering::Relaxed) {
            let mut cross = self
                .cross_node
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for &micros in cross_node {
                let _ = cross.record(micros.max(1));
            }
        }
        let mut guard = self
            .latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let measuring = self.measuring.load(Ordering::Relaxed);
        for &micros in latencies {
            let micros = micros.max(1);
            let _ = guard.0.record(micros);
            if measuring {
                let _ = guard.1.record(micros);
            }
        }
        if measuring {
            self.deliveries
                .fetch_add(latencies.len() as u64, Ordering::Relaxed);
        }
    }
}

/// What the churn task asks a client to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Churn {
    /// Leave the room and close cleanly, then come back as a new client.
    Leave,
    /// Vanish without a close frame, then come back as a new client.
    Drop,
}

struct ClientSlot {
    churn: Mutex<Option<Churn>>,
    wake: Notify,
}

/// Bits of a client id below its node id (cluster mode).
const NODE_SHIFT: u32 = 40;

/// Scans a Rollcall `changes` frame: latency of every upsert from another client whose
/// data has a top-level integer `ts`, and again in `cross` if that client is on another
/// node.
///
/// It reads the frame as JSON without building a tree (strings with their escapes,
/// white space, nesting), so it finds exactly what a full parse finds; a frame it
/// cannot read adds nothing.
fn scan_rollcall(frame: &[u8], own: u64, now_us: u64, out: &mut Vec<u64>, cross: &mut Vec<u64>) {
    if !frame.starts_with(b"{\"type\":\"changes\"") {
        return;
    }
    let (before, before_cross) = (out.len(), cross.len());
    let mut reader = JsonReader {
        bytes: frame,
        at: 0,
    };
    let read = reader.object(0, |reader, key| {
        if !key_is(key, "changes") {
            return reader.skip(1);
        }
        reader.array(1, |reader| {
            let (mut op_upsert, mut client, mut ts) = (false, None, None);
            reader.object(2, |reader, key| {
                if key_is(key, "op") {
                    op_upsert = key_is(reader.string()?, "upsert");
                } else if key_is(key, "clientId") {
                    client = Some(reader.unsigned()?.as_u64()?);
                } else if key_is(key, "data") {
                    ts = reader.top_level_ts(3)?.as_u64();
                } else {
                    reader.skip(3)?;
                }
                Some(())
            })?;
            let client = client?;
            if let Some(ts) = ts.filter(|_| op_upsert && client != own) {
                out.push(now_us.saturating_sub(ts));
                if client >> NODE_SHIFT != own >> NODE_SHIFT {
                    cross.push(now_us.saturating_sub(ts));
                }
            }
            Some(())
        })
    });
    if read.is_none() {
        out.truncate(before);
        cross.truncate(before_cross);
    }
}

/// A value read where an unsigned integer is wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Read {
    /// An integer that fits a `u64` (what `serde_json::Value::as_u64` accepts).
    Unsigned(u64),
    /// Any other value (or none).
    Other,
}

impl Read {
    fn as_u64(self) -> Option<u64> {
        match self {
            Read::Unsigned(n) => Some(n),
            Read::Other => None,
        }
    }
}

/// Whether a text frame is an `error` (the server writes `type` first).
fn is_error(frame: &[u8]) -> bool {
    frame.starts_with(b"{\"type\":\"error\"")
}

/// Deeper nesting than this is refused (the server allows 64 levels of data).
const MAX_SCAN_DEPTH: usize = 128;

/// Reads JSON text in place: enough to walk objects and arrays and skip the rest.
/// Every method returns `None` for text that is not JSON.
struct JsonReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> JsonReader<'a> {
    /// The next byte after white space.
    fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.bytes.get(self.at) {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    /// Consumes `byte` if it comes next.
    fn eat(&mut self, byte: u8) -> bool {
        let next = self.peek() == Some(byte);
        if next {
            self.at += 1;
        }
        next
    }

    /// A string: its text between the quotes, escapes left as they are.
    fn string(&mut self) -> Option<&'a [u8]> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.at;
        loop {
            let found = memchr::memchr2(b'"', b'\\', self.bytes.get(self.at..)?)?;
            self.at += found;
            if self.bytes[self.at] == b'"' {
                self.at += 1;
                return Some(&self.bytes[start..self.at - 1]);
            }
            self.at += 2; // a backslash and the byte it escapes
        }
    }

    /// An object: `field` is called with each key and must read its value.
    fn object(
        &mut self,
        depth: usize,
        mut field: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        if depth > MAX_SCAN_DEPTH || !self.eat(b'{') {
            return None;
        }
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            let key = self.string()?;
            if !self.eat(b':') {
                return None;
            }
            field(self, key)?;
            if self.eat(b'}') {
                return Some(());
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    /// An array: `item` is called for each element and must read it.
    fn array(&mut self, depth: usize, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        if depth > MAX_SCAN_DEPTH || !self.eat(b'[') {
            return None;
        }
        if self.eat(b']') {
            return Some(());
        }
        loop {
            item(self)?;
            if self.eat(b']') {
                return Some(());
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    /// Skips one value.
    fn skip(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(depth, |reader, _| reader.skip(depth + 1)),
            b'[' => self.array(depth, |reader| reader.skip(depth + 1)),
            _ => self.scalar().map(drop),
        }
    }

    /// A number, `true`, `false` or `null`: its text.
    fn scalar(&mut self) -> Option<&'a [u8]> {
        self.peek()?;
        let start = self.at;
        while let Some(&b) = self.bytes.get(self.at) {
            if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.at += 1;
        }
        (self.at > start).then(|| &self.bytes[start..self.at])
    }

    /// Reads one value, telling whether it is an unsigned integer.
    fn unsigned(&mut self) -> Option<Read> {
        if !self.peek()?.is_ascii_digit() {
            return self.skip(0).map(|()| Read::Other);
        }
        let text = self.scalar()?;
        if !text.iter().all(u8::is_ascii_digit) {
            return Some(Read::Other); // a fraction or an exponent
        }
        let value = text.iter().try_fold(0u64, |n, &b| {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        });
        Some(value.map_or(Read::Other, Read::Unsigned))
    }

    /// Reads heartbeat data: its top-level `ts` when that is an integer (the last one
    /// if the key repeats, as a parse keeps it).
    fn top_level_ts(&mut self, depth: usize) -> Option<Read> {
        if self.peek()? != b'{' {
            return self.skip(depth).map(|()| Read::Other);
        }
        let mut ts = Read::Other;
        self.object(depth, |reader, key| {
            if key_is(key, "ts") {
                ts = reader.unsigned()?;
                Some(())
            } else {
                reader.skip(depth + 1)
            }
        })?;
        Some(ts)
    }
}

/// Whether a key (its text between the quotes) means `name`, escapes decoded.
fn key_is(raw: &[u8], name: &str) -> bool {
    if !raw.contains(&b'\\') {
        return raw == name.as_bytes();
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted).is_ok_and(|key| key == name)
}

fn parse_number(bytes: &[u8], mut at: usize) -> (u64, usize) {
    let mut value: u64 = 0;
    while let Some(&b) = bytes.get(at) {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
        at += 1;
    }
    (value, at)
}

fn read_varuint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value: u64 = 0;
    let mut shift = 0;
    loop {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

fn write_varuint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Scans a y-websocket message: latency of every awareness state from another client.
fn scan_awareness(message: &[u8], own: u64, now_us: u64, out: &mut Vec<u64>) -> Option<()> {
    static TS: OnceLock<memmem::Finder<'static>> = OnceLock::new();
    let ts_key = TS.get_or_init(|| memmem::Finder::new(b"\"ts\":"));
    let mut at = 0;
    if read_varuint(message, &mut at)? != 1 {
        return Some(()); // sync and other messages carry no awareness
    }
    let _update_len = read_varuint(message, &mut at)?;
    let count = read_varuint(message, &mut at)?;
    for _ in 0..count {
        let client = read_varuint(message, &mut at)?;
        let _clock = read_varuint(message, &mut at)?;
        let len = usize::try_from(read_varuint(message, &mut at)?).ok()?;
        let state = message.get(at..at + len)?;
        at += len;
        if client == own {
            continue;
        }
        if let Some(found) = ts_key.find(state) {
            let (ts, _) = parse_number(state, found + b"\"ts\":".len());
            out.push(now_us.saturating_sub(ts));
        }
    }
    Some(())
}

/// The JSON data of a heartbeat scheduled at `ts` (µs), padded to about `size` bytes.
fn payload(ts: u64, seq: u64, size: usize) -> String {
    let x = seq % 1_920;
    let y = (seq * 7) % 1_080;
    let base = format!(r#"{{"ts":{ts},"x":{x},"y":{y},"p":""}}"#);
    let pad = size.saturating_sub(base.len());
    format!(r#"{{"ts":{ts},"x":{x},"y":{y},"p":"{}"}}"#, "x".repeat(pad))
}

struct Plan {
    args: Args,
    /// Varies client ids from run to run.
    id_salt: u64,
    period: Duration,
    start: Instant,
    end: Instant,
    stop: Notify,
    stopped: AtomicBool,
}

/// Deliveries per second if every heartbeat reaches every other member of its room
/// (the last room may be partial).
fn expected_deliveries(clients: usize, room_size: usize, rate: f64) -> f64 {
    let size = room_size.max(1);
    let (full, rest) = (clients / size, clients % size);
    let pairs = full * size * (size - 1) + rest * rest.saturating_sub(1);
    pairs as f64 * rate
}

fn room_of(args: &Args, index: usize) -> String {
    format!("{}-{}", args.room_prefix, index / args.room_size.max(1))
}

fn source_of(args: &Args, index: usize) -> Option<IpAddr> {
    let sources = if args.sources == 0 {
        args.clients.div_ceil(5_000).max(1)
    } else {
        args.sources
    };
    (sources > 1).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (index % sources) as u8)))
}

/// A lean WebSocket client. The generator reads millions of changes a second on one
/// core, so it parses frames in place from one reusable buffer (no zeroing before each
/// read, no copy of each payload, no UTF-8 pass) and masks with a zero key.
struct Wire {
    read: tokio::net::tcp::OwnedReadHalf,
    write: tokio::net::tcp::OwnedWriteHalf,
    buf: bytes::BytesMut,
    out: Vec<u8>,
}

impl Wire {
    /// Performs the HTTP upgrade on `stream`.
    async fn upgrade(
        stream: tokio::net::TcpStream,
        host: &str,
        path: &str,
    ) -> anyhow::Result<Wire> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut read, mut write) = stream.into_split();
        let request = wire::upgrade_request_for(host, path, &[]);
        write.write_all(request.as_bytes()).await?;
        let mut buf = bytes::BytesMut::with_capacity(16 * 1024);
        let end = loop {
            if read.read_buf(&mut buf).await? == 0 {
                bail!("closed during the upgrade");
            }
            if let Some(end) = memmem::find(&buf, b"\r\n\r\n") {
                break end + 4;
            }
            if buf.len() > 8 * 1024 {
                bail!("upgrade response too long");
            }
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            bail!(
                "upgrade refused: {}",
                String::from_utf8_lossy(&buf[..end.min(120)])
            );
        }
        let _ = buf.split_to(end);
        Ok(Wire {
            read,
            write,
            buf,
            out: Vec::with_capacity(1024),
        })
    }

    /// Sends one frame (masked with a zero key, as a client must mask).
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.out.clear();
        wire::put_header(&mut self.out, opcode, true, payload.len() as u64);
        self.out.extend_from_slice(payload);
        self.write.write_all(&self.out).await
    }

    /// Reads what the socket has; false at end of stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        use tokio::io::AsyncReadExt;
        if self.buf.capacity() - self.buf.len() < 4 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        Ok(self.read.read_buf(&mut self.buf).await? > 0)
    }

    /// The next complete frame in the buffer: its opcode and payload.
    fn frame(&mut self) -> Option<(u8, bytes::Bytes)> {
        let (opcode, header, len) = wire::parse_header(&self.buf)?;
        let len = usize::try_from(len).ok()?;
        if self.buf.len() < header + len {
            return None;
        }
        let mut frame = self.buf.split_to(header + len);
        let _ = frame.split_to(header);
        Some((opcode, frame.freeze()))
    }

    /// Reads until a text frame arrives; `None` at end of stream.
    async fn text(&mut self) -> anyhow::Result<Option<bytes::Bytes>> {
        loop {
            while let Some((opcode, payload)) = self.frame() {
                match opcode {
                    TEXT => return Ok(Some(payload)),
                    CLOSE => return Ok(None),
                    PING => self.send(PONG, &payload).await?,
                    _ => {}
                }
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    async fn close(&mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.send(CLOSE, &1000u16.to_be_bytes()).await;
        let _ = self.write.shutdown().await;
    }
}

async fn open(plan: &Plan, index: usize) -> anyhow::Result<Wire> {
    let args = &plan.args;
    let base = &args.url[index % args.url.len()];
    let url = match args.target {
        Target::Rollcall => base.clone(),
        Target::YWebsocket => format!("{}/{}", base.trim_end_matches('/'), room_of(args, index)),
    };
    let parsed = url::Url::parse(&url)?;
    let host = parsed.host_str().context("URL without host")?;
    let port = parsed.port_or_known_default().context("URL without port")?;
    let addr: SocketAddr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .context("host does not resolve")?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = source_of(args, index) {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Wire::upgrade(stream, &format!("{host}:{port}"), parsed.path()).await
}

/// One simulated client: connects, joins its room, heartbeats on schedule, records
/// deliveries, and obeys the churn task. Reconnects (as a new client) after churn.
async fn client(plan: Arc<Plan>, stats: Arc<Stats>, slot: Arc<ClientSlot>, index: usize) {
    let args = &plan.args;
    let phase = plan
        .period
        .mul_f64(index as f64 / args.clients.max(1) as f64);
    let mut next = plan.start + phase;
    let mut seq: u64 = 0;
    let mut latencies = Vec::with_capacity(256);
    let mut cross_node = Vec::with_capacity(256);
    // Awareness ignores an update whose clock is not above the last one seen for that
    // client id, so ids must not repeat across runs against the same server.
    let y_id = (plan.id_salt + index as u64 * 7_919) % (1 << 30) + 1;
    let mut y_clock: u64 = 0;
    loop {
        let mut ws = match open(&plan, index).await {
            Ok(ws) => ws,
            Err(error) => {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                if stats.connect_failures.load(Ordering::Relaxed) < 5 {
                    eprintln!("client {index}: connect failed: {error:#}");
                }
                if plan.stopped.load(Ordering::Relaxed) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let room = room_of(args, index);
        let mut own = y_id;
        if args.target == Target::Rollcall {
            if ws.send(TEXT, br#"{"type":"hello"}"#).await.is_err() {
                continue;
            }
            while let Ok(Some(text)) = ws.text().await {
                let value: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
                if value["type"] == "welcome" {
                    own = value["clientId"].as_u64().unwrap_or(0);
                    break;
                }
            }
            let mut subscribe = if args.interval_ms > 0 {
                json!({"type": "subscribe", "room": room, "intervalMs": args.interval_ms})
            } else {
                json!({"type": "subscribe", "room": room})
            };
            if args
                .full_subscribers
                .is_some_and(|full| index % args.room_size.max(1) >= full)
            {
                match args.sample_limit {
                    Some(limit) => {
                        subscribe["mode"] = json!("sample");
                        subscribe["limit"] = json!(limit);
                    }
                    None => subscribe["mode"] = json!("occupancy"),
                }
            }
            let subscribe = subscribe.to_string();
            if ws.send(TEXT, subscribe.as_bytes()).await.is_err() {
                continue;
            }
        }
        stats.connected.fetch_add(1, Ordering::Relaxed);
        let churn = loop {
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {
                    if plan.stopped.load(Ordering::Relaxed) {
                        break None;
                    }
                    let ts = micros_since_epoch(next);
                    let data = payload(ts, seq, args.payload);
                    seq += 1;
                    next += plan.period;
                    let sent = match args.target {
                        Target::Rollcall => {
                            let text = format!(
                                r#"{{"type":"heartbeat","room":"{room}","data":{data},"ttlMs":{}}}"#,
                                args.ttl_ms
                            );
                            ws.send(TEXT, text.as_bytes()).await
                        }
                        Target::YWebsocket => {
                            y_clock += 1;
                            let mut update = Vec::with_capacity(data.len() + 16);
                            write_varuint(&mut update, 1);
                            write_varuint(&mut update, y_id);
                            write_varuint(&mut update, y_clock);
                            write_varuint(&mut update, data.len() as u64);
                            update.extend_from_slice(data.as_bytes());
                            let mut message = Vec::with_capacity(update.len() + 8);
                            write_varuint(&mut message, 1);
                            write_varuint(&mut message, update.len() as u64);
                            message.extend_from_slice(&update);
                            ws.send(BINARY, &message).await
                        }
                    };
                    if sent.is_err() {
                        break None;
                    }
                    if stats.measuring.load(Ordering::Relaxed) {
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                filled = ws.fill() => {
                    if !matches!(filled, Ok(true)) {
                        break None;
                    }
                    let now_us = micros_since_epoch(Instant::now());
                    latencies.clear();
                    cross_node.clear();
                    let mut closed = false;
                    let measuring = stats.measuring.load(Ordering::Relaxed);
                    while let Some((opcode, payload)) = ws.frame() {
                        if measuring {
                            stats.received_bytes.fetch_add(payload.len() as u64, Ordering::Relaxed);
                        }
                        match opcode {
                            TEXT => {
                                if is_error(&payload) {
                                    stats.rejected.fetch_add(1, Ordering::Relaxed);
                                }
                                scan_rollcall(&payload, own, now_us, &mut latencies, &mut cross_node);
                            }
                            BINARY => {
                                let _ = scan_awareness(&payload, own, now_us, &mut latencies);
                            }
                            PING if ws.send(PONG, &payload).await.is_err() => closed = true,
                            CLOSE => closed = true,
                            _ => {}
                        }
                    }
                    stats.record(&latencies, &cross_node);
                    if closed {
                        break None;
                    }
                }
                () = slot.wake.notified() => {
                    let order = slot.churn.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                    if order.is_some() {
                        break order;
                    }
                }
                () = plan.stop.notified() => break None,
            }
        };
        stats.connected.fetch_sub(1, Ordering::Relaxed);
        match churn {
            Some(Churn::Leave) => {
                if args.target == Target::Rollcall {
                    let leave = json!({"type": "leave", "room": room}).to_string();
                    let _ = ws.send(TEXT, leave.as_bytes()).await;
                }
                ws.close().await;
            }
            Some(Churn::Drop) => drop(ws),
            None => {
                if plan.stopped.load(Ordering::Relaxed) {
                    let _ = tokio::time::timeout(Duration::from_millis(200), ws.close()).await;
                    return;
                }
                stats.disconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
        if plan.stopped.load(Ordering::Relaxed) || Instant::now() >= plan.end {
            return;
        }
        // A new client takes the place; it keeps the schedule of the one it replaces.
        let now = Instant::now();
        while next < now {
            next += plan.period;
        }
    }
}

/// CPU time (seconds) and RSS (KiB) summed over the server processes; `None` without
/// any, or if one cannot be read.
fn servers_usage(pids: &[u32]) -> Option<(f64, u64)> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().try_fold((0.0, 0), |(cpu, rss), &pid| {
        let (c, r) = procfs::usage(pid)?;
        Some((cpu + c.as_secs_f64(), rss + r))
    })
}

/// `GET path` on the server of `url`; the body as text.
async fn http_get(url: &str, path: &str) -> anyhow::Result<String> {
    let parsed = url::Url::parse(url)?;
    let host = parsed.host_str().context("URL without host")?.to_owned();
    let port = parsed.port_or_known_default().context("URL without port")?;
    Ok(rollcall_testkit::http::get(&host, port, path).await?)
}

/// Entries past their TTL in `GET /v1/rooms` (the ghost check after a churn run).
async fn entries_past_ttl(url: &str) -> anyhow::Result<(u64, u64)> {
    let get = |path: String| async move {
        let body = http_get(url, &path).await?;
        anyhow::Ok(serde_json::from_str::<serde_json::Value>(&body)?)
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let (mut entries, mut ghosts) = (0, 0);
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/rooms?limit=1000&after={}", urlencode(a)),
            None => "/v1/rooms?limit=1000".to_owned(),
        };
        let page = get(path).await?;
        for room in page["rooms"].as_array().into_iter().flatten() {
            let name = room["room"].as_str().unwrap_or_default();
            let body = get(format!("/v1/rooms/{}", urlencode(name))).await?;
            for entry in body["entries"].as_array().into_iter().flatten() {
                entries += 1;
                if entry["expiresAtMs"].as_u64().unwrap_or(0) < now {
                    ghosts += 1;
                }
            }
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    Ok((entries, ghosts))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.clients == 0 || args.room_size == 0 || args.rate <= 0.0 {
        bail!("--clients, --room-size and --rate must be positive");
    }
    // Each client holds a socket; the default soft limit (1,024) is far too low.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _ = epoch();
    let stats = Arc::new(Stats::new());
    let period = Duration::from_secs_f64(1.0 / args.rate);

    // Ramp: connect everyone (at --connect-rate), then start the schedule.
    let ramp = Duration::from_secs_f64(args.clients as f64 / args.connect_rate.max(1.0));
    let start = Instant::now() + ramp + Duration::from_millis(500);
    let end = start + args.warmup + args.duration;
    let plan = Arc::new(Plan {
        args: args.clone(),
        id_salt: fastrand::u64(..1 << 30),
        period,
        start,
        end,
        stop: Notify::new(),
        stopped: AtomicBool::new(false),
    });
    let slots: Vec<Arc<ClientSlot>> = (0..args.clients)
        .map(|_| {
            Arc::new(ClientSlot {
                churn: Mutex::new(None),
                wake: Notify::new(),
            })
        })
        .collect();
    let mut tasks = Vec::with_capacity(args.clients);
    let connect_gap = Duration::from_secs_f64(1.0 / args.connect_rate.max(1.0));
    let ramp_started = Instant::now();
    for (index, slot) in slots.iter().enumerate() {
        tasks.push(tokio::spawn(client(
            plan.clone(),
            stats.clone(),
            slot.clone(),
            index,
        )));
        tokio::time::sleep_until((ramp_started + connect_gap.mul_f64(index as f64)).into()).await;
    }
    let deadline = start + Duration::from_secs(30);
    while (stats.connected.load(Ordering::Relaxed) as usize) < args.clients
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "connected {} of {} clients in {:.1} s",
        stats.connected.load(Ordering::Relaxed),
        args.clients,
        ramp_started.elapsed().as_secs_f64()
    );

    if args.churn > 0.0 {
        let plan = plan.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            let gap = Duration::from_secs_f64(1.0 / (plan.args.churn * plan.args.clients as f64));
            let mut at = plan.start + gap;
            while at < plan.end {
                tokio::time::sleep_until(at.into()).await;
                let slot = &slots[fastrand::usize(..slots.len())];
                let order = if fastrand::bool() {
                    Churn::Leave
                } else {
                    Churn::Drop
                };
                *slot
                    .churn
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(order);
                slot.wake.notify_one();
                at += gap;
            }
        });
    }

    // Warm-up, then the measured window with a progress line a second.
    tokio::time::sleep_until((start + args.warmup).into()).await;
    let usage_start = servers_usage(&args.server_pid);
    let window_start = Instant::now();
    stats.measuring.store(true, Ordering::Relaxed);
    let mut last = (Instant::now(), 0u64, 0u64, usage_start.map_or(0.0, |u| u.0));
    let mut peak_rss = usage_start.map_or(0, |u| u.1);
    // The log's size against its live data, sampled from /metrics (Rollcall only).
    let mut log_max: Option<(f64, f64)> = None;
    while Instant::now() < end {
        tokio::time::sleep(
            Duration::from_secs(1).min(end.saturating_duration_since(Instant::now())),
        )
        .await;
        let now = Instant::now();
        let sent = stats.sent.load(Ordering::Relaxed);
        let delivered = stats.deliveries.load(Ordering::Relaxed);
        let dt = now.duration_since(last.0).as_secs_f64().max(1e-9);
        let (p50, p99) = {
            let mut guard = stats
                .latency
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let interval = (
                guard.0.value_at_quantile(0.5),
                guard.0.value_at_quantile(0.99),
            );
            guard.0.reset();
            interval
        };
        let mut server = String::new();
        if let Some((cpu, rss)) = servers_usage(&args.server_pid) {
            peak_rss = peak_rss.max(rss);
            server = format!(
                " | server cpu {:.0}% rss {} MiB",
                (cpu - last.3) / dt * 100.0,
                rss / 1024
            );
            last.3 = cpu;
        }
        if args.target == Target::Rollcall {
            if let Ok(text) = http_get(&args.url[0], "/metrics").await {
                if let (Some(total), Some(live)) = (
                    metrics::first(&text, "rollcall_log_bytes"),
                    metrics::first(&text, "rollcall_log_live_bytes"),
                ) {
                    let ratio = if live > 0.0 { total / live } else { 0.0 };
                    let (max_total, max_ratio) = log_max.unwrap_or((0.0, 0.0));
                    log_max = Some((max_total.max(total), max_ratio.max(ratio)));
                }
            }
        }
        eprintln!(
            "t={:>5.1}s sent {:>8.0}/s deliveries {:>9.0}/s p50 {:>7.2} ms p99 {:>7.2} ms connected {}{server}",
            now.duration_since(window_start).as_secs_f64(),
            (sent - last.1) as f64 / dt,
            (delivered - last.2) as f64 / dt,
            p50 as f64 / 1_000.0,
            p99 as f64 / 1_000.0,
            stats.connected.load(Ordering::Relaxed),
        );
        last = (now, sent, delivered, last.3);
    }
    stats.measuring.store(false, Ordering::Relaxed);
    let window = window_start.elapsed().as_secs_f64();
    let usage_end = servers_usage(&args.server_pid);
    plan.stopped.store(true, Ordering::Relaxed);
    plan.stop.notify_waiters();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }

    let ghosts = if args.target == Target::Rollcall && args.churn > 0.0 {
        // Let every TTL and one sweep pass, then look for entries past their TTL.
        tokio::time::sleep(Duration::from_millis(args.ttl_ms + 500)).await;
        let mut total = (0, 0);
        for url in &args.url {
            let (past, entries) = entries_past_ttl(url).await?;
            total = (total.0 + past, total.1 + entries);
        }
        Some(total)
    } else {
        None
    };

    let total = {
        let guard = stats
            .latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.1.clone()
    };
    let cross = stats
        .cross_node
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let cross_ms = |q: f64| cross.value_at_quantile(q) as f64 / 1_000.0;
    let sent = stats.sent.load(Ordering::Relaxed);
    let rejected = stats.rejected.load(Ordering::Relaxed);
    let deliveries = stats.deliveries.load(Ordering::Relaxed);
    let expected = expected_deliveries(args.clients, args.room_size, args.rate);
    let ms = |q: f64| total.value_at_quantile(q) as f64 / 1_000.0;
    let (server_cpu, server_rss) = match (usage_start, usage_end) {
        (Some(a), Some(b)) => (Some((b.0 - a.0) / window), Some(peak_rss.max(b.1))),
        _ => (None, None),
    };
    let deliveries_per_s = deliveries as f64 / window;
    let summary = json!({
        "label": args.label,
        "target": format!("{:?}", args.target),
        "clients": args.clients,
        "room_size": args.room_size,
        "rate_hz": args.rate,
        "payload_bytes": args.payload,
        "window_s": window,
        "heartbeats_sent_per_s": sent as f64 / window,
        "heartbeats_accepted_per_s": sent.saturating_sub(rejected) as f64 / window,
        "rejected": rejected,
        "deliveries_per_s": deliveries_per_s,
        "full_subscribers_per_room": args.full_subscribers,
        "sample_limit": args.sample_limit,
        "received_bytes_per_s": stats.received_bytes.load(Ordering::Relaxed) as f64 / window,
        "expected_deliveries_per_s": expected,
        "latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": total.max() as f64 / 1_000.0, "samples": total.len()},
        "cross_node_latency_ms": (!cross.is_empty()).then(|| json!({"p50": cross_ms(0.5), "p99": cross_ms(0.99), "p999": cross_ms(0.999), "samples": cross.len()})),
        "server_cpu_cores": server_cpu,
        "server_rss_mib": server_rss.map(|kib| kib as f64 / 1024.0),
        "deliveries_per_server_cpu_s": server_cpu.filter(|c| *c > 0.0).map(|c| deliveries_per_s / c),
        "connect_failures": stats.connect_failures.load(Ordering::Relaxed),
        "unexpected_disconnects": stats.disconnects.load(Ordering::Relaxed),
        "churn_per_s": args.churn,
        "log_bytes_max": log_max.map(|l| l.0),
        "log_to_live_max_ratio": log_max.map(|l| l.1),
        "entries_after_run": ghosts.map(|g| g.0),
        "entries_past_ttl": ghosts.map(|g| g.1),
    });
    let text = serde_json::to_string_pretty(&summary)?;
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_rollcall_frames() {
        let frame = br#"{"type":"changes","room":"r","serverTimeMs":1,"changes":[{"op":"upsert","clientId":7,"data":{"ts":900,"x":1,"y":2,"p":""},"expiresAtMs":5},{"op":"leave","clientId":8},{"op":"upsert","clientId":3,"data":{"ts":950,"x":1,"y":2,"p":"xx"},"expiresAtMs":5},{"op":"upsert","clientId":2199023255553,"data":{"ts":980,"x":1,"y":2,"p":""},"expiresAtMs":5}]}"#;
        let (mut out, mut cross) = (Vec::new(), Vec::new());
        scan_rollcall(frame, 3, 1_000, &mut out, &mut cross);
        assert_eq!(out, vec![100, 20]);
        assert_eq!(cross, vec![20], "client 2^41 + 1 is on node 2");
        out.clear();
        scan_rollcall(
            br#"{"type":"snapshot","room":"r","entries":[]}"#,
            3,
            1_000,
            &mut out,
            &mut cross,
        );
        assert!(out.is_empty());
    }

    use rollcall_protocol::{Change, Entry, ErrorCode, Json, ServerMessage};

    /// What a full parse of `frame` finds: `(latencies, cross-node latencies)` of the
    /// upserts from clients other than `own` whose data has a top-level integer `ts`.
    fn parsed(frame: &str, own: u64, now_us: u64) -> (Vec<u64>, Vec<u64>) {
        let (mut out, mut cross) = (Vec::new(), Vec::new());
        if let Ok(ServerMessage::Changes { changes, .. }) = ServerMessage::from_json(frame) {
            for change in changes {
                let Change::Upsert {
                    client_id, data, ..
                } = change
                else {
                    continue;
                };
                let value: serde_json::Value = data.to_value().expect("data is JSON");
                let Some(ts) = value.get("ts").and_then(serde_json::Value::as_u64) else {
                    continue;
                };
                if client_id == own {
                    continue;
                }
                out.push(now_us.saturating_sub(ts));
                if client_id >> NODE_SHIFT != own >> NODE_SHIFT {
                    cross.push(now_us.saturating_sub(ts));
                }
            }
        }
        (out, cross)
    }

    fn scanned(frame: &str, own: u64, now_us: u64) -> (Vec<u64>, Vec<u64>) {
        let (mut out, mut cross) = (Vec::new(), Vec::new());
        scan_rollcall(frame.as_bytes(), own, now_us, &mut out, &mut cross);
        (out, cross)
    }

    fn upsert(client_id: u64, data: &str) -> Change {
        Change::Upsert {
            client_id,
            data: Json::from_text(data).expect(data),
            expires_at_ms: 1_764_300_030_000,
            user_id: None,
        }
    }

    fn changes(room: &str, changes: Vec<Change>) -> String {
        ServerMessage::Changes {
            room: room.into(),
            server_time_ms: 1_764_300_000_000,
            changes,
        }
        .to_json()
    }

    const OWN: u64 = 3;
    const NOW: u64 = 1_000_000;
    /// A client of node 2 (its id carries the node above `NODE_SHIFT`).
    const OTHER_NODE: u64 = (2 << NODE_SHIFT) | 5;

    /// Frames as the server writes them (the protocol crate's types).
    fn frames() -> Vec<(&'static str, String)> {
        let load = payload(900_000, 1, 80);
        vec![
            ("one upsert", changes("r", vec![upsert(7, &load)])),
            (
                "several changes per frame",
                changes(
                    "pr:room-1",
                    vec![
                        upsert(7, &payload(900_000, 1, 40)),
                        Change::Leave { client_id: 8 },
                        upsert(OWN, &payload(910_000, 2, 40)),
                        Change::Expire { client_id: 9 },
                        upsert(OTHER_NODE, &payload(950_000, 3, 40)),
                        upsert(11, &payload(990_000, 4, 300)),
                    ],
                ),
            ),
            (
                "conflated: the same clients several times",
                changes(
                    "r",
                    vec![
                        upsert(7, &payload(900_000, 1, 40)),
                        upsert(7, &payload(920_000, 2, 40)),
                        Change::Leave { client_id: 7 },
                        upsert(7, &payload(940_000, 3, 40)),
                        upsert(OWN, &payload(941_000, 3, 40)),
                        upsert(OWN, &payload(942_000, 3, 40)),
                    ],
                ),
            ),
            (
                "escapes in the data, the room and the user",
                changes(
                    r#"r"clientId":1,"data":{"ts":5}"#,
                    vec![
                        Change::Upsert {
                            client_id: 7,
                            data: Json::from_text(
                                r#"{"p":"a\"ts\":1,\"clientId\":2\\","ts":900000,"q":"\\\""}"#,
                            )
                            .expect("json"),
                            expires_at_ms: 1,
                            user_id: Some(r#"u"ts":5,"clientId":6"#.into()),
                        },
                        upsert(8, r#"{"s":"}]\"[{","ts":910000}"#),
                    ],
                ),
            ),
            (
                "unicode",
                changes(
                    "salle-é-🎉",
                    vec![
                        upsert(7, r#"{"name":"Zoë 🎉 \u00e9\ud83c\udf89","ts":900000}"#),
                        upsert(8, r#"{"\u0074s":910000}"#),
                    ],
                ),
            ),
            (
                "nested data",
                changes(
                    "r",
                    vec![
                        upsert(
                            7,
                            r#"{"a":{"ts":1,"clientId":2},"b":[{"ts":3}],"ts":900000}"#,
                        ),
                        upsert(8, r#"{"a":{"b":{"c":[[{"ts":4}]]}}}"#),
                        upsert(9, r#"[{"ts":5},900000]"#),
                        upsert(10, r#"{"clientId":11,"data":{"ts":6}}"#),
                        upsert(12, &payload(930_000, 1, 40)),
                    ],
                ),
            ),
            (
                "own data that looks like another change",
                changes(
                    "r",
                    vec![
                        upsert(OWN, r#"{"x":{"clientId":7,"data":{"ts":5}}}"#),
                        upsert(9, &payload(930_000, 1, 40)),
                    ],
                ),
            ),
            (
                "data without a usable ts",
                changes(
                    "r",
                    vec![
                        upsert(7, "null"),
                        upsert(8, r#"{"x":1}"#),
                        upsert(9, r#""ts""#),
                        upsert(10, r#"{"ts":"900000"}"#),
                        upsert(11, r#"{"ts":900000.5}"#),
                        upsert(12, r#"{"ts":-5}"#),
                        upsert(13, r#"{"ts":99999999999999999999}"#),
                        upsert(14, r#"{"ts":9e5}"#),
                        upsert(15, r#"{"ts":null}"#),
                        upsert(17, r#"{"ts":-0}"#),
                        upsert(18, r#"{"ts":0}"#),
                        upsert(16, &payload(940_000, 1, 40)),
                    ],
                ),
            ),
            (
                "white space kept in the data",
                changes(
                    "r",
                    vec![
                        upsert(7, "{ \"ts\" : 900000 , \"x\" : 1 }"),
                        upsert(8, "{\n\t\"x\": [ 1, 2 ],\r\n  \"ts\":\t910000\n}"),
                    ],
                ),
            ),
            (
                "duplicate keys: the last wins",
                changes(
                    "r",
                    vec![
                        upsert(7, r#"{"ts":1,"ts":900000}"#),
                        upsert(8, r#"{"ts":910000,"ts":"late"}"#),
                    ],
                ),
            ),
            (
                "a snapshot",
                ServerMessage::Snapshot {
                    room: "r".into(),
                    server_time_ms: 1,
                    entries: vec![Entry {
                        client_id: 7,
                        data: Json::from_text(load.clone()).expect("json"),
                        expires_at_ms: 5,
                        user_id: None,
                    }],
                    entry_count: None,
                    user_count: None,
                }
                .to_json(),
            ),
            (
                "a broadcast",
                ServerMessage::Broadcast {
                    room: "r".into(),
                    client_id: 7,
                    user_id: None,
                    data: Json::from_text(load.clone()).expect("json"),
                    server_time_ms: 1,
                }
                .to_json(),
            ),
            (
                "an ack",
                ServerMessage::Ack {
                    reference: 4,
                    expires_at_ms: Some(5),
                }
                .to_json(),
            ),
            (
                "an error",
                ServerMessage::Error {
                    code: ErrorCode::RateLimited,
                    message: r#"{"type":"changes","changes":[{"clientId":7,"data":{"ts":1}}]}"#
                        .into(),
                    reference: None,
                    room: Some("r".into()),
                }
                .to_json(),
            ),
            ("an empty changes", changes("r", vec![])),
        ]
    }

    #[test]
    fn errors_are_told_from_every_other_frame() {
        for (name, frame) in frames() {
            let error = matches!(
                ServerMessage::from_json(&frame),
                Ok(ServerMessage::Error { .. })
            );
            assert_eq!(is_error(frame.as_bytes()), error, "{name}: {frame}");
        }
    }

    /// Every frame of `frames()`, scanned and parsed in full: the scanner must find
    /// exactly what the parse finds.
    #[test]
    fn scanner_finds_what_a_full_parse_finds() {
        let mut failures = Vec::new();
        for (name, frame) in frames() {
            let want = parsed(&frame, OWN, NOW);
            let got = scanned(&frame, OWN, NOW);
            if got != want {
                failures.push(format!(
                    "{name}: scanned {got:?}, parsed {want:?}\n  {frame}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    // Regression tests: each of these frames fooled the scanner that searched the
    // frame's bytes for `"clientId":` and `"ts":`.

    #[test]
    fn scan_ignores_ts_and_client_ids_nested_in_data() {
        let frame = changes(
            "r",
            vec![
                upsert(
                    7,
                    r#"{"a":{"ts":1,"clientId":2},"b":[{"ts":3}],"ts":900000}"#,
                ),
                upsert(8, r#"{"clientId":11,"data":{"ts":6}}"#),
            ],
        );
        assert_eq!(scanned(&frame, OWN, NOW), (vec![100_000], vec![]));
    }

    #[test]
    fn scan_skips_own_data_that_looks_like_a_change() {
        let frame = changes(
            "r",
            vec![
                upsert(OWN, r#"{"x":{"clientId":7,"data":{"ts":5}}}"#),
                upsert(9, r#"{"ts":930000}"#),
            ],
        );
        assert_eq!(scanned(&frame, OWN, NOW), (vec![70_000], vec![]));
    }

    #[test]
    fn scan_never_takes_ts_from_a_later_change() {
        let frame = changes(
            "r",
            vec![
                upsert(7, "null"),
                upsert(8, r#"{"x":1}"#),
                upsert(OWN, r#"{"ts":990000}"#),
            ],
        );
        assert_eq!(scanned(&frame, OWN, NOW), (vec![], vec![]));
    }

    #[test]
    fn scan_counts_only_integer_ts() {
        for data in [
            r#"{"ts":"900000"}"#,
            r#"{"ts":900000.5}"#,
            r#"{"ts":-5}"#,
            r#"{"ts":9e5}"#,
            r#"{"ts":99999999999999999999}"#,
            r#"{"ts":null}"#,
        ] {
            let frame = changes("r", vec![upsert(7, data)]);
            assert_eq!(scanned(&frame, OWN, NOW), (vec![], vec![]), "{data}");
        }
    }

    #[test]
    fn scan_reads_data_with_white_space() {
        let frame = changes(
            "r",
            vec![upsert(7, "{ \"x\" : [ 1 ],\n\t\"ts\" :\r\n 900000 }")],
        );
        assert_eq!(scanned(&frame, OWN, NOW), (vec![100_000], vec![]));
    }

    #[test]
    fn scan_takes_the_last_of_duplicate_keys() {
        let frame = changes(
            "r",
            vec![
                upsert(7, r#"{"ts":1,"ts":900000}"#),
                upsert(8, r#"{"ts":910000,"ts":"late"}"#),
            ],
        );
        assert_eq!(scanned(&frame, OWN, NOW), (vec![100_000], vec![]));
    }

    #[test]
    fn scan_reads_escaped_keys() {
        let frame = changes("r", vec![upsert(7, r#"{"\u0074s":900000}"#)]);
        assert_eq!(scanned(&frame, OWN, NOW), (vec![100_000], vec![]));
    }

    #[test]
    fn scan_adds_nothing_for_a_frame_it_cannot_read() {
        let mut frame = changes("r", vec![upsert(7, r#"{"ts":900000}"#), upsert(8, "{}")]);
        frame.truncate(frame.len() - 10);
        let (mut out, mut cross) = (vec![1], Vec::new());
        scan_rollcall(frame.as_bytes(), OWN, NOW, &mut out, &mut cross);
        assert_eq!(
            out,
            vec![1],
            "what was there before stays, nothing is added"
        );
        let deep = format!(
            r#"{{"type":"changes","changes":[{{"op":"upsert","clientId":7,"data":{}"#,
            "[".repeat(100_000)
        );
        scan_rollcall(deep.as_bytes(), OWN, NOW, &mut out, &mut cross);
        assert_eq!(out, vec![1]);
    }

    #[test]
    fn scans_awareness_updates() {
        let state = br#"{"ts":400,"x":1}"#;
        let mut update = Vec::new();
        write_varuint(&mut update, 2);
        for client in [5u64, 300] {
            write_varuint(&mut update, client);
            write_varuint(&mut update, 1);
            write_varuint(&mut update, state.len() as u64);
            update.extend_from_slice(state);
        }
        let mut message = Vec::new();
        write_varuint(&mut message, 1);
        write_varuint(&mut message, update.len() as u64);
        message.extend_from_slice(&update);
        let mut out = Vec::new();
        scan_awareness(&message, 300, 1_000, &mut out).unwrap();
        assert_eq!(out, vec![600]);
    }

    #[test]
    fn expected_deliveries_count_a_partial_last_room() {
        assert!((expected_deliveries(100, 50, 20.0) - 98_000.0).abs() < 1e-9);
        assert!((expected_deliveries(60, 50, 20.0) - 50_800.0).abs() < 1e-9);
        assert!((expected_deliveries(1, 10, 10.0)).abs() < 1e-9);
    }

    #[test]
    fn payload_has_the_requested_size() {
        assert_eq!(payload(123_456_789, 5, 60).len(), 60);
        assert!(payload(1, 1, 10).len() >= 10);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3h").is_err());
    }
}
