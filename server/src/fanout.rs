//! Per-subscriber outboxes with conflation.
//!
//! A change is serialized once per room (an `Arc<str>` fragment) and handed to every
//! subscriber's [`Outbox`]. An outbox keeps, per subscribed room, at most the latest
//! pending change per client: a newer change for the same client replaces the older
//! one. Its writer drains everything pending as one `changes` frame per room whenever
//! the socket can take more. A slow reader therefore costs memory bounded by the size
//! of its rooms, never by the event rate, and always converges to the exact state.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use hashbrown::HashMap;
use rollcall_engine::{ClientId, Ticket, UnixMs};
use tokio::sync::Notify;

use crate::protocol::{self, ErrorCode, Rejection};

/// The index of a room in one outbox.
pub type Slot = u32;

/// Control messages (acks, errors, pongs) a client may leave unread before its reader
/// is paused: backpressure for clients that write but do not read.
pub const CONTROL_CAPACITY: usize = 1_024;

#[derive(Debug, Default)]
struct RoomQueue {
    room: Arc<str>,
    snapshot: Option<String>,
    changes: HashMap<ClientId, Arc<str>>,
    dirty: bool,
}

#[derive(Debug)]
struct PendingAck {
    ticket: Ticket,
    deadline: Instant,
    reference: u64,
    message: String,
}

#[derive(Debug, Default)]
struct State {
    rooms: Vec<Option<RoomQueue>>,
    free: Vec<Slot>,
    dirty: Vec<Slot>,
    control: VecDeque<String>,
    acks: VecDeque<PendingAck>,
}

/// What a subscriber's writer has to send.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    wake: Notify,
    drained: Notify,
}

