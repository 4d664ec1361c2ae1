//! Heartbeats, leaves, clock advances, sweeps, syncs and reboots against a plain model,
//! as `engine/tests/model.rs` does: after every operation the engine's live view must
//! equal the model's, and after a reboot (close, reopen, replay) too.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use rollcall_engine::{ClientId, Config, Engine, Heartbeat, Layout, Leave, Ttl, UnixMs};

const ROOMS: [&str; 3] = ["pr:a", "pr:b", "room with spaces ☃"];
const CLIENTS: u8 = 5;
/// Operations per input at most, so that every iteration stays cheap.
const MAX_OPS: usize = 64;
/// Reboots per input at most: each one closes and reopens sled, the dearest step.
const MAX_REBOOTS: usize = 8;
const START: u64 = 1_000_000;

#[derive(Debug)]
enum Op {
    Heartbeat {
        room: usize,
        client: u64,
        data: u8,
        ttl: u64,
    },
    Leave {
        room: usize,
        client: u64,
    },
    AdvanceClock(u64),
    Sweep,
    Sync,
    Reboot,
}

impl<'a> Arbitrary<'a> for Op {
    /// One byte picks the operation, weighted like the model test's strategy; a few more
    /// give its arguments.
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Op> {
        let room = |u: &mut Unstructured<'a>| -> arbitrary::Result<usize> {
            Ok(usize::from(u8::arbitrary(u)?) % ROOMS.len())
        };
        let client = |u: &mut Unstructured<'a>| -> arbitrary::Result<u64> {
            Ok(1 + u64::from(u8::arbitrary(u)? % CLIENTS))
        };
        Ok(match u8::arbitrary(u)? % 19 {
            0..=7 => Op::Heartbeat {
                room: room(u)?,
                client: client(u)?,
                data: u.arbitrary()?,
                ttl: ttl_ms(u.arbitrary()?),
            },
            8..=10 => Op::Leave {
                room: room(u)?,
                client: client(u)?,
            },
            11..=13 => Op::AdvanceClock(advance_ms(u.arbitrary()?)),
            14 | 15 => Op::Sweep,
            16 => Op::Sync,
            _ => Op::Reboot,
        })
    }
}

// Times are coarse so that random inputs often land exactly on an expiry (`now ==
// expires_at` is still live), with single milliseconds to step just past one.

/// 10 to 300 ms, or 1 to 8 ms.
fn ttl_ms(byte: u8) -> u64 {
    if byte & 0x80 == 0 {
        10 * (1 + u64::from(byte % 30))
    } else {
        1 + u64::from(byte & 7)
    }
}

/// 0 to 150 ms in steps of 10, or 1 ms.
fn advance_ms(byte: u8) -> u64 {
    if byte & 0x80 == 0 {
        10 * u64::from(byte % 16)
    } else {
        1
    }
}

#[derive(Debug)]
struct Input {
    per_event: bool,
    ops: Vec<Op>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Input> {
        let per_event = u.arbitrary()?;
        // Every byte left goes to operations. (A derived `Vec` would flip a coin before
        // each element, so random inputs would hold one or two operations.)
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            ops.push(u.arbitrary()?);
        }
        Ok(Input { per_event, ops })
    }
}

/// What the engine should hold: the last event per key, minus swept entries.
#[derive(Default)]
struct Model {
    entries: BTreeMap<(usize, u64), (Vec<u8>, u64)>,
}

impl Model {
    fn live(&self, room: usize, now: u64) -> Vec<(u64, Vec<u8>, u64)> {
        self.entries
            .iter()
            .filter(|((r, _), (_, expires))| *r == room && now <= *expires)
            .map(|((_, client), (data, expires))| (*client, data.clone(), *expires))
            .collect()
    }

    fn sweep(&mut self, now: u64) {
        self.entries.retain(|_, (_, expires)| now <= *expires);
    }
}

fn open(path: &Path, layout: Layout, clock: &Arc<AtomicU64>) -> Engine {
    let clock = clock.clone();
    let config = Config::new(path)
        .layout(layout)
        // Compact as eagerly as possible and split groups into tiny records, so that
        // copy-forward and multi-record batches happen in short runs.
        .compaction_slack(0)
        .max_record(3, 1 << 20)
        .cache_capacity(1 << 20)
        .clock(move || UnixMs(clock.load(Ordering::SeqCst)));
    Engine::open(config).expect("open").0
}

fn live(engine: &Engine, room: usize, now: u64) -> Vec<(u64, Vec<u8>, u64)> {
    let mut live: Vec<_> = engine
        .materializer()
        .entries(ROOMS[room], UnixMs(now))
        .map(|e| (e.client.0, e.data.to_vec(), e.expires_at.0))
        .collect();
    live.sort();
    live
}

fn scratch_dir() -> tempfile::TempDir {
    // sled fsyncs on every flush: a RAM-backed directory keeps iterations fast.
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("temporary directory")
}

fuzz_target!(|input: Input| {
    let layout = if input.per_event {
        Layout::PerEvent
    } else {
        Layout::PerGroup
    };
    let dir = scratch_dir();
    let clock = Arc::new(AtomicU64::new(START));
    let mut engine = open(dir.path(), layout, &clock);
    let mut model = Model::default();
    let mut reboots = 0;

    for (step, op) in input.ops.iter().enumerate() {
        let now = clock.load(Ordering::SeqCst);
        match *op {
            Op::Heartbeat {
                room,
                client,
                data,
                ttl,
            } => {
                let payload = vec![b'0' + data % 10; 1 + usize::from(data % 40)];
                engine.heartbeat(Heartbeat {
                    room: ROOMS[room].into(),
                    client: ClientId(client),
                    user: None,
                    data: payload.clone().into(),
                    ttl: Ttl(ttl),
                    at: UnixMs(now),
                });
                model.entries.insert((room, client), (payload, now + ttl));
            }
            Op::Leave { room, client } => {
                engine.leave(Leave {
                    room: ROOMS[room].into(),
                    client: ClientId(client),
                    at: UnixMs(now),
                });
                model.entries.remove(&(room, client));
            }
            Op::AdvanceClock(ms) => {
                clock.fetch_add(ms, Ordering::SeqCst);
            }
            Op::Sweep => {
                let mut changes = Vec::new();
                engine.sweep(UnixMs(now), &mut changes);
                model.sweep(now);
                assert_eq!(
                    engine.materializer().len(),
                    model.entries.len(),
                    "step {step}"
                );
            }
            Op::Sync => {
                assert!(engine.sync().expect("sync"), "step {step}: sync timed out");
                assert_eq!(engine.durable(), engine.last_ticket(), "step {step}");
            }
            Op::Reboot if reboots < MAX_REBOOTS => {
                reboots += 1;
                engine.close().expect("close");
                engine = open(dir.path(), layout, &clock);
                model.sweep(now);
                assert_eq!(
                    engine.materializer().len(),
                    model.entries.len(),
                    "step {step}"
                );
            }
            Op::Reboot => {}
        }
        let now = clock.load(Ordering::SeqCst);
        for room in 0..ROOMS.len() {
            assert_eq!(
                live(&engine, room, now),
                model.live(room, now),
                "room {room} after step {step}: {op:?}"
            );
        }
    }
    engine.close().expect("close");
});
