//! The engine: a materializer in front of a log.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::compaction::{Index, Key};
use crate::config::{Config, Durability, Recovery};
use crate::error::{Error, LostWrites, Result};
use crate::event::{Event, Heartbeat, Leave};
use crate::log::{Log, LogStats, WriterSetup};
use crate::marker::{self, Tip};
use crate::materializer::{Change, Materializer};
use crate::replay::{self, ReplayReport};
use crate::store::Store;
use crate::types::{Seq, Ticket, UnixMs};

/// How long [`Engine::sync`] and [`Engine::close`] wait for the disk at most.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// Presence state with a durable log behind it.
///
/// Every heartbeat and leave is folded into the [`Materializer`] at once (so readers
/// and subscribers never wait for the disk) and queued for the log's writer thread,
/// which returns a [`Ticket`] to wait on for durability.
///
/// A server that folds rooms on several threads takes the engine apart with
/// [`Engine::into_parts`]: the [`Materializer`] splits by room
/// ([`Materializer::split`]) and the [`Journal`] is shared by every thread.
pub struct Engine {
    materializer: Materializer,
    journal: Journal,
}

/// The engine's log, shareable between threads: appends take `&self` and are ordered
/// by one queue lock (the group-commit writer's), so a caller that folds an event
/// into its own slice of the state and appends it while holding that slice's lock
/// keeps the log's order equal to the fold's for every entry of that slice.
pub struct Journal {
    log: Option<Log>,
    durability: Durability,
    memory_meta: Mutex<HashMap<String, Vec<u8>>>,
}

impl Engine {
    /// Opens (or creates) the log described by `config`, replays it and drops every
    /// entry that has expired by the config's clock.
    pub fn open(mut config: Config) -> Result<(Engine, ReplayReport)> {
        if config.durability == Durability::Memory {
            return Ok((Engine::memory(), ReplayReport::default()));
        }
        let store = Store::open(&config.path, config.cache_capacity)?;
        let check = check_durable(&store, &config)?;
        let now = (config.clock)();
        let mut materializer = Materializer::new();
        let mut index = Index::default();
        let mut report = replay::replay(
            &store,
            &mut materializer,
            &mut index,
            config.recovery,
            check.floor.next_seq,
            config.on_progress.as_mut(),
            now,
        )?;
        report.lost = check.lost;
        report.marker_rebuilt = check.marker_rebuilt;
        // From here on sled and the marker agree; the tip never goes back, even past
        // writes that were lost.
        let tip = store.resume(check.floor)?;
        let next_seq = index
            .last_seq()
            .map_or(Seq(1), |seq| Seq(seq.0 + 1))
            .max(tip.next_seq);
        let log = Log::start(WriterSetup {
            store,
            index,
            next_seq,
            durability: config.durability,
            layout: config.layout,
            clock: config.clock.clone(),
            on_durable: config.on_durable.clone(),
            compaction_slack: config.compaction_slack,
            max_record_events: config.max_record_events,
            max_record_bytes: config.max_record_bytes,
            commit_delay: config.commit_delay,
        })?;
        Ok((
            Engine {
                materializer,
                journal: Journal::new(Some(log), config.durability),
            },
            report,
        ))
    }

    /// An engine without a log.
    pub fn memory() -> Engine {
        Engine {
            materializer: Materializer::new(),
            journal: Journal::new(None, Durability::Memory),
        }
    }

    /// The folded state and the log, apart: the materializer can then be split by
    /// room and the journal shared (see [`Journal`] for the order rule).
    pub fn into_parts(self) -> (Materializer, Journal) {
        (self.materializer, self.journal)
    }

    /// Upserts the heartbeat's entry and appends it to the log.
    pub fn heartbeat(&mut self, heartbeat: Heartbeat) -> (Change, Ticket) {
        let change = self.materializer.heartbeat(&heartbeat);
        let ticket = self.journal.append(Event::Heartbeat(heartbeat));
        (change, ticket)
    }

    /// Removes the client's entry and appends the leave to the log. `None` (and
    /// nothing appended) if the client had no entry in the room.
    pub fn leave(&mut self, leave: Leave) -> Option<(Change, Ticket)> {
        let change = self.materializer.leave(&leave)?;
        let ticket = self.journal.append(Event::Leave(leave));
        Some((change, ticket))
    }

