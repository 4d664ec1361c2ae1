//! Model test: random heartbeats, leaves, clock advances, sweeps and reboots against a
//! plain in-memory model. After every operation the engine's live view must equal the
//! model's; after a reboot (close, reopen, replay) too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use rollcall_engine::{ClientId, Config, Engine, Heartbeat, Layout, Leave, Ttl, UnixMs};

const ROOMS: [&str; 3] = ["pr:a", "pr:b", "room with spaces ☃"];

#[derive(Clone, Debug)]
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

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..ROOMS.len(), 1..6u64, any::<u8>(), 1..300u64)
            .prop_map(|(room, client, data, ttl)| Op::Heartbeat { room, client, data, ttl }),
        3 => (0..ROOMS.len(), 1..6u64).prop_map(|(room, client)| Op::Leave { room, client }),
        3 => (0..200u64).prop_map(Op::AdvanceClock),
        2 => Just(Op::Sweep),
        1 => Just(Op::Sync),
        2 => Just(Op::Reboot),
    ]
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

struct Harness {
    dir: tempfile::TempDir,
    clock: Arc<AtomicU64>,
    layout: Layout,
    engine: Option<Engine>,
}

impl Harness {
    fn new(layout: Layout) -> Harness {
        let mut harness = Harness {
            dir: tempfile::tempdir().unwrap(),
            clock: Arc::new(AtomicU64::new(1_000_000)),
            layout,
            engine: None,
        };
        harness.open();
        harness
    }

    fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn open(&mut self) {
        let clock = self.clock.clone();
        let config = Config::new(self.dir.path())
            .layout(self.layout)
            // Compact as eagerly as possible and split groups into tiny records, so
            // that copy-forward and multi-record batches happen in short runs.
            .compaction_slack(0)
            .max_record(3, 1 << 20)
            .clock(move || UnixMs(clock.load(Ordering::SeqCst)));
        let (engine, _report) = Engine::open(config).unwrap();
        self.engine = Some(engine);
    }

    fn engine(&mut self) -> &mut Engine {
        self.engine.as_mut().unwrap()
    }

    fn live(&self, room: usize, now: u64) -> Vec<(u64, Vec<u8>, u64)> {
        let mut live: Vec<_> = self
            .engine
            .as_ref()
            .unwrap()
            .materializer()
            .entries(ROOMS[room], UnixMs(now))
            .map(|e| (e.client.0, e.data.to_vec(), e.expires_at.0))
            .collect();
        live.sort();
        live
    }
}

fn run(ops: &[Op], layout: Layout) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let mut h = Harness::new(layout);
    for (step, op) in ops.iter().enumerate() {
        let now = h.now();
        match op {
            Op::Heartbeat {
                room,
                client,
                data,
                ttl,
            } => {
                let payload = vec![b'0' + data % 10; 1 + (*data as usize % 40)];
                h.engine().heartbeat(Heartbeat {
                    room: ROOMS[*room].into(),
                    client: ClientId(*client),
                    user: None,
                    data: payload.clone().into(),
                    ttl: Ttl(*ttl),
                    at: UnixMs(now),
                });
                model.entries.insert((*room, *client), (payload, now + ttl));
            }
            Op::Leave { room, client } => {
                h.engine().leave(Leave {
                    room: ROOMS[*room].into(),
                    client: ClientId(*client),
                    at: UnixMs(now),
                });
                model.entries.remove(&(*room, *client));
            }
            Op::AdvanceClock(ms) => {
                h.clock.fetch_add(*ms, Ordering::SeqCst);
            }
            Op::Sweep => {
                let mut changes = Vec::new();
                h.engine().sweep(UnixMs(now), &mut changes);
                model.sweep(now);
                prop_assert_eq!(h.engine().materializer().len(), model.entries.len());
            }
            Op::Sync => {
                prop_assert!(h.engine().sync().unwrap());
                let engine = h.engine();
                prop_assert_eq!(engine.durable(), engine.last_ticket());
            }
            Op::Reboot => {
                h.engine.take().unwrap().close().unwrap();
                h.open();
                model.sweep(now);
                prop_assert_eq!(h.engine().materializer().len(), model.entries.len());
            }
        }
        let now = h.now();
        for room in 0..ROOMS.len() {
            prop_assert_eq!(
                h.live(room, now),
                model.live(room, now),
                "room {} after step {}: {:?}",
                room,
                step,
                op
            );
        }
    }
    // The log never holds much more than its live data once compaction caught up.
    let engine = h.engine.take().unwrap();
    engine.sync().unwrap();
    let stats = engine.log_stats();
    prop_assert!(stats.live_bytes <= stats.total_bytes);
    engine.close().unwrap();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model_per_group(ops in prop::collection::vec(op(), 1..80)) {
        run(&ops, Layout::PerGroup)?;
    }

    #[test]
    fn engine_matches_model_per_event(ops in prop::collection::vec(op(), 1..80)) {
        run(&ops, Layout::PerEvent)?;
    }
}
