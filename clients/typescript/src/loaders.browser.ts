import type { EffectSchemaModule, WebSocketConstructor } from "./types.js";

// The standalone browser bundle has no module resolution: nothing can be loaded lazily.
export function loadEffectSchema(): Promise<EffectSchemaModule> {
  return Promise.reject(
    new Error(
      "the standalone browser bundle cannot load effect: pass createClient({ effectSchema: Schema }) " +
        "or a Standard Schema (Schema.standardSchemaV1(schema))",
    ),
  );
}

export function loadWebSocket(): Promise<WebSocketConstructor> {
  return Promise.reject(new Error("this environment has no global WebSocket: pass createClient({ url, WebSocket })"));
}
