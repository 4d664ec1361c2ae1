//! The REST API's room routes: listings, room reads, the event stream, and writes
//! (heartbeats and removals).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use rollcall_engine::{ClientId, Ticket};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ApiError, AppState, BODY_ENVELOPE_BYTES, json, openapi};
use crate::hub::Hub;
use crate::protocol::{self, ErrorCode};

/// How long a REST write waits for the disk.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Rooms per page of `GET /v1/rooms` at most.
const MAX_PAGE: usize = 1_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Page {
    /// Rooms per page, 1 to 1000 (default 100).
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<String>,
}

/// Rooms with live entries, sorted by name, a page at a time (an admin read).
#[utoipa::path(
    get,
    path = "/v1/rooms",
    tag = "rooms",
    params(Page),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "A page of rooms", body = openapi::RoomsPage),
        (status = 400, description = "A bad query string", body = openapi::ErrorBody),
        (status = 401, description = "Auth on and no valid token", body = openapi::ErrorBody),
        (status = 403, description = "The token is not an admin token", body = openapi::ErrorBody),
        (status = 503, description = "Starting", body = openapi::ErrorBody),
    ),
)]
pub(crate) async fn rooms(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    let hub = state.hub()?;
    // Listing every room is an admin read (docs/protocol.md, HTTP API).
    state.authorize(&headers, |grant| grant.admin)?;
    let limit = page.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let after = page.after.as_deref();
    // In cluster mode, every node's own counts, added up: the same answer whichever
    // node serves it (or this node's view alone, when cut off from NATS).
    let remote = match state.inner.cluster.get() {
        Some(cluster) => cluster.gather_rooms(after, limit).await,
        None => None,
    };
    let page = match remote {
        Some(mut pages) => {
            pages.push(hub.owned_rooms_page(after, limit));
            crate::cluster::merge_room_pages(pages, limit)
        }
        None => hub.rooms_page(after, limit),
    };
    let body = openapi::RoomsPage {
        rooms: page
            .rooms
            .into_iter()
            .map(|(room, entries)| openapi::RoomCount {
                room,
                entries: entries as u64,
            })
            .collect(),
        next: page.next,
    };
    Ok(axum::Json(body).into_response())
}

/// One room's live entries (a room without entries answers with none).
#[utoipa::path(
    get,
    path = "/v1/rooms/{room}",
    tag = "rooms",
    params(("room" = String, Path, description = "The room's name, percent-encoded")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The room", body = openapi::Room),
        openapi::RoomReadErrors,
    ),
)]
pub(crate) async fn room(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    let (hub, _) = state.readable_room(&headers, &room)?;
    let mut body = String::from("{\"room\":");
    protocol::push_json_str(&mut body, &room);
    body.push_str(",\"entries\":");
    body.push_str(&room_entries_json(&state, hub, &room).await);
    body.push('}');
    Ok(json(StatusCode::OK, body))
}

/// One room's users, each with its live entries (sorted by user, then client).
#[utoipa::path(
    get,
    path = "/v1/rooms/{room}/users",
    tag = "rooms",
    params(("room" = String, Path, description = "The room's name, percent-encoded")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The room's users", body = openapi::RoomUsers),
        openapi::RoomReadErrors,
    ),
)]
pub(crate) async fn users(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    let (hub, _) = state.readable_room(&headers, &room)?;
    let mut entries = room_entries(&state, hub, &room).await;
    let anonymous = entries.iter().filter(|e| e.user.is_none()).count();
    entries.retain(|e| e.user.is_some());
    entries.sort_by(|a, b| a.user.cmp(&b.user).then(a.client.cmp(&b.client)));
    let mut body = String::from("{\"room\":");
    protocol::push_json_str(&mut body, &room);
    body.push_str(",\"users\":[");
    let mut rest = entries.as_slice();
    let mut first = true;
    while let Some(head) = rest.first() {
        let n = rest.iter().take_while(|e| e.user == head.user).count();
        let (same, tail) = rest.split_at(n);
        if !first {
            body.push(',');
        }
        first = false;
        body.push_str("{\"userId\":");
        protocol::push_json_str(&mut body, head.user.as_deref().unwrap_or_default());
        body.push_str(",\"entries\":");
        body.push_str(&protocol::entries_json(same));
        body.push('}');
        rest = tail;
    }
    body.push_str("],\"anonymousEntries\":");
    body.push_str(&anonymous.to_string());
    body.push('}');
    Ok(json(StatusCode::OK, body))
}

