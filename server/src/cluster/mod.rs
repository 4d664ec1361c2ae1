//! Cluster mode: nodes share rooms through NATS.
//!
//! Each node owns the entries of its own clients: it logs them and publishes every
//! change of them on the room's subject, `rollcall.v1.room.<base64url(room)>`. A node
//! with subscribers in a room subscribes to that subject and folds the other nodes'
//! changes into its materializer without logging them. Before a room's first snapshot
//! the node asks every other node for its entries of the room (a request on
//! `rollcall.v1.sync`, replies gathered until a deadline). A node that dies stops
//! refreshing its entries, so they expire everywhere by their own TTL: there is no
//! membership protocol. A node that (re)connects republishes its live entries and
//! resyncs its rooms.
//!
//! Every message carries the sending node's id and a sequence number that grows
//! across restarts (it starts from the clock), so a receiver can tell an old message
//! from a new one whatever path each took: sync replies and live changes race.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, Subscriber};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::StreamExt;
use hashbrown::HashMap;
use rollcall_engine::{Change, ChangeKind, ClientId, Entry, UnixMs};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub(crate) mod merge;

use crate::config::ClusterConfig;
use crate::metrics::Metrics;
use crate::protocol;
use crate::shutdown::Shutdown;

/// The subject every node answers sync requests on.
pub const SYNC_SUBJECT: &str = "rollcall.v1.sync";
/// Changes of this node's entries waiting for NATS; beyond it they are dropped
/// (and counted): the other nodes catch up at the next heartbeat or by TTL.
const QUEUE: usize = 65_536;

/// The subject of `room`'s changes. Room names may hold any character, subjects may
/// not: the name is base64url-encoded.
pub fn room_subject(room: &str) -> String {
    format!("rollcall.v1.room.{}", URL_SAFE_NO_PAD.encode(room))
}

/// A change of an owned entry, on its way to NATS.
#[derive(Debug)]
pub struct Outgoing {
    /// Its sequence number.
    pub seq: u64,
    /// The change.
    pub change: Change,
}

/// What the hub asks of the cluster task about rooms.
#[derive(Debug)]
pub enum RoomCommand {
    /// A room got its first local subscriber: follow it and sync it.
    Join {
        /// The room.
        room: Arc<str>,
        /// Tells this following of the room from earlier ones.
        generation: u64,
    },
    /// A room lost its last local subscriber: stop following it.
    Part {
        /// The room.
        room: Arc<str>,
    },
}

/// The hub's ends of the channels to the cluster tasks.
#[derive(Debug)]
pub struct Links {
    /// Changes to publish (bounded: the hub never waits for NATS).
    pub changes: mpsc::Sender<Outgoing>,
    /// Joins and parts (one per room with subscribers, so small).
    pub rooms: mpsc::UnboundedSender<RoomCommand>,
}

/// Whether the node is connected to NATS, for `/healthz`.
#[derive(Debug, Default)]
pub struct Status {
    connected: AtomicBool,
}

impl Status {
    /// Whether the node is connected to NATS now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// A change received from another node.
#[derive(Debug)]
pub struct RemoteChange {
    /// The node that owns the entry.
    pub node: u16,
    /// The message's sequence number on that node.
    pub seq: u64,
    /// The entry's client.
    pub client: ClientId,
    /// What happened.
    pub kind: RemoteKind,
}

/// What happened to a remote entry.
#[derive(Debug)]
pub enum RemoteKind {
    /// Created or refreshed.
    Upsert(Entry),
    /// The client left.
    Leave,
    /// The entry expired on its owner.
    Expire,
}

/// One node's answer to a sync request: its entries of the room as of `seq`.
#[derive(Debug)]
pub struct SyncReply {
    /// The answering node.
    pub node: u16,
    /// The last sequence number the node had used when it took the entries.
    pub seq: u64,
    /// Its live entries of the room.
    pub entries: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Upsert,
    Leave,
    Expire,
}

/// A present `data`, even `null` (a plain `Option` would read `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEntry<'a> {
    client_id: u64,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    expires_at_ms: Option<u64>,
    user_id: Option<String>,
}

