//! Fan-out: each room's changes in one shared feed, each subscriber's outbox reading it.
//!
//! A change is serialized once (an `Arc<str>` fragment) and appended to its room's
//! [`Feed`]; subscribers are only flagged, never copied into. A subscriber's writer,
//! when its socket can take more, reads its rooms' feeds from where it left off and
//! writes everything new as one `changes` frame per room. So a change costs O(1) plus
//! one flag per subscriber, and a frame carries as many changes as piled up while the
//! socket was busy.
//!
//! Conflation: a frame never carries more than the latest change per client when a
//! subscriber is behind by more than a few changes, and a feed keeps only a bounded
//! window. A subscriber that falls out of the window is sent the room's current state
//! instead (a snapshot). A slow reader therefore costs memory bounded by its rooms'
//! size, never by the event rate, and always converges to the exact state.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Instant;

use hashbrown::HashSet;
use rollcall_engine::{ClientId, Ticket, UnixMs};
use tokio::sync::Notify;

use crate::protocol::{self, ErrorCode, Rejection};

/// The index of a subscription in one outbox.
pub type Slot = u32;

/// Control messages (acks, errors, pongs) a client may leave unread before its reader
/// is paused: backpressure for clients that write but do not read.
pub const CONTROL_CAPACITY: usize = 1_024;

/// Past this many unread changes a frame keeps only the latest per client.
const CONFLATE_AFTER: u64 = 64;
/// A feed drops what every subscriber has read once it holds this many changes.
const TRIM_AFTER: usize = 32;
/// A feed holds at most twice its room's entries (within these bounds): a subscriber
/// further behind gets a snapshot instead, so what a slow reader holds up is bounded
/// by the room's size, never by the event rate.
const MIN_WINDOW: usize = 32;
const MAX_WINDOW: usize = 4_096;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct FeedLog {
    /// Sequence number of `changes[0]`.
    base: u64,
    changes: VecDeque<(ClientId, Arc<str>)>,
}

impl FeedLog {
    fn head(&self) -> u64 {
        self.base + self.changes.len() as u64
    }
}

/// A room's recent changes, shared by all its subscribers.
#[derive(Debug, Default)]
pub struct Feed {
    log: Mutex<FeedLog>,
}

impl Feed {
    /// An empty feed.
    pub fn new() -> Arc<Feed> {
        Arc::new(Feed::default())
    }

    /// Sequence number the next change will get.
    pub fn head(&self) -> u64 {
        lock(&self.log).head()
    }

    /// Appends a change and wakes the subscribers that were idle. `room_len` is the
    /// room's number of entries, which sizes the window.
    pub fn publish(
        &self,
        client: ClientId,
        fragment: Arc<str>,
        subscribers: &[Arc<Subscription>],
        room_len: usize,
    ) {
        {
            let mut log = lock(&self.log);
            log.changes.push_back((client, fragment));
            let window = (2 * room_len).clamp(MIN_WINDOW, MAX_WINDOW);
            if log.changes.len() > TRIM_AFTER.min(window) {
                // Drop what everyone has read; past the window, drop regardless.
                let read_by_all = subscribers
                    .iter()
                    .map(|s| s.cursor.load(Ordering::Acquire))
                    .min()
                    .unwrap_or_else(|| log.head());
                let keep_from = read_by_all.max(log.head().saturating_sub(window as u64));
                let drop = keep_from
                    .saturating_sub(log.base)
                    .min(log.changes.len() as u64);
                log.changes.drain(..drop as usize);
                log.base += drop;
            }
        }
        for subscription in subscribers {
            subscription.wake();
        }
    }
}

/// One outbox's subscription to one room.
#[derive(Debug)]
pub struct Subscription {
    /// The room.
    pub room: Arc<str>,
    feed: Arc<Feed>,
    outbox: Weak<Outbox>,
    slot: Slot,
    /// Set by publishers, cleared by the writer before it reads the feed: a change
    /// published after the read sets it again, so none is missed.
    dirty: AtomicBool,
    /// Sequence number of the next change to send.
    cursor: AtomicU64,
    snapshot: Mutex<Option<String>>,
}

impl Subscription {
    fn wake(&self) {
        if !self.dirty.swap(true, Ordering::AcqRel) {
            if let Some(outbox) = self.outbox.upgrade() {
                outbox.mark_dirty(self.slot);
            }
        }
    }

