/**
 * Private: the life cycle shared by every throw-away server — spawn as a direct child
 * with output in a log file, poll for readiness, retry on a taken port, stop or kill by
 * pid and reap, and remove its directory on dispose.
 * @module
 */
import { track, type Tracked, untrack } from "./_base.ts";
import {
  childrenOf,
  exitedWithin,
  FATAL_SIGNALS,
  fileSize,
  HarnessError,
  logTail,
  signalPid,
  sleep,
  spawnLogged,
  waitGone,
} from "./_process.ts";
import { freePort } from "./ports.ts";

/** How often readiness queries that spawn a client (psql) are polled. */
export const POLL_MS = 20;

/** How often the cheap readiness probes (a file read, a TCP PING) run during start-up. */
const READY_POLL_MS = 10;

/** How long a server may take to become ready. */
const START_TIMEOUT_MS = 60_000;

/** How long a graceful stop may take before SIGKILL. */
const STOP_TIMEOUT_MS = 15_000;

/** How many fresh ports a first start tries when the port was taken meanwhile. */
const PORT_ATTEMPTS = 5;

/** A server process owned by the harness; subclasses say how to run it and when it is ready. */
export abstract class ManagedServer implements Tracked, AsyncDisposable {
  /** The server's own directory (removed on dispose). */
  readonly dir: string;
  /** The log file the server's stdout and stderr go to. */
  readonly logPath: string;
  /** Human name used in error messages, e.g. `PostgreSQL pg1`. */
  protected abstract readonly label: string;
  /** Signal for a graceful stop. */
  protected abstract readonly stopSignal: Deno.Signal;
  /** Log text meaning the port was taken. */
  protected abstract readonly bindError: RegExp;

  #port: number;
  #pid = 0;
  #child: Deno.ChildProcess | undefined;
  #exited = false;
  #disposed = false;
  #queue: Promise<unknown> = Promise.resolve();

  /** Prepares (does not start) a server living in `dir` on `options.port`. */
  constructor(dir: string, options: { port: number; logName: string }) {
    this.dir = dir;
    this.#port = options.port;
    this.logPath = `${dir}/${options.logName}`;
    track(this);
  }

  /** The TCP port on 127.0.0.1. */
  get port(): number {
    return this.#port;
  }

  /** Pid of the current run (of the last run once stopped). */
  get pid(): number {
    return this.#pid;
  }

  /** True while the server process runs (it may be SIGSTOPped). */
  get running(): boolean {
    return this.#child !== undefined && !this.#exited;
  }

  /** The argv that runs the server in the foreground on `port`. */
  protected abstract argv(port: number): string[];

  /** True once the server with `pid` accepts connections. */
  protected abstract isReady(pid: number): Promise<boolean>;

  /** Called before every spawn (e.g. to drop a stale lock file). */
  protected beforeLaunch(): Promise<void> {
    return Promise.resolve();
  }

  /**
   * Called once stop() or kill() has seen the server's process exit: waits for whatever
   * else of that run may still run (processes it had started, and not only those seen when
   * the signal went out).
   */
  protected afterExit(): Promise<void> {
    return Promise.resolve();
  }

  /** Starts the server again on the same port after stop()/kill(); no-op while it runs. */
  start(): Promise<void> {
    return this.exclusive(() => this.launch({ retryPort: false }));
  }

  /** Gracefully stops the server and waits for it and its children to exit; idempotent. */
  stop(): Promise<void> {
    return this.exclusive(() => this.terminate(this.stopSignal));
  }

