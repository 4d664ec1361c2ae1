import { RollcallError } from "./errors.js";
import { effectSchemaModules, type EffectModuleCandidate } from "./loaders.js";
import type { EffectSchemaModule, StandardSchemaV1 } from "./types.js";

export type Issue = { readonly message: string; readonly path?: ReadonlyArray<unknown> };

/**
 * Why a schema could not be used at all (as opposed to data that does not match):
 * `schema_unavailable` (effect's Schema module could not be found or loaded) or
 * `schema_failed` (the schema library threw instead of answering).
 */
export type CodecFailure = { readonly code: "schema_unavailable" | "schema_failed"; readonly message: string; readonly cause?: unknown };

export type CodecResult =
  | { ok: true; value: unknown }
  | { ok: false; issues: ReadonlyArray<Issue>; failure?: undefined }
  | { ok: false; issues: ReadonlyArray<Issue>; failure: CodecFailure };

/**
 * Checks outgoing data and decodes incoming data for one schema.
 * `ready` is a promise while the codec cannot run yet (effect is being loaded),
 * `null` once it can. `encode` / `decode` may return a promise (a Standard Schema
 * whose `validate` is asynchronous). A result with `failure` means the schema could
 * not be used, which is never reported as a mismatch of the data.
 */
export interface Codec {
  readonly kind: "standard" | "effect";
  ready: Promise<void> | null;
  encode(value: unknown): CodecResult | Promise<CodecResult>;
  decode(value: unknown): CodecResult | Promise<CodecResult>;
}

/** The line that makes Effect schemas work where effect cannot be loaded by the SDK. */
export const EFFECT_SCHEMA_LINE = 'effectSchema: Schema to the client\'s options: createClient({ url, effectSchema: Schema }), with the Schema your app gets from "effect"';

const EFFECT_V3_TYPE_ID = Symbol.for("effect/Schema");
const EFFECT_V4_MARKER = "~effect/Schema/Schema";

export function isStandardSchema(s: unknown): s is StandardSchemaV1 {
  if ((typeof s !== "object" && typeof s !== "function") || s === null) return false;
  const std = (s as { "~standard"?: unknown })["~standard"];
  return (
    typeof std === "object" &&
    std !== null &&
    (std as { version?: unknown }).version === 1 &&
    typeof (std as { validate?: unknown }).validate === "function"
  );
}

/** The major version of effect an Effect Schema comes from (3: effect 3.10+, 4: effect 4), or undefined. */
export function effectMajor(s: unknown): 3 | 4 | undefined {
  if ((typeof s !== "object" && typeof s !== "function") || s === null || !("ast" in s)) return undefined;
  if (EFFECT_V4_MARKER in s) return 4;
  if (EFFECT_V3_TYPE_ID in s) return 3;
  return undefined;
}

/** An Effect Schema (effect 3.10+: `Symbol.for("effect/Schema")`; effect 4: `~effect/Schema/Schema`). */
export function isEffectSchema(s: unknown): boolean {
  return effectMajor(s) !== undefined;
}

function failed(code: CodecFailure["code"], message: string, cause?: unknown): CodecResult {
  return { ok: false, issues: [], failure: cause === undefined ? { code, message } : { code, message, cause } };
}

function standardCodec(schema: StandardSchemaV1): Codec {
  const std = schema["~standard"];
  const vendor = typeof std.vendor === "string" ? std.vendor : "the schema library";
  const threw = (e: unknown) => failed("schema_failed", `${vendor}'s validate threw: ${errorMessage(e)}`, e);
  const toResult = (r: StandardSchemaV1.Result<unknown>): CodecResult => {
    if (typeof r !== "object" || r === null) return failed("schema_failed", `${vendor}'s validate returned ${String(r)}, not a result`);
    return r.issues ? { ok: false, issues: r.issues.map(normalizeIssue) } : { ok: true, value: r.value };
  };
  const run = (value: unknown): CodecResult | Promise<CodecResult> => {
    let r: StandardSchemaV1.Result<unknown> | Promise<StandardSchemaV1.Result<unknown>>;
    try {
      r = std.validate(value);
    } catch (e) {
      return threw(e);
    }
    if (r instanceof Promise) return r.then(toResult, threw);
    try {
      return toResult(r);
    } catch (e) {
      return threw(e);
    }
  };
  return {
    kind: "standard",
    ready: null,
    // A Standard Schema has no encoder: outgoing data is validated and sent as given.
    encode: (value) => {
      const r = run(value);
      const keep = (res: CodecResult): CodecResult => (res.ok ? { ok: true, value } : res);
      return r instanceof Promise ? r.then(keep) : keep(r);
    },
    decode: run,
  };
}

