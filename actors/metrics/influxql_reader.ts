/**
 * The InfluxQL reader backend: `POST /query?db=<bucket>&epoch=ms`, as InfluxDB 1.x serves it
 * and InfluxDB 2.x / 3.x serve it through their v1-compatible API (the bucket needs a
 * DBRP mapping there; the token goes in `Authorization: Token …`).
 *
 * Identifiers are double-quoted and string literals single-quoted with backslash escapes,
 * so no measurement, field or tag value can end the quote and add to the query.
 * @module
 */
import { z } from "zod";
import { redactUrl } from "../../lib/config.ts";
import { RuntimeError } from "../../lib/errors.ts";
import { storedMeasurement, storedText } from "../../lib/line_protocol.ts";
import {
  type Aggregate,
  type AggregateQuery,
  baseUrl,
  checkGroupBy,
  checkRange,
  checkSelector,
  checkWindow,
  type GroupValue,
  httpQuery,
  type MetricsReader,
  type RangeQuery,
  type ReaderOptions,
  type Series,
  type SeriesSelector,
} from "./reader.ts";

/** Options of {@linkcode createInfluxQlReader}. */
export interface InfluxQlReaderOptions extends ReaderOptions {
  /** Database (InfluxDB 1.x) or bucket (2.x / 3.x). */
  database: string;
}

const answerSchema = z.object({
  results: z.array(z.object({
    statement_id: z.number().optional(),
    error: z.string().optional(),
    series: z.array(z.object({
      name: z.string().optional(),
      tags: z.record(z.string(), z.string()).optional(),
      columns: z.array(z.string()),
      values: z.array(z.array(z.unknown())).optional(),
    })).optional(),
  })).optional(),
  error: z.string().optional(),
});

function escapeQuoted(stored: string, quote: string): string {
  let out = "";
  for (const ch of stored) {
    out += ch === "\\" || ch === quote ? "\\" + ch : ch;
  }
  return out;
}

/** Quotes an InfluxQL identifier (field, tag key) as the writer stored it. */
export function quoteIdent(name: string): string {
  return `"${escapeQuoted(storedText(name), '"')}"`;
}

/** Quotes a measurement name as the writer stored it. */
export function quoteMeasurement(name: string): string {
  return `"${escapeQuoted(storedMeasurement(name), '"')}"`;
}

/** Quotes an InfluxQL string literal (tag value) as the writer stored it. */
export function quoteString(value: string): string {
  return `'${escapeQuoted(storedText(value), "'")}'`;
}

const FUNCTIONS: Record<Aggregate, string> = {
  mean: "mean",
  max: "max",
  min: "min",
  sum: "sum",
  count: "count",
  last: "last",
};

function whereClause(q: SeriesSelector, time: string): string {
  const parts = [time];
  for (const [k, v] of Object.entries(q.where ?? {})) {
    parts.push(`${quoteIdent(k)} = ${quoteString(v)}`);
  }
  return parts.join(" AND ");
}

function groupClause(keys: string[], step?: number): string {
  const parts = step ? [`time(${step}ms)`] : [];
  for (const k of keys) parts.push(quoteIdent(k));
  return parts.length ? ` GROUP BY ${parts.join(", ")}` : "";
}

/** Builds the InfluxQL of a range query (exported for tests and docs). */
export function rangeStatement(q: RangeQuery): string {
  const { start, end, step } = checkRange(q);
  const keys = checkGroupBy(q.groupBy);
  return `SELECT ${FUNCTIONS[q.aggregate]}(${quoteIdent(q.field)}) AS "v" FROM ${
    quoteMeasurement(q.measurement)
  } WHERE ${whereClause(q, `time >= ${start}ms AND time < ${end}ms`)}${
    groupClause(keys, step)
  } fill(none)`;
}

/** Builds the InfluxQL of an aggregate query (exported for tests and docs). */
export function aggregateStatement(q: AggregateQuery): string {
  checkSelector(q);
  checkWindow(q.start, q.end);
  const keys = checkGroupBy(q.groupBy);
  return `SELECT ${FUNCTIONS[q.aggregate]}(${quoteIdent(q.field)}) AS "v" FROM ${
    quoteMeasurement(q.measurement)
  } WHERE ${whereClause(q, `time > ${q.start}ms AND time <= ${q.end}ms`)}${groupClause(keys)}`;
}

function num(value: unknown): number | null {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

/** Creates an InfluxQL reader. */
export function createInfluxQlReader(options: InfluxQlReaderOptions): MetricsReader {
  const base = baseUrl(options.url);
  const describe = `InfluxQL ${redactUrl(base)} database ${options.database}`;

  async function run(statement: string) {
    const body = new URLSearchParams({ q: statement, db: options.database, epoch: "ms" });
    const { status, text } = await httpQuery(`${base}/query`, {
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
    const error = parsed.error ?? parsed.results?.find((r) => r.error)?.error;
    if (status >= 300 || error) {
      throw new RuntimeError(
        "METRICS_QUERY_FAILED",
        `Cannot query ${describe}: HTTP ${status}: ${error ?? text.slice(0, 200)}`,
      );
    }
    return parsed.results?.[0]?.series ?? [];
  }

  return {
    kind: "influxql",
    describe,
    async range(q) {
      const series = await run(rangeStatement(q));
      return series.map((s): Series => ({
        tags: s.tags ?? {},
        points: (s.values ?? []).flatMap((row) => {
          const t = num(row[0]);
          const v = num(row[1]);
          return t === null || v === null ? [] : [{ t, v }];
        }),
      })).filter((s) => s.points.length > 0);
    },
    async aggregate(q) {
      const series = await run(aggregateStatement(q));
      return series.flatMap((s): GroupValue[] => {
        const v = num(s.values?.[0]?.[1]);
        return v === null ? [] : [{ tags: s.tags ?? {}, value: v }];
      });
    },
    async count(q) {
      const series = await run(
        aggregateStatement({ ...q, aggregate: "count", groupBy: [] }),
      );
      return num(series[0]?.values?.[0]?.[1]) ?? 0;
    },
  };
}
