//! Webhooks: the server POSTs batches of room events to `--webhook-url`s.
//!
//! Events are emitted where the room counts change (`listing::RoomCounts`, under the
//! hub lock, so in the hub's order) into one bounded queue per URL, never blocking:
//! a full queue drops the event and counts it. One task per URL sends its queue in
//! batches, one batch at a time, retrying a failed batch with backoff before the next,
//! so every receiver gets each room's events in order, at least once.
//!
//! Each POST carries `X-Rollcall-Timestamp` (Unix milliseconds) and
//! `X-Rollcall-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
//!
//! Events: `room.occupied` / `room.vacated` (a room's first entry appears / its last
//! goes), `user.joined` / `user.left` (a user's first entry in the room appears / its
//! last goes, across the user's tabs; from the per-user counts of
//! `listing::RoomCounts`) and `entry.joined` / `entry.left` (one client's entry).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use rollcall_engine::{Change, ChangeKind, UnixMs};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::shutdown::Shutdown;

/// Events waiting for one receiver at most; past that, new events are dropped.
pub const QUEUE_CAPACITY: usize = 10_000;
/// Events per POST at most.
const BATCH: usize = 100;
/// How long a batch waits for more events once it has one.
const LINGER: Duration = Duration::from_millis(50);
/// One POST's deadline (connect, send, status line).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff between attempts of one batch: doubling from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Attempts of one batch before it is dropped (and counted): about 5 minutes.
const ATTEMPTS: u32 = 16;

/// Where and how to send webhooks.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Receivers, e.g. `http://127.0.0.1:9000/hooks`.
    pub urls: Vec<String>,
    /// The HMAC-SHA256 key.
    pub secret: Vec<u8>,
}

/// A receiver's address, from its URL.
#[derive(Clone, Debug)]
struct Target {
    url: String,
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!(
                "--webhook-url {url}: only http:// URLs are supported (send to an HTTPS \
                 endpoint through a local proxy)"
            )
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!(
                "--webhook-url {url}: needs a host (and no user info)"
            ));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            || authority.ends_with(']')
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Target {
            url: url.to_owned(),
            authority,
            path: path.to_owned(),
        })
    }
}

/// Checks every URL; the error names the bad one.
pub fn validate(urls: &[String]) -> Result<(), String> {
    urls.iter().try_for_each(|u| Target::parse(u).map(|_| ()))
}

/// Hands events to the senders; cheap to call under the hub lock.
#[derive(Debug)]
pub struct Sink {
    queues: Vec<mpsc::Sender<Arc<str>>>,
    next_id: AtomicU64,
    node: u16,
}

impl Sink {
    /// Emits the events a change of an entry makes: the entry's own;
    /// `room.occupied` / `room.vacated` when the room's count went from or to zero;
    /// `user.joined` / `user.left` when `user_edge` says the entry was its user's
    /// first / last in the room.
    pub(crate) fn change(&self, change: &Change, count_after: usize, user_edge: bool) {
        let entry = &change.entry;
        let client = Some(entry.client.0);
        let user = entry.user.as_deref();
        let room = &*change.room;
        match change.kind {
            ChangeKind::Insert => {
                if count_after == 1 {
                    self.emit("room.occupied", room, None, None, None);
                }
                if user_edge {
                    self.emit("user.joined", room, client, user, None);
                }
                self.emit("entry.joined", room, client, user, None);
            }
            ChangeKind::Update => {}
            ChangeKind::Leave | ChangeKind::Expire => {
                let reason = if change.kind == ChangeKind::Leave {
                    "leave"
                } else {
                    "expire"
                };
                self.emit("entry.left", room, client, user, Some(reason));
                if user_edge {
                    self.emit("user.left", room, client, user, Some(reason));
                }
                if count_after == 0 {
                    self.emit("room.vacated", room, None, None, None);
                }
            }
        }
    }

