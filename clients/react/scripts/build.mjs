// Builds dist/: ESM (index.js) and CommonJS (index.cjs) with esbuild, types with tsc
// (index.d.ts, and index.d.cts for `require`). react and rollcall-client stay imports.
import { copyFileSync, rmSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);

rmSync(join(root, "dist"), { recursive: true, force: true });
execFileSync(process.execPath, [require.resolve("typescript/bin/tsc"), "-p", join(root, "tsconfig.json")], { stdio: "inherit", cwd: root });
copyFileSync(join(root, "dist/index.d.ts"), join(root, "dist/index.d.cts"));

const common = {
  entryPoints: [join(root, "src/index.ts")],
  bundle: true,
  external: ["react", "rollcall-client"],
  platform: "neutral",
  target: ["es2020"],
  sourcemap: "inline",
  sourcesContent: true,
  logLevel: "warning",
};
await esbuild.build({ ...common, format: "esm", outfile: join(root, "dist/index.js") });
await esbuild.build({ ...common, format: "cjs", outfile: join(root, "dist/index.cjs") });
console.log("built dist/ (ESM, CommonJS, .d.ts, .d.cts)");
