/**
 * Opens the runtime's PostgreSQL: a real server from DATABASE_URL, or embedded PGlite.
 *
 * Embedded mode serves PGlite over a local TCP socket so the very same postgres.js code
 * path runs in both modes; only features that need a real server (replication, failover,
 * physical backups) report themselves unavailable there.
 *
 * On a server, `db.sql` is a stable handle over the current pool: the failover manager
 * calls `db.repoint(url, {epoch})` to move it to a new primary (checked writable, older
 * epochs refused, the old pool drained), and every module that captured `db.sql` follows.
 * With `setSwitchWait(ms)`, a query that fails with a connection or read-only error waits
 * up to `ms` for such a switch and is retried once on the new primary.
 * @module
 */
import postgres from "postgres";
import { describeError, RuntimeError } from "../lib/errors.ts";
import { redactUrl } from "../lib/config.ts";
import { type Logger, silentLogger } from "../lib/log.ts";
import { isConnectionError, pgCode } from "../lib/db_errors.ts";
import type { Sql } from "./types.ts";

/** Which kind of PostgreSQL the runtime is using. */
export type DatabaseMode = "postgres" | "embedded";

/** An open database: the pool plus a health probe and an orderly close. */
export interface Database {
  /**
   * The pooled postgres.js query function. A stable handle: it always runs on the pool of
   * the current primary, so modules that captured it follow a {@linkcode Database.repoint}.
   */
  readonly sql: Sql;
  /** `postgres` for a real server, `embedded` for PGlite. */
  readonly mode: DatabaseMode;
  /** Human description of the current target for logs (password masked). */
  readonly describe: string;
  /** How many times the pool was re-pointed (0 for the pool opened at start-up). */
  readonly generation: number;
  /** Epoch of the primary the pool points at (0 until a failover manager sets one). */
  readonly epoch: number;
  /** True while the pool points at a read-only node (degraded mode). */
  readonly readOnly: boolean;
  /** Runs `SELECT 1` within `timeoutMs`; never throws. */
  ping(timeoutMs?: number): Promise<{ ok: boolean; latencyMs: number; error?: string }>;
  /**
   * Opens a pool on `url`, checks it is a writable primary (unless `readOnly`), swaps it in
   * and drains the old pool. Refuses an epoch older than the current one.
   */
  repoint(url: string, options?: RepointOptions): Promise<RepointResult>;
  /**
   * How long a query that fails with a connection (or read-only) error waits for a
   * re-point before it is retried once on the new primary; 0 (the default) fails at once.
   */
  setSwitchWait(ms: number): void;
  /** Closes the pool (waiting up to `timeoutS` for queries) and, if embedded, PGlite. */
  close(timeoutS?: number): Promise<void>;
}

/** Options of {@linkcode Database.repoint}. */
export interface RepointOptions {
  /** Epoch of the new primary; an epoch lower than the current one is refused. */
  epoch?: number;
  /** Accept a node in recovery (degraded, read-only mode); writes then fail. */
  readOnly?: boolean;
  /** How long queries still running on the old pool may take (default 5 s). */
  drainTimeoutS?: number;
  /** How long the new node may take to answer the writability check (default 5000 ms). */
  checkTimeoutMs?: number;
}

/** What {@linkcode Database.repoint} did. */
export interface RepointResult {
  /** Previous target (password masked). */
  from: string;
  /** New target (password masked). */
  to: string;
  /** Generation after the switch. */
  generation: number;
  /** Epoch after the switch. */
  epoch: number;
  /** Time the switch took, in ms. */
  ms: number;
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
  return createSwitchableDatabase(sql, { describe, options });
}

/** SQLSTATE read_only_sql_transaction: a write reached a fenced or demoted primary. */
const READ_ONLY_SQLSTATE = "25006";

/** True for errors a query may be retried after once the pool has switched primaries. */
function switchRetryable(err: unknown): boolean {
  return isConnectionError(err) || pgCode(err) === READ_ONLY_SQLSTATE;
}

