// Typed rooms against a real server: peers that send data that does not match.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Schema } from "effect";
import { z } from "zod";
import type { RollcallClient } from "rollcall-client";
import { harness } from "../helpers/harness.js";
import { collectErrors, sleep, waitFor } from "../helpers/util.js";

const h = harness();

const Cursor = Schema.Struct({ x: Schema.Number, y: Schema.Number });
const ZCursor = z.object({ x: z.number(), y: z.number() });

for (const [name, typed] of [
  ["Effect Schema", (c: RollcallClient) => c.presence("pr:cursors", Cursor)],
  ["zod", (c: RollcallClient) => c.presence("pr:cursors", ZCursor)],
] as const) {
  describe(`${name} room`, () => {
    it("a peer without schema sends { x: 'bad' }: the typed presence never sees it", async () => {
      const bad = h.client();
      const good = h.client();
      const reader = h.client();
      const errors = collectErrors(reader);
      const cursors = typed(reader);
      const everything = reader.presence("pr:cursors"); // untyped view of the same room
      const calls: Map<number, { data: { x: number; y: number } }>[] = [];
      cursors.onChange((m) => calls.push(m));
      await Promise.all([bad.waitForConnected(), good.waitForConnected(), reader.waitForConnected()]);

      bad.presence("pr:cursors").heartbeat({ x: "bad" }, 10_000);
      typed(good).heartbeat({ x: 1, y: 2 }, 10_000);
      await waitFor(() => everything.value().size === 2, "the untyped view sees both");
      await waitFor(() => cursors.value().has(good.clientId!), "the typed view sees the good one");
      await sleep(20); // let any further onChange batch run
      assert.equal(cursors.value().has(bad.clientId!), false);
      for (const m of calls) {
        assert.equal(m.has(bad.clientId!), false, "onChange never passed the bad entry");
        for (const e of m.values()) assert.equal(typeof e.data.x, "number");
      }
      const decodeErrors = errors.filter((e) => e.code === "decode_failed");
      assert.equal(decodeErrors.length, 1);
      assert.equal(decodeErrors[0]!.clientId, bad.clientId);

      // The typed client itself refuses bad data before sending.
      const goodErrors = collectErrors(good);
      typed(good).heartbeat({ x: "bad" } as unknown as { x: number; y: number }, 10_000);
      await waitFor(() => goodErrors.some((e) => e.code === "schema_mismatch"), "schema refusal");
      await sleep(50);
      assert.deepEqual(everything.value().get(good.clientId!)!.data, { x: 1, y: 2 }, "nothing was sent");
    });
  });
}
