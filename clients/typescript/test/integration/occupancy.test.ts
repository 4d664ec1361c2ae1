// client.occupancy(room, fn) against a real server: counts, not entries.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Occupancy } from "rollcall-client";
import { harness } from "../helpers/harness.js";
import { waitFor } from "../helpers/util.js";

const h = harness();

describe("occupancy", () => {
  it("delivers the room's entry and user counts (two tabs of a user count once) as they change, at most once a second", async () => {
    const watcher = h.client();
    const seen: Occupancy[] = [];
    const stop = watcher.occupancy("pr:webinar", (o) => seen.push(o));
    await waitFor(() => seen.length === 1, "the first counts");
    assert.equal(seen[0]!.room, "pr:webinar");
    assert.equal(seen[0]!.entryCount, 0);
    assert.equal(seen[0]!.userCount, 0);

    // Two tabs of one user (claimed in hello: the server runs without auth).
    const a = h.client({ user: "alice" });
    const b = h.client({ user: "alice" });
    a.presence("pr:webinar").heartbeat({ on: 1 }, 30_000);
    b.presence("pr:webinar").heartbeat({ on: 2 }, 30_000);
    await waitFor(() => seen.at(-1)?.entryCount === 2, "two entries counted");
    assert.equal(seen.at(-1)!.userCount, 1);
    for (let i = 1; i < seen.length; i++) {
      assert.ok(seen[i]!.serverTimeMs - seen[i - 1]!.serverTimeMs >= 990, JSON.stringify(seen));
    }

    // A room is watched or open with presence() on one client, not both.
    assert.throws(() => watcher.presence("pr:webinar"), /occupancy/);
    stop();
    const before = seen.length;
    await a.close();
    // Stopped: the watcher hears no more (the presence() of a third client proves the
    // server processed a's leave by then).
    const c = h.client();
    const room = c.presence("pr:webinar");
    await room.synced();
    await waitFor(() => room.value().size === 1, "a's leave is seen");
    assert.equal(seen.length, before);
  });
});