impl WireEntry<'_> {
    fn into_entry(self) -> Option<Entry> {
        Some(Entry {
            client: ClientId::new(self.client_id)?,
            user: self.user_id.map(Into::into),
            data: Bytes::copy_from_slice(self.data?.get().as_bytes()),
            expires_at: UnixMs(self.expires_at_ms?),
        })
    }
}

// Not `#[serde(flatten)]` over `WireEntry`: flattening cannot carry a `RawValue`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireChange<'a> {
    node: u16,
    seq: u64,
    op: Op,
    client_id: u64,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    expires_at_ms: Option<u64>,
    user_id: Option<String>,
}

#[derive(Deserialize)]
struct WireReply<'a> {
    node: u16,
    seq: u64,
    #[serde(borrow)]
    entries: Vec<WireEntry<'a>>,
}

#[derive(Deserialize)]
struct WireRequest {
    node: u16,
    room: String,
}

/// `{"node":…,"seq":…,"op":…,…}`: a change of an owned entry.
pub fn encode_change(node: u16, seq: u64, change: &Change) -> Bytes {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(96 + change.entry.data.len());
    let _ = write!(out, "{{\"node\":{node},\"seq\":{seq},");
    match change.kind {
        ChangeKind::Insert | ChangeKind::Update => {
            out.push_str("\"op\":\"upsert\",");
            protocol::push_entry_fields(&mut out, &change.entry);
        }
        ChangeKind::Leave => {
            let _ = write!(out, "\"op\":\"leave\",\"clientId\":{}", change.entry.client);
        }
        ChangeKind::Expire => {
            let _ = write!(
                out,
                "\"op\":\"expire\",\"clientId\":{},\"expiresAtMs\":{}",
                change.entry.client, change.entry.expires_at.0
            );
        }
    }
    out.push('}');
    Bytes::from(out)
}

/// Decodes a change from another node; `None` if it is not one.
pub fn decode_change(payload: &[u8]) -> Option<RemoteChange> {
    let wire: WireChange<'_> = serde_json::from_slice(payload).ok()?;
    let client = ClientId::new(wire.client_id)?;
    let kind = match wire.op {
        Op::Upsert => RemoteKind::Upsert(
            WireEntry {
                client_id: wire.client_id,
                data: wire.data,
                expires_at_ms: wire.expires_at_ms,
                user_id: wire.user_id,
            }
            .into_entry()?,
        ),
        Op::Leave => RemoteKind::Leave,
        Op::Expire => RemoteKind::Expire,
    };
    Some(RemoteChange {
        node: wire.node,
        seq: wire.seq,
        client,
        kind,
    })
}

/// `{"node":…,"seq":…,"entries":[…]}`: an answer to a sync request.
pub fn encode_reply(node: u16, seq: u64, entries: &str) -> Bytes {
    Bytes::from(format!(
        "{{\"node\":{node},\"seq\":{seq},\"entries\":{entries}}}"
    ))
}

/// Decodes an answer to a sync request; `None` if it is not one.
pub fn decode_reply(payload: &[u8]) -> Option<SyncReply> {
    let wire: WireReply<'_> = serde_json::from_slice(payload).ok()?;
    Some(SyncReply {
        node: wire.node,
        seq: wire.seq,
        entries: wire
            .entries
            .into_iter()
            .filter_map(WireEntry::into_entry)
            .collect(),
    })
}

fn encode_request(node: u16, room: &str) -> Bytes {
    let mut out = format!("{{\"node\":{node},\"room\":");
    protocol::push_json_str(&mut out, room);
    out.push('}');
    Bytes::from(out)
}

