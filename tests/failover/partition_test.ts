/**
 * A primary alive but unreachable (every process of it SIGSTOPped for longer than the
 * detection window) is ambiguous evidence: the careful path fails over (N timed-out probes,
 * a vote), never the fast one. A client on each instance writes through its pool the whole
 * time; when the old primary wakes up (SIGCONT), no instance writes to it once the new
 * primary took a write, and no acknowledged write is lost.
 *
 * Two cases: the old primary on this host (the coordinator kills its stopped postmaster
 * before promoting, so it wakes up dead), and the old primary declared on another host
 * (FAILOVER_LOCAL_NODES without it: nobody can kill it), which wakes up alive, reachable
 * and writable — a second, stale primary — and must still take no write from any instance
 * (its rows are checked, acknowledged or not) until the rejoin fences it.
 */
import assert from "node:assert/strict";
import { startRedis } from "../harness/mod.ts";
import { until } from "../support/instance.ts";
import {
  type Instances,
  type PgCluster,
  postmasterPid,
  randomKey,
  replication,
  sentAtOfNote,
  startInstances,
  startPgCluster,
  startWriters,
  untilAllFollow,
  type Writers,
} from "../support/pg_cluster.ts";
import { TEST_ADMIN_TOKEN } from "../support/auth.ts";

/**
 * Three instances on `cluster` (quick detection, synchronous mode), returned once pg1 is the
 * published primary with two synchronous standbys and every instance follows it.
 */
async function startFollowingPg1(
  cluster: PgCluster,
  redisUrl: string,
  ids: string[],
  env: Record<string, string>,
): Promise<Instances> {
  const instances = await startInstances(ids, {
    DATABASE_URL: cluster.url("pg1"),
    DATABASE_NODES: cluster.databaseNodes,
    DATABASE_CONNECT_TIMEOUT_S: "10",
    REDIS_URL: redisUrl,
    RS_SECRET_KEY: randomKey(),
    RS_HEARTBEAT_MS: "250",
    RS_DEAD_AFTER_MS: "1000",
    RS_LEASE_TTL_MS: "1500",
    FAILOVER_PROBE_INTERVAL_MS: "200",
    FAILOVER_PROBE_TIMEOUT_MS: "1000",
    FAILOVER_CONFIRMATIONS: "3",
    FAILOVER_MONITOR_INTERVAL_MS: "500",
    FAILOVER_SYNC_MODE: "on",
    RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
    LOG_LEVEL: "info",
    ...env,
  });
  try {
    const urls = Object.values(instances.byId).map((p) => p.url);
    await until(async () => {
      const v = await replication(urls[0]);
      return v.primary?.epoch >= 1 &&
        v.nodes.filter((n: { syncState: string }) => n.syncState === "quorum").length === 2;
    }, { ms: 30_000, what: "bootstrap and synchronous standbys" });
    await untilAllFollow(urls, { node: "pg1" });
    return instances;
  } catch (e) {
    await instances[Symbol.asyncDispose]();
    throw e;
  }
}

