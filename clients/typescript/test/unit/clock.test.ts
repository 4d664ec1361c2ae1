import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ClockSync } from "../../src/clock.js";
import { jsonEqual, roomNameProblem, utf8Length } from "../../src/util.js";

describe("ClockSync", () => {
  it("estimates offset = serverTime - midpoint, and the smallest round trip wins", () => {
    const c = new ClockSync();
    assert.equal(c.offset, 0);
    // local clock 1000 ms behind the server: true offset +1000
    c.add(0, 100, 1050 + 10); // rtt 100, asymmetric: estimate 1010
    assert.equal(c.offset, 1010);
    c.add(200, 210, 1205); // rtt 10: estimate 1000
    assert.equal(c.offset, 1000);
    c.add(300, 500, 1480); // rtt 200: ignored, worse
    assert.equal(c.offset, 1000);
    assert.equal(c.rtt, 10);
  });

  it("keeps only the recent samples, so it follows a clock jump", () => {
    const c = new ClockSync(3);
    c.add(0, 2, 1001); // rtt 2, offset 1000
    for (let i = 1; i <= 3; i++) c.add(i * 100, i * 100 + 20, i * 100 + 10 - 5000); // rtt 20, offset -5000
    assert.equal(c.offset, -5000);
  });

  it("ignores nonsense samples", () => {
    const c = new ClockSync();
    c.add(100, 50, 1000); // negative rtt (the local clock jumped back)
    c.add(0, 10, Number.NaN);
    assert.equal(c.hasSample, false);
  });
});

describe("helpers", () => {
  it("utf8Length counts UTF-8 bytes", () => {
    for (const s of ["", "abc", "é", "€", "😀", "a😀é€", "\ud800x"]) assert.equal(utf8Length(s), Buffer.byteLength(s, "utf8"), JSON.stringify(s));
  });

  it("jsonEqual compares parsed JSON deeply", () => {
    assert.ok(jsonEqual({ a: [1, { b: null }] }, { a: [1, { b: null }] }));
    assert.ok(!jsonEqual({ a: 1 }, { a: 1, b: 2 }));
    assert.ok(!jsonEqual([1], { 0: 1 }));
    assert.ok(!jsonEqual(null, {}));
  });

  it("room names: 1 to 256 bytes, no control characters", () => {
    assert.equal(roomNameProblem("pr:room-123"), undefined);
    assert.ok(roomNameProblem(""));
    assert.ok(roomNameProblem("a\u0085b"));
    assert.ok(roomNameProblem("x".repeat(257)));
    assert.equal(roomNameProblem("x".repeat(256)), undefined);
  });
});
