import { ClockSync } from "./clock.js";
import { loadWebSocket } from "./loaders.js";
import { RollcallError } from "./errors.js";
import { CLOSE, MAX_INTERVAL_MS, MAX_SAMPLE_LIMIT } from "./protocol.gen.js";
import { PresenceView } from "./presence.js";
import { DEFAULT_LIMITS, Room, type Limits, type RoomHost } from "./room.js";
import { errorMessage, makeCodec, type Codec } from "./schema.js";
import { AUTH_REFUSALS, backoffDelayMs, closeSocket, detach, normalizeUrls, OPEN, TERMINAL_CLOSE, upgradeStatusOf, type Socket, type SocketCtor } from "./socket.js";
import { jwtExpiryMs, renewalDelayMs } from "./token.js";
import { isClientId, MAX_TIMER_MS, monotonic, roomNameProblem, utf8Length, withTimeout } from "./util.js";
import { decode, encode, type ClientMessageOf, type ClientRequest, type ReceivedServerMessage } from "./wire.js";
import type {
  BroadcastInput,
  BroadcastOutput,
  ClientOptions,
  ConnectionState,
  Occupancy,
  Presence,
  PresenceOptions,
  PresenceSchema,
  RollcallClient,
  RollcallErrorLike,
  Sample,
  SampleEntry,
  SampleOptions,
  SchemaInput,
  SchemaOutput,
} from "./types.js";

/** A sampled entry as the server sent it (values checked). */
interface SampledEntry {
  readonly data: unknown;
  readonly expiresAtMs: number;
  readonly userId: string | undefined;
}

/** A room watched with `sample()`. */
interface Sampled {
  readonly limit: number;
  readonly intervalMs: number;
  readonly listeners: Set<(s: Sample) => void>;
  /** The sample's entries, oldest first (a Map keeps insertion order). */
  entries: Map<number, SampledEntry>;
  /** The room's counts, once the snapshot came. */
  counts: { entryCount: number; userCount: number } | undefined;
}

function sampleSubscribe(room: string, s: Sampled): string {
  return encode({ type: "subscribe", room, mode: "sample", limit: s.limit, ...(s.intervalMs > 0 ? { intervalMs: s.intervalMs } : {}) });
}

/** A snapshot entry or an upsert as received, if its fields are of the right types. */
function sampledEntry(e: { readonly data?: unknown; readonly expiresAtMs?: unknown; readonly userId?: unknown }): SampledEntry | undefined {
  if (typeof e.expiresAtMs !== "number") return undefined;
  return { data: e.data, expiresAtMs: e.expiresAtMs, userId: typeof e.userId === "string" ? e.userId : undefined };
}

/** A server message of one `type`, as received (values still unchecked). */
type Received<K extends ReceivedServerMessage["type"]> = Extract<ReceivedServerMessage, { type: K }>;

/** The default of `heartbeatThrottleMs`. */
export const DEFAULT_HEARTBEAT_THROTTLE_MS = 50;

/** Creates a client and starts connecting at once. */
export function createClient(options: ClientOptions): RollcallClient {
  return new Client(options);
}

class Client implements RollcallClient, RoomHost {
  readonly now: () => number;
  limits: Limits = { ...DEFAULT_LIMITS };
  private readonly urls: string[];
  /** Index in `urls` of the node the next connection attempt goes to. */
  private urlIndex = 0;
  /** The URL of the current (or last) connection attempt. */
  private currentUrl: string;
  private Ctor: SocketCtor | undefined;
  private readonly opts: ClientOptions;
  private readonly clock = new ClockSync();
  private readonly rooms = new Map<string, Room>();
  /** Rooms watched with `occupancy()`: their listeners. */
  private readonly watched = new Map<string, Set<(o: Occupancy) => void>>();
  /** Rooms watched with `sample()`. */
  private readonly sampled = new Map<string, Sampled>();
  /** Rooms released while disconnected with an entry the server may still hold. */
  private readonly pendingLeaves = new Set<string>();
  private readonly errorListeners = new Set<(e: RollcallErrorLike) => void>();
  private readonly stateListeners = new Set<(s: ConnectionState) => void>();
  private connectedWaiters: Array<{ resolve: () => void; reject: (e: RollcallError) => void }> = [];
  /** Why the client is closed for good (set with the `closed` state). */
  private finalError: RollcallError | undefined;
  /** The client was connected at least once (a later drop is `reconnecting`, not `connecting`). */
  private everConnected = false;
  /** The auth error code the server sent on the current socket before welcome (then it closes 4003). */
  private refusal: { code: string; message: string } | undefined;
  /** The HTTP status of a refused WebSocket upgrade on the current socket, where the WebSocket reveals it (ws). */
  private upgradeStatus: number | undefined;
  /** The per-client default of `heartbeatThrottleMs`. */
  readonly heartbeatThrottleMs: number;
  private ws: Socket | null = null;
  private st: ConnectionState = "connecting";
  private id: number | undefined;
  private resumeToken: string | undefined;
  private isClosed = false;
  private closing: Promise<void> | undefined;
  private generation = 0;
  private attempt = 0;
  private connectedAt = 0;
  private helloSentAt = 0;
  private lastReceived = 0;
  private syncPings = 0;
  private nextRef = 1;
  private readonly pings = new Map<number, number>();
  private readonly acks = new Map<number, (ok: boolean) => void>();
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private connectTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private reauthTimer: ReturnType<typeof setTimeout> | undefined;
  /** `exp` (ms, server clock) of the token sent in the pending hello. */
  private helloTokenExpMs: number | undefined;
  /** `exp` (ms, server clock) of the token the current connection runs on. */
  private tokenExpMs: number | undefined;

