import type { RollcallErrorLike } from "rollcall-client";

/** Resolves after `ms`. Only for letting time pass on purpose (TTL tests), never to wait for a condition. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `cond` until it returns a truthy value (returned) or the deadline passes (throws). */
export async function waitFor<T>(
  cond: () => T | Promise<T>,
  what: string,
  { timeoutMs = 5000, intervalMs = 5 }: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await cond();
      if (v) return v as NonNullable<T>;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ""}`);
    }
    await sleep(intervalMs);
  }
}

/** Collects what a client reports through onError. */
export function collectErrors(client: { onError(fn: (e: RollcallErrorLike) => void): () => void }): RollcallErrorLike[] {
  const errors: RollcallErrorLike[] = [];
  client.onError((e) => errors.push(e));
  return errors;
}
