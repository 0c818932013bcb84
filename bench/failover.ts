/**
 * Failover suite. Every trial runs on a fresh cluster (primary + 2 streaming replicas,
 * synchronous mode) with three runtime instances on the default detection settings
 * (FAILOVER_FAST_PATH on); a writer on each instance writes through its pool
 * (POST /replication/canary) the whole time.
 *
 * - crash trials (BENCH_FAILOVER_TRIALS, default 10): kill -9 of the primary's postmaster;
 *   time from the kill to the first write the NEW primary accepted through an instance
 *   (`failover_crash_median_s`, `failover_max_s`). Then the old primary is started again
 *   and rejoins as a replica: time from its start to the rejoin recorded AND its canary rows
 *   matching the primary's (`rejoin_s`). Then a planned switchover back to it: time from
 *   the request to the first write it accepted (`switchover_s`).
 * - partition trials (BENCH_FAILOVER_PARTITION_TRIALS, default 3): the primary made
 *   unreachable but alive: SIGSTOP of its postmaster and every backend until the failover is
 *   done (longer than the detection window); time from the stop to the first write on the
 *   new primary (`failover_partition_median_s`).
 * - `lost_acked_writes`: acknowledged writes missing on the primary afterwards, summed
 *   over every trial (crash, switchover, partition): 0 expected in synchronous mode.
 *
 * Baseline of every time: the raw operation, kill -9 then the replica promoted at once the
 * way the product does it (`promoteNode`: pg_promote without waiting, recovery polled every
 * 10 ms) and the first INSERT accepted, with no detection, measured in the same run
 * (`raw_promote_*`).
 *
 * Targets (issue 15), checked and logged on stderr: crash median ≤ 1.0 s, crash max ≤ 1.5 s,
 * 0 acknowledged writes lost.
 * @module
 */
import postgres from "postgres";
import { startPostgres, startRedis, startReplica } from "../tests/harness/mod.ts";
import { until } from "../tests/support/instance.ts";
import {
  type PgCluster,
  postmasterPid,
  randomKey,
  replication,
  startInstances,
  startPgCluster,
  startWriters,
  untilAllFollow,
  type Writers,
} from "../tests/support/pg_cluster.ts";
import { type Figure, median, progress, round } from "./_util.ts";
import { promoteNode } from "../store/replication.ts";
import { TEST_ADMIN_TOKEN } from "../tests/support/auth.ts";

const TRIALS = Number(Deno.env.get("BENCH_FAILOVER_TRIALS") ?? 10);
const PARTITION_TRIALS = Number(Deno.env.get("BENCH_FAILOVER_PARTITION_TRIALS") ?? 3);
const TOKEN = TEST_ADMIN_TOKEN;

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

/** Acknowledged writes (of `writers`) missing on `node`. */
async function lostOn(cluster: PgCluster, node: string, writers: Writers): Promise<number> {
  const ids = writers.acked.map((w) => w.id);
  if (!ids.length) return 0;
  const have = new Set(
    (await cluster.psql(
      node,
      `select id from replication_canary where id = any('{${ids.join(",")}}'::bigint[])`,
    )).split("\n").filter(Boolean).map(Number),
  );
  return ids.filter((id) => !have.has(id)).length;
}

/** Seconds from `t0` to the first write `node` acknowledged after it. */
async function firstWriteOn(writers: Writers, node: string, t0: number): Promise<number> {
  await until(() => writers.acked.some((w) => w.node === node && w.doneAt > t0), {
    ms: 30_000,
    what: `a write acknowledged by ${node}`,
    state: () => ({ acked: writers.acked.length, failed: writers.failed.slice(-3) }),
  });
  const first = Math.min(
    ...writers.acked.filter((w) => w.node === node && w.doneAt > t0).map((w) => w.doneAt),
  );
  return (first - t0) / 1000;
}

