import assert from "node:assert/strict";
import { formatPoint, type MetricPoint } from "../../lib/line_protocol.ts";
import { isRuntimeError } from "../../lib/errors.ts";
import {
  aggregateStatement,
  createInfluxQlReader,
  rangeStatement,
} from "../../actors/metrics/influxql_reader.ts";
import {
  aggregateExpression,
  createPromQlReader,
  selector,
} from "../../actors/metrics/promql_reader.ts";
import type { Aggregate, MetricsReader, Series } from "../../actors/metrics/reader.ts";
import { DASHBOARDS, dashboardWindow, renderDashboard } from "../../actors/metrics/dashboards.ts";
import { createInfluxWriter } from "../../actors/metrics/writer.ts";
import { startInfluxDb, startVictoriaMetrics } from "../support/metrics_servers.ts";

const STEP = 5 * 60_000;
const END = Math.floor((Date.now() - 60_000) / STEP) * STEP;
const START = END - 3_600_000;

/** Three streams' viewers every 10 s over the hour, off the bucket edges. */
function dataset(): MetricPoint[] {
  const out: MetricPoint[] = [];
  for (let t = START + 1234; t < END; t += 10_000) {
    for (const id of [1, 2, 3]) {
      out.push({
        measurement: "stream_viewers",
        tags: { stream_id: String(id), user_id: String(id * 10) },
        fields: { count: ((t - START) / 10_000) * id % 97 },
        time: t,
      });
    }
  }
  return out;
}

/** What a bucketed aggregate must be, computed from the raw points. */
function expected(data: MetricPoint[], agg: Aggregate, id: string): Map<number, number> {
  const buckets = new Map<number, number[]>();
  for (const p of data) {
    if (p.tags?.stream_id !== id) continue;
    const b = Math.floor(p.time / STEP) * STEP;
    if (!buckets.has(b)) buckets.set(b, []);
    buckets.get(b)!.push(p.fields.count as number);
  }
  const out = new Map<number, number>();
  for (const [b, vs] of buckets) {
    const sum = vs.reduce((a, v) => a + v, 0);
    out.set(
      b,
      agg === "mean"
        ? sum / vs.length
        : agg === "sum"
        ? sum
        : agg === "count"
        ? vs.length
        : agg === "max"
        ? Math.max(...vs)
        : agg === "min"
        ? Math.min(...vs)
        : vs.at(-1)!,
    );
  }
  return out;
}

function close(a: number, b: number): boolean {
  return Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(b));
}

function asMap(series: Series[], id: string): Map<number, number> {
  const s = series.find((x) => x.tags.stream_id === id);
  return new Map(s?.points.map((p) => [p.t, p.v]) ?? []);
}

