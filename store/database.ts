/**
 * Opens the runtime's PostgreSQL: a real server from DATABASE_URL, or embedded PGlite.
 *
 * Embedded mode serves PGlite over a local TCP socket so the very same postgres.js code
 * path runs in both modes; only features that need a real server (replication, failover,
 * physical backups) report themselves unavailable there.
 * @module
 */
import postgres from "postgres";
import { RuntimeError } from "../lib/errors.ts";
import { redactUrl } from "../lib/config.ts";
import { type Logger, silentLogger } from "../lib/log.ts";
import { isConnectionError } from "./pg_errors.ts";
import type { Sql } from "./types.ts";

/** Which kind of PostgreSQL the runtime is using. */
export type DatabaseMode = "postgres" | "embedded";

/** An open database: the pool plus a health probe and an orderly close. */
export interface Database {
  /** The pooled postgres.js query function. */
  readonly sql: Sql;
  /** `postgres` for a real server, `embedded` for PGlite. */
  readonly mode: DatabaseMode;
  /** Human description for logs (password masked). */
  readonly describe: string;
  /** Runs `SELECT 1` within `timeoutMs`; never throws. */
  ping(timeoutMs?: number): Promise<{ ok: boolean; latencyMs: number; error?: string }>;
  /** Closes the pool (waiting up to `timeoutS` for queries) and, if embedded, PGlite. */
  close(timeoutS?: number): Promise<void>;
}

