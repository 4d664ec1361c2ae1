// Diffs, self()/others(), users() and onUsersChange, against the in-process fake server.
import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import { z } from "zod";
import { createClient, type PresenceDiff, type PresenceEntry, type PresenceUser, type RollcallClient, type UsersDiff } from "rollcall-client";
import { FakeServer } from "../helpers/fake-server.js";
import { collectErrors, sleep, waitFor } from "../helpers/util.js";

const URL = "ws://fake.invalid/ws";

const clients = new Set<RollcallClient>();
afterEach(async () => {
  await Promise.all([...clients].map((c) => c.close()));
  clients.clear();
});

async function setup(room = "r") {
  const server = new FakeServer();
  const client = createClient({ url: URL, WebSocket: server.WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 40 }, heartbeatThrottleMs: 0 });
  clients.add(client);
  const errors = collectErrors(client);
  const view = client.presence(room);
  const calls: { keys: number[]; diff: PresenceDiff }[] = [];
  view.onChange((entries, diff) => calls.push({ keys: [...entries.keys()].sort((a, b) => a - b), diff }));
  await client.waitForConnected();
  await view.synced();
  return { server, client, errors, view, calls };
}

const soon = () => Date.now() + 60_000;
const sorted = (d: PresenceDiff) => ({ joined: [...d.joined].sort(), left: [...d.left].sort(), updated: [...d.updated].sort() });

/** Lets the fake's timers (0 ms) and the view's microtask run. */
const settle = () => sleep(15);

