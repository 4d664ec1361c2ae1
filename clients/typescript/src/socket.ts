// The WebSocket as the client drives it: URLs, closing sockets, the reconnect
// backoff, and the close codes after which the client gives up.
import { CLOSE, type ServerErrorCode } from "./protocol.gen.js";
import type { ReconnectOptions } from "./types.js";

/** The socket as the SDK drives it (the DOM WebSocket and `ws` both fit). */
export interface Socket {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  terminate?: () => void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** A socket constructor (`WebSocket`, or `ws`'s). */
export type SocketCtor = new (url: string) => Socket;

/** `readyState` of an open socket. */
export const OPEN = 1;

/** Error codes the server sends before closing with 4003 (docs/protocol.md). */
export const AUTH_REFUSALS = new Set<string>(["unauthorized", "invalid_token", "token_expired"] satisfies ServerErrorCode[]);

/** Close codes after which the client must not reconnect (docs/protocol.md). */
export const TERMINAL_CLOSE: Record<number, { code: string; message: string }> = {
  [CLOSE.BAD_HELLO]: { code: "bad_hello", message: "the server rejected the hello message (4000)" },
  [CLOSE.REPLACED]: { code: "replaced", message: "another connection resumed this client id (4001)" },
  [CLOSE.UNAUTHORIZED]: { code: "auth_failed", message: "authentication failed (4003)" },
  // A client bug: reconnecting would only repeat it.
  [CLOSE.PROTOCOL_ERROR]: { code: "protocol_error", message: "the server closed the connection on a protocol error (1002)" },
  [CLOSE.INVALID_PAYLOAD]: { code: "invalid_payload", message: "the server closed the connection: a message was not valid UTF-8 (1007)" },
  [CLOSE.MESSAGE_TOO_BIG]: { code: "message_too_large", message: "the server closed the connection: a message was too large (1009)" },
};

/**
 * The delay before reconnect attempt `attempt` (0 for the first): capped exponential
 * backoff (`initialDelayMs` 250 ms doubling up to `maxDelayMs` 10 s by default) with
 * "equal jitter", half fixed and half random, so clients restarting together spread out.
 */
export function backoffDelayMs(attempt: number, options: ReconnectOptions | undefined, random: () => number = Math.random): number {
  const initial = options?.initialDelayMs ?? 250;
  const max = options?.maxDelayMs ?? 10_000;
  const ceiling = Math.min(max, initial * 2 ** Math.min(attempt, 30));
  return ceiling / 2 + random() * (ceiling / 2);
}

export function detach(ws: Socket): void {
  ws.onopen = null;
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = () => {};
}

/** Closes with 1000 and waits for the close event, at most `timeoutMs`. */
export function closeSocket(ws: Socket, timeoutMs: number): Promise<void> {
  return new Promise<void>((resolve) => {
    const state = ws.readyState;
    if (state === 3 /* CLOSED */) {
      detach(ws);
      resolve();
      return;
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const done = () => {
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      detach(ws);
      resolve();
    };
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = done;
    ws.onerror = () => {};
    timer = setTimeout(() => {
      try {
        ws.terminate?.();
      } catch {
        /* ignore */
      }
      done();
    }, timeoutMs);
    try {
      if (state === 0 /* CONNECTING */ && typeof ws.terminate === "function") ws.terminate();
      else ws.close(1000, "client closed");
    } catch {
      done();
    }
  });
}

/** The HTTP status in ws's "Unexpected server response: 403" error, if that is what `ev` is. */
export function upgradeStatusOf(ev: unknown): number | undefined {
  if (typeof ev !== "object" || ev === null) return undefined;
  const e = ev as { message?: unknown; error?: { message?: unknown } };
  const message = typeof e.message === "string" ? e.message : typeof e.error?.message === "string" ? e.error.message : "";
  const m = /Unexpected server response: (\d{3})/.exec(message);
  return m ? Number(m[1]) : undefined;
}

export function normalizeUrls(url: unknown): string[] {
  if (Array.isArray(url)) {
    if (url.length === 0) throw new TypeError("createClient({ url }): the list of URLs is empty");
    return url.map((u) => normalizeUrl(u));
  }
  return [normalizeUrl(url)];
}

export function normalizeUrl(url: unknown): string {
  if (typeof url !== "string") throw new TypeError("createClient({ url }): url must be a string like ws://127.0.0.1:7700/ws, or a non-empty array of them");
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new TypeError(`createClient({ url }): not a URL: ${JSON.stringify(url)}`);
  }
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  if (u.protocol !== "ws:" && u.protocol !== "wss:") throw new TypeError(`createClient({ url }): expected a ws:// or wss:// URL, got ${JSON.stringify(url)}`);
  return u.toString();
}
