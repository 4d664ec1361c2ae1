// Throttled heartbeats (heartbeatThrottleMs), against the in-process fake server.
import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import { createClient, type RollcallClient } from "rollcall-client";
import { FakeServer } from "../helpers/fake-server.js";
import { collectErrors, sleep, waitFor } from "../helpers/util.js";

const URL = "ws://fake.invalid/ws";

const clients = new Set<RollcallClient>();
afterEach(async () => {
  await Promise.all([...clients].map((c) => c.close()));
  clients.clear();
});

async function setup(opts: Partial<Parameters<typeof createClient>[0]> = {}) {
  const server = new FakeServer();
  const client = createClient({ url: URL, WebSocket: server.WebSocket, ...opts });
  clients.add(client);
  const errors = collectErrors(client);
  await client.waitForConnected();
  return { server, client, errors };
}

/** What the client sent for `room`, in order: heartbeat data or "leave". */
function sent(server: FakeServer, room: string): unknown[] {
  return server.log.filter((m) => m.room === room && (m.type === "heartbeat" || m.type === "leave")).map((m) => (m.type === "leave" ? "leave" : m.data));
}

describe("heartbeatThrottleMs", () => {
  it("the first heartbeat after a quiet spell goes at once, even with a long interval", async () => {
    const { server, client } = await setup({ heartbeatThrottleMs: 60_000 });
    const room = client.presence("r");
    room.heartbeat({ n: 1 }, 30_000);
    // Sent synchronously: no added latency for an occasional heartbeat.
    assert.deepEqual(sent(server, "r"), [{ n: 1 }]);
  });

  it("a burst is coalesced to the first at once and the latest at the end of the interval", async () => {
    const { server, client } = await setup({ heartbeatThrottleMs: 100 });
    const room = client.presence("r");
    for (let i = 0; i < 50; i++) room.heartbeat({ i }, 30_000);
    assert.deepEqual(sent(server, "r"), [{ i: 0 }]);
    await waitFor(() => sent(server, "r").length === 2, "trailing heartbeat");
    assert.deepEqual(sent(server, "r"), [{ i: 0 }, { i: 49 }], "latest data wins");
    await sleep(250); // two more intervals: nothing else is owed
    assert.equal(sent(server, "r").length, 2);
  });

  it("a pointermove-like stream sends at most one per interval, and the last one always", async () => {
    const { server, client } = await setup({ heartbeatThrottleMs: 50 });
    const room = client.presence("cursors");
    const started = performance.now();
    let i = 0;
    await new Promise<void>((resolve) => {
      const timer = setInterval(() => {
        room.heartbeat({ x: i++ }, 5_000);
        if (i === 100) {
          clearInterval(timer);
          resolve();
        }
      }, 2);
    });
    const elapsed = performance.now() - started;
    await waitFor(() => (sent(server, "cursors").at(-1) as { x: number }).x === 99, "the last position is sent");
    const n = sent(server, "cursors").length;
    // One leading heartbeat + at most one per 50 ms of the stream + the trailing one.
    assert.ok(n <= Math.ceil(elapsed / 50) + 2, `${n} heartbeats in ${elapsed.toFixed(0)} ms`);
    assert.ok(n < 100 / 2, `not coalesced: ${n}`);
    const xs = sent(server, "cursors").map((d) => (d as { x: number }).x);
    assert.deepEqual(
      xs,
      [...xs].sort((a, b) => a - b),
      "in order",
    );
  });

  it("leave() cancels a pending heartbeat: no stale heartbeat after the leave", async () => {
    const { server, client } = await setup({ heartbeatThrottleMs: 60 });
    const room = client.presence("r");
    room.heartbeat("first", 30_000);
    room.heartbeat("pending", 30_000);
    room.leave();
    await waitFor(() => sent(server, "r").includes("leave"), "leave sent");
    await sleep(200); // past the interval the pending heartbeat was due at
    assert.deepEqual(sent(server, "r"), ["first", "leave"]);
    // A heartbeat after the leave works again.
    room.heartbeat("again", 30_000);
    await waitFor(() => sent(server, "r").length === 3, "heartbeat after leave");
    assert.deepEqual(sent(server, "r").at(-1), "again");
  });

  it("close() with a pending heartbeat leaves without sending it", async () => {
    const { server, client } = await setup({ heartbeatThrottleMs: 60 });
    const room = client.presence("r");
    room.heartbeat("first", 30_000);
    room.heartbeat("pending", 30_000);
    await client.close();
    await sleep(150);
    assert.deepEqual(sent(server, "r"), ["first", "leave"]);
  });

  it("per view: presence(room, schema, { heartbeatThrottleMs: 0 }) sends every heartbeat; the default is 50 ms", async () => {
    const { server, client } = await setup();
    const fast = client.presence("fast", undefined, { heartbeatThrottleMs: 0 });
    const normal = client.presence("normal");
    for (let i = 0; i < 10; i++) {
      fast.heartbeat(i, 30_000);
      normal.heartbeat(i, 30_000);
    }
    assert.deepEqual(sent(server, "fast"), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.deepEqual(sent(server, "normal"), [0]);
    await waitFor(() => sent(server, "normal").length === 2, "trailing");
    assert.deepEqual(sent(server, "normal"), [0, 9]);
  });

  it("rooms are throttled independently", async () => {
    const { server, client } = await setup({ heartbeatThrottleMs: 60_000 });
    const a = client.presence("a");
    const b = client.presence("b");
    a.heartbeat(1, 30_000);
    b.heartbeat(1, 30_000);
    assert.deepEqual([sent(server, "a"), sent(server, "b")], [[1], [1]]);
  });

  it("track() keeps the latest data: a throttled heartbeat changes what the loop re-sends", async () => {
    const { server, client } = await setup({ heartbeatThrottleMs: 40 });
    const room = client.presence("r");
    room.track("tracked", 300); // re-sent about every 100 ms
    room.heartbeat("newer", 300); // within the interval: pending
    await waitFor(() => sent(server, "r").length >= 4, "the loop keeps going", { timeoutMs: 3000 });
    const s = sent(server, "r");
    assert.equal(s[0], "tracked");
    assert.ok(s.slice(1).every((d) => d === "newer"), JSON.stringify(s));
    room.leave();
    const n = sent(server, "r").length;
    await sleep(250);
    assert.equal(sent(server, "r").length, n, "nothing after leave");
    assert.equal(sent(server, "r").at(-1), "leave");
  });

  it("while disconnected, the latest heartbeat is sent once on reconnect", async () => {
    const { server, client } = await setup({ heartbeatThrottleMs: 50, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } });
    const room = client.presence("r");
    room.heartbeat(0, 30_000);
    server.down = true;
    server.last!.serverClose(1006);
    await waitFor(() => client.state === "reconnecting", "reconnecting");
    for (let i = 1; i <= 20; i++) room.heartbeat(i, 30_000);
    server.down = false;
    await waitFor(() => client.state === "connected", "reconnected");
    await waitFor(() => sent(server, "r").length === 2, "re-sent");
    await sleep(120);
    assert.deepEqual(sent(server, "r"), [0, 20]);
  });

  it("rejects a negative or non-number throttle", () => {
    assert.throws(() => createClient({ url: URL, heartbeatThrottleMs: -1 }), RangeError);
    assert.throws(() => createClient({ url: URL, heartbeatThrottleMs: Number.NaN }), RangeError);
    const server = new FakeServer();
    const client = createClient({ url: URL, WebSocket: server.WebSocket });
    clients.add(client);
    assert.throws(() => client.presence("r", undefined, { heartbeatThrottleMs: "fast" as never }), RangeError);
  });
});
