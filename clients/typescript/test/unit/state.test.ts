// Connection state and waitForConnected(), against the in-process fake server.
import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import { createClient, RollcallError, type ConnectionState, type RollcallClient, type RollcallErrorLike } from "rollcall-client";
import { FakeServer, type FakeSocket } from "../helpers/fake-server.js";
import { collectErrors, sleep, waitFor } from "../helpers/util.js";

const URL = "ws://fake.invalid/ws";

const clients = new Set<RollcallClient>();
afterEach(async () => {
  await Promise.all([...clients].map((c) => c.close()));
  clients.clear();
});

function setup(server = new FakeServer(), opts: Partial<Parameters<typeof createClient>[0]> = {}) {
  const client = createClient({ url: URL, WebSocket: server.WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 40 }, ...opts });
  clients.add(client);
  const errors = collectErrors(client);
  const states: ConnectionState[] = [];
  client.onStateChange((s) => states.push(s));
  return { server, client, errors, states };
}

/** The server answers every hello with an `error` of `code`, then closes with 4003 (docs/protocol.md). */
function refuseHello(server: FakeServer, code: string): void {
  server.intercept = (sock, msg) => {
    if (msg.type !== "hello") return false;
    sock.deliver({ type: "error", code, message: `refused: ${code}` });
    sock.serverClose(4003, "authentication failed");
    return true;
  };
}

function isRollcallError(code: string) {
  return (e: unknown) => {
    assert.ok(e instanceof RollcallError, `not a RollcallError: ${String(e)}`);
    assert.equal((e as RollcallErrorLike).code, code);
    return true;
  };
}

describe("connection state", () => {
  it("goes connecting → connected → reconnecting → connected → closed, and onStateChange sees each once", async () => {
    const { server, client, states } = setup();
    assert.equal(client.state, "connecting");
    await client.waitForConnected();
    server.last!.serverClose(1011);
    await waitFor(() => states.at(-1) === "connected" && states.length === 3, "reconnected");
    await client.close();
    assert.deepEqual(states, ["connected", "reconnecting", "connected", "closed"]);
    assert.equal(client.state, "closed");
  });

  it("stays connecting (not reconnecting) while the first connection keeps failing", async () => {
    const server = new FakeServer();
    server.down = true;
    const { client, states } = setup(server);
    await waitFor(() => server.sockets.length >= 3, "three attempts");
    assert.equal(client.state, "connecting");
    assert.deepEqual(states, []);
    server.down = false;
    await client.waitForConnected();
    assert.deepEqual(states, ["connected"]);
  });

  it("unsubscribing from onStateChange stops the calls", async () => {
    const { server, client } = setup();
    const seen: ConnectionState[] = [];
    const off = client.onStateChange((s) => seen.push(s));
    await client.waitForConnected();
    off();
    server.last!.serverClose(1006);
    await waitFor(() => client.state === "reconnecting" || server.sockets.length > 1, "drop noticed");
    assert.deepEqual(seen, ["connected"]);
  });
});

