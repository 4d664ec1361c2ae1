// Token renewal against the real server started with --auth-secret-file: tokens are
// HS256 JWTs signed here with node:crypto. A token function keeps one connection
// alive past the first token's exp (the server would close it with 4004); when a
// renewal fails, the server closes at exp and the client reconnects with a fresh
// token, keeping its client id.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import type { ConnectionState } from "rollcall-client";
import { harness } from "../helpers/harness.js";
import { collectErrors, sleep, waitFor } from "../helpers/util.js";

const SECRET = "integration-secret-0123456789-abcdefghijklmnop";
const dir = mkdtempSync(join(tmpdir(), "rollcall-auth-"));
const secretFile = join(dir, "secret");
writeFileSync(secretFile, SECRET);

const h = harness({ args: ["--auth-secret-file", secretFile] });

function b64url(data: string | Buffer): string {
  return Buffer.from(data).toString("base64url");
}

/** An HS256 JWT for `sub`, readable and writable everywhere, expiring at `exp` (s). */
function hs256(sub: string, exp: number): string {
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = b64url(JSON.stringify({ sub, exp, rooms: { read: ["*"], write: ["*"] } }));
  const signature = createHmac("sha256", SECRET).update(`${header}.${payload}`).digest();
  return `${header}.${payload}.${b64url(signature)}`;
}

/** `exp` at the end of the second `seconds` from now (1 s granularity, as JWTs have). */
function expIn(seconds: number): number {
  return Math.floor(Date.now() / 1000) + seconds;
}

describe("token renewal with the real server", () => {
  it("renews on the same connection: the server does not close it at the first token's exp", async () => {
    let calls = 0;
    const firstExp = expIn(2);
    const client = h.client({ token: async () => hs256("alice", ++calls === 1 ? firstExp : expIn(3)) });
    const errors = collectErrors(client);
    const room = client.presence("pr:reauth");
    await client.waitForConnected();
    const states: ConnectionState[] = [];
    client.onStateChange((s) => states.push(s));
    const id = client.clientId!;
    room.heartbeat({ n: 1 }, 60_000);
    const watcher = h.client({ token: hs256("bob", expIn(600)) });
    const view = watcher.presence("pr:reauth");
    await waitFor(() => view.value().has(id), "the watcher sees the entry");

    // Let the first token's exp pass (plus the server's 1 ms and some slack).
    const wait = firstExp * 1000 + 1500 - Date.now();
    if (wait > 0) await sleep(wait);
    assert.ok(calls >= 2, `the token function was called ${calls} times`);
    assert.deepEqual(states, [], "the connection never dropped");
    assert.equal(client.state, "connected");
    assert.equal(client.clientId, id);
    // Still authorized on the same connection: a new heartbeat reaches the watcher.
    room.heartbeat({ n: 2 }, 60_000);
    await waitFor(() => (view.value().get(id)?.data as { n?: number } | undefined)?.n === 2, "the renewed connection still writes");
    assert.deepEqual(errors.map((e) => e.code), []);
  });

  it("a failed renewal is reported; the server closes with 4004 and the client reconnects with a new token", async () => {
    let calls = 0;
    const client = h.client({
      token: async () => {
        calls++;
        if (calls === 2) throw new Error("identity provider down");
        return hs256("alice", calls === 1 ? expIn(2) : expIn(600));
      },
    });
    const errors = collectErrors(client);
    const states: ConnectionState[] = [];
    client.onStateChange((s) => states.push(s));
    await client.waitForConnected();
    const id = client.clientId!;
    await waitFor(() => errors.some((e) => e.code === "token_error"), "the failed renewal is reported", { timeoutMs: 5000 });
    await waitFor(() => states.includes("reconnecting"), "closed at exp (4004)", { timeoutMs: 5000 });
    await waitFor(() => client.state === "connected" && calls >= 3, "reconnected with a fresh token", { timeoutMs: 5000 });
    assert.equal(client.clientId, id, "resumed its client id");
    assert.ok(!errors.some((e) => e.code === "token_expired"), "4004 with a token function is not terminal");
  });

  it("a token for another user is refused on renewal and reported", async () => {
    let calls = 0;
    const client = h.client({ token: async () => hs256(++calls === 1 ? "alice" : "mallory", expIn(calls === 1 ? 2 : 600)) });
    const errors = collectErrors(client);
    await client.waitForConnected();
    await waitFor(() => errors.some((e) => e.code === "invalid_token"), "refusal reported", { timeoutMs: 5000 });
    const refusal = errors.find((e) => e.code === "invalid_token")!;
    assert.equal(refusal.source, "server");
    assert.equal(typeof refusal.ref, "number");
  });
});
