import { RollcallError } from "./errors.js";
import { DEFAULT_LIMITS as GENERATED_DEFAULT_LIMITS, MAX_ROOM_BYTES, type Entry, type WelcomeLimits } from "./protocol.gen.js";
import { describeIssues, errorMessage, failureError, type Codec, type CodecResult } from "./schema.js";
import type { BroadcastSender, Presence, PresenceDiff, PresenceEntry, PresenceUser, UsersDiff } from "./types.js";
import { encode, encodeHeartbeat, type ClientRequest, type ReceivedChange, type ReceivedEntry, type ReceivedServerMessage } from "./wire.js";

/** Server limits announced in `welcome` (the generated defaults until then). */
export type Limits = WelcomeLimits;

/** The defaults, generated from the protocol crate (protocol.gen.ts). */
export const DEFAULT_LIMITS: Limits = { ...GENERATED_DEFAULT_LIMITS };

/** What a room needs from its client. */
export interface RoomHost {
  now(): number;
  readonly connected: boolean;
  readonly closed: boolean;
  readonly clientId: number | undefined;
  readonly limits: Limits;
  readonly clockOffsetMs: number;
  send(message: string): boolean;
  /** Sends `message` with a fresh `ref`; resolves true on its ack, false on an error or when it could not be sent. */
  request(message: ClientRequest): Promise<boolean>;
  report(error: RollcallError): void;
  /** The room's last view closed: leave it, unsubscribe and forget it. */
  release(room: Room): void;
}

/** An entry as the server sent it (data still undecoded). */
export interface RawEntry {
  readonly data: unknown;
  readonly serverExpiresAtMs: number;
  /** `serverExpiresAtMs` in the local clock, fixed when the entry arrived. */
  readonly expiresAtMs: number;
  readonly userId: string | undefined;
}

/** A snapshot entry / upsert change whose `clientId` and `expiresAtMs` were checked. */
type WireEntry = ReceivedEntry & Pick<Entry, "clientId" | "expiresAtMs">;

interface OwnHeartbeat {
  /** The serialized data, exactly as sent. */
  readonly dataJson: string;
  readonly ttlMs: number;
  /** Local time of the user's heartbeat: the TTL that remains is measured from here. */
  sentAt: number;
}

const MAX_TIMER_MS = 2_147_483_647;

/**
 * Per-room state shared by every `Presence` view of the room: the entries as the
 * server sent them, this client's own last heartbeat (re-sent after a reconnect),
 * the local expiry timer and the `track()` loop.
 */
