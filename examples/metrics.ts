/**
 * Metrics, as in the planning document: record stream metrics, have them written to the
 * time-series store in batches, read them back for a dashboard, and see this instance's
 * figures in the Prometheus format.
 *
 * Run: INFLUX_URL=http://… (InfluxDB 2, or VictoriaMetrics with METRICS_QUERY_LANGUAGE=promql)
 *      INFLUX_TOKEN=… INFLUX_ORG=… INFLUX_BUCKET=… deno run -A examples/metrics.ts
 */
import { createRuntime } from "../mod.ts";

const env = Deno.env.toObject();
if (!env.INFLUX_URL) {
  console.error("Set INFLUX_URL (and INFLUX_TOKEN, INFLUX_ORG, INFLUX_BUCKET).");
  Deno.exit(2);
}
const dataDir = await Deno.makeTempDir({ prefix: "rs-example-metrics-" });
const rs = await createRuntime({ env: { ...env, RS_DATA_DIR: dataDir } }, { serve: false });
try {
  const streamId = String(crypto.getRandomValues(new Uint32Array(1))[0]);
  const start = Date.now() - 60_000;
  const points = Array.from({ length: 60 }, (_, i) => ({
    measurement: "stream_viewers",
    tags: { stream_id: streamId, region: "eu-west" },
    fields: { count: 100 + i },
    time: start + i * 1000,
  }));
  rs.metrics.write(points);
  const stats = await rs.metrics.flush({ timeoutMs: 10_000 });
  console.log(`written: ${stats?.written ?? 0} points`);

  // Read them back the way the dashboards do (the store may need a moment to index).
  const reader = rs.metrics.reader();
  if (!reader) throw new Error("no reader: check INFLUX_URL");
  let count = 0;
  for (let i = 0; i < 100 && count < 60; i++) {
    await fetch(`${env.INFLUX_URL}/internal/force_flush`).then((r) => r.body?.cancel(), () => {});
    count = await reader.count({
      measurement: "stream_viewers",
      field: "count",
      where: { stream_id: streamId },
      start: start - 1000,
      end: Date.now() + 1000,
    });
    if (count < 60) await new Promise((r) => setTimeout(r, 100));
  }
  console.log(`read back: ${count} points for stream ${streamId}`);
  if (count !== 60) throw new Error("not every point was stored");

  const text = await rs.metrics.exposition();
  console.log(text.split("\n").find((l) => l.startsWith("rootstream_")) ?? "");
} finally {
  await rs.stop();
  await Deno.remove(dataDir, { recursive: true });
}
