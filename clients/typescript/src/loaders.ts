import type { WebSocketConstructor } from "./types.js";

// Optional dependencies, loaded lazily and only when needed:
// - effect's Schema module, when an Effect schema is used (effect is an optional peer);
// - the `ws` package, when there is no global WebSocket (Node 20) and none was passed.
// Specifiers are variables (and marked for bundlers to leave alone) so that bundling
// an app that uses neither does not fail on a missing package. Outside Node (a
// browser) effect is not looked for: apps pass createClient({ effectSchema: Schema }).

/**
 * One copy of effect's Schema module: the file, the package's version, and the
 * module (undefined when not loaded: another major version than the one wanted,
 * and `file` is then the package's folder).
 */
export interface EffectModuleCandidate {
  readonly file: string;
  readonly version: string;
  readonly module?: unknown;
}

const WS = "ws";
const NODE_MODULE = "node:module";

// This module's own location: `__filename` in the CommonJS build, import.meta.url in ESM.
declare const __filename: string | undefined;
function selfLocation(): string | undefined {
  if (typeof __filename === "string") return __filename;
  try {
    return import.meta.url;
  } catch {
    return undefined;
  }
}

type Require = ((id: string) => unknown) & { resolve(id: string): string };
interface NodeModuleApi {
  createRequire(from: string): Require;
}
interface NodeProcess {
  versions?: { node?: string };
  argv?: string[];
  cwd?: () => string;
  getBuiltinModule?: (id: string) => unknown;
}

function nodeProcess(): NodeProcess | undefined {
  const p = (globalThis as { process?: NodeProcess }).process;
  return typeof p?.versions?.node === "string" ? p : undefined;
}

async function nodeModuleApi(proc: NodeProcess): Promise<NodeModuleApi | undefined> {
  try {
    const builtin = typeof proc.getBuiltinModule === "function" ? proc.getBuiltinModule(NODE_MODULE) : undefined;
    const api = (builtin ?? (await import(/* @vite-ignore */ /* webpackIgnore: true */ NODE_MODULE))) as Partial<NodeModuleApi>;
    return typeof api.createRequire === "function" ? (api as NodeModuleApi) : undefined;
  } catch {
    return undefined;
  }
}

/** The target of an `exports` entry for the given conditions (Node's algorithm, reduced). */
function exportTarget(entry: unknown, conditions: ReadonlyArray<string>): string | undefined {
  if (typeof entry === "string") return entry;
  if (Array.isArray(entry)) {
    for (const e of entry) {
      const t = exportTarget(e, conditions);
      if (t !== undefined) return t;
    }
    return undefined;
  }
  if (typeof entry === "object" && entry !== null) {
    for (const [key, value] of Object.entries(entry)) {
      if (key !== "default" && !conditions.includes(key)) continue;
      const t = exportTarget(value, conditions);
      if (t !== undefined) return t;
    }
  }
  return undefined;
}

/** The file `effect/Schema` maps to in a package.json's `exports`, for the given conditions. */
function schemaFile(pkg: { exports?: unknown }, conditions: ReadonlyArray<string>): string | undefined {
  const exp = pkg.exports;
  if (typeof exp !== "object" || exp === null || Array.isArray(exp)) return undefined;
  const map = exp as Record<string, unknown>;
  if ("./Schema" in map) return exportTarget(map["./Schema"], conditions);
  for (const [key, value] of Object.entries(map)) {
    const star = key.indexOf("*");
    if (star < 0) continue;
    const prefix = key.slice(0, star);
    const suffix = key.slice(star + 1);
    if (!"./Schema".startsWith(prefix) || !"./Schema".endsWith(suffix) || "./Schema".length < key.length - 1) continue;
    const t = exportTarget(value, conditions);
    if (t !== undefined) return t.replaceAll("*", "./Schema".slice(prefix.length, "./Schema".length - suffix.length));
  }
  return undefined;
}