  constructor(options: ClientOptions) {
    if (typeof options !== "object" || options === null) throw new TypeError("createClient(options): options must be an object");
    this.opts = options;
    this.urls = normalizeUrls(options.url);
    this.currentUrl = this.urls[0]!;
    this.heartbeatThrottleMs = throttleOption(options.heartbeatThrottleMs, "createClient({ heartbeatThrottleMs })");
    const Ctor = (options.WebSocket ?? (globalThis as { WebSocket?: unknown }).WebSocket) as SocketCtor | undefined;
    if (Ctor !== undefined && typeof Ctor !== "function") throw new TypeError("createClient({ WebSocket }): not a constructor");
    // Undefined in Node 20 without the option: the `ws` package is loaded on connect.
    this.Ctor = Ctor;
    this.now = options.now ?? Date.now;
    // Connect from a microtask, so that listeners attached right after createClient()
    // (onError, onStateChange) see everything, including a failing token function.
    queueMicrotask(() => void this.connect());
  }

  // ---- public API -------------------------------------------------------------

  get clientId(): number | undefined {
    return this.id;
  }

  get state(): ConnectionState {
    return this.st;
  }

  get clockOffsetMs(): number {
    return this.clock.offset;
  }

  get connected(): boolean {
    return this.st === "connected";
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** The URL of the node the client is connected (or connecting) to. */
  get url(): string {
    return this.currentUrl;
  }

  waitForConnected(): Promise<void> {
    if (this.st === "connected" && !this.isClosed) return Promise.resolve();
    let p: Promise<void>;
    if (this.isClosed) p = Promise.reject(this.finalError ?? closedError());
    else p = new Promise<void>((resolve, reject) => this.connectedWaiters.push({ resolve, reject }));
    // A promise nobody awaits must not become an unhandled rejection (which ends a
    // Node process); chains built on it (`.then(...)`) still reject.
    p.catch(() => {});
    return p;
  }

  presence<BS extends PresenceSchema | undefined = undefined>(
    room: string,
    schema?: undefined,
    options?: PresenceOptions<BS>,
  ): Presence<unknown, unknown, BroadcastOutput<BS>, BroadcastInput<BS>>;
  presence<S extends PresenceSchema, BS extends PresenceSchema | undefined = undefined>(
    room: string,
    schema: S,
    options?: PresenceOptions<BS>,
  ): Presence<SchemaOutput<S>, SchemaInput<S>, BroadcastOutput<BS>, BroadcastInput<BS>>;
  presence(room: string, schema?: PresenceSchema, options?: PresenceOptions): Presence<unknown, unknown, unknown, unknown> {
    const problem = roomNameProblem(room);
    if (problem) throw new RangeError(`rollcall-client: presence(${JSON.stringify(room)}): ${problem}`);
    if (options !== undefined && (typeof options !== "object" || options === null)) throw new TypeError("presence(room, schema, options): options must be an object");
    const throttleMs = options?.heartbeatThrottleMs === undefined ? this.heartbeatThrottleMs : throttleOption(options.heartbeatThrottleMs, "presence(room, schema, { heartbeatThrottleMs })");
    let codec: Codec | null = null;
    if (schema !== undefined) codec = makeCodec(schema, this.opts.effectSchema);
    const broadcastCodec = options?.broadcastSchema === undefined ? null : makeCodec(options.broadcastSchema, this.opts.effectSchema);
    if (this.watched.has(room)) throw new Error(`rollcall-client: presence(${JSON.stringify(room)}): the room is watched with occupancy() on this client`);
    if (this.sampled.has(room)) throw new Error(`rollcall-client: presence(${JSON.stringify(room)}): the room is watched with sample() on this client`);
    let r = this.rooms.get(room);
    if (!r) {
      r = new Room(room, this);
      this.rooms.set(room, r);
      if (this.st === "connected") this.send(encode({ type: "subscribe", room }));
    }
    const view = new PresenceView<unknown, unknown>(r, this, codec, throttleMs, broadcastCodec);
    r.views.add(view);
    return view;
  }

  occupancy(room: string, fn: (occupancy: Occupancy) => void): () => void {
    const problem = roomNameProblem(room);
    if (problem) throw new RangeError(`rollcall-client: occupancy(${JSON.stringify(room)}): ${problem}`);
    if (typeof fn !== "function") throw new TypeError("occupancy(room, fn): fn must be a function");
    if (this.rooms.has(room)) throw new Error(`rollcall-client: occupancy(${JSON.stringify(room)}): the room is open with presence() on this client`);
    if (this.sampled.has(room)) throw new Error(`rollcall-client: occupancy(${JSON.stringify(room)}): the room is watched with sample() on this client`);
    let listeners = this.watched.get(room);
    if (!listeners) {
      listeners = new Set();
      this.watched.set(room, listeners);
      if (this.st === "connected") this.send(encode({ type: "subscribe", room, mode: "occupancy" }));
    }
    const wrapped = (o: Occupancy) => fn(o);
    listeners.add(wrapped);
    return () => {
      const now = this.watched.get(room);
      if (!now?.delete(wrapped) || now.size > 0) return;
      this.watched.delete(room);
      if (this.st === "connected") this.send(encode({ type: "unsubscribe", room }));
    };
  }

  sample(room: string, options: SampleOptions, fn: (sample: Sample) => void): () => void {
    const name = `sample(${JSON.stringify(room)})`;
    const problem = roomNameProblem(room);
    if (problem) throw new RangeError(`rollcall-client: ${name}: ${problem}`);
    if (typeof options !== "object" || options === null) throw new TypeError("sample(room, options, fn): options must be an object");
    const { limit, intervalMs = 0 } = options;
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_SAMPLE_LIMIT) {
      throw new RangeError(`rollcall-client: ${name}: limit must be an integer in [1, ${MAX_SAMPLE_LIMIT}], got ${String(limit)}`);
    }
    if (!Number.isInteger(intervalMs) || intervalMs < 0 || intervalMs > MAX_INTERVAL_MS) {
      throw new RangeError(`rollcall-client: ${name}: intervalMs must be an integer in [0, ${MAX_INTERVAL_MS}], got ${String(intervalMs)}`);
    }
    if (typeof fn !== "function") throw new TypeError("sample(room, options, fn): fn must be a function");
    if (this.rooms.has(room)) throw new Error(`rollcall-client: ${name}: the room is open with presence() on this client`);
    if (this.watched.has(room)) throw new Error(`rollcall-client: ${name}: the room is watched with occupancy() on this client`);
    let s = this.sampled.get(room);
    if (s && (s.limit !== limit || s.intervalMs !== intervalMs)) {
      throw new Error(`rollcall-client: ${name}: the room is already sampled with another limit or intervalMs on this client`);
    }
    if (!s) {
      s = { limit, intervalMs, listeners: new Set(), entries: new Map(), counts: undefined };
      this.sampled.set(room, s);
      if (this.st === "connected") this.send(sampleSubscribe(room, s));
    }
    const sampled = s;
    const wrapped = (sample: Sample) => fn(sample);
    sampled.listeners.add(wrapped);
    // A later listener of a room already sampled gets the current sample at once.
    if (sampled.counts !== undefined) {
      const current = this.sampleOf(room, sampled);
      queueMicrotask(() => {
        if (sampled.listeners.has(wrapped)) this.callSample(wrapped, current);
      });
    }
    return () => {
      const now = this.sampled.get(room);
      if (!now?.listeners.delete(wrapped) || now.listeners.size > 0) return;
      this.sampled.delete(room);
      if (this.st === "connected") this.send(encode({ type: "unsubscribe", room }));
    };
  }

