//! Why a request was refused: the error codes clients see (`error.code` over
//! WebSocket, `error` over HTTP, with its status) and the rejection that carries one.
//! Both are defined by the protocol crate; validation (`limits`, `protocol`) produces
//! them and `protocol` encodes them.

pub use rollcall_protocol::{ErrorCode, Rejection};
