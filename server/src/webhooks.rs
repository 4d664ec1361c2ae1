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
//!
//! In a cluster, a room's events are sent by its owner only (`cluster::owner`), from
//! its cluster-wide view of the room. The room's backup keeps the events it would
//! have sent for the node timeout and a margin, and sends them when it becomes the
//! owner: the dead owner may not have delivered them.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use rollcall_engine::{Change, ChangeKind, UnixMs};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::cluster::owner::{Live, Members, Takeover};
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
/// Cluster mode: past the node timeout, how long a backup keeps the events it would
/// have sent (the owner's last batch may not have gone out when it died).
const KEEP_MARGIN: Duration = Duration::from_secs(2);

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
    /// Cluster mode: who owns which room's events.
    cluster: OnceLock<Owners>,
}

/// Cluster mode: the live nodes, and the events this node keeps as a backup.
#[derive(Debug)]
struct Owners {
    members: Arc<Members>,
    keep_for: Duration,
    kept: Mutex<VecDeque<Kept>>,
}

/// An event a backup kept.
#[derive(Debug)]
struct Kept {
    at: Instant,
    event: Event,
}

/// One event, before it gets its id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    kind: &'static str,
    room: Arc<str>,
    client: Option<u64>,
    user: Option<Arc<str>>,
    reason: Option<&'static str>,
    timestamp: u64,
}

/// What this node does with a room's events.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// Sends them: it owns the room (or is alone).
    Send,
    /// Keeps them for a while: it backs the room up.
    Keep,
    /// Neither.
    Drop,
}

impl Sink {
    /// Cluster mode: sends only the events of the rooms this node owns among
    /// `members`, and keeps those of the rooms it backs up for `node_timeout` and a
    /// margin. Call once, before the first event.
    pub fn send_for(self: &Arc<Self>, members: &Arc<Members>, node_timeout: Duration) {
        let owners = Owners {
            members: members.clone(),
            keep_for: node_timeout + KEEP_MARGIN,
            kept: Mutex::new(VecDeque::new()),
        };
        if self.cluster.set(owners).is_ok() {
            members.on_change(self.clone());
        }
    }

    /// Emits the events a change of an entry makes: the entry's own;
    /// `room.occupied` / `room.vacated` when the room's count went from or to zero;
    /// `user.joined` / `user.left` when `user_edge` says the entry was its user's
    /// first / last in the room.
    pub(crate) fn change(&self, change: &Change, count_after: usize, user_edge: bool) {
        let entry = &change.entry;
        let event = |kind: &'static str, with_entry: bool, reason: Option<&'static str>| Event {
            kind,
            room: change.room.clone(),
            client: with_entry.then_some(entry.client.0),
            user: if with_entry { entry.user.clone() } else { None },
            reason,
            timestamp: UnixMs::now().0,
        };
        let mut events = Vec::with_capacity(3);
        match change.kind {
            ChangeKind::Insert => {
                if count_after == 1 {
                    events.push(event("room.occupied", false, None));
                }
                if user_edge {
                    events.push(event("user.joined", true, None));
                }
                events.push(event("entry.joined", true, None));
            }
            ChangeKind::Update => return,
            ChangeKind::Leave | ChangeKind::Expire => {
                let reason = if change.kind == ChangeKind::Leave {
                    "leave"
                } else {
                    "expire"
                };
                events.push(event("entry.left", true, Some(reason)));
                if user_edge {
                    events.push(event("user.left", true, Some(reason)));
                }
                if count_after == 0 {
                    events.push(event("room.vacated", false, None));
                }
            }
        }
        let Some(owners) = self.cluster.get() else {
            for event in &events {
                self.send(event);
            }
            return;
        };
        // Under the members' lock: a change of owner (which sends what was kept) is
        // either wholly before these events or wholly after.
        owners.members.with_live(|live| {
            let route = match live.place(&change.room) {
                Some(0) => Route::Send,
                Some(_) => Route::Keep,
                None => Route::Drop,
            };
            match route {
                Route::Send => events.iter().for_each(|event| self.send(event)),
                Route::Keep => {
                    let now = Instant::now();
                    let mut kept = owners.kept.lock().unwrap_or_else(PoisonError::into_inner);
                    while kept
                        .front()
                        .is_some_and(|k| now.duration_since(k.at) > owners.keep_for)
                        || kept.len() >= QUEUE_CAPACITY
                    {
                        kept.pop_front();
                    }
                    kept.extend(events.into_iter().map(|event| Kept { at: now, event }));
                }
                Route::Drop => {}
            }
        });
    }

