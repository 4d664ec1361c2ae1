//! Error codes (`error.code` over WebSocket, `error` over HTTP) and WebSocket close
//! codes.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $wire:literal, $status:literal; )*) => {
        /// Error codes sent to clients (`error.code` over WebSocket, `error` over HTTP).
        ///
        /// A code this version does not know reads as [`ErrorCode::Unknown`], so a newer
        /// server never breaks an older client.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
            /// A code this version of the protocol does not know (sent as `unknown`).
            Unknown,
        }

        impl ErrorCode {
            /// Every known code, in the order of `docs/protocol.md`.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it appears on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( ErrorCode::$variant => $wire, )*
                    ErrorCode::Unknown => "unknown",
                }
            }

            /// The HTTP status the REST API answers with.
            pub const fn http_status(self) -> u16 {
                match self {
                    $( ErrorCode::$variant => $status, )*
                    ErrorCode::Unknown => 500,
                }
            }

            /// The code for its wire name; [`ErrorCode::Unknown`] for any other text.
            pub fn from_wire(text: &str) -> ErrorCode {
                match text {
                    $( $wire => ErrorCode::$variant, )*
                    _ => ErrorCode::Unknown,
                }
            }
        }
    };
}

error_codes! {
    /// Not JSON, not an object, unknown `type`, a field of the wrong type.
    BadRequest = "bad_request", 400;
    /// Room name empty, too long or with control characters.
    InvalidRoom = "invalid_room", 400;
    /// `ttlMs` missing, not an integer, or out of range.
    InvalidTtl = "invalid_ttl", 400;
    /// `data` larger than the limit (over HTTP also a body too large).
    DataTooLarge = "data_too_large", 413;
    /// `data` that not every JSON parser reads the same: a lone surrogate escape, a
    /// number out of the range of a double, or nesting deeper than the limit.
    InvalidData = "invalid_data", 400;
    /// The connection uses too many rooms.
    TooManyRooms = "too_many_rooms", 400;
    /// The room has too many entries.
    RoomFull = "room_full", 409;
    /// Too many heartbeats or other requests.
    RateLimited = "rate_limited", 429;
    /// The resume token is malformed, forged or belongs to another user.
    InvalidResume = "invalid_resume", 400;
    /// The log could not make a write durable in time.
    StorageUnavailable = "storage_unavailable", 503;
    /// No token where one is required.
    Unauthorized = "unauthorized", 401;
    /// The token is malformed or its signature does not verify.
    InvalidToken = "invalid_token", 401;
    /// The token has expired.
    TokenExpired = "token_expired", 401;
    /// The token's `nbf` (not before) is still in the future.
    TokenNotYetValid = "token_not_yet_valid", 401;
    /// The token does not grant this room or operation.
    Forbidden = "forbidden", 403;
    /// HTTP only: no such route or resource.
    NotFound = "not_found", 404;
    /// The server is starting (replaying its log).
    Starting = "starting", 503;
    /// Something unexpected failed on the server.
    Internal = "internal", 500;
    /// HTTP only: the request body did not arrive in time.
    RequestTimeout = "request_timeout", 408;
    /// HTTP only: a request body that is not `application/json`.
    UnsupportedMediaType = "unsupported_media_type", 415;
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(ErrorCode::from_wire(&text))
    }
}

/// What a client should do after the server closed its WebSocket with a code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reconnect {
    /// Reconnect with backoff, presenting the resume token.
    Yes,
    /// Reconnect only with a fresh token (the old one expired).
    WithFreshToken,
    /// Never: a client bug, another connection took over, or the token is refused.
    No,
}

