/**
 * mod.ts as an embedding program uses it: `createRuntime({ env })` runs on the variables it
 * is given and nothing else, whatever the process environment holds.
 */
import assert from "node:assert/strict";
import { ROOT } from "./support/instance.ts";

Deno.test("createRuntime({ env }) reads no variable from the process environment", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "rs-mod-env-" });
  try {
    // Every one of these would stop start-up or point it elsewhere if it leaked in.
    const polluted = {
      RS_PORT: "http",
      DATABASE_URL: "postgres://nobody:x@127.0.0.1:1/nowhere",
      REDIS_URL: "redis://127.0.0.1:1/0",
      SESSION_TTL_S: "1",
      RS_SYNC_HEADS_MS: "soon",
      METRICS_INTERVAL_MS: "10s",
      DATABASE_NODES: "not a node list",
      BACKUP_SCHEDULE_FULL: "at two",
    };
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", "tests/fixtures/create_runtime.ts", dataDir],
      cwd: ROOT,
      env: { ...polluted, NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    assert.deepEqual(JSON.parse(new TextDecoder().decode(out.stdout)), {
      port: 8080,
      database: null,
      redis: null,
      sessionTtlMs: 43_200_000,
      syncHeadsMs: 1000,
      metricsIntervalMs: 10_000,
      failoverNodes: 0,
      backupSchedule: "0 2 * * *",
      bus: "in-process",
    });
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});
