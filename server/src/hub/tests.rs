use std::time::{Duration, Instant};

use rollcall_engine::{Change, ChangeKind, Entry};

use super::shard::{MIN_SHARDS, SHARDS_PER_CORE};
use super::*;
use crate::cluster::{self, Outgoing, RemoteChange, SyncReply, decode_change, encode_change};
use crate::fanout::Drained;

const ROOM: &str = "room";
const NOW: UnixMs = UnixMs(1_000_000);

fn clustered() -> (Hub, tokio::sync::mpsc::Receiver<Outgoing>) {
    let hub = Hub::in_memory(1).unwrap();
    let (links, queues) = cluster::links();
    // Joins and parts are not followed here: the tests play the cluster task.
    drop(queues.rooms);
    hub.enable_cluster(1, links);
    (hub, queues.changes)
}

fn frames(outbox: &Outbox) -> Vec<String> {
    let mut out = Drained::default();
    outbox.drain(Ticket(u64::MAX), NOW, Instant::now(), &mut out);
    out.frames.iter().map(ToString::to_string).collect()
}

fn remote(node: u16, seq: u64, client: u64, kind: ChangeKind) -> RemoteChange {
    let change = Change {
        room: ROOM.into(),
        kind,
        entry: Entry {
            client: ClientId(client),
            user: None,
            data: Bytes::from_static(b"{}"),
            expires_at: UnixMs(NOW.0 + 60_000),
        },
    };
    decode_change(&encode_change(node, seq, NOW, &change)).unwrap()
}

fn clients(hub: &Hub) -> Vec<u64> {
    let shard = hub.lock(ROOM);
    let mut ids: Vec<u64> = shard
        .materializer
        .entries(ROOM, NOW)
        .map(|e| e.client.0)
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn the_first_snapshot_waits_for_the_sync_and_the_ack_follows_it() {
    let (hub, _changes) = clustered();
    let room: Arc<str> = ROOM.into();
    let outbox = Arc::new(Outbox::new());
    hub.subscribe(&room, &outbox, None, Some(7), Duration::ZERO);
    assert!(frames(&outbox).is_empty(), "no snapshot before the sync");
    let reply = SyncReply {
        node: 2,
        seq: 5,
        entries: vec![Entry {
            client: ClientId(9),
            user: None,
            data: Bytes::from_static(b"1"),
            expires_at: UnixMs(NOW.0 + 1_000),
        }],
    };
    hub.sync_finished(&room, 1, vec![reply], true, NOW);
    let sent = frames(&outbox);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent[0].starts_with("{\"type\":\"snapshot\"") && sent[0].contains("\"clientId\":9"));
    assert!(sent[1].contains("\"ref\":7"), "{sent:?}");
}

#[test]
fn a_held_room_stays_followed_without_subscribers_until_released() {
    let (hub, _changes) = clustered();
    let room: Arc<str> = ROOM.into();
    let followed = |hub: &Hub| hub.lock(ROOM).subscribers.contains_key(ROOM);
    hub.hold(&room);
    assert!(followed(&hub), "held: followed with nobody subscribed");
    hub.sync_finished(&room, 1, Vec::new(), true, NOW);
    hub.apply_remote(&room, 1, remote(2, 1, 9, ChangeKind::Insert), NOW)
        .unwrap();
    assert_eq!(hub.room_len(ROOM), 1, "another node's entry is held");
    // A subscriber comes and goes: still held.
    let outbox = Arc::new(Outbox::new());
    let subscription = hub.subscribe(&room, &outbox, None, None, Duration::ZERO);
    hub.unsubscribe(&outbox, &subscription);
    assert!(followed(&hub));
    assert_eq!(hub.room_len(ROOM), 1);
    // Released with a subscriber: followed for it, until it goes.
    let subscription = hub.subscribe(&room, &outbox, None, None, Duration::ZERO);
    hub.release(ROOM);
    assert!(followed(&hub));
    hub.unsubscribe(&outbox, &subscription);
    assert!(!followed(&hub), "neither held nor subscribed");
    assert_eq!(hub.room_len(ROOM), 0, "the other node's entry is forgotten");
    // Released without one: unfollowed at once.
    hub.hold(&room);
    assert!(followed(&hub));
    hub.release(ROOM);
    assert!(!followed(&hub));
}

