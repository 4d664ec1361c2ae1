// The SDK as users get it: `npm pack`, then fresh projects that install the tarball
// (and one that installs the SDK's folder) next to a schema library, each running the
// seed's schema example against a real `rollcall` server as an ES module and as
// CommonJS, and type-checking it with tsc; then pages bundled with esbuild and with
// vite (effect 4) in headless Chromium.
//
// Needs the npm registry (versions are pinned below), a server binary ($ROLLCALL_BIN,
// else ../../target/debug/rollcall), Node ≥ 20.19 (the CommonJS apps require() the
// ESM-only effect 4 and arktype) and, for the bundles, Chromium ($CHROMIUM_BIN, else
// /usr/bin/chromium). Run with `npm run test:install` (builds dist/ first).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { once } from "node:events";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const SDK = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const REPO = join(SDK, "..", "..");
const ROLLCALL_BIN = process.env.ROLLCALL_BIN || join(REPO, "target", "debug", "rollcall");
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const TSC = join(SDK, "node_modules", "typescript", "bin", "tsc");

// Exact versions, so that CI is deterministic. effect 3.10 is the oldest supported.
const WS = "ws@8.23.0";
const EFFECT_OLDEST = "effect@3.10.0";
const EFFECT_3 = "effect@3.22.4";
const EFFECT_4 = "effect@4.1.0";
const ZOD_3 = "zod@3.25.76";
const ZOD_4 = "zod@4.6.7";
const VALIBOT = "valibot@1.5.0";
const ARKTYPE = "arktype@2.2.10";
const ESBUILD = "esbuild@0.28.2";
const VITE = "vite@8.4.0";
const PLAYWRIGHT = "playwright-core@1.65.1";

/** How each library spells the seed's Cursor schema, as ESM and as CommonJS. */
const SCHEMAS = {
  effect: {
    esm: 'import { Schema } from "effect";',
    cjs: 'const { Schema } = require("effect");',
    // The seed's code, as written.
    define: "const Cursor = Schema.Struct({\nx: Schema.Number,\ny: Schema.Number,\n});",
  },
  zod: {
    esm: 'import { z } from "zod";',
    cjs: 'const { z } = require("zod");',
    define: "const Cursor = z.object({ x: z.number(), y: z.number() });",
  },
  valibot: {
    esm: 'import * as v from "valibot";',
    cjs: 'const v = require("valibot");',
    define: "const Cursor = v.object({ x: v.number(), y: v.number() });",
  },
  arktype: {
    esm: 'import { type } from "arktype";',
    cjs: 'const { type } = require("arktype");',
    define: 'const Cursor = type({ x: "number", y: "number" });',
  },
};

const tmp = mkdtempSync(join(tmpdir(), "rollcall-install-"));
let tarball;
let server;

// ---- helpers ----------------------------------------------------------------------------

async function sh(cmd, args, cwd, env = {}) {
  try {
    return await run(cmd, args, { cwd, env: { ...process.env, ...env }, maxBuffer: 64 << 20 });
  } catch (e) {
    throw new Error(`${cmd} ${args.join(" ")} (in ${cwd}) failed:\n${e.stdout ?? ""}\n${e.stderr ?? ""}`);
  }
}

async function npmInstall(cwd, specs) {
  await sh("npm", ["install", "--no-audit", "--no-fund", "--save-exact", "--prefer-offline", ...specs], cwd);
}

function project(name, type = "module") {
  const dir = join(tmp, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name, version: "0.0.0", private: true, type }, null, 2));
  return dir;
}

/** Starts `rollcall serve` on a free port; resolves once /healthz answers. */
async function startServer() {
  const data = join(tmp, "server-data");
  const child = spawn(ROLLCALL_BIN, ["serve", "--listen", "127.0.0.1:0", "--data", data, "--durability", "memory"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (c) => (stderr = (stderr + c).slice(-10_000)));
  const exited = once(child, "exit");
  const [line] = await Promise.race([
    once(createInterface({ input: child.stdout }), "line"),
    once(child, "error").then(([e]) => Promise.reject(new Error(`cannot start ${ROLLCALL_BIN}: ${e.message}`))),
    exited.then(([code]) => Promise.reject(new Error(`rollcall exited (${code}):\n${stderr}`))),
  ]);
  const base = /^rollcall listening on (http:\/\/\S+)$/.exec(line)?.[1];
  assert.ok(base, `unexpected first line: ${line}`);
  const deadline = Date.now() + 30_000;
  while ((await fetch(`${base}/healthz`).then((r) => r.status, () => 0)) !== 200) {
    if (Date.now() > deadline) throw new Error(`rollcall never became healthy:\n${stderr}`);
    await new Promise((r) => setTimeout(r, 25)); // polling a readiness endpoint
  }
  return {
    base,
    wsUrl: `${base.replace(/^http/, "ws")}/ws`,
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      await exited;
    },
  };
}

