//! `sample` subscriptions: a room's oldest entries, at most `limit` of them, kept
//! stable, plus the room's counts.
//!
//! A room with sample subscribers keeps its entries in join order (the materializer's
//! join numbers: `Materializer::joined`), and one group per distinct `limit`. A group's
//! sample is the first `limit` entries of that order; it is stable by construction:
//! a newer entry never passes an older one, so a sampled entry stays sampled while it
//! lives, and when one goes the next oldest takes its place. Each group has a
//! [`Feed`] of its own that carries only the changes to its sample: an update of a
//! sampled entry, the removal of one and, in its place, the next oldest entry (an
//! `upsert`: it joins the sample), a new entry while the sample is not full. Its
//! subscribers read that feed like full subscribers read the room's (pacing,
//! conflation, shared frames, resync all as in `fanout.rs`).
//!
//! Cost, under the room's shard lock: a change costs O(groups) (a comparison with each
//! group's last sampled join number) plus O(log entries) to keep the order when an
//! entry comes or goes. A change to an unsampled entry publishes nothing and wakes no
//! sample subscriber: in a 20,000-entry room, a sample subscriber pays only for the
//! changes to its sample. Building the order when a room gets its first sample
//! subscriber costs O(entries log entries), once; it is dropped with the last one.
//!
//! The counts come from `listing::RoomCounts` (O(1)): in the snapshot, then as
//! `occupancy` frames when they move (see `fanout.rs`).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hashbrown::HashMap;
use rollcall_engine::{Change, ChangeKind, ClientId, Entry, Materializer, UnixMs};

use crate::fanout::{Feed, Outbox, Published, Subscription};
use crate::listing::RoomCounts;
use crate::protocol;

/// A room's sample groups. Only touched under the room's shard lock (its own lock is
/// never contended): the order of its changes is the fold's.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    index: Mutex<Option<Box<Index>>>,
}

/// The room's entries in join order, and its groups.
#[derive(Debug)]
struct Index {
    /// Join number → client, oldest first.
    order: BTreeMap<u64, ClientId>,
    /// Client → join number.
    joined: HashMap<ClientId, u64>,
    groups: Vec<Group>,
}

/// The sample subscribers of one `limit`.
#[derive(Debug)]
struct Group {
    limit: usize,
    feed: Arc<Feed>,
    /// The join number of the newest sampled entry: the sample is every entry that
    /// joined no later (none if the room is empty).
    last: Option<u64>,
    /// Entries in the sample: `min(limit, entries)`.
    len: usize,
}

impl Group {
    fn holds(&self, joined: u64) -> bool {
        self.last.is_some_and(|last| joined <= last)
    }

    fn publish(&self, change: Arc<Published>, published: &mut Vec<(Arc<Feed>, Arc<Published>)>) {
        self.feed.publish(change.clone(), self.len);
        published.push((self.feed.clone(), change));
    }
}

/// A sample subscription's snapshot, copied under the shard lock (a few reference
/// counts per entry) and serialized after it.
#[derive(Debug)]
pub(crate) struct SampleView {
    room: Arc<str>,
    now: UnixMs,
    entries: Vec<Entry>,
    counts: (usize, usize),
    head: u64,
}

impl SampleView {
    /// Queues the snapshot for `subscription`; its changes follow from the view's head.
    pub(crate) fn reset(&self, subscription: &Subscription) {
        let snapshot = protocol::sample_snapshot(&self.room, self.now, &self.entries, self.counts);
        subscription.reset_sample(snapshot, self.head, self.counts);
    }

    /// Queues the snapshot for `subscription` (its changes follow from the view's
    /// head), then the ack of `reference`.
    pub(crate) fn start(
        &self,
        subscription: &Subscription,
        outbox: &Outbox,
        reference: Option<u64>,
    ) {
        self.reset(subscription);
        if let Some(reference) = reference {
            outbox.push_control(protocol::ack(reference, None));
        }
    }
}

