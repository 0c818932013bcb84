/**
 * Metrics routes: `GET /metrics` (Prometheus text exposition), `GET /dashboards` (the
 * list), `GET /dashboards/<name>?range=1h&step=5m&end=<ms>` (a dashboard's data as JSON)
 * and `GET /alerts` (every alert rule's state).
 * @module
 */
import type { Hono } from "hono";
import { RuntimeError } from "../lib/errors.ts";
import type { AlertView } from "../actors/metrics/alerts.ts";
import { DASHBOARDS, dashboardWindow, renderDashboard } from "../actors/metrics/dashboards.ts";
import { EXPOSITION_CONTENT_TYPE } from "../actors/metrics/prometheus.ts";
import type { MetricsReader } from "../actors/metrics/reader.ts";

/** What the metrics routes read. */
export interface MetricsRouteDeps {
  /** Renders the Prometheus exposition. */
  exposition: () => string;
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
  app.get("/metrics", (c) => {
    c.header("content-type", EXPOSITION_CONTENT_TYPE);
    c.header("cache-control", "no-store");
    return c.body(deps.exposition());
  });

  app.get("/dashboards", (c) =>
    c.json({
      backend: deps.reader?.describe ?? null,
      dashboards: Object.values(DASHBOARDS).map((d) => ({
        name: d.name,
        title: d.title,
        rangeMs: d.rangeMs,
        stepMs: d.stepMs,
        panels: d.panels.map((p) => ({ id: p.id, title: p.title, unit: p.unit })),
      })),
    }));

  app.get("/dashboards/:name", async (c) => {
    const name = c.req.param("name");
    const dashboard = Object.hasOwn(DASHBOARDS, name) ? DASHBOARDS[name] : undefined;
    if (!dashboard) {
      throw new RuntimeError(
        "NOT_FOUND",
        `No dashboard ${JSON.stringify(name)}: known are ${Object.keys(DASHBOARDS).join(", ")}`,
      );
    }
    const window = dashboardWindow(dashboard, c.req.query(), deps.now());
    if (!deps.reader) {
      throw new RuntimeError(
        "METRICS_UNAVAILABLE",
        `Dashboards are unavailable: ${deps.readerUnavailable ?? "no metrics reader configured"}`,
      );
    }
    c.header("cache-control", "no-store");
    return c.json(await renderDashboard(deps.reader, dashboard, window));
  });

  app.get("/alerts", (c) => c.json({ alerts: deps.alerts() }));
}