  /** Sends `signal` (default SIGKILL); for a fatal signal waits until the server is gone. */
  kill(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    return this.exclusive(async () => {
      if (!this.running) return;
      if (!FATAL_SIGNALS.has(signal)) {
        signalPid(this.#pid, signal);
        return;
      }
      await this.terminate(signal, { escalate: false });
    });
  }

  /** Stops the server and removes its directory. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    try {
      await this.stop();
    } finally {
      untrack(this);
      await Deno.remove(this.dir, { recursive: true }).catch(() => {});
    }
  }

  /** SIGKILLs the process synchronously (unload listener). */
  emergencyKill(): void {
    if (this.running) signalPid(this.#pid, "SIGKILL");
  }

  /** Runs `fn` after every earlier start/stop/kill of this server has finished. */
  protected exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.#queue.then(fn, fn);
    this.#queue = next.catch(() => {});
    return next;
  }

  /** Spawns the server and waits until it is ready; with `retryPort`, moves to a fresh port on a bind error. */
  protected async launch(options: { retryPort: boolean }): Promise<void> {
    if (this.running) return;
    if (this.#disposed) {
      throw new HarnessError("SERVER_START_FAILED", `Cannot start ${this.label}: it was disposed`);
    }
    for (let attempt = 1;; attempt++) {
      await this.beforeLaunch();
      const logOffset = await fileSize(this.logPath);
      const child = spawnLogged(this.argv(this.#port), { logPath: this.logPath, cwd: this.dir });
      // A server must not keep the process alive: a script that forgets to dispose it
      // exits, and the unload listener kills it. ref() again while awaiting its exit.
      child.unref();
      this.#child = child;
      this.#pid = child.pid;
      this.#exited = false;
      child.status.then(() => {
        if (this.#child === child) this.#exited = true;
      });
      await Deno.writeTextFile(`${this.dir}/server.pid`, `${child.pid}\n`);
      const deadline = Date.now() + START_TIMEOUT_MS;
      while (!this.#exited) {
        if (await this.isReady(child.pid)) return;
        if (Date.now() > deadline) {
          const tail = await logTail(this.logPath, logOffset);
          await this.terminate("SIGKILL", { escalate: false });
          throw new HarnessError(
            "SERVER_START_FAILED",
            `Cannot start ${this.label}: not ready after ${START_TIMEOUT_MS} ms; log tail:\n${tail}`,
          );
        }
        await sleep(READY_POLL_MS);
      }
      child.ref();
      const status = await child.status;
      this.#child = undefined;
      const tail = await logTail(this.logPath, logOffset);
      if (options.retryPort && attempt < PORT_ATTEMPTS && this.bindError.test(tail)) {
        this.#port = await freePort();
        continue;
      }
      throw new HarnessError(
        "SERVER_START_FAILED",
        `Cannot start ${this.label} on port ${this.#port}: it exited with code ${status.code}; log tail:\n${tail}`,
      );
    }
  }

  /** Sends `signal`, waits for the exit (escalating to SIGKILL unless told not to) and for orphaned children. */
  private async terminate(
    signal: Deno.Signal,
    options: { escalate?: boolean } = {},
  ): Promise<void> {
    const child = this.#child;
    if (!child) return;
    if (this.#exited) {
      // It died on its own and was reaped: its pid may belong to someone else by now.
      // Another process may run the server now (PostgreSQL restarted by pg_ctl): the next
      // start() waits for whatever is left, not this.
      this.#child = undefined;
      return;
    }
    const pid = this.#pid;
    child.ref();
    // Children outlive a SIGKILLed parent for a moment (PostgreSQL backends hold its
    // shared memory); remember them so "killed" means "all of it is gone".
    const children = childrenOf(pid);
    signalPid(pid, signal);
    if (signal !== "SIGKILL") signalPid(pid, "SIGCONT"); // a SIGSTOPped server must see it
    if (!(await exitedWithin(child, STOP_TIMEOUT_MS))) {
      if (options.escalate === false) {
        child.unref();
        throw new HarnessError(
          "SERVER_STOP_FAILED",
          `Cannot stop ${this.label}: pid ${pid} still runs ${STOP_TIMEOUT_MS} ms after ${signal}`,
        );
      }
      signalPid(pid, "SIGKILL");
      await child.status;
    }
    this.#child = undefined;
    this.#exited = true;
    await waitGone(children);
    await this.afterExit();
  }
}
