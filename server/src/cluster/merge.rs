//! The cluster merge: which node owns each entry of a followed room, and whether a
//! message from another node still says something new.
//!
//! A pure state machine: it never touches the engine. Each call says what the hub
//! must do to its materializer ([`Upsert`], [`Removal`]); the hub does it under its
//! lock. Messages of one node arrive in order on the bus, but a sync reply (a node's
//! entries as of some sequence number) races them: every decision compares the
//! `(node, seq)` that last set an entry, removals are remembered (tombstones) so that
//! a reply taken before a removal cannot bring the entry back, and a node's messages
//! no later than its last folded sync reply are already reflected in it. The same
//! rules make a replayed message useless: it is older than what is known of its
//! entry. Tombstones are kept for [`TOMBSTONE_MS`], past the bus's freshness window
//! (an older message is refused before it gets here).

use std::hash::RandomState;
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use rollcall_engine::{ChangeKind, ClientId, Entry, UnixMs};

use crate::cluster::bus::MAX_AGE_MS;

/// How long a removal is remembered: a message is refused once its timestamp is
/// [`MAX_AGE_MS`] away from this node's clock, either way, so a message older than a
/// tombstone this old cannot get here any more.
pub(crate) const TOMBSTONE_MS: u64 = 2 * MAX_AGE_MS;

/// Which message last set an entry: its node and that node's sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The owning node.
    pub(crate) node: u16,
    /// The message's sequence number on that node.
    pub(crate) seq: u64,
}

impl Origin {
    /// Whether a message from `self` is older than what `seen` records.
    fn is_older_than(self, seen: Option<&Origin>) -> bool {
        seen.is_some_and(|seen| seen.node == self.node && seen.seq > self.seq)
    }
}

/// Who owns the remote entries of one followed room.
#[derive(Debug, Default)]
struct RemoteRoom {
    generation: u64,
    /// Entries of other nodes: which node, and the message that last set them. Every
    /// other entry of the room is this node's own.
    origins: HashMap<ClientId, Origin>,
    /// Removals of the last [`TOMBSTONE_MS`]: the message that removed the entry,
    /// and when this node saw it.
    tombstones: HashMap<ClientId, (Origin, UnixMs)>,
    /// When tombstones were last pruned.
    pruned: UnixMs,
    /// Per node: the sequence number of its last folded sync reply. Its messages
    /// up to it are reflected in that reply.
    synced: HashMap<u16, u64>,
}

impl RemoteRoom {
    /// Whether a message of `origin` about `client` says nothing new: older than its
    /// node's last folded sync reply, than what set the entry, or than its removal.
    fn knows_better(&self, origin: Origin, client: ClientId) -> bool {
        self.synced
            .get(&origin.node)
            .is_some_and(|&synced| origin.seq < synced)
            || origin.is_older_than(self.origins.get(&client))
            || origin.is_older_than(self.tombstones.get(&client).map(|(o, _)| o))
    }

    fn bury(&mut self, client: ClientId, origin: Origin, now: UnixMs) {
        if now.0.saturating_sub(self.pruned.0) >= TOMBSTONE_MS / 4 {
            self.tombstones
                .retain(|_, (_, at)| now.0.saturating_sub(at.0) < TOMBSTONE_MS);
            self.pruned = now;
        }
        let newer = self
            .tombstones
            .get(&client)
            .is_none_or(|(seen, _)| seen.node != origin.node || seen.seq <= origin.seq);
        if newer {
            self.tombstones.insert(client, (origin, now));
        }
    }
}

/// What to do with another node's upsert.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Upsert {
    /// Fold the entry (unlogged: its owner logs it).
    Fold,
    /// The client moved here from this node: remove this node's own entry (logged, so
    /// a restart does not bring it back), then fold the entry.
    TakeOver,
}

/// What to do with another node's removal.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Removal {
    /// Remove the remote entry (unlogged), reported with this kind.
    Remote(ChangeKind),
    /// The client left through another node while this node held its entry as its
    /// own: remove it (logged). It is gone everywhere.
    Own,
}

/// The merge state of every room this node follows. Room names come from clients, so
/// the map uses a keyed hasher.
#[derive(Debug)]
pub(crate) struct Merge {
    node: u16,
    rooms: HashMap<Arc<str>, RemoteRoom, RandomState>,
    next_generation: u64,
}