impl Samples {
    fn lock(&self) -> MutexGuard<'_, Option<Box<Index>>> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The feed of `room`'s sample of `limit` entries, made if there is none (the
    /// room's first sample subscriber builds its join order: O(entries log entries)).
    /// Call under the room's shard lock.
    pub(crate) fn feed(&self, room: &str, limit: usize, materializer: &Materializer) -> Arc<Feed> {
        let mut guard = self.lock();
        let index = guard.get_or_insert_with(|| {
            let order: BTreeMap<u64, ClientId> = materializer.joins(room).collect();
            let joined = order.iter().map(|(&at, &client)| (client, at)).collect();
            Box::new(Index {
                order,
                joined,
                groups: Vec::new(),
            })
        });
        if let Some(group) = index.groups.iter().find(|g| g.limit == limit) {
            return group.feed.clone();
        }
        let len = limit.min(index.order.len());
        let last = len
            .checked_sub(1)
            .and_then(|i| index.order.keys().nth(i).copied());
        let feed = Feed::new();
        index.groups.push(Group {
            limit,
            feed: feed.clone(),
            last,
            len,
        });
        feed
    }

    /// `subscription`'s sample, oldest first (entries that expired but were not swept
    /// yet left out: their `expire` follows), the room's counts and its sample feed's
    /// head. Call under the room's shard lock.
    pub(crate) fn view(
        &self,
        subscription: &Subscription,
        materializer: &Materializer,
        counts: &RoomCounts,
        now: UnixMs,
    ) -> SampleView {
        let guard = self.lock();
        let room = &subscription.room;
        let entries = guard
            .as_ref()
            .and_then(|index| {
                let group = index
                    .groups
                    .iter()
                    .find(|g| Arc::ptr_eq(&g.feed, subscription.feed()))?;
                Some(
                    index
                        .order
                        .values()
                        .take(group.len)
                        .filter_map(|&client| materializer.get(room, client, now).cloned())
                        .collect(),
                )
            })
            .unwrap_or_default();
        SampleView {
            room: room.clone(),
            now,
            entries,
            counts: counts.occupancy(room),
            head: subscription.feed().head(),
        }
    }

    /// Folds a change of the room into its samples: publishes on each group's feed what
    /// its sample sees of it (nothing, for an unsampled entry). Call under the room's
    /// shard lock, after the materializer folded the change.
    pub(crate) fn apply(
        &self,
        change: &Change,
        materializer: &Materializer,
        published: &mut Vec<(Arc<Feed>, Arc<Published>)>,
    ) {
        let mut guard = self.lock();
        let Some(index) = guard.as_deref_mut() else {
            return;
        };
        let client = change.entry.client;
        // Serialized at most once, shared by every group it goes to.
        let mut shared = None::<Arc<Published>>;
        let mut as_published = || {
            shared
                .get_or_insert_with(|| Published::new(change.clone()))
                .clone()
        };
        match change.kind {
            ChangeKind::Insert => {
                let Some(joined) = materializer.joined(&change.room, client) else {
                    return;
                };
                index.order.insert(joined, client);
                index.joined.insert(client, joined);
                for group in &mut index.groups {
                    if group.len < group.limit {
                        group.len += 1;
                        group.last = Some(joined);
                        group.publish(as_published(), published);
                    }
                }
            }
            ChangeKind::Update => {
                let Some(&joined) = index.joined.get(&client) else {
                    return;
                };
                for group in &index.groups {
                    if group.holds(joined) {
                        group.publish(as_published(), published);
                    }
                }
            }
            ChangeKind::Leave | ChangeKind::Expire => {
                let Some(joined) = index.joined.remove(&client) else {
                    return;
                };
                index.order.remove(&joined);
                for group in &mut index.groups {
                    let Some(last) = group.last.filter(|_| group.holds(joined)) else {
                        continue;
                    };
                    group.publish(as_published(), published);
                    // The next oldest entry takes its place.
                    let next = index
                        .order
                        .range((Bound::Excluded(last), Bound::Unbounded))
                        .next();
                    match next {
                        Some((&next_joined, &next_client)) => {
                            group.last = Some(next_joined);
                            if let Some(entry) = materializer.held(&change.room, next_client) {
                                let joins = Change {
                                    room: change.room.clone(),
                                    kind: ChangeKind::Insert,
                                    entry: entry.clone(),
                                };
                                group.publish(Published::new(joins), published);
                            }
                        }
                        None => {
                            group.len -= 1;
                            group.last = index.order.last_key_value().map(|(&at, _)| at);
                        }
                    }
                }
            }
        }
    }

    /// Stops `subscription` reading its sample's feed; the last subscriber of a group
    /// drops it, and the last group drops the room's join order.
    pub(crate) fn remove(&self, subscription: &Arc<Subscription>) {
        let mut guard = self.lock();
        let Some(index) = guard.as_deref_mut() else {
            return;
        };
        let feed = subscription.feed();
        let Some(at) = index.groups.iter().position(|g| Arc::ptr_eq(&g.feed, feed)) else {
            return;
        };
        if feed.remove_reader(subscription) == 0 {
            index.groups.swap_remove(at);
        }
        if index.groups.is_empty() {
            *guard = None;
        }
    }

    /// Sample groups (distinct limits) in the room.
    #[cfg(test)]
    pub(crate) fn groups(&self) -> usize {
        self.lock().as_ref().map_or(0, |index| index.groups.len())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use rollcall_engine::{Ticket, Ttl};
    use serde_json::Value;

    use super::*;
    use crate::fanout::{Drained, Mode};
    use crate::hub::Hub;

    const TTL: Ttl = Ttl(60_000);

    struct Room {
        hub: Hub,
        room: Arc<str>,
    }

    impl Room {
        fn new() -> Room {
            Room {
                hub: Hub::in_memory(1).expect("hub"),
                room: "webinar".into(),
            }
        }

        fn beat(&self, client: u64, user: Option<&str>, data: &str) {
            self.hub
                .heartbeat(
                    &self.room,
                    ClientId(client),
                    user.map(Arc::from),
                    Bytes::copy_from_slice(data.as_bytes()),
                    TTL,
                )
                .expect("heartbeat");
        }

        fn leave(&self, client: u64) {
            self.hub.leave(&self.room, ClientId(client));
        }

        fn sample(
            &self,
            outbox: &Arc<Outbox>,
            limit: usize,
            interval: Duration,
        ) -> Arc<Subscription> {
            self.hub.subscribe_mode(
                &self.room,
                outbox,
                None,
                Some(1),
                interval,
                Mode::Sample(limit),
            )
        }

        fn groups(&self) -> usize {
            self.hub.sample_groups(&self.room)
        }
    }

    /// The messages an outbox has ready at `at`.
    fn read(outbox: &Outbox, at: Instant) -> Vec<Value> {
        let mut out = Drained::default();
        outbox.drain(Ticket(u64::MAX), UnixMs(1), at, &mut out);
        out.frames
            .iter()
            .map(|frame| serde_json::from_str(frame).expect("JSON"))
            .collect()
    }

    fn clients(entries: &Value) -> Vec<u64> {
        entries
            .as_array()
            .expect("an array")
            .iter()
            .map(|e| e["clientId"].as_u64().expect("clientId"))
            .collect()
    }

    /// `changes` frames as (op, clientId) pairs, in order.
    fn changes(messages: &[Value]) -> Vec<(String, u64)> {
        messages
            .iter()
            .filter(|m| m["type"] == "changes")
            .flat_map(|m| m["changes"].as_array().expect("changes").clone())
            .map(|c| {
                (
                    c["op"].as_str().expect("op").to_owned(),
                    c["clientId"].as_u64().expect("clientId"),
                )
            })
            .collect()
    }

    fn op(op: &str, client: u64) -> (String, u64) {
        (op.to_owned(), client)
    }

    #[test]
    fn the_oldest_entries_stay_sampled_and_the_next_oldest_replaces_one_that_goes() {
        let room = Room::new();
        for client in [4, 2, 7, 5] {
            room.beat(client, Some(&format!("u{}", client % 2)), "1");
        }
        let outbox = Arc::new(Outbox::new());
        let _sample = room.sample(&outbox, 2, Duration::ZERO);
        let t0 = Instant::now();
        let sent = read(&outbox, t0);
        assert_eq!(sent.len(), 2, "snapshot then ack: {sent:?}");
        assert_eq!(sent[0]["type"], "snapshot");
        assert_eq!(clients(&sent[0]["entries"]), vec![4, 2], "oldest first");
        assert_eq!(sent[0]["entryCount"], 4);
        assert_eq!(sent[0]["userCount"], 2);
        assert_eq!(sent[1]["ref"], 1);
        // Refreshing: a sampled entry is sent, an unsampled one is not.
        room.beat(7, Some("u1"), "2");
        room.beat(2, Some("u0"), "2");
        room.beat(4, Some("u0"), "2");
        assert_eq!(
            changes(&read(&outbox, t0)),
            vec![op("upsert", 2), op("upsert", 4)]
        );
        // A sampled entry leaves: the next oldest (7) joins the sample.
        room.leave(2);
        assert_eq!(
            changes(&read(&outbox, t0)),
            vec![op("leave", 2), op("upsert", 7)]
        );
        // A newer entry does not pass the sampled ones, and 2 coming back is the newest.
        room.beat(2, Some("u0"), "3");
        room.beat(9, None, "1");
        assert!(changes(&read(&outbox, t0)).is_empty());
        // Unsampled entries leaving change nothing in the sample.
        room.leave(5);
        room.leave(9);
        assert!(changes(&read(&outbox, t0)).is_empty());
        // 4 and 7 go: 2 is next, then nobody.
        room.leave(4);
        room.leave(7);
        assert_eq!(
            changes(&read(&outbox, t0)),
            vec![op("leave", 4), op("upsert", 2), op("leave", 7)]
        );
        // A new entry fills the sample while it is not full.
        room.beat(11, None, "1");
        room.beat(12, None, "1");
        assert_eq!(changes(&read(&outbox, t0)), vec![op("upsert", 11)]);
    }

    #[test]
    fn an_unsampled_heartbeat_costs_a_sample_subscriber_nothing() {
        let room = Room::new();
        // The most entries a room holds by default.
        for client in 1..=10_000 {
            room.beat(client, None, "1");
        }
        let outboxes: Vec<Arc<Outbox>> = (0..50).map(|_| Arc::new(Outbox::new())).collect();
        let subscriptions: Vec<Arc<Subscription>> = outboxes
            .iter()
            .map(|outbox| room.sample(outbox, 10, Duration::ZERO))
            .collect();
        assert_eq!(room.groups(), 1, "one group per limit");
        let t0 = Instant::now();
        for outbox in &outboxes {
            assert_eq!(
                clients(&read(outbox, t0)[0]["entries"]),
                (1..=10).collect::<Vec<_>>()
            );
        }
        let head = subscriptions[0].feed().head();
        // Every entry refreshes once: only the 10 sampled ones reach the sample's feed.
        for client in 1..=10_000 {
            room.beat(client, None, "2");
        }
        assert_eq!(subscriptions[0].feed().head(), head + 10);
        for outbox in &outboxes {
            let sent = read(outbox, t0);
            assert_eq!(changes(&sent).len(), 10);
        }
    }

    #[test]
    fn expired_entries_are_replaced_too() {
        let room = Room::new();
        room.hub
            .heartbeat(
                &room.room,
                ClientId(1),
                None,
                Bytes::from_static(b"1"),
                Ttl(1),
            )
            .expect("heartbeat");
        room.beat(2, None, "1");
        room.beat(3, None, "1");
        let outbox = Arc::new(Outbox::new());
        let _sample = room.sample(&outbox, 1, Duration::ZERO);
        let t0 = Instant::now();
        read(&outbox, t0);
        room.hub.sweep(UnixMs(UnixMs::now().0 + 1_000));
        assert_eq!(
            changes(&read(&outbox, t0)),
            vec![op("expire", 1), op("upsert", 2)]
        );
    }

    #[test]
    fn counts_follow_as_occupancy_at_most_once_a_second() {
        let room = Room::new();
        room.beat(1, Some("ada"), "1");
        let outbox = Arc::new(Outbox::new());
        let _sample = room.sample(&outbox, 1, Duration::ZERO);
        let t0 = Instant::now();
        read(&outbox, t0);
        // An unsampled entry joins: no change, and the counts wait for the second.
        room.beat(2, Some("bob"), "1");
        assert!(read(&outbox, t0 + Duration::from_millis(10)).is_empty());
        assert_eq!(outbox.next_due(), Some(t0 + Duration::from_secs(1)));
        room.beat(3, Some("bob"), "1");
        let sent = read(&outbox, t0 + Duration::from_secs(1));
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0]["type"], "occupancy");
        assert_eq!(
            (
                sent[0]["entryCount"].as_u64(),
                sent[0]["userCount"].as_u64()
            ),
            (Some(3), Some(2))
        );
        // Counts that did not move are not sent again; a refresh moves none.
        room.beat(3, Some("bob"), "2");
        assert!(read(&outbox, t0 + Duration::from_secs(3)).is_empty());
        // Changes to the sample are not held back by the counts' pace.
        room.leave(3);
        room.beat(1, Some("ada"), "2");
        let sent = read(&outbox, t0 + Duration::from_millis(3_010));
        assert_eq!(changes(&sent), vec![op("upsert", 1)]);
        assert_eq!(sent.last().expect("a frame")["type"], "occupancy");
        assert_eq!(sent.last().expect("a frame")["entryCount"], 2);
    }

