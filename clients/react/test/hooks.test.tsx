// The hooks in jsdom (React Testing Library) against a real `rollcall` server.
import { StrictMode, useRef } from "react";
import { act, cleanup, render, screen, waitFor } from "@testing-library/react";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { createClient, type RollcallClient } from "rollcall-client";
import {
  RollcallProvider,
  shallow,
  useClient,
  useConnectionState,
  useMyPresence,
  useOthers,
  usePresence,
  useSelf,
  useUsers,
} from "../src/index.js";
import { TestServer } from "./helpers/server.js";

type Cursor = { name: string; x: number; y: number };

let server: TestServer;
const clients: RollcallClient[] = [];

beforeAll(async () => {
  server = await TestServer.start();
});

afterEach(async () => {
  cleanup();
  await Promise.all(clients.splice(0).map((c) => c.close()));
});

afterAll(async () => {
  await server.stop();
});

/** A plain SDK client (Node 20: the `ws` package), closed after the test. */
function sdkClient(): RollcallClient {
  const c = createClient({ url: server.wsUrl, WebSocket, reconnect: { initialDelayMs: 20, maxDelayMs: 200 } });
  clients.push(c);
  return c;
}

/** Render counts per component name. */
function renderCounter() {
  const counts = new Map<string, number>();
  const useCount = (name: string) => {
    counts.set(name, (counts.get(name) ?? 0) + 1);
  };
  return { counts, useCount, of: (name: string) => counts.get(name) ?? 0 };
}

/** A `ws` WebSocket that records every connection and every frame the client sends. */
function recordingWebSocket() {
  const sockets: WebSocket[] = [];
  const sent: { type: string; room?: string }[] = [];
  class RecordingWebSocket extends WebSocket {
    constructor(url: string) {
      super(url);
      sockets.push(this);
    }
    override send(data: string): void {
      sent.push(JSON.parse(data) as { type: string; room?: string });
      super.send(data);
    }
  }
  return { sockets, sent, WebSocket: RecordingWebSocket };
}

