/**
 * The PromQL reader backend: VictoriaMetrics `/api/v1/query_range` and `/api/v1/query`.
 *
 * VictoriaMetrics stores an InfluxDB point's field as the metric `<measurement>_<field>`
 * with the tags as labels (its default `-influxMeasurementFieldSeparator`), so a query
 * selects `{__name__="<measurement>_<field>", tag="value"}`; both parts are double-quoted
 * strings with backslash escapes, never spliced into the query as identifiers.
 *
 * Means are computed as sum / count over all raw samples of a group, so they equal
 * InfluxQL's `mean()` rather than a mean of per-series means.
 * @module
 */
import { z } from "zod";
import { redactUrl } from "../../lib/config.ts";
import { RuntimeError } from "../../lib/errors.ts";
import { storedMeasurement, storedText } from "../../lib/line_protocol.ts";
import {
  type Aggregate,
  baseUrl,
  checkGroupBy,
  checkRange,
  checkSelector,
  checkWindow,
  type GroupValue,
  httpQuery,
  type MetricsReader,
  type ReaderOptions,
  type SeriesSelector,
} from "./reader.ts";

/** Options of {@linkcode createPromQlReader}. */
export interface PromQlReaderOptions extends ReaderOptions {
  /** Separator between measurement and field in metric names (VictoriaMetrics default `_`). */
  separator?: string;
}

const answerSchema = z.object({
  status: z.string(),
  error: z.string().optional(),
  data: z.object({
    resultType: z.string(),
    result: z.array(z.object({
      metric: z.record(z.string(), z.string()),
      value: z.tuple([z.number(), z.string()]).optional(),
      values: z.array(z.tuple([z.number(), z.string()])).optional(),
    })),
  }).optional(),
});

/** Quotes a PromQL string (metric name or label value). */
export function quotePromString(text: string): string {
  let out = '"';
  for (const ch of text) {
    out += ch === "\\" || ch === '"' ? "\\" + ch : ch === "\n" ? "\\n" : ch;
  }
  return out + '"';
}

/** The series selector of a measurement's field with tag filters. */
export function selector(q: SeriesSelector, separator = "_"): string {
  const parts = [
    `__name__=${
      quotePromString(storedMeasurement(q.measurement) + separator + storedText(q.field))
    }`,
  ];
  for (const [k, v] of Object.entries(q.where ?? {})) {
    parts.push(`${k}=${quotePromString(storedText(v))}`);
  }
  return `{${parts.join(",")}}`;
}

function by(keys: string[]): string {
  return keys.length ? ` by (${keys.join(",")})` : "";
}

/** The PromQL aggregating `sel` over windows of `windowMs` per group (exported for tests). */
export function aggregateExpression(
  sel: string,
  aggregate: Aggregate,
  windowMs: number,
  keys: string[],
): string {
  const w = `[${windowMs}ms]`;
  const g = by(keys);
  switch (aggregate) {
    case "mean":
      return `sum${g} (sum_over_time(${sel}${w})) / sum${g} (count_over_time(${sel}${w}))`;
    case "sum":
      return `sum${g} (sum_over_time(${sel}${w}))`;
    case "count":
      return `sum${g} (count_over_time(${sel}${w}))`;
    case "max":
      return `max${g} (max_over_time(${sel}${w}))`;
    case "min":
      return `min${g} (min_over_time(${sel}${w}))`;
    case "last":
      return `max${g} (last_over_time(${sel}${w}))`;
  }
}

function pick(metric: Record<string, string>, keys: string[]): Record<string, string> {
  const tags: Record<string, string> = {};
  for (const k of keys) if (metric[k] !== undefined) tags[k] = metric[k];
  return tags;
}

/** Creates a PromQL reader. */
export function createPromQlReader(options: PromQlReaderOptions): MetricsReader {
  const base = baseUrl(options.url);
  const separator = options.separator ?? "_";
  const describe = `PromQL ${redactUrl(base)}`;

  async function run(path: string, body: URLSearchParams) {
    const { status, text } = await httpQuery(`${base}${path}`, {
      body,
      token: options.token,
      timeoutMs: options.timeoutMs,
      what: describe,
    });
    let parsed: z.infer<typeof answerSchema>;
    try {
      parsed = answerSchema.parse(JSON.parse(text));
    } catch {
      throw new RuntimeError(
        "METRICS_QUERY_FAILED",
        `Cannot query ${describe}: HTTP ${status} with an unreadable answer: ${text.slice(0, 200)}`,
      );
    }
    if (status >= 300 || parsed.status !== "success" || !parsed.data) {
      throw new RuntimeError(
        "METRICS_QUERY_FAILED",
        `Cannot query ${describe}: HTTP ${status}: ${parsed.error ?? text.slice(0, 200)}`,
      );
    }
    return parsed.data.result;
  }

  async function instant(expr: string, atMs: number) {
    return await run(
      "/api/v1/query",
      new URLSearchParams({ query: expr, time: String(atMs / 1000) }),
    );
  }

  return {
    kind: "promql",
    describe,
    async range(q) {
      const { start, end, step } = checkRange(q);
      const keys = checkGroupBy(q.groupBy);
      const expr = aggregateExpression(selector(q, separator), q.aggregate, step, keys);
      // The value at T covers (T - step, T]: evaluate at each bucket's end, label it by its start.
      const result = await run(
        "/api/v1/query_range",
        new URLSearchParams({
          query: expr,
          start: String((start + step) / 1000),
          end: String(end / 1000),
          step: `${step / 1000}s`,
        }),
      );
      return result.map((r) => ({
        tags: pick(r.metric, keys),
        points: (r.values ?? []).flatMap(([ts, raw]) => {
          const v = Number(raw);
          return Number.isFinite(v) ? [{ t: Math.round(ts * 1000) - step, v }] : [];
        }),
      })).filter((s) => s.points.length > 0);
    },
    async aggregate(q) {
      checkSelector(q);
      checkWindow(q.start, q.end);
      const keys = checkGroupBy(q.groupBy);
      const expr = aggregateExpression(selector(q, separator), q.aggregate, q.end - q.start, keys);
      const result = await instant(expr, q.end);
      return result.flatMap((r): GroupValue[] => {
        const v = Number(r.value?.[1]);
        return Number.isFinite(v) ? [{ tags: pick(r.metric, keys), value: v }] : [];
      });
    },
    async count(q) {
      checkSelector(q);
      checkWindow(q.start, q.end);
      const expr = aggregateExpression(selector(q, separator), "count", q.end - q.start, []);
      const result = await instant(expr, q.end);
      const v = Number(result[0]?.value?.[1] ?? 0);
      return Number.isFinite(v) ? v : 0;
    },
  };
}