// ---- Effect schemas -------------------------------------------------------------------
//
// An Effect schema carries no decoder of its own (neither effect 3 nor 4 puts
// `~standard` on it), so the SDK needs the `Schema` module of the effect copy the
// schema was made with:
// 1. `createClient({ effectSchema: Schema })`, if given (the app's own copy);
// 2. else, in Node, the copies of effect reachable from the app (its entry script,
//    the working directory) and from the SDK, preferring the very copy the schema
//    comes from (an SDK installed from a folder is a symlink: what it resolves from
//    its own location may be another effect altogether);
// 3. else (a browser bundle) it cannot: presence() throws `schema_unavailable`
//    naming the line to add.

/** A usable Schema module: has the functions the SDK calls, and a `String` schema to compare with. */
function asSchemaModule(m: unknown): (EffectSchemaModule & { String?: unknown }) | undefined {
  if ((typeof m !== "object" && typeof m !== "function") || m === null) return undefined;
  const mod = m as Partial<EffectSchemaModule> & { String?: unknown; Schema?: unknown };
  if (typeof mod.decodeUnknownSync === "function" && typeof mod.encodeUnknownSync === "function") {
    return mod as EffectSchemaModule & { String?: unknown };
  }
  // `import * as effect from "effect"` passed instead of `Schema`.
  if (mod.Schema !== undefined && mod.Schema !== m) return asSchemaModule(mod.Schema);
  return undefined;
}

function prototypes(o: unknown): Set<object> {
  const out = new Set<object>();
  let p: unknown = o !== null && (typeof o === "object" || typeof o === "function") ? Object.getPrototypeOf(o) : null;
  while (p !== null && p !== Object.prototype && p !== Function.prototype && out.size < 16) {
    out.add(p as object);
    p = Object.getPrototypeOf(p);
  }
  return out;
}

/** Whether `mod` is the very copy of effect that made `schema` (not just the same major). */
function isSameCopy(mod: { String?: unknown }, schema: object, major: 3 | 4): boolean {
  const ref = mod.String as Record<PropertyKey, unknown> | undefined;
  if (ref === undefined || effectMajor(ref) !== major) return false;
  if (major === 3) return ref[EFFECT_V3_TYPE_ID] === (schema as Record<PropertyKey, unknown>)[EFFECT_V3_TYPE_ID];
  // effect 4: schemas (and, for classes, their AST nodes) share prototypes per copy.
  const refProtos = prototypes(ref);
  for (const p of prototypes(schema)) if (refProtos.has(p)) return true;
  const refAst = prototypes(ref.ast);
  for (const p of prototypes((schema as { ast?: unknown }).ast)) if (refAst.has(p)) return true;
  return false;
}

function moduleMajor(mod: { String?: unknown }): 3 | 4 | undefined {
  return effectMajor(mod.String);
}

/** effect's errors for data that does not match (3: ParseError, 4: SchemaError). */
function isValidationError(e: unknown): boolean {
  const tag = typeof e === "object" && e !== null ? (e as { _tag?: unknown })._tag : undefined;
  return tag === "ParseError" || tag === "SchemaError";
}

type Run = (value: unknown) => CodecResult;

function effectRunners(mod: EffectSchemaModule, schema: unknown): { encode: Run; decode: Run } {
  const wrap = (f: (u: unknown) => unknown, what: string): Run => (value) => {
    try {
      return { ok: true, value: f(value) };
    } catch (e) {
      if (isValidationError(e)) return { ok: false, issues: [{ message: errorMessage(e) }] };
      return failed("schema_failed", `effect's Schema.${what} threw: ${errorMessage(e)}`, e);
    }
  };
  return {
    encode: wrap(mod.encodeUnknownSync(schema, { errors: "all" }), "encodeUnknownSync"),
    decode: wrap(mod.decodeUnknownSync(schema, { errors: "all" }), "decodeUnknownSync"),
  };
}

function unavailable(message: string): RollcallError {
  return new RollcallError("local", "schema_unavailable", `${message}; add ${EFFECT_SCHEMA_LINE}`);
}

/** The effect copies found so far, by file (shared by every client of the process). */
const loaded = new Map<string, Promise<EffectModuleCandidate | undefined>>();