  private sampleOf(room: string, s: Sampled): Sample {
    const offset = this.clockOffsetMs;
    const entries: SampleEntry[] = [];
    for (const [clientId, e] of s.entries) {
      const entry: { clientId: number; data: unknown; expiresAtMs: number; userId?: string } = {
        clientId,
        data: e.data,
        expiresAtMs: Math.round(e.expiresAtMs - offset),
      };
      if (e.userId !== undefined) entry.userId = e.userId;
      entries.push(entry);
    }
    return { room, entries, entryCount: s.counts?.entryCount ?? 0, userCount: s.counts?.userCount ?? 0 };
  }

  private callSample(fn: (s: Sample) => void, sample: Sample): void {
    try {
      fn(sample);
    } catch (e) {
      this.report(new RollcallError("local", "listener_error", `a sample listener threw: ${errorMessage(e)}`, { cause: e }));
    }
  }

  /** Applies a sampled room's message; false if the room is not sampled. */
  private onSampleMessage(msg: Received<"snapshot"> | Received<"changes"> | Received<"occupancy">): boolean {
    const room = typeof msg.room === "string" ? msg.room : undefined;
    const s = room === undefined ? undefined : this.sampled.get(room);
    if (room === undefined || s === undefined) return false;
    const counted = msg.type === "changes" ? undefined : { entryCount: msg.entryCount, userCount: msg.userCount };
    const counts =
      counted && typeof counted.entryCount === "number" && typeof counted.userCount === "number" ? { entryCount: counted.entryCount, userCount: counted.userCount } : undefined;
    if (msg.type === "snapshot" && Array.isArray(msg.entries)) {
      s.entries = new Map();
      for (const e of msg.entries as ReadonlyArray<Record<string, unknown>>) {
        const entry = sampledEntry(e);
        if (isClientId(e.clientId) && entry) s.entries.set(e.clientId, entry);
      }
      if (counts) s.counts = counts;
    } else if (msg.type === "changes" && Array.isArray(msg.changes)) {
      for (const c of msg.changes as ReadonlyArray<Record<string, unknown>>) {
        if (!isClientId(c.clientId)) continue;
        // An entry joining the sample is newer than every sampled one: it goes last.
        const entry = c.op === "upsert" ? sampledEntry(c) : undefined;
        if (entry) s.entries.set(c.clientId, entry);
        else if (c.op === "leave" || c.op === "expire") s.entries.delete(c.clientId);
      }
    } else if (msg.type === "occupancy" && counts) {
      s.counts = counts;
    } else {
      return true;
    }
    if (s.counts === undefined) return true;
    const sample = this.sampleOf(room, s);
    for (const fn of [...s.listeners]) this.callSample(fn, sample);
    return true;
  }