    /// Queues the room's full state, taken when the feed's head was `head`; changes
    /// from `head` on follow it. Call with the hub locked, so nothing is published
    /// between the snapshot and the head.
    pub fn reset(&self, snapshot: String, head: u64) {
        *lock(&self.snapshot) = Some(snapshot);
        self.cursor.store(head, Ordering::Release);
        self.dirty.store(false, Ordering::Release);
        self.wake();
    }

    /// The feed this subscription reads.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }
}

#[derive(Debug)]
struct PendingAck {
    ticket: Ticket,
    deadline: Instant,
    reference: u64,
    message: String,
    /// Whether the ack claims a write is durable; one that does not (it only waits
    /// its turn behind earlier acks) is sent as is when the deadline passes.
    claims_write: bool,
}

#[derive(Debug, Default)]
struct State {
    subscriptions: Vec<Option<Arc<Subscription>>>,
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
    /// Subscriptions that fell out of their feed's window: send them a snapshot.
    pub resync: Vec<Arc<Subscription>>,
    seen: HashSet<ClientId>,
    picked: Vec<Arc<str>>,
    dirty: Vec<Arc<Subscription>>,
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

    /// Creates a subscription to `room`'s `feed` (starting at its head).
    pub fn subscribe(self: &Arc<Self>, room: Arc<str>, feed: Arc<Feed>) -> Arc<Subscription> {
        let mut state = lock(&self.state);
        let slot = match state.free.pop() {
            Some(slot) => slot,
            None => {
                state.subscriptions.push(None);
                Slot::try_from(state.subscriptions.len() - 1)
                    .expect("rooms per connection are capped")
            }
        };
        let cursor = feed.head();
        let subscription = Arc::new(Subscription {
            room,
            feed,
            outbox: Arc::downgrade(self),
            slot,
            dirty: AtomicBool::new(false),
            cursor: AtomicU64::new(cursor),
            snapshot: Mutex::new(None),
        });
        state.subscriptions[slot as usize] = Some(subscription.clone());
        subscription
    }

    /// Drops a subscription and anything pending for it.
    pub fn unsubscribe(&self, subscription: &Subscription) {
        let mut state = lock(&self.state);
        let slot = subscription.slot;
        if let Some(held) = state.subscriptions.get_mut(slot as usize) {
            if held.take().is_some() {
                state.free.push(slot);
            }
        }
    }

    fn mark_dirty(&self, slot: Slot) {
        let mut state = lock(&self.state);
        let was_idle = state.dirty.is_empty();
        state.dirty.push(slot);
        drop(state);
        // Waking an already woken writer is wasted work under load: skip it.
        if was_idle {
            self.wake.notify_one();
        }
    }

    /// Queues a control message (ack, error, pong).
    pub fn push_control(&self, message: String) {
        lock(&self.state).control.push_back(message);
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
        lock(&self.state).acks.push_back(PendingAck {
            ticket,
            deadline,
            reference,
            message,
            claims_write: true,
        });
        self.wake.notify_one();
    }

