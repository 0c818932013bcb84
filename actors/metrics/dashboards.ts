/**
 * Dashboards: named sets of panels, each panel a few structured queries through the
 * metrics reader, answered as JSON by `GET /dashboards/<name>`.
 *
 * | dashboard | panels (default range / step) |
 * | --- | --- |
 * | `sessions` | live sessions, sessions created / revoked, login outcomes (1 h / 1 min) |
 * | `mfa` | users enrolled per method, share enrolled, code checks, lockouts (6 h / 5 min) |
 * | `backup` | verified backup age vs allowed, failed / overdue, size, duration (7 d / 1 h) |
 * | `replication` | replay lag (s, bytes) per replica, PostgreSQL reachable (1 h / 1 min) |
 * | `database` | p50 / p95 / p99 query time, connections, pool use, size, replication lag (1 h / 1 min) |
 * | `cache` | hit rate, operations per second (1 h / 1 min) |
 * | `system` | CPU, memory, disk, network, supervised actors (1 h / 1 min) |
 * | `streams` | viewers per stream, bitrate, fps (1 h / 5 min) |
 *
 * deploy/grafana/ holds the same dashboards as Grafana JSON (cli/grafana.ts writes them).
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

/** One target (shorthand for the tables below). */
function target(
  label: string,
  measurement: string,
  field: string,
  aggregate: Aggregate,
  groupBy: string[] = [],
): PanelTarget {
  return groupBy.length
    ? { label, measurement, field, aggregate, groupBy }
    : { label, measurement, field, aggregate };
}

