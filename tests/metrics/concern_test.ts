import assert from "node:assert/strict";
import { loadConfig } from "../../concerns/config.ts";
import { createLogger } from "../../lib/log.ts";
import { startRuntime } from "../../runtime.ts";
import { createStream, startStream, updateViewerCount } from "../../store/streams.ts";
import { createUser } from "../../store/users.ts";
import type { AlertPayload } from "../../actors/metrics/alerts.ts";
import { loadMetricsSettings } from "../../actors/metrics/settings.ts";
import { createMetricsConcern } from "../../concerns/metrics.ts";
import type { CollectorContext } from "../../machines/metrics_collector.ts";
import { startPostgres, startRedis } from "../harness/mod.ts";
import { eventually, startVictoriaMetrics } from "../support/metrics_servers.ts";
import { ADMIN_HEADERS, TEST_ADMIN_TOKEN } from "../support/auth.ts";

const KEY = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
const SAMPLE_LINE =
  /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? \S+$/;

/** GETs as an operator (the admin token). */
async function get(url: string) {
  const res = await fetch(url, { headers: ADMIN_HEADERS });
  const text = await res.text();
  return { status: res.status, type: res.headers.get("content-type"), text };
}

/** A local webhook receiver. */
function receiver() {
  const received: AlertPayload[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    received.push(await req.json());
    return new Response(null, { status: 204 });
  });
  return {
    url: `http://127.0.0.1:${(server.addr as Deno.NetAddr).port}/hook`,
    received,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}

