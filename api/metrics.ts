/**
 * Routes of the metrics concern: `GET /metrics` (Prometheus text exposition), `GET /dashboards` (the
 * list), `GET /dashboards/<name>?range=1h&step=5m&end=<ms>` (a dashboard's data as JSON)
 * and `GET /alerts` (every alert rule's state).
 * @module
 */
import type { Hono } from "hono";
import { RuntimeError } from "../lib/errors.ts";
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

/** Adds the metrics routes. */
export function addMetricsRoutes(app: Hono, deps: MetricsRouteDeps): void {
  app.get("/metrics", async (c) => {
    c.header("content-type", deps.expositionContentType);
    c.header("cache-control", "no-store");
    return c.body(await deps.exposition());
  });

  app.get("/dashboards", (c) =>
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

  app.get("/dashboards/:name", async (c) => {
    const name = c.req.param("name");
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

  app.get("/alerts", (c) => c.json({ alerts: deps.alerts() }));
}
