/**
 * Classifies errors raised by postgres.js so callers turn them into RuntimeErrors.
 * @module
 */
import { RuntimeError } from "../lib/errors.ts";

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

/** True for a unique-constraint violation, optionally on the named constraint / index. */
export function isUniqueViolation(err: unknown, constraint?: string): boolean {
  if (pgCode(err) !== "23505") return false;
  if (!constraint) return true;
  return (err as { constraint_name?: string }).constraint_name === constraint;
}

/** True for a check-constraint violation (SQLSTATE 23514). */
export function isCheckViolation(err: unknown): boolean {
  return pgCode(err) === "23514";
}

/** True for a foreign-key violation (SQLSTATE 23503). */
export function isForeignKeyViolation(err: unknown): boolean {
  return pgCode(err) === "23503";
}

/**
 * Rethrows a connection error as DATABASE_UNAVAILABLE (HTTP 503); other errors pass through.
 * Data-access modules call this in their catch blocks after handling the codes they expect.
 */
export function rethrowDatabaseError(err: unknown, action: string): never {
  if (err instanceof RuntimeError) throw err;
  if (isConnectionError(err)) {
    throw new RuntimeError(
      "DATABASE_UNAVAILABLE",
      `Cannot ${action}: the database is unreachable`,
      { cause: err },
    );
  }
  throw err;
}
