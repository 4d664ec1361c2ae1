//! How an engine is opened: where, how durable, how records are laid out.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::types::{Ticket, UnixMs};

/// A source of wall-clock time for replay and compaction.
pub type Clock = Arc<dyn Fn() -> UnixMs + Send + Sync>;

/// Called on the log's marker thread each time the durable watermark advances.
pub type DurableHook = Arc<dyn Fn(Ticket) + Send + Sync>;

/// How far a replay has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayProgress {
    /// Records folded so far.
    pub records: u64,
    /// Events folded so far.
    pub events: u64,
    /// Time since the replay started.
    pub elapsed: Duration,
}

/// Called during replay, about once a second, so long replays can report progress.
pub type ProgressHook = Box<dyn FnMut(&ReplayProgress) + Send>;

/// The largest record that sled 0.34 keeps inside its own log file.
///
/// sled stores a page bigger than a quarter of a segment (512 KiB / 4) as a separate
/// blob file, and `Db::flush` never fsyncs blob files, so an acknowledged write in one
/// could be lost on power loss (not on a process crash). A leaf page holds up to 17
/// records, so records of at most 4 KiB (plus one oversized event) keep every page
/// inline, under sled's fsync.
pub const MAX_INLINE_RECORD_BYTES: usize = 4 * 1024;

/// What an acknowledgment promises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Every group is flushed (fsync) before its tickets become durable.
    #[default]
    Flush,
    /// Groups are written at once and flushed at most this often: a crash loses at
    /// most this window, like Redis `appendfsync everysec`.
    Buffered(Duration),
    /// No log at all: state lives in memory only and every ticket is durable at once.
    Memory,
}

/// How events are grouped into records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// One record per event: sled sees one insert per heartbeat.
    PerEvent,
    /// One record per commit group: sled sees one insert per group, whatever the rate.
    #[default]
    PerGroup,
}

/// What opening does with a record that does not decode in the middle of the log, and
/// with durable writes that sled no longer holds (see [`Error::LostWrites`]).
///
/// Undecodable records at the very end of the log that are cut short (a torn tail)
/// and lie past what a flush had made durable are always truncated with a warning.
///
/// [`Error::LostWrites`]: crate::Error::LostWrites
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recovery {
    /// Refuse to open, naming the record or the lost writes.
    #[default]
    Strict,
    /// Delete unreadable records with a warning and open without them; open without
    /// lost writes and report them in [`ReplayReport::lost`](crate::ReplayReport::lost).
    SkipCorrupt,
}

/// Options for [`Engine::open`](crate::Engine::open).
pub struct Config {
    pub(crate) path: PathBuf,
    pub(crate) durability: Durability,
    pub(crate) layout: Layout,
    pub(crate) recovery: Recovery,
    pub(crate) clock: Clock,
    pub(crate) on_durable: Option<DurableHook>,
    pub(crate) on_progress: Option<ProgressHook>,
    pub(crate) compaction_slack: u64,
    pub(crate) max_record_events: usize,
    pub(crate) max_record_bytes: usize,
    pub(crate) cache_capacity: u64,
    pub(crate) commit_delay: Duration,
}

impl Config {
    /// A log in the sled directory `path`, flushed before acknowledging, with one
    /// record per commit group.
    pub fn new(path: impl AsRef<Path>) -> Config {
        Config {
            path: path.as_ref().to_path_buf(),
            durability: Durability::Flush,
            layout: Layout::PerGroup,
            recovery: Recovery::Strict,
            clock: Arc::new(UnixMs::now),
            on_durable: None,
            on_progress: None,
            compaction_slack: 64 * 1024,
            max_record_events: 4_096,
            max_record_bytes: MAX_INLINE_RECORD_BYTES,
            cache_capacity: 64 << 20,
            commit_delay: Duration::from_millis(10),
        }
    }

    /// An engine without a log: nothing touches the disk.
    pub fn memory() -> Config {
        Config::new("").durability(Durability::Memory)
    }

    /// Sets the durability mode.
    #[must_use]
    pub fn durability(mut self, durability: Durability) -> Config {
        self.durability = durability;
        self
    }

    /// Sets the record layout.
    #[must_use]
    pub fn layout(mut self, layout: Layout) -> Config {
        self.layout = layout;
        self
    }

    /// Sets what replay does with corrupt records.
    #[must_use]
    pub fn recovery(mut self, recovery: Recovery) -> Config {
        self.recovery = recovery;
        self
    }

    /// Replaces the wall clock used to drop expired entries after replay and to judge
    /// which records compaction must keep. Tests inject a simulated clock here.
    #[must_use]
    pub fn clock(mut self, clock: impl Fn() -> UnixMs + Send + Sync + 'static) -> Config {
        self.clock = Arc::new(clock);
        self
    }

    /// Calls `hook` on the log's marker thread whenever the durable watermark advances.
    /// It must be quick and must not block (e.g. send on a watch channel).
    #[must_use]
    pub fn on_durable(mut self, hook: impl Fn(Ticket) + Send + Sync + 'static) -> Config {
        self.on_durable = Some(Arc::new(hook));
        self
    }

    /// Calls `hook` about once a second while replaying.
    #[must_use]
    pub fn on_progress(mut self, hook: impl FnMut(&ReplayProgress) + Send + 'static) -> Config {
        self.on_progress = Some(Box::new(hook));
        self
    }

    /// Bytes of dead records tolerated beyond twice the live bytes before compaction
    /// rewrites the oldest records (default 64 KiB).
    #[must_use]
    pub fn compaction_slack(mut self, bytes: u64) -> Config {
        self.compaction_slack = bytes;
        self
    }

    /// Caps a group record's size (defaults: 4,096 events, 4 KiB); larger groups are
    /// split into several records in the same batch. Records above the default may be
    /// stored by sled as separate blob files, which sled 0.34 does not fsync: see
    /// [`MAX_INLINE_RECORD_BYTES`].
    #[must_use]
    pub fn max_record(mut self, events: usize, bytes: usize) -> Config {
        self.max_record_events = events;
        self.max_record_bytes = bytes;
        self
    }

    /// The shortest time between two group writes (default 10 ms). A write that comes
    /// longer after the previous one goes at once; under load, everything appended
    /// during the delay becomes one group, one batch and one flush, which costs the
    /// writer (and sled's threads) far less CPU than a flush per few events.
    #[must_use]
    pub fn commit_delay(mut self, delay: Duration) -> Config {
        self.commit_delay = delay;
        self
    }

    /// sled's page cache capacity in bytes (default 64 MiB).
    #[must_use]
    pub fn cache_capacity(mut self, bytes: u64) -> Config {
        self.cache_capacity = bytes;
        self
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .field("layout", &self.layout)
            .field("recovery", &self.recovery)
            .field("compaction_slack", &self.compaction_slack)
            .field("max_record_events", &self.max_record_events)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("cache_capacity", &self.cache_capacity)
            .field("commit_delay", &self.commit_delay)
            .finish_non_exhaustive()
    }
}
