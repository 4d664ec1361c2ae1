// Token expiry: when a token function's token is renewed on the same connection.

/**
 * The `exp` claim of a JWT, in ms since the epoch; `undefined` if the token is not a
 * JWT or has no numeric `exp`. The signature is not checked: this only schedules the
 * renewal, the server verifies.
 */
export function jwtExpiryMs(token: string): number | undefined {
  const parts = token.split(".");
  if (parts.length < 2 || !parts[1]) return undefined;
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    const json = new TextDecoder().decode(Uint8Array.from(atob(padded), (c) => c.charCodeAt(0)));
    const payload: unknown = JSON.parse(json);
    if (typeof payload !== "object" || payload === null) return undefined;
    const exp = (payload as { exp?: unknown }).exp;
    return typeof exp === "number" && Number.isFinite(exp) ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * How long after now to renew a token that expires in `remainingMs`: at 80% of the
 * remaining lifetime or 30 s before expiry, whichever is earlier, but never before
 * half of it (so that short-lived tokens do not renew in a loop).
 */
export function renewalDelayMs(remainingMs: number): number {
  return Math.max(Math.min(0.8 * remainingMs, remainingMs - 30_000), 0.5 * remainingMs);
}