// ---- the seed's example, checked -----------------------------------------------------------

/**
 * The app: the seed's schema example as written, then checks: the heartbeat reaches
 * another client, the typed view decodes entries, data that does not match is refused
 * before sending (schema_mismatch) and a peer's bad entry is never shown
 * (decode_failed). Prints "OK" and exits 0, or throws.
 */
function appSource(lib, format) {
  const s = SCHEMAS[lib];
  const imports =
    format === "esm"
      ? `${s.esm}\nimport { createClient } from "rollcall-client";\nimport WebSocket from "ws";\nimport assert from "node:assert/strict";`
      : `${s.cjs}\nconst { createClient } = require("rollcall-client");\nconst WebSocket = require("ws");\nconst assert = require("node:assert/strict");`;
  return `${imports}

async function main() {
const url = process.env.ROLLCALL_URL;
const client = createClient({ url, WebSocket });
const errors = [];
client.onError((e) => errors.push(e));

// --- the seed ---
${s.define}
const cursors = client.presence("pr:cursors", Cursor);
cursors.heartbeat({ x: 120, y: 340 }, 5_000);
// --- the seed ---

async function waitFor(cond, what) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const v = cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error("timed out waiting for " + what + "; errors: " + errors.map((e) => e.code + ": " + e.message).join(" | "));
    await new Promise((r) => setTimeout(r, 5));
  }
}

const peer = createClient({ url, WebSocket });
const peerErrors = [];
peer.onError((e) => peerErrors.push(e));
const untyped = peer.presence("pr:cursors");
const seenByPeer = [];
untyped.onChange((m) => { if (client.clientId !== undefined && m.has(client.clientId)) seenByPeer.push(m.get(client.clientId).data); });
await client.waitForConnected();
await peer.waitForConnected();

// Accepted by the server: another client sees it.
await waitFor(() => untyped.value().get(client.clientId), "the peer to see the heartbeat");
assert.deepEqual(untyped.value().get(client.clientId).data, { x: 120, y: 340 });
// Decoded: the typed view has it, and a peer's good entry.
untyped.heartbeat({ x: 1, y: 2 }, 5_000);
await waitFor(() => cursors.value().get(peer.clientId), "the typed view to decode the peer's entry");
assert.deepEqual(cursors.value().get(peer.clientId).data, { x: 1, y: 2 });
assert.deepEqual(cursors.value().get(client.clientId).data, { x: 120, y: 340 });

// Bad data is refused before sending: schema_mismatch, and the next good one arrives
// without the bad one before it (messages are ordered).
cursors.heartbeat({ x: "bad", y: 1 }, 5_000);
await waitFor(() => errors.some((e) => e.code === "schema_mismatch"), "schema_mismatch");
cursors.heartbeat({ x: 7, y: 8 }, 5_000);
await waitFor(() => untyped.value().get(client.clientId)?.data.x === 7, "the next good heartbeat");
assert.ok(seenByPeer.every((d) => typeof d.x === "number"), "a bad heartbeat was sent: " + JSON.stringify(seenByPeer));

// A peer's bad entry: decode_failed, and the typed view never shows it.
untyped.heartbeat({ x: "bad" }, 5_000);
await waitFor(() => errors.some((e) => e.code === "decode_failed" && e.clientId === peer.clientId), "decode_failed");
assert.equal(cursors.value().has(peer.clientId), false);

const unexpected = [...errors, ...peerErrors].filter((e) => e.code !== "schema_mismatch" && e.code !== "decode_failed");
assert.deepEqual(unexpected.map((e) => e.code + ": " + e.message), []);
await Promise.all([client.close(), peer.close()]);
console.log("OK");
}
main().catch((e) => { console.error(e); process.exit(1); });
`;
}

