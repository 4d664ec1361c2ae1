// close(): leaves every room and lets the process exit by itself.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import WebSocket from "ws";
import { harness } from "../helpers/harness.js";
import { PACKAGE_ROOT } from "../helpers/server.js";
import { waitFor } from "../helpers/util.js";

const h = harness();

describe("close()", () => {
  it("leaves every room it heartbeated in", async () => {
    const a = h.client();
    const b = h.client();
    const rooms = ["pr:c1", "pr:c2", "pr:c3"];
    const views = rooms.map((r) => b.presence(r));
    await Promise.all([a.waitForConnected(), b.waitForConnected()]);
    const idA = a.clientId!;
    a.presence("pr:c1").heartbeat(1, 60_000);
    a.presence("pr:c2").track(2, 60_000);
    a.presence("pr:c3").heartbeat(3, 60_000);
    a.presence("pr:c4"); // watched only
    await waitFor(() => views.every((v) => v.value().has(idA)), "b sees a in every room");
    await a.close();
    // The leaves were acknowledged before close() resolved.
    for (const r of rooms) assert.equal((await h.server.roomEntries(r)).some((e) => e.clientId === idA), false, r);
    await waitFor(() => views.every((v) => !v.value().has(idA)), "b sees a leave every room");
    assert.equal(a.state, "closed");
  });

  it("the server answers close() with the same code: a clean close, not 1006", async () => {
    const codes: number[] = [];
    class Recording extends WebSocket {
      constructor(url: string | URL, protocols?: string | string[]) {
        super(url, protocols);
        this.addEventListener("close", (ev) => codes.push(ev.code));
      }
    }
    const c = h.client({ WebSocket: Recording });
    await c.waitForConnected();
    c.presence("pr:clean").heartbeat(1, 60_000);
    await waitFor(async () => (await h.server.roomEntries("pr:clean")).length === 1, "the entry is live");
    await c.close();
    await waitFor(() => codes.length === 1, "the socket closed");
    assert.deepEqual(codes, [1000]);
  });

  it("a Node script that uses the SDK and closes exits by itself", async () => {
    const dir = mkdtempSync(join(tmpdir(), "rollcall-exit-"));
    const script = join(dir, "script.mjs");
    // The script lives outside the package: import it by path.
    const entry = new URL(`file://${join(PACKAGE_ROOT, "dist/index.js")}`).href;
    const ws = new URL(`file://${join(PACKAGE_ROOT, "node_modules/ws/wrapper.mjs")}`).href;
    writeFileSync(
      script,
      `
import { createClient } from ${JSON.stringify(entry)};
import WebSocket from ${JSON.stringify(ws)};
const client = createClient({ url: process.argv[2], WebSocket });
client.onError((e) => { console.error("onError", e.code, e.message); process.exitCode = 2; });
await client.waitForConnected();
const room = client.presence("pr:exit");
room.heartbeat({ status: "online" }, 30_000);
client.presence("pr:exit2").track({ typing: true }, 3_000);
room.onChange(() => {});
await new Promise((r) => setTimeout(r, 200));
await client.close();
console.log("closed", client.clientId);
`,
    );
    const t0 = Date.now();
    const child = spawn(process.execPath, [script, h.server.wsUrl], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    const code = await new Promise<number | null>((resolve) => {
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        resolve(null);
      }, 10_000);
      child.on("exit", (c) => {
        clearTimeout(timer);
        resolve(c);
      });
    });
    rmSync(dir, { recursive: true, force: true });
    assert.notEqual(code, null, `the script did not exit by itself within 10 s:\n${out}`);
    assert.equal(code, 0, out);
    assert.match(out, /closed \d+/);
    assert.ok(Date.now() - t0 < 10_000);
    assert.deepEqual(await h.server.roomEntries("pr:exit"), [], "it left the room");
    assert.deepEqual(await h.server.roomEntries("pr:exit2"), [], "it left the tracked room");
  });
});

describe("presence close()", () => {
  it("the last view's close leaves the room; another view keeps it; reopening works", async () => {
    const a = h.client();
    const b = h.client();
    await Promise.all([a.waitForConnected(), b.waitForConnected()]);
    const [idA, idB] = [a.clientId!, b.clientId!];
    const errors: string[] = [];
    b.onError((e) => errors.push(e.code));
    const watch = a.presence("pr:vc");
    const first = b.presence("pr:vc");
    const second = b.presence("pr:vc");
    first.track({ n: 1 }, 60_000);
    await waitFor(() => watch.value().has(idB), "a sees b");

    let calls = 0;
    first.onChange(() => calls++);
    first.close();
    watch.heartbeat({ a: 1 }, 60_000);
    await waitFor(() => second.value().has(idA), "the other view still updates");
    assert.equal(calls, 0, "a closed view's listeners are dropped");
    assert.equal(first.value().size, 0);
    assert.equal(watch.value().has(idB), true, "b's entry stays while a view is open");
    first.heartbeat({ n: 2 }, 60_000);
    assert.deepEqual(errors, ["presence_closed"]);

    second.close();
    await waitFor(() => !watch.value().has(idB), "a sees b leave when b's last view closes");
    assert.equal((await h.server.roomEntries("pr:vc")).some((e) => e.clientId === idB), false);

    const again = b.presence("pr:vc");
    await waitFor(() => again.value().has(idA), "a reopened room gets a snapshot");
    again.heartbeat({ n: 3 }, 60_000);
    await waitFor(() => watch.value().get(idB)?.data !== undefined, "and heartbeats again");
    await Promise.all([a.close(), b.close()]);
  });
});

describe("presence synced()", () => {
  it("resolves once value() holds the server's state", async () => {
    const a = h.client();
    const b = h.client();
    await a.waitForConnected();
    const idA = a.clientId!;
    const own = a.presence("pr:synced");
    own.heartbeat({ here: true }, 60_000);
    await own.synced();
    await waitFor(async () => (await h.server.roomEntries("pr:synced")).length === 1, "the entry is on the server");
    const late = b.presence("pr:synced");
    await late.synced();
    assert.equal(late.value().has(idA), true, "synced() waits for the snapshot");
    await late.synced(); // at once the second time
    late.close();
    await late.synced(); // and on a closed view
    await Promise.all([a.close(), b.close()]);
  });
});
