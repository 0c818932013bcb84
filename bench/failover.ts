/**
 * Failover suite: kill -9 of the PostgreSQL primary under continuous writes, several
 * trials (BENCH_FAILOVER_TRIALS, default 5), each on a fresh cluster (primary + 2 streaming
 * replicas, synchronous mode) with three runtime instances on the default detection
 * settings; writers go through the instances (POST /replication/canary).
 *
 * Figures (time from the kill to the first write the NEW primary accepted, through an
 * instance): failover_median_s, failover_max_s — baseline: the raw operation, kill -9 then
 * pg_promote at once and the first INSERT accepted, with no detection, measured in the same
 * run; lost_acked_writes — acknowledged writes missing on the new primary, summed over the
 * trials (0 expected in synchronous mode).
 * @module
 */
import postgres from "postgres";
import { startPostgres, startRedis, startReplica } from "../tests/harness/mod.ts";
import { until } from "../tests/support/instance.ts";
import {
  randomKey,
  replication,
  startInstances,
  startPgCluster,
  startWriters,
  untilAllFollow,
} from "../tests/support/pg_cluster.ts";
import { type Figure, median, progress, round } from "./_util.ts";
import { TEST_ADMIN_TOKEN } from "../tests/support/auth.ts";

const TRIALS = Number(Deno.env.get("BENCH_FAILOVER_TRIALS") ?? 5);
const TOKEN = TEST_ADMIN_TOKEN;

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

/** One kill -9 trial; returns seconds to the first accepted write and the lost writes. */
async function trial(i: number, redisUrl: string): Promise<{ seconds: number; lost: number }> {
  await using cluster = await startPgCluster();
  await using instances = await startInstances(["bench-a", "bench-b", "bench-c"], {
    DATABASE_URL: cluster.url("pg1"),
    DATABASE_NODES: cluster.databaseNodes,
    REDIS_URL: redisUrl,
    RS_SECRET_KEY: randomKey(),
    RS_KEY_PREFIX: `rsbf${i}:`,
    RS_HEARTBEAT_MS: "250",
    RS_DEAD_AFTER_MS: "1000",
    RS_LEASE_TTL_MS: "1500",
    // Detection with the production defaults: a probe every 500 ms, 1000 ms probe timeout,
    // 3 consecutive failures, then a vote.
    FAILOVER_SYNC_MODE: "on",
    RS_ADMIN_TOKEN: TOKEN,
    LOG_LEVEL: "warn",
  });
  const urls = Object.values(instances.byId).map((p) => p.url);
  await until(async () => {
    const v = await replication(urls[0]);
    return v.primary?.epoch >= 1 &&
      v.nodes.filter((n: { syncState: string }) => n.syncState === "quorum").length === 2;
  }, { ms: 30_000, what: "synchronous replication set up" });
  await untilAllFollow(urls, { node: "pg1" });
  const before = await replication(urls[0]);
  const writers = startWriters(
    Object.fromEntries(Object.entries(instances.byId).map(([id, p]) => [id, p.url])),
    { token: TOKEN, pauseMs: 5 },
  );
  try {
    await sleep(1500);
    const killedAt = performance.now();
    await cluster.kill("pg1");
    await untilAllFollow(urls, { afterEpoch: before.primary.epoch, ms: 30_000 });
    const primary = (await replication(urls[0])).primary.node as string;
    await until(() => writers.acked.some((w) => w.node === primary), {
      ms: 15_000,
      what: `a write acknowledged by the new primary ${primary}`,
    });
    await sleep(200);
    await writers.stop();
    const first = Math.min(
      ...writers.acked.filter((w) => w.node === primary && w.doneAt > killedAt).map((w) =>
        w.doneAt
      ),
    );
    const ids = writers.acked.map((w) => w.id);
    const have = new Set(
      (await cluster.psql(
        primary,
        `select id from replication_canary where id = any('{${ids.join(",")}}'::bigint[])`,
      )).split("\n").filter(Boolean).map(Number),
    );
    const lost = ids.filter((id) => !have.has(id)).length;
    const seconds = (first - killedAt) / 1000;
    progress(
      `failover: trial ${i + 1}/${TRIALS}: kill -9 -> first write on ${primary} ${
        seconds.toFixed(2)
      } s; acked ${ids.length}, lost ${lost}, failed requests ${writers.failed.length}`,
    );
    return { seconds, lost };
  } finally {
    await writers.stop();
  }
}

/** Raw: kill -9 of the primary, pg_promote at once, first INSERT accepted. */
async function rawTrial(i: number): Promise<number> {
  await using primary = await startPostgres({ name: `raw${i}a` });
  await using replica = await startReplica(primary, { name: `raw${i}b` });
  const setup = postgres(primary.url, { max: 1, onnotice: () => {} });
  await setup`CREATE TABLE t (id bigint)`;
  await setup.end();
  await until(async () => (await replica.psql("select to_regclass('t') is not null")) === "t", {
    what: "table t replayed on the replica",
  });
  const sql = postgres(replica.url, { max: 1, onnotice: () => {} });
  try {
    const killedAt = performance.now();
    await primary.kill("SIGKILL");
    await sql`SELECT pg_promote(true, 60)`;
    while (true) {
      try {
        await sql`INSERT INTO t VALUES (1)`;
        break;
      } catch {
        await sleep(5);
      }
    }
    return (performance.now() - killedAt) / 1000;
  } finally {
    await sql.end();
  }
}

/** Runs the suite. */
export async function run(): Promise<Figure[]> {
  progress(`failover: ${TRIALS} kill -9 trials, each on a fresh 3-node cluster`);
  await using redis = await startRedis();
  const times: number[] = [];
  let lost = 0;
  for (let i = 0; i < TRIALS; i++) {
    const r = await trial(i, redis.url);
    times.push(r.seconds);
    lost += r.lost;
  }
  progress(`failover: ${TRIALS} raw trials (kill -9, pg_promote at once)`);
  const raw: number[] = [];
  for (let i = 0; i < TRIALS; i++) raw.push(await rawTrial(i));
  return [
    {
      suite: "failover",
      name: "failover_median_s",
      unit: "s",
      value: round(median(times)),
      better: "lower",
      baseline: { name: "raw_promote_median_s", value: round(median(raw)) },
    },
    {
      suite: "failover",
      name: "failover_max_s",
      unit: "s",
      value: round(Math.max(...times)),
      better: "lower",
      baseline: { name: "raw_promote_max_s", value: round(Math.max(...raw)) },
    },
    {
      suite: "failover",
      name: "lost_acked_writes",
      unit: "writes",
      value: lost,
      better: "lower",
      baseline: null,
    },
  ];
}
