/**
 * Regression (found by the chaos soak, docs/testing.md): an instance restarted while Redis
 * named no primary — it did not answer, or it had lost the published record in a restart
 * or a Sentinel switch — opened its pool on DATABASE_URL labelled epoch 0 and acknowledged
 * canary writes as epoch 0 after the cluster had agreed on epoch 1. The pool now takes the
 * epoch the database itself recorded (failover_history).
 *
 * Here the failover lease is held elsewhere and nothing is published, so no coordinator
 * publishes while the test looks: what the canary shows is the epoch the pool started with.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { migrate } from "../../store/migrations.ts";
import { insertFailoverRecord } from "../../store/replication.ts";
import { leaseTag } from "../../store/redis_leases.ts";
import type { Sql } from "../../store/types.ts";
import { silentLogger } from "../../lib/log.ts";
import { startPostgres, startRedis } from "../harness/mod.ts";
import { ADMIN_HEADERS, TEST_ADMIN_TOKEN } from "../support/auth.ts";
import { launchInstance } from "../support/instance.ts";
import { randomKey } from "../support/pg_cluster.ts";

Deno.test("a pool opened without a published primary is labelled with the recorded epoch", async () => {
  await using pg = await startPostgres({ name: "startup-epoch" });
  await using redis = await startRedis();
  const url = await pg.createDatabase("app");
  const sql = postgres(url, { max: 2, onnotice: () => {} }) as Sql;
  try {
    await migrate(sql, { log: silentLogger });
    await insertFailoverRecord(sql, {
      kind: "failover",
      oldPrimary: "pg0",
      newPrimary: "pg1",
      reason: "an earlier failover",
      initiatedBy: "elsewhere",
      startedAt: new Date(),
      completedAt: new Date(),
      status: "completed",
      errorMessage: null,
      epoch: 3,
      fencingToken: 1,
      details: {},
    });
  } finally {
    await sql.end();
  }
  const prefix = "rsepoch:";
  // Another coordinator holds the failover lease: nothing is published while this runs.
  await redis.cli(
    "SET",
    `${prefix}lease:${leaseTag("failover")}`,
    JSON.stringify({ holder: "elsewhere", token: 1 }),
    "PX",
    "600000",
  );
  const dataDir = await Deno.makeTempDir({ prefix: "rs-epoch-" });
  const instance = await launchInstance({
    RS_INSTANCE_ID: "epoch-a",
    RS_PORT: "0",
    RS_DATA_DIR: dataDir,
    DATABASE_URL: url,
    DATABASE_NODES: `pg1=${url}`,
    REDIS_URL: redis.url,
    RS_KEY_PREFIX: prefix,
    RS_SECRET_KEY: randomKey(),
    RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
  });
  try {
    const res = await fetch(`${instance.url}/replication/canary`, {
      method: "POST",
      headers: ADMIN_HEADERS,
    });
    const body = await res.json();
    assert.equal(res.status, 200, JSON.stringify(body));
    assert.equal(body.epoch, 3, `canary labelled ${body.epoch}, the database recorded 3`);
  } finally {
    await instance.stop("SIGTERM");
    await Deno.remove(dataDir, { recursive: true });
  }
});