    /// Applies either kind of event.
    pub fn apply(&mut self, event: Event) -> Option<(Change, Ticket)> {
        match event {
            Event::Heartbeat(hb) => Some(self.heartbeat(hb)),
            Event::Leave(leave) => self.leave(leave),
        }
    }

    /// Folds an event into the materializer without logging it: for state owned by
    /// another node, which logs it itself.
    pub fn fold_unlogged(&mut self, event: &Event) -> Option<Change> {
        self.materializer.fold(event)
    }

    /// Removes every entry with `expires_at < now`, appending an expiry change for each
    /// to `out`. Returns how many expired.
    pub fn sweep(&mut self, now: UnixMs, out: &mut Vec<Change>) -> usize {
        let start = out.len();
        let expired = self.materializer.sweep_due(now, out);
        self.journal.expired(&out[start..]);
        expired
    }

    /// Read access to the folded state.
    pub fn materializer(&self) -> &Materializer {
        &self.materializer
    }

    /// The log.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The durability mode the engine was opened with.
    pub fn durability(&self) -> Durability {
        self.journal.durability()
    }

    /// Every append up to this ticket is durable (in `buffered` mode: flushed).
    pub fn durable(&self) -> Ticket {
        self.journal.durable()
    }

    /// The ticket of the latest append.
    pub fn last_ticket(&self) -> Ticket {
        self.journal.last_ticket()
    }

    /// Blocks the calling thread until `ticket` is durable or `timeout` passes.
    /// Async callers use [`Config::on_durable`] instead.
    pub fn wait_durable(&self, ticket: Ticket, timeout: Duration) -> bool {
        self.journal.wait_durable(ticket, timeout)
    }

    /// Flushes everything appended so far, whatever the durability mode, and waits
    /// for it (at most 30 s). Returns whether it completed in time.
    pub fn sync(&self) -> Result<bool> {
        self.journal.sync()
    }

    /// Counters about the log (all zero without a log).
    pub fn log_stats(&self) -> LogStats {
        self.journal.log_stats()
    }

    /// Whether the last write or flush failed and is being retried.
    pub fn log_failing(&self) -> bool {
        self.journal.log_failing()
    }

    /// How long the log writer has been inside a single storage call: a stalled disk
    /// (or a storage deadlock) shows up here. Zero when it is not in one.
    pub fn log_stalled_for(&self) -> Duration {
        self.journal.log_stalled_for()
    }