describe("reading hooks", () => {
  it("join, update and leave re-render the components that show them, and only those", async () => {
    const room = "react:rerender";
    const mine = sdkClient();
    const bob = sdkClient();
    const rc = renderCounter();

    function Count() {
      rc.useCount("count");
      const n = useOthers<Cursor, number>(room, (others) => others.size);
      return <p data-testid="count">{n} here</p>;
    }
    function Names() {
      rc.useCount("names");
      const names = useOthers<Cursor, string[]>(room, (others) => [...others.values()].map((e) => e.data.name).sort(), shallow);
      return <p data-testid="names">{names.join(",")}</p>;
    }
    function Cursors() {
      rc.useCount("cursors");
      const [entries] = usePresence<Cursor>(room);
      return (
        <ul>
          {[...entries].map(([id, e]) => (
            <li key={id} data-testid={`cursor-${e.data.name}`}>
              {e.data.x},{e.data.y}
            </li>
          ))}
        </ul>
      );
    }
    function Users() {
      rc.useCount("users");
      const users = useUsers<Cursor>(room);
      return <p data-testid="users">{users.size} users</p>;
    }

    render(
      <RollcallProvider client={mine}>
        <Count />
        <Names />
        <Cursors />
        <Users />
      </RollcallProvider>,
    );
    expect(screen.getByTestId("count").textContent).toBe("0 here");

    // Join.
    const bobRoom = bob.presence(room);
    bobRoom.heartbeat({ name: "bob", x: 1, y: 1 }, 60_000);
    await waitFor(() => expect(screen.getByTestId("count").textContent).toBe("1 here"));
    await waitFor(() => expect(screen.getByTestId("names").textContent).toBe("bob"));
    await waitFor(() => expect(screen.getByTestId("cursor-bob").textContent).toBe("1,1"));
    expect(screen.getByTestId("users").textContent).toBe("1 users");

    // Updates: the cursor moves 20 times; only the components showing it re-render.
    const count = rc.of("count");
    const names = rc.of("names");
    const cursors = rc.of("cursors");
    for (let i = 2; i <= 21; i++) {
      bobRoom.heartbeat({ name: "bob", x: i, y: i * 10 }, 60_000);
      await waitFor(() => expect(screen.getByTestId("cursor-bob").textContent).toBe(`${i},${i * 10}`));
    }
    expect(rc.of("cursors") - cursors).toBeGreaterThanOrEqual(20);
    expect(rc.of("count")).toBe(count);
    expect(rc.of("names")).toBe(names);

    // A second user joins: the count and the names re-render.
    const carol = sdkClient();
    carol.presence(room).heartbeat({ name: "carol", x: 5, y: 5 }, 60_000);
    await waitFor(() => expect(screen.getByTestId("names").textContent).toBe("bob,carol"));
    expect(screen.getByTestId("count").textContent).toBe("2 here");
    expect(rc.of("count")).toBe(count + 1);
    expect(screen.getByTestId("users").textContent).toBe("2 users");

    // Leave.
    bobRoom.leave();
    await waitFor(() => expect(screen.getByTestId("names").textContent).toBe("carol"));
    expect(screen.getByTestId("count").textContent).toBe("1 here");
    expect(screen.queryByTestId("cursor-bob")).toBeNull();
  });

  it("useSelf is the own entry; useOthers leaves it out and does not re-render when only the own entry changes", async () => {
    const room = "react:self";
    const mine = sdkClient();
    const other = sdkClient();
    const rc = renderCounter();
    let update: ((fn: (p: Cursor) => Cursor) => void) | undefined;
    function Me() {
      const [me, set] = useMyPresence<Cursor>(room, { name: "me", x: 0, y: 0 }, 60_000);
      update = set;
      const self = useSelf<Cursor>(room);
      return (
        <p data-testid="me">
          {me.x}|{self ? `${self.data.name}@${self.data.x}` : "-"}
        </p>
      );
    }
    function Others() {
      rc.useCount("others");
      const others = useOthers<Cursor>(room);
      return <p data-testid="others">{[...others.values()].map((e) => e.data.name).join(",")}</p>;
    }
    render(
      <RollcallProvider client={mine}>
        <Me />
        <Others />
      </RollcallProvider>,
    );
    await waitFor(() => expect(screen.getByTestId("me").textContent).toBe("0|me@0"));
    other.presence(room).heartbeat({ name: "other", x: 1, y: 1 }, 60_000);
    await waitFor(() => expect(screen.getByTestId("others").textContent).toBe("other"));

    const before = rc.of("others");
    for (let i = 1; i <= 5; i++) {
      act(() => update!((p) => ({ ...p, x: i })));
      await waitFor(() => expect(screen.getByTestId("me").textContent).toBe(`${i}|me@${i}`));
    }
    expect(rc.of("others")).toBe(before);
  });
});

describe("room lifetime", () => {
  it("the last component to unmount unsubscribes the room; the next one to mount opens it again", async () => {
    const room = "react:lifetime";
    const rec = recordingWebSocket();
    const mine = createClient({ url: server.wsUrl, WebSocket: rec.WebSocket });
    clients.push(mine);
    await mine.waitForConnected();
    sdkClient().presence(room).heartbeat({ name: "dan", x: 0, y: 0 }, 60_000);
    function Count({ id }: { id: string }) {
      const n = useOthers(room, (o) => o.size);
      return <p data-testid={id}>{n}</p>;
    }
    function App({ n }: { n: number }) {
      return (
        <RollcallProvider client={mine}>
          {Array.from({ length: n }, (_, i) => (
            <Count key={i} id={`count-${i}`} />
          ))}
        </RollcallProvider>
      );
    }
    const forRoom = () => rec.sent.filter((m) => m.room === room).map((m) => m.type);
    const { rerender } = render(<App n={2} />);
    await waitFor(() => expect(screen.getByTestId("count-1").textContent).toBe("1"));
    rerender(<App n={1} />);
    rerender(<App n={0} />);
    await waitFor(() => expect(forRoom()).toEqual(["subscribe", "unsubscribe"]));
    rerender(<App n={1} />);
    await waitFor(() => expect(screen.getByTestId("count-0").textContent).toBe("1"));
    expect(forRoom()).toEqual(["subscribe", "unsubscribe", "subscribe"]);
  });
});