    /// Queues one event for every receiver (dropped, and counted, where full).
    fn send(&self, event: &Event) {
        let seq = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut json = serde_json::json!({
            "id": format!("{}-{}-{seq}", self.node, START.get_or_init(UnixMs::now).0),
            "type": event.kind,
            "room": &*event.room,
            "timestampMs": event.timestamp,
        });
        if let Some(client) = event.client {
            json["clientId"] = client.into();
        }
        if let Some(user) = &event.user {
            json["userId"] = (**user).into();
        }
        if let Some(reason) = event.reason {
            json["reason"] = reason.into();
        }
        let json: Arc<str> = json.to_string().into();
        for queue in &self.queues {
            if queue.try_send(json.clone()).is_err() {
                metrics::counter!("rollcall_webhook_events_dropped_total").increment(1);
            }
        }
    }
}

impl Takeover for Sink {
    /// Sends the kept events of the rooms this node now owns (their owner may have
    /// died before sending them), and forgets those of rooms it no longer backs up.
    fn members_changed(&self, live: &Live) {
        let Some(owners) = self.cluster.get() else {
            return;
        };
        let now = Instant::now();
        let mut kept = owners.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let mut resent = 0u64;
        kept.retain(|k| {
            if now.duration_since(k.at) > owners.keep_for {
                return false;
            }
            if live.owns(&k.event.room) {
                self.send(&k.event);
                resent += 1;
                return false;
            }
            live.holds(&k.event.room)
        });
        if resent > 0 {
            metrics::counter!("rollcall_webhook_events_resent_total").increment(resent);
            tracing::info!(
                events = resent,
                "webhooks: now the owner of rooms whose owner left; sending their recent events again"
            );
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
        cluster: OnceLock::new(),
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

    fn change(room: &str, kind: ChangeKind) -> Change {
        Change {
            room: room.into(),
            kind,
            entry: rollcall_engine::Entry {
                client: rollcall_engine::ClientId(7),
                user: Some("alice".into()),
                data: Bytes::from_static(b"1"),
                expires_at: UnixMs(1),
            },
        }
    }

    fn types(rx: &mut mpsc::Receiver<Arc<str>>) -> Vec<(String, String)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|event| {
                let event: serde_json::Value = serde_json::from_str(&event).unwrap();
                (
                    event["type"].as_str().unwrap().to_owned(),
                    event["room"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn in_a_cluster_the_owner_sends_and_the_backup_sends_what_it_kept_when_it_takes_over() {
        let (tx, mut rx) = mpsc::channel(100);
        let sink = Arc::new(Sink {
            queues: vec![tx],
            next_id: AtomicU64::new(0),
            node: 1,
            cluster: OnceLock::new(),
        });
        let members = Arc::new(Members::new(1));
        members.set([2]);
        sink.send_for(&members, Duration::from_secs(60));
        let room_of = |owner: u16| {
            (0..10_000)
                .map(|i| format!("room-{i}"))
                .find(|r| crate::cluster::owner::ranked(r, &[1, 2], 1) == [owner])
                .unwrap()
        };
        let (mine, theirs) = (room_of(1), room_of(2));
        sink.change(&change(&mine, ChangeKind::Insert), 1, true);
        sink.change(&change(&theirs, ChangeKind::Insert), 1, true);
        let mine_joined = ["room.occupied", "user.joined", "entry.joined"]
            .map(|kind| (kind.to_owned(), mine.clone()));
        assert_eq!(types(&mut rx), mine_joined, "only the owned room's events");
        // Node 2 goes: node 1 owns its room now, and sends what node 2 may not have.
        members.set([]);
        let theirs_joined = ["room.occupied", "user.joined", "entry.joined"]
            .map(|kind| (kind.to_owned(), theirs.clone()));
        assert_eq!(types(&mut rx), theirs_joined);
        sink.change(&change(&theirs, ChangeKind::Leave), 0, true);
        let theirs_left = ["entry.left", "user.left", "room.vacated"]
            .map(|kind| (kind.to_owned(), theirs.clone()));
        assert_eq!(types(&mut rx), theirs_left);
        // Sent once: node 2 coming back and going again sends nothing more.
        members.set([2]);
        members.set([]);
        assert_eq!(types(&mut rx), Vec::new());
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
