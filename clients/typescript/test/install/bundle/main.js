// A page as an app would write it: the seed's Effect schema, bundled (esbuild or vite)
// with the SDK from its npm tarball. A bundle cannot load effect by itself, so the
// client gets it with the one documented line: createClient({ url, effectSchema: Schema }).
// ?ws=URL&x=N&y=N; what happened is in window.results for the test to read.
import { Schema } from "effect";
import { createClient } from "rollcall-client";

const params = new URLSearchParams(location.search);
const url = params.get("ws");
const results = (window.results = { errors: [], entries: [], without: null, clientId: null });

const Cursor = Schema.Struct({
  x: Schema.Number,
  y: Schema.Number,
});

// Without the line: presence() says which line is missing (not a schema mismatch).
const bare = createClient({ url });
try {
  bare.presence("pr:cursors", Cursor);
  results.without = "no error";
} catch (e) {
  results.without = { code: e.code, message: e.message };
}
await bare.close();

// With it.
const client = createClient({ url, effectSchema: Schema });
client.onError((e) => results.errors.push({ code: e.code, message: e.message }));
const cursors = client.presence("pr:cursors", Cursor);
cursors.onChange((entries) => {
  results.entries = [...entries].map(([id, e]) => ({ id, data: e.data }));
});
await client.waitForConnected();
results.clientId = client.clientId;
cursors.heartbeat({ x: 120, y: 340 }, 5_000); // the seed's heartbeat
cursors.heartbeat({ x: "bad" }, 5_000); // refused here (schema_mismatch), never sent
cursors.track({ x: Number(params.get("x")), y: Number(params.get("y")) }, 30_000);
addEventListener("pagehide", () => void client.close());
