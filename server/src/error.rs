//! The server's error type.

use std::io;

/// What can stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] rollcall_engine::Error),
    /// The data directory cannot be opened: sled refuses it or the log is unreadable.
    #[error(
        "cannot open the data directory {}: {source}. Presence is soft state: start with \
         --on-corrupt-data=move-aside to move it aside and start empty, or \
         --recovery=skip-corrupt to start without only the damaged part (unreadable log \
         records, lost writes; reported in the log and /metrics)",
        path.display()
    )]
    DataDirectory {
        /// The directory.
        path: std::path::PathBuf,
        /// Why it failed.
        source: rollcall_engine::Error,
    },
    /// The data directory holds files from an earlier run, but nothing could be read
    /// from them (sled reads damaged files as an empty database).
    #[error(
        "cannot open the data directory {}: it holds files from an earlier run but no \
         data could be read from them (damaged or truncated). Presence is soft state: start \
         with --on-corrupt-data=move-aside to move it aside and start empty",
        path.display()
    )]
    DataDirectoryEmptied {
        /// The directory.
        path: std::path::PathBuf,
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

/// Result with the server's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
