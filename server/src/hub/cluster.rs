//! Cluster mode: the glue between the shards and the merge state machine
//! (`crate::cluster::merge`), and what the cluster tasks ask of the hub
//! ([`crate::cluster::LocalState`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rollcall_engine::{Change, ChangeKind, ClientId, Entry, Event, Heartbeat, Leave, Ttl, UnixMs};

use super::shard::{Locked, RoomFeed, Waiting};
use super::{Hub, RoomView, start};
use crate::cluster::merge::{Merge, Origin, Removal, Upsert};
use crate::cluster::{Links, Outgoing, Reject, RemoteChange, RemoteKind, RoomCommand, SyncReply};
use crate::fanout::{Feed, Outbox};
use crate::limits::Limits;
use crate::listing::RoomsPage;
use crate::metrics::Metrics;
use crate::protocol;
use crate::sample::Samples;

/// Cluster mode: this node's side of the bus, shared by every shard (the merge state
/// is per shard, in [`Shard::merge`]).
#[derive(Debug)]
pub(super) struct Cluster {
    pub(super) links: Links,
    /// The last sequence number used. Starts from the clock, so it keeps growing
    /// across restarts. Taken under the lock of the change's shard, so within a room
    /// sequence numbers follow the fold's order.
    seq: AtomicU64,
}

impl Cluster {
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Queues a change of an owned entry for the other nodes.
    pub(super) fn publish(&self, change: &Change, metrics: &Metrics) {
        let outgoing = Outgoing {
            seq: self.next_seq(),
            change: change.clone(),
        };
        if self.links.changes.try_send(outgoing).is_err() {
            metrics.cluster_dropped.increment(1);
        }
    }
}

/// What runs under a shard's lock in cluster mode: folding other nodes' changes.
impl Locked<'_> {
    /// Folds another node's upsert of `entry`, unless what this node holds is newer.
    /// A new entry that would put the room past `max_entries` is refused, as a local
    /// client's would be.
    pub(super) fn upsert_remote(
        &mut self,
        room: &Arc<str>,
        origin: Origin,
        entry: Entry,
        max_entries: usize,
        now: UnixMs,
    ) -> Result<Option<Change>, Reject> {
        let shard = &mut **self.guard.as_mut().expect("held until dropped");
        let materializer = &shard.materializer;
        if materializer.get(room, entry.client, now).is_none()
            && materializer.room_len(room) >= max_entries
        {
            return Err(Reject::RoomFull);
        }
        let Some(merge) = shard.merge.as_mut() else {
            return Ok(None);
        };
        let own_expiry = if merge.is_remote(room, entry.client) {
            None
        } else {
            shard
                .materializer
                .get(room, entry.client, now)
                .map(|own| own.expires_at)
        };
        let Some(action) = merge.upsert(room, origin, &entry, own_expiry, now) else {
            return Ok(None);
        };
        match action {
            Upsert::Fold => {}
            Upsert::TakeOver => {
                self.leave_logged(Leave {
                    room: room.clone(),
                    client: entry.client,
                    at: now,
                });
            }
        }
        // `at + ttl` is the owner's expiry, to the millisecond.
        Ok(self.fold_unlogged(&Event::Heartbeat(Heartbeat {
            room: room.clone(),
            client: entry.client,
            user: entry.user,
            data: entry.data,
            ttl: Ttl(0),
            at: entry.expires_at,
        })))
    }

    /// Removes another node's entry (kind `Leave` or `Expire`). A leave of an entry
    /// this node holds as its own is taken only from the node that allocated the
    /// client's id.
    pub(super) fn remove_remote(
        &mut self,
        room: &Arc<str>,
        origin: Origin,
        client: ClientId,
        kind: ChangeKind,
        now: UnixMs,
    ) -> Result<Option<Change>, Reject> {
        let shard = &mut **self.guard.as_mut().expect("held until dropped");
        let Some(merge) = shard.merge.as_mut() else {
            return Ok(None);
        };
        let holds_own =
            !merge.is_remote(room, client) && shard.materializer.get(room, client, now).is_some();
        if holds_own
            && kind == ChangeKind::Leave
            && client.0 >> crate::identity::NODE_SHIFT != u64::from(origin.node)
        {
            return Err(Reject::Owner);
        }
        let leave = Leave {
            room: room.clone(),
            client,
            at: now,
        };
        Ok(
            match merge.remove(room, origin, client, kind, holds_own, now) {
                None => None,
                Some(Removal::Own) => self.leave_logged(leave).map(|(change, _)| change),
                Some(Removal::Remote(kind)) => {
                    self.fold_unlogged(&Event::Leave(leave)).map(|mut change| {
                        change.kind = kind;
                        change
                    })
                }
            },
        )
    }
}

