// How schemas become codecs: which copy of effect decodes an Effect schema, and that
// a schema that cannot be used is never reported as data that does not match.
//
// Here the SDK's own node_modules has effect 3 (`effect`) and effect 4 under another
// name (`effect4`), so the loader finds effect 3 only: an effect 4 schema needs the
// `effectSchema` option.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Schema } from "effect";
import { Schema as Schema4 } from "effect4";
import { z } from "zod";
import { RollcallError } from "../../src/errors.js";
import { EFFECT_SCHEMA_LINE, makeCodec, type Codec, type CodecResult } from "../../src/schema.js";

async function ready(codec: Codec): Promise<Codec> {
  if (codec.ready) await codec.ready;
  assert.equal(codec.ready, null);
  return codec;
}

const Cursor3 = Schema.Struct({ x: Schema.Number, y: Schema.Number });
const Cursor4 = Schema4.Struct({ x: Schema4.Number, y: Schema4.Number });

function assertMismatch(res: CodecResult): void {
  assert.equal(res.ok, false);
  if (res.ok) return;
  assert.equal(res.failure, undefined, "a mismatch, not a failure to use the schema");
  assert.ok(res.issues.length > 0);
}

function assertFailure(res: CodecResult, code: string, message: RegExp): void {
  assert.equal(res.ok, false);
  if (res.ok) return;
  assert.equal(res.failure?.code, code);
  assert.match(res.failure!.message, message);
}

function throwsUnavailable(f: () => unknown, message: RegExp): void {
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof RollcallError);
    assert.equal(e.code, "schema_unavailable");
    assert.match(e.message, message);
    return true;
  });
}

describe("Effect schemas", () => {
  it("effect 3 without any option: its Schema module is found, data is encoded, decoded and refused", async () => {
    const codec = await ready(makeCodec(Cursor3, undefined));
    assert.deepEqual(await codec.encode({ x: 1, y: 2 }), { ok: true, value: { x: 1, y: 2 } });
    assert.deepEqual(await codec.decode({ x: 3, y: 4 }), { ok: true, value: { x: 3, y: 4 } });
    assertMismatch(await codec.decode({ x: "bad", y: 4 }));
    assertMismatch(await codec.encode({ x: 1 }));
  });

  it("effect 3 with a transformation: heartbeats are encoded, entries decoded", async () => {
    const Seen = Schema.Struct({ at: Schema.DateFromString });
    const codec = await ready(makeCodec(Seen, undefined));
    assert.deepEqual(await codec.encode({ at: new Date(0) }), { ok: true, value: { at: "1970-01-01T00:00:00.000Z" } });
    const decoded = await codec.decode({ at: "1970-01-01T00:00:00.000Z" });
    assert.ok(decoded.ok && (decoded.value as { at: Date }).at instanceof Date);
  });

  it("effect 4 with effectSchema: Schema (effect 4's)", async () => {
    const codec = makeCodec(Cursor4, Schema4);
    assert.equal(codec.ready, null, "nothing to load");
    assert.deepEqual(await codec.encode({ x: 1, y: 2 }), { ok: true, value: { x: 1, y: 2 } });
    assert.deepEqual(await codec.decode({ x: 3, y: 4 }), { ok: true, value: { x: 3, y: 4 } });
    assertMismatch(await codec.decode({ x: "bad", y: 4 }));
    const NumberFromString = Schema4.Struct({ n: Schema4.NumberFromString });
    const transforming = makeCodec(NumberFromString, Schema4);
    assert.deepEqual(await transforming.encode({ n: 5 }), { ok: true, value: { n: "5" } });
    assert.deepEqual(await transforming.decode({ n: "6" }), { ok: true, value: { n: 6 } });
  });

  it("effect 4 where only effect 3 can be found: schema_unavailable naming the line, never a mismatch", async () => {
    const codec = await ready(makeCodec(Cursor4, undefined));
    const line = /createClient\(\{ url, effectSchema: Schema \}\)/;
    assertFailure(await codec.encode({ x: 1, y: 2 }), "schema_unavailable", line);
    assertFailure(await codec.decode({ x: 1, y: 2 }), "schema_unavailable", /comes from effect 4, and no copy of effect 4/);
    assert.match(EFFECT_SCHEMA_LINE, line);
  });

  it("effectSchema of the other major, or not a Schema module: presence() throws schema_unavailable at once", () => {
    throwsUnavailable(() => makeCodec(Cursor4, Schema), /effect 3's Schema module, but the schema comes from effect 4/);
    throwsUnavailable(() => makeCodec(Cursor3, Schema4), /effect 4's Schema module, but the schema comes from effect 3/);
    throwsUnavailable(() => makeCodec(Cursor3, { decode: () => 1 }), /must be effect's Schema module/);
  });

  it("the whole effect module passed as effectSchema works too", async () => {
    const effect = await import("effect4");
    const codec = makeCodec(Cursor4, effect);
    assert.deepEqual(await codec.decode({ x: 3, y: 4 }), { ok: true, value: { x: 3, y: 4 } });
  });
});

describe("Standard Schemas", () => {
  it("zod: a mismatch is a mismatch, with its path", async () => {
    const codec = makeCodec(z.object({ x: z.number() }), undefined);
    const res = await codec.decode({ x: "bad" });
    assertMismatch(res);
    assert.ok(!res.ok && res.issues[0]!.path?.[0] === "x");
  });

  it("a validate that throws or rejects is schema_failed, not a mismatch", async () => {
    const throwing = { "~standard": { version: 1 as const, vendor: "broken", validate: () => { throw new Error("boom"); } } };
    assertFailure(await makeCodec(throwing, undefined).encode({}), "schema_failed", /broken's validate threw: boom/);
    const rejecting = { "~standard": { version: 1 as const, vendor: "broken", validate: () => Promise.reject(new Error("later")) } };
    assertFailure(await makeCodec(rejecting, undefined).decode({}), "schema_failed", /broken's validate threw: later/);
  });

  it("something that is no schema is a TypeError", () => {
    assert.throws(() => makeCodec({ parse: () => 1 }, undefined), TypeError);
  });
});
