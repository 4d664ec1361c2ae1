//! The writer thread: group commit, compaction, and recovery from storage errors.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use super::{COMPACTION_RECORDS_PER_ROUND, IDLE_TICK, MAX_BACKOFF, Op, Shared, WriterSetup, lock};
use crate::compaction::{Index, Indexed, Key};
use crate::config::{Clock, Durability, Layout};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::marker::Tip;
use crate::record;
use crate::store::Store;
use crate::types::{Seq, Ticket};

/// Events waiting for the next batch, at most one per key.
#[derive(Default)]
struct Group {
    slots: Vec<Option<Pending>>,
    by_key: HashMap<Key, usize, std::hash::RandomState>,
    len: usize,
}

struct Pending {
    event: Event,
    /// The entry expired before its event reached the disk.
    expired: bool,
}

impl Group {
    /// Adds an event, dropping an earlier one for the same key. True if it coalesced.
    fn push(&mut self, event: Event) -> bool {
        let key = Key::of(&event);
        let index = self.slots.len();
        self.slots.push(Some(Pending {
            event,
            expired: false,
        }));
        match self.by_key.insert(key, index) {
            Some(old) => {
                self.slots[old] = None;
                true
            }
            None => {
                self.len += 1;
                false
            }
        }
    }

    fn contains(&self, key: &Key) -> bool {
        self.by_key.contains_key(key)
    }

    fn mark_expired(&mut self, key: &Key) -> bool {
        match self.by_key.get(key) {
            Some(&index) => {
                if let Some(pending) = self.slots[index].as_mut() {
                    pending.expired = true;
                }
                true
            }
            None => false,
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn clear(&mut self) {
        self.slots.clear();
        self.by_key.clear();
        self.len = 0;
    }

    fn pending(&self) -> impl Iterator<Item = &Pending> + Clone {
        self.slots.iter().flatten()
    }
}

pub(super) struct Writer {
    shared: Arc<Shared>,
    store: Store,
    index: Index,
    next_seq: Seq,
    durability: Durability,
    layout: Layout,
    clock: Clock,
    slack: u64,
    max_record_events: usize,
    max_record_bytes: usize,
    group: Group,
    /// Records to delete with the next batch.
    deletes: Vec<Seq>,
    /// Records being rewritten by compaction in the next batch, with the keys whose
    /// latest event they hold and that are not copied forward.
    compacting: Vec<(Seq, Vec<Key>)>,
    /// Highest ticket taken from the queue.
    absorbed: Ticket,
    /// Highest ticket written to sled (not necessarily flushed).
    written: Ticket,
    /// Highest ticket flushed to sled (durable once the marker thread recorded it).
    flushed: Ticket,
    /// The store's tip at the last flush.
    flushed_tip: Tip,
    /// To the marker thread: a flushed ticket and tip to record, then publish.
    marks: Option<Sender<(Ticket, Tip)>>,
    marker: Option<JoinHandle<Result<()>>>,
    last_flush: Instant,
    backoff: Option<Duration>,
    /// Batches written since the last successful flush, to write again after a reopen.
    unflushed: Vec<Unflushed>,
    /// A storage error happened: reopen sled before the next write or flush.
    needs_reopen: bool,
    /// Writes are at least this far apart (group commit pacing).
    commit_delay: Duration,
    last_write: Instant,
}

/// A batch sled accepted but has not flushed yet.
struct Unflushed {
    inserts: Vec<(Seq, Vec<u8>)>,
    removes: Vec<Seq>,
}

/// One record about to be written.
struct Built {
    seq: Seq,
    bytes: Vec<u8>,
    events: Vec<Indexed>,
}

impl Writer {
    /// A writer for `setup`, recording flushed tips through `marks` (read by the
    /// `marker` thread).
    pub(super) fn new(
        shared: Arc<Shared>,
        setup: WriterSetup,
        marks: Sender<(Ticket, Tip)>,
        marker: JoinHandle<Result<()>>,
    ) -> Writer {
        let mut writer = Writer {
            shared,
            store: setup.store,
            index: setup.index,
            next_seq: setup.next_seq,
            durability: setup.durability,
            layout: setup.layout,
            clock: setup.clock,
            slack: setup.compaction_slack,
            max_record_events: setup.max_record_events.max(1),
            max_record_bytes: setup.max_record_bytes,
            group: Group::default(),
            deletes: Vec::new(),
            compacting: Vec::new(),
            absorbed: Ticket(0),
            written: Ticket(0),
            flushed: Ticket(0),
            flushed_tip: Tip::default(),
            marks: Some(marks),
            marker: Some(marker),
            last_flush: Instant::now(),
            backoff: None,
            unflushed: Vec::new(),
            needs_reopen: false,
            commit_delay: setup.commit_delay,
            last_write: Instant::now(),
        };
        writer.deletes = writer.index.take_dead();
        writer.publish_stats();
        writer
    }

    pub(super) fn run(&mut self) -> Result<()> {
        loop {
            let (ops, sync_wanted, closing) = self.wait_for_work();
            for op in ops {
                self.absorb(op);
            }
            if self.backoff.is_none() && self.compacting.is_empty() {
                self.plan_compaction();
            }
            if !self.group.is_empty() || !self.deletes.is_empty() {
                if let Err(error) = self.write() {
                    self.fail(&error);
                    if closing {
                        return Err(error);
                    }
                    continue;
                }
            }
            let flush_due = match self.durability {
                Durability::Flush => self.written > self.flushed,
                Durability::Buffered(interval) => {
                    self.written > self.flushed && self.last_flush.elapsed() >= interval
                }
                Durability::Memory => false,
            };
            if flush_due || ((sync_wanted || closing) && self.written > self.flushed) {
                if let Err(error) = self.flush() {
                    self.fail(&error);
                    if closing {
                        return Err(error);
                    }
                    continue;
                }
            } else if sync_wanted && self.written <= self.flushed {
                // Nothing unflushed: still wake anyone waiting on coalesced tickets
                // (through the marker thread, so the watermark never passes a flush
                // it has not recorded yet).
                self.mark(self.absorbed, self.flushed_tip);
            }
            self.backoff = None;
            self.shared.failing.store(false, Ordering::Relaxed);
            if closing && self.group.is_empty() && lock(&self.shared.queue).ops.is_empty() {
                return Ok(());
            }
        }
    }

    /// Hands a flushed ticket and tip to the marker thread.
    fn mark(&mut self, ticket: Ticket, tip: Tip) {
        let sent = self
            .marks
            .as_ref()
            .is_some_and(|marks| marks.send((ticket, tip)).is_ok());
        if !sent {
            // The marker thread is gone (it panicked): record here instead.
            match self.store.record_durable(tip) {
                Ok(()) => self.shared.publish_durable(ticket),
                Err(error) => {
                    tracing::error!(%error, "could not record a flush in the durability marker");
                }
            }
        }
    }

    /// Lets the marker thread record what it was handed, and waits for it.
    pub(super) fn stop_marking(&mut self) -> Result<()> {
        drop(self.marks.take());
        match self.marker.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::WriterStopped),
            None => Ok(()),
        }
    }

