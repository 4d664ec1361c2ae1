// Several URLs (the nodes of a cluster), against in-process fake servers: the client
// fails over round robin and resumes its client id on the next node.
import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import { createClient, type RollcallClient, type WebSocketConstructor } from "rollcall-client";
import { FakeServer } from "../helpers/fake-server.js";
import { waitFor } from "../helpers/util.js";

const clients = new Set<RollcallClient>();
afterEach(async () => {
  await Promise.all([...clients].map((c) => c.close()));
  clients.clear();
});

/** Fake nodes reached by URL (`ws://node<i>.invalid/ws`). Resume tokens are valid on every node (a shared secret). */
function cluster(n: number) {
  const nodes = Array.from({ length: n }, () => new FakeServer());
  const urls = nodes.map((_, i) => `ws://node${i}.invalid/ws`);
  const WebSocket = class {
    constructor(url: string) {
      const i = urls.indexOf(url);
      if (i < 0) throw new Error(`unknown node ${url}`);
      return new (nodes[i]!.WebSocket as unknown as new (url: string) => object)(url);
    }
  } as unknown as WebSocketConstructor;
  // Ids from different ranges per node, so a fresh id would show.
  nodes.forEach((node, i) => {
    (node as unknown as { nextId: number }).nextId = 100 * (i + 1);
  });
  return { nodes, urls, WebSocket };
}

describe("failover between URLs", () => {
  it("when its node goes down it connects to the next, resumes its client id, re-subscribes and re-heartbeats", async () => {
    const { nodes, urls, WebSocket } = cluster(2);
    const client = createClient({ url: urls, WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 40 } });
    clients.add(client);
    const room = client.presence("pr:room");
    await client.waitForConnected();
    assert.equal(nodes[0]!.sockets.length, 1, "starts with the first URL");
    const id = client.clientId!;
    room.heartbeat({ here: true }, 30_000);
    await waitFor(() => nodes[0]!.live("pr:room").length === 1, "entry on node 0");

    nodes[0]!.down = true;
    nodes[0]!.last!.serverClose(1006);
    await waitFor(() => client.state === "connected" && nodes[1]!.open.length === 1, "connected to node 1");
    assert.equal(client.clientId, id, "same client id");
    assert.equal(nodes[1]!.hellos[0]!.resume, `tok-${id}`);
    await waitFor(() => nodes[1]!.live("pr:room").some((e) => e.clientId === id), "entry on node 1");
    assert.deepEqual(nodes[1]!.live("pr:room")[0]!.data, { here: true });
    assert.ok(nodes[1]!.log.some((m) => m.type === "subscribe" && m.room === "pr:room"), "re-subscribed");
  });

  it("tries the URLs round robin while they are down, and connects to whichever comes back", async () => {
    const { nodes, urls, WebSocket } = cluster(3);
    for (const n of nodes) n.down = true;
    const client = createClient({ url: urls, WebSocket, reconnect: { initialDelayMs: 5, maxDelayMs: 10 } });
    clients.add(client);
    await waitFor(() => nodes.every((n) => n.sockets.length >= 2), "every node tried twice");
    const attempts = nodes.map((n) => n.sockets.length);
    assert.ok(Math.max(...attempts) - Math.min(...attempts) <= 1, `round robin: ${attempts}`);
    assert.equal(client.state, "connecting");
    nodes[2]!.down = false;
    await client.waitForConnected();
    assert.equal(nodes[2]!.open.length, 1);
    assert.equal(client.clientId, 300);
  });

  it("a single URL in an array works like a string; an empty array or a bad URL throws", () => {
    assert.throws(() => createClient({ url: [] }), TypeError);
    assert.throws(() => createClient({ url: ["ws://ok.invalid/ws", "ftp://x"] }), TypeError);
    const server = new FakeServer();
    const client = createClient({ url: ["http://one.invalid/ws"], WebSocket: server.WebSocket });
    clients.add(client);
    return client.waitForConnected().then(() => {
      assert.equal(server.last!.url, "ws://one.invalid/ws");
    });
  });
});