    /// Bytes the data directory occupies, as sled reports it.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.journal.size_on_disk()
    }

    /// Reads a small persistent value (kept beside the log, e.g. server secrets).
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.journal.meta_get(key)
    }

    /// Writes and flushes a small persistent value.
    pub fn meta_put(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.journal.meta_put(key, value)
    }

    /// Writes and flushes everything queued, then stops the writer thread.
    pub fn close(self) -> Result<()> {
        self.journal.close()
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("entries", &self.materializer.len())
            .field("rooms", &self.materializer.room_count())
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

impl Journal {
    fn new(log: Option<Log>, durability: Durability) -> Journal {
        Journal {
            log,
            durability,
            memory_meta: Mutex::new(HashMap::new()),
        }
    }

    /// Queues an event for the log and returns its ticket. The event must already be
    /// folded, by a caller that still holds whatever orders the folds of its entry:
    /// the log then replays it in the same order. Without a log (`memory` mode)
    /// nothing is queued and every ticket is `Ticket(0)`, durable at once (no counter
    /// is shared between threads).
    pub fn append(&self, event: Event) -> Ticket {
        match &self.log {
            Some(log) => log.append(event),
            None => Ticket(0),
        }
    }

    /// Tells compaction that the entries of these expiry changes are gone, so their
    /// bytes stop counting as live. Called, like [`Journal::append`], while the
    /// expiries' fold is still ordered against later events of the same entries.
    pub fn expired(&self, changes: &[Change]) {
        if let (Some(log), false) = (&self.log, changes.is_empty()) {
            log.expired(changes.iter().map(|change| Key {
                room: change.room.clone(),
                client: change.entry.client,
            }));
        }
    }

    /// The durability mode the engine was opened with.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Every append up to this ticket is durable (in `buffered` mode: flushed).
    pub fn durable(&self) -> Ticket {
        match &self.log {
            Some(log) => log.durable(),
            None => Ticket(0),
        }
    }

    /// The ticket of the latest append (`Ticket(0)` without a log).
    pub fn last_ticket(&self) -> Ticket {
        match &self.log {
            Some(log) => log.last_ticket(),
            None => Ticket(0),
        }
    }

    /// Blocks the calling thread until `ticket` is durable or `timeout` passes.
    pub fn wait_durable(&self, ticket: Ticket, timeout: Duration) -> bool {
        match &self.log {
            Some(log) => log.wait_durable(ticket, timeout),
            None => true,
        }
    }

    /// Flushes everything appended so far, whatever the durability mode, and waits
    /// for it (at most 30 s). Returns whether it completed in time.
    pub fn sync(&self) -> Result<bool> {
        match &self.log {
            Some(log) => log.sync(SYNC_TIMEOUT),
            None => Ok(true),
        }
    }

    /// Counters about the log (all zero without a log).
    pub fn log_stats(&self) -> LogStats {
        self.log.as_ref().map(Log::stats).unwrap_or_default()
    }

    /// Whether the last write or flush failed and is being retried.
    pub fn log_failing(&self) -> bool {
        self.log.as_ref().is_some_and(Log::is_failing)
    }

    /// How long the log writer has been inside a single storage call. Zero when it is
    /// not in one.
    pub fn log_stalled_for(&self) -> Duration {
        self.log.as_ref().map_or(Duration::ZERO, Log::stalled_for)
    }

    /// Bytes the data directory occupies, as sled reports it.
    pub fn size_on_disk(&self) -> Result<u64> {
        match &self.log {
            Some(log) => log.store().size_on_disk(),
            None => Ok(0),
        }
    }

    /// Reads a small persistent value (kept beside the log, e.g. server secrets).
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match &self.log {
            Some(log) => log.store().meta_get(key),
            None => Ok(self
                .memory_meta
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(key)
                .cloned()),
        }
    }

    /// Writes and flushes a small persistent value.
    pub fn meta_put(&self, key: &str, value: &[u8]) -> Result<()> {
        match &self.log {
            Some(log) => log.store().meta_put(key, value),
            None => {
                self.memory_meta
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key.to_owned(), value.to_vec());
                Ok(())
            }
        }
    }

    /// Writes and flushes everything queued, then stops the writer thread.
    pub fn close(self) -> Result<()> {
        match self.log {
            Some(log) => log.close(),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("durability", &self.durability)
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

/// What comparing sled's tip with the durability marker found.
struct DurableCheck {
    /// The tip every acknowledged write had reached (the marker's), or sled's own.
    floor: Tip,
    lost: Option<LostWrites>,
    marker_rebuilt: bool,
}

/// Compares the tip sled recovered with the one the marker recorded after the last
/// flush: a lower tip in sled means that sled dropped durable writes. Strict recovery
/// refuses; skip-corrupt reports it and goes on.
fn check_durable(store: &Store, config: &Config) -> Result<DurableCheck> {
    let found = store.sled_tip()?;
    let mut check = DurableCheck {
        floor: found,
        lost: None,
        marker_rebuilt: false,
    };
    match store.read_marker()? {
        marker::Found::Missing => {}
        marker::Found::Unreadable => match config.recovery {
            Recovery::Strict => {
                return Err(Error::CorruptMarker {
                    path: config.path.join(marker::MARKER_FILE),
                });
            }
            Recovery::SkipCorrupt => check.marker_rebuilt = true,
        },
        marker::Found::Tip(durable) => {
            check.floor = found.max(durable);
            if found.writes < durable.writes {
                let lost = LostWrites {
                    durable_writes: durable.writes,
                    found_writes: found.writes,
                    first_lost: found.next_seq.min(durable.next_seq),
                    durable_end: durable.next_seq,
                };
                match config.recovery {
                    Recovery::Strict => return Err(Error::LostWrites(lost)),
                    Recovery::SkipCorrupt => check.lost = Some(lost),
                }
            }
        }
    }
    Ok(check)
}
