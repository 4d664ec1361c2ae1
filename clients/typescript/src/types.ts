// Public types of rollcall-client. Kept free of any runtime import so that the
// emitted .d.ts files never require `effect`, `zod` or `ws` to be installed.

import type { ServerMessage } from "./protocol.gen.js";

/** One server message, by its `type` (the shapes are generated from the protocol crate). */
type ServerMessageOf<K extends ServerMessage["type"]> = Extract<ServerMessage, { type: K }>;

/** One live entry of a room, as seen by this client. */
export interface PresenceEntry<T> {
  /** The data the client sent with its last heartbeat (decoded by the schema, if any). */
  data: T;
  /**
   * When the entry expires, in milliseconds since the Unix epoch by the *local*
   * clock (the SDK corrects for the offset to the server's clock), so
   * `Date.now() > expiresAtMs` is the right test even when the local clock is off.
   */
  expiresAtMs: number;
  /** Set by the server from an authenticated connection's token (`sub`); never by a client. */
  userId?: string;
}

/**
 * What changed in a room since a view's previous notification, by client id. A
 * refresh (a heartbeat with the same data, which only moves `expiresAtMs`) is not a
 * change. An entry that expires locally or leaves is `left`.
 */
export interface PresenceDiff {
  /** Entries that appeared. */
  joined: number[];
  /** Entries that went away (left, expired, or dropped from a snapshot). */
  left: number[];
  /** Entries whose `data` (or `userId`) changed. */
  updated: number[];
}

/** The entries of one user: every tab / device that heartbeats with the same token `sub`. */
export interface PresenceUser<T> {
  /** The token's `sub`; for an entry without a `userId`, `client:<clientId>` (a user of its own). */
  userId: string;
  /** The user's live entries, by client id. */
  entries: Map<number, PresenceEntry<T>>;
}

/** What changed among a room's users since the previous `onUsersChange` notification, by user key. */
export interface UsersDiff {
  /** Users whose first entry appeared (first tab in). */
  joined: string[];
  /** Users whose last entry went away (last tab out). */
  left: string[];
  /** Users still present one of whose entries joined, left or changed its data. */
  updated: string[];
}

/** Options of one `client.presence(room, schema?, options)` view. */
export interface PresenceOptions<BS extends PresenceSchema | undefined = PresenceSchema | undefined> {
  /**
   * Overrides the client's `heartbeatThrottleMs` for heartbeats sent through this view
   * (0 turns throttling off for it).
   */
  heartbeatThrottleMs?: number;
  /**
   * Types and checks this view's broadcasts (`broadcast` and `onBroadcast`) with an
   * Effect Schema or a Standard Schema, as `schema` does for presence data.
   */
  broadcastSchema?: BS;
}

/**
 * Who sent a broadcast: `clientId`, `userId` (the sender's token `sub`, only when the
 * server uses auth) and `serverTimeMs` (when the server relayed it), as the wire
 * message carries them.
 */
export type BroadcastSender = Pick<ServerMessageOf<"broadcast">, "clientId" | "userId" | "serverTimeMs">;

/** The type a `broadcastSchema` decodes to (`unknown` without one). */
export type BroadcastOutput<BS> = [BS] extends [PresenceSchema] ? SchemaOutput<BS> : unknown;
/** What `broadcast` accepts with this `broadcastSchema` (`unknown` without one). */
export type BroadcastInput<BS> = [BS] extends [PresenceSchema] ? SchemaInput<BS> : unknown;

/**
 * A room's presence, typed by its schema. `In` is what `heartbeat` accepts; `B` and
 * `BIn` are the types of its broadcasts (by `broadcastSchema`).
 */
