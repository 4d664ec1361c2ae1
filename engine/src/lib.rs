//! Rollcall's storage engine: presence entries with a TTL, folded from a durable
//! event log.
//!
//! Clients heartbeat entries into rooms; each heartbeat and leave is an [`Event`]
//! appended to a sled-backed log and folded by the [`Materializer`] into per-room state
//! ordered by expiry. Reopening the log replays it and drops what expired, so a
//! restarted server comes back with exactly the entries that are still live.
//!
//! - [`Engine`] ties the two together: [`Engine::heartbeat`], [`Engine::leave`] and
//!   [`Engine::sweep`] return the [`Change`]s to fan out, and appends return a
//!   [`Ticket`] that becomes durable after the writer thread's next group commit.
//! - [`Materializer`] is the pure fold: it takes time from its events and from its
//!   caller, never from the clock.
//! - [`Engine::into_parts`] takes the two apart for a caller that folds rooms on
//!   several threads: the materializer splits by room ([`Materializer::split`]) and
//!   the [`Journal`] (the log's handle) is shared; an event appended while its part's
//!   lock is held keeps the log's order equal to the fold's.
//! - [`record`] is the versioned, checksummed on-disk format.
//!
//! ```
//! use rollcall_engine::{ClientId, Config, Engine, Heartbeat, Ttl, UnixMs};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path();
//! let (mut engine, _report) = Engine::open(Config::new(path))?;
//! let now = UnixMs::now();
//! let (change, ticket) = engine.heartbeat(Heartbeat {
//!     room: "pr:room-123".into(),
//!     client: ClientId(7),
//!     user: None,
//!     data: r#"{"status":"online"}"#.into(),
//!     ttl: Ttl(30_000),
//!     at: now,
//! });
//! assert_eq!(change.entry.expires_at, UnixMs(now.0 + 30_000));
//! engine.sync()?; // or wait for `ticket` with `Config::on_durable`
//! assert!(engine.durable() >= ticket);
//! engine.close()?;
//!
//! // A restart replays the log: the entry is still live.
//! let (engine, report) = Engine::open(Config::new(path))?;
//! assert_eq!(report.live_entries, 1);
//! let entry = engine.materializer().get("pr:room-123", ClientId(7), now).unwrap();
//! assert_eq!(&entry.data[..], br#"{"status":"online"}"#);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod compaction;
mod config;
mod engine;
mod error;
mod event;
mod log;
mod marker;
mod materializer;
pub mod record;
mod replay;
mod store;
mod types;

pub use config::{
    Clock, Config, Durability, DurableHook, Layout, MAX_INLINE_RECORD_BYTES, ProgressHook,
    Recovery, ReplayProgress,
};
pub use engine::{Engine, Journal};
pub use error::{Error, LostWrites, Result};
pub use event::{Event, Heartbeat, Leave};
pub use log::LogStats;
pub use materializer::{Change, ChangeKind, Entry, Materializer};
pub use record::DecodeError;
pub use replay::{CLIENT_SPACE_SHIFT, ReplayReport};
pub use types::{ClientId, Seq, Ticket, Ttl, UnixMs};
