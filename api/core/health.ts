/**
 * Health routes: `GET /health` (the live checks: 503 when the instance cannot serve, 200
 * when it serves, degraded or not) and `GET /health/live` (liveness only).
 * @module
 */
import type { Hono } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { HealthReport } from "../../actors/runtime/health.ts";

/** What the health routes read. */
export interface HealthRouteDeps {
  /** Produces the health report (runs the live checks). */
  health: () => Promise<HealthReport>;
}

/** Adds `GET /health` and `GET /health/live`. */
export function addHealthRoutes(app: Hono, deps: HealthRouteDeps): void {
  app.get("/health", async (c) => {
    const report = await deps.health();
    const status: ContentfulStatusCode = report.status === "unavailable" ? 503 : 200;
    c.header("cache-control", "no-store");
    return c.json(report, status);
  });
  // Liveness: the process and its event loop answer, whatever the dependencies do.
  app.get("/health/live", (c) => c.json({ status: "alive" }));
}
