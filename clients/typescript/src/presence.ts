// One `client.presence(room, schema?)`: a typed, decoded view of a room, with diffs
// for `onChange` and the users grouping.
import { RollcallError } from "./errors.js";
import { describeIssues, errorMessage, failureError, type Codec, type CodecResult } from "./schema.js";
import type { BroadcastSender, Presence, PresenceDiff, PresenceEntry, PresenceUser, UsersDiff } from "./types.js";
import { jsonEqual, utf8Length } from "./util.js";
import type { RawEntry, Room, RoomHost } from "./room.js";

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