/** A fresh cluster with three instances following pg1 in synchronous mode. */
async function setUp(i: number, redisUrl: string, tag: string) {
  const cluster = await startPgCluster();
  try {
    const instances = await startInstances(["bench-a", "bench-b", "bench-c"], {
      DATABASE_URL: cluster.url("pg1"),
      DATABASE_NODES: cluster.databaseNodes,
      REDIS_URL: redisUrl,
      RS_SECRET_KEY: randomKey(),
      RS_KEY_PREFIX: `rsbf${tag}${i}:`,
      RS_HEARTBEAT_MS: "250",
      RS_DEAD_AFTER_MS: "1000",
      RS_LEASE_TTL_MS: "1500",
      // Detection with the production defaults: a probe every 500 ms, 1000 ms probe
      // timeout, 3 consecutive failures or certain evidence (fast path), then a vote.
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
    const byId = Object.fromEntries(Object.entries(instances.byId).map(([id, p]) => [id, p.url]));
    return {
      cluster,
      instances,
      urls,
      byId,
      async [Symbol.asyncDispose]() {
        await instances[Symbol.asyncDispose]();
        await cluster[Symbol.asyncDispose]();
      },
    };
  } catch (err) {
    await cluster[Symbol.asyncDispose]();
    throw err;
  }
}

interface CrashResult {
  crash: number;
  rejoin: number;
  switchover: number;
  lost: number;
  path: string;
}

/** kill -9 of pg1 under writes, then pg1 rejoins, then a switchover back to it. */
async function crashTrial(i: number, redisUrl: string): Promise<CrashResult> {
  await using setup = await setUp(i, redisUrl, "c");
  const { cluster, urls, byId } = setup;
  const before = await replication(urls[0]);
  let writers = startWriters(byId, { token: TOKEN, pauseMs: 5 });
  let lost = 0;
  let crash: number;
  let primary: string;
  let path: string;
  try {
    await sleep(1500);
    const killedAt = performance.now();
    await cluster.kill("pg1");
    await untilAllFollow(urls, { afterEpoch: before.primary.epoch, ms: 30_000 });
    const after = await replication(urls[0]);
    primary = after.primary.node as string;
    path = /\(fast path\)/.test(after.history?.[0]?.reason ?? "") ? "fast" : "careful";
    crash = await firstWriteOn(writers, primary, killedAt);
    await sleep(200);
    await writers.stop();
    lost += await lostOn(cluster, primary, writers);
  } finally {
    await writers.stop();
  }

  // The old primary comes back and rejoins as a replica with matching data.
  const startedAt = performance.now();
  await cluster.nodes.pg1.start();
  await until(async () => {
    const v = await replication(urls[0]);
    const pg1 = v.nodes.find((n: { name: string }) => n.name === "pg1");
    return pg1?.role === "replica" && pg1?.streaming === true &&
      v.history.some((h: { kind: string; status: string }) =>
        h.kind === "rejoin" && h.status === "completed"
      );
  }, { ms: 60_000, everyMs: 20, what: "pg1 rejoined as a streaming replica" });
  const fingerprint = "select count(*) || ':' || md5(string_agg(id::text, ',' order by id)) " +
    "from replication_canary";
  await until(
    async () =>
      (await cluster.psql("pg1", fingerprint)) === (await cluster.psql(primary, fingerprint)),
    { ms: 30_000, everyMs: 20, what: "pg1 holding the same canary rows as the primary" },
  );
  const rejoin = (performance.now() - startedAt) / 1000;

  // Planned switchover back to pg1 under writes: to the first write pg1 accepted.
  writers = startWriters(byId, { token: TOKEN, pauseMs: 5 });
  let switchover: number;
  try {
    await until(() => writers.acked.filter((w) => w.node === primary).length >= 10, {
      what: `writes acknowledged by ${primary} before the switchover`,
    });
    const askedAt = performance.now();
    const res = await fetch(`${urls[0]}/failover/switchover`, {
      method: "POST",
      headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
      body: JSON.stringify({ target: "pg1" }),
    });
    const body = await res.json();
    if (res.status !== 200) throw new Error(`switchover refused: ${JSON.stringify(body)}`);
    switchover = await firstWriteOn(writers, "pg1", askedAt);
    await sleep(200);
    await writers.stop();
    lost += await lostOn(cluster, "pg1", writers);
  } finally {
    await writers.stop();
  }
  progress(
    `failover: crash trial ${i + 1}/${TRIALS}: kill -9 -> first write on ${primary} ` +
      `${crash.toFixed(2)} s (${path} path); rejoin ${rejoin.toFixed(2)} s; switchover back ` +
      `${switchover.toFixed(2)} s; lost ${lost}`,
  );
  return { crash, rejoin, switchover, lost, path };
}

/**
 * Fresh canary requests, one every `everyMs` to the instances in turn, none waiting for an
 * earlier one: a request caught on a stopped primary hangs (until the replaced pool is
 * drained), but the next ones show when the cluster takes writes again.
 */
function pollWrites(urls: string[], everyMs: number) {
  const acked: { node: string; id: number; doneAt: number }[] = [];
  const inFlight = new Set<Promise<void>>();
  let n = 0;
  const timer = setInterval(() => {
    const url = urls[n++ % urls.length];
    const p = (async () => {
      try {
        const res = await fetch(`${url}/replication/canary`, {
          method: "POST",
          headers: { authorization: `Bearer ${TOKEN}` },
          signal: AbortSignal.timeout(60_000),
        });
        const body = await res.json();
        if (res.ok) acked.push({ node: body.node, id: body.id, doneAt: performance.now() });
      } catch { /* caught by the stop or the failover: only acknowledged writes count */ }
    })();
    inFlight.add(p);
    p.finally(() => inFlight.delete(p));
  }, everyMs);
  return {
    acked,
    async stop() {
      clearInterval(timer);
      await Promise.all([...inFlight]);
    },
  };
}

/** pg1 stopped (SIGSTOP, every process) until the failover is done: alive but unreachable. */
async function partitionTrial(i: number, redisUrl: string): Promise<{ s: number; lost: number }> {
  await using setup = await setUp(i, redisUrl, "p");
  const { cluster, urls } = setup;
  const before = await replication(urls[0]);
  const writes = pollWrites(urls, 50);
  try {
    await until(() => writes.acked.filter((w) => w.node === "pg1").length >= 10, {
      what: "writes acknowledged by pg1 before the stop",
    });
    const stoppedAt = performance.now();
    cluster.pause("pg1", true);
    await untilAllFollow(urls, { afterEpoch: before.primary.epoch, ms: 60_000 });
    const after = await replication(urls[0]);
    const primary = after.primary.node as string;
    await until(() => writes.acked.some((w) => w.node === primary && w.doneAt > stoppedAt), {
      ms: 30_000,
      what: `a write acknowledged by ${primary}`,
    });
    const first = Math.min(
      ...writes.acked.filter((w) => w.node === primary && w.doneAt > stoppedAt).map((w) =>
        w.doneAt
      ),
    );
    const s = (first - stoppedAt) / 1000;
    // The coordinator killed the stopped postmaster before promoting (it runs on this
    // host); kill it here if it did not, then let the stopped backends run so they see
    // their postmaster gone and exit (a stopped process cannot), ending requests hung there.
    const pid = postmasterPid(cluster.nodes.pg1.dataDir);
    if (pid) Deno.kill(pid, "SIGKILL");
    try {
      cluster.pause("pg1", false);
    } catch { /* nothing of it runs any more */ }
    await cluster.kill("pg1");
    await writes.stop();
    const ids = writes.acked.map((w) => w.id);
    const have = new Set(
      (await cluster.psql(
        primary,
        `select id from replication_canary where id = any('{${ids.join(",")}}'::bigint[])`,
      )).split("\n").filter(Boolean).map(Number),
    );
    const lost = ids.filter((id) => !have.has(id)).length;
    progress(
      `failover: partition trial ${i + 1}/${PARTITION_TRIALS}: SIGSTOP -> first write on ` +
        `${primary} ${s.toFixed(2)} s; lost ${lost}; why: ${after.history?.[0]?.reason}`,
    );
    return { s, lost };
  } finally {
    await writes.stop();
  }
}

/**
 * Raw: kill -9 of the primary, promoted at once, first INSERT accepted. Promoted the way the
 * product promotes (`promoteNode`, store/replication.ts: `pg_promote(false)`, then
 * `pg_is_in_recovery()` every 10 ms), not `pg_promote(true)`, which PostgreSQL only checks
 * every 100 ms: the baseline is then the physical limit of the product's own method.
 */
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
    if (!(await promoteNode(sql, { waitS: 60 }))) throw new Error(`raw trial ${i}: not promoted`);
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

/** Issue 15's targets: [figure, measured, limit] (crash median, crash max, lost writes). */
function targets(median: number, max: number, lost: number): [string, number, number][] {
  return [
    ["failover_crash_median_s", median, 1.0],
    ["failover_max_s", max, 1.5],
    ["lost_acked_writes", lost, 0],
  ];
}

/** Runs the suite. */
export async function run(): Promise<Figure[]> {
  await using redis = await startRedis();
  progress(`failover: ${TRIALS} crash trials, each on a fresh 3-node cluster`);
  const crashes: CrashResult[] = [];
  for (let i = 0; i < TRIALS; i++) crashes.push(await crashTrial(i, redis.url));
  progress(`failover: ${PARTITION_TRIALS} partition trials (SIGSTOP of the primary)`);
  const partitions: { s: number; lost: number }[] = [];
  for (let i = 0; i < PARTITION_TRIALS; i++) partitions.push(await partitionTrial(i, redis.url));
  progress(`failover: ${TRIALS} raw trials (kill -9, promoted at once like the product)`);
  const raw: number[] = [];
  for (let i = 0; i < TRIALS; i++) raw.push(await rawTrial(i));
  const rawMedian = { name: "raw_promote_median_s", value: round(median(raw)) };
  const lost = crashes.reduce((n, c) => n + c.lost, 0) +
    partitions.reduce((n, p) => n + p.lost, 0);
  progress(
    `failover: paths taken on crashes: ${crashes.map((c) => c.path).join(", ")}; ` +
      `load: ${Deno.loadavg().map((l) => l.toFixed(2)).join(" ")}`,
  );
  const figure = (
    name: string,
    value: number,
    baseline: Figure["baseline"] = rawMedian,
  ): Figure => ({
    suite: "failover",
    name,
    unit: "s",
    value: round(value),
    better: "lower",
    baseline,
  });
  const crashMedian = median(crashes.map((c) => c.crash));
  const crashMax = Math.max(...crashes.map((c) => c.crash));
  if (TRIALS < 10) progress(`failover: only ${TRIALS} crash trials: the targets need ≥ 10`);
  for (const [what, value, limit] of targets(crashMedian, crashMax, lost)) {
    progress(
      `failover: target ${what} ${round(value)} (target ≤ ${limit}): ` +
        (value <= limit ? "pass" : "MISS"),
    );
  }
  return [
    figure("failover_crash_median_s", crashMedian),
    figure("failover_max_s", crashMax, {
      name: "raw_promote_max_s",
      value: round(Math.max(...raw)),
    }),
    figure("failover_partition_median_s", median(partitions.map((p) => p.s))),
    figure("rejoin_s", median(crashes.map((c) => c.rejoin))),
    figure("switchover_s", median(crashes.map((c) => c.switchover))),
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
