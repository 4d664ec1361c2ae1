//! Folds events into per-room state ordered by expiry.
//!
//! Each room keeps its entries by client id and a `BTreeSet` of `(expiry, client)`;
//! a global `BTreeSet` holds each room's earliest expiry. A sweep therefore visits only
//! rooms that have something due and pops exactly the due keys: O(k log n) for k
//! expirations, O(1) when nothing is due. The fold takes time from its events and
//! sweeps take `now` from the caller: nothing here reads the clock.
//!
//! The expiry index is lazy. A heartbeat that pushes an entry's expiry later (the
//! common case: a client refreshing itself) leaves the entry's key where it was; when
//! that key comes due, the sweep finds the entry still live and files it again under
//! its real expiry. An entry is thus re-filed about once per TTL instead of on every
//! heartbeat, which halves the cost of a heartbeat. The index only ever runs early:
//! each entry has exactly one key, never later than its real expiry, so a sweep never
//! misses an expiry. Reads always judge liveness by the entry itself.

use std::collections::BTreeSet;
use std::hash::RandomState;
use std::sync::Arc;

use bytes::Bytes;
use hashbrown::HashMap;

use crate::event::{Event, Heartbeat, Leave};
use crate::types::{ClientId, UnixMs};

/// One client's presence in one room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The client that owns the entry.
    pub client: ClientId,
    /// The authenticated user behind the client, if any.
    pub user: Option<Arc<str>>,
    /// The client's JSON value as opaque bytes.
    pub data: Bytes,
    /// The entry is live while `now <= expires_at`.
    pub expires_at: UnixMs,
}

impl Entry {
    /// Whether the entry is live at `now` (`now <= expires_at`).
    pub fn is_live(&self, now: UnixMs) -> bool {
        now <= self.expires_at
    }
}

/// What happened to an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A heartbeat created the entry.
    Insert,
    /// A heartbeat replaced an existing entry.
    Update,
    /// The client left: the entry was removed.
    Leave,
    /// The entry's time ran out and a sweep removed it.
    Expire,
}

/// A change to one entry, for subscribers of its room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The room of the entry.
    pub room: Arc<str>,
    /// What happened.
    pub kind: ChangeKind,
    /// The entry after an insert or update; the removed entry after a leave or expiry.
    pub entry: Entry,
}

/// Index of a room in the materializer's slab; reused after a room empties.
type RoomSlot = u32;

/// An entry and the key it is filed under in its room's expiry index.
#[derive(Debug)]
struct Held {
    entry: Entry,
    /// Never later than `entry.expires_at`.
    filed_at: UnixMs,
    /// When it joined its room: the materializer's insert counter at its insert
    /// (later joins have larger numbers; an update keeps it).
    joined: u64,
}

#[derive(Debug)]
struct Room {
    name: Arc<str>,
    entries: HashMap<ClientId, Held>,
    by_expiry: BTreeSet<(UnixMs, ClientId)>,
}

impl Room {
    fn earliest(&self) -> Option<UnixMs> {
        self.by_expiry.first().map(|&(at, _)| at)
    }

    fn live(&self, now: UnixMs) -> usize {
        self.entries
            .values()
            .filter(|h| h.entry.is_live(now))
            .count()
    }
}

/// Per-room presence state folded from events.
#[derive(Debug, Default)]
pub struct Materializer {
    /// Room names are chosen by clients, so this map uses a keyed (SipHash) hasher.
    slots: HashMap<Arc<str>, RoomSlot, RandomState>,
    rooms: Vec<Option<Room>>,
    free: Vec<RoomSlot>,
    /// Each non-empty room's earliest expiry.
    due: BTreeSet<(UnixMs, RoomSlot)>,
    len: usize,
    /// Inserts so far: an entry's join number (see [`Materializer::joined`]).
    joins: u64,
}

impl Materializer {
    /// An empty materializer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one event and reports the change it made, if any.
    pub fn fold(&mut self, event: &Event) -> Option<Change> {
        match event {
            Event::Heartbeat(hb) => Some(self.heartbeat(hb)),
            Event::Leave(leave) => self.leave(leave),
        }
    }

