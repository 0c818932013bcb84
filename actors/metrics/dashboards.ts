/**
 * Dashboards: named sets of panels, each panel a few structured queries through the
 * metrics reader, answered as JSON by `GET /dashboards/<name>`.
 *
 * | dashboard | panels (default range / step) |
 * | --- | --- |
 * | `streams` | viewers per stream, bitrate, fps (1 h in 5-minute buckets) |
 * | `system` | CPU and memory per host, disk use (1 h in 1-minute buckets) |
 * | `database` | p50 / p95 / p99 query time per query type, connections, size, replication lag (1 h / 1 min) |
 * | `cache` | hit rate, operations per second (1 h / 1 min) |
 *
 * A panel whose query fails carries an `error` and the others still answer.
 * @module
 */
import { z } from "zod";
import { RuntimeError } from "../../lib/errors.ts";
import type { Aggregate, MetricsReader } from "./reader.ts";
import { parseDuration } from "./settings.ts";

/** One query of a panel. */
export interface PanelTarget {
  /** Legend label (tag values are added per series). */
  label: string;
  /** Measurement. */
  measurement: string;
  /** Field. */
  field: string;
  /** Aggregate per bucket. */
  aggregate: Aggregate;
  /** Group-by tag keys. */
  groupBy?: string[];
}

/** One panel. */
export interface Panel {
  /** Panel id. */
  id: string;
  /** Title. */
  title: string;
  /** Unit of the values. */
  unit: string;
  /** Its queries. */
  targets: PanelTarget[];
}

/** A dashboard. */
export interface Dashboard {
  /** URL name. */
  name: string;
  /** Title. */
  title: string;
  /** Default range (ms). */
  rangeMs: number;
  /** Default bucket width (ms). */
  stepMs: number;
  /** Panels. */
  panels: Panel[];
}

/** A dashboard's answer. */
export interface DashboardData {
  name: string;
  title: string;
  /** Reader backend that answered. */
  backend: string;
  /** Range start (ms, aligned to the step). */
  from: number;
  /** Range end (ms). */
  to: number;
  /** Bucket width (ms). */
  stepMs: number;
  panels: {
    id: string;
    title: string;
    unit: string;
    series: { label: string; tags: Record<string, string>; points: [number, number][] }[];
    error?: string;
  }[];
}

const MIN = 60_000;
const HOUR = 3_600_000;

/** The dashboards, by name. */
export const DASHBOARDS: Record<string, Dashboard> = {
  streams: {
    name: "streams",
    title: "Streams",
    rangeMs: HOUR,
    stepMs: 5 * MIN,
    panels: [
      {
        id: "viewers",
        title: "Viewers per stream",
        unit: "viewers",
        targets: [{
          label: "viewers",
          measurement: "stream_viewers",
          field: "count",
          aggregate: "mean",
          groupBy: ["stream_id"],
        }],
      },
      {
        id: "bitrate",
        title: "Bitrate per stream",
        unit: "kbit/s",
        targets: [{
          label: "bitrate",
          measurement: "stream_bitrate",
          field: "kbps",
          aggregate: "mean",
          groupBy: ["stream_id"],
        }],
      },
      {
        id: "fps",
        title: "Frames per second",
        unit: "fps",
        targets: [{
          label: "fps",
          measurement: "stream_fps",
          field: "fps",
          aggregate: "mean",
          groupBy: ["stream_id"],
        }],
      },
    ],
  },
  system: {
    name: "system",
    title: "System resources",
    rangeMs: HOUR,
    stepMs: MIN,
    panels: [
      {
        id: "cpu",
        title: "CPU usage",
        unit: "%",
        targets: [{
          label: "cpu",
          measurement: "system_cpu_usage",
          field: "percent",
          aggregate: "mean",
          groupBy: ["host"],
        }],
      },
      {
        id: "memory",
        title: "Memory in use",
        unit: "bytes",
        targets: [{
          label: "memory",
          measurement: "system_memory_usage",
          field: "bytes",
          aggregate: "mean",
          groupBy: ["host"],
        }],
      },
      {
        id: "disk",
        title: "Disk in use",
        unit: "%",
        targets: [{
          label: "disk",
          measurement: "system_disk_usage",
          field: "percent",
          aggregate: "max",
          groupBy: ["host", "mount"],
        }],
      },
    ],
  },
  database: {
    name: "database",
    title: "Database performance",
    rangeMs: HOUR,
    stepMs: MIN,
    panels: [
      {
        id: "query_time",
        title: "Query time p50 / p95 / p99",
        unit: "ms",
        targets: (["p50", "p95", "p99"] as const).map((field) => ({
          label: field,
          measurement: "database_query_time",
          field,
          // The worst interval of each bucket: a percentile cannot be averaged.
          aggregate: "max" as const,
          groupBy: ["query_type"],
        })),
      },
      {
        id: "connections",
        title: "Connections",
        unit: "connections",
        targets: [
          {
            label: "connections",
            measurement: "database_connections",
            field: "count",
            aggregate: "max",
            groupBy: ["host"],
          },
          {
            label: "max_connections",
            measurement: "database_connections",
            field: "max",
            aggregate: "max",
            groupBy: ["host"],
          },
        ],
      },
      {
        id: "size",
        title: "Database size",
        unit: "bytes",
        targets: [{
          label: "size",
          measurement: "database_size",
          field: "bytes",
          aggregate: "last",
          groupBy: ["database"],
        }],
      },
      {
        id: "replication_lag",
        title: "Replication lag",
        unit: "s",
        targets: [{
          label: "lag",
          measurement: "database_replication_lag",
          field: "seconds",
          aggregate: "max",
          groupBy: ["replica"],
        }],
      },
    ],
  },
  cache: {
    name: "cache",
    title: "Cache performance",
    rangeMs: HOUR,
    stepMs: MIN,
    panels: [
      {
        id: "hit_rate",
        title: "Cache hit rate",
        unit: "%",
        targets: [{
          label: "hit rate",
          measurement: "cache_hit_rate",
          field: "percent",
          aggregate: "mean",
          groupBy: ["cache_type"],
        }],
      },
      {
        id: "operations",
        title: "Operations per second",
        unit: "ops/s",
        targets: [{
          label: "ops",
          measurement: "cache_operations",
          field: "per_s",
          aggregate: "mean",
          groupBy: ["cache_type", "operation"],
        }],
      },
    ],
  },
};