macro_rules! close_codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $name:literal, $reconnect:ident; )*) => {
        /// WebSocket close codes the server sends (`docs/protocol.md`, "Close codes").
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum CloseCode {
            $( $(#[$doc])* $variant, )*
            /// Any other code (1005 when the close frame had none, 1006 for a dropped
            /// connection, or a code of a newer server).
            Other(u16),
        }

        impl CloseCode {
            /// Every code the server sends.
            pub const ALL: &'static [CloseCode] = &[$(CloseCode::$variant,)*];

            /// The numeric code.
            pub const fn as_u16(self) -> u16 {
                match self {
                    $( CloseCode::$variant => $code, )*
                    CloseCode::Other(code) => code,
                }
            }

            /// The code for its number.
            pub const fn from_u16(code: u16) -> CloseCode {
                match code {
                    $( $code => CloseCode::$variant, )*
                    other => CloseCode::Other(other),
                }
            }

            /// A stable name (`SCREAMING_SNAKE_CASE`, as in the TypeScript constants);
            /// `None` for [`CloseCode::Other`].
            pub const fn name(self) -> Option<&'static str> {
                match self {
                    $( CloseCode::$variant => Some($name), )*
                    CloseCode::Other(_) => None,
                }
            }

            /// Whether a client should reconnect after this close.
            pub const fn reconnect(self) -> Reconnect {
                match self {
                    $( CloseCode::$variant => Reconnect::$reconnect, )*
                    CloseCode::Other(_) => Reconnect::Yes,
                }
            }

            /// A close after which a client must not reconnect with the same
            /// credentials ([`Reconnect::No`] or [`Reconnect::WithFreshToken`]).
            pub const fn is_final(self) -> bool {
                !matches!(self.reconnect(), Reconnect::Yes)
            }
        }
    };
}

close_codes! {
    /// Normal closure (the client closed).
    Normal = 1000, "NORMAL", Yes;
    /// The server is shutting down; reconnect with backoff.
    GoingAway = 1001, "GOING_AWAY", Yes;
    /// The client broke the WebSocket protocol (an unmasked, fragmented control or
    /// unexpected continuation frame, non-zero reserved bits, an unknown opcode).
    ProtocolError = 1002, "PROTOCOL_ERROR", No;
    /// A text message was not valid UTF-8.
    InvalidPayload = 1007, "INVALID_PAYLOAD", No;
    /// A message exceeded `maxMessageBytes`, or spanned too many frames.
    MessageTooBig = 1009, "MESSAGE_TOO_BIG", No;
    /// The server failed.
    Internal = 1011, "INTERNAL", Yes;
    /// The first message was not a valid `hello`.
    BadHello = 4000, "BAD_HELLO", No;
    /// Another connection resumed this client id.
    Replaced = 4001, "REPLACED", No;
    /// No `hello` within the handshake timeout.
    HelloTimeout = 4002, "HELLO_TIMEOUT", Yes;
    /// Authentication failed.
    Unauthorized = 4003, "UNAUTHORIZED", No;
    /// The token expired and was not renewed.
    TokenExpired = 4004, "TOKEN_EXPIRED", WithFreshToken;
    /// The client did not read for too long.
    SlowConsumer = 4005, "SLOW_CONSUMER", Yes;
    /// Too many pings/pongs, or requests that keep being refused as `rate_limited`.
    Flood = 4006, "FLOOD", Yes;
    /// No traffic and no pong within the idle timeout.
    Idle = 4008, "IDLE", Yes;
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{} ({name})", self.as_u16()),
            None => write!(f, "{}", self.as_u16()),
        }
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> CloseCode {
        CloseCode::from_u16(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.as_u16()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_through_their_wire_names() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_wire(code.as_str()), *code);
            let json = serde_json::to_string(code).expect("serialize");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, *code);
        }
        let unknown: ErrorCode = serde_json::from_str("\"brand_new\"").expect("deserialize");
        assert_eq!(unknown, ErrorCode::Unknown);
    }

    #[test]
    fn close_codes_round_trip_and_say_whether_to_reconnect() {
        for code in CloseCode::ALL {
            assert_eq!(CloseCode::from_u16(code.as_u16()), *code);
            assert!(code.name().is_some());
        }
        assert_eq!(CloseCode::from_u16(1006), CloseCode::Other(1006));
        for last in [1002, 1007, 1009, 4000, 4001, 4003, 4004] {
            assert!(CloseCode::from_u16(last).is_final(), "{last}");
        }
        for again in [1000, 1001, 1006, 1011, 4002, 4005, 4006, 4008] {
            assert!(!CloseCode::from_u16(again).is_final(), "{again}");
        }
        assert_eq!(
            CloseCode::TokenExpired.reconnect(),
            Reconnect::WithFreshToken
        );
    }
}
