// Failover between two real `rollcall` servers configured as cluster nodes (shared
// --resume-secret-file, distinct --node-id so their client ids never collide), without
// NATS (the client carries its own state): kill the node a client is on, and it
// continues on the other with the same client id, its entry restored there.
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, describe, it } from "node:test";
import WebSocket from "ws";
import { createClient, type ClientOptions, type ConnectionState, type RollcallClient } from "rollcall-client";
import { TestServer } from "../helpers/server.js";
import { collectErrors, waitFor } from "../helpers/util.js";

const dir = mkdtempSync(join(tmpdir(), "rollcall-failover-"));
const secretFile = join(dir, "resume-secret");
writeFileSync(secretFile, randomBytes(48).toString("base64"));
after(() => rmSync(dir, { recursive: true, force: true }));

const servers: TestServer[] = [];
const clients: RollcallClient[] = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await Promise.all(servers.splice(0).map((s) => s.stop()));
});

let nextNodeId = 1;
async function node(extraArgs: string[] = []): Promise<TestServer> {
  const s = await TestServer.start({ durability: "memory", args: ["--resume-secret-file", secretFile, "--node-id", String(nextNodeId++), ...extraArgs] });
  servers.push(s);
  return s;
}

function client(url: string | string[], extra: Partial<ClientOptions> = {}): RollcallClient {
  const c = createClient({ url, WebSocket, reconnect: { initialDelayMs: 50, maxDelayMs: 500 }, ...extra });
  clients.push(c);
  return c;
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, "127.0.0.1", resolve));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

/** A ws:// URL on which nothing listens. */
async function deadUrl(): Promise<string> {
  return `ws://127.0.0.1:${await freePort()}/ws`;
}

/** `nats-server` from the PATH or where Debian puts it; undefined if not installed. */
function natsBinary(): string | undefined {
  return ["nats-server", "/usr/sbin/nats-server"].find((b) => spawnSync(b, ["--version"], { stdio: "ignore" }).status === 0);
}

let nats: ChildProcess | undefined;
afterEach(() => {
  nats?.kill("SIGKILL");
  nats = undefined;
});

/** A nats-server on a loopback port; its nats:// URL once it accepts connections. */
async function startNats(binary: string): Promise<string> {
  const port = await freePort();
  nats = spawn(binary, ["-a", "127.0.0.1", "-p", String(port)], { stdio: "ignore" });
  await waitFor(
    () =>
      new Promise<boolean>((resolve) => {
        const sock = connect(port, "127.0.0.1", () => {
          sock.destroy();
          resolve(true);
        });
        sock.on("error", () => resolve(false));
      }),
    "nats-server accepts connections",
    { timeoutMs: 20_000, intervalMs: 20 },
  );
  return `nats://127.0.0.1:${port}`;
}

