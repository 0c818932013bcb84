/**
 * The metrics concern: the collector, alert actors, time-series writer and reader
 * (actors/metrics) with `GET /metrics`, `GET /dashboards[/<name>]` and `GET /alerts`
 * (api/metrics.ts).
 * @module
 */
import {
  createMetricsParts,
  type MetricsApi,
  type MetricsConcernOptions,
} from "../actors/metrics/mod.ts";
import { DASHBOARDS, dashboardWindow, renderDashboard } from "../actors/metrics/dashboards.ts";
import { EXPOSITION_CONTENT_TYPE } from "../actors/metrics/prometheus.ts";
import type { MetricsSettings } from "../actors/metrics/settings.ts";
import type { RuntimeServices } from "../actors/runtime/types.ts";
import { addMetricsRoutes } from "../api/metrics.ts";
import type { Concern } from "./types.ts";

/**
 * Builds the metrics concern from the runtime's services and its settings; `options` carries
 * its dependencies on the runtime (the supervised actors) and test overrides.
 */
export function createMetricsConcern(
  services: RuntimeServices,
  settings: MetricsSettings,
  options: MetricsConcernOptions = {},
): Concern<MetricsApi> {
  const parts = createMetricsParts(services, settings, options);
  const api = parts.api;
  return {
    actors: parts.actors,
    api,
    health: parts.health,
    stop: parts.stop,
    routes(app) {
      addMetricsRoutes(app, {
        exposition: api.exposition,
        expositionContentType: EXPOSITION_CONTENT_TYPE,
        dashboards: { all: DASHBOARDS, window: dashboardWindow, render: renderDashboard },
        reader: api.reader(),
        readerUnavailable: parts.readerUnavailable,
        alerts: parts.alerts,
        now: services.now,
      });
    },
  };
}
