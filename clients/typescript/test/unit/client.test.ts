// Unit tests of the SDK against an in-process fake server (no network, no binary).
import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import { Schema } from "effect";
import { z } from "zod";
import { createClient, RollcallError, type PresenceEntry, type RollcallClient, type RollcallErrorLike } from "rollcall-client";
import { FakeServer, type FakeSocket } from "../helpers/fake-server.js";
import { collectErrors, sleep, waitFor } from "../helpers/util.js";

const URL = "ws://fake.invalid/ws";

// Every client a test creates is closed after it, even when the test fails.
const clients = new Set<RollcallClient>();
afterEach(async () => {
  await Promise.all([...clients].map((c) => c.close()));
  clients.clear();
});
function track<C extends RollcallClient>(c: C): C {
  clients.add(c);
  return c;
}

function setup(opts: Partial<Parameters<typeof createClient>[0]> = {}) {
  const server = new FakeServer();
  const client = track(createClient({ url: URL, WebSocket: server.WebSocket, reconnect: { initialDelayMs: 20, maxDelayMs: 100 }, ...opts }));
  const errors = collectErrors(client);
  return { server, client, errors };
}

function sentOf(server: FakeServer, type: string) {
  return server.log.filter((m) => m.type === type);
}

describe("connection", () => {
  it("says hello, gets a client id, waitForConnected resolves (also when already connected)", async () => {
    const { server, client } = setup();
    assert.equal(client.state, "connecting");
    await client.waitForConnected();
    assert.equal(client.state, "connected");
    assert.equal(client.clientId, 1);
    assert.deepEqual(server.hellos[0], { type: "hello" });
    await client.waitForConnected();
    await client.close();
    assert.equal(client.state, "closed");
  });

  it("reconnects with its resume token after 1006/1001/1011/4005/4008 and keeps its client id", async () => {
    const { server, client } = setup();
    await client.waitForConnected();
    const id = client.clientId;
    for (const code of [1006, 1001, 1011, 4005, 4008]) {
      const before = server.sockets.length;
      server.last!.serverClose(code);
      await waitFor(() => server.sockets.length > before && client.state === "connected", `reconnect after ${code}`);
      assert.equal(client.clientId, id);
      assert.equal(server.hellos.at(-1)!.resume, `tok-${id}`);
    }
    await client.close();
  });

  for (const code of [4001, 4003]) {
    it(`does not reconnect after ${code}`, async () => {
      const { server, client, errors } = setup();
      await client.waitForConnected();
      server.last!.serverClose(code);
      await waitFor(() => client.state === "closed", "closed state");
      await sleep(150); // longer than the max backoff of this client
      assert.equal(server.sockets.length, 1);
      assert.equal(errors.length, 1);
      assert.equal(errors[0]!.code, code === 4001 ? "replaced" : "auth_failed");
      await client.close();
    });
  }

  it("backs off exponentially with a cap while the server is down", async () => {
    const server = new FakeServer();
    server.down = true;
    const client = track(createClient({ url: URL, WebSocket: server.WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 80 } }));
    const times: number[] = [];
    const orig = server.onSocket.bind(server);
    server.onSocket = (s) => {
      times.push(Date.now());
      orig(s);
    };
    await waitFor(() => times.length >= 7, "7 attempts", { timeoutMs: 3000 });
    const gaps = times.slice(1).map((t, i) => t - times[i]!);
    // ceilings: 10, 20, 40, 80, 80, 80; each delay is in [ceiling/2, ceiling] (+ timer slack)
    assert.ok(gaps[0]! < 40, `first gap ${gaps[0]}`);
    for (const g of gaps.slice(3)) assert.ok(g >= 35 && g < 400, `capped gap ${g} (gaps ${gaps})`);
    server.down = false;
    await client.waitForConnected();
    await client.close();
  });

  it("calls a token function again on every connect", async () => {
    let n = 0;
    const { server, client } = setup({ token: async () => `jwt-${++n}` });
    await client.waitForConnected();
    assert.equal(server.hellos[0]!.token, "jwt-1");
    server.last!.serverClose(1006);
    await waitFor(() => server.hellos.length === 2 && client.state === "connected", "reconnect");
    assert.equal(server.hellos[1]!.token, "jwt-2");
    await client.close();
  });

  it("reports a failing token function and retries", async () => {
    let n = 0;
    const { server, client, errors } = setup({
      token: () => {
        if (++n === 1) throw new Error("no token yet");
        return "jwt";
      },
    });
    await client.waitForConnected();
    assert.equal(errors[0]!.code, "token_error");
    assert.equal(server.hellos[0]!.token, "jwt");
    await client.close();
  });

  it("rejects a bad URL synchronously", () => {
    assert.throws(() => createClient({ url: "not a url", WebSocket: new FakeServer().WebSocket }), TypeError);
    assert.throws(() => createClient({ url: "ftp://x/ws", WebSocket: new FakeServer().WebSocket }), TypeError);
  });

  it("drops a connection that stops answering and reconnects", async () => {
    const { server, client } = setup({ pingIntervalMs: 20, idleTimeoutMs: 60 });
    await client.waitForConnected();
    server.answerPings = false;
    const first = server.last!;
    await waitFor(() => server.sockets.length >= 2 && first.readyState === 3, "a new connection after idle timeout");
    server.answerPings = true;
    await waitFor(() => client.state === "connected", "reconnected");
    await client.close();
  });
});