Deno.test("metrics concern in a running instance", async (t) => {
  await using pg = await startPostgres();
  await using redis = await startRedis();
  await using vm = await startVictoriaMetrics();
  await using hook = receiver();
  const lines: string[] = [];
  const log = createLogger("rs", { sink: (l) => lines.push(l), level: "info" });
  const dataDir = await Deno.makeTempDir({ prefix: "rs-metrics-" });
  const config = loadConfig({
    env: {
      DATABASE_URL: await pg.createDatabase(),
      REDIS_URL: redis.url,
      RS_SECRET_KEY: KEY,
      RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
      RS_PORT: "0",
      RS_DATA_DIR: dataDir,
      RS_INSTANCE_ID: "metrics-a",
      DATABASE_CONNECT_TIMEOUT_S: "5",
    },
    args: [],
  });
  const rules = [{
    name: "viewers_high",
    measurement: "stream_viewers",
    field: "count",
    aggregate: "max",
    window: "2s",
    op: ">",
    threshold: 100,
    for: "300ms",
    every: "100ms",
    severity: "page",
  }];
  const rt = await startRuntime(config, {
    log,
    concerns: {
      metrics: (services) =>
        createMetricsConcern(
          services,
          loadMetricsSettings({
            INFLUX_URL: vm.url,
            METRICS_QUERY_LANGUAGE: "promql",
            METRICS_INTERVAL_MS: "200",
            ALERT_RULES: JSON.stringify(rules),
            ALERT_WEBHOOK_URL: hook.url,
          }),
          { writer: { flushIntervalMs: 50 } },
        ),
    },
  });
  try {
    const user = await createUser(rt.db.sql, {
      username: "metrics_caster",
      email: "metrics_caster@example.com",
      password: "long enough password",
    }, { hashing: { ln: 10 } });
    const { stream } = await createStream(rt.db.sql, { userId: user.id, name: "Metered" });
    await startStream(rt.db.sql, stream.id);
    await updateViewerCount(rt.db.sql, stream.id, { viewers: 42 });
    const id = String(stream.id);

    await t.step("GET /metrics serves the Prometheus text format", async () => {
      // A source that misses a cycle (a slow database on a busy machine) leaves its families
      // out of that cycle's exposition by design: wait for a cycle in which every source answered.
      let seen = await get(`${rt.url}/metrics`);
      await eventually(
        async () => {
          seen = await get(`${rt.url}/metrics`);
          return seen.text.includes("rootstream_stream_viewers{") &&
            !/^rootstream_metrics_source_up\{[^}]*\} 0$/m.test(seen.text);
        },
        {
          what: "a collection with the stream in which every source answered",
          state: () =>
            seen.text.split("\n").filter((l) => l.startsWith("rootstream_metrics_source_up")),
        },
      );
      const { status, type, text } = seen;
      assert.equal(status, 200);
      assert.equal(type, "text/plain; version=0.0.4; charset=utf-8");
      for (const line of text.trimEnd().split("\n")) {
        if (line.startsWith("# HELP ") || line.startsWith("# TYPE ")) continue;
        assert.match(line, SAMPLE_LINE);
      }
      for (
        const family of [
          "rootstream_system_memory_used_bytes",
          "rootstream_system_cpu_usage_ratio",
          "rootstream_database_connections",
          "rootstream_database_query_duration_seconds",
          "rootstream_cache_operations_total",
          "rootstream_metrics_points_written_total",
          "rootstream_metrics_points_dropped_total",
          "rootstream_transport_sent_total",
          "rootstream_bus_published_total",
          "rootstream_alert_firing",
          "rootstream_process_resident_memory_bytes",
        ]
      ) {
        assert.match(text, new RegExp(`^# TYPE ${family} `, "m"), family);
      }
      assert.match(
        text,
        new RegExp(
          `^rootstream_stream_viewers\\{stream_id="${id}",user_id="${user.id}"\\} 42$`,
          "m",
        ),
      );
      assert.match(text, /^# TYPE rootstream_database_query_duration_seconds summary$/m);
      assert.match(text, /^rootstream_metrics_source_up\{source="cache"\} 1$/m);
    });

    await t.step("the instance's metrics are visible in VictoriaMetrics", async () => {
      await eventually(async () => {
        await vm.flush();
        const viewers = await vm.query(`stream_viewers_count{stream_id="${id}"}`);
        const memory = await vm.query(`system_memory_usage_bytes{host="${Deno.hostname()}"}`);
        return viewers[0]?.value[1] === "42" && memory.length === 1;
      }, { what: "stream and system series in VictoriaMetrics" });
      const names = new Set((await vm.series('{__name__=~".+"}')).map((s) => s.__name__));
      for (
        const n of ["database_size_bytes", "database_connections_count", "database_query_time_p99"]
      ) {
        assert.ok(names.has(n), n);
      }
    });

    await t.step("GET /dashboards/<name> answers from the time series", async () => {
      const list = JSON.parse((await get(`${rt.url}/dashboards`)).text);
      assert.deepEqual(list.dashboards.map((d: { name: string }) => d.name), [
        "sessions",
        "mfa",
        "backup",
        "replication",
        "database",
        "cache",
        "system",
        "streams",
      ]);
      // The new sources' measurements reach the dashboards through the reader.
      await eventually(async () => {
        await vm.flush();
        const replication = JSON.parse(
          (await get(`${rt.url}/dashboards/replication?range=10m&step=1m`)).text,
        );
        const up = replication.panels.find((p: { id: string }) => p.id === "database_up");
        const sessions = JSON.parse(
          (await get(`${rt.url}/dashboards/sessions?range=10m&step=1m`)).text,
        );
        const logins = sessions.panels.find((p: { id: string }) => p.id === "logins");
        return up.series.some((s: { points: [number, number][] }) => s.points.at(-1)?.[1] === 1) &&
          logins.series.length === 3;
      }, {
        // A flush, a metrics round and two dashboard reads per try: slow on 2 busy cores.
        ms: 30_000,
        what: "database_up and login outcomes in the replication and sessions dashboards",
      });
      const res = await get(`${rt.url}/dashboards/streams?range=10m&step=1m`);
      assert.equal(res.status, 200);
      const body = JSON.parse(res.text);
      assert.equal(body.stepMs, 60_000);
      const viewers = body.panels.find((p: { id: string }) => p.id === "viewers");
      const series = viewers.series.find((s: { tags: Record<string, string> }) =>
        s.tags.stream_id === id
      );
      assert.ok(series.points.length >= 1);
      assert.equal(series.points.at(-1)[1], 42);
      const system = JSON.parse((await get(`${rt.url}/dashboards/system?range=10m&step=1m`)).text);
      assert.ok(system.panels.find((p: { id: string }) => p.id === "memory").series.length >= 1);
      assert.equal((await get(`${rt.url}/dashboards/nope`)).status, 404);
      const bad = await get(`${rt.url}/dashboards/streams?range=forever`);
      assert.equal(bad.status, 400);
      assert.equal(JSON.parse(bad.text).error.code, "VALIDATION_FAILED");
    });

    await t.step("the console page links the plan's seven dashboards", async () => {
      const res = await get(`${rt.url}/`);
      assert.equal(res.status, 200);
      assert.match(res.type ?? "", /^text\/html/);
      assert.doesNotMatch(res.text, /Dashboards unavailable/);
      for (
        const name of ["sessions", "mfa", "backup", "replication", "database", "cache", "system"]
      ) {
        assert.ok(
          res.text.includes(`<a href="/dashboards/${name}">/dashboards/${name}</a>`),
          `the console links /dashboards/${name}`,
        );
      }
    });

    await t.step("an alert fires and resolves: log, webhook and cluster event", async () => {
      await updateViewerCount(rt.db.sql, stream.id, { viewers: 150 });
      await eventually(async () => {
        await vm.flush();
        return hook.received.some((p) => p.rule === "viewers_high" && p.status === "firing");
      }, { ms: 20_000, what: "the firing webhook" });
      const firing = hook.received.find((p) => p.rule === "viewers_high" && p.status === "firing")!;
      assert.equal(firing.rule, "viewers_high");
      assert.equal(firing.value, 150);
      assert.equal(firing.severity, "page");
      assert.equal(firing.instance, "metrics-a");
      assert.equal(firing.op, ">");
      assert.equal(firing.threshold, 100);
      assert.ok(
        lines.some((l) => /alert viewers_high firing: fired: 150 > 100 held for 300 ms/.test(l)),
      );
      const alerts = JSON.parse((await get(`${rt.url}/alerts`)).text).alerts;
      assert.equal(
        alerts.find((a: { rule: string }) => a.rule === "viewers_high").status,
        "firing",
      );
      assert.match(
        (await get(`${rt.url}/metrics`)).text,
        /^rootstream_alert_firing\{rule="viewers_high",severity="page"\} 1$/m,
      );
      await eventually(() => {
        const ctx = (rt.supervisor.ref("metrics")?.getSnapshot() as { context: CollectorContext })
          .context;
        return ctx.notices.some((n) =>
          n.rule === "viewers_high" && n.status === "firing" && n.instance === "metrics-a"
        );
      }, { what: "the cluster event at the metrics actor" });

      await updateViewerCount(rt.db.sql, stream.id, { viewers: 3 });
      await eventually(async () => {
        await vm.flush();
        return hook.received.some((p) => p.rule === "viewers_high" && p.status === "resolved");
      }, { ms: 20_000, what: "the resolved webhook" });
      const resolved = hook.received.find((p) =>
        p.rule === "viewers_high" && p.status === "resolved"
      )!;
      assert.equal(resolved.value, 3);
      assert.ok(lines.some((l) => /alert viewers_high resolved/.test(l)));
      assert.equal(
        hook.received.filter((p) => p.rule === "viewers_high" && p.status === "firing").length,
        1,
      );
    });

    await t.step("/health carries the metrics check", async () => {
      // Under load the writer may be mid-batch or another check still settling: wait for
      // the steady state instead of sampling one instant.
      // deno-lint-ignore no-explicit-any
      let health: any = null;
      await eventually(async () => {
        health = JSON.parse((await get(`${rt.url}/health`)).text);
        return health.status === "ok" && health.checks.metrics.writer.state === "idle";
      }, {
        what: "/health ok with the metrics writer idle",
        ms: 20_000,
        state: () => health?.checks,
      });
      assert.equal(health.status, "ok", JSON.stringify(health.checks));
      assert.equal(health.checks.metrics.ok, true);
      assert.equal(health.checks.metrics.writer.state, "idle");
      assert.match(health.checks.metrics.reader, /^PromQL http:\/\/127\.0\.0\.1:/);
    });
  } finally {
    await rt.stop();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
  assert.ok(lines.some((l) => /metrics writer closed/.test(l)));
});

Deno.test("metrics concern without INFLUX_URL", async (t) => {
  await using pg = await startPostgres();
  const lines: string[] = [];
  const log = createLogger("rs", { sink: (l) => lines.push(l) });
  const dataDir = await Deno.makeTempDir({ prefix: "rs-metrics-" });
  const config = loadConfig({
    env: {
      DATABASE_URL: await pg.createDatabase(),
      RS_SECRET_KEY: KEY,
      RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
      RS_PORT: "0",
      RS_DATA_DIR: dataDir,
      DATABASE_CONNECT_TIMEOUT_S: "5",
    },
    args: [],
  });
  const rt = await startRuntime(config, {
    log,
    concerns: {
      metrics: (services) =>
        createMetricsConcern(
          services,
          loadMetricsSettings({
            METRICS_INTERVAL_MS: "100",
            ALERT_RULES: '[{"name":"x","measurement":"m","field":"f","op":">","threshold":1}]',
          }),
        ),
    },
  });
  try {
    await t.step("collects and serves /metrics; says what is unavailable", async () => {
      await eventually(
        async () =>
          (await get(`${rt.url}/metrics`)).text.includes("rootstream_database_size_bytes"),
        { what: "the database size in /metrics (first collection)" },
      );
      const text = (await get(`${rt.url}/metrics`)).text;
      assert.doesNotMatch(text, /rootstream_metrics_points_written_total/);
      assert.doesNotMatch(text, /rootstream_cache_/, "no Redis, no cache source");
      assert.ok(lines.some((l) => /INFLUX_URL is not set; metrics are collected/.test(l)));
      assert.ok(lines.some((l) => /1 configured alert rules are not evaluated/.test(l)));
      const res = await get(`${rt.url}/dashboards/streams`);
      assert.equal(res.status, 503);
      assert.equal(JSON.parse(res.text).error.code, "METRICS_UNAVAILABLE");
      const health = JSON.parse((await get(`${rt.url}/health`)).text);
      assert.equal(health.checks.metrics.ok, true);
      assert.match(health.checks.metrics.writer, /disabled/);
      // Every rule (the defaults and the configured one) is listed, saying why it is idle.
      const alerts = JSON.parse((await get(`${rt.url}/alerts`)).text).alerts as {
        rule: string;
        status: string;
        reason: string;
      }[];
      assert.ok(
        alerts.some((a) => a.rule === "x") && alerts.some((a) => a.rule === "failed_logins"),
      );
      for (const a of alerts) {
        assert.equal(a.status, "inactive");
        assert.equal(a.reason, "not evaluated: INFLUX_URL is not set");
      }
    });
  } finally {
    await rt.stop();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});