/** The parts of a postgres.js Query the retry copies to the second attempt. */
interface QueryLike extends Promise<unknown> {
  isRaw?: boolean | string;
  options?: Record<string, unknown>;
  cursorFn?: unknown;
  forEachFn?: unknown;
  streaming?: boolean;
}

/**
 * Wraps a pool in a stable `sql` handle that always delegates to the current pool, plus
 * `repoint` to swap pools (serialised) and a retry-once of queries caught by a switch.
 */
function createSwitchableDatabase(
  initial: Sql,
  init: { describe: string; options: OpenDatabaseOptions },
): Database {
  const log = init.options.log ?? silentLogger;
  let current = initial;
  let describe = init.describe;
  let generation = 0;
  let epoch = 0;
  let readOnly = false;
  let switchWaitMs = 0;
  let closed = false;
  const waiters = new Set<() => void>();
  const draining = new Set<Promise<void>>();
  let queue: Promise<unknown> = Promise.resolve();

  function wake(): void {
    for (const fn of [...waiters]) fn();
    waiters.clear();
  }

  /** True when a failed query should run again on the (new) current pool. */
  async function shouldRetry(err: unknown, startedGeneration: number): Promise<boolean> {
    if (closed || !switchRetryable(err)) return false;
    if (generation !== startedGeneration) return true;
    if (switchWaitMs <= 0) return false;
    let timer: number | undefined;
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        waiters.delete(done);
        resolve();
      };
      waiters.add(done);
      timer = setTimeout(done, switchWaitMs);
    });
    return generation !== startedGeneration;
  }

  /** Makes a Query retry once on the current pool when a switch caught it. */
  function wrapQuery(query: QueryLike, remake: () => QueryLike): QueryLike {
    const startedGeneration = generation;
    const ownThen = Object.getPrototypeOf(query).then as Promise<unknown>["then"];
    let settled: Promise<unknown> | null = null;
    async function settle(): Promise<unknown> {
      try {
        return await new Promise((resolve, reject) => ownThen.call(query, resolve, reject));
      } catch (err) {
        // Cursors and streams have handed rows out already: running them again is not safe.
        if (query.cursorFn || query.forEachFn || query.streaming) throw err;
        if (!(await shouldRetry(err, startedGeneration))) throw err;
        log.debug("retrying a query on the new primary", { error: describeError(err) });
        const again = remake();
        if (query.isRaw) again.isRaw = query.isRaw;
        if (query.options && again.options) Object.assign(again.options, query.options);
        return await again;
      }
    }
    Object.defineProperty(query, "then", {
      configurable: true,
      writable: true,
      value(onFulfilled?: (v: unknown) => unknown, onRejected?: (e: unknown) => unknown) {
        settled ??= settle();
        return settled.then(onFulfilled, onRejected);
      },
    });
    return query;
  }

  /** Runs `fn` on the current pool; once more on the new pool when a switch caught it. */
  async function retryOnce<T>(fn: (pool: Sql) => Promise<T>): Promise<T> {
    const startedGeneration = generation;
    try {
      return await fn(current);
    } catch (err) {
      if (!(await shouldRetry(err, startedGeneration))) throw err;
      return await fn(current);
    }
  }

  const wrapped: Record<PropertyKey, unknown> = {
    begin: (...args: unknown[]) =>
      retryOnce((pool) => (pool.begin as (...a: unknown[]) => Promise<unknown>)(...args)),
    unsafe: (...args: unknown[]) => {
      const make = () => (current.unsafe as (...a: unknown[]) => QueryLike)(...args);
      return wrapQuery(make(), make);
    },
  };

  const handle = new Proxy(function () {}, {
    apply(_target, _this, args: unknown[]) {
      const [strings, ...values] = args;
      const make = () => (current as unknown as (...a: unknown[]) => QueryLike)(strings, ...values);
      const made = make();
      // Only tagged-template queries run; helpers (identifiers, builders) are plain values.
      return Array.isArray((strings as { raw?: unknown })?.raw) ? wrapQuery(made, make) : made;
    },
    get(_target, prop) {
      if (prop in wrapped) return wrapped[prop];
      const value = Reflect.get(current, prop);
      return typeof value === "function" ? value.bind(current) : value;
    },
    has(_target, prop) {
      return Reflect.has(current, prop);
    },
  }) as unknown as Sql;

  function repoint(url: string, options: RepointOptions = {}): Promise<RepointResult> {
    const run = async (): Promise<RepointResult> => {
      if (closed) {
        throw new RuntimeError("DATABASE_UNAVAILABLE", "Cannot re-point the pool: it is closed");
      }
      const target = redactUrl(url);
      if (options.epoch !== undefined && options.epoch < epoch) {
        throw new RuntimeError(
          "DATABASE_STALE_EPOCH",
          `Refused to re-point the pool to ${target}: its epoch ${options.epoch} is older than ` +
            `the current epoch ${epoch}`,
          { details: { epoch: options.epoch, current: epoch } },
        );
      }
      const started = performance.now();
      const next = postgres(url, poolOptions(init.options)) as Sql;
      try {
        const check = next`SELECT pg_is_in_recovery() AS recovery`.execute();
        check.catch(() => {});
        const rows = await raceTimeout(check, options.checkTimeoutMs ?? 5000, target);
        if ((rows[0] as { recovery: boolean }).recovery && !options.readOnly) {
          throw new RuntimeError(
            "DATABASE_NOT_PRIMARY",
            `Refused to re-point the pool to ${target}: it is in recovery (a replica), not a ` +
              "writable primary",
          );
        }
      } catch (err) {
        await next.end({ timeout: 0 }).catch(() => {});
        if (err instanceof RuntimeError) throw err;
        throw new RuntimeError(
          "DATABASE_UNAVAILABLE",
          `Cannot re-point the pool to ${target}: ${describeError(err)}`,
          { cause: err },
        );
      }
      const old = current;
      const from = describe;
      current = next;
      describe = target;
      generation++;
      if (options.epoch !== undefined) epoch = options.epoch;
      readOnly = options.readOnly === true;
      wake();
      const drain = old.end({ timeout: options.drainTimeoutS ?? 5 }).catch(() => {});
      draining.add(drain);
      drain.finally(() => draining.delete(drain));
      const ms = Math.round(performance.now() - started);
      log.info("database pool re-pointed", { from, to: target, generation, epoch, ms });
      return { from, to: target, generation, epoch, ms };
    };
    const next = queue.then(run, run);
    queue = next.catch(() => {});
    return next;
  }

  return {
    sql: handle,
    mode: "postgres",
    get describe() {
      return describe;
    },
    get generation() {
      return generation;
    },
    get epoch() {
      return epoch;
    },
    get readOnly() {
      return readOnly;
    },
    ping: (timeoutMs = 2000) => pingSql(current, timeoutMs),
    repoint,
    setSwitchWait(ms: number) {
      switchWaitMs = Math.max(0, ms);
      // Queries already waiting re-check at once: with 0 they fail now instead of later.
      if (switchWaitMs === 0) wake();
    },
    async close(timeoutS = 5) {
      closed = true;
      wake();
      await current.end({ timeout: timeoutS });
      await Promise.all([...draining]);
    },
  };
}

/** Resolves with `promise`, or rejects when it takes longer than `ms`. */
async function raceTimeout<T>(promise: Promise<T>, ms: number, target: string): Promise<T> {
  let timer: number | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${target} did not answer within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
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
  // PGlite has one backend session and pglite-socket interleaves the messages of concurrent
  // connections (one loses its unnamed portal to another: 'portal "" does not exist'), so
  // the embedded pool has exactly one connection.
  const sql = postgres({
    ...poolOptions({ ...options, poolSize: 1 }),
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
    generation: 0,
    epoch: 0,
    readOnly: false,
    ping: (timeoutMs = 2000) => pingSql(sql, timeoutMs),
    repoint: () =>
      Promise.reject(
        new RuntimeError(
          "REPLICATION_UNAVAILABLE",
          "Cannot re-point the embedded database: replication and failover need a PostgreSQL " +
            "server (set DATABASE_URL)",
        ),
      ),
    setSwitchWait: () => {},
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
