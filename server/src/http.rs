//! The HTTP side: health, metrics, the REST API, and the WebSocket upgrade.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures_util::StreamExt as _;
use metrics_exporter_prometheus::PrometheusHandle;
use rollcall_engine::{ClientId, Ticket};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::task::TaskTracker;

use crate::auth::Grant;
use crate::config::ServerConfig;
use crate::connection::WebSocketUpgrade;
use crate::hub::Hub;
use crate::listener::ConnectionGuard;
use crate::protocol::{self, ErrorCode, Rejection};
use crate::session::{self, SessionConfig};
use crate::shutdown::Shutdown;

/// How long a REST write waits for the disk.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Rooms per page of `GET /v1/rooms` at most.
const MAX_PAGE: usize = 1_000;
/// What a heartbeat body may hold besides `data` (`ttlMs`, `clientId`, keys and
/// whitespace): the body limit is `max_data_bytes` plus this.
pub const BODY_ENVELOPE_BYTES: usize = rollcall_protocol::limits::HTTP_BODY_SLACK_BYTES;

/// Shared by every request handler.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<StateInner>,
}

#[derive(Debug)]
struct StateInner {
    hub: OnceLock<Arc<Hub>>,
    config: ServerConfig,
    shutdown: Shutdown,
    sessions: TaskTracker,
    prometheus: PrometheusHandle,
    cluster: OnceLock<Arc<crate::cluster::Status>>,
}

impl AppState {
    /// State for a server that is still replaying its log.
    pub fn new(
        config: ServerConfig,
        shutdown: Shutdown,
        sessions: TaskTracker,
        prometheus: PrometheusHandle,
    ) -> AppState {
        AppState {
            inner: Arc::new(StateInner {
                hub: OnceLock::new(),
                config,
                shutdown,
                sessions,
                prometheus,
                cluster: OnceLock::new(),
            }),
        }
    }

    /// Cluster mode: `/healthz` reports the NATS connection.
    pub fn set_cluster(&self, status: Arc<crate::cluster::Status>) {
        let _ = self.inner.cluster.set(status);
    }

    /// Marks the server ready.
    pub fn set_hub(&self, hub: Arc<Hub>) {
        let _ = self.inner.hub.set(hub);
    }

    /// With auth on, the request's bearer token must verify and satisfy `allowed`.
    /// Returns the grant (`None` when auth is off).
    fn authorize(
        &self,
        headers: &HeaderMap,
        allowed: impl FnOnce(&Grant) -> bool,
    ) -> Result<Option<Grant>, ApiError> {
        let Some(auth) = &self.inner.config.auth else {
            return Ok(None);
        };
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unauthorized,
                    "send Authorization: Bearer <token>",
                )
            })?;
        let grant = auth.verify(token.trim())?;
        if !allowed(&grant) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "your token does not allow this",
            ));
        }
        Ok(Some(grant))
    }

    /// Browsers send `Origin`; with an allow-list, other origins are refused. The
    /// server's own origin (its pages) is always allowed; requests without `Origin`
    /// (non-browser clients, which can send any header anyway) are allowed.
    fn check_origin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let allowed = &self.inner.config.allowed_origins;
        if allowed.is_empty() {
            return Ok(());
        }
        let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
            return Ok(());
        };
        // The Host header only proves the page is ours when it names the server
        // without DNS: with a DNS name, a rebinding attacker controls both Host and
        // Origin. Pages served under a DNS name must list their origin.
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|host| names_without_dns(host));
        let same_origin = host.is_some_and(|host| {
            origin
                .split_once("://")
                .is_some_and(|(_, rest)| rest.trim_end_matches('/') == host)
        });
        if same_origin || allowed.iter().any(|a| a.trim_end_matches('/') == origin) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("origin {origin} is not allowed"),
            ))
        }
    }

    /// Everything a REST write must pass before its body is read: the origin
    /// allow-list, then (with auth on) an admin token. Returns the grant.
    fn authorize_write(&self, headers: &HeaderMap) -> Result<Option<Grant>, ApiError> {
        self.check_origin(headers)?;
        self.authorize(headers, |grant| grant.admin)
    }

    fn hub(&self) -> Result<&Arc<Hub>, ApiError> {
        self.inner.hub.get().ok_or_else(|| {
            ApiError::new(
                ErrorCode::Starting,
                "the server is replaying its log; retry shortly",
            )
        })
    }
}