impl Merge {
    /// The merge state of node `node`, following no room.
    pub(crate) fn new(node: u16) -> Merge {
        Merge {
            node,
            rooms: HashMap::default(),
            next_generation: 0,
        }
    }

    /// Starts following `room`; returns the generation that tells its messages from
    /// those of an earlier following.
    pub(crate) fn follow(&mut self, room: Arc<str>) -> u64 {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.rooms.insert(
            room,
            RemoteRoom {
                generation,
                ..RemoteRoom::default()
            },
        );
        generation
    }

    /// Stops following `room`; returns the other nodes' entries to forget.
    pub(crate) fn unfollow(&mut self, room: &str) -> Vec<ClientId> {
        self.rooms
            .remove(room)
            .map(|remote| remote.origins.into_keys().collect())
            .unwrap_or_default()
    }

    /// Whether `generation` is the current following of `room`.
    pub(crate) fn follows(&self, room: &str, generation: u64) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.generation == generation)
    }

    /// Whether a message of `node` about `room` in `generation` is for this node: not
    /// its own, and about the current following of a followed room.
    pub(crate) fn accepts(&self, room: &str, generation: u64, node: u16) -> bool {
        node != self.node && self.follows(room, generation)
    }

    /// Whether `client`'s entry in `room` is another node's.
    pub(crate) fn is_remote(&self, room: &str, client: ClientId) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.origins.contains_key(&client))
    }

    /// Entries of `room` held for other nodes.
    pub(crate) fn remote_in(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |r| r.origins.len())
    }

    /// Entries held for other nodes, in every room.
    pub(crate) fn remote_entries(&self) -> usize {
        self.rooms.values().map(|r| r.origins.len()).sum()
    }

    /// A heartbeat or leave of a local client: the entry is this node's now.
    pub(crate) fn owned(&mut self, room: &str, client: ClientId) {
        if let Some(remote) = self.rooms.get_mut(room) {
            remote.origins.remove(&client);
        }
    }

    /// An entry of `room` expired here by its TTL; returns whether it was this node's
    /// (whose expiry the other nodes must hear of).
    pub(crate) fn expired(&mut self, room: &str, client: ClientId) -> bool {
        self.rooms
            .get_mut(room)
            .and_then(|r| r.origins.remove(&client))
            .is_none()
    }

    /// Another node's upsert of `entry`, set by `origin`. `own_expiry` is when this
    /// node's own live entry of the client expires, if it holds one. `None`: ignore it
    /// (expired, older than what is known, or this node's own entry lasts longer).
    pub(crate) fn upsert(
        &mut self,
        room: &str,
        origin: Origin,
        entry: &Entry,
        own_expiry: Option<UnixMs>,
        now: UnixMs,
    ) -> Option<Upsert> {
        if entry.expires_at < now {
            return None;
        }
        let remote = self.rooms.get_mut(room)?;
        let client = entry.client;
        if remote.knows_better(origin, client) {
            return None;
        }
        let mut action = Upsert::Fold;
        if !remote.origins.contains_key(&client) {
            if let Some(own_expiry) = own_expiry {
                // The client moved to another node: keep the later of the two.
                if own_expiry > entry.expires_at {
                    return None;
                }
                action = Upsert::TakeOver;
            }
        }
        remote.origins.insert(client, origin);
        Some(action)
    }

    /// Another node's removal (`kind` is `Leave` or `Expire`) of `client`'s entry, sent
    /// by `origin`. `holds_own` says whether this node holds a live entry of the client
    /// as its own. `None`: nothing to do.
    pub(crate) fn remove(
        &mut self,
        room: &str,
        origin: Origin,
        client: ClientId,
        kind: ChangeKind,
        holds_own: bool,
        now: UnixMs,
    ) -> Option<Removal> {
        let remote = self.rooms.get_mut(room)?;
        if remote
            .synced
            .get(&origin.node)
            .is_some_and(|&synced| origin.seq < synced)
        {
            return None;
        }
        remote.bury(client, origin, now);
        match remote.origins.get(&client) {
            Some(seen) if seen.node != origin.node || seen.seq > origin.seq => None,
            Some(_) => {
                remote.origins.remove(&client);
                Some(Removal::Remote(kind))
            }
            None if kind == ChangeKind::Leave && holds_own => Some(Removal::Own),
            None => None,
        }
    }

    /// Node `node` is taken for dead: forgets its entries in every room (each buried
    /// under the message that last set it, so a replay of an older one is refused).
    /// Returns them, to remove.
    pub(crate) fn lost(&mut self, node: u16, now: UnixMs) -> Vec<(Arc<str>, ClientId)> {
        let mut gone = Vec::new();
        for (name, remote) in &mut self.rooms {
            let clients: Vec<(ClientId, Origin)> = remote
                .origins
                .iter()
                .filter(|(_, origin)| origin.node == node)
                .map(|(client, origin)| (*client, *origin))
                .collect();
            for (client, origin) in clients {
                remote.origins.remove(&client);
                remote.bury(client, origin, now);
                gone.push((name.clone(), client));
            }
        }
        gone
    }

    /// A sync of `room` begins. Nothing to prepare: removals are always remembered.
    #[allow(clippy::unused_self, reason = "kept for the hub's sync protocol")]
    pub(crate) fn sync_started(&mut self, _room: &str, _generation: u64) {}

    /// After a sync reply of `origin` listing `listed` was folded: the entries that
    /// node set no later than the reply and no longer lists (removed since). Remove
    /// them, then call [`Merge::reply_folded`].
    pub(crate) fn unlisted(
        &self,
        room: &str,
        origin: Origin,
        listed: &HashSet<ClientId>,
    ) -> Vec<ClientId> {
        self.rooms
            .get(room)
            .map(|r| {
                r.origins
                    .iter()
                    .filter(|(client, seen)| {
                        seen.node == origin.node
                            && seen.seq <= origin.seq
                            && !listed.contains(*client)
                    })
                    .map(|(client, _)| *client)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A sync reply of `origin` is folded: that node's messages before it say nothing
    /// new.
    pub(crate) fn reply_folded(&mut self, room: &str, origin: Origin) {
        if let Some(remote) = self.rooms.get_mut(room) {
            let synced = remote.synced.entry(origin.node).or_insert(0);
            *synced = (*synced).max(origin.seq);
        }
    }

    /// The sync of `room` is over.
    #[allow(clippy::unused_self, reason = "kept for the hub's sync protocol")]
    pub(crate) fn sync_ended(&mut self, _room: &str) {}
}

#[cfg(test)]
mod tests {
    //! Model test: one remote node runs a random script of heartbeats and leaves; this
    //! node joins at a random point, syncs (the reply taken at a random point, folded
    //! at another) and receives every live message from its join on, in order. Once
    //! everything is delivered, what this node holds for the remote node must equal
    //! the remote node's final state, whatever the interleaving.

    use std::collections::BTreeMap;

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    const ROOM: &str = "room";
    const NOW: UnixMs = UnixMs(1_000);

    #[derive(Clone, Debug)]
    enum Op {
        Beat(u64, u8),
        Leave(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1..5u64, any::<u8>()).prop_map(|(c, v)| Op::Beat(c, v)),
            1 => (1..5u64).prop_map(Op::Leave),
        ]
    }

    fn entry(client: u64, value: u8) -> Entry {
        Entry {
            client: ClientId(client),
            user: None,
            data: Bytes::from(vec![value]),
            expires_at: UnixMs(NOW.0 + 60_000),
        }
    }

    /// This node's view: the merge state and the remote entries folded into it.
    struct Local {
        merge: Merge,
        held: BTreeMap<u64, u8>,
        generation: u64,
    }

    impl Local {
        fn deliver(&mut self, seq: u64, op: &Op) {
            assert!(self.merge.accepts(ROOM, self.generation, 2));
            let origin = Origin { node: 2, seq };
            match *op {
                Op::Beat(client, value) => {
                    if self
                        .merge
                        .upsert(ROOM, origin, &entry(client, value), None, NOW)
                        == Some(Upsert::Fold)
                    {
                        self.held.insert(client, value);
                    }
                }
                Op::Leave(client) => {
                    let removal = self.merge.remove(
                        ROOM,
                        origin,
                        ClientId(client),
                        ChangeKind::Leave,
                        false,
                        NOW,
                    );
                    if removal.is_some() {
                        self.held.remove(&client);
                    }
                }
            }
        }

        fn fold_reply(&mut self, seq: u64, entries: &BTreeMap<u64, u8>) {
            let origin = Origin { node: 2, seq };
            let mut listed = HashSet::new();
            for (&client, &value) in entries {
                listed.insert(ClientId(client));
                if self
                    .merge
                    .upsert(ROOM, origin, &entry(client, value), None, NOW)
                    == Some(Upsert::Fold)
                {
                    self.held.insert(client, value);
                }
            }
            for client in self.merge.unlisted(ROOM, origin, &listed) {
                if self
                    .merge
                    .remove(ROOM, origin, client, ChangeKind::Leave, false, NOW)
                    .is_some()
                {
                    self.held.remove(&client.0);
                }
            }
            self.merge.reply_folded(ROOM, origin);
            self.merge.sync_ended(ROOM);
        }
    }

    fn apply(state: &mut BTreeMap<u64, u8>, op: &Op) {
        match *op {
            Op::Beat(client, value) => {
                state.insert(client, value);
            }
            Op::Leave(client) => {
                state.remove(&client);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn every_interleaving_converges_to_the_owner_state(
            script in proptest::collection::vec(op(), 0..40),
            join in 0..41usize,
            taken in 0..41usize,
            folded in 0..41usize,
        ) {
            let n = script.len();
            let join = join.min(n);
            // The reply is taken after the request, which follows the join. It races
            // the live messages: it may be folded before or after those it covers.
            let taken = taken.clamp(join, n);
            let folded = folded.clamp(join, n);
            let mut owner = BTreeMap::new();
            let mut reply = None;
            let mut local = Local { merge: Merge::new(1), held: BTreeMap::new(), generation: 0 };
            local.generation = local.merge.follow(ROOM.into());
            local.merge.sync_started(ROOM, local.generation);
            // Messages before the join are missed; sequence numbers start at 1.
            for (i, op) in script.iter().enumerate() {
                if i == taken {
                    reply = Some((i as u64, owner.clone()));
                }
                apply(&mut owner, op);
            }
            let reply = reply.unwrap_or((n as u64, owner.clone()));
            let mut folded_yet = false;
            for (i, op) in script.iter().enumerate().skip(join) {
                if i == folded {
                    local.fold_reply(reply.0, &reply.1);
                    folded_yet = true;
                }
                local.deliver(i as u64 + 1, op);
            }
            if !folded_yet {
                local.fold_reply(reply.0, &reply.1);
            }
            prop_assert_eq!(&local.held, &owner, "script {:?}", script);
            // A replay of any of the node's messages, in any order, says nothing new.
            for (i, op) in script.iter().enumerate().rev() {
                local.deliver(i as u64 + 1, op);
            }
            for (i, op) in script.iter().enumerate() {
                local.deliver(i as u64 + 1, op);
            }
            prop_assert_eq!(&local.held, &owner, "replayed: script {:?}", script);
        }
    }

    #[test]
    fn a_client_that_moved_here_keeps_the_later_entry() {
        let mut merge = Merge::new(1);
        let generation = merge.follow(ROOM.into());
        assert!(merge.accepts(ROOM, generation, 2));
        assert!(!merge.accepts(ROOM, generation, 1), "own messages");
        assert!(!merge.accepts(ROOM, generation + 1, 2), "another following");
        let origin = Origin { node: 2, seq: 1 };
        let remote = entry(7, 0);
        // Ours lasts longer: ignore theirs.
        let later = UnixMs(remote.expires_at.0 + 1);
        assert_eq!(merge.upsert(ROOM, origin, &remote, Some(later), NOW), None);
        assert!(!merge.is_remote(ROOM, ClientId(7)));
        // Theirs lasts longer: it takes over, and the entry is theirs from now on.
        let earlier = UnixMs(remote.expires_at.0 - 1);
        assert_eq!(
            merge.upsert(ROOM, origin, &remote, Some(earlier), NOW),
            Some(Upsert::TakeOver)
        );
        assert!(merge.is_remote(ROOM, ClientId(7)));
        assert_eq!(merge.remote_entries(), 1);
        // A local heartbeat takes it back; its expiry is then this node's to publish.
        merge.owned(ROOM, ClientId(7));
        assert!(merge.expired(ROOM, ClientId(7)));
        // A leave through another node of an entry held as own removes it here.
        assert_eq!(
            merge.remove(ROOM, origin, ClientId(7), ChangeKind::Leave, true, NOW),
            Some(Removal::Own)
        );
        assert_eq!(
            merge.remove(ROOM, origin, ClientId(7), ChangeKind::Expire, true, NOW),
            None,
            "another node's expiry never removes an own entry"
        );
        assert_eq!(merge.unfollow(ROOM), Vec::<ClientId>::new());
    }
}