/// Creates the channels between the hub and the cluster tasks.
pub fn links() -> (
    Links,
    mpsc::Receiver<Outgoing>,
    mpsc::UnboundedReceiver<RoomCommand>,
) {
    let (changes, changes_rx) = mpsc::channel(QUEUE);
    let (rooms, rooms_rx) = mpsc::unbounded_channel();
    (Links { changes, rooms }, changes_rx, rooms_rx)
}

/// The node's presence state, as the bus tasks use it (the hub is one). The bus
/// depends on this trait, not on the hub, so the hub can depend on the bus's types.
pub(crate) trait LocalState: Send + Sync + 'static {
    /// The server's metrics handles.
    fn metrics(&self) -> &Metrics;
    /// Every live entry this node owns, as upserts with fresh sequence numbers.
    fn owned_live(&self, now: UnixMs) -> Vec<Outgoing>;
    /// This node's own live entries of `room` as a JSON array, and the last sequence
    /// number it used.
    fn owned_entries(&self, room: &str, now: UnixMs) -> (u64, String);
    /// Folds a change another node published in `room`.
    fn apply_remote(&self, room: &Arc<str>, generation: u64, payload: &[u8], now: UnixMs);
    /// A sync of `room` begins.
    fn sync_started(&self, room: &str, generation: u64);
    /// Folds the other nodes' answers to a sync of `room`.
    fn sync_finished(
        &self,
        room: &Arc<str>,
        generation: u64,
        replies: Vec<SyncReply>,
        first: bool,
        now: UnixMs,
    );
}

/// Everything the cluster tasks share.
struct Node {
    id: u16,
    client: Client,
    hub: Arc<dyn LocalState>,
    sync_timeout: Duration,
    /// Bumped at every (re)connection: rooms resync when it changes.
    epoch: watch::Sender<u64>,
}

/// Connects to NATS (in the background: a node starts even when NATS is down) and
/// runs the cluster tasks until `shutdown`.
pub async fn start(
    hub: Arc<dyn LocalState>,
    config: &ClusterConfig,
    node: u16,
    changes: mpsc::Receiver<Outgoing>,
    rooms: mpsc::UnboundedReceiver<RoomCommand>,
    status: Arc<Status>,
    shutdown: Shutdown,
) -> crate::Result<JoinHandle<()>> {
    let (events_tx, events) = mpsc::unbounded_channel();
    let client = ConnectOptions::new()
        .name(format!("rollcall-node-{node}"))
        // A node never needs its own messages (nor its own sync requests).
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64).saturating_mul(100).min(2_000))
        })
        .subscription_capacity(65_536)
        .event_callback(move |event| {
            let events_tx = events_tx.clone();
            async move {
                let _ = events_tx.send(event);
            }
        })
        .connect(config.nats_url.as_str())
        .await
        .map_err(|e| {
            crate::Error::Config(format!("cannot use NATS at {}: {e}", config.nats_url))
        })?;
    let requests = client
        .subscribe(SYNC_SUBJECT)
        .await
        .map_err(|e| crate::Error::Config(format!("cannot subscribe to NATS: {e}")))?;
    tracing::info!(url = %config.nats_url, node, "cluster mode: connecting to NATS");
    let node = Arc::new(Node {
        id: node,
        client,
        hub,
        sync_timeout: config.sync_timeout,
        epoch: watch::channel(0).0,
    });
    let publisher = tokio::spawn(publish(node.clone(), changes));
    Ok(tokio::spawn(async move {
        run(node, requests, events, rooms, status, shutdown).await;
        publisher.abort();
    }))
}

