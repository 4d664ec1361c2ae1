//! The Rollcall wire protocol, version [`PROTOCOL_VERSION`]: the one definition of
//! every message, error code, WebSocket close code, limit default and input validator.
//!
//! The server, the Rust client (`rollcall-client`) and the TypeScript SDK (through the
//! generated `clients/typescript/src/protocol.gen.ts`) all take them from here;
//! `docs/protocol.md` describes the same protocol in prose.
//!
//! - [`ClientMessage`] and [`ServerMessage`]: every message, with
//!   [`from_json`](ServerMessage::from_json) / [`to_json`](ServerMessage::to_json).
//!   Heartbeat `data` is a [`Json`] that keeps its exact text.
//! - [`ErrorCode`] (`error.code`) and [`CloseCode`] (with [`CloseCode::reconnect`]:
//!   whether a client may reconnect after it).
//! - [`limits`]: the defaults, and [`Limits`] with [`Limits::check_room`].
//! - [`check_data`], [`parse_ttl`], [`parse_interval`], [`parse_sample_limit`],
//!   [`parse_ref`]: the validators the WebSocket and the REST API share, refusing
//!   with a [`Rejection`].
//!
//! ```
//! use rollcall_protocol::{ClientMessage, CloseCode, ErrorCode, Json, ServerMessage};
//!
//! let heartbeat = ClientMessage::Heartbeat {
//!     room: "pr:room-123".into(),
//!     data: Json::from_value(&serde_json::json!({"status": "online"}))?,
//!     ttl_ms: 30_000,
//!     reference: Some(2),
//! };
//! assert_eq!(
//!     heartbeat.to_json(),
//!     r#"{"type":"heartbeat","room":"pr:room-123","data":{"status":"online"},"ttlMs":30000,"ref":2}"#
//! );
//!
//! let reply = ServerMessage::from_json(
//!     r#"{"type":"error","code":"invalid_ttl","message":"ttlMs must be an integer in [1, 3600000]","ref":2}"#,
//! )?;
//! assert!(matches!(reply, ServerMessage::Error { code: ErrorCode::InvalidTtl, reference: Some(2), .. }));
//!
//! // 4001: another connection resumed this client id; do not reconnect.
//! assert!(CloseCode::from_u16(4001).is_final());
//! # Ok::<(), rollcall_protocol::Error>(())
//! ```
#![deny(missing_docs)]

mod codes;
mod error;
pub mod limits;
mod messages;
#[cfg(feature = "typescript")]
mod typescript;
mod validate;

pub use codes::{CloseCode, ErrorCode, Reconnect};
pub use error::{Error, Rejection, Result};
pub use limits::Limits;
pub use messages::{
    Change, ClientMessage, Entry, Json, ServerMessage, SubscribeMode, WelcomeLimits,
};
pub use validate::{check_data, parse_interval, parse_ref, parse_sample_limit, parse_ttl};

/// The protocol version: `docs/protocol.md` describes v1, spoken at `GET /ws` with or
/// without the subprotocol [`SUBPROTOCOL`].
pub const PROTOCOL_VERSION: u32 = 1;

/// The WebSocket subprotocol (`Sec-WebSocket-Protocol`) of this version.
pub const SUBPROTOCOL: &str = "rollcall.v1";

/// The WebSocket path.
pub const WS_PATH: &str = "/ws";