export class Room {
  raw = new Map<number, RawEntry>();
  readonly views = new Set<PresenceView<unknown, unknown>>();
  own: OwnHeartbeat | null = null;
  /** A heartbeat may have reached the server since the last leave: `close()` and reconnects leave it. */
  serverMayHaveEntry = false;
  /** Every view closed: nothing more is sent for this room object. */
  released = false;
  /** A snapshot has arrived since the room was opened. */
  private synced = false;
  private syncWaiters: Array<() => void> = [];
  private seq = 0;
  private appliedSeq = 0;
  private tracking = false;
  private trackTimer: ReturnType<typeof setInterval> | undefined;
  private trackEveryMs = 0;
  private expiryTimer: ReturnType<typeof setTimeout> | undefined;
  private expiryAt = Infinity;
  /** Monotonic time of the last heartbeat sent for this room (throttling). */
  private lastSentAt = -Infinity;
  /** A throttled heartbeat is due when this fires: it sends `own`, the latest data. */
  private pendingTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    readonly name: string,
    private readonly host: RoomHost,
  ) {}

  nextSeq(): number {
    return ++this.seq;
  }

  // ---- outgoing -------------------------------------------------------------

  /**
   * Applies the user's heartbeat number `seq` unless a later heartbeat or leave won.
   * Throttled to one send per `throttleMs`: the first after a quiet spell goes at
   * once; later ones only replace `own`, which is sent when the interval ends.
   */
  applyHeartbeat(seq: number, dataJson: string, ttlMs: number, track: boolean, throttleMs = 0): void {
    if (seq <= this.appliedSeq || this.host.closed || this.released) return;
    this.appliedSeq = seq;
    this.own = { dataJson, ttlMs, sentAt: this.host.now() };
    if (track) this.tracking = true;
    if (!this.host.connected) {
      // Sent on (re)connect with what remains of the TTL.
      this.cancelPendingHeartbeat();
      if (this.tracking) this.scheduleTrack(ttlMs);
      return;
    }
    const now = monotonic();
    if (throttleMs <= 0 || (this.pendingTimer === undefined && now - this.lastSentAt >= throttleMs)) {
      this.flushOwn();
      return;
    }
    if (this.pendingTimer === undefined) {
      this.pendingTimer = setTimeout(
        () => {
          this.pendingTimer = undefined;
          this.flushOwn();
        },
        Math.max(0, this.lastSentAt + throttleMs - now),
      );
    }
  }

  /** Sends `own` now (the latest heartbeat), and restarts the `track` loop from it. */
  private flushOwn(): void {
    this.cancelPendingHeartbeat();
    const own = this.own;
    if (!own || this.host.closed || this.released || !this.host.connected) return;
    own.sentAt = this.host.now();
    this.sendHeartbeat(own.dataJson, own.ttlMs);
    if (this.tracking) this.scheduleTrack(own.ttlMs);
  }

  /** Drops a throttled heartbeat that has not been sent yet (`own` is kept). */
  cancelPendingHeartbeat(): void {
    if (this.pendingTimer !== undefined) clearTimeout(this.pendingTimer);
    this.pendingTimer = undefined;
  }

  leave(seq: number): void {
    if (seq <= this.appliedSeq || this.host.closed || this.released) return;
    this.appliedSeq = seq;
    this.own = null;
    // A throttled heartbeat still waiting must never follow the leave.
    this.cancelPendingHeartbeat();
    this.stopTracking();
    // Remove our own entry locally at once; the server's `leave` change confirms it.
    const me = this.host.clientId;
    if (me !== undefined && this.raw.delete(me)) this.notify([me]);
    if (this.host.connected) {
      this.host.send(encode({ type: "leave", room: this.name }));
      this.serverMayHaveEntry = false;
    }
  }

  private sendHeartbeat(dataJson: string, ttlMs: number): void {
    if (!this.host.connected) return; // sent on (re)connect with what remains of the TTL
    this.host.send(encodeHeartbeat({ type: "heartbeat", room: this.name, ttlMs }, dataJson));
    this.serverMayHaveEntry = true;
    this.lastSentAt = monotonic();
  }

  /** (Re)starts the `track` loop: every heartbeat postpones the next tracked one. */
  private scheduleTrack(ttlMs: number): void {
    const every = Math.max(1, Math.floor(ttlMs / 3));
    if (this.trackTimer !== undefined) clearInterval(this.trackTimer);
    this.trackEveryMs = every;
    this.trackTimer = setInterval(() => {
      const own = this.own;
      if (!own || this.host.closed) return;
      own.sentAt = this.host.now();
      // Carries the latest data: a throttled heartbeat still waiting is sent by this one.
      if (this.host.connected) this.cancelPendingHeartbeat();
      this.sendHeartbeat(own.dataJson, own.ttlMs);
    }, every);
  }

  stopTracking(): void {
    this.tracking = false;
    if (this.trackTimer !== undefined) clearInterval(this.trackTimer);
    this.trackTimer = undefined;
    this.trackEveryMs = 0;
  }

  /**
   * Called after `welcome`: restore the server's view of this client in the room
   * (last heartbeat with the TTL that remains, never a fresh one; or a pending
   * leave), then subscribe, which answers with a fresh snapshot.
   */
  onConnected(): void {
    this.cancelPendingHeartbeat();
    const own = this.own;
    if (own) {
      const remaining = Math.floor(own.sentAt + own.ttlMs - this.host.now());
      if (remaining >= 1) this.sendHeartbeat(own.dataJson, Math.min(remaining, own.ttlMs));
      else if (!this.tracking) this.own = null;
    } else if (this.serverMayHaveEntry) {
      this.host.send(encode({ type: "leave", room: this.name }));
      this.serverMayHaveEntry = false;
    }
    this.host.send(encode({ type: "subscribe", room: this.name }));
  }

  // ---- incoming -------------------------------------------------------------

  private toRaw(e: WireEntry): RawEntry {
    return {
      data: e.data === undefined ? null : e.data,
      serverExpiresAtMs: e.expiresAtMs,
      expiresAtMs: Math.round(e.expiresAtMs - this.host.clockOffsetMs),
      userId: typeof e.userId === "string" ? e.userId : undefined,
    };
  }

  /** Resolves once a snapshot has arrived (at once if one has, or if the client closed). */
  whenSynced(): Promise<void> {
    if (this.synced || this.host.closed || this.released) return Promise.resolve();
    return new Promise<void>((resolve) => this.syncWaiters.push(resolve));
  }

  private wakeSyncWaiters(): void {
    const waiters = this.syncWaiters;
    this.syncWaiters = [];
    for (const w of waiters) w();
  }

  /** A snapshot replaces everything known about the room. */
  applySnapshot(entries: readonly unknown[]): void {
    const next = new Map<number, RawEntry>();
    const changed: number[] = [];
    for (const e of entries) {
      if (!isWireEntry(e)) continue;
      const old = this.raw.get(e.clientId);
      if (
        old &&
        old.serverExpiresAtMs === e.expiresAtMs &&
        old.userId === (typeof e.userId === "string" ? e.userId : undefined) &&
        jsonEqual(old.data, e.data === undefined ? null : e.data)
      ) {
        next.set(e.clientId, old); // unchanged: keep the decoded entry and its identity
      } else {
        next.set(e.clientId, this.toRaw(e));
        changed.push(e.clientId);
      }
    }
    for (const id of this.raw.keys()) if (!next.has(id)) changed.push(id);
    this.raw = next;
    this.expiryAt = Infinity;
    for (const e of next.values()) if (e.expiresAtMs < this.expiryAt) this.expiryAt = e.expiresAtMs;
    this.armExpiry(true);
    this.notify(changed);
    this.synced = true;
    this.wakeSyncWaiters();
  }

  applyChanges(changes: readonly unknown[]): void {
    const ids: number[] = [];
    for (const c of changes) {
      if (typeof c !== "object" || c === null) continue;
      const ch = c as ReceivedChange;
      if (!isClientId(ch.clientId)) continue;
      switch (ch.op) {
        case "upsert": {
          if (!isWireEntry(ch)) continue;
          const raw = this.toRaw(ch);
          this.raw.set(ch.clientId, raw);
          if (raw.expiresAtMs < this.expiryAt) {
            this.expiryAt = raw.expiresAtMs;
            this.armExpiry(true);
          }
          ids.push(ch.clientId);
          break;
        }
        case "leave":
        case "expire":
          if (this.raw.delete(ch.clientId)) ids.push(ch.clientId);
          break;
        default:
          break; // unknown ops are ignored (forward compatibility)
      }
    }
    this.notify(ids);
  }

  private notify(ids: number[] | null): void {
    if (ids !== null && ids.length === 0) return;
    for (const v of this.views) v.sync(ids);
  }

  /** (Re)arms the timer that removes entries locally when their TTL runs out. */
  private armExpiry(reset: boolean): void {
    if (this.host.closed) return;
    if (reset && this.expiryTimer !== undefined) {
      clearTimeout(this.expiryTimer);
      this.expiryTimer = undefined;
    }
    if (this.expiryTimer !== undefined || this.expiryAt === Infinity) return;
    // An entry is expired once now > expiresAtMs, i.e. from expiresAtMs + 1 on.
    const delay = Math.min(MAX_TIMER_MS, Math.max(0, this.expiryAt + 1 - this.host.now()));
    this.expiryTimer = setTimeout(() => {
      this.expiryTimer = undefined;
      this.sweep();
    }, delay);
  }

  private sweep(): void {
    if (this.host.closed) return;
    const now = this.host.now();
    const removed: number[] = [];
    let next = Infinity;
    for (const [id, e] of this.raw) {
      if (now > e.expiresAtMs) {
        this.raw.delete(id);
        removed.push(id);
      } else if (e.expiresAtMs < next) next = e.expiresAtMs;
    }
    this.expiryAt = next;
    this.armExpiry(false);
    this.notify(removed);
  }

  /** Stops every timer (client closed). */
  /** Another client's broadcast to this room: every view decodes and delivers it. */
  applyBroadcast(clientId: number, msg: Extract<ReceivedServerMessage, { type: "broadcast" }>): void {
    const from: BroadcastSender = {
      clientId,
      serverTimeMs: typeof msg.serverTimeMs === "number" ? msg.serverTimeMs : 0,
    };
    if (typeof msg.userId === "string") from.userId = msg.userId;
    for (const view of this.views) view.deliverBroadcast(msg.data, from);
  }

  dispose(): void {
    this.stopTracking();
    this.cancelPendingHeartbeat();
    if (this.expiryTimer !== undefined) clearTimeout(this.expiryTimer);
    this.expiryTimer = undefined;
    this.wakeSyncWaiters();
  }
}