describe("onChange diffs", () => {
  it("reports joined, updated and left client ids; a burst of changes is one call", async () => {
    const { server, calls } = await setup();
    assert.equal(calls.length, 0, "an empty first snapshot is no change");
    server.broadcast("r", [
      { op: "upsert", clientId: 10, data: { x: 1 }, expiresAtMs: soon() },
      { op: "upsert", clientId: 11, data: { x: 1 }, expiresAtMs: soon() },
    ]);
    await waitFor(() => calls.length === 1, "one call for the frame");
    assert.deepEqual(calls[0], { keys: [10, 11], diff: { joined: [10, 11], left: [], updated: [] } });

    server.broadcast("r", [
      { op: "upsert", clientId: 10, data: { x: 2 }, expiresAtMs: soon() },
      { op: "leave", clientId: 11 },
      { op: "upsert", clientId: 12, data: null, expiresAtMs: soon() },
    ]);
    await waitFor(() => calls.length === 2, "second call");
    assert.deepEqual(sorted(calls[1]!.diff), { joined: [12], left: [11], updated: [10] });
    assert.deepEqual(calls[1]!.keys, [10, 12]);

    server.broadcast("r", [{ op: "expire", clientId: 12 }]);
    await waitFor(() => calls.length === 3, "third call");
    assert.deepEqual(calls[2]!.diff, { joined: [], left: [12], updated: [] });
  });

  it("the seed's one-argument callback still works", async () => {
    const { server, view } = await setup();
    const seen: Map<number, PresenceEntry<unknown>>[] = [];
    view.onChange((entries) => {
      seen.push(entries);
    });
    server.put("r", { clientId: 5, data: "hi", expiresAtMs: soon() });
    await waitFor(() => seen.length === 1, "called");
    assert.equal(seen[0]!.get(5)!.data, "hi");
  });

  it("a refresh that only moves expiresAtMs does not call onChange; value() shows the new expiry", async () => {
    const { server, view, calls } = await setup();
    const t = soon();
    server.put("r", { clientId: 7, data: { typing: true }, expiresAtMs: t });
    await waitFor(() => calls.length === 1, "joined");
    for (let i = 1; i <= 3; i++) server.put("r", { clientId: 7, data: { typing: true }, expiresAtMs: t + i * 1000 });
    await waitFor(() => view.value().get(7)!.expiresAtMs > t + 2000, "value() has the new expiry");
    await settle();
    assert.equal(calls.length, 1, "no call for refreshes");
    // The same data with its keys in another order is the same data.
    server.put("r", { clientId: 8, data: { a: 1, b: [1, 2] }, expiresAtMs: t });
    await waitFor(() => calls.length === 2, "8 joined");
    const exp8 = view.value().get(8)!.expiresAtMs;
    server.broadcast("r", [{ op: "upsert", clientId: 8, data: { b: [1, 2], a: 1 }, expiresAtMs: t + 5000 }]);
    await waitFor(() => view.value().get(8)!.expiresAtMs > exp8, "8 refreshed");
    await settle();
    assert.equal(calls.length, 2);
    // A real change is an update.
    server.put("r", { clientId: 7, data: { typing: false }, expiresAtMs: t + 9000 });
    await waitFor(() => calls.length === 3, "update");
    assert.deepEqual(calls[2]!.diff, { joined: [], left: [], updated: [7] });
  });

  it("an identical snapshot after a reconnect calls nothing; a snapshot without an entry reports it left", async () => {
    const { server, client, calls } = await setup();
    server.put("r", { clientId: 20, data: 1, expiresAtMs: soon() });
    server.put("r", { clientId: 21, data: 2, expiresAtMs: soon() });
    await waitFor(() => calls.length >= 1 && calls.at(-1)!.keys.length === 2, "both in");
    const n = calls.length;
    server.last!.serverClose(1006);
    await waitFor(() => client.state === "connected" && server.sockets.length === 2, "reconnected");
    await waitFor(() => server.log.filter((m) => m.type === "subscribe").length === 2, "resubscribed");
    await settle();
    assert.equal(calls.length, n, "the same entries again: no call");

    server.rooms.get("r")!.delete(21);
    server.last!.serverClose(1006);
    await waitFor(() => calls.length === n + 1, "left after the second reconnect");
    assert.deepEqual(calls.at(-1)!.diff, { joined: [], left: [21], updated: [] });
  });

  it("local expiry is reported as left", async () => {
    const { server, calls } = await setup();
    server.put("r", { clientId: 30, data: 1, expiresAtMs: Date.now() + 60 });
    await waitFor(() => calls.length === 1, "joined");
    await waitFor(() => calls.length === 2, "expired locally", { timeoutMs: 2000 });
    assert.deepEqual(calls[1]!.diff, { joined: [], left: [30], updated: [] });
  });

  it("a listener added later gets diffs from what the view showed when it subscribed", async () => {
    const { server, view } = await setup();
    server.put("r", { clientId: 40, data: 1, expiresAtMs: soon() });
    await waitFor(() => view.value().has(40), "40 in");
    const late: PresenceDiff[] = [];
    view.onChange((_, d) => late.push(d));
    server.put("r", { clientId: 41, data: 1, expiresAtMs: soon() });
    await waitFor(() => late.length === 1, "late listener called");
    assert.deepEqual(late[0], { joined: [41], left: [], updated: [] });
  });

  it("one entry that fails to decode does not drop the others of the same frame (changes and snapshot)", async () => {
    const server = new FakeServer();
    const client = createClient({ url: URL, WebSocket: server.WebSocket, heartbeatThrottleMs: 0 });
    clients.add(client);
    const errors = collectErrors(client);
    const view = client.presence("typed", z.object({ x: z.number() }));
    const raw = client.presence("typed");
    const calls: PresenceDiff[] = [];
    view.onChange((_, d) => calls.push(d));
    await client.waitForConnected();
    await view.synced();
    server.broadcast("typed", [
      { op: "upsert", clientId: 1, data: { x: 1 }, expiresAtMs: soon() },
      { op: "upsert", clientId: 2, data: { x: "not a number" }, expiresAtMs: soon() },
      { op: "upsert", clientId: 3 }, // malformed: no expiresAtMs
      { op: "upsert", clientId: 4, data: { x: 4 }, expiresAtMs: soon() },
      "garbage" as never,
      null as never,
      { op: "upsert", clientId: 5, data: { x: 5 }, expiresAtMs: soon() },
    ]);
    await waitFor(() => calls.length === 1, "one call");
    assert.deepEqual(calls[0], { joined: [1, 4, 5], left: [], updated: [] });
    assert.deepEqual([...view.value().keys()].sort(), [1, 4, 5]);
    assert.deepEqual([...raw.value().keys()].sort(), [1, 2, 4, 5], "the untyped view has the bad entry");
    const failed = errors.filter((e) => e.code === "decode_failed");
    assert.equal(failed.length, 1);
    assert.equal(failed[0]!.clientId, 2);

    // The bad entry becomes good: it joins.
    server.broadcast("typed", [{ op: "upsert", clientId: 2, data: { x: 2 }, expiresAtMs: soon() }]);
    await waitFor(() => calls.length === 2, "2 decodes now");
    assert.deepEqual(calls[1], { joined: [2], left: [], updated: [] });

    // A snapshot with a bad entry and a malformed one keeps the good ones.
    server.rooms.set(
      "typed",
      new Map([
        [1, { clientId: 1, data: { x: 1 }, expiresAtMs: soon() }],
        [2, { clientId: 2, data: { x: [] }, expiresAtMs: soon() }],
        [6, { clientId: 6, data: { x: 6 }, expiresAtMs: soon() }],
      ]),
    );
    server.last!.serverClose(1006);
    await waitFor(() => calls.length === 3, "snapshot after reconnect");
    assert.deepEqual(sorted(calls[2]!), { joined: [6], left: [2, 4, 5], updated: [] });
    assert.deepEqual([...view.value().keys()].sort(), [1, 6]);
  });
});

