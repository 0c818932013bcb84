/**
 * Direct connections to each PostgreSQL node of the cluster (not through the runtime's
 * pool, which only ever points at the published primary): a one-connection pool for the
 * probes of the primary and a small one for sampling and administration, both opened by
 * store/replication.ts. Every call has a time limit; a call that runs out of time resets
 * its pool, so nothing queues behind a hung server. So does a call that lost its
 * connection: postgres.js can leave a lost connection object unusable (see
 * `guardSocketErrors` in lib/db_errors.ts).
 * @module
 */
import { isConnectionLost, onDriverFault } from "../../lib/db_errors.ts";
import { describeError, RuntimeError } from "../../lib/errors.ts";
import { openNodePool } from "../../store/replication.ts";
import type { Sql } from "../../store/types.ts";
import type { NodeSetting } from "./settings.ts";

/** Connections to one node. */
export interface NodeClient {
  /** The node's name, URL and address. */
  readonly setting: NodeSetting;
  /** Runs `fn` on the administration pool within `timeoutMs`. */
  run<T>(fn: (sql: Sql) => Promise<T>, options: { timeoutMs: number; what: string }): Promise<T>;
  /** Runs `fn` on the probe connection within `timeoutMs`. */
  probe<T>(fn: (sql: Sql) => Promise<T>, options: { timeoutMs: number }): Promise<T>;
  /** Closes both pools. */
  close(): Promise<void>;
}

/** A short, lower-case reason for a failed node call ("connection refused"). */
export function shortError(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  if (code === "ECONNREFUSED") return "connection refused";
  if (code === "CONNECT_TIMEOUT") return "connection timed out";
  if (code === "ECONNRESET" || code === "CONNECTION_CLOSED") return "connection lost";
  if (code === "57P01") return "terminated by an administrator";
  if (code === "57P03") return "the server is starting up or shutting down";
  const text = err instanceof RuntimeError ? err.message : describeError(err);
  return text.replace(/^write CONNECTION_CLOSED .*/, "connection lost");
}

/** Opens (lazily) the connections to one node. */
export function createNodeClient(
  setting: NodeSetting,
  options: { applicationName: string },
): NodeClient {
  let admin: Sql | null = null;
  let probeSql: Sql | null = null;

  const ending = new Set<Promise<void>>();

  /**
   * Forgets `sql` if it is still in use, so the next call opens a fresh pool, and ends it:
   * a hung one at once, one that lost a connection after a grace second, so calls running
   * on its other connections (a fence on the admin pool) still finish.
   */
  function drop(sql: Sql, graceS: number): void {
    if (admin === sql) admin = null;
    else if (probeSql === sql) probeSql = null;
    else return;
    const end = sql.end({ timeout: graceS }).catch(() => {});
    ending.add(end);
    end.finally(() => ending.delete(end));
  }
  // A driver fault the process guard caught may have broken a connection of these pools.
  const unsubscribe = onDriverFault(() => [admin, probeSql].forEach((p) => p && drop(p, 1)));

  function open(max: number): Sql {
    return openNodePool(setting.url, { max, applicationName: options.applicationName });
  }

  async function within<T>(
    which: "admin" | "probe",
    fn: (sql: Sql) => Promise<T>,
    timeoutMs: number,
    what: string,
  ): Promise<T> {
    const sql = which === "admin" ? (admin ??= open(2)) : (probeSql ??= open(1));
    let timer: number | undefined;
    const work = fn(sql);
    work.catch((err) => {
      if (isConnectionLost(err)) drop(sql, 1);
    });
    try {
      return await Promise.race([
        work,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            // A hung server: drop the pool so the next call starts on fresh connections.
            drop(sql, 0);
            reject(
              new RuntimeError(
                "DATABASE_UNAVAILABLE",
                `${setting.name} gave no answer within ${timeoutMs} ms (${what})`,
              ),
            );
          }, timeoutMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  return {
    setting,
    run: (fn, o) => within("admin", fn, o.timeoutMs, o.what),
    probe: (fn, o) => within("probe", fn, o.timeoutMs, "probe"),
    async close() {
      unsubscribe();
      const pools = [admin, probeSql];
      admin = probeSql = null;
      await Promise.all(pools.map((p) => p?.end({ timeout: 1 }).catch(() => {})));
      await Promise.all([...ending]);
    },
  };
}

/** The node a postgres:// URL points at (same host, port and database), or null. */
export function nodeForUrl(nodes: NodeSetting[], url: string | null): NodeSetting | null {
  if (!url) return null;
  const key = (u: string) => {
    try {
      const p = new URL(u);
      return `${p.hostname}:${p.port || "5432"}${p.pathname}`;
    } catch {
      return u;
    }
  };
  return nodes.find((n) => key(n.url) === key(url)) ??
    nodes.find((n) => key(n.url).split("/")[0] === key(url).split("/")[0]) ?? null;
}

/** libpq key=value connection string of a node, for primary_conninfo and pg_rewind. */
export function conninfoOf(
  setting: NodeSetting,
  options: { applicationName?: string; database?: string; withPassword?: boolean } = {},
): string {
  const u = new URL(setting.url);
  const parts = [
    `host=${u.hostname}`,
    `port=${u.port || "5432"}`,
    `user=${decodeURIComponent(u.username || "postgres")}`,
  ];
  if (options.database) parts.push(`dbname=${options.database}`);
  if (options.applicationName) parts.push(`application_name=${options.applicationName}`);
  if (options.withPassword && u.password) parts.push(`password=${decodeURIComponent(u.password)}`);
  return parts.join(" ");
}

/** Replication slot name of a node (lower case, letters, digits and _). */
export function slotName(node: string): string {
  return `rs_${node.toLowerCase().replace(/[^a-z0-9_]/g, "_")}`.slice(0, 63);
}
