//! Command-line flags (each also an environment variable `ROLLCALL_*`, and a key of
//! the `--config` file).
//!
//! Precedence: a flag beats its environment variable, which beats the config file,
//! which beats the default. The file's keys are the `serve` flags' own names, read
//! from the same definitions below, so the two cannot drift apart.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use rollcall_engine::UnixMs;

use crate::auth::{self, Claims, RoomClaims};
use crate::limits;
use crate::{config, listener};

mod file;
mod settings;

use file::file_flags;
pub use file::file_keys;
pub use settings::resolve_listen;

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
    /// ES256/RS256: a PEM private key matching the server's --auth-public-key: a P-256
    /// EC key (SEC1 `EC PRIVATE KEY` or PKCS#8 `PRIVATE KEY`) or an RSA key.
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
        auth::mint(&claims, secret.as_deref(), private_key.as_deref()).map_err(|e| {
            match (e, &self.private_key) {
                (crate::Error::Config(message), Some(path)) => {
                    crate::Error::Config(format!("{}: {message}", path.display()))
                }
                (e, _) => e,
            }
        })
    }
}

/// `rollcall serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML file of settings: each key is a flag's name without the dashes, e.g.
    /// `listen = "0.0.0.0:7700"`. Flags and environment variables override it.
    #[arg(long, env = "ROLLCALL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on (HTTP and WebSocket), an IP or a host name with a port,
    /// e.g. `0.0.0.0:7700` or `localhost:7700`. Port 0 picks a free port.
    #[arg(long, env = "ROLLCALL_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: String,

    /// Serve HTTPS and `wss://` with this certificate chain (PEM); needs --tls-key.
    /// Both files are read again on SIGHUP and when they change.
    #[arg(
        long,
        env = "ROLLCALL_TLS_CERT",
        requires = "tls_key",
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(
        long,
        env = "ROLLCALL_TLS_KEY",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    pub tls_key: Option<PathBuf>,

    /// Data directory of the embedded sled log. Created if missing (its parent must
    /// exist); an existing one must be empty or Rollcall's: another program's is refused
    /// untouched.
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
    #[arg(long, env = "ROLLCALL_COMMIT_DELAY_MS", default_value_t = config::DEFAULT_COMMIT_DELAY_MS)]
    pub commit_delay_ms: u64,

    /// Fan-out pacing, in milliseconds: a client averaging under one write per this
    /// interval (a burst of 16 after a quiet spell) is written to at once; a busier one
    /// gets one write per interval, gathering what arrived meanwhile. 0 turns pacing
    /// off.
    #[arg(long, env = "ROLLCALL_FANOUT_INTERVAL_MS", default_value_t = config::DEFAULT_FANOUT_INTERVAL_MS, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub fanout_interval_ms: u64,

    /// Log record layout: one record per commit group, or one per event.
    #[arg(long, env = "ROLLCALL_LOG_LAYOUT", value_enum, default_value_t = LayoutArg::Group)]
    pub log_layout: LayoutArg,

    /// What to do with an unreadable record in the middle of the log, or with writes
    /// that had been made durable and are missing (damage sled's crash recovery read
    /// as a torn tail): refuse to start (strict) or start without them and report the
    /// loss (skip-corrupt). It cannot help where sled itself cannot open its files (a
    /// damaged `conf`, a log it cannot parse, or a directory without the durability
    /// marker that sled reads as empty): only --on-corrupt-data=move-aside does.
    #[arg(long, env = "ROLLCALL_RECOVERY", value_enum, default_value_t = RecoveryArg::Strict)]
    pub recovery: RecoveryArg,

    /// Sweep interval in milliseconds: an entry disappears within its TTL plus one tick.
    #[arg(long, env = "ROLLCALL_TICK_MS", default_value_t = config::DEFAULT_TICK_MS, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub tick_ms: u64,

    /// Largest WebSocket message in bytes; larger ones close the connection with 1009.
    #[arg(long, env = "ROLLCALL_MAX_MESSAGE_BYTES", default_value_t = limits::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    /// Largest heartbeat `data`, in bytes of serialized JSON.
    #[arg(long, env = "ROLLCALL_MAX_DATA_BYTES", default_value_t = limits::DEFAULT_MAX_DATA_BYTES)]
    pub max_data_bytes: usize,

    /// Longest TTL a heartbeat may ask for, in milliseconds.
    #[arg(long, env = "ROLLCALL_MAX_TTL_MS", default_value_t = limits::DEFAULT_MAX_TTL_MS)]
    pub max_ttl_ms: u64,

    /// Rooms one connection may use at once (subscribed or holding its entry).
    #[arg(long, env = "ROLLCALL_MAX_ROOMS_PER_CONNECTION", default_value_t = limits::DEFAULT_MAX_ROOMS_PER_CONNECTION)]
    pub max_rooms_per_connection: usize,

    /// Live entries one room may hold.
    #[arg(long, env = "ROLLCALL_MAX_ENTRIES_PER_ROOM", default_value_t = limits::DEFAULT_MAX_ENTRIES_PER_ROOM)]
    pub max_entries_per_room: usize,

    /// Sustained heartbeats per second per connection.
    #[arg(long, env = "ROLLCALL_HEARTBEAT_RATE", default_value_t = limits::DEFAULT_HEARTBEATS_PER_SECOND)]
    pub heartbeat_rate: u32,

    /// Heartbeats per connection allowed in a burst.
    #[arg(long, env = "ROLLCALL_HEARTBEAT_BURST", default_value_t = limits::DEFAULT_HEARTBEAT_BURST)]
    pub heartbeat_burst: u32,

    /// Milliseconds a new connection has to send `hello`.
    #[arg(long, env = "ROLLCALL_HELLO_TIMEOUT_MS", default_value_t = limits::DEFAULT_HELLO_TIMEOUT_MS)]
    pub hello_timeout_ms: u64,

    /// Seconds between pings to a quiet client.
    #[arg(long, env = "ROLLCALL_PING_INTERVAL_SECS", default_value_t = config::DEFAULT_PING_INTERVAL_SECS)]
    pub ping_interval_secs: u64,

    /// Seconds of silence (no message, no pong) after which a client is closed.
    #[arg(long, env = "ROLLCALL_IDLE_TIMEOUT_SECS", default_value_t = config::DEFAULT_IDLE_TIMEOUT_SECS)]
    pub idle_timeout_secs: u64,

    /// Open connections (HTTP and WebSocket) at most; more are refused at accept.
    #[arg(long, env = "ROLLCALL_MAX_CONNECTIONS", default_value_t = listener::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Open connections per client IP address at most.
    #[arg(
        long,
        env = "ROLLCALL_MAX_CONNECTIONS_PER_IP",
        default_value_t = listener::DEFAULT_MAX_CONNECTIONS_PER_IP
    )]
    pub max_connections_per_ip: usize,

    /// Milliseconds a client has to send its HTTP request head (or upgrade request).
    #[arg(long, env = "ROLLCALL_HEADER_TIMEOUT_MS", default_value_t = listener::DEFAULT_HEADER_TIMEOUT_MS)]
    pub header_timeout_ms: u64,

    /// Milliseconds a client has to send a REST request's body once its head is in
    /// (a body still incomplete then is answered 408).
    #[arg(long, env = "ROLLCALL_BODY_TIMEOUT_MS", default_value_t = listener::DEFAULT_BODY_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_ms: u64,

    /// Largest HTTP request head in bytes (larger ones are answered 431).
    #[arg(long, env = "ROLLCALL_MAX_HEADER_BYTES", default_value_t = listener::DEFAULT_MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,

    /// Seconds shutdown waits for sessions to close before flushing anyway.
    #[arg(long, env = "ROLLCALL_DRAIN_TIMEOUT_SECS", default_value_t = config::DEFAULT_DRAIN_TIMEOUT_SECS)]
    pub drain_timeout_secs: u64,

    /// Seconds a client's socket may accept nothing before it is closed (4005).
    #[arg(
        long,
        env = "ROLLCALL_SLOW_CONSUMER_TIMEOUT_SECS",
        default_value_t = config::DEFAULT_SLOW_CONSUMER_TIMEOUT_SECS
    )]
    pub slow_consumer_timeout_secs: u64,

    /// Requests other than heartbeats per second per connection (burst twice that).
    #[arg(long, env = "ROLLCALL_REQUEST_RATE", default_value_t = limits::DEFAULT_REQUESTS_PER_SECOND)]
    pub request_rate: u32,

    /// WebSocket pings/pongs per second per connection (burst twice that); a flood
    /// closes the connection (4006).
    #[arg(long, env = "ROLLCALL_CONTROL_FRAME_RATE", default_value_t = limits::DEFAULT_CONTROL_FRAMES_PER_SECOND)]
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

    /// A data directory whose content is damaged: fail (exit non-zero) or move-aside
    /// (rename it to `<dir>.corrupt-<unix ms>`, log an error, start empty; presence is
    /// soft state). Only a directory recognised as Rollcall's is ever renamed; a
    /// permission problem, a file, or another program's directory always fails.
    #[arg(long, env = "ROLLCALL_ON_CORRUPT_DATA", value_enum, default_value_t = CorruptDataArg::Fail)]
    pub on_corrupt_data: CorruptDataArg,

    /// POST batches of room events (room.occupied, room.vacated, entry.joined,
    /// entry.left) to this http:// URL (repeatable, or comma-separated in the env var).
    /// Needs --webhook-secret-file.
    #[arg(
        long = "webhook-url",
        env = "ROLLCALL_WEBHOOK_URLS",
        value_delimiter = ',',
        requires = "webhook_secret_file"
    )]
    pub webhook_urls: Vec<String>,

    /// The key webhooks are signed with (HMAC-SHA256 over "<timestamp>.<body>"), from
    /// this file (its text, trimmed).
    #[arg(long, env = "ROLLCALL_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,

    /// Join a cluster through this NATS server, e.g. nats://127.0.0.1:4222 or
    /// tls://nats.internal:4222 (repeatable, or comma-separated, for several servers of
    /// one NATS cluster). A URL may carry `user:password@` or `token@`. Without it the
    /// server runs alone.
    #[arg(
        long,
        env = "ROLLCALL_NATS",
        requires = "node_id",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub nats: Vec<String>,

    /// NATS user name (with --nats-password).
    #[arg(long, env = "ROLLCALL_NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,

    /// NATS password of --nats-user. Prefer the environment variable or the config
    /// file to the flag: flags show in the process list.
    #[arg(
        long,
        env = "ROLLCALL_NATS_PASSWORD",
        requires = "nats_user",
        hide_env_values = true
    )]
    pub nats_password: Option<String>,

    /// NATS authentication token. Prefer the environment variable or the config file
    /// to the flag: flags show in the process list.
    #[arg(long, env = "ROLLCALL_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,

    /// NATS credentials file (user JWT and nkey seed, as `nsc` writes them).
    #[arg(long, env = "ROLLCALL_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,

    /// CA certificate(s) (PEM) that sign the NATS servers' certificates; turns TLS to
    /// NATS on.
    #[arg(long, env = "ROLLCALL_NATS_TLS_CA", value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) presented to NATS servers that verify clients; needs
    /// --nats-tls-key.
    #[arg(
        long,
        env = "ROLLCALL_NATS_TLS_CERT",
        requires = "nats_tls_key",
        value_name = "FILE"
    )]
    pub nats_tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --nats-tls-cert.
    #[arg(
        long,
        env = "ROLLCALL_NATS_TLS_KEY",
        requires = "nats_tls_cert",
        value_name = "FILE"
    )]
    pub nats_tls_key: Option<PathBuf>,

    /// The secret every node of the cluster shares (a file of at least 32 random
    /// bytes): every message on the bus carries a MAC under a key derived from it, and
    /// messages without a valid one are dropped. Defaults to --resume-secret-file; a
    /// cluster node refuses to start without either.
    #[arg(long, env = "ROLLCALL_CLUSTER_SECRET_FILE", value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,

    /// This node's id in the cluster, 1 to 8191, unique per node: it prefixes the
    /// node's client ids.
    #[arg(long, env = "ROLLCALL_NODE_ID", value_parser = clap::value_parser!(u16).range(1..=8191))]
    pub node_id: Option<u16>,

    /// Milliseconds a node waits for the other nodes' entries of a room before it
    /// sends that room's first snapshot (and the longest a REST read of a room waits
    /// for them).
    #[arg(long, env = "ROLLCALL_CLUSTER_SYNC_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub cluster_sync_ms: u64,

    /// Nodes announce themselves on the bus every second; a node silent for this many
    /// milliseconds is taken for dead and the other nodes drop its entries (they come
    /// back when it does).
    #[arg(long, env = "ROLLCALL_NODE_TIMEOUT_MS", default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(1_500..=60_000))]
    pub node_timeout_ms: u64,

    /// Resume tokens are signed with this secret (a file of at least 32 random bytes)
    /// instead of one kept in the data directory: give every node of a cluster the
    /// same file and a client resumes on any node.
    #[arg(long, env = "ROLLCALL_RESUME_SECRET_FILE")]
    pub resume_secret_file: Option<PathBuf>,

    /// Log filter, e.g. `info` or `rollcall_server=debug`.
    #[arg(long, env = "ROLLCALL_LOG", default_value = "info")]
    pub log: String,

    /// Log lines as text (coloured only when stderr is a terminal) or as JSON, one
    /// object per line.
    #[arg(long, env = "ROLLCALL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--log-format` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
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