Deno.test({
  name: "partition: a stopped primary fails over on the careful path; no stale writes",
  fn: async () => {
    await using cluster = await startPgCluster();
    await using redis = await startRedis();
    await using instances = await startFollowingPg1(cluster, redis.url, [
      "part-a",
      "part-b",
      "part-c",
    ], {
      RS_KEY_PREFIX: "rspt:",
    });
    const urls = Object.values(instances.byId).map((p) => p.url);
    const before = await replication(urls[0]);
    let writers: Writers | null = startWriters(
      Object.fromEntries(Object.entries(instances.byId).map(([id, p]) => [id, p.url])),
      { token: TEST_ADMIN_TOKEN, pauseMs: 5, timeoutMs: 60_000 },
    );
    try {
      await until(() => writers!.acked.filter((w) => w.node === "pg1").length >= 20, {
        what: "20 writes acknowledged by pg1 before the stop",
      });
      cluster.pause("pg1", true);
      await untilAllFollow(urls, { afterEpoch: before.primary.epoch, ms: 30_000 });
      const now = await replication(urls[0]);
      const newPrimary = now.primary.node as string;
      assert.notEqual(newPrimary, "pg1");
      const reason = now.history[0].reason as string;
      // Timeouts are ambiguous: the careful path (N failed probes, then the vote), and the
      // stopped postmaster on this host is killed before the promotion.
      assert.match(
        reason,
        /^pg1 failed \d+ consecutive probes \(last: .*no answer.*\) and [23] of 3 live instances agree: failing over; promoted pg[23] because .*killed pg1's unresponsive postmaster \(pid \d+\) on this host first/,
      );
      assert.doesNotMatch(reason, /fast path/);
      // The old primary wakes up: what is left of it sees its postmaster gone.
      cluster.pause("pg1", false);
      await until(() => writers!.acked.filter((w) => w.node === newPrimary).length >= 20, {
        ms: 30_000,
        what: `20 writes acknowledged by ${newPrimary}`,
        state: () => ({ acked: writers!.acked.length, failed: writers!.failed.slice(-3) }),
      });
      assert.equal(postmasterPid(cluster.nodes.pg1.dataDir), null, "pg1's postmaster is gone");
      await writers.stop();
      const acked = writers.acked;
      writers = null;
      // pg1 was killed: it cannot take a write, so this only checks who wrote where; the
      // next test keeps the old primary alive.
      const onNew = acked.filter((w) => w.node === newPrimary);
      const firstOnNew = Math.min(...onNew.map((w) => w.doneAt));
      assert.deepEqual(
        acked.filter((w) => w.node === "pg1" && w.sentAt > firstOnNew),
        [],
        "writes taken by pg1 after the new primary took one",
      );
      for (const id of Object.keys(instances.byId)) {
        const mine = acked.filter((w) => w.instance === id);
        const switched = mine.findIndex((w) => w.node === newPrimary);
        assert.ok(switched >= 0, `${id} wrote to ${newPrimary}`);
        assert.deepEqual(mine.slice(switched).filter((w) => w.node !== newPrimary), []);
      }
      const ids = acked.map((w) => w.id);
      const have = new Set(
        (await cluster.psql(
          newPrimary,
          `select id from replication_canary where id = any('{${ids.join(",")}}'::bigint[])`,
        )).split("\n").filter(Boolean).map(Number),
      );
      assert.deepEqual(ids.filter((id) => !have.has(id)), [], "acknowledged writes lost");
    } finally {
      await (writers as Writers | null)?.stop();
    }
  },
});

