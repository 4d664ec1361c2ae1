// Compile-time checks that the seed's examples are typed as the seed shows. This
// file is type-checked by `npm test` (tsc) before anything runs; the runtime part
// only makes sure it was compiled.
import assert from "node:assert/strict";
import { it } from "node:test";
import { Schema } from "effect";
import { z } from "zod";
import type { Presence, PresenceEntry, RollcallClient } from "rollcall-client";

type Equal<A, B> = (<G>() => G extends A ? 1 : 2) extends <G>() => G extends B ? 1 : 2 ? true : false;
function expectType<T extends true>(_: T): void {}

declare const client: RollcallClient;
declare function renderCursor(clientId: number, x: number, y: number): void;

// Never called: only type-checked.
export function seedTypes(): void {
  // Usage without schema
  const room = client.presence("pr:room-123");
  expectType<Equal<typeof room, Presence<unknown>>>(true);
  room.heartbeat({ status: "online" }, 30_000);
  const v = room.value();
  expectType<Equal<typeof v, Map<number, PresenceEntry<unknown>>>>(true);
  room.onChange((entries) => {
    for (const [clientId, entry] of entries) {
      expectType<Equal<typeof clientId, number>>(true);
      expectType<Equal<typeof entry.data, unknown>>(true);
      expectType<Equal<typeof entry.expiresAtMs, number>>(true);
    }
  });
  const r: void = room.heartbeat("anything", 1);
  void r;
  room.leave();

  // Usage with schema (Effect)
  const Cursor = Schema.Struct({
    x: Schema.Number,
    y: Schema.Number,
  });
  const cursors = client.presence("pr:cursors", Cursor);
  cursors.heartbeat({ x: 120, y: 340 }, 5_000);
  // @ts-expect-error: x must be a number
  cursors.heartbeat({ x: "bad", y: 340 }, 5_000);
  // @ts-expect-error: y is missing
  cursors.heartbeat({ x: 1 }, 5_000);
  cursors.onChange((entries) => {
    for (const [clientId, entry] of entries) {
      // entry.data: { x: number; y: number }
      renderCursor(clientId, entry.data.x, entry.data.y);
      expectType<Equal<typeof entry.data, { readonly x: number; readonly y: number }>>(true);
      // @ts-expect-error: no such field
      void entry.data.z;
    }
  });
  const cv = cursors.value();
  expectType<Equal<typeof cv, Map<number, PresenceEntry<{ readonly x: number; readonly y: number }>>>>(true);

  // Effect schema with a transformation: heartbeat takes the Type, entries hold the Type.
  const Dated = client.presence("d", Schema.Struct({ at: Schema.Date }));
  Dated.heartbeat({ at: new Date() }, 1000);
  Dated.onChange((m) => {
    const d: Date | undefined = m.get(1)?.data.at;
    void d;
  });

  // Standard Schema (zod)
  const zc = client.presence("pr:z", z.object({ x: z.number(), y: z.number() }));
  zc.heartbeat({ x: 1, y: 2 }, 1000);
  // @ts-expect-error: x must be a number
  zc.heartbeat({ x: "1", y: 2 }, 1000);
  zc.onChange((m) => {
    for (const [, e] of m) {
      expectType<Equal<typeof e.data, { x: number; y: number }>>(true);
    }
  });
  // zod with a transform: heartbeat takes the input, entries hold the output.
  const zt = client.presence("pr:zt", z.object({ n: z.string().transform((s) => s.length) }));
  zt.heartbeat({ n: "abc" }, 1000);
  zt.onChange((m) => {
    const n: number | undefined = m.get(1)?.data.n;
    void n;
  });
  // Effect's own Standard Schema conversion works too.
  const sc = client.presence("pr:s", Schema.standardSchemaV1(Cursor));
  sc.onChange((m) => {
    const x: number | undefined = m.get(1)?.data.x;
    void x;
  });

  // The reconnect pattern
  client.waitForConnected().then(() => {
    room.heartbeat({ status: "online" }, 30_000);
  });
  const p: Promise<void> = client.close();
  void p;
  const off: () => void = client.onError((e) => void e.code);
  off();
  const id: number | undefined = client.clientId;
  void id;
}

it("the seed's examples type-check as the seed shows (checked by tsc before this runs)", () => {
  assert.equal(typeof seedTypes, "function");
});
