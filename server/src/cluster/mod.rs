//! Cluster mode: nodes share rooms through NATS.
//!
//! Each node owns the entries of its own clients: it logs them and publishes every
//! change of them on the room's subject, `rollcall.v1.room.<base64url(room)>`. A node
//! with subscribers in a room subscribes to that subject and folds the other nodes'
//! changes into its materializer without logging them. Before a room's first snapshot
//! the node asks every other node for its entries of the room (a request on
//! `rollcall.v1.sync`, replies gathered until every node known to be alive answered
//! or a deadline); a REST read of a room the node does not follow asks the same way.
//! A node that (re)connects republishes its live entries and resyncs its rooms.
//!
//! Every node announces itself on `rollcall.v1.nodes` every second; a node silent
//! for the node timeout is taken for dead and its entries are removed everywhere
//! (they come back when it does). A node cut off from NATS judges nobody.
//!
//! Every message is sealed with a MAC under the cluster's key ([`bus`]) and carries
//! its sender's clock: a message without a valid MAC, or too old, is dropped and
//! counted (`rollcall_cluster_rejected_total`). Changes from other nodes are held to
//! this node's limits (data size, TTL, room capacity) and a node may remove only
//! the entries it set or its own clients'.
//!
//! Every message carries the sending node's id and a sequence number that grows
//! across restarts (it starts from the clock), so a receiver can tell an old message
//! from a new one whatever path each took: sync replies and live changes race, and a
//! replayed message is older than what is known of its entry ([`merge`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, Event, Subscriber};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::StreamExt;
use hashbrown::{HashMap, HashSet};
use rollcall_engine::{Change, ChangeKind, ClientId, Entry, UnixMs};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub(crate) mod bus;
pub(crate) mod merge;
pub(crate) mod nats;
pub mod owner;

pub use bus::Reject;

use crate::config::{BusKey, ClusterConfig};
use crate::limits::Limits;
use crate::listing::RoomsPage;
use crate::metrics::Metrics;
use crate::protocol;
use crate::shutdown::Shutdown;

/// The subject every node answers sync requests on.
pub const SYNC_SUBJECT: &str = "rollcall.v1.sync";
/// The subject every node answers room-list requests on.
pub const ROOMS_SUBJECT: &str = "rollcall.v1.rooms";
/// The most rooms a room-list reply holds.
const MAX_ROOMS_PAGE: usize = 1_000;
/// The subject nodes announce themselves on.
pub const NODES_SUBJECT: &str = "rollcall.v1.nodes";
/// How often a node announces itself.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// After connecting, how long past one announcement period a node waits before it
/// trusts that it knows every live node.
const SETTLE_MARGIN: Duration = Duration::from_millis(250);
/// How often a node looks for silent nodes.
const CHECK_EVERY: Duration = Duration::from_millis(200);
/// Changes of this node's entries waiting for NATS; beyond it they are dropped
/// (and counted): the other nodes catch up at the next heartbeat or by TTL.
const QUEUE: usize = 65_536;
/// Broadcasts waiting for NATS; beyond it they are dropped (and counted).
const BROADCAST_QUEUE: usize = 4_096;
/// The subjects of every room's changes: with webhooks on, each node hears of every
/// room, to hold the rooms whose webhooks it owns or backs up.
const ROOMS_WILDCARD: &str = "rollcall.v1.room.*";
/// How often held rooms are checked: rooms no longer this node's, or empty for
/// longer than [`HOLD_EMPTY`], are released.
const HOLD_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a held room may stay empty before it is released.
const HOLD_EMPTY: Duration = Duration::from_secs(5);
/// Sync requests of one node may arrive out of order by this many (they are sent
/// by concurrent tasks); older ones are replays.
const REQUEST_WINDOW: u64 = u64::BITS as u64;

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

/// A local client's broadcast, on its way to the other nodes' subscribers of the room.
#[derive(Debug)]
pub struct OutgoingBroadcast {
    /// The room.
    pub room: Arc<str>,
    /// The sender.
    pub client: ClientId,
    /// The sender's user, if it has one.
    pub user: Option<Arc<str>>,
    /// The JSON value, verbatim (already checked against the limits).
    pub data: Bytes,
}

/// A broadcast received from another node.
#[derive(Debug)]
pub struct RemoteBroadcast {
    /// The sending node.
    pub node: u16,
    /// The message's sequence number on that node.
    pub seq: u64,
    /// The sender's clock when it sent it (the frame's `serverTimeMs`).
    pub ts: u64,
    /// The client that broadcast it.
    pub client: ClientId,
    /// Its user, if it has one.
    pub user: Option<String>,
    /// The JSON value, verbatim.
    pub data: String,
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
    /// Broadcasts to publish (bounded, like changes).
    pub broadcasts: mpsc::Sender<OutgoingBroadcast>,
}

/// The cluster tasks' ends of the channels from the hub.
#[derive(Debug)]
pub struct Queues {
    /// Changes to publish.
    pub changes: mpsc::Receiver<Outgoing>,
    /// Joins and parts.
    pub rooms: mpsc::UnboundedReceiver<RoomCommand>,
    /// Broadcasts to publish.
    pub broadcasts: mpsc::Receiver<OutgoingBroadcast>,
}

/// The cluster as the HTTP side sees it: whether the node is connected to NATS
/// (`/healthz`), and the other nodes' entries of a room (REST reads).
#[derive(Debug, Default)]
pub struct Status {
    connected: AtomicBool,
    node: OnceLock<Arc<Node>>,
}

impl Status {
    /// Whether the node is connected to NATS now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// The other nodes' entries of `room`: asks every node and waits until every
    /// node known to be alive answered, or the sync timeout. `None` when not
    /// connected to NATS (the caller serves what it holds).
    pub async fn gather_room(&self, room: &str) -> Option<Vec<Entry>> {
        if !self.connected() {
            return None;
        }
        let node = self.node.get()?;
        let deadline = tokio::time::Instant::now() + node.sync_timeout;
        let (replies, inbox) = node.request(room, deadline).await?;
        let replies = node
            .collect(replies, deadline, |payload| {
                node.open_reply(&inbox, payload)
                    .map(|reply| (reply.node, reply.entries))
            })
            .await;
        Some(replies.into_iter().flatten().collect())
    }
}

