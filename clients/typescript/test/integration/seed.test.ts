// The seed's examples (shared/product/seed-presence.md), verbatim, against a real
// server. Each example block is pasted unchanged between the `--- seed ---` marks;
// the test around it only supplies `client = createClient({ url })`, a
// `renderCursor`, and captures `console.log` / `setInterval`.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Schema } from "effect";
import { createClient, type RollcallClient } from "rollcall-client";
import { harness } from "../helpers/harness.js";
import { collectErrors, waitFor } from "../helpers/util.js";

const h = harness();

/** `console` for the verbatim blocks: records what they log. */
function capture() {
  const logs: unknown[][] = [];
  return { logs, console: { log: (...args: unknown[]) => logs.push(args) } };
}

describe("seed examples, verbatim", () => {
  it("usage without schema: heartbeat, value(), onChange iteration, leave()", async () => {
    const url = h.server.wsUrl;
    // As written in the seed: no WebSocket option (Node 20 falls back to the ws package).
    const client = h.adopt(createClient({ url }));
    const errors = collectErrors(client);
    const observer = h.client();
    const seen = observer.presence("pr:room-123");
    const { logs, console } = capture();

    // --- seed ---
    const room = client.presence("pr:room-123");
    // Announce presence (data: any, ttl in ms)
    room.heartbeat({ status: "online" }, 30_000);
    // --- seed ---

    await waitFor(() => client.clientId !== undefined && seen.value().get(client.clientId!), "the observer sees the heartbeat");
    assert.deepEqual(seen.value().get(client.clientId!)!.data, { status: "online" });
    await waitFor(() => room.value().size === 1, "own entry in value()");

    // --- seed ---
    // Read current entries
    console.log(room.value()); // Map<clientId, { data: unknown; expiresAtMs: number }>
    // --- seed ---

    const logged = logs[0]![0] as Map<number, { data: unknown; expiresAtMs: number }>;
    assert.ok(logged instanceof Map);
    const mine = logged.get(client.clientId!)!;
    assert.deepEqual(mine.data, { status: "online" });
    assert.ok(Math.abs(mine.expiresAtMs - (Date.now() + 30_000)) < 2_000, `expiresAtMs ${mine.expiresAtMs}`);

    // --- seed ---
    // Subscribe
    room.onChange(entries => {
    for (const [clientId, entry] of entries) {
    console.log(clientId, entry.data);
    }
    });
    // --- seed ---

    seen.heartbeat({ status: "away" }, 30_000);
    await waitFor(() => logs.some(([id, data]) => id === observer.clientId && (data as { status?: string })?.status === "away"), "onChange logs the other client");
    assert.ok(logs.some(([id]) => id === client.clientId), "onChange lists every live entry, own included");

    // --- seed ---
    // Leave
    room.leave();
    // --- seed ---

    assert.equal(room.value().has(client.clientId!), false, "leave() removes the own entry at once");
    await waitFor(() => !seen.value().has(client.clientId!), "the observer sees the leave");
    assert.equal((await h.server.roomEntries("pr:room-123")).some((e) => e.clientId === client.clientId), false);
    assert.deepEqual(errors, []);
  });

  it("usage with schema: the Effect Cursor", async () => {
    const url = h.server.wsUrl;
    const client = h.adopt(createClient({ url }));
    const errors = collectErrors(client);
    const other = h.client();
    const rendered = new Map<number, { x: number; y: number }>();
    const renderCursor = (clientId: number, x: number, y: number) => rendered.set(clientId, { x, y });

    // --- seed ---
    const Cursor = Schema.Struct({
    x: Schema.Number,
    y: Schema.Number,
    });
    const cursors = client.presence("pr:cursors", Cursor);
    cursors.heartbeat({ x: 120, y: 340 }, 5_000);
    cursors.onChange(entries => {
    for (const [clientId, entry] of entries) {
    // entry.data: { x: number; y: number }
    renderCursor(clientId, entry.data.x, entry.data.y);
    }
    });
    // --- seed ---

    await waitFor(() => client.clientId !== undefined && rendered.get(client.clientId!), "own cursor rendered");
    assert.deepEqual(rendered.get(client.clientId!), { x: 120, y: 340 });
    other.presence("pr:cursors", Cursor).heartbeat({ x: 1, y: 2 }, 5_000);
    await waitFor(() => other.clientId !== undefined && rendered.get(other.clientId!), "other cursor rendered");
    assert.deepEqual(rendered.get(other.clientId!), { x: 1, y: 2 });
    assert.deepEqual(errors, []);
  });

  it("the reconnect pattern: waitForConnected().then(heartbeat) + setInterval, across a server restart", async () => {
    const url = h.server.wsUrl;
    const client: RollcallClient = h.adopt(createClient({ url, reconnect: { initialDelayMs: 50, maxDelayMs: 500 } }));
    const errors = collectErrors(client);
    const setInterval = (fn: () => void, ms: number) => h.setInterval(fn, ms);

    // --- seed ---
    const room = client.presence("pr:room-123");
    client.waitForConnected().then(() => {
    room.heartbeat({ status: "online" }, 30_000);
    });
    // And refresh periodically
    setInterval(() => room.heartbeat({ status: "online" }, 30_000), 10_000);
    // --- seed ---

    await waitFor(() => client.clientId !== undefined && room.value().has(client.clientId!), "own entry");
    const id = client.clientId!;
    // Make sure the heartbeat is durable before the crash: the REST heartbeat is
    // answered once durable, and the log is flushed in order.
    await h.server.durableBarrier();
    await h.server.kill9();
    await h.server.restart();
    const fresh = h.client();
    const view = fresh.presence("pr:room-123");
    await waitFor(() => view.value().has(id), "a new client sees the entry after the restart");
    await waitFor(() => client.state === "connected", "the seed's client reconnected by itself", { timeoutMs: 10_000 });
    assert.equal(client.clientId, id, "same client id after the restart");
    assert.deepEqual([...view.value().keys()].filter((k) => k !== fresh.clientId), [id]);
    assert.deepEqual(errors, []);
  });
});
