export { createClient } from "./client.js";
export { RollcallError } from "./errors.js";
export type {
  ClientOptions,
  ConnectionState,
  EffectSchemaLike,
  EffectSchemaModule,
  Presence,
  PresenceDiff,
  PresenceEntry,
  PresenceOptions,
  PresenceUser,
  PresenceSchema,
  ReconnectOptions,
  RollcallClient,
  RollcallErrorLike,
  SchemaInput,
  SchemaOutput,
  StandardSchemaV1,
  UsersDiff,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";
