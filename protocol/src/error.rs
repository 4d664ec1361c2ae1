//! Why a request was refused ([`Rejection`]), and what this crate's own fallible
//! functions return ([`Error`]).

use crate::ErrorCode;

/// A request that failed validation, answered with an `error` message (over HTTP with
/// `{"error": code, "message": …}` and the code's status).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
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
    #[must_use]
    pub fn with(mut self, reference: Option<u64>, room: Option<&str>) -> Rejection {
        self.reference = reference;
        self.room = room.map(str::to_owned);
        self
    }
}

/// What can go wrong reading or writing a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The text is not JSON, or not a message of this protocol.
    #[error("not a Rollcall message: {0}")]
    Json(#[from] serde_json::Error),
    /// A message with a `type` this version does not know.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A message without its required fields.
    #[error("{kind} needs a {field:?}")]
    MissingField {
        /// The message type.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