/** Options of {@linkcode openDatabase}. */
export interface OpenDatabaseOptions {
  /** PostgreSQL URL; null or undefined selects embedded PGlite. */
  url?: string | null;
  /** Embedded mode keeps its files in `<dataDir>/pgdata`. */
  dataDir?: string;
  /** Pool size. */
  poolSize?: number;
  /** Total time start-up retries an unreachable server before giving up. */
  connectTimeoutS?: number;
  /** statement_timeout set on each connection. */
  queryTimeoutMs?: number;
  /** application_name shown in pg_stat_activity. */
  applicationName?: string;
  /** Progress and retry log. */
  log?: Logger;
  /** Injected sleep, for tests. */
  sleep?: (ms: number) => Promise<void>;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function pingSql(
  sql: Sql,
  timeoutMs: number,
): Promise<{ ok: boolean; latencyMs: number; error?: string }> {
  const started = performance.now();
  let timer: number | undefined;
  try {
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`no answer within ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    const query = sql`SELECT 1 AS ok`.execute();
    // A query abandoned on timeout must not surface later as an unhandled rejection.
    query.catch(() => {});
    await Promise.race([query, timeout]);
    return { ok: true, latencyMs: Math.round((performance.now() - started) * 10) / 10 };
  } catch (err) {
    return {
      ok: false,
      latencyMs: Math.round(performance.now() - started),
      error: err instanceof Error ? err.message : String(err),
    };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Waits until `sql` answers, retrying connection errors with exponential backoff
 * (250 ms doubling to 5 s) for up to `connectTimeoutS`; other errors fail at once.
 */
export async function waitForDatabase(
  sql: Sql,
  options: { connectTimeoutS: number; describe: string; log?: Logger; sleep?: typeof delay },
): Promise<void> {
  const log = options.log ?? silentLogger;
  const sleep = options.sleep ?? delay;
  const deadline = performance.now() + options.connectTimeoutS * 1000;
  let wait = 250;
  let attempt = 0;
  while (true) {
    attempt++;
    try {
      await sql`SELECT 1`;
      if (attempt > 1) log.info("database reachable", { attempt });
      return;
    } catch (err) {
      if (!isConnectionError(err)) {
        throw new RuntimeError(
          "DATABASE_CONNECT_FAILED",
          `Cannot use the database at ${options.describe}: ${
            err instanceof Error ? err.message : err
          }`,
          { cause: err },
        );
      }
      const left = deadline - performance.now();
      if (left <= 0) {
        throw new RuntimeError(
          "DATABASE_CONNECT_FAILED",
          `Cannot reach the database at ${options.describe} after ${attempt} attempts over ` +
            `${options.connectTimeoutS} s: ${err instanceof Error ? err.message : err}. ` +
            `HINT: check DATABASE_URL and that PostgreSQL accepts connections`,
          { cause: err },
        );
      }
      log.warn("database unreachable, retrying", {
        attempt,
        retryInMs: Math.min(wait, left),
        error: err instanceof Error ? err.message : String(err),
      });
      await sleep(Math.min(wait, left));
      wait = Math.min(wait * 2, 5000);
    }
  }
}

function poolOptions(options: OpenDatabaseOptions) {
  return {
    max: options.poolSize ?? 20,
    idle_timeout: 60,
    connect_timeout: 5,
    max_lifetime: 60 * 30,
    onnotice: () => {},
    connection: {
      application_name: options.applicationName ?? "rootstream-runtime",
      statement_timeout: options.queryTimeoutMs ?? 15000,
    },
  } as const;
}

/** Opens a pool on a real PostgreSQL server and waits until it answers. */
async function openServer(url: string, options: OpenDatabaseOptions): Promise<Database> {
  const describe = redactUrl(url);
  const sql = postgres(url, poolOptions(options)) as Sql;
  try {
    await waitForDatabase(sql, {
      connectTimeoutS: options.connectTimeoutS ?? 30,
      describe,
      log: options.log,
      sleep: options.sleep,
    });
  } catch (err) {
    await sql.end({ timeout: 0 });
    throw err;
  }
  return {
    sql,
    mode: "postgres",
    describe,
    ping: (timeoutMs = 2000) => pingSql(sql, timeoutMs),
    close: (timeoutS = 5) => sql.end({ timeout: timeoutS }),
  };
}

/**
 * Starts PGlite on `<dataDir>/pgdata` behind a local socket and opens a pool on it.
 * An exclusive lock on `<dataDir>/pgdata.lock` stops a second process from opening the
 * same files (PGlite is single-process; two writers would corrupt it).
 */
async function openEmbedded(options: OpenDatabaseOptions): Promise<Database> {
  const log = options.log ?? silentLogger;
  const dataDir = options.dataDir ?? "./.rootstream";
  await Deno.mkdir(dataDir, { recursive: true, mode: 0o700 });
  const releaseLock = await acquireDirLock(`${dataDir}/pgdata.pid`, dataDir);
  const { PGlite } = await import("@electric-sql/pglite");
  const { PGLiteSocketServer } = await import("@electric-sql/pglite-socket");
  const started = performance.now();
  const db = await PGlite.create({ dataDir: `${dataDir}/pgdata` });
  const server = new PGLiteSocketServer({
    db,
    host: "127.0.0.1",
    port: 0,
    maxConnections: 64,
  });
  await server.start();
  const [host, port] = server.getServerConn().split(":");
  log.debug("embedded PostgreSQL started", {
    ms: Math.round(performance.now() - started),
    port,
  });
  // PGlite runs every connection's queries on one backend; a small pool is plenty.
  const sql = postgres({
    ...poolOptions({ ...options, poolSize: Math.min(options.poolSize ?? 8, 8) }),
    host,
    port: Number(port),
    database: "postgres",
    username: "postgres",
  }) as Sql;
  await sql`SELECT 1`;
  return {
    sql,
    mode: "embedded",
    describe: `embedded PGlite in ${dataDir}/pgdata`,
    ping: (timeoutMs = 2000) => pingSql(sql, timeoutMs),
    close: async (timeoutS = 5) => {
      await sql.end({ timeout: timeoutS });
      // pglite-socket can wait on a socket the client already abandoned; PGlite's files
      // are consistent once the pool has ended, so neither step may hold up the exit.
      await withinMs(server.stop(), 2000);
      await withinMs(db.close(), 5000);
      await releaseLock();
    },
  };
}

/** Waits for `work` at most `ms`; a late result is ignored. */
async function withinMs(work: Promise<unknown>, ms: number): Promise<void> {
  let timer: number | undefined;
  await Promise.race([
    work.catch(() => {}),
    new Promise((resolve) => timer = setTimeout(resolve, ms)),
  ]);
  clearTimeout(timer);
}

/** True when a process with this pid is running (Linux /proc; elsewhere assumed gone). */
function processAlive(pid: number): boolean {
  try {
    // Field 3 of /proc/<pid>/stat is the state; a zombie (Z) has already exited.
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return !/^\d+ \(.*\) [ZX]/.test(stat);
  } catch {
    return false;
  }
}

/**
 * Claims `path` as this process's lock: refuses when another live process holds it,
 * takes over a stale one (its process is gone). Returns the release function.
 */
async function acquireDirLock(path: string, dataDir: string): Promise<() => Promise<void>> {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      // createNew makes claiming atomic: of two processes starting at once, one wins.
      await Deno.writeTextFile(path, `${Deno.pid}\n`, { createNew: true, mode: 0o600 });
      return async () => {
        await Deno.remove(path).catch(() => {});
      };
    } catch (err) {
      if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
    }
    const pid = Number((await Deno.readTextFile(path).catch(() => "")).trim());
    if (pid && pid !== Deno.pid && processAlive(pid)) {
      throw new RuntimeError(
        "DATABASE_CONNECT_FAILED",
        `The embedded database in ${dataDir} is in use by process ${pid}. ` +
          `HINT: stop that instance or give this one another RS_DATA_DIR`,
      );
    }
    await Deno.remove(path).catch(() => {}); // stale: its process is gone
  }
  throw new RuntimeError(
    "DATABASE_CONNECT_FAILED",
    `Cannot claim the embedded database lock ${path}`,
  );
}

/** Opens the configured database: a server when `url` is set, else embedded PGlite. */
export function openDatabase(options: OpenDatabaseOptions = {}): Promise<Database> {
  return options.url ? openServer(options.url, options) : openEmbedded(options);
}
