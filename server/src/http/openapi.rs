//! The OpenAPI 3.1 description of the REST API, served at `/v1/openapi.json`.
//!
//! The operations come from the `#[utoipa::path]` attributes on the handlers in
//! `http.rs` and `http/rooms.rs`; the schemas below describe the JSON the handlers write.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

/// Every HTTP error: `{"error": code, "message": …}`.
#[derive(Debug, serde::Serialize, ToSchema)]
#[schema(title = "Error")]
#[allow(dead_code)]
pub struct ErrorBody {
    /// The error code (docs/protocol.md, "Error codes"), e.g. `invalid_room`.
    pub error: String,
    /// A human-readable explanation.
    pub message: String,
}

/// One live entry of a room.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct Entry {
    /// The client that holds the entry.
    pub client_id: u64,
    /// The entry's data, any JSON value.
    pub data: serde_json::Value,
    /// When the entry expires unless refreshed (Unix milliseconds, server clock).
    pub expires_at_ms: u64,
    /// The token's `sub`, with auth on.
    #[schema(required = false)]
    pub user_id: Option<String>,
}

/// `GET /v1/rooms/{room}`.
#[derive(Debug, serde::Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Room {
    /// The room's name.
    pub room: String,
    /// Its live entries (empty for a room without entries).
    pub entries: Vec<Entry>,
}

/// One user of `GET /v1/rooms/{room}/users`.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct RoomUser {
    /// The user: the token's `sub`, or without auth the `user` its clients' hellos
    /// claimed.
    pub user_id: String,
    /// The user's live entries in the room, one per client (tab, device).
    pub entries: Vec<Entry>,
}

/// `GET /v1/rooms/{room}/users`.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct RoomUsers {
    /// The room's name.
    pub room: String,
    /// Users with live entries, sorted by `userId`.
    pub users: Vec<RoomUser>,
    /// Live entries without a user (auth off and no `user` in hello).
    pub anonymous_entries: u64,
}

/// One room of `GET /v1/rooms`.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct RoomCount {
    /// The room's name.
    pub room: String,
    /// How many live entries it has.
    pub entries: u64,
}

/// `GET /v1/rooms`.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct RoomsPage {
    /// Rooms with live entries, sorted by name.
    pub rooms: Vec<RoomCount>,
    /// Pass as `after` for the next page; `null` on the last page.
    #[schema(required = true)]
    pub next: Option<String>,
}

/// `POST /v1/rooms/{room}/heartbeat`'s body.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct HeartbeatRequest {
    /// The entry's data, any JSON value (at most `maxDataBytes` serialized).
    #[schema(required = false)]
    pub data: serde_json::Value,
    /// Time to live in milliseconds, in `[1, maxTtlMs]`.
    pub ttl_ms: u64,
    /// Refresh this client's entry; omitted, the server assigns an id.
    #[schema(required = false)]
    pub client_id: Option<u64>,
}

/// `POST /v1/rooms/{room}/heartbeat`'s answer, once the write is durable.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatAnswer {
    /// The entry's client id.
    pub client_id: u64,
    /// When the entry expires unless refreshed (Unix milliseconds).
    pub expires_at_ms: u64,
}

/// `GET /healthz`.
#[derive(Debug, serde::Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Health {
    /// `ok`, `starting` or `log stalled`.
    pub status: String,
    /// In cluster mode: `connected` or `disconnected`.
    #[schema(required = false)]
    pub cluster: Option<String>,
}

/// The errors of a room read: `GET /v1/rooms/{room}`, its `users` and its `events`.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub(crate) enum RoomReadErrors {
    #[response(status = 400, description = "An invalid room name")]
    InvalidRoom(ErrorBody),
    #[response(status = 401, description = "Auth on and no valid token")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "The token cannot read this room")]
    Forbidden(ErrorBody),
    #[response(status = 503, description = "Starting")]
    Starting(ErrorBody),
}

/// The errors every REST write shares (each adds its own 400 and the like).
#[derive(IntoResponses)]
#[allow(dead_code)]
pub(crate) enum WriteErrors {
    #[response(status = 401, description = "Auth on and no valid token")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "Not an admin token, or a foreign Origin")]
    Forbidden(ErrorBody),
    #[response(status = 503, description = "Starting, or storage unavailable")]
    Unavailable(ErrorBody),
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "With auth on (docs/security.md), every /v1 request needs a token.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Rollcall",
        description = "The REST API of the Rollcall presence server. The WebSocket \
                       protocol is described in docs/protocol.md."
    ),
    paths(
        crate::http::healthz,
        crate::http::rooms::rooms,
        crate::http::rooms::room,
        crate::http::rooms::events,
        crate::http::rooms::users,
        crate::http::rooms::heartbeat,
        crate::http::rooms::remove_entry,
        crate::http::openapi_json,
    ),
    components(schemas(ErrorBody, Entry, Room, RoomUser, RoomUsers, RoomCount, RoomsPage, HeartbeatRequest, HeartbeatAnswer, Health)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

/// The document as JSON text.
pub fn document() -> String {
    // (`info.version` is this crate's version.)
    ApiDoc::openapi()
        .to_json()
        .unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_openapi_3_1_with_every_route() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        for path in [
            "/healthz",
            "/v1/rooms",
            "/v1/rooms/{room}",
            "/v1/rooms/{room}/heartbeat",
            "/v1/rooms/{room}/events",
            "/v1/rooms/{room}/users",
            "/v1/rooms/{room}/entries/{clientId}",
            "/v1/openapi.json",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
    }
}
