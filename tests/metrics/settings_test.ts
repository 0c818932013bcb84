import assert from "node:assert/strict";
import { isRuntimeError } from "../../lib/errors.ts";
import { loadMetricsSettings, parseDuration } from "../../actors/metrics/settings.ts";
import { createWebhook } from "../../actors/metrics/webhook.ts";
import {
  escapeLabelValue,
  promLabelName,
  promName,
  renderExposition,
} from "../../actors/metrics/prometheus.ts";
import { gaugeFamilies } from "../../actors/metrics/catalog.ts";
import { reduceGroups } from "../../actors/metrics/alerts.ts";

function configError(pattern: RegExp) {
  return (err: unknown) => {
    assert.ok(isRuntimeError(err, "CONFIG_INVALID"), String(err));
    assert.match(err.message, pattern);
    return true;
  };
}

Deno.test("metrics settings", async (t) => {
  await t.step("defaults: nothing stored, 10 s interval, InfluxQL", () => {
    const s = loadMetricsSettings({});
    assert.equal(s.influx, null);
    assert.equal(s.intervalMs, 10_000);
    assert.equal(s.queryLanguage, "influxql");
    assert.equal(s.bufferPoints, 100_000);
    // The shipped rules are on (tests/metrics/default_rules_test.ts covers them).
    assert.ok(s.alertRules.length > 0 && s.alertRules.every((r) => r.origin === "default"));
    assert.equal(s.webhookUrl, null);
  });

  await t.step("production needs only URL, token, org and bucket", () => {
    const s = loadMetricsSettings({
      INFLUX_URL: "https://influx.example.com:8086/",
      INFLUX_TOKEN: "t0k",
      INFLUX_ORG: "acme",
      INFLUX_BUCKET: "rs",
    });
    assert.deepEqual(s.influx, {
      url: "https://influx.example.com:8086",
      token: "t0k",
      org: "acme",
      bucket: "rs",
    });
  });

  await t.step("a bad value names its variable (and hides the token)", () => {
    assert.throws(
      () => loadMetricsSettings({ INFLUX_URL: "influx:8086" }),
      configError(/INFLUX_URL must be an http\(s\) URL/),
    );
    assert.throws(
      () => loadMetricsSettings({ METRICS_INTERVAL_MS: "10s" }),
      configError(/METRICS_INTERVAL_MS must be an integer, got "10s"/),
    );
    assert.throws(
      () => loadMetricsSettings({ METRICS_QUERY_LANGUAGE: "flux" }),
      configError(/METRICS_QUERY_LANGUAGE must be influxql or promql/),
    );
    assert.throws(
      () => loadMetricsSettings({ ALERT_WEBHOOK_URL: "ftp://x" }),
      configError(/ALERT_WEBHOOK_URL/),
    );
  });

  await t.step("ALERT_RULES: JSON with durations and defaults", () => {
    const s = loadMetricsSettings({
      METRICS_INTERVAL_MS: "5000",
      ALERT_RULES: JSON.stringify({
        rules: [
          {
            name: "lag",
            measurement: "database_replication_lag",
            field: "seconds",
            op: ">",
            threshold: 5,
            for: "30s",
          },
          {
            name: "disk",
            measurement: "system_disk_usage",
            field: "percent",
            op: "<",
            threshold: 10,
            window: "5m",
            every: "1m",
            groupBy: ["mount"],
          },
        ],
      }),
    });
    const configured = s.alertRules.filter((r) => r.origin === "configured");
    assert.equal(configured.length, 2);
    const [lag, disk] = configured;
    assert.equal(lag.forMs, 30_000);
    assert.equal(lag.everyMs, 5000, "evaluated every collection interval by default");
    assert.equal(lag.windowMs, 60_000);
    assert.equal(lag.aggregate, "mean");
    assert.equal(lag.reduce, "max");
    assert.equal(lag.noData, "ok");
    assert.match(lag.summary, /mean\(database_replication_lag.seconds\) over 60000 ms > 5/);
    assert.equal(disk.reduce, "min", "a `<` rule watches the lowest series");
    assert.deepEqual(disk.groupBy, ["mount"]);
    assert.equal(disk.everyMs, 60_000);
  });

  await t.step("ALERT_RULES: a file path, and precise errors", () => {
    const files: Record<string, string> = {
      "/etc/rs/alerts.json": '[{"name":"m","measurement":"x","field":"y","op":">=","threshold":1}]',
    };
    const readTextFile = (p: string) => {
      if (!(p in files)) throw new Deno.errors.NotFound(`No such file: ${p}`);
      return files[p];
    };
    assert.equal(
      loadMetricsSettings({ ALERT_RULES: "/etc/rs/alerts.json" }, { readTextFile }).alertRules
        .find((r) => r.name === "m")?.op,
      ">=",
    );
    assert.throws(
      () => loadMetricsSettings({ ALERT_RULES: "/nope.json" }, { readTextFile }),
      configError(
        /ALERT_RULES must be JSON or the path of a readable JSON file: cannot read \/nope.json/,
      ),
    );
    assert.throws(
      () => loadMetricsSettings({ ALERT_RULES: "[{" }),
      configError(/ALERT_RULES is not valid JSON/),
    );
    assert.throws(
      () =>
        loadMetricsSettings({
          ALERT_RULES: '[{"name":"a","measurement":"m","field":"f","op":"~","threshold":1}]',
        }),
      configError(/ALERT_RULES is invalid: rule 1 field op/),
    );
    assert.throws(
      () =>
        loadMetricsSettings({
          ALERT_RULES:
            '[{"name":"a","measurement":"m","field":"f","op":">","threshold":1,"for":"soon"}]',
        }),
      configError(/rule 1 field for must be a duration/),
    );
    const dup = '{"name":"a","measurement":"m","field":"f","op":">","threshold":1}';
    assert.throws(
      () => loadMetricsSettings({ ALERT_RULES: `[${dup},${dup}]` }),
      configError(/names rule a twice/),
    );
  });

  await t.step("durations", () => {
    assert.equal(parseDuration("1500ms"), 1500);
    assert.equal(parseDuration("1.5s"), 1500);
    assert.equal(parseDuration("5m"), 300_000);
    assert.equal(parseDuration("2h"), 7_200_000);
    assert.equal(parseDuration("1d"), 86_400_000);
    assert.equal(parseDuration(250), 250);
    assert.equal(parseDuration("5 minutes"), null);
    assert.equal(parseDuration(-1), null);
  });
});

