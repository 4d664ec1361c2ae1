//! A reference model of the engine, and a replay that runs operations against both
//! (feature `model`, for tests only).
//!
//! The model is a plain map: the last event per `(room, client)`, minus what a sweep
//! removed. [`Replay`] applies each [`Op`] (heartbeat, leave, clock advance, sweep,
//! sync, reboot: close, reopen, replay the log) to a real [`Engine`] on disk and to the
//! model, and checks after every operation that the engine's live view equals the
//! model's. The proptest `engine/tests/model.rs` and the fuzz target
//! `fuzz/fuzz_targets/replay_model.rs` both drive it; they differ only in how they pick
//! operations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{ClientId, Config, Engine, Heartbeat, Layout, Leave, Ttl, UnixMs};

/// The rooms operations name by index (one with spaces and a non-ASCII character).
pub const ROOMS: [&str; 3] = ["pr:a", "pr:b", "room with spaces ☃"];

/// Where the virtual clock starts, in milliseconds.
pub const START_MS: u64 = 1_000_000;

/// One operation of a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A heartbeat of `client` in room `ROOMS[room]`; `data` picks the payload.
    Heartbeat {
        /// Index into [`ROOMS`].
        room: usize,
        /// The client.
        client: u64,
        /// Picks the payload: `1 + data % 40` bytes of the digit `data % 10`.
        data: u8,
        /// Time to live, in milliseconds.
        ttl: u64,
    },
    /// `client` leaves room `ROOMS[room]`.
    Leave {
        /// Index into [`ROOMS`].
        room: usize,
        /// The client.
        client: u64,
    },
    /// The clock moves on by this many milliseconds.
    AdvanceClock(u64),
    /// Expired entries are swept.
    Sweep,
    /// The log is synced to disk.
    Sync,
    /// The engine is closed and reopened (the log replayed).
    Reboot,
}

/// A live entry: client, data, expiry (ms).
pub type Entry = (u64, Vec<u8>, u64);

/// What the engine should hold: the last event per key, minus swept entries.
#[derive(Clone, Debug, Default)]
pub struct Model {
    entries: BTreeMap<(usize, u64), (Vec<u8>, u64)>,
}

impl Model {
    /// The live entries of room `room` at `now`, sorted by client.
    pub fn live(&self, room: usize, now: u64) -> Vec<Entry> {
        self.entries
            .iter()
            .filter(|((r, _), (_, expires))| *r == room && now <= *expires)
            .map(|((_, client), (data, expires))| (*client, data.clone(), *expires))
            .collect()
    }

    /// Drops what expired before `now`.
    pub fn sweep(&mut self, now: u64) {
        self.entries.retain(|_, (_, expires)| now <= *expires);
    }