export interface Presence<T, In = T, B = unknown, BIn = B> {
  /** The room name. */
  readonly room: string;
  /**
   * Upserts this client's entry: `data`, expiring `ttlMs` after the server receives
   * it. Returns nothing and never throws or rejects; problems (schema refusal, an
   * invalid TTL, a server error) are reported through `client.onError`. While the
   * connection is down the heartbeat is kept and sent on reconnect with whatever is
   * left of its TTL. Heartbeats are throttled per room (`heartbeatThrottleMs`, 50 ms
   * by default): the first after a quiet spell goes at once, then at most one per
   * interval, carrying the latest data; the last one is always sent.
   */
  heartbeat(data: In, ttlMs: number): void;
  /**
   * Like `heartbeat`, then keeps re-sending the latest data (from `track` or a later
   * `heartbeat`) about every `ttlMs / 3` until `leave()` or `client.close()`.
   */
  track(data: In, ttlMs: number): void;
  /** Removes this client's entry now (and stops `track`). Keeps watching the room. */
  leave(): void;
  /** A new Map of the live entries (never an expired one), keyed by client id. */
  value(): Map<number, PresenceEntry<T>>;
  /**
   * Calls `fn` with the current live entries and what changed (`joined`, `left`,
   * `updated` client ids, relative to the view's previous notification) after every
   * burst of changes (coalesced within a microtask), including local expiry. A
   * refresh that only moves an entry's `expiresAtMs` is not a change and calls
   * nothing (`value()` still shows the new expiry). Returns the unsubscribe function.
   */
  onChange(fn: (entries: Map<number, PresenceEntry<T>>, diff: PresenceDiff) => void): () => void;
  /** This client's own entry (as the server echoed it), or `undefined`. */
  self(): PresenceEntry<T> | undefined;
  /** `value()` without this client's own entry. */
  others(): Map<number, PresenceEntry<T>>;
  /**
   * The live entries grouped by user (`userId`, the token's `sub`): several tabs of
   * one user are one `PresenceUser`. An entry without `userId` is a user of its own,
   * keyed `client:<clientId>`. A new Map on every call.
   */
  users(): Map<string, PresenceUser<T>>;
  /**
   * Calls `fn` with `users()` and the users that joined (first entry in), left (last
   * entry out) or were updated (one of their entries joined, left or changed data),
   * after every burst of changes that touches a user. Returns the unsubscribe function.
   */
  onUsersChange(fn: (users: Map<string, PresenceUser<T>>, diff: UsersDiff) => void): () => void;
  /**
   * Resolves once `value()` holds the room's state from the server (its first
   * snapshot): before that, an empty Map means "not known yet", not "nobody here".
   * Resolves at once if that already happened; never rejects (it also resolves when
   * the view or the client closes).
   */
  synced(): Promise<void>;
  /**
   * Sends `data` to the room's other subscribers: an ephemeral message (a reaction, a
   * "said" bubble) that is never stored, so only those subscribed now get it. This
   * client does not receive its own broadcast. Resolves `true` once the server
   * accepted it, `false` when it was not sent or refused (schema refusal, too large,
   * not connected, `forbidden`, `rate_limited`: reported through `client.onError`).
   * Never rejects.
   */
  broadcast(data: BIn): Promise<boolean>;
  /**
   * Calls `fn` with every broadcast other clients send to the room (decoded by
   * `broadcastSchema`, if given; one that does not match is reported as
   * `decode_failed` and skipped) and its sender. Returns the unsubscribe function.
   */
  onBroadcast(fn: (data: B, from: BroadcastSender) => void): () => void;
  /**
   * Stops this view: its listeners are dropped and it no longer updates. When the
   * last view of the room closes, the client leaves the room (removing its entry and
   * stopping `track`) and unsubscribes, so the server stops sending it the room's
   * changes. `client.presence(room)` opens the room again. Calls on a closed view
   * do nothing (a heartbeat is reported through `onError` as `presence_closed`).
   */
  close(): void;
}

// ---------------------------------------------------------------------------
// Standard Schema v1 (https://standardschema.dev), the interface zod, valibot,
// arktype and Effect (Schema.standardSchemaV1) implement. Declared here so that
// no dependency is needed.

/** The Standard Schema v1 interface. */
export interface StandardSchemaV1<Input = unknown, Output = Input> {
  readonly "~standard": StandardSchemaV1.Props<Input, Output>;
}