/**
 * The copies of effect's Schema module reachable from the app (its entry script, then
 * the working directory) and from the SDK itself, in that order: first as ES modules
 * (the copy an `import { Schema } from "effect"` gets), then as CommonJS (a
 * `require("effect")`). Loaded lazily as the caller iterates, and only those of the
 * wanted major version; `cache` keeps each file's load for the whole process.
 */
async function* nodeEffectSchemaModules(
  cache: Map<string, Promise<EffectModuleCandidate | undefined>>,
  major: number,
): AsyncGenerator<EffectModuleCandidate> {
  const proc = nodeProcess();
  if (!proc) return;
  const api = await nodeModuleApi(proc);
  if (!api) return;
  const bases: string[] = [];
  const main = proc.argv?.[1];
  if (typeof main === "string" && main !== "") bases.push(main);
  try {
    const cwd = proc.cwd?.();
    if (cwd) bases.push(`${cwd.replace(/\/+$/, "")}/`);
  } catch {
    // no working directory (deleted): skip it
  }
  const self = selfLocation();
  if (self) bases.push(self);

  // Each base's effect package: { require, dir, package.json }.
  const packages: { req: Require; dir: string; pkg: { exports?: unknown; version?: unknown } }[] = [];
  for (const base of bases) {
    try {
      const req = api.createRequire(base);
      const pkgPath = req.resolve("effect/package.json");
      const dir = pkgPath.slice(0, pkgPath.length - "package.json".length);
      if (packages.some((p) => p.dir === dir)) continue;
      packages.push({ req, dir, pkg: req(pkgPath) as { exports?: unknown; version?: unknown } });
    } catch {
      // effect is not reachable from there
    }
  }
  const load = (req: Require, file: string, version: string, cjs: boolean): Promise<EffectModuleCandidate | undefined> => {
    let p = cache.get(file);
    if (!p) {
      p = (async () => {
        const { pathToFileURL } = req("node:url") as { pathToFileURL(path: string): URL };
        const ns = (await import(/* @vite-ignore */ /* webpackIgnore: true */ pathToFileURL(file).href)) as { default?: unknown };
        return { file, version, module: cjs && ns.default !== undefined ? ns.default : ns };
      })().catch(() => undefined);
      cache.set(file, p);
    }
    return p;
  };
  const yielded = new Set<string>();
  for (const cjs of [false, true]) {
    for (const { req, dir, pkg } of packages) {
      const target = schemaFile(pkg, cjs ? ["node", "require"] : ["node", "import"]);
      if (target === undefined) continue;
      const file = dir + target.replace(/^\.\//, "");
      if (yielded.has(file)) continue; // ESM only: the same file for both
      yielded.add(file);
      const version = typeof pkg.version === "string" ? pkg.version : "unknown";
      if (Number.parseInt(version, 10) !== major) {
        if (!cjs) yield { file: dir, version }; // not loaded (it cannot decode this schema); said once
        continue;
      }
      const candidate = await load(req, file, version, cjs);
      if (candidate) yield candidate;
    }
  }
}

/**
 * Where effect's Schema module can be looked for: in Node (and runtimes that look
 * like it); null elsewhere (a browser), where an Effect schema needs
 * createClient({ effectSchema: Schema }).
 */
export const effectSchemaModules:
  | ((cache: Map<string, Promise<EffectModuleCandidate | undefined>>, major: number) => AsyncIterable<EffectModuleCandidate>)
  | null = nodeProcess() ? nodeEffectSchemaModules : null;

export async function loadWebSocket(): Promise<WebSocketConstructor> {
  const mod = (await import(/* @vite-ignore */ /* webpackIgnore: true */ WS)) as {
    WebSocket?: WebSocketConstructor;
    default?: WebSocketConstructor;
  };
  const Ctor = mod.WebSocket ?? mod.default;
  if (typeof Ctor !== "function") throw new Error("the ws package has no WebSocket export");
  return Ctor;
}