describe("presence", () => {
  it("delivers a 1,000-entry snapshot in a single onChange call", async () => {
    const { server, client } = setup();
    const now = Date.now();
    for (let i = 0; i < 1000; i++) server.rooms.set("big", (server.rooms.get("big") ?? new Map()).set(100 + i, { clientId: 100 + i, data: { i }, expiresAtMs: now + 60_000 }));
    const room = client.presence("big");
    const calls: number[] = [];
    room.onChange((m) => calls.push(m.size));
    await waitFor(() => calls.length > 0, "onChange");
    await sleep(20);
    assert.deepEqual(calls, [1000]);
    assert.equal(room.value().size, 1000);
    await client.close();
  });

  it("batches a burst of changes and always passes the live Map", async () => {
    const { server, client } = setup();
    const room = client.presence("r");
    await client.waitForConnected();
    await waitFor(() => server.open[0] && sentOf(server, "subscribe").length === 1, "subscribe");
    await sleep(5);
    const seen: Map<number, PresenceEntry<unknown>>[] = [];
    room.onChange((m) => seen.push(m));
    const sock = server.open[0]!;
    const t = Date.now() + 60_000;
    sock.deliver({ type: "changes", room: "r", serverTimeMs: Date.now(), changes: [
      { op: "upsert", clientId: 5, data: 1, expiresAtMs: t },
      { op: "upsert", clientId: 6, data: 2, expiresAtMs: t },
      { op: "upsert", clientId: 5, data: 3, expiresAtMs: t },
    ] });
    sock.deliver({ type: "changes", room: "r", serverTimeMs: Date.now(), changes: [{ op: "leave", clientId: 6 }] });
    await sleep(5);
    assert.equal(seen.length, 1);
    assert.deepEqual([...seen[0]!].map(([id, e]) => [id, e.data]), [[5, 3]]);
    await client.close();
  });

  it("shows its own heartbeat, and leave() removes it at once", async () => {
    const { server, client } = setup();
    const room = client.presence("pr:room-123");
    room.heartbeat({ status: "online" }, 30_000);
    await waitFor(() => room.value().size === 1, "own entry");
    const me = client.clientId!;
    assert.deepEqual(room.value().get(me)!.data, { status: "online" });
    room.leave();
    assert.equal(room.value().size, 0, "removed locally without waiting for the server");
    await waitFor(() => sentOf(server, "leave").length === 1, "leave sent");
    await client.close();
  });

  it("expires entries locally when their TTL runs out, even if the server stays silent", async () => {
    const { server, client } = setup();
    const room = client.presence("r");
    await client.waitForConnected();
    await waitFor(() => server.open[0] && sentOf(server, "subscribe").length === 1, "subscribe");
    await sleep(5);
    const sizes: number[] = [];
    room.onChange((m) => sizes.push(m.size));
    const t0 = Date.now();
    server.open[0]!.deliver({ type: "changes", room: "r", serverTimeMs: t0, changes: [{ op: "upsert", clientId: 9, data: null, expiresAtMs: t0 + 80 }] });
    await waitFor(() => sizes.length === 2, "added then expired", { timeoutMs: 2000 });
    const took = Date.now() - t0;
    assert.deepEqual(sizes, [1, 0]);
    assert.ok(took >= 75 && took < 400, `expired after ${took} ms`);
    assert.equal(room.value().size, 0);
    await client.close();
  });

  it("value() never returns an expired entry, even before the sweep", async () => {
    let offset = 0;
    const { server, client } = setup({ now: () => Date.now() + offset });
    const room = client.presence("r");
    await client.waitForConnected();
    server.put("r", { clientId: 9, data: 1, expiresAtMs: Date.now() + 10_000 });
    await waitFor(() => room.value().size === 1, "entry");
    offset = 20_000; // the local clock jumps: no timer has fired yet
    assert.equal(room.value().size, 0);
    await client.close();
  });

  for (const skew of [5 * 60_000, -5 * 60_000]) {
    it(`reports expiresAtMs in the local clock and expires on time with a clock off by ${skew / 60_000} min`, async () => {
      const { server, client } = setup({ now: () => Date.now() + skew });
      server.latencyMs = 2;
      const room = client.presence("r");
      await client.waitForConnected();
      await waitFor(() => Math.abs(client.clockOffsetMs + skew) < 50, "clock offset estimate");
      const removedAt: number[] = [];
      room.onChange((m) => {
        if (m.size === 0) removedAt.push(Date.now());
      });
      const serverExpiry = Date.now() + 300;
      server.put("r", { clientId: 9, data: 1, expiresAtMs: serverExpiry });
      const e = await waitFor(() => room.value().get(9), "entry");
      assert.ok(Math.abs(e.expiresAtMs - (serverExpiry + skew)) < 50, `expiresAtMs ${e.expiresAtMs} vs ${serverExpiry + skew}`);
      await waitFor(() => removedAt.length > 0, "local expiry", { timeoutMs: 3000 });
      const late = removedAt[0]! - serverExpiry;
      assert.ok(late > -50 && late < 400, `removed ${late} ms after the server's expiry`);
      await client.close();
    });
  }

  it("after a reconnect re-sends the last heartbeat with the TTL that remains, then subscribes", async () => {
    let now = 1_000_000;
    const { server, client } = setup({ now: () => now });
    server.serverNow = () => now;
    const room = client.presence("r");
    await client.waitForConnected();
    room.heartbeat({ a: 1 }, 10_000);
    await waitFor(() => sentOf(server, "heartbeat").length === 1, "heartbeat");
    now += 4_000;
    server.last!.serverClose(1006);
    await waitFor(() => server.hellos.length === 2 && client.state === "connected", "reconnected");
    await waitFor(() => sentOf(server, "subscribe").length === 2, "re-subscribe");
    const sent = server.last!.sent.map((m) => m.type);
    assert.deepEqual(sent.slice(0, 3), ["hello", "heartbeat", "subscribe"]);
    const hb = server.last!.sent[1]!;
    assert.deepEqual(hb, { type: "heartbeat", room: "r", data: { a: 1 }, ttlMs: 6_000 });
    // Another reconnect after the TTL has run out: nothing is re-sent.
    now += 7_000;
    server.last!.serverClose(1006);
    await waitFor(() => server.hellos.length === 3 && client.state === "connected", "reconnected again");
    await waitFor(() => sentOf(server, "subscribe").length === 3, "re-subscribe");
    assert.deepEqual(server.last!.sent.map((m) => m.type).filter((t) => t !== "ping"), ["hello", "subscribe"]);
    await client.close();
  });

  it("keeps a heartbeat sent while disconnected and sends it on connect", async () => {
    const { server, client } = setup();
    server.down = true;
    const room = client.presence("r");
    room.heartbeat("hi", 5_000);
    await sleep(30);
    server.down = false;
    await client.waitForConnected();
    await waitFor(() => sentOf(server, "heartbeat").length === 1, "heartbeat");
    const hb = sentOf(server, "heartbeat")[0]!;
    assert.equal(hb.data, "hi");
    assert.ok((hb.ttlMs as number) <= 5_000 && (hb.ttlMs as number) > 4_000);
    await client.close();
  });

  it("a leave() while disconnected is sent on reconnect", async () => {
    const { server, client } = setup();
    const room = client.presence("r");
    await client.waitForConnected();
    room.heartbeat(1, 60_000);
    await waitFor(() => sentOf(server, "heartbeat").length === 1, "heartbeat");
    server.down = true;
    server.last!.serverClose(1006);
    await waitFor(() => client.state === "reconnecting", "reconnecting");
    room.leave();
    server.down = false;
    await waitFor(() => client.state === "connected", "reconnected");
    await waitFor(() => sentOf(server, "leave").length === 1, "leave sent after reconnect");
    assert.equal(sentOf(server, "heartbeat").length, 1);
    await client.close();
  });

  it("track() re-heartbeats at about a third of the TTL until leave()", async () => {
    const { server, client } = setup();
    const room = client.presence("r");
    await client.waitForConnected();
    room.track({ typing: true }, 150);
    await waitFor(() => sentOf(server, "heartbeat").length >= 4, "tracking heartbeats", { timeoutMs: 2000 });
    room.heartbeat({ typing: false }, 150); // updates the tracked data
    await waitFor(() => sentOf(server, "heartbeat").at(-1)!.data !== null && (sentOf(server, "heartbeat").at(-1)!.data as { typing: boolean }).typing === false && sentOf(server, "heartbeat").filter((m) => (m.data as { typing: boolean }).typing === false).length >= 2, "tracked data updated");
    room.leave();
    const n = sentOf(server, "heartbeat").length;
    await sleep(200);
    assert.equal(sentOf(server, "heartbeat").length, n);
    await client.close();
  });

  it("a heartbeat while tracking postpones the next tracked one", async () => {
    const { server, client } = setup();
    const room = client.presence("r");
    await client.waitForConnected();
    room.track({ x: 0 }, 3_000); // a tracked heartbeat every second
    let manual = 0;
    const until = Date.now() + 1_500;
    while (Date.now() < until) {
      await sleep(50);
      room.heartbeat({ x: ++manual }, 3_000);
    }
    await waitFor(() => sentOf(server, "heartbeat").length >= 1 + manual, "every heartbeat sent");
    assert.equal(sentOf(server, "heartbeat").length, 1 + manual, "no tracked heartbeat between frequent ones");
    await client.close();
  });

  it("refuses invalid TTLs locally, never throwing", async () => {
    const { server, client, errors } = setup();
    const room = client.presence("r");
    await client.waitForConnected();
    room.heartbeat(1, 0);
    room.heartbeat(1, 1.5);
    room.heartbeat(1, 3_600_001);
    room.heartbeat(1, "10" as unknown as number);
    assert.deepEqual(errors.map((e) => e.code), ["invalid_ttl", "invalid_ttl", "invalid_ttl", "invalid_ttl"]);
    room.heartbeat(10n as unknown, 1000);
    room.heartbeat("x".repeat(5000), 1000);
    assert.deepEqual(errors.slice(4).map((e) => e.code), ["invalid_data", "data_too_large"]);
    await sleep(10);
    assert.equal(sentOf(server, "heartbeat").length, 0);
    await client.close();
  });

  it("rejects invalid room names synchronously", async () => {
    const { client } = setup();
    assert.throws(() => client.presence(""), RangeError);
    assert.throws(() => client.presence("a\nb"), RangeError);
    assert.throws(() => client.presence("x".repeat(257)), RangeError);
    client.presence("é".repeat(128)); // 256 bytes
    await client.close();
  });

  it("forwards server errors to onError", async () => {
    const { server, client, errors } = setup();
    await client.waitForConnected();
    server.last!.deliver({ type: "error", code: "rate_limited", message: "slow down", room: "r" });
    assert.equal(errors.length, 1);
    assert.equal(errors[0]!.code, "rate_limited");
    assert.equal(errors[0]!.room, "r");
    assert.equal(errors[0]!.source, "server");
    await client.close();
  });

  it("reports a throwing onChange callback without breaking the others", async () => {
    const { server, client, errors } = setup();
    const room = client.presence("r");
    let other = 0;
    room.onChange(() => {
      throw new Error("boom");
    });
    room.onChange(() => other++);
    await client.waitForConnected();
    server.put("r", { clientId: 9, data: 1, expiresAtMs: Date.now() + 10_000 });
    await waitFor(() => other === 1, "second listener");
    assert.equal(errors[0]!.code, "listener_error");
    await client.close();
  });
});