async fn run(
    node: Arc<Node>,
    mut requests: Subscriber,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut rooms: mpsc::UnboundedReceiver<RoomCommand>,
    status: Arc<Status>,
    mut shutdown: Shutdown,
) {
    let mut following: HashMap<Arc<str>, JoinHandle<()>> = HashMap::new();
    let metrics = node.hub.metrics().clone();
    loop {
        tokio::select! {
            Some(event) = events.recv() => match event {
                Event::Connected => {
                    tracing::info!("cluster: connected to NATS; republishing and resyncing");
                    status.connected.store(true, Ordering::Release);
                    metrics.cluster_connected.set(1.0);
                    node.epoch.send_modify(|epoch| *epoch += 1);
                    tokio::spawn(republish(node.clone()));
                }
                Event::Disconnected => {
                    tracing::warn!("cluster: lost NATS; local rooms keep working, remote entries age out by TTL");
                    status.connected.store(false, Ordering::Release);
                    metrics.cluster_connected.set(0.0);
                }
                other => tracing::info!(event = %other, "cluster: NATS event"),
            },
            Some(request) = requests.next() => answer(&node, &request).await,
            Some(command) = rooms.recv() => match command {
                RoomCommand::Join { room, generation } => {
                    let task = tokio::spawn(follow(node.clone(), room.clone(), generation));
                    if let Some(old) = following.insert(room, task) {
                        old.abort();
                    }
                }
                RoomCommand::Part { room } => {
                    if let Some(task) = following.remove(&room) {
                        task.abort();
                    }
                }
            },
            () = shutdown.recv() => break,
        }
    }
    for (_, task) in following.drain() {
        task.abort();
    }
    // Hand what is queued to NATS, but never wait for a NATS that is gone.
    let _ = tokio::time::timeout(Duration::from_secs(1), node.client.flush()).await;
}

/// Publishes changes of owned entries, in the order the hub made them.
async fn publish(node: Arc<Node>, mut changes: mpsc::Receiver<Outgoing>) {
    let metrics = node.hub.metrics().clone();
    while let Some(Outgoing { seq, change }) = changes.recv().await {
        let payload = encode_change(node.id, seq, &change);
        match node
            .client
            .publish(room_subject(&change.room), payload)
            .await
        {
            Ok(()) => metrics.cluster_published.increment(1),
            Err(error) => {
                metrics.cluster_dropped.increment(1);
                tracing::debug!(%error, "cluster: publish failed");
            }
        }
    }
}

/// Publishes every live owned entry again: after a restart or a reconnection the
/// other nodes may have let them expire or missed changes.
async fn republish(node: Arc<Node>) {
    let owned = node.hub.owned_live(UnixMs::now());
    let count = owned.len();
    for Outgoing { seq, change } in owned {
        let payload = encode_change(node.id, seq, &change);
        if node
            .client
            .publish(room_subject(&change.room), payload)
            .await
            .is_err()
        {
            return;
        }
    }
    tracing::info!(entries = count, "cluster: republished live entries");
}

/// Answers another node's sync request with this node's entries of the room.
async fn answer(node: &Node, request: &async_nats::Message) {
    let Some(reply) = request.reply.clone() else {
        return;
    };
    let Ok(wire) = serde_json::from_slice::<WireRequest>(&request.payload) else {
        tracing::debug!("cluster: ignored a malformed sync request");
        return;
    };
    if wire.node == node.id {
        return;
    }
    let (seq, entries) = node.hub.owned_entries(&wire.room, UnixMs::now());
    let _ = node
        .client
        .publish(reply, encode_reply(node.id, seq, &entries))
        .await;
}

