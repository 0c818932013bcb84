/**
 * Classifies errors raised by postgres.js so callers turn them into RuntimeErrors.
 * (Whether an error means "unreachable" is in lib/db_errors.ts: the HTTP layer needs it too.)
 * @module
 */
import { isConnectionError, pgCode } from "../lib/db_errors.ts";
import { RuntimeError } from "../lib/errors.ts";

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

/** Runs `run`; a lost connection becomes DATABASE_UNAVAILABLE saying it could not `action`. */
export async function guarded<T>(action: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}