    #[test]
    fn a_paced_sample_gets_the_latest_state_once_per_interval() {
        let room = Room::new();
        room.beat(1, None, "1");
        room.beat(2, None, "1");
        let outbox = Arc::new(Outbox::new());
        let interval = Duration::from_millis(100);
        let _sample = room.sample(&outbox, 1, interval);
        let t0 = Instant::now();
        read(&outbox, t0);
        for v in 0..5 {
            room.beat(1, None, &v.to_string());
            room.beat(2, None, &v.to_string());
        }
        assert!(read(&outbox, t0 + Duration::from_millis(50)).is_empty());
        let sent = read(&outbox, t0 + interval);
        assert_eq!(
            changes(&sent),
            vec![op("upsert", 1)],
            "conflated: the latest"
        );
        let data = &sent[0]["changes"][0]["data"];
        assert_eq!(data, &Value::from(4));
    }

    #[test]
    fn in_a_cluster_the_first_sample_waits_for_the_sync_and_holds_the_other_nodes_entries() {
        let hub = Hub::in_memory(1).expect("hub");
        let (links, queues) = crate::cluster::links();
        // Joins and parts are not followed here: the test plays the cluster task.
        drop(queues.rooms);
        let _changes = queues.changes;
        hub.enable_cluster(1, links);
        let room: Arc<str> = "webinar".into();
        let outbox = Arc::new(Outbox::new());
        hub.subscribe_mode(
            &room,
            &outbox,
            None,
            Some(4),
            Duration::ZERO,
            Mode::Sample(1),
        );
        let t0 = Instant::now();
        assert!(read(&outbox, t0).is_empty(), "no snapshot before the sync");
        let entry = |client: u64| Entry {
            client: ClientId(client),
            user: None,
            data: Bytes::from_static(b"1"),
            expires_at: UnixMs(UnixMs::now().0 + 60_000),
        };
        let reply = crate::cluster::SyncReply {
            node: 2,
            seq: 5,
            entries: vec![entry(9), entry(8)],
        };
        hub.sync_finished(&room, 1, vec![reply], true, UnixMs::now());
        let sent = read(&outbox, t0);
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(sent[0]["type"], "snapshot");
        assert_eq!(
            sent[0]["entries"].as_array().map(Vec::len),
            Some(1),
            "{sent:?}"
        );
        assert_eq!(sent[0]["entryCount"], 2);
        assert_eq!(sent[1]["ref"], 4);
    }

