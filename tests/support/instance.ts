/**
 * Runs `main.ts` as a separate process, the way `deno task run` does, for tests that
 * need real signals, exit codes or several instances at once.
 * @module
 */

import { AssertionError } from "node:assert";
import { ADMIN_HEADERS } from "./auth.ts";

/** Repository root. */
export const ROOT: string = new URL("../..", import.meta.url).pathname;

/** A running instance process. */
export interface InstanceProcess {
  /** The child process. */
  child: Deno.ChildProcess;
  /** The URL it printed. */
  url: string;
  /** Everything it wrote to stderr so far. */
  stderr(): string;
  /** Sends a signal and waits for the exit status. */
  stop(signal?: Deno.Signal): Promise<Deno.CommandStatus>;
}

/**
 * How long an instance may take to print the URL it serves. Generous on purpose: an embedded
 * start runs PGlite's initdb and the migrations in WebAssembly, which took over 60 s on 2 cores
 * with a load average of 20 (measured); this bound only catches an instance that hangs.
 */
const START_TIMEOUT_MS = 180_000;

/**
 * The command line of `deno task run` (tests/main_test.ts checks deno.json agrees): its V8
 * flag is part of embedded mode's memory (docs/scaling.md, "Embedded mode").
 */
export const RUN_ARGS = ["run", "--allow-all", "--v8-flags=--liftoff-only", "main.ts"];

/** Starts `main.ts` with `env` and `args`; resolves once it printed the URL it serves. */
export async function launchInstance(
  env: Record<string, string>,
  args: string[] = [],
): Promise<InstanceProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [...RUN_ARGS, ...args],
    cwd: ROOT,
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let err = "";
  const errDone = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) err += chunk;
  })();
  let out = "";
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  // A child that hangs before printing is killed, which ends its stdout and the read below.
  let hung = false;
  const killer = setTimeout(() => {
    hung = true;
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, START_TIMEOUT_MS);
  try {
    while (!/serving (http:\/\/\S+)/.test(out)) {
      const { value, done } = await reader.read();
      if (done) {
        await child.status;
        await errDone;
        throw new Error(
          hung
            ? `timed out after ${START_TIMEOUT_MS} ms waiting for the instance to print its URL; stderr:\n${err}`
            : `exited before serving; stderr:\n${err}`,
        );
      }
      out += value;
    }
  } finally {
    clearTimeout(killer);
  }
  const outDone = (async () => {
    while (!(await reader.read()).done) { /* drain so the child never blocks on a full pipe */ }
  })();
  let status: Promise<Deno.CommandStatus> | null = null;
  return {
    child,
    url: /serving (http:\/\/\S+)/.exec(out)![1],
    stderr: () => err,
    stop(signal: Deno.Signal = "SIGTERM") {
      status ??= (async () => {
        try {
          child.kill(signal);
        } catch { /* already gone */ }
        const s = await child.status;
        await Promise.all([outDone, errDone]);
        return s;
      })();
      return status;
    },
  };
}

/** Options of {@linkcode until}. */
export interface UntilOptions {
  /** What is awaited, as the end of "timed out waiting for …" (required: every wait says why). */
  what: string;
  /** Give up after this many ms (default 10 000). */
  ms?: number;
  /** Pause between checks (default 50 ms). */
  everyMs?: number;
  /** What was seen instead, for the timeout message (called once, on timeout). */
  state?: () => unknown;
}

/** What {@linkcode until} resolves with: the first truthy value its check returned. */
export type Truthy<T> = Exclude<T, false | null | undefined | 0 | "">;

/**
 * Polls `check` until it returns something truthy, and resolves with it; on timeout rejects
 * with a sentence naming what was awaited, the last error `check` threw and, with `state`,
 * what was seen instead. An assertion that fails inside `check` fails at once. The one
 * polling wait of the test suite: every wait says why.
 */
export async function until<T>(
  check: () => T | Promise<T>,
  options: UntilOptions,
): Promise<Truthy<T>> {
  const ms = options.ms ?? 10_000;
  const deadline = Date.now() + ms;
  let lastError: unknown = null;
  while (true) {
    try {
      const value = await check();
      if (value) return value as Truthy<T>;
      lastError = null;
    } catch (err) {
      // A failed assertion inside a check is a failure now, not "not yet".
      if (err instanceof AssertionError) throw err;
      lastError = err; // not yet (a server still starting, a connection refused …)
    }
    if (Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, options.everyMs ?? 50));
  }
  let seen = "";
  if (options.state) {
    try {
      const state = await options.state();
      seen = `; last seen: ${typeof state === "string" ? state : JSON.stringify(state)}`;
    } catch (err) {
      seen = `; reading the state failed: ${(err as Error)?.message ?? err}`;
    }
  }
  const failed = lastError
    ? `; the last check threw: ${(lastError as Error)?.message ?? lastError}`
    : "";
  throw new Error(`timed out after ${ms} ms waiting for ${options.what}${failed}${seen}`);
}

/**
 * GETs a URL as an operator (the test instances' admin token, RS_ADMIN_TOKEN =
 * TEST_ADMIN_TOKEN) and parses JSON.
 */
export async function getJson<T = Record<string, unknown>>(url: string): Promise<T> {
  const res = await fetch(url, { headers: ADMIN_HEADERS });
  return await res.json() as T;
}
