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
  "method_not_allowed",
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
/** The most entries a `sample` subscription may ask for (`limit`). */
export const MAX_SAMPLE_LIMIT = 1000;
/** The longest room name, in bytes of UTF-8. */
export const MAX_ROOM_BYTES = 256;
/** The deepest nesting of arrays and objects in `data`. */
export const MAX_DATA_DEPTH = 64;

// Wire messages (docs/protocol.md), from the serde types of the protocol crate.

/**
 * A message a client sends.
 */
export type ClientMessage = {
  "type": "hello",
  /**
   * A JWT, required when the server runs with auth.
   */
  token?: string,
  /**
   * The `resumeToken` of an earlier `welcome`, to get its client id back.
   */
  resume?: string,
  /**
   * Without auth only: the user behind this client, an unverified claim that
   * becomes its entries' `userId` (with auth, the token's `sub` is used).
   */
  user?: string,
} | {
  "type": "subscribe",
  /**
   * The room.
   */
  room: string,
  /**
   * Changes at most once per this many ms, conflated (absent: as they come).
   */
  intervalMs?: number,
  /**
   * What to receive: the entries (`full`, the default), only their counts
   * (`occupancy`), or the oldest `limit` entries and the counts (`sample`).
   */
  mode?: SubscribeMode,
  /**
   * `sample` mode: how many entries, in `[1, MAX_SAMPLE_LIMIT]`.
   */
  limit?: number,
  /**
   * Correlation id, answered by `ack` or `error`.
   */
  ref?: number,
} | {
  "type": "unsubscribe",
  /**
   * The room.
   */
  room: string,
  /**
   * Correlation id.
   */
  ref?: number,
} | {
  "type": "heartbeat",
  /**
   * The room.
   */
  room: string,
  /**
   * Any JSON value.
   */
  data: unknown,
  /**
   * The entry expires this many ms after the server receives it.
   */
  ttlMs: number,
  /**
   * Correlation id, answered by `ack` once durable.
   */
  ref?: number,
} | {
  "type": "leave",
  /**
   * The room.
   */
  room: string,
  /**
   * Correlation id.
   */
  ref?: number,
} | {
  "type": "broadcast",
  /**
   * The room.
   */
  room: string,
  /**
   * Any JSON value.
   */
  data: unknown,
  /**
   * Correlation id, answered by `ack` once it is queued for the subscribers.
   */
  ref?: number,
} | {
  "type": "auth",
  /**
   * The new JWT.
   */
  token: string,
  /**
   * Correlation id.
   */
  ref?: number,
} | {
  "type": "ping",
  /**
   * Correlation id.
   */
  ref?: number,
};

/**
 * A message the server sends.
 */
export type ServerMessage = {
  "type": "welcome",
  /**
   * This client's id: positive, below 2^53.
   */
  clientId: number,
  /**
   * Present it in a later `hello` to get the same id back.
   */
  resumeToken: string,
  /**
   * Whether the id came from a resume token.
   */
  resumed: boolean,
  /**
   * The server's clock.
   */
  serverTimeMs: number,
  /**
   * The limits this server enforces.
   */
  limits: WelcomeLimits,
} | {
  "type": "snapshot",
  /**
   * The room.
   */
  room: string,
  /**
   * The server's clock.
   */
  serverTimeMs: number,
  /**
   * Every live entry (a `sample` subscription: the sampled ones, oldest first).
   */
  entries: Array<Entry>,
  /**
   * A `sample` subscription's snapshot: the room's live entries.
   */
  entryCount?: number,
  /**
   * A `sample` subscription's snapshot: the distinct users among them.
   */
  userCount?: number,
} | {
  "type": "occupancy",
  /**
   * The room.
   */
  room: string,
  /**
   * The server's clock.
   */
  serverTimeMs: number,
  /**
   * The room's live entries (one per client: a tab, a device).
   */
  entryCount: number,
  /**
   * The distinct `userId`s among them (entries without a user not counted).
   */
  userCount: number,
} | {
  "type": "changes",
  /**
   * The room.
   */
  room: string,
  /**
   * The server's clock.
   */
  serverTimeMs: number,
  /**
   * The changes, in order per client.
   */
  changes: Array<Change>,
} | {
  "type": "broadcast",
  /**
   * The room.
   */
  room: string,
  /**
   * The sender's client id.
   */
  clientId: number,
  /**
   * The sender's user (its token's `sub`), with auth on.
   */
  userId?: string,
  /**
   * What it sent.
   */
  data: unknown,
  /**
   * The server's clock.
   */
  serverTimeMs: number,
} | {
  "type": "ack",
  /**
   * The request's `ref`.
   */
  ref: number,
  /**
   * For heartbeats: when the entry expires.
   */
  expiresAtMs?: number,
} | {
  "type": "pong",
  /**
   * The ping's `ref`.
   */
  ref?: number,
  /**
   * The server's clock.
   */
  serverTimeMs: number,
} | {
  "type": "error",
  /**
   * What went wrong.
   */
  code: ServerErrorCode,
  /**
   * A human-readable explanation.
   */
  message: string,
  /**
   * The failing request's `ref`.
   */
  ref?: number,
  /**
   * The failing request's room, when it named a valid one.
   */
  room?: string,
};

/**
 * One live entry of a room (in `snapshot` and `GET /v1/rooms/{room}`).
 */
export type Entry = {
  /**
   * The client holding the entry.
   */
  clientId: number,
  /**
   * Its data, as the client sent it.
   */
  data: unknown,
  /**
   * When it expires, by the server's clock (ms since the Unix epoch).
   */
  expiresAtMs: number,
  /**
   * The authenticated user behind it; never set by a client.
   */
  userId?: string,
};

/**
 * One element of a `changes` message.
 */
export type Change = {
  "op": "upsert",
  /**
   * The client holding the entry.
   */
  clientId: number,
  /**
   * Its data.
   */
  data: unknown,
  /**
   * When it expires, by the server's clock.
   */
  expiresAtMs: number,
  /**
   * The authenticated user behind it.
   */
  userId?: string,
} | {
  "op": "leave",
  /**
   * The client.
   */
  clientId: number,
} | {
  "op": "expire",
  /**
   * The client.
   */
  clientId: number,
};

/**
 * The limits a server announces in `welcome`.
 */
export type WelcomeLimits = {
  /**
   * Largest WebSocket message in bytes.
   */
  maxMessageBytes: number,
  /**
   * Largest serialized heartbeat `data` in bytes.
   */
  maxDataBytes: number,
  /**
   * Longest TTL in ms.
   */
  maxTtlMs: number,
  /**
   * Rooms one connection may use.
   */
  maxRoomsPerConnection: number,
  /**
   * Live entries one room may hold.
   */
  maxEntriesPerRoom: number,
  /**
   * Sustained heartbeats per second.
   */
  heartbeatsPerSecond: number,
  /**
   * Heartbeats in a burst.
   */
  heartbeatBurst: number,
};

/**
 * What a subscription receives.
 */
export type SubscribeMode = "full" | "occupancy" | "sample";
