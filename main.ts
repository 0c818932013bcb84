/**
 * Entry point of `deno task run`: config → runtime → HTTP, graceful stop on SIGINT/SIGTERM.
 *
 * The whole configuration (core and every concern's) is parsed first: a bad value exits
 * with code 2 before anything is opened or written.
 *
 * `deno task run` passes `--v8-flags=--liftoff-only`: V8 then keeps embedded PGlite's
 * WebAssembly in its baseline compiler instead of optimising the hot functions of PostgreSQL
 * a few seconds after start, which cost over 1 GB of compiler memory and seconds of CPU for
 * about 5 % of query speed (docs/scaling.md, "Embedded mode: memory and start time").
 * @module
 */
import { loadConfig } from "./concerns/config.ts";
import { guardSocketErrors } from "./lib/db_errors.ts";
import { RuntimeError } from "./lib/errors.ts";
import { guardImmediates } from "./lib/immediates.ts";
import { createLogger } from "./lib/log.ts";
import { startRuntime } from "./runtime.ts";

/** How long the process may stay alive after main() returned before it is ended. */
const EXIT_GRACE_MS = 3000;

/** Runs one instance until a signal arrives; returns the process exit code. */
export async function main(args: string[]): Promise<number> {
  let config;
  try {
    config = loadConfig({ args });
  } catch (err) {
    console.error(err instanceof Error ? err.message : String(err));
    return 2;
  }
  const log = createLogger("rootstream", config.log);
  // A socket error that no promise handles (postgres.js under Deno, when a server dies while
  // a connection opens) must not end the process: log it; everything else stays fatal.
  guardSocketErrors(log);
  // A cleared immediate can still run under Deno 2.5, and postgres.js's stale one then ends
  // the process (lib/immediates.ts).
  guardImmediates();
  let runtime;
  try {
    runtime = await startRuntime(config, { log });
  } catch (err) {
    const message = err instanceof RuntimeError
      ? `${err.message} [${err.code}]`
      : err instanceof Error
      ? (err.stack ?? err.message)
      : String(err);
    log.error(`start-up failed: ${message}`);
    return 1;
  }
  log.info(`RootStream Runtime listening on ${runtime.url}`, { instance: config.instanceId });
  console.log(`RootStream Runtime ${config.instanceId} serving ${runtime.url}`);

  const { promise: stopped, resolve } = Promise.withResolvers<string>();
  const onSignal = (name: string) => () => resolve(name);
  const handlers = [["SIGINT", onSignal("SIGINT")], ["SIGTERM", onSignal("SIGTERM")]] as const;
  for (const [sig, fn] of handlers) Deno.addSignalListener(sig, fn);
  const signal = await stopped;
  for (const [sig, fn] of handlers) Deno.removeSignalListener(sig, fn);
  log.info(`received ${signal}, shutting down`);
  const timer = setTimeout(() => {
    log.error(`shutdown took longer than ${config.shutdownTimeoutS + 5} s; exiting`);
    Deno.exit(1);
  }, (config.shutdownTimeoutS + 5) * 1000);
  await runtime.stop();
  clearTimeout(timer);
  return 0;
}

if (import.meta.main) {
  // Exit by letting the event loop drain, not with Deno.exit(): only a natural exit writes
  // the coverage of an instance run as a subprocess (denoland/deno#8713). Should something
  // still hold the loop open, the unref'ed timer ends the process anyway.
  Deno.exitCode = await main(Deno.args);
  Deno.unrefTimer(setTimeout(() => Deno.exit(), EXIT_GRACE_MS));
}
