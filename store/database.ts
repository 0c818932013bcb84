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
 *
 * A lost connection (closed, reset or ended by the server) also renews the pool: a fresh
 * pool on the same server replaces it, because postgres.js can leave a lost connection
 * object unusable (see `guardSocketErrors` in lib/db_errors.ts).
 * @module
 */
import { isProcessStartedAt, processStartMs } from "../lib/process.ts";
import { pgConnectArgs } from "./pg_tls.ts";
import postgres from "postgres";
import { describeError, RuntimeError } from "../lib/errors.ts";
import { redactUrl } from "../lib/config.ts";
import { type Logger, silentLogger } from "../lib/log.ts";
import { isConnectionError, isConnectionLost, onDriverFault, pgCode } from "../lib/db_errors.ts";
import type { Sql } from "./types.ts";
import { seedFromTemplate } from "./embedded_template.ts";

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
  /**
   * How many times the pool was renewed on the same server after it lost a connection
   * (postgres.js can leave a lost connection unusable, so the whole pool is replaced).
   */
  readonly renewals: number;
  /**
   * The server URL the pool points at now (it moves with `repoint`), credentials included:
   * for tools that connect on their own (pg_dump, pg_basebackup). Never log it (`describe`
   * is the redacted form). Null for embedded PGlite.
   */
  readonly url: string | null;
  /** Epoch of the primary the pool points at (0 until a failover manager sets one). */
  readonly epoch: number;
  /** True while the pool points at a read-only node (degraded mode). */
  readonly readOnly: boolean;
  /**
   * Raises the epoch the pool is labelled with to `epoch` when that is newer (never lowers
   * it, never moves the pool); returns the epoch now in force. For a pool opened without a
   * published epoch: the one the database itself recorded (failover_history).
   */
  adoptEpoch(epoch: number): number;
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
  /**
   * Calls `listener` when a query on the current pool fails with a connection error
   * (refused, reset, closed): a hint that the server may be gone, which the failover
   * concern answers with a probe at once. Returns the unsubscribe.
   */
  onConnectionError(listener: (error: string) => void): () => void;
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
  /**
   * Embedded mode: where the template of a new database is cached (store/embedded_template.ts);
   * null or undefined: a new data directory runs PGlite's initdb.
   */
  cacheDir?: string | null;
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
  /** Epoch of the primary `url` names, when known at start (the published one); 0 otherwise. */
  epoch?: number;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function pingSql(
  sql: Sql,
  timeoutMs: number,
  onError: (err: unknown) => void = () => {},
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
    query.catch(onError);
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

/** A pool on a server URL (libpq TLS parameters honoured: store/pg_tls.ts); no I/O yet. */
function openPool(url: string, options: OpenDatabaseOptions): Sql {
  const args = pgConnectArgs(url);
  return postgres(args.url, { ...poolOptions(options), ...args.options }) as Sql;
}

/** Opens a pool on a real PostgreSQL server and waits until it answers. */
async function openServer(url: string, options: OpenDatabaseOptions): Promise<Database> {
  const describe = redactUrl(url);
  const sql = openPool(url, options);
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
  return createSwitchableDatabase(sql, { url, describe, options });
}

/** SQLSTATE read_only_sql_transaction: a write reached a fenced or demoted primary. */
const READ_ONLY_SQLSTATE = "25006";

/** A renewal happens at most this often; a broken connection it missed fails again later. */
const RENEW_MIN_INTERVAL_MS = 1000;
/** A caught driver fault renews sooner, but one burst of faults renews once. */
const RENEW_FORCED_INTERVAL_MS = 100;

/**
 * postgres.js codes of a query that never reached the server: rejected by a pool that was
 * ending, or waiting on a connection that never opened. Such a query may run again safely.
 */
const NEVER_SENT = new Set(["CONNECTION_ENDED", "CONNECT_TIMEOUT"]);

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

/** What runs on a pool: our queries (and transactions), and connections reserved from it. */
type UseKind = "query" | "reserved";

/**
 * Counts what runs on each pool, so a replaced pool is ended only once that is done: its
 * queries (at most until a deadline, then they are cut) and its reserved connections (a
 * backup's lock is held for as long as the backup runs: never cut for a renewal).
 */
function createPoolUses() {
  const uses = new Map<Sql, Record<UseKind, number>>();
  const watchers = new Map<Sql, Set<() => void>>();
  function check(pool: Sql): void {
    for (const fn of [...watchers.get(pool) ?? []]) fn();
  }
  return {
    add(pool: Sql, kind: UseKind): void {
      const u = uses.get(pool) ?? { query: 0, reserved: 0 };
      u[kind]++;
      uses.set(pool, u);
    },
    done(pool: Sql, kind: UseKind): void {
      const u = uses.get(pool);
      if (!u) return;
      u[kind] = Math.max(0, u[kind] - 1);
      if (!u.query && !u.reserved) uses.delete(pool);
      check(pool);
    },
    /** True while a connection reserved from `pool` is held. */
    reserved(pool: Sql): boolean {
      return (uses.get(pool)?.reserved ?? 0) > 0;
    },
    /**
     * Resolves when no query runs on `pool` (or `queryMs` passed) and no reserved connection
     * is held, or when `stop()` says to end it now.
     */
    drained(pool: Sql, queryMs: number, stop: () => boolean): Promise<void> {
      return new Promise((resolve) => {
        let late = false;
        const set = watchers.get(pool) ?? new Set<() => void>();
        watchers.set(pool, set);
        const test = () => {
          const u = uses.get(pool);
          if (!stop() && u && ((u.query && !late) || u.reserved)) return;
          clearTimeout(timer);
          set.delete(test);
          if (!set.size) watchers.delete(pool);
          resolve();
        };
        const timer = setTimeout(() => {
          late = true;
          test();
        }, queryMs);
        set.add(test);
        test();
      });
    },
    /** Re-tests every waiting pool (after `stop()` may have turned true). */
    recheck(): void {
      for (const pool of [...watchers.keys()]) check(pool);
    },
  };
}

/**
 * Wraps a pool in a stable `sql` handle that always delegates to the current pool, plus
 * `repoint` to swap pools (serialised), a retry-once of queries caught by a switch, and the
 * renewal of a pool that lost a connection.
 */
function createSwitchableDatabase(
  initial: Sql,
  init: { url: string; describe: string; options: OpenDatabaseOptions },
): Database {
  const log = init.options.log ?? silentLogger;
  let current = initial;
  let url = init.url;
  let describe = init.describe;
  let generation = 0;
  let renewals = 0;
  let renewedAt = -Infinity;
  let epoch = init.options.epoch ?? 0;
  let readOnly = false;
  let switchWaitMs = 0;
  let closed = false;
  let closeTimeoutS = 5;
  const waiters = new Set<() => void>();
  const draining = new Set<Promise<void>>();
  const uses = createPoolUses();
  /** Replaced pools not yet ended, and those of them to end without further waiting. */
  const retired = new Set<Sql>();
  const cut = new Set<Sql>();
  let queue: Promise<unknown> = Promise.resolve();
  /**
   * A driver fault caught by the process guard may have broken a connection of any pool: the
   * current one is renewed, and a replaced one still held open by a reserved connection is
   * ended (the fault is most likely that connection's: written to after it closed, its query
   * would wait forever). That holds for the current pool too: when it holds a reserved
   * connection it is replaced even inside the burst interval (a renewal a moment earlier must
   * not leave that query waiting on a pool nobody ends).
   */
  const unsubscribe = onDriverFault((kind) => {
    renew(current, `the driver reported ${kind}`, { force: true, always: uses.reserved(current) });
    for (const pool of retired) if (uses.reserved(pool)) cut.add(pool);
    uses.recheck();
  });

  function wake(): void {
    for (const fn of [...waiters]) fn();
    waiters.clear();
  }

  /**
   * Ends a replaced pool once what runs on it is done: its queries within `drainS` (then
   * they are cut), its reserved connections whenever released; everything at once on close.
   */
  function retire(pool: Sql, drainS: number): void {
    retired.add(pool);
    const drain = (async () => {
      await uses.drained(pool, drainS * 1000, () => closed || cut.has(pool));
      retired.delete(pool);
      cut.delete(pool);
      await pool.end({ timeout: closed ? closeTimeoutS : 1 }).catch(() => {});
    })();
    draining.add(drain);
    drain.finally(() => draining.delete(drain));
  }

  /**
   * Replaces `pool`, if it is still the current one, by a fresh pool on the same server. A
   * connection postgres.js lost may stay broken (bytes it never sent and a spent timer make
   * every later reconnect of that object stall until connect_timeout), and nothing in its API
   * replaces one connection; a new pool holds no such object. Opening it does no I/O. Lost
   * connections renew at most once a second (a broken one left fails again, and renews
   * then); a caught driver fault, certain evidence, sooner (`force`); a lost reserved
   * connection always (`always`: it is never handed back, so the pool stays one short).
   */
  function renew(
    pool: Sql,
    why: string,
    options: { force?: boolean; always?: boolean } = {},
  ): void {
    if (closed || pool !== current) return;
    const now = performance.now();
    const interval = options.force ? RENEW_FORCED_INTERVAL_MS : RENEW_MIN_INTERVAL_MS;
    if (!options.always && now - renewedAt < interval) return;
    renewedAt = now;
    current = openPool(url, init.options);
    renewals++;
    // Its queries run on; ones waiting there on a broken connection retry on the new pool.
    retire(pool, Math.ceil((init.options.queryTimeoutMs ?? 15000) / 1000) + 5);
    log.warn("database pool renewed after a lost connection", { target: describe, renewals, why });
  }

  /** Renews `pool` when `err` says one of its connections was lost. */
  function noteFailure(err: unknown, pool: Sql): void {
    if (isConnectionLost(err)) renew(pool, describeError(err));
  }

  /** True when a failed query should run again on the (new) current pool. */
  async function shouldRetry(
    err: unknown,
    started: { generation: number; pool: Sql },
  ): Promise<boolean> {
    if (closed || !switchRetryable(err)) return false;
    if (generation !== started.generation) return true;
    // Stranded by a renewal before it reached the server: safe to run on the fresh pool.
    if (started.pool !== current && NEVER_SENT.has(pgCode(err) ?? "")) return true;
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
    return generation !== started.generation;
  }

  const connectionErrorListeners = new Set<(error: string) => void>();

  /** Tells the listeners a query on the current pool lost (or never got) its connection. */
  function noteConnectionError(err: unknown, pool: Sql): void {
    if (pool !== current || !isConnectionError(err)) return;
    const text = describeError(err);
    for (const listener of connectionErrorListeners) {
      try {
        listener(text);
      } catch { /* a listener's fault is not the query's */ }
    }
  }

  /** Runs `work` on `pool`, counted in flight there, renewing the pool if it lost a connection. */
  async function runOn<T>(pool: Sql, work: () => Promise<T>): Promise<T> {
    uses.add(pool, "query");
    try {
      return await work();
    } catch (err) {
      noteConnectionError(err, pool);
      noteFailure(err, pool);
      throw err;
    } finally {
      uses.done(pool, "query");
    }
  }

  /** Makes a Query retry once on the current pool when a switch caught it. */
  function wrapQuery(query: QueryLike, pool: Sql, remake: () => QueryLike): QueryLike {
    const started = { generation, pool };
    const ownThen = Object.getPrototypeOf(query).then as Promise<unknown>["then"];
    let settled: Promise<unknown> | null = null;
    async function settle(): Promise<unknown> {
      try {
        return await runOn(
          pool,
          () => new Promise((resolve, reject) => ownThen.call(query, resolve, reject)),
        );
      } catch (err) {
        // Cursors and streams have handed rows out already: running them again is not safe.
        if (query.cursorFn || query.forEachFn || query.streaming) throw err;
        if (!(await shouldRetry(err, started))) throw err;
        log.debug("retrying a query on the new pool", { error: describeError(err) });
        const next = current;
        const again = remake();
        if (query.isRaw) again.isRaw = query.isRaw;
        if (query.options && again.options) Object.assign(again.options, query.options);
        return await runOn(next, () => again);
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
    const started = { generation, pool: current };
    try {
      return await runOn(started.pool, () => fn(started.pool));
    } catch (err) {
      if (!(await shouldRetry(err, started))) throw err;
      const next = current;
      return await runOn(next, () => fn(next));
    }
  }

  /**
   * A reserved connection, counted as held on its pool until released. Once one of its
   * queries lost the connection, the pool is renewed and every later query on it fails at
   * once with that error: postgres.js would write it to the closed connection (a null
   * socket: the process-level fault) and never answer. Nor is a lost one handed back to
   * the pool, where postgres.js would count it open.
   */
  async function reserve(): Promise<unknown> {
    const pool = current;
    uses.add(pool, "reserved");
    let conn: Sql;
    try {
      conn = await (pool as unknown as { reserve(): Promise<Sql> }).reserve();
    } catch (err) {
      uses.done(pool, "reserved");
      noteFailure(err, pool);
      throw err;
    }
    let lost: unknown = null;
    let released = false;
    function letGo(): void {
      if (released) return;
      released = true;
      uses.done(pool, "reserved");
    }
    function observe(q: QueryLike): QueryLike {
      const ownThen = Object.getPrototypeOf(q).then as Promise<unknown>["then"];
      Object.defineProperty(q, "then", {
        configurable: true,
        writable: true,
        value(onFulfilled?: (v: unknown) => unknown, onRejected?: (e: unknown) => unknown) {
          return ownThen.call(q, onFulfilled, (err: unknown) => {
            if (!lost && isConnectionLost(err)) {
              lost = err;
              letGo();
              // Never handed back, the lost connection leaves its pool one short for good:
              // that pool is renewed even when another renewal happened a moment ago (a
              // driver fault of a replaced pool renews the current one too).
              renew(pool, describeError(err), { always: true });
            }
            if (onRejected) return onRejected(err);
            throw err;
          });
        },
      });
      return q;
    }
    function run(make: () => QueryLike): QueryLike {
      return lost ? Promise.reject(lost) as QueryLike : observe(make());
    }
    return new Proxy(conn, {
      apply(target, _this, args: unknown[]) {
        const call = () => (target as unknown as (...a: unknown[]) => QueryLike)(...args);
        // Only tagged-template queries run; helpers (identifiers, builders) are plain values.
        return Array.isArray((args[0] as { raw?: unknown })?.raw) ? run(call) : call();
      },
      get(target, prop) {
        const value = Reflect.get(target, prop);
        if (prop === "release") {
          return () => {
            const wasLost = lost !== null;
            letGo();
            if (!wasLost) (value as () => void).call(target);
          };
        }
        if (prop === "unsafe") {
          return (...a: unknown[]) => run(() => (value as (...a: unknown[]) => QueryLike)(...a));
        }
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
  }

  const wrapped: Record<PropertyKey, unknown> = {
    begin: (...args: unknown[]) =>
      retryOnce((pool) => (pool.begin as (...a: unknown[]) => Promise<unknown>)(...args)),
    unsafe: (...args: unknown[]) => {
      const pool = current;
      const make = () => (current.unsafe as (...a: unknown[]) => QueryLike)(...args);
      return wrapQuery((pool.unsafe as (...a: unknown[]) => QueryLike)(...args), pool, make);
    },
    reserve,
  };

  const handle = new Proxy(function () {}, {
    apply(_target, _this, args: unknown[]) {
      const [strings, ...values] = args;
      const pool = current;
      const make = () => (current as unknown as (...a: unknown[]) => QueryLike)(strings, ...values);
      const made = make();
      // Only tagged-template queries run; helpers (identifiers, builders) are plain values.
      return Array.isArray((strings as { raw?: unknown })?.raw)
        ? wrapQuery(made, pool, make)
        : made;
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

  function repoint(target: string, options: RepointOptions = {}): Promise<RepointResult> {
    const run = async (): Promise<RepointResult> => {
      if (closed) {
        throw new RuntimeError("DATABASE_UNAVAILABLE", "Cannot re-point the pool: it is closed");
      }
      const shown = redactUrl(target);
      if (options.epoch !== undefined && options.epoch < epoch) {
        throw new RuntimeError(
          "DATABASE_STALE_EPOCH",
          `Refused to re-point the pool to ${shown}: its epoch ${options.epoch} is older than ` +
            `the current epoch ${epoch}`,
          { details: { epoch: options.epoch, current: epoch } },
        );
      }
      const started = performance.now();
      const next = openPool(target, init.options);
      try {
        const check = next`SELECT pg_is_in_recovery() AS recovery`.execute();
        check.catch(() => {});
        const rows = await raceTimeout(check, options.checkTimeoutMs ?? 5000, shown);
        if ((rows[0] as { recovery: boolean }).recovery && !options.readOnly) {
          throw new RuntimeError(
            "DATABASE_NOT_PRIMARY",
            `Refused to re-point the pool to ${shown}: it is in recovery (a replica), not a ` +
              "writable primary",
          );
        }
      } catch (err) {
        await next.end({ timeout: 0 }).catch(() => {});
        if (err instanceof RuntimeError) throw err;
        throw new RuntimeError(
          "DATABASE_UNAVAILABLE",
          `Cannot re-point the pool to ${shown}: ${describeError(err)}`,
          { cause: err },
        );
      }
      const old = current;
      const from = describe;
      current = next;
      url = target;
      describe = shown;
      generation++;
      if (options.epoch !== undefined) epoch = options.epoch;
      readOnly = options.readOnly === true;
      wake();
      const drain = old.end({ timeout: options.drainTimeoutS ?? 5 }).catch(() => {});
      draining.add(drain);
      drain.finally(() => draining.delete(drain));
      const ms = Math.round(performance.now() - started);
      log.info("database pool re-pointed", { from, to: shown, generation, epoch, ms });
      return { from, to: shown, generation, epoch, ms };
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
    get url() {
      return url;
    },
    get generation() {
      return generation;
    },
    get renewals() {
      return renewals;
    },
    get epoch() {
      return epoch;
    },
    get readOnly() {
      return readOnly;
    },
    adoptEpoch(next: number) {
      if (Number.isSafeInteger(next) && next > epoch) {
        log.info("database pool labelled with the recorded epoch", { from: epoch, epoch: next });
        epoch = next;
      }
      return epoch;
    },
    ping: (timeoutMs = 2000) => {
      const pool = current;
      return pingSql(pool, timeoutMs, (err) => noteFailure(err, pool));
    },
    repoint,
    onConnectionError(listener: (error: string) => void) {
      connectionErrorListeners.add(listener);
      return () => connectionErrorListeners.delete(listener);
    },
    setSwitchWait(ms: number) {
      switchWaitMs = Math.max(0, ms);
      // Queries already waiting re-check at once: with 0 they fail now instead of later.
      if (switchWaitMs === 0) wake();
    },
    async close(timeoutS = 5) {
      closed = true;
      closeTimeoutS = timeoutS;
      unsubscribe();
      wake();
      // Replaced pools still draining end now too.
      uses.recheck();
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
 * PostgreSQL settings of the embedded database, on top of PGlite's own start parameters.
 *
 * shared_buffers: PostgreSQL's default 128 MB is sized for a server beside other backends;
 * PGlite's buffer pool lives in the WebAssembly memory of this process and is all resident
 * once touched, while a miss costs only a read from the OS page cache. 16 MB holds the
 * runtime's working set (docs/scaling.md, "Embedded mode: memory and start time").
 */
export const EMBEDDED_SETTINGS: readonly string[] = ["-c", "shared_buffers=16MB"];

/** True when `path` exists. */
async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

/**
 * Starts PGlite on `<dataDir>/pgdata` behind a local socket and opens a pool on it.
 * A new data directory starts from the cached template when `cacheDir` is set.
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
  const pgdata = `${dataDir}/pgdata`;
  const startParams = [...PGlite.defaultStartParams, ...EMBEDDED_SETTINGS];
  const fresh = !(await exists(`${pgdata}/PG_VERSION`));
  const seeded = fresh && options.cacheDir
    ? await seedFromTemplate(PGlite, {
      cacheDir: options.cacheDir,
      pgdata,
      pgliteOptions: { startParams },
      log,
    })
    : false;
  const db = await PGlite.create({ dataDir: pgdata, startParams });
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
    from: fresh ? (seeded ? "template" : "initdb") : "data directory",
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
    url: null,
    generation: 0,
    renewals: 0,
    epoch: 0,
    readOnly: false,
    adoptEpoch: () => 0,
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
    onConnectionError: () => () => {},
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

/**
 * Claims `path` as this process's lock: refuses when another live process holds it,
 * takes over a stale one (its process is gone). Returns the release function.
 */
async function acquireDirLock(path: string, dataDir: string): Promise<() => Promise<void>> {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      // createNew makes claiming atomic: of two processes starting at once, one wins.
      // The pid and its start time: after a crash the pid may be reused by another process.
      const started = processStartMs(Deno.pid);
      await Deno.writeTextFile(path, `${Deno.pid}\n${started ?? ""}\n`, {
        createNew: true,
        mode: 0o600,
      });
      return async () => {
        await Deno.remove(path).catch(() => {});
      };
    } catch (err) {
      if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
    }
    const [pidText, startedText] = (await Deno.readTextFile(path).catch(() => "")).split("\n");
    const pid = Number(pidText), started = Number(startedText);
    // A lock without a start time (an older version's) counts while its pid runs at all.
    const held = pid && pid !== Deno.pid &&
      (startedText ? isProcessStartedAt(pid, started) : processStartMs(pid) !== null);
    if (held) {
      throw new RuntimeError(
        "DATABASE_CONNECT_FAILED",
        `The embedded database in ${dataDir} is in use by process ${pid}. ` +
          `HINT: stop that instance or give this one another RS_DATA_DIR`,
      );
    }
    await Deno.remove(path).catch(() => {}); // stale: its process is gone (or the pid reused)
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