    /// Blocks until there is something to do; returns the queued ops and flags.
    fn wait_for_work(&mut self) -> (Vec<Op>, bool, bool) {
        let mut queue = lock(&self.shared.queue);
        loop {
            let work = !queue.ops.is_empty() || queue.sync_wanted || queue.closing;
            if work && self.backoff.is_none() {
                break;
            }
            let timeout = if let Some(backoff) = self.backoff {
                // Retrying a failed write: wait out the backoff (new events coalesce).
                drop(queue);
                std::thread::sleep(backoff);
                queue = lock(&self.shared.queue);
                break;
            } else if let Durability::Buffered(interval) = self.durability {
                if self.written > self.flushed {
                    let since = self.last_flush.elapsed();
                    if since >= interval {
                        break;
                    }
                    interval.saturating_sub(since)
                } else {
                    IDLE_TICK
                }
            } else {
                IDLE_TICK
            };
            queue.writer_waiting = true;
            let (guard, result) = self
                .shared
                .wake
                .wait_timeout(queue, timeout)
                .unwrap_or_else(PoisonError::into_inner);
            queue = guard;
            queue.writer_waiting = false;
            if result.timed_out() {
                break;
            }
        }
        // Group commit pacing: at most one write per `commit_delay`. A write long after
        // the previous one goes at once (no added latency when quiet); under load the
        // events of the delay pile into one group, one batch and one flush.
        let pace = self.last_write + self.commit_delay;
        if !queue.closing && !queue.sync_wanted && self.backoff.is_none() && Instant::now() < pace {
            drop(queue);
            std::thread::sleep(pace.saturating_duration_since(Instant::now()));
            queue = lock(&self.shared.queue);
        }
        let ops = std::mem::take(&mut queue.ops);
        let sync = std::mem::replace(&mut queue.sync_wanted, false);
        (ops, sync, queue.closing)
    }

