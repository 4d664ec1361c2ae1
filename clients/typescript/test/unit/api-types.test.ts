// Compile-time checks of the connection-state, diff, users, failover and throttle API
// (names and types exactly as documented). Type-checked by `npm test` (tsc) before
// anything runs; the runtime part only makes sure it was compiled.
import assert from "node:assert/strict";
import { it } from "node:test";
import { Schema } from "effect";
import {
  createClient,
  RollcallError,
  type ConnectionState,
  type Presence,
  type PresenceDiff,
  type PresenceEntry,
  type PresenceOptions,
  type PresenceUser,
  type RollcallClient,
  type UsersDiff,
} from "rollcall-client";

type Equal<A, B> = (<G>() => G extends A ? 1 : 2) extends <G>() => G extends B ? 1 : 2 ? true : false;
function expectType<T extends true>(_: T): void {}

// Never called: only type-checked.
export function apiTypes(): void {
  const client: RollcallClient = createClient({ url: ["ws://a:7700/ws", "ws://b:7700/ws"], heartbeatThrottleMs: 50 });
  createClient({ url: "ws://a:7700/ws" });

  const s: ConnectionState = client.state;
  expectType<Equal<ConnectionState, "connecting" | "connected" | "reconnecting" | "closed">>(true);
  const off: () => void = client.onStateChange((state) => {
    expectType<Equal<typeof state, ConnectionState>>(true);
  });
  off();
  void s;
  const url: string = client.url;
  void url;
  client.waitForConnected().catch((e: unknown) => {
    if (e instanceof RollcallError) {
      const code: string = e.code;
      void code;
    }
  });

  const room = client.presence("pr:room-123");
  const opts: PresenceOptions = { heartbeatThrottleMs: 0 };
  const fast = client.presence("pr:fast", undefined, opts);
  expectType<Equal<typeof fast, Presence<unknown>>>(true);
  const Cursor = Schema.Struct({ x: Schema.Number, y: Schema.Number });
  const cursors = client.presence("pr:cursors", Cursor, { heartbeatThrottleMs: 16 });
  // Broadcasts typed by their own schema; untyped without one.
  const reactions = client.presence("pr:reactions", undefined, { broadcastSchema: Cursor });
  const sent: Promise<boolean> = reactions.broadcast({ x: 1, y: 2 });
  void sent;
  // @ts-expect-error: the broadcast schema wants numbers
  void reactions.broadcast({ x: "1", y: 2 });
  reactions.onBroadcast((point, from) => {
    expectType<Equal<typeof point, { readonly x: number; readonly y: number }>>(true);
    const id: number = from.clientId;
    const user: string | undefined = from.userId;
    void id;
    void user;
  });
  room.onBroadcast((data) => expectType<Equal<typeof data, unknown>>(true));
  void room.broadcast({ anything: [1, 2] });

  const offChange: () => void = room.onChange((entries, diff) => {
    expectType<Equal<typeof entries, Map<number, PresenceEntry<unknown>>>>(true);
    expectType<Equal<typeof diff, PresenceDiff>>(true);
    const ids: number[] = [...diff.joined, ...diff.left, ...diff.updated];
    void ids;
  });
  offChange();
  room.onChange((entries) => void entries); // the seed's one-argument form

  const me = cursors.self();
  expectType<Equal<typeof me, PresenceEntry<{ readonly x: number; readonly y: number }> | undefined>>(true);
  const others = cursors.others();
  expectType<Equal<typeof others, Map<number, PresenceEntry<{ readonly x: number; readonly y: number }>>>>(true);
  const users = cursors.users();
  expectType<Equal<typeof users, Map<string, PresenceUser<{ readonly x: number; readonly y: number }>>>>(true);
  const offUsers: () => void = cursors.onUsersChange((u, diff) => {
    expectType<Equal<typeof u, Map<string, PresenceUser<{ readonly x: number; readonly y: number }>>>>(true);
    expectType<Equal<typeof diff, UsersDiff>>(true);
    const keys: string[] = [...diff.joined, ...diff.left, ...diff.updated];
    for (const user of u.values()) {
      const id: string = user.userId;
      const n: number = user.entries.size;
      void id;
      void n;
    }
    void keys;
  });
  offUsers();
}

it("the part-2 API types check (checked by tsc before this runs)", () => {
  assert.equal(typeof apiTypes, "function");
});