/// Parses the command line (`std::env::args_os()` in `main`), reading the `serve`
/// subcommand's `--config` file (or `$ROLLCALL_CONFIG`) for every setting that no
/// flag and no environment variable gave.
///
/// Errors are clap's (print them with [`clap::Error::exit`]): a bad flag, a bad value,
/// an unreadable file, or an unknown key, naming the key and the file.
pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let command = Cli::command();
    let matches = command.clone().try_get_matches_from(&args)?;
    let Some(("serve", serve)) = matches.subcommand() else {
        return Cli::from_arg_matches(&matches);
    };
    let Some(file) = serve.get_one::<PathBuf>("config").cloned() else {
        return Cli::from_arg_matches(&matches);
    };
    let mut serve_command = command.clone();
    let serve_command = serve_command
        .find_subcommand_mut("serve")
        .expect("serve is a subcommand");
    let extra = file_flags(serve_command, serve, &file)?;
    if extra.is_empty() {
        return Cli::from_arg_matches(&matches);
    }
    // Flags from the file go after the user's own, which the check above left out.
    let mut with_file = args;
    with_file.extend(extra);
    let matches = command.try_get_matches_from(&with_file).map_err(|error| {
        clap::Error::raw(
            clap::error::ErrorKind::ValueValidation,
            format!(
                "in the config file {}: {}",
                file.display(),
                error.render().to_string().trim_start_matches("error: ")
            ),
        )
    })?;
    Cli::from_arg_matches(&matches)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use clap::CommandFactory;
    use rollcall_engine::Durability;

    use super::*;
    use crate::limits::Limits;

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
        assert_eq!(args.listen, "127.0.0.1:7700");
        assert_eq!(args.data, PathBuf::from("./rollcall-data"));
        let config = args.config().unwrap();
        assert!(config.auth.is_none());
        assert_eq!(config.durability, Durability::Flush);
        assert_eq!(config.limits, Limits::default());
        assert!(config.tick <= Duration::from_millis(50));
    }

    fn serve_args(cli: Cli) -> Box<ServeArgs> {
        match cli.command {
            Command::Serve(args) => args,
            Command::Token(_) => panic!("serve parses as serve"),
        }
    }

    #[test]
    fn the_config_file_fills_what_flags_leave_at_their_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rollcall.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:7000\"\nmax-connections = 5\nallowed-origin = [\"https://a.example\", \"https://b.example\"]\ndurability = \"buffered\"\n",
        )
        .unwrap();
        let cli = parse_from([
            "rollcall".as_ref(),
            "serve".as_ref(),
            "--listen".as_ref(),
            "127.0.0.1:9".as_ref(),
            "--config".as_ref(),
            file.as_os_str(),
        ])
        .unwrap();
        let args = serve_args(cli);
        assert_eq!(args.listen, "127.0.0.1:9", "the flag wins");
        assert_eq!(args.max_connections, 5, "the file beats the default");
        assert_eq!(args.durability, DurabilityArg::Buffered);
        assert_eq!(
            args.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(args.tick_ms, 25, "the default stays");
    }

    #[test]
    fn cluster_settings_come_from_the_config_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("cluster-secret");
        std::fs::write(&secret, "a cluster secret of at least thirty-two bytes").unwrap();
        let file = dir.path().join("rollcall.toml");
        std::fs::write(
            &file,
            format!(
                "nats = [\"tls://a.internal:4222\", \"tls://b.internal:4222\"]\nnode-id = 3\n\
                 nats-user = \"rollcall\"\nnats-password = \"pw\"\nnode-timeout-ms = 5000\n\
                 cluster-secret-file = {:?}\n",
                secret.display().to_string()
            ),
        )
        .unwrap();
        let cli = parse_from([
            "rollcall".as_ref(),
            "serve".as_ref(),
            "--config".as_ref(),
            file.as_os_str(),
        ])
        .unwrap();
        let config = serve_args(cli).config().unwrap();
        let cluster = config.cluster.expect("cluster mode");
        assert_eq!(
            cluster.nats.servers,
            ["tls://a.internal:4222", "tls://b.internal:4222"]
        );
        assert_eq!(cluster.nats.user.as_deref(), Some("rollcall"));
        assert_eq!(cluster.node_timeout, Duration::from_secs(5));
        assert_eq!(config.node_id, 3);
        assert!(!format!("{cluster:?}").contains("pw\""), "{cluster:?}");
        // Without any secret, cluster mode is refused.
        let cli = Cli::try_parse_from([
            "rollcall",
            "serve",
            "--nats",
            "nats://127.0.0.1:4222",
            "--node-id",
            "1",
        ])
        .unwrap();
        let error = serve_args(cli).config().unwrap_err().to_string();
        assert!(error.contains("--cluster-secret-file"), "{error}");
    }

    #[test]
    fn every_serve_flag_but_config_is_a_file_key() {
        let keys = file_keys();
        let command = Cli::command();
        let serve = command.find_subcommand("serve").unwrap();
        let flags = serve
            .get_arguments()
            .filter(|a| a.get_long().is_some())
            .count();
        assert_eq!(keys.len(), flags - 1);
        for key in ["listen", "data", "tls-cert", "log-format", "allowed-origin"] {
            assert!(keys.iter().any(|k| k == key), "{key}");
        }
        assert!(!keys.iter().any(|k| k == "config"));
    }

    #[test]
    fn listen_resolves_host_names_ipv4_first() {
        let addrs = resolve_listen("localhost:7700").unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 7700)
        );
        assert!(addrs.is_sorted_by_key(SocketAddr::is_ipv6));
        assert!(resolve_listen("7700").is_err());
        assert!(resolve_listen(":7700").is_err());
        assert_eq!(
            resolve_listen("[::1]:80").unwrap(),
            ["[::1]:80".parse::<SocketAddr>().unwrap()]
        );
    }
}