const querySchema = z.object({
  range: z.string().optional(),
  step: z.string().optional(),
  end: z.string().regex(/^\d{1,15}$/, { message: "must be milliseconds since the epoch" })
    .optional(),
});

/** Parses `?range=1h&step=5m&end=<ms>` against a dashboard's defaults; VALIDATION_FAILED if bad. */
export function dashboardWindow(
  dashboard: Dashboard,
  query: Record<string, string | undefined>,
  now: number,
): { start: number; end: number; stepMs: number } {
  const parsed = querySchema.safeParse(query);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Invalid dashboard query: ${issue.path.join(".")} ${issue.message}`,
    );
  }
  const q = parsed.data;
  const rangeMs = q.range === undefined ? dashboard.rangeMs : parseDuration(q.range);
  const stepMs = q.step === undefined ? dashboard.stepMs : parseDuration(q.step);
  if (rangeMs === null || rangeMs < 60_000 || rangeMs > 30 * 86_400_000) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      "Invalid dashboard query: range must be a duration from 1m to 30d, e.g. 6h",
    );
  }
  if (stepMs === null || stepMs < 10_000 || rangeMs / stepMs > 1000) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      "Invalid dashboard query: step must be at least 10s and give at most 1000 buckets",
    );
  }
  const end = q.end === undefined ? now : Number(q.end);
  return { start: end - rangeMs, end, stepMs };
}

/** Runs every panel of a dashboard over a window. */
export async function renderDashboard(
  reader: MetricsReader,
  dashboard: Dashboard,
  window: { start: number; end: number; stepMs: number },
): Promise<DashboardData> {
  const from = Math.floor(window.start / window.stepMs) * window.stepMs;
  const panels = await Promise.all(dashboard.panels.map(async (panel) => {
    try {
      const results = await Promise.all(panel.targets.map(async (target) => {
        const series = await reader.range({
          measurement: target.measurement,
          field: target.field,
          aggregate: target.aggregate,
          groupBy: target.groupBy,
          start: window.start,
          end: window.end,
          stepMs: window.stepMs,
        });
        return series.map((s) => ({
          label: target.label,
          tags: s.tags,
          points: s.points.map((p): [number, number] => [p.t, p.v]),
        }));
      }));
      return { id: panel.id, title: panel.title, unit: panel.unit, series: results.flat() };
    } catch (err) {
      return {
        id: panel.id,
        title: panel.title,
        unit: panel.unit,
        series: [],
        error: err instanceof Error ? err.message : String(err),
      };
    }
  }));
  if (panels.length && panels.every((p) => p.error)) {
    throw new RuntimeError(
      "METRICS_QUERY_FAILED",
      `Cannot load dashboard ${dashboard.name}: ${panels[0].error}`,
    );
  }
  return {
    name: dashboard.name,
    title: dashboard.title,
    backend: reader.describe,
    from,
    to: window.end,
    stepMs: window.stepMs,
    panels,
  };
}
