/**
 * RootStream Runtime as a TypeScript module: start an instance in-process and use each
 * concern through a typed handle.
 *
 * @example
 * ```ts
 * import { createRuntime } from "./mod.ts";
 *
 * const rs = await createRuntime({ env: { DATABASE_URL: "postgres://…", REDIS_URL: "redis://…" } });
 * const user = await rs.sessions.register({ username: "ada", email: "ada@example.com", password: "…" });
 * rs.sync.applyDelta("stream", 1, { title: "Speedrun", viewers: { inc: 1 } });
 * await rs.stop();
 * ```
 * @module
 */
import type { SyncNode } from "./actors/sync/node.ts";
import type { SessionService } from "./actors/sessions/mod.ts";
import type { MetricsApi } from "./actors/metrics/mod.ts";
import type { ReplicationApi } from "./actors/failover/mod.ts";
import { type Config, loadConfig } from "./concerns/config.ts";
import { concernApi } from "./concerns/mod.ts";
import type { ConfigSources } from "./lib/config.ts";
import { RuntimeError } from "./lib/errors.ts";
import { type Logger, silentLogger } from "./lib/log.ts";
import { type Runtime, startRuntime } from "./runtime.ts";

export { type Config, loadConfig } from "./concerns/config.ts";
export { type ErrorCode, isRuntimeError, RuntimeError } from "./lib/errors.ts";
export { createLogger, type Logger } from "./lib/log.ts";
export type { Runtime } from "./runtime.ts";
export type { SessionService } from "./actors/sessions/mod.ts";
export type { SyncNode } from "./actors/sync/node.ts";
export type { MetricsApi } from "./actors/metrics/mod.ts";
export type { ReplicationApi } from "./actors/failover/mod.ts";

/** A running instance with a typed handle per concern. */
export interface RootStream {
  /** Base URL of its HTTP server ("" with `serve: false`). */
  readonly url: string;
  /** The underlying runtime (database, Redis, bus, transport, supervisor, inspector). */
  readonly runtime: Runtime;
  /** Sessions and MFA: register, login, verify codes, enrol, list and revoke sessions. */
  readonly sessions: SessionService;
  /** State synchronisation: publish / subscribe / getSnapshot / applyDelta. */
  readonly sync: SyncNode;
  /** Metrics: write points, flush, query dashboards, Prometheus exposition. */
  readonly metrics: MetricsApi;
  /** Replication status and switchover (unavailable in embedded mode: null). */
  readonly replication: ReplicationApi | null;
  /** Another concern's API by name (e.g. backup), when it runs. */
  concern<T = unknown>(name: string): T | undefined;
  /** Stops the instance (HTTP, actors, connections). */
  stop(): Promise<void>;
}

/** The switchover API when failover runs (DATABASE_NODES on a server), else null. */
function replicationOf(runtime: Runtime): ReplicationApi | null {
  const failover = concernApi(runtime.concerns, "failover");
  return failover?.switchover ? { status: failover.status, switchover: failover.switchover } : null;
}

/** Options of {@linkcode createRuntime}. */
export interface CreateRuntimeOptions {
  /** Serve HTTP too (default true, on RS_PORT; use port 0 for a free one). */
  serve?: boolean;
  /** Logger (default: silent). */
  log?: Logger;
}

/**
 * Starts an instance from a validated config, or from environment-like sources
 * (`{ env: {...}, args: [...] }`; omitted parts default to empty, not to the process's:
 * nothing is read from `Deno.env`).
 */
export async function createRuntime(
  config: Config | ConfigSources = {},
  options: CreateRuntimeOptions = {},
): Promise<RootStream> {
  const resolved = "http" in config
    ? config
    : loadConfig({ env: config.env ?? {}, args: config.args ?? [], ...config });
  const runtime = await startRuntime(resolved, {
    log: options.log ?? silentLogger,
    serve: options.serve,
  });
  const sessions = concernApi(runtime.concerns, "sessions");
  const sync = concernApi(runtime.concerns, "sync")?.node;
  if (!sessions || !sync) {
    await runtime.stop();
    throw new RuntimeError("INTERNAL", "The sessions and sync concerns did not start");
  }
  return {
    url: runtime.url,
    runtime,
    sessions,
    sync,
    metrics: concernApi(runtime.concerns, "metrics")!,
    replication: replicationOf(runtime),
    concern: <T>(name: string) => runtime.concerns[name]?.api as T | undefined,
    stop: () => runtime.stop(),
  };
}