    /// Queues one event for every receiver (dropped, and counted, where full).
    pub fn emit(
        &self,
        kind: &str,
        room: &str,
        client: Option<u64>,
        user: Option<&str>,
        reason: Option<&str>,
    ) {
        let seq = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut event = serde_json::json!({
            "id": format!("{}-{}-{seq}", self.node, START.get_or_init(UnixMs::now).0),
            "type": kind,
            "room": room,
            "timestampMs": UnixMs::now().0,
        });
        if let Some(client) = client {
            event["clientId"] = client.into();
        }
        if let Some(user) = user {
            event["userId"] = user.into();
        }
        if let Some(reason) = reason {
            event["reason"] = reason.into();
        }
        let event: Arc<str> = event.to_string().into();
        for queue in &self.queues {
            if queue.try_send(event.clone()).is_err() {
                metrics::counter!("rollcall_webhook_events_dropped_total").increment(1);
            }
        }
    }
}

/// When this process started sending: event ids are unique across restarts.
static START: std::sync::OnceLock<UnixMs> = std::sync::OnceLock::new();

/// Starts one sender task per URL; returns the sink to emit into.
pub fn start(config: &WebhookConfig, node: u16, shutdown: &Shutdown) -> Result<Arc<Sink>, String> {
    START.get_or_init(UnixMs::now);
    let mut queues = Vec::new();
    for url in &config.urls {
        let target = Target::parse(url)?;
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        queues.push(tx);
        tokio::spawn(send_loop(
            target,
            config.secret.clone(),
            rx,
            shutdown.clone(),
        ));
    }
    Ok(Arc::new(Sink {
        queues,
        next_id: AtomicU64::new(0),
        node,
    }))
}

async fn send_loop(
    target: Target,
    secret: Vec<u8>,
    mut rx: mpsc::Receiver<Arc<str>>,
    mut shutdown: Shutdown,
) {
    let mut batch: Vec<Arc<str>> = Vec::with_capacity(BATCH);
    loop {
        // The first event of a batch, then whatever follows within the linger.
        let first = tokio::select! {
            event = rx.recv() => event,
            () = shutdown.recv() => None,
        };
        let Some(first) = first else { return };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(event)) => batch.push(event),
                _ => break,
            }
        }
        let mut body = String::from("{\"events\":[");
        for (i, event) in batch.drain(..).enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&event);
        }
        body.push_str("]}");
        let body = Bytes::from(body);
        let mut backoff = BACKOFF_FIRST;
        let mut attempt = 1;
        loop {
            match post(&target, &secret, body.clone()).await {
                Ok(()) => {
                    metrics::counter!("rollcall_webhook_batches_sent_total").increment(1);
                    break;
                }
                Err(problem) => {
                    metrics::counter!("rollcall_webhook_failures_total").increment(1);
                    if attempt >= ATTEMPTS {
                        tracing::error!(url = %target.url, %problem, "webhook batch dropped after {ATTEMPTS} attempts");
                        metrics::counter!("rollcall_webhook_batches_dropped_total").increment(1);
                        break;
                    }
                    tracing::warn!(url = %target.url, %problem, attempt, "webhook failed; retrying in {} ms", backoff.as_millis());
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.recv() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    attempt += 1;
                }
            }
        }
    }
}

/// The signature header's value for `body` sent at `timestamp`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let mut out = String::from("sha256=");
    for byte in mac.finalize().into_bytes() {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

async fn post(target: &Target, secret: &[u8], body: Bytes) -> Result<(), String> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(&target.authority)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let timestamp = UnixMs::now().0;
        let request = hyper::Request::post(&target.path)
            .header(hyper::header::HOST, &target.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("rollcall/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-rollcall-timestamp", timestamp.to_string())
            .header("x-rollcall-signature", signature(secret, timestamp, &body))
            .body(http_body_util::Full::new(body))
            .map_err(|e| format!("bad request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", response.status()))
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(validate(&["http://127.0.0.1:9000/hooks".into()]).is_ok());
        assert!(validate(&["http://example.com".into()]).is_ok());
        assert!(validate(&["https://example.com/x".into()]).is_err());
        assert!(validate(&["http:///x".into()]).is_err());
        let target = Target::parse("http://example.com").unwrap();
        assert_eq!(target.authority, "example.com:80");
        assert_eq!(target.path, "/");
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // HMAC-SHA256("key", "1.{}") computed independently (Python's hmac module).
        assert_eq!(
            signature(b"key", 1, b"{}"),
            "sha256=1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
        );
        assert_ne!(signature(b"key", 1, b"{}"), signature(b"key", 2, b"{}"));
    }
}
