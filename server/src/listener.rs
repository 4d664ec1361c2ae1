//! The accept loop: caps connections (in all and per IP), sets socket options, does
//! the TLS handshake when TLS is on, and serves each connection with hyper, upgrades
//! included.
//!
//! Written out rather than using `axum::serve` so that the limits that protect the
//! server sit before any byte is parsed: the connection caps, the time allowed to send
//! the request head, and the size of that head.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::shutdown::Shutdown;
use crate::tls::Tls;

/// Limits applied at accept time.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Open TCP connections (HTTP and WebSocket) at most.
    pub max_connections: usize,
    /// Open TCP connections per client IP at most.
    pub max_per_ip: usize,
    /// Time allowed to send the HTTP request head (including a WebSocket upgrade).
    pub header_timeout: Duration,
    /// Largest HTTP request head, in bytes.
    pub max_header_bytes: usize,
    /// Time allowed to send a REST request's body, once its head is in.
    pub body_timeout: Duration,
}

/// The default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// The default of `--max-connections-per-ip`.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 10_000;
/// The default of `--header-timeout-ms`.
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
/// The default of `--max-header-bytes`.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// The default of `--body-timeout-ms`.
pub const DEFAULT_BODY_TIMEOUT_MS: u64 = 10_000;

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            header_timeout: Duration::from_millis(DEFAULT_HEADER_TIMEOUT_MS),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            body_timeout: Duration::from_millis(DEFAULT_BODY_TIMEOUT_MS),
        }
    }
}

/// Held for as long as a connection (or the WebSocket session it became) is open.
#[derive(Debug)]
pub struct ConnectionGuard {
    _permit: OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
        metrics::gauge!("rollcall_tcp_connections").decrement(1.0);
    }
}

/// Accepts until `shutdown`, serving each connection on its own task (tracked by
/// `tasks`); with `tls`, each connection starts with a TLS handshake.
pub async fn accept_loop(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<Tls>,
    mut shutdown: Shutdown,
    tasks: TaskTracker,
) {
    let total = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let refused = metrics::counter!("rollcall_connections_refused_total");
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.recv() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = total.clone().try_acquire_owned() else {
            refused.increment(1);
            tracing::debug!(%peer, "refused: connection limit reached");
            continue;
        };
        let ip = peer.ip();
        {
            let mut counts = per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let count = counts.entry(ip).or_insert(0);
            if *count >= limits.max_per_ip {
                refused.increment(1);
                tracing::debug!(%peer, "refused: per-IP connection limit reached");
                continue;
            }
            *count += 1;
        }
        metrics::gauge!("rollcall_tcp_connections").increment(1.0);
        let guard = Arc::new(ConnectionGuard {
            _permit: permit,
            ip,
            per_ip: per_ip.clone(),
        });
        let router = router.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tasks.spawn(async move {
            // Frames are batched by the session writer; Nagle would only add latency.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
            match tls {
                None => serve_connection(stream, peer, router, guard, limits, shutdown).await,
                Some(tls) => {
                    let Some(stream) =
                        handshake(&tls, stream, peer, limits, shutdown.clone()).await
                    else {
                        return;
                    };
                    serve_connection(stream, peer, router, guard, limits, shutdown).await;
                }
            }
        });
    }
}

/// The TLS handshake, within the time allowed for a request head (a client that opens
/// a socket and says nothing is dropped just the same).
async fn handshake(
    tls: &Tls,
    stream: TcpStream,
    peer: SocketAddr,
    limits: ConnectionLimits,
    mut shutdown: Shutdown,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let accept = tokio::time::timeout(limits.header_timeout, tls.acceptor().accept(stream));
    tokio::select! {
        done = accept => match done {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        },
        () = shutdown.recv() => None,
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    guard: Arc<ConnectionGuard>,
    limits: ConnectionLimits,
    mut shutdown: Shutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(guard.clone());
        router.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8 * 1024));
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        }
        () = shutdown.recv() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
        }
    }
}
