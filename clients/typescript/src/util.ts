// Small helpers shared by the client and its rooms.
import { MAX_ROOM_BYTES } from "./protocol.gen.js";

/** The longest delay `setTimeout` honours (2^31 - 1 ms). */
export const MAX_TIMER_MS = 2_147_483_647;

/** A client id: a positive integer below 2^53. */
export function isClientId(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v > 0;
}

/** A clock that never goes back (ms), for measuring intervals. */
export function monotonic(): number {
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

/** `p`, or `undefined` once `ms` passed first (or when it rejects). */
export function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  return new Promise<T | undefined>((resolve) => {
    const timer = setTimeout(() => resolve(undefined), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      () => {
        clearTimeout(timer);
        resolve(undefined);
      },
    );
  });
}
