/**
 * The HTTP surface: one Hono app, one `fetch(Request) → Response` entry point.
 *
 * Errors are JSON `{ error: { code, message } }`; RuntimeError codes map to statuses,
 * an unreachable database to 503, anything unexpected to 500 without internals.
 * @module
 */
import { Hono } from "hono";
import { isConnectionError } from "../lib/db_errors.ts";
import { RuntimeError } from "../lib/errors.ts";
import { type Logger, silentLogger } from "../lib/log.ts";

/** What the app needs. */
export interface AppDeps {
  /** Request / error log. */
  log?: Logger;
}

/** Maps any thrown value to a JSON error response. */
export function errorResponse(err: unknown, log: Logger): Response {
  if (err instanceof RuntimeError) {
    if (err.status >= 500) log.warn("request failed", { code: err.code, error: err.message });
    return Response.json(err.toJSON(), { status: err.status });
  }
  if (isConnectionError(err)) {
    const e = new RuntimeError("DATABASE_UNAVAILABLE", "The database is unreachable; try again");
    return Response.json(e.toJSON(), { status: 503, headers: { "retry-after": "2" } });
  }
  log.error("unhandled error in request", {
    error: err instanceof Error ? (err.stack ?? err.message) : String(err),
  });
  return Response.json(
    { error: { code: "INTERNAL", message: "Internal error; it has been logged" } },
    { status: 500 },
  );
}

/**
 * Builds the Hono app: JSON errors and a JSON 404. Every route comes from a concern
 * (concerns/mod.ts adds them all, the runtime's own through the `core` concern).
 */
export function createApp(deps: AppDeps = {}): Hono {
  const log = deps.log ?? silentLogger;
  const app = new Hono();
  app.onError((err) => errorResponse(err, log));
  app.notFound((c) =>
    c.json(
      { error: { code: "NOT_FOUND", message: `No route for ${c.req.method} ${c.req.path}` } },
      404,
    )
  );
  return app;
}