#[test]
fn old_messages_never_undo_newer_ones() {
    let (hub, _changes) = clustered();
    let room: Arc<str> = ROOM.into();
    let outbox = Arc::new(Outbox::new());
    hub.subscribe(&room, &outbox, None, None, Duration::ZERO);
    hub.sync_started(&room, 1);
    // During the sync: client 5 arrives (seq 10) and client 6 leaves (seq 12).
    hub.apply_remote(&room, 1, remote(2, 10, 5, ChangeKind::Insert), NOW)
        .unwrap();
    hub.apply_remote(&room, 1, remote(2, 11, 6, ChangeKind::Insert), NOW)
        .unwrap();
    hub.apply_remote(&room, 1, remote(2, 12, 6, ChangeKind::Leave), NOW)
        .unwrap();
    // A reply taken at seq 9 lists 6 but not 5: neither may change.
    let entry = |client| Entry {
        client: ClientId(client),
        user: None,
        data: Bytes::from_static(b"0"),
        expires_at: UnixMs(NOW.0 + 60_000),
    };
    let reply = SyncReply {
        node: 2,
        seq: 9,
        entries: vec![entry(6)],
    };
    hub.sync_finished(&room, 1, vec![reply], true, NOW);
    assert_eq!(clients(&hub), vec![5]);
    // A late, older upsert of 5 and a stale leave do nothing.
    hub.apply_remote(&room, 1, remote(2, 8, 5, ChangeKind::Leave), NOW)
        .unwrap();
    assert_eq!(clients(&hub), vec![5]);
    // A newer reply that no longer lists 5 removes it.
    hub.sync_started(&room, 1);
    hub.sync_finished(
        &room,
        1,
        vec![SyncReply {
            node: 2,
            seq: 20,
            entries: vec![],
        }],
        false,
        NOW,
    );
    assert!(clients(&hub).is_empty());
    // Messages of an earlier following of the room are ignored.
    hub.apply_remote(&room, 0, remote(2, 30, 5, ChangeKind::Insert), NOW)
        .unwrap();
    assert!(clients(&hub).is_empty());
}

#[test]
fn own_changes_are_published_remote_ones_are_not() {
    let (hub, mut changes) = clustered();
    let room: Arc<str> = ROOM.into();
    let outbox = Arc::new(Outbox::new());
    let subscription = hub.subscribe(&room, &outbox, None, None, Duration::ZERO);
    hub.sync_finished(&room, 1, Vec::new(), true, NOW);
    hub.apply_remote(&room, 1, remote(2, 10, 5, ChangeKind::Insert), NOW)
        .unwrap();
    let own = ClientId(1 << 40 | 1);
    hub.heartbeat(&room, own, None, Bytes::from_static(b"2"), Ttl(60_000))
        .unwrap();
    let published = changes.try_recv().unwrap();
    assert_eq!(published.change.entry.client, own);
    assert!(
        changes.try_recv().is_err(),
        "a remote entry was republished"
    );
    // Both expire here by their TTL; only the own expiry goes out.
    hub.sweep(UnixMs(u64::MAX));
    let expired = changes.try_recv().unwrap();
    assert_eq!(expired.change.kind, ChangeKind::Expire);
    assert_eq!(expired.change.entry.client, own);
    assert!(expired.seq > published.seq);
    assert!(changes.try_recv().is_err());
    // The last subscriber leaving forgets the other nodes' entries.
    hub.apply_remote(&room, 1, remote(2, 11, 5, ChangeKind::Insert), NOW)
        .unwrap();
    hub.unsubscribe(&outbox, &subscription);
    assert!(clients(&hub).is_empty());
}

