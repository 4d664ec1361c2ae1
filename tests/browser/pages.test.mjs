// Rollcall's pages in a real browser: the live-cursors demo (/demo) and the room
// inspector (/), in headless Chromium (Debian's `chromium`) driven by playwright-core.
//
// Each test starts its own `rollcall serve` ($ROLLCALL_BIN, else target/debug/rollcall)
// on a free port with a temp data dir, and fails on any console.error or uncaught
// error in any page. Screenshots go to test-output/ at the repository root.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const ROLLCALL_BIN = process.env.ROLLCALL_BIN || join(repo, "target", "debug", "rollcall");
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const OUT = join(repo, "test-output");
const DEMO_TTL_MS = 4_000; // TTL_MS in server/assets/demo.js

mkdirSync(OUT, { recursive: true });

// ---- the server --------------------------------------------------------------------

/** Starts `rollcall serve` on 127.0.0.1:0; resolves once /healthz answers 200. */
async function startServer(extraArgs = []) {
  const data = mkdtempSync(join(tmpdir(), "rollcall-pages-"));
  const args = ["serve", "--listen", "127.0.0.1:0", "--data", data, "--durability", "memory", ...extraArgs];
  const child = spawn(ROLLCALL_BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
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
  const match = /^rollcall listening on (http:\/\/\S+)$/.exec(first);
  assert.ok(match, `unexpected first line from rollcall: ${first}`);
  const base = match[1];
  const deadline = Date.now() + 30_000;
  for (;;) {
    const status = await fetch(`${base}/healthz`).then((r) => r.status, () => 0);
    if (status === 200) break;
    if (Date.now() > deadline) throw new Error(`rollcall never became healthy:\n${stderr}`);
    await delay(25); // polling a readiness endpoint, not a fixed wait
  }
  return {
    base,
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      const [code] = await exited;
      rmSync(data, { recursive: true, force: true });
      assert.equal(code, 0, `rollcall exited with ${code}:\n${stderr}`);
    },
  };
}

// ---- the browser ---------------------------------------------------------------------

let browser;

before(async () => {
  // Playwright gives every launch a fresh --user-data-dir of its own (it refuses one in
  // `args`), and removes it on close.
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox", // we run as root
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-quic",
      "--no-first-run",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
});

/**
 * Opens `url` in a new browser context (its own storage, like another person's
 * browser) and records console errors and uncaught exceptions into `problems`.
 */
async function openPage(url, problems, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, ...options });
  const page = await context.newPage();
  const label = `${new URL(url).pathname}${new URL(url).search}`;
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`${label}: console.error: ${message.text()}`);
  });
  page.on("pageerror", (error) => problems.push(`${label}: uncaught: ${error.stack ?? error.message}`));
  await page.goto(url);
  await page.locator('#connection[data-state="connected"]').waitFor();
  return page;
}

/** Waits until the inspector lists `room` with `n` live entries (0: not listed). */
function waitForRoomCount(page, room, n) {
  return page.waitForFunction(
    ([room, n]) => {
      const item = [...document.querySelectorAll("#room-list li")].find((li) => li.dataset.room === room);
      return n === 0 ? item === undefined : item?.dataset.entries === String(n);
    },
    [room, n],
  );
}

/** A visitor's client id, from the "Here now" list of their own demo page. */
async function ownClientId(page) {
  const me = page.locator("#people li[data-me]");
  await me.waitFor();
  return me.getAttribute("data-client-id");
}

/** Where fractions (fx, fy) of the demo's board are, in the page (inside its border). */
function stagePoint(page, fx, fy) {
  return page.locator("#stage").evaluate(
    (stage, [fx, fy]) => {
      const box = stage.getBoundingClientRect();
      return { x: box.left + stage.clientLeft + fx * stage.clientWidth, y: box.top + stage.clientTop + fy * stage.clientHeight };
    },
    [fx, fy],
  );
}

