import type { EffectModuleCandidate } from "./loaders.js";
import type { WebSocketConstructor } from "./types.js";

// The standalone browser bundle (rollcall-client/browser) has no module resolution:
// nothing can be loaded lazily. Effect schemas need createClient({ effectSchema: Schema }).
export const effectSchemaModules:
  | ((cache: Map<string, Promise<EffectModuleCandidate | undefined>>, major: number) => AsyncIterable<EffectModuleCandidate>)
  | null = null;

export function loadWebSocket(): Promise<WebSocketConstructor> {
  return Promise.reject(new Error("this environment has no global WebSocket: pass createClient({ url, WebSocket })"));
}
