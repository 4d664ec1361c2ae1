//! Command-line flags (each also an environment variable `ROLLCALL_*`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rollcall_engine::{Durability, Layout, Recovery};

use std::sync::Arc;

use rollcall_engine::UnixMs;

use crate::auth::{self, Auth, Claims, RoomClaims};
use crate::config::{ClusterConfig, CorruptDataPolicy, ServerConfig};
use crate::limits::Limits;
use crate::listener::ConnectionLimits;

/// Rollcall: a presence server. Clients heartbeat ephemeral state into rooms with a
/// TTL; entries vanish when heartbeats stop.
#[derive(Debug, Parser)]
#[command(name = "rollcall", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Mint a JWT for local testing (prints it on stdout).
    Token(TokenArgs),
}

/// `rollcall token` flags.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// HS256: the same secret file the server uses (--auth-secret-file).
    #[arg(
        long,
        conflicts_with = "private_key",
        required_unless_present = "private_key"
    )]
    pub secret_file: Option<PathBuf>,
    /// ES256/RS256: a PEM private key matching the server's --auth-public-key.
    #[arg(long)]
    pub private_key: Option<PathBuf>,
    /// The user (`sub`), which becomes the userId of this client's entries.
    #[arg(long)]
    pub sub: String,
    /// Room pattern the token may read (subscribe); repeatable, `*` is a wildcard.
    #[arg(long = "read")]
    pub read: Vec<String>,
    /// Room pattern the token may write (heartbeat, leave); repeatable.
    #[arg(long = "write")]
    pub write: Vec<String>,
    /// Allow the REST API's writes and listing.
    #[arg(long)]
    pub admin: bool,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 3_600)]
    pub ttl_secs: u64,
}

impl TokenArgs {
    /// Signs the token these flags describe.
    pub fn mint(&self) -> crate::Result<String> {
        let read = |path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| crate::Error::Config(format!("cannot read {}: {e}", path.display())))
        };
        let secret = self.secret_file.as_ref().map(read).transpose()?;
        let private_key = self.private_key.as_ref().map(read).transpose()?;
        let claims = Claims {
            sub: self.sub.clone(),
            exp: UnixMs::now().0 / 1_000 + self.ttl_secs,
            rooms: RoomClaims {
                read: self.read.clone(),
                write: self.write.clone(),
            },
            admin: self.admin,
        };
        auth::mint(&claims, secret.as_deref(), private_key.as_deref())
    }
}