Deno.test("readers: InfluxQL (InfluxDB 1.6.7) and PromQL (VictoriaMetrics) agree", async (t) => {
  await using vm = await startVictoriaMetrics();
  await using influx = await startInfluxDb();
  const db = await influx.createDatabase();
  const data = dataset();

  const writer = createInfluxWriter({ url: vm.url, org: "o", bucket: "b" });
  writer.write(data);
  assert.equal((await writer.close()).written, data.length);
  await vm.flush();
  await influx.write(db, data.map((p) => formatPoint(p)).join("\n"));

  const readers: MetricsReader[] = [
    createInfluxQlReader({ url: influx.url, database: db }),
    createPromQlReader({ url: vm.url }),
  ];

  await t.step("count is exact", async () => {
    for (const r of readers) {
      assert.equal(
        await r.count({ measurement: "stream_viewers", field: "count", start: START, end: END }),
        data.length,
        r.kind,
      );
      assert.equal(
        await r.count({
          measurement: "stream_viewers",
          field: "count",
          where: { stream_id: "2" },
          start: START,
          end: END,
        }),
        data.length / 3,
        r.kind,
      );
    }
  });

  for (const agg of ["mean", "max", "min", "sum", "count", "last"] as const) {
    await t.step(`range ${agg} in 5-minute buckets matches the raw data`, async () => {
      for (const r of readers) {
        const series = await r.range({
          measurement: "stream_viewers",
          field: "count",
          aggregate: agg,
          start: START,
          end: END,
          stepMs: STEP,
          groupBy: ["stream_id"],
        });
        assert.equal(series.length, 3, r.kind);
        for (const id of ["1", "2", "3"]) {
          const want = expected(data, agg, id);
          const got = asMap(series, id);
          assert.equal(got.size, 12, `${r.kind} ${agg} buckets`);
          for (const [b, v] of want) {
            assert.ok(
              close(got.get(b)!, v),
              `${r.kind} ${agg} stream ${id} @${b}: ${got.get(b)} vs ${v}`,
            );
          }
        }
      }
    });
  }

  await t.step("aggregate over a window per group, and over everything", async () => {
    const windowStart = END - 15 * 60_000;
    const inWindow = data.filter((p) => p.time > windowStart && p.time <= END);
    for (const r of readers) {
      const groups = await r.aggregate({
        measurement: "stream_viewers",
        field: "count",
        aggregate: "mean",
        start: windowStart,
        end: END,
        groupBy: ["stream_id"],
      });
      for (const id of ["1", "2", "3"]) {
        const vs = inWindow.filter((p) => p.tags?.stream_id === id).map((p) => p.fields.count!);
        const g = groups.find((x) => x.tags.stream_id === id)!;
        assert.ok(close(g.value, vs.reduce((a, v) => a + v, 0) / vs.length), `${r.kind} ${id}`);
      }
      const [all] = await r.aggregate({
        measurement: "stream_viewers",
        field: "count",
        aggregate: "max",
        start: windowStart,
        end: END,
      });
      // VictoriaMetrics keeps about 12 significant digits: compare as floats.
      assert.ok(close(all.value, Math.max(...inWindow.map((p) => p.fields.count!))), r.kind);
      assert.deepEqual(
        await r.aggregate({
          measurement: "no_such",
          field: "count",
          aggregate: "mean",
          start: windowStart,
          end: END,
        }),
        [],
      );
    }
  });

  await t.step("dashboards answer the same from both backends", async () => {
    const dashboard = DASHBOARDS.streams;
    const window = dashboardWindow(dashboard, { end: String(END) }, Date.now());
    assert.deepEqual(window, { start: START, end: END, stepMs: STEP });
    const [a, b] = await Promise.all(readers.map((r) => renderDashboard(r, dashboard, window)));
    const viewersA = a.panels.find((p) => p.id === "viewers")!;
    const viewersB = b.panels.find((p) => p.id === "viewers")!;
    assert.equal(viewersA.series.length, 3);
    const sort = (s: typeof viewersA.series) =>
      [...s].sort((x, y) => x.tags.stream_id.localeCompare(y.tags.stream_id));
    for (const [sa, sb] of sort(viewersA.series).map((s, i) => [s, sort(viewersB.series)[i]])) {
      assert.equal(sa.points.length, 12);
      sa.points.forEach(([t, v], i) => {
        assert.equal(t, sb.points[i][0]);
        assert.ok(close(v, sb.points[i][1]));
      });
    }
    // Panels without data answer empty, not failing.
    assert.deepEqual(a.panels.find((p) => p.id === "bitrate")!.series, []);
    assert.equal(a.from, START);
  });

  await t.step("queries are validated and quoted, never spliced", () => {
    assert.throws(
      () =>
        rangeStatement({
          measurement: "m",
          field: "f",
          aggregate: "mean",
          start: START,
          end: END,
          stepMs: STEP,
          groupBy: ['stream_id" OR 1=1'],
        }),
      (err) => isRuntimeError(err, "VALIDATION_FAILED"),
    );
    assert.throws(
      () =>
        rangeStatement({
          measurement: "m",
          field: "f",
          aggregate: "mean",
          start: 0,
          end: 1e12,
          stepMs: 1000,
        }),
      /at most 11000 buckets/,
    );
    assert.equal(
      aggregateStatement({
        measurement: 'm"x',
        field: "f",
        aggregate: "max",
        start: 1000,
        end: 2000,
        where: { host: "a'b\\c" },
      }),
      `SELECT max("f") AS "v" FROM "m\\"x" WHERE time > 1000ms AND time <= 2000ms AND "host" = 'a\\'b\\\\c'`,
    );
    assert.equal(
      selector({ measurement: 'm"', field: "f", where: { host: 'x"}' } }),
      '{__name__="m\\"_f",host="x\\"}"}',
    );
    assert.equal(
      aggregateExpression("{s}", "mean", 60_000, ["a"]),
      "sum by (a) (sum_over_time({s}[60000ms])) / sum by (a) (count_over_time({s}[60000ms]))",
    );
  });

  await t.step("a server that is down is a METRICS_QUERY_FAILED, not a crash", async () => {
    await vm.stop();
    await assert.rejects(
      readers[1].count({ measurement: "stream_viewers", field: "count", start: START, end: END }),
      (err) => isRuntimeError(err, "METRICS_QUERY_FAILED") && /PromQL/.test(err.message),
    );
    await assert.rejects(
      createInfluxQlReader({ url: influx.url, database: "missing_db" }).count({
        measurement: "m",
        field: "f",
        start: START,
        end: END,
      }),
      (err) =>
        isRuntimeError(err, "METRICS_QUERY_FAILED") && /database not found/.test(err.message),
    );
  });
});
