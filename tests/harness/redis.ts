/**
 * Throw-away redis-server processes for integration tests: no persistence, loopback
 * only, a free port each, a direct child of the test process stopped by pid.
 *
 * @example
 * ```ts
 * await using redis = await startRedis();
 * await redis.cli("set", "k", "v");
 * ```
 * @module
 */
import { serverDir } from "./_base.ts";
import { HarnessError, run } from "./_process.ts";
import { ManagedServer } from "./_server.ts";
import { freePort } from "./ports.ts";

/** A running (or stopped) throw-away redis-server. */
export interface RedisServer extends AsyncDisposable {
  /** TCP port on 127.0.0.1. */
  readonly port: number;
  /** `redis://127.0.0.1:PORT`. */
  readonly url: string;
  /** Pid of the current run (changes after a restart). */
  readonly pid: number;
  /** True while the server process runs (it may be SIGSTOPped). */
  readonly running: boolean;
  /** Working directory (its log is `redis.log` there). */
  readonly dir: string;
  /** Graceful shutdown (SIGTERM), waiting for the exit; idempotent. */
  stop(): Promise<void>;
  /** Sends `signal` (default SIGKILL); for a fatal signal waits for the exit. */
  kill(signal?: Deno.Signal): Promise<void>;
  /** (Re)starts on the same port and dir; waits until PING answers PONG. */
  start(): Promise<void>;
  /** Runs `redis-cli -e` against the server; returns stdout without its final newline; throws on errors. */
  cli(...args: string[]): Promise<string>;
  /** Stops the server and removes its directory. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** Options of {@linkcode startRedis}. */
export interface StartRedisOptions {
  /** Extra redis-server arguments, e.g. `["--replicaof", "127.0.0.1", "6380"]` (not --port/--bind/--dir). */
  args?: string[];
}

/** Starts a fresh redis-server on a free port and waits until it answers PING. */
export async function startRedis(opts: StartRedisOptions = {}): Promise<RedisServer> {
  const dir = await serverDir("redis");
  const server = new RedisNode(dir, { port: await freePort(), args: opts.args ?? [] });
  try {
    await server.launchNew();
    return server;
  } catch (err) {
    await server[Symbol.asyncDispose]();
    throw err;
  }
}

class RedisNode extends ManagedServer implements RedisServer {
  protected readonly label: string = "redis-server";
  protected readonly stopSignal: Deno.Signal = "SIGTERM";
  protected readonly bindError = /Address already in use|Could not create server TCP listening/;
  readonly #args: string[];

  constructor(dir: string, opts: { port: number; args: string[] }) {
    super(dir, { port: opts.port, logName: "redis.log" });
    this.#args = opts.args;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  async cli(...args: string[]): Promise<string> {
    const result = await run([
      "redis-cli",
      "-e",
      "-h",
      "127.0.0.1",
      "-p",
      String(this.port),
      ...args,
    ]);
    if (result.code !== 0) {
      throw new HarnessError(
        "COMMAND_FAILED",
        `redis-cli ${args.join(" ")} failed on port ${this.port}: ${
          (result.stderr || result.stdout).trim()
        }`,
      );
    }
    return result.stdout.endsWith("\n") ? result.stdout.slice(0, -1) : result.stdout;
  }

  /** First start: a taken port moves the server to a fresh one. */
  launchNew(): Promise<void> {
    return this.exclusive(() => this.launch({ retryPort: true }));
  }

  protected argv(port: number): string[] {
    return [
      "redis-server",
      "--port",
      String(port),
      "--bind",
      "127.0.0.1",
      "--protected-mode",
      "no",
      "--daemonize",
      "no",
      "--save",
      "",
      "--appendonly",
      "no",
      "--dir",
      this.dir,
      "--repl-diskless-sync-delay",
      "0",
      ...this.#args,
    ];
  }

  protected isReady(): Promise<boolean> {
    return ping(this.port);
  }
}

/** True when a RESP PING on `port` answers +PONG within `timeoutMs`. */
async function ping(port: number, timeoutMs = 1000): Promise<boolean> {
  let conn: Deno.TcpConn | undefined;
  let timer: number | undefined;
  try {
    conn = await Deno.connect({ hostname: "127.0.0.1", port });
    const open = conn;
    timer = setTimeout(() => open.close(), timeoutMs);
    await conn.write(new TextEncoder().encode("PING\r\n"));
    const buf = new Uint8Array(64);
    const n = await conn.read(buf);
    return n !== null && new TextDecoder().decode(buf.subarray(0, n)).startsWith("+PONG");
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
    try {
      conn?.close();
    } catch {
      // closed by the timeout
    }
  }
}
