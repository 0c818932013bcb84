/**
 * Metrics suite: time-series write throughput through the metrics writer (points →
 * escaped line protocol → bounded buffer → npm:@influxdata/influxdb-client →
 * `/api/v2/write`), next to raw HTTP POSTs of the same points, already encoded as line
 * protocol, with the same batch size and concurrency, in the same run, against the same
 * throw-away VictoriaMetrics.
 *
 * A rate counts a point only once the server confirmed it: the clock stops when every
 * batch got its 2xx, and each repetition is then checked server-side (force_flush, then a
 * PromQL count of exactly that repetition's measurement); a count that differs fails
 * the suite.
 *
 * Figure: points_per_s (baseline: raw_line_protocol_points_per_s).
 * @module
 */
import { createPromQlReader } from "../actors/metrics/promql_reader.ts";
import { createInfluxWriter } from "../actors/metrics/writer.ts";
import { formatPoint, type MetricPoint } from "../lib/line_protocol.ts";
import { startVictoriaMetrics } from "../tests/support/metrics_servers.ts";
import { type Figure, median, progress, round } from "./_util.ts";

const REPS = 7;
const POINTS = 400_000;
const BATCH = 5000;
const CONCURRENCY = 2;
const CHUNK = 10_000;

function makePoints(measurement: string, n: number, base: number): MetricPoint[] {
  const out: MetricPoint[] = new Array(n);
  for (let i = 0; i < n; i++) {
    out[i] = {
      measurement,
      tags: { host: "bench-01", stream_id: String(i % 1000) },
      fields: { count: i % 5000, kbps: 4500 + (i % 1500) },
      time: base + i,
    };
  }
  return out;
}

/** Points per second through the metrics writer, confirmed by the server. */
async function viaWriter(url: string, points: MetricPoint[]): Promise<number> {
  const writer = createInfluxWriter({
    url,
    org: "bench",
    bucket: "bench",
    batchSize: BATCH,
    concurrency: CONCURRENCY,
    maxBufferedPoints: points.length,
  });
  const t0 = performance.now();
  // As producers do: chunks of points handed over one event-loop turn at a time (write()
  // never waits for the server; the yield lets finished requests make room for new ones).
  for (let i = 0; i < points.length; i += CHUNK) {
    writer.write(points.slice(i, i + CHUNK));
    await new Promise((r) => setTimeout(r, 0));
  }
  const stats = await writer.flush({ timeoutMs: 120_000 });
  const seconds = (performance.now() - t0) / 1000;
  await writer.close();
  if (stats.written !== points.length) {
    throw new Error(
      `the writer confirmed ${stats.written} of ${points.length} points: ${JSON.stringify(stats)}`,
    );
  }
  return points.length / seconds;
}

/** Points per second of plain fetch POSTs of prepared line protocol bodies. */
async function viaRawPosts(url: string, bodies: string[], points: number): Promise<number> {
  const target = `${url}/api/v2/write?org=bench&bucket=bench&precision=ms`;
  let next = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < bodies.length) {
      const body = bodies[next++];
      const res = await fetch(target, {
        method: "POST",
        body,
        headers: { "content-type": "text/plain; charset=utf-8" },
      });
      await res.body?.cancel();
      if (res.status !== 204) throw new Error(`raw POST answered ${res.status}`);
    }
  }));
  return points / ((performance.now() - t0) / 1000);
}

/** Runs the suite. */
export async function run(): Promise<Figure[]> {
  progress("metrics: starting VictoriaMetrics");
  await using vm = await startVictoriaMetrics();
  const reader = createPromQlReader({ url: vm.url });
  const base = Date.now() - 3_600_000;
  const writerRates: number[] = [];
  const rawRates: number[] = [];

  async function confirm(measurement: string, expected: number): Promise<void> {
    await vm.flush();
    const stored = await reader.count({
      measurement,
      field: "count",
      start: base - 1,
      end: base + POINTS,
    });
    if (stored !== expected) {
      throw new Error(`${measurement}: the server holds ${stored} points, expected ${expected}`);
    }
  }

  // One untimed round each to warm up connections, JIT and the server's caches.
  await viaWriter(vm.url, makePoints("bench_warm_w", 50_000, base));
  for (let rep = 1; rep <= REPS; rep++) {
    const wName = `bench_writer_${rep}`;
    const rName = `bench_raw_${rep}`;
    const wPoints = makePoints(wName, POINTS, base);
    const rPoints = makePoints(rName, POINTS, base);
    const bodies: string[] = [];
    for (let i = 0; i < rPoints.length; i += BATCH) {
      bodies.push(rPoints.slice(i, i + BATCH).map((p) => formatPoint(p)!).join("\n"));
    }
    // Alternate the order so neither path always runs on a warmer server.
    if (rep % 2) {
      writerRates.push(await viaWriter(vm.url, wPoints));
      rawRates.push(await viaRawPosts(vm.url, bodies, POINTS));
    } else {
      rawRates.push(await viaRawPosts(vm.url, bodies, POINTS));
      writerRates.push(await viaWriter(vm.url, wPoints));
    }
    await confirm(wName, POINTS);
    await confirm(rName, POINTS);
    progress(
      `metrics: rep ${rep}: writer ${Math.round(writerRates.at(-1)!)} points/s, raw ${
        Math.round(rawRates.at(-1)!)
      } points/s (both confirmed: ${POINTS} each)`,
    );
  }
  return [{
    suite: "metrics",
    name: "points_per_s",
    unit: "points/s",
    value: round(median(writerRates), 0),
    better: "higher",
    baseline: { name: "raw_line_protocol_points_per_s", value: round(median(rawRates), 0) },
  }];
}
