// Builds dist/:
// - ESM: dist/*.js + .d.ts (tsc), the `import` entry point;
// - CommonJS: dist/index.cjs (esbuild, one file) + dist/*.d.cts, the `require` entry point;
// - dist/rollcall-client.browser.js (esbuild, one minified file, no imports) + its .d.ts.
// Source maps point into src/, which is published with dist/ (package.json "files").
import { readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import * as esbuild from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "dist");
const require = createRequire(import.meta.url);

rmSync(dist, { recursive: true, force: true });
execFileSync(process.execPath, [require.resolve("typescript/bin/tsc"), "-p", join(root, "tsconfig.json")], {
  stdio: "inherit",
  cwd: root,
});

// CommonJS declarations: the same types, as .d.cts files importing each other as .cjs
// (a .d.ts beside "type": "module" would claim to be ESM to a require() caller).
for (const file of readdirSync(dist)) {
  if (!file.endsWith(".d.ts")) continue;
  const text = readFileSync(join(dist, file), "utf8")
    .replace(/(from\s+["']\.{1,2}\/[^"']+)\.js(["'])/g, "$1.cjs$2")
    .replace(/(import\(["']\.{1,2}\/[^"']+)\.js(["']\))/g, "$1.cjs$2")
    .replace(/\/\/# sourceMappingURL=.*$/m, "");
  writeFileSync(join(dist, file.replace(/\.d\.ts$/, ".d.cts")), text);
}

await esbuild.build({
  entryPoints: [join(root, "src/index.ts")],
  outfile: join(dist, "index.cjs"),
  bundle: true,
  format: "cjs",
  platform: "node",
  target: ["node20"],
  sourcemap: "linked",
  // `import.meta.url` is only read when `__filename` is missing, which CommonJS has.
  define: { "import.meta.url": "undefined" },
  logLevel: "warning",
});

// The standalone bundle cannot load anything at run time: swap the lazy loaders for
// ones that say so (Effect schemas still work there with the effectSchema option).
const browserLoader = {
  name: "browser-loaders",
  setup(build) {
    build.onResolve({ filter: /\/loaders\.js$/ }, (args) => ({
      path: join(dirname(args.importer), "loaders.browser.ts"),
    }));
  },
};

await esbuild.build({
  entryPoints: [join(root, "src/index.ts")],
  outfile: join(dist, "rollcall-client.browser.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2020"],
  minify: true,
  sourcemap: false,
  legalComments: "none",
  plugins: [browserLoader],
  logLevel: "warning",
});
writeFileSync(
  join(dist, "rollcall-client.browser.d.ts"),
  '// Types of the standalone browser bundle: the same API as the package itself.\nexport * from "./index.js";\n',
);

console.log("built dist/ (ESM + .d.ts, CommonJS + .d.cts, rollcall-client.browser.js + .d.ts)");
