/**
 * Recognises database-client errors (postgres.js codes and SQLSTATEs) without doing any I/O:
 * store/ rethrows them as DATABASE_UNAVAILABLE, api/ answers them with 503, and
 * {@linkcode guardSocketErrors} keeps the driver faults nobody can catch from ending the
 * process, counts them ({@linkcode driverFaultCounts}) and tells the pools
 * ({@linkcode onDriverFault}) so they replace their connections.
 * @module
 */
import type { Logger } from "./log.ts";

/** SQLSTATE / postgres.js codes that mean "the database is not reachable right now". */
const UNAVAILABLE_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "ENOTFOUND",
  "EHOSTUNREACH",
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "CONNECT_TIMEOUT",
  "57P01", // admin_shutdown
  "57P02", // crash_shutdown
  "57P03", // cannot_connect_now
  "08000",
  "08001",
  "08003",
  "08004",
  "08006",
]);

/** The SQLSTATE or client error code of a database error, if any. */
export function pgCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

/**
 * Codes Deno's node:net gives a socket's failed read or write (`write EBADF` for a broken
 * pipe or a closed resource, `write UNKNOWN` for a reset); they count only with that syscall.
 */
const SOCKET_IO_CODES = new Set(["EBADF", "UNKNOWN", "ECONNABORTED", "ENOTCONN"]);
const SOCKET_SYSCALLS = new Set(["read", "write", "connect"]);

/** True when the error says the server is unreachable (not a bad query). */
export function isConnectionError(err: unknown): boolean {
  const code = pgCode(err);
  if (code && UNAVAILABLE_CODES.has(code)) return true;
  const syscall = (err as { syscall?: unknown } | null)?.syscall;
  if (code && SOCKET_IO_CODES.has(code) && SOCKET_SYSCALLS.has(syscall as string)) return true;
  const msg = err instanceof Error ? err.message : "";
  return /connection (refused|reset|closed)|write CONNECTION_CLOSED|connect ECONNREFUSED/i.test(
    msg,
  );
}

/** Errors of a connection that was never made: nothing was open, so nothing was lost. */
const NEVER_CONNECTED = new Set(["ECONNREFUSED", "ENOTFOUND", "EHOSTUNREACH", "57P03"]);

/**
 * True when a connection that had been open was lost (closed, reset, ended by the server, or
 * stuck opening): postgres.js may leave that connection object unusable (see
 * {@linkcode guardSocketErrors}), so its pool is replaced. A refused or unresolvable server
 * is not such a loss.
 */
export function isConnectionLost(err: unknown): boolean {
  if (!isConnectionError(err)) return false;
  const code = pgCode(err);
  return !(code && NEVER_CONNECTED.has(code));
}

/** The kinds of driver fault {@linkcode guardSocketErrors} catches. */
export type DriverFaultKind = "null-socket-write" | "orphaned-socket-error" | "stranded-rejection";

const SOCKET_ERRORS = new Set(["ECONNRESET", "EPIPE", "ECONNREFUSED", "ETIMEDOUT"]);
/** postgres.js's own connection errors (`Errors.connection`: code and errno the same). */
const DRIVER_ERRORS = new Set([
  "CONNECTION_DESTROYED",
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECT_TIMEOUT",
]);
/**
 * SQLSTATEs of a server ending a connection (admin shutdown or pg_terminate_backend, crash
 * shutdown, cannot connect now, connection exceptions), as a postgres.js `PostgresError`.
 */
const SERVER_ENDED = /^(57P0[1-3]|08[0-9A-Z]{3})$/;
/** The first frame of postgres.js's deferred write: `at nextWrite (…/postgres/src/connection.js:…)`. */
const NEXT_WRITE_FRAME =
  /^\s*at (?:Immediate\.)?nextWrite \(\S*\/postgres\/src\/connection\.js:\d+:\d+\)/;
/** Where Deno's node:net builds the error of a socket's failed read or write. */
const NODE_NET_FRAME =
  /ext:deno_node\/internal(?:_binding)?\/(?:stream_base_commons|stream_wrap)\.ts/;
/** Socket error codes of a failed read or write (see {@linkcode SOCKET_IO_CODES}). */
const ORPHAN_CODES = new Set([...SOCKET_IO_CODES, "ECONNRESET", "EPIPE", "ETIMEDOUT"]);

const counts: Record<DriverFaultKind, number> = {
  "null-socket-write": 0,
  "orphaned-socket-error": 0,
  "stranded-rejection": 0,
};
const listeners = new Set<(kind: DriverFaultKind) => void>();
let guardLog: Logger | null = null;

/** How many driver faults of each kind this process caught since it started. */
export function driverFaultCounts(): Readonly<Record<DriverFaultKind, number>> {
  return { ...counts };
}

/**
 * Calls `listener` after each caught fault that may have left a pool with a broken
 * connection ("null-socket-write", "orphaned-socket-error"); returns the unsubscribe.
 */
