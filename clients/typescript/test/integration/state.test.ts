// Connection state, final refusals, diffs and users against the real server, started
// with --auth-secret-file (HS256 tokens signed here) and an --allowed-origin list.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import WebSocket from "ws";
import { RollcallError, type ConnectionState, type PresenceDiff, type RollcallErrorLike, type UsersDiff, type WebSocketConstructor } from "rollcall-client";
import { harness } from "../helpers/harness.js";
import { waitFor } from "../helpers/util.js";

const SECRET = "integration-secret-0123456789-abcdefghijklmnop";
const dir = mkdtempSync(join(tmpdir(), "rollcall-state-"));
const secretFile = join(dir, "secret");
writeFileSync(secretFile, SECRET);
const GOOD_ORIGIN = "https://app.example.com";

const h = harness({ args: ["--auth-secret-file", secretFile, "--allowed-origin", GOOD_ORIGIN] });

function b64url(data: string | Buffer): string {
  return Buffer.from(data).toString("base64url");
}

function jwt(sub: string, exp: number, secret = SECRET): string {
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = b64url(JSON.stringify({ sub, exp, rooms: { read: ["*"], write: ["*"] } }));
  const signature = createHmac("sha256", secret).update(`${header}.${payload}`).digest();
  return `${header}.${payload}.${b64url(signature)}`;
}

const inAnHour = () => Math.floor(Date.now() / 1000) + 3600;

/** `ws` sending a browser's `Origin` header. */
function wsWithOrigin(origin: string): WebSocketConstructor {
  return class extends WebSocket {
    constructor(url: string) {
      super(url, { origin });
    }
  } as unknown as WebSocketConstructor;
}

function rejectsWith(code: string) {
  return (e: unknown) => {
    assert.ok(e instanceof RollcallError, `not a RollcallError: ${String(e)}`);
    assert.equal((e as RollcallErrorLike).code, code);
    return true;
  };
}

describe("final refusals reject waitForConnected() (real server)", () => {
  const cases: [string, () => string | undefined, string][] = [
    ["no token", () => undefined, "unauthorized"],
    ["a forged token", () => jwt("mallory", inAnHour(), "another-secret-0123456789-abcdefghijklmnop"), "invalid_token"],
    ["an expired token", () => jwt("alice", Math.floor(Date.now() / 1000) - 120), "token_expired"],
  ];
  for (const [what, token, code] of cases) {
    it(`${what}: rejects with "${code}", state closed, no reconnect`, async () => {
      const t = token();
      const client = h.client(t === undefined ? {} : { token: t });
      client.onError(() => {});
      const states: ConnectionState[] = [];
      client.onStateChange((s) => states.push(s));
      await assert.rejects(client.waitForConnected(), rejectsWith(code));
      assert.equal(client.state, "closed");
      assert.deepEqual(states, ["closed"]);
    });
  }

  it("the seed's waitForConnected().then(heartbeat) surfaces a bad token instead of hanging", async () => {
    const client = h.client({ token: jwt("alice", inAnHour(), "not-the-server-secret-0123456789-abcdefgh") });
    client.onError(() => {});
    const room = client.presence("pr:room-123");
    const chain = client.waitForConnected().then(() => {
      room.heartbeat({ status: "online" }, 30_000);
    });
    await assert.rejects(chain, rejectsWith("invalid_token"));
  });

  it('a forbidden browser origin rejects with "forbidden_origin"; a listed one connects', async () => {
    const bad = h.client({ token: jwt("alice", inAnHour()), WebSocket: wsWithOrigin("https://evil.example") });
    bad.onError(() => {});
    await assert.rejects(bad.waitForConnected(), rejectsWith("forbidden_origin"));
    assert.equal(bad.state, "closed");
    const good = h.client({ token: jwt("alice", inAnHour()), WebSocket: wsWithOrigin(GOOD_ORIGIN) });
    await good.waitForConnected();
    assert.equal(good.state, "connected");
  });

  it("close() before the connection is up rejects with \"closed\"", async () => {
    const client = h.client({ token: jwt("alice", inAnHour()) });
    const waiting = client.waitForConnected();
    await client.close();
    await assert.rejects(waiting, rejectsWith("closed"));
  });
});

