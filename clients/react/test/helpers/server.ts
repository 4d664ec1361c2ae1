// Starts and stops a real `rollcall` server process (port 0, temp data dir) for the tests.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (this file is clients/react/test/helpers/server.ts). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");

/** The server binary: $ROLLCALL_BIN, else target/{debug,release}/rollcall (the newest). */
export function findServerBinary(): string {
  const env = process.env.ROLLCALL_BIN;
  if (env) {
    if (!existsSync(env)) throw new Error(`ROLLCALL_BIN=${env} does not exist`);
    return env;
  }
  const candidates = ["debug", "release"]
    .map((p) => join(REPO_ROOT, "target", p, "rollcall"))
    .filter((p) => existsSync(p))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  if (candidates.length === 0) throw new Error("no rollcall server binary: set ROLLCALL_BIN or run cargo build -p rollcall-server --bin rollcall");
  return candidates[0]!;
}

export class TestServer {
  private proc: ChildProcess | undefined;
  port = 0;
  private readonly output: string[] = [];
  private readonly dataDir = mkdtempSync(join(tmpdir(), "rollcall-react-"));

  static async start(): Promise<TestServer> {
    const s = new TestServer();
    await s.spawn(0);
    return s;
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  get httpUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  private async spawn(port: number): Promise<void> {
    const args = ["serve", "--listen", `127.0.0.1:${port}`, "--data", this.dataDir];
    const proc = spawn(findServerBinary(), args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" } });
    this.proc = proc;
    const keep = (chunk: string) => {
      this.output.push(chunk);
      if (this.output.length > 200) this.output.shift();
    };
    this.port = await new Promise<number>((resolve, reject) => {
      let buf = "";
      proc.stdout!.setEncoding("utf8");
      proc.stdout!.on("data", (chunk: string) => {
        buf += chunk;
        keep(chunk);
        const m = /rollcall listening on http:\/\/[^\s:]+:(\d+)/.exec(buf);
        if (m) resolve(Number(m[1]));
      });
      proc.stderr!.setEncoding("utf8");
      proc.stderr!.on("data", keep);
      proc.on("exit", (code, sig) => reject(new Error(`rollcall exited (${code ?? sig}) before listening:\n${this.output.join("")}`)));
      proc.on("error", reject);
    });
    for (;;) {
      const status = await fetch(`${this.httpUrl}/healthz`).then((r) => r.status, () => 0);
      if (status === 200) return;
      await new Promise((r) => setTimeout(r, 20)); // polling readiness, not a fixed wait
    }
  }

  private async kill(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => p.once("exit", () => resolve()));
    p.kill("SIGKILL");
    await exited;
  }

  /** kill -9 and start again on the same port and data directory. */
  async restart(): Promise<void> {
    await this.kill();
    for (let i = 0; ; i++) {
      try {
        await this.spawn(this.port);
        return;
      } catch (e) {
        if (i >= 40) throw e;
        await new Promise((r) => setTimeout(r, 100)); // the port may take a moment to free up
      }
    }
  }

  async stop(): Promise<void> {
    await this.kill();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** GET /v1/rooms/{room}: the entries the server holds. */
  async roomEntries(room: string): Promise<{ clientId: number; data: unknown }[]> {
    const res = await fetch(`${this.httpUrl}/v1/rooms/${encodeURIComponent(room)}`);
    if (res.status === 404) return [];
    if (res.status !== 200) throw new Error(`GET /v1/rooms/${room}: ${res.status} ${await res.text()}`);
    return ((await res.json()) as { entries: { clientId: number; data: unknown }[] }).entries;
  }
}