export function onDriverFault(listener: (kind: DriverFaultKind) => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** What kind of driver fault an uncaught exception is, or null when it is none of ours. */
export function uncaughtDriverFault(err: unknown): DriverFaultKind | null {
  if (!(err instanceof Error)) return null;
  const firstFrame = (err.stack ?? "").split("\n").find((line) => /^\s*at /.test(line)) ?? "";
  if (
    err instanceof TypeError &&
    err.message === "Cannot read properties of null (reading 'write')" &&
    NEXT_WRITE_FRAME.test(firstFrame)
  ) return "null-socket-write";
  const e = err as { code?: unknown; syscall?: unknown; errno?: unknown };
  if (
    (e.syscall === "write" || e.syscall === "read") && typeof e.errno === "number" &&
    typeof e.code === "string" && ORPHAN_CODES.has(e.code) && NODE_NET_FRAME.test(err.stack ?? "")
  ) return "orphaned-socket-error";
  return null;
}

/** True when an unhandled rejection is a connection error postgres.js dropped. */
function strandedRejection(reason: unknown): boolean {
  const r = reason as { code?: unknown; syscall?: unknown; errno?: unknown; name?: unknown } | null;
  const code = typeof r?.code === "string" ? r.code : null;
  return !!code && ((SOCKET_ERRORS.has(code) && typeof r!.syscall === "string") ||
    (DRIVER_ERRORS.has(code) && r!.errno === code) ||
    (r!.name === "PostgresError" && SERVER_ENDED.test(code)));
}

/** Counts a caught fault, logs the first of its kind, and tells the pools when they must heal. */
function caught(kind: DriverFaultKind, err: unknown): void {
  counts[kind]++;
  const fields = {
    kind,
    code: (err as { code?: unknown } | null)?.code ?? null,
    error: err instanceof Error ? err.message : String(err),
  };
  if (counts[kind] === 1) {
    guardLog?.warn(`caught a database driver fault (${SENTENCES[kind]}); counted in /health`, {
      ...fields,
      at: err instanceof Error ? (err.stack ?? "").split("\n").slice(1, 3).join(" ").trim() : null,
    });
  } else {
    guardLog?.debug("caught a database driver fault", { ...fields, count: counts[kind] });
  }
  if (kind === "stranded-rejection") return;
  for (const listener of [...listeners]) {
    try {
      listener(kind);
    } catch (e) {
      guardLog?.error("a driver-fault listener failed", { error: String(e) });
    }
  }
}

/** One sentence per kind, for the first log line. */
const SENTENCES: Record<DriverFaultKind, string> = {
  "null-socket-write": "postgres.js wrote to a connection that had already closed",
  "orphaned-socket-error": "a socket failed after its owner let it go",
  "stranded-rejection": "a connection error nobody listened to",
};

/**
 * Keeps three database-driver faults from ending the process, and nothing else. Each is
 * caught where Deno reports it (globalThis `error` / `unhandledrejection`, preventDefault),
 * counted ({@linkcode driverFaultCounts}, shown by /health), logged once per kind, and the
 * first two are announced ({@linkcode onDriverFault}) so every pool replaces its connections:
 *
 * - `null-socket-write`: postgres.js 3.4 queues small writes with `setImmediate(nextWrite)`
 *   and its `closed()` sets the socket to null; a write queued on a closed connection (the
 *   ROLLBACK `sql.begin` sends after its query failed, or any query on a reserved
 *   connection) throws `TypeError: Cannot read properties of null (reading 'write')` from
 *   the immediate, where no caller can catch it (porsager/postgres#1154, #1066, #1208;
 *   unfixed in 3.4.10). The connection object is left broken — its unsent bytes and a
 *   spent timer stay, so every later reconnect of it stalls until connect_timeout — which is
 *   why its pool is replaced, not merely survived.
 * - `orphaned-socket-error`: postgres.js removes every listener of a socket in its `close`
 *   handler, and Deno's node:net can emit a failed write's `error` after `close` (measured:
 *   connect, close, then `write UNKNOWN` / `write EBADF` when a server resets a connection
 *   while it is written to); with no listener left, EventEmitter throws it. Only errors of a
 *   socket read or write built by Deno's node:net match.
 * - `stranded-rejection`: postgres.js drops the promise of its array-types query on connect
 *   (porsager/postgres#1192, #1223), and under Deno's node:net a reset that arrives after a
 *   socket's listeners are gone surfaces as an unhandled rejection ("read ECONNRESET"): a
 *   connection error as a rejection nobody listens to ("write CONNECTION_DESTROYED" when a
 *   timed-out probe ended its pool, FATAL 57P01 when a switchover's fence ends every session).
 *
 * Everything else keeps Deno's default (the process ends). main.ts installs it; so does the
 * failover concern, for embedders. Installing again changes nothing.
 */
export function guardSocketErrors(log: Logger): void {
  if (guardLog) return;
  guardLog = log;
  globalThis.addEventListener("error", (event) => {
    const kind = uncaughtDriverFault(event.error);
    if (!kind) return;
    event.preventDefault();
    caught(kind, event.error);
  });
  globalThis.addEventListener("unhandledrejection", (event) => {
    if (!strandedRejection(event.reason)) return;
    event.preventDefault();
    caught("stranded-rejection", event.reason);
  });
}