  onError(fn: (error: RollcallErrorLike) => void): () => void {
    if (typeof fn !== "function") throw new TypeError("onError expects a function");
    const wrapped = (e: RollcallErrorLike) => fn(e);
    this.errorListeners.add(wrapped);
    return () => {
      this.errorListeners.delete(wrapped);
    };
  }

  onStateChange(fn: (state: ConnectionState) => void): () => void {
    if (typeof fn !== "function") throw new TypeError("onStateChange expects a function");
    const wrapped = (s: ConnectionState) => fn(s);
    this.stateListeners.add(wrapped);
    return () => {
      this.stateListeners.delete(wrapped);
    };
  }

  close(): Promise<void> {
    this.closing ??= this.doClose().catch((e: unknown) => {
      this.report(new RollcallError("local", "internal", `close failed: ${errorMessage(e)}`, { cause: e }));
    });
    return this.closing;
  }

  // ---- RoomHost -----------------------------------------------------------------

  send(message: string): boolean {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) return false;
    if (message.length * 3 > this.limits.maxMessageBytes && utf8Length(message) > this.limits.maxMessageBytes) {
      this.report(new RollcallError("local", "message_too_large", `a message of ${utf8Length(message)} bytes exceeds the server's limit of ${this.limits.maxMessageBytes}`));
      return false;
    }
    try {
      ws.send(message);
      return true;
    } catch (e) {
      this.report(new RollcallError("connection", "send_failed", `send failed: ${errorMessage(e)}`, { cause: e }));
      return false;
    }
  }

  request(message: ClientRequest): Promise<boolean> {
    const ref = this.nextRef++;
    return new Promise<boolean>((resolve) => {
      this.acks.set(ref, resolve);
      if (!this.send(encode({ ...message, ref }))) {
        this.acks.delete(ref);
        resolve(false);
      }
    });
  }

  release(r: Room): void {
    if (this.rooms.get(r.name) !== r) return;
    if (r.own || r.serverMayHaveEntry) r.leave(r.nextSeq()); // sends the leave when connected
    if (r.serverMayHaveEntry) this.pendingLeaves.add(r.name); // disconnected: on reconnect
    r.released = true;
    r.dispose();
    this.rooms.delete(r.name);
    if (this.st === "connected") this.send(encode({ type: "unsubscribe", room: r.name }));
  }

  report(error: RollcallError): void {
    if (this.errorListeners.size === 0) {
      // Nobody listens: do not lose it silently.
      console.warn(`[rollcall-client] ${error.code}: ${error.message}`);
      return;
    }
    for (const fn of [...this.errorListeners]) {
      try {
        fn(error);
      } catch (e) {
        console.error("[rollcall-client] an onError callback threw", e);
      }
    }
  }

  // ---- connection ----------------------------------------------------------------

  private setState(s: ConnectionState): void {
    if (this.st === s) return;
    this.st = s;
    for (const fn of [...this.stateListeners]) {
      try {
        fn(s);
      } catch (e) {
        this.report(new RollcallError("local", "listener_error", `an onStateChange callback threw: ${errorMessage(e)}`, { cause: e }));
      }
    }
  }

  private async connect(): Promise<void> {
    if (this.isClosed) return;
    const gen = ++this.generation;
    let token: string | undefined;
    const t = this.opts.token;
    if (typeof t === "function") {
      try {
        token = await t();
      } catch (e) {
        if (gen !== this.generation || this.isClosed) return;
        this.report(new RollcallError("local", "token_error", `the token function failed: ${errorMessage(e)}`, { cause: e }));
        this.scheduleReconnect();
        return;
      }
      if (gen !== this.generation || this.isClosed) return;
    } else {
      token = t;
    }
    if (this.Ctor === undefined) {
      try {
        this.Ctor = (await loadWebSocket()) as unknown as SocketCtor;
      } catch (e) {
        if (gen !== this.generation || this.isClosed) return;
        const error = new RollcallError(
          "local",
          "no_websocket",
          `no WebSocket implementation: there is no global WebSocket (Node 20) and the ws package could not be loaded (${errorMessage(e)}); install ws or pass createClient({ url, WebSocket })`,
          { cause: e },
        );
        this.report(error);
        this.shutdown(error);
        return;
      }
      if (gen !== this.generation || this.isClosed) return;
    }
    let ws: Socket;
    const url = this.urls[this.urlIndex]!;
    this.currentUrl = url;
    this.refusal = undefined;
    this.upgradeStatus = undefined;
    try {
      ws = new this.Ctor(url);
    } catch (e) {
      this.report(new RollcallError("connection", "connect_failed", `could not open a WebSocket to ${url}: ${errorMessage(e)}`, { cause: e }));
      this.advanceUrl();
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    const timeout = this.opts.connectTimeoutMs ?? 10_000;
    this.connectTimer = setTimeout(() => {
      this.connectTimer = undefined;
      if (this.ws === ws && this.st !== "connected") this.dropSocket(ws);
    }, timeout);
    this.helloTokenExpMs = token === undefined ? undefined : jwtExpiryMs(token);
    ws.onopen = () => {
      if (this.ws !== ws) return;
      const hello: ClientMessageOf<"hello"> = { type: "hello" };
      if (this.resumeToken !== undefined) hello.resume = this.resumeToken;
      if (token !== undefined) hello.token = token;
      if (typeof this.opts.user === "string") hello.user = this.opts.user;
      this.helloSentAt = this.now();
      this.send(encode(hello));
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.onMessage(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.onSocketClosed(typeof ev?.code === "number" ? ev.code : 1006, typeof ev?.reason === "string" ? ev.reason : "");
    };
    // Errors are followed by a close event; the handler must exist (ws throws on unhandled 'error').
    // ws names the HTTP status of a refused upgrade (browsers reveal nothing).
    ws.onerror = (ev) => {
      if (this.ws !== ws) return;
      const status = upgradeStatusOf(ev);
      if (status !== undefined) this.upgradeStatus = status;
    };
  }

  /** The next connection attempt goes to the next URL (round robin). */
  private advanceUrl(): void {
    this.urlIndex = (this.urlIndex + 1) % this.urls.length;
  }

  /** Abandons a socket that is dead or stuck (no close handshake) and reconnects. */
  private dropSocket(ws: Socket): void {
    detach(ws);
    try {
      if (typeof ws.terminate === "function") ws.terminate();
      else ws.close(4000, "unresponsive");
    } catch {
      /* already closed */
    }
    if (this.ws === ws) this.onSocketClosed(1006, "unresponsive");
  }

  private onSocketClosed(code: number, reason: string): void {
    const ws = this.ws;
    this.ws = null;
    if (ws) detach(ws);
    this.stopConnectionTimers();
    for (const done of this.acks.values()) done(false);
    this.acks.clear();
    this.pings.clear();
    if (this.isClosed) return;
    const terminal = TERMINAL_CLOSE[code] ?? (code === CLOSE.TOKEN_EXPIRED && typeof this.opts.token !== "function" ? { code: "token_expired", message: "the token expired (4004) and cannot be renewed: pass a token function" } : undefined);
    if (terminal) {
      const error = new RollcallError("connection", terminal.code, `${terminal.message}${reason ? `: ${reason}` : ""}; not reconnecting`, { closeCode: code });
      this.report(error);
      // waitForConnected() rejects with the server's reason when it gave one (unauthorized, invalid_token, token_expired).
      const refusal = code === CLOSE.UNAUTHORIZED ? this.refusal : undefined;
      this.shutdown(refusal ? new RollcallError("connection", refusal.code, `${refusal.message} (${refusal.code}, close 4003); not reconnecting`, { closeCode: code }) : error);
      return;
    }
    if (this.upgradeStatus === 403) {
      const error = new RollcallError(
        "connection",
        "forbidden_origin",
        `the server refused the WebSocket upgrade at ${this.currentUrl} with 403: this page's origin is not in its --allowed-origin list; not reconnecting`,
        { closeCode: code },
      );
      this.report(error);
      this.shutdown(error);
      return;
    }
    if (this.connectedAt > 0 && this.now() - this.connectedAt >= 2000) this.attempt = 0;
    this.connectedAt = 0;
    // A failed attempt or a dropped connection: try the next node (a no-op with one URL).
    this.advanceUrl();
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.isClosed) return;
    this.setState(this.everConnected ? "reconnecting" : "connecting");
    const delay = backoffDelayMs(this.attempt, this.opts.reconnect);
    this.attempt++;
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.connect();
    }, delay);
  }

  private onMessage(data: unknown): void {
    this.lastReceived = monotonic();
    let text: string;
    if (typeof data === "string") text = data;
    else if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) text = new TextDecoder().decode(data as ArrayBuffer);
    else return;
    const msg = decode(text);
    if (msg === null) {
      this.report(new RollcallError("connection", "protocol_error", "the server sent a message that is not JSON"));
      return;
    }
    if (msg === undefined) return;
    if ((msg.type === "snapshot" || msg.type === "changes" || msg.type === "occupancy") && this.onSampleMessage(msg)) return;
    switch (msg.type) {
      case "welcome":
        this.onWelcome(msg);
        break;
      case "snapshot": {
        const room = typeof msg.room === "string" ? this.rooms.get(msg.room) : undefined;
        if (room && Array.isArray(msg.entries)) room.applySnapshot(msg.entries);
        break;
      }
      case "changes": {
        const room = typeof msg.room === "string" ? this.rooms.get(msg.room) : undefined;
        if (room && Array.isArray(msg.changes)) room.applyChanges(msg.changes);
        break;
      }
      case "broadcast": {
        const room = typeof msg.room === "string" ? this.rooms.get(msg.room) : undefined;
        if (room && isClientId(msg.clientId)) room.applyBroadcast(msg.clientId, msg);
        break;
      }
      case "occupancy": {
        const room = msg.room;
        const listeners = typeof room === "string" ? this.watched.get(room) : undefined;
        if (listeners && typeof room === "string" && typeof msg.entryCount === "number" && typeof msg.userCount === "number") {
          const o: Occupancy = {
            room,
            entryCount: msg.entryCount,
            userCount: msg.userCount,
            serverTimeMs: typeof msg.serverTimeMs === "number" ? msg.serverTimeMs : 0,
          };
          for (const fn of [...listeners]) {
            try {
              fn(o);
            } catch (e) {
              this.report(new RollcallError("local", "listener_error", `an occupancy listener threw: ${errorMessage(e)}`, { cause: e }));
            }
          }
        }
        break;
      }
      case "ack": {
        if (typeof msg.ref === "number") {
          const done = this.acks.get(msg.ref);
          this.acks.delete(msg.ref);
          done?.(true);
        }
        break;
      }
      case "pong":
        this.onPong(msg);
        break;
      case "error":
        this.onServerError(msg);
        break;
      default:
        break; // unknown message types are ignored
    }
  }

  private onWelcome(msg: Received<"welcome">): void {
    if (!isClientId(msg.clientId)) {
      this.report(new RollcallError("connection", "protocol_error", "welcome without a valid clientId"));
      return;
    }
    const received = this.now();
    if (typeof msg.serverTimeMs === "number") this.clock.add(this.helloSentAt, received, msg.serverTimeMs);
    this.id = msg.clientId;
    if (typeof msg.resumeToken === "string") this.resumeToken = msg.resumeToken;
    if (typeof msg.limits === "object" && msg.limits !== null) {
      for (const [k, v] of Object.entries(msg.limits)) {
        if (k in this.limits && typeof v === "number" && v > 0) (this.limits as unknown as Record<string, number>)[k] = v;
      }
    }
    if (this.connectTimer !== undefined) clearTimeout(this.connectTimer);
    this.connectTimer = undefined;
    this.connectedAt = this.now();
    this.tokenExpMs = this.helloTokenExpMs;
    this.everConnected = true;
    this.setState("connected");
    // Entries of rooms closed while disconnected go first (a reopened room heartbeats after).
    for (const room of this.pendingLeaves) this.send(encode({ type: "leave", room }));
    this.pendingLeaves.clear();
    // Restore every room: last heartbeat with the TTL that remains (or a pending leave), then subscribe.
    for (const room of this.rooms.values()) room.onConnected();
    for (const room of this.watched.keys()) this.send(encode({ type: "subscribe", room, mode: "occupancy" }));
    for (const [room, s] of this.sampled) this.send(sampleSubscribe(room, s));
    this.startPinging();
    this.scheduleReauth();
    const waiters = this.connectedWaiters;
    this.connectedWaiters = [];
    for (const w of waiters) w.resolve();
  }

  private startPinging(): void {
    if (this.pingTimer !== undefined) clearInterval(this.pingTimer);
    this.syncPings = 0;
    this.lastReceived = monotonic();
    this.ping();
    const every = this.opts.pingIntervalMs ?? 10_000;
    const idle = this.opts.idleTimeoutMs ?? 25_000;
    this.pingTimer = setInterval(() => {
      const ws = this.ws;
      if (!ws || this.st !== "connected") return;
      if (monotonic() - this.lastReceived > idle) {
        this.dropSocket(ws);
        return;
      }
      this.ping();
    }, every);
  }

  private ping(): void {
    const ref = this.nextRef++;
    this.pings.set(ref, this.now());
    if (this.pings.size > 16) this.pings.delete(this.pings.keys().next().value as number);
    this.send(encode({ type: "ping", ref }));
  }

  private onPong(msg: Received<"pong">): void {
    if (typeof msg.ref !== "number") return;
    const sentAt = this.pings.get(msg.ref);
    if (sentAt === undefined) return;
    this.pings.delete(msg.ref);
    if (typeof msg.serverTimeMs === "number") this.clock.add(sentAt, this.now(), msg.serverTimeMs);
    // A few back-to-back round trips right after connecting give a good first estimate.
    if (++this.syncPings < 4 && this.st === "connected") this.ping();
  }

  private onServerError(msg: Received<"error">): void {
    const ref = typeof msg.ref === "number" ? msg.ref : undefined;
    if (ref !== undefined) {
      const done = this.acks.get(ref);
      if (done) {
        this.acks.delete(ref);
        done(false);
      }
      this.pings.delete(ref);
    }
    const code = typeof msg.code === "string" ? msg.code : "unknown";
    const message = typeof msg.message === "string" ? msg.message : code;
    // A refused hello: the server closes with 4003 next.
    if (this.st !== "connected" && AUTH_REFUSALS.has(code)) this.refusal = { code, message };
    const extra: { room?: string; ref?: number } = {};
    if (typeof msg.room === "string") extra.room = msg.room;
    if (ref !== undefined) extra.ref = ref;
    this.report(new RollcallError("server", code, message, extra));
  }

  private stopConnectionTimers(): void {
    if (this.connectTimer !== undefined) clearTimeout(this.connectTimer);
    this.connectTimer = undefined;
    if (this.pingTimer !== undefined) clearInterval(this.pingTimer);
    this.pingTimer = undefined;
    if (this.reauthTimer !== undefined) clearTimeout(this.reauthTimer);
    this.reauthTimer = undefined;
  }

  // ---- token renewal (re-authentication on the same connection) -------------------

  /**
   * With a token function and a token that has an `exp`, renews it before it expires:
   * at 80% of the remaining lifetime or 30 s before `exp`, whichever is earlier, but
   * never before half of the remaining lifetime (so short-lived tokens do not renew in
   * a loop). Times are on the server's clock (`exp` is), via the clock offset.
   */
  private scheduleReauth(): void {
    if (this.reauthTimer !== undefined) clearTimeout(this.reauthTimer);
    this.reauthTimer = undefined;
    const exp = this.tokenExpMs;
    if (typeof this.opts.token !== "function" || exp === undefined || this.isClosed) return;
    const remaining = exp - (this.now() + this.clock.offset);
    if (remaining <= 0) return; // the server closes with 4004 and we reconnect
    const due = renewalDelayMs(remaining);
    // setTimeout fires at once for delays beyond 2^31 - 1 ms (~24.8 days): check again later.
    const tooFar = due > MAX_TIMER_MS;
    const gen = this.generation;
    this.reauthTimer = setTimeout(() => {
      this.reauthTimer = undefined;
      if (gen !== this.generation || this.isClosed) return;
      if (tooFar) this.scheduleReauth();
      else void this.reauth(gen);
    }, Math.min(due, MAX_TIMER_MS));
  }

  private async reauth(gen: number): Promise<void> {
    const fn = this.opts.token;
    if (typeof fn !== "function") return;
    let token: string;
    try {
      token = await fn();
    } catch (e) {
      if (gen !== this.generation || this.isClosed) return;
      this.report(
        new RollcallError("local", "token_error", `the token function failed while renewing the token: ${errorMessage(e)}; the server will close the connection when the current token expires (4004) and the client will reconnect`, {
          cause: e,
        }),
      );
      return;
    }
    if (gen !== this.generation || this.isClosed || this.st !== "connected") return;
    const exp = jwtExpiryMs(token);
    if (exp !== undefined && this.tokenExpMs !== undefined && exp <= this.tokenExpMs) {
      this.report(
        new RollcallError("local", "token_error", "the token function returned a token that expires no later than the current one; the server will close the connection at expiry (4004) and the client will reconnect"),
      );
      return;
    }
    const ref = this.nextRef++;
    this.acks.set(ref, (ok) => {
      // A refusal is reported by the server's error (invalid_token, token_expired).
      if (!ok || gen !== this.generation || this.isClosed) return;
      this.tokenExpMs = exp;
      this.scheduleReauth();
    });
    if (!this.send(encode({ type: "auth", token, ref }))) this.acks.delete(ref);
  }

  /** Terminal: no more reconnects, timers or notifications; `waitForConnected()` rejects with `error`. */
  private shutdown(error: RollcallError = closedError()): void {
    this.finalError ??= error;
    this.rejectWaiters();
    this.isClosed = true;
    this.generation++;
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    this.stopConnectionTimers();
    for (const room of this.rooms.values()) room.dispose();
    this.setState("closed");
  }

  private rejectWaiters(): void {
    const waiters = this.connectedWaiters;
    this.connectedWaiters = [];
    const error = this.finalError ?? closedError();
    for (const w of waiters) w.reject(error);
  }

  private async doClose(): Promise<void> {
    const ws = this.ws;
    const wasConnected = this.st === "connected" && ws !== null;
    // Whoever waits for a connection learns at once that none is coming.
    this.finalError ??= closedError();
    this.rejectWaiters();
    this.isClosed = true;
    this.generation++;
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    for (const room of this.rooms.values()) {
      room.stopTracking();
      room.cancelPendingHeartbeat();
    }
    const timeoutMs = this.opts.closeTimeoutMs ?? 1000;
    if (wasConnected) {
      // Leave every room this client may have an entry in, and wait for the acks.
      const acks: Promise<boolean>[] = [];
      for (const room of this.rooms.values()) {
        if (!room.own && !room.serverMayHaveEntry) continue;
        const ref = this.nextRef++;
        acks.push(new Promise<boolean>((resolve) => this.acks.set(ref, resolve)));
        this.send(encode({ type: "leave", room: room.name, ref }));
        room.own = null;
        room.serverMayHaveEntry = false;
      }
      if (acks.length > 0) await withTimeout(Promise.all(acks), timeoutMs);
    }
    this.shutdown();
    this.ws = null;
    for (const done of this.acks.values()) done(false);
    this.acks.clear();
    if (ws) await closeSocket(ws, timeoutMs);
  }
}

function closedError(): RollcallError {
  return new RollcallError("local", "closed", "the client was closed");
}

function throttleOption(v: unknown, where: string): number {
  if (v === undefined) return DEFAULT_HEARTBEAT_THROTTLE_MS;
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) throw new RangeError(`${where}: expected a number of ms >= 0, got ${String(v)}`);
  return v;
}

