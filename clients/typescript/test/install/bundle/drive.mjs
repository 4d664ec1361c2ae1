// Serves out/esbuild and out/vite, opens one page of each in headless Chromium, and
// waits until each shows the other's entry, decoded by the Effect schema. Prints OK.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import { chromium } from "playwright-core";

const root = join(import.meta.dirname, "out");
const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css" };
const http = createServer(async (req, res) => {
  if (req.url === "/favicon.ico") return void res.writeHead(204).end();
  const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname)).replace(/^(\.\.[/\\])+/, "");
  const file = join(root, path.endsWith("/") ? `${path}index.html` : path);
  try {
    const body = await readFile(file);
    res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});
http.listen(0, "127.0.0.1");
await new Promise((r) => http.once("listening", r));
const base = `http://127.0.0.1:${http.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_BIN || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const problems = [];
try {
  const open = async (path, x, y) => {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on("console", (m) => {
      if (m.type() === "error") problems.push(`${path}: console.error: ${m.text()}`);
    });
    page.on("pageerror", (e) => problems.push(`${path}: uncaught: ${e.stack ?? e.message}`));
    const ws = process.env.ROLLCALL_URL;
    await page.goto(`${base}${path}?${new URLSearchParams({ ws, x: String(x), y: String(y) })}`);
    await page.waitForFunction(() => window.results?.clientId != null);
    return page;
  };
  const a = await open("/esbuild/", 10, 20);
  const b = await open("/vite/", 30, 40);
  const idA = await a.evaluate(() => window.results.clientId);
  const idB = await b.evaluate(() => window.results.clientId);
  const sees = (page, id, data) =>
    page.waitForFunction(
      ([id, data]) => window.results.entries.some((e) => e.id === id && JSON.stringify(e.data) === JSON.stringify(data)),
      [id, data],
      { timeout: 15_000 },
    );
  await sees(a, idB, { x: 30, y: 40 });
  await sees(b, idA, { x: 10, y: 20 });
  await sees(a, idA, { x: 10, y: 20 });
  for (const page of [a, b]) {
    const r = await page.evaluate(() => window.results);
    assert.equal(r.without?.code, "schema_unavailable", JSON.stringify(r.without));
    assert.match(r.without.message, /createClient\(\{ url, effectSchema: Schema \}\)/);
    // Only the refused heartbeat: had it been sent, the other page would report decode_failed.
    assert.deepEqual(r.errors.map((e) => e.code), ["schema_mismatch"], JSON.stringify(r.errors));
  }
  assert.deepEqual(problems, []);
  console.log(`OK: ${idA} (esbuild) and ${idB} (vite) see each other`);
} finally {
  await browser.close();
  http.close();
}
