import assert from "node:assert/strict";
import { loadConfig } from "../../concerns/config.ts";
import { createLogger } from "../../lib/log.ts";
import { startRuntime } from "../../runtime.ts";
import { startPostgres, startRedis } from "../harness/mod.ts";
import { eventually, startVictoriaMetrics } from "../support/metrics_servers.ts";
import { ADMIN_HEADERS, TEST_ADMIN_TOKEN } from "../support/auth.ts";

const KEY = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));

/** Runs `promtool check metrics` on an exposition; its findings (empty when clean). */
async function promtool(exposition: string): Promise<{ code: number; findings: string }> {
  const child = new Deno.Command("promtool", {
    args: ["check", "metrics"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(exposition));
  await writer.close();
  const out = await child.output();
  const text = new TextDecoder();
  return { code: out.code, findings: (text.decode(out.stdout) + text.decode(out.stderr)).trim() };
}

Deno.test("promtool check metrics finds nothing on a live instance's /metrics", async (t) => {
  await using pg = await startPostgres();
  await using redis = await startRedis();
  await using vm = await startVictoriaMetrics();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-promtool-" });
  // Every concern on (the default set), metrics stored and read, alerts evaluated.
  const config = loadConfig({
    env: {
      DATABASE_URL: await pg.createDatabase(),
      REDIS_URL: redis.url,
      RS_SECRET_KEY: KEY,
      RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
      RS_PORT: "0",
      RS_DATA_DIR: dataDir,
      RS_INSTANCE_ID: "promtool-a",
      DATABASE_CONNECT_TIMEOUT_S: "5",
      INFLUX_URL: vm.url,
      METRICS_QUERY_LANGUAGE: "promql",
      // Each source gets the interval (at most 5 s) per cycle: room for a busy machine.
      METRICS_INTERVAL_MS: "1000",
      ALERT_WEBHOOK_URL: "http://127.0.0.1:9/hook",
    },
    args: [],
  });
  const rt = await startRuntime(config, { log: createLogger("rs", { sink: () => {} }) });
  try {
    let text = "";
    const families = [
      "rootstream_metrics_source_up",
      "rootstream_transport_pending_requests",
      "rootstream_alert_firing",
      "rootstream_database_up",
      "rootstream_actor_up",
      "rootstream_sessions_active",
      "rootstream_users_active",
      "rootstream_backup_overdue",
      "rootstream_auth_login_attempts_total",
    ];
    await eventually(async () => {
      const res = await fetch(`${rt.url}/metrics`, { headers: ADMIN_HEADERS });
      text = await res.text();
      return families.every((f) => text.includes(`# TYPE ${f} `)) &&
        !/^rootstream_metrics_source_up\{[^}]*\} 0$/m.test(text);
    }, {
      ms: 30_000,
      what: "a collection in which every source answered, with every family",
      state: () => text.split("\n").filter((l) => l.startsWith("# TYPE")),
    });

    await t.step("promtool reports no finding", async () => {
      const { code, findings } = await promtool(text);
      assert.equal(findings, "", `promtool found:\n${findings}`);
      assert.equal(code, 0);
    });

    await t.step("levels are gauges in snake_case; counters only for monotonic values", () => {
      assert.match(text, /^# TYPE rootstream_transport_pending_requests gauge$/m);
      assert.match(text, /^# TYPE rootstream_transport_sent_total counter$/m);
      assert.doesNotMatch(text, /pendingRequests|deferredNow/);
      for (const line of text.split("\n")) {
        const m = /^# TYPE (\S+) (\S+)$/.exec(line);
        if (m) assert.equal(m[1].endsWith("_total"), m[2] === "counter", line);
      }
    });

    await t.step("promtool does find a camelCase level exposed as a counter", async () => {
      // The test can fail: the linter is really run and reports what the issue quoted.
      const { findings } = await promtool(
        "# HELP rootstream_transport_pendingRequests_total x\n" +
          "# TYPE rootstream_transport_pendingRequests_total counter\n" +
          "rootstream_transport_pendingRequests_total 0\n",
      );
      assert.match(findings, /camelCase/);
    });
  } finally {
    await rt.stop();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});
