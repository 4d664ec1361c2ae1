//! What can go wrong, as one error type.

use crate::{CloseReason, ErrorCode, ServerError};

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The WebSocket could not be opened or failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The server refused the request.
    #[error("server error {0}")]
    Server(ServerError),
    /// The server closed the connection.
    #[error("closed by the server: {0}")]
    Closed(CloseReason),
    /// The connection dropped before the request was answered.
    #[error("disconnected before the request was answered")]
    Disconnected,
    /// The server sent something that is not the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The condition did not hold in time.
    #[error("timed out")]
    Timeout,
    /// The client was closed.
    #[error("the client is closed")]
    ClientClosed,
    /// Options without any URL.
    #[error("no URL to connect to")]
    NoUrl,
}

impl Error {
    /// The server's error code, for [`Error::Server`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server(error) => Some(error.code),
            _ => None,
        }
    }

    /// Whether reconnecting cannot help: a final close code, or a refused upgrade
    /// (403: the origin is not allowed).
    pub fn is_final(&self) -> bool {
        match self {
            Error::Closed(reason) => reason.code.is_final(),
            Error::WebSocket(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                response.status().as_u16() == 403
            }
            _ => false,
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