/// Whether a Host header is an IP literal or `localhost` (with or without a port):
/// names that DNS rebinding cannot point at this server.
fn names_without_dns(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// An HTTP error in the JSON shape `{"error": code, "message": …}`.
#[derive(Debug)]
pub struct ApiError(Rejection);

impl ApiError {
    fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError(Rejection::new(code, message))
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        ApiError(rejection)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        let body = serde_json::json!({"error": self.0.code.as_str(), "message": self.0.message});
        (status, axum::Json(body)).into_response()
    }
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Every route. Every error answer is JSON with a code, including the ones axum
/// produces itself (no such route, wrong method, bad query or path).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/rooms", get(rooms))
        .route("/v1/rooms/{room}", get(room))
        .route("/v1/rooms/{room}/heartbeat", post(heartbeat))
        .route("/v1/rooms/{room}/events", get(events))
        .route("/v1/rooms/{room}/users", get(users))
        .route("/v1/rooms/{room}/entries/{client}", delete(remove_entry))
        .route("/v1/openapi.json", get(openapi_json))
        .merge(crate::pages::routes())
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "this route does not take this method",
            )
        })
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// Turns an error answer that is not JSON (axum's own rejections: a bad query string
/// or path parameter, a body over a limit) into `{"error": code, "message": …}`,
/// keeping its status and headers (such as `Allow`) and its text as the message.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let code = match status.as_u16() {
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        408 => ErrorCode::RequestTimeout,
        413 => ErrorCode::DataTooLarge,
        415 => ErrorCode::UnsupportedMediaType,
        429 => ErrorCode::RateLimited,
        503 => ErrorCode::Starting,
        500..=599 => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4_096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        text => text.to_owned(),
    };
    let body = serde_json::json!({"error": code.as_str(), "message": message}).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

/// The OpenAPI 3.1 description of this API.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object, content_type = "application/json")),
)]
pub(crate) async fn openapi_json() -> Response {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    json(
        StatusCode::OK,
        DOCUMENT.get_or_init(crate::openapi::document).clone(),
    )
}

/// A log writer stuck this long in one storage call makes the node unhealthy.
const STALL_LIMIT: Duration = Duration::from_secs(10);

