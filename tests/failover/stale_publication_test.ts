/**
 * Regressions (found by the chaos soak, docs/testing.md): Redis replication is asynchronous,
 * so a Redis master kill (Sentinel failover) can bring back an older published primary —
 * pg1 at epoch 31 while failover_history said pg2 at epoch 32 — or none.
 *
 * - Start-up believed the stale record, opened a node in recovery and exited with
 *   "read-only transaction", on every restart; with no record it opened DATABASE_URL, a
 *   replica, the same way. It now opens the primary failover_history records.
 * - Nothing ever wrote the publication back: the coordinator now re-asserts it when Redis
 *   holds an older epoch or no record.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { migrate } from "../../store/migrations.ts";
import { insertFailoverRecord } from "../../store/replication.ts";
import {
  closeRedis,
  createKeyspace,
  createRedisClient,
  type RedisClient,
} from "../../store/redis.ts";
import { createFailoverStore, type FailoverStore, primaryKey } from "../../store/redis_failover.ts";
import { leaseTag } from "../../store/redis_leases.ts";
import type { Sql } from "../../store/types.ts";
import { silentLogger } from "../../lib/log.ts";
import { startRedis } from "../harness/mod.ts";
import { ADMIN_HEADERS, TEST_ADMIN_TOKEN } from "../support/auth.ts";
import { launchInstance, until } from "../support/instance.ts";
import { randomKey, startPgCluster } from "../support/pg_cluster.ts";
import { authFor } from "../support/message_auth.ts";

async function connect(url: string, prefix: string): Promise<RedisClient> {
  const client = createRedisClient({
    url,
    sentinels: [],
    sentinelMaster: "",
    sentinelPassword: null,
    keyPrefix: prefix,
  }, { name: "tester" });
  await client.connect();
  return client;
}

/** A canary write through the instance went to pg1, labelled epoch 2 (failover_history's). */
async function assertWritesRecordedPrimary(url: string): Promise<void> {
  const res = await fetch(`${url}/replication/canary`, { method: "POST", headers: ADMIN_HEADERS });
  const row = await res.json();
  assert.equal(res.status, 200, JSON.stringify(row));
  assert.equal(row.node, "pg1", `the canary went to ${row.node}`);
  assert.equal(row.epoch, 2, `canary labelled ${row.epoch}, failover_history says 2`);
}

