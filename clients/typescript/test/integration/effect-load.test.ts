// An Effect schema the SDK cannot use, against a real server: it says so with its own
// error code and the line to add, sends nothing, and never calls it a mismatch.
// (This package's node_modules has effect 3 as `effect` and effect 4 as `effect4`, so
// the SDK finds no effect 4 by itself.) test/install/ runs the seed's example in
// fresh projects with each effect version, where no option is needed in Node.
import assert from "node:assert/strict";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { describe, it } from "node:test";
import WebSocket from "ws";
import { Schema } from "effect4";
import type { RollcallError } from "rollcall-client";
import { harness } from "../helpers/harness.js";
import { PACKAGE_ROOT } from "../helpers/server.js";
import { collectErrors, waitFor } from "../helpers/util.js";

const h = harness();
const Cursor = Schema.Struct({ x: Schema.Number, y: Schema.Number });
const LINE = /createClient\(\{ url, effectSchema: Schema \}\)/;

describe("an Effect schema the SDK cannot load", () => {
  it("Node, no copy of its effect: heartbeats and entries report schema_unavailable, nothing is sent", async () => {
    const client = h.client();
    const peer = h.client();
    const errors = collectErrors(client);
    const cursors = client.presence("pr:cursors", Cursor);
    const everything = peer.presence("pr:cursors");
    const seen: unknown[] = [];
    everything.onChange((m) => {
      if (client.clientId !== undefined && m.has(client.clientId)) seen.push(m.get(client.clientId)!.data);
    });
    await Promise.all([client.waitForConnected(), peer.waitForConnected()]);

    cursors.heartbeat({ x: 1, y: 2 }, 10_000);
    await waitFor(() => errors.find((e) => e.code === "schema_unavailable"), "schema_unavailable");
    peer.presence("pr:cursors").heartbeat({ x: 3, y: 4 }, 10_000);
    await waitFor(() => errors.find((e) => e.code === "schema_unavailable" && e.clientId === peer.clientId), "schema_unavailable for the peer's entry");
    // The untyped view of the same client has the peer's entry: the room's changes got here.
    const raw = client.presence("pr:cursors");
    await waitFor(() => raw.value().has(peer.clientId!), "the peer's entry");
    // The peer sees its own heartbeat, which it sent after ours would have gone out.
    await waitFor(() => everything.value().has(peer.clientId!), "the peer's own entry");
    assert.equal(cursors.value().size, 0);
    assert.deepEqual(seen, [], "the heartbeat was not sent");
    for (const e of errors) {
      assert.equal(e.code, "schema_unavailable", `${e.code}: ${e.message}`);
      assert.match(e.message, LINE);
      assert.match(e.message, /the Effect schema comes from effect 4/);
    }
  });

  it("the standalone browser bundle: presence() throws schema_unavailable naming the line; with it, it works", async () => {
    const bundle = pathToFileURL(join(PACKAGE_ROOT, "dist/rollcall-client.browser.js")).href;
    const mod = (await import(bundle)) as typeof import("rollcall-client");
    const bare = h.adopt(mod.createClient({ url: h.server.wsUrl, WebSocket }));
    assert.throws(
      () => bare.presence("pr:cursors", Cursor),
      (e: RollcallError) => e instanceof mod.RollcallError && e.code === "schema_unavailable" && LINE.test(e.message),
    );

    const client = h.adopt(mod.createClient({ url: h.server.wsUrl, WebSocket, effectSchema: Schema }));
    const errors = collectErrors(client);
    const cursors = client.presence("pr:cursors", Cursor);
    cursors.heartbeat({ x: 120, y: 340 }, 10_000);
    await waitFor(() => client.clientId !== undefined && cursors.value().has(client.clientId), "own entry, decoded");
    assert.deepEqual(cursors.value().get(client.clientId!)!.data, { x: 120, y: 340 });
    cursors.heartbeat({ x: "bad" } as unknown as { x: number; y: number }, 10_000);
    await waitFor(() => errors.find((e) => e.code === "schema_mismatch"), "a real mismatch is still one");
  });
});