/** One `client.presence(room, schema?)`: a typed, decoded view of a room. */
export class PresenceView<T, In, B = unknown, BIn = B> implements Presence<T, In, B, BIn> {
  readonly room: string;
  private readonly broadcastListeners = new Set<(data: B, from: BroadcastSender) => void>();
  private readonly entries = new Map<number, PresenceEntry<T>>();
  /** The raw entry each id was last decoded from (also when decoding failed). */
  private readonly source = new Map<number, RawEntry>();
  /** Ids whose current data did not decode (reported once until they decode again). */
  private readonly failed = new Set<number>();
  /** Ids whose latest raw entry is being decoded asynchronously (the previous entry stays meanwhile). */
  private readonly decoding = new Set<number>();
  /** A number per entry that changes when its data or userId does (not on a refresh). */
  private readonly versions = new Map<number, number>();
  private nextVersion = 1;
  /**
   * The entries as of the previous notification (what diffs are relative to), kept
   * while someone listens, with the number of entries of each user among them.
   */
  private baseline = new Map<number, { version: number; user: string }>();
  private userCounts = new Map<string, number>();
  /** Ids whose entry may have changed since the previous notification. */
  private readonly touched = new Set<number>();
  private readonly listeners = new Set<(entries: Map<number, PresenceEntry<T>>, diff: PresenceDiff) => void>();
  private readonly usersListeners = new Set<(users: Map<string, PresenceUser<T>>, diff: UsersDiff) => void>();
  private dirty = false;
  private scheduled = false;
  private ready: boolean;
  private closed = false;