    /// Queues the ack of a request that wrote nothing, in order: behind the acks still
    /// waiting for the disk, if any (an ack never passes an earlier one), else at once.
    pub fn push_ack_in_order(&self, reference: u64, message: String) {
        let mut state = lock(&self.state);
        match state.acks.back() {
            Some(last) => {
                let (ticket, deadline) = (last.ticket, last.deadline);
                state.acks.push_back(PendingAck {
                    ticket,
                    deadline,
                    reference,
                    message,
                    claims_write: false,
                });
            }
            None => state.control.push_back(message),
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Control messages and acks waiting to be written.
    pub fn backlog(&self) -> usize {
        let state = lock(&self.state);
        state.control.len() + state.acks.len()
    }

    /// The earliest deadline of an ack still waiting for the disk.
    pub fn next_ack_deadline(&self) -> Option<Instant> {
        lock(&self.state).acks.front().map(|ack| ack.deadline)
    }

    /// Whether acks are waiting for the durable watermark.
    pub fn awaits_durability(&self) -> bool {
        !lock(&self.state).acks.is_empty()
    }

    /// Takes everything sendable: for each room with news, its snapshot and/or one
    /// `changes` frame; then control messages; then acks that are durable (or timed
    /// out).
    pub fn drain(&self, durable: Ticket, now: UnixMs, at: Instant, out: &mut Drained) {
        let had_backlog = {
            let mut state = lock(&self.state);
            let State {
                subscriptions,
                dirty,
                control,
                acks,
                ..
            } = &mut *state;
            out.dirty.extend(
                dirty
                    .drain(..)
                    .filter_map(|slot| subscriptions.get(slot as usize).cloned().flatten()),
            );
            let had_backlog = !control.is_empty() || !acks.is_empty();
            out.frames.extend(control.drain(..));
            had_backlog
        };
        let control_frames = out.frames.len();
        let mut dirty = std::mem::take(&mut out.dirty);
        for subscription in dirty.drain(..) {
            // Clear first: a change published after the read below sets it again.
            subscription.dirty.store(false, Ordering::Release);
            if let Some(snapshot) = lock(&subscription.snapshot).take() {
                out.frames.push(snapshot);
            }
            Self::read_feed(&subscription, now, out);
        }
        out.dirty = dirty;
        // Control messages queued before the drain go after the room frames, so a
        // subscribe's ack follows its snapshot.
        out.frames.rotate_left(control_frames);
        let mut state = lock(&self.state);
        while let Some(ack) = state.acks.front() {
            if ack.ticket <= durable {
                let ack = state.acks.pop_front().expect("front exists");
                out.frames.push(ack.message);
            } else if ack.deadline <= at {
                let ack = state.acks.pop_front().expect("front exists");
                if !ack.claims_write {
                    out.frames.push(ack.message);
                    continue;
                }
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

    /// Appends one `changes` frame with what `subscription` has not seen yet.
    fn read_feed(subscription: &Arc<Subscription>, now: UnixMs, out: &mut Drained) {
        let log = lock(&subscription.feed.log);
        let cursor = subscription.cursor.load(Ordering::Acquire);
        let head = log.head();
        if cursor < log.base {
            // Fell out of the window: the current state replaces what was missed.
            out.resync.push(subscription.clone());
            return;
        }
        if cursor >= head {
            return;
        }
        let unread = log.changes.range((cursor - log.base) as usize..);
        let mut frame = String::new();
        protocol::changes_prefix(&mut frame, &subscription.room, now);
        if head - cursor > CONFLATE_AFTER {
            // Conflate: the latest change per client, newest first.
            out.seen.clear();
            out.picked.clear();
            for (client, fragment) in unread.rev() {
                if out.seen.insert(*client) {
                    out.picked.push(fragment.clone());
                }
            }
            for (i, fragment) in out.picked.drain(..).rev().enumerate() {
                if i > 0 {
                    frame.push(',');
                }
                frame.push_str(&fragment);
                out.changes += 1;
            }
        } else {
            for (i, (_, fragment)) in unread.enumerate() {
                if i > 0 {
                    frame.push(',');
                }
                frame.push_str(fragment);
                out.changes += 1;
            }
        }
        drop(log);
        frame.push_str(protocol::CHANGES_SUFFIX);
        out.frames.push(frame);
        subscription.cursor.store(head, Ordering::Release);
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

    fn fragment(client: u64, version: u64) -> Arc<str> {
        format!(r#"{{"op":"upsert","clientId":{client},"v":{version}}}"#).into()
    }

    fn versions(frame: &str) -> Vec<(u64, u64)> {
        let value: serde_json::Value = serde_json::from_str(frame).unwrap();
        let mut out: Vec<(u64, u64)> = value["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["clientId"].as_u64().unwrap(), c["v"].as_u64().unwrap()))
            .collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn a_few_changes_go_out_in_order_as_one_frame() {
        let outbox = Arc::new(Outbox::new());
        let feed = Feed::new();
        let sub = outbox.subscribe("r".into(), feed.clone());
        let subs = vec![sub.clone()];
        for v in 0..5 {
            feed.publish(ClientId(1), fragment(1, v), &subs, 1);
        }
        let out = drain(&outbox, 0);
        assert_eq!(out.frames.len(), 1);
        assert_eq!(out.changes, 5);
        assert_eq!(
            versions(&out.frames[0]),
            (0..5).map(|v| (1, v)).collect::<Vec<_>>()
        );
        assert!(drain(&outbox, 0).frames.is_empty(), "nothing new");
    }

    #[test]
    fn a_lagging_reader_gets_the_latest_change_per_client() {
        let outbox = Arc::new(Outbox::new());
        let feed = Feed::new();
        let sub = outbox.subscribe("r".into(), feed.clone());
        let subs = vec![sub];
        for v in 0..1_000 {
            feed.publish(ClientId(v % 3 + 1), fragment(v % 3 + 1, v), &subs, 3_000);
        }
        let out = drain(&outbox, 0);
        assert_eq!(out.frames.len(), 1);
        assert_eq!(out.changes, 3);
        assert_eq!(versions(&out.frames[0]), vec![(1, 999), (2, 997), (3, 998)]);
    }

    #[test]
    fn a_reader_out_of_the_window_is_resynced() {
        let outbox = Arc::new(Outbox::new());
        let feed = Feed::new();
        let sub = outbox.subscribe("r".into(), feed.clone());
        let subs = vec![sub.clone()];
        for v in 0..(MAX_WINDOW as u64 + 10) {
            feed.publish(ClientId(1), fragment(1, v), &subs, 10_000);
        }
        let out = drain(&outbox, 0);
        assert!(out.frames.is_empty());
        assert_eq!(out.resync.len(), 1);
        // Memory is bounded by the window, whatever the rate.
        assert!(lock(&feed.log).changes.len() <= MAX_WINDOW);
        // A small room keeps a small window.
        let small = Feed::new();
        let lagging = outbox.subscribe("s".into(), small.clone());
        for v in 0..1_000 {
            small.publish(
                ClientId(1),
                fragment(1, v),
                std::slice::from_ref(&lagging),
                3,
            );
        }
        assert!(lock(&small.log).changes.len() <= MIN_WINDOW);
        sub.reset("SNAPSHOT".into(), feed.head());
        let out = drain(&outbox, 0);
        assert_eq!(out.frames, vec!["SNAPSHOT".to_string()]);
    }

    #[test]
    fn feeds_drop_what_everyone_has_read() {
        let a = Arc::new(Outbox::new());
        let b = Arc::new(Outbox::new());
        let feed = Feed::new();
        let subs = vec![
            a.subscribe("r".into(), feed.clone()),
            b.subscribe("r".into(), feed.clone()),
        ];
        for v in 0..100 {
            feed.publish(ClientId(1), fragment(1, v), &subs, 1);
            drain(&a, 0);
            drain(&b, 0);
        }
        assert!(lock(&feed.log).changes.len() <= TRIM_AFTER + 1);
    }

    #[test]
    fn snapshot_comes_before_later_changes_and_control_after_rooms() {
        let outbox = Arc::new(Outbox::new());
        let feed = Feed::new();
        let sub = outbox.subscribe("r".into(), feed.clone());
        let subs = vec![sub.clone()];
        feed.publish(ClientId(1), fragment(1, 0), &subs, 2);
        sub.reset("SNAPSHOT".into(), feed.head());
        outbox.push_control("ACK".into());
        feed.publish(ClientId(2), fragment(2, 1), &subs, 2);
        let out = drain(&outbox, 0);
        assert_eq!(out.frames.len(), 3, "{:?}", out.frames);
        assert_eq!(out.frames[0], "SNAPSHOT");
        assert_eq!(versions(&out.frames[1]), vec![(2, 1)]);
        assert_eq!(out.frames[2], "ACK");
    }

    #[test]
    fn unsubscribed_rooms_stop() {
        let outbox = Arc::new(Outbox::new());
        let feed = Feed::new();
        let sub = outbox.subscribe("r".into(), feed.clone());
        feed.publish(ClientId(1), fragment(1, 0), std::slice::from_ref(&sub), 1);
        outbox.unsubscribe(&sub);
        assert!(drain(&outbox, 0).frames.is_empty());
        let again = outbox.subscribe("s".into(), feed);
        assert_eq!(again.slot, sub.slot, "slots are reused");
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

    #[test]
    fn acks_without_a_write_wait_their_turn() {
        let outbox = Outbox::new();
        // Nothing pending: at once.
        outbox.push_ack_in_order(1, "ACK1".into());
        assert_eq!(drain(&outbox, 0).frames, vec!["ACK1".to_string()]);
        let soon = Instant::now() + Duration::from_secs(3600);
        outbox.push_ack_when_durable(Ticket(5), soon, 2, "ACK2".into());
        outbox.push_ack_in_order(3, "ACK3".into());
        outbox.push_control("PONG".into());
        assert_eq!(drain(&outbox, 4).frames, vec!["PONG".to_string()]);
        assert_eq!(
            drain(&outbox, 5).frames,
            vec!["ACK2".to_string(), "ACK3".to_string()]
        );
        // Past the deadline the write's ack becomes an error, the other is sent as is.
        outbox.push_ack_when_durable(Ticket(9), soon, 4, "ACK4".into());
        outbox.push_ack_in_order(5, "ACK5".into());
        let mut out = Drained::default();
        outbox.drain(Ticket(5), UnixMs(1), soon, &mut out);
        assert!(out.frames[0].contains("storage_unavailable"));
        assert_eq!(out.frames[1], "ACK5");
    }
}
