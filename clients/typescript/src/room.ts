// A room's state, shared by every presence view of it: the entries as the server sent
// them, this client's own heartbeat (throttled, re-sent after a reconnect, `track`),
// local expiry, and what comes in (snapshot, changes, broadcasts).
import type { RollcallError } from "./errors.js";
import { DEFAULT_LIMITS as GENERATED_DEFAULT_LIMITS, type Entry, type WelcomeLimits } from "./protocol.gen.js";
import type { BroadcastSender } from "./types.js";
import { encode, encodeHeartbeat, type ClientRequest, type ReceivedChange, type ReceivedEntry, type ReceivedServerMessage } from "./wire.js";
import { MAX_TIMER_MS, isClientId, jsonEqual, monotonic } from "./util.js";
import type { PresenceView } from "./presence.js";

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

function isWireEntry(e: unknown): e is WireEntry {
  if (typeof e !== "object" || e === null) return false;
  const w = e as ReceivedEntry;
  return isClientId(w.clientId) && typeof w.expiresAtMs === "number" && Number.isFinite(w.expiresAtMs);
}