// eslint-disable-next-line @typescript-eslint/no-namespace
export declare namespace StandardSchemaV1 {
  interface Props<Input = unknown, Output = Input> {
    readonly version: 1;
    readonly vendor: string;
    readonly validate: (value: unknown) => Result<Output> | Promise<Result<Output>>;
    readonly types?: Types<Input, Output> | undefined;
  }
  type Result<Output> = SuccessResult<Output> | FailureResult;
  interface SuccessResult<Output> {
    readonly value: Output;
    readonly issues?: undefined;
  }
  interface FailureResult {
    readonly issues: ReadonlyArray<Issue>;
  }
  interface Issue {
    readonly message: string;
    readonly path?: ReadonlyArray<PropertyKey | PathSegment> | undefined;
  }
  interface PathSegment {
    readonly key: PropertyKey;
  }
  interface Types<Input = unknown, Output = Input> {
    readonly input: Input;
    readonly output: Output;
  }
}

/**
 * The structural shape of an Effect Schema (effect 3.10+ `Schema.Struct(...)`,
 * `Schema.Number`, ..., and effect 4): it carries its decoded type as `Type` and its
 * wire type as `Encoded`. Detected at run time by Effect's well-known marker.
 */
export interface EffectSchemaLike<A = unknown, I = unknown> {
  readonly Type: A;
  readonly Encoded: I;
  readonly ast: unknown;
}

/** Anything `client.presence(room, schema)` accepts. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type PresenceSchema = StandardSchemaV1<any, any> | EffectSchemaLike<any, any>;

/** The type a schema decodes to (the `T` of `Presence<T>`). */
export type SchemaOutput<S> = S extends { readonly "~standard": { readonly types?: infer Ty } }
  ? NonNullable<Ty> extends { readonly output: infer O }
    ? O
    : unknown
  : S extends { readonly Type: infer A }
    ? A
    : unknown;

/**
 * The type `heartbeat` accepts: a Standard Schema's input (it is validated and sent
 * as given), an Effect Schema's decoded `Type` (it is encoded before sending).
 */
export type SchemaInput<S> = S extends { readonly "~standard": { readonly types?: infer Ty } }
  ? NonNullable<Ty> extends { readonly input: infer I }
    ? I
    : unknown
  : S extends { readonly Type: infer A }
    ? A
    : unknown;

/**
 * The part of effect's `Schema` module the SDK uses (effect 3.10+ and 4.x both
 * have it). Pass `import { Schema } from "effect"` as `createClient({ effectSchema:
 * Schema })` where a bundler cannot resolve `effect` lazily at run time.
 */
export interface EffectSchemaModule {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  decodeUnknownSync: (schema: any, options?: any) => (input: unknown, options?: any) => unknown;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  encodeUnknownSync: (schema: any, options?: any) => (input: unknown, options?: any) => unknown;
}

// ---------------------------------------------------------------------------
// WebSocket, as far as the SDK needs it: satisfied by the browser's / Node 22's
// global WebSocket and by the `ws` package.

/** The subset of a WebSocket instance the SDK uses. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  // Typed `unknown` so that both the DOM and the `ws` typings are assignable.
  onopen: unknown;
  onmessage: unknown;
  onclose: unknown;
  onerror: unknown;
}

/** A WebSocket constructor (`globalThis.WebSocket`, or `WebSocket` from `ws`). */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/**
 * Connection state of a client:
 * `connecting` → `connected` ⇄ `reconnecting`, and from any of them → `closed` (final).
 */
export type ConnectionState =
  /** Not connected yet: opening the first connection (retrying with backoff until one succeeds). */
  | "connecting"
  /** `welcome` received: requests flow. */
  | "connected"
  /** The connection dropped after having been up; a reconnect is scheduled or in progress. */
  | "reconnecting"
  /**
   * Final: `close()` was called, or the server refused for good (a bad or expired token,
   * a forbidden origin, another connection took this client id over, a refused hello).
   */
  | "closed";

export interface ReconnectOptions {
  /** First delay before reconnecting (the ceiling of the jittered delay). Default 250 ms. */
  initialDelayMs?: number;
  /** Cap of the exponential backoff. Default 10,000 ms. */
  maxDelayMs?: number;
}