#[test]
fn room_listing_follows_every_change_without_a_shard_lock() {
    let hub = Arc::new(Hub::in_memory(0).unwrap());
    let rooms: Vec<Arc<str>> = (0..7).map(|r| format!("r{r}").into()).collect();
    // A fixed pseudo-random walk of heartbeats (short and long TTLs), leaves and
    // sweeps over 7 rooms and 9 clients.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for step in 0..3_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let room = &rooms[(x % 7) as usize];
        let client = ClientId((x >> 8) % 9 + 1);
        match (x >> 16) % 4 {
            0 | 1 => {
                let ttl = if (x >> 20) % 2 == 0 { 1 } else { 60_000 };
                hub.heartbeat(room, client, None, Bytes::from_static(b"1"), Ttl(ttl))
                    .unwrap();
            }
            2 => {
                hub.leave(room, client);
            }
            _ => {
                hub.sweep(UnixMs::now());
            }
        }
        if step % 100 == 0 {
            let mut expected: Vec<(String, usize)> = rooms
                .iter()
                .map(|r| (r.to_string(), hub.lock(r).materializer.room_len(r)))
                .filter(|(_, n)| *n > 0)
                .collect();
            expected.sort();
            assert_eq!(hub.rooms_page(None, 100).rooms, expected, "step {step}");
            // Pages cover the same list.
            let first = hub.rooms_page(None, 3);
            if expected.len() > 3 {
                let next = first.next.clone().unwrap();
                assert_eq!(next, expected[2].0);
                let rest = hub.rooms_page(Some(&next), 100);
                assert_eq!(rest.rooms, expected[3..]);
                assert_eq!(rest.next, None);
            } else {
                assert_eq!(first.next, None);
            }
        }
    }
    // Listing while a shard's lock is held: it does not wait for it.
    let held = hub.lock(&rooms[0]);
    let (tx, rx) = std::sync::mpsc::channel();
    let lister = hub.clone();
    let thread = std::thread::spawn(move || tx.send(lister.rooms_page(None, 100)));
    let page = rx.recv_timeout(Duration::from_secs(30));
    drop(held);
    thread.join().unwrap().ok();
    assert!(page.is_ok(), "rooms_page waited for a shard's lock");
}

fn sharded(shards: usize) -> Hub {
    let (_, durable) = watch::channel(Ticket(0));
    Hub::with_shards(
        Engine::memory(),
        shards,
        0,
        None,
        Limits::default(),
        durable,
        Metrics::new(),
    )
    .unwrap()
}

/// Two room names that the hub keeps in different shards.
fn rooms_in_two_shards(hub: &Hub) -> (Arc<str>, Arc<str>) {
    let first: Arc<str> = "room-0".into();
    let other = (1..1_000)
        .map(|i| -> Arc<str> { format!("room-{i}").into() })
        .find(|room| hub.shard_of(room) != hub.shard_of(&first))
        .unwrap();
    (first, other)
}

#[test]
fn rooms_route_to_one_shard_each_spread_over_all_of_them() {
    let count = shard_count();
    assert!(count.is_power_of_two());
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    assert!(count >= SHARDS_PER_CORE * cores && count >= MIN_SHARDS);
    let hub = sharded(8);
    let mut used = [0usize; 8];
    for room in 0..1_000 {
        let room = format!("r{room}");
        let shard = hub.shard_of(&room);
        assert_eq!(hub.shard_of(&room), shard, "a room stays in its shard");
        used[shard] += 1;
    }
    assert!(used.iter().all(|&n| n > 50), "{used:?}");
    // The hash is keyed: another hub spreads the same rooms differently.
    let other = sharded(64);
    let hub = sharded(64);
    let differs = (0..64)
        .map(|room| format!("r{room}"))
        .any(|room| hub.shard_of(&room) != other.shard_of(&room));
    assert!(differs);
}

#[test]
fn a_replayed_state_is_split_into_the_shards() {
    let mut engine = Engine::memory();
    for room in 0..50 {
        for client in 1..=2 {
            engine.heartbeat(Heartbeat {
                room: format!("r{room}").into(),
                client: ClientId(client),
                user: None,
                data: Bytes::from_static(b"1"),
                ttl: Ttl(60_000),
                at: UnixMs::now(),
            });
        }
    }
    let (_, durable) = watch::channel(Ticket(0));
    let hub = Hub::with_shards(
        engine,
        8,
        0,
        None,
        Limits::default(),
        durable,
        Metrics::new(),
    )
    .unwrap();
    assert_eq!(hub.rooms_page(None, 100).rooms.len(), 50);
    for room in 0..50 {
        let room = format!("r{room}");
        assert!(hub.holds_entry(&room, ClientId(1)));
        assert!(hub.holds_entry(&room, ClientId(2)));
        assert_eq!(hub.lock(&room).materializer.room_len(&room), 2);
    }
    let held: usize = (0..8).map(|i| hub.lock_shard(i).materializer.len()).sum();
    assert_eq!(held, 100);
    assert_eq!(hub.sweep(UnixMs(u64::MAX)), 100);
    assert!(hub.rooms_page(None, 100).rooms.is_empty());
}

