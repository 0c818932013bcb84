/**
 * Failover with real processes: a PostgreSQL 15 primary with two streaming replicas in
 * synchronous mode, Redis, and three runtime instances as separate processes, with
 * writers going through the instances' pools (POST /replication/canary) the whole time.
 *
 * One cluster, in order: monitoring → a stalled and a loaded primary are NOT failed over →
 * kill -9 of the primary under writes (time to the first accepted write on the new
 * primary, acknowledged writes missing afterwards: 0) → the old primary restarted rejoins
 * as a replica with matching data → switchover back (zero loss) → the coordinator killed
 * mid-failover, another instance finishes → no eligible replica: degraded, said so.
 */
import assert from "node:assert/strict";
import { startRedis } from "../harness/mod.ts";
import { until } from "../support/instance.ts";
import {
  randomKey,
  replication,
  startInstances,
  startPgCluster,
  startWriters,
  untilAllFollow,
  type Writers,
} from "../support/pg_cluster.ts";

const TOKEN = "failover-test-admin-token";

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

/** Canary ids the node has, out of `ids`. */
async function present(
  cluster: Awaited<ReturnType<typeof startPgCluster>>,
  node: string,
  ids: number[],
): Promise<Set<number>> {
  if (!ids.length) return new Set();
  const out = await cluster.psql(
    node,
    `select id from replication_canary where id = any('{${ids.join(",")}}'::bigint[])`,
  );
  return new Set(out.split("\n").filter(Boolean).map(Number));
}

