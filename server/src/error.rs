//! The server's error type.

use std::io;

/// What can stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] rollcall_engine::Error),
    /// The data directory cannot be used. `reason` says why and what to do, in one
    /// sentence (no cause chain follows it).
    #[error("cannot open the data directory {}: {reason}", path.display())]
    DataDirectory {
        /// The directory.
        path: std::path::PathBuf,
        /// What is wrong, for callers that act on it.
        kind: DataDirProblem,
        /// The cause and its remedy.
        reason: String,
    },
    /// Binding, accepting or serving failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The operating system's random source failed.
    #[error("could not read random bytes for the resume secret: {0}")]
    Random(String),
    /// Every client id of this node has been handed out.
    #[error("client ids exhausted")]
    IdsExhausted,
    /// A background task panicked.
    #[error("a server task failed: {0}")]
    Task(String),
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Why a data directory could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DataDirProblem {
    /// The server's user may not read or write it (or create it).
    Permission,
    /// It is on a read-only file system.
    ReadOnly,
    /// Neither it nor its parent exists.
    Missing,
    /// The path is a file.
    NotADirectory,
    /// A non-empty directory that is not a Rollcall data directory.
    Foreign,
    /// Another process has it open.
    Locked,
    /// sled cannot open its files (a damaged log or configuration): only moving the
    /// directory aside helps.
    Damaged,
    /// sled opened it, but the log is damaged (unreadable records, lost writes, a
    /// damaged durability marker): `--recovery=skip-corrupt` starts without the damage.
    Corrupt,
    /// Any other I/O error.
    Io,
}

impl DataDirProblem {
    /// Whether the directory's content is damaged, so moving it aside (where asked
    /// to) lets the server start.
    pub fn is_damage(self) -> bool {
        matches!(self, DataDirProblem::Damaged | DataDirProblem::Corrupt)
    }
}

/// Result with the server's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
