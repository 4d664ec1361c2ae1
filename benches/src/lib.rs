//! Shared helpers for Rollcall's benchmarks: one workload shape for every bench, so
//! their figures can be compared.
//!
//! The workload is `live` entries in rooms of [`ROOM_SIZE`]: entry `k` is client `k + 1`
//! in room `k / ROOM_SIZE`, and every entry carries the same ~60-byte JSON value as a
//! shared [`Bytes`] (cloning it is a reference-count increment, as for a payload
//! sliced out of a received frame).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rollcall_engine::{
    ClientId, Config, Durability, Engine, Heartbeat, Layout, LogStats, Ttl, UnixMs,
};

/// Entries per room.
pub const ROOM_SIZE: u64 = 50;

/// A typical cursor-and-status payload: 60 bytes of JSON.
pub const DATA: &str = r#"{"cursor":{"x":120,"y":37},"status":"online","typing":false}"#;

/// A fixed virtual start time, so materializer-only benches are deterministic.
pub const T0: UnixMs = UnixMs(1_700_000_000_000);

/// Virtual time advances 1 ms per this many heartbeats (a 1M heartbeats/s server),
/// so upserts move entries in the expiry index as they would in production.
pub const HEARTBEATS_PER_MS: u64 = 1_000;

/// SplitMix64: fast, deterministic and dependency-free; quality is ample for picking
/// keys.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (multiply-shift: no division on the hot path).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// `live` entries in rooms of [`ROOM_SIZE`], each with [`DATA`] and one TTL.
#[derive(Debug)]
pub struct Workload {
    rooms: Vec<Arc<str>>,
    data: Bytes,
    live: u64,
    ttl: Ttl,
}

impl Workload {
    /// `live` entries with a 30 s TTL.
    pub fn new(live: u64) -> Workload {
        let rooms = (0..live.div_ceil(ROOM_SIZE))
            .map(|room| Arc::from(format!("pr:room-{room}")))
            .collect();
        Workload {
            rooms,
            data: Bytes::from(DATA),
            live,
            ttl: Ttl(30_000),
        }
    }

    /// Sets the TTL of every heartbeat.
    #[must_use]
    pub fn ttl(mut self, ttl: Ttl) -> Workload {
        self.ttl = ttl;
        self
    }

    /// How many entries the workload keeps live.
    pub fn live(&self) -> u64 {
        self.live
    }

    /// The heartbeat of entry `key` (in `0..live`) at `at`.
    pub fn heartbeat(&self, key: u64, at: UnixMs) -> Heartbeat {
        self.heartbeat_ttl(key, at, self.ttl)
    }

    /// The heartbeat of entry `key` at `at` with a TTL of its own.
    pub fn heartbeat_ttl(&self, key: u64, at: UnixMs, ttl: Ttl) -> Heartbeat {
        Heartbeat {
            room: self.rooms[(key / ROOM_SIZE) as usize].clone(),
            client: ClientId(key + 1),
            user: None,
            data: self.data.clone(),
            ttl,
            at,
        }
    }

