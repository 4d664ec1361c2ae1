export { createClient } from "./client.js";
export { RollcallError } from "./errors.js";
export type {
  ClientOptions,
  ConnectionState,
  EffectSchemaLike,
  EffectSchemaModule,
  Presence,
  PresenceEntry,
  PresenceSchema,
  ReconnectOptions,
  RollcallClient,
  RollcallErrorLike,
  SchemaInput,
  SchemaOutput,
  StandardSchemaV1,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";
