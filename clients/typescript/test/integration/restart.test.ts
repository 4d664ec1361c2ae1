// kill -9 and restart on the same data dir and port: the SDK comes back by itself.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { harness } from "../helpers/harness.js";
import { collectErrors, waitFor } from "../helpers/util.js";

const h = harness();

describe("server restart", () => {
  it("reconnects, keeps its client id, no duplicate for others, new clients see live entries at once", async () => {
    const a = h.client();
    const b = h.client();
    const aErrors = collectErrors(a);
    const ra = a.presence("pr:restart");
    const rb = b.presence("pr:restart");
    // b records every state it is shown: a must never appear twice (under two ids).
    const shown: number[][] = [];
    rb.onChange((m) => shown.push([...m.keys()].sort()));
    await Promise.all([a.waitForConnected(), b.waitForConnected()]);
    const idA = a.clientId!;
    const idB = b.clientId!;
    ra.heartbeat({ who: "a" }, 20_000);
    rb.heartbeat({ who: "b" }, 20_000);
    await waitFor(() => rb.value().has(idA) && rb.value().has(idB), "b sees both");
    await h.server.durableBarrier();

    await h.server.kill9();
    await waitFor(() => a.state === "reconnecting" && b.state === "reconnecting", "both notice");
    // While the server is down the entries stay (TTL governs): no flicker.
    assert.ok(rb.value().has(idA));
    await h.server.restart();

    // A new client sees the still-live entries in its first snapshot.
    const c = h.client();
    const rc = c.presence("pr:restart");
    const first = await new Promise<Map<number, { data: unknown }>>((resolve) => rc.onChange(resolve));
    assert.ok(first.has(idA) && first.has(idB), `first snapshot after restart: ${[...first.keys()]}`);
    assert.deepEqual(first.get(idA)!.data, { who: "a" });

    await waitFor(() => a.state === "connected" && b.state === "connected", "both reconnected by themselves", { timeoutMs: 10_000 });
    assert.equal(a.clientId, idA);
    assert.equal(b.clientId, idB);
    await waitFor(() => rc.value().size === 2 && rb.value().size === 2, "views settle");
    assert.deepEqual([...rc.value().keys()].sort(), [idA, idB].sort());
    for (const keys of shown) {
      assert.ok(keys.every((k) => k === idA || k === idB), `b was shown an unknown id: ${keys}`);
    }
    const onServer = await h.server.roomEntries("pr:restart");
    assert.deepEqual(onServer.map((e) => e.clientId).sort(), [idA, idB].sort());
    // The re-sent heartbeat restores, never extends: expiry stays ~20 s after the original.
    const ea = onServer.find((e) => e.clientId === idA)!;
    assert.ok(ea.expiresAtMs <= Date.now() + 20_000, "TTL not extended");
    assert.deepEqual(aErrors, []);

    // And the client still works after the restart.
    ra.heartbeat({ who: "a2" }, 20_000);
    await waitFor(() => (rc.value().get(idA)?.data as { who?: string } | undefined)?.who === "a2", "c sees a's new heartbeat");
  });

  it("after a graceful restart (SIGTERM, close 1001) the client reconnects with the same id", async () => {
    const a = h.client();
    const b = h.client();
    const ra = a.presence("pr:graceful");
    const rb = b.presence("pr:graceful");
    await Promise.all([a.waitForConnected(), b.waitForConnected()]);
    const idA = a.clientId!;
    ra.heartbeat("a", 20_000);
    await waitFor(() => rb.value().has(idA), "b sees a");
    await h.server.terminate();
    assert.equal(h.server.proc.exitCode, 0, "clean exit");
    await waitFor(() => a.state === "reconnecting", "a notices");
    await h.server.restart();
    await waitFor(() => a.state === "connected" && b.state === "connected", "both reconnected", { timeoutMs: 10_000 });
    assert.equal(a.clientId, idA);
    await waitFor(async () => (await h.server.roomEntries("pr:graceful")).some((e) => e.clientId === idA), "a's entry is live on the server");
    assert.deepEqual([...rb.value().keys()], [idA]);
  });
});