    fn absorb(&mut self, op: Op) {
        match op {
            Op::Append(ticket, event) => {
                self.absorbed = ticket;
                if self.group.push(event) {
                    self.shared.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                }
            }
            Op::Expired(key) => {
                if !self.group.mark_expired(&key) {
                    self.index.mark_expired(&key);
                }
            }
        }
    }

    /// Rewrites the oldest records while the log holds more than twice its live bytes.
    fn plan_compaction(&mut self) {
        if !self.index.needs_compaction(self.slack, 0) {
            return;
        }
        let now = (self.clock)();
        let mut reclaiming = 0;
        let already: std::collections::HashSet<Seq> = self.deletes.iter().copied().collect();
        let candidates: Vec<(Seq, u64)> = self
            .index
            .oldest()
            .filter(|(seq, _)| !already.contains(seq))
            .take(COMPACTION_RECORDS_PER_ROUND)
            .collect();
        for (seq, bytes) in candidates {
            if !self.index.needs_compaction(self.slack, reclaiming) {
                break;
            }
            let events = match self.store.get(seq).map(|v| v.map(|v| record::decode(&v))) {
                Ok(Some(Ok(events))) => events,
                Ok(Some(Err(error))) => {
                    tracing::error!(%seq, %error, "log record no longer decodes; deleting it");
                    self.deletes.push(seq);
                    continue;
                }
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%seq, %error, "could not read a log record for compaction");
                    return;
                }
            };
            let mut dropped = Vec::new();
            for event in events {
                let key = Key::of(&event);
                if self.group.contains(&key) {
                    // A newer event for this key is about to be written.
                    dropped.push(key);
                    continue;
                }
                let live = match &event {
                    Event::Heartbeat(hb) => {
                        self.index.is_live_latest(&key, seq) && now <= hb.expires_at()
                    }
                    Event::Leave(_) => false,
                };
                if live {
                    self.group.push(event);
                    self.shared.stats.copied.fetch_add(1, Ordering::Relaxed);
                } else {
                    dropped.push(key);
                }
            }
            reclaiming += bytes;
            self.deletes.push(seq);
            self.compacting.push((seq, dropped));
        }
    }

    fn build(&self) -> Vec<Built> {
        let mut built = Vec::new();
        let mut seq = self.next_seq;
        let mut chunk: Vec<&Pending> = Vec::new();
        let mut chunk_bytes = 0usize;
        let max_events = match self.layout {
            Layout::PerEvent => 1,
            Layout::PerGroup => self.max_record_events,
        };
        let mut finish = |chunk: &mut Vec<&Pending>, seq: &mut Seq| {
            if chunk.is_empty() {
                return;
            }
            let mut bytes = Vec::new();
            let mut sizes = Vec::with_capacity(chunk.len());
            record::encode_into(chunk.iter().map(|p| &p.event), &mut bytes, &mut sizes);
            let events = chunk
                .iter()
                .zip(sizes)
                .map(|(pending, size)| Indexed {
                    key: Key::of(&pending.event),
                    size,
                    live: matches!(pending.event, Event::Heartbeat(_)) && !pending.expired,
                })
                .collect();
            built.push(Built {
                seq: *seq,
                bytes,
                events,
            });
            *seq = Seq(seq.0 + 1);
            chunk.clear();
        };
        for pending in self.group.pending() {
            let size = match &pending.event {
                Event::Heartbeat(hb) => hb.data.len() + hb.room.len() + 32,
                Event::Leave(leave) => leave.room.len() + 24,
            };
            if chunk.len() >= max_events
                || (chunk_bytes + size > self.max_record_bytes && !chunk.is_empty())
            {
                finish(&mut chunk, &mut seq);
                chunk_bytes = 0;
            }
            chunk.push(pending);
            chunk_bytes += size;
        }
        finish(&mut chunk, &mut seq);
        built
    }

    /// After a storage error sled must be reopened, and what it held unflushed must be
    /// written again: every batch since the last successful flush is kept for that.
    fn recover(&mut self) -> Result<()> {
        if !self.needs_reopen {
            return Ok(());
        }
        self.store.reopen()?;
        for batch in &self.unflushed {
            let inserts: Vec<(Seq, &[u8])> = batch
                .inserts
                .iter()
                .map(|(seq, bytes)| (*seq, bytes.as_slice()))
                .collect();
            self.store.write(&inserts, &batch.removes)?;
        }
        self.needs_reopen = false;
        tracing::info!(
            batches = self.unflushed.len(),
            "reopened the data directory after a storage error"
        );
        Ok(())
    }

    fn write(&mut self) -> Result<()> {
        self.recover()?;
        let started = Instant::now();
        self.last_write = started;
        let built = self.build();
        let inserts: Vec<(Seq, &[u8])> =
            built.iter().map(|b| (b.seq, b.bytes.as_slice())).collect();
        self.shared.enter_storage();
        let written = self.store.write(&inserts, &self.deletes);
        self.shared.leave_storage();
        written?;
        self.unflushed.push(Unflushed {
            inserts: built.iter().map(|b| (b.seq, b.bytes.clone())).collect(),
            removes: self.deletes.clone(),
        });
        let events: usize = built.iter().map(|b| b.events.len()).sum();
        metrics::histogram!("rollcall_log_write_seconds").record(started.elapsed().as_secs_f64());
        if events > 0 {
            metrics::histogram!("rollcall_log_group_events").record(events as f64);
        }

        // The batch is on sled: bring the index in step with it.
        for (seq, dropped) in std::mem::take(&mut self.compacting) {
            self.index.remove_record(seq, &dropped);
        }
        let deleted = self.deletes.len() as u64;
        for seq in std::mem::take(&mut self.deletes) {
            self.index.remove_record(seq, &[]);
        }
        for record in built {
            self.next_seq = Seq(record.seq.0 + 1);
            self.index
                .add_record(record.seq, record.bytes.len() as u64, record.events);
        }
        self.deletes = self.index.take_dead();
        self.group.clear();
        self.written = self.absorbed;

        let stats = &self.shared.stats;
        if events > 0 {
            stats.groups.fetch_add(1, Ordering::Relaxed);
            stats.events.fetch_add(events as u64, Ordering::Relaxed);
        }
        stats.deleted.fetch_add(deleted, Ordering::Relaxed);
        self.publish_stats();
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.recover()?;
        let started = Instant::now();
        let target = self.written;
        self.shared.enter_storage();
        let flushed = self.store.flush_data();
        self.shared.leave_storage();
        let tip = flushed?;
        self.unflushed.clear();
        self.last_flush = Instant::now();
        metrics::histogram!("rollcall_log_flush_seconds").record(started.elapsed().as_secs_f64());
        self.flushed = target;
        self.flushed_tip = tip;
        self.mark(target, tip);
        Ok(())
    }

    fn fail(&mut self, error: &Error) {
        let backoff = self
            .backoff
            .map_or(Duration::from_millis(50), |b| (b * 2).min(MAX_BACKOFF));
        tracing::error!(%error, retry_in = ?backoff, "log write failed; entries stay served from memory");
        metrics::counter!("rollcall_log_errors_total").increment(1);
        self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
        self.shared.failing.store(true, Ordering::Relaxed);
        self.backoff = Some(backoff);
        // sled keeps failing after an I/O error until it is opened again.
        self.needs_reopen |= matches!(error, Error::Storage(_));
    }

    fn publish_stats(&self) {
        let stats = &self.shared.stats;
        stats
            .total_bytes
            .store(self.index.total_bytes(), Ordering::Relaxed);
        stats
            .live_bytes
            .store(self.index.live_bytes(), Ordering::Relaxed);
        stats
            .records
            .store(self.index.record_count() as u64, Ordering::Relaxed);
        metrics::gauge!("rollcall_log_bytes").set(self.index.total_bytes() as f64);
        metrics::gauge!("rollcall_log_live_bytes").set(self.index.live_bytes() as f64);
        metrics::gauge!("rollcall_log_records").set(self.index.record_count() as f64);
    }
}

/// The marker thread: records each flushed tip in the durability marker, then advances
/// the durable watermark to the flush's ticket. Tips queued while it records are
/// coalesced to the latest (each covers the ones before it). A failed record is
/// retried with backoff; acknowledgments wait meanwhile. Returns once the writer has
/// hung up and everything it sent is recorded.
pub(super) fn mark_durable(
    shared: &Shared,
    store: &Store,
    marks: &Receiver<(Ticket, Tip)>,
) -> Result<()> {
    while let Ok(mut next) = marks.recv() {
        let mut backoff = Duration::from_millis(50);
        loop {
            let mut hung_up = false;
            loop {
                match marks.try_recv() {
                    Ok(later) => next = later,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        hung_up = true;
                        break;
                    }
                }
            }
            match store.record_durable(next.1) {
                Ok(()) => {
                    shared.publish_durable(next.0);
                    break;
                }
                Err(error) if hung_up => return Err(error),
                Err(error) => {
                    tracing::error!(%error, retry_in = ?backoff, "could not record a flush in the durability marker");
                    metrics::counter!("rollcall_log_errors_total").increment(1);
                    shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
    Ok(())
}