impl Status {
    /// The other nodes' pages of rooms after `after` (at most `limit`), with their own
    /// entry counts: asks every node and waits until every node known to be alive
    /// answered, or the sync timeout. `None` when not connected to NATS.
    pub(crate) async fn gather_rooms(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Option<Vec<RoomsPage>> {
        if !self.connected() {
            return None;
        }
        let node = self.node.get()?;
        let deadline = tokio::time::Instant::now() + node.sync_timeout;
        let mut body = format!(
            "{{\"node\":{},\"seq\":{},\"ts\":{},\"limit\":{limit},\"after\":",
            node.id,
            node.next_seq(),
            UnixMs::now().0
        );
        match after {
            Some(after) => protocol::push_json_str(&mut body, after),
            None => body.push_str("null"),
        }
        body.push('}');
        let (replies, inbox) = node
            .request_on(ROOMS_SUBJECT, body.into_bytes(), deadline)
            .await?;
        Some(
            node.collect(replies, deadline, |payload| {
                node.open_rooms_reply(&inbox, payload)
            })
            .await,
        )
    }
}

#[derive(Deserialize)]
struct WireRoomsRequest {
    node: u16,
    seq: u64,
    ts: u64,
    limit: usize,
    after: Option<String>,
}

#[derive(Deserialize)]
struct WireRoomsReply {
    node: u16,
    ts: u64,
    rooms: Vec<(String, usize)>,
    next: Option<String>,
}

/// A change received from another node.
#[derive(Debug)]
pub struct RemoteChange {
    /// The node that owns the entry.
    pub node: u16,
    /// The message's sequence number on that node.
    pub seq: u64,
    /// The sender's clock when it sent it.
    pub ts: u64,
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
    Broadcast,
}

/// A message of a room's subject.
#[derive(Debug)]
pub enum Incoming {
    /// A change of another node's entry.
    Change(RemoteChange),
    /// A broadcast of another node's client.
    Broadcast(RemoteBroadcast),
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
    ts: u64,
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
    ts: u64,
    #[serde(borrow)]
    entries: Vec<WireEntry<'a>>,
}

#[derive(Deserialize)]
struct WireRequest {
    node: u16,
    seq: u64,
    ts: u64,
    room: String,
}

#[derive(Deserialize)]
struct WireAnnounce {
    node: u16,
    seq: u64,
    ts: u64,
}

/// `{"node":…,"seq":…,"ts":…,"op":…,…}`: a change of an owned entry (unsealed).
pub fn encode_change(node: u16, seq: u64, ts: UnixMs, change: &Change) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(112 + change.entry.data.len());
    let _ = write!(out, "{{\"node\":{node},\"seq\":{seq},\"ts\":{},", ts.0);
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
    out.into_bytes()
}

/// `{"node":…,"seq":…,"ts":…,"op":"broadcast","clientId":…[,"userId":…],"data":…}`:
/// a local client's broadcast (unsealed).
pub fn encode_broadcast(node: u16, seq: u64, ts: UnixMs, broadcast: &OutgoingBroadcast) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(112 + broadcast.data.len());
    let _ = write!(
        out,
        "{{\"node\":{node},\"seq\":{seq},\"ts\":{},\"op\":\"broadcast\",\"clientId\":{}",
        ts.0, broadcast.client
    );
    if let Some(user) = &broadcast.user {
        out.push_str(",\"userId\":");
        protocol::push_json_str(&mut out, user);
    }
    out.push_str(",\"data\":");
    out.push_str(&String::from_utf8_lossy(&broadcast.data));
    out.push('}');
    out.into_bytes()
}

/// Decodes a change from another node (an opened body); `None` if it is not one.
#[cfg(test)]
pub(crate) fn decode_change(body: &[u8]) -> Option<RemoteChange> {
    match decode(body)? {
        Incoming::Change(change) => Some(change),
        Incoming::Broadcast(_) => None,
    }
}

/// Decodes a message of a room's subject (an opened body); `None` if it is neither a
/// change nor a broadcast.
pub fn decode(body: &[u8]) -> Option<Incoming> {
    let wire: WireChange<'_> = serde_json::from_slice(body).ok()?;
    let client = ClientId::new(wire.client_id)?;
    let kind = match wire.op {
        Op::Broadcast => {
            return Some(Incoming::Broadcast(RemoteBroadcast {
                node: wire.node,
                seq: wire.seq,
                ts: wire.ts,
                client,
                user: wire.user_id,
                data: wire.data?.get().to_owned(),
            }));
        }
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
    Some(Incoming::Change(RemoteChange {
        node: wire.node,
        seq: wire.seq,
        ts: wire.ts,
        client,
        kind,
    }))
}

/// `{"node":…,"seq":…,"ts":…,"entries":[…]}`: an answer to a sync request
/// (unsealed).
pub fn encode_reply(node: u16, seq: u64, ts: UnixMs, entries: &str) -> Vec<u8> {
    format!(
        "{{\"node\":{node},\"seq\":{seq},\"ts\":{},\"entries\":{entries}}}",
        ts.0
    )
    .into_bytes()
}

/// Decodes an answer to a sync request (an opened body), with its timestamp;
/// `None` if it is not one.
fn decode_reply(body: &[u8]) -> Option<(SyncReply, u64)> {
    let wire: WireReply<'_> = serde_json::from_slice(body).ok()?;
    let reply = SyncReply {
        node: wire.node,
        seq: wire.seq,
        entries: wire
            .entries
            .into_iter()
            .filter_map(WireEntry::into_entry)
            .collect(),
    };
    Some((reply, wire.ts))
}

fn encode_request(node: u16, seq: u64, ts: UnixMs, room: &str) -> Vec<u8> {
    let mut out = format!("{{\"node\":{node},\"seq\":{seq},\"ts\":{},\"room\":", ts.0);
    protocol::push_json_str(&mut out, room);
    out.push('}');
    out.into_bytes()
}

/// Whether an entry from another node respects this node's limits: no bigger
/// `data` than `--max-data-bytes`, no later expiry than now + `--max-ttl-ms` (plus
/// the clock skew the bus allows).
pub fn check_entry(entry: &Entry, limits: &Limits, now: UnixMs) -> Result<(), Reject> {
    if entry.data.len() > limits.max_data_bytes {
        return Err(Reject::DataSize);
    }
    if entry.expires_at.0
        > now
            .0
            .saturating_add(limits.max_ttl_ms)
            .saturating_add(bus::MAX_AGE_MS)
    {
        return Err(Reject::Ttl);
    }
    Ok(())
}

/// Creates the channels between the hub and the cluster tasks.
pub fn links() -> (Links, Queues) {
    let (changes, changes_rx) = mpsc::channel(QUEUE);
    let (rooms, rooms_rx) = mpsc::unbounded_channel();
    let (broadcasts, broadcasts_rx) = mpsc::channel(BROADCAST_QUEUE);
    (
        Links {
            changes,
            rooms,
            broadcasts,
        },
        Queues {
            changes: changes_rx,
            rooms: rooms_rx,
            broadcasts: broadcasts_rx,
        },
    )
}

/// The node's presence state, as the bus tasks use it (the hub is one). The bus
/// depends on this trait, not on the hub, so the hub can depend on the bus's types.
pub(crate) trait LocalState: Send + Sync + 'static {
    /// The server's metrics handles.
    fn metrics(&self) -> &Metrics;
    /// The limits local clients must respect; other nodes' entries too.
    fn limits(&self) -> &Limits;
    /// Every live entry this node owns, as upserts with fresh sequence numbers.
    fn owned_live(&self, now: UnixMs) -> Vec<Outgoing>;
    /// This node's own live entries of `room` as a JSON array, and the last sequence
    /// number it used.
    fn owned_entries(&self, room: &str, now: UnixMs) -> (u64, String);
    /// Folds an authenticated change another node published in `room`, unless it
    /// breaks a limit (room capacity) or removes what the node does not own.
    fn apply_remote(
        &self,
        room: &Arc<str>,
        generation: u64,
        change: RemoteChange,
        now: UnixMs,
    ) -> Result<(), Reject>;
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
    /// Node `node` is taken for dead: removes its entries (subscribers see them
    /// leave).
    fn node_lost(&self, node: u16, now: UnixMs);
    /// A page of rooms with this node's own entry counts.
    fn owned_rooms_page(&self, after: Option<&str>, limit: usize) -> RoomsPage;
    /// Queues another node's broadcast (a `broadcast` frame) for this node's
    /// subscribers of `room`.
    fn deliver_broadcast(&self, room: &str, frame: &str);
    /// Follows `room`, subscribers or not (this node owns or backs up its webhooks).
    fn hold(&self, room: &Arc<str>);
    /// Follows `room` only while it has subscribers again.
    fn release(&self, room: &str);
    /// The number of entries this node holds in `room` (for a followed room, the
    /// cluster's).
    fn room_len(&self, room: &str) -> usize;
}

