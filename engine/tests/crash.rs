//! Crash recovery under `kill -9`.
//!
//! The test binary runs itself as a child process: the `crash_child` test, which does
//! nothing unless `ROLLCALL_CRASH_CHILD` names a data directory. The child opens the
//! engine in `flush` mode and appends a deterministic stream of heartbeats and leaves as
//! fast as it can. Every event carries a version in its data (`{"v":…}`) that grows per
//! key and names exactly one event. Before appending a batch the child prints a `W` line
//! per event, so the parent knows every version that may reach the disk; once an
//! event's ticket is durable it prints an `ACK` line.
//!
//! The parent kills the child with SIGKILL at a random moment, reopens the directory
//! in-process with the clock pinned, and checks that the reopen succeeds, that every
//! key's last acknowledged state survived (a live heartbeat at that version or a later
//! one, a leave as absence or a later heartbeat), that no expired entry came back and
//! that every entry is one the child wrote. Every round continues on the same
//! directory, so state accumulates.
//!
//! `ROLLCALL_CRASH_ROUNDS` (default 10) sets the number of rounds, `ROLLCALL_CRASH_SEED`
//! replays a run; the seed is printed first. The long run:
//! `ROLLCALL_CRASH_ROUNDS=100 cargo test -p rollcall-engine --test crash -- --nocapture`.
#![cfg(unix)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rollcall_engine::{
    ClientId, Config, Durability, Engine, Heartbeat, Layout, Leave, Materializer, Ticket, Ttl,
    UnixMs,
};

const CHILD_TEST: &str = "crash_child";
const CHILD_ENV: &str = "ROLLCALL_CRASH_CHILD";
const ROUND_ENV: &str = "ROLLCALL_CRASH_ROUND";
const SEED_ENV: &str = "ROLLCALL_CRASH_SEED";
const ROUNDS_ENV: &str = "ROLLCALL_CRASH_ROUNDS";

const ROOMS: [&str; 4] = ["pr:lobby", "pr:doc-42", "cursor:☃", "typing:üñí"];
const CLIENTS: u64 = 300;
/// A few clients heartbeat far more often than the rest, like busy cursors.
const HOT_CLIENTS: u64 = 16;
/// Events announced and appended together.
const BATCH: usize = 128;
/// Appends the child lets run ahead of the disk before waiting for it.
const WINDOW: usize = 20_000;
/// The child stops by itself after this long, should the parent never kill it.
const CHILD_MAX_RUN: Duration = Duration::from_secs(20);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const KILL_DELAY_MS: std::ops::RangeInclusive<u64> = 20..=400;
/// Some rounds kill the child this soon after starting it, usually while it is still
/// opening the log (replaying, truncating, deleting dead records).
const EARLY_KILL_MS: std::ops::RangeInclusive<u64> = 0..=150;
const SIGKILL: i32 = 9;

/// xorshift64*, seeded through splitmix64 so that nearby seeds diverge at once.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn in_range(&mut self, range: std::ops::RangeInclusive<u64>) -> u64 {
        range.start() + self.below(range.end() - range.start() + 1)
    }
}

/// (room index, client id): replay keeps the last event per key.
type Key = (usize, u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Heartbeat { expires_at: u64 },
    Leave,
}

impl Kind {
    /// Whether an entry whose last event is this one is absent at `now`.
    fn gone_at(self, now: UnixMs) -> bool {
        match self {
            Kind::Heartbeat { expires_at } => expires_at < now.0,
            Kind::Leave => true,
        }
    }
}

/// One event as the child announces and acknowledges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Written {
    key: Key,
    version: u64,
    kind: Kind,
}

impl Written {
    fn write_line(&self, tag: &str, out: &mut impl Write) -> io::Result<()> {
        let (room, client) = (ROOMS[self.key.0], self.key.1);
        match self.kind {
            Kind::Heartbeat { expires_at } => {
                writeln!(
                    out,
                    "{tag} hb {room} {client} {} {expires_at}",
                    self.version
                )
            }
            Kind::Leave => writeln!(out, "{tag} leave {room} {client} {}", self.version),
        }
    }