describe("schemas", () => {
  const Cursor = Schema.Struct({ x: Schema.Number, y: Schema.Number });
  const ZCursor = z.object({ x: z.number(), y: z.number() });

  for (const [name, make] of [
    ["Effect", (c: RollcallClient) => c.presence("cur", Cursor)],
    ["zod", (c: RollcallClient) => c.presence("cur", ZCursor)],
    ["Effect via Schema.standardSchemaV1", (c: RollcallClient) => c.presence("cur", Schema.standardSchemaV1(Cursor))],
  ] as const) {
    it(`${name}: refuses bad outgoing data before sending, hides bad incoming entries`, async () => {
      const { server, client, errors } = setup();
      const cursors = make(client);
      const untyped = client.presence("cur");
      await client.waitForConnected();
      cursors.heartbeat({ x: "bad" } as unknown as { x: number; y: number }, 5_000);
      await waitFor(() => errors.length === 1, "schema refusal");
      assert.equal(errors[0]!.code, "schema_mismatch");
      assert.equal(errors[0]!.room, "cur");
      assert.equal(sentOf(server, "heartbeat").length, 0);

      cursors.heartbeat({ x: 1, y: 2 }, 5_000);
      await waitFor(() => sentOf(server, "heartbeat").length === 1, "valid heartbeat sent");
      const t = Date.now() + 10_000;
      server.put("cur", { clientId: 50, data: { x: "bad" }, expiresAtMs: t });
      server.put("cur", { clientId: 51, data: { x: 3, y: 4 }, expiresAtMs: t });
      await waitFor(() => untyped.value().size === 3, "untyped view sees all three");
      await waitFor(() => cursors.value().size === 2, "typed view sees the two valid ones");
      assert.equal(cursors.value().has(50), false);
      assert.deepEqual(cursors.value().get(51)!.data, { x: 3, y: 4 });
      const decodeErrors = errors.filter((e) => e.code === "decode_failed");
      assert.equal(decodeErrors.length, 1);
      // The bad peer fixes its data: it appears.
      server.put("cur", { clientId: 50, data: { x: 5, y: 6 }, expiresAtMs: t });
      await waitFor(() => cursors.value().has(50), "fixed entry");
      await client.close();
    });
  }

  it("encodes with an Effect schema (Type on the API, Encoded on the wire)", async () => {
    const { server, client } = setup();
    const S = Schema.Struct({ at: Schema.Date });
    const room = client.presence("d", S);
    await client.waitForConnected();
    room.heartbeat({ at: new Date(0) }, 5_000);
    await waitFor(() => sentOf(server, "heartbeat").length === 1, "heartbeat");
    assert.deepEqual(sentOf(server, "heartbeat")[0]!.data, { at: "1970-01-01T00:00:00.000Z" });
    await waitFor(() => room.value().size === 1, "own entry decoded");
    const e = [...room.value().values()][0]!;
    assert.ok(e.data.at instanceof Date);
    await client.close();
  });

  it("accepts an Effect module passed as effectSchema (no lazy import)", async () => {
    const { server, client } = setup({ effectSchema: Schema });
    const room = client.presence("cur", Schema.Struct({ x: Schema.Number }));
    await client.waitForConnected();
    room.heartbeat({ x: 1 }, 1000);
    await waitFor(() => sentOf(server, "heartbeat").length === 1, "heartbeat");
    await client.close();
  });

  it("accepts a Standard Schema with async validation and keeps the last heartbeat", async () => {
    const { server, client } = setup();
    const slow = {
      "~standard": {
        version: 1 as const,
        vendor: "test",
        validate: async (v: unknown) => {
          await sleep(typeof v === "number" && v === 1 ? 30 : 0);
          return typeof v === "number" ? { value: v } : { issues: [{ message: "not a number" }] };
        },
      },
    };
    const room = client.presence("n", slow);
    await client.waitForConnected();
    room.heartbeat(1, 5_000); // slow validation
    room.heartbeat(2, 5_000); // fast: wins
    await waitFor(() => room.value().size === 1, "entry");
    await sleep(50);
    assert.deepEqual(sentOf(server, "heartbeat").map((m) => m.data), [2]);
    assert.equal([...room.value().values()][0]!.data, 2);
    await client.close();
  });

  it("refuses something that is no schema", async () => {
    const { client } = setup();
    assert.throws(() => client.presence("x", {} as never), TypeError);
    await client.close();
  });
});

