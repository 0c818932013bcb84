/**
 * The contract every metrics reader backend implements, and what it guarantees.
 *
 * Dashboards and alerts read through it; backends are InfluxQL (influxql_reader.ts:
 * `/query`, served by InfluxDB 1.x and by 2.x / 3.x through their v1-compatible API) and
 * PromQL (promql_reader.ts: VictoriaMetrics `/api/v1/query_range`). Queries are structured
 * (measurement, field, tag filters, aggregate), never query text from a caller, so no
 * caller can inject a query; each backend quotes names and values itself.
 *
 * | guarantee | both backends |
 * | --- | --- |
 * | names | a measurement / field / tag value is matched exactly as lib/line_protocol.ts wrote it |
 * | `count` | the exact number of raw samples with start < time ≤ end |
 * | `aggregate` | one value per group over start < time ≤ end; `mean`, `sum`, `count`, `max`, `min` are exact over all raw samples of the group |
 * | `range` | buckets of `stepMs` aligned to multiples of `stepMs` since the epoch, labelled by their start; empty buckets are left out |
 *
 * Differences: a sample exactly on a bucket edge belongs to the bucket it starts
 * (InfluxQL) or the one it ends (PromQL); `last` across several series of one group is the
 * latest sample (InfluxQL) or the largest of the series' last samples (PromQL).
 * @module
 */
import { RuntimeError } from "../../lib/errors.ts";

/** Aggregates a query may ask for. */
export const AGGREGATES = ["mean", "max", "min", "sum", "count", "last"] as const;

/** One aggregate function. */
export type Aggregate = typeof AGGREGATES[number];

/** Which series to read. */
export interface SeriesSelector {
  /** Measurement name. */
  measurement: string;
  /** Field name. */
  field: string;
  /** Tag equality filters. */
  where?: Record<string, string>;
}

/** A bucketed query over a time range. */
export interface RangeQuery extends SeriesSelector {
  /** Aggregate per bucket and group. */
  aggregate: Aggregate;
  /** Range start (ms since the epoch; aligned down to `stepMs`). */
  start: number;
  /** Range end (ms). */
  end: number;
  /** Bucket width (ms, at least 1000). */
  stepMs: number;
  /** Tag keys to group by (one series per combination). */
  groupBy?: string[];
}

/** One aggregate over a window, per group. */
export interface AggregateQuery extends SeriesSelector {
  /** Aggregate per group. */
  aggregate: Aggregate;
  /** Window start, exclusive (ms). */
  start: number;
  /** Window end, inclusive (ms). */
  end: number;
  /** Tag keys to group by. */
  groupBy?: string[];
}

/** One series of a range answer. */
export interface Series {
  /** The group's tag values. */
  tags: Record<string, string>;
  /** Buckets in time order: `t` the bucket start (ms), `v` the value. */
  points: { t: number; v: number }[];
}

/** One value of an aggregate answer. */
export interface GroupValue {
  /** The group's tag values. */
  tags: Record<string, string>;
  /** The aggregate. */
  value: number;
}

/** A metrics reader backend. */
export interface MetricsReader {
  /** `influxql` or `promql`. */
  readonly kind: "influxql" | "promql";
  /** Target for logs and /health (no token). */
  readonly describe: string;
  /** Buckets over a range (see the module's guarantees). */
  range(query: RangeQuery): Promise<Series[]>;
  /** One aggregate per group over a window. */
  aggregate(query: AggregateQuery): Promise<GroupValue[]>;
  /** Exact count of raw samples with start < time ≤ end. */
  count(query: SeriesSelector & { start: number; end: number }): Promise<number>;
}

/** Connection settings shared by the backends. */
export interface ReaderOptions {
  /** Base URL of the server. */
  url: string;
  /** API token (sent as `Authorization: Token …`), or null. */
  token?: string | null;
  /** Request timeout (ms, default 10 000). */
  timeoutMs?: number;
}

const IDENT = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;
/** Most buckets one range query may return per series. */
export const MAX_BUCKETS = 11_000;

function fail(message: string): never {
  throw new RuntimeError("VALIDATION_FAILED", `Invalid metrics query: ${message}`);
}

/** Validates the parts every query has; throws VALIDATION_FAILED. */
export function checkSelector(q: SeriesSelector): void {
  if (typeof q.measurement !== "string" || q.measurement === "" || q.measurement.length > 256) {
    fail("measurement must be 1-256 characters");
  }
  if (typeof q.field !== "string" || q.field === "" || q.field.length > 256) {
    fail("field must be 1-256 characters");
  }
  for (const [k, v] of Object.entries(q.where ?? {})) {
    if (!IDENT.test(k)) fail(`tag key ${JSON.stringify(k)} must be letters, digits and '_'`);
    if (typeof v !== "string" || v.length > 256) fail(`tag ${k} must be at most 256 characters`);
  }
}

/** Validates a time window; throws VALIDATION_FAILED. */
export function checkWindow(start: number, end: number): void {
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0) {
    fail("start and end must be integer milliseconds");
  }
  if (end <= start) fail("end must be after start");
}

/** Validates group-by keys; throws VALIDATION_FAILED. */
export function checkGroupBy(keys: string[] | undefined): string[] {
  const list = keys ?? [];
  for (const k of list) {
    if (!IDENT.test(k)) fail(`group-by key ${JSON.stringify(k)} must be letters, digits and '_'`);
  }
  return list;
}

/** Validates a range query and returns its aligned bounds. */
export function checkRange(q: RangeQuery): { start: number; end: number; step: number } {
  checkSelector(q);
  checkWindow(q.start, q.end);
  checkGroupBy(q.groupBy);
  if (!Number.isSafeInteger(q.stepMs) || q.stepMs < 1000) fail("stepMs must be at least 1000");
  const start = Math.floor(q.start / q.stepMs) * q.stepMs;
  const end = Math.ceil(q.end / q.stepMs) * q.stepMs;
  if ((end - start) / q.stepMs > MAX_BUCKETS) {
    fail(`at most ${MAX_BUCKETS} buckets per query; widen stepMs`);
  }
  return { start, end, step: q.stepMs };
}

/** Runs a GET or POST with a timeout; returns status and body text; network errors become METRICS_QUERY_FAILED. */
export async function httpQuery(
  url: string,
  options: { body: URLSearchParams; token?: string | null; timeoutMs?: number; what: string },
): Promise<{ status: number; text: string }> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), options.timeoutMs ?? 10_000);
  try {
    const res = await fetch(url, {
      method: "POST",
      body: options.body,
      headers: {
        accept: "application/json",
        ...(options.token ? { authorization: `Token ${options.token}` } : {}),
      },
      signal: controller.signal,
    });
    return { status: res.status, text: await res.text() };
  } catch (err) {
    throw new RuntimeError(
      "METRICS_QUERY_FAILED",
      `Cannot query ${options.what}: ${
        controller.signal.aborted
          ? `no answer within ${options.timeoutMs ?? 10_000} ms`
          : err instanceof Error
          ? err.message
          : String(err)
      }`,
      { cause: err },
    );
  } finally {
    clearTimeout(timer);
  }
}

/** The base URL without a trailing slash, or VALIDATION_FAILED. */
export function baseUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error("not http");
    return u.toString().replace(/\/+$/, "");
  } catch {
    return fail(`reader URL ${JSON.stringify(url)} is not an http(s) URL`);
  }
}
