/**
 * Recognises database-client errors (postgres.js codes and SQLSTATEs) without doing any I/O:
 * store/ rethrows them as DATABASE_UNAVAILABLE, api/ answers them with 503, and
 * {@linkcode guardSocketErrors} keeps the ones nobody listens to from ending the process.
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

/** True when the error says the server is unreachable (not a bad query). */
export function isConnectionError(err: unknown): boolean {
  const code = pgCode(err);
  if (code && UNAVAILABLE_CODES.has(code)) return true;
  const msg = err instanceof Error ? err.message : "";
  return /connection (refused|reset|closed)|write CONNECTION_CLOSED|connect ECONNREFUSED/i.test(
    msg,
  );
}

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
let guardInstalled = false;

/**
 * Keeps a dying database node from taking the process down: postgres.js removes a
 * socket's listeners when it closes, and under Deno's node:net a reset that arrives after
 * that surfaces as an unhandled rejection ("read ECONNRESET") — seen when a primary is
 * killed while connections to it are being opened. postgres.js also drops the promise of
 * its array-types query on connect (porsager/postgres#1192, #1223): a connection cut while
 * that query runs rejects with nobody listening — "write CONNECTION_DESTROYED" when a timed
 * out probe ended its pool, or FATAL 57P01 when a switchover's fence terminates every
 * session (pg_terminate_backend) and stops the old primary while pools reconnect to it.
 * Only such connection errors are caught (and logged); everything else keeps the default
 * behaviour. main.ts installs it; so does the failover concern, for embedders.
 */
export function guardSocketErrors(log: Logger): void {
  if (guardInstalled) return;
  guardInstalled = true;
  globalThis.addEventListener("unhandledrejection", (event) => {
    const reason = event.reason as
      | { code?: unknown; syscall?: unknown; errno?: unknown; name?: unknown }
      | null;
    const code = typeof reason?.code === "string" ? reason.code : null;
    if (
      code && ((SOCKET_ERRORS.has(code) && typeof reason!.syscall === "string") ||
        (DRIVER_ERRORS.has(code) && reason!.errno === code) ||
        (reason!.name === "PostgresError" && SERVER_ENDED.test(code)))
    ) {
      event.preventDefault();
      log.warn("ignored a connection error nobody listened to", {
        code,
        syscall: reason!.syscall ?? null,
      });
    }
  });
}
