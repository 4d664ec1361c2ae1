//! The HTTP side: health, metrics, the REST API, and the WebSocket upgrade.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::task::TaskTracker;

use crate::auth::Grant;
use crate::config::ServerConfig;
use crate::connection::WebSocketUpgrade;
use crate::hub::Hub;
use crate::listener::ConnectionGuard;
use crate::protocol::{ErrorCode, Rejection};
use crate::session::{self, SessionConfig};
use crate::shutdown::Shutdown;

mod openapi;
mod rooms;

use rooms::{events, heartbeat, remove_entry, room, rooms, users};

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

    /// The checks of every read of one room: the hub is up, the room's name is valid
    /// and the token may read it. Returns the hub and the grant (`None`: auth off).
    fn readable_room(
        &self,
        headers: &HeaderMap,
        room: &str,
    ) -> Result<(&Arc<Hub>, Option<Grant>), ApiError> {
        let hub = self.hub()?;
        hub.limits().check_room(room)?;
        // The same answer for a room with entries and one without: nothing leaks.
        let grant = self.authorize(headers, |grant| grant.can_read(room))?;
        Ok((hub, grant))
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
        DOCUMENT.get_or_init(openapi::document).clone(),
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
        (status = 200, description = "Ready", body = openapi::Health),
        (status = 503, description = "Replaying the log, or the log writer is stuck", body = openapi::Health),
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
