import assert from "node:assert/strict";
import {
  escapeKey,
  escapeMeasurement,
  formatPoint,
  formatPoints,
  type MetricPoint,
  storedMeasurement,
  storedText,
} from "../../lib/line_protocol.ts";
import { createInfluxQlReader } from "../../actors/metrics/influxql_reader.ts";
import { createPromQlReader } from "../../actors/metrics/promql_reader.ts";
import { createInfluxWriter } from "../../actors/metrics/writer.ts";
import { startInfluxDb, startVictoriaMetrics } from "../support/metrics_servers.ts";

const T = 1_700_000_000_000;

/** Names and values that would break or inject into unescaped line protocol. */
const HOSTILE: MetricPoint[] = [
  { measurement: "#comment", tags: { t: "a" }, fields: { v: 1 }, time: T },
  {
    measurement: "inj",
    tags: { t: "a\nevil value=666 1", u: "x,y=z w", q: `q"s'` },
    fields: { "f ield=": 3 },
    time: T,
  },
  { measurement: "tab\there", tags: { t: "\x01ctl" }, fields: { v: 4 }, time: T },
  { measurement: "sp ace,comma", tags: { "k=ey": "v" }, fields: { v: 5 }, time: T },
];

Deno.test("line protocol formatting", async (t) => {
  await t.step("formats a point with tags, float fields and a ms timestamp", () => {
    assert.equal(
      formatPoint({
        measurement: "stream_viewers",
        tags: { stream_id: "7", user_id: 3 },
        fields: { count: 150, ratio: 0.25 },
        time: T + 0.9,
      }),
      `stream_viewers,stream_id=7,user_id=3 count=150,ratio=0.25 ${T}`,
    );
  });

  await t.step("escapes every special character and never starts a new line", () => {
    assert.equal(escapeMeasurement("a b,c=d\\e"), "a\\ b\\,c=d\\\\e");
    assert.equal(escapeMeasurement("#x"), "\\#x");
    assert.equal(escapeKey("a b,c=d\\e"), "a\\ b\\,c\\=d\\\\e");
    assert.equal(escapeKey("l1\nl2\r\t\x00"), "l1\\nl2\\r\\t\\x00");
    const line = formatPoint(HOSTILE[1])!;
    assert.equal(
      line,
      `inj,t=a\\nevil\\ value\\=666\\ 1,u=x\\,y\\=z\\ w,q=q"s' f\\ ield\\==3 ${T}`,
    );
    for (const p of HOSTILE) assert.doesNotMatch(formatPoint(p)!, /[\n\r]/);
  });

  await t.step("leaves out what line protocol cannot carry", () => {
    assert.equal(
      formatPoint({
        measurement: "m",
        tags: { empty: "", gone: undefined, nil: null },
        fields: { nan: NaN, inf: Infinity, ok: -0, none: null },
        time: T,
      }),
      `m ok=0 ${T}`,
    );
    assert.equal(formatPoint({ measurement: "m", fields: { v: NaN }, time: T }), null);
    assert.equal(formatPoint({ measurement: "", fields: { v: 1 }, time: T }), null);
    assert.equal(formatPoint({ measurement: "m", fields: { v: 1 }, time: NaN }), null);
    const out: string[] = [];
    assert.equal(formatPoints([HOSTILE[0], { measurement: "", fields: {}, time: T }], out), 1);
    assert.equal(out.length, 1);
  });

  await t.step("stored forms are what readers must ask for", () => {
    assert.equal(storedText("a\nb\x01"), "a\\nb\\x01");
    assert.equal(storedText("plain, text=ok"), "plain, text=ok");
    assert.equal(storedMeasurement("#c"), "\\#c");
  });
});

Deno.test("hostile names reach real servers escaped, not injected", async (t) => {
  await using vm = await startVictoriaMetrics();
  await using influx = await startInfluxDb();
  const db = await influx.createDatabase();
  const now = Date.now() - 60_000;
  const points = HOSTILE.map((p) => ({ ...p, time: now }));
  // InfluxDB 1.x reads backslashes the v1 way; this value round-trips on v2 servers only.
  const v2Only: MetricPoint = {
    measurement: "back\\slash",
    tags: { t: "end\\" },
    fields: { v: 6 },
    time: now,
  };

  await t.step("VictoriaMetrics (/api/v2/write) stores exactly the stored forms", async () => {
    const writer = createInfluxWriter({ url: vm.url, org: "o", bucket: "b" });
    writer.write([...points, v2Only]);
    const stats = await writer.close();
    assert.equal(stats.written, 5);
    await vm.flush();
    const series = await vm.series('{__name__=~".+"}');
    const names = series.map((s) => s.__name__).sort();
    assert.deepEqual(names, [
      "\\#comment_v",
      "back\\slash_v",
      "inj_f ield=",
      "sp ace,comma_v",
      "tab\\there_v",
    ]);
    const inj = series.find((s) => s.__name__ === "inj_f ield=")!;
    assert.deepEqual(
      { t: inj.t, u: inj.u, q: inj.q },
      { t: "a\\nevil value=666 1", u: "x,y=z w", q: `q"s'` },
    );
    assert.equal(series.find((s) => s.__name__ === "back\\slash_v")!.t, "end\\");
    assert.equal(series.find((s) => s.__name__ === "sp ace,comma_v")!["k=ey"], "v");
  });

  await t.step("the PromQL reader finds each hostile series by its logical name", async () => {
    const reader = createPromQlReader({ url: vm.url });
    for (const p of [...points, v2Only]) {
      const [field] = Object.keys(p.fields);
      const where = Object.fromEntries(
        Object.entries(p.tags ?? {}).filter(([k]) => /^\w+$/.test(k)),
      ) as Record<string, string>;
      const n = await reader.count({
        measurement: p.measurement,
        field,
        where,
        start: now - 1000,
        end: now + 1000,
      });
      assert.equal(n, 1, `${p.measurement}.${field}`);
    }
  });

  await t.step("InfluxDB 1.6.7 (/write) stores them and InfluxQL reads them back", async () => {
    await influx.write(db, points.map((p) => formatPoint(p)).join("\n"));
    const shown = await influx.query("SHOW MEASUREMENTS", { db });
    assert.deepEqual(shown.results[0].series?.[0].values.flat().sort(), [
      "\\#comment",
      "inj",
      "sp ace,comma",
      "tab\\there",
    ]);
    const reader = createInfluxQlReader({ url: influx.url, database: db });
    for (const p of points) {
      const [field] = Object.keys(p.fields);
      const where = Object.fromEntries(
        Object.entries(p.tags ?? {}).filter(([k]) => /^\w+$/.test(k)),
      ) as Record<string, string>;
      const n = await reader.count({
        measurement: p.measurement,
        field,
        where,
        start: now - 1000,
        end: now + 1000,
      });
      assert.equal(n, 1, `${p.measurement}.${field}`);
    }
    // A tag value that tries to close the quote and add a clause matches nothing.
    const none = await reader.count({
      measurement: "inj",
      field: "f ield=",
      where: { t: "x' OR 'a'='a" },
      start: now - 1000,
      end: now + 1000,
    });
    assert.equal(none, 0);
  });
});
