// TTL semantics against a real server: expiry, track(), leave().
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { harness } from "../helpers/harness.js";
import { collectErrors, sleep, waitFor } from "../helpers/util.js";

const h = harness();

describe("TTL", () => {
  it("an entry without heartbeats disappears after its TTL and onChange fires", async () => {
    const a = h.client();
    const b = h.client();
    const errors = collectErrors(a);
    const ra = a.presence("pr:ttl");
    const rb = b.presence("pr:ttl");
    const sizes: number[] = [];
    rb.onChange((m) => sizes.push(m.size));
    await Promise.all([a.waitForConnected(), b.waitForConnected()]);
    ra.heartbeat({ hi: 1 }, 600);
    const entry = await waitFor(() => rb.value().get(a.clientId!), "b sees a's entry");
    const sentAt = Date.now();
    assert.ok(entry.expiresAtMs > sentAt && entry.expiresAtMs <= sentAt + 650, `expiresAtMs ${entry.expiresAtMs - sentAt} ms ahead`);
    // onChange fires with the empty Map when the TTL runs out (the local expiry timer).
    await waitFor(() => sizes.at(-1) === 0, "onChange with the entry gone", { timeoutMs: 3000 });
    const gone = Date.now();
    assert.equal(rb.value().has(a.clientId!), false);
    assert.ok(gone >= entry.expiresAtMs - 30, `gone ${entry.expiresAtMs - gone} ms before its expiresAtMs`);
    assert.ok(gone <= entry.expiresAtMs + 500, `gone ${gone - entry.expiresAtMs} ms after its expiresAtMs`);
    // The sender's own view expires it too (its clock offset estimate may differ by a few ms).
    await waitFor(() => ra.value().size === 0, "the sender's own view expires it", { timeoutMs: 200 });
    await waitFor(async () => (await h.server.roomEntries("pr:ttl")).length === 0, "the server forgot it");
    assert.deepEqual(errors, []);
  });

  it("track() keeps the entry alive past its TTL until leave()", async () => {
    const a = h.client();
    const b = h.client();
    const ra = a.presence("pr:track");
    const rb = b.presence("pr:track");
    const removals: number[] = [];
    rb.onChange((m) => {
      if (a.clientId !== undefined && !m.has(a.clientId)) removals.push(Date.now());
    });
    await Promise.all([a.waitForConnected(), b.waitForConnected()]);
    ra.track({ typing: true }, 600);
    await waitFor(() => rb.value().has(a.clientId!), "b sees a");
    const t0 = Date.now();
    while (Date.now() - t0 < 1500) {
      assert.ok(rb.value().has(a.clientId!), `still there after ${Date.now() - t0} ms`);
      await sleep(50); // sampling the state over time on purpose
    }
    assert.deepEqual(removals, [], "never flickered");
    ra.leave();
    assert.equal(ra.value().has(a.clientId!), false, "leave() removes the own entry at once");
    await waitFor(() => !rb.value().has(a.clientId!), "b sees the leave", { timeoutMs: 1000 });
    // and it stays gone (the track loop stopped)
    await sleep(600);
    assert.equal(rb.value().has(a.clientId!), false);
  });

  it("leave() removes the entry at once for everyone", async () => {
    const a = h.client();
    const b = h.client();
    const ra = a.presence("pr:leave");
    const rb = b.presence("pr:leave");
    await Promise.all([a.waitForConnected(), b.waitForConnected()]);
    ra.heartbeat("here", 60_000);
    await waitFor(() => rb.value().has(a.clientId!), "b sees a");
    const t0 = Date.now();
    ra.leave();
    await waitFor(() => !rb.value().has(a.clientId!), "b sees the leave");
    assert.ok(Date.now() - t0 < 1000, `took ${Date.now() - t0} ms`);
    assert.deepEqual(await h.server.roomEntries("pr:leave"), []);
  });

  it("a server error reaches onError (invalid room name from a raw request is refused locally)", async () => {
    const a = h.client();
    const errors = collectErrors(a);
    await a.waitForConnected();
    const r = a.presence("pr:err");
    r.heartbeat("x".repeat(5000), 1000); // refused locally (4 KiB limit)
    assert.equal(errors[0]!.code, "data_too_large");
    assert.equal(errors[0]!.source, "local");
  });
});
