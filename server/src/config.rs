//! Server configuration, independent of how it was given (flags, env, code).

use std::path::PathBuf;
use std::time::Duration;

use rollcall_engine::{Durability, Layout, Recovery};

use crate::limits::Limits;
use crate::listener::ConnectionLimits;

/// Everything `run` needs besides the listener.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The sled data directory (unused with `Durability::Memory`).
    pub data_dir: PathBuf,
    /// What an acknowledgment promises.
    pub durability: Durability,
    /// How the log groups events into records.
    pub layout: Layout,
    /// What replay does with corrupt records.
    pub recovery: Recovery,
    /// Limits on client input.
    pub limits: Limits,
    /// How often expired entries are swept (an entry disappears within TTL + tick).
    pub tick: Duration,
    /// Caps and timeouts applied when accepting connections.
    pub connections: ConnectionLimits,
    /// How often an idle client is pinged.
    pub ping_interval: Duration,
    /// A client silent for this long is closed.
    pub idle_timeout: Duration,
    /// How long shutdown waits for sessions to close.
    pub drain_timeout: Duration,
    /// This node's id (0 when running alone); it prefixes client ids.
    pub node_id: u16,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("./rollcall-data"),
            durability: Durability::Flush,
            layout: Layout::PerGroup,
            recovery: Recovery::Strict,
            limits: Limits::default(),
            tick: Duration::from_millis(25),
            connections: ConnectionLimits::default(),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
            node_id: 0,
        }
    }
}