  constructor(
    private readonly r: Room,
    private readonly host: RoomHost,
    private readonly codec: Codec | null,
    private readonly throttleMs = 0,
    private readonly broadcastCodec: Codec | null = null,
  ) {
    this.room = r.name;
    this.ready = !codec || codec.ready === null;
    if (this.ready) this.sync(null);
    else
      void codec!.ready!.then(() => {
        this.ready = true;
        this.sync(null);
      });
  }

  // ---- Presence API ---------------------------------------------------------

  heartbeat(data: In, ttlMs: number): void {
    this.put(data, ttlMs, false);
  }

  track(data: In, ttlMs: number): void {
    this.put(data, ttlMs, true);
  }

  leave(): void {
    try {
      if (this.host.closed || this.closed) return;
      this.r.leave(this.r.nextSeq());
    } catch (e) {
      this.host.report(new RollcallError("local", "internal", `leave failed: ${errorMessage(e)}`, { room: this.room, cause: e }));
    }
  }

  value(): Map<number, PresenceEntry<T>> {
    const now = this.host.now();
    const out = new Map<number, PresenceEntry<T>>();
    for (const [id, e] of this.entries) if (!(now > e.expiresAtMs)) out.set(id, e);
    return out;
  }

  self(): PresenceEntry<T> | undefined {
    const me = this.host.clientId;
    if (me === undefined) return undefined;
    const e = this.entries.get(me);
    return e && !(this.host.now() > e.expiresAtMs) ? e : undefined;
  }

  others(): Map<number, PresenceEntry<T>> {
    const out = this.value();
    const me = this.host.clientId;
    if (me !== undefined) out.delete(me);
    return out;
  }

  users(): Map<string, PresenceUser<T>> {
    return groupUsers(this.value());
  }

  synced(): Promise<void> {
    if (this.closed) return Promise.resolve();
    const room = this.r.whenSynced();
    // A schema that loads asynchronously decodes the snapshot once it is ready.
    const ready = this.codec?.ready;
    return ready ? Promise.all([room, ready]).then(() => undefined) : room;
  }

