/**
 * Failover with real processes: a PostgreSQL 15 primary with two streaming replicas in
 * synchronous mode, Redis, and three runtime instances as separate processes, with
 * writers going through the instances' pools (POST /replication/canary) the whole time.
 *
 * One cluster, in order: monitoring → a stalled and a loaded primary are NOT failed over →
 * kill -9 of the primary under writes: the fast path (certain evidence, still a vote), no
 * acknowledged write missing afterwards, no instance writing to the old primary once the
 * new one took a write → the old primary restarted rejoins
 * as a replica with matching data → switchover back (zero loss) → the coordinator killed
 * mid-failover, another instance finishes → no eligible replica: degraded, said in one
 * sentence, and the primary that returns has every acknowledged write.
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
import { ADMIN_HEADERS, TEST_ADMIN_TOKEN } from "../support/auth.ts";
import { reviewFailoverInBrowser } from "./review_in_browser.ts";

const TOKEN = TEST_ADMIN_TOKEN;

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
    // What every instance (crashed and stopped ones too) said, for a failure in the CI log:
    // failover lines, warnings, errors, and an uncaught exception's message and stack.
    const dump = () =>
      Object.entries(instances.logs()).map(([id, text]) =>
        `--- ${id}\n${
          text.split("\n").filter((l) => /failover|WARN|ERROR|error|^\s+at /.test(l)).slice(-40)
            .join("\n")
        }`
      ).join("\n");
    let stepFailed = false;
    /** t.step that remembers a failure, so the instances' logs are printed at the end. */
    const step = async (name: string, fn: () => Promise<void>) => {
      if (!(await t.step(name, fn))) stepFailed = true;
    };

    try {
      await step("the monitor reports every node, stores it and sets up sync mode", async () => {
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
          )) === "pg1:primary,pg2:replica,pg3:replica", {
          what: "replication_status on pg1 listing every node with its role",
        });
      });

      await step("a stalled and a heavily loaded primary are not failed over", async () => {
        const before = await replication(urls()[0]);
        // SIGSTOP the whole server for 2 s (the scenario's duration, not a wait): shorter than
        // the detection window (3 probes x (1000 ms timeout + 200 ms pause) ≈ 3.6 s; a busy
        // machine only makes the window longer, as its timers fire late).
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
        // Every instance back to healthy, with a successful probe since: nothing is pending.
        let views: Record<string, unknown>[] = [];
        await until(async () => {
          views = await Promise.all(urls().map(replication));
          return views.every((v) =>
            String((v.state as { detector?: string })?.detector).startsWith("healthy") &&
            (v.lastProbe as { ok?: boolean } | null)?.ok === true
          );
        }, {
          ms: 20_000,
          what: "every instance healthy again with a successful probe of pg1",
          state: () => views.map((v) => ({ state: v.state, why: v.why, lastProbe: v.lastProbe })),
        });
        const after = await replication(urls()[0]);
        assert.equal(after.primary.node, "pg1");
        assert.equal(after.primary.epoch, before.primary.epoch, "no new epoch was published");
        assert.equal(after.history.length, before.history.length, "nothing in failover_history");
        // The stall was noticed (failed probes) and judged not worth a failover. How many
        // probes failed depends on when they fell in the stall, so the count is not asserted.
        const logs = Object.values(instances.byId).map((p) => p.stderr()).join("\n");
        assert.match(logs, /pg1 answered again after \d+ failed probes?: not failing over/);
      });

      let epochAfterKill = 0;
      await step(
        "kill -9 of the primary under continuous writes: new primary, no acknowledged write lost",
        async () => {
          const before = await replication(urls()[0]);
          writers = startWriters(urlMap(), { token: TOKEN, pauseMs: 5 });
          await until(() => writers!.acked.filter((w) => w.node === "pg1").length >= 20, {
            what: "20 writes acknowledged by pg1 before the kill",
            state: () => ({ acked: writers!.acked.length, failed: writers!.failed.slice(-3) }),
          });
          const killedAt = performance.now();
          await cluster.kill("pg1");
          await untilAllFollow(urls(), { afterEpoch: before.primary.epoch, ms: 20_000 });
          const now = await replication(urls()[0]);
          const newPrimary = now.primary.node;
          assert.notEqual(newPrimary, "pg1");
          await until(() => writers!.acked.filter((w) => w.node === newPrimary).length >= 20, {
            ms: 20_000,
            what: `20 writes acknowledged by the new primary ${newPrimary}`,
            state: () => ({ acked: writers!.acked.length, failed: writers!.failed.slice(-3) }),
          });
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
          // A client on each instance wrote through its pool the whole time: no instance
          // sent a write that pg1 took after the new primary had accepted one. pg1 is dead
          // here, so this only checks the bookkeeping of who wrote where; an old primary that
          // stays alive and writable is partition_test.ts's second case.
          const firstOnNew = Math.min(...onNew.map((w) => w.doneAt));
          const stale = acked.filter((w) => w.node === "pg1" && w.sentAt > firstOnNew);
          assert.deepEqual(stale, [], "writes taken by pg1 after the new primary took one");
          for (const id of Object.keys(instances.byId)) {
            const mine = acked.filter((w) => w.instance === id);
            const switched = mine.findIndex((w) => w.node === newPrimary);
            assert.ok(switched >= 0, `${id} wrote to ${newPrimary}`);
            assert.deepEqual(
              mine.slice(switched).filter((w) => w.node !== newPrimary),
              [],
              `${id} went back to another node after writing to ${newPrimary}`,
            );
          }
          // How fast is measured by `deno task bench failover` (failover_crash_median_s).
          assert.equal(now.history[0].kind, "failover", JSON.stringify(now.history[0]));
          // A crash is certain evidence: connections refused on pg1's port by at least two
          // instances and no WAL receiver streaming from it: the fast path, still voted on.
          const reason = now.history[0].reason as string;
          assert.match(
            reason,
            /^certain: pg1 refused connections from [23] of 3 instances \(.*\) and no replica's WAL receiver streams from it \(pg[23]: .*\), and [23] of 3 live instances agree: failing over \(fast path\); promoted pg[23] because pg[23] has the highest replay LSN .*; published pg[23] with epoch \d+ under fencing token \d+: every instance re-points to it/,
          );
          // The coordinator's decision says the same.
          const views = await Promise.all(urls().map(replication));
          const decided = views.find((v) => v.decision?.kind === "failover");
          assert.equal(decided?.decision.why, now.history[0].reason);
          // The recorded history (docs/console.md) tells the same story on one clock: one
          // instance promoting, then every instance re-pointing its pool; and the console at
          // that recorded moment shows it.
          // Recording is batched (within 10 ms): wait until every instance's is in.
          type Entry = Record<string, unknown>;
          let failover: Entry[] = [];
          const states = (e: Entry) => JSON.stringify(e.state);
          const promotingOf = () => failover.find((e) => states(e).includes('"promoting"'));
          const repointedAfter = (id: string, p: Entry) =>
            failover.find((e) =>
              e.instance === id && failover.indexOf(e) > failover.indexOf(p) &&
              states(e).includes('"switching"')
            );
          await until(async () => {
            const res = await fetch(`${urls()[0]}/history?limit=5000&order=desc`, {
              headers: ADMIN_HEADERS,
            });
            const body = await res.json() as { entries: Entry[] };
            failover = body.entries
              .filter((e) => e.k === "transition" && e.machine === "failover").reverse();
            const p = promotingOf();
            return !!p && ["node-a", "node-b", "node-c"].every((id) => repointedAfter(id, p));
          }, {
            what: "the promotion and every instance's re-pointing in the recorded history",
            state: () => [...new Set(failover.map((e) => `${e.instance} ${states(e)}`))].slice(-30),
          });
          const promoting = promotingOf()!;
          const at = new URLSearchParams({
            at: String(promoting.serverAt),
            // That event itself: its instance records a batch of transitions in one millisecond.
            seq: String(promoting.entryId).split("-")[1],
            concern: "failover",
            instance: String(promoting.instance),
            actor: String(promoting.path),
          });
          const page = await (await fetch(`${urls()[0]}/?${at}`, { headers: ADMIN_HEADERS }))
            .text();
          const row = page.slice(
            page.indexOf(`<tr class="instance" data-instance="${promoting.instance}"`),
          );
          const cellAt = row.indexOf(`data-path="${promoting.path}"`);
          const cell = row.slice(cellAt, row.indexOf("</td>", cellAt));
          assert.ok(cellAt >= 0 && cellAt < row.indexOf("</tr>"), JSON.stringify(promoting));
          assert.match(
            cell,
            /data-state-text="[^"]*detector\.promoting/,
            JSON.stringify(promoting),
          );
          assert.match(page, /class="node state atomic active" data-state="detector\.promoting"/);
          // The same in headless Chromium, a step at a time (docs/console.md's walk-through).
          await reviewFailoverInBrowser({
            url: urls()[0],
            failover,
            promoting,
            repointed: Object.fromEntries(
              ["node-a", "node-b", "node-c"].map((id) => [id, repointedAfter(id, promoting)!]),
            ),
          });
          epochAfterKill = now.primary.epoch;
          writers = null;
        },
      );

      await step(
        "the old primary, restarted, is fenced and rejoins as a replica with matching data",
        async () => {
          await cluster.nodes.pg1.start(); // comes back as a standalone, writable primary
          // The rejoin is over when it is recorded: pg1 may stream before the coordinator has
          // seen its canary arrive and written the record.
          let seen: Record<string, unknown> | null = null;
          const v = await until(async () => {
            const v = await replication(urls()[0]);
            const pg1 = v.nodes.find((n: { name: string }) => n.name === "pg1");
            seen = { pg1, history: v.history.slice(0, 2), why: v.why };
            const recorded = v.history.some((h: { kind: string }) => h.kind === "rejoin");
            return pg1?.role === "replica" && pg1?.streaming === true && recorded && v;
          }, {
            ms: 40_000,
            what: "pg1 streaming as a replica and its rejoin recorded",
            state: () => seen,
          });
          assert.equal(await cluster.psql("pg1", "select pg_is_in_recovery()"), "t");
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

      await step("admin endpoints need the bearer token", async () => {
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

      await step(
        "switchover back to pg1 under writes: zero loss, the old primary follows",
        async () => {
          const before = await replication(urls()[0]);
          const old = before.primary.node;
          writers = startWriters(urlMap(), { token: TOKEN, pauseMs: 5 });
          await until(() => writers!.acked.filter((w) => w.node === old).length >= 20, {
            what: `20 writes acknowledged by ${old} before the switchover`,
            state: () => ({ acked: writers!.acked.length, failed: writers!.failed.slice(-3) }),
          });
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
          await until(() => writers!.acked.filter((w) => w.node === "pg1").length >= 20, {
            ms: 20_000,
            what: "20 writes acknowledged by pg1 after the switchover",
            state: () => ({ acked: writers!.acked.length, failed: writers!.failed.slice(-3) }),
          });
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
          // By name: a count of streaming replicas can be met by the view sampled before the
          // switchover, and the stopped old primary is started again only by the coordinator
          // that parked it (the next step restarts every instance).
          await until(async () => {
            const v = await replication(urls()[0]);
            return v.primary.node === "pg1" &&
              v.nodes.find((n: { name: string }) => n.name === old)?.streaming === true;
          }, { ms: 40_000, what: `${old} streaming from pg1 again` });
        },
      );

      await step(
        "the coordinator dies right after pg_promote: another instance finishes the failover",
        async () => {
          // Every instance gets the failpoint; only the first to promote dies (adopting is safe).
          for (const id of Object.keys(instances.byId)) await instances.stop(id);
          await Promise.all(
            ["node-a", "node-b", "node-c"].map((id) =>
              instances.launch(id, {
                FAILOVER_FAILPOINT: "exit-after-promote",
                RS_TEST_FAILPOINTS: "1",
              })
            ),
          );
          await untilAllFollow(urls(), { node: "pg1" });
          await until(async () => (await replication(urls()[0])).coordinator?.instance, {
            what: "a coordinator",
          });
          const before = await replication(urls()[0]);
          // Whoever coordinates when pg1 dies promotes and dies (the lease may move before).
          const exited: string[] = [];
          for (const [id, p] of Object.entries(instances.byId)) {
            p.child.status.then(() => exited.push(id));
          }
          await cluster.kill("pg1");
          const doomed = await until(() => exited[0], {
            ms: 30_000,
            what: "the coordinator dying at the failpoint after pg_promote",
            state: () => Object.values(instances.byId).map((p) => p.stderr().split("\n").slice(-3)),
          });
          assert.match(instances.byId[doomed].stderr(), /failpoint exit-after-promote/);
          assert.equal(exited.length, 1, "only the coordinator that promoted died");
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

      await step(
        "no eligible replica: degraded, read-only, one sentence; the primary returns with every write",
        async () => {
          const v = await replication(urls()[0]);
          const primary = v.primary.node as string;
          const epoch = v.primary.epoch as number;
          const replica = ["pg2", "pg3"].find((n) => n !== primary)!;
          await until(async () => {
            const r = await replication(urls()[0]);
            return r.nodes.find((n: { name: string }) => n.name === replica)?.streaming === true;
          }, { ms: 20_000, what: `${replica} streaming from ${primary}` });
          // Acknowledged writes before the outage: all of them must be there afterwards.
          const acked: number[] = [];
          for (const url of urls()) {
            const res = await fetch(`${url}/replication/canary`, {
              method: "POST",
              headers: { authorization: `Bearer ${TOKEN}` },
            });
            const body = await res.json();
            assert.equal(res.status, 200, JSON.stringify(body));
            acked.push(body.id);
          }
          // The replica and the primary die back to back. Whether the monitor dropped the dead
          // standby from synchronous_standby_names in between is down to timing, and must not
          // change what the coordinator decides or says.
          await cluster.kill(replica);
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
            return found?.r.decision?.kind === "degraded";
          }, {
            ms: 30_000,
            what: "the coordinator's degraded decision",
            state: () => JSON.stringify(found && { why: found.r.why, state: found.r.state }),
          });
          const { url, r } = found!;
          // One sentence, whichever path (the failed promotion or a re-check) found it: every
          // other node is unreachable (the error in brackets is what this look saw).
          const others = ["pg1", "pg2", "pg3"].filter((n) => n !== primary);
          const sentence = new RegExp(
            `^degraded: ${primary} is down and no eligible replica: ` +
              others.map((n) => `${n} is unreachable \\(.+\\)`).join("; ") +
              "; no node serves reads or writes$",
          );
          assert.match(r.decision.why, sentence);
          assert.equal(r.why, r.decision.why, "the coordinator says what it decided");
          assert.equal(r.decision.ok, false);
          assert.match(r.state.detector, /^degraded/);
          // Published at the same epoch with no read-only fallback: nobody moves.
          assert.equal(r.published.kind, "degraded");
          assert.equal(r.published.node, primary);
          assert.equal(r.published.epoch, epoch, "degraded keeps the epoch");
          assert.equal(r.published.readOnlyNode, null);
          assert.match(r.published.why, sentence);
          const res = await fetch(`${url}/health`, {
            headers: { authorization: `Bearer ${TOKEN}` },
          });
          const health = await res.json();
          // No node answers at all, so the database check makes it "unavailable" (503).
          assert.equal(res.status, 503);
          assert.equal(health.status, "unavailable");
          assert.equal(health.checks.failover.ok, false);
          assert.match(health.checks.failover.why, sentence);
          const started = performance.now();
          const write = await fetch(`${url}/replication/canary`, {
            method: "POST",
            headers: { authorization: `Bearer ${TOKEN}` },
          });
          const refused = await write.json();
          assert.equal(write.status, 503, "writes are refused");
          assert.equal(refused.error?.code, "DATABASE_UNAVAILABLE", JSON.stringify(refused));
          // Degraded sets the switch wait to 0: the write does not wait FAILOVER_QUERY_WAIT_MS
          // (10 s) for a primary that is not coming; half of it leaves room for a busy machine.
          assert.ok(performance.now() - started < 5000, "refused without waiting for a switch");

          // The primary comes back: degraded ends, writes go to it again, nothing was lost.
          await cluster.nodes[primary].start();
          await until(async () => {
            found = await holder();
            return found?.r.decision?.kind === "recovered";
          }, {
            ms: 30_000,
            what: `the coordinator seeing ${primary} back`,
            state: () => JSON.stringify(found && { why: found.r.why, state: found.r.state }),
          });
          assert.equal(found!.r.decision.why, `${primary} is back: leaving degraded mode`);
          let after: Record<string, number> | null = null;
          await until(async () => {
            const res = await fetch(`${url}/replication/canary`, {
              method: "POST",
              headers: { authorization: `Bearer ${TOKEN}` },
              signal: AbortSignal.timeout(10_000),
            });
            after = await res.json();
            return res.status === 200;
          }, {
            ms: 30_000,
            what: `a write accepted by ${primary} again`,
            state: () => JSON.stringify(after),
          });
          assert.equal(after!.node, primary);
          assert.equal(after!.epoch, epoch, "the same primary, the same epoch");
          const have = await present(cluster, primary, acked);
          assert.deepEqual(acked.filter((id) => !have.has(id)), [], "acknowledged writes lost");
        },
      );
      if (stepFailed) console.error(dump());
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