/// `rollcall serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (HTTP and WebSocket). Port 0 picks a free port.
    #[arg(long, env = "ROLLCALL_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,

    /// Data directory of the embedded sled log.
    #[arg(long, env = "ROLLCALL_DATA", default_value = "./rollcall-data")]
    pub data: PathBuf,

    /// flush: an acknowledged write is on disk; buffered: flushed every
    /// --flush-interval-ms (a crash loses at most that window); memory: no log at all.
    #[arg(long, env = "ROLLCALL_DURABILITY", value_enum, default_value_t = DurabilityArg::Flush)]
    pub durability: DurabilityArg,

    /// Flush interval in buffered mode, in milliseconds.
    #[arg(long, env = "ROLLCALL_FLUSH_INTERVAL_MS", default_value_t = 100)]
    pub flush_interval_ms: u64,

    /// Group commit pacing: the shortest time between two log writes, in
    /// milliseconds. Under load everything appended meanwhile is written and flushed
    /// together; a write after a quiet spell goes at once.
    #[arg(long, env = "ROLLCALL_COMMIT_DELAY_MS", default_value_t = 10)]
    pub commit_delay_ms: u64,

    /// Log record layout: one record per commit group, or one per event.
    #[arg(long, env = "ROLLCALL_LOG_LAYOUT", value_enum, default_value_t = LayoutArg::Group)]
    pub log_layout: LayoutArg,

    /// What to do with an unreadable record in the middle of the log, or with writes
    /// that had been made durable and are missing (damage sled's crash recovery read
    /// as a torn tail): refuse to start (strict) or start without them and report the
    /// loss (skip-corrupt).
    #[arg(long, env = "ROLLCALL_RECOVERY", value_enum, default_value_t = RecoveryArg::Strict)]
    pub recovery: RecoveryArg,

    /// Sweep interval in milliseconds: an entry disappears within its TTL plus one tick.
    #[arg(long, env = "ROLLCALL_TICK_MS", default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub tick_ms: u64,

    /// Largest WebSocket message in bytes; larger ones close the connection with 1009.
    #[arg(long, env = "ROLLCALL_MAX_MESSAGE_BYTES", default_value_t = 65_536)]
    pub max_message_bytes: usize,

    /// Largest heartbeat `data`, in bytes of serialized JSON.
    #[arg(long, env = "ROLLCALL_MAX_DATA_BYTES", default_value_t = 4_096)]
    pub max_data_bytes: usize,

    /// Longest TTL a heartbeat may ask for, in milliseconds.
    #[arg(long, env = "ROLLCALL_MAX_TTL_MS", default_value_t = 3_600_000)]
    pub max_ttl_ms: u64,

    /// Rooms one connection may use at once (subscribed or holding its entry).
    #[arg(long, env = "ROLLCALL_MAX_ROOMS_PER_CONNECTION", default_value_t = 128)]
    pub max_rooms_per_connection: usize,

    /// Live entries one room may hold.
    #[arg(long, env = "ROLLCALL_MAX_ENTRIES_PER_ROOM", default_value_t = 10_000)]
    pub max_entries_per_room: usize,

    /// Sustained heartbeats per second per connection.
    #[arg(long, env = "ROLLCALL_HEARTBEAT_RATE", default_value_t = 120)]
    pub heartbeat_rate: u32,

    /// Heartbeats per connection allowed in a burst.
    #[arg(long, env = "ROLLCALL_HEARTBEAT_BURST", default_value_t = 240)]
    pub heartbeat_burst: u32,

    /// Milliseconds a new connection has to send `hello`.
    #[arg(long, env = "ROLLCALL_HELLO_TIMEOUT_MS", default_value_t = 10_000)]
    pub hello_timeout_ms: u64,

    /// Seconds between pings to a quiet client.
    #[arg(long, env = "ROLLCALL_PING_INTERVAL_SECS", default_value_t = 20)]
    pub ping_interval_secs: u64,

    /// Seconds of silence (no message, no pong) after which a client is closed.
    #[arg(long, env = "ROLLCALL_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,

    /// Open connections (HTTP and WebSocket) at most; more are refused at accept.
    #[arg(long, env = "ROLLCALL_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Open connections per client IP address at most.
    #[arg(
        long,
        env = "ROLLCALL_MAX_CONNECTIONS_PER_IP",
        default_value_t = 10_000
    )]
    pub max_connections_per_ip: usize,

    /// Milliseconds a client has to send its HTTP request head (or upgrade request).
    #[arg(long, env = "ROLLCALL_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// Largest HTTP request head in bytes (larger ones are answered 431).
    #[arg(long, env = "ROLLCALL_MAX_HEADER_BYTES", default_value_t = 65_536)]
    pub max_header_bytes: usize,

    /// Seconds shutdown waits for sessions to close before flushing anyway.
    #[arg(long, env = "ROLLCALL_DRAIN_TIMEOUT_SECS", default_value_t = 10)]
    pub drain_timeout_secs: u64,

    /// Seconds a client's socket may accept nothing before it is closed (4005).
    #[arg(
        long,
        env = "ROLLCALL_SLOW_CONSUMER_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub slow_consumer_timeout_secs: u64,

    /// Requests other than heartbeats per second per connection (burst twice that).
    #[arg(long, env = "ROLLCALL_REQUEST_RATE", default_value_t = 100)]
    pub request_rate: u32,

    /// WebSocket pings/pongs per second per connection (burst twice that); a flood
    /// closes the connection (4006).
    #[arg(long, env = "ROLLCALL_CONTROL_FRAME_RATE", default_value_t = 10)]
    pub control_frame_rate: u32,

    /// Turn auth on with an HS256 secret (a file of at least 32 random bytes).
    #[arg(
        long,
        env = "ROLLCALL_AUTH_SECRET_FILE",
        conflicts_with = "auth_public_key"
    )]
    pub auth_secret_file: Option<PathBuf>,

    /// Turn auth on with an ES256 (P-256) or RS256 public key (PEM file).
    #[arg(long, env = "ROLLCALL_AUTH_PUBLIC_KEY")]
    pub auth_public_key: Option<PathBuf>,

    /// Browser origin allowed to open WebSockets, e.g. https://app.example.com
    /// (repeatable, or comma-separated in the env var). Without any, every origin is
    /// allowed; the server's own pages always are.
    #[arg(
        long = "allowed-origin",
        env = "ROLLCALL_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// A data directory that cannot be opened: fail (exit non-zero) or move-aside
    /// (rename it, log an error, start empty; presence is soft state).
    #[arg(long, env = "ROLLCALL_ON_CORRUPT_DATA", value_enum, default_value_t = CorruptDataArg::Fail)]
    pub on_corrupt_data: CorruptDataArg,

    /// Join a cluster through this NATS server, e.g. nats://127.0.0.1:4222. Without
    /// it the server runs alone.
    #[arg(long, env = "ROLLCALL_NATS", requires = "node_id")]
    pub nats: Option<String>,

    /// This node's id in the cluster, 1 to 8191, unique per node: it prefixes the
    /// node's client ids.
    #[arg(long, env = "ROLLCALL_NODE_ID", value_parser = clap::value_parser!(u16).range(1..=8191))]
    pub node_id: Option<u16>,

    /// Milliseconds a node waits for the other nodes' entries of a room before it
    /// sends that room's first snapshot.
    #[arg(long, env = "ROLLCALL_CLUSTER_SYNC_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub cluster_sync_ms: u64,

    /// Resume tokens are signed with this secret (a file of at least 32 random bytes)
    /// instead of one kept in the data directory: give every node of a cluster the
    /// same file and a client resumes on any node.
    #[arg(long, env = "ROLLCALL_RESUME_SECRET_FILE")]
    pub resume_secret_file: Option<PathBuf>,

    /// Log filter, e.g. `info` or `rollcall_server=debug`.
    #[arg(long, env = "ROLLCALL_LOG", default_value = "info")]
    pub log: String,
}