/** Finds the Schema module for `schema` among the copies of effect the loader can reach. */
async function findEffectModule(schema: object, major: 3 | 4): Promise<EffectSchemaModule> {
  const found = effectSchemaModules!(loaded, major);
  const seen: string[] = [];
  let fallback: EffectSchemaModule | undefined;
  for await (const candidate of found) {
    const mod = asSchemaModule(candidate.module);
    const m = mod && moduleMajor(mod);
    seen.push(`effect ${candidate.version} at ${candidate.file}${candidate.module !== undefined && m === undefined ? " (not a Schema module)" : ""}`);
    if (!mod || m !== major) continue;
    if (isSameCopy(mod, schema, major)) return mod;
    fallback ??= mod;
  }
  if (fallback) return fallback; // another copy of the same major: decodes the same ASTs
  throw unavailable(
    `the Effect schema comes from effect ${major}, and no copy of effect ${major} could be loaded from the app or the SDK` +
      (seen.length > 0 ? ` (found: ${seen.join(", ")})` : " (none found)"),
  );
}

function effectCodec(schema: object, major: 3 | 4, given: unknown): Codec {
  let runners: { encode: Run; decode: Run } | undefined;
  let problem: CodecFailure | undefined;
  const use = (mod: EffectSchemaModule) => {
    try {
      runners = effectRunners(mod, schema);
    } catch (e) {
      problem = { code: "schema_failed", message: `effect's Schema module could not make a decoder for this schema: ${errorMessage(e)}`, cause: e };
    }
  };
  const codec: Codec = {
    kind: "effect",
    ready: null,
    encode: (value) => (runners ? runners.encode(value) : { ok: false, issues: [], failure: problem! }),
    decode: (value) => (runners ? runners.decode(value) : { ok: false, issues: [], failure: problem! }),
  };
  if (given !== undefined) {
    const mod = asSchemaModule(given);
    if (!mod) {
      throw new RollcallError(
        "local",
        "schema_unavailable",
        'createClient({ effectSchema }) must be effect\'s Schema module: createClient({ url, effectSchema: Schema }), with the Schema your app gets from "effect"',
      );
    }
    const m = moduleMajor(mod);
    if (m !== undefined && m !== major) {
      throw new RollcallError(
        "local",
        "schema_unavailable",
        `createClient({ effectSchema }) is effect ${m}'s Schema module, but the schema comes from effect ${major}: pass the Schema module of the effect the schema is made with`,
      );
    }
    use(mod);
    return codec;
  }
  if (effectSchemaModules === null) {
    // A browser bundle: nothing can be loaded at run time. Said now, not per heartbeat.
    throw unavailable("this build of the SDK cannot load effect by itself (a browser bundle)");
  }
  codec.ready = findEffectModule(schema, major).then(use, (e: unknown) => {
    problem = { code: "schema_unavailable", message: errorMessage(e), cause: e };
  });
  void codec.ready.then(() => {
    codec.ready = null;
  });
  return codec;
}

/**
 * The codec for a schema. Throws a TypeError for something that is no schema, and a
 * `schema_unavailable` RollcallError for an Effect schema that cannot be used here
 * (see `EFFECT_SCHEMA_LINE`).
 */
export function makeCodec(schema: unknown, effectSchema: unknown): Codec {
  if (isStandardSchema(schema)) return standardCodec(schema);
  const major = effectMajor(schema);
  if (major !== undefined) return effectCodec(schema as object, major, effectSchema);
  throw new TypeError(
    "rollcall-client: presence(room, schema): schema must be an Effect Schema or a Standard Schema v1 object (zod, valibot, arktype, ...)",
  );
}

/** The error to report for a codec result that is a failure to use the schema. */
export function failureError(f: CodecFailure, extra: { room: string; clientId?: number }): RollcallError {
  return new RollcallError("local", f.code, f.message, f.cause === undefined ? extra : { ...extra, cause: f.cause });
}

function normalizeIssue(issue: StandardSchemaV1.Issue): Issue {
  const path = issue.path?.map((p) => (typeof p === "object" && p !== null && "key" in p ? p.key : p));
  return path && path.length > 0 ? { message: issue.message, path } : { message: issue.message };
}

export function errorMessage(e: unknown): string {
  if (e instanceof Error) return e.message;
  try {
    return String(e);
  } catch {
    return "unknown error";
  }
}

export function describeIssues(issues: ReadonlyArray<Issue>): string {
  return issues
    .map((i) => (i.path && i.path.length > 0 ? `${i.path.map(String).join(".")}: ${i.message}` : i.message))
    .join("; ");
}
