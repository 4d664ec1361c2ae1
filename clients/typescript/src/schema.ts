import type { EffectSchemaModule, StandardSchemaV1 } from "./types.js";

export type Issue = { readonly message: string; readonly path?: ReadonlyArray<unknown> };
export type CodecResult = { ok: true; value: unknown } | { ok: false; issues: ReadonlyArray<Issue> };

/**
 * Checks outgoing data and decodes incoming data for one schema.
 * `ready` is a promise while the codec cannot run yet (effect is being loaded),
 * `null` once it can. `encode` / `decode` may return a promise (a Standard Schema
 * whose `validate` is asynchronous).
 */
export interface Codec {
  readonly kind: "standard" | "effect";
  ready: Promise<void> | null;
  encode(value: unknown): CodecResult | Promise<CodecResult>;
  decode(value: unknown): CodecResult | Promise<CodecResult>;
}

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

/** An Effect Schema (effect 3.10+: `Symbol.for("effect/Schema")`; effect 4: `~effect/Schema/Schema`). */
export function isEffectSchema(s: unknown): boolean {
  if ((typeof s !== "object" && typeof s !== "function") || s === null) return false;
  return (EFFECT_V3_TYPE_ID in s || EFFECT_V4_MARKER in s) && "ast" in s;
}

function standardCodec(schema: StandardSchemaV1): Codec {
  const validate = schema["~standard"].validate;
  const toResult = (r: StandardSchemaV1.Result<unknown>): CodecResult =>
    r.issues ? { ok: false, issues: r.issues.map(normalizeIssue) } : { ok: true, value: r.value };
  const run = (value: unknown): CodecResult | Promise<CodecResult> => {
    let r: StandardSchemaV1.Result<unknown> | Promise<StandardSchemaV1.Result<unknown>>;
    try {
      r = validate(value);
    } catch (e) {
      return { ok: false, issues: [{ message: errorMessage(e) }] };
    }
    if (r instanceof Promise) {
      return r.then(toResult, (e: unknown) => ({ ok: false, issues: [{ message: errorMessage(e) }] }) as CodecResult);
    }
    return toResult(r);
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

function effectCodec(schema: unknown, module: EffectSchemaModule | undefined, load: () => Promise<EffectSchemaModule>): Codec {
  let decodeSync: ((u: unknown) => unknown) | undefined;
  let encodeSync: ((u: unknown) => unknown) | undefined;
  let loadError: unknown;
  const init = (mod: EffectSchemaModule) => {
    decodeSync = mod.decodeUnknownSync(schema);
    encodeSync = mod.encodeUnknownSync(schema);
  };
  const guard = (f: ((u: unknown) => unknown) | undefined, value: unknown): CodecResult => {
    if (!f) {
      return {
        ok: false,
        issues: [{ message: `effect's Schema module could not be loaded: ${errorMessage(loadError)}` }],
      };
    }
    try {
      return { ok: true, value: f(value) };
    } catch (e) {
      return { ok: false, issues: [{ message: errorMessage(e) }] };
    }
  };
  const codec: Codec = {
    kind: "effect",
    ready: null,
    encode: (value) => guard(encodeSync, value),
    decode: (value) => guard(decodeSync, value),
  };
  if (module) {
    try {
      init(module);
    } catch (e) {
      loadError = e;
    }
  } else {
    codec.ready = load().then(
      (mod) => {
        try {
          init(mod);
        } catch (e) {
          loadError = e;
        }
        codec.ready = null;
      },
      (e: unknown) => {
        loadError = e;
        codec.ready = null;
      },
    );
  }
  return codec;
}

/** The codec for a schema, or throws a TypeError for something that is no schema. */
export function makeCodec(
  schema: unknown,
  module: EffectSchemaModule | undefined,
  load: () => Promise<EffectSchemaModule>,
): Codec {
  if (isStandardSchema(schema)) return standardCodec(schema);
  if (isEffectSchema(schema)) return effectCodec(schema, module, load);
  throw new TypeError(
    "rollcall-client: presence(room, schema): schema must be an Effect Schema or a Standard Schema v1 object (zod, valibot, arktype, ...)",
  );
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