Deno.test({
  name: "failover with real processes: 3 PostgreSQL nodes, Redis, 3 runtime instances",
  // The runtime processes are children of this test; their pipes are drained by the helper.
  fn: async (t) => {
    await using cluster = await startPgCluster();
    await using redis = await startRedis();
    const env = {
      DATABASE_URL: cluster.url("pg1"),
      DATABASE_NODES: cluster.databaseNodes,
      DATABASE_CONNECT_TIMEOUT_S: "10",
      REDIS_URL: redis.url,
      RS_SECRET_KEY: randomKey(),
      RS_KEY_PREFIX: "rsfo:",
      RS_HEARTBEAT_MS: "250",
      RS_DEAD_AFTER_MS: "1000",
      RS_LEASE_TTL_MS: "1500",
      FAILOVER_PROBE_INTERVAL_MS: "200",
      FAILOVER_PROBE_TIMEOUT_MS: "1000",
      FAILOVER_CONFIRMATIONS: "3",
      FAILOVER_MONITOR_INTERVAL_MS: "500",
      FAILOVER_SYNC_MODE: "on",
      RS_ADMIN_TOKEN: TOKEN,
      LOG_LEVEL: "info",
    };
    await using instances = await startInstances(["node-a", "node-b", "node-c"], env);
    const urls = () => Object.values(instances.byId).map((p) => p.url);
    const urlMap = () =>
      Object.fromEntries(Object.entries(instances.byId).map(([id, p]) => [id, p.url]));
    let writers: Writers | null = null;
    const dump = () =>
      Object.entries(instances.byId).map(([id, p]) =>
        `--- ${id}\n${
          p.stderr().split("\n").filter((l) => /failover|WARN|ERROR/.test(l)).slice(-40).join(
            "\n",
          )
        }`
      ).join("\n");

    try {
      await t.step("the monitor reports every node, stores it and sets up sync mode", async () => {
        await until(async () => {
          const v = await replication(urls()[1]);
          return v.primary?.epoch >= 1 && v.sync?.standbys?.names?.join(",") === "pg2,pg3" &&
            v.nodes.filter((n: { syncState: string }) => n.syncState === "quorum").length === 2;
        }, { ms: 20_000, what: "bootstrap and synchronous standbys" });
        await untilAllFollow(urls(), { node: "pg1" });
        const v = await replication(urls()[1]);
        const byName = Object.fromEntries(
          v.nodes.map((n: { name: string }) => [n.name, n]),
        );
        assert.equal(byName.pg1.role, "primary");
        assert.match(byName.pg1.currentLsn, /^[0-9A-F]+\/[0-9A-F]+$/);
        for (const r of ["pg2", "pg3"]) {
          assert.equal(byName[r].role, "replica");
          assert.equal(byName[r].state, "streaming");
          assert.equal(byName[r].syncState, "quorum");
          for (const f of ["sentLsn", "writeLsn", "flushLsn", "replayLsn"]) {
            assert.match(byName[r][f], /^[0-9A-F]+\/[0-9A-F]+$/, `${r}.${f}`);
          }
          assert.equal(typeof byName[r].lagBytes, "number");
          assert.equal(typeof byName[r].lagSeconds, "number");
        }
        assert.equal(v.history[0].kind, "bootstrap");
        assert.equal(
          await cluster.psql("pg1", "show synchronous_standby_names"),
          'ANY 1 ("pg2", "pg3")',
        );
        await until(async () =>
          (await cluster.psql(
            "pg1",
            "select string_agg(node_name || ':' || node_role, ',' " +
              "order by node_name) from replication_status",
          )) === "pg1:primary,pg2:replica,pg3:replica"
        );
      });

      await t.step("a stalled and a heavily loaded primary are not failed over", async () => {
        const before = await replication(urls()[0]);
        // SIGSTOP the whole server for 2 s: shorter than the detection window
        // (3 probes x (1000 ms timeout + 200 ms pause) ≈ 3.6 s).
        cluster.pause("pg1", true);
        await sleep(2000);
        cluster.pause("pg1", false);
        // Heavy load: CPU-bound queries on every core for 3 s.
        const load = Array.from(
          { length: 4 },
          () => cluster.psql("pg1", "select count(*) from generate_series(1, 2e8)").catch(() => ""),
        );
        await sleep(3000);
        await cluster.psql(
          "pg1",
          "select pg_cancel_backend(pid) from pg_stat_activity " +
            "where query like 'select count(*) from generate_series%' and pid <> pg_backend_pid()",
        );
        await Promise.all(load);
        await sleep(500);
        const after = await replication(urls()[0]);
        assert.equal(after.primary.node, "pg1");
        assert.equal(after.primary.epoch, before.primary.epoch, "no new epoch was published");
        assert.equal(after.history.length, before.history.length, "nothing in failover_history");
        const logs = Object.values(instances.byId).map((p) => p.stderr()).join("\n");
        assert.match(logs, /pg1 answered again after [12] failed probes?: not failing over/);
      });

      let epochAfterKill = 0;
      await t.step(
        "kill -9 of the primary under continuous writes: new primary, no acknowledged write lost",
        async () => {
          const before = await replication(urls()[0]);
          writers = startWriters(urlMap(), { token: TOKEN, pauseMs: 5 });
          await sleep(1000);
          const killedAt = performance.now();
          await cluster.kill("pg1");
          await untilAllFollow(urls(), { afterEpoch: before.primary.epoch, ms: 20_000 });
          const now = await replication(urls()[0]);
          const newPrimary = now.primary.node;
          assert.notEqual(newPrimary, "pg1");
          await until(() => writers!.acked.some((w) => w.node === newPrimary), { ms: 10_000 });
          await sleep(300);
          await writers.stop();
          const acked = writers.acked;
          const onNew = acked.filter((w) => w.node === newPrimary && w.doneAt > killedAt);
          const firstS = (Math.min(...onNew.map((w) => w.doneAt)) - killedAt) / 1000;
          const have = await present(cluster, newPrimary, acked.map((w) => w.id));
          const lost = acked.filter((w) => !have.has(w.id));
          console.log(
            `kill -9 -> first accepted write on ${newPrimary}: ${firstS.toFixed(2)} s; ` +
              `acked ${acked.length} (${acked.filter((w) => w.node === "pg1").length} on pg1), ` +
              `lost ${lost.length}, failed requests ${writers.failed.length}`,
          );
          assert.equal(lost.length, 0, `acknowledged writes lost: ${JSON.stringify(lost)}`);
          assert.ok(acked.filter((w) => w.node === "pg1").length > 0, "writes went to pg1 first");
          assert.ok(firstS < 6, `first write on the new primary after ${firstS} s`);
          assert.equal(now.history[0].kind, "failover", JSON.stringify(now.history[0]));
          assert.match(
            now.history[0].reason,
            /pg1 failed 3 consecutive probes \(last: .*\) and [23] of 3 live instances agree: failing over; promoted pg[23] because pg[23] has the highest replay LSN .*; published pg[23] with epoch \d+ under fencing token \d+: every instance re-points to it/,
          );
          // The coordinator's decision says the same.
          const views = await Promise.all(urls().map(replication));
          const decided = views.find((v) => v.decision?.kind === "failover");
          assert.equal(decided?.decision.why, now.history[0].reason);
          epochAfterKill = now.primary.epoch;
          writers = null;
        },
      );

      await t.step(
        "the old primary, restarted, is fenced and rejoins as a replica with matching data",
        async () => {
          await cluster.nodes.pg1.start(); // comes back as a standalone, writable primary
          await until(async () => {
            const v = await replication(urls()[0]);
            const pg1 = v.nodes.find((n: { name: string }) => n.name === "pg1");
            return pg1?.role === "replica" && pg1?.streaming === true;
          }, { ms: 40_000, what: "pg1 streaming as a replica" });
          assert.equal(await cluster.psql("pg1", "select pg_is_in_recovery()"), "t");
          const v = await replication(urls()[0]);
          const primary = v.primary.node;
          // Data, not just state: write through the instances, then compare both sides.
          const res = await fetch(`${urls()[0]}/replication/canary`, {
            method: "POST",
            headers: { authorization: `Bearer ${TOKEN}` },
          });
          const last = await res.json();
          assert.equal(last.node, primary);
          const fingerprint =
            "select count(*) || ':' || md5(string_agg(id::text, ',' order by id)) " +
            "from replication_canary";
          await until(
            async () =>
              (await cluster.psql("pg1", fingerprint)) ===
                (await cluster.psql(primary, fingerprint)),
            {
              ms: 15_000,
              what: "pg1 holding the same canary rows as the primary",
            },
          );
          const rejoin = v.history.find((h: { kind: string }) => h.kind === "rejoin");
          assert.ok(rejoin, "the rejoin is in failover_history");
          assert.equal(rejoin.status, "completed");
          assert.match(
            rejoin.reason,
            /rejoined pg1 as a replica of pg[23]: pg_rewind .*canary \d+ arrived/,
          );
          assert.equal(v.primary.epoch, epochAfterKill, "a rejoin does not change the epoch");
        },
      );

      await t.step("admin endpoints need the bearer token", async () => {
        const none = await fetch(`${urls()[0]}/failover/switchover`, { method: "POST" });
        assert.equal(none.status, 401);
        await none.body?.cancel();
        const wrong = await fetch(`${urls()[0]}/failover/switchover`, {
          method: "POST",
          headers: { authorization: "Bearer nope-nope-nope-nope" },
        });
        assert.equal(wrong.status, 401);
        await wrong.body?.cancel();
      });

      await t.step(
        "switchover back to pg1 under writes: zero loss, the old primary follows",
        async () => {
          const before = await replication(urls()[0]);
          const old = before.primary.node;
          writers = startWriters(urlMap(), { token: TOKEN, pauseMs: 5 });
          await sleep(700);
          const res = await fetch(`${urls()[2]}/failover/switchover`, {
            method: "POST",
            headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
            body: JSON.stringify({ target: "pg1" }),
          });
          const body = await res.json();
          assert.equal(res.status, 200, JSON.stringify(body));
          assert.equal(body.ok, true);
          assert.equal(body.primary.node, "pg1");
          assert.match(
            body.why,
            /pg1 replayed up to .*, past pg[23]'s last WAL at .* before it was promoted \(zero loss\)/,
          );
          await untilAllFollow(urls(), { node: "pg1", afterEpoch: before.primary.epoch });
          await until(() => writers!.acked.some((w) => w.node === "pg1"), { ms: 10_000 });
          await sleep(300);
          await writers.stop();
          const acked = writers.acked;
          const have = await present(cluster, "pg1", acked.map((w) => w.id));
          const lost = acked.filter((w) => !have.has(w.id));
          console.log(
            `switchover ${old} -> pg1 in ${body.ms} ms: acked ${acked.length}, lost ${lost.length}, ` +
              `failed requests ${writers.failed.length}`,
          );
          assert.equal(lost.length, 0, `acknowledged writes lost: ${JSON.stringify(lost)}`);
          writers = null;
          await until(async () => {
            const v = await replication(urls()[0]);
            return v.nodes.filter((n: { streaming: boolean }) => n.streaming).length === 2;
          }, { ms: 40_000, what: `${old} streaming from pg1 again` });
        },
      );

      await t.step(
        "the coordinator dies right after pg_promote: another instance finishes the failover",
        async () => {
          // Every instance gets the failpoint; only the first to promote dies (adopting is safe).
          for (const id of Object.keys(instances.byId)) await instances.stop(id);
          await Promise.all(
            ["node-a", "node-b", "node-c"].map((id) =>
              instances.launch(id, { FAILOVER_FAILPOINT: "exit-after-promote" })
            ),
          );
          await untilAllFollow(urls(), { node: "pg1" });
          await until(async () => (await replication(urls()[0])).coordinator?.instance, {
            what: "a coordinator",
          });
          const before = await replication(urls()[0]);
          const doomed = before.coordinator.instance as string;
          await cluster.kill("pg1");
          let timer: number | undefined;
          const died = await Promise.race([
            instances.byId[doomed].child.status.then(() => true),
            new Promise<boolean>((r) => timer = setTimeout(() => r(false), 15_000)),
          ]);
          clearTimeout(timer);
          assert.ok(died, `the coordinator ${doomed} hit the failpoint`);
          await instances.stop(doomed, "SIGKILL");
          await untilAllFollow(urls(), { afterEpoch: before.primary.epoch, ms: 30_000 });
          const v = await replication(urls()[0]);
          assert.notEqual(v.primary.node, "pg1");
          assert.notEqual(v.coordinator.instance, doomed);
          const finished = v.history[0];
          assert.equal(finished.kind, "failover");
          assert.notEqual(finished.initiatedBy, doomed);
          assert.match(finished.reason, /adopting pg[23]: it is already out of recovery/);
          // Writes work through the survivors.
          const res = await fetch(`${urls()[0]}/replication/canary`, {
            method: "POST",
            headers: { authorization: `Bearer ${TOKEN}` },
          });
          assert.equal(res.status, 200);
          assert.equal((await res.json()).node, v.primary.node);
        },
      );

      await t.step("no eligible replica: degraded, read-only, and it says why", async () => {
        const v = await replication(urls()[0]);
        const primary = v.primary.node as string;
        const replica = ["pg2", "pg3"].find((n) => n !== primary)!;
        await until(async () => {
          const r = await replication(urls()[0]);
          return r.nodes.find((n: { name: string }) => n.name === replica)?.streaming === true;
        }, { ms: 20_000, what: `${replica} streaming from ${primary}` });
        await cluster.kill(replica);
        await sleep(1500); // the monitor notices and stops waiting for it as a sync standby
        await cluster.kill(primary);
        const holder = async () => {
          for (const url of urls()) {
            const r = await replication(url);
            if (r.role === "coordinator") return { url, r };
          }
          return null;
        };
        let found: Awaited<ReturnType<typeof holder>> = null;
        await until(async () => {
          found = await holder();
          return !!found && String(found.r.state?.detector).startsWith("degraded");
        }, { ms: 20_000, what: "the coordinator in degraded" });
        const { url, r } = found!;
        assert.match(
          r.why,
          new RegExp(
            `^degraded: ${primary} is down and no eligible replica: .*${replica} is unreachable`,
          ),
        );
        const res = await fetch(`${url}/health`);
        const health = await res.json();
        // No node answers at all, so the database check makes it "unavailable" (503).
        assert.equal(res.status, 503);
        assert.equal(health.status, "unavailable");
        assert.equal(health.checks.failover.ok, false);
        assert.match(health.checks.failover.why, /^degraded: /);
        const started = performance.now();
        const write = await fetch(`${url}/replication/canary`, {
          method: "POST",
          headers: { authorization: `Bearer ${TOKEN}` },
        });
        assert.equal(write.status, 503, "writes are refused");
        await write.body?.cancel();
        assert.ok(performance.now() - started < 5000, "and refused promptly");
      });
    } catch (err) {
      console.error(dump());
      throw err;
    } finally {
      if (Deno.env.get("RS_FAILOVER_TEST_LOGS")) {
        for (const [id, text] of Object.entries(instances.logs())) {
          await Deno.writeTextFile(`${Deno.env.get("RS_FAILOVER_TEST_LOGS")}/${id}.log`, text);
        }
      }
      await (writers as Writers | null)?.stop();
    }
  },
});
