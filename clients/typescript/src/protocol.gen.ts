// Generated from the rollcall-protocol crate (protocol/src): do not edit.
// Regenerate: ROLLCALL_BLESS=1 cargo test -p rollcall-protocol --test typescript

/** The protocol version (docs/protocol.md). */
export const PROTOCOL_VERSION = 1;
/** The WebSocket subprotocol of this version. */
export const SUBPROTOCOL = "rollcall.v1";

/** Every error code a server sends (`error.code`; over HTTP `error`). */
export const ERROR_CODES = [
  "bad_request",
  "invalid_room",
  "invalid_ttl",
  "data_too_large",
  "invalid_data",
  "too_many_rooms",
  "room_full",
  "rate_limited",
  "invalid_resume",
  "storage_unavailable",
  "unauthorized",
  "invalid_token",
  "token_expired",
  "token_not_yet_valid",
  "forbidden",
  "not_found",
  "starting",
  "internal",
  "request_timeout",
  "unsupported_media_type",
] as const;

/** A server error code. */
export type ServerErrorCode = (typeof ERROR_CODES)[number];

/** WebSocket close codes the server sends (docs/protocol.md, "Close codes"). */
export const CLOSE = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  INVALID_PAYLOAD: 1007,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL: 1011,
  BAD_HELLO: 4000,
  REPLACED: 4001,
  HELLO_TIMEOUT: 4002,
  UNAUTHORIZED: 4003,
  TOKEN_EXPIRED: 4004,
  SLOW_CONSUMER: 4005,
  FLOOD: 4006,
  IDLE: 4008,
} as const;

/** Close codes after which a client must not reconnect with the same credentials. */
export const FINAL_CLOSE_CODES: readonly number[] = [1002, 1007, 1009, 4000, 4001, 4003, 4004];

/** The limits a `welcome` announces, at their defaults. */
export const DEFAULT_LIMITS = {
  maxMessageBytes: 65536,
  maxDataBytes: 4096,
  maxTtlMs: 3600000,
  maxRoomsPerConnection: 128,
  maxEntriesPerRoom: 10000,
  heartbeatsPerSecond: 120,
  heartbeatBurst: 240,
} as const;

/** The longest `intervalMs` a subscription may ask for. */
export const MAX_INTERVAL_MS = 60000;
/** The longest room name, in bytes of UTF-8. */
export const MAX_ROOM_BYTES = 256;
/** The deepest nesting of arrays and objects in `data`. */
export const MAX_DATA_DEPTH = 64;
