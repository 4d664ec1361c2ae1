import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { backoffDelayMs } from "../../src/socket.js";
import { renewalDelayMs } from "../../src/token.js";
import { decode, encode, encodeHeartbeat } from "../../src/wire.js";

describe("wire codec", () => {
  it("writes a heartbeat's data text as it is, and reads only objects", () => {
    const text = encodeHeartbeat({ type: "heartbeat", room: "r\"1", ttlMs: 5000, ref: 2 }, '{ "a" : 1.50 }');
    assert.equal(text, '{"type":"heartbeat","room":"r\\"1","ttlMs":5000,"ref":2,"data":{ "a" : 1.50 }}');
    assert.deepEqual(JSON.parse(text), { type: "heartbeat", room: 'r"1', ttlMs: 5000, ref: 2, data: { a: 1.5 } });
    assert.equal(encode({ type: "subscribe", room: "r", mode: "occupancy" }), '{"type":"subscribe","room":"r","mode":"occupancy"}');
    assert.deepEqual(decode('{"type":"pong","ref":1,"serverTimeMs":5}'), { type: "pong", ref: 1, serverTimeMs: 5 });
    assert.equal(decode("[1]"), undefined);
    assert.equal(decode("7"), undefined);
    assert.equal(decode("{"), null);
  });
});

describe("reconnect backoff", () => {
  it("doubles from initialDelayMs up to maxDelayMs, half of it jittered", () => {
    const low = () => 0;
    const high = () => 1;
    assert.deepEqual(
      [0, 1, 2, 3, 10, 1000].map((n) => backoffDelayMs(n, undefined, low)),
      [125, 250, 500, 1000, 5000, 5000],
    );
    assert.deepEqual(
      [0, 1, 2, 3, 10, 1000].map((n) => backoffDelayMs(n, undefined, high)),
      [250, 500, 1000, 2000, 10_000, 10_000],
    );
    assert.equal(backoffDelayMs(2, { initialDelayMs: 10, maxDelayMs: 30 }, high), 30);
  });
});

describe("token renewal", () => {
  it("renews at 80% of the lifetime or 30 s before expiry, never before half of it", () => {
    assert.equal(renewalDelayMs(3_600_000), 2_880_000); // 80% is the earlier
    assert.equal(renewalDelayMs(100_000), 70_000); // 30 s before expiry is the earlier
    assert.equal(renewalDelayMs(40_000), 20_000); // never before half of it
  });
});
