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
//!
//! Pacing: a subscription may ask for a slower rate (`intervalMs` in `subscribe`). It is
//! then read at most once per interval, and always conflated: it receives the latest
//! state per client at that rate. Subscribers that read the same span of a feed share
//! one serialized frame instead of each building its own.
//!
//! Occupancy: a subscription in `occupancy` mode (a "watcher") never reads the feed's
//! changes: it is woken only by changes that add or remove an entry, read at most once
//! a second (the same pacing), and then sends the room's counts of entries and users
//! (from `listing::RoomCounts`, O(1)) if they differ from the last it sent. A heartbeat
//! that refreshes an entry costs watchers nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use hashbrown::HashSet;
use rollcall_engine::{Change, ClientId, Ticket, UnixMs};
use tokio::sync::Notify;
use tungstenite::Utf8Bytes;

use crate::listing::RoomCounts;
use crate::protocol::{self, ErrorCode, Rejection};

/// Occupancy subscriptions are read at most this often.
pub const OCCUPANCY_INTERVAL: Duration = Duration::from_secs(1);

/// The index of a subscription in one outbox.
pub(crate) type Slot = u32;

/// A text frame ready to write. Cloning it is a reference-count increment, so one
/// `changes` frame can be shared by every subscriber in step with its feed.
pub(crate) type Frame = Utf8Bytes;

/// Control messages (acks, errors, pongs) a client may leave unread before its reader
/// is paused: backpressure for clients that write but do not read.
pub const CONTROL_CAPACITY: usize = 1_024;

/// Past this many unread changes a frame keeps only the latest per client.
const CONFLATE_AFTER: u64 = 64;
/// A feed drops what every subscriber has read once it holds this many changes. Small:
/// what a quiet room's feed keeps is memory every idle connection pays for (a change
/// and its serialized form, ≈ 0.4 KiB), and finding what all have read is one atomic
/// load per subscriber.
const TRIM_AFTER: usize = 4;
/// A feed holds at most [`WINDOW_PER_ENTRY`] changes per entry of its room (within
/// these bounds): a subscriber further behind gets a snapshot instead, so what a slow
/// reader holds up is bounded by the room's size, never by the event rate.
const MIN_WINDOW: usize = 32;
const MAX_WINDOW: usize = 4_096;
/// Eight heartbeats per entry: a subscriber a few pacing rounds behind a busy room reads
/// a conflated frame of fragments already serialized, where a snapshot would be built
/// under the shard's lock. At 2 per entry the 2,000-client storm resynced ~5,000
/// subscribers a second; at 8, a few hundred.
const WINDOW_PER_ENTRY: usize = 8;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A change published on a feed. It is serialized once, by whoever needs it first:
/// the publisher right after it releases its room's shard lock, or a reader.
#[derive(Debug)]
pub(crate) struct Published {
    client: ClientId,
    change: Option<Change>,
    fragment: OnceLock<Arc<str>>,
}

impl Published {
    /// A change to serialize when first needed.
    pub(crate) fn new(change: Change) -> Arc<Published> {
        Arc::new(Published {
            client: change.entry.client,
            change: Some(change),
            fragment: OnceLock::new(),
        })
    }

    /// An already serialized change of `client`.
    #[cfg(test)]
    fn serialized(client: ClientId, fragment: Arc<str>) -> Arc<Published> {
        Arc::new(Published {
            client,
            change: None,
            fragment: OnceLock::from(fragment),
        })
    }

    /// The change's `changes` entry (JSON), serialized on first use.
    /// Whether the change adds or removes an entry (so moves the room's counts).
    pub(crate) fn moves_counts(&self) -> bool {
        self.change
            .as_ref()
            .is_some_and(|c| c.kind != rollcall_engine::ChangeKind::Update)
    }

    pub(crate) fn fragment(&self) -> &Arc<str> {
        self.fragment.get_or_init(|| match &self.change {
            Some(change) => protocol::change_fragment(change).into(),
            None => Arc::from("null"),
        })
    }
}

#[derive(Debug, Default)]
struct FeedLog {
    /// Sequence number of `changes[0]`.
    base: u64,
    changes: VecDeque<Arc<Published>>,
    /// The last `changes` frame built from this feed, for the next reader of the same
    /// span.
    shared: Option<SharedFrame>,
}

