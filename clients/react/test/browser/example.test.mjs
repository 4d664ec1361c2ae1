// The example app (clients/react/example), built with `vite build` and driven in
// headless Chromium (Debian's `chromium`, via playwright-core) with two pages against a
// real `rollcall` server ($ROLLCALL_BIN, else target/debug/rollcall): each page sees
// the other's cursor move, and a closed page disappears from the other.
//
// The built files are served by a small static server on a free port; the pages get
// the rollcall server's URL in the query string. Fails on any console.error or
// uncaught error in a page.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createReadStream, existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, extname, join, normalize, sep } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { build } from "vite";

const pkg = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const repo = join(pkg, "..", "..");
const ROLLCALL_BIN = process.env.ROLLCALL_BIN || join(repo, "target", "debug", "rollcall");
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";

/** Starts `rollcall serve` on 127.0.0.1:0; resolves once /healthz answers 200. */
async function startRollcall() {
  const data = mkdtempSync(join(tmpdir(), "rollcall-react-example-"));
  const child = spawn(ROLLCALL_BIN, ["serve", "--listen", "127.0.0.1:0", "--data", data, "--durability", "memory"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk) => {
    stderr = (stderr + chunk).slice(-20_000);
  });
  const exited = once(child, "exit");
  const lines = createInterface({ input: child.stdout });
  const first = await Promise.race([
    once(lines, "line").then(([line]) => line),
    once(child, "error").then(([e]) => Promise.reject(new Error(`cannot start ${ROLLCALL_BIN}: ${e.message}`))),
    exited.then(([code]) => Promise.reject(new Error(`rollcall exited (${code}) before listening:\n${stderr}`))),
  ]);
  const match = /^rollcall listening on http:\/\/(\S+)$/.exec(first);
  assert.ok(match, `unexpected first line from rollcall: ${first}`);
  const host = match[1];
  for (;;) {
    const status = await fetch(`http://${host}/healthz`).then((r) => r.status, () => 0);
    if (status === 200) break;
    await delay(25); // polling a readiness endpoint, not a fixed wait
  }
  return {
    wsUrl: `ws://${host}/ws`,
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      await exited;
      rmSync(data, { recursive: true, force: true });
    },
  };
}

const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml" };

/** Serves `root` on 127.0.0.1:0 (GET only, no directory listing). */
async function serveStatic(root) {
  const server = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname)).replace(/^([/\\])+/, "");
    const file = join(root, path === "" ? "index.html" : path);
    if (!file.startsWith(root + sep) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404).end("not found");
      return;
    }
    res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
    createReadStream(file).pipe(res);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  return { base: `http://127.0.0.1:${port}`, close: () => new Promise((resolve) => server.close(resolve)) };
}

let browser;
let site;
let outDir;

before(async () => {
  outDir = mkdtempSync(join(tmpdir(), "rollcall-react-example-dist-"));
  await build({ configFile: join(pkg, "example", "vite.config.ts"), logLevel: "warn", build: { outDir, emptyOutDir: true } });
  site = await serveStatic(outDir);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
});

after(async () => {
  await browser?.close();
  await site?.close();
  if (outDir) rmSync(outDir, { recursive: true, force: true });
});

/** Opens the example as `name` (its own browser context, like another person). */
async function openAs(name, wsUrl, room, problems) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`${name}: console.error: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`${name}: uncaught: ${e.stack ?? e.message}`));
  const q = new URLSearchParams({ server: wsUrl, room, name });
  await page.goto(`${site.base}/?${q}`);
  await page.locator('#connection[data-state="connected"]').waitFor();
  return page;
}

/** Moves the mouse to fractions (fx, fy) of the board. */
async function moveOnBoard(page, fx, fy) {
  const box = await page.locator("#board").boundingBox();
  await page.mouse.move(box.x + fx * box.width, box.y + fy * box.height, { steps: 5 });
}

/** Waits until `page` draws `name`'s cursor at (fx, fy) of its board. */
function waitForCursorAt(page, name, fx, fy) {
  return page.waitForFunction(
    ([name, fx, fy]) => {
      const cursor = document.querySelector(`.cursor[data-name="${name}"]`);
      if (!cursor) return false;
      const board = document.getElementById("board").getBoundingClientRect();
      const at = cursor.getBoundingClientRect();
      // The element's top-left corner, less its translate(-2px, -2px), is the pointer.
      return Math.abs(at.left + 2 - (board.left + fx * board.width)) < 2 && Math.abs(at.top + 2 - (board.top + fy * board.height)) < 2;
    },
    [name, fx, fy],
  );
}

test("two pages see each other in the list and each other's cursor move; a closed page disappears", async () => {
  const rollcall = await startRollcall();
  const problems = [];
  try {
    const room = `example:${process.pid}`;
    const ada = await openAs("Ada", rollcall.wsUrl, room, problems);
    const bob = await openAs("Bob", rollcall.wsUrl, room, problems);

    // Who's here: each lists the other.
    await ada.locator('#people li[data-name="Bob"]').waitFor();
    await bob.locator('#people li[data-name="Ada"]').waitFor();
    assert.equal(await ada.locator("#people li").count(), 2);
    assert.equal(await bob.locator("#people li").count(), 2);

    // Cursors, both ways, and a move to a second place.
    await moveOnBoard(ada, 0.25, 0.4);
    await waitForCursorAt(bob, "Ada", 0.25, 0.4);
    await moveOnBoard(bob, 0.6, 0.3);
    await waitForCursorAt(ada, "Bob", 0.6, 0.3);
    await moveOnBoard(ada, 0.7, 0.65);
    await waitForCursorAt(bob, "Ada", 0.7, 0.65);
    // Nobody is drawn a cursor of their own.
    assert.equal(await ada.locator('.cursor[data-name="Ada"]').count(), 0);

    // Ada closes her tab: her name and cursor go from Bob's page.
    const closedAt = Date.now();
    await ada.context().close();
    await bob.locator('#people li[data-name="Ada"]').waitFor({ state: "detached" });
    console.log(`Ada's page was gone from Bob's after ${Date.now() - closedAt} ms`);
    assert.equal(await bob.locator('.cursor[data-name="Ada"]').count(), 0);
    assert.equal(await bob.locator("#people li").count(), 1);
    assert.deepEqual(problems, []);
  } finally {
    await rollcall.stop();
  }
});