/** The seed's example and typed uses, for tsc, as ESM (.ts) and CommonJS (.cts). */
function typeCheckSources(lib) {
  const s = SCHEMAS[lib];
  const esm = `${s.esm}
import { createClient, RollcallError, type Presence, type RollcallClient } from "rollcall-client";
import { createClient as createBrowserClient } from "rollcall-client/browser";

const client: RollcallClient = createClient({ url: "ws://127.0.0.1:7700/ws" });
${s.define}
const cursors = client.presence("pr:cursors", Cursor);
cursors.heartbeat({ x: 120, y: 340 }, 5_000);

// @ts-expect-error: x is a number
cursors.heartbeat({ x: "bad", y: 1 }, 5_000);
const x: number | undefined = cursors.value().get(1)?.data.x;
const untyped: Presence<unknown> = client.presence("pr:room-123");
const fromBundle: RollcallClient = createBrowserClient({ url: "ws://127.0.0.1:7700/ws" });
const isError: boolean = new Error() instanceof RollcallError;
export { x, untyped, fromBundle, isError };
`;
  const cjs = `import { createClient, RollcallError } from "rollcall-client";
import type { Presence, RollcallClient } from "rollcall-client";

const client: RollcallClient = createClient({ url: "ws://127.0.0.1:7700/ws" });
const room: Presence<unknown> = client.presence("pr:room-123");
room.heartbeat({ status: "online" }, 30_000);
// @ts-expect-error: a TTL is a number
room.heartbeat({ status: "online" }, "30s");
const isError: boolean = new Error() instanceof RollcallError;
export = { isError };
`;
  const tsconfig = {
    compilerOptions: {
      module: "nodenext",
      moduleResolution: "nodenext",
      target: "es2022",
      lib: ["es2022", "dom"],
      types: [],
      strict: true,
      noEmit: true,
      skipLibCheck: true,
    },
    files: ["check.ts", "check.cts"],
  };
  return { esm, cjs, tsconfig };
}

async function checkProject(dir, lib) {
  const env = { ROLLCALL_URL: server.wsUrl };
  writeFileSync(join(dir, "app.mjs"), appSource(lib, "esm"));
  writeFileSync(join(dir, "app.cjs"), appSource(lib, "cjs"));
  const esm = await sh(process.execPath, ["app.mjs"], dir, env);
  assert.equal(esm.stdout.trim(), "OK", esm.stderr);
  const cjs = await sh(process.execPath, ["app.cjs"], dir, env);
  assert.equal(cjs.stdout.trim(), "OK", cjs.stderr);
  const { esm: ts, cjs: cts, tsconfig } = typeCheckSources(lib);
  writeFileSync(join(dir, "check.ts"), ts);
  writeFileSync(join(dir, "check.cts"), cts);
  writeFileSync(join(dir, "tsconfig.json"), JSON.stringify(tsconfig, null, 2));
  await sh(process.execPath, [TSC, "-p", "tsconfig.json"], dir);
}

// ---- tests ----------------------------------------------------------------------------------

before(async () => {
  assert.ok(existsSync(join(SDK, "dist", "index.js")), "build the SDK first (npm run build)");
  const { stdout } = await sh("npm", ["pack", "--ignore-scripts", "--json", "--pack-destination", tmp], SDK);
  const [info] = JSON.parse(stdout);
  tarball = join(tmp, info.filename);
  server = await startServer();
});

