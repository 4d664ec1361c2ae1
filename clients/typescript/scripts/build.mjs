// Builds dist/: ESM + .d.ts with tsc, and the single-file browser bundle with esbuild.
import { rmSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import * as esbuild from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);

rmSync(join(root, "dist"), { recursive: true, force: true });
execFileSync(process.execPath, [require.resolve("typescript/bin/tsc"), "-p", join(root, "tsconfig.json")], {
  stdio: "inherit",
  cwd: root,
});

// The standalone bundle cannot resolve `effect` at run time: swap the lazy loader
// for one that says so (Effect schemas still work there with the effectSchema option).
const browserLoader = {
  name: "browser-effect-loader",
  setup(build) {
    build.onResolve({ filter: /\/loaders\.js$/ }, (args) => ({
      path: join(dirname(args.importer), "loaders.browser.ts"),
    }));
  },
};

await esbuild.build({
  entryPoints: [join(root, "src/index.ts")],
  outfile: join(root, "dist/rollcall-client.browser.js"),
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

console.log("built dist/ (ESM + .d.ts) and dist/rollcall-client.browser.js");
