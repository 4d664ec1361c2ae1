// room.broadcast / room.onBroadcast against a real server.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { z } from "zod";
import type { BroadcastSender } from "rollcall-client";
import { harness } from "../helpers/harness.js";
import { collectErrors, waitFor } from "../helpers/util.js";

const h = harness();

const Reaction = z.object({ emoji: z.string() });

describe("broadcast", () => {
  it("reaches the room's other subscribers, typed by the broadcast schema, not the sender", async () => {
    const a = h.client();
    const b = h.client();
    const c = h.client();
    const errors = collectErrors(a);
    const roomA = a.presence("pr:bc", undefined, { broadcastSchema: Reaction });
    const roomB = b.presence("pr:bc", undefined, { broadcastSchema: Reaction });
    const elsewhere = c.presence("pr:bc-other");
    const gotA: string[] = [];
    const gotB: Array<{ emoji: string; from: BroadcastSender }> = [];
    const gotC: unknown[] = [];
    roomA.onBroadcast((r) => gotA.push(r.emoji));
    roomB.onBroadcast((r, from) => gotB.push({ emoji: r.emoji, from }));
    elsewhere.onBroadcast((d) => gotC.push(d));
    await Promise.all([roomA.synced(), roomB.synced(), elsewhere.synced()]);

    assert.equal(await roomA.broadcast({ emoji: "🎉" }), true);
    await waitFor(() => gotB.length === 1, "b gets the broadcast");
    assert.equal(gotB[0]!.emoji, "🎉");
    assert.equal(gotB[0]!.from.clientId, a.clientId);
    assert.equal(typeof gotB[0]!.from.serverTimeMs, "number");
    // The ack came after anything queued for a: a never got its own broadcast.
    assert.deepEqual(gotA, []);
    assert.deepEqual(gotC, []);
    // Never stored: nobody has an entry in the room.
    assert.deepEqual(await h.server.roomEntries("pr:bc"), []);

    // The schema refuses what does not match, before sending.
    const bad = { emoji: 5 } as unknown as { emoji: string };
    assert.equal(await roomA.broadcast(bad), false);
    assert.ok(errors.some((e) => e.code === "schema_mismatch" && e.room === "pr:bc"), JSON.stringify(errors));
    // Too large: refused locally.
    assert.equal(await roomA.broadcast({ emoji: "x".repeat(5_000) }), false);
    assert.ok(errors.some((e) => e.code === "data_too_large"), JSON.stringify(errors));

    // An untyped peer sending what the schema refuses: b skips it and reports it.
    const bErrors = collectErrors(b);
    const raw = c.presence("pr:bc");
    assert.equal(await raw.broadcast({ emoji: 1 }), true);
    assert.equal(await raw.broadcast({ emoji: "👍" }), true);
    await waitFor(() => gotB.length === 2, "b gets the good one");
    assert.equal(gotB[1]!.emoji, "👍");
    assert.ok(bErrors.some((e) => e.code === "decode_failed"), JSON.stringify(bErrors));
  });

  it("the server's refusals resolve false and reach onError", async () => {
    const a = h.client();
    const errors = collectErrors(a);
    const room = a.presence("pr:bc-limit");
    await room.synced();
    const results = await Promise.all(Array.from({ length: 60 }, (_, i) => room.broadcast(i)));
    const refused = results.filter((ok) => !ok).length;
    assert.ok(refused >= 10 && refused <= 30, `${refused} of 60 refused`);
    assert.ok(errors.some((e) => e.code === "rate_limited" && e.room === "pr:bc-limit"), JSON.stringify(errors));
  });
});
