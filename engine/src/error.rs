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

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
