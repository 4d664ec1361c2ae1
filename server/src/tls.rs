//! TLS: HTTPS and `wss://` straight from the server, with a certificate chain and key
//! read from PEM files, and read again on SIGHUP or when either file changes (so a
//! renewed certificate is picked up without a restart; open connections keep theirs).

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use crate::config::TlsConfig;
use crate::error::{Error, Result};
use crate::shutdown::Shutdown;

/// How often the certificate and key files are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// The server's TLS side: an acceptor whose certificate can be replaced while running.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<Current>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.current.config.cert)
            .field("key", &self.current.config.key)
            .finish_non_exhaustive()
    }
}

/// The certificate handed to new handshakes, and where it came from.
#[derive(Debug)]
struct Current {
    config: TlsConfig,
    key: RwLock<Arc<CertifiedKey>>,
    stamp: RwLock<Stamp>,
}

/// What the files looked like when last read: modification time and size of each.
type Stamp = [(Option<SystemTime>, u64); 2];

fn stamp(config: &TlsConfig) -> Stamp {
    let of =
        |path: &Path| std::fs::metadata(path).map_or((None, 0), |m| (m.modified().ok(), m.len()));
    [of(&config.cert), of(&config.key)]
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.key
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Reads and checks the certificate chain and key (the key must match the leaf).
fn load(config: &TlsConfig) -> Result<CertifiedKey> {
    let fail = |message: String| Error::Config(message);
    let cert_pem = std::fs::read(&config.cert).map_err(|e| {
        fail(format!(
            "cannot read the TLS certificate {}: {e}",
            config.cert.display()
        ))
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            fail(format!(
                "the TLS certificate {} is not valid PEM: {e}",
                config.cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(fail(format!(
            "the TLS certificate {} holds no CERTIFICATE block",
            config.cert.display()
        )));
    }
    let key_pem = std::fs::read(&config.key).map_err(|e| {
        fail(format!(
            "cannot read the TLS key {}: {e}",
            config.key.display()
        ))
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        fail(format!(
            "the TLS key {} holds no private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
            config.key.display()
        ))
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        fail(format!(
            "the TLS key {} does not fit the certificate {}: {e}",
            config.key.display(),
            config.cert.display()
        ))
    })
}

impl Tls {
    /// Reads the certificate and key; fails with a message naming the file at fault.
    pub fn load(config: &TlsConfig) -> Result<Tls> {
        let stamp = stamp(config);
        let key = load(config)?;
        let current = Arc::new(Current {
            config: config.clone(),
            key: RwLock::new(Arc::new(key)),
            stamp: RwLock::new(stamp),
        });
        let mut server = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // The server speaks HTTP/1.1 only (WebSocket upgrades are HTTP/1.1).
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            current,
        })
    }

    /// The acceptor for new connections.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the files again; on failure keeps the current certificate and says why.
    pub fn reload(&self) -> Result<()> {
        let stamp = stamp(&self.current.config);
        let key = load(&self.current.config)?;
        *self
            .current
            .key
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
        *self
            .current
            .stamp
            .write()
            .unwrap_or_else(PoisonError::into_inner) = stamp;
        Ok(())
    }

    /// Whether either file changed since it was last read.
    fn changed(&self) -> bool {
        let now = stamp(&self.current.config);
        now != *self
            .current
            .stamp
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn reload_logged(&self, why: &str) {
        match self.reload() {
            Ok(()) => tracing::info!(
                cert = %self.current.config.cert.display(),
                why,
                "reloaded the TLS certificate"
            ),
            Err(error) => {
                // Do not retry a half-written pair every tick: wait for the next change.
                *self
                    .current
                    .stamp
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = stamp(&self.current.config);
                tracing::error!(%error, why, "kept the current TLS certificate");
            }
        }
    }
}

/// Until `shutdown`: on SIGHUP, reloads the TLS certificate (if any; the only setting
/// read again), and every couple of seconds reloads it when its files changed.
///
/// Installing the handler also keeps SIGHUP (`systemctl reload`) from killing the
/// process.
pub async fn watch(tls: Option<Tls>, mut shutdown: Shutdown) {
    #[cfg(unix)]
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP");
            None
        }
    };
    let mut interval = tokio::time::interval(WATCH_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(hangup) => hangup.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<Option<()>>();
        tokio::select! {
            () = shutdown.recv() => return,
            _ = hup => match &tls {
                Some(tls) => tls.reload_logged("SIGHUP"),
                None => tracing::info!("SIGHUP: nothing to reload (only --tls-cert and --tls-key are read again)"),
            },
            _ = interval.tick(), if tls.is_some() => {
                if let Some(tls) = tls.as_ref().filter(|tls| tls.changed()) {
                    tls.reload_logged("the files changed");
                }
            }
        }
    }
}
