/**
 * The metrics concern's effects: the collector actor (`metrics`), one alert actor per rule
 * (`alert.<name>`), the time-series writer and reader, and the service the routes
 * `GET /metrics`, `GET /dashboards[/<name>]` and `GET /alerts` read (concerns/metrics.ts
 * adds api/metrics.ts).
 *
 * Without INFLUX_URL the collector still runs and `/metrics` serves what it collected;
 * nothing is stored, dashboards answer 503 and alert rules are not evaluated (said once in
 * the log at start-up).
 * @module
 */
import { describeError } from "../../lib/errors.ts";
import type { ChildStatus } from "../../machines/supervisor.ts";
import { type ConcernParts, type RuntimeServices, TRANSPORT_LEVELS } from "../runtime/types.ts";
import { type Alerts, type AlertView, createAlerts, unevaluatedView } from "./alerts.ts";
import { nextCronRun } from "../backup/settings.ts";
import {
  actorsSource,
  authSource,
  type BackupScheduleView,
  backupSource,
  databaseUpSource,
} from "./activity_sources.ts";
import { gaugeFamilies } from "./catalog.ts";
import { collectorSpec, type LatestCollection } from "./collector.ts";
import { createInfluxQlReader } from "./influxql_reader.ts";
import { type PromFamily, renderExposition, snakeCase } from "./prometheus.ts";
import { createPromQlReader } from "./promql_reader.ts";
import { createQueryTimer, type QueryTimer } from "./query_timer.ts";
import type { MetricsReader } from "./reader.ts";
import { RuntimeError } from "../../lib/errors.ts";
import type { MetricsSettings } from "./settings.ts";
import {
  cacheSource,
  databaseSource,
  type Source,
  streamsSource,
  systemSource,
} from "./sources.ts";
import { createWebhook, type Webhook, type WebhookOptions } from "./webhook.ts";
import {
  createInfluxWriter,
  type InfluxWriterOptions,
  type MetricsWriter,
  type WriterStats,
} from "./writer.ts";
import type { MetricPoint } from "../../lib/line_protocol.ts";

/** Options of {@linkcode createMetricsParts} (tests and embedders). */
export interface MetricsConcernOptions {
  /** The supervised actors' status, for the restart and up figures of /metrics. */
  supervised?: () => Record<string, ChildStatus>;
  /** Builds the sources instead of the default system, streams, database and cache. */
  sources?: (services: RuntimeServices, timer: QueryTimer) => Source[];
  /** Writer options overriding the defaults. */
  writer?: Partial<InfluxWriterOptions>;
  /** Webhook options overriding the defaults. */
  webhook?: Partial<WebhookOptions>;
  /** Longest a source may take per cycle (default: the interval, at most 5 s). */
  sourceTimeoutMs?: number;
  /** The backup schedules, for the `backup` source's overdue figure (none: not collected). */
  backup?: { schedules: Record<string, string | null>; timezone: string; verify: string };
}

/** How long after a scheduled time a backup type's verified backup may still be missing. */
const BACKUP_GRACE_MS = 3_600_000;

function databaseHost(url: string | null): string {
  if (!url) return "embedded";
  try {
    const u = new URL(url);
    return u.port ? `${u.hostname}:${u.port}` : u.hostname;
  } catch {
    return "unknown";
  }
}

function counter(name: string, help: string, value: number, labels?: Record<string, string>) {
  return { name, help, type: "counter" as const, samples: [{ name, labels, value }] };
}

function gauge(name: string, help: string, value: number, labels?: Record<string, string>) {
  return { name, help, type: "gauge" as const, samples: [{ name, labels, value }] };
}

/** The metrics concern's API for embedding programs. */
export interface MetricsApi {
  /** Queues points for the time-series store (METRICS_UNAVAILABLE without INFLUX_URL). */
  write(points: readonly MetricPoint[]): void;
  /** Sends what is buffered and reports the writer's counters (null without a store). */
  flush(options?: { timeoutMs?: number }): Promise<WriterStats | null>;
  /** The dashboard / alert reader (InfluxQL or PromQL), or null without a store. */
  reader(): MetricsReader | null;
  /** This instance's metrics in the Prometheus text format. */
  exposition(): string | Promise<string>;
}

/** What the metrics routes read besides the API: alert states and why there is no reader. */
export interface MetricsParts extends ConcernParts<MetricsApi> {
  /** Every alert rule's state. */
  alerts(): AlertView[];
  /** Why dashboards are unavailable ("" when a reader is configured). */
  readerUnavailable: string;
}

