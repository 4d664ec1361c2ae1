//! Support for the criterion benches in `server/benches/`: drives the hub in-process,
//! without sockets. Not an API.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rollcall_engine::{ClientId, Ttl};

use crate::fanout::Outbox;
use crate::hub::Hub;

/// Rooms each thread heartbeats into, and subscribers per room.
const ROOMS_PER_THREAD: usize = 20;
const SUBSCRIBERS: usize = 10;
const CLIENTS: u64 = 10;

/// A hub (in-memory engine) with `threads` disjoint sets of rooms, each room with its
/// subscribers; [`RoomLoad::drive`] times heartbeats into them.
#[derive(Debug)]
pub struct RoomLoad {
    hub: Arc<Hub>,
    rooms: Vec<Vec<Arc<str>>>,
    _outboxes: Vec<Arc<Outbox>>,
}

impl RoomLoad {
    /// Sets up the rooms of `threads` threads, in a hub with as many room shards as
    /// a server on this machine has.
    pub fn new(threads: usize) -> RoomLoad {
        RoomLoad::build(threads, Hub::in_memory(0))
    }

    /// Like [`RoomLoad::new`], with `shards` room shards (rounded up to a power of
    /// two; 1 puts every room behind one lock).
    pub fn with_shards(threads: usize, shards: usize) -> RoomLoad {
        RoomLoad::build(threads, Hub::in_memory_sharded(0, shards))
    }

    fn build(threads: usize, hub: crate::error::Result<Hub>) -> RoomLoad {
        let hub = Arc::new(hub.expect("a memory hub opens"));
        let mut outboxes = Vec::new();
        let rooms: Vec<Vec<Arc<str>>> = (0..threads)
            .map(|t| {
                (0..ROOMS_PER_THREAD)
                    .map(|r| {
                        let room: Arc<str> = format!("bench-{t}-{r}").into();
                        for _ in 0..SUBSCRIBERS {
                            let outbox = Arc::new(Outbox::new());
                            hub.subscribe(&room, &outbox, None, None, Duration::ZERO);
                            outboxes.push(outbox);
                        }
                        room
                    })
                    .collect()
            })
            .collect();
        RoomLoad {
            hub,
            rooms,
            _outboxes: outboxes,
        }
    }

    /// Each thread sends `per_thread` heartbeats into its own rooms, all threads at
    /// once; returns the time until the last one is done.
    pub fn drive(&self, per_thread: u64) -> Duration {
        self.run(per_thread).wall
    }

    /// Like [`RoomLoad::drive`], also measuring how long each thread waited for a CPU
    /// (from `/proc/thread-self/schedstat`; zero where it is not available).
    pub fn run(&self, per_thread: u64) -> Run {
        let threads = self.rooms.len();
        let barrier = Arc::new(Barrier::new(threads + 1));
        let workers: Vec<_> = self
            .rooms
            .iter()
            .map(|rooms| {
                let (hub, rooms, barrier) = (self.hub.clone(), rooms.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let data = Bytes::from_static(br#"{"x":1,"y":2,"name":"bench"}"#);
                    barrier.wait();
                    let start = Instant::now();
                    let before = Schedstat::now();
                    for i in 0..per_thread {
                        let room = &rooms[(i as usize) % rooms.len()];
                        let client = ClientId(i % CLIENTS + 1);
                        let _ = hub.heartbeat(room, client, None, data.clone(), Ttl(60_000));
                    }
                    let after = Schedstat::now();
                    Worker {
                        wall: start.elapsed(),
                        runnable_wait: after.waited.saturating_sub(before.waited),
                    }
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let workers = workers
            .into_iter()
            .map(|worker| worker.join().expect("a bench thread panicked"))
            .collect();
        Run {
            wall: start.elapsed(),
            per_thread,
            workers,
        }
    }
}

/// One timed run of [`RoomLoad::run`].
#[derive(Debug)]
pub struct Run {
    /// Until the last thread was done.
    pub wall: Duration,
    /// Heartbeats each thread sent.
    pub per_thread: u64,
    /// Each thread's own figures.
    pub workers: Vec<Worker>,
}

impl Run {
    /// Heartbeats per second, all threads together.
    pub fn rate(&self) -> f64 {
        (self.per_thread * self.workers.len() as u64) as f64
            / self.wall.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// The share of the threads' wall time spent waiting for a CPU.
    pub fn runnable_wait_share(&self) -> f64 {
        let wall: f64 = self.workers.iter().map(|w| w.wall.as_secs_f64()).sum();
        let waited: f64 = self
            .workers
            .iter()
            .map(|w| w.runnable_wait.as_secs_f64())
            .sum();
        waited / wall.max(f64::MIN_POSITIVE)
    }
}

/// One bench thread's figures.
#[derive(Debug)]
pub struct Worker {
    /// From its first heartbeat to its last.
    pub wall: Duration,
    /// Time it was runnable but waiting for a CPU.
    pub runnable_wait: Duration,
}

/// The calling thread's scheduler counters.
struct Schedstat {
    waited: Duration,
}

impl Schedstat {
    fn now() -> Schedstat {
        // "<ns on a CPU> <ns runnable, waiting for one> <timeslices>"
        let waited = std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
            .map_or(Duration::ZERO, Duration::from_nanos);
        Schedstat { waited }
    }
}