/// What this node knows of another.
#[derive(Debug)]
struct Peer {
    /// The sequence number of its last announcement.
    announced: u64,
    /// When it was last heard.
    heard: Instant,
    alive: bool,
    /// Its sync requests seen.
    requests: SeenWindow,
}

/// Which sequence numbers of one sender were seen, for messages that may arrive a
/// little out of order: the highest, and which of the [`REQUEST_WINDOW`] below it.
/// Anything older is taken for a replay.
#[derive(Debug, Default)]
struct SeenWindow {
    highest: u64,
    below: u64,
}

impl SeenWindow {
    /// Whether `seq` is seen for the first time (and records it).
    fn first(&mut self, seq: u64) -> bool {
        if seq > self.highest {
            // The old highest moves to age `shift`; ages past the window fall off.
            let shift = u32::try_from(seq - self.highest).unwrap_or(u32::MAX);
            self.below = self.below.checked_shl(shift).unwrap_or(0)
                | 1u64.checked_shl(shift - 1).unwrap_or(0);
            self.highest = seq;
            return true;
        }
        let age = self.highest - seq;
        if age == 0 || age > REQUEST_WINDOW {
            return false;
        }
        let bit = 1 << (age - 1);
        if self.below & bit != 0 {
            return false;
        }
        self.below |= bit;
        true
    }
}

#[derive(Debug, Default)]
struct Peers {
    nodes: HashMap<u16, Peer>,
    /// Since when this node is connected to NATS (`None` while it is not).
    connected_since: Option<Instant>,
}

/// Everything the cluster tasks share.
struct Node {
    id: u16,
    client: Client,
    hub: Arc<dyn LocalState>,
    key: BusKey,
    sync_timeout: Duration,
    silence_timeout: Duration,
    /// Bumped at every (re)connection, and when a node taken for dead comes back:
    /// rooms resync when it changes.
    epoch: watch::Sender<u64>,
    peers: Mutex<Peers>,
    /// Sequence numbers of this node's sync requests and announcements.
    seq: std::sync::atomic::AtomicU64,
    /// With webhooks on: the live nodes (who owns which room's webhooks) and the
    /// rooms this node holds for them.
    hooks: Option<Hooks>,
}

/// The rooms held for webhooks (see [`owner`]).
#[derive(Debug)]
struct Hooks {
    members: Arc<owner::Members>,
    /// Held rooms, with when each was last seen holding entries (or was held).
    held: Mutex<HashMap<Arc<str>, Instant>>,
    /// Set when the live nodes changed: the rooms to hold are listed again.
    reclaim: tokio::sync::Notify,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Node {
    fn peers(&self) -> std::sync::MutexGuard<'_, Peers> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn reject(&self, reject: Reject, what: &str) {
        self.hub.metrics().cluster_rejected(reject.as_str());
        tracing::debug!(
            reason = reject.as_str(),
            what,
            "cluster: dropped a bus message"
        );
    }