Deno.test("Prometheus exposition", async (t) => {
  await t.step("names, label values and help are sanitised and escaped", () => {
    assert.equal(promName("9 bad-name"), "_9_bad_name");
    assert.equal(promLabelName("__reserved"), "x__reserved");
    assert.equal(escapeLabelValue('a"b\\c\nd'), 'a\\"b\\\\c\\nd');
    const text = renderExposition([
      {
        name: "rootstream_x",
        help: "line one\nline two \\",
        type: "gauge",
        samples: [
          { name: "rootstream_x", labels: { mount: '/mnt/"evil"\n# TYPE fake gauge' }, value: 1 },
          { name: "rootstream_x", value: NaN },
        ],
      },
      { name: "rootstream_empty", help: "h", type: "counter", samples: [] },
    ]);
    assert.equal(
      text,
      "# HELP rootstream_x line one\\nline two \\\\\n" +
        "# TYPE rootstream_x gauge\n" +
        'rootstream_x{mount="/mnt/\\"evil\\"\\n# TYPE fake gauge"} 1\n' +
        "rootstream_x NaN\n",
    );
  });

  await t.step("gauges come from catalogued fields in base units", () => {
    const families = gaugeFamilies([
      { measurement: "stream_bitrate", tags: { stream_id: "1" }, fields: { kbps: 6000 }, time: 0 },
      { measurement: "system_cpu_usage", tags: { host: "h" }, fields: { percent: 25 }, time: 0 },
      { measurement: "uncatalogued", fields: { v: 1 }, time: 0 },
    ]);
    assert.deepEqual(
      families.map((f) => [f.name, f.samples[0].value]),
      [
        ["rootstream_stream_bitrate_bits_per_second", 6_000_000],
        ["rootstream_system_cpu_usage_ratio", 0.25],
      ],
    );
  });
});

Deno.test("alert reduction across series", () => {
  const groups = [
    { tags: { mount: "/" }, value: 40 },
    { tags: { mount: "/data" }, value: 95 },
  ];
  assert.deepEqual(reduceGroups({ reduce: "max" }, groups), {
    value: 95,
    tags: { mount: "/data" },
  });
  assert.deepEqual(reduceGroups({ reduce: "min" }, groups), { value: 40, tags: { mount: "/" } });
  assert.deepEqual(reduceGroups({ reduce: "sum" }, groups), { value: 135, tags: {} });
  assert.deepEqual(reduceGroups({ reduce: "mean" }, groups), { value: 67.5, tags: {} });
  assert.deepEqual(reduceGroups({ reduce: "max" }, []), { value: null, tags: {} });
});

Deno.test("alert webhook delivery", async (t) => {
  await t.step("retries a failing receiver with backoff and delivers in order", async () => {
    const got: unknown[] = [];
    let calls = 0;
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      async (req) => {
        calls++;
        const body = await req.json();
        if (calls === 1) return new Response("later", { status: 503 });
        got.push(body);
        return new Response(null, { status: 200 });
      },
    );
    const hook = createWebhook({
      url: `http://127.0.0.1:${(server.addr as Deno.NetAddr).port}`,
      minRetryDelayMs: 10,
    });
    hook.send({ n: 1 });
    hook.send({ n: 2 });
    await hook.close({ timeoutMs: 5000 });
    await server.shutdown();
    assert.deepEqual(got, [{ n: 1 }, { n: 2 }]);
    assert.deepEqual(hook.stats(), { sent: 2, failed: 0, dropped: 0, queued: 0, retries: 1 });
  });

  await t.step("a dead receiver costs a bounded queue and counted drops", async () => {
    const hook = createWebhook({
      url: "http://127.0.0.1:9/unreachable",
      maxQueue: 3,
      minRetryDelayMs: 10_000,
    });
    for (let i = 0; i < 10; i++) hook.send({ i });
    assert.ok(hook.stats().queued <= 3);
    assert.equal(hook.stats().dropped, 7);
    await hook.close({ timeoutMs: 50 });
    assert.equal(hook.stats().dropped, 10);
    hook.send({ late: true });
    assert.equal(hook.stats().dropped, 11);
  });
});