describe("diffs and users (real server)", () => {
  it("entries carry userId from the token's sub; users() groups two tabs of alice; onUsersChange: first in joins, last out leaves", async () => {
    const observer = h.client({ token: jwt("observer", inAnHour()) });
    const view = observer.presence("pr:users");
    const usersDiffs: UsersDiff[] = [];
    view.onUsersChange((_, d) => usersDiffs.push(d));
    await observer.waitForConnected();
    await view.synced();

    const tab1 = h.client({ token: jwt("alice", inAnHour()) });
    const tab2 = h.client({ token: jwt("alice", inAnHour()) });
    const bob = h.client({ token: jwt("bob", inAnHour()) });
    await Promise.all([tab1.waitForConnected(), tab2.waitForConnected(), bob.waitForConnected()]);
    tab1.presence("pr:users").heartbeat({ tab: 1 }, 30_000);
    await waitFor(() => usersDiffs.length === 1, "alice joined");
    assert.deepEqual(usersDiffs[0], { joined: ["alice"], left: [], updated: [] });
    tab2.presence("pr:users").heartbeat({ tab: 2 }, 30_000);
    bob.presence("pr:users").heartbeat({ tab: 1 }, 30_000);
    await waitFor(() => view.value().size === 3, "three entries");
    const users = view.users();
    assert.deepEqual([...users.keys()].sort(), ["alice", "bob"]);
    assert.deepEqual([...users.get("alice")!.entries.keys()].sort(), [tab1.clientId, tab2.clientId].sort());
    assert.equal(view.value().get(bob.clientId!)!.userId, "bob");

    const n = usersDiffs.length;
    await tab1.close();
    await waitFor(() => usersDiffs.length === n + 1, "first tab out");
    assert.deepEqual(usersDiffs.at(-1), { joined: [], left: [], updated: ["alice"] });
    await tab2.close();
    await waitFor(() => usersDiffs.length === n + 2, "last tab out");
    assert.deepEqual(usersDiffs.at(-1), { joined: [], left: ["alice"], updated: [] });
    assert.deepEqual([...view.users().keys()], ["bob"]);
  });

  it("track() refreshes do not call onChange; value() follows the expiry; self()/others()", async () => {
    const me = h.client({ token: jwt("me", inAnHour()) });
    const other = h.client({ token: jwt("other", inAnHour()) });
    const mine = me.presence("pr:track");
    const theirs = other.presence("pr:track");
    const diffs: PresenceDiff[] = [];
    theirs.onChange((_, d) => diffs.push(d));
    await Promise.all([me.waitForConnected(), other.waitForConnected()]);
    await theirs.synced();
    mine.track({ typing: true }, 600); // re-sent about every 200 ms
    await waitFor(() => diffs.length === 1, "joined");
    assert.deepEqual(diffs[0], { joined: [me.clientId], left: [], updated: [] });
    const seen = new Set<number>();
    await waitFor(
      () => {
        const e = theirs.value().get(me.clientId!);
        if (e) seen.add(e.expiresAtMs);
        return seen.size >= 4;
      },
      "three refreshes seen in value()",
      { timeoutMs: 5000 },
    );
    assert.equal(diffs.length, 1, `refreshes called onChange: ${JSON.stringify(diffs)}`);
    mine.heartbeat({ typing: false }, 600);
    await waitFor(() => diffs.length === 2, "update");
    assert.deepEqual(diffs[1], { joined: [], left: [], updated: [me.clientId] });
    await waitFor(() => mine.self()?.data !== undefined && (mine.self()!.data as { typing: boolean }).typing === false, "self() echoes");
    assert.deepEqual([...mine.others().keys()], []);
    assert.deepEqual([...theirs.others().keys()], [me.clientId]);
    assert.equal(theirs.self(), undefined);
    mine.leave();
    await waitFor(() => diffs.length === 3, "left");
    assert.deepEqual(diffs[2], { joined: [], left: [me.clientId], updated: [] });
  });
});
