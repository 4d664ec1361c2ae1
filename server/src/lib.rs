//! The Rollcall presence server.
//!
//! Clients connect over WebSocket (`/ws`), heartbeat entries into rooms and subscribe
//! to rooms' snapshots and changes; bots use the REST API. `docs/protocol.md` documents
//! the wire protocol. The pieces, in the shape of tokio's mini-redis:
//!
//! - [`run`] serves a listener until a shutdown future completes;
//! - `connection` owns a socket and reads and writes whole messages;
//! - `protocol` parses requests and encodes messages, in one place;
//! - `session` runs one client: handshake, request loop, write loop;
//! - `hub` holds the engine and the subscriptions (rooms in shards, admission,
//!   queries); `fanout` the per-subscriber conflating outboxes;
//! - `shutdown` is the signal every task listens to;
//! - `cluster` links nodes through NATS when `--nats` is given.
//!
//! The crate's API is what the `rollcall` binary and the tests use: [`run`] and
//! [`run_notify`], [`ServerConfig`] and the types of its fields, [`Error`], and [`cli`]
//! (the command line, parsed into a [`ServerConfig`]). Every other module is private
//! to the crate.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rollcall_server::Error> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7700").await?;
//! let config = rollcall_server::ServerConfig::default();
//! rollcall_server::run(listener, config, tokio::signal::ctrl_c()).await
//! # }
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub(crate) mod auth;
#[doc(hidden)]
pub mod bench;
pub mod cli;
pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod connection;
mod datadir;
pub(crate) mod error;
pub(crate) mod fanout;
pub(crate) mod http;
pub(crate) mod hub;
pub(crate) mod identity;
pub(crate) mod limits;
pub(crate) mod listener;
pub(crate) mod listing;
pub(crate) mod metrics;
pub(crate) mod pages;
pub(crate) mod protocol;
pub(crate) mod rejection;
mod server;
pub(crate) mod session;
pub(crate) mod shutdown;
pub(crate) mod sse;
pub(crate) mod tls;
pub(crate) mod webhooks;

pub use auth::Auth;
pub use config::{BusKey, ClusterConfig, CorruptDataPolicy, NatsConfig, ServerConfig, TlsConfig};
pub use error::{DataDirProblem, Error, Result};
pub use limits::Limits;
pub use listener::ConnectionLimits;
pub use server::{run, run_notify};
pub use webhooks::WebhookConfig;