  broadcast(data: BIn): Promise<boolean> {
    try {
      const fail = (code: string, message: string, extra: Record<string, unknown> = {}) => {
        this.host.report(new RollcallError("local", code, message, { room: this.room, ...extra }));
        return Promise.resolve(false);
      };
      if (this.host.closed) return fail("not_connected", "the client is closed: broadcast not sent");
      if (this.closed) return fail("presence_closed", "this presence view is closed: broadcast not sent");
      const codec = this.broadcastCodec;
      if (!codec) return this.sendBroadcast(data);
      const run = (): Promise<boolean> => {
        const res = codec.encode(data);
        const finish = (r: CodecResult): Promise<boolean> => {
          if (r.ok) return this.sendBroadcast(r.value);
          if (r.failure) {
            this.host.report(failureError(r.failure, { room: this.room }));
            return Promise.resolve(false);
          }
          return fail("schema_mismatch", `broadcast data does not match the broadcast schema of ${JSON.stringify(this.room)}: ${describeIssues(r.issues)}`, {
            issues: r.issues,
          });
        };
        return res instanceof Promise ? res.then(finish) : finish(res);
      };
      return codec.ready ? codec.ready.then(run) : run();
    } catch (e) {
      this.host.report(new RollcallError("local", "internal", `broadcast failed: ${errorMessage(e)}`, { room: this.room, cause: e }));
      return Promise.resolve(false);
    }
  }

  private sendBroadcast(value: unknown): Promise<boolean> {
    let json: string | undefined;
    try {
      json = JSON.stringify(value);
    } catch (e) {
      this.host.report(new RollcallError("local", "invalid_data", `broadcast data is not JSON-serializable: ${errorMessage(e)}`, { room: this.room, cause: e }));
      return Promise.resolve(false);
    }
    const max = this.host.limits.maxDataBytes;
    const size = utf8Length(json ?? "null");
    if (size > max) {
      this.host.report(new RollcallError("local", "data_too_large", `broadcast data is ${size} bytes of JSON; the limit is ${max}`, { room: this.room }));
      return Promise.resolve(false);
    }
    if (!this.host.connected) {
      // Ephemeral: nothing is kept for a reconnect.
      this.host.report(new RollcallError("local", "not_connected", "not connected: broadcast not sent", { room: this.room }));
      return Promise.resolve(false);
    }
    return this.host.request({ type: "broadcast", room: this.room, data: json === undefined ? null : (JSON.parse(json) as unknown) });
  }

  onBroadcast(fn: (data: B, from: BroadcastSender) => void): () => void {
    if (typeof fn !== "function") throw new TypeError("onBroadcast expects a function");
    if (this.closed) return () => {};
    const wrapped = (d: B, f: BroadcastSender) => fn(d, f);
    this.broadcastListeners.add(wrapped);
    return () => {
      this.broadcastListeners.delete(wrapped);
    };
  }

  /** Decodes a broadcast (with the broadcast schema, if any) and calls the listeners. */
  deliverBroadcast(data: unknown, from: BroadcastSender): void {
    if (this.closed || this.broadcastListeners.size === 0) return;
    const emit = (value: unknown) => {
      for (const fn of [...this.broadcastListeners]) {
        try {
          fn(value as B, { ...from });
        } catch (e) {
          this.host.report(new RollcallError("local", "listener_error", `an onBroadcast listener threw: ${errorMessage(e)}`, { room: this.room, cause: e }));
        }
      }
    };
    const codec = this.broadcastCodec;
    if (!codec) {
      emit(data);
      return;
    }
    const accept = (r: CodecResult) => {
      if (this.closed) return;
      if (r.ok) {
        emit(r.value);
        return;
      }
      if (r.failure) {
        this.host.report(failureError(r.failure, { room: this.room, clientId: from.clientId }));
        return;
      }
      this.host.report(
        new RollcallError("local", "decode_failed", `a broadcast from client ${from.clientId} in ${JSON.stringify(this.room)} does not match the broadcast schema: ${describeIssues(r.issues)}`, {
          room: this.room,
          clientId: from.clientId,
          issues: r.issues,
        }),
      );
    };
    const run = () => {
      const res = codec.decode(data);
      if (res instanceof Promise) void res.then(accept);
      else accept(res);
    };
    if (codec.ready) void codec.ready.then(run);
    else run();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.broadcastListeners.clear();
    this.listeners.clear();
    this.usersListeners.clear();
    this.entries.clear();
    this.source.clear();
    this.failed.clear();
    this.decoding.clear();
    this.versions.clear();
    this.baseline.clear();
    this.userCounts.clear();
    this.touched.clear();
    this.r.views.delete(this as PresenceView<unknown, unknown>);
    if (this.r.views.size === 0 && !this.host.closed) this.host.release(this.r);
  }