Deno.test({
  name: "partition: a stopped primary on another host is not killed; woken, it takes no write " +
    "and the rejoin fences it",
  fn: async () => {
    await using cluster = await startPgCluster();
    await using redis = await startRedis();
    await using instances = await startFollowingPg1(
      cluster,
      redis.url,
      ["far-a", "far-b", "far-c"],
      {
        RS_KEY_PREFIX: "rspf:",
        // pg1 runs on another host as far as the runtime knows: it may not kill, stop or
        // rewind it, only fence it over SQL.
        FAILOVER_LOCAL_NODES: "pg2,pg3",
      },
    );
    const urls = Object.values(instances.byId).map((p) => p.url);
    const before = await replication(urls[0]);
    let writers: Writers | null = startWriters(
      Object.fromEntries(Object.entries(instances.byId).map(([id, p]) => [id, p.url])),
      { token: TEST_ADMIN_TOKEN, pauseMs: 5, timeoutMs: 60_000 },
    );
    let paused = false;
    try {
      await until(() => writers!.acked.filter((w) => w.node === "pg1").length >= 20, {
        what: "20 writes acknowledged by pg1 before the stop",
      });
      cluster.pause("pg1", true);
      paused = true;
      await untilAllFollow(urls, { afterEpoch: before.primary.epoch, ms: 30_000 });
      const now = await replication(urls[0]);
      const newPrimary = now.primary.node as string;
      assert.notEqual(newPrimary, "pg1");
      const reason = now.history[0].reason as string;
      assert.match(
        reason,
        /^pg1 failed \d+ consecutive probes \(last: .*no answer.*\) and [23] of 3 live instances agree: failing over; promoted pg[23] because /,
      );
      assert.doesNotMatch(reason, /killed|fast path/);
      await until(() => writers!.acked.filter((w) => w.node === newPrimary).length >= 20, {
        ms: 30_000,
        what: `20 writes acknowledged by ${newPrimary}`,
        state: () => ({ acked: writers!.acked.length, failed: writers!.failed.slice(-3) }),
      });
      const firstOnNew = Math.min(
        ...writers.acked.filter((w) => w.node === newPrimary).map((w) => w.doneAt),
      );
      // Nobody killed it: it wakes up as a second primary, reachable and writable.
      assert.notEqual(postmasterPid(cluster.nodes.pg1.dataDir), null, "pg1's postmaster runs");
      const wokeAt = performance.now();
      cluster.pause("pg1", false);
      paused = false;
      assert.equal(await cluster.psql("pg1", "select pg_is_in_recovery()"), "f");
      // The rejoin demotes what it can from here: fenced read-only, sessions ended, and the
      // record says to rewind it on its own host.
      let seen: unknown = null;
      await until(async () => {
        const v = await replication(urls[0]);
        const rejoin = v.history.find((h: { kind: string; oldPrimary: string }) =>
          h.kind === "rejoin" && h.oldPrimary === "pg1"
        );
        seen = { rejoin, why: v.why, pg1: v.nodes.find((n: { name: string }) => n.name === "pg1") };
        return rejoin?.status === "fenced";
      }, { ms: 30_000, what: "pg1's rejoin recorded as fenced", state: () => seen });
      const rejoin = (await replication(urls[0])).history.find((h: { kind: string }) =>
        h.kind === "rejoin"
      );
      assert.match(
        rejoin.errorMessage,
        /pg1 is fenced read-only but FAILOVER_LOCAL_NODES puts it on another host: stop it there and run pg_rewind/,
      );
      assert.equal(await cluster.psql("pg1", "show default_transaction_read_only"), "on");
      await assert.rejects(
        cluster.psql("pg1", "insert into replication_canary (instance) values ('by hand')"),
        /read-only transaction/,
      );
      // The coordinator leaves it to its operator (no re-fence, no new row every backoff
      // while it stays fenced), and its GET /replication says so beside the fence.
      let view: unknown = null;
      await until(async () => {
        const holder = (await replication(urls[0])).coordinator?.instance as string | undefined;
        const url = holder ? instances.byId[holder]?.url : undefined;
        if (!url) return false;
        const v = await replication(url);
        const pg1 = v.nodes.find((n: { name: string }) => n.name === "pg1");
        view = { holder, awaitingOperator: v.awaitingOperator, pg1 };
        return v.awaitingOperator?.includes("pg1") && pg1?.awaitingOperator === true &&
          pg1.state === "fenced";
      }, { ms: 30_000, what: "the coordinator leaving pg1 to its operator", state: () => view });
      // Writes went on while pg1 was awake: each instance had some acknowledged after.
      await until(
        () =>
          Object.keys(instances.byId).every((id) =>
            writers!.acked.filter((w) => w.instance === id && w.sentAt > wokeAt).length >= 5
          ),
        { ms: 30_000, what: "5 writes per instance acknowledged after pg1 woke up" },
      );
      await writers.stop();
      const acked = writers.acked;
      writers = null;
      assert.deepEqual(
        acked.filter((w) => w.node === "pg1" && w.sentAt > firstOnNew),
        [],
        "writes acknowledged by pg1 after the new primary took one",
      );
      // The data on pg1 itself: every row it holds was sent before the new primary took a
      // write (a write sent to it before the stop may still have been applied when it woke).
      const notes = (await cluster.psql(
        "pg1",
        "select note from replication_canary where note is not null",
      )).split("\n").filter(Boolean);
      assert.ok(notes.length >= 20, `pg1 holds the writes from before the stop (${notes.length})`);
      const late = notes.filter((n) => (sentAtOfNote(n) ?? Infinity) > firstOnNew);
      assert.deepEqual(late, [], "rows on pg1 sent after the new primary took a write");
      for (const id of Object.keys(instances.byId)) {
        const mine = acked.filter((w) => w.instance === id);
        const switched = mine.findIndex((w) => w.node === newPrimary);
        assert.ok(switched >= 0, `${id} wrote to ${newPrimary}`);
        assert.deepEqual(mine.slice(switched).filter((w) => w.node !== newPrimary), []);
      }
      const ids = acked.map((w) => w.id);
      const have = new Set(
        (await cluster.psql(
          newPrimary,
          `select id from replication_canary where id = any('{${ids.join(",")}}'::bigint[])`,
        )).split("\n").filter(Boolean).map(Number),
      );
      assert.deepEqual(ids.filter((id) => !have.has(id)), [], "acknowledged writes lost");
    } finally {
      if (paused) cluster.pause("pg1", false);
      await (writers as Writers | null)?.stop();
    }
  },
});
