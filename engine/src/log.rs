//! The append path: a dedicated writer thread with group commit.
//!
//! Callers push events onto a queue and get a [`Ticket`] back at once. The writer
//! thread takes everything queued, coalesces events for the same (room, client) to the
//! last one, writes the group as one sled batch (together with deletions of records
//! that compaction retired) and, in `flush` mode, flushes once for the whole group.
//! Then it hands the flushed tip to the marker thread, which records it in the
//! durability marker (see [`crate::marker`]) and advances the durable watermark, which
//! callers can poll, wait on, or be called back about; nothing here blocks an async
//! runtime. The marker's small fdatasync thus overlaps the writer's next group instead
//! of delaying it.
//!
//! This module holds the handle callers use (the queue, tickets, the durable
//! watermark); `writer` holds the writer thread and the marker thread's loop.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::compaction::{Index, Key};
use crate::config::{Clock, Durability, DurableHook, Layout};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::store::Store;
use crate::types::{Seq, Ticket};

mod writer;

use writer::{Writer, mark_durable};

/// How often an idle writer wakes up to look for compaction work.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// Longest pause between retries while the disk refuses writes.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Oldest records rewritten per round at most, so compaction never stalls appends.
const COMPACTION_RECORDS_PER_ROUND: usize = 16;

/// Counters describing the log, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Bytes of all records in the log.
    pub total_bytes: u64,
    /// Bytes of events that keep a live entry.
    pub live_bytes: u64,
    /// Records in the log.
    pub records: u64,
    /// Batches written.
    pub groups: u64,
    /// Events written (after coalescing).
    pub events: u64,
    /// Events dropped because a later event for the same key was in the same group.
    pub coalesced: u64,
    /// Live events that compaction copied forward.
    pub copied: u64,
    /// Records deleted.
    pub deleted: u64,
    /// Writes or flushes that failed (retried).
    pub errors: u64,
}

#[derive(Debug, Default)]
struct AtomicStats {
    total_bytes: AtomicU64,
    live_bytes: AtomicU64,
    records: AtomicU64,
    groups: AtomicU64,
    events: AtomicU64,
    coalesced: AtomicU64,
    copied: AtomicU64,
    deleted: AtomicU64,
    errors: AtomicU64,
}

impl AtomicStats {
    fn snapshot(&self) -> LogStats {
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
        LogStats {
            total_bytes: get(&self.total_bytes),
            live_bytes: get(&self.live_bytes),
            records: get(&self.records),
            groups: get(&self.groups),
            events: get(&self.events),
            coalesced: get(&self.coalesced),
            copied: get(&self.copied),
            deleted: get(&self.deleted),
            errors: get(&self.errors),
        }
    }
}

enum Op {
    Append(Ticket, Event),
    Expired(Key),
}

#[derive(Default)]
struct Queue {
    ops: Vec<Op>,
    writer_waiting: bool,
    sync_wanted: bool,
    closing: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// The ticket of the latest append (written under `queue`'s lock).
    last_ticket: AtomicU64,
    wake: Condvar,
    durable: AtomicU64,
    durable_lock: Mutex<()>,
    durable_changed: Condvar,
    durable_waiters: AtomicU64,
    on_durable: Option<DurableHook>,
    failing: AtomicBool,
    stats: AtomicStats,
    /// Milliseconds since `origin` at which the writer entered its current sled call
    /// (0 when it is not in one): a stalled disk or a sled deadlock shows here.
    busy_since: AtomicU64,
    origin: Instant,
}

impl Shared {
    fn enter_storage(&self) {
        let now = self.origin.elapsed().as_millis() as u64;
        self.busy_since.store(now.max(1), Ordering::Relaxed);
    }

    fn leave_storage(&self) {
        self.busy_since.store(0, Ordering::Relaxed);
    }

