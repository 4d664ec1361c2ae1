// How users install it: `npm pack` rollcall-client and rollcall-react, install both
// tarballs (with react and react-dom) into a fresh temp project, then import it as ESM
// and CommonJS, render on the server, and type-check a component with tsc.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = join(dirname(fileURLToPath(import.meta.url)), "..");
const sdk = join(pkg, "..", "typescript");
const require = createRequire(import.meta.url);
const REACT = JSON.parse(readFileSync(join(pkg, "node_modules", "react", "package.json"), "utf8")).version;

function run(cmd, args, cwd) {
  return execFileSync(cmd, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

/** `npm pack` of a package directory into `dest`; returns the tarball's path. */
function pack(dir, dest) {
  // The output starts with what the package's `prepare` (its build) prints.
  const text = run("npm", ["pack", "--json", "--pack-destination", dest], dir);
  const out = JSON.parse(text.slice(text.search(/^\[/m)));
  return join(dest, out[0].filename);
}

test("the packed packages install into a fresh project and work as ESM, as CommonJS and with tsc", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "rollcall-react-pack-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const client = pack(sdk, dir);
  const react = pack(pkg, dir);
  const files = JSON.parse(run("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], pkg))[0].files.map((f) => f.path).sort();
  assert.deepEqual(files, ["README.md", "dist/index.cjs", "dist/index.d.cts", "dist/index.d.ts", "dist/index.js", "package.json"]);

  const app = join(dir, "app");
  run("mkdir", ["-p", app], dir);
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  run("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline", client, react, `react@${REACT}`, `react-dom@${REACT}`], app);

  // ESM: server rendering with a provider and hooks (nothing connects on the server).
  writeFileSync(
    join(app, "ssr.mjs"),
    `import { createElement as h } from "react";
import { renderToString } from "react-dom/server";
import { RollcallProvider, useOthers } from "rollcall-react";
function Count() { return h("p", null, useOthers("r", (o) => o.size), " here"); }
console.log(renderToString(h(RollcallProvider, { url: "ws://127.0.0.1:9/ws" }, h(Count))));
`,
  );
  assert.equal(run(process.execPath, ["ssr.mjs"], app).trim(), "<p>0<!-- --> here</p>");

  // TypeScript, as an ESM app with NodeNext resolution.
  writeFileSync(
    join(app, "app.ts"),
    `import { createElement as h } from "react";
import { RollcallProvider, defineRoom, useMyPresence, useOthers, shallow } from "rollcall-react";
const room = defineRoom<{ name: string }>("r");
export function Names() {
  const [me, update] = useMyPresence(room, { name: "a" }, 5_000);
  const names: string[] = useOthers(room, (o) => [...o.values()].map((e) => e.data.name), shallow);
  return h("p", { onClick: () => update({ name: me.name + "!" }) }, names.join(","));
}
export const app = h(RollcallProvider, { url: "ws://127.0.0.1:9/ws" }, h(Names));
`,
  );
  writeFileSync(
    join(app, "tsconfig.json"),
    JSON.stringify({ compilerOptions: { strict: true, module: "NodeNext", moduleResolution: "NodeNext", target: "ES2022", noEmit: true, skipLibCheck: false, types: [] }, files: ["app.ts"] }),
  );
  run("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline", `@types/react@${JSON.parse(readFileSync(join(pkg, "node_modules", "@types", "react", "package.json"), "utf8")).version}`], app);
  run(process.execPath, [require.resolve("typescript/bin/tsc"), "-p", "tsconfig.json"], app);

  // CommonJS: needs rollcall-client's own CommonJS entry point.
  const sdkExports = JSON.parse(readFileSync(join(sdk, "package.json"), "utf8")).exports["."];
  if (!JSON.stringify(sdkExports).includes('"require"')) {
    t.diagnostic("CommonJS not checked: rollcall-client has no `require` entry point yet");
    return;
  }
  writeFileSync(
    join(app, "ssr.cjs"),
    `const { createElement: h } = require("react");
const { renderToString } = require("react-dom/server");
const { RollcallProvider, useOthers } = require("rollcall-react");
function Count() { return h("p", null, useOthers("r", (o) => o.size), " here"); }
console.log(renderToString(h(RollcallProvider, { url: "ws://127.0.0.1:9/ws" }, h(Count))));
`,
  );
  assert.equal(run(process.execPath, ["ssr.cjs"], app).trim(), "<p>0<!-- --> here</p>");
});
