// Token renewal on the same connection (re-authentication with `auth`), against the
// in-process fake server: when `token` is a function, the SDK renews the token before
// its `exp` and sends it with `{"type":"auth"}`; failures are reported and left to the
// server's 4004 close and the reconnect that follows.
import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import { createClient, type RollcallClient } from "rollcall-client";
import { FakeServer } from "../helpers/fake-server.js";
import { collectErrors, sleep, waitFor } from "../helpers/util.js";

const URL = "ws://fake.invalid/ws";

const clients = new Set<RollcallClient>();
afterEach(async () => {
  await Promise.all([...clients].map((c) => c.close()));
  clients.clear();
});

function b64url(s: string): string {
  return Buffer.from(s).toString("base64url");
}

/** An unsigned JWT-shaped token whose `exp` is `inMs` from now (fractional seconds). */
function fakeJwt(inMs: number, tag: string): string {
  const payload = { sub: "alice", exp: (Date.now() + inMs) / 1000, tag };
  return `${b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64url(JSON.stringify(payload))}.sig-${tag}`;
}

function setup(token: string | (() => Promise<string>)) {
  const server = new FakeServer();
  const client = createClient({
    url: URL,
    WebSocket: server.WebSocket,
    reconnect: { initialDelayMs: 20, maxDelayMs: 100 },
    token,
  });
  clients.add(client);
  const errors = collectErrors(client);
  return { server, client, errors };
}

describe("token renewal (auth on the same connection)", () => {
  it("renews a token function's token before exp, on the same socket, again and again", async () => {
    let calls = 0;
    const { server, client, errors } = setup(async () => fakeJwt(1000, `t${++calls}`));
    await client.waitForConnected();
    const id = client.clientId;
    // A 1 s token is renewed at half of its remaining lifetime (30 s before exp is past).
    await waitFor(() => server.auths.length >= 2, "two renewals", { timeoutMs: 3000 });
    assert.equal(server.sockets.length, 1, "renewed without reconnecting");
    assert.equal(server.hellos.length, 1);
    assert.equal(server.auths[0]!.sock, server.sockets[0]);
    assert.match(String(server.auths[0]!.msg.token), /sig-t2$/);
    assert.match(String(server.auths[1]!.msg.token), /sig-t3$/);
    assert.equal(typeof server.auths[0]!.msg.ref, "number");
    assert.equal(client.state, "connected");
    assert.equal(client.clientId, id);
    assert.deepEqual(errors, []);
    await client.close();
  });

  it("reports a failing renewal and reconnects with a fresh token after the server's 4004", async () => {
    let calls = 0;
    const { server, client, errors } = setup(async () => {
      calls++;
      if (calls === 2) throw new Error("identity provider down");
      return fakeJwt(calls === 1 ? 600 : 60_000, `t${calls}`);
    });
    await client.waitForConnected();
    const id = client.clientId;
    await waitFor(() => errors.some((e) => e.code === "token_error"), "the failed renewal is reported", { timeoutMs: 3000 });
    assert.equal(server.auths.length, 0, "nothing sent when the function failed");
    assert.match(errors[0]!.message, /identity provider down/);
    // The server closes at exp; the client reconnects and calls the function again.
    server.last!.serverClose(4004, "token expired");
    await waitFor(() => server.hellos.length === 2 && client.state === "connected", "reconnected");
    assert.match(String(server.hellos[1]!.token), /sig-t3$/);
    assert.equal(server.hellos[1]!.resume, `tok-${id}`);
    assert.equal(client.clientId, id);
    await client.close();
  });

  it("reports a renewal the server refuses and does not retry it on the same connection", async () => {
    let calls = 0;
    const { server, client, errors } = setup(async () => fakeJwt(800, `t${++calls}`));
    server.authError = "invalid_token";
    await client.waitForConnected();
    await waitFor(() => errors.some((e) => e.code === "invalid_token"), "refusal reported", { timeoutMs: 3000 });
    const refusal = errors.find((e) => e.code === "invalid_token")!;
    assert.equal(refusal.source, "server");
    assert.equal(refusal.ref, server.auths[0]!.msg.ref);
    await sleep(600);
    assert.equal(server.auths.length, 1, "no second attempt after a refusal");
    assert.equal(client.state, "connected", "the server, not the client, ends the connection");
    await client.close();
  });

  it("does not renew a static token, a token without exp, or a token that expires no later", async () => {
    const statics = setup(fakeJwt(400, "static"));
    const opaque = setup(async () => "not-a-jwt");
    const same = fakeJwt(600, "same");
    const stuck = setup(async () => same);
    await Promise.all([statics.client.waitForConnected(), opaque.client.waitForConnected(), stuck.client.waitForConnected()]);
    await sleep(700);
    assert.equal(statics.server.auths.length, 0);
    assert.equal(opaque.server.auths.length, 0);
    assert.equal(stuck.server.auths.length, 0, "a token that does not expire later is not sent");
    assert.ok(
      stuck.errors.some((e) => e.code === "token_error" && /no later/.test(e.message)),
      `errors: ${stuck.errors.map((e) => e.code)}`,
    );
    assert.deepEqual(statics.errors, []);
    assert.deepEqual(opaque.errors, []);
  });

  it("does not fire at once for a token that expires in 100 days (setTimeout overflow)", async () => {
    const { server, client } = setup(async () => fakeJwt(100 * 86_400_000, "far"));
    await client.waitForConnected();
    await sleep(200);
    assert.equal(server.auths.length, 0);
    await client.close();
  });

  it("stops renewing once closed", async () => {
    const { server, client } = setup(async () => fakeJwt(400, "t"));
    await client.waitForConnected();
    await client.close();
    await sleep(500);
    assert.equal(server.auths.length, 0);
  });
});