describe("waitForConnected()", () => {
  for (const code of ["unauthorized", "invalid_token", "token_expired"]) {
    it(`rejects with a RollcallError "${code}" when the server refuses the token (4003), and does not reconnect`, async () => {
      const server = new FakeServer();
      refuseHello(server, code);
      const { client, errors } = setup(server, { token: "a.b.c" });
      await assert.rejects(client.waitForConnected(), isRollcallError(code));
      assert.equal(client.state, "closed");
      // Later calls reject at once with the same reason.
      await assert.rejects(client.waitForConnected(), isRollcallError(code));
      // onError saw the server's error and the final close.
      assert.ok(errors.some((e) => e.source === "server" && e.code === code));
      assert.ok(errors.some((e) => e.code === "auth_failed" && e.closeCode === 4003));
      await sleep(80); // longer than the whole backoff of this client
      assert.equal(server.sockets.length, 1);
    });
  }

  it("the seed's waitForConnected().then(heartbeat) chain rejects instead of hanging on a bad token", async () => {
    const server = new FakeServer();
    refuseHello(server, "invalid_token");
    const { client } = setup(server, { token: "forged" });
    const room = client.presence("pr:room-123");
    const chain = client.waitForConnected().then(() => {
      room.heartbeat({ status: "online" }, 30_000);
    });
    await assert.rejects(chain, isRollcallError("invalid_token"));
    assert.equal(server.log.filter((m) => m.type === "heartbeat").length, 0);
  });

  it('rejects with "forbidden_origin" when the upgrade is refused with 403 (as ws reports it)', async () => {
    const server = new FakeServer();
    server.onSocket = (sock: FakeSocket) => {
      // ws: an 'error' event "Unexpected server response: 403", then close 1006.
      sock.onerror?.({ type: "error", message: "Unexpected server response: 403", error: new Error("Unexpected server response: 403") });
      sock.finish(1006, "");
    };
    const { client, errors } = setup(server);
    await assert.rejects(client.waitForConnected(), isRollcallError("forbidden_origin"));
    assert.equal(client.state, "closed");
    assert.ok(errors.some((e) => e.code === "forbidden_origin"));
    await sleep(80);
    assert.equal(server.sockets.length, 1, "no reconnect after a 403");
  });

  it("a 503 (server starting) is not final: it keeps waiting and connects", async () => {
    const server = new FakeServer();
    const normal = server.onSocket.bind(server);
    let refused = 0;
    server.onSocket = (sock: FakeSocket) => {
      if (refused++ < 2) {
        sock.onerror?.({ type: "error", message: "Unexpected server response: 503" });
        sock.finish(1006, "");
      } else normal(sock);
    };
    const { client } = setup(server);
    await client.waitForConnected();
    assert.equal(server.sockets.length, 3);
  });

  for (const [closeCode, code] of [
    [4001, "replaced"],
    [4000, "bad_hello"],
    [1002, "protocol_error"],
    [1007, "invalid_payload"],
    [1009, "message_too_large"],
  ] as const) {
    it(`rejects with "${code}" on a ${closeCode} before welcome`, async () => {
      const server = new FakeServer();
      server.intercept = (sock, msg) => {
        if (msg.type !== "hello") return false;
        sock.serverClose(closeCode);
        return true;
      };
      const { client } = setup(server);
      await assert.rejects(client.waitForConnected(), isRollcallError(code));
    });
  }

  for (const closeCode of [1002, 1007, 1009]) {
    it(`does not reconnect after a ${closeCode} on an established connection`, async () => {
      const server = new FakeServer();
      const { client, errors } = setup(server);
      await client.waitForConnected();
      server.sockets[0]!.serverClose(closeCode);
      await waitFor(() => client.state === "closed", "closed");
      assert.equal(server.sockets.length, 1, "no second connection");
      assert.ok(errors.some((e) => e.closeCode === closeCode));
    });
  }

  it('rejects with "closed" when close() is called before it connects, and at once afterwards', async () => {
    const server = new FakeServer();
    server.down = true;
    const { client } = setup(server);
    const waiting = client.waitForConnected();
    await waitFor(() => server.sockets.length >= 2, "retrying");
    await client.close();
    await assert.rejects(waiting, isRollcallError("closed"));
    await assert.rejects(client.waitForConnected(), isRollcallError("closed"));
  });

  it('rejects with "closed" once close() has been called, even while the leaves are still in flight', async () => {
    const server = new FakeServer();
    server.ackLeaves = false; // close() waits closeTimeoutMs for the acks
    const { client } = setup(server, { closeTimeoutMs: 200 });
    const room = client.presence("r");
    await client.waitForConnected();
    room.heartbeat(1, 30_000);
    const closing = client.close();
    assert.equal(client.state, "connected", "still connected while leaving");
    await assert.rejects(client.waitForConnected(), isRollcallError("closed"));
    await closing;
  });

  it("a recoverable drop keeps it pending; it resolves once the server is back", async () => {
    const server = new FakeServer();
    server.down = true;
    const { client } = setup(server);
    let settled: string | undefined;
    client.waitForConnected().then(
      () => (settled = "resolved"),
      (e: RollcallErrorLike) => (settled = `rejected ${e.code}`),
    );
    await waitFor(() => server.sockets.length >= 4, "several failed attempts");
    assert.equal(settled, undefined);
    server.down = false;
    await waitFor(() => settled !== undefined, "settled");
    assert.equal(settled, "resolved");

    // After a drop, a new waitForConnected() waits for the reconnect.
    server.down = true;
    server.last!.serverClose(1001);
    await waitFor(() => client.state === "reconnecting", "reconnecting");
    let again = false;
    void client.waitForConnected().then(() => (again = true));
    const before = server.sockets.length;
    await waitFor(() => server.sockets.length >= before + 2, "retrying");
    assert.equal(again, false);
    server.down = false;
    await waitFor(() => again, "resolved after the reconnect");
  });

  it("a token function that fails is retried, not final", async () => {
    let n = 0;
    const { client } = setup(new FakeServer(), {
      token: () => {
        if (++n < 3) throw new Error("not yet");
        return "jwt";
      },
    });
    await client.waitForConnected();
    assert.equal(n, 3);
  });

  it("unobserved rejections never reach process 'unhandledRejection'", async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on("unhandledRejection", onUnhandled);
    try {
      const server = new FakeServer();
      refuseHello(server, "unauthorized");
      const { client } = setup(server, { token: "x" });
      void client.waitForConnected();
      client.waitForConnected();
      await waitFor(() => client.state === "closed", "closed");
      client.waitForConnected();
      const other = setup(new FakeServer()).client;
      other.waitForConnected();
      await other.close();
      other.waitForConnected();
      await sleep(20);
    } finally {
      process.off("unhandledRejection", onUnhandled);
    }
    assert.deepEqual(unhandled, []);
  });
});
