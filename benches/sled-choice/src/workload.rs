//! Rollcall's event-log workload: heartbeat events, the two record layouts,
//! a paced producer and the single-threaded group-commit writer.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::engine::{LogStore, Res};

/// Size of one encoded heartbeat event.
pub const EVENT_BYTES: usize = 70;

/// How commit groups are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One record per event: key = event sequence number, value = 70 bytes.
    PerEvent,
    /// One record per commit group: key = sequence number of the group's
    /// first event, value = `u32` BE event count followed by the events.
    PerGroup,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::PerEvent => "per-event",
            Layout::PerGroup => "per-group",
        }
    }
}

/// One heartbeat event as produced by the server.
pub struct Event {
    pub seq: u64,
    /// When the event was due to be enqueued (scheduled time, so that a
    /// stalled producer still shows up as latency: no coordinated omission).
    pub enqueued: Instant,
    pub payload: [u8; EVENT_BYTES],
}

/// Small, fast, deterministic PRNG (splitmix64); avoids a `rand` dependency.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Fill a plausible 70-byte heartbeat record. Roughly 40 of the 70 bytes are
/// high-entropy (ids), the rest is structured (timestamp, small enums,
/// short ASCII tags, padding) — i.e. only mildly compressible, which matters
/// because sled 1.0 zstd-compresses leaves and 0.34 (by default) does not.
pub fn make_payload(rng: &mut SplitMix, seq: u64, micros: u64) -> [u8; EVENT_BYTES] {
    const REGIONS: [&[u8]; 4] = [b"eu-west", b"us-east", b"ap-south", b"sa-east"];
    let mut p = [0u8; EVENT_BYTES];
    let user = rng.next_u64() % 5_000_000;
    p[0..8].copy_from_slice(&user.to_be_bytes()); // user id
    p[8..16].copy_from_slice(&micros.to_be_bytes()); // timestamp (µs)
    p[16] = (seq % 4) as u8; // event kind
    p[17] = (user % 3) as u8; // presence status
    p[18..26].copy_from_slice(&rng.next_u64().to_le_bytes()); // session id
    p[26..34].copy_from_slice(&rng.next_u64().to_le_bytes());
    let device = SplitMix::new(user).next_u64(); // device id (per user)
    p[34..42].copy_from_slice(&device.to_le_bytes());
    p[42..50].copy_from_slice(&device.rotate_left(17).to_le_bytes());
    let region = REGIONS[(user % 4) as usize];
    p[50..50 + region.len()].copy_from_slice(region); // region tag
    p[60..64].copy_from_slice(b"v3.2"); // client version; rest zero padding
    p
}

/// Encode a commit group as a single per-group record value.
pub fn encode_group(events: &[Event]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + events.len() * EVENT_BYTES);
    v.extend_from_slice(&(events.len() as u32).to_be_bytes());
    for e in events {
        v.extend_from_slice(&e.payload);
    }
    v
}

/// Bounded MPSC hand-off between the producer and the writer. The writer
/// always takes *everything* queued, which is what makes group commit adapt
/// the group size to the load.
pub struct Queue {
    inner: Mutex<QueueInner>,
    not_empty: Condvar,
    not_full: Condvar,
    capacity: usize,
}

struct QueueInner {
    events: Vec<Event>,
    /// The producer has finished.
    closed: bool,
    /// The writer gave up; further pushes are discarded.
    abandoned: bool,
}

