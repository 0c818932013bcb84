/**
 * Health routes: `GET /health` (the live checks: 503 when the instance cannot serve, 200
 * when it serves, degraded or not) and `GET /health/live` (liveness only). Both are open
 * for probes; `/health` tells anyone only its status, and its details (checks, versions,
 * mode) to operators and machine tokens with `health:read`.
 * @module
 */
import { type OpenAPIHono, z } from "@hono/zod-openapi";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { HealthReport } from "../../actors/runtime/health.ts";
import {
  authorizerOf,
  declareRoute,
  jsonResponse,
  principalOf,
  seesDetails,
  serve,
} from "../authz/mod.ts";

/** What the health routes read. */
export interface HealthRouteDeps {
  /** Produces the health report (runs the live checks). */
  health: () => Promise<HealthReport>;
}

const Status = z.enum(["ok", "degraded", "unavailable"]);

const HealthBody = z.object({
  status: Status,
  instance: z.string().optional(),
  version: z.string().optional(),
  uptimeS: z.number().optional(),
  mode: z.object({ database: z.string(), bus: z.string() }).optional(),
  unavailable: z.record(z.string(), z.string()).optional(),
  checks: z.record(z.string(), z.looseObject({ status: z.string() })).optional(),
}).openapi("Health", {
  description: "The status; the other fields only for operators (or health:read)",
});

/** The health routes' declarations. */
export const HEALTH_ROUTES = {
  health: declareRoute({
    method: "get",
    path: "/health",
    tags: ["health"],
    summary: "Whether this instance serves: ok, degraded or unavailable (503)",
    access: { caller: "anonymous", details: { scope: "health:read" } },
    responses: {
      200: jsonResponse(HealthBody, "Serving (ok or degraded)"),
      503: jsonResponse(HealthBody, "Not serving"),
    },
  }),
  live: declareRoute({
    method: "get",
    path: "/health/live",
    tags: ["health"],
    summary: "Liveness: the process and its event loop answer",
    access: { caller: "anonymous" },
    responses: {
      200: jsonResponse(z.object({ status: z.literal("alive") }), "Alive"),
    },
  }),
};

/** Adds `GET /health` and `GET /health/live`. */
export function addHealthRoutes(app: OpenAPIHono, deps: HealthRouteDeps): void {
  serve(app, HEALTH_ROUTES.health, async (c) => {
    const report = await deps.health();
    const status: ContentfulStatusCode = report.status === "unavailable" ? 503 : 200;
    c.header("cache-control", "no-store");
    const details = await seesDetails(authorizerOf(c), await principalOf(c), "health:read");
    return c.json(details ? report : { status: report.status }, status);
  });
  // Liveness: the process and its event loop answer, whatever the dependencies do.
  serve(app, HEALTH_ROUTES.live, (c) => c.json({ status: "alive" }));
}