impl crate::cluster::LocalState for Hub {
    fn metrics(&self) -> &Metrics {
        Hub::metrics(self)
    }

    fn owned_live(&self, now: UnixMs) -> Vec<Outgoing> {
        Hub::owned_live(self, now)
    }

    fn owned_entries(&self, room: &str, now: UnixMs) -> (u64, String) {
        Hub::owned_entries(self, room, now)
    }

    fn limits(&self) -> &Limits {
        Hub::limits(self)
    }

    fn apply_remote(
        &self,
        room: &Arc<str>,
        generation: u64,
        change: RemoteChange,
        now: UnixMs,
    ) -> Result<(), Reject> {
        Hub::apply_remote(self, room, generation, change, now)
    }

    fn node_lost(&self, node: u16, now: UnixMs) {
        Hub::node_lost(self, node, now);
    }

    fn owned_rooms_page(&self, after: Option<&str>, limit: usize) -> RoomsPage {
        Hub::owned_rooms_page(self, after, limit)
    }

    fn deliver_broadcast(&self, room: &str, frame: &str) {
        Hub::deliver_broadcast(self, room, frame);
    }

    fn hold(&self, room: &Arc<str>) {
        Hub::hold(self, room);
    }

    fn release(&self, room: &str) {
        Hub::release(self, room);
    }

    fn room_len(&self, room: &str) -> usize {
        Hub::room_len(self, room)
    }

    fn sync_started(&self, room: &str, generation: u64) {
        Hub::sync_started(self, room, generation);
    }

    fn sync_finished(
        &self,
        room: &Arc<str>,
        generation: u64,
        replies: Vec<SyncReply>,
        first: bool,
        now: UnixMs,
    ) {
        Hub::sync_finished(self, room, generation, replies, first, now);
    }
}

/// Cluster mode: broadcasts, and rooms held for webhooks.
impl Hub {
    /// Cluster mode: sends a local client's broadcast (already delivered here) to the
    /// other nodes' subscribers of `room`. A full queue drops it, counted.
    pub fn publish_broadcast(
        &self,
        room: &str,
        client: ClientId,
        user: Option<Arc<str>>,
        data: &str,
    ) {
        if let Some(cluster) = self.cluster.get() {
            let broadcast = crate::cluster::OutgoingBroadcast {
                room: room.into(),
                client,
                user,
                data: bytes::Bytes::copy_from_slice(data.as_bytes()),
            };
            if cluster.links.broadcasts.try_send(broadcast).is_err() {
                self.metrics.cluster_dropped.increment(1);
            }
        }
    }

    /// Queues another node's broadcast for this node's subscribers of `room`.
    pub fn deliver_broadcast(&self, room: &str, frame: &str) {
        static NOBODY: std::sync::LazyLock<Outbox> = std::sync::LazyLock::new(Outbox::new);
        if let Some(feed) = self.feed_of(room) {
            let (_, missed) = feed.broadcast(frame, &NOBODY);
            self.metrics.broadcasts_missed.increment(missed as u64);
        }
    }

    /// Cluster mode: follows `room` whether it has subscribers or not (this node owns
    /// or backs up its webhooks), until [`Hub::release`].
    pub fn hold(&self, room: &Arc<str>) {
        let mut guard = self.lock(room);
        let shard = &mut *guard;
        if let Some(room_feed) = shard.subscribers.get_mut(&**room) {
            room_feed.held = true;
            return;
        }
        let Some(merge) = shard.merge.as_mut() else {
            return;
        };
        let generation = merge.follow(room.clone());
        if let Some(cluster) = self.cluster.get() {
            let _ = cluster.links.rooms.send(RoomCommand::Join {
                room: room.clone(),
                generation,
            });
        }
        shard.subscribers.insert(
            room.clone(),
            RoomFeed {
                feed: Feed::new(),
                waiting: Some(Vec::new()),
                samples: Samples::default(),
                held: true,
            },
        );
    }