describe("close()", () => {
  it("leaves every room it heartbeated in, waits for the acks, closes with 1000", async () => {
    const { server, client } = setup();
    const a = client.presence("a");
    const b = client.presence("b");
    client.presence("c"); // only watched: no leave needed
    await client.waitForConnected();
    a.heartbeat(1, 60_000);
    b.track(2, 60_000);
    await waitFor(() => sentOf(server, "heartbeat").length === 2, "heartbeats");
    const sock = server.last as FakeSocket;
    await client.close();
    const leaves = sentOf(server, "leave");
    assert.deepEqual(leaves.map((m) => m.room).sort(), ["a", "b"]);
    assert.ok(leaves.every((m) => typeof m.ref === "number"));
    assert.equal(sock.closedByClient, 1000);
    assert.equal(client.state, "closed");
    assert.equal(server.live("a").length + server.live("b").length, 0);
  });

  it("is bounded when the server never acks, and idempotent", async () => {
    const { server, client } = setup({ closeTimeoutMs: 100 });
    server.ackLeaves = false;
    const a = client.presence("a");
    await client.waitForConnected();
    a.heartbeat(1, 60_000);
    await waitFor(() => sentOf(server, "heartbeat").length === 1, "heartbeat");
    const t0 = Date.now();
    await Promise.all([client.close(), client.close()]);
    assert.ok(Date.now() - t0 < 1000);
    assert.equal(sentOf(server, "leave").length, 1);
  });

  it("after close, heartbeat reports not_connected and nothing reconnects", async () => {
    const { server, client, errors } = setup();
    const a = client.presence("a");
    await client.waitForConnected();
    await client.close();
    a.heartbeat(1, 1000);
    assert.equal(errors.at(-1)!.code, "not_connected");
    await sleep(50);
    assert.equal(server.sockets.length, 1);
  });

  it("closes while still connecting without hanging", async () => {
    const server = new FakeServer();
    server.down = true;
    const client = track(createClient({ url: URL, WebSocket: server.WebSocket }));
    await client.close();
    assert.equal(client.state, "closed");
  });
});

