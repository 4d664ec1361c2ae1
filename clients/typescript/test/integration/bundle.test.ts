// The single-file browser bundle: no imports, and it works (here with ws standing
// in for the browser's WebSocket).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { describe, it } from "node:test";
import WebSocket from "ws";
import { harness } from "../helpers/harness.js";
import { PACKAGE_ROOT } from "../helpers/server.js";
import { waitFor } from "../helpers/util.js";

const h = harness();
const BUNDLE = join(PACKAGE_ROOT, "dist/rollcall-client.browser.js");

describe("browser bundle", () => {
  it("is one ESM file without imports", () => {
    const src = readFileSync(BUNDLE, "utf8");
    assert.doesNotMatch(src, /\bimport\s*\(/, "no dynamic import");
    assert.doesNotMatch(src, /\bimport\s*[\w{*]/, "no static import");
    assert.doesNotMatch(src, /\brequire\s*\(/, "no require");
    assert.match(src, /export\s*\{/, "ESM exports");
  });

  it("connects, heartbeats and sees the room", async () => {
    const mod = (await import(pathToFileURL(BUNDLE).href)) as typeof import("rollcall-client");
    const client = h.adopt(mod.createClient({ url: h.server.wsUrl, WebSocket }));
    const room = client.presence("pr:bundle");
    room.heartbeat({ from: "bundle" }, 10_000);
    await waitFor(() => client.clientId !== undefined && room.value().has(client.clientId), "own entry via the bundle");
    assert.deepEqual(room.value().get(client.clientId!)!.data, { from: "bundle" });
  });
});
