//! The server's messages, read leniently and folded into the client's state.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use rollcall_protocol::{Change, ServerMessage};
use serde_json::Value;
use serde_json::value::RawValue;

use super::task::Pending;
use super::{Shared, local_now_ms};
use crate::{Broadcast, Counts, Entry, Error, Event, RoomEvent, ServerError};

/// A JSON value this parser can read; one it refuses (a lone surrogate escape, a
/// number out of range, nesting past its limit) becomes `null`.
fn value_or_null(data: &str) -> Value {
    serde_json::from_str(data).unwrap_or_else(|error| {
        tracing::warn!(%error, value = data, "unreadable value replaced by null");
        Value::Null
    })
}

fn entry_of(entry: &rollcall_protocol::Entry) -> (u64, Entry) {
    (
        entry.client_id,
        Entry {
            data: value_or_null(entry.data.as_str()),
            expires_at_ms: entry.expires_at_ms,
            user_id: entry.user_id.clone(),
        },
    )
}

/// Reads a frame that does not parse as a whole (an element whose data is beyond
/// this parser's nesting limit, an unknown `op` from a newer server): the elements of
/// `entries` and `changes` one by one, so one unreadable element costs only itself
/// (its data read as `null`, or the element dropped), never the frame's others.
fn parse_leniently(text: &str) -> Option<ServerMessage> {
    let fields: BTreeMap<String, &RawValue> = serde_json::from_str(text).ok()?;
    let mut frame: BTreeMap<String, Box<RawValue>> = BTreeMap::new();
    for (key, raw) in fields {
        let value = if key == "entries" || key == "changes" {
            let elements: Vec<&RawValue> = serde_json::from_str(raw.get()).ok()?;
            let kept: Vec<String> = elements
                .into_iter()
                .filter_map(|element| {
                    if readable(&key, element.get()) {
                        Some(element.get().to_owned())
                    } else {
                        without_data(&key, element)
                    }
                })
                .collect();
            RawValue::from_string(format!("[{}]", kept.join(","))).ok()?
        } else {
            raw.to_owned()
        };
        frame.insert(key, value);
    }
    ServerMessage::from_json(&serde_json::to_string(&frame).ok()?).ok()
}

/// Whether `text` reads as one element of `key` (`entries` or `changes`).
fn readable(key: &str, text: &str) -> bool {
    if key == "entries" {
        serde_json::from_str::<rollcall_protocol::Entry>(text).is_ok()
    } else {
        serde_json::from_str::<Change>(text).is_ok()
    }
}

/// An element with its `data` replaced by `null`, if it then reads as an element of
/// `key`.
fn without_data(key: &str, element: &RawValue) -> Option<String> {
    let mut fields: BTreeMap<String, &RawValue> = serde_json::from_str(element.get()).ok()?;
    let null = RawValue::from_string("null".into()).ok()?;
    fields.insert("data".into(), &null);
    let text = serde_json::to_string(&fields).ok()?;
    readable(key, &text).then_some(text)
}

fn room_event(change: &Change) -> Option<RoomEvent> {
    Some(match change {
        Change::Upsert {
            client_id,
            data,
            expires_at_ms,
            user_id,
        } => RoomEvent::Upsert(
            *client_id,
            Entry {
                data: value_or_null(data.as_str()),
                expires_at_ms: *expires_at_ms,
                user_id: user_id.clone(),
            },
        ),
        Change::Leave { client_id } => RoomEvent::Leave(*client_id),
        Change::Expire { client_id } => RoomEvent::Expire(*client_id),
        _ => return None,
    })
}