/** The dashboards, by name: the planning document's seven, and `streams`. */
export const DASHBOARDS: Record<string, Dashboard> = {
  sessions: {
    name: "sessions",
    title: "Session management overview",
    rangeMs: HOUR,
    stepMs: MIN,
    panels: [
      {
        id: "active",
        title: "Live sessions",
        unit: "sessions",
        targets: [target("active", "sessions", "active", "last")],
      },
      {
        id: "churn",
        title: "Sessions created and revoked",
        unit: "sessions",
        targets: [
          target("created", "sessions", "created", "sum"),
          target("revoked", "sessions", "revoked", "sum"),
        ],
      },
      {
        id: "logins",
        title: "Login attempts by outcome",
        unit: "attempts",
        targets: [
          target("succeeded", "auth_logins", "succeeded", "sum"),
          target("failed", "auth_logins", "failed", "sum"),
          target("MFA locked", "auth_logins", "mfa_locked", "sum"),
        ],
      },
    ],
  },
  mfa: {
    name: "mfa",
    title: "MFA enrolment and usage",
    rangeMs: 6 * HOUR,
    stepMs: 5 * MIN,
    panels: [
      {
        id: "enrolled",
        title: "Users enrolled per method",
        unit: "users",
        targets: [target("enrolled", "auth_mfa_enrolled", "users", "last", ["method"])],
      },
      {
        id: "enrolment_rate",
        title: "Share of active users with MFA",
        unit: "%",
        targets: [target("enrolled", "auth_mfa_users", "percent", "last")],
      },
      {
        id: "checks",
        title: "Code checks by method and outcome",
        unit: "checks",
        targets: [target("checks", "auth_mfa_checks", "count", "sum", ["method", "outcome"])],
      },
      {
        id: "lockouts",
        title: "Logins that needed MFA, and MFA lockouts",
        unit: "attempts",
        targets: [
          target("MFA required", "auth_logins", "mfa_required", "sum"),
          target("MFA locked", "auth_logins", "mfa_locked", "sum"),
        ],
      },
    ],
  },
  backup: {
    name: "backup",
    title: "Backup and recovery status",
    rangeMs: 7 * 24 * HOUR,
    stepMs: HOUR,
    panels: [
      {
        id: "verified_age",
        title: "Age of the newest verified backup, and the age its schedule allows",
        unit: "s",
        targets: [
          target("age", "backup_status", "verified_age_seconds", "last", ["type"]),
          target("allowed", "backup_status", "allowed_age_seconds", "last", ["type"]),
        ],
      },
      {
        id: "health",
        title: "Last run failed / verified backup overdue (1 = yes)",
        unit: "",
        targets: [
          target("last failed", "backup_status", "last_failed", "max", ["type"]),
          target("overdue", "backup_status", "overdue", "max", ["type"]),
        ],
      },
      {
        id: "size",
        title: "Size of the newest backup (compressed)",
        unit: "bytes",
        targets: [target("size", "backup_status", "size_bytes", "last", ["type"])],
      },
      {
        id: "duration",
        title: "Duration of the newest backup",
        unit: "s",
        targets: [target("duration", "backup_status", "duration_seconds", "last", ["type"])],
      },
    ],
  },
  replication: {
    name: "replication",
    title: "Replication health",
    rangeMs: HOUR,
    stepMs: MIN,
    panels: [
      {
        id: "lag_seconds",
        title: "Replay lag per replica",
        unit: "s",
        targets: [target("lag", "database_replication_lag", "seconds", "max", ["replica"])],
      },
      {
        id: "lag_bytes",
        title: "WAL not yet replayed per replica",
        unit: "bytes",
        targets: [target("lag", "database_replication_lag", "bytes", "max", ["replica"])],
      },
      {
        id: "database_up",
        title: "PostgreSQL reachable (1 = yes), per instance",
        unit: "",
        targets: [target("up", "database_up", "up", "min", ["instance"])],
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
        // The worst interval of each bucket: a percentile cannot be averaged.
        targets: (["p50", "p95", "p99"] as const).map((field) =>
          target(field, "database_query_time", field, "max", ["query_type"])
        ),
      },
      {
        id: "connections",
        title: "Connections",
        unit: "connections",
        targets: [
          target("connections", "database_connections", "count", "max", ["host"]),
          target("max_connections", "database_connections", "max", "max", ["host"]),
        ],
      },
      {
        id: "pool",
        title: "Share of max_connections in use",
        unit: "%",
        targets: [target("used", "database_connections", "percent", "max", ["host"])],
      },
      {
        id: "size",
        title: "Database size",
        unit: "bytes",
        targets: [target("size", "database_size", "bytes", "last", ["database"])],
      },
      {
        id: "replication_lag",
        title: "Replication lag",
        unit: "s",
        targets: [target("lag", "database_replication_lag", "seconds", "max", ["replica"])],
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
        targets: [target("hit rate", "cache_hit_rate", "percent", "mean", ["cache_type"])],
      },
      {
        id: "operations",
        title: "Operations per second",
        unit: "ops/s",
        targets: [
          target("ops", "cache_operations", "per_s", "mean", ["cache_type", "operation"]),
        ],
      },
    ],
  },
  system: {
    name: "system",
    title: "System resource utilisation",
    rangeMs: HOUR,
    stepMs: MIN,
    panels: [
      {
        id: "cpu",
        title: "CPU usage",
        unit: "%",
        targets: [target("cpu", "system_cpu_usage", "percent", "mean", ["host"])],
      },
      {
        id: "memory",
        title: "Memory in use",
        unit: "bytes",
        targets: [target("memory", "system_memory_usage", "bytes", "mean", ["host"])],
      },
      {
        id: "memory_percent",
        title: "Share of memory in use",
        unit: "%",
        targets: [target("memory", "system_memory_usage", "percent", "max", ["host"])],
      },
      {
        id: "disk",
        title: "Disk in use",
        unit: "%",
        targets: [target("disk", "system_disk_usage", "percent", "max", ["host", "mount"])],
      },
      {
        id: "network",
        title: "Network bytes per second",
        unit: "bytes/s",
        targets: [
          target("received", "system_network_rx", "bytes_per_s", "mean", ["host", "interface"]),
          target("sent", "system_network_tx", "bytes_per_s", "mean", ["host", "interface"]),
        ],
      },
      {
        id: "actors",
        title: "Supervised actors running / given up",
        unit: "actors",
        targets: [
          target("running", "runtime_actors", "running", "min", ["host"]),
          target("given up", "runtime_actors", "given_up", "max", ["host"]),
        ],
      },
    ],
  },
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
        targets: [target("viewers", "stream_viewers", "count", "mean", ["stream_id"])],
      },
      {
        id: "bitrate",
        title: "Bitrate per stream",
        unit: "kbit/s",
        targets: [target("bitrate", "stream_bitrate", "kbps", "mean", ["stream_id"])],
      },
      {
        id: "fps",
        title: "Frames per second",
        unit: "fps",
        targets: [target("fps", "stream_fps", "fps", "mean", ["stream_id"])],
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
