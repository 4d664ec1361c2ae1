// client.sample(room, { limit }, fn) against a real server: the oldest entries, kept
// stable, and the counts.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Sample } from "rollcall-client";
import { harness } from "../helpers/harness.js";
import { waitFor } from "../helpers/util.js";

const h = harness();

describe("sample", () => {
  it("holds the oldest entries, oldest first, replaces one that goes by the next oldest, and counts the room", async () => {
    const room = "pr:stage";
    const people = ["ada", "bob", "cy", "dee"].map((user) => ({ user, client: h.client({ user }) }));
    // One after the other (each seen by an observer before the next), so the join
    // order is known.
    const observer = h.client().presence(room);
    await observer.synced();
    for (const [i, p] of people.entries()) {
      p.client.presence(room).heartbeat({ name: p.user }, 30_000);
      await waitFor(() => observer.value().size === i + 1, `${p.user} joined`);
    }
    const viewer = h.client();
    const seen: Sample[] = [];
    const stop = viewer.sample(room, { limit: 2 }, (s) => seen.push(s));
    await waitFor(() => seen.length >= 1, "the first sample");
    const first = seen[0]!;
    assert.deepEqual(first.entries.map((e) => e.userId), ["ada", "bob"]);
    assert.deepEqual(first.entries.map((e) => e.data), [{ name: "ada" }, { name: "bob" }]);
    assert.equal(first.entryCount, 4);
    assert.equal(first.userCount, 4);
    assert.ok(first.entries.every((e) => e.expiresAtMs > Date.now()));

    // The oldest leaves: cy takes her place, last; then the counts follow.
    await people[0]!.client.close();
    await waitFor(() => seen.at(-1)?.entries.map((e) => e.userId).join() === "bob,cy", "cy joins the sample");
    await waitFor(() => seen.at(-1)?.entryCount === 3, "the counts follow");
    assert.equal(seen.at(-1)!.userCount, 3);

    // One way per room and client; bad limits are refused before anything is sent.
    assert.throws(() => viewer.presence(room), /sample/);
    assert.throws(() => viewer.sample(room, { limit: 3 }, () => {}), /another limit/);
    assert.throws(() => viewer.sample("pr:other", { limit: 0 }, () => {}), RangeError);
    assert.throws(() => viewer.sample("pr:other", { limit: 1001 }, () => {}), RangeError);
    assert.throws(() => viewer.sample("pr:other", { limit: 2, intervalMs: -1 }, () => {}), RangeError);
    stop();
  });
});