    /// Entries held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The payload a heartbeat's `data` byte stands for.
pub fn payload(data: u8) -> Vec<u8> {
    vec![b'0' + data % 10; 1 + usize::from(data % 40)]
}

/// An engine on disk and the model, driven by the same operations.
pub struct Replay {
    dir: PathBuf,
    layout: Layout,
    configure: fn(Config) -> Config,
    clock: Arc<AtomicU64>,
    engine: Option<Engine>,
    model: Model,
    steps: usize,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("dir", &self.dir)
            .field("layout", &self.layout)
            .field("steps", &self.steps)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl Replay {
    /// Opens an engine in `dir` (an empty directory the caller keeps) with `layout`.
    pub fn new(dir: &Path, layout: Layout) -> Result<Replay, String> {
        Replay::with_config(dir, layout, |config| config)
    }

    /// [`Replay::new`], with `configure` applied to the engine's configuration at every
    /// open (e.g. a smaller cache).
    pub fn with_config(
        dir: &Path,
        layout: Layout,
        configure: fn(Config) -> Config,
    ) -> Result<Replay, String> {
        let mut replay = Replay {
            dir: dir.to_path_buf(),
            layout,
            configure,
            clock: Arc::new(AtomicU64::new(START_MS)),
            engine: None,
            model: Model::default(),
            steps: 0,
        };
        replay.open()?;
        Ok(replay)
    }

    fn open(&mut self) -> Result<(), String> {
        let clock = self.clock.clone();
        let config = Config::new(&self.dir)
            .layout(self.layout)
            // Compact as eagerly as possible and split groups into tiny records, so
            // that copy-forward and multi-record batches happen in short runs.
            .compaction_slack(0)
            .max_record(3, 1 << 20)
            .clock(move || UnixMs(clock.load(Ordering::SeqCst)));
        let (engine, _report) =
            Engine::open((self.configure)(config)).map_err(|e| format!("open: {e}"))?;
        self.engine = Some(engine);
        Ok(())
    }

    fn engine(&mut self) -> &mut Engine {
        self.engine
            .as_mut()
            .expect("the engine is open between operations")
    }

    /// The virtual time, in milliseconds.
    pub fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    /// The model so far.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The engine's live entries of room `room` at `now`, sorted by client.
    pub fn live(&self, room: usize, now: u64) -> Vec<Entry> {
        let engine = self
            .engine
            .as_ref()
            .expect("the engine is open between operations");
        let mut live: Vec<_> = engine
            .materializer()
            .entries(ROOMS[room], UnixMs(now))
            .map(|e| (e.client.0, e.data.to_vec(), e.expires_at.0))
            .collect();
        live.sort();
        live
    }

    /// Applies `op` to the engine and the model; then every room's live view must be
    /// the same in both. The error says where they parted.
    pub fn apply(&mut self, op: &Op) -> Result<(), String> {
        let step = self.steps;
        self.steps += 1;
        let now = self.now();
        match *op {
            Op::Heartbeat {
                room,
                client,
                data,
                ttl,
            } => {
                let payload = payload(data);
                self.engine().heartbeat(Heartbeat {
                    room: ROOMS[room].into(),
                    client: ClientId(client),
                    user: None,
                    data: payload.clone().into(),
                    ttl: Ttl(ttl),
                    at: UnixMs(now),
                });
                self.model
                    .entries
                    .insert((room, client), (payload, now + ttl));
            }
            Op::Leave { room, client } => {
                self.engine().leave(Leave {
                    room: ROOMS[room].into(),
                    client: ClientId(client),
                    at: UnixMs(now),
                });
                self.model.entries.remove(&(room, client));
            }
            Op::AdvanceClock(ms) => {
                self.clock.fetch_add(ms, Ordering::SeqCst);
            }
            Op::Sweep => {
                let mut changes = Vec::new();
                self.engine().sweep(UnixMs(now), &mut changes);
                self.model.sweep(now);
                self.same_len(step)?;
            }
            Op::Sync => {
                let engine = self.engine();
                if !engine
                    .sync()
                    .map_err(|e| format!("step {step}: sync: {e}"))?
                {
                    return Err(format!("step {step}: sync timed out"));
                }
                if engine.durable() != engine.last_ticket() {
                    return Err(format!(
                        "step {step}: durable {:?} != last ticket {:?} after a sync",
                        engine.durable(),
                        engine.last_ticket()
                    ));
                }
            }
            Op::Reboot => {
                let engine = self.engine.take().expect("open");
                engine
                    .close()
                    .map_err(|e| format!("step {step}: close: {e}"))?;
                self.open()?;
                self.model.sweep(now);
                self.same_len(step)?;
            }
        }
        let now = self.now();
        for room in 0..ROOMS.len() {
            let (engine, model) = (self.live(room, now), self.model.live(room, now));
            if engine != model {
                return Err(format!(
                    "room {room} after step {step} ({op:?}): engine {engine:?} != model {model:?}"
                ));
            }
        }
        Ok(())
    }

    fn same_len(&mut self, step: usize) -> Result<(), String> {
        let (engine, model) = (self.engine().materializer().len(), self.model.len());
        if engine == model {
            Ok(())
        } else {
            Err(format!(
                "step {step}: engine holds {engine} entries, model {model}"
            ))
        }
    }

    /// Syncs and closes; the log never holds more live bytes than bytes.
    pub fn finish(mut self) -> Result<(), String> {
        let engine = self.engine.take().expect("open");
        engine.sync().map_err(|e| format!("sync: {e}"))?;
        let stats = engine.log_stats();
        if stats.live_bytes > stats.total_bytes {
            return Err(format!(
                "live bytes {} > total bytes {}",
                stats.live_bytes, stats.total_bytes
            ));
        }
        engine.close().map_err(|e| format!("close: {e}"))
    }
}