    /// Upserts the heartbeat's entry with `expires_at = at + ttl`.
    ///
    /// The last event wins, whatever its timestamp: a heartbeat with a shorter TTL, or
    /// one stamped by a clock that went backwards, replaces the entry all the same.
    pub fn heartbeat(&mut self, hb: &Heartbeat) -> Change {
        let slot = self.slot_or_insert(&hb.room);
        let room = self.rooms[slot as usize]
            .as_mut()
            .expect("slot maps to a room");
        let entry = Entry {
            client: hb.client,
            user: hb.user.clone(),
            data: hb.data.clone(),
            expires_at: hb.expires_at(),
        };
        let expires_at = entry.expires_at;
        let (kind, refile) = match room.entries.get_mut(&hb.client) {
            Some(held) => {
                held.entry = entry.clone();
                // A later expiry keeps its earlier key (see the module docs); an earlier
                // one must be filed now, or a sweep would find it too late.
                let refile = (expires_at < held.filed_at).then_some(held.filed_at);
                if refile.is_some() {
                    held.filed_at = expires_at;
                }
                (ChangeKind::Update, refile)
            }
            None => {
                self.joins += 1;
                room.entries.insert(
                    hb.client,
                    Held {
                        entry: entry.clone(),
                        filed_at: expires_at,
                        joined: self.joins,
                    },
                );
                self.len += 1;
                (ChangeKind::Insert, None)
            }
        };
        let name = room.name.clone();
        if kind == ChangeKind::Insert || refile.is_some() {
            let before = room.earliest();
            if let Some(old) = refile {
                room.by_expiry.remove(&(old, hb.client));
            }
            room.by_expiry.insert((expires_at, hb.client));
            let after = room.earliest();
            self.reindex(slot, before, after);
        }
        Change {
            room: name,
            kind,
            entry,
        }
    }

    /// Removes the client's entry; `None` if it had none in that room.
    pub fn leave(&mut self, leave: &Leave) -> Option<Change> {
        let slot = *self.slots.get(&*leave.room)?;
        let room = self.rooms[slot as usize]
            .as_mut()
            .expect("slot maps to a room");
        let before = room.earliest();
        let Held {
            entry, filed_at, ..
        } = room.entries.remove(&leave.client)?;
        room.by_expiry.remove(&(filed_at, leave.client));
        self.len -= 1;
        let after = room.earliest();
        let name = room.name.clone();
        self.reindex(slot, before, after);
        Some(Change {
            room: name,
            kind: ChangeKind::Leave,
            entry,
        })
    }

    /// Removes every entry with `expires_at < now` and appends an
    /// [`ChangeKind::Expire`] change for each to `out`. Returns how many expired.
    pub fn sweep_due(&mut self, now: UnixMs, out: &mut Vec<Change>) -> usize {
        let mut expired = 0;
        while let Some(&(earliest, slot)) = self.due.first() {
            if earliest >= now {
                break;
            }
            self.due.pop_first();
            let room = self.rooms[slot as usize].as_mut().expect("due rooms exist");
            while let Some(&(at, client)) = room.by_expiry.first() {
                if at >= now {
                    break;
                }
                room.by_expiry.pop_first();
                let Some(held) = room.entries.get_mut(&client) else {
                    continue;
                };
                if held.entry.expires_at >= now {
                    // Refreshed since it was filed: file it under its real expiry.
                    held.filed_at = held.entry.expires_at;
                    room.by_expiry.insert((held.filed_at, client));
                    continue;
                }
                if let Some(held) = room.entries.remove(&client) {
                    expired += 1;
                    out.push(Change {
                        room: room.name.clone(),
                        kind: ChangeKind::Expire,
                        entry: held.entry,
                    });
                }
            }
            match room.earliest() {
                Some(next) => {
                    self.due.insert((next, slot));
                }
                None => self.remove_room(slot),
            }
        }
        self.len -= expired;
        expired
    }

    /// No entry expires before this instant (a sweep before it has nothing to do).
    pub fn next_expiry(&self) -> Option<UnixMs> {
        self.due.first().map(|&(at, _)| at)
    }

    /// The client's entry in `room` if it is live at `now`.
    pub fn get(&self, room: &str, client: ClientId, now: UnixMs) -> Option<&Entry> {
        self.room(room)?
            .entries
            .get(&client)
            .map(|held| &held.entry)
            .filter(|entry| entry.is_live(now))
    }