    /// Undoes [`Hub::hold`]: the room is followed while it has subscribers.
    pub fn release(&self, room: &str) {
        let mut guard = self.lock(room);
        let Some(room_feed) = guard.subscribers.get_mut(room) else {
            return;
        };
        room_feed.held = false;
        if room_feed.feed.is_unread() {
            guard.unfollow(room);
        }
    }

    /// The number of entries this node holds in `room`.
    pub fn room_len(&self, room: &str) -> usize {
        self.counts.occupancy(room).0
    }
}

/// Cluster mode.
impl Hub {
    /// Turns cluster mode on: changes of this node's entries go out through `links`.
    /// Call once, before serving.
    pub fn enable_cluster(&self, node: u16, links: Links) {
        let cluster = Cluster {
            links,
            seq: AtomicU64::new(UnixMs::now().0.saturating_mul(1_000_000)),
        };
        if self.cluster.set(cluster).is_err() {
            tracing::warn!("cluster mode was already on");
            return;
        }
        for index in 0..self.shards.len() {
            self.lock_shard(index).merge = Some(Merge::new(node));
        }
    }

    /// Folds an authenticated change another node published in `room`.
    pub fn apply_remote(
        &self,
        room: &Arc<str>,
        generation: u64,
        remote: RemoteChange,
        now: UnixMs,
    ) -> Result<(), Reject> {
        let mut shard = self.lock(room);
        if !shard
            .merge
            .as_ref()
            .is_some_and(|m| m.accepts(room, generation, remote.node))
        {
            return Ok(());
        }
        let RemoteChange {
            node,
            seq,
            client,
            kind,
            ..
        } = remote;
        let origin = Origin { node, seq };
        let max_entries = self.limits.max_entries_per_room;
        let change = match kind {
            RemoteKind::Upsert(entry) => shard.upsert_remote(room, origin, entry, max_entries, now),
            RemoteKind::Leave => shard.remove_remote(room, origin, client, ChangeKind::Leave, now),
            RemoteKind::Expire => {
                shard.remove_remote(room, origin, client, ChangeKind::Expire, now)
            }
        }?;
        if let Some(change) = change {
            shard.fan_out(&change);
        }
        Ok(())
    }

    /// Node `node` is taken for dead: removes its entries from every followed room,
    /// unlogged (subscribers see them leave), one shard at a time. They come back when
    /// it republishes.
    pub fn node_lost(&self, node: u16, now: UnixMs) {
        for index in 0..self.shards.len() {
            let mut shard = self.lock_shard(index);
            let Some(merge) = &mut shard.merge else {
                return;
            };
            for (room, client) in merge.lost(node, now) {
                if let Some(change) = shard.fold_unlogged(&Event::Leave(Leave {
                    room,
                    client,
                    at: now,
                })) {
                    shard.fan_out(&change);
                }
            }
        }
    }

    /// A page of rooms (after `after`, at most `limit`) with this node's own entries
    /// only: what it answers to another node listing the cluster's rooms. The cursor
    /// says how far the page got, whatever was left out for holding no own entry.
    /// Takes each listed room's shard lock in turn.
    pub(crate) fn owned_rooms_page(&self, after: Option<&str>, limit: usize) -> RoomsPage {
        let mut page = self.counts.page(after, limit);
        if self.cluster.get().is_some() {
            for (room, count) in &mut page.rooms {
                let remote = self
                    .lock(room)
                    .merge
                    .as_ref()
                    .map_or(0, |merge| merge.remote_in(room));
                *count = count.saturating_sub(remote);
            }
            page.rooms.retain(|(_, count)| *count > 0);
        }
        page
    }

    /// A sync of `room` begins: removals are remembered until it ends.
    pub fn sync_started(&self, room: &str, generation: u64) {
        if let Some(merge) = &mut self.lock(room).merge {
            merge.sync_started(room, generation);
        }
    }