    /// One heartbeat per entry, in key order: what creates the live set.
    pub fn fill(&self, at: UnixMs) -> impl Iterator<Item = Heartbeat> + '_ {
        (0..self.live).map(move |key| self.heartbeat(key, at))
    }

    /// Logical size of the live set: for each entry its room name, client id, data
    /// and expiry (8 bytes each for the numbers). What a minimal store would hold.
    pub fn logical_bytes(&self) -> u64 {
        let per_room: u64 = self.rooms.iter().map(|room| room.len() as u64).sum();
        per_room * ROOM_SIZE + self.live * (8 + self.data.len() as u64 + 8)
    }

    /// Upserts of random live entries, stamped with virtual time.
    pub fn random_upserts(&self, seed: u64) -> Upserts<'_> {
        Upserts {
            workload: self,
            order: Order::Random(Rng::new(seed)),
            clock: Clock::Virtual,
            count: 0,
            now: T0,
        }
    }

    /// Upserts that visit every live entry once per cycle in a scattered order (each
    /// client heartbeats once per period), stamped with the wall clock. No two events
    /// for one entry are closer than `live` events apart, so group commit never
    /// coalesces them unless a group is that large.
    pub fn cycling_upserts(&self) -> Upserts<'_> {
        // Any stride coprime with `live` visits each key once per cycle.
        let mut stride = 1_000_003 % self.live.max(1);
        while gcd(stride, self.live) != 1 {
            stride += 1;
        }
        Upserts {
            workload: self,
            order: Order::Cycle { next: 0, stride },
            clock: Clock::Wall,
            count: 0,
            now: UnixMs::now(),
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[derive(Debug)]
enum Order {
    Random(Rng),
    Cycle { next: u64, stride: u64 },
}

#[derive(Debug)]
enum Clock {
    /// [`T0`] plus 1 ms per [`HEARTBEATS_PER_MS`] heartbeats.
    Virtual,
    /// The system clock, read every 1,024 heartbeats: an engine with a log judges
    /// liveness by wall time during compaction and replay.
    Wall,
}

/// An endless stream of upserts over a [`Workload`]'s live entries.
#[derive(Debug)]
pub struct Upserts<'a> {
    workload: &'a Workload,
    order: Order,
    clock: Clock,
    count: u64,
    now: UnixMs,
}

impl Upserts<'_> {
    /// The next `n` heartbeats.
    pub fn batch(&mut self, n: usize) -> Vec<Heartbeat> {
        self.take(n).collect()
    }
}

impl Iterator for Upserts<'_> {
    type Item = Heartbeat;

    fn next(&mut self) -> Option<Heartbeat> {
        let key = match &mut self.order {
            Order::Random(rng) => rng.below(self.workload.live),
            Order::Cycle { next, stride } => {
                let key = *next;
                *next = (*next + *stride) % self.workload.live;
                key
            }
        };
        self.now = match self.clock {
            Clock::Virtual => UnixMs(T0.0 + self.count / HEARTBEATS_PER_MS),
            Clock::Wall if self.count % 1_024 == 0 => UnixMs::now(),
            Clock::Wall => self.now,
        };
        self.count += 1;
        Some(self.workload.heartbeat(key, self.now))
    }
}

/// An engine config for a log in `path`.
pub fn log_config(path: &Path, durability: Durability, layout: Layout) -> Config {
    Config::new(path).durability(durability).layout(layout)
}

/// The durability modes the spec sets goals for.
pub const DURABILITIES: [(&str, Durability); 2] = [
    ("flush", Durability::Flush),
    (
        "buffered-100ms",
        Durability::Buffered(Duration::from_millis(100)),
    ),
];

/// Both record layouts.
pub const LAYOUTS: [(&str, Layout); 2] = [
    ("per-group", Layout::PerGroup),
    ("per-event", Layout::PerEvent),
];

/// Parses a count on a bench binary's command line: `100000` or `100_000`.
pub fn parse_count(text: &str) -> Result<u64, String> {
    text.replace('_', "")
        .parse()
        .map_err(|_| format!("not a number: {text}"))
}

/// A durability mode or record layout named on a bench binary's command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `flush` durability.
    Flush,
    /// `buffered(100ms)` durability.
    Buffered,
    /// One record per commit group.
    PerGroup,
    /// One record per event.
    PerEvent,
}

/// What `pick` finds among `modes`, or `all` when it finds nothing.
fn named<T: Copy>(modes: &[Mode], pick: impl Fn(Mode) -> Option<T>, all: &[T]) -> Vec<T> {
    let named: Vec<T> = modes.iter().filter_map(|&mode| pick(mode)).collect();
    if named.is_empty() {
        all.to_vec()
    } else {
        named
    }
}

/// The durability modes among `modes` (every one when none is named).
pub fn durabilities(modes: &[Mode]) -> Vec<(&'static str, Durability)> {
    let pick = |mode| match mode {
        Mode::Flush => Some(DURABILITIES[0]),
        Mode::Buffered => Some(DURABILITIES[1]),
        Mode::PerGroup | Mode::PerEvent => None,
    };
    named(modes, pick, &DURABILITIES)
}