  onChange(fn: (entries: Map<number, PresenceEntry<T>>, diff: PresenceDiff) => void): () => void {
    if (typeof fn !== "function") throw new TypeError("onChange expects a function");
    if (this.closed) return () => {};
    this.startObserving();
    // Wrap so that subscribing the same function twice gives two independent subscriptions.
    const wrapped = (m: Map<number, PresenceEntry<T>>, d: PresenceDiff) => fn(m, d);
    this.listeners.add(wrapped);
    return () => {
      this.listeners.delete(wrapped);
    };
  }

  onUsersChange(fn: (users: Map<string, PresenceUser<T>>, diff: UsersDiff) => void): () => void {
    if (typeof fn !== "function") throw new TypeError("onUsersChange expects a function");
    if (this.closed) return () => {};
    this.startObserving();
    const wrapped = (u: Map<string, PresenceUser<T>>, d: UsersDiff) => fn(u, d);
    this.usersListeners.add(wrapped);
    return () => {
      this.usersListeners.delete(wrapped);
    };
  }

  /**
   * The first listener's diffs start from what the view shows now (while nobody
   * listens the baseline is not kept up to date).
   */
  private startObserving(): void {
    if (this.listeners.size > 0 || this.usersListeners.size > 0) return;
    this.baseline = new Map();
    this.userCounts = new Map();
    this.touched.clear();
    for (const [id, e] of this.value()) {
      const user = userKey(id, e);
      this.baseline.set(id, { version: this.versions.get(id) ?? 0, user });
      this.userCounts.set(user, (this.userCounts.get(user) ?? 0) + 1);
    }
  }

  // ---- outgoing -------------------------------------------------------------

  private put(data: In, ttlMs: number, track: boolean): void {
    try {
      if (this.host.closed) {
        this.host.report(new RollcallError("local", "not_connected", "the client is closed: heartbeat not sent", { room: this.room }));
        return;
      }
      if (this.closed) {
        this.host.report(new RollcallError("local", "presence_closed", "this presence view is closed: heartbeat not sent", { room: this.room }));
        return;
      }
      const max = this.host.limits.maxTtlMs;
      if (typeof ttlMs !== "number" || !Number.isInteger(ttlMs) || ttlMs < 1 || ttlMs > max) {
        this.host.report(
          new RollcallError("local", "invalid_ttl", `ttlMs must be an integer in [1, ${max}], got ${String(ttlMs)}`, { room: this.room }),
        );
        return;
      }
      const seq = this.r.nextSeq();
      const codec = this.codec;
      if (!codec) {
        this.commit(seq, data, ttlMs, track);
        return;
      }
      const run = () => {
        const res = codec.encode(data);
        if (res instanceof Promise) void res.then((r) => this.finish(seq, r, ttlMs, track));
        else this.finish(seq, res, ttlMs, track);
      };
      if (codec.ready) void codec.ready.then(run);
      else run();
    } catch (e) {
      this.host.report(new RollcallError("local", "internal", `heartbeat failed: ${errorMessage(e)}`, { room: this.room, cause: e }));
    }
  }

  private finish(seq: number, res: CodecResult, ttlMs: number, track: boolean): void {
    try {
      if (!res.ok) {
        if (res.failure) {
          this.host.report(failureError(res.failure, { room: this.room })); // not the data's fault
          return;
        }
        this.host.report(
          new RollcallError("local", "schema_mismatch", `heartbeat data does not match the schema of ${JSON.stringify(this.room)}: ${describeIssues(res.issues)}`, {
            room: this.room,
            issues: res.issues,
          }),
        );
        return;
      }
      this.commit(seq, res.value, ttlMs, track);
    } catch (e) {
      this.host.report(new RollcallError("local", "internal", `heartbeat failed: ${errorMessage(e)}`, { room: this.room, cause: e }));
    }
  }

  private commit(seq: number, value: unknown, ttlMs: number, track: boolean): void {
    let json: string | undefined;
    try {
      json = JSON.stringify(value);
    } catch (e) {
      this.host.report(new RollcallError("local", "invalid_data", `heartbeat data is not JSON-serializable: ${errorMessage(e)}`, { room: this.room, cause: e }));
      return;
    }
    if (json === undefined) json = "null";
    const max = this.host.limits.maxDataBytes;
    const size = utf8Length(json);
    if (size > max) {
      this.host.report(new RollcallError("local", "data_too_large", `heartbeat data is ${size} bytes of JSON; the limit is ${max}`, { room: this.room }));
      return;
    }
    this.r.applyHeartbeat(seq, json, ttlMs, track, this.throttleMs);
  }

  // ---- incoming -------------------------------------------------------------

