// @vitest-environment node
// Server rendering: the hooks render an empty room and no WebSocket is opened.
import { renderToString } from "react-dom/server";
import { setImmediate as tick } from "node:timers/promises";
import { afterAll, beforeAll, expect, it, vi } from "vitest";
import { WebSocket } from "ws";
import { createClient } from "rollcall-client";
import { RollcallProvider, useClient, useConnectionState, useMyPresence, useOthers, usePresence, useSelf, useUsers } from "../src/index.js";
import { TestServer } from "./helpers/server.js";

let server: TestServer;
beforeAll(async () => {
  server = await TestServer.start();
});
afterAll(async () => {
  await server.stop();
});

it("renderToString renders an empty map and opens no WebSocket", async () => {
  const room = "react:ssr";
  // Someone is in the room: the server render must still show it empty (no connection).
  const other = createClient({ url: server.wsUrl, WebSocket });
  other.presence(room).heartbeat({ name: "other" }, 60_000);
  await vi.waitFor(async () => expect((await server.roomEntries(room)).length).toBe(1));

  let opened = 0;
  class CountingWebSocket extends WebSocket {
    constructor(url: string) {
      super(url);
      opened++;
    }
  }
  function Room() {
    const [entries] = usePresence(room);
    const count = useOthers(room, (o) => o.size);
    const self = useSelf(room);
    const users = useUsers(room);
    const [mine] = useMyPresence(room, { name: "ssr" }, 10_000);
    const state = useConnectionState();
    return (
      <p>
        {entries.size} entries, {count} others, {users.size} users, self {self ? "yes" : "no"}, mine {mine.name}, {state}
      </p>
    );
  }
  const html = renderToString(
    <RollcallProvider url={server.wsUrl} options={{ WebSocket: CountingWebSocket }}>
      <Room />
    </RollcallProvider>,
  );
  expect(html).toBe("<p>0<!-- --> entries, <!-- -->0<!-- --> others, <!-- -->0<!-- --> users, self <!-- -->no<!-- -->, mine <!-- -->ssr<!-- -->, <!-- -->connecting</p>");

  function NeedsClient() {
    useClient();
    return null;
  }
  expect(() =>
    renderToString(
      <RollcallProvider url={server.wsUrl} options={{ WebSocket: CountingWebSocket }}>
        <NeedsClient />
      </RollcallProvider>,
    ),
  ).toThrow(/no client during server rendering/);

  // A client connects from a microtask after it is created: let those run.
  await tick();
  await tick();
  expect(opened).toBe(0);
  await other.close();
});
