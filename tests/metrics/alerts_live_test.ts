/**
 * A default rule end to end in a running instance with every concern on: wrong passwords
 * posted to /auth/login are journaled by the login chart, counted by the metrics concern's
 * `auth` source, written to VictoriaMetrics, read back by the `failed_logins` rule, which
 * fires (log line, webhook, /alerts, /metrics) — with no ALERT_RULES configured at all.
 */
import assert from "node:assert/strict";
import { loadConfig } from "../../concerns/config.ts";
import { createLogger } from "../../lib/log.ts";
import { startRuntime } from "../../runtime.ts";
import type { AlertPayload } from "../../actors/metrics/alerts.ts";
import { startPostgres, startRedis } from "../harness/mod.ts";
import { eventually, startVictoriaMetrics } from "../support/metrics_servers.ts";
import { ADMIN_HEADERS, TEST_ADMIN_TOKEN } from "../support/auth.ts";

const KEY = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));

Deno.test("failed_logins fires in a running instance, with no rule configured", async () => {
  await using pg = await startPostgres();
  await using redis = await startRedis();
  await using vm = await startVictoriaMetrics();
  const received: AlertPayload[] = [];
  await using hook = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    async (req) => {
      received.push(await req.json());
      return new Response(null, { status: 204 });
    },
  );
  const lines: string[] = [];
  const dataDir = await Deno.makeTempDir({ prefix: "rs-alerts-live-" });
  const config = loadConfig({
    env: {
      DATABASE_URL: await pg.createDatabase(),
      REDIS_URL: redis.url,
      RS_SECRET_KEY: KEY,
      RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
      RS_PORT: "0",
      RS_DATA_DIR: dataDir,
      RS_INSTANCE_ID: "alerts-live",
      DATABASE_CONNECT_TIMEOUT_S: "5",
      INFLUX_URL: vm.url,
      METRICS_QUERY_LANGUAGE: "promql",
      METRICS_INTERVAL_MS: "500",
      ALERT_WEBHOOK_URL: `http://127.0.0.1:${(hook.addr as Deno.NetAddr).port}/hook`,
    },
    args: [],
  });
  const rt = await startRuntime(config, {
    log: createLogger("rs", { sink: (l) => lines.push(l), level: "info" }),
  });
  try {
    // Counting starts at the auth source's first cycle (history is not replayed): wait for it,
    // or the first logins may fall before it.
    await eventually(async () => {
      const text = await (await fetch(`${rt.url}/metrics`, { headers: ADMIN_HEADERS })).text();
      return /^rootstream_metrics_source_up\{source="auth"\} 1$/m.test(text);
    }, { what: "a metrics cycle in which the auth source answered" });
    // Twelve wrong passwords, each for another (unknown) login: under the per-address limits.
    for (let i = 0; i < 12; i++) {
      const res = await fetch(`${rt.url}/auth/login`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ login: `nobody${i}@example.com`, password: "wrong password" }),
      });
      assert.equal(res.status, 401, await res.text());
    }
    await eventually(async () => {
      await vm.flush();
      return received.some((p) => p.rule === "failed_logins" && p.status === "firing");
    }, { ms: 30_000, what: "the failed_logins webhook" });
    const firing = received.find((p) => p.rule === "failed_logins")!;
    assert.equal(firing.threshold, 10);
    // It fires at the first evaluation whose minute holds more than 10 (maybe before the 12th).
    assert.ok(firing.value! > 10 && firing.value! <= 12, `value ${firing.value}`);
    assert.equal(firing.severity, "warning");
    assert.ok(lines.some((l) => /alert failed_logins firing/.test(l)));
    const alerts = (await (await fetch(`${rt.url}/alerts`, { headers: ADMIN_HEADERS })).json())
      .alerts as { rule: string; status: string }[];
    assert.equal(alerts.find((a) => a.rule === "failed_logins")?.status, "firing");
    const metrics = await (await fetch(`${rt.url}/metrics`, { headers: ADMIN_HEADERS })).text();
    assert.match(
      metrics,
      /^rootstream_alert_firing\{rule="failed_logins",severity="warning"\} 1$/m,
    );
    let counted = "";
    await eventually(async () => {
      const text = await (await fetch(`${rt.url}/metrics`, { headers: ADMIN_HEADERS })).text();
      counted =
        /^rootstream_auth_login_attempts_total\{outcome="failed"\} (\d+)$/m.exec(text)?.[1] ??
          "";
      return counted === "12";
    }, { what: "the 12 failed logins counted", state: () => counted });
  } finally {
    await rt.stop();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});
