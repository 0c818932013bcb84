/**
 * The HTTP surface: one Hono app, one `fetch(Request) → Response` entry point.
 *
 * Errors are JSON `{ error: { code, message } }`; RuntimeError codes map to statuses,
 * an unreachable database to 503, anything unexpected to 500 without internals.
 * @module
 */
import { Hono } from "hono";
import { type ContentfulStatusCode } from "hono/utils/http-status";
import { RuntimeError } from "../lib/errors.ts";
import { type Logger, silentLogger } from "../lib/log.ts";
import { isConnectionError } from "../store/pg_errors.ts";

/** What `/health` reports. */
export interface HealthReport {
  /** ok: all checks pass; degraded: serving, something non-critical is down; unavailable: not serving. */
  status: "ok" | "degraded" | "unavailable";
  instance: string;
  version: string;
  uptimeS: number;
  mode: { database: "postgres" | "embedded"; bus: "redis" | "in-process" };
  /** Features this mode cannot offer, with the reason. */
  unavailable: Record<string, string>;
  checks: Record<string, { ok: boolean; [key: string]: unknown }>;
}

/** What the app needs from the runtime. */
export interface AppDeps {
  /** Produces the health report (runs the live checks). */
  health: () => Promise<HealthReport>;
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

/** Builds the Hono app with the core routes; concern modules add their own routes. */
export function createApp(deps: AppDeps): Hono {
  const log = deps.log ?? silentLogger;
  const app = new Hono();
  app.onError((err) => errorResponse(err, log));
  app.notFound((c) =>
    c.json(
      { error: { code: "NOT_FOUND", message: `No route for ${c.req.method} ${c.req.path}` } },
      404,
    )
  );
  app.get("/health", async (c) => {
    const report = await deps.health();
    const status: ContentfulStatusCode = report.status === "unavailable" ? 503 : 200;
    c.header("cache-control", "no-store");
    return c.json(report, status);
  });
  // Liveness: the process and its event loop answer, whatever the dependencies do.
  app.get("/health/live", (c) => c.json({ status: "alive" }));
  return app;
}
