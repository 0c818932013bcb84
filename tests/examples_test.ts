/**
 * The programs in examples/ run as written (each as its own process) against real
 * servers, and end with status 0.
 */
import assert from "node:assert/strict";
import { startPostgres, startRedis } from "./harness/mod.ts";
import { startVictoriaMetrics } from "./support/metrics_servers.ts";
import { ROOT } from "./support/instance.ts";

async function runExample(file: string, env: Record<string, string>): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", `examples/${file}`],
    cwd: ROOT,
    env: { ...env, NO_COLOR: "1", RUST_BACKTRACE: "0" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, `${file}:\n${text}\n${new TextDecoder().decode(out.stderr)}`);
  return text;
}

Deno.test("examples run as written", async (t) => {
  await using pg = await startPostgres();
  await using redis = await startRedis();
  const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));

  await t.step("session + MFA", async () => {
    const out = await runExample("session_mfa.ts", {
      DATABASE_URL: await pg.createDatabase(),
      REDIS_URL: redis.url,
      RS_SECRET_KEY: key,
      RS_KEY_PREFIX: "ex1:",
    });
    assert.match(out, /MFA on for player\d+; 10 backup codes issued/);
    assert.match(out, /first session revoked: true/);
  });

  await t.step("state sync across two instances", async () => {
    const out = await runExample("state_sync.ts", {
      DATABASE_URL: await pg.createDatabase(),
      REDIS_URL: redis.url,
      RS_SECRET_KEY: key,
      RS_KEY_PREFIX: "ex2:",
    });
    assert.match(out, /instance b received/);
    assert.match(out, /"viewers":5\},\{.*"viewers":5\}/);
  });

  await t.step("metrics written, read back, exposed", async () => {
    await using vm = await startVictoriaMetrics();
    const out = await runExample("metrics.ts", {
      DATABASE_URL: await pg.createDatabase(),
      RS_SECRET_KEY: key,
      INFLUX_URL: vm.url,
      INFLUX_TOKEN: "unused-by-victoria-metrics",
      INFLUX_ORG: "rootstream",
      INFLUX_BUCKET: "metrics",
      METRICS_QUERY_LANGUAGE: "promql",
    });
    assert.match(out, /written: 60 points/);
    assert.match(out, /read back: 60 points/);
    assert.match(out, /^rootstream_/m);
  });
});
