//! What the `serve` flags describe: the listen addresses and the [`ServerConfig`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rollcall_engine::{Durability, Layout, Recovery};

use super::{CorruptDataArg, DurabilityArg, LayoutArg, RecoveryArg, ServeArgs};
use crate::auth::Auth;
use crate::config::{ClusterConfig, CorruptDataPolicy, NatsConfig, ServerConfig, TlsConfig};
use crate::limits::Limits;
use crate::listener::ConnectionLimits;

/// Resolves a `--listen` value (`IP:port` or `host:port`) to the addresses it names,
/// IPv4 first.
pub fn resolve_listen(listen: &str) -> crate::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs as _;
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    if listen
        .rsplit_once(':')
        .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(crate::Error::Config(format!(
            "--listen {listen}: expected HOST:PORT or IP:PORT, e.g. 127.0.0.1:7700 or localhost:7700"
        )));
    }
    let mut addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| {
            crate::Error::Config(format!(
                "--listen {listen}: cannot resolve the host name: {e}"
            ))
        })?
        .collect();
    addrs.sort_by_key(SocketAddr::is_ipv6);
    addrs.dedup();
    if addrs.is_empty() {
        return Err(crate::Error::Config(format!(
            "--listen {listen}: the host name resolves to no address"
        )));
    }
    Ok(addrs)
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
            fanout_interval: Duration::from_millis(self.fanout_interval_ms),
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
                body_timeout: Duration::from_millis(self.body_timeout_ms),
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
            cluster: self.cluster()?,
            resume_secret: self
                .resume_secret_file
                .as_deref()
                .map(|path| crate::config::read_secret_file(path, "resume secret"))
                .transpose()?,
            webhooks: if self.webhook_urls.is_empty() {
                None
            } else {
                crate::webhooks::validate(&self.webhook_urls).map_err(crate::Error::Config)?;
                let path = self.webhook_secret_file.as_deref().ok_or_else(|| {
                    crate::Error::Config("--webhook-url needs --webhook-secret-file".into())
                })?;
                Some(crate::webhooks::WebhookConfig {
                    urls: self.webhook_urls.clone(),
                    secret: crate::config::read_secret_file(path, "webhook secret")?,
                })
            },
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsConfig {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
        })
    }
}

impl ServeArgs {
    /// Cluster mode's settings, if `--nats` is given (reads the cluster secret).
    fn cluster(&self) -> crate::Result<Option<ClusterConfig>> {
        if self.nats.is_empty() {
            return Ok(None);
        }
        let (path, what) = match (&self.cluster_secret_file, &self.resume_secret_file) {
            (Some(path), _) => (path, "cluster secret"),
            (None, Some(path)) => (path, "resume secret"),
            (None, None) => {
                return Err(crate::Error::Config(
                    "cluster mode needs a secret shared by every node, so that nobody else \
                     can write to the bus: give every node the same --cluster-secret-file \
                     (at least 32 random bytes, e.g. `head -c 32 /dev/urandom > cluster.key`)"
                        .into(),
                ));
            }
        };
        let secret = crate::config::read_secret_file(path, what)?;
        let nats = NatsConfig {
            servers: self.nats.iter().map(|s| s.trim().to_owned()).collect(),
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            token: self.nats_token.clone(),
            creds: self.nats_creds.clone(),
            tls_ca: self.nats_tls_ca.clone(),
            tls_cert: self.nats_tls_cert.clone(),
            tls_key: self.nats_tls_key.clone(),
        };
        crate::cluster::nats::resolve(&nats).map_err(crate::Error::Config)?;
        Ok(Some(ClusterConfig {
            nats,
            bus_key: crate::cluster::bus::key(&secret),
            sync_timeout: Duration::from_millis(self.cluster_sync_ms),
            node_timeout: Duration::from_millis(self.node_timeout_ms),
        }))
    }
}
