// Throttled heartbeats against the real server: a pointermove-like stream never hits
// the server's rate limit (120 heartbeats/s, burst 240) and the last position always
// arrives; without throttling the same burst is refused as rate_limited.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import WebSocket from "ws";
import type { WebSocketConstructor } from "rollcall-client";
import { harness } from "../helpers/harness.js";
import { collectErrors, sleep, waitFor } from "../helpers/util.js";

const h = harness({ durability: "memory" });

/** `ws`, counting the heartbeats sent through it. */
function countingWebSocket(counter: { heartbeats: number }): WebSocketConstructor {
  return class extends WebSocket {
    override send(data: string): void {
      if (data.startsWith('{"type":"heartbeat"')) counter.heartbeats++;
      super.send(data);
    }
  } as unknown as WebSocketConstructor;
}

describe("throttled heartbeats (real server)", () => {
  it("a burst of 400 heartbeats: 2 sent, no rate_limited, the last data wins; unthrottled, the same burst is refused", async () => {
    const counter = { heartbeats: 0 };
    const c = h.client({ WebSocket: countingWebSocket(counter) });
    const errors = collectErrors(c);
    const watcher = h.client();
    const seen = watcher.presence("pr:burst");
    const room = c.presence("pr:burst");
    await Promise.all([c.waitForConnected(), watcher.waitForConnected()]);
    for (let i = 0; i < 400; i++) room.heartbeat({ x: i }, 10_000);
    await waitFor(() => (seen.value().get(c.clientId!)?.data as { x: number } | undefined)?.x === 399, "the last position arrives");
    assert.equal(counter.heartbeats, 2);
    assert.deepEqual(errors, []);
    const onServer = await h.server.roomEntries("pr:burst");
    assert.deepEqual(onServer.find((e) => e.clientId === c.clientId)?.data, { x: 399 });

    // The control: heartbeatThrottleMs 0 sends all 400, beyond the server's burst.
    const raw = h.client({ heartbeatThrottleMs: 0 });
    const rawErrors = collectErrors(raw);
    const rawRoom = raw.presence("pr:burst-raw");
    await raw.waitForConnected();
    for (let i = 0; i < 400; i++) rawRoom.heartbeat({ x: i }, 10_000);
    await waitFor(() => rawErrors.some((e) => e.code === "rate_limited"), "rate_limited without throttling");
  });

  it("a pointermove-like stream (every 2 ms for 300 calls) sends at most one heartbeat per 50 ms, without errors, and the last one", async () => {
    const counter = { heartbeats: 0 };
    const c = h.client({ WebSocket: countingWebSocket(counter) });
    const errors = collectErrors(c);
    const room = c.presence("pr:stream");
    await c.waitForConnected();
    const started = performance.now();
    let i = 0;
    await new Promise<void>((resolve) => {
      const timer = h.setInterval(() => {
        room.heartbeat({ x: i++ }, 10_000);
        if (i === 300) {
          clearInterval(timer);
          resolve();
        }
      }, 2);
    });
    const elapsed = performance.now() - started;
    await waitFor(async () => (await h.server.roomEntries("pr:stream")).some((e) => (e.data as { x: number }).x === 299), "the last position is on the server");
    const bound = Math.ceil(elapsed / 50) + 2;
    assert.ok(counter.heartbeats <= bound, `${counter.heartbeats} heartbeats for 300 calls in ${elapsed.toFixed(0)} ms (bound ${bound})`);
    assert.deepEqual(errors, []);
    console.log(`# throttle: ${counter.heartbeats} heartbeats sent for 300 calls over ${elapsed.toFixed(0)} ms`);
  });

  it("leave() right after a throttled heartbeat: the entry is gone and stays gone", async () => {
    const c = h.client({ heartbeatThrottleMs: 100 });
    const room = c.presence("pr:leave");
    await c.waitForConnected();
    room.heartbeat("first", 10_000);
    await waitFor(async () => (await h.server.roomEntries("pr:leave")).length === 1, "first on the server");
    room.heartbeat("pending", 10_000);
    room.leave();
    await waitFor(async () => (await h.server.roomEntries("pr:leave")).length === 0, "left");
    await sleep(300); // three intervals: a stale heartbeat would have come back by now
    assert.deepEqual(await h.server.roomEntries("pr:leave"), []);
  });
});