  /** Re-derives the decoded entries for `ids` (all when null) from the room's raw entries. */
  sync(ids: Iterable<number> | null): void {
    if (!this.ready || this.closed) return; // a full sync follows once the codec is ready
    let changed = false;
    const touch = (id: number, hit: boolean) => {
      if (!hit) return;
      this.touched.add(id);
      changed = true;
    };
    if (ids === null) {
      for (const id of [...this.source.keys()]) if (!this.r.raw.has(id)) touch(id, this.drop(id));
      for (const id of this.r.raw.keys()) touch(id, this.update(id));
    } else {
      for (const id of ids) touch(id, this.update(id));
    }
    if (changed) this.markDirty();
  }

  private drop(id: number): boolean {
    this.source.delete(id);
    this.failed.delete(id);
    this.decoding.delete(id);
    this.versions.delete(id);
    return this.entries.delete(id);
  }

  /** Sets a decoded entry whose data (or userId) is new. */
  private put1(id: number, raw: RawEntry, data: unknown): void {
    this.entries.set(id, makeEntry(raw, data) as PresenceEntry<T>);
    this.versions.set(id, this.nextVersion++);
  }

  private update(id: number): boolean {
    const raw = this.r.raw.get(id);
    if (!raw) return this.drop(id);
    const prev = this.source.get(id);
    if (prev === raw) return false;
    this.source.set(id, raw);
    const cur = this.entries.get(id);
    if (prev && cur && !this.decoding.has(id) && prev.userId === raw.userId && jsonEqual(prev.data, raw.data)) {
      // A refresh: same data, a later expiry. Keep the decoded data (no decode, no new version).
      this.entries.set(id, makeEntry(raw, cur.data) as PresenceEntry<T>);
      return true;
    }
    if (!this.codec) {
      this.put1(id, raw, raw.data);
      return true;
    }
    let res: CodecResult | Promise<CodecResult>;
    try {
      res = this.codec.decode(raw.data);
    } catch (e) {
      res = { ok: false, issues: [{ message: errorMessage(e) }] };
    }
    if (res instanceof Promise) {
      // The previous entry (if any) stays until this one is decoded: an update is
      // never shown as a leave followed by a join.
      this.decoding.add(id);
      void res.then((r) => {
        if (this.source.get(id) !== raw) return; // superseded meanwhile
        this.decoding.delete(id);
        if (this.accept(id, raw, r)) {
          this.touched.add(id);
          this.markDirty();
        }
      });
      return false;
    }
    this.decoding.delete(id);
    return this.accept(id, raw, res);
  }

  private accept(id: number, raw: RawEntry, res: CodecResult): boolean {
    if (res.ok) {
      this.failed.delete(id);
      this.put1(id, raw, res.value);
      return true;
    }
    this.versions.delete(id);
    const had = this.entries.delete(id);
    if (!this.failed.has(id)) {
      this.failed.add(id);
      if (res.failure) {
        this.host.report(failureError(res.failure, { room: this.room, clientId: id })); // not the data's fault
        return had;
      }
      this.host.report(
        new RollcallError("local", "decode_failed", `entry of client ${id} in ${JSON.stringify(this.room)} does not match the schema: ${describeIssues(res.issues)}`, {
          room: this.room,
          clientId: id,
          issues: res.issues,
        }),
      );
    }
    return had;
  }