/** Moves the mouse to fractions (fx, fy) of the demo's board. */
async function moveOnStage(page, fx, fy) {
  const { x, y } = await stagePoint(page, fx, fy);
  await page.mouse.move(x, y, { steps: 8 });
}

/** Waits until `page` draws the cursor of `clientId` at (fx, fy) of its own board. */
function waitForCursorAt(page, clientId, fx, fy) {
  return page.waitForFunction(
    ([id, fx, fy]) => {
      const cursor = document.querySelector(`.cursor[data-client-id="${id}"]`);
      if (!cursor || cursor.hidden) return false;
      const stage = document.getElementById("stage");
      const box = stage.getBoundingClientRect();
      const at = cursor.getBoundingClientRect();
      // The arrow's tip is the element's top-left corner; the transition glides there.
      const x = box.left + stage.clientLeft + fx * stage.clientWidth;
      const y = box.top + stage.clientTop + fy * stage.clientHeight;
      return Math.abs(at.left - x) < 2 && Math.abs(at.top - y) < 2;
    },
    [clientId, fx, fy],
  );
}

// ---- tests ------------------------------------------------------------------------------

test("demo: cursors and typing cross between two pages, and a closed page's cursor goes; the inspector follows", async (t) => {
  // An origin allow-list must not lock out the server's own pages.
  const server = await startServer(["--allowed-origin", "https://app.example.com"]);
  const problems = [];
  try {
    const inspector = await openPage(`${server.base}/#room=t`, problems);
    await inspector.locator("#room-heading .room-title", { hasText: /^t$/ }).waitFor();
    await waitForRoomCount(inspector, "t", 0);

    const alice = await openPage(`${server.base}/demo?room=t`, problems);
    await waitForRoomCount(inspector, "t", 1);
    const bob = await openPage(`${server.base}/demo?room=t`, problems);
    await waitForRoomCount(inspector, "t", 2);

    const aliceId = await ownClientId(alice);
    const bobId = await ownClientId(bob);
    assert.notEqual(aliceId, bobId);
    for (const page of [alice, bob]) await page.locator("#people li").nth(1).waitFor();
    // The inspector only watches: the room holds the two visitors and nobody else.
    await inspector.waitForFunction(() => document.querySelectorAll("#entries tr").length === 2);

    // A mouse move on one page shows a cursor on the other, where the mouse is.
    await moveOnStage(alice, 0.25, 0.4);
    await waitForCursorAt(bob, aliceId, 0.25, 0.4);
    const aliceName = await alice.locator("#me-name").textContent();
    assert.equal(await bob.locator(`.cursor[data-client-id="${aliceId}"] .name`).textContent(), aliceName);
    await moveOnStage(alice, 0.7, 0.65);
    await waitForCursorAt(bob, aliceId, 0.7, 0.65);
    await moveOnStage(bob, 0.45, 0.3);
    await waitForCursorAt(alice, bobId, 0.45, 0.3);
    // Nobody is drawn a cursor of their own: the real pointer is there.
    assert.equal(await alice.locator(`.cursor[data-client-id="${aliceId}"]`).count(), 0);

    // Typing shows "typing…" to the others; sending shows the message by the cursor.
    await alice.locator("#message").fill("hello, Bob");
    await bob.locator(`.cursor[data-client-id="${aliceId}"] .typing`).waitFor();
    await bob.locator(`#people li[data-client-id="${aliceId}"] .typing`, { hasText: "typing…" }).waitFor();
    await alice.locator("#message").press("Enter");
    await bob.locator(`.cursor[data-client-id="${aliceId}"] .said`, { hasText: "hello, Bob" }).waitFor();
    // What was said went as a broadcast: it is in nobody's presence entry.
    const stored = await fetch(`${server.base}/v1/rooms/t`).then((r) => r.json());
    assert.equal(stored.entries.length, 2);
    assert.ok(!JSON.stringify(stored).includes("hello, Bob"), JSON.stringify(stored));
    await bob.locator(`.cursor[data-client-id="${aliceId}"] .typing`).waitFor({ state: "hidden" });
    await bob.locator("#message").fill("hi");
    await alice.locator(`.cursor[data-client-id="${bobId}"] .typing`).waitFor();

    // The inspector shows both entries' data and their time left. Rows are looked up
    // by client id: two visitors may draw the same random name.
    await inspector.locator(`#entries tr[data-client-id="${aliceId}"] pre`, { hasText: aliceName }).waitFor();
    assert.match(await inspector.locator("#entries td.left").first().textContent(), /^\d+\.\d s$/);

    // A third visitor on a phone-sized touch screen: a tap places the cursor.
    const phone = await openPage(`${server.base}/demo?room=t`, problems, {
      viewport: { width: 390, height: 844 },
      isMobile: true,
      hasTouch: true,
      deviceScaleFactor: 2,
    });
    await waitForRoomCount(inspector, "t", 3);
    const phoneId = await ownClientId(phone);
    const tapAt = await stagePoint(phone, 0.6, 0.2);
    await phone.touchscreen.tap(tapAt.x, tapAt.y);
    await waitForCursorAt(bob, phoneId, 0.6, 0.2);
    await moveOnStage(alice, 0.3, 0.35);
    await waitForCursorAt(phone, aliceId, 0.3, 0.35);
    await waitForCursorAt(bob, aliceId, 0.3, 0.35);
    await waitForCursorAt(phone, bobId, 0.45, 0.3);
    await inspector.waitForFunction(() => document.querySelectorAll("#entries tr").length === 3);

    await alice.locator("#message").fill("look at this");
    await bob.locator(`.cursor[data-client-id="${aliceId}"] .typing`).waitFor();
    // Alice's row, not any row: Bob typed "hi" above and stays "typing" until 2 s after
    // his last keystroke (TYPING_IDLE_MS), so his row may show "typing": true as well.
    await inspector.locator(`#entries tr[data-client-id="${aliceId}"] pre`, { hasText: '"typing": true' }).waitFor();
    await bob.screenshot({ path: join(OUT, "demo.png") });
    await phone.screenshot({ path: join(OUT, "demo-phone.png"), fullPage: true });
    await inspector.screenshot({ path: join(OUT, "inspector.png"), fullPage: true });
    await bob.emulateMedia({ colorScheme: "dark" });
    await bob.screenshot({ path: join(OUT, "demo-dark.png") });

    // Its tab dies without a pagehide (no leave sent): the TTL removes it, TTL_MS after
    // the last heartbeat the server got (the 1 s of slack is for a busy machine).
    const cdp = await phone.context().newCDPSession(phone);
    const crashed = phone.waitForEvent("crash");
    void cdp.send("Page.crash").catch(() => {}); // never answered: the renderer is gone
    await crashed;
    const crashedAt = Date.now();
    await alice.locator(`#people li[data-client-id="${phoneId}"]`).waitFor({ state: "detached", timeout: DEMO_TTL_MS + 2_000 });
    const expired = Date.now() - crashedAt;
    assert.ok(expired <= DEMO_TTL_MS + 1_000, `a crashed page stayed ${expired} ms`);
    t.diagnostic(`a crashed page's entry expired after ${expired} ms (TTL ${DEMO_TTL_MS} ms)`);
    await waitForRoomCount(inspector, "t", 2);
    await phone.context().close();

    // Closing a page removes its cursor on the other one, within the TTL.
    const closedAt = Date.now();
    await alice.context().close();
    await bob.locator(`.cursor[data-client-id="${aliceId}"]`).waitFor({ state: "detached", timeout: DEMO_TTL_MS + 2_000 });
    const gone = Date.now() - closedAt;
    assert.ok(gone <= DEMO_TTL_MS + 1_000, `the cursor took ${gone} ms to go`);
    t.diagnostic(`a closed page's cursor went after ${gone} ms (TTL ${DEMO_TTL_MS} ms)`);
    await bob.locator(`#people li[data-client-id="${aliceId}"]`).waitFor({ state: "detached" });
    await waitForRoomCount(inspector, "t", 1);
    await inspector.waitForFunction(() => document.querySelectorAll("#entries tr").length === 1);

    await bob.context().close();
    await waitForRoomCount(inspector, "t", 0);
    await inspector.locator("#room-empty", { hasText: "No live entries" }).waitFor();
    await inspector.context().close();
  } finally {
    await server.stop();
  }
  assert.deepEqual(problems, []);
});