impl Queue {
    pub fn new(capacity: usize) -> Self {
        Queue {
            inner: Mutex::new(QueueInner {
                events: Vec::new(),
                closed: false,
                abandoned: false,
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            capacity,
        }
    }

    /// Append a chunk, blocking while the queue is at capacity (backpressure).
    pub fn push(&self, chunk: &mut Vec<Event>) {
        let mut g = self.inner.lock().unwrap();
        while g.events.len() >= self.capacity && !g.abandoned {
            g = self.not_full.wait(g).unwrap();
        }
        if g.abandoned {
            chunk.clear();
            return;
        }
        g.events.append(chunk);
        drop(g);
        self.not_empty.notify_one();
    }

    /// Called by the writer when it stops early: unblocks and mutes the producer.
    pub fn abandon(&self) {
        let mut g = self.inner.lock().unwrap();
        g.abandoned = true;
        g.events.clear();
        drop(g);
        self.not_full.notify_all();
    }

    pub fn close(&self) {
        self.inner.lock().unwrap().closed = true;
        self.not_empty.notify_all();
    }

    /// Take everything queued, waiting up to `timeout` for something to
    /// arrive. Returns the events and whether the producer has finished.
    pub fn take_all(&self, timeout: Duration) -> (Vec<Event>, bool) {
        let mut g = self.inner.lock().unwrap();
        if g.events.is_empty() && !g.closed {
            g = self.not_empty.wait_timeout(g, timeout).unwrap().0;
        }
        let events = std::mem::take(&mut g.events);
        let closed = g.closed;
        drop(g);
        self.not_full.notify_all();
        (events, closed)
    }
}

/// Offer events at a steady `rate` (events/s) for `duration`, or as fast as
/// the queue accepts them when `rate` is `None`. Returns events offered.
pub fn produce(queue: &Queue, rate: Option<f64>, duration: Duration) -> u64 {
    let mut rng = SplitMix::new(0x5EED);
    let start = Instant::now();
    let mut produced: u64 = 0;
    let mut chunk = Vec::new();
    loop {
        let now = Instant::now();
        let elapsed = now - start;
        if elapsed >= duration {
            break;
        }
        let due = match rate {
            Some(r) => (elapsed.as_secs_f64() * r) as u64,
            None => produced + 1_000,
        };
        while produced < due {
            let enqueued = match rate {
                Some(r) => start + Duration::from_secs_f64(produced as f64 / r),
                None => now,
            };
            let micros = (enqueued - start).as_micros() as u64;
            chunk.push(Event {
                seq: produced,
                enqueued,
                payload: make_payload(&mut rng, produced, micros),
            });
            produced += 1;
        }
        if !chunk.is_empty() {
            queue.push(&mut chunk);
        }
        if rate.is_some() {
            // ~10 kHz pacing; events keep their scheduled enqueue time.
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    queue.close();
    produced
}

/// When the writer makes applied batches durable.
#[derive(Clone, Copy, Debug)]
pub enum FlushPolicy {
    /// Group commit: one flush after every batch.
    EveryBatch,
    /// Buffered: batches are applied as they come, flush at most every interval.
    Every(Duration),
}

/// Parameters of one append run.
#[derive(Clone, Debug)]
pub struct AppendSpec {
    pub layout: Layout,
    pub policy: FlushPolicy,
    /// Offered load in events/s; `None` = unthrottled.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Records older than this are removed in the next batch.
    pub retention: Duration,
    /// Sample the on-disk size of the database directory this often.
    pub disk_sample_every: Option<Duration>,
}

/// Latency histogram in microseconds, up to 10 minutes.
fn micros_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Outcome of one append run (all latencies in ms).
#[derive(Debug, Clone)]
pub struct AppendResult {
    pub offered: u64,
    pub offered_per_s: f64,
    pub durable: u64,
    pub events_per_s: f64,
    pub batches: u64,
    pub batches_per_s: f64,
    pub flushes: u64,
    pub mean_batch_events: f64,
    pub max_batch_events: u64,
    pub apply_p50: f64,
    pub apply_p99: f64,
    pub flush_p50: f64,
    pub flush_p99: f64,
    pub flush_max: f64,
    pub ttd_p50: f64,
    pub ttd_p99: f64,
    pub ttd_p999: f64,
    pub ttd_max: f64,
    pub live_records_end: u64,
    pub live_bytes_end: u64,
    /// (seconds since start, allocated bytes on disk)
    pub disk_samples: Vec<(f64, u64)>,
    pub disk_end: DiskUsage,
    /// [`LogStore::diagnostics`] at the end of the run (JSON null if none).
    pub diagnostics: Value,
}

impl AppendResult {
    pub fn to_json(&self) -> Value {
        json!({
            "offered": self.offered, "offered_per_s": self.offered_per_s,
            "durable": self.durable, "events_per_s": self.events_per_s,
            "batches": self.batches, "batches_per_s": self.batches_per_s,
            "flushes": self.flushes,
            "mean_batch_events": self.mean_batch_events, "max_batch_events": self.max_batch_events,
            "apply_ms": {"p50": self.apply_p50, "p99": self.apply_p99},
            "flush_ms": {"p50": self.flush_p50, "p99": self.flush_p99, "max": self.flush_max},
            "time_to_durable_ms": {"p50": self.ttd_p50, "p99": self.ttd_p99, "p999": self.ttd_p999, "max": self.ttd_max},
            "live_records_end": self.live_records_end, "live_bytes_end": self.live_bytes_end,
            "disk_samples": self.disk_samples,
            "disk_end": self.disk_end.to_json(),
            "diagnostics": self.diagnostics,
        })
    }

    /// Inverse of [`AppendResult::to_json`] (results travel from the child
    /// process that measured them to the parent as JSON).
    pub fn from_json(v: &Value) -> Res<Self> {
        let f = |path: &str| num(v, path);
        let u = |path: &str| num(v, path).map(|x| x as u64);
        let disk_samples = v["disk_samples"]
            .as_array()
            .ok_or("missing disk_samples")?
            .iter()
            .map(|p| (p[0].as_f64().unwrap_or(0.0), p[1].as_u64().unwrap_or(0)))
            .collect();
        Ok(AppendResult {
            offered: u("offered")?,
            offered_per_s: f("offered_per_s")?,
            durable: u("durable")?,
            events_per_s: f("events_per_s")?,
            batches: u("batches")?,
            batches_per_s: f("batches_per_s")?,
            flushes: u("flushes")?,
            mean_batch_events: f("mean_batch_events")?,
            max_batch_events: u("max_batch_events")?,
            apply_p50: f("apply_ms.p50")?,
            apply_p99: f("apply_ms.p99")?,
            flush_p50: f("flush_ms.p50")?,
            flush_p99: f("flush_ms.p99")?,
            flush_max: f("flush_ms.max")?,
            ttd_p50: f("time_to_durable_ms.p50")?,
            ttd_p99: f("time_to_durable_ms.p99")?,
            ttd_p999: f("time_to_durable_ms.p999")?,
            ttd_max: f("time_to_durable_ms.max")?,
            live_records_end: u("live_records_end")?,
            live_bytes_end: u("live_bytes_end")?,
            disk_samples,
            disk_end: DiskUsage::from_json(&v["disk_end"])?,
            diagnostics: v["diagnostics"].clone(),
        })
    }
}

/// Read a number at a dotted path (`"a.b"`) of a JSON object.
pub fn num(v: &Value, path: &str) -> Res<f64> {
    let mut cur = v;
    for part in path.split('.') {
        cur = &cur[part];
    }
    cur.as_f64()
        .ok_or_else(|| format!("missing or non-numeric field {path:?}").into())
}

/// Run the producer and the group-commit writer against a fresh database in
/// `dir`. The writer loop is:
///
/// 1. take everything queued (one commit group);
/// 2. build ONE batch: the group's inserts (N records per-event, 1 per-group)
///    plus removes of every record written more than `retention` ago;
/// 3. `apply_batch`;
/// 4. `flush` (every batch, or when the buffered interval has elapsed);
/// 5. record time-to-durable (scheduled enqueue → flush returned) per event.
pub fn run_append<S: LogStore>(dir: &Path, spec: &AppendSpec) -> Res<AppendResult> {
    /// Extra time allowed after the producer stops to drain the backlog.
    const DRAIN_LIMIT: Duration = Duration::from_secs(3);
    /// Queue capacity in events (~2 s at 300k/s); the producer blocks beyond it.
    const QUEUE_CAPACITY: usize = 600_000;

    let store = S::open(dir)?;
    let queue = Queue::new(QUEUE_CAPACITY);
    let stop_sampler = AtomicBool::new(false);
    let start = Instant::now();

    let mut apply_h = micros_hist();
    let mut flush_h = micros_hist();
    let mut ttd_h = micros_hist();
    let mut batches = 0u64;
    let mut flushes = 0u64;
    let mut batch_events_sum = 0u64;
    let mut max_batch = 0u64;
    let mut durable = 0u64;
    let mut last_durable_at = start;
    // Live records, oldest first: (key, written at, value bytes).
    let mut live: VecDeque<(u64, Instant, u64)> = VecDeque::new();
    let mut live_bytes = 0u64;
    // Enqueue times of events applied but not yet flushed.
    let mut pending: Vec<Instant> = Vec::new();
    let mut last_flush = Instant::now();

    let (offered, disk_samples) = std::thread::scope(|s| -> Res<(u64, Vec<(f64, u64)>)> {
        let producer = s.spawn(|| produce(&queue, spec.rate, spec.duration));
        let sampler = spec.disk_sample_every.map(|every| {
            let stop = &stop_sampler;
            s.spawn(move || {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    samples.push((start.elapsed().as_secs_f64(), disk_usage(dir).allocated));
                    std::thread::sleep(every);
                }
                samples
            })
        });

        let mut closed = false;
        loop {
            let wait = match spec.policy {
                FlushPolicy::EveryBatch => Duration::from_millis(5),
                FlushPolicy::Every(iv) => iv
                    .saturating_sub(last_flush.elapsed())
                    .max(Duration::from_micros(200)),
            };
            let (events, now_closed) = if closed {
                (Vec::new(), true)
            } else {
                queue.take_all(wait)
            };
            closed = now_closed;

            if !events.is_empty() {
                let now = Instant::now();
                let cutoff = now.checked_sub(spec.retention).unwrap_or(start);
                let mut removes = Vec::new();
                while let Some(&(key, at, bytes)) = live.front() {
                    if at >= cutoff {
                        break;
                    }
                    removes.push(key);
                    live_bytes -= bytes;
                    live.pop_front();
                }
                let inserts: Vec<(u64, Vec<u8>)> = match spec.layout {
                    Layout::PerEvent => {
                        events.iter().map(|e| (e.seq, e.payload.to_vec())).collect()
                    }
                    Layout::PerGroup => vec![(events[0].seq, encode_group(&events))],
                };
                for (key, value) in &inserts {
                    live.push_back((*key, now, value.len() as u64 + 8));
                    live_bytes += value.len() as u64 + 8;
                }

                let t = Instant::now();
                store.write_batch(inserts, &removes)?;
                apply_h.saturating_record(t.elapsed().as_micros() as u64);

                batches += 1;
                batch_events_sum += events.len() as u64;
                max_batch = max_batch.max(events.len() as u64);
                pending.extend(events.iter().map(|e| e.enqueued));
            }

            let drained = closed && events.is_empty();
            let flush_due = match spec.policy {
                FlushPolicy::EveryBatch => !events.is_empty(),
                FlushPolicy::Every(iv) => last_flush.elapsed() >= iv || drained,
            };
            if flush_due && !pending.is_empty() {
                let t = Instant::now();
                store.flush()?;
                let done = Instant::now();
                flush_h.saturating_record((done - t).as_micros() as u64);
                flushes += 1;
                last_flush = done;
                for enq in pending.drain(..) {
                    ttd_h.saturating_record(done.saturating_duration_since(enq).as_micros() as u64);
                }
                durable = ttd_h.len();
                last_durable_at = done;
            }

            if drained && pending.is_empty() {
                break;
            }
            if start.elapsed() > spec.duration + DRAIN_LIMIT {
                eprintln!(
                    "    ! writer could not drain its backlog within {DRAIN_LIMIT:?}; stopping"
                );
                queue.abandon();
                break;
            }
        }
        let offered = producer.join().expect("producer panicked");
        stop_sampler.store(true, Ordering::Relaxed);
        let samples = match sampler {
            Some(h) => h.join().expect("sampler panicked"),
            None => Vec::new(),
        };
        Ok((offered, samples))
    })?;

    let active = (last_durable_at - start).as_secs_f64().max(1e-9);
    let disk_end = disk_usage(dir);
    let diagnostics = store.diagnostics().unwrap_or(Value::Null);
    drop(store);
    Ok(AppendResult {
        offered,
        offered_per_s: offered as f64 / spec.duration.as_secs_f64(),
        durable,
        events_per_s: durable as f64 / active,
        batches,
        batches_per_s: batches as f64 / active,
        flushes,
        mean_batch_events: batch_events_sum as f64 / batches.max(1) as f64,
        max_batch_events: max_batch,
        apply_p50: ms(&apply_h, 0.5),
        apply_p99: ms(&apply_h, 0.99),
        flush_p50: ms(&flush_h, 0.5),
        flush_p99: ms(&flush_h, 0.99),
        flush_max: flush_h.max() as f64 / 1000.0,
        ttd_p50: ms(&ttd_h, 0.5),
        ttd_p99: ms(&ttd_h, 0.99),
        ttd_p999: ms(&ttd_h, 0.999),
        ttd_max: ttd_h.max() as f64 / 1000.0,
        live_records_end: live.len() as u64,
        live_bytes_end: live_bytes,
        disk_samples,
        disk_end,
        diagnostics,
    })
}

/// Outcome of the replay scenario (times in ms, sizes in bytes).
#[derive(Debug, Clone)]
pub struct ReplayResult {
    pub records: u64,
    pub events: u64,
    pub logical_bytes: u64,
    pub write_ms: f64,
    pub disk: DiskUsage,
    /// First reopen after closing, like a restart: open and full scan.
    pub first_open_ms: f64,
    pub first_scan_ms: f64,
    /// Whether the db files were evicted from the OS page cache before the
    /// first reopen (false if eviction failed; the first reopen was then warm).
    pub first_cold: bool,
    /// Second reopen, right after the first (warm page cache).
    pub second_open_ms: f64,
    pub second_scan_ms: f64,
    /// Peak RSS of the process that reopened and scanned.
    pub reopen_peak_rss: u64,
}

impl ReplayResult {
    pub fn to_json(&self) -> Value {
        json!({
            "records": self.records, "events": self.events, "logical_bytes": self.logical_bytes,
            "write_ms": self.write_ms, "disk": self.disk.to_json(),
            "first_open_ms": self.first_open_ms, "first_scan_ms": self.first_scan_ms,
            "first_cold": self.first_cold,
            "second_open_ms": self.second_open_ms, "second_scan_ms": self.second_scan_ms,
            "reopen_peak_rss_bytes": self.reopen_peak_rss,
        })
    }

    /// Inverse of [`ReplayResult::to_json`].
    pub fn from_json(v: &Value) -> Res<Self> {
        Ok(ReplayResult {
            records: num(v, "records")? as u64,
            events: num(v, "events")? as u64,
            logical_bytes: num(v, "logical_bytes")? as u64,
            write_ms: num(v, "write_ms")?,
            disk: DiskUsage::from_json(&v["disk"])?,
            first_open_ms: num(v, "first_open_ms")?,
            first_scan_ms: num(v, "first_scan_ms")?,
            first_cold: v["first_cold"].as_bool().unwrap_or(false),
            second_open_ms: num(v, "second_open_ms")?,
            second_scan_ms: num(v, "second_scan_ms")?,
            reopen_peak_rss: num(v, "reopen_peak_rss_bytes")? as u64,
        })
    }
}

/// Replay, part 1 (run in the measuring child): write `events` live events
/// (groups of `group` events, one batch each, one flush at the end) and close
/// the database. Returns a [`ReplayResult`] with the reopen fields unset;
/// [`reopen_replay`] fills them in from a *fresh process*, as a restart would.
pub fn write_replay<S: LogStore>(
    dir: &Path,
    layout: Layout,
    events: u64,
    group: u64,
) -> Res<ReplayResult> {
    let mut rng = SplitMix::new(0xD15C);
    let mut logical = 0u64;
    let mut records = 0u64;
    let t = Instant::now();
    {
        let store = S::open(dir)?;
        let mut seq = 0u64;
        while seq < events {
            let n = group.min(events - seq);
            let batch: Vec<Event> = (seq..seq + n)
                .map(|s| Event {
                    seq: s,
                    enqueued: t,
                    payload: make_payload(&mut rng, s, s),
                })
                .collect();
            let inserts: Vec<(u64, Vec<u8>)> = match layout {
                Layout::PerEvent => batch.iter().map(|e| (e.seq, e.payload.to_vec())).collect(),
                Layout::PerGroup => vec![(seq, encode_group(&batch))],
            };
            for (_, v) in &inserts {
                logical += 8 + v.len() as u64;
                records += 1;
            }
            store.write_batch(inserts, &[])?;
            seq += n;
        }
        store.flush()?;
    } // dropped: database closed
    Ok(ReplayResult {
        records,
        events,
        logical_bytes: logical,
        write_ms: t.elapsed().as_secs_f64() * 1e3,
        disk: disk_usage(dir),
        first_open_ms: 0.0,
        first_scan_ms: 0.0,
        first_cold: false,
        second_open_ms: 0.0,
        second_scan_ms: 0.0,
        reopen_peak_rss: 0,
    })
}

/// Replay, part 2 (run in a fresh process): evict the database files from the
/// OS page cache, then time the first reopen + full key-order scan (the
/// restart case; sled's first open after a close also does recovery work),
/// then a second, warm reopen + scan. Fills in `r`'s reopen fields.
pub fn reopen_replay<S: LogStore>(dir: &Path, r: &mut ReplayResult) -> Res<()> {
    r.first_cold = evict_page_cache(dir);
    (r.first_open_ms, r.first_scan_ms) = open_and_scan::<S>(dir, r.records, r.logical_bytes)?;
    (r.second_open_ms, r.second_scan_ms) = open_and_scan::<S>(dir, r.records, r.logical_bytes)?;
    Ok(())
}

/// Reopen, scan everything touching every byte, verify, close. Returns
/// (open ms, scan ms).
fn open_and_scan<S: LogStore>(dir: &Path, records: u64, logical: u64) -> Res<(f64, f64)> {
    let t = Instant::now();
    let store = S::open(dir)?;
    let open_ms = t.elapsed().as_secs_f64() * 1e3;

    let t = Instant::now();
    let mut bytes = 0u64;
    let mut checksum = 0u64;
    let mut prev: Option<Vec<u8>> = None;
    let mut ordered = true;
    let n = store.scan(&mut |k, v| {
        bytes += (k.len() + v.len()) as u64;
        checksum = v.iter().fold(checksum, |acc, &b| {
            acc.wrapping_mul(31).wrapping_add(b as u64)
        });
        if let Some(p) = &prev {
            ordered &= p.as_slice() < k;
        }
        prev = Some(k.to_vec());
    })?;
    let scan_ms = t.elapsed().as_secs_f64() * 1e3;
    std::hint::black_box(checksum);
    if n != records || bytes != logical || !ordered {
        return Err(format!(
            "replay verification failed: {n} records / {bytes} bytes (expected {records} / {logical}), ordered={ordered}"
        )
        .into());
    }
    drop(store);
    Ok((open_ms, scan_ms))
}

/// Disk usage of a directory tree.
#[derive(Debug, Clone, Default)]
pub struct DiskUsage {
    /// Sum of file lengths (`du --apparent-size`).
    pub apparent: u64,
    /// Allocated blocks × 512 (what `du` reports; sparse holes excluded).
    pub allocated: u64,
    pub files: u64,
}

impl DiskUsage {
    pub fn to_json(&self) -> Value {
        json!({"apparent": self.apparent, "allocated": self.allocated, "files": self.files})
    }

    pub fn from_json(v: &Value) -> Res<Self> {
        Ok(DiskUsage {
            apparent: num(v, "apparent")? as u64,
            allocated: num(v, "allocated")? as u64,
            files: num(v, "files")? as u64,
        })
    }
}

/// Walk `dir` and add up file sizes. Files may vanish concurrently (sled
/// deletes segments/blobs), so errors on individual entries are ignored.
pub fn disk_usage(dir: &Path) -> DiskUsage {
    use std::os::unix::fs::MetadataExt;
    let mut du = DiskUsage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in rd.flatten() {
            let Ok(md) = entry.metadata() else { continue };
            if md.is_dir() {
                stack.push(entry.path());
            } else {
                du.apparent += md.len();
                du.allocated += md.blocks() * 512;
                du.files += 1;
            }
        }
    }
    du
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in rd.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Drop the OS page cache for every file under `dir` (and only those) with
/// GNU dd's `iflag=nocache count=0`, i.e. posix_fadvise(POSIX_FADV_DONTNEED)
/// on the whole file. The database was flushed and closed, so its pages are
/// written back and the advice is honoured. Returns false if dd is unavailable or fails.
pub fn evict_page_cache(dir: &Path) -> bool {
    files_under(dir).iter().all(|f| {
        std::process::Command::new("dd")
            .arg(format!("if={}", f.display()))
            .args(["iflag=nocache", "count=0", "status=none"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}