describe("failover between cluster nodes", () => {
  it("kill -9 of its node: the client moves to the next URL, keeps its client id, and its entry is on the new node", async () => {
    const [n1, n2] = [await node(), await node()];
    const c = client([n1.wsUrl, n2.wsUrl]);
    const errors = collectErrors(c);
    const states: ConnectionState[] = [];
    c.onStateChange((s) => states.push(s));
    const room = c.presence("pr:failover");
    await c.waitForConnected();
    assert.equal(c.url, n1.wsUrl);
    const id = c.clientId!;
    room.track({ who: "c" }, 20_000);
    await waitFor(async () => (await n1.roomEntries("pr:failover")).some((e) => e.clientId === id), "entry on node 1");

    // A client of node 2 watches the room there.
    const watcher = client(n2.wsUrl);
    const seen = watcher.presence("pr:failover");
    await watcher.waitForConnected();
    await seen.synced();
    assert.equal(seen.value().has(id), false, "node 2 does not know it yet (no NATS)");

    await n1.kill9();
    await waitFor(() => c.state === "connected" && c.url === n2.wsUrl, "connected to node 2", { timeoutMs: 10_000 });
    assert.equal(c.clientId, id, "same client id on node 2");
    await waitFor(async () => (await n2.roomEntries("pr:failover")).some((e) => e.clientId === id), "entry on node 2");
    await waitFor(() => (seen.value().get(id)?.data as { who?: string } | undefined)?.who === "c", "node 2's client sees it");
    // Re-subscribed on node 2: its view follows node 2's changes.
    const other = watcher.clientId!;
    seen.heartbeat("watcher", 20_000);
    await waitFor(() => room.value().has(other), "the failed-over client sees node 2's entries");
    assert.deepEqual(states, ["connected", "reconnecting", "connected"]);
    assert.deepEqual(
      errors.map((e) => e.code),
      [],
      "a shared resume secret: no invalid_resume",
    );
  });

  it("a first URL that is down at start: the client connects to the next one", async () => {
    const n2 = await node();
    const c = client([await deadUrl(), n2.wsUrl]);
    await c.waitForConnected();
    assert.equal(c.url, n2.wsUrl);
    c.presence("pr:start").heartbeat("here", 20_000);
    await waitFor(async () => (await n2.roomEntries("pr:start")).some((e) => e.clientId === c.clientId), "entry on node 2");
  });

  it("round robin: back to the first node when the second dies, same client id throughout", async () => {
    const [n1, n2] = [await node(), await node()];
    const c = client([n1.wsUrl, n2.wsUrl]);
    await c.waitForConnected();
    const id = c.clientId!;
    c.presence("pr:rr").track("x", 20_000);
    await n1.terminate(); // graceful: close 1001
    await waitFor(() => c.state === "connected" && c.url === n2.wsUrl, "on node 2", { timeoutMs: 10_000 });
    await n1.restart();
    await n2.kill9();
    await waitFor(() => c.state === "connected" && c.url === n1.wsUrl, "back on node 1", { timeoutMs: 10_000 });
    assert.equal(c.clientId, id);
    await waitFor(async () => (await n1.roomEntries("pr:rr")).some((e) => e.clientId === id), "entry on node 1 again");
  });

  const natsBin = natsBinary();
  it(
    "a real cluster (NATS): a client of the other node never sees the failed-over client leave or appear twice",
    { skip: natsBin === undefined && !process.env.CI ? "nats-server is not installed (apt-get install nats-server)" : false },
    async () => {
      assert.ok(natsBin, "nats-server is not installed (apt-get install nats-server)");
      const natsUrl = await startNats(natsBin);
      const [n1, n2] = [await node(["--nats", natsUrl]), await node(["--nats", natsUrl])];
      for (const n of [n1, n2]) {
        await waitFor(async () => ((await (await fetch(`${n.httpUrl}/healthz`)).json()) as { cluster?: string }).cluster === "connected", "cluster connected", {
          timeoutMs: 20_000,
          intervalMs: 20,
        });
      }
      const c = client([n1.wsUrl, n2.wsUrl]);
      const room = c.presence("pr:cluster");
      await c.waitForConnected();
      const id = c.clientId!;
      room.track({ v: 1 }, 20_000);

      const watcher = client(n2.wsUrl);
      const seen = watcher.presence("pr:cluster");
      const shown: number[][] = [];
      const left: number[] = [];
      seen.onChange((entries, diff) => {
        shown.push([...entries.keys()]);
        left.push(...diff.left);
      });
      await waitFor(() => seen.value().has(id), "node 2's client sees c through NATS", { timeoutMs: 10_000 });

      await n1.kill9();
      await waitFor(() => c.state === "connected" && c.url === n2.wsUrl, "c failed over to node 2", { timeoutMs: 10_000 });
      assert.equal(c.clientId, id);
      room.heartbeat({ v: 2 }, 20_000);
      await waitFor(() => (seen.value().get(id)?.data as { v?: number } | undefined)?.v === 2, "c's new data through node 2");
      assert.deepEqual(left, [], "c never left");
      for (const keys of shown) assert.deepEqual(keys, [id], `only c, once: ${JSON.stringify(shown)}`);
    },
  );
});