describe("no unobserved rejections", () => {
  it("error paths never produce an unhandled rejection", async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on("unhandledRejection", onUnhandled);
    try {
      // A client that never connects, closed before it does: a waitForConnected()
      // nobody awaits is harmless; the seed's chain learns why (it rejects).
      const down = new FakeServer();
      down.down = true;
      const c1 = track(createClient({ url: URL, WebSocket: down.WebSocket, token: async () => Promise.reject(new Error("nope")) }));
      c1.onError(() => {});
      const r1 = c1.presence("r", z.object({ x: z.number() }));
      void c1.waitForConnected();
      const seedChain = c1.waitForConnected().then(() => r1.heartbeat({ x: 1 }, 1000));
      r1.heartbeat({ x: "bad" } as never, 1000);
      r1.heartbeat({ x: 1 }, -1);
      await sleep(30);
      await c1.close();
      await assert.rejects(seedChain, (e: RollcallErrorLike) => e instanceof RollcallError && e.code === "closed");
      void c1.waitForConnected(); // after close: rejected at once, still unobserved
      r1.heartbeat({ x: 1 }, 1000);
      r1.leave();

      // Connected: async schema failures, server errors, a throwing listener, a closing socket.
      const { server, client } = setup();
      const slowBad = {
        "~standard": { version: 1 as const, vendor: "t", validate: async () => ({ issues: [{ message: "never" }] }) },
      };
      const r2 = client.presence("s", slowBad);
      r2.onChange(() => {
        throw new Error("listener");
      });
      await client.waitForConnected();
      r2.heartbeat(1, 1000);
      server.put("s", { clientId: 77, data: 1, expiresAtMs: Date.now() + 1000 });
      server.last!.deliver({ type: "error", code: "internal", message: "x", ref: 999 });
      server.last!.serverClose(1011);
      await client.close();
      await sleep(30);
    } finally {
      process.off("unhandledRejection", onUnhandled);
    }
    assert.deepEqual(unhandled, []);
  });
});
