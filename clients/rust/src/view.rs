//! What changes in a room's presence: [`Diff`]s, as a stream or a listener.

use std::collections::BTreeMap;
use std::sync::Weak;

use tokio::sync::watch;

use crate::Entry;
use crate::client::{Shared, live_entries, next_expiry};

/// What changed in a room since the previous notification, by client id. A refresh
/// (a heartbeat with the same data, which only moves `expires_at_ms`) is not a change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Entries that appeared.
    pub joined: Vec<u64>,
    /// Entries that went away (left, expired, or dropped from a snapshot).
    pub left: Vec<u64>,
    /// Entries whose `data` (or `user_id`) changed.
    pub updated: Vec<u64>,
}

impl Diff {
    /// The difference from `before` to `after`.
    pub fn between(before: &BTreeMap<u64, Entry>, after: &BTreeMap<u64, Entry>) -> Diff {
        let mut diff = Diff::default();
        for (id, entry) in after {
            match before.get(id) {
                None => diff.joined.push(*id),
                Some(old) if old.data != entry.data || old.user_id != entry.user_id => {
                    diff.updated.push(*id);
                }
                Some(_) => {}
            }
        }
        diff.left = before
            .keys()
            .filter(|id| !after.contains_key(id))
            .copied()
            .collect();
        diff
    }

    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.left.is_empty() && self.updated.is_empty()
    }
}

/// The changes of one room's live entries, from [`Presence::diffs`](crate::Presence::diffs).
#[derive(Debug)]
pub struct DiffStream {
    shared: Weak<Shared>,
    room: String,
    version: watch::Receiver<u64>,
    last: BTreeMap<u64, Entry>,
}

impl DiffStream {
    pub(crate) fn new(
        shared: Weak<Shared>,
        room: String,
        version: watch::Receiver<u64>,
        last: BTreeMap<u64, Entry>,
    ) -> DiffStream {
        DiffStream {
            shared,
            room,
            version,
            last,
        }
    }

    /// The live entries and what changed since the previous call (or since the
    /// stream was made), once something did; `None` once the client is closed. An
    /// entry that expires by the estimated server clock counts as left at once.
    pub async fn next(&mut self) -> Option<(BTreeMap<u64, Entry>, Diff)> {
        loop {
            let (value, wake) = {
                let shared = self.shared.upgrade()?;
                if shared.is_closed() {
                    return None;
                }
                (
                    live_entries(&shared, &self.room),
                    next_expiry(&shared, &self.room),
                )
            };
            let diff = Diff::between(&self.last, &value);
            if !diff.is_empty() {
                self.last.clone_from(&value);
                return Some((value, diff));
            }
            self.last = value;
            let expiry = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.version.changed() => changed.ok()?,
                () = expiry => {}
            }
        }
    }
}

/// A listener registered with [`Presence::on_change`](crate::Presence::on_change):
/// it runs until this handle is dropped (or [`cancel`](OnChange::cancel)led) or the
/// client closes.
#[derive(Debug)]
#[must_use = "dropping the handle stops the listener"]
pub struct OnChange {
    task: tokio::task::JoinHandle<()>,
}

impl OnChange {
    pub(crate) fn new(task: tokio::task::JoinHandle<()>) -> OnChange {
        OnChange { task }
    }

    /// Stops the listener.
    pub fn cancel(self) {}
}

impl Drop for OnChange {
    fn drop(&mut self) {
        self.task.abort();
    }
}
