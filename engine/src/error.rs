//! The engine's error type.

use std::io;

use crate::record::DecodeError;
use crate::types::Seq;

/// Everything that can go wrong opening or writing the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// sled could not open, read or write the data directory.
    #[error("storage error in the data directory: {0}")]
    Storage(#[from] sled::Error),
    /// A record in the middle of the log does not decode. Start with
    /// [`Recovery::SkipCorrupt`](crate::Recovery::SkipCorrupt) to drop such records.
    #[error(
        "log record {seq} is corrupt ({source}); start with the skip-corrupt recovery mode \
         to drop unreadable records"
    )]
    CorruptRecord {
        /// Key of the record that failed.
        seq: Seq,
        /// Why it failed.
        source: DecodeError,
    },
    /// sled opened without writes that had been made durable: it read its log only up
    /// to a damaged message (a flipped bit, a truncated file) and dropped the rest as
    /// if a crash had torn it. Start with
    /// [`Recovery::SkipCorrupt`](crate::Recovery::SkipCorrupt) to go on without them.
    #[error(
        "the log lost writes that had been made durable: {0}. sled stopped reading its log \
         at a damaged message and discarded everything after it; this is corruption, not \
         a write torn by a crash. Start with the skip-corrupt recovery mode to go on \
         without them"
    )]
    LostWrites(LostWrites),
    /// The durability marker beside sled's files is damaged, so the log cannot be
    /// checked for lost writes. [`Recovery::SkipCorrupt`](crate::Recovery::SkipCorrupt)
    /// starts a new one.
    #[error(
        "the durability marker {} is damaged (neither of its slots is intact), so the log \
         cannot be checked for lost writes; start with the skip-corrupt recovery mode to \
         start a new marker",
        path.display()
    )]
    CorruptMarker {
        /// The marker file.
        path: std::path::PathBuf,
    },
    /// sled cannot open its own files: `file` (its log `db` or its configuration
    /// `conf`) is damaged. Nothing can be read past this, so
    /// [`Recovery::SkipCorrupt`](crate::Recovery::SkipCorrupt) does not help either.
    #[error("sled cannot open its file {}: {detail}", file.display())]
    Damaged {
        /// The damaged file.
        file: std::path::PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Another process (or another engine in this one) has the data directory open.
    #[error("the data directory {} is in use by another process", path.display())]
    Locked {
        /// The data directory.
        path: std::path::PathBuf,
    },
    /// A key in the log tree is not an eight-byte sequence number.
    #[error("log key {key:02x?} is not an eight-byte sequence number")]
    CorruptKey {
        /// The offending key.
        key: Vec<u8>,
    },
    /// The log's writer thread has stopped (after a panic or after `close`).
    #[error("the log writer has stopped")]
    WriterStopped,
    /// Spawning the writer thread failed.
    #[error("could not start the log writer thread: {0}")]
    Spawn(#[source] io::Error),
}

impl Error {
    /// The kind of the I/O error underneath, if the storage failed with one (e.g.
    /// [`io::ErrorKind::PermissionDenied`]).
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Error::Storage(sled::Error::Io(error)) | Error::Spawn(error) => Some(error.kind()),
            _ => None,
        }
    }
}

/// Writes that sled had made durable and no longer holds, found by comparing the
/// durability marker with the tip sled recovered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LostWrites {
    /// Writes (log batches and metadata updates) the marker says were durable.
    pub durable_writes: u64,
    /// Writes sled still holds.
    pub found_writes: u64,
    /// The first log record sequence number that sled no longer knows of.
    pub first_lost: Seq,
    /// The next sequence number when the last durable write was made: records from
    /// `first_lost` up to here were written after the damage.
    pub durable_end: Seq,
}

impl LostWrites {
    /// Durable writes that are missing.
    pub fn writes(&self) -> u64 {
        self.durable_writes.saturating_sub(self.found_writes)
    }

    /// Log records written after the damage, at most this many of them held live
    /// events (compaction may already have deleted some).
    pub fn records(&self) -> u64 {
        self.durable_end.0.saturating_sub(self.first_lost.0)
    }
}

impl std::fmt::Display for LostWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} acknowledged writes are missing",
            self.writes(),
            self.durable_writes
        )?;
        match self.records() {
            0 => write!(f, " (metadata only, no log record)"),
            n => write!(
                f,
                " ({n} log record(s) {} to #{}, each a commit group of events)",
                self.first_lost,
                self.durable_end.0 - 1
            ),
        }
    }
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