    /// A client's view of its sample: the snapshot, then changes applied in order (an
    /// entry joining the sample goes last).
    fn follow(view: &mut Vec<(u64, Value)>, messages: &[Value]) {
        for message in messages {
            match message["type"].as_str() {
                Some("snapshot") => {
                    *view = message["entries"]
                        .as_array()
                        .expect("entries")
                        .iter()
                        .map(|e| (e["clientId"].as_u64().expect("id"), e["data"].clone()))
                        .collect();
                }
                Some("changes") => {
                    for change in message["changes"].as_array().expect("changes") {
                        let id = change["clientId"].as_u64().expect("id");
                        let at = view.iter().position(|(c, _)| *c == id);
                        match (change["op"].as_str(), at) {
                            (Some("upsert"), Some(at)) => view[at].1 = change["data"].clone(),
                            (Some("upsert"), None) => view.push((id, change["data"].clone())),
                            (_, Some(at)) => {
                                view.remove(at);
                            }
                            (_, None) => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }

    #[test]
    fn random_joins_refreshes_and_leaves_keep_every_sample_exact() {
        let room = Room::new();
        // A small linear congruential generator: the same sequence every run.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % n
        };
        // The room, oldest first, with each entry's data.
        let mut model: Vec<(u64, u64)> = Vec::new();
        let limits = [1, 3, 7];
        let outboxes: Vec<Arc<Outbox>> = limits.iter().map(|_| Arc::new(Outbox::new())).collect();
        let mut views: Vec<Vec<(u64, Value)>> = vec![Vec::new(); limits.len()];
        let t0 = Instant::now();
        for step in 0..2_000u64 {
            if step == 50 {
                // Subscribing into a room that already has entries.
                for (outbox, &limit) in outboxes.iter().zip(&limits) {
                    room.sample(outbox, limit, Duration::ZERO);
                }
            }
            let client = next(20) + 1;
            if next(4) == 0 {
                room.leave(client);
                model.retain(|(c, _)| *c != client);
            } else {
                room.beat(client, None, &step.to_string());
                match model.iter_mut().find(|(c, _)| *c == client) {
                    Some(entry) => entry.1 = step,
                    None => model.push((client, step)),
                }
            }
            if step < 50 {
                continue;
            }
            for ((outbox, view), &limit) in outboxes.iter().zip(&mut views).zip(&limits) {
                follow(view, &read(outbox, t0));
                let expected: Vec<(u64, Value)> = model
                    .iter()
                    .take(limit)
                    .map(|(c, v)| (*c, Value::from(*v)))
                    .collect();
                assert_eq!(*view, expected, "limit {limit}, step {step}");
            }
        }
    }

    #[test]
    fn groups_are_per_limit_and_go_with_their_last_subscriber() {
        let room = Room::new();
        for client in 1..=5 {
            room.beat(client, None, "1");
        }
        let (a, b, c) = (
            Arc::new(Outbox::new()),
            Arc::new(Outbox::new()),
            Arc::new(Outbox::new()),
        );
        let sa = room.sample(&a, 2, Duration::ZERO);
        let sb = room.sample(&b, 4, Duration::ZERO);
        let sc = room.sample(&c, 2, Duration::ZERO);
        assert_eq!(room.groups(), 2);
        let t0 = Instant::now();
        assert_eq!(clients(&read(&b, t0)[0]["entries"]), vec![1, 2, 3, 4]);
        read(&a, t0);
        read(&c, t0);
        room.beat(3, None, "2");
        assert!(changes(&read(&a, t0)).is_empty());
        assert_eq!(changes(&read(&b, t0)), vec![op("upsert", 3)]);
        room.hub.unsubscribe(&a, &sa);
        assert_eq!(room.groups(), 2, "c still reads the sample of 2");
        room.hub.unsubscribe(&c, &sc);
        assert_eq!(room.groups(), 1);
        room.hub.unsubscribe(&b, &sb);
        assert_eq!(room.groups(), 0);
    }
}
