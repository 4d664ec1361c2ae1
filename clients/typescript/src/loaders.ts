import type { EffectSchemaModule, WebSocketConstructor } from "./types.js";

// Optional dependencies, loaded lazily and only when needed:
// - effect's Schema module, when an Effect schema is used (effect is an optional peer);
// - the `ws` package, when there is no global WebSocket (Node 20) and none was passed.
// The specifiers are variables (and marked for bundlers to leave alone) so that
// bundling an app that uses neither does not fail on a missing package; browser apps
// that use Effect schemas pass `createClient({ effectSchema: Schema })` instead.
const EFFECT_SCHEMA = "effect/Schema";
const WS = "ws";

export function loadEffectSchema(): Promise<EffectSchemaModule> {
  return import(/* @vite-ignore */ /* webpackIgnore: true */ EFFECT_SCHEMA) as Promise<EffectSchemaModule>;
}

export async function loadWebSocket(): Promise<WebSocketConstructor> {
  const mod = (await import(/* @vite-ignore */ /* webpackIgnore: true */ WS)) as {
    WebSocket?: WebSocketConstructor;
    default?: WebSocketConstructor;
  };
  const Ctor = mod.WebSocket ?? mod.default;
  if (typeof Ctor !== "function") throw new Error("the ws package has no WebSocket export");
  return Ctor;
}
