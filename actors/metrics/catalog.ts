/**
 * Every metric the collector writes: its InfluxDB measurement, field, tags and unit (the
 * names of the planning document, section 5.4) and, where it has one, its Prometheus
 * name for `GET /metrics` in base units (bytes, seconds, ratios 0–1, `_total` counters).
 *
 * Rates (network bytes per second, cache operations per second) are written to InfluxDB as
 * rates; Prometheus gets the raw counters instead (`rate()` is its job), which the sources
 * expose directly.
 * @module
 */
import type { MetricPoint } from "../../lib/line_protocol.ts";
import type { PromFamily } from "./prometheus.ts";

/** One metric: an InfluxDB measurement field and its Prometheus counterpart. */
export interface MetricDef {
  /** InfluxDB measurement. */
  measurement: string;
  /** Field. */
  field: string;
  /** Tag keys. */
  tags: readonly string[];
  /** Unit of the field. */
  unit: string;
  /** What it measures. */
  help: string;
  /** Prometheus gauge for the latest value (name, and the factor to base units). */
  prom?: { name: string; scale?: number };
}

/** The catalogue. */
export const METRIC_DEFS: readonly MetricDef[] = [
  {
    measurement: "stream_viewers",
    field: "count",
    tags: ["stream_id", "user_id"],
    unit: "viewers",
    help: "Concurrent viewers of a live stream",
    prom: { name: "rootstream_stream_viewers" },
  },
  {
    measurement: "stream_bitrate",
    field: "kbps",
    tags: ["stream_id"],
    unit: "kbit/s",
    help: "Encoder bitrate of a live stream",
    prom: { name: "rootstream_stream_bitrate_bits_per_second", scale: 1000 },
  },
  {
    measurement: "stream_fps",
    field: "fps",
    tags: ["stream_id"],
    unit: "frames/s",
    help: "Frames per second of a live stream",
    prom: { name: "rootstream_stream_frames_per_second" },
  },
  {
    measurement: "stream_resolution",
    field: "pixels",
    tags: ["stream_id"],
    unit: "pixels",
    help: "Pixels per frame of a live stream",
    prom: { name: "rootstream_stream_resolution_pixels" },
  },
  {
    measurement: "stream_duration",
    field: "seconds",
    tags: ["stream_id"],
    unit: "s",
    help: "Time a live stream has been on the air",
    prom: { name: "rootstream_stream_duration_seconds" },
  },
  {
    measurement: "stream_bytes_transferred",
    field: "bytes",
    tags: ["stream_id"],
    unit: "bytes",
    help: "Bytes sent to viewers in the current broadcast",
    prom: { name: "rootstream_stream_transferred_bytes" },
  },
  {
    measurement: "system_cpu_usage",
    field: "percent",
    tags: ["host"],
    unit: "%",
    help: "CPU busy share of the host over the last interval",
    prom: { name: "rootstream_system_cpu_usage_ratio", scale: 0.01 },
  },
  {
    measurement: "system_memory_usage",
    field: "bytes",
    tags: ["host"],
    unit: "bytes",
    help: "Memory in use on the host (total minus available)",
    prom: { name: "rootstream_system_memory_used_bytes" },
  },
  {
    measurement: "system_memory_usage",
    field: "percent",
    tags: ["host"],
    unit: "%",
    help: "Share of the host's memory in use",
    prom: { name: "rootstream_system_memory_used_ratio", scale: 0.01 },
  },
  {
    measurement: "system_disk_usage",
    field: "bytes",
    tags: ["host", "mount"],
    unit: "bytes",
    help: "Bytes used on a mounted file system",
    prom: { name: "rootstream_system_disk_used_bytes" },
  },
  {
    measurement: "system_disk_usage",
    field: "percent",
    tags: ["host", "mount"],
    unit: "%",
    help: "Share of a mounted file system in use (as df counts it)",
    prom: { name: "rootstream_system_disk_used_ratio", scale: 0.01 },
  },
  {
    measurement: "system_network_rx",
    field: "bytes_per_s",
    tags: ["host", "interface"],
    unit: "bytes/s",
    help: "Bytes received per second on a network interface",
  },
  {
    measurement: "system_network_tx",
    field: "bytes_per_s",
    tags: ["host", "interface"],
    unit: "bytes/s",
    help: "Bytes sent per second on a network interface",
  },
  {
    measurement: "database_connections",
    field: "count",
    tags: ["host"],
    unit: "connections",
    help: "Client connections to the PostgreSQL server",
    prom: { name: "rootstream_database_connections" },
  },
  {
    measurement: "database_connections",
    field: "active",
    tags: ["host"],
    unit: "connections",
    help: "Client connections running a query",
    prom: { name: "rootstream_database_connections_active" },
  },
  {
    measurement: "database_connections",
    field: "max",
    tags: ["host"],
    unit: "connections",
    help: "The server's max_connections",
    prom: { name: "rootstream_database_connections_max" },
  },
  {
    measurement: "database_connections",
    field: "percent",
    tags: ["host"],
    unit: "%",
    help: "Share of max_connections in use",
    prom: { name: "rootstream_database_connections_used_ratio", scale: 0.01 },
  },
  {
    measurement: "database_query_time",
    field: "p50",
    tags: ["query_type"],
    unit: "ms",
    help: "Median query time over the last interval",
  },
  {
    measurement: "database_query_time",
    field: "p95",
    tags: ["query_type"],
    unit: "ms",
    help: "95th percentile query time over the last interval",
  },
  {
    measurement: "database_query_time",
    field: "p99",
    tags: ["query_type"],
    unit: "ms",
    help: "99th percentile query time over the last interval",
  },
  {
    measurement: "database_query_time",
    field: "count",
    tags: ["query_type"],
    unit: "queries",
    help: "Queries timed in the last interval",
  },
  {
    measurement: "database_size",
    field: "bytes",
    tags: ["database"],
    unit: "bytes",
    help: "Size of the database on disk",
    prom: { name: "rootstream_database_size_bytes" },
  },
  {
    measurement: "database_replication_lag",
    field: "seconds",
    tags: ["replica"],
    unit: "s",
    help: "Replay lag of a streaming replica",
    prom: { name: "rootstream_database_replication_lag_seconds" },
  },
  {
    measurement: "database_replication_lag",
    field: "bytes",
    tags: ["replica"],
    unit: "bytes",
    help: "WAL bytes a streaming replica has not replayed yet",
    prom: { name: "rootstream_database_replication_lag_bytes" },
  },
  {
    measurement: "cache_hit_rate",
    field: "percent",
    tags: ["cache_type"],
    unit: "%",
    help: "Share of key lookups that hit over the last interval",
    prom: { name: "rootstream_cache_hit_ratio", scale: 0.01 },
  },
  {
    measurement: "cache_operations",
    field: "per_s",
    tags: ["cache_type", "operation"],
    unit: "operations/s",
    help: "Cache operations per second over the last interval",
  },
  {
    measurement: "auth_logins",
    field: "failed",
    tags: [],
    unit: "attempts",
    help: "Login attempts that ended failed in the last interval",
  },
  {
    measurement: "auth_logins",
    field: "succeeded",
    tags: [],
    unit: "attempts",
    help: "Login attempts that ended with a session in the last interval",
  },
  {
    measurement: "auth_logins",
    field: "mfa_required",
    tags: [],
    unit: "attempts",
    help: "Login attempts that were asked for a second factor in the last interval",
  },
  {
    measurement: "auth_logins",
    field: "mfa_locked",
    tags: [],
    unit: "attempts",
    help: "Login attempts that ended in an MFA lockout in the last interval",
  },
  {
    measurement: "auth_mfa_checks",
    field: "count",
    tags: ["method", "outcome"],
    unit: "checks",
    help: "MFA code checks in the last interval, by method and outcome",
  },
  {
    measurement: "auth_mfa_enrolled",
    field: "users",
    tags: ["method"],
    unit: "users",
    help: "Users with a confirmed MFA method",
    prom: { name: "rootstream_mfa_enrolled_users" },
  },
  {
    measurement: "auth_mfa_users",
    field: "active_users",
    tags: [],
    unit: "users",
    help: "Active user accounts",
    prom: { name: "rootstream_users_active" },
  },
  {
    measurement: "auth_mfa_users",
    field: "enrolled",
    tags: [],
    unit: "users",
    help: "Active users with at least one confirmed MFA method (counted per method)",
  },
  {
    measurement: "auth_mfa_users",
    field: "percent",
    tags: [],
    unit: "%",
    help: "Share of active users with a confirmed MFA method",
    prom: { name: "rootstream_mfa_enrolled_ratio", scale: 0.01 },
  },
  {
    measurement: "sessions",
    field: "active",
    tags: [],
    unit: "sessions",
    help: "Live sessions (not revoked, not expired)",
    prom: { name: "rootstream_sessions_active" },
  },
  {
    measurement: "sessions",
    field: "created",
    tags: [],
    unit: "sessions",
    help: "Sessions created in the last interval",
  },
  {
    measurement: "sessions",
    field: "revoked",
    tags: [],
    unit: "sessions",
    help: "Sessions revoked in the last interval",
  },
  {
    measurement: "backup_status",
    field: "last_failed",
    tags: ["type"],
    unit: "0/1",
    help: "1 when the latest finished backup run of the type failed",
    prom: { name: "rootstream_backup_last_run_failed" },
  },
  {
    measurement: "backup_status",
    field: "verified_age_seconds",
    tags: ["type"],
    unit: "s",
    help: "Age of the newest verified backup of the type",
    prom: { name: "rootstream_backup_verified_age_seconds" },
  },
  {
    measurement: "backup_status",
    field: "allowed_age_seconds",
    tags: ["type"],
    unit: "s",
    help:
      "Age the type's schedule allows its newest verified backup (next scheduled time plus grace)",
    prom: { name: "rootstream_backup_allowed_age_seconds" },
  },
  {
    measurement: "backup_status",
    field: "overdue",
    tags: ["type"],
    unit: "0/1",
    help: "1 when a scheduled time passed (plus grace) without a newer verified backup",
    prom: { name: "rootstream_backup_overdue" },
  },
  {
    measurement: "backup_status",
    field: "size_bytes",
    tags: ["type"],
    unit: "bytes",
    help: "Compressed size of the newest backup of the type",
    prom: { name: "rootstream_backup_size_bytes" },
  },
  {
    measurement: "backup_status",
    field: "duration_seconds",
    tags: ["type"],
    unit: "s",
    help: "Duration of the newest backup of the type",
    prom: { name: "rootstream_backup_duration_seconds" },
  },
  {
    measurement: "database_up",
    field: "up",
    tags: ["host", "instance"],
    unit: "0/1",
    help:
      "1 when this instance reached PostgreSQL in the last cycle (/metrics: rootstream_database_up)",
  },
  {
    measurement: "runtime_actors",
    field: "running",
    tags: ["host"],
    unit: "actors",
    help: "Supervised actors running on the instance",
  },
  {
    measurement: "runtime_actors",
    field: "restarting",
    tags: ["host"],
    unit: "actors",
    help: "Supervised actors waiting to restart",
  },
  {
    measurement: "runtime_actors",
    field: "given_up",
    tags: ["host"],
    unit: "actors",
    help: "Supervised actors the supervisor gave up on",
  },
];