describe("asynchronous schemas", () => {
  it("an update that decodes asynchronously is 'updated' (never left then joined); a refresh calls nothing", async () => {
    const server = new FakeServer();
    const client = createClient({ url: URL, WebSocket: server.WebSocket, heartbeatThrottleMs: 0 });
    clients.add(client);
    const slow = {
      "~standard": {
        version: 1 as const,
        vendor: "test",
        validate: async (v: unknown) => {
          await sleep(5);
          return typeof v === "number" ? { value: v } : { issues: [{ message: "not a number" }] };
        },
      },
    };
    const view = client.presence("async", slow);
    const diffs: PresenceDiff[] = [];
    const sizes: number[] = [];
    view.onChange((entries, d) => {
      diffs.push(d);
      sizes.push(entries.size);
    });
    await client.waitForConnected();
    await view.synced();
    server.put("async", { clientId: 1, data: 1, expiresAtMs: soon() });
    await waitFor(() => diffs.length === 1, "joined");
    server.put("async", { clientId: 1, data: 2, expiresAtMs: soon() });
    await waitFor(() => diffs.length === 2, "updated");
    const exp = view.value().get(1)!.expiresAtMs;
    server.put("async", { clientId: 1, data: 2, expiresAtMs: soon() + 1000 });
    await waitFor(() => view.value().get(1)!.expiresAtMs > exp, "refreshed");
    server.put("async", { clientId: 1, data: "bad", expiresAtMs: soon() });
    await waitFor(() => diffs.length === 3, "no longer decodes: left");
    assert.deepEqual(diffs, [
      { joined: [1], left: [], updated: [] },
      { joined: [], left: [], updated: [1] },
      { joined: [], left: [1], updated: [] },
    ]);
    assert.deepEqual(sizes, [1, 1, 0]);
  });
});

describe("self() and others()", () => {
  it("self() is this client's entry as the server echoed it; others() is everyone else", async () => {
    const { server, client, view } = await setup();
    assert.equal(view.self(), undefined);
    server.put("r", { clientId: 99, data: "them", expiresAtMs: soon() });
    view.heartbeat("me", 30_000);
    await waitFor(() => view.self() !== undefined && view.value().has(99), "both in");
    assert.equal(view.self()!.data, "me");
    assert.deepEqual([...view.others().keys()], [99]);
    assert.ok(view.value().has(client.clientId!));
    view.leave();
    assert.equal(view.self(), undefined, "leave() removes it at once");
    assert.deepEqual([...view.others().keys()], [99]);
  });
});

describe("users()", () => {
  it("groups entries by userId; an entry without one is its own user client:<id>; onUsersChange: first tab in joins, last tab out leaves", async () => {
    const { server, view } = await setup();
    const calls: { users: Map<string, PresenceUser<unknown>>; diff: UsersDiff }[] = [];
    view.onUsersChange((users, diff) => calls.push({ users, diff }));

    server.put("r", { clientId: 1, data: "alice tab 1", expiresAtMs: soon(), userId: "alice" });
    await waitFor(() => calls.length === 1, "alice joined");
    assert.deepEqual(calls[0]!.diff, { joined: ["alice"], left: [], updated: [] });

    server.put("r", { clientId: 2, data: "alice tab 2", expiresAtMs: soon(), userId: "alice" });
    await waitFor(() => calls.length === 2, "alice's second tab");
    assert.deepEqual(calls[1]!.diff, { joined: [], left: [], updated: ["alice"] });
    assert.deepEqual([...calls[1]!.users.get("alice")!.entries.keys()].sort(), [1, 2]);

    server.put("r", { clientId: 3, data: "anonymous", expiresAtMs: soon() });
    server.put("r", { clientId: 4, data: "bob", expiresAtMs: soon(), userId: "bob" });
    await waitFor(() => view.users().size === 3, "three users");
    const users = view.users();
    assert.deepEqual([...users.keys()].sort(), ["alice", "bob", "client:3"]);
    assert.equal(users.get("client:3")!.userId, "client:3");
    assert.deepEqual([...users.get("client:3")!.entries.keys()], [3]);
    assert.equal(users.get("bob")!.entries.get(4)!.data, "bob");

    const n = calls.length;
    server.put("r", { clientId: 1, data: "alice tab 1, moved", expiresAtMs: soon(), userId: "alice" });
    await waitFor(() => calls.length === n + 1, "alice updated");
    assert.deepEqual(calls.at(-1)!.diff, { joined: [], left: [], updated: ["alice"] });

    server.broadcast("r", [{ op: "leave", clientId: 1 }]);
    await waitFor(() => calls.length === n + 2, "alice's first tab out");
    assert.deepEqual(calls.at(-1)!.diff, { joined: [], left: [], updated: ["alice"] });
    server.broadcast("r", [
      { op: "leave", clientId: 2 },
      { op: "expire", clientId: 3 },
    ]);
    await waitFor(() => calls.length === n + 3, "alice's last tab out");
    assert.deepEqual(
      { ...calls.at(-1)!.diff, left: [...calls.at(-1)!.diff.left].sort() },
      { joined: [], left: ["alice", "client:3"], updated: [] },
    );
    assert.deepEqual([...view.users().keys()], ["bob"]);

    // A refresh touches no user.
    server.put("r", { clientId: 4, data: "bob", expiresAtMs: soon() + 5000, userId: "bob" });
    await waitFor(() => view.value().get(4)!.expiresAtMs > soon() + 1000, "refreshed");
    await settle();
    assert.equal(calls.length, n + 3);
  });
});
