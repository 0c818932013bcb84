/**
 * deploy/grafana/: the provisioning files are what actors/metrics/grafana.ts makes from the
 * dashboards, have the shape Grafana's dashboard schema requires (schemaVersion, uid, panels
 * with id, type, gridPos, datasource and targets with refIds), reference only catalogued
 * measurements and fields, point at the provisioned data sources, and their queries run:
 * every InfluxQL target against a real InfluxDB, every PromQL target against a real
 * VictoriaMetrics, each answering with data once every catalogued field has a point.
 */
import assert from "node:assert/strict";
import { parse } from "yaml";
import { z } from "zod";
import { DASHBOARDS, renderDashboard } from "../../actors/metrics/dashboards.ts";
import { createInfluxQlReader } from "../../actors/metrics/influxql_reader.ts";
import { createPromQlReader } from "../../actors/metrics/promql_reader.ts";
import type { MetricsReader } from "../../actors/metrics/reader.ts";
import { METRIC_DEFS } from "../../actors/metrics/catalog.ts";
import { GRAFANA_DATASOURCES, grafanaFiles } from "../../actors/metrics/grafana.ts";
import { GRAFANA_DIR, staleGrafanaFiles } from "../../cli/grafana.ts";
import { formatPoint, type MetricPoint } from "../../lib/line_protocol.ts";
import { startInfluxDb, startVictoriaMetrics } from "../support/metrics_servers.ts";

/** Panel types Grafana ships (the ones a provisioned dashboard may use). */
const PANEL_TYPES = ["timeseries", "stat", "gauge", "bargauge", "table", "text", "row"];

const target = z.object({
  refId: z.string().regex(/^[A-Z]$/),
  datasource: z.object({ type: z.string(), uid: z.string() }),
}).and(z.union([
  z.object({ query: z.string().min(1), rawQuery: z.literal(true), resultFormat: z.string() }),
  z.object({ expr: z.string().min(1), legendFormat: z.string() }),
]));

/** The required part of Grafana's dashboard JSON schema (schemaVersion 39). */
const dashboardSchema = z.object({
  uid: z.string().regex(/^[a-zA-Z0-9_-]{1,40}$/),
  title: z.string().min(1),
  schemaVersion: z.number().int().min(36),
  version: z.number().int(),
  editable: z.boolean(),
  time: z.object({ from: z.string(), to: z.string() }),
  tags: z.array(z.string()),
  templating: z.object({ list: z.array(z.unknown()) }),
  annotations: z.object({ list: z.array(z.unknown()) }),
  panels: z.array(z.object({
    id: z.number().int().positive(),
    type: z.enum(PANEL_TYPES),
    title: z.string().min(1),
    datasource: z.object({ type: z.string(), uid: z.string() }),
    gridPos: z.object({
      h: z.number().int().positive(),
      w: z.number().int().min(1).max(24),
      x: z.number().int().min(0).max(23),
      y: z.number().int().min(0),
    }),
    fieldConfig: z.object({ defaults: z.looseObject({}), overrides: z.array(z.unknown()) }),
    targets: z.array(target).min(1),
  })).min(1),
});

const CATALOGUE = new Set(METRIC_DEFS.map((d) => `${d.measurement}.${d.field}`));

/** The measurement and field an InfluxQL or PromQL target reads. */
function reference(t: { query?: string; expr?: string }): string {
  if (t.query) {
    const m = /^SELECT \w+\("([^"]+)"\) FROM "([^"]+)" WHERE \$timeFilter/.exec(t.query);
    assert.ok(m, t.query);
    return `${m[2]}.${m[1]}`;
  }
  const m = /__name__="([^"]+)"/.exec(t.expr!);
  assert.ok(m, t.expr);
  const def = METRIC_DEFS.find((d) => `${d.measurement}_${d.field}` === m[1]);
  return def ? `${def.measurement}.${def.field}` : m[1];
}

/** The dashboards as provisioned. */
async function provisioned() {
  const out: { language: string; name: string; json: z.infer<typeof dashboardSchema> }[] = [];
  for (const language of ["influxql", "promql"]) {
    for (const name of Object.keys(DASHBOARDS)) {
      const text = await Deno.readTextFile(`${GRAFANA_DIR}dashboards/${language}/${name}.json`);
      out.push({ language, name, json: dashboardSchema.parse(JSON.parse(text)) });
    }
  }
  return out;
}

/** A point for every catalogued field, tagged with every tag key, every 10 s for 10 minutes. */
function catalogPoints(end: number): MetricPoint[] {
  const points: MetricPoint[] = [];
  for (let at = end - 600_000; at <= end; at += 10_000) {
    for (const d of METRIC_DEFS) {
      points.push({
        measurement: d.measurement,
        tags: Object.fromEntries(d.tags.map((k) => [k, `${k}-1`])),
        fields: { [d.field]: 1 + (at % 7) },
        time: at,
      });
    }
  }
  return points;
}

/** Every panel of every runtime dashboard answers with series (renderDashboard, a reader). */
async function everyPanelAnswers(reader: MetricsReader, end: number) {
  for (const d of Object.values(DASHBOARDS)) {
    const data = await renderDashboard(reader, d, { start: end - 900_000, end, stepMs: 60_000 });
    for (const p of data.panels) {
      assert.equal(p.error, undefined, `${d.name} ${p.title}: ${p.error}`);
      assert.ok(p.series.length, `${d.name} ${p.title} (${reader.describe}): no series`);
    }
  }
}