Deno.test("start-up opens the primary failover_history records, not a stale or replica node", async (t) => {
  await using cluster = await startPgCluster({ names: ["pg1", "pg2"] });
  await using redis = await startRedis();
  // failover_history (replicated to pg2) says pg1 is the primary at epoch 2.
  const sql = postgres(cluster.url("pg1"), { max: 2, onnotice: () => {} }) as Sql;
  const replica = postgres(cluster.url("pg2"), { max: 1, onnotice: () => {} }) as Sql;
  try {
    await migrate(sql, { log: silentLogger });
    await insertFailoverRecord(sql, {
      kind: "failover",
      oldPrimary: "pg2",
      newPrimary: "pg1",
      reason: "an earlier failover",
      initiatedBy: "elsewhere",
      startedAt: new Date(),
      completedAt: new Date(),
      status: "completed",
      errorMessage: null,
      epoch: 2,
      fencingToken: 1,
      details: {},
    });
    await until(async () => {
      const [row] = await replica`SELECT to_regclass('failover_history') IS NOT NULL AS ok`;
      if (!row.ok) return false;
      const [r] = await replica`SELECT count(*)::int AS n FROM failover_history`;
      return r.n === 1;
    }, { what: "pg2 to replay the failover_history record", ms: 30_000 });
  } finally {
    await sql.end();
    await replica.end();
  }
  const prefix = "rsstale:";
  const keyspace = createKeyspace(prefix);
  const key = randomKey();
  const client = await connect(redis.url, prefix);
  const store = createFailoverStore(client, keyspace, authFor(key));
  const dataDir = await Deno.makeTempDir({ prefix: "rs-stale-" });
  // Another coordinator holds the failover lease: nothing is (re)published while this runs.
  await redis.cli(
    "SET",
    keyspace.key("lease", leaseTag("failover")),
    JSON.stringify({ holder: "elsewhere", token: 1 }),
    "PX",
    "600000",
  );
  const env = {
    RS_PORT: "0",
    RS_DATA_DIR: dataDir,
    // The configured node is the replica: the worst case after a failover.
    DATABASE_URL: cluster.url("pg2"),
    DATABASE_NODES: cluster.databaseNodes,
    REDIS_URL: redis.url,
    RS_KEY_PREFIX: prefix,
    RS_SECRET_KEY: key,
    RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
  };
  try {
    await t.step("Redis holds an older record naming the replica", async () => {
      await store.writePrimary({
        node: "pg2",
        epoch: 1,
        readOnlyNode: null,
        token: 1,
        by: "elsewhere",
        at: Date.now(),
        kind: "failover",
        why: "older than failover_history",
      });
      const instance = await launchInstance({ ...env, RS_INSTANCE_ID: "stale-a" });
      try {
        await assertWritesRecordedPrimary(instance.url);
      } finally {
        await instance.stop("SIGTERM");
      }
    });
    await t.step("Redis holds no record and DATABASE_URL is the replica", async () => {
      await client.del(primaryKey(keyspace));
      const instance = await launchInstance({ ...env, RS_INSTANCE_ID: "stale-b" });
      try {
        await assertWritesRecordedPrimary(instance.url);
      } finally {
        await instance.stop("SIGTERM");
      }
    });
    await t.step("Redis gives no answer and DATABASE_URL is the replica", async () => {
      // Redis is failing over: it takes connections but answers nothing.
      await redis.kill("SIGSTOP");
      let resumed = false;
      const watcher = postgres(cluster.url("pg1"), { max: 1, onnotice: () => {} }) as Sql;
      try {
        const launching = launchInstance({
          ...env,
          RS_INSTANCE_ID: "stale-c",
          FAILOVER_STARTUP_REDIS_WAIT_MS: "500",
        });
        launching.catch(() => {});
        // The pool opened on pg1 (the rest of start-up needs Redis, so it waits for it).
        await until(async () => {
          const [row] = await watcher`
            SELECT count(*)::int AS n FROM pg_stat_activity
             WHERE application_name = 'rootstream-stale-c'`;
          return row.n > 0;
        }, { what: "the instance's pool to open on pg1, the recorded primary", ms: 30_000 });
        await redis.kill("SIGCONT");
        resumed = true;
        const instance = await launching;
        try {
          assert.match(instance.stderr(), /waiting for Redis to name the primary/);
          await assertWritesRecordedPrimary(instance.url);
        } finally {
          await instance.stop("SIGTERM");
        }
      } finally {
        if (!resumed) await redis.kill("SIGCONT");
        await watcher.end();
      }
    });
  } finally {
    await closeRedis(client);
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("the coordinator re-asserts the publication Redis lost or rolled back", async () => {
  await using cluster = await startPgCluster({ names: ["pg1"] });
  await using redis = await startRedis();
  const prefix = "rsreassert:";
  const keyspace = createKeyspace(prefix);
  const key = randomKey();
  const client = await connect(redis.url, prefix);
  const store: FailoverStore = createFailoverStore(client, keyspace, authFor(key));
  const dataDir = await Deno.makeTempDir({ prefix: "rs-reassert-" });
  const instance = await launchInstance({
    RS_INSTANCE_ID: "reassert-a",
    RS_PORT: "0",
    RS_DATA_DIR: dataDir,
    DATABASE_URL: cluster.url("pg1"),
    DATABASE_NODES: cluster.databaseNodes,
    REDIS_URL: redis.url,
    RS_KEY_PREFIX: prefix,
    RS_SECRET_KEY: key,
    RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
    FAILOVER_PROBE_INTERVAL_MS: "100",
  });
  try {
    const first = await until(() => store.readPrimary(1000), {
      what: "the coordinator to publish pg1 (bootstrap)",
      ms: 30_000,
    });
    assert.equal(first.node, "pg1");
    // Redis lost the record (a replica without it was promoted).
    await client.del(primaryKey(keyspace));
    await until(async () => (await store.readPrimary(1000))?.epoch === first.epoch, {
      what: `the coordinator to re-assert pg1 at epoch ${first.epoch} after the record was lost`,
      ms: 30_000,
      state: () => store.readPrimary(1000),
    });
    // Redis went back to an older record.
    await store.writePrimary({
      node: "pg1",
      epoch: first.epoch - 1,
      readOnlyNode: null,
      token: null,
      by: "an older coordinator",
      at: Date.now(),
      kind: "failover",
      why: "an older publication",
    });
    const back = await until(async () => {
      const r = await store.readPrimary(1000);
      return r && r.epoch === first.epoch ? r : null;
    }, {
      what: `the coordinator to re-assert epoch ${first.epoch} over the older record`,
      ms: 30_000,
      state: () => store.readPrimary(1000),
    });
    assert.equal(back.node, "pg1");
    assert.equal(back.kind, "reassert");
  } finally {
    await instance.stop("SIGTERM");
    await closeRedis(client);
    await Deno.remove(dataDir, { recursive: true });
  }
});
