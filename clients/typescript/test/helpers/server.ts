// Starts and stops real `rollcall` server processes for the integration tests.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { sleep, waitFor } from "./util.js";

/** clients/typescript (this file is build/test/helpers/server.js once compiled). */
export const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

/** The server binary: $ROLLCALL_BIN, else ../../target/{debug,release}/rollcall (the newest). */
export function findServerBinary(): string {
  const env = process.env.ROLLCALL_BIN;
  if (env) {
    if (!existsSync(env)) throw new Error(`ROLLCALL_BIN=${env} does not exist`);
    return env;
  }
  const candidates = ["debug", "release"]
    .map((p) => join(PACKAGE_ROOT, "../../target", p, "rollcall"))
    .filter((p) => existsSync(p))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  if (candidates.length === 0) {
    throw new Error(
      "no rollcall server binary: set ROLLCALL_BIN or build it (cargo build -p rollcall-server) so that ../../target/debug/rollcall exists",
    );
  }
  return candidates[0]!;
}

const running = new Set<ChildProcess>();
process.on("exit", () => {
  for (const p of running) p.kill("SIGKILL");
});

export interface ServerOptions {
  /** Data directory; a fresh temp dir by default (removed by `cleanup()`). */
  dataDir?: string;
  /** Port; 0 (any free port) by default. */
  port?: number;
  durability?: "memory" | "flush" | "buffered";
  tickMs?: number;
  args?: string[];
}

export class TestServer {
  proc!: ChildProcess;
  port = 0;
  readonly output: string[] = [];
  private ownsDir: boolean;
  readonly dataDir: string;

  private constructor(private readonly opts: ServerOptions) {
    this.ownsDir = !opts.dataDir;
    this.dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), "rollcall-ts-"));
  }

  static async start(opts: ServerOptions = {}): Promise<TestServer> {
    const s = new TestServer(opts);
    await s.spawn(opts.port ?? 0);
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
    if (this.opts.durability) args.push("--durability", this.opts.durability);
    if (this.opts.tickMs !== undefined) args.push("--tick-ms", String(this.opts.tickMs));
    args.push(...(this.opts.args ?? []));
    const proc = spawn(findServerBinary(), args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" } });
    this.proc = proc;
    running.add(proc);
    proc.on("exit", () => running.delete(proc));
    const listening = new Promise<number>((resolve, reject) => {
      let buf = "";
      proc.stdout!.setEncoding("utf8");
      proc.stdout!.on("data", (chunk: string) => {
        buf += chunk;
        this.keep(chunk);
        const m = /rollcall listening on http:\/\/[^\s:]+:(\d+)/.exec(buf);
        if (m) resolve(Number(m[1]));
      });
      proc.stderr!.setEncoding("utf8");
      proc.stderr!.on("data", (chunk: string) => this.keep(chunk));
      proc.on("exit", (code, sig) => reject(new Error(`rollcall exited (${code ?? sig}) before listening:\n${this.output.join("")}`)));
      proc.on("error", reject);
    });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`rollcall did not print its listening line within 20 s:\n${this.output.join("")}`)), 20_000);
    });
    try {
      this.port = await Promise.race([listening, timeout]);
    } finally {
      clearTimeout(timer);
    }
    await waitFor(async () => (await fetch(`${this.httpUrl}/healthz`)).status === 200, "GET /healthz = 200", { timeoutMs: 20_000, intervalMs: 20 });
  }

  private keep(chunk: string): void {
    this.output.push(chunk);
    if (this.output.length > 200) this.output.shift();
  }

  /** kill -9, as a crash would. */
  async kill9(): Promise<void> {
    await this.killWith("SIGKILL");
  }

  /** SIGTERM: the server drains (closing sockets with 1001), flushes and exits. */
  async terminate(): Promise<void> {
    await this.killWith("SIGTERM");
  }

  /** Starts the server again on the same port and data directory. */
  async restart(): Promise<void> {
    const port = this.port;
    // The port may take a moment to be free again after a kill.
    for (let i = 0; ; i++) {
      try {
        await this.spawn(port);
        return;
      } catch (e) {
        if (i >= 20) throw e;
        await sleep(100);
      }
    }
  }

  private async killWith(sig: NodeJS.Signals): Promise<void> {
    const p = this.proc;
    if (p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => p.once("exit", () => resolve()));
    p.kill(sig);
    await exited;
  }

  /** Stops the server (SIGKILL) and removes its temp data dir. */
  async stop(): Promise<void> {
    await this.killWith("SIGKILL");
    if (this.ownsDir) rmSync(this.dataDir, { recursive: true, force: true });
  }

  /**
   * A REST heartbeat into a scratch room, answered once durable: the log is flushed
   * in order, so every heartbeat the server applied before it is durable too.
   */
  async durableBarrier(): Promise<void> {
    const res = await fetch(`${this.httpUrl}/v1/rooms/${encodeURIComponent("test:barrier")}/heartbeat`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ data: null, ttlMs: 1 }),
    });
    if (res.status !== 200) throw new Error(`barrier heartbeat: ${res.status} ${await res.text()}`);
  }

  /** GET /v1/rooms/{room}. */
  async roomEntries(room: string): Promise<{ clientId: number; data: unknown; expiresAtMs: number }[]> {
    const res = await fetch(`${this.httpUrl}/v1/rooms/${encodeURIComponent(room)}`);
    if (res.status === 404) return [];
    if (res.status !== 200) throw new Error(`GET /v1/rooms/${room}: ${res.status} ${await res.text()}`);
    const body = (await res.json()) as { entries: { clientId: number; data: unknown; expiresAtMs: number }[] };
    return body.entries;
  }
}