/// `--durability` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// Acknowledge after the log is flushed to disk.
    Flush,
    /// Flush every --flush-interval-ms.
    Buffered,
    /// Keep no log.
    Memory,
}

/// `--on-corrupt-data` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CorruptDataArg {
    /// Exit with a clear message.
    Fail,
    /// Move the directory aside and start empty.
    MoveAside,
}

/// `--log-layout` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// One record per commit group.
    Group,
    /// One record per event.
    Event,
}

/// `--recovery` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RecoveryArg {
    /// Refuse to start on a corrupt record or lost durable writes.
    Strict,
    /// Delete corrupt records, report lost writes, and start.
    SkipCorrupt,
}

impl ServeArgs {
    /// The server configuration these flags describe (reads the auth key files).
    pub fn config(&self) -> crate::Result<ServerConfig> {
        let auth = match (&self.auth_secret_file, &self.auth_public_key) {
            (Some(path), _) => Some(Arc::new(Auth::from_secret_file(path)?)),
            (None, Some(path)) => Some(Arc::new(Auth::from_public_key_file(path)?)),
            (None, None) => None,
        };
        Ok(ServerConfig {
            data_dir: self.data.clone(),
            durability: match self.durability {
                DurabilityArg::Flush => Durability::Flush,
                DurabilityArg::Buffered => {
                    Durability::Buffered(Duration::from_millis(self.flush_interval_ms.max(1)))
                }
                DurabilityArg::Memory => Durability::Memory,
            },
            commit_delay: Duration::from_millis(self.commit_delay_ms),
            layout: match self.log_layout {
                LayoutArg::Group => Layout::PerGroup,
                LayoutArg::Event => Layout::PerEvent,
            },
            recovery: match self.recovery {
                RecoveryArg::Strict => Recovery::Strict,
                RecoveryArg::SkipCorrupt => Recovery::SkipCorrupt,
            },
            limits: Limits {
                max_message_bytes: self.max_message_bytes,
                max_data_bytes: self.max_data_bytes,
                max_ttl_ms: self.max_ttl_ms,
                max_rooms_per_connection: self.max_rooms_per_connection,
                max_entries_per_room: self.max_entries_per_room,
                heartbeats_per_second: self.heartbeat_rate,
                heartbeat_burst: self.heartbeat_burst,
                hello_timeout: Duration::from_millis(self.hello_timeout_ms),
                ..Limits::default()
            },
            tick: Duration::from_millis(self.tick_ms),
            connections: ConnectionLimits {
                max_connections: self.max_connections,
                max_per_ip: self.max_connections_per_ip,
                header_timeout: Duration::from_millis(self.header_timeout_ms),
                max_header_bytes: self.max_header_bytes,
            },
            ping_interval: Duration::from_secs(self.ping_interval_secs.max(1)),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs.max(1)),
            drain_timeout: Duration::from_secs(self.drain_timeout_secs),
            slow_consumer_timeout: Duration::from_secs(self.slow_consumer_timeout_secs.max(1)),
            requests_per_second: self.request_rate.max(1),
            control_frames_per_second: self.control_frame_rate.max(1),
            auth,
            allowed_origins: self
                .allowed_origins
                .iter()
                .map(|o| o.trim().to_owned())
                .collect(),
            on_corrupt_data: match self.on_corrupt_data {
                CorruptDataArg::Fail => CorruptDataPolicy::Fail,
                CorruptDataArg::MoveAside => CorruptDataPolicy::MoveAside,
            },
            node_id: self.node_id.unwrap_or(0),
            cluster: self.nats.as_ref().map(|url| ClusterConfig {
                nats_url: url.clone(),
                sync_timeout: Duration::from_millis(self.cluster_sync_ms),
            }),
            resume_secret: self
                .resume_secret_file
                .as_deref()
                .map(|path| crate::config::read_secret_file(path, "resume secret"))
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_spec() {
        let cli = Cli::try_parse_from(["rollcall", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve parses as serve");
        };
        assert_eq!(args.listen.to_string(), "127.0.0.1:7700");
        assert_eq!(args.data, PathBuf::from("./rollcall-data"));
        let config = args.config().unwrap();
        assert!(config.auth.is_none());
        assert_eq!(config.durability, Durability::Flush);
        assert_eq!(config.limits, Limits::default());
        assert!(config.tick <= Duration::from_millis(50));
    }
}