export interface ClientOptions {
  /**
   * `ws://host:port/ws` (`http(s)://` is accepted and mapped to `ws(s)://`), or the
   * URLs of several nodes of a cluster: the client starts with the first and, whenever
   * a connection fails or drops, tries the next one (round robin, with the reconnect
   * backoff), presenting its resume token so it keeps its client id (the nodes share
   * `--resume-secret-file`).
   */
  url: string | string[];
  /**
   * A JWT, or a function returning one. The function is called on every (re)connect,
   * and again before the current token expires (at 80% of its remaining lifetime or
   * 30 s before its `exp`, whichever is earlier, but not before half of it): the new
   * token is sent with an `auth` message on the same connection, so the server does
   * not close it (4004). A failed renewal is reported to `onError`; the server then
   * closes at expiry and the client reconnects, calling the function again.
   */
  token?: string | (() => string | Promise<string>);
  /**
   * Without auth only: the user behind this client, sent in `hello` (1 to 256 bytes).
   * It becomes the `userId` of this client's entries, so `users()` groups one
   * person's tabs. An unverified claim: use it for display and counting, never to
   * grant anything. Ignored by a server with auth (the token's `sub` is the user).
   */
  user?: string;
  /** WebSocket implementation; defaults to `globalThis.WebSocket`. In Node 20 pass `ws`. */
  WebSocket?: WebSocketConstructor;
  /** The local clock (ms since the epoch). Default `Date.now`. For tests. */
  now?: () => number;
  /** Reconnect backoff (capped exponential with jitter). */
  reconnect?: ReconnectOptions;
  /** Keep-alive and clock-sync ping period. Default 10,000 ms. */
  pingIntervalMs?: number;
  /** Drop and reconnect a connection that received nothing for this long. Default 25,000 ms. */
  idleTimeoutMs?: number;
  /** Give up on an opening connection without `welcome` after this long. Default 10,000 ms. */
  connectTimeoutMs?: number;
  /** How long `close()` waits for the server's leave acks and close frame. Default 1,000 ms. */
  closeTimeoutMs?: number;
  /**
   * effect's `Schema` module (`import { Schema } from "effect"`): needed in browser
   * bundles, which cannot load a package at run time; optional in Node, where the SDK
   * finds the app's own copy of effect.
   */
  effectSchema?: EffectSchemaModule;
  /**
   * Coalesces each room's heartbeats to at most one per this many ms: the first after
   * a quiet spell is sent at once, later ones within the interval are merged (the
   * latest data wins) and sent when it ends, so the last one always goes out. Default
   * 50 ms; 0 sends every heartbeat at once. `client.presence(room, schema, {
   * heartbeatThrottleMs })` overrides it per view.
   */
  heartbeatThrottleMs?: number;
}