/// Whether the server is ready.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "meta",
    responses(
        (status = 200, description = "Ready", body = crate::openapi::Health),
        (status = 503, description = "Replaying the log, or the log writer is stuck", body = crate::openapi::Health),
    ),
)]
pub(crate) async fn healthz(State(state): State<AppState>) -> Response {
    if let Some(hub) = state.inner.hub.get() {
        if hub.log_stalled_for() > STALL_LIMIT {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"log stalled"}"#.into(),
            );
        }
        // Without NATS the node still serves its own clients: healthy, and it says so.
        match state.inner.cluster.get() {
            Some(cluster) if cluster.connected() => json(
                StatusCode::OK,
                r#"{"status":"ok","cluster":"connected"}"#.into(),
            ),
            Some(_) => json(
                StatusCode::OK,
                r#"{"status":"ok","cluster":"disconnected"}"#.into(),
            ),
            None => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        }
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"starting"}"#.into(),
        )
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    if let Some(hub) = state.inner.hub.get() {
        hub.record_gauges();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&state.inner.prometheus),
    )
        .into_response()
}

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
        (status = 200, description = "A page of rooms", body = crate::openapi::RoomsPage),
        (status = 400, description = "A bad query string", body = crate::openapi::ErrorBody),
        (status = 401, description = "Auth on and no valid token", body = crate::openapi::ErrorBody),
        (status = 403, description = "The token is not an admin token", body = crate::openapi::ErrorBody),
        (status = 503, description = "Starting", body = crate::openapi::ErrorBody),
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
    let body = crate::openapi::RoomsPage {
        rooms: page
            .rooms
            .into_iter()
            .map(|(room, entries)| crate::openapi::RoomCount {
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
        (status = 200, description = "The room", body = crate::openapi::Room),
        (status = 400, description = "An invalid room name", body = crate::openapi::ErrorBody),
        (status = 401, description = "Auth on and no valid token", body = crate::openapi::ErrorBody),
        (status = 403, description = "The token cannot read this room", body = crate::openapi::ErrorBody),
        (status = 503, description = "Starting", body = crate::openapi::ErrorBody),
    ),
)]
pub(crate) async fn room(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    let hub = state.hub()?;
    hub.limits().check_room(&room)?;
    // The same answer for a room with entries and one without: nothing leaks.
    state.authorize(&headers, |grant| grant.can_read(&room))?;
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
        (status = 200, description = "The room's users", body = crate::openapi::RoomUsers),
        (status = 400, description = "An invalid room name", body = crate::openapi::ErrorBody),
        (status = 401, description = "Auth on and no valid token", body = crate::openapi::ErrorBody),
        (status = 403, description = "The token cannot read this room", body = crate::openapi::ErrorBody),
        (status = 503, description = "Starting", body = crate::openapi::ErrorBody),
    ),
)]
pub(crate) async fn users(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    let hub = state.hub()?;
    hub.limits().check_room(&room)?;
    state.authorize(&headers, |grant| grant.can_read(&room))?;
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
        (status = 400, description = "An invalid room name", body = crate::openapi::ErrorBody),
        (status = 401, description = "Auth on and no valid token", body = crate::openapi::ErrorBody),
        (status = 403, description = "The token cannot read this room", body = crate::openapi::ErrorBody),
        (status = 503, description = "Starting", body = crate::openapi::ErrorBody),
    ),
)]
pub(crate) async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    let hub = state.hub()?;
    hub.limits().check_room(&room)?;
    // The same check as reading the room once.
    let grant = state.authorize(&headers, |grant| grant.can_read(&room))?;
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
    request_body = crate::openapi::HeartbeatRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The entry is live (and durable)", body = crate::openapi::HeartbeatAnswer),
        (status = 400, description = "Bad input: bad_request, invalid_room, invalid_ttl, invalid_data", body = crate::openapi::ErrorBody),
        (status = 401, description = "Auth on and no valid token", body = crate::openapi::ErrorBody),
        (status = 403, description = "Not an admin token, or a foreign Origin", body = crate::openapi::ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = crate::openapi::ErrorBody),
        (status = 409, description = "The room is full", body = crate::openapi::ErrorBody),
        (status = 413, description = "The body is too large", body = crate::openapi::ErrorBody),
        (status = 415, description = "The body is not application/json", body = crate::openapi::ErrorBody),
        (status = 503, description = "Starting, or storage unavailable", body = crate::openapi::ErrorBody),
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
    Ok(axum::Json(crate::openapi::HeartbeatAnswer {
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
        (status = 400, description = "An invalid room name or client id", body = crate::openapi::ErrorBody),
        (status = 401, description = "Auth on and no valid token", body = crate::openapi::ErrorBody),
        (status = 403, description = "Not an admin token, or a foreign Origin", body = crate::openapi::ErrorBody),
        (status = 503, description = "Starting, or storage unavailable", body = crate::openapi::ErrorBody),
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

async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(_peer): ConnectInfo<SocketAddr>,
    guard: Option<Extension<Arc<ConnectionGuard>>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    state.check_origin(&headers)?;
    let hub = state.hub()?.clone();
    // The session keeps the connection's slot under the connection caps.
    let guard = guard.map(|Extension(guard)| guard);
    let config = &state.inner.config;
    let limits = hub.limits();
    let session_config = SessionConfig {
        hello_timeout: limits.hello_timeout,
        ping_interval: config.ping_interval,
        idle_timeout: config.idle_timeout,
        slow_consumer_timeout: config.slow_consumer_timeout,
        requests_per_second: config.requests_per_second,
        control_frames_per_second: config.control_frames_per_second,
        auth: config.auth.clone(),
        fanout_interval: config.fanout_interval,
    };
    let shutdown = state.inner.shutdown.clone();
    let sessions = state.inner.sessions.clone();
    Ok(upgrade
        .protocols([rollcall_protocol::SUBPROTOCOL])
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        // A small read buffer keeps idle connections cheap (it grows for big messages);
        // the write threshold only decides when `feed` writes early, since every batch
        // ends with one explicit flush.
        .read_buffer_size(512)
        .write_buffer_size(256 * 1024)
        .on_upgrade(move |socket| {
            sessions.track_future(session::serve(socket, hub, shutdown, session_config, guard))
        }))
}