/// The live entries of `room` as a JSON array (see [`room_entries`]).
async fn room_entries_json(state: &AppState, hub: &Hub, room: &str) -> String {
    protocol::entries_json(room_entries(state, hub, room).await.iter())
}

/// The live entries of `room`: the whole cluster's whichever node answers. A node
/// that follows the room holds them all; otherwise it asks the other nodes (waiting
/// at most `--cluster-sync-ms`) and adds their entries to its own.
async fn room_entries(state: &AppState, hub: &Hub, room: &str) -> Vec<rollcall_engine::Entry> {
    let Some(cluster) = state.inner.cluster.get() else {
        return hub.room_entries(room).0;
    };
    let (mut entries, complete) = hub.room_entries(room);
    if !complete {
        if let Some(remote) = cluster.gather_room(room).await {
            let now = rollcall_engine::UnixMs::now();
            let mut by_client: hashbrown::HashMap<_, _> =
                entries.drain(..).map(|e| (e.client, e)).collect();
            for entry in remote {
                if entry.expires_at < now {
                    continue;
                }
                // A client that moved between nodes may be listed twice: the later
                // expiry wins, as in a followed room.
                match by_client.entry(entry.client) {
                    hashbrown::hash_map::Entry::Occupied(mut held) => {
                        if held.get().expires_at < entry.expires_at {
                            held.insert(entry);
                        }
                    }
                    hashbrown::hash_map::Entry::Vacant(vacant) => {
                        vacant.insert(entry);
                    }
                }
            }
            entries.extend(by_client.into_values());
            entries.sort_by_key(|e| e.client);
        }
    }
    entries
}

#[derive(Deserialize)]
struct HeartbeatBody<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(rename = "ttlMs", borrow)]
    ttl_ms: Option<&'a RawValue>,
    #[serde(rename = "clientId")]
    client_id: Option<u64>,
}

/// Refuses a body that is not declared as JSON: browsers send `text/plain`, forms and
/// `multipart/form-data` cross-origin without asking, but not `application/json`.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("send the body as Content-Type: application/json (got {content_type:?})"),
        ))
    }
}

/// Reads a request body of at most `limit` bytes within `timeout`: a declared length
/// over the limit is refused before any byte is read, a longer body as soon as it
/// passes the limit (413), and a body still incomplete at the deadline gets 408.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let too_large = |length: &dyn std::fmt::Display| {
        ApiError::new(
            ErrorCode::DataTooLarge,
            format!(
                "the request body is {length} bytes; the limit is {limit} (the data limit plus \
                 {BODY_ENVELOPE_BYTES} bytes for the rest of the body)"
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(length) = declared {
        if length > limit as u64 {
            return Err(too_large(&length));
        }
    }
    let read = async {
        let mut stream = body.into_data_stream();
        let mut bytes = Vec::with_capacity(declared.map_or(0, |l| l as usize));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(
                    ErrorCode::BadRequest,
                    format!("cannot read the request body: {e}"),
                )
            })?;
            if bytes.len() + chunk.len() > limit {
                return Err(too_large(&format!("over {limit}")));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(bytes))
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
        )
    })?
}

/// The room's presence as Server-Sent Events: a `snapshot` event, then `changes`
/// events (the WebSocket protocol's messages), `: keep-alive` comments while quiet.
#[utoipa::path(
    get,
    path = "/v1/rooms/{room}/events",
    tag = "rooms",
    params(("room" = String, Path, description = "The room's name, percent-encoded")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "An event stream: `event: snapshot` then `event: changes`, each `data:` line one JSON message", content_type = "text/event-stream", body = String),
        openapi::RoomReadErrors,
    ),
)]
pub(crate) async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    // The same checks as reading the room once.
    let (hub, grant) = state.readable_room(&headers, &room)?;
    let config = &state.inner.config;
    let stream = crate::sse::StreamConfig {
        keep_alive: config.ping_interval,
        slow_consumer_timeout: config.slow_consumer_timeout,
        fanout_interval: config.fanout_interval,
        expires_at: grant.map(|g| g.expires_at),
    };
    Ok(crate::sse::stream(
        hub.clone(),
        room.into(),
        state.inner.shutdown.clone(),
        stream,
        &state.inner.sessions,
    ))
}

