/**
 * The runtime's dashboards (dashboards.ts) as Grafana provisioning: one dashboard JSON per
 * dashboard and query language, the data sources (InfluxDB v1-compatible `/query` for
 * InfluxQL, a Prometheus-compatible endpoint such as VictoriaMetrics for PromQL) and the
 * dashboard provider. `deno task cli grafana` writes them to deploy/grafana/; a test checks
 * that the files there are what this module makes and that they have the shape Grafana's
 * dashboard schema asks for.
 *
 * Queries are built from the same structured targets and with the same quoting as the
 * readers (influxql_reader.ts, promql_reader.ts), with Grafana's time filter and interval
 * in place of a fixed window.
 * @module
 */
import { stringify } from "yaml";
import type { Dashboard, PanelTarget } from "./dashboards.ts";
import { quoteIdent, quoteMeasurement } from "./influxql_reader.ts";
import { aggregateExpression, selector } from "./promql_reader.ts";

/** The query languages Grafana dashboards are made for. */
export type GrafanaLanguage = "influxql" | "promql";

/** Data source uid per language (the provisioned data sources use these). */
export const GRAFANA_DATASOURCES: Record<
  GrafanaLanguage,
  { uid: string; type: string; name: string }
> = {
  influxql: { uid: "rootstream-influxdb", type: "influxdb", name: "RootStream InfluxDB" },
  promql: { uid: "rootstream-prometheus", type: "prometheus", name: "RootStream Prometheus" },
};

/** Grafana's unit id for a dashboard unit. */
function grafanaUnit(unit: string): string {
  const units: Record<string, string> = {
    "%": "percent",
    bytes: "bytes",
    "bytes/s": "Bps",
    s: "s",
    ms: "ms",
    "ops/s": "ops",
    "kbit/s": "Kbits",
    fps: "fps",
  };
  return units[unit] ?? (unit ? `suffix:${unit}` : "none");
}

const INFLUX_FUNCTIONS: Record<string, string> = {
  mean: "mean",
  max: "max",
  min: "min",
  sum: "sum",
  count: "count",
  last: "last",
};

/** A target's InfluxQL, over Grafana's time range in `$__interval` buckets. */
export function influxQlTarget(target: PanelTarget): string {
  const groups = ["time($__interval)", ...(target.groupBy ?? []).map(quoteIdent)];
  return `SELECT ${INFLUX_FUNCTIONS[target.aggregate]}(${quoteIdent(target.field)}) FROM ${
    quoteMeasurement(target.measurement)
  } WHERE $timeFilter GROUP BY ${groups.join(", ")} fill(none)`;
}

/** A target's PromQL, each point aggregating the `$__interval` before it. */
export function promQlTarget(target: PanelTarget): string {
  return aggregateExpression(selector(target), target.aggregate, 1, target.groupBy ?? [])
    .replaceAll("[1ms]", "[$__interval]");
}

function legend(target: PanelTarget, language: GrafanaLanguage): string {
  const keys = target.groupBy ?? [];
  const tags = keys.map((k) => language === "influxql" ? `$tag_${k}` : `{{${k}}}`);
  return [target.label, ...tags].join(" ");
}

/** The Grafana dashboard JSON (schemaVersion 39) of a dashboard for one query language. */
export function grafanaDashboard(
  dashboard: Dashboard,
  language: GrafanaLanguage,
): Record<string, unknown> {
  const ds = { type: GRAFANA_DATASOURCES[language].type, uid: GRAFANA_DATASOURCES[language].uid };
  const panels = dashboard.panels.map((panel, i) => ({
    id: i + 1,
    type: "timeseries",
    title: panel.title,
    datasource: ds,
    gridPos: { h: 8, w: 12, x: (i % 2) * 12, y: Math.floor(i / 2) * 8 },
    fieldConfig: { defaults: { unit: grafanaUnit(panel.unit) }, overrides: [] },
    options: {
      legend: { displayMode: "list", placement: "bottom", showLegend: true },
      tooltip: { mode: "multi", sort: "none" },
    },
    targets: panel.targets.map((target, j) => ({
      refId: String.fromCharCode(65 + j),
      datasource: ds,
      ...(language === "influxql"
        ? {
          query: influxQlTarget(target),
          rawQuery: true,
          resultFormat: "time_series",
          alias: legend(target, language),
        }
        : { expr: promQlTarget(target), legendFormat: legend(target, language), range: true }),
    })),
  }));
  return {
    uid: `rootstream-${dashboard.name}-${language}`,
    title: `RootStream: ${dashboard.title}`,
    description: `GET /dashboards/${dashboard.name} of RootStream Runtime, read with ${
      language === "influxql" ? "InfluxQL" : "PromQL"
    }`,
    tags: ["rootstream", language],
    timezone: "browser",
    editable: true,
    graphTooltip: 1,
    schemaVersion: 39,
    version: 1,
    refresh: "1m",
    time: { from: `now-${Math.round(dashboard.rangeMs / 60_000)}m`, to: "now" },
    timepicker: {},
    templating: { list: [] },
    annotations: { list: [] },
    links: [],
    panels,
  };
}

/** The data source provisioning file (Grafana `apiVersion: 1`). */
export function grafanaDatasources(): string {
  const influx = GRAFANA_DATASOURCES.influxql;
  const prom = GRAFANA_DATASOURCES.promql;
  return "# Written by `deno task cli grafana` (actors/metrics/grafana.ts); edit the URLs, not the uids.\n" +
    stringify({
      apiVersion: 1,
      datasources: [
        {
          name: influx.name,
          uid: influx.uid,
          type: influx.type,
          access: "proxy",
          // InfluxDB's v1-compatible /query API; the bucket needs a DBRP mapping on 2.x.
          url: "${INFLUX_URL}",
          jsonData: {
            dbName: "${INFLUX_BUCKET}",
            httpMode: "POST",
            httpHeaderName1: "Authorization",
          },
          secureJsonData: { httpHeaderValue1: "Token ${INFLUX_TOKEN}" },
        },
        {
          name: prom.name,
          uid: prom.uid,
          type: prom.type,
          access: "proxy",
          // A Prometheus-compatible query endpoint, e.g. VictoriaMetrics at :8428.
          url: "${PROMETHEUS_URL}",
          jsonData: { httpMethod: "POST" },
        },
      ],
    });
}

/** The dashboard provider file: one Grafana folder per query language. */
export function grafanaProviders(): string {
  return "# Written by `deno task cli grafana` (actors/metrics/grafana.ts).\n" + stringify({
    apiVersion: 1,
    providers: (["influxql", "promql"] as const).map((language) => ({
      name: `rootstream-${language}`,
      folder: `RootStream (${language === "influxql" ? "InfluxQL" : "PromQL"})`,
      type: "file",
      disableDeletion: false,
      allowUiUpdates: false,
      options: { path: `/var/lib/grafana/dashboards/rootstream/${language}` },
    })),
  });
}

/** Every provisioning file, by path under deploy/grafana/. */
export function grafanaFiles(dashboards: Readonly<Record<string, Dashboard>>): Map<string, string> {
  const files = new Map<string, string>();
  files.set("provisioning/datasources/rootstream.yaml", grafanaDatasources());
  files.set("provisioning/dashboards/rootstream.yaml", grafanaProviders());
  for (const language of ["influxql", "promql"] as const) {
    for (const d of Object.values(dashboards)) {
      files.set(
        `dashboards/${language}/${d.name}.json`,
        JSON.stringify(grafanaDashboard(d, language), null, 2) + "\n",
      );
    }
  }
  return files;
}