const BY_KEY = new Map(METRIC_DEFS.map((d) => [`${d.measurement}\u0000${d.field}`, d]));

/** The definition of a measurement's field, if catalogued. */
export function metricDef(measurement: string, field: string): MetricDef | undefined {
  return BY_KEY.get(`${measurement}\u0000${field}`);
}

/** Prometheus gauges of the catalogued fields of `points` (the latest collection). */
export function gaugeFamilies(points: readonly MetricPoint[]): PromFamily[] {
  const families = new Map<string, PromFamily>();
  for (const p of points) {
    for (const [field, value] of Object.entries(p.fields)) {
      if (typeof value !== "number" || !Number.isFinite(value)) continue;
      const def = metricDef(p.measurement, field);
      if (!def?.prom) continue;
      let family = families.get(def.prom.name);
      if (!family) {
        families.set(
          def.prom.name,
          family = { name: def.prom.name, help: def.help, type: "gauge", samples: [] },
        );
      }
      const labels: Record<string, string> = {};
      for (const [k, v] of Object.entries(p.tags ?? {})) {
        if (v !== null && v !== undefined && v !== "") labels[k] = String(v);
      }
      family.samples.push({ name: def.prom.name, labels, value: value * (def.prom.scale ?? 1) });
    }
  }
  return [...families.values()];
}
