//! Which node sends a room's webhooks: rendezvous hashing over the live nodes.
//!
//! Every node ranks every live node (itself included) for a room by a hash of the
//! room's name and the node's id; the first is the room's **owner** (it sends the
//! room's webhook events), the second its **backup**. Both follow the room (hold
//! it), so each has the cluster-wide view of it: when the owner dies, the backup,
//! now the owner, removes the dead node's entries and reports their departures from
//! a view that was already complete. The hash is the same on every node, so nodes
//! that agree on who is alive agree on the owner, and a node joining or leaving
//! moves only the rooms it ranks first (or second) for.
//!
//! A backup keeps the events it would have sent for a short while ([`Members`]);
//! when it becomes a room's owner it sends that room's kept events again, since the
//! dead owner may not have delivered them: at least once, so a receiver may see a
//! room's last events twice around a takeover.

use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use sha2::{Digest, Sha256};

/// How many nodes hold each room: the owner and one backup.
pub const HOLDERS: usize = 2;

/// Node `node`'s rank for `room`: the higher, the more it owns it.
pub fn rank(room: &str, node: u16) -> u64 {
    let mut hash = Sha256::new();
    hash.update(b"rollcall owner v1");
    hash.update(node.to_be_bytes());
    hash.update(room.as_bytes());
    let digest = hash.finalize();
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The first `k` of `nodes` for `room`, best first (ties, which a 64-bit hash all but
/// never makes, go to the lower id).
pub fn ranked(room: &str, nodes: &[u16], k: usize) -> Vec<u16> {
    let mut ranks: Vec<(u64, u16)> = nodes.iter().map(|&n| (rank(room, n), n)).collect();
    ranks.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    ranks.truncate(k);
    ranks.into_iter().map(|(_, n)| n).collect()
}

/// Told when the live nodes change (the webhooks' sender, to send again what a room
/// it now owns may have lost).
pub trait Takeover: Send + Sync + std::fmt::Debug {
    /// The live nodes changed to those of `members`; called under the members' lock,
    /// so no event is judged against the new list before this returns.
    fn members_changed(&self, members: &Live);
}

/// The live nodes as this node sees them: itself and the other nodes it hears.
#[derive(Debug, Clone)]
pub struct Live {
    /// This node.
    pub me: u16,
    /// Every live node, this one included, sorted.
    pub nodes: Vec<u16>,
}

impl Live {
    /// Whether this node owns `room`.
    pub fn owns(&self, room: &str) -> bool {
        ranked(room, &self.nodes, 1).first() == Some(&self.me)
    }

    /// Whether this node holds `room`: it is its owner or its backup.
    pub fn holds(&self, room: &str) -> bool {
        ranked(room, &self.nodes, HOLDERS).contains(&self.me)
    }

    /// This node's part in `room`: 0 for its owner, 1 for its backup, `None` for
    /// neither (one ranking for both questions).
    pub fn place(&self, room: &str) -> Option<usize> {
        ranked(room, &self.nodes, HOLDERS)
            .iter()
            .position(|&n| n == self.me)
    }
}

/// The cluster's live members, shared by the cluster tasks (which keep it current)
/// and the webhooks (which send only the events of the rooms this node owns).
#[derive(Debug)]
pub struct Members {
    live: RwLock<Live>,
    takeover: OnceLock<Arc<dyn Takeover>>,
}

impl Members {
    /// Node `me` alone, until it hears of others.
    pub fn new(me: u16) -> Members {
        Members {
            live: RwLock::new(Live {
                me,
                nodes: vec![me],
            }),
            takeover: OnceLock::new(),
        }
    }

    /// Tells `takeover` of every change from now on.
    pub fn on_change(&self, takeover: Arc<dyn Takeover>) {
        let _ = self.takeover.set(takeover);
    }

    /// The live nodes now.
    #[cfg(test)]
    pub fn live(&self) -> Live {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs `f` with the live nodes, which do not change meanwhile.
    pub fn with_live<T>(&self, f: impl FnOnce(&Live) -> T) -> T {
        f(&self.live.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether this node holds `room` now.
    pub fn holds(&self, room: &str) -> bool {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .holds(room)
    }

    /// The other live nodes are `others`; returns whether that changed anything.
    pub fn set(&self, others: impl IntoIterator<Item = u16>) -> bool {
        let mut live = self.live.write().unwrap_or_else(PoisonError::into_inner);
        let mut nodes: Vec<u16> = others.into_iter().chain([live.me]).collect();
        nodes.sort_unstable();
        nodes.dedup();
        if nodes == live.nodes {
            return false;
        }
        live.nodes = nodes;
        if let Some(takeover) = self.takeover.get() {
            takeover.members_changed(&live);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_picks_the_same_owner_and_a_leaving_node_moves_only_its_rooms() {
        let rooms: Vec<String> = (0..3_000).map(|i| format!("room-{i}")).collect();
        let all = [1, 2, 3];
        let mut owned = [0usize; 4];
        for room in &rooms {
            let views: Vec<Live> = all
                .iter()
                .map(|&me| Live {
                    me,
                    nodes: all.to_vec(),
                })
                .collect();
            let owners: Vec<u16> = views
                .iter()
                .filter(|v| v.owns(room))
                .map(|v| v.me)
                .collect();
            assert_eq!(owners.len(), 1, "one owner of {room}: {owners:?}");
            assert_eq!(
                views.iter().filter(|v| v.holds(room)).count(),
                HOLDERS,
                "owner and backup of {room}"
            );
            owned[usize::from(owners[0])] += 1;
            // Node 3 goes: rooms it did not own keep their owner, and its rooms go to
            // their backup.
            let before = ranked(room, &all, 2);
            let after = ranked(room, &[1, 2], 1)[0];
            if before[0] == 3 {
                assert_eq!(after, before[1], "{room} goes to its backup");
            } else {
                assert_eq!(after, before[0], "{room} keeps its owner");
            }
        }
        // Spread evenly enough: each node owns about a third.
        for (node, owned) in owned.iter().enumerate().skip(1) {
            assert!(
                (800..1_200).contains(owned),
                "node {node} owns {owned} of 3000"
            );
        }
    }

    #[test]
    fn alone_a_node_owns_everything_and_changes_are_reported_once() {
        #[derive(Debug, Default)]
        struct Seen(std::sync::Mutex<Vec<Vec<u16>>>);
        impl Takeover for Seen {
            fn members_changed(&self, members: &Live) {
                self.0.lock().unwrap().push(members.nodes.clone());
            }
        }
        let members = Members::new(2);
        assert!(members.live().owns("anything") && members.holds("anything"));
        let seen = Arc::new(Seen::default());
        members.on_change(seen.clone());
        assert!(members.set([3, 1]));
        assert!(!members.set([1, 3]), "the same nodes");
        assert!(members.set([1]));
        assert_eq!(*seen.0.lock().unwrap(), vec![vec![1, 2, 3], vec![1, 2]]);
        assert_eq!(members.live().nodes, vec![1, 2]);
        // The rank is a fixed function: the same on every node and every version.
        assert_eq!(rank("a", 1), rank("a", 1));
        assert_ne!(rank("a", 1), rank("a", 2));
        assert_ne!(rank("a", 1), rank("b", 1));
    }
}