    /// Whether every node known to be alive is in `answered`. Until the node has
    /// been connected for longer than the announcement period (and a margin) it may
    /// not know every node yet: then never.
    /// Reads `replies` until every node known to be alive answered, the replies end or
    /// `deadline`; `open` checks one reply and names its node.
    async fn collect<T>(
        &self,
        mut replies: Subscriber,
        deadline: tokio::time::Instant,
        open: impl Fn(&[u8]) -> Option<(u16, T)>,
    ) -> Vec<T> {
        let mut gathered = Vec::new();
        let mut answered = HashSet::new();
        while !self.all_answered(&answered) {
            tokio::select! {
                reply = replies.next() => match reply {
                    Some(reply) => {
                        if let Some((from, value)) = open(&reply.payload) {
                            answered.insert(from);
                            gathered.push(value);
                        }
                    }
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let _ = replies.unsubscribe().await;
        gathered
    }

    fn all_answered(&self, answered: &HashSet<u16>) -> bool {
        let peers = self.peers();
        let settled = peers
            .connected_since
            .is_some_and(|since| since.elapsed() > ANNOUNCE_EVERY + SETTLE_MARGIN);
        settled
            && peers
                .nodes
                .iter()
                .all(|(id, peer)| !peer.alive || answered.contains(id))
    }

    /// Subscribes to a fresh inbox and sends a sealed sync request of `room` with it.
    async fn request(
        &self,
        room: &str,
        deadline: tokio::time::Instant,
    ) -> Option<(Subscriber, String)> {
        let body = encode_request(self.id, self.next_seq(), UnixMs::now(), room);
        self.request_on(SYNC_SUBJECT, body, deadline).await
    }

    /// Subscribes to a fresh inbox and sends `body`, sealed for `subject` and the
    /// inbox, on `subject`.
    async fn request_on(
        &self,
        subject: &'static str,
        body: Vec<u8>,
        deadline: tokio::time::Instant,
    ) -> Option<(Subscriber, String)> {
        let inbox = self.client.new_inbox();
        let setup = async {
            let replies = self.client.subscribe(inbox.clone()).await.ok()?;
            let sealed = bus::seal(&self.key, &bus::request_binding(subject, &inbox), &body);
            self.client
                .publish_with_reply(subject, inbox.clone(), sealed)
                .await
                .ok()?;
            Some(replies)
        };
        let replies = tokio::time::timeout_at(deadline, setup).await.ok()??;
        Some((replies, inbox))
    }

    /// An answer to this node's sync request on `inbox`, checked: sealed for the
    /// inbox, fresh, from another node, entries within the limits (the others are
    /// dropped and counted).
    fn open_reply(&self, inbox: &str, payload: &[u8]) -> Option<SyncReply> {
        let now = UnixMs::now();
        let opened = bus::open(&self.key, inbox, payload)
            .and_then(|body| decode_reply(body).ok_or(Reject::Malformed))
            .and_then(|(reply, ts)| bus::fresh(ts, now.0).map(|()| reply));
        let mut reply = match opened {
            Ok(reply) if reply.node != self.id => {
                self.met(reply.node);
                reply
            }
            Ok(_) => return None,
            Err(reject) => {
                self.reject(reject, "sync reply");
                return None;
            }
        };
        let limits = self.hub.limits();
        reply
            .entries
            .retain(|entry| match check_entry(entry, limits, now) {
                Ok(()) => true,
                Err(reject) => {
                    self.reject(reject, "sync reply entry");
                    false
                }
            });
        Some(reply)
    }

    /// An answer to this node's room-list request on `inbox`, checked.
    fn open_rooms_reply(&self, inbox: &str, payload: &[u8]) -> Option<(u16, RoomsPage)> {
        let opened = bus::open(&self.key, inbox, payload)
            .and_then(|body| {
                serde_json::from_slice::<WireRoomsReply>(body).map_err(|_| Reject::Malformed)
            })
            .and_then(|wire| bus::fresh(wire.ts, UnixMs::now().0).map(|()| wire));
        match opened {
            Ok(wire) if wire.node != self.id => {
                self.met(wire.node);
                Some((
                    wire.node,
                    RoomsPage {
                        rooms: wire.rooms,
                        next: wire.next,
                    },
                ))
            }
            Ok(_) => None,
            Err(reject) => {
                self.reject(reject, "room-list reply");
                None
            }
        }
    }

    /// An announcement: the node is alive. Returns whether it was taken for dead.
    fn announced(&self, payload: &[u8]) -> Result<bool, Reject> {
        let body = bus::open(&self.key, NODES_SUBJECT, payload)?;
        let wire: WireAnnounce = serde_json::from_slice(body).map_err(|_| Reject::Malformed)?;
        bus::fresh(wire.ts, UnixMs::now().0)?;
        if wire.node == self.id {
            return Ok(false);
        }
        let mut peers = self.peers();
        match peers.nodes.get_mut(&wire.node) {
            Some(peer) => {
                if wire.seq <= peer.announced {
                    return Err(Reject::Replay);
                }
                peer.announced = wire.seq;
                peer.heard = Instant::now();
                let revived = !peer.alive;
                peer.alive = true;
                Ok(revived)
            }
            None => {
                tracing::info!(node = wire.node, "cluster: a node joined");
                peers.nodes.insert(
                    wire.node,
                    Peer {
                        announced: wire.seq,
                        heard: Instant::now(),
                        alive: true,
                        requests: SeenWindow::default(),
                    },
                );
                Ok(false)
            }
        }
    }

    /// An authentic message of `node` (a change or a sync reply): a node not heard of
    /// yet (its announcements went out before this node subscribed) is known from now
    /// on, so its silence will be noticed. Only announcements prove a known node is
    /// still alive: they cannot be replayed.
    fn met(&self, node: u16) {
        if node == self.id {
            return;
        }
        let mut peers = self.peers();
        if peers.nodes.contains_key(&node) {
            return;
        }
        peers.nodes.insert(
            node,
            Peer {
                announced: 0,
                heard: Instant::now(),
                alive: true,
                requests: SeenWindow::default(),
            },
        );
        drop(peers);
        self.members_changed();
    }

    /// With webhooks on: the live nodes changed (or may have), so the owners of the
    /// rooms may have; the rooms to hold are listed again.
    fn members_changed(&self) {
        let Some(hooks) = &self.hooks else { return };
        let live: Vec<u16> = self
            .peers()
            .nodes
            .iter()
            .filter(|(_, peer)| peer.alive)
            .map(|(id, _)| *id)
            .collect();
        if hooks.members.set(live) {
            hooks.reclaim.notify_one();
        }
    }

    /// Holds `room` for webhooks, unless it is held already.
    fn hold(&self, hooks: &Hooks, room: &str) {
        let mut held = hooks.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.contains_key(room) {
            return;
        }
        let room: Arc<str> = room.into();
        held.insert(room.clone(), Instant::now());
        drop(held);
        self.hub.hold(&room);
    }

    /// Releases the held rooms that are no longer this node's, or that stayed empty
    /// for [`HOLD_EMPTY`].
    fn check_held(&self) {
        let Some(hooks) = &self.hooks else { return };
        let mut released = Vec::new();
        {
            let mut held = hooks.held.lock().unwrap_or_else(PoisonError::into_inner);
            held.retain(|room, seen| {
                if !hooks.members.holds(room) {
                    released.push(room.clone());
                    return false;
                }
                if self.hub.room_len(room) > 0 {
                    *seen = Instant::now();
                    return true;
                }
                if seen.elapsed() < HOLD_EMPTY {
                    return true;
                }
                released.push(room.clone());
                false
            });
        }
        for room in released {
            self.hub.release(&room);
        }
    }

    /// A message on some room's subject (with webhooks on, every room's): holds the
    /// room if it is this node's to hold and the message is authentic.
    fn discover(&self, subject: &str, payload: &[u8]) {
        let Some(hooks) = &self.hooks else { return };
        let Some(room) = subject
            .strip_prefix("rollcall.v1.room.")
            .and_then(|token| URL_SAFE_NO_PAD.decode(token).ok())
            .and_then(|name| String::from_utf8(name).ok())
        else {
            return;
        };
        if hooks
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(room.as_str())
            || !hooks.members.holds(&room)
            || bus::open(&self.key, subject, payload).is_err()
        {
            return;
        }
        self.hold(hooks, &room);
    }

    /// Whether a sync request of `node` numbered `seq` was not seen yet.
    fn first_request(&self, node: u16, seq: u64) -> bool {
        let mut peers = self.peers();
        let Some(peer) = peers.nodes.get_mut(&node) else {
            // Not heard of yet: nothing to compare with.
            return true;
        };
        peer.requests.first(seq)
    }

    /// Takes nodes silent for the node timeout for dead (unless this node is the
    /// one cut off from NATS: then nobody is heard, and nobody is judged).
    fn check_peers(&self) {
        let mut lost = Vec::new();
        let alive;
        {
            let mut peers = self.peers();
            if peers.connected_since.is_none() {
                return;
            }
            for (id, peer) in &mut peers.nodes {
                if peer.alive && peer.heard.elapsed() > self.silence_timeout {
                    peer.alive = false;
                    lost.push(*id);
                }
            }
            alive = peers.nodes.values().filter(|p| p.alive).count();
        }
        self.hub.metrics().cluster_nodes.set(alive as f64);
        if !lost.is_empty() {
            // First: the lost node's rooms now have their new owner, who reports the
            // departures of the lost node's entries.
            self.members_changed();
        }
        for id in lost {
            tracing::warn!(
                node = id,
                timeout_ms = self.silence_timeout.as_millis() as u64,
                "cluster: a node went silent; dropping its entries until it is back"
            );
            self.hub.node_lost(id, UnixMs::now());
        }
    }
}

/// Connects to NATS (in the background: a node starts even when NATS is down) and
/// runs the cluster tasks until `shutdown`.
#[allow(clippy::too_many_arguments, reason = "the server's parts, once")]
pub(crate) async fn start(
    hub: Arc<dyn LocalState>,
    config: &ClusterConfig,
    node: u16,
    queues: Queues,
    members: Option<Arc<owner::Members>>,
    status: Arc<Status>,
    shutdown: Shutdown,
) -> crate::Result<JoinHandle<()>> {
    let resolved = nats::resolve(&config.nats).map_err(crate::Error::Config)?;
    let (events_tx, events) = mpsc::unbounded_channel();
    let options = ConnectOptions::new()
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
        });
    let options = resolved
        .apply(&config.nats, options)
        .await
        .map_err(crate::Error::Config)?;
    let client = options
        .connect(resolved.servers.clone())
        .await
        .map_err(|e| crate::Error::Config(format!("cannot use NATS at {}: {e}", resolved.shown)))?;
    let subscribe = |subject: &'static str| {
        let client = client.clone();
        async move {
            client
                .subscribe(subject)
                .await
                .map_err(|e| crate::Error::Config(format!("cannot subscribe to NATS: {e}")))
        }
    };
    let requests = subscribe(SYNC_SUBJECT).await?;
    let room_lists = subscribe(ROOMS_SUBJECT).await?;
    let announcements = subscribe(NODES_SUBJECT).await?;
    let wildcard = match &members {
        Some(_) => Some(subscribe(ROOMS_WILDCARD).await?),
        None => None,
    };
    tracing::info!(
        servers = %resolved.shown,
        login = %resolved.login,
        node,
        "cluster mode: connecting to NATS"
    );
    let node = Arc::new(Node {
        id: node,
        client,
        hub,
        key: config.bus_key.clone(),
        sync_timeout: config.sync_timeout,
        silence_timeout: config.node_timeout,
        epoch: watch::channel(0).0,
        peers: Mutex::new(Peers::default()),
        seq: std::sync::atomic::AtomicU64::new(UnixMs::now().0.saturating_mul(1_000)),
        hooks: members.map(|members| Hooks {
            members,
            held: Mutex::new(HashMap::new()),
            reclaim: tokio::sync::Notify::new(),
        }),
    });
    let _ = status.node.set(node.clone());
    let Queues {
        changes,
        rooms,
        broadcasts,
    } = queues;
    let publisher = tokio::spawn(publish(node.clone(), changes));
    let broadcaster = tokio::spawn(publish_broadcasts(node.clone(), broadcasts));
    let announcer = tokio::spawn(announce(node.clone()));
    Ok(tokio::spawn(async move {
        let subscriptions = Subscriptions {
            requests,
            room_lists,
            announcements,
            wildcard,
        };
        run(node, subscriptions, events, rooms, status, shutdown).await;
        publisher.abort();
        broadcaster.abort();
        announcer.abort();
    }))
}