export interface RollcallClient {
  /** This connection's client id once `welcome` arrived (stable across reconnects). */
  readonly clientId: number | undefined;
  /** Current connection state. */
  readonly state: ConnectionState;
  /** The URL of the node the client is connected (or trying to connect) to: one of `url`, normalized. */
  readonly url: string;
  /** Estimated `serverClock - localClock`, in ms (0 until the first sample). */
  readonly clockOffsetMs: number;
  /**
   * Resolves once connected (at once if already connected). Rejects with a
   * `RollcallError` when the client will never connect: the server refused for good
   * (`code` `unauthorized`, `invalid_token`, `token_expired`, `auth_failed`,
   * `forbidden_origin`, `replaced`, `bad_hello`) or the client was closed (`closed`).
   * A recoverable drop (server restart, network) keeps it pending while the client
   * reconnects. Not awaiting the returned promise is safe (it never causes an
   * unhandled rejection by itself); a chain built on it (`.then(...)`) rejects too.
   */
  waitForConnected(): Promise<void>;
  /** The presence of a room, untyped (its broadcasts typed by `options.broadcastSchema`, if given). */
  presence<BS extends PresenceSchema | undefined = undefined>(
    room: string,
    schema?: undefined,
    options?: PresenceOptions<BS>,
  ): Presence<unknown, unknown, BroadcastOutput<BS>, BroadcastInput<BS>>;
  /** The presence of a room, typed and checked by an Effect Schema or a Standard Schema. */
  presence<S extends PresenceSchema, BS extends PresenceSchema | undefined = undefined>(
    room: string,
    schema: S,
    options?: PresenceOptions<BS>,
  ): Presence<SchemaOutput<S>, SchemaInput<S>, BroadcastOutput<BS>, BroadcastInput<BS>>;
  /**
   * Watches a room's counts instead of its entries (`mode: "occupancy"`), for rooms
   * too big to receive everyone's presence: `fn` gets the counts at once, then when
   * they change, at most once a second. Kept across reconnects. A room is watched or
   * opened with `presence()` on one client, not both. Returns the stop function.
   */
  occupancy(room: string, fn: (occupancy: Occupancy) => void): () => void;
  /**
   * Watches a stable sample of a room's oldest entries and its counts (`mode:
   * "sample"`), for "Ada, Bob and 19,998 others": `fn` gets at most `limit` entries
   * (an integer in [1, 1000]), oldest first, on subscribe and whenever the sample or
   * the counts change (the counts at most once a second). A sampled entry stays while
   * it lives; when one goes, the next oldest takes its place. `intervalMs` paces the
   * sample's changes as for a paced subscription. Kept across reconnects. A room is
   * sampled, watched or opened with `presence()` on one client, one way. Returns the
   * stop function.
   */
  sample(room: string, options: SampleOptions, fn: (sample: Sample) => void): () => void;
  /** Observes server and local errors. Returns the unsubscribe function. */
  onError(fn: (error: RollcallErrorLike) => void): () => void;
  /** Observes connection state changes. Returns the unsubscribe function. */
  onStateChange(fn: (state: ConnectionState) => void): () => void;
  /**
   * Leaves every room this client heartbeated in (waiting for the acks, bounded by
   * `closeTimeoutMs`), closes the socket with 1000 and stops every timer. Never rejects.
   */
  close(): Promise<void>;
}

/**
 * A room's counts, as `occupancy()` delivers them: the `occupancy` message without its
 * `type`: `room`, `entryCount` (live entries, one per client: a tab, a device),
 * `userCount` (distinct `userId`s among them; entries without one are not counted) and
 * `serverTimeMs` (the server's clock when counted).
 */
export type Occupancy = Readonly<Omit<ServerMessageOf<"occupancy">, "type">>;

/** What `sample()` asks for. */
export interface SampleOptions {
  /** The most entries in the sample: an integer in [1, 1000]. */
  limit: number;
  /** The sample's changes at most once per this many ms, conflated (0 or absent: as they come). */
  intervalMs?: number;
}

/** One entry of a sample: a `PresenceEntry` (its data as sent, not decoded) with its client id. */
export interface SampleEntry extends PresenceEntry<unknown> {
  /** The client holding the entry. */
  readonly clientId: number;
}

/** A room's sample, as `sample()` delivers it. */
export interface Sample {
  /** The room. */
  readonly room: string;
  /** At most `limit` entries, the room's oldest (by when they joined), oldest first. */
  readonly entries: ReadonlyArray<SampleEntry>;
  /** Live entries in the room (one per client: tab, device). */
  readonly entryCount: number;
  /** Distinct users among them (`userId`; entries without one are not counted). */
  readonly userCount: number;
}

/** The shape of the errors passed to `onError` (instances of `RollcallError`). */
export interface RollcallErrorLike extends Error {
  /** A server error code (`invalid_ttl`, `rate_limited`, ...) or a local one (see README). */
  readonly code: string;
  /** `server`: an `error` message; `local`: refused or failed in the SDK; `connection`: the socket. */
  readonly source: "server" | "local" | "connection";
  readonly room?: string;
  readonly ref?: number;
  /** For `decode_failed`: whose entry did not decode. */
  readonly clientId?: number;
  /** For schema errors: the validation issues. */
  readonly issues?: ReadonlyArray<{ readonly message: string; readonly path?: ReadonlyArray<unknown> }>;
  /** For `connection` errors: the WebSocket close code. */
  readonly closeCode?: number;
}
