// A client whose clock is off by minutes still expires entries at the right moment.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { harness } from "../helpers/harness.js";
import { waitFor } from "../helpers/util.js";

const h = harness();

describe("clock skew", () => {
  for (const skewMs of [5 * 60_000, -5 * 60_000]) {
    it(`local clock off by ${skewMs > 0 ? "+" : ""}${skewMs / 60_000} min`, async () => {
      const now = () => Date.now() + skewMs;
      const sender = h.client();
      const skewed = h.client({ now });
      const view = skewed.presence("pr:skew");
      const removed: number[] = [];
      view.onChange((m) => {
        if (sender.clientId !== undefined && !m.has(sender.clientId)) removed.push(Date.now());
      });
      await Promise.all([sender.waitForConnected(), skewed.waitForConnected()]);
      await waitFor(() => Math.abs(skewed.clockOffsetMs + skewMs) < 100, `offset estimate (${skewed.clockOffsetMs})`);
      sender.presence("pr:skew").heartbeat({ hi: 1 }, 800);
      const entry = await waitFor(() => view.value().get(sender.clientId!), "the skewed client sees the entry");
      // The server's clock is this machine's clock: the real expiry is entry.expiresAtMs - skew.
      const realExpiry = entry.expiresAtMs - skewMs;
      assert.ok(Math.abs(realExpiry - (Date.now() + 800)) < 300, `expiresAtMs is in the local clock (real expiry in ${realExpiry - Date.now()} ms)`);
      assert.ok(now() <= entry.expiresAtMs, "live by the local clock");
      await waitFor(() => removed.length > 0, "expired locally", { timeoutMs: 3000 });
      const late = removed[0]! - realExpiry;
      assert.ok(late >= -50 && late < 400, `removed ${late} ms after the real expiry`);
    });
  }
});