  private markDirty(): void {
    this.dirty = true;
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => this.flush());
  }

  private flush(): void {
    this.scheduled = false;
    if (!this.dirty) return;
    this.dirty = false;
    if ((this.listeners.size === 0 && this.usersListeners.size === 0) || this.host.closed || this.closed) {
      this.touched.clear(); // the baseline is rebuilt when someone subscribes
      return;
    }
    // Only the touched ids can differ from the baseline (an entry past its expiry
    // that the local timer has not removed yet is touched when it is removed).
    const now = this.host.now();
    const diff: PresenceDiff = { joined: [], left: [], updated: [] };
    const usersBefore = new Map<string, number>();
    const bump = (user: string, delta: number) => {
      const n = this.userCounts.get(user) ?? 0;
      if (!usersBefore.has(user)) usersBefore.set(user, n);
      if (n + delta > 0) this.userCounts.set(user, n + delta);
      else this.userCounts.delete(user);
    };
    for (const id of this.touched) {
      const old = this.baseline.get(id);
      const e = this.entries.get(id);
      const live = e !== undefined && !(now > e.expiresAtMs) ? e : undefined;
      if (old === undefined) {
        if (live === undefined) continue;
        const user = userKey(id, live);
        this.baseline.set(id, { version: this.versions.get(id) ?? 0, user });
        bump(user, 1);
        diff.joined.push(id);
      } else if (live === undefined) {
        this.baseline.delete(id);
        bump(old.user, -1);
        diff.left.push(id);
      } else {
        const version = this.versions.get(id) ?? 0;
        if (version === old.version) continue; // a refresh
        const user = userKey(id, live);
        if (user !== old.user) {
          bump(old.user, -1);
          bump(user, 1);
        } else bump(user, 0);
        this.baseline.set(id, { version, user });
        diff.updated.push(id);
      }
    }
    this.touched.clear();
    if (diff.joined.length + diff.left.length + diff.updated.length === 0) return; // refreshes only
    const map = this.value();
    for (const fn of [...this.listeners]) {
      try {
        fn(map, diff);
      } catch (e) {
        this.host.report(new RollcallError("local", "listener_error", `an onChange callback threw: ${errorMessage(e)}`, { room: this.room, cause: e }));
      }
    }
    if (this.usersListeners.size === 0 || this.closed) return;
    const usersDiff: UsersDiff = { joined: [], left: [], updated: [] };
    for (const [user, before] of usersBefore) {
      const after = this.userCounts.get(user) ?? 0;
      if (before === 0 && after > 0) usersDiff.joined.push(user);
      else if (before > 0 && after === 0) usersDiff.left.push(user);
      else if (before > 0) usersDiff.updated.push(user);
    }
    if (usersDiff.joined.length + usersDiff.left.length + usersDiff.updated.length === 0) return;
    const users = groupUsers(map);
    for (const fn of [...this.usersListeners]) {
      try {
        fn(users, usersDiff);
      } catch (e) {
        this.host.report(new RollcallError("local", "listener_error", `an onUsersChange callback threw: ${errorMessage(e)}`, { room: this.room, cause: e }));
      }
    }
  }
}

/** The `users()` key of an entry: its `userId`, or `client:<clientId>` without one. */
export function userKey(clientId: number, e: { userId?: string | undefined }): string {
  return e.userId ?? `client:${clientId}`;
}

function groupUsers<T>(entries: Map<number, PresenceEntry<T>>): Map<string, PresenceUser<T>> {
  const users = new Map<string, PresenceUser<T>>();
  for (const [id, e] of entries) {
    const key = userKey(id, e);
    let u = users.get(key);
    if (!u) users.set(key, (u = { userId: key, entries: new Map() }));
    u.entries.set(id, e);
  }
  return users;
}

function makeEntry(raw: RawEntry, data: unknown): PresenceEntry<unknown> {
  const e: PresenceEntry<unknown> = { data, expiresAtMs: raw.expiresAtMs };
  if (raw.userId !== undefined) e.userId = raw.userId;
  return Object.freeze(e);
}

export function isClientId(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v > 0;
}

function isWireEntry(e: unknown): e is WireEntry {
  if (typeof e !== "object" || e === null) return false;
  const w = e as ReceivedEntry;
  return isClientId(w.clientId) && typeof w.expiresAtMs === "number" && Number.isFinite(w.expiresAtMs);
}

function monotonic(): number {
  return typeof performance !== "undefined" ? performance.now() : Date.now();
}

/** UTF-8 length of a string without allocating. */
export function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n += 4;
        i++;
      } else n += 3;
    } else n += 3;
  }
  return n;
}

/** Deep equality of parsed JSON values. */
export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!jsonEqual(a[i], b[i])) return false;
    return true;
  }
  if (Array.isArray(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  for (const k of ka) {
    if (!Object.prototype.hasOwnProperty.call(b, k)) return false;
    if (!jsonEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k])) return false;
  }
  return true;
}

/** A room name is 1–256 bytes of UTF-8 without control characters (docs/protocol.md). */
export function roomNameProblem(room: unknown): string | undefined {
  if (typeof room !== "string") return "a room name must be a string";
  const n = utf8Length(room);
  if (n < 1 || n > MAX_ROOM_BYTES) return `a room name is 1 to ${MAX_ROOM_BYTES} bytes of UTF-8; this one is ${n}`;
  if (/\p{Cc}/u.test(room)) return "a room name may not contain control characters";
  return undefined;
}