/// The subscriptions every node keeps.
struct Subscriptions {
    requests: Subscriber,
    room_lists: Subscriber,
    announcements: Subscriber,
    /// With webhooks on: every room's changes (see [`Node::discover`]).
    wildcard: Option<Subscriber>,
}

/// The next message of `subscriber`, if there is one (never, without).
async fn next_message(subscriber: &mut Option<Subscriber>) -> Option<async_nats::Message> {
    match subscriber {
        Some(subscriber) => subscriber.next().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the rooms to hold must be listed again (never, without webhooks).
async fn reclaim(node: &Node) {
    match &node.hooks {
        Some(hooks) => hooks.reclaim.notified().await,
        None => std::future::pending().await,
    }
}

/// Lists every room that has entries anywhere in the cluster and holds those this
/// node owns or backs up: after the live nodes changed, rooms move (and a room
/// nobody touches would otherwise be found only at its next change).
async fn claim(node: Arc<Node>) {
    let Some(hooks) = &node.hooks else { return };
    // Wait until this node knows every live node.
    tokio::time::sleep(ANNOUNCE_EVERY + SETTLE_MARGIN).await;
    let mut after: Option<String> = None;
    let mut claimed = 0usize;
    loop {
        let mut pages = vec![node.hub.owned_rooms_page(after.as_deref(), MAX_ROOMS_PAGE)];
        let deadline = tokio::time::Instant::now() + node.sync_timeout;
        let mut body = format!(
            "{{\"node\":{},\"seq\":{},\"ts\":{},\"limit\":{MAX_ROOMS_PAGE},\"after\":",
            node.id,
            node.next_seq(),
            UnixMs::now().0
        );
        match &after {
            Some(after) => protocol::push_json_str(&mut body, after),
            None => body.push_str("null"),
        }
        body.push('}');
        if let Some((replies, inbox)) = node
            .request_on(ROOMS_SUBJECT, body.into_bytes(), deadline)
            .await
        {
            pages.extend(
                node.collect(replies, deadline, |payload| {
                    node.open_rooms_reply(&inbox, payload)
                })
                .await,
            );
        }
        let page = merge_room_pages(pages, MAX_ROOMS_PAGE);
        for (room, _) in page.rooms {
            if hooks.members.holds(&room) {
                node.hold(hooks, &room);
                claimed += 1;
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    tracing::info!(
        rooms = claimed,
        "cluster: holding the rooms whose webhooks this node owns or backs up"
    );
}

async fn run(
    node: Arc<Node>,
    subscriptions: Subscriptions,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut rooms: mpsc::UnboundedReceiver<RoomCommand>,
    status: Arc<Status>,
    mut shutdown: Shutdown,
) {
    let Subscriptions {
        mut requests,
        mut room_lists,
        mut announcements,
        mut wildcard,
    } = subscriptions;
    let mut following: HashMap<Arc<str>, JoinHandle<()>> = HashMap::new();
    let metrics = node.hub.metrics().clone();
    // Whether the last connection attempt failed (warn once, not at every retry).
    let mut failing = false;
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held_check = tokio::time::interval(HOLD_CHECK_EVERY);
    held_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut claiming: Option<JoinHandle<()>> = None;
    loop {
        tokio::select! {
            Some(event) = events.recv() => match event {
                Event::Connected => {
                    failing = false;
                    tracing::info!("cluster: connected to NATS; republishing and resyncing");
                    status.connected.store(true, Ordering::Release);
                    metrics.cluster_connected.set(1.0);
                    {
                        // The other nodes get a full timeout to be heard again.
                        let mut peers = node.peers();
                        peers.connected_since = Some(Instant::now());
                        for peer in peers.nodes.values_mut() {
                            peer.heard = Instant::now();
                        }
                    }
                    node.epoch.send_modify(|epoch| *epoch += 1);
                    tokio::spawn(republish(node.clone()));
                    if let Some(hooks) = &node.hooks {
                        // Rooms may have come while this node was cut off.
                        hooks.reclaim.notify_one();
                    }
                }
                Event::Disconnected => {
                    tracing::warn!("cluster: lost NATS; local rooms keep working, remote entries stay until NATS is back or their TTL");
                    status.connected.store(false, Ordering::Release);
                    metrics.cluster_connected.set(0.0);
                    node.peers().connected_since = None;
                }
                Event::ClientError(error) => {
                    if std::mem::replace(&mut failing, true) {
                        tracing::debug!(%error, "cluster: NATS client error");
                    } else {
                        tracing::warn!(
                            %error,
                            "cluster: cannot reach or log in to NATS (retrying); check --nats, \
                             the credentials and, for TLS, --nats-tls-ca/--nats-tls-cert/--nats-tls-key"
                        );
                    }
                }
                other => tracing::info!(event = %other, "cluster: NATS event"),
            },
            Some(request) = requests.next() => answer(&node, &request).await,
            Some(request) = room_lists.next() => answer_rooms(&node, &request).await,
            Some(announcement) = announcements.next() => match node.announced(&announcement.payload) {
                Ok(true) => {
                    tracing::info!("cluster: a node taken for dead is back; resyncing");
                    node.members_changed();
                    node.epoch.send_modify(|epoch| *epoch += 1);
                }
                Ok(false) => node.members_changed(),
                Err(reject) => node.reject(reject, "announcement"),
            },
            Some(message) = next_message(&mut wildcard) => node.discover(&message.subject, &message.payload),
            () = reclaim(&node) => {
                if let Some(task) = claiming.take() {
                    task.abort();
                }
                claiming = Some(tokio::spawn(claim(node.clone())));
            }
            _ = held_check.tick() => node.check_held(),
            _ = check.tick() => node.check_peers(),
            Some(command) = rooms.recv() => match command {
                RoomCommand::Join { room, generation } => {
                    if let Some(hooks) = &node.hooks {
                        // A room followed for its subscribers stays followed while
                        // this node sends or backs up its webhooks.
                        if hooks.members.holds(&room) {
                            node.hold(hooks, &room);
                        }
                    }
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
    if let Some(task) = claiming {
        task.abort();
    }
    // Hand what is queued to NATS, but never wait for a NATS that is gone.
    let _ = tokio::time::timeout(Duration::from_secs(1), node.client.flush()).await;
}

/// Announces this node every [`ANNOUNCE_EVERY`].
async fn announce(node: Arc<Node>) {
    let mut every = tokio::time::interval(ANNOUNCE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let body = format!(
            "{{\"node\":{},\"seq\":{},\"ts\":{}}}",
            node.id,
            node.next_seq(),
            UnixMs::now().0
        );
        let sealed = bus::seal(&node.key, NODES_SUBJECT, body.as_bytes());
        let _ = node.client.publish(NODES_SUBJECT, sealed).await;
    }
}

/// Seals and publishes one change of an owned entry.
async fn send_change(node: &Node, seq: u64, change: &Change) -> bool {
    let subject = room_subject(&change.room);
    let body = encode_change(node.id, seq, UnixMs::now(), change);
    let sealed = bus::seal(&node.key, &subject, &body);
    match node.client.publish(subject, sealed).await {
        Ok(()) => true,
        Err(error) => {
            tracing::debug!(%error, "cluster: publish failed");
            false
        }
    }
}

/// Publishes changes of owned entries, in the order the hub made them.
async fn publish(node: Arc<Node>, mut changes: mpsc::Receiver<Outgoing>) {
    let metrics = node.hub.metrics().clone();
    while let Some(Outgoing { seq, change }) = changes.recv().await {
        if send_change(&node, seq, &change).await {
            metrics.cluster_published.increment(1);
        } else {
            metrics.cluster_dropped.increment(1);
        }
    }
}

/// Publishes local clients' broadcasts, in the order they were made. Each goes to
/// the room's subject: only the nodes that follow the room (have subscribers in it)
/// get it. Never stored, never resent.
async fn publish_broadcasts(node: Arc<Node>, mut broadcasts: mpsc::Receiver<OutgoingBroadcast>) {
    let metrics = node.hub.metrics().clone();
    while let Some(broadcast) = broadcasts.recv().await {
        let subject = room_subject(&broadcast.room);
        let body = encode_broadcast(node.id, node.next_seq(), UnixMs::now(), &broadcast);
        let sealed = bus::seal(&node.key, &subject, &body);
        match node.client.publish(subject, sealed).await {
            Ok(()) => metrics.cluster_broadcasts_published.increment(1),
            Err(error) => {
                tracing::debug!(%error, "cluster: publishing a broadcast failed");
                metrics.cluster_dropped.increment(1);
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
        if !send_change(&node, seq, &change).await {
            return;
        }
    }
    tracing::info!(entries = count, "cluster: republished live entries");
}

/// Answers another node's sync request with this node's entries of the room, if the
/// request is authentic, fresh and not a replay.
async fn answer(node: &Node, request: &async_nats::Message) {
    let Some(reply) = request.reply.clone() else {
        node.reject(Reject::Malformed, "sync request without a reply subject");
        return;
    };
    let opened = bus::open(
        &node.key,
        &bus::request_binding(SYNC_SUBJECT, &reply),
        &request.payload,
    )
    .and_then(|body| serde_json::from_slice::<WireRequest>(body).map_err(|_| Reject::Malformed))
    .and_then(|wire| bus::fresh(wire.ts, UnixMs::now().0).map(|()| wire));
    let wire = match opened {
        Ok(wire) => wire,
        Err(reject) => return node.reject(reject, "sync request"),
    };
    if wire.node == node.id {
        return;
    }
    node.met(wire.node);
    if !node.first_request(wire.node, wire.seq) {
        return node.reject(Reject::Replay, "sync request");
    }
    let now = UnixMs::now();
    let (seq, entries) = node.hub.owned_entries(&wire.room, now);
    let body = encode_reply(node.id, seq, now, &entries);
    let sealed = bus::seal(&node.key, &reply, &body);
    let _ = node.client.publish(reply, sealed).await;
}

/// Answers another node's room-list request with a page of rooms and this node's own
/// entry counts, if the request is authentic, fresh and not a replay.
async fn answer_rooms(node: &Node, request: &async_nats::Message) {
    let Some(reply) = request.reply.clone() else {
        node.reject(
            Reject::Malformed,
            "room-list request without a reply subject",
        );
        return;
    };
    let opened = bus::open(
        &node.key,
        &bus::request_binding(ROOMS_SUBJECT, &reply),
        &request.payload,
    )
    .and_then(|body| {
        serde_json::from_slice::<WireRoomsRequest>(body).map_err(|_| Reject::Malformed)
    })
    .and_then(|wire| bus::fresh(wire.ts, UnixMs::now().0).map(|()| wire));
    let wire = match opened {
        Ok(wire) => wire,
        Err(reject) => return node.reject(reject, "room-list request"),
    };
    if wire.node == node.id {
        return;
    }
    node.met(wire.node);
    if !node.first_request(wire.node, wire.seq) {
        return node.reject(Reject::Replay, "room-list request");
    }
    let page = node
        .hub
        .owned_rooms_page(wire.after.as_deref(), wire.limit.clamp(1, MAX_ROOMS_PAGE));
    let body = serde_json::json!({
        "node": node.id,
        "ts": UnixMs::now().0,
        "rooms": page.rooms,
        "next": page.next,
    })
    .to_string();
    let sealed = bus::seal(&node.key, &reply, body.as_bytes());
    let _ = node.client.publish(reply, sealed).await;
}

/// Merges this node's page of rooms with the other nodes' (each with its own entry
/// counts): counts add up, and the page stops where the first node's page stopped,
/// so that no room is skipped between two pages.
pub(crate) fn merge_room_pages(pages: Vec<RoomsPage>, limit: usize) -> RoomsPage {
    let cutoff = pages.iter().filter_map(|p| p.next.clone()).min();
    let mut merged: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for page in pages {
        for (room, count) in page.rooms {
            if cutoff.as_ref().is_none_or(|cutoff| room <= *cutoff) {
                *merged.entry(room).or_default() += count;
            }
        }
    }
    let mut rooms: Vec<(String, usize)> = merged.into_iter().filter(|(_, n)| *n > 0).collect();
    let limit = limit.max(1);
    let next = if rooms.len() > limit {
        rooms.truncate(limit);
        rooms.last().map(|(room, _)| room.clone())
    } else {
        cutoff
    };
    RoomsPage { rooms, next }
}

/// Checks and folds one message of `room`'s subject: a change, or a broadcast for
/// this node's subscribers.
fn receive(
    node: &Node,
    room: &Arc<str>,
    subject: &str,
    generation: u64,
    payload: &[u8],
    broadcasts: &mut BroadcastsSeen,
) {
    let now = UnixMs::now();
    let result = bus::open(&node.key, subject, payload)
        .and_then(|body| decode(body).ok_or(Reject::Malformed))
        .and_then(|incoming| {
            let (ts, from) = match &incoming {
                Incoming::Change(change) => (change.ts, change.node),
                Incoming::Broadcast(broadcast) => (broadcast.ts, broadcast.node),
            };
            bus::fresh(ts, now.0)?;
            if from == node.id {
                return Ok(());
            }
            node.met(from);
            match incoming {
                Incoming::Change(change) => {
                    if let RemoteKind::Upsert(entry) = &change.kind {
                        check_entry(entry, node.hub.limits(), now)?;
                    }
                    node.hub.metrics().cluster_received.increment(1);
                    node.hub.apply_remote(room, generation, change, now)
                }
                Incoming::Broadcast(broadcast) => {
                    receive_broadcast(node, room, &broadcast, broadcasts)
                }
            }
        });
    if let Err(reject) = result {
        node.reject(reject, "change");
    }
}

/// What one following of a room has seen of broadcasts: when it began, and per node
/// the sequence number of its last broadcast delivered (a node publishes them in
/// order, so an older one is a replay).
#[derive(Debug)]
struct BroadcastsSeen {
    since: u64,
    last: HashMap<u16, u64>,
}

/// Delivers another node's broadcast to this node's subscribers of `room`, unless it
/// breaks the data limit or is a replay. The rate limit was applied once, by the
/// node its sender is connected to.
fn receive_broadcast(
    node: &Node,
    room: &str,
    broadcast: &RemoteBroadcast,
    seen: &mut BroadcastsSeen,
) -> Result<(), Reject> {
    if broadcast.data.len() > node.hub.limits().max_data_bytes {
        return Err(Reject::DataSize);
    }
    // Sent more than a second (of clock skew) before this following of the room
    // began: a recording.
    if broadcast.ts.saturating_add(1_000) < seen.since {
        return Err(Reject::Replay);
    }
    let last = seen.last.entry(broadcast.node).or_insert(0);
    if broadcast.seq <= *last {
        return Err(Reject::Replay);
    }
    *last = broadcast.seq;
    node.hub.metrics().cluster_broadcasts_received.increment(1);
    let frame = protocol::broadcast(
        room,
        broadcast.client,
        broadcast.user.as_deref(),
        &broadcast.data,
        UnixMs(broadcast.ts),
    );
    node.hub.deliver_broadcast(room, &frame);
    Ok(())
}

/// Follows one room: subscribes to its subject, syncs it, folds every change, and
/// syncs again after each reconnection.
async fn follow(node: Arc<Node>, room: Arc<str>, generation: u64) {
    let mut epoch = node.epoch.subscribe();
    epoch.borrow_and_update();
    let subject = room_subject(&room);
    let mut live = match node.client.subscribe(subject.clone()).await {
        Ok(live) => Some(live),
        Err(error) => {
            tracing::warn!(%error, %room, "cluster: cannot follow the room; serving local entries");
            None
        }
    };
    let mut first = true;
    let mut broadcasts = BroadcastsSeen {
        since: UnixMs::now().0,
        last: HashMap::new(),
    };
    loop {
        let replies = match &mut live {
            Some(live) => gather(&node, &room, &subject, generation, live, &mut broadcasts).await,
            None => Vec::new(),
        };
        node.hub
            .sync_finished(&room, generation, replies, first, UnixMs::now());
        first = false;
        let Some(live) = &mut live else { return };
        loop {
            tokio::select! {
                message = live.next() => match message {
                    Some(message) => receive(&node, &room, &subject, generation, &message.payload, &mut broadcasts),
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
/// deadline (or until every node known to be alive answered), folding live changes
/// meanwhile.
async fn gather(
    node: &Node,
    room: &Arc<str>,
    subject: &str,
    generation: u64,
    live: &mut Subscriber,
    broadcasts: &mut BroadcastsSeen,
) -> Vec<SyncReply> {
    node.hub.sync_started(room, generation);
    let deadline = tokio::time::Instant::now() + node.sync_timeout;
    let Some((mut replies, inbox)) = node.request(room, deadline).await else {
        return Vec::new();
    };
    let mut gathered = Vec::new();
    let mut answered = HashSet::new();
    loop {
        if node.all_answered(&answered) {
            break;
        }
        tokio::select! {
            reply = replies.next() => match reply {
                Some(reply) => {
                    if let Some(reply) = node.open_reply(&inbox, &reply.payload) {
                        answered.insert(reply.node);
                        gathered.push(reply);
                    }
                }
                None => break,
            },
            message = live.next() => match message {
                Some(message) => receive(node, room, subject, generation, &message.payload, broadcasts),
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
            let decoded = decode_change(&encode_change(3, 43, UnixMs(5), &null)).unwrap();
            if let RemoteKind::Upsert(got) = decoded.kind {
                assert_eq!(got, null.entry, "a null value is a value");
            }
            let decoded = decode_change(&encode_change(3, 42, UnixMs(5), &change)).unwrap();
            assert_eq!(
                (decoded.node, decoded.seq, decoded.ts, decoded.client),
                (3, 42, 5, ClientId(7))
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
    fn broadcasts_round_trip() {
        for user in [None, Some(Arc::<str>::from("ana \"the\" admin"))] {
            let sent = OutgoingBroadcast {
                room: "doc/1".into(),
                client: ClientId(7),
                user: user.clone(),
                data: Bytes::from_static(br#"{"emoji":"\u00e9","n":[1,null]}"#),
            };
            let Some(Incoming::Broadcast(got)) = decode(&encode_broadcast(3, 42, UnixMs(5), &sent))
            else {
                panic!("not decoded as a broadcast");
            };
            assert_eq!(
                (got.node, got.seq, got.ts, got.client),
                (3, 42, 5, ClientId(7))
            );
            assert_eq!(got.user.as_deref(), user.as_deref());
            assert_eq!(got.data.as_bytes(), &sent.data[..]);
            assert!(decode_change(&encode_broadcast(3, 42, UnixMs(5), &sent)).is_none());
        }
    }

    #[test]
    fn replies_round_trip_and_junk_is_refused() {
        let entries = protocol::entries_json([&entry(1, "[1]"), &entry(2, "null")]);
        let (reply, ts) = decode_reply(&encode_reply(2, 9, UnixMs(5), &entries)).unwrap();
        assert_eq!((reply.node, reply.seq, ts), (2, 9, 5));
        assert_eq!(reply.entries, vec![entry(1, "[1]"), entry(2, "null")]);
        for junk in [
            &b""[..],
            b"{}",
            b"[1]",
            b"{\"node\":1,\"seq\":2,\"ts\":3,\"op\":\"upsert\",\"clientId\":0}",
            b"{\"node\":1,\"seq\":2,\"op\":\"leave\",\"clientId\":1}",
        ] {
            assert!(decode_change(junk).is_none());
            assert!(decode_reply(junk).is_none());
        }
    }

    #[test]
    fn a_request_is_answered_once_even_out_of_order() {
        let mut seen = SeenWindow::default();
        assert!(seen.first(100));
        assert!(!seen.first(100), "a replay");
        assert!(seen.first(103));
        assert!(seen.first(101), "late, within the window");
        assert!(!seen.first(101));
        assert!(seen.first(102));
        assert!(!seen.first(103));
        assert!(seen.first(103 + REQUEST_WINDOW));
        assert!(!seen.first(103), "at the window's edge, seen");
        assert!(!seen.first(102), "beyond the window");
        assert!(seen.first(104));
        assert!(seen.first(1_000_000));
        assert!(!seen.first(104));
    }

    #[test]
    fn room_pages_add_up_and_skip_nothing() {
        let page = |rooms: &[(&str, usize)], next: Option<&str>| RoomsPage {
            rooms: rooms.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect(),
            next: next.map(str::to_owned),
        };
        // Node A's page of 2 stops at "b"; node B has "a", "c" and "d".
        let merged = merge_room_pages(
            vec![
                page(&[("a", 1), ("b", 2)], Some("b")),
                page(&[("a", 3), ("c", 1), ("d", 1)], None),
            ],
            2,
        );
        assert_eq!(merged, page(&[("a", 4), ("b", 2)], Some("b")));
        // The next page: "c" and "d", and nothing after.
        let merged = merge_room_pages(vec![page(&[], None), page(&[("c", 1), ("d", 1)], None)], 2);
        assert_eq!(merged, page(&[("c", 1), ("d", 1)], None));
        // More than a page after merging: cut at the limit.
        let merged = merge_room_pages(
            vec![page(&[("a", 1), ("c", 1)], None), page(&[("b", 1)], None)],
            2,
        );
        assert_eq!(merged, page(&[("a", 1), ("b", 1)], Some("b")));
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