    /// Folds the other nodes' answers to a sync of `room`. Entries a node no longer
    /// lists are removed. After the room's first sync, its subscribers get their
    /// snapshots.
    pub fn sync_finished(
        &self,
        room: &Arc<str>,
        generation: u64,
        replies: Vec<SyncReply>,
        first: bool,
        now: UnixMs,
    ) {
        let mut shard = self.lock(room);
        if !shard
            .merge
            .as_ref()
            .is_some_and(|m| m.follows(room, generation))
        {
            return;
        }
        for reply in replies {
            let origin = Origin {
                node: reply.node,
                seq: reply.seq,
            };
            if !shard
                .merge
                .as_ref()
                .is_some_and(|m| m.accepts(room, generation, reply.node))
            {
                continue;
            }
            let mut listed = hashbrown::HashSet::with_capacity(reply.entries.len());
            let max_entries = self.limits.max_entries_per_room;
            for entry in reply.entries {
                listed.insert(entry.client);
                match shard.upsert_remote(room, origin, entry, max_entries, now) {
                    Ok(Some(change)) => shard.fan_out(&change),
                    Ok(None) => {}
                    Err(reject) => self.metrics.cluster_rejected(reject.as_str()),
                }
            }
            let gone = shard
                .merge
                .as_ref()
                .map(|m| m.unlisted(room, origin, &listed))
                .unwrap_or_default();
            for client in gone {
                match shard.remove_remote(room, origin, client, ChangeKind::Leave, now) {
                    Ok(Some(change)) => shard.fan_out(&change),
                    Ok(None) => {}
                    Err(reject) => self.metrics.cluster_rejected(reject.as_str()),
                }
            }
            if let Some(merge) = &mut shard.merge {
                merge.reply_folded(room, origin);
            }
        }
        if let Some(merge) = &mut shard.merge {
            merge.sync_ended(room);
        }
        if !first {
            return;
        }
        let Some(room_feed) = shard.subscribers.get_mut(room) else {
            return;
        };
        let Some(waiting) = room_feed.waiting.take() else {
            return;
        };
        let feed = room_feed.feed.clone();
        let view = RoomView::take(&shard, room, &feed, now);
        // Sample subscriptions get their sample instead.
        let (waiting, samples): (Vec<Waiting>, Vec<Waiting>) = waiting
            .into_iter()
            .partition(|w| w.subscription.sample_limit().is_none());
        let samples: Vec<_> = match shard.subscribers.get(room) {
            Some(room_feed) => samples
                .into_iter()
                .map(|w| {
                    let view = room_feed.samples.view(
                        &w.subscription,
                        &shard.materializer,
                        &self.counts,
                        now,
                    );
                    (w, view)
                })
                .collect(),
            None => Vec::new(),
        };
        drop(shard);
        for (w, view) in samples {
            view.start(&w.subscription, &w.outbox, w.reference);
        }
        // One snapshot for every waiting subscriber.
        let snapshot = view.snapshot();
        for w in waiting {
            start(
                &w.subscription,
                &w.outbox,
                w.reference,
                snapshot.clone(),
                view.head,
            );
        }
    }

    /// This node's own live entries of `room` as a JSON array, and the last sequence
    /// number it used: the answer to a sync request. Copied under the room's shard
    /// lock (so the sequence number and the entries agree), serialized after.
    pub fn owned_entries(&self, room: &str, now: UnixMs) -> (u64, String) {
        let Some(cluster) = self.cluster.get() else {
            return (0, "[]".into());
        };
        let shard = self.lock(room);
        let Some(merge) = &shard.merge else {
            return (0, "[]".into());
        };
        let seq = cluster.seq.load(Ordering::Acquire);
        let entries: Vec<Entry> = shard
            .materializer
            .entries(room, now)
            .filter(|e| !merge.is_remote(room, e.client))
            .cloned()
            .collect();
        drop(shard);
        (seq, protocol::entries_json(entries.iter()))
    }

    /// Every live entry this node owns, as upserts with fresh sequence numbers. Takes
    /// one shard's lock at a time.
    pub fn owned_live(&self, now: UnixMs) -> Vec<Outgoing> {
        let Some(cluster) = self.cluster.get() else {
            return Vec::new();
        };
        let mut owned = Vec::new();
        for index in 0..self.shards.len() {
            let shard = self.lock_shard(index);
            let Some(merge) = &shard.merge else {
                continue;
            };
            let materializer = &shard.materializer;
            for (room, _) in materializer.rooms(now) {
                for entry in materializer.entries(room, now) {
                    if merge.is_remote(room, entry.client) {
                        continue;
                    }
                    owned.push(Outgoing {
                        seq: cluster.next_seq(),
                        change: Change {
                            room: room.clone(),
                            kind: ChangeKind::Update,
                            entry: entry.clone(),
                        },
                    });
                }
            }
        }
        owned
    }
}
