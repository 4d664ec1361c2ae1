// The wire codec: every message the SDK sends or reads is typed by the shapes in
// protocol.gen.ts, which are generated from the protocol crate's serde types, so a
// field renamed or removed there fails `npm run typecheck` here.
import type { Change, ClientMessage, Entry, ServerMessage } from "./protocol.gen.js";

/** One client message, by its `type`. */
export type ClientMessageOf<K extends ClientMessage["type"]> = Extract<ClientMessage, { type: K }>;

/** A client message that takes a `ref` (answered by `ack` or `error`), without it. */
export type ClientRequest = ClientMessage extends infer M ? (M extends unknown ? ("ref" extends keyof M ? Omit<M, "ref"> : never) : never) : never;

/**
 * A message as received: the generated shape's field names, each value still to be
 * checked (a server of another version, or a broken one, may send anything). Only the
 * tag keeps its type, so that `switch (msg[tag])` picks the variant; a value matching
 * no case falls through to `default`.
 */
export type Received<M, Tag extends keyof M = never> = M extends unknown
  ? { readonly [K in Tag]: M[K] } & { readonly [K in Exclude<keyof M, Tag>]?: unknown }
  : never;

/** A server message as received, narrowed by `switch (msg.type)`. */
export type ReceivedServerMessage = Received<ServerMessage, "type">;

/** A snapshot entry as received. */
export type ReceivedEntry = Received<Entry>;

/** A `changes` element as received, narrowed by `switch (change.op)`. */
export type ReceivedChange = Received<Change, "op">;

/** A message as it goes on the wire. */
export function encode(message: ClientMessage): string {
  return JSON.stringify(message);
}

/**
 * A heartbeat whose `data` is already JSON text: sent byte for byte as it was measured
 * against `maxDataBytes` (and as it is re-sent after a reconnect).
 */
export function encodeHeartbeat(message: Omit<ClientMessageOf<"heartbeat">, "data">, dataJson: string): string {
  const head = JSON.stringify(message);
  return `${head.slice(0, -1)},"data":${dataJson}}`;
}

/**
 * Parses one text frame: the object it holds, `undefined` for JSON that is not an
 * object (ignored, like an unknown `type`), or `null` when it is not JSON at all.
 */
export function decode(text: string): ReceivedServerMessage | undefined | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return undefined;
  return parsed as ReceivedServerMessage;
}