/// Follows one room: subscribes to its subject, syncs it, folds every change, and
/// syncs again after each reconnection.
async fn follow(node: Arc<Node>, room: Arc<str>, generation: u64) {
    let mut epoch = node.epoch.subscribe();
    epoch.borrow_and_update();
    let mut live = match node.client.subscribe(room_subject(&room)).await {
        Ok(live) => Some(live),
        Err(error) => {
            tracing::warn!(%error, %room, "cluster: cannot follow the room; serving local entries");
            None
        }
    };
    let mut first = true;
    loop {
        let replies = match &mut live {
            Some(live) => gather(&node, &room, generation, live).await,
            None => Vec::new(),
        };
        node.hub
            .sync_finished(&room, generation, replies, first, UnixMs::now());
        first = false;
        let Some(live) = &mut live else { return };
        loop {
            tokio::select! {
                message = live.next() => match message {
                    Some(message) => node.hub.apply_remote(&room, generation, &message.payload, UnixMs::now()),
                    None => return,
                },
                changed = epoch.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

/// Asks every other node for its entries of `room` and gathers the replies until the
/// deadline, folding live changes meanwhile.
async fn gather(
    node: &Node,
    room: &Arc<str>,
    generation: u64,
    live: &mut Subscriber,
) -> Vec<SyncReply> {
    node.hub.sync_started(room, generation);
    let deadline = tokio::time::Instant::now() + node.sync_timeout;
    let inbox = node.client.new_inbox();
    let setup = async {
        let replies = node.client.subscribe(inbox.clone()).await.ok()?;
        node.client
            .publish_with_reply(SYNC_SUBJECT, inbox, encode_request(node.id, room))
            .await
            .ok()?;
        Some(replies)
    };
    let Ok(Some(mut replies)) = tokio::time::timeout_at(deadline, setup).await else {
        return Vec::new();
    };
    let mut gathered = Vec::new();
    loop {
        tokio::select! {
            reply = replies.next() => match reply {
                Some(reply) => gathered.extend(decode_reply(&reply.payload)),
                None => break,
            },
            message = live.next() => match message {
                Some(message) => node.hub.apply_remote(room, generation, &message.payload, UnixMs::now()),
                None => break,
            },
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    let _ = replies.unsubscribe().await;
    gathered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(client: u64, data: &str) -> Entry {
        Entry {
            client: ClientId(client),
            user: Some("ana \"the\" admin".into()),
            data: Bytes::copy_from_slice(data.as_bytes()),
            expires_at: UnixMs(1_700_000_000_000),
        }
    }

    #[test]
    fn changes_round_trip() {
        for kind in [
            ChangeKind::Insert,
            ChangeKind::Update,
            ChangeKind::Leave,
            ChangeKind::Expire,
        ] {
            let change = Change {
                room: "doc/1".into(),
                kind,
                entry: entry(7, r#"{"x":1,"s":"é"}"#),
            };
            let null = Change {
                entry: entry(8, "null"),
                ..change.clone()
            };
            let decoded = decode_change(&encode_change(3, 43, &null)).unwrap();
            if let RemoteKind::Upsert(got) = decoded.kind {
                assert_eq!(got, null.entry, "a null value is a value");
            }
            let decoded = decode_change(&encode_change(3, 42, &change)).unwrap();
            assert_eq!(
                (decoded.node, decoded.seq, decoded.client),
                (3, 42, ClientId(7))
            );
            match (kind, decoded.kind) {
                (ChangeKind::Insert | ChangeKind::Update, RemoteKind::Upsert(got)) => {
                    assert_eq!(got, change.entry);
                }
                (ChangeKind::Leave, RemoteKind::Leave)
                | (ChangeKind::Expire, RemoteKind::Expire) => {}
                (kind, got) => panic!("{kind:?} decoded as {got:?}"),
            }
        }
    }

    #[test]
    fn replies_round_trip_and_junk_is_refused() {
        let entries = protocol::entries_json([&entry(1, "[1]"), &entry(2, "null")]);
        let reply = decode_reply(&encode_reply(2, 9, &entries)).unwrap();
        assert_eq!((reply.node, reply.seq), (2, 9));
        assert_eq!(reply.entries, vec![entry(1, "[1]"), entry(2, "null")]);
        for junk in [
            &b""[..],
            b"{}",
            b"[1]",
            b"{\"node\":1,\"seq\":2,\"op\":\"upsert\",\"clientId\":0}",
        ] {
            assert!(decode_change(junk).is_none());
            assert!(decode_reply(junk).is_none());
        }
    }

    #[test]
    fn subjects_hold_any_room_name() {
        let subject = room_subject("a.b *>/ é");
        assert!(subject.starts_with("rollcall.v1.room."));
        let token = &subject["rollcall.v1.room.".len()..];
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(room_subject("a"), room_subject("b"));
    }
}