describe("useMyPresence", () => {
  it("updates are sent throttled (the latest wins), and unmounting leaves the room", async () => {
    const room = "react:unmount";
    const rec = recordingWebSocket();
    const mine = createClient({ url: server.wsUrl, WebSocket: rec.WebSocket });
    clients.push(mine);
    const observer = sdkClient().presence(room);
    let update: ((fn: (p: Cursor) => Cursor) => void) | undefined;
    function Me() {
      const [me, set] = useMyPresence<Cursor>(room, { name: "ann", x: 0, y: 0 }, 60_000);
      update = set;
      return <p data-testid="me">{me.x}</p>;
    }
    function App({ show }: { show: boolean }) {
      return <RollcallProvider client={mine}>{show ? <Me /> : <p>gone</p>}</RollcallProvider>;
    }
    const { rerender } = render(<App show />);
    await waitFor(() => expect(mine.clientId !== undefined && observer.value().has(mine.clientId)).toBe(true));
    const id = mine.clientId!;
    expect(observer.value().get(id)?.data).toEqual({ name: "ann", x: 0, y: 0 });

    // 100 updates, each its own render, as fast as they come: at most one heartbeat
    // per 50 ms window (the client's default heartbeatThrottleMs) plus the last one.
    const heartbeats = () => rec.sent.filter((m) => m.type === "heartbeat" && m.room === room).length;
    const before = heartbeats();
    const started = performance.now();
    for (let i = 1; i <= 100; i++) act(() => update!((p) => ({ ...p, x: i })));
    const elapsed = performance.now() - started;
    expect(screen.getByTestId("me").textContent).toBe("100");
    await waitFor(() => expect(observer.value().get(id)?.data).toEqual({ name: "ann", x: 100, y: 0 }));
    expect(heartbeats() - before).toBeLessThanOrEqual(Math.floor(elapsed / 50) + 2);

    // The TTL is a minute: only a leave removes the entry within the wait.
    rerender(<App show={false} />);
    await waitFor(() => expect(observer.value().has(id)).toBe(false));
    expect(await server.roomEntries(room)).toEqual([]);
    expect(mine.state).toBe("connected"); // the client is the caller's: still open
  });

  it("StrictMode: the double mount neither leaves nor duplicates, and unmounting leaves no entry behind", async () => {
    const room = "react:strict";
    const observer = sdkClient().presence(room);
    // Every client id the observer ever saw in the room, and whether the entry ever
    // disappeared while the component was mounted.
    const seen = new Set<number>();
    let gapWhileMounted = false;
    let mounted = true;
    observer.onChange((entries) => {
      for (const id of entries.keys()) seen.add(id);
      if (mounted && seen.size > 0 && entries.size === 0) gapWhileMounted = true;
    });
    const sockets: WebSocket[] = [];
    class CountingWebSocket extends WebSocket {
      constructor(url: string) {
        super(url);
        sockets.push(this);
      }
    }
    let renders = 0;
    function Me() {
      renders++;
      const [me] = useMyPresence<Cursor>(room, { name: "strict", x: 1, y: 2 }, 60_000);
      const state = useConnectionState();
      return (
        <p data-testid="me">
          {me.name} {state}
        </p>
      );
    }
    const { unmount } = render(
      <StrictMode>
        <RollcallProvider url={server.wsUrl} options={{ WebSocket: CountingWebSocket }}>
          <Me />
        </RollcallProvider>
      </StrictMode>,
    );
    await waitFor(() => expect(screen.getByTestId("me").textContent).toBe("strict connected"));
    await waitFor(() => expect(seen.size).toBe(1));
    const entries = await server.roomEntries(room);
    expect(entries.map((e) => e.data)).toEqual([{ name: "strict", x: 1, y: 2 }]);
    expect(renders).toBeGreaterThan(1); // StrictMode did render twice
    expect(sockets.length).toBe(1); // one client, one connection
    expect(gapWhileMounted).toBe(false);

    mounted = false;
    unmount();
    await waitFor(async () => expect(await server.roomEntries(room)).toEqual([]));
    await waitFor(() => expect(observer.value().size).toBe(0));
    expect(seen.size).toBe(1);
    // The provider's own client closed its connection.
    await waitFor(() => expect(sockets[0]!.readyState).toBe(WebSocket.CLOSED));
  });
});

