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
    /// Sets up the rooms of `threads` threads.
    pub fn new(threads: usize) -> RoomLoad {
        let hub = Arc::new(Hub::in_memory(0).expect("a memory hub opens"));
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
                    for i in 0..per_thread {
                        let room = &rooms[(i as usize) % rooms.len()];
                        let client = ClientId(i % CLIENTS + 1);
                        let _ = hub.heartbeat(room, client, None, data.clone(), Ttl(60_000));
                    }
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for worker in workers {
            worker.join().expect("a bench thread panicked");
        }
        start.elapsed()
    }
}