    fn stalled_for(&self) -> Duration {
        match self.busy_since.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(
                (self.origin.elapsed().as_millis() as u64).saturating_sub(since),
            ),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind; keep going.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn publish_durable(&self, ticket: Ticket) {
        self.durable.fetch_max(ticket.0, Ordering::Release);
        if self.durable_waiters.load(Ordering::Acquire) > 0 {
            let _guard = lock(&self.durable_lock);
            self.durable_changed.notify_all();
        }
        if let Some(hook) = &self.on_durable {
            hook(ticket);
        }
    }
}

/// Handle to the writer thread.
pub(crate) struct Log {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<()>>>,
    store: Store,
}

/// What the writer needs to start.
pub(crate) struct WriterSetup {
    pub(crate) store: Store,
    pub(crate) index: Index,
    pub(crate) next_seq: Seq,
    pub(crate) durability: Durability,
    pub(crate) layout: Layout,
    pub(crate) clock: Clock,
    pub(crate) on_durable: Option<DurableHook>,
    pub(crate) compaction_slack: u64,
    pub(crate) max_record_events: usize,
    pub(crate) max_record_bytes: usize,
    pub(crate) commit_delay: Duration,
}

impl Log {
    pub(crate) fn start(setup: WriterSetup) -> Result<Log> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            last_ticket: AtomicU64::new(0),
            wake: Condvar::new(),
            durable: AtomicU64::new(0),
            durable_lock: Mutex::new(()),
            durable_changed: Condvar::new(),
            durable_waiters: AtomicU64::new(0),
            on_durable: setup.on_durable.clone(),
            failing: AtomicBool::new(false),
            stats: AtomicStats::default(),
            busy_since: AtomicU64::new(0),
            origin: Instant::now(),
        });
        let store = setup.store.clone();
        let (marks, marked) = mpsc::channel();
        let marker = std::thread::Builder::new()
            .name("rollcall-marker".into())
            .spawn({
                let shared = shared.clone();
                let store = store.clone();
                move || mark_durable(&shared, &store, &marked)
            })
            .map_err(Error::Spawn)?;
        let mut writer = Writer::new(shared.clone(), setup, marks, marker);
        let thread = std::thread::Builder::new()
            .name("rollcall-log".into())
            .spawn(move || {
                let result = writer.run();
                // Close after what the marker thread still has to record.
                writer.stop_marking().and(result)
            })
            .map_err(Error::Spawn)?;
        Ok(Log {
            shared,
            thread: Some(thread),
            store,
        })
    }

    /// Queues an event; it is durable once [`Log::durable`] reaches the ticket. Callers
    /// on several threads may append at once: the ticket is taken under the queue's
    /// lock, so tickets follow the queue's order.
    pub(crate) fn append(&self, event: Event) -> Ticket {
        let mut queue = lock(&self.shared.queue);
        let ticket = Ticket(self.shared.last_ticket.load(Ordering::Relaxed) + 1);
        self.shared.last_ticket.store(ticket.0, Ordering::Release);
        queue.ops.push(Op::Append(ticket, event));
        if queue.writer_waiting {
            queue.writer_waiting = false;
            self.shared.wake.notify_one();
        }
        ticket
    }

    /// Tells compaction that these entries expired, so their bytes stop counting as
    /// live.
    pub(crate) fn expired(&self, keys: impl IntoIterator<Item = Key>) {
        let mut queue = lock(&self.shared.queue);
        queue.ops.extend(keys.into_iter().map(Op::Expired));
        // No wake-up: expiry only feeds compaction, which can wait for the next round.
    }

    pub(crate) fn last_ticket(&self) -> Ticket {
        Ticket(self.shared.last_ticket.load(Ordering::Acquire))
    }

    pub(crate) fn durable(&self) -> Ticket {
        Ticket(self.shared.durable.load(Ordering::Acquire))
    }

    /// Blocks until `ticket` is durable or `timeout` passes; true if durable.
    pub(crate) fn wait_durable(&self, ticket: Ticket, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.shared.durable_waiters.fetch_add(1, Ordering::AcqRel);
        let mut guard = lock(&self.shared.durable_lock);
        let done = loop {
            if self.durable() >= ticket {
                break true;
            }
            let now = Instant::now();
            if now >= deadline || self.thread.as_ref().is_none_or(JoinHandle::is_finished) {
                break self.durable() >= ticket;
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            guard = self
                .shared
                .durable_changed
                .wait_timeout(guard, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        drop(guard);
        self.shared.durable_waiters.fetch_sub(1, Ordering::AcqRel);
        done
    }

    /// Asks the writer to make everything appended so far durable now, even in
    /// buffered mode, and waits for it.
    pub(crate) fn sync(&self, timeout: Duration) -> Result<bool> {
        {
            let mut queue = lock(&self.shared.queue);
            queue.sync_wanted = true;
            if queue.writer_waiting {
                queue.writer_waiting = false;
                self.shared.wake.notify_one();
            }
        }
        if self.thread.as_ref().is_none_or(JoinHandle::is_finished) {
            return Err(Error::WriterStopped);
        }
        Ok(self.wait_durable(self.last_ticket(), timeout))
    }

    pub(crate) fn stats(&self) -> LogStats {
        self.shared.stats.snapshot()
    }

    pub(crate) fn is_failing(&self) -> bool {
        self.shared.failing.load(Ordering::Relaxed)
    }

    /// How long the writer has been inside one storage call (zero when it is not).
    pub(crate) fn stalled_for(&self) -> Duration {
        self.shared.stalled_for()
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Stops the writer after it has written and flushed everything queued.
    pub(crate) fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        {
            let mut queue = lock(&self.shared.queue);
            queue.closing = true;
            self.shared.wake.notify_one();
        }
        thread.join().map_err(|_| Error::WriterStopped)?
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // Best effort only: callers that care about the result call `close`.
        if let Err(error) = self.shutdown() {
            tracing::error!(%error, "log writer failed while closing");
        }
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("last_ticket", &self.last_ticket())
            .field("durable", &self.durable())
            .finish_non_exhaustive()
    }
}
