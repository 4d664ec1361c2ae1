// npm runs `prepare` after `npm ci` / `npm install` in this folder, before `npm pack`,
// and when another project installs this folder (`npm install <folder>`) or a git URL
// of it. It builds dist/. A fresh clone installed as a folder has no build tools yet
// (npm does not install a linked folder's devDependencies): install them first, from
// the lockfile and without running any install script, instead of failing.
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tools = ["typescript", "esbuild"];
if (!tools.every((t) => existsSync(join(root, "node_modules", t, "package.json")))) {
  console.error("rollcall-client: installing its build tools to build dist/ (npm ci --ignore-scripts)");
  const npm = process.env.npm_execpath;
  const [cmd, args] = npm && npm.endsWith(".js") ? [process.execPath, [npm]] : ["npm", []];
  execFileSync(cmd, [...args, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], { cwd: root, stdio: ["ignore", "inherit", "inherit"] });
}
execFileSync(process.execPath, [join(root, "scripts", "build.mjs")], { cwd: root, stdio: ["ignore", "inherit", "inherit"] });
