//! Server configuration, independent of how it was given (flags, env, code).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rollcall_engine::{Durability, Layout, Recovery};

use crate::auth::Auth;
pub use crate::auth::read_secret_file;
use crate::limits::Limits;
use crate::listener::ConnectionLimits;

/// The default of `--fanout-interval-ms` (see `docs/performance.md` for how it was
/// chosen).
pub const DEFAULT_FANOUT_INTERVAL_MS: u64 = 5;
/// The default of `--commit-delay-ms`.
pub const DEFAULT_COMMIT_DELAY_MS: u64 = 10;
/// The default of `--tick-ms`.
pub const DEFAULT_TICK_MS: u64 = 25;
/// The default of `--ping-interval-secs`.
pub const DEFAULT_PING_INTERVAL_SECS: u64 = 20;
/// The default of `--idle-timeout-secs`.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
/// The default of `--drain-timeout-secs`.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 10;
/// The default of `--slow-consumer-timeout-secs`.
pub const DEFAULT_SLOW_CONSUMER_TIMEOUT_SECS: u64 = 30;

/// Everything `run` needs besides the listener.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The sled data directory (unused with `Durability::Memory`).
    pub data_dir: PathBuf,
    /// What an acknowledgment promises.
    pub durability: Durability,
    /// How the log groups events into records.
    pub layout: Layout,
    /// The shortest time between two group writes of the log.
    pub commit_delay: Duration,
    /// Fan-out pacing: a client averaging under one write per this interval is
    /// written to at once, a busier one once per interval (zero: no pacing).
    pub fanout_interval: Duration,
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
    /// A client whose socket accepts nothing for this long is closed with 4005.
    pub slow_consumer_timeout: Duration,
    /// Requests other than heartbeats a connection may send per second.
    pub requests_per_second: u32,
    /// WebSocket pings and pongs a connection may send per second.
    pub control_frames_per_second: u32,
    /// Token verification; `None` when auth is off.
    pub auth: Option<Arc<Auth>>,
    /// Browser origins allowed to open WebSockets; empty allows every origin.
    pub allowed_origins: Vec<String>,
    /// What to do with a data directory that cannot be opened.
    pub on_corrupt_data: CorruptDataPolicy,
    /// This node's id (0 when running alone); it prefixes client ids.
    pub node_id: u16,
    /// Cluster mode: the NATS bus to the other nodes. `None` runs alone.
    pub cluster: Option<ClusterConfig>,
    /// Signs resume tokens instead of the data directory's own secret (cluster nodes
    /// share one, so a client resumes on any node).
    pub resume_secret: Option<Vec<u8>>,
    /// Serve HTTPS and `wss://` with this certificate and key; `None` serves plain
    /// HTTP.
    pub tls: Option<TlsConfig>,
    /// POST room events to these receivers; `None` sends none.
    pub webhooks: Option<crate::webhooks::WebhookConfig>,
}

/// Where the TLS certificate chain and its private key are (PEM files, read again on
/// SIGHUP and when they change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf certificate.
    pub key: PathBuf,
}

/// How a node reaches the other nodes of its cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// How to reach and log in to NATS.
    pub nats: NatsConfig,
    /// The key every bus message is authenticated with (derived from the cluster
    /// secret, the same on every node).
    pub bus_key: BusKey,
    /// How long a node gathers the other nodes' entries of a room before sending the
    /// room's first snapshot (and the longest a REST read waits for them).
    pub sync_timeout: Duration,
    /// A node silent on the bus for this long is taken for dead: the other nodes drop
    /// its entries.
    pub node_timeout: Duration,
}

/// The cluster's bus key. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct BusKey(pub [u8; 32]);

impl std::fmt::Debug for BusKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusKey(..)")
    }
}

/// The NATS servers and the credentials to use with them. Its `Debug` shows no
/// secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URLs (`nats://` or `tls://`), as given: they may carry `user:password@`
    /// or `token@`.
    pub servers: Vec<String>,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<String>,
    /// Authentication token.
    pub token: Option<String>,
    /// A credentials file (user JWT and nkey seed).
    pub creds: Option<PathBuf>,
    /// CA certificates (PEM) to trust for the NATS servers' TLS certificates.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) to present to NATS, with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("servers", &redacted(&self.servers).join(","))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| ".."))
            .field("token", &self.token.as_ref().map(|_| ".."))
            .field("creds", &self.creds)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

/// What to do when the data directory cannot be opened (sled refuses it, or a record
/// in the middle of the log is unreadable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CorruptDataPolicy {
    /// Say why and exit non-zero.
    #[default]
    Fail,
    /// Rename the directory to `<dir>.corrupt-<unix ms>`, log an error, start empty.
    MoveAside,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("./rollcall-data"),
            durability: Durability::Flush,
            layout: Layout::PerGroup,
            commit_delay: Duration::from_millis(DEFAULT_COMMIT_DELAY_MS),
            fanout_interval: Duration::from_millis(DEFAULT_FANOUT_INTERVAL_MS),
            recovery: Recovery::Strict,
            limits: Limits::default(),
            tick: Duration::from_millis(DEFAULT_TICK_MS),
            connections: ConnectionLimits::default(),
            ping_interval: Duration::from_secs(DEFAULT_PING_INTERVAL_SECS),
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
            drain_timeout: Duration::from_secs(DEFAULT_DRAIN_TIMEOUT_SECS),
            slow_consumer_timeout: Duration::from_secs(DEFAULT_SLOW_CONSUMER_TIMEOUT_SECS),
            requests_per_second: crate::limits::DEFAULT_REQUESTS_PER_SECOND,
            control_frames_per_second: crate::limits::DEFAULT_CONTROL_FRAMES_PER_SECOND,
            auth: None,
            allowed_origins: Vec::new(),
            on_corrupt_data: CorruptDataPolicy::Fail,
            node_id: 0,
            cluster: None,
            resume_secret: None,
            tls: None,
            webhooks: None,
        }
    }
}

/// `url` with any credentials replaced by `***`, for messages.
pub(crate) fn redact_one(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_owned(),
        },
    }
}

/// The URLs with their credentials replaced by `***`.
pub(crate) fn redacted(servers: &[String]) -> Vec<String> {
    servers.iter().map(|s| redact_one(s)).collect()
}