pub(super) fn handle(
    shared: &Shared,
    text: &str,
    pending: &mut Pending,
    pings: &mut HashMap<u64, Instant>,
) {
    let Some(message) = ServerMessage::from_json(text)
        .ok()
        .or_else(|| parse_leniently(text))
    else {
        tracing::warn!(%text, "not a message of this protocol version");
        return;
    };
    match message {
        ServerMessage::Snapshot {
            room,
            server_time_ms,
            entries,
            entry_count,
            user_count,
            ..
        } => {
            let entries: Vec<(u64, Entry)> = entries.iter().map(entry_of).collect();
            let counts = entry_count.map(|entries| Counts {
                entries,
                users: user_count.unwrap_or(0),
            });
            {
                let mut state = shared.lock();
                let Some(state_room) = state.rooms.get_mut(&room) else {
                    return;
                };
                state_room.entries = entries.iter().cloned().collect();
                state_room.order = if state_room.want.is_sample() {
                    entries.iter().map(|(id, _)| *id).collect()
                } else {
                    Vec::new()
                };
                state_room.counts = counts;
                state_room.synced = true;
                let _ = state_room.events.send(RoomEvent::Snapshot(entries.clone()));
                state_room.bump();
            }
            shared.emit(Event::Snapshot {
                room,
                server_time_ms,
                entries,
                counts,
            });
        }
        ServerMessage::Changes {
            room,
            server_time_ms,
            changes,
        } => {
            let events: Vec<RoomEvent> = changes.iter().filter_map(room_event).collect();
            {
                let mut state = shared.lock();
                let Some(state_room) = state.rooms.get_mut(&room) else {
                    return;
                };
                let sample = state_room.want.is_sample();
                for event in &events {
                    match event {
                        RoomEvent::Upsert(client, entry) => {
                            // An entry joining a sample is newer than every sampled one.
                            let new = state_room.entries.insert(*client, entry.clone()).is_none();
                            if sample && new {
                                state_room.order.push(*client);
                            }
                        }
                        RoomEvent::Leave(client) | RoomEvent::Expire(client) => {
                            state_room.entries.remove(client);
                            if sample {
                                state_room.order.retain(|id| id != client);
                            }
                        }
                        RoomEvent::Snapshot(_) => {}
                    }
                    let _ = state_room.events.send(event.clone());
                }
                state_room.bump();
            }
            shared.emit(Event::Changes {
                room,
                server_time_ms,
                changes: events,
            });
        }
        ServerMessage::Occupancy {
            room,
            server_time_ms,
            entry_count,
            user_count,
        } => {
            let counts = Counts {
                entries: entry_count,
                users: user_count,
            };
            {
                let mut state = shared.lock();
                let Some(state_room) = state.rooms.get_mut(&room) else {
                    return;
                };
                state_room.counts = Some(counts);
                state_room.synced = true;
                state_room.bump();
            }
            shared.emit(Event::Occupancy {
                room,
                server_time_ms,
                counts,
            });
        }
        ServerMessage::Broadcast {
            room,
            client_id,
            user_id,
            data,
            server_time_ms,
        } => {
            let broadcast = Broadcast {
                room,
                client_id,
                user_id,
                data: value_or_null(data.as_str()),
                server_time_ms,
            };
            if let Some(state_room) = shared.lock().rooms.get(&broadcast.room) {
                let _ = state_room.broadcasts.send(broadcast.clone());
            }
            shared.emit(Event::Broadcast(broadcast));
        }
        ServerMessage::Ack {
            reference,
            expires_at_ms,
        } => {
            if let Some(ack) = pending.remove(&reference) {
                let _ = ack.send(Ok(expires_at_ms.unwrap_or(0)));
            }
        }
        ServerMessage::Pong {
            reference: Some(reference),
            server_time_ms,
        } => {
            let Some(sent) = pings.remove(&reference) else {
                return;
            };
            let rtt = sent.elapsed();
            let mut state = shared.lock();
            // Keep the sample with the smallest round trip: its midpoint is the most
            // precise estimate of when the server read its clock.
            if state.best_rtt.is_none_or(|best| rtt <= best) {
                state.best_rtt = Some(rtt);
                let half = i64::try_from(rtt.as_millis() / 2).unwrap_or(0);
                let server = i64::try_from(server_time_ms).unwrap_or(i64::MAX);
                state.offset_ms = server - (local_now_ms() - half);
            }
        }
        ServerMessage::Error {
            code,
            message,
            reference,
            room,
        } => {
            let error = ServerError {
                code,
                message,
                reference,
                room,
            };
            if let Some(ack) = reference.and_then(|r| pending.remove(&r)) {
                let _ = ack.send(Err(Error::Server(error.clone())));
            }
            let _ = shared.errors.send(error.clone());
            shared.emit(Event::Error(error));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_unreadable_entry_costs_only_itself() {
        let deep = format!("{}{}", "[".repeat(130), "]".repeat(130));
        let frame = format!(
            r#"{{"type":"changes","room":"r","serverTimeMs":1,"changes":[
                {{"op":"upsert","clientId":1,"data":{{"ok":true}},"expiresAtMs":9}},
                {{"op":"upsert","clientId":2,"data":"\ud800","expiresAtMs":9}},
                {{"op":"upsert","clientId":3,"data":1e999999,"expiresAtMs":9}},
                {{"op":"upsert","clientId":4,"data":{deep},"expiresAtMs":9}},
                {{"op":"teleport","clientId":6}},
                {{"op":"leave","clientId":5}}]}}"#
        );
        assert!(ServerMessage::from_json(&frame).is_err());
        let message = parse_leniently(&frame).expect("read leniently");
        let ServerMessage::Changes { room, changes, .. } = message else {
            panic!("not changes: {message:?}");
        };
        assert_eq!(room, "r");
        let events: Vec<RoomEvent> = changes.iter().filter_map(room_event).collect();
        assert_eq!(events.len(), 5, "{events:?}");
        assert!(matches!(&events[0], RoomEvent::Upsert(1, e) if e.data["ok"] == true));
        for (i, event) in events[1..4].iter().enumerate() {
            assert!(
                matches!(event, RoomEvent::Upsert(id, e) if *id == i as u64 + 2 && e.data.is_null() && e.expires_at_ms == 9),
                "{event:?}"
            );
        }
        assert_eq!(events[4], RoomEvent::Leave(5));
    }
}