/**
 * Builds the metrics concern's actors, writer, reader and alerts from the runtime's
 * services and the metrics settings (tests pass their own sources and timings).
 */
export function createMetricsParts(
  services: RuntimeServices,
  settings: MetricsSettings,
  options: MetricsConcernOptions = {},
): MetricsParts {
  const log = services.log;
  const timer = createQueryTimer();
  const sourceTimeoutMs = options.sourceTimeoutMs ?? Math.min(settings.intervalMs, 5000);
  const dbHost = databaseHost(services.config.database.url);
  const backup = options.backup;
  const backupView: BackupScheduleView | null = backup
    ? {
      schedules: backup.schedules,
      nextRun: (cron, after) => nextCronRun(cron, after, { timezone: backup.timezone }),
      verified: backup.verify !== "off",
      graceMs: BACKUP_GRACE_MS,
    }
    : null;
  const supervised = options.supervised;
  const sources = options.sources?.(services, timer) ?? [
    systemSource(),
    streamsSource(services.db.sql, { timer }),
    databaseSource(services.db.sql, { timer, host: dbHost }),
    // Half the source's time: a probe that times out still reports up = 0 in this cycle.
    databaseUpSource(services.db.sql, {
      host: dbHost,
      instance: services.instanceId,
      timeoutMs: sourceTimeoutMs / 2,
    }),
    authSource(services.db.sql, { maxGapMs: 3 * settings.intervalMs }),
    ...(backupView ? [backupSource(services.db.sql, backupView)] : []),
    ...(supervised ? [actorsSource(supervised, { host: services.instanceId })] : []),
    ...(services.redis ? [cacheSource(services.redis)] : []),
  ];

  let writer: MetricsWriter | null = null;
  let reader: MetricsReader | null = null;
  let readerUnavailable = "INFLUX_URL is not set";
  if (settings.influx) {
    writer = createInfluxWriter({
      ...settings.influx,
      maxBufferedPoints: settings.bufferPoints,
      log: log.child("writer"),
      now: services.now,
      ...options.writer,
    });
    reader = settings.queryLanguage === "promql"
      ? createPromQlReader({ url: settings.influx.url, token: settings.influx.token })
      : createInfluxQlReader({
        url: settings.influx.url,
        token: settings.influx.token,
        database: settings.influx.bucket,
      });
    readerUnavailable = "";
    log.info("metrics: writing and reading time series", {
      writer: writer.describe,
      reader: reader.describe,
      intervalMs: settings.intervalMs,
      alertRules: settings.alertRules.length,
    });
  } else {
    log.info(
      "metrics: INFLUX_URL is not set; metrics are collected and served at /metrics but not " +
        "stored, and dashboards and alerts are unavailable",
    );
  }

  const webhook: Webhook | null = settings.webhookUrl
    ? createWebhook({ url: settings.webhookUrl, log: log.child("webhook"), ...options.webhook })
    : null;
  let alerts: Alerts | null = null;
  if (settings.alertRules.length && reader) {
    alerts = createAlerts({
      rules: settings.alertRules,
      reader,
      now: services.now,
      instanceId: services.instanceId,
      log: log.child("alerts"),
      webhook,
      broadcast: (event) => services.transport.broadcast("metrics", event),
    });
  } else if (settings.alertRules.some((r) => r.origin === "configured")) {
    log.warn(
      `metrics: ${
        settings.alertRules.filter((r) => r.origin === "configured").length
      } configured alert rules are not evaluated: ` +
        "alerts read through the time-series reader, which needs INFLUX_URL",
    );
  }

  const latest: LatestCollection = {
    output: null,
    recordedAt: null,
    cycles: 0,
    running: new Set(),
  };
  const leases = services.leases;
  const spec = collectorSpec({
    sources,
    now: services.now,
    sourceTimeoutMs,
    clusterCollector: leases
      ? async () => {
        const holder = await leases.holder("coordinator");
        return holder === null || holder.instance === services.instanceId;
      }
      : () => Promise.resolve(true),
    intervalMs: settings.intervalMs,
    // Let start-up settle first (and an instance stopped at once never collects: closing
    // the embedded database under running queries can hang it).
    firstDelayMs: Math.min(settings.intervalMs, 1000),
    write: writer ? (points) => writer!.write(points) : null,
    latest,
    log,
  });

  function exposition(): string {
    const families: PromFamily[] = [];
    const out = latest.output;
    if (out) {
      families.push(...gaugeFamilies(out.points));
      families.push(counter(
        "rootstream_metrics_collections_total",
        "Collection cycles recorded",
        latest.cycles,
      ));
      families.push(gauge(
        "rootstream_metrics_collection_duration_seconds",
        "Duration of the last collection cycle",
        out.durationMs / 1000,
      ));
      families.push(gauge(
        "rootstream_metrics_last_collection_timestamp_seconds",
        "Time of the last collection cycle",
        out.at / 1000,
      ));
      families.push({
        name: "rootstream_metrics_source_up",
        help: "1 when the source answered in the last cycle, 0 when it failed",
        type: "gauge",
        samples: Object.entries(out.sources).filter(([, r]) => !r.skipped).map((
          [source, r],
        ) => ({
          name: "rootstream_metrics_source_up",
          labels: { source },
          value: r.error ? 0 : 1,
        })),
      });
    }
    for (const source of sources) {
      try {
        families.push(...(source.counters?.() ?? []));
      } catch (err) {
        log.debug("source counters failed", { source: source.name, error: describeError(err) });
      }
    }
    if (writer) {
      const w = writer.stats();
      families.push(counter(
        "rootstream_metrics_points_accepted_total",
        "Points handed to the time-series writer",
        w.accepted,
      ));
      families.push(counter(
        "rootstream_metrics_points_written_total",
        "Points the time-series server confirmed",
        w.written,
      ));
      families.push({
        name: "rootstream_metrics_points_dropped_total",
        help: "Points dropped by the time-series writer, by reason",
        type: "counter",
        samples: Object.entries(w.dropped).map(([reason, value]) => ({
          name: "rootstream_metrics_points_dropped_total",
          labels: { reason },
          value,
        })),
      });
      families.push(gauge(
        "rootstream_metrics_buffered_points",
        "Points waiting in the writer's buffer",
        w.buffered,
      ));
      families.push(gauge(
        "rootstream_metrics_buffered_bytes",
        "Bytes of line protocol waiting in the writer's buffer",
        w.bufferedBytes,
      ));
      families.push(counter(
        "rootstream_metrics_write_requests_total",
        "Write requests sent",
        w.requests,
      ));
      families.push(counter(
        "rootstream_metrics_write_failures_total",
        "Write requests that failed",
        w.failedRequests,
      ));
      families.push(counter(
        "rootstream_metrics_write_retries_total",
        "Write retries scheduled",
        w.retries,
      ));
      families.push(gauge(
        "rootstream_metrics_writer_up",
        "1 unless the time-series server is failing",
        w.state === "retrying" ? 0 : 1,
      ));
    }
    if (alerts) {
      families.push({
        name: "rootstream_alert_firing",
        help: "1 while the alert rule fires",
        type: "gauge",
        samples: alerts.views().map((v) => ({
          name: "rootstream_alert_firing",
          labels: { rule: v.rule, severity: v.severity },
          value: v.status === "firing" ? 1 : 0,
        })),
      });
      families.push({
        name: "rootstream_alert_notifications_total",
        help: "Alert notifications by channel and outcome",
        type: "counter",
        samples: Object.entries(alerts.notifications()).map(([key, value]) => ({
          name: "rootstream_alert_notifications_total",
          labels: { channel: key.split("_")[0], outcome: key.split("_").slice(1).join("_") },
          value,
        })),
      });
    }
    if (webhook) {
      const ws = webhook.stats();
      families.push({
        name: "rootstream_alert_webhook_deliveries_total",
        help: "Alert webhook deliveries by outcome",
        type: "counter",
        samples: (["sent", "failed", "dropped", "retries"] as const).map((outcome) => ({
          name: "rootstream_alert_webhook_deliveries_total",
          labels: { outcome },
          value: ws[outcome],
        })),
      });
    }
    for (const [key, value] of Object.entries(services.transport.stats())) {
      if (key.startsWith("dropped_")) {
        families.push(counter(
          "rootstream_transport_messages_dropped_total",
          "Inter-instance messages dropped, by reason",
          value,
          { reason: key.slice("dropped_".length) },
        ));
      } else if (TRANSPORT_LEVELS.includes(key)) {
        // Levels (they go down again) are gauges: rate() over them would mean nothing.
        families.push(gauge(
          `rootstream_transport_${snakeCase(key)}`,
          `Inter-instance transport level: ${key.replaceAll("_", " ")} now`,
          value,
        ));
      } else {
        families.push(counter(
          `rootstream_transport_${snakeCase(key)}_total`,
          `Inter-instance transport counter: ${key.replaceAll("_", " ")}`,
          value,
        ));
      }
    }
    const bus = services.bus.stats();
    families.push(
      counter("rootstream_bus_published_total", "Bus messages published", bus.published),
    );
    families.push(
      counter("rootstream_bus_delivered_total", "Bus messages delivered", bus.delivered),
    );
    families.push(counter(
      "rootstream_bus_handler_errors_total",
      "Bus handlers that threw",
      bus.handlerErrors,
    ));
    families.push(counter(
      "rootstream_bus_resubscribes_total",
      "Bus resubscriptions after a reconnect",
      bus.resubscribes,
    ));
    // Records read from Redis whose MAC did not verify (lib/message_auth.ts), by kind.
    const refused = services.messageAuth.stats().forged;
    for (const [kind, value] of Object.entries(refused)) {
      families.push(counter(
        "rootstream_redis_records_refused_total",
        "Records read from Redis refused for a missing or wrong MAC, by kind",
        value ?? 0,
        { kind },
      ));
    }
    const children = options.supervised?.();
    if (children) {
      families.push({
        name: "rootstream_actor_restarts_total",
        help: "Restarts of a supervised actor",
        type: "counter",
        samples: Object.entries(children).map(([actor, c]) => ({
          name: "rootstream_actor_restarts_total",
          labels: { actor },
          value: c.restarts,
        })),
      });
      families.push({
        name: "rootstream_actor_up",
        help: "1 while a supervised actor runs",
        type: "gauge",
        samples: Object.entries(children).map(([actor, c]) => ({
          name: "rootstream_actor_up",
          labels: { actor },
          value: c.status === "running" ? 1 : 0,
        })),
      });
    }
    const mem = Deno.memoryUsage();
    families.push(gauge(
      "rootstream_process_resident_memory_bytes",
      "Resident memory of this process",
      mem.rss,
    ));
    families.push(gauge("rootstream_process_heap_used_bytes", "V8 heap in use", mem.heapUsed));
    return renderExposition(families);
  }

  const api: MetricsApi = {
    write: (points) => {
      if (!writer) {
        throw new RuntimeError("METRICS_UNAVAILABLE", `Cannot write: ${readerUnavailable}`);
      }
      writer.write(points);
    },
    flush: (opts) => writer ? writer.flush(opts) : Promise.resolve(null),
    reader: () => reader,
    exposition,
  };
  return {
    api,
    actors: [spec, ...(alerts?.specs ?? [])],
    // Without a reader the rules still show, each saying why it is not evaluated.
    alerts: () =>
      alerts?.views() ??
        settings.alertRules.map((r) => unevaluatedView(r, readerUnavailable || "no reader")),
    readerUnavailable,
    health() {
      const now = services.now();
      const stale = latest.recordedAt !== null && now - latest.recordedAt > 3 * settings.intervalMs;
      const failed = latest.output !== null &&
        Object.values(latest.output.sources).filter((s) => !s.skipped).every((s) => s.error);
      const w = writer?.stats();
      return Promise.resolve({
        ok: !stale && !failed,
        lastCollectionAt: latest.recordedAt,
        sourceErrors: Object.fromEntries(
          Object.entries(latest.output?.sources ?? {}).filter(([, s]) => s.error).map((
            [k, s],
          ) => [k, s.error]),
        ),
        writer: w
          ? {
            state: w.state,
            written: w.written,
            buffered: w.buffered,
            dropped: w.droppedTotal,
            lastError: w.lastError,
          }
          : "disabled: INFLUX_URL is not set",
        reader: reader?.describe ?? null,
        alertsFiring: alerts?.views().filter((v) => v.status === "firing").map((v) => v.rule) ??
          [],
      });
    },
    async stop() {
      // The actors are stopped, but a cycle cut short still has queries out: let them end
      // before the database closes under them (collectOnce itself times out at 5 s).
      if (latest.running.size) await Promise.allSettled([...latest.running]);
      const final = await writer?.close({ timeoutMs: 5000 });
      if (final) {
        log.info("metrics writer closed", {
          written: final.written,
          dropped: final.droppedTotal,
        });
      }
      await webhook?.close({ timeoutMs: 2000 });
    },
  };
}