/// The record layouts among `modes` (every one when none is named).
pub fn layouts(modes: &[Mode]) -> Vec<(&'static str, Layout)> {
    let pick = |mode| match mode {
        Mode::PerGroup => Some(LAYOUTS[0]),
        Mode::PerEvent => Some(LAYOUTS[1]),
        Mode::Flush | Mode::Buffered => None,
    };
    named(modes, pick, &LAYOUTS)
}

/// Appends not yet written to sled, from the log's counters: events written (less
/// compaction's copies) plus events coalesced away.
pub fn unwritten(engine: &Engine) -> u64 {
    let stats = engine.log_stats();
    let written = stats.events.saturating_sub(stats.copied) + stats.coalesced;
    engine.last_ticket().0.saturating_sub(written)
}

/// Appends `heartbeats`, never more than `max_unwritten` ahead of the writer thread.
///
/// A producer far ahead of the writer hands it huge groups, in which the writer
/// coalesces repeated clients: kept below the live-set size, no group can hold a
/// client twice with [`Workload::cycling_upserts`], and groups stay the size a steady
/// server would see.
pub fn append_paced(
    engine: &mut Engine,
    heartbeats: impl IntoIterator<Item = Heartbeat>,
    max_unwritten: u64,
) {
    for (i, hb) in heartbeats.into_iter().enumerate() {
        // Reading the counters costs a few atomic loads: not every time.
        if i % 256 == 0 {
            while unwritten(engine) >= max_unwritten {
                std::thread::yield_now();
            }
        }
        engine.heartbeat(hb);
    }
}

/// Waits until everything appended is durable, however long the disk takes.
pub fn sync_fully(engine: &Engine) {
    while !engine.sync().expect("log writer is running") {}
}

/// Writes a log in `path` the way a steady server would: a heartbeat for each of
/// `workload`'s entries, then `churn` upserts, paced to the writer, with `buffered`
/// durability; then syncs and closes it. `config` may adjust the log's options.
pub fn build_log(
    path: &Path,
    layout: Layout,
    workload: &Workload,
    churn: u64,
    config: impl FnOnce(Config) -> Config,
) -> LogStats {
    let buffered = Durability::Buffered(Duration::from_millis(100));
    let (mut engine, _) =
        Engine::open(config(log_config(path, buffered, layout))).expect("open log");
    // The cycling order starts at key 0 and visits every entry once per cycle: the
    // first `live` heartbeats create the live set, the rest are upserts.
    let total = workload.live() + churn;
    append_paced(
        &mut engine,
        workload.cycling_upserts().take(total as usize),
        workload.live() / 2,
    );
    sync_fully(&engine);
    let stats = engine.log_stats();
    engine.close().expect("close log");
    stats
}

/// Sizes of the files under a directory, like `du`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Sum of file lengths (`du --apparent-size`).
    pub apparent: u64,
    /// Blocks actually allocated (`du`), which is smaller for sparse files.
    pub allocated: u64,
    /// Files counted.
    pub files: u64,
}

/// Walks `dir` and adds up its files' sizes.
pub fn disk_usage(dir: &Path) -> std::io::Result<DiskUsage> {
    use std::os::unix::fs::MetadataExt;

    let mut usage = DiskUsage::default();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                usage.apparent += meta.len();
                usage.allocated += meta.blocks() * 512;
                usage.files += 1;
            }
        }
    }
    Ok(usage)
}

/// `n` in MiB, for printing.
pub fn mib(n: u64) -> f64 {
    n as f64 / f64::from(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycling_upserts_visit_each_entry_once_per_cycle() {
        let workload = Workload::new(1_000);
        let mut seen: Vec<u64> = workload
            .cycling_upserts()
            .take(1_000)
            .map(|hb| hb.client.0)
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (1..=1_000).collect::<Vec<_>>());
    }

    #[test]
    fn data_is_about_sixty_bytes_of_json() {
        assert_eq!(DATA.len(), 60);
    }
}