Deno.test("Grafana provisioning (deploy/grafana)", async (t) => {
  await t.step("the files are current (deno task cli grafana write)", async () => {
    assert.deepEqual(await staleGrafanaFiles(), []);
    const listed = [...grafanaFiles(DASHBOARDS).keys()].sort();
    const onDisk: string[] = [];
    const walk = async (dir: string, prefix: string) => {
      for await (const e of Deno.readDir(dir)) {
        if (e.isDirectory) await walk(`${dir}${e.name}/`, `${prefix}${e.name}/`);
        else onDisk.push(prefix + e.name);
      }
    };
    await walk(GRAFANA_DIR, "");
    assert.deepEqual(onDisk.sort(), listed, "no file there that the generator does not make");
  });

  await t.step("every dashboard has Grafana's dashboard shape", async () => {
    const all = await provisioned();
    // The plan's seven dashboards (and streams), for both query languages.
    for (
      const name of [
        "sessions",
        "mfa",
        "backup",
        "replication",
        "database",
        "cache",
        "system",
      ]
    ) {
      assert.ok(all.some((d) => d.name === name && d.language === "influxql"), name);
      assert.ok(all.some((d) => d.name === name && d.language === "promql"), name);
    }
    const uids = new Set(all.map((d) => d.json.uid));
    assert.equal(uids.size, all.length, "dashboard uids are unique");
    for (const { json, language } of all) {
      const ids = json.panels.map((p) => p.id);
      assert.equal(new Set(ids).size, ids.length, `${json.uid}: panel ids unique`);
      const ds = GRAFANA_DATASOURCES[language as "influxql" | "promql"];
      const cells = new Set<string>();
      for (const p of json.panels) {
        assert.ok(p.gridPos.x + p.gridPos.w <= 24, `${json.uid} ${p.title}: inside 24 columns`);
        for (let x = p.gridPos.x; x < p.gridPos.x + p.gridPos.w; x++) {
          for (let y = p.gridPos.y; y < p.gridPos.y + p.gridPos.h; y++) {
            assert.ok(!cells.has(`${x},${y}`), `${json.uid} ${p.title}: panels do not overlap`);
            cells.add(`${x},${y}`);
          }
        }
        assert.deepEqual(p.datasource, { type: ds.type, uid: ds.uid });
        const refs = p.targets.map((tg) => tg.refId);
        assert.equal(new Set(refs).size, refs.length, `${json.uid} ${p.title}: refIds unique`);
        for (const tg of p.targets) {
          assert.deepEqual(tg.datasource, p.datasource);
          const ref = reference(tg as { query?: string; expr?: string });
          assert.ok(CATALOGUE.has(ref), `${json.uid} ${p.title}: ${ref} is not catalogued`);
        }
      }
    }
  });

  await t.step("data sources and providers point at what the dashboards use", async () => {
    const ds = parse(
      await Deno.readTextFile(`${GRAFANA_DIR}provisioning/datasources/rootstream.yaml`),
    ) as { apiVersion: number; datasources: Record<string, unknown>[] };
    assert.equal(ds.apiVersion, 1);
    const byUid = new Map(ds.datasources.map((d) => [d.uid, d]));
    for (const want of Object.values(GRAFANA_DATASOURCES)) {
      const got = byUid.get(want.uid);
      assert.ok(got, want.uid);
      assert.equal(got.type, want.type);
      assert.equal(got.access, "proxy");
      assert.equal(typeof got.url, "string");
    }
    assert.equal(
      (byUid.get("rootstream-influxdb")!.jsonData as { dbName: string }).dbName,
      "${INFLUX_BUCKET}",
    );
    const providers = parse(
      await Deno.readTextFile(`${GRAFANA_DIR}provisioning/dashboards/rootstream.yaml`),
    ) as { providers: { type: string; options: { path: string } }[] };
    assert.deepEqual(
      providers.providers.map((p) => p.options.path.split("/").at(-1)).sort(),
      ["influxql", "promql"],
    );
  });

  const end = Math.floor(Date.now() / 10_000) * 10_000 - 60_000;
  const points = catalogPoints(end);
  const all = await provisioned();

  await t.step("every InfluxQL target runs on InfluxDB and answers with data", async () => {
    await using influx = await startInfluxDb();
    const db = await influx.createDatabase();
    await influx.write(db, points.map((p) => formatPoint(p)).join("\n"));
    for (const { json } of all.filter((d) => d.language === "influxql")) {
      for (const p of json.panels) {
        for (const tg of p.targets as { query: string }[]) {
          const q = tg.query
            .replace("$timeFilter", `time > ${end - 900_000}ms AND time <= ${end}ms`)
            .replace("$__interval", "1m");
          const answer = await influx.query(q, { db, epoch: "ms" });
          assert.equal(answer.error, undefined, q);
          assert.equal(answer.results[0].error, undefined, `${q}: ${answer.results[0].error}`);
          assert.ok(answer.results[0].series?.length, `${json.uid} ${p.title}: no data for ${q}`);
        }
      }
    }
    // The same dashboards as GET /dashboards/<name> serves them, through the InfluxQL reader.
    await everyPanelAnswers(createInfluxQlReader({ url: influx.url, database: db }), end);
  });

  await t.step("every PromQL target runs on VictoriaMetrics and answers with data", async () => {
    await using vm = await startVictoriaMetrics();
    const res = await fetch(`${vm.url}/write?precision=ms`, {
      method: "POST",
      body: points.map((p) => formatPoint(p)).join("\n"),
    });
    await res.body?.cancel();
    assert.equal(res.status, 204);
    await vm.flush();
    for (const { json } of all.filter((d) => d.language === "promql")) {
      for (const p of json.panels) {
        for (const tg of p.targets as { expr: string }[]) {
          const q = tg.expr.replaceAll("$__interval", "2m");
          const result = await vm.query(q, end);
          assert.ok(result.length, `${json.uid} ${p.title}: no data for ${q}`);
        }
      }
    }
    await everyPanelAnswers(createPromQlReader({ url: vm.url }), end);
  });
});
