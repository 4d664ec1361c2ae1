// An in-process fake of the Rollcall server (docs/protocol.md), reached through an
// injected WebSocket class: deterministic unit tests of the SDK's connection logic
// without a real server or network.
import type { WebSocketConstructor } from "rollcall-client";

type Json = Record<string, unknown>;

export interface FakeEntry {
  clientId: number;
  data: unknown;
  expiresAtMs: number;
  userId?: string;
}

export class FakeSocket {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSING = 2;
  static readonly CLOSED = 3;
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  /** Every message the client sent on this socket, parsed. */
  readonly sent: Json[] = [];
  clientId: number | undefined;
  closedByClient: number | undefined;

  constructor(
    readonly url: string,
    private readonly server: FakeServer,
  ) {
    server.sockets.push(this);
    setTimeout(() => server.onSocket(this), 0);
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    const msg = JSON.parse(data) as Json;
    this.sent.push(msg);
    this.server.log.push(msg);
    setTimeout(() => this.server.handle(this, msg), 0);
  }

  close(code = 1005, reason = ""): void {
    if (this.readyState >= 2) return;
    this.closedByClient = code;
    this.readyState = 2;
    setTimeout(() => this.finish(code, reason), 0);
  }

  terminate(): void {
    this.closedByClient ??= 1006;
    this.finish(1006, "");
  }

  // ---- server side --------------------------------------------------------
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  deliver(msg: Json): void {
    if (this.readyState !== 1) return;
    this.onmessage?.({ data: JSON.stringify(msg) });
  }

  /** The server closes the connection with `code`. */
  serverClose(code: number, reason = ""): void {
    this.finish(code, reason);
  }

  finish(code: number, reason: string): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.server.onClosed(this);
    this.onclose?.({ code, reason });
  }
}

/**
 * The fake: accepts connections (unless `down`), answers hello/subscribe/heartbeat/
 * leave/ping like the real server, with its own clock (`serverNow`). Tests can turn
 * off automatic answers (`ackLeaves`, `autoOpen`, ...) and inspect `log`.
 */
export class FakeServer {
  readonly sockets: FakeSocket[] = [];
  readonly log: Json[] = [];
  readonly rooms = new Map<string, Map<number, FakeEntry>>();
  private readonly subscribers = new Map<string, Set<FakeSocket>>();
  private nextId = 1;
  /** Server clock. */
  serverNow: () => number = () => Date.now();
  /** Refuse connections (the socket closes with 1006 without opening). */
  down = false;
  ackLeaves = true;
  answerPings = true;
  /** Extra delay before each answer, to emulate a round trip. */
  latencyMs = 0;
  /** Called for every message a client sends, before the default handling; return true to skip it. */
  intercept: ((sock: FakeSocket, msg: Json) => boolean) | undefined;
  readonly hellos: Json[] = [];
  /** Every `auth` message received, with the socket it came on. */
  readonly auths: { sock: FakeSocket; msg: Json }[] = [];
  /** Answer `auth` with an error of this code instead of an ack. */
  authError: string | null = null;

  readonly WebSocket: WebSocketConstructor;

  constructor() {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const server = this;
    this.WebSocket = class extends FakeSocket {
      constructor(url: string) {
        super(url, server);
      }
    } as unknown as WebSocketConstructor;
  }

  get open(): FakeSocket[] {
    return this.sockets.filter((s) => s.readyState === 1);
  }

  get last(): FakeSocket | undefined {
    return this.sockets[this.sockets.length - 1];
  }

  onSocket(sock: FakeSocket): void {
    if (sock.readyState !== 0) return;
    if (this.down) {
      sock.finish(1006, "refused");
      return;
    }
    sock.open();
  }

  onClosed(sock: FakeSocket): void {
    for (const subs of this.subscribers.values()) subs.delete(sock);
  }

  private reply(sock: FakeSocket, msg: Json): void {
    if (this.latencyMs > 0) setTimeout(() => sock.deliver(msg), this.latencyMs);
    else sock.deliver(msg);
  }

  live(room: string): FakeEntry[] {
    const now = this.serverNow();
    const entries = this.rooms.get(room);
    if (!entries) return [];
    return [...entries.values()].filter((e) => now <= e.expiresAtMs);
  }

  /** Sends `changes` to every subscriber of the room. */
  broadcast(room: string, changes: Json[]): void {
    for (const s of this.subscribers.get(room) ?? []) {
      this.reply(s, { type: "changes", room, serverTimeMs: this.serverNow(), changes });
    }
  }

  /** Upserts an entry as if another client heartbeated. */
  put(room: string, e: FakeEntry): void {
    let entries = this.rooms.get(room);
    if (!entries) this.rooms.set(room, (entries = new Map()));
    entries.set(e.clientId, e);
    this.broadcast(room, [{ op: "upsert", ...e }]);
  }

  handle(sock: FakeSocket, msg: Json): void {
    if (sock.readyState !== 1) return;
    if (this.intercept?.(sock, msg)) return;
    const ref = msg.ref;
    const ack = (extra: Json = {}) => {
      if (typeof ref === "number") this.reply(sock, { type: "ack", ref, ...extra });
    };
    switch (msg.type) {
      case "hello": {
        this.hellos.push(msg);
        let id: number | undefined;
        if (typeof msg.resume === "string" && msg.resume.startsWith("tok-")) id = Number(msg.resume.slice(4));
        if (id === undefined) id = this.nextId++;
        for (const other of this.open) if (other !== sock && other.clientId === id) other.serverClose(4001, "replaced");
        sock.clientId = id;
        this.reply(sock, {
          type: "welcome",
          clientId: id,
          resumeToken: `tok-${id}`,
          resumed: typeof msg.resume === "string",
          serverTimeMs: this.serverNow(),
          limits: { maxMessageBytes: 65536, maxDataBytes: 4096, maxTtlMs: 3600000, maxRoomsPerConnection: 128, maxEntriesPerRoom: 10000, heartbeatsPerSecond: 120, heartbeatBurst: 240 },
        });
        break;
      }
      case "subscribe": {
        const room = msg.room as string;
        let subs = this.subscribers.get(room);
        if (!subs) this.subscribers.set(room, (subs = new Set()));
        subs.add(sock);
        this.reply(sock, { type: "snapshot", room, serverTimeMs: this.serverNow(), entries: this.live(room) });
        ack();
        break;
      }
      case "heartbeat": {
        const room = msg.room as string;
        const e: FakeEntry = { clientId: sock.clientId!, data: msg.data ?? null, expiresAtMs: this.serverNow() + (msg.ttlMs as number) };
        this.put(room, e);
        ack({ expiresAtMs: e.expiresAtMs });
        break;
      }
      case "leave": {
        const room = msg.room as string;
        if (this.rooms.get(room)?.delete(sock.clientId!)) this.broadcast(room, [{ op: "leave", clientId: sock.clientId }]);
        if (this.ackLeaves) ack();
        break;
      }
      case "auth":
        this.auths.push({ sock, msg });
        if (this.authError !== null) {
          this.reply(sock, { type: "error", code: this.authError, message: "the token is not valid", ...(typeof ref === "number" ? { ref } : {}) });
        } else {
          ack();
        }
        break;
      case "ping":
        if (this.answerPings) this.reply(sock, { type: "pong", ref, serverTimeMs: this.serverNow() });
        break;
      default:
        this.reply(sock, { type: "error", code: "bad_request", message: "unknown type", ...(typeof ref === "number" ? { ref } : {}) });
    }
  }
}