/// A `changes` frame of the feed's span `from..to`, conflated or not.
#[derive(Debug)]
struct SharedFrame {
    from: u64,
    to: u64,
    conflated: bool,
    frame: Frame,
    changes: usize,
}

impl FeedLog {
    fn head(&self) -> u64 {
        self.base + self.changes.len() as u64
    }
}

/// A room's recent changes and its subscribers, shared by all of them. Its locks are
/// the room's own: publishing and waking in one room never waits for another room.
#[derive(Debug, Default)]
pub struct Feed {
    log: Mutex<FeedLog>,
    subscribers: Mutex<Vec<Arc<Subscription>>>,
    /// Occupancy subscriptions: they never read the log.
    watchers: Mutex<Vec<Arc<Subscription>>>,
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

    /// Stops `subscription` reading this feed; returns how many still do.
    pub(crate) fn remove(&self, subscription: &Arc<Subscription>) -> usize {
        let mut watchers = lock(&self.watchers);
        watchers.retain(|s| !Arc::ptr_eq(s, subscription));
        let mut subscribers = lock(&self.subscribers);
        subscribers.retain(|s| !Arc::ptr_eq(s, subscription));
        subscribers.len() + watchers.len()
    }

    /// Appends a change (O(1), no serialization: call under the room's shard lock, so
    /// the feed's order is the fold's). `room_len` is the room's number of entries, which
    /// sizes the window. Subscribers are woken by [`Feed::wake`], after the lock.
    pub(crate) fn publish(&self, published: Arc<Published>, room_len: usize) {
        let mut log = lock(&self.log);
        log.changes.push_back(published);
        let window = (WINDOW_PER_ENTRY * room_len).clamp(MIN_WINDOW, MAX_WINDOW);
        if log.changes.len() > TRIM_AFTER.min(window) {
            // Drop what everyone has read; past the window, drop regardless.
            let read_by_all = lock(&self.subscribers)
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

    /// Queues `message` (a broadcast) for every subscriber but the one of `except`;
    /// a subscriber with a full backlog misses it. Returns (queued, missed).
    pub(crate) fn broadcast(&self, message: &str, except: &Outbox) -> (usize, usize) {
        let outboxes: Vec<Arc<Outbox>> = lock(&self.subscribers)
            .iter()
            .chain(lock(&self.watchers).iter())
            .filter_map(|s| s.outbox.upgrade())
            .filter(|outbox| !std::ptr::eq(Arc::as_ptr(outbox), except))
            .collect();
        let mut queued = 0;
        for outbox in &outboxes {
            if outbox.push_broadcast(message.to_owned()) {
                queued += 1;
            }
        }
        (queued, outboxes.len() - queued)
    }

    /// Wakes the subscribers that were idle, and the watchers too if the change moved
    /// the room's counts; returns how many were woken.
    pub(crate) fn wake(&self, counts_moved: bool) -> usize {
        let subscribers = lock(&self.subscribers);
        for subscription in subscribers.iter() {
            subscription.wake();
        }
        let mut woken = subscribers.len();
        drop(subscribers);
        if counts_moved {
            let watchers = lock(&self.watchers);
            for subscription in watchers.iter() {
                subscription.wake();
            }
            woken += watchers.len();
        }
        woken
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
    /// Paced subscriptions: the shortest time between two reads of the feed (zero:
    /// read whenever the writer drains).
    interval: Duration,
    /// Paced subscriptions: when the feed may be read next.
    next_read: Mutex<Option<Instant>>,
    /// Occupancy subscriptions: where the counts are, and the last sent.
    occupancy: Option<Occupancy>,
}

/// An occupancy subscription's state.
#[derive(Debug)]
struct Occupancy {
    counts: Arc<RoomCounts>,
    last: Mutex<Option<(usize, usize)>>,
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
    /// from `head` on follow it. Call under the room's shard lock, so nothing is published
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

    /// The pacing interval asked for in `subscribe` (zero: none).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Whether this is an occupancy subscription.
    pub fn is_occupancy(&self) -> bool {
        self.occupancy.is_some()
    }

    /// Whether the feed may be read at `at`; a paced subscription that may not gives
    /// the instant it may.
    fn due(&self, at: Instant) -> Result<(), Instant> {
        if self.interval.is_zero() {
            return Ok(());
        }
        match *lock(&self.next_read) {
            Some(next) if next > at => Err(next),
            _ => Ok(()),
        }
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
    /// Paced subscriptions with news that are not due yet, and the earliest instant
    /// one is.
    deferred: Vec<Arc<Subscription>>,
    next_due: Option<Instant>,
    control: VecDeque<String>,
    acks: VecDeque<PendingAck>,
    /// A reply (pong, error) is queued: write without waiting for the pacer.
    urgent: bool,
    /// While a [`Hold`] is alive, wake-ups wait for it to end.
    held: usize,
    wake_owed: bool,
}

/// What a subscriber's writer has to send.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    wake: Notify,
}

/// Frames drained from an outbox, ready to write.
#[derive(Debug, Default)]
pub struct Drained {
    /// Text frames in the order to send them.
    pub frames: Vec<Frame>,
    /// Changes in those frames.
    pub changes: usize,
    /// Subscriptions that fell out of their feed's window: send them a snapshot.
    pub resync: Vec<Arc<Subscription>>,
    seen: HashSet<ClientId>,
    picked: Vec<Arc<str>>,
    dirty: Vec<Arc<Subscription>>,
}

/// Frames (and subscriptions) a [`Drained`] keeps room for between drains.
const DRAINED_KEEP: usize = 16;

impl Drained {
    /// Frees the buffers a burst grew, so that an idle connection does not keep them.
    pub fn release_if_large(&mut self) {
        if self.frames.capacity() > DRAINED_KEEP {
            self.frames = Vec::new();
        }
        if self.dirty.capacity() > DRAINED_KEEP {
            self.dirty = Vec::new();
        }
        if self.picked.capacity() > 4 * DRAINED_KEEP {
            self.picked = Vec::new();
        }
        if self.seen.capacity() > 4 * DRAINED_KEEP {
            self.seen = HashSet::new();
        }
    }
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
        }
    }

    /// Resolves when something was queued since the last drain.
    pub async fn ready(&self) {
        self.wake.notified().await;
    }

    /// Creates a subscription to `room`'s `feed` (starting at its head), read at most
    /// once per `interval` (zero: whenever the writer drains). With `occupancy` it
    /// sends `counts`' numbers for the room instead, at most once per
    /// [`OCCUPANCY_INTERVAL`] (or `interval` if longer).
    pub fn subscribe(
        self: &Arc<Self>,
        room: Arc<str>,
        feed: Arc<Feed>,
        interval: Duration,
        occupancy: Option<Arc<RoomCounts>>,
    ) -> Arc<Subscription> {
        let interval = if occupancy.is_some() {
            interval.max(OCCUPANCY_INTERVAL)
        } else {
            interval
        };
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
            interval,
            next_read: Mutex::new(None),
            occupancy: occupancy.map(|counts| Occupancy {
                counts,
                last: Mutex::new(None),
            }),
        });
        state.subscriptions[slot as usize] = Some(subscription.clone());
        drop(state);
        if subscription.occupancy.is_some() {
            lock(&subscription.feed.watchers).push(subscription.clone());
        } else {
            lock(&subscription.feed.subscribers).push(subscription.clone());
        }
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
        // Waking an already woken writer is wasted work under load: skip it.
        if was_idle {
            self.wake_locked(state);
        }
    }

    /// Wakes the writer, or leaves the wake-up to the [`Hold`] in force.
    fn wake_locked(&self, mut state: MutexGuard<'_, State>) {
        if state.held > 0 {
            state.wake_owed = true;
            return;
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Holds the writer's wake-ups until the guard drops: what is queued meanwhile (a
    /// heartbeat's own change and its ack) goes out in one write.
    pub fn hold(&self) -> Hold<'_> {
        lock(&self.state).held += 1;
        Hold { outbox: self }
    }

    /// Queues a control message (an ack); it goes out with the next paced write.
    pub fn push_control(&self, message: String) {
        let mut state = lock(&self.state);
        state.control.push_back(message);
        self.wake_locked(state);
    }

    /// Queues a broadcast like a control message, unless this outbox already holds
    /// [`CONTROL_CAPACITY`] unsent messages (its client is not reading): then it is
    /// dropped, and false returned. Broadcasts are ephemeral; memory stays bounded.
    pub fn push_broadcast(&self, message: String) -> bool {
        let mut state = lock(&self.state);
        if state.control.len() + state.acks.len() >= CONTROL_CAPACITY {
            return false;
        }
        state.control.push_back(message);
        self.wake_locked(state);
        true
    }

    /// Queues the answer to a request that waits for it (a pong, an error): it goes out
    /// at once, not at the next paced write, with whatever else is queued.
    pub fn push_reply(&self, message: String) {
        let mut state = lock(&self.state);
        state.control.push_back(message);
        state.urgent = true;
        self.wake_locked(state);
    }

    /// Whether a reply is waiting that must not wait for the pacing interval.
    pub fn urgent(&self) -> bool {
        lock(&self.state).urgent
    }

    /// When a paced subscription with news is due next, if one is waiting.
    pub fn next_due(&self) -> Option<Instant> {
        lock(&self.state).next_due
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
        let mut state = lock(&self.state);
        state.acks.push_back(PendingAck {
            ticket,
            deadline,
            reference,
            message,
            claims_write: true,
        });
        self.wake_locked(state);
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
        self.wake_locked(state);
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

    /// Takes everything sendable at `at`: for each room with news, its snapshot and/or
    /// one `changes` frame (a paced subscription only once its interval has passed);
    /// then control messages; then acks that are durable (or timed out).
    pub fn drain(&self, durable: Ticket, now: UnixMs, at: Instant, out: &mut Drained) {
        let mut deferred = {
            let mut state = lock(&self.state);
            let State {
                subscriptions,
                dirty,
                deferred,
                next_due,
                control,
                urgent,
                ..
            } = &mut *state;
            out.dirty.extend(
                dirty
                    .drain(..)
                    .filter_map(|slot| subscriptions.get(slot as usize).cloned().flatten()),
            );
            if next_due.is_some_and(|due| due <= at) {
                *next_due = None;
                // Still subscribed (the slot holds this very subscription): read it.
                out.dirty.extend(deferred.drain(..).filter(|s| {
                    subscriptions
                        .get(s.slot as usize)
                        .and_then(Option::as_ref)
                        .is_some_and(|held| Arc::ptr_eq(held, s))
                }));
            }
            out.frames.extend(control.drain(..).map(Frame::from));
            *urgent = false;
            std::mem::take(deferred)
        };
        let control_frames = out.frames.len();
        let mut dirty = std::mem::take(&mut out.dirty);
        let mut next_due = None::<Instant>;
        for subscription in dirty.drain(..) {
            let snapshot = lock(&subscription.snapshot).take();
            if snapshot.is_none() {
                if let Err(due) = subscription.due(at) {
                    // Not yet: it stays dirty (publishers need not flag it again).
                    next_due = Some(next_due.map_or(due, |d| d.min(due)));
                    deferred.push(subscription);
                    continue;
                }
            }
            // Clear first: a change published after the read below sets it again.
            subscription.dirty.store(false, Ordering::Release);
            let mut sent = false;
            if let Some(occupancy) = &subscription.occupancy {
                // A snapshot asks for the counts now, changed or not.
                sent = Self::read_occupancy(&subscription, occupancy, snapshot.is_some(), now, out);
            } else {
                if let Some(snapshot) = snapshot {
                    out.frames.push(snapshot.into());
                    sent = true;
                }
                sent |= Self::read_feed(&subscription, now, out);
            }
            if sent && !subscription.interval.is_zero() {
                *lock(&subscription.next_read) = Some(at + subscription.interval);
            }
        }
        out.dirty = dirty;
        // Control messages queued before the drain go after the room frames, so a
        // subscribe's ack follows its snapshot.
        out.frames.rotate_left(control_frames);
        let mut state = lock(&self.state);
        if !deferred.is_empty() {
            state.deferred.append(&mut deferred);
            state.next_due = match (state.next_due, next_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        while let Some(ack) = state.acks.front() {
            if ack.ticket <= durable {
                let ack = state.acks.pop_front().expect("front exists");
                out.frames.push(ack.message.into());
            } else if ack.deadline <= at {
                let ack = state.acks.pop_front().expect("front exists");
                if !ack.claims_write {
                    out.frames.push(ack.message.into());
                    continue;
                }
                out.frames.push(
                    protocol::error(&Rejection {
                        code: ErrorCode::StorageUnavailable,
                        message: "the log could not make this write durable in time; it is \
                                  held in memory and will be written when the disk recovers"
                            .into(),
                        reference: Some(ack.reference),
                        room: None,
                    })
                    .into(),
                );
            } else {
                break;
            }
        }
        drop(state);
    }

    /// Appends an `occupancy` frame if the room's counts differ from the last sent (or
    /// `force`); returns whether it did.
    fn read_occupancy(
        subscription: &Subscription,
        occupancy: &Occupancy,
        force: bool,
        now: UnixMs,
        out: &mut Drained,
    ) -> bool {
        let counts = occupancy.counts.occupancy(&subscription.room);
        let mut last = lock(&occupancy.last);
        if !force && *last == Some(counts) {
            return false;
        }
        *last = Some(counts);
        drop(last);
        out.frames
            .push(protocol::occupancy(&subscription.room, now, counts.0, counts.1).into());
        true
    }

    /// Appends one `changes` frame with what `subscription` has not seen yet; returns
    /// whether there was anything. A frame of the same span as the last reader's is
    /// shared, not rebuilt.
    fn read_feed(subscription: &Arc<Subscription>, now: UnixMs, out: &mut Drained) -> bool {
        let mut log = lock(&subscription.feed.log);
        let cursor = subscription.cursor.load(Ordering::Acquire);
        let head = log.head();
        if cursor < log.base {
            // Fell out of the window: the current state replaces what was missed.
            out.resync.push(subscription.clone());
            return false;
        }
        if cursor >= head {
            return false;
        }
        // A paced subscription wants the latest state per client, never the steps.
        let conflated = head - cursor > CONFLATE_AFTER || !subscription.interval.is_zero();
        if let Some(shared) = log.shared.as_ref().filter(|shared| {
            shared.from == cursor && shared.to == head && shared.conflated == conflated
        }) {
            out.frames.push(shared.frame.clone());
            out.changes += shared.changes;
            subscription.cursor.store(head, Ordering::Release);
            return true;
        }
        let unread = log.changes.range((cursor - log.base) as usize..);
        let mut frame = String::new();
        protocol::changes_prefix(&mut frame, &subscription.room, now);
        let mut changes = 0;
        if conflated {
            // Conflate: the latest change per client, in the order of those changes.
            out.seen.clear();
            out.picked.clear();
            for published in unread.rev() {
                if out.seen.insert(published.client) {
                    out.picked.push(published.fragment().clone());
                }
            }
            for (i, fragment) in out.picked.drain(..).rev().enumerate() {
                if i > 0 {
                    frame.push(',');
                }
                frame.push_str(&fragment);
                changes += 1;
            }
        } else {
            for (i, published) in unread.enumerate() {
                if i > 0 {
                    frame.push(',');
                }
                frame.push_str(published.fragment());
                changes += 1;
            }
        }
        frame.push_str(protocol::CHANGES_SUFFIX);
        let frame = Frame::from(frame);
        log.shared = Some(SharedFrame {
            from: cursor,
            to: head,
            conflated,
            frame: frame.clone(),
            changes,
        });
        drop(log);
        out.frames.push(frame);
        out.changes += changes;
        subscription.cursor.store(head, Ordering::Release);
        true
    }
}

/// Paces one connection's writes, as a token bucket: a connection may write at once
/// while it has written less than one write per `interval` on average (with a burst
/// of [`PACER_BURST`] after a quiet spell); past that, each write waits for the next
/// token and carries everything that arrived meanwhile. So light traffic is never
/// delayed, and a busy connection gets one write per interval.
#[derive(Debug)]
pub(crate) struct Pacer {
    interval: Duration,
    /// Writes allowed now (up to the burst), as of `at`.
    tokens: f64,
    at: Option<Instant>,
}

/// Writes a connection may make at once after a quiet spell.
pub(crate) const PACER_BURST: f64 = 16.0;

impl Pacer {
    /// A pacer with this interval (zero: never waits).
    pub(crate) fn new(interval: Duration) -> Pacer {
        Pacer {
            interval,
            tokens: PACER_BURST,
            at: None,
        }
    }

    fn tokens(&self, now: Instant) -> f64 {
        match self.at {
            None => PACER_BURST,
            Some(at) => {
                let earned =
                    now.saturating_duration_since(at).as_secs_f64() / self.interval.as_secs_f64();
                (self.tokens + earned).min(PACER_BURST)
            }
        }
    }

    /// When the writer may write next, if not at `now`.
    pub(crate) fn wait_until(&self, now: Instant) -> Option<Instant> {
        if self.interval.is_zero() {
            return None;
        }
        let tokens = self.tokens(now);
        (tokens < 1.0).then(|| now + self.interval.mul_f64(1.0 - tokens))
    }

    /// A write went out at `at`.
    pub(crate) fn wrote(&mut self, at: Instant) {
        if self.interval.is_zero() {
            return;
        }
        self.tokens = (self.tokens(at) - 1.0).max(0.0);
        self.at = Some(at);
    }
}

/// Holds an outbox's wake-ups (see [`Outbox::hold`]).
#[derive(Debug)]
pub struct Hold<'a> {
    outbox: &'a Outbox,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.outbox.state);
        state.held -= 1;
        if state.held == 0 && std::mem::take(&mut state.wake_owed) {
            drop(state);
            self.outbox.wake.notify_one();
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

    fn publish(feed: &Feed, client: ClientId, fragment: Arc<str>, room_len: usize) {
        feed.publish(Published::serialized(client, fragment), room_len);
        feed.wake(true);
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
    fn an_idle_connection_keeps_no_burst_buffers() {
        let mut drained = Drained::default();
        drained
            .frames
            .extend((0..200).map(|_| Frame::from_static("x")));
        drained.seen.extend((0..500).map(ClientId));
        drained.frames.clear();
        drained.seen.clear();
        drained.release_if_large();
        assert_eq!(drained.frames.capacity(), 0);
        assert_eq!(drained.seen.capacity(), 0);
        // A small batch's room is kept: no allocation per write at light load.
        drained.frames.push(Frame::from_static("y"));
        drained.frames.clear();
        drained.release_if_large();
        assert!(drained.frames.capacity() > 0);
    }

    #[test]
    fn a_few_changes_go_out_in_order_as_one_frame() {
        let outbox = Arc::new(Outbox::new());
        let feed = Feed::new();
        let sub = outbox.subscribe("r".into(), feed.clone(), Duration::ZERO, None);
        let _subs = [sub.clone()];
        for v in 0..5 {
            publish(&feed, ClientId(1), fragment(1, v), 1);
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
        let sub = outbox.subscribe("r".into(), feed.clone(), Duration::ZERO, None);
        let _subs = [sub];
        for v in 0..1_000 {
            publish(&feed, ClientId(v % 3 + 1), fragment(v % 3 + 1, v), 3_000);
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
        let sub = outbox.subscribe("r".into(), feed.clone(), Duration::ZERO, None);
        let _subs = [sub.clone()];
        for v in 0..(MAX_WINDOW as u64 + 10) {
            publish(&feed, ClientId(1), fragment(1, v), 10_000);
        }
        let out = drain(&outbox, 0);
        assert!(out.frames.is_empty());
        assert_eq!(out.resync.len(), 1);
        // Memory is bounded by the window, whatever the rate.
        assert!(lock(&feed.log).changes.len() <= MAX_WINDOW);
        // A small room keeps a small window.
        let small = Feed::new();
        let _lagging = outbox.subscribe("s".into(), small.clone(), Duration::ZERO, None);
        for v in 0..1_000 {
            publish(&small, ClientId(1), fragment(1, v), 3);
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
        let _subs = [
            a.subscribe("r".into(), feed.clone(), Duration::ZERO, None),
            b.subscribe("r".into(), feed.clone(), Duration::ZERO, None),
        ];
        for v in 0..100 {
            publish(&feed, ClientId(1), fragment(1, v), 1);
            drain(&a, 0);
            drain(&b, 0);
        }
        assert!(lock(&feed.log).changes.len() <= TRIM_AFTER + 1);
    }

    #[test]
    fn snapshot_comes_before_later_changes_and_control_after_rooms() {
        let outbox = Arc::new(Outbox::new());
        let feed = Feed::new();
        let sub = outbox.subscribe("r".into(), feed.clone(), Duration::ZERO, None);
        let _subs = [sub.clone()];
        publish(&feed, ClientId(1), fragment(1, 0), 2);
        sub.reset("SNAPSHOT".into(), feed.head());
        outbox.push_control("ACK".into());
        publish(&feed, ClientId(2), fragment(2, 1), 2);
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
        let sub = outbox.subscribe("r".into(), feed.clone(), Duration::ZERO, None);
        publish(&feed, ClientId(1), fragment(1, 0), 1);
        outbox.unsubscribe(&sub);
        assert!(drain(&outbox, 0).frames.is_empty());
        let again = outbox.subscribe("s".into(), feed, Duration::ZERO, None);
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

    #[test]
    fn pacing_quiet_goes_at_once_busy_waits_for_the_interval() {
        let interval = Duration::from_millis(10);
        let mut pacer = Pacer::new(interval);
        let t0 = Instant::now();
        // After a quiet spell, a burst goes at once.
        for _ in 0..PACER_BURST as u32 {
            assert_eq!(pacer.wait_until(t0), None);
            pacer.wrote(t0);
        }
        // Then one write per interval.
        let busy = t0 + Duration::from_millis(3);
        assert_eq!(pacer.wait_until(busy), Some(t0 + interval));
        assert_eq!(pacer.wait_until(t0 + interval), None);
        pacer.wrote(t0 + interval);
        assert_eq!(pacer.wait_until(t0 + interval), Some(t0 + interval * 2));
        // Writing no faster than once per interval is never delayed.
        let mut steady = Pacer::new(interval);
        for i in 0..100 {
            let at = t0 + interval * i;
            assert_eq!(steady.wait_until(at), None, "write {i}");
            steady.wrote(at);
        }
        // After a quiet spell: at once again.
        assert_eq!(pacer.wait_until(t0 + Duration::from_secs(1)), None);
        // Zero never waits.
        let mut off = Pacer::new(Duration::ZERO);
        for _ in 0..10 {
            off.wrote(t0);
        }
        assert_eq!(off.wait_until(t0), None);
    }

    #[test]
    fn a_busy_connection_gets_one_write_per_interval() {
        // A writer that follows the pacer, fed a change every millisecond for 300 ms:
        // the burst goes at once, then one write per 10 ms carries the rest.
        let interval = Duration::from_millis(10);
        let mut pacer = Pacer::new(interval);
        let outbox = Arc::new(Outbox::new());
        let feed = Feed::new();
        let _sub = outbox.subscribe("r".into(), feed.clone(), Duration::ZERO, None);
        let t0 = Instant::now();
        let mut writes = Vec::new();
        let mut delivered = 0;
        for ms in 0..300u64 {
            let at = t0 + Duration::from_millis(ms);
            publish(&feed, ClientId(ms % 7), fragment(ms % 7, ms), 7);
            if pacer.wait_until(at).is_none() {
                let mut out = Drained::default();
                outbox.drain(Ticket(0), UnixMs(1), at, &mut out);
                assert_eq!(out.frames.len(), 1);
                delivered += out.changes;
                pacer.wrote(at);
                writes.push(ms);
            }
        }
        let burst = PACER_BURST as usize;
        assert_eq!(writes[..burst], (0..burst as u64).collect::<Vec<_>>());
        // Once the burst is spent: exactly one write per interval.
        let steady: Vec<u64> = writes.iter().copied().filter(|ms| *ms >= 200).collect();
        assert_eq!(steady.len(), 10, "{writes:?}");
        assert!(steady.windows(2).all(|w| w[1] - w[0] == 10), "{writes:?}");
        assert!(writes.len() < burst + 300 / 10 + 2, "{writes:?}");
        // Nothing lost: the last write carried everything up to its millisecond.
        assert_eq!(delivered as u64, writes.last().unwrap() + 1);
    }

    #[test]
    fn a_paced_subscription_sees_the_latest_state_once_per_interval() {
        let interval = Duration::from_millis(50);
        let outbox = Arc::new(Outbox::new());
        let feed = Feed::new();
        let paced = outbox.subscribe("r".into(), feed.clone(), interval, None);
        let _subs = [paced];
        let t0 = Instant::now();
        let read = |at: Instant| {
            let mut out = Drained::default();
            outbox.drain(Ticket(0), UnixMs(1), at, &mut out);
            out
        };
        publish(&feed, ClientId(1), fragment(1, 0), 2);
        let first = read(t0);
        assert_eq!(versions(&first.frames[0]), vec![(1, 0)], "quiet: at once");
        for v in 1..=20 {
            publish(&feed, ClientId(v % 2 + 1), fragment(v % 2 + 1, v), 2);
        }
        // Within the interval nothing is read, and the writer knows when to come back.
        assert!(read(t0 + Duration::from_millis(10)).frames.is_empty());
        assert_eq!(outbox.next_due(), Some(t0 + interval));
        let later = read(t0 + interval);
        assert_eq!(later.frames.len(), 1);
        assert_eq!(later.changes, 2, "one change per client: the latest");
        assert_eq!(versions(&later.frames[0]), vec![(1, 20), (2, 19)]);
        assert_eq!(outbox.next_due(), None);
        // Changes published while deferred are not lost when it is read.
        publish(&feed, ClientId(1), fragment(1, 21), 2);
        assert!(
            read(t0 + interval + Duration::from_millis(1))
                .frames
                .is_empty()
        );
        let last = read(t0 + interval * 2);
        assert_eq!(versions(&last.frames[0]), vec![(1, 21)]);
    }

    #[test]
    fn a_held_outbox_wakes_once_for_a_change_and_its_ack() {
        let outbox = Arc::new(Outbox::new());
        let feed = Feed::new();
        let _sub = outbox.subscribe("r".into(), feed.clone(), Duration::ZERO, None);
        let hold = outbox.hold();
        publish(&feed, ClientId(1), fragment(1, 0), 1);
        outbox.push_control("ACK".into());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // Held: the writer is not woken yet.
        let woken = runtime.block_on(async {
            tokio::time::timeout(Duration::ZERO, outbox.ready())
                .await
                .is_ok()
        });
        assert!(!woken);
        drop(hold);
        runtime.block_on(outbox.ready());
        let out = drain(&outbox, 0);
        assert_eq!(out.frames.len(), 2, "the change and the ack, one write");
        assert_eq!(versions(&out.frames[0]), vec![(1, 0)]);
        assert_eq!(out.frames[1], "ACK");
    }

    #[test]
    fn subscribers_in_step_share_one_frame() {
        let feed = Feed::new();
        let outboxes: Vec<Arc<Outbox>> = (0..3).map(|_| Arc::new(Outbox::new())).collect();
        let _subs: Vec<Arc<Subscription>> = outboxes
            .iter()
            .map(|o| o.subscribe("r".into(), feed.clone(), Duration::ZERO, None))
            .collect();
        publish(&feed, ClientId(1), fragment(1, 0), 2);
        publish(&feed, ClientId(2), fragment(2, 1), 2);
        let frames: Vec<Frame> = outboxes
            .iter()
            .map(|o| drain(o, 0).frames.remove(0))
            .collect();
        assert_eq!(versions(&frames[0]), vec![(1, 0), (2, 1)]);
        for frame in &frames[1..] {
            assert_eq!(
                frame.as_str().as_ptr(),
                frames[0].as_str().as_ptr(),
                "shared"
            );
        }
        // One reader further along gets its own frame, with only what it has not seen.
        publish(&feed, ClientId(1), fragment(1, 2), 2);
        let ahead = drain(&outboxes[0], 0).frames.remove(0);
        assert_eq!(versions(&ahead), vec![(1, 2)]);
    }
}
