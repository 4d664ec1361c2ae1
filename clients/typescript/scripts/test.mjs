// Compiles the tests (type-checking the seed's examples on the way) and runs them
// with node:test. `node scripts/test.mjs [unit|integration]` runs one group.
import { execFileSync, spawnSync } from "node:child_process";
import { readdirSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);

rmSync(join(root, "build"), { recursive: true, force: true });
execFileSync(process.execPath, [require.resolve("typescript/bin/tsc"), "-p", join(root, "test/tsconfig.json")], {
  stdio: "inherit",
  cwd: root,
});

const groups = process.argv[2] ? [process.argv[2]] : ["unit", "integration"];
const files = [];
for (const g of groups) {
  const dir = join(root, "build/test", g);
  for (const f of readdirSync(dir).sort()) if (f.endsWith(".test.js")) files.push(join(dir, f));
}

// Integration tests start real servers and measure TTLs: one file at a time on 2 cores.
const res = spawnSync(process.execPath, ["--test", "--test-concurrency=1", "--test-timeout=120000", ...files], {
  stdio: "inherit",
  cwd: root,
});
process.exit(res.status ?? 1);