    /// The client's entry in `room`, live or expired but not swept yet.
    pub fn held(&self, room: &str, client: ClientId) -> Option<&Entry> {
        self.room(room)?
            .entries
            .get(&client)
            .map(|held| &held.entry)
    }

    /// When the client's entry joined `room`: a number that grows with every new entry
    /// (of any room), kept while the entry lives, so a room's entries sorted by it are
    /// oldest first. `None` if the client holds no entry there.
    pub fn joined(&self, room: &str, client: ClientId) -> Option<u64> {
        self.room(room)?
            .entries
            .get(&client)
            .map(|held| held.joined)
    }

    /// Every entry of `room` (live or not swept yet) with its join number
    /// ([`Materializer::joined`]), in no particular order. O(entries in the room).
    pub fn joins<'a>(&'a self, room: &str) -> impl Iterator<Item = (u64, ClientId)> + 'a {
        self.room(room)
            .into_iter()
            .flat_map(|room| room.entries.iter())
            .map(|(client, held)| (held.joined, *client))
    }

    /// The live entries of `room` at `now`, in no particular order.
    pub fn entries<'a>(&'a self, room: &str, now: UnixMs) -> impl Iterator<Item = &'a Entry> + 'a {
        self.room(room)
            .into_iter()
            .flat_map(|room| room.entries.values())
            .map(|held| &held.entry)
            .filter(move |entry| entry.is_live(now))
    }

    /// How many entries of `room` are live at `now` (O(entries in the room)).
    pub fn live_count(&self, room: &str, now: UnixMs) -> usize {
        self.room(room).map_or(0, |room| room.live(now))
    }

    /// Entries of `room`, including expired ones no sweep has removed yet (O(1)).
    pub fn room_len(&self, room: &str) -> usize {
        self.room(room).map_or(0, |room| room.entries.len())
    }

    /// Every room with at least one live entry at `now`, with its live-entry count
    /// (O(entries)).
    pub fn rooms(&self, now: UnixMs) -> impl Iterator<Item = (&Arc<str>, usize)> + '_ {
        self.rooms.iter().flatten().filter_map(move |room| {
            let live = room.live(now);
            (live > 0).then_some((&room.name, live))
        })
    }

    /// Entries held, including expired ones that no sweep has removed yet.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rooms held (rooms with at least one entry, live or not yet swept).
    pub fn room_count(&self) -> usize {
        self.slots.len()
    }

    /// Splits the state by room into `parts` materializers: each room, with its
    /// entries and their expiry keys, goes whole to part `part_of(room)` (which must be
    /// below `parts`). O(rooms). A server that folds rooms on several threads splits
    /// the replayed state once, at start.
    pub fn split(self, parts: usize, mut part_of: impl FnMut(&str) -> usize) -> Vec<Materializer> {
        let joins = self.joins;
        let mut split: Vec<Materializer> = (0..parts)
            .map(|_| Materializer {
                joins,
                ..Materializer::new()
            })
            .collect();
        for room in self.rooms.into_iter().flatten() {
            let part = &mut split[part_of(&room.name)];
            let entries = room.entries.len();
            let earliest = room.earliest();
            let slot = part.place(room);
            if let Some(at) = earliest {
                part.due.insert((at, slot));
            }
            part.len += entries;
        }
        split
    }

    fn room(&self, name: &str) -> Option<&Room> {
        let slot = *self.slots.get(name)?;
        self.rooms[slot as usize].as_ref()
    }

    fn slot_or_insert(&mut self, name: &Arc<str>) -> RoomSlot {
        if let Some(&slot) = self.slots.get(&**name) {
            return slot;
        }
        self.place(Room {
            name: name.clone(),
            entries: HashMap::new(),
            by_expiry: BTreeSet::new(),
        })
    }

    /// Puts a room that is not held yet into a free slot (not into the due index).
    fn place(&mut self, room: Room) -> RoomSlot {
        let name = room.name.clone();
        let slot = if let Some(slot) = self.free.pop() {
            self.rooms[slot as usize] = Some(room);
            slot
        } else {
            self.rooms.push(Some(room));
            RoomSlot::try_from(self.rooms.len() - 1).expect("fewer than 2^32 rooms")
        };
        self.slots.insert(name, slot);
        slot
    }

    /// Keeps the global index in step with a room whose earliest expiry moved.
    fn reindex(&mut self, slot: RoomSlot, before: Option<UnixMs>, after: Option<UnixMs>) {
        if before == after {
            return;
        }
        if let Some(at) = before {
            self.due.remove(&(at, slot));
        }
        match after {
            Some(at) => {
                self.due.insert((at, slot));
            }
            None => self.remove_room(slot),
        }
    }

    fn remove_room(&mut self, slot: RoomSlot) {
        if let Some(room) = self.rooms[slot as usize].take() {
            self.slots.remove(&*room.name);
            self.free.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Ttl;

    fn hb(room: &str, client: u64, at: u64, ttl: u64) -> Heartbeat {
        Heartbeat {
            room: room.into(),
            client: ClientId(client),
            user: None,
            data: Bytes::from(format!("{{\"c\":{client},\"at\":{at}}}")),
            ttl: Ttl(ttl),
            at: UnixMs(at),
        }
    }

    fn leave(room: &str, client: u64, at: u64) -> Leave {
        Leave {
            room: room.into(),
            client: ClientId(client),
            at: UnixMs(at),
        }
    }

    fn sweep(m: &mut Materializer, now: u64) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        m.sweep_due(UnixMs(now), &mut out);
        out.iter()
            .inspect(|c| assert_eq!(c.kind, ChangeKind::Expire))
            .map(|c| (c.room.to_string(), c.entry.client.0))
            .collect()
    }

    #[test]
    fn join_numbers_order_entries_oldest_first_and_survive_updates() {
        let mut m = Materializer::new();
        m.heartbeat(&hb("r", 3, 1_000, 500));
        m.heartbeat(&hb("other", 9, 1_000, 500));
        m.heartbeat(&hb("r", 1, 1_001, 500));
        m.heartbeat(&hb("r", 2, 1_002, 500));
        // An update keeps the entry's place.
        m.heartbeat(&hb("r", 3, 1_003, 500));
        let order = |m: &Materializer| {
            let mut joins: Vec<(u64, ClientId)> = m.joins("r").collect();
            joins.sort_unstable();
            joins.into_iter().map(|(_, c)| c.0).collect::<Vec<_>>()
        };
        assert_eq!(order(&m), vec![3, 1, 2]);
        // Leaving and coming back is a new join: the newest.
        m.leave(&leave("r", 3, 1_004));
        assert_eq!(m.joined("r", ClientId(3)), None);
        m.heartbeat(&hb("r", 3, 1_005, 500));
        assert_eq!(order(&m), vec![1, 2, 3]);
        // Held (not yet swept) entries are found whatever the time.
        assert!(m.held("r", ClientId(1)).is_some());
        assert!(m.get("r", ClientId(1), UnixMs(10_000)).is_none());
        // Splitting keeps the numbers, and later joins stay newer.
        let before = m.joined("r", ClientId(3)).unwrap();
        let mut parts = m.split(2, |room| usize::from(room == "r"));
        assert_eq!(parts[1].joined("r", ClientId(3)), Some(before));
        parts[1].heartbeat(&hb("r", 4, 1_006, 500));
        assert!(parts[1].joined("r", ClientId(4)).unwrap() > before);
    }

    #[test]
    fn ttl_boundary_is_inclusive() {
        let mut m = Materializer::new();
        m.heartbeat(&hb("r", 1, 1_000, 500));
        assert!(m.get("r", ClientId(1), UnixMs(1_500)).is_some());
        assert!(sweep(&mut m, 1_500).is_empty(), "now == expires_at is live");
        assert!(m.get("r", ClientId(1), UnixMs(1_501)).is_none());
        assert_eq!(m.live_count("r", UnixMs(1_501)), 0);
        assert_eq!(sweep(&mut m, 1_501), vec![("r".to_string(), 1)]);
        assert!(m.is_empty());
        assert_eq!(m.room_count(), 0);
    }

    #[test]
    fn reads_hide_expired_entries_before_any_sweep() {
        let mut m = Materializer::new();
        m.heartbeat(&hb("r", 1, 0, 10));
        m.heartbeat(&hb("r", 2, 0, 100));
        let live: Vec<_> = m.entries("r", UnixMs(50)).map(|e| e.client.0).collect();
        assert_eq!(live, vec![2]);
        assert_eq!(m.live_count("r", UnixMs(50)), 1);
        assert_eq!(m.len(), 2, "not swept yet");
        let rooms: Vec<_> = m.rooms(UnixMs(101)).collect();
        assert!(rooms.is_empty());
    }

    #[test]
    fn later_heartbeat_with_shorter_ttl_wins() {
        let mut m = Materializer::new();
        m.heartbeat(&hb("r", 1, 1_000, 60_000));
        let change = m.heartbeat(&hb("r", 1, 2_000, 100));
        assert_eq!(change.kind, ChangeKind::Update);
        assert_eq!(change.entry.expires_at, UnixMs(2_100));
        assert!(sweep(&mut m, 2_100).is_empty());
        assert_eq!(sweep(&mut m, 2_101), vec![("r".to_string(), 1)]);
        assert_eq!(m.next_expiry(), None);
    }

    #[test]
    fn leave_then_heartbeat() {
        let mut m = Materializer::new();
        assert_eq!(m.heartbeat(&hb("r", 1, 0, 1_000)).kind, ChangeKind::Insert);
        let left = m.leave(&leave("r", 1, 10)).unwrap();
        assert_eq!(left.kind, ChangeKind::Leave);
        assert_eq!(left.entry.client, ClientId(1));
        assert!(
            m.leave(&leave("r", 1, 11)).is_none(),
            "second leave is a no-op"
        );
        assert_eq!(m.room_count(), 0);
        assert_eq!(m.next_expiry(), None);
        assert_eq!(m.heartbeat(&hb("r", 1, 20, 1_000)).kind, ChangeKind::Insert);
        assert_eq!(m.live_count("r", UnixMs(30)), 1);
        assert_eq!(m.next_expiry(), Some(UnixMs(1_020)));
    }

    #[test]
    fn leave_of_unknown_room_or_client_changes_nothing() {
        let mut m = Materializer::new();
        assert!(m.leave(&leave("nowhere", 1, 0)).is_none());
        m.heartbeat(&hb("r", 1, 0, 10));
        assert!(m.leave(&leave("r", 2, 0)).is_none());
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn many_rooms_sweep_only_what_is_due() {
        let mut m = Materializer::new();
        for room in 0..100u64 {
            for client in 1..=10 {
                // Room r's clients expire at 1000 + r*10 + client.
                m.heartbeat(&hb(
                    &format!("room-{room}"),
                    client,
                    1_000,
                    room * 10 + client,
                ));
            }
        }
        assert_eq!(m.len(), 1_000);
        assert_eq!(m.room_count(), 100);
        assert_eq!(m.next_expiry(), Some(UnixMs(1_001)));
        // Due at now=1_025: every entry with expires_at < 1_025.
        let expired = sweep(&mut m, 1_025);
        assert_eq!(expired.len(), 10 + 10 + 4);
        assert_eq!(m.room_count(), 98);
        assert_eq!(m.live_count("room-2", UnixMs(1_025)), 6);
        assert!(sweep(&mut m, 1_025).is_empty());
        assert_eq!(sweep(&mut m, u64::MAX).len(), 1_000 - 24);
        assert!(m.is_empty());
    }

    #[test]
    fn clock_going_backwards_between_events() {
        let mut m = Materializer::new();
        m.heartbeat(&hb("r", 1, 10_000, 1_000));
        // The server clock stepped back by 5 s: the later event still wins, and the
        // entry now expires earlier than before.
        let change = m.heartbeat(&hb("r", 1, 5_000, 1_000));
        assert_eq!(change.entry.expires_at, UnixMs(6_000));
        assert_eq!(m.next_expiry(), Some(UnixMs(6_000)));
        assert!(m.get("r", ClientId(1), UnixMs(6_000)).is_some());
        assert_eq!(sweep(&mut m, 6_001).len(), 1);
        // A sweep with an older `now` than a previous one is harmless.
        m.heartbeat(&hb("r", 2, 5_000, 10));
        assert!(sweep(&mut m, 1).is_empty());
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn room_slots_are_reused() {
        let mut m = Materializer::new();
        for round in 0..10u64 {
            m.heartbeat(&hb(&format!("r{round}"), 1, 0, 5));
            m.leave(&leave(&format!("r{round}"), 1, 1)).unwrap();
        }
        assert_eq!(m.rooms.len(), 1);
    }

    #[test]
    fn refreshed_entries_are_refiled_not_expired() {
        let mut m = Materializer::new();
        m.heartbeat(&hb("r", 1, 0, 100)); // filed at 100
        for at in (10..=500).step_by(10) {
            m.heartbeat(&hb("r", 1, at, 100)); // pushed later each time, key stays
        }
        assert_eq!(m.next_expiry(), Some(UnixMs(100)), "the index runs early");
        assert!(sweep(&mut m, 200).is_empty(), "still live at 200: re-filed");
        assert_eq!(m.next_expiry(), Some(UnixMs(600)));
        assert_eq!(
            m.get("r", ClientId(1), UnixMs(600)).unwrap().expires_at,
            UnixMs(600)
        );
        // A heartbeat with an earlier expiry than the filed key is filed at once.
        m.heartbeat(&hb("r", 1, 510, 10));
        assert_eq!(m.next_expiry(), Some(UnixMs(520)));
        assert_eq!(sweep(&mut m, 521), vec![("r".to_string(), 1)]);
        assert!(m.is_empty());
        assert_eq!(m.next_expiry(), None);
    }

    #[test]
    fn leave_removes_a_stale_key() {
        let mut m = Materializer::new();
        m.heartbeat(&hb("r", 1, 0, 100));
        m.heartbeat(&hb("r", 1, 50, 100)); // expires 150, filed at 100
        m.leave(&leave("r", 1, 60)).unwrap();
        assert_eq!(m.next_expiry(), None);
        assert_eq!(m.room_count(), 0);
        m.heartbeat(&hb("r", 1, 70, 100));
        assert_eq!(m.next_expiry(), Some(UnixMs(170)));
    }

    #[test]
    fn split_moves_whole_rooms_with_their_expiry_order() {
        let mut m = Materializer::new();
        for room in 0..20u64 {
            for client in 1..=3 {
                m.heartbeat(&hb(&format!("r{room}"), client, 0, room * 10 + client));
            }
        }
        m.heartbeat(&hb("r0", 1, 5, 1_000)); // refreshed: filed early, re-filed later
        let part_of = |room: &str| room[1..].parse::<usize>().unwrap() % 4;
        let mut parts = m.split(4, part_of);
        assert_eq!(parts.iter().map(Materializer::len).sum::<usize>(), 60);
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(part.room_count(), 5);
            for room in 0..20u64 {
                let name = format!("r{room}");
                let expected = if part_of(&name) == i { 3 } else { 0 };
                assert_eq!(part.room_len(&name), expected, "{name} in part {i}");
            }
        }
        // Each part sweeps its own rooms, in expiry order, and re-files refreshed keys.
        assert_eq!(parts[0].next_expiry(), Some(UnixMs(1)));
        assert_eq!(sweep(&mut parts[0], 3), vec![("r0".to_string(), 2)]);
        assert_eq!(parts[0].live_count("r0", UnixMs(3)), 2);
        let all: usize = parts.iter_mut().map(|p| sweep(p, u64::MAX).len()).sum();
        assert_eq!(all, 59);
        assert!(parts.iter().all(Materializer::is_empty));
        // A part keeps working as a whole materializer.
        parts[1].heartbeat(&hb("r1", 9, 0, 10));
        assert_eq!(parts[1].next_expiry(), Some(UnixMs(10)));
    }

    #[test]
    fn same_expiry_for_two_clients() {
        let mut m = Materializer::new();
        m.heartbeat(&hb("r", 1, 0, 100));
        m.heartbeat(&hb("r", 2, 0, 100));
        m.leave(&leave("r", 1, 1)).unwrap();
        assert_eq!(m.next_expiry(), Some(UnixMs(100)));
        assert_eq!(sweep(&mut m, 101), vec![("r".to_string(), 2)]);
    }
}
