//! Why a request was refused: the error codes clients see (`error.code` over
//! WebSocket, `error` over HTTP, with its status) and the rejection that carries one.
//! Validation (`limits`, `protocol`) produces them; `protocol` encodes them.

/// Error codes sent to clients (`error.code`, HTTP `error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Not JSON, unknown type, wrong field types.
    BadRequest,
    /// Room name empty, too long or with control characters.
    InvalidRoom,
    /// `ttlMs` missing, not an integer, or out of range.
    InvalidTtl,
    /// `data` larger than the limit.
    DataTooLarge,
    /// `data` that not every JSON parser reads the same: a lone surrogate escape, a
    /// number out of the range of a double, or nesting deeper than the limit.
    InvalidData,
    /// The connection uses too many rooms.
    TooManyRooms,
    /// The room has too many entries.
    RoomFull,
    /// Too many heartbeats.
    RateLimited,
    /// The resume token is not valid for this user.
    InvalidResume,
    /// The log could not make a write durable in time.
    StorageUnavailable,
    /// No token where one is required.
    Unauthorized,
    /// The token is malformed or its signature does not verify.
    InvalidToken,
    /// The token has expired.
    TokenExpired,
    /// The token's `nbf` (not before) is still in the future.
    TokenNotYetValid,
    /// The token does not grant this room or operation.
    Forbidden,
    /// HTTP only: no such route or resource.
    NotFound,
    /// The server is starting (replaying its log).
    Starting,
    /// Something unexpected failed on the server.
    Internal,
    /// HTTP only: the request body did not arrive in time.
    RequestTimeout,
    /// HTTP only: a request body that is not `application/json`.
    UnsupportedMediaType,
    /// HTTP only: the route exists but not with this method.
    MethodNotAllowed,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::InvalidTtl => "invalid_ttl",
            ErrorCode::DataTooLarge => "data_too_large",
            ErrorCode::InvalidData => "invalid_data",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InvalidResume => "invalid_resume",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenNotYetValid => "token_not_yet_valid",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Starting => "starting",
            ErrorCode::Internal => "internal",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
        }
    }

    /// The HTTP status the REST API answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::InvalidRoom
            | ErrorCode::InvalidTtl
            | ErrorCode::InvalidData
            | ErrorCode::TooManyRooms
            | ErrorCode::InvalidResume => 400,
            ErrorCode::Unauthorized
            | ErrorCode::InvalidToken
            | ErrorCode::TokenExpired
            | ErrorCode::TokenNotYetValid => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::RoomFull => 409,
            ErrorCode::DataTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::StorageUnavailable | ErrorCode::Starting => 503,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request that failed validation, answered with an `error` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// What went wrong.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
    /// The request's `ref`, if it had one.
    pub reference: Option<u64>,
    /// The request's room, if it had a valid one.
    pub room: Option<String>,
}

impl Rejection {
    /// A rejection without `ref` or room.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Rejection {
        Rejection {
            code,
            message: message.into(),
            reference: None,
            room: None,
        }
    }

    /// The same rejection, for the request with this `ref` and room.
    pub(crate) fn with(mut self, reference: Option<u64>, room: Option<&str>) -> Rejection {
        self.reference = reference;
        self.room = room.map(str::to_owned);
        self
    }
}