/// Creates or refreshes an entry (an admin write), answered once durable.
#[utoipa::path(
    post,
    path = "/v1/rooms/{room}/heartbeat",
    tag = "rooms",
    params(("room" = String, Path, description = "The room's name, percent-encoded")),
    request_body = openapi::HeartbeatRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The entry is live (and durable)", body = openapi::HeartbeatAnswer),
        (status = 400, description = "Bad input: bad_request, invalid_room, invalid_ttl, invalid_data", body = openapi::ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = openapi::ErrorBody),
        (status = 409, description = "The room is full", body = openapi::ErrorBody),
        (status = 413, description = "The body is too large", body = openapi::ErrorBody),
        (status = 415, description = "The body is not application/json", body = openapi::ErrorBody),
        openapi::WriteErrors,
    ),
)]
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(room): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let hub = state.hub()?;
    let limits = hub.limits();
    limits.check_room(&room)?;
    // Everything the headers can refuse is refused before a byte of the body is read.
    let grant = state.authorize_write(&headers)?;
    require_json(&headers)?;
    let body = read_body(
        &headers,
        body,
        limits.max_http_body_bytes(),
        state.inner.config.connections.body_timeout,
    )
    .await?;
    let body: HeartbeatBody<'_> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("the body must be a JSON object: {e}"),
        )
    })?;
    let ttl = protocol::parse_ttl(body.ttl_ms, limits)?;
    let data = body.data.map_or("null", RawValue::get);
    // The same validator as the WebSocket's: size, then what JSON parsers refuse.
    protocol::check_data(data, limits)?;
    let client = match body.client_id {
        Some(id) => {
            let client = ClientId::new(id).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::BadRequest,
                    "clientId must be an integer in [1, 2^53)",
                )
            })?;
            // A chosen id is never handed to another client afterwards.
            hub.reserve_client(client)?;
            client
        }
        None => hub
            .allocate_client()
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?,
    };
    let room: Arc<str> = room.into();
    let user = grant.map(|g| g.user);
    let (expires_at, ticket) = hub.heartbeat(
        &room,
        client,
        user,
        Bytes::copy_from_slice(data.as_bytes()),
        ttl,
    )?;
    wait_durable(hub, ticket).await?;
    Ok(axum::Json(openapi::HeartbeatAnswer {
        client_id: client.0,
        expires_at_ms: expires_at.0,
    })
    .into_response())
}

/// Removes an entry (an admin write); 204 whether or not it existed.
#[utoipa::path(
    delete,
    path = "/v1/rooms/{room}/entries/{clientId}",
    tag = "rooms",
    params(
        ("room" = String, Path, description = "The room's name, percent-encoded"),
        ("clientId" = u64, Path, description = "The entry's client id"),
    ),
    security((), ("bearer" = [])),
    responses(
        (status = 204, description = "The entry is gone"),
        (status = 400, description = "An invalid room name or client id", body = openapi::ErrorBody),
        openapi::WriteErrors,
    ),
)]
pub(crate) async fn remove_entry(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((room, client)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let hub = state.hub()?;
    hub.limits().check_room(&room)?;
    state.authorize_write(&headers)?;
    let client = client
        .parse::<u64>()
        .ok()
        .and_then(ClientId::new)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::BadRequest,
                "clientId must be an integer in [1, 2^53)",
            )
        })?;
    if let Some(ticket) = hub.leave(&room.into(), client) {
        wait_durable(hub, ticket).await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn wait_durable(hub: &Hub, ticket: Ticket) -> Result<(), ApiError> {
    if !hub.acks_wait_for_disk() {
        return Ok(());
    }
    let mut durable = hub.durable();
    match tokio::time::timeout(WRITE_TIMEOUT, durable.wait_for(|t| *t >= ticket)).await {
        Ok(Ok(_)) => Ok(()),
        _ => Err(ApiError::new(
            ErrorCode::StorageUnavailable,
            "the log could not make this write durable in time",
        )),
    }
}