describe("StrictMode on a connected client", () => {
  it("the double mount sends one heartbeat and one subscribe, no leave; the unmount leaves", async () => {
    const room = "react:strict-connected";
    const rec = recordingWebSocket();
    const mine = createClient({ url: server.wsUrl, WebSocket: rec.WebSocket });
    clients.push(mine);
    await mine.waitForConnected();
    const observer = sdkClient().presence(room);
    function Me() {
      useMyPresence<Cursor>(room, { name: "twice", x: 0, y: 0 }, 60_000);
      const n = useOthers(room, (o) => o.size);
      const [entries] = usePresence<Cursor>(room);
      return (
        <p data-testid="me">
          {entries.size} {n}
        </p>
      );
    }
    const { unmount } = render(
      <StrictMode>
        <RollcallProvider client={mine}>
          <Me />
        </RollcallProvider>
      </StrictMode>,
    );
    await waitFor(() => expect(screen.getByTestId("me").textContent).toBe("1 0"));
    await waitFor(() => expect(observer.value().has(mine.clientId!)).toBe(true));
    const forRoom = () => rec.sent.filter((m) => m.room === room).map((m) => m.type);
    expect(forRoom()).toEqual(["subscribe", "heartbeat"]);

    unmount();
    await waitFor(() => expect(observer.value().has(mine.clientId!)).toBe(false));
    expect(forRoom()).toEqual(["subscribe", "heartbeat", "leave", "unsubscribe"]);
    expect(await server.roomEntries(room)).toEqual([]);
  });
});

describe("connection", () => {
  it("a reconnect (server restart) keeps the same client id and the tracked entry", async () => {
    const room = "react:reconnect";
    const ids: (number | undefined)[] = [];
    const states: string[] = [];
    function Me() {
      useMyPresence(room, { name: "rita" }, 60_000);
      const state = useConnectionState();
      const client = useClient();
      const self = useSelf<{ name: string }>(room);
      const last = useRef<string>("");
      if (last.current !== state) {
        last.current = state;
        states.push(state);
      }
      if (state === "connected") ids.push(client.clientId);
      return (
        <p data-testid="me">
          {state} {client.clientId ?? "-"} {self?.data.name ?? "-"}
        </p>
      );
    }
    render(
      <RollcallProvider url={server.wsUrl} options={{ WebSocket, reconnect: { initialDelayMs: 20, maxDelayMs: 200 } }}>
        <Me />
      </RollcallProvider>,
    );
    await waitFor(() => expect(screen.getByTestId("me").textContent).toMatch(/^connected \d+ rita$/));
    const id = ids.find((x) => x !== undefined)!;
    expect(await server.roomEntries(room)).toEqual([expect.objectContaining({ clientId: id })]);

    await server.restart();
    await waitFor(() => expect(states).toContain("reconnecting"), { timeout: 10_000 });
    await waitFor(() => expect(screen.getByTestId("me").textContent).toBe(`connected ${id} rita`), { timeout: 10_000 });
    await waitFor(async () => expect((await server.roomEntries(room)).map((e) => e.clientId)).toEqual([id]), { timeout: 10_000 });
    expect(new Set(ids.filter((x) => x !== undefined))).toEqual(new Set([id]));
  });
});