    /// Parses what follows the tag of a `W` or `ACK` line.
    fn parse(fields: &str) -> Option<Written> {
        let mut fields = fields.split(' ');
        let kind = fields.next()?;
        let room = fields.next()?;
        let room = ROOMS.iter().position(|r| *r == room)?;
        let client = fields.next()?.parse().ok()?;
        let version = fields.next()?.parse().ok()?;
        let kind = match kind {
            "hb" => Kind::Heartbeat {
                expires_at: fields.next()?.parse().ok()?,
            },
            "leave" => Kind::Leave,
            _ => return None,
        };
        fields.next().is_none().then_some(Written {
            key: (room, client),
            version,
            kind,
        })
    }
}

/// The data a heartbeat carries: its version and some padding so records vary in size.
fn data_of(version: u64) -> String {
    let pad = "x".repeat((version % 61) as usize);
    format!(r#"{{"v":{version},"pad":"{pad}"}}"#)
}

fn version_in(data: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(data).ok()?;
    let version = text
        .strip_prefix(r#"{"v":"#)?
        .split(',')
        .next()?
        .parse()
        .ok()?;
    (text == data_of(version)).then_some(version)
}

fn user_of(client: u64) -> Option<String> {
    (client % 3 == 0).then(|| format!("user-{client}"))
}

/// How a round's child opens the log: both layouts, eager and lazy compaction, tiny
/// and large records.
#[derive(Clone, Copy, Debug)]
struct RoundSettings {
    layout: Layout,
    compaction_slack: u64,
    max_record_events: usize,
}

impl RoundSettings {
    fn of(seed: u64, round: u64) -> RoundSettings {
        let mut rng = Rng::new(seed ^ round.wrapping_mul(0xA24B_AED4_963E_E407));
        RoundSettings {
            layout: [Layout::PerGroup, Layout::PerEvent][rng.below(2) as usize],
            compaction_slack: [0, 4 << 10, 64 << 10][rng.below(3) as usize],
            max_record_events: [3, 64, 4_096][rng.below(3) as usize],
        }
    }
}

// ---------------------------------------------------------------------------------------
// The child: append, announce, acknowledge.

/// Runs only as the child of `acknowledged_writes_survive_kill_9`.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let seed = env_u64(SEED_ENV).expect("the parent passes the seed");
    let round = env_u64(ROUND_ENV).expect("the parent passes the round");
    append_until_killed(Path::new(&dir), seed, round);
}

/// An event about to be appended.
struct Planned {
    written: Written,
    at: u64,
    ttl: u64,
}

impl Planned {
    fn append(&self, engine: &mut Engine) -> Ticket {
        let (room, client) = self.written.key;
        match self.written.kind {
            Kind::Heartbeat { .. } => {
                let hb = Heartbeat {
                    room: ROOMS[room].into(),
                    client: ClientId(client),
                    user: user_of(client).map(Into::into),
                    data: data_of(self.written.version).into(),
                    ttl: Ttl(self.ttl),
                    at: UnixMs(self.at),
                };
                engine.heartbeat(hb).1
            }
            Kind::Leave => {
                let leave = Leave {
                    room: ROOMS[room].into(),
                    client: ClientId(client),
                    at: UnixMs(self.at),
                };
                engine
                    .leave(leave)
                    .expect("leaves are planned only for present entries")
                    .1
            }
        }
    }
}

struct Workload {
    rng: Rng,
    /// Versions grow across rounds too: round `r` writes `r << 32 | n`.
    next_version: u64,
}

impl Workload {
    fn new(seed: u64, round: u64) -> Workload {
        Workload {
            rng: Rng::new(seed.rotate_left(17) ^ round),
            next_version: round << 32,
        }
    }

    /// Plans the next batch. A leave is planned only where the engine will log it
    /// (the client has an entry), so every announced event is really appended.
    fn batch(&mut self, materializer: &Materializer, len: usize) -> Vec<Planned> {
        let mut present_after: HashMap<Key, bool> = HashMap::new();
        (0..len)
            .map(|_| {
                let room = self.rng.below(ROOMS.len() as u64) as usize;
                let client = if self.rng.below(2) == 0 {
                    1 + self.rng.below(HOT_CLIENTS)
                } else {
                    1 + self.rng.below(CLIENTS)
                };
                let key = (room, client);
                let present = *present_after.entry(key).or_insert_with(|| {
                    // Any entry, live or not yet swept, makes `Engine::leave` log.
                    materializer
                        .get(ROOMS[room], ClientId(client), UnixMs(0))
                        .is_some()
                });
                let at = UnixMs::now().0;
                let leave = present && self.rng.below(8) == 0;
                let ttl = match self.rng.below(20) {
                    // Outlives the test.
                    0..=6 => self.rng.in_range(3_600_000..=3_700_000),
                    // Expires within the round.
                    7..=14 => self.rng.in_range(1..=300),
                    // Expires a round or a few later.
                    _ => self.rng.in_range(300..=3_000),
                };
                self.next_version += 1;
                present_after.insert(key, !leave);
                Planned {
                    written: Written {
                        key,
                        version: self.next_version,
                        kind: if leave {
                            Kind::Leave
                        } else {
                            Kind::Heartbeat {
                                expires_at: at + ttl,
                            }
                        },
                    },
                    at,
                    ttl,
                }
            })
            .collect()
    }
}

fn append_until_killed(dir: &Path, seed: u64, round: u64) {
    let settings = RoundSettings::of(seed, round);
    let (durable_tx, durable_rx) = mpsc::channel();
    let config = Config::new(dir)
        .durability(Durability::Flush)
        .layout(settings.layout)
        .compaction_slack(settings.compaction_slack)
        .max_record(settings.max_record_events, 1 << 20)
        .on_durable(move |ticket| {
            // An unbounded send never blocks the writer thread.
            let _ = durable_tx.send(ticket);
        });
    let (mut engine, _report) = Engine::open(config).expect("child: open");

    // Write errors mean the parent is gone: stop quietly.
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    // The leading newline ends whatever partial line the test harness printed.
    if writeln!(out, "\nREADY").and_then(|()| out.flush()).is_err() {
        return;
    }
    let mut workload = Workload::new(seed, round);
    let mut pending: VecDeque<(Ticket, Written)> = VecDeque::new();
    let mut durable = Ticket(0);
    let mut changes = Vec::new();
    let started = Instant::now();
    while started.elapsed() < CHILD_MAX_RUN {
        let batch = workload.batch(engine.materializer(), BATCH);
        for planned in &batch {
            if planned.written.write_line("W", &mut out).is_err() {
                return;
            }
        }
        // Every event must be announced before it can reach the disk.
        if out.flush().is_err() {
            return;
        }
        for planned in &batch {
            let ticket = planned.append(&mut engine);
            pending.push_back((ticket, planned.written));
        }
        // Sweeps feed compaction the expiries, as a server's sweep timer would.
        engine.sweep(UnixMs::now(), &mut changes);
        changes.clear();

        durable = durable_rx.try_iter().fold(durable, Ticket::max);
        while pending.len() > WINDOW && pending.front().is_some_and(|(t, _)| *t > durable) {
            durable = durable.max(durable_rx.recv().expect("the log writer stopped"));
        }
        while pending.front().is_some_and(|(t, _)| *t <= durable) {
            let (_, written) = pending.pop_front().expect("checked above");
            if written.write_line("ACK", &mut out).is_err() {
                return;
            }
        }
        if out.flush().is_err() {
            return;
        }
    }
    engine.close().expect("child: close");
}

// ---------------------------------------------------------------------------------------
// The parent: kill, reopen, check.

/// What a child printed before it died.
#[derive(Default)]
struct Transcript {
    ready: bool,
    /// Announced events per key, in append order.
    written: HashMap<Key, Vec<Written>>,
    /// Every announced event by its version (versions are unique).
    by_version: HashMap<u64, Written>,
    acked: Vec<Written>,
    malformed: Vec<String>,
}

fn read_transcript(stdout: ChildStdout, ready: &mpsc::Sender<()>) -> Transcript {
    let mut transcript = Transcript::default();
    let mut reader = BufReader::with_capacity(1 << 16, stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        // A line without its newline was cut short by the kill: it promises nothing.
        if line.last() != Some(&b'\n') {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches('\n');
        if text == "READY" {
            transcript.ready = true;
            let _ = ready.send(());
        } else if let Some(fields) = text.strip_prefix("W ") {
            match Written::parse(fields) {
                Some(written) => {
                    transcript.by_version.insert(written.version, written);
                    transcript
                        .written
                        .entry(written.key)
                        .or_default()
                        .push(written);
                }
                None => transcript.malformed.push(text.to_owned()),
            }
        } else if let Some(fields) = text.strip_prefix("ACK ") {
            match Written::parse(fields) {
                Some(written) => transcript.acked.push(written),
                None => transcript.malformed.push(text.to_owned()),
            }
        }
        // Anything else is the test harness talking.
    }
    transcript
}

/// Kills the child on every way out of a round, including a failed assertion.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// When the parent kills the child.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// This long after the child reported that it is appending.
    AfterReady(Duration),
    /// This long after starting it, whatever it is doing.
    AfterSpawn(Duration),
}

/// Starts a child on `dir`, kills it as `kill` says, returns what it said.
fn run_child(dir: &Path, seed: u64, round: u64, kill: Kill) -> Transcript {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(SEED_ENV, seed.to_string())
        .env(ROUND_ENV, round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut child = Reaper(child);
    let (ready_tx, ready_rx) = mpsc::channel();
    let reader = thread::spawn(move || read_transcript(stdout, &ready_tx));
    let errors = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    // The deliberate sleeps: the kill must land at an arbitrary moment.
    let must_be_ready = match kill {
        Kill::AfterReady(delay) => {
            if ready_rx.recv_timeout(READY_TIMEOUT).is_ok() {
                thread::sleep(delay);
            }
            true
        }
        Kill::AfterSpawn(delay) => {
            thread::sleep(delay);
            false
        }
    };
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    let transcript = reader.join().unwrap();
    let stderr = errors.join().unwrap();
    assert!(
        (transcript.ready || !must_be_ready) && status.signal() == Some(SIGKILL),
        "round {round}: the child did not run until killed ({status}); its stderr:\n{stderr}"
    );
    transcript
}

/// An entry as a reopen finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    version: u64,
    expires_at: u64,
}

/// Every entry the engine holds, expired or not; entries that could not have been
/// written go to `strays`.
fn observe(engine: &Engine, strays: &mut Vec<String>) -> BTreeMap<Key, Seen> {
    let materializer = engine.materializer();
    let mut found = BTreeMap::new();
    // At time zero every entry counts as live: this lists the expired ones too.
    for (room, _) in materializer.rooms(UnixMs(0)) {
        let Some(index) = ROOMS.iter().position(|r| **r == **room) else {
            strays.push(format!("entry in a room never written: {room:?}"));
            continue;
        };
        for entry in materializer.entries(room, UnixMs(0)) {
            let client = entry.client.0;
            match version_in(&entry.data) {
                Some(version) if entry.user.as_deref() == user_of(client).as_deref() => {
                    found.insert(
                        (index, client),
                        Seen {
                            version,
                            expires_at: entry.expires_at.0,
                        },
                    );
                }
                _ => strays.push(format!("{room} {client}: data never written: {entry:?}")),
            }
        }
    }
    if found.len() + strays.len() != materializer.len() {
        strays.push(format!(
            "the materializer holds {} entries, {} are reachable",
            materializer.len(),
            found.len()
        ));
    }
    found
}

#[derive(Default)]
struct Tally {
    acked_events: usize,
    written_events: usize,
    keys_checked: usize,
    live_expected: usize,
    missing: usize,
}

/// Checks one key of a reopened log.
///
/// `before` is what the previous reopen found (durable for sure, since that engine was
/// closed cleanly); `written` is everything announced this round, so it includes every
/// event that may have reached the disk; `acked` is the last acknowledged version.
fn check_key(
    key: Key,
    before: Option<Seen>,
    written: &[Written],
    acked: Option<u64>,
    found: Option<Seen>,
    now: UnixMs,
    tally: &mut Tally,
) -> Option<String> {
    let name = format!("{} {}", ROOMS[key.0], key.1);
    let kind_of = |version: u64| {
        written
            .iter()
            .find(|w| w.version == version)
            .map(|w| w.kind)
            .or_else(|| {
                before
                    .filter(|seen| seen.version == version)
                    .map(|seen| Kind::Heartbeat {
                        expires_at: seen.expires_at,
                    })
            })
    };
    // The last event known to be durable: this round's acknowledgment, else the past.
    let durable = acked
        .or(before.map(|seen| seen.version))
        .map(|version| (version, kind_of(version).expect("acks are announced")));
    if durable.is_some() {
        tally.keys_checked += 1;
    }
    if durable.is_some_and(|(_, kind)| !kind.gone_at(now)) {
        tally.live_expected += 1;
    }
    match found {
        Some(seen) => {
            if seen.expires_at < now.0 {
                return Some(format!(
                    "{name}: expired entry came back: {seen:?} at {now}"
                ));
            }
            if kind_of(seen.version)
                != Some(Kind::Heartbeat {
                    expires_at: seen.expires_at,
                })
            {
                return Some(format!("{name}: entry was never written: {seen:?}"));
            }
            match durable {
                Some((version, _)) if seen.version < version => Some(format!(
                    "{name}: entry {seen:?} is older than acknowledged version {version}"
                )),
                _ => None,
            }
        }
        None => {
            let (version, kind) = durable?;
            // Absent is right if the acknowledged event removes the entry, or if a later
            // announced one may have landed and removes it.
            let explained = kind.gone_at(now)
                || written
                    .iter()
                    .any(|w| w.version > version && w.kind.gone_at(now));
            if explained {
                None
            } else {
                tally.missing += 1;
                Some(format!(
                    "{name}: acknowledged version {version} ({kind:?}) is missing at {now}"
                ))
            }
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let rounds = env_u64(ROUNDS_ENV).unwrap_or(10);
    let seed = env_u64(SEED_ENV).unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("crash test: {rounds} rounds, seed {seed} (replay with {SEED_ENV}={seed})");
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    let mut reopen_times = Vec::new();
    let mut before: BTreeMap<Key, Seen> = BTreeMap::new();

    for round in 1..=rounds {
        let settings = RoundSettings::of(seed, round);
        let kill = if rng.below(5) == 0 {
            Kill::AfterSpawn(Duration::from_millis(rng.in_range(EARLY_KILL_MS)))
        } else {
            Kill::AfterReady(Duration::from_millis(rng.in_range(KILL_DELAY_MS)))
        };
        let context = format!("seed {seed}, round {round}, {settings:?}, {kill:?}");
        let transcript = run_child(dir.path(), seed, round, kill);
        assert!(
            transcript.malformed.is_empty(),
            "{context}: malformed lines {:?}",
            &transcript.malformed[..transcript.malformed.len().min(5)]
        );

        let now = UnixMs::now();
        let started = Instant::now();
        let opened = Engine::open(Config::new(dir.path()).clock(move || now));
        reopen_times.push(started.elapsed());
        let (engine, report) =
            opened.unwrap_or_else(|error| panic!("{context}: reopening failed: {error}"));

        let mut violations = Vec::new();
        let found = observe(&engine, &mut violations);
        let mut acked: HashMap<Key, u64> = HashMap::new();
        for ack in &transcript.acked {
            let announced = transcript.by_version.get(&ack.version) == Some(ack);
            assert!(
                announced,
                "{context}: acknowledged but never announced: {ack:?}"
            );
            let last = acked.entry(ack.key).or_default();
            *last = (*last).max(ack.version);
        }
        let mut keys: Vec<Key> = before
            .keys()
            .chain(transcript.written.keys())
            .chain(found.keys())
            .copied()
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let written = transcript.written.get(&key).map_or(&[][..], Vec::as_slice);
            let verdict = check_key(
                key,
                before.get(&key).copied(),
                written,
                acked.get(&key).copied(),
                found.get(&key).copied(),
                now,
                &mut tally,
            );
            violations.extend(verdict);
        }
        assert!(
            violations.is_empty(),
            "{context}: {} violations after reopening, first ones:\n{}",
            violations.len(),
            violations[..violations.len().min(20)].join("\n")
        );
        tally.acked_events += transcript.acked.len();
        tally.written_events += transcript.by_version.len();
        println!(
            "round {round}: {settings:?}, {kill:?}: {} announced, {} acked, \
             {} records replayed, {} live, reopen {:?}",
            transcript.by_version.len(),
            transcript.acked.len(),
            report.records,
            report.live_entries,
            report.elapsed
        );
        engine.close().unwrap();
        before = found;
    }

    reopen_times.sort_unstable();
    println!(
        "crash test: {rounds} rounds, {} acked events checked ({} announced), {} acked-live \
         keys expected, missing = {}, reopen p50 {:?} p99 {:?}",
        tally.acked_events,
        tally.written_events,
        tally.live_expected,
        tally.missing,
        percentile(&reopen_times, 0.5),
        percentile(&reopen_times, 0.99),
    );
    assert_eq!(tally.missing, 0);
}