after(async () => {
  await server?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

test("npm pack: the files users get, source maps that resolve, no install scripts", async () => {
  const { stdout } = await sh("npm", ["pack", "--ignore-scripts", "--dry-run", "--json"], SDK);
  const files = new Set(JSON.parse(stdout)[0].files.map((f) => f.path));
  for (const f of [
    "package.json",
    "README.md",
    "dist/index.js",
    "dist/index.d.ts",
    "dist/index.cjs",
    "dist/index.d.cts",
    "dist/types.d.cts",
    "dist/rollcall-client.browser.js",
    "dist/rollcall-client.browser.d.ts",
    "src/index.ts",
    "src/schema.ts",
  ]) {
    assert.ok(files.has(f), `${f} is in the package`);
  }
  for (const f of files) {
    assert.match(f, /^(package\.json|README\.md|dist\/[^/]+|src\/[^/]+\.ts)$/, `unexpected file in the package: ${f}`);
  }
  // Every export path and its types exist.
  const pkg = JSON.parse(readFileSync(join(SDK, "package.json"), "utf8"));
  const targets = (entry) => (typeof entry === "string" ? [entry] : Object.values(entry).flatMap(targets));
  for (const t of targets(pkg.exports)) assert.ok(files.has(t.replace(/^\.\//, "")), `exports target ${t} is in the package`);
  for (const [path, entry] of Object.entries(pkg.exports)) {
    if (path === "./package.json") continue;
    assert.match(JSON.stringify(entry), /"types":/, `${path} has types`);
  }
  // Source maps: each source is in the package, or inlined.
  for (const f of files) {
    if (!f.endsWith(".map")) continue;
    const map = JSON.parse(readFileSync(join(SDK, f), "utf8"));
    map.sources.forEach((source, i) => {
      const target = join(dirname(f), map.sourceRoot ?? "", source).replaceAll("\\", "/");
      assert.ok(files.has(target) || typeof map.sourcesContent?.[i] === "string", `${f}: source ${source} is not in the package`);
    });
  }
  // Nothing runs on install from the registry (prepare only runs in a checkout).
  for (const script of ["preinstall", "install", "postinstall"]) assert.equal(pkg.scripts?.[script], undefined, script);
});

// Each project installs and runs on its own (the checks are per client id, so they
// share one server and room); a few at a time keeps the matrix to a few minutes.
describe("installed", { concurrency: 3 }, () => {
  for (const [name, lib, spec] of [
    ["effect 3.10 (the oldest supported)", "effect", EFFECT_OLDEST],
    ["effect 3 (latest 3.x)", "effect", EFFECT_3],
    ["effect 4", "effect", EFFECT_4],
    ["zod 3", "zod", ZOD_3],
    ["zod 4", "zod", ZOD_4],
    ["valibot", "valibot", VALIBOT],
    ["arktype", "arktype", ARKTYPE],
  ]) {
    test(`from the tarball, with ${name}: the seed's example runs (ESM and CommonJS) and type-checks`, async () => {
      const dir = project(spec.replace(/[@.]/g, "-"));
      await npmInstall(dir, [tarball, spec, WS]);
      await checkProject(dir, lib);
    });
  }

  test("from a fresh clone's folder (npm install <folder>: a symlink; prepare installs its build tools, effect 3 among them), with effect 4", async () => {
    // What a clone has: no node_modules/, dist/ or build/.
    const clone = join(tmp, "clone", "clients", "typescript");
    cpSync(SDK, clone, {
      recursive: true,
      filter: (src) => !/^(node_modules|dist|build|test)(\/|$)/.test(relative(SDK, src)),
    });
    const dir = project("folder-effect-4");
    await npmInstall(dir, [clone, EFFECT_4, WS]);
    assert.ok(existsSync(join(clone, "node_modules", "effect", "package.json")), "the clone has an effect of its own");
    await checkProject(dir, "effect");
  });
});

test("pages bundled with esbuild and with vite (effect 4) see each other's typed entries in Chromium", async () => {
  const dir = project("bundles");
  await npmInstall(dir, [tarball, EFFECT_4, ESBUILD, VITE, PLAYWRIGHT]);
  const fixtures = join(SDK, "test", "install", "bundle");
  for (const f of ["main.js", "index.html", "drive.mjs"]) writeFileSync(join(dir, f), readFileSync(join(fixtures, f)));
  await sh(join(dir, "node_modules", ".bin", "esbuild"), ["main.js", "--bundle", "--format=esm", "--outfile=out/esbuild/app.js"], dir);
  writeFileSync(join(dir, "out", "esbuild", "index.html"), readFileSync(join(fixtures, "index.html"), "utf8").replace("/main.js", "./app.js"));
  await sh(process.execPath, [join(dir, "node_modules", "vite", "bin", "vite.js"), "build", "--base", "/vite/", "--outDir", "out/vite", "--logLevel", "warn"], dir);
  const { stdout } = await sh(process.execPath, ["drive.mjs"], dir, { ROLLCALL_URL: server.wsUrl, CHROMIUM_BIN: CHROMIUM });
  assert.match(stdout, /^OK/m, stdout);
});