test("inspector: hundreds of rooms, paginated; server metrics; a room's entries live, counting down and expiring", async () => {
  const server = await startServer();
  const problems = [];
  try {
    // 230 rooms (five pages of 50), each with one long-lived entry from a bot.
    const rooms = Array.from({ length: 230 }, (_, i) => `pr:room-${String(i).padStart(3, "0")}`);
    const heartbeat = async (room, body) => {
      const response = await fetch(`${server.base}/v1/rooms/${encodeURIComponent(room)}/heartbeat`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      const text = await response.text();
      assert.equal(response.status, 200, text);
      return JSON.parse(text);
    };
    for (let i = 0; i < rooms.length; i += 23) {
      await Promise.all(rooms.slice(i, i + 23).map((room, j) => heartbeat(room, { data: { bot: "indexer", n: i + j }, ttlMs: 600_000 })));
    }
    const bot = await heartbeat("pr:room-000", { data: { status: "busy", tags: ["a", "b"] }, ttlMs: 600_000 });

    const page = await openPage(`${server.base}/`, problems);
    const items = page.locator("#room-list li");
    await page.waitForFunction(() => document.querySelectorAll("#room-list li").length === 50);
    assert.equal(await items.first().getAttribute("data-room"), "pr:room-000");
    assert.equal(await items.first().getAttribute("data-entries"), "2");
    assert.equal(await items.last().getAttribute("data-room"), "pr:room-049");
    await page.locator("#page-label", { hasText: "Page 1" }).waitFor();
    assert.equal(await page.locator("#prev-page").isDisabled(), true);

    // Metrics at a glance; heartbeats/s needs two samples.
    await page.locator('[data-metric="rooms"]', { hasText: /^230$/ }).waitFor();
    await page.locator('[data-metric="entries"]', { hasText: /^231$/ }).waitFor();
    await page.locator('[data-metric="connections"]', { hasText: /^1$/ }).waitFor();
    await page.waitForFunction(() => /^\d/.test(document.querySelector('[data-metric="heartbeatRate"]').textContent));

    // Pages forward to the last one and back, by keyboard.
    await page.locator("#next-page").focus();
    await page.keyboard.press("Enter");
    await page.locator("#page-label", { hasText: "Page 2" }).waitFor();
    assert.equal(await items.first().getAttribute("data-room"), "pr:room-050");
    for (const n of [3, 4, 5]) {
      await page.locator("#next-page").click();
      await page.locator("#page-label", { hasText: `Page ${n}` }).waitFor();
    }
    await page.waitForFunction(() => document.querySelectorAll("#room-list li").length === 30);
    assert.equal(await items.last().getAttribute("data-room"), "pr:room-229");
    assert.equal(await page.locator("#next-page").isDisabled(), true);
    await page.locator("#prev-page").click();
    await page.locator("#page-label", { hasText: "Page 4" }).waitFor();
    assert.equal(await items.first().getAttribute("data-room"), "pr:room-150");
    for (let i = 0; i < 3; i++) await page.locator("#prev-page").click();
    await page.locator("#page-label", { hasText: "Page 1" }).waitFor();
    await page.waitForFunction(() => document.querySelector("#room-list li")?.dataset.room === "pr:room-000");

    // Open a room: its entries, with data as JSON and the time left.
    await page.locator('#room-list li[data-room="pr:room-000"] a').click();
    assert.equal(new URL(page.url()).hash, "#room=pr%3Aroom-000");
    await page.waitForFunction(() => document.querySelectorAll("#entries tr").length === 2);
    await page.locator(`#entries tr[data-client-id="${bot.clientId}"] pre`, { hasText: '"status": "busy"' }).waitFor();
    assert.match(await page.locator(`#entries tr[data-client-id="${bot.clientId}"] td.left`).textContent(), /^9 min \d+ s$/);

    // Live: an update replaces the data; a short entry counts down, then expires.
    await heartbeat("pr:room-000", { clientId: bot.clientId, data: { status: "idle" }, ttlMs: 600_000 });
    await page.locator(`#entries tr[data-client-id="${bot.clientId}"] pre`, { hasText: '"status": "idle"' }).waitFor();
    const short = await heartbeat("pr:room-000", { data: { status: "leaving soon" }, ttlMs: 2_500 });
    const left = page.locator(`#entries tr[data-client-id="${short.clientId}"] td.left`);
    await left.waitFor();
    const first = parseFloat(await left.textContent());
    assert.ok(first > 0 && first <= 2.5, `time left ${first}`);
    await page.waitForFunction(
      ([id, first]) => {
        const cell = document.querySelector(`#entries tr[data-client-id="${id}"] td.left`);
        return cell && parseFloat(cell.textContent) < first - 0.5;
      },
      [short.clientId, first],
    );
    await page.screenshot({ path: join(OUT, "inspector-rooms.png"), fullPage: true });
    await page.locator(`#entries tr[data-client-id="${short.clientId}"]`).waitFor({ state: "detached", timeout: 5_000 });
    await waitForRoomCount(page, "pr:room-000", 2);

    // Opening a room by name works for rooms on other pages too.
    await page.locator("#open-room-name").fill("pr:room-222");
    await page.locator("#open-room-name").press("Enter");
    await page.locator(`#entries pre`, { hasText: '"n": 222' }).waitFor();
    await page.locator("#room-heading", { hasText: "pr:room-222" }).waitFor();

    await page.emulateMedia({ colorScheme: "dark" });
    await page.screenshot({ path: join(OUT, "inspector-dark.png") });
    await page.context().close();

    const phone = await openPage(`${server.base}/#room=pr%3Aroom-007`, problems, {
      viewport: { width: 390, height: 844 },
      isMobile: true,
      hasTouch: true,
      deviceScaleFactor: 2,
    });
    await phone.locator("#entries pre", { hasText: '"n": 7' }).waitFor();
    await phone.locator('[data-metric="rooms"]', { hasText: /^230$/ }).waitFor();
    await phone.locator('[data-metric="connections"]', { hasText: /^1$/ }).waitFor();
    await phone.waitForFunction(() => /^\d/.test(document.querySelector('[data-metric="heartbeatRate"]').textContent));
    await phone.screenshot({ path: join(OUT, "inspector-phone.png") });
    await phone.context().close();
  } finally {
    await server.stop();
  }
  assert.deepEqual(problems, []);
});

test("pages and assets are served with their content types", async () => {
  const server = await startServer();
  try {
    for (const [path, type] of [
      ["/", "text/html; charset=utf-8"],
      ["/demo", "text/html; charset=utf-8"],
      ["/assets/rollcall-client.js", "text/javascript; charset=utf-8"],
      ["/assets/style.css", "text/css; charset=utf-8"],
    ]) {
      const response = await fetch(`${server.base}${path}`);
      assert.equal(response.status, 200, path);
      assert.equal(response.headers.get("content-type"), type, path);
      assert.equal(response.headers.get("cache-control"), "no-cache", path);
      const etag = response.headers.get("etag");
      assert.ok(etag, path);
      const again = await fetch(`${server.base}${path}`, { headers: { "if-none-match": etag } });
      assert.equal(again.status, 304, path);
    }
    // The API's routes are unchanged: an unknown path is still a JSON 404.
    const missing = await fetch(`${server.base}/assets/nope.js`);
    assert.equal(missing.status, 404);
    assert.equal((await missing.json()).error, "not_found");
  } finally {
    await server.stop();
  }
});