#[test]
fn rooms_in_other_shards_progress_while_a_shard_is_held() {
    let hub = Arc::new(sharded(8));
    let (held_room, free_room) = rooms_in_two_shards(&hub);
    let outbox = Arc::new(Outbox::new());
    hub.subscribe(&free_room, &outbox, None, None, Duration::ZERO);
    frames(&outbox);
    let held = hub.lock(&held_room);
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn({
        let (hub, outbox, room) = (hub.clone(), outbox.clone(), free_room.clone());
        move || {
            hub.heartbeat(
                &room,
                ClientId(1),
                None,
                Bytes::from_static(b"1"),
                Ttl(60_000),
            )
            .unwrap();
            hub.heartbeat(
                &room,
                ClientId(2),
                None,
                Bytes::from_static(b"2"),
                Ttl(60_000),
            )
            .unwrap();
            hub.leave(&room, ClientId(2));
            let other = Arc::new(Outbox::new());
            hub.subscribe(&room, &other, None, None, Duration::ZERO);
            let done = (
                hub.holds_entry(&room, ClientId(1)),
                hub.entries_json(&room),
                frames(&outbox),
                frames(&other),
            );
            tx.send(done).unwrap();
        }
    });
    // The held shard stays held until the other room's work is done: the wait
    // below ends as soon as it is (the bound only turns a hang into a failure).
    let done = rx.recv_timeout(Duration::from_secs(30));
    drop(held);
    thread.join().unwrap();
    let (holds, json, changes, snapshot) = done.expect("a room waited for another shard");
    assert!(holds);
    assert!(json.contains("\"clientId\":1") && !json.contains("\"clientId\":2"));
    let changes = changes.concat();
    assert_eq!(changes.matches("\"clientId\":2").count(), 2, "{changes}");
    assert!(snapshot[0].starts_with("{\"type\":\"snapshot\""));
}

#[test]
fn a_sweep_does_not_wait_for_a_busy_shard_before_the_others() {
    let hub = Arc::new(sharded(8));
    let (busy_room, free_room) = rooms_in_two_shards(&hub);
    for room in [&busy_room, &free_room] {
        hub.heartbeat(room, ClientId(1), None, Bytes::from_static(b"1"), Ttl(1))
            .unwrap();
    }
    let busy = hub.lock(&busy_room);
    let sweeper = std::thread::spawn({
        let hub = hub.clone();
        move || hub.sweep(UnixMs(u64::MAX))
    });
    // The free shard is swept while the busy one is held (the listing takes no
    // shard lock); the bound only turns a hang into a failure.
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = |room: &Arc<str>| {
        hub.rooms_page(None, 10)
            .rooms
            .iter()
            .any(|(name, _)| **name == **room)
    };
    while listed(&free_room) && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(!listed(&free_room), "the sweep waited for the busy shard");
    assert!(
        listed(&busy_room),
        "the busy shard was swept under its lock"
    );
    drop(busy);
    assert_eq!(sweeper.join().unwrap(), 2);
    assert!(!listed(&busy_room));
}

#[test]
fn threads_in_many_shards_keep_the_room_counts_true() {
    let hub = Arc::new(sharded(8));
    let rooms: Vec<Arc<str>> = (0..16).map(|r| format!("r{r}").into()).collect();
    let outboxes: Vec<Arc<Outbox>> = rooms
        .iter()
        .map(|room| {
            let outbox = Arc::new(Outbox::new());
            hub.subscribe(room, &outbox, None, None, Duration::ZERO);
            outbox
        })
        .collect();
    std::thread::scope(|scope| {
        for thread in 0..4u64 {
            let (hub, rooms) = (&hub, &rooms);
            scope.spawn(move || {
                let mut x = 0x9E37_79B9_7F4A_7C15 ^ (thread + 1);
                for _ in 0..2_000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let room = &rooms[(x % 16) as usize];
                    let client = ClientId((x >> 8) % 6 + 1);
                    match (x >> 16) % 5 {
                        0 => {
                            hub.leave(room, client);
                        }
                        1 => {
                            hub.sweep(UnixMs::now());
                        }
                        kind => {
                            let ttl = if kind == 2 { 1 } else { 60_000 };
                            hub.heartbeat(room, client, None, Bytes::from_static(b"1"), Ttl(ttl))
                                .unwrap();
                        }
                    }
                }
            });
        }
    });
    // The maintained counts match the shards' entries, room by room.
    let mut expected: Vec<(String, usize)> = rooms
        .iter()
        .map(|r| (r.to_string(), hub.lock(r).materializer.room_len(r)))
        .filter(|(_, n)| *n > 0)
        .collect();
    expected.sort();
    assert_eq!(hub.rooms_page(None, 100).rooms, expected);
    // Publishing from several threads left every subscriber something to read.
    for (room, outbox) in rooms.iter().zip(&outboxes) {
        assert!(!frames(outbox).is_empty(), "{room}: nothing published");
    }
}
