// Per-test server + clients for the integration tests: each test gets its own
// `rollcall` process (port 0, temp data dir), killed after the test together with
// every client it created.
import { afterEach, beforeEach } from "node:test";
import WebSocket from "ws";
import { createClient, type ClientOptions, type RollcallClient } from "rollcall-client";
import { TestServer, type ServerOptions } from "./server.js";

export function harness(serverOptions: ServerOptions = {}) {
  let server: TestServer | undefined;
  const clients = new Set<RollcallClient>();
  const intervals = new Set<ReturnType<typeof setInterval>>();

  beforeEach(async () => {
    server = await TestServer.start(serverOptions);
  });

  afterEach(async () => {
    for (const i of intervals) clearInterval(i);
    intervals.clear();
    await Promise.all([...clients].map((c) => c.close()));
    clients.clear();
    await server?.stop();
    server = undefined;
  });

  return {
    get server(): TestServer {
      if (!server) throw new Error("no server");
      return server;
    },
    /** A client of this test's server (closed after the test). */
    client(options: Partial<ClientOptions> = {}): RollcallClient {
      const c = createClient({ url: server!.wsUrl, WebSocket, reconnect: { initialDelayMs: 50, maxDelayMs: 500 }, ...options });
      clients.add(c);
      return c;
    },
    /** Registers a client created elsewhere for cleanup. */
    adopt<C extends RollcallClient>(c: C): C {
      clients.add(c);
      return c;
    },
    /** A setInterval that is cleared after the test. */
    setInterval(fn: () => void, ms: number): ReturnType<typeof setInterval> {
      const i = setInterval(fn, ms);
      intervals.add(i);
      return i;
    },
  };
}