/// Frames drained from an outbox, ready to write.
#[derive(Debug, Default)]
pub struct Drained {
    /// Text frames in the order to send them.
    pub frames: Vec<String>,
    /// Changes in those frames.
    pub changes: usize,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::new()
    }
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            drained: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves when something was queued since the last drain.
    pub async fn ready(&self) {
        self.wake.notified().await;
    }

    /// Resolves once fewer than `capacity` control messages and acks are waiting.
    pub async fn wait_below(&self, capacity: usize) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            // Register before checking, so a drain in between is not missed.
            drained.as_mut().enable();
            if self.backlog() < capacity {
                return;
            }
            drained.await;
        }
    }

    /// Makes room for a subscription.
    pub fn open_slot(&self, room: Arc<str>) -> Slot {
        let mut state = self.lock();
        let queue = RoomQueue {
            room,
            ..RoomQueue::default()
        };
        if let Some(slot) = state.free.pop() {
            state.rooms[slot as usize] = Some(queue);
            slot
        } else {
            state.rooms.push(Some(queue));
            Slot::try_from(state.rooms.len() - 1).expect("rooms per connection are capped")
        }
    }

    /// Drops a subscription and anything pending for it.
    pub fn close_slot(&self, slot: Slot) {
        let mut state = self.lock();
        if let Some(queue) = state.rooms.get_mut(slot as usize) {
            if queue.take().is_some() {
                state.free.push(slot);
            }
        }
    }

    /// Queues a room's full state; it supersedes every change pending for the room.
    pub fn push_snapshot(&self, slot: Slot, snapshot: String) {
        let mut state = self.lock();
        let State { rooms, dirty, .. } = &mut *state;
        let Some(Some(queue)) = rooms.get_mut(slot as usize) else {
            return;
        };
        queue.changes.clear();
        queue.snapshot = Some(snapshot);
        if !queue.dirty {
            queue.dirty = true;
            dirty.push(slot);
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Queues a change, replacing any pending change for the same client.
    pub fn push_change(&self, slot: Slot, client: ClientId, fragment: &Arc<str>) {
        let mut state = self.lock();
        let was_idle = state.dirty.is_empty();
        let State { rooms, dirty, .. } = &mut *state;
        let Some(Some(queue)) = rooms.get_mut(slot as usize) else {
            return;
        };
        queue.changes.insert(client, fragment.clone());
        if !queue.dirty {
            queue.dirty = true;
            dirty.push(slot);
        }
        drop(state);
        // Waking an already woken writer is wasted work under load: skip it.
        if was_idle {
            self.wake.notify_one();
        }
    }

    /// Queues a control message (ack, error, pong).
    pub fn push_control(&self, message: String) {
        self.lock().control.push_back(message);
        self.wake.notify_one();
    }

    /// Queues the ack of a write; it is sent once the log's durable watermark reaches
    /// `ticket`, or replaced by a `storage_unavailable` error after `deadline`.
    pub fn push_ack_when_durable(
        &self,
        ticket: Ticket,
        deadline: Instant,
        reference: u64,
        message: String,
    ) {
        self.lock().acks.push_back(PendingAck {
            ticket,
            deadline,
            reference,
            message,
        });
        self.wake.notify_one();
    }

    /// Control messages and acks waiting to be written.
    pub fn backlog(&self) -> usize {
        let state = self.lock();
        state.control.len() + state.acks.len()
    }

    /// The earliest deadline of an ack still waiting for the disk.
    pub fn next_ack_deadline(&self) -> Option<Instant> {
        self.lock().acks.front().map(|ack| ack.deadline)
    }

    /// Whether acks are waiting for the durable watermark.
    pub fn awaits_durability(&self) -> bool {
        !self.lock().acks.is_empty()
    }

    /// Takes everything sendable: a snapshot and/or one `changes` frame per dirty room,
    /// then control messages, then acks that are durable (or timed out).
    pub fn drain(&self, durable: Ticket, now: UnixMs, at: Instant, out: &mut Drained) {
        let mut state = self.lock();
        let State {
            rooms,
            dirty,
            control,
            acks,
            ..
        } = &mut *state;
        for slot in dirty.drain(..) {
            let Some(Some(queue)) = rooms.get_mut(slot as usize) else {
                continue;
            };
            queue.dirty = false;
            if let Some(snapshot) = queue.snapshot.take() {
                out.frames.push(snapshot);
            }
            if queue.changes.is_empty() {
                continue;
            }
            let bytes: usize = queue.changes.values().map(|f| f.len() + 1).sum();
            let mut frame = String::with_capacity(bytes + queue.room.len() + 64);
            protocol::changes_prefix(&mut frame, &queue.room, now);
            for (i, (_, fragment)) in queue.changes.drain().enumerate() {
                if i > 0 {
                    frame.push(',');
                }
                frame.push_str(&fragment);
                out.changes += 1;
            }
            frame.push_str(protocol::CHANGES_SUFFIX);
            out.frames.push(frame);
        }
        let had_backlog = !control.is_empty() || !acks.is_empty();
        out.frames.extend(control.drain(..));
        while let Some(ack) = acks.front() {
            if ack.ticket <= durable {
                out.frames
                    .push(acks.pop_front().expect("front exists").message);
            } else if ack.deadline <= at {
                let ack = acks.pop_front().expect("front exists");
                out.frames.push(protocol::error(&Rejection {
                    code: ErrorCode::StorageUnavailable,
                    message: "the log could not make this write durable in time; it is held in \
                              memory and will be written when the disk recovers"
                        .into(),
                    reference: Some(ack.reference),
                    room: None,
                }));
            } else {
                break;
            }
        }
        drop(state);
        if had_backlog {
            self.drained.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn drain(outbox: &Outbox, durable: u64) -> Drained {
        let mut out = Drained::default();
        outbox.drain(Ticket(durable), UnixMs(1), Instant::now(), &mut out);
        out
    }

    #[test]
    fn conflates_to_latest_per_client() {
        let outbox = Outbox::new();
        let slot = outbox.open_slot("r".into());
        for i in 0..1_000 {
            let fragment: Arc<str> =
                format!(r#"{{"op":"upsert","clientId":{},"v":{i}}}"#, i % 3 + 1).into();
            outbox.push_change(slot, ClientId(i % 3 + 1), &fragment);
        }
        let out = drain(&outbox, 0);
        assert_eq!(out.frames.len(), 1);
        assert_eq!(out.changes, 3);
        let frame: serde_json::Value = serde_json::from_str(&out.frames[0]).unwrap();
        let mut versions: Vec<u64> = frame["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["v"].as_u64().unwrap())
            .collect();
        versions.sort_unstable();
        assert_eq!(versions, vec![997, 998, 999]);
        assert!(drain(&outbox, 0).frames.is_empty());
    }

    #[test]
    fn snapshot_supersedes_pending_changes_and_comes_first() {
        let outbox = Outbox::new();
        let slot = outbox.open_slot("r".into());
        outbox.push_change(
            slot,
            ClientId(1),
            &Arc::from(r#"{"op":"leave","clientId":1}"#),
        );
        outbox.push_snapshot(slot, "SNAPSHOT".into());
        outbox.push_change(
            slot,
            ClientId(2),
            &Arc::from(r#"{"op":"leave","clientId":2}"#),
        );
        outbox.push_control("CONTROL".into());
        let out = drain(&outbox, 0);
        assert_eq!(out.frames.len(), 3);
        assert_eq!(out.frames[0], "SNAPSHOT");
        assert!(out.frames[1].contains(r#""clientId":2"#));
        assert!(!out.frames[1].contains(r#""clientId":1"#));
        assert_eq!(out.frames[2], "CONTROL");
    }

    #[test]
    fn closed_slots_drop_their_changes() {
        let outbox = Outbox::new();
        let slot = outbox.open_slot("r".into());
        outbox.push_change(slot, ClientId(1), &Arc::from("{}"));
        outbox.close_slot(slot);
        assert!(drain(&outbox, 0).frames.is_empty());
        let again = outbox.open_slot("s".into());
        assert_eq!(again, slot, "slots are reused");
    }

    #[test]
    fn acks_wait_for_durability_or_time_out() {
        let outbox = Outbox::new();
        let soon = Instant::now() + Duration::from_secs(3600);
        outbox.push_ack_when_durable(Ticket(5), soon, 1, "ACK5".into());
        outbox.push_ack_when_durable(Ticket(9), soon, 2, "ACK9".into());
        assert!(drain(&outbox, 4).frames.is_empty());
        assert_eq!(drain(&outbox, 5).frames, vec!["ACK5".to_string()]);
        assert!(outbox.awaits_durability());
        let mut out = Drained::default();
        outbox.drain(Ticket(5), UnixMs(1), soon, &mut out);
        assert_eq!(out.frames.len(), 1);
        assert!(out.frames[0].contains("storage_unavailable"));
        assert!(out.frames[0].contains(r#""ref":2"#));
        assert!(!outbox.awaits_durability());
    }
}
