/**
 * Routes of the metrics concern: `GET /metrics` (Prometheus text exposition), `GET /dashboards` (the
 * list), `GET /dashboards/<name>?range=1h&step=5m&end=<ms>` (a dashboard's data as JSON)
 * and `GET /alerts` (every alert rule's state). Operators only, or a machine token with
 * `metrics:read` (a Prometheus scrape).
 * @module
 */
import { type OpenAPIHono, z } from "@hono/zod-openapi";
import { RuntimeError } from "../lib/errors.ts";
import { declareRoute, jsonResponse, serve } from "./authz/mod.ts";
import type { AlertView } from "../actors/metrics/alerts.ts";
import type { Dashboard, DashboardData } from "../actors/metrics/dashboards.ts";
import type { MetricsReader } from "../actors/metrics/reader.ts";

/** A time window of a dashboard query. */
type Window = { start: number; end: number; stepMs: number };

/** The dashboards the routes serve (actors/metrics/dashboards.ts). */
export interface DashboardDeps {
  /** Every dashboard by name. */
  all: Readonly<Record<string, Dashboard>>;
  /** The window `?range=&step=&end=` asks for; VALIDATION_FAILED when malformed. */
  window(dashboard: Dashboard, query: Record<string, string | undefined>, now: number): Window;
  /** Runs every panel of a dashboard over a window. */
  render(reader: MetricsReader, dashboard: Dashboard, window: Window): Promise<DashboardData>;
}

/** What the metrics routes read. */
export interface MetricsRouteDeps {
  /** Renders the Prometheus exposition. */
  exposition: () => string | Promise<string>;
  /** Its media type (the Prometheus text format's). */
  expositionContentType: string;
  /** The dashboards. */
  dashboards: DashboardDeps;
  /** The reader dashboards query, or null (with the reason) when none is configured. */
  reader: MetricsReader | null;
  /** Why there is no reader. */
  readerUnavailable?: string;
  /** Alert rules' states. */
  alerts: () => AlertView[];
  /** Injected clock. */
  now: () => number;
}

const access = { caller: "operator", scope: "metrics:read" } as const;

/** The metrics routes' declarations. */
export const METRICS_ROUTES = {
  metrics: declareRoute({
    method: "get",
    path: "/metrics",
    tags: ["metrics"],
    summary: "Prometheus text exposition of this instance's metrics",
    access,
    kind: "text",
    responses: {
      200: {
        description: "The exposition",
        content: { "text/plain": { schema: z.string() } },
      },
    },
  }),
  dashboards: declareRoute({
    method: "get",
    path: "/dashboards",
    tags: ["metrics"],
    summary: "The dashboards and their panels",
    access,
    responses: {
      200: jsonResponse(
        z.object({
          backend: z.string().nullable(),
          dashboards: z.array(z.looseObject({ name: z.string(), title: z.string() })),
        }),
        "The dashboards",
      ),
    },
  }),
  dashboard: declareRoute({
    method: "get",
    path: "/dashboards/{name}",
    tags: ["metrics"],
    summary: "A dashboard's series over a window (`range`, `step`, `end`)",
    access,
    request: {
      params: z.object({ name: z.string().max(100) }),
      query: z.object({
        range: z.string().max(32).optional().openapi({ example: "1h" }),
        step: z.string().max(32).optional().openapi({ example: "5m" }),
        end: z.string().max(32).optional().openapi({ description: "end of the window (ms)" }),
      }),
    },
    responses: {
      200: jsonResponse(z.looseObject({}), "The dashboard's data"),
      404: jsonResponse(z.looseObject({}), "No such dashboard (NOT_FOUND)"),
      503: jsonResponse(z.looseObject({}), "No metrics reader (METRICS_UNAVAILABLE)"),
    },
  }),
  alerts: declareRoute({
    method: "get",
    path: "/alerts",
    tags: ["metrics"],
    summary: "Every alert rule's state",
    access,
    responses: {
      200: jsonResponse(z.object({ alerts: z.array(z.looseObject({})) }), "The alerts"),
    },
  }),
};

/** Adds the metrics routes. */
export function addMetricsRoutes(app: OpenAPIHono, deps: MetricsRouteDeps): void {
  serve(app, METRICS_ROUTES.metrics, async (c) => {
    c.header("content-type", deps.expositionContentType);
    c.header("cache-control", "no-store");
    return c.body(await deps.exposition());
  });

  serve(app, METRICS_ROUTES.dashboards, (c) =>
    c.json({
      backend: deps.reader?.describe ?? null,
      dashboards: Object.values(deps.dashboards.all).map((d) => ({
        name: d.name,
        title: d.title,
        rangeMs: d.rangeMs,
        stepMs: d.stepMs,
        panels: d.panels.map((p) => ({ id: p.id, title: p.title, unit: p.unit })),
      })),
    }));

  serve(app, METRICS_ROUTES.dashboard, async (c) => {
    const { name } = c.req.valid("param");
    const all = deps.dashboards.all;
    const dashboard = Object.hasOwn(all, name) ? all[name] : undefined;
    if (!dashboard) {
      throw new RuntimeError(
        "NOT_FOUND",
        `No dashboard ${JSON.stringify(name)}: known are ${Object.keys(all).join(", ")}`,
      );
    }
    const window = deps.dashboards.window(dashboard, c.req.query(), deps.now());
    if (!deps.reader) {
      throw new RuntimeError(
        "METRICS_UNAVAILABLE",
        `Dashboards are unavailable: ${deps.readerUnavailable ?? "no metrics reader configured"}`,
      );
    }
    c.header("cache-control", "no-store");
    return c.json(await deps.dashboards.render(deps.reader, dashboard, window));
  });

  serve(app, METRICS_ROUTES.alerts, (c) => c.json({ alerts: deps.alerts() }));
}
