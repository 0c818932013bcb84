/**
 * The failover effects (actors/failover/effects.ts, rejoin.ts) called directly, in this
 * process, against a real PostgreSQL 15 primary with a streaming replica, a node whose
 * server is not running, and Redis. The multi-process test (failover_test.ts) drives the
 * same effects through the statechart; this one pins down what each effect does when it
 * must refuse or fails half-way: which error code, which node stays what, what is left in
 * Redis and in failover_history, and that nothing is promoted, fenced or moved by mistake.
 *
 * Steps run in order on one cluster; the last ones fail the primary over for real and
 * rejoin it as a replica, so every earlier step sees the original topology.
 */
import assert from "node:assert/strict";
import {
  answerObserve,
  answerVote,
  collectVotes,
  corroborate,
  type FailoverDeps,
  probeNode,
  promote,
  publish,
  readPublished,
  reassess,
  repair,
  repointPool,
  sampleCluster,
  sampleNodes,
  switchover,
} from "../../actors/failover/effects.ts";
import { createNodeClient, type NodeClient, shortError } from "../../actors/failover/nodes.ts";
import { loadFailoverSettings } from "../../actors/failover/settings.ts";
import { createLocalTransport } from "../../actors/runtime/transport.ts";
import { isRuntimeError, type RuntimeError } from "../../lib/errors.ts";
import { silentLogger } from "../../lib/log.ts";
import {
  degradedSentence,
  judgeEvidence,
  type RepairOutput,
  type ReplicationSample,
} from "../../machines/failover/mod.ts";
import { createLocalBus } from "../../store/bus.ts";
import { type Database, openDatabase } from "../../store/database.ts";
import { migrate } from "../../store/migrations.ts";
import { createPgTools, pgCtlStop } from "../../store/pg_tools.ts";
import {
  closeRedis,
  createKeyspace,
  createRedisClient,
  type RedisClient,
} from "../../store/redis.ts";
import { createFailoverStore, primaryKey } from "../../store/redis_failover.ts";
import { fenceNode } from "../../store/replication.ts";
import { startRedis } from "../harness/mod.ts";
import { until } from "../support/instance.ts";
import { startPgCluster } from "../support/pg_cluster.ts";
import { testAuth } from "../support/message_auth.ts";

/** A node whose server does not run: nothing listens on port 1, so connecting is refused. */
const DOWN_URL = "postgres://postgres@127.0.0.1:1/rsfailover";

async function rejected(promise: Promise<unknown>): Promise<RuntimeError> {
  const err = await promise.then(() => null, (e) => e);
  assert.ok(err, "the call should have failed");
  assert.ok(isRuntimeError(err), `a RuntimeError, got ${err}`);
  return err;
}

/** The sentence of a repair that was made; the repair's error when it failed. */
function made(out: RepairOutput): string {
  assert.ok(out.ok, out.ok ? undefined : `the repair failed: ${out.error}`);
  return out.why;
}

Deno.test("a node that refuses connections says so on every call, however many", async () => {
  const setting = { name: "down", url: DOWN_URL, address: "127.0.0.1:1" };
  const client = createNodeClient(setting, { applicationName: "fe-test" });
  try {
    // postgres.js's reconnect backoff (growing to 20 s) once turned the 7th refusal into
    // "down gave no answer within 2000 ms" and left its timer running after close().
    for (let i = 1; i <= 10; i++) {
      const error = await client.probe((sql) => sql`SELECT 1`, { timeoutMs: 2000 })
        .then(() => "answered", shortError);
      assert.equal(error, "connection refused", `probe ${i}`);
    }
  } finally {
    await client.close();
  }
});

Deno.test({
  name: "failover effects: refusals, half-way failures and what they leave behind",
  fn: async (t) => {
    await using cluster = await startPgCluster({ names: ["fe1", "fe2"] });
    await using redisServer = await startRedis();
    const psql = (node: string, sql: string) => cluster.psql(node, sql);
    const settings = loadFailoverSettings({
      DATABASE_NODES: `fe1=${cluster.url("fe1")},fe2=${cluster.url("fe2")},fe3=${DOWN_URL}`,
      // Generous: live servers must answer even on two busy cores; the down node is
      // refused at once, whatever the limit.
      FAILOVER_PROBE_TIMEOUT_MS: "5000",
      FAILOVER_SWITCHOVER_TIMEOUT_MS: "1500",
      FAILOVER_SYNC_MODE: "on",
    });
    const clients = new Map<string, NodeClient>(
      settings.nodes.map((n) => [n.name, createNodeClient(n, { applicationName: "fe-test" })]),
    );
    const redis: RedisClient = createRedisClient({
      url: redisServer.url,
      sentinels: [],
      sentinelMaster: "mymaster",
      sentinelPassword: null,
      keyPrefix: "rsfe:",
    }, { name: "fe-test" });
    await redis.connect();
    const bus = createLocalBus();
    const transport = createLocalTransport({
      instanceId: "fe-test",
      actors: { spec: () => undefined, ref: () => undefined },
      bus,
    });
    let db: Database | null = null;
    try {
      db = await openDatabase({ url: cluster.url("fe1"), connectTimeoutS: 10, poolSize: 2 });
      await migrate(db.sql);
      const keyspace = createKeyspace("rsfe:");
      const base: FailoverDeps = {
        instanceId: "fe-test",
        settings,
        nodes: clients,
        db,
        published: createFailoverStore(redis, keyspace, testAuth()),
        transport,
        bus,
        leases: null,
        membership: null,
        lease: { token: () => 0, listen: () => () => {} },
        log: silentLogger,
        now: Date.now,
        tools: createPgTools(),
        identities: new Map(),
        actor: () => undefined,
      };
      /** The same deps over a subset of the nodes and/or other settings. */
      const only = (names: string[], extra: Partial<typeof settings> = {}): FailoverDeps => ({
        ...base,
        settings: { ...settings, ...extra },
        nodes: new Map(names.map((n) => [n, clients.get(n)!])),
      });
      const inRecovery = async (node: string) =>
        (await psql(node, "select pg_is_in_recovery()")) === "t";
      const published = async () => await readPublished(base, 2000);
      const history = (node: string, where: string) =>
        psql(
          node,
          `select kind || '|' || old_primary || '|' || new_primary || '|' || status || '|' ||
                  (error_message is not null)
             from failover_history where ${where} order by id`,
        );
      await until(async () => {
        const s = await sampleCluster(base, "fe1", 5000);
        return s.nodes.find((n) => n.name === "fe2")!.streaming;
      }, { ms: 30_000, what: "fe2 to stream from fe1 (pg_stat_replication on fe1)" });

      let sample: ReplicationSample | null = null;
      await t.step("a sample names each node's role; the down node is unreachable", async () => {
        sample = await sampleCluster(base, "fe1", 5000);
        const by = Object.fromEntries(sample.nodes.map((n) => [n.name, n]));
        assert.equal(by.fe1.role, "primary");
        assert.equal(by.fe1.healthy, true);
        assert.equal(by.fe2.role, "replica");
        assert.equal(by.fe2.inRecovery, true);
        assert.equal(by.fe2.streaming, true);
        assert.equal(by.fe3.reachable, false);
        assert.equal(by.fe3.state, "unreachable");
        assert.equal(by.fe3.healthy, false);
        assert.match(by.fe3.error ?? "", /refused/);
        // Against a primary that is down, the replica is "not streaming" and no sync is read.
        const orphan = await sampleCluster(base, "fe3", 5000);
        assert.equal(orphan.sync, null);
        assert.equal(orphan.nodes.find((n) => n.name === "fe2")!.streaming, false);
        assert.equal(orphan.nodes.find((n) => n.name === "fe1")!.state, "rogue");
      });

      await t.step(
        "the coordinator's sample is stored per node, alerts mark it unhealthy",
        async () => {
          await sampleNodes(base, {
            primary: { node: "fe1", epoch: 0, readOnlyNode: null },
            leader: 1,
            alerts: [{ node: "fe2", kind: "lag", since: Date.now(), why: "fe2 lags" }],
            why: "monitoring",
          });
          const rows = await psql(
            "fe1",
            "select node_name || '|' || node_role || '|' || node_state || '|' || is_healthy " +
              "from replication_status order by node_name",
          );
          assert.deepEqual(rows.split("\n"), [
            "fe1|primary|primary|true",
            "fe2|replica|streaming|false",
            "fe3|unknown|unreachable|false",
          ]);
          // Where each reachable node runs, for fencing and rejoins from this host.
          assert.equal(base.identities.get("fe1")?.dataDir, cluster.nodes.fe1.dataDir);
          assert.equal(base.identities.get("fe2")?.dataDir, cluster.nodes.fe2.dataDir);
          assert.equal(base.identities.has("fe3"), false);
          // A follower only samples: nothing is stored.
          await psql("fe1", "delete from replication_status");
          await sampleNodes(base, {
            primary: { node: "fe1", epoch: 0, readOnlyNode: null },
            leader: null,
            alerts: [],
            why: "monitoring",
          });
          assert.equal(await psql("fe1", "select count(*) from replication_status"), "0");
        },
      );

      await t.step("votes: a down node gets a yes, a live one a no", async () => {
        const down = await answerVote(base, { node: "fe3", epoch: 0 });
        assert.equal(down.agree, true);
        assert.match(down.why, /refused/);
        const up = await answerVote(base, { node: "fe1", epoch: 0 });
        assert.equal(up.agree, false);
        // A single instance (no membership) is its own majority.
        const votes = await collectVotes(base, {
          primary: { node: "fe1", epoch: 0, readOnlyNode: null },
          failures: 3,
        });
        assert.deepEqual([votes.agree, votes.live], [1, 1]);
      });

      await t.step(
        "evidence: a refusal is told from a timeout, a live stream is seen",
        async () => {
          // Nothing listens on fe3's port: refused, which the fast path may build on.
          const refused = await probeNode(base, "fe3", 2000);
          assert.deepEqual([refused.ok, refused.refused, refused.error], [
            false,
            true,
            "connection refused",
          ]);
          assert.equal((await probeNode(base, "fe1", 5000)).refused, false);
          assert.deepEqual(await answerObserve(base, { node: "fe3", epoch: 0 }), {
            refused: true,
            why: "connection refused",
          });
          // fe1 alive: fe2's WAL receiver streams from it, so nothing is certain, even with
          // (hypothetical) refusals from two instances.
          const mine = { instance: "fe-test", refused: true, why: "connection refused" };
          const alive = await corroborate(base, {
            primary: { node: "fe1", epoch: 0, readOnlyNode: null },
            mine,
          });
          assert.deepEqual(alive.observers, [mine], "a single instance is its only observer");
          const fe2 = alive.receivers.find((r) => r.node === "fe2")!;
          assert.equal(fe2.streaming, true, fe2.why);
          assert.match(fe2.why, /^receiver streaming from 127\.0\.0\.1:\d+$/);
          assert.equal(alive.receivers.find((r) => r.node === "fe3")!.streaming, null);
          const verdict = judgeEvidence({
            primary: { node: "fe1", epoch: 0, readOnlyNode: null },
            lastGoodSample: sample,
          }, {
            ...alive,
            observers: [mine, { ...mine, instance: "other" }],
          });
          assert.equal(verdict.certain, false);
          assert.match(verdict.why, /fe2 still streams from fe1/);
        },
      );

      await t.step(
        "evidence: a live stream counts however DATABASE_NODES spells the primary",
        async () => {
          // fe2 names its sender 127.0.0.1:PORT (its primary_conninfo); DATABASE_NODES may
          // spell the same server localhost:PORT. Read textually, fe2 "does not stream from
          // fe1" and two refusals (a port blocked with REJECT) would pass as certain.
          const port = cluster.nodes.fe1.port;
          // Each name over a live client (fe9: fe1's), with the address given here.
          const spelled = (nodes: Record<string, string>): FailoverDeps => ({
            ...base,
            nodes: new Map(
              Object.entries(nodes).map(([name, address]) => {
                const client = clients.get(name === "fe9" ? "fe1" : name)!;
                return [name, { ...client, setting: { ...client.setting, name, address } }];
              }),
            ),
          });
          const refusals = [
            { instance: "fe-test", refused: true, why: "connection refused" },
            { instance: "other", refused: true, why: "connection refused" },
          ];
          const fe1 = { node: "fe1", epoch: 0, readOnlyNode: null };
          const byName = await corroborate(
            spelled({ fe1: `localhost:${port}`, fe2: `127.0.0.1:${cluster.nodes.fe2.port}` }),
            { primary: fe1, mine: refusals[0] },
          );
          const fe2 = byName.receivers.find((r) => r.node === "fe2")!;
          assert.equal(fe2.streaming, true, fe2.why);
          assert.equal(
            fe2.why,
            `receiver streaming from 127.0.0.1:${port}, no other node's address: taken as fe1 ` +
              `(localhost:${port})`,
          );
          const verdict = judgeEvidence({ primary: fe1, lastGoodSample: sample }, {
            ...byName,
            observers: refusals,
          });
          assert.equal(verdict.certain, false, verdict.why);
          assert.match(verdict.why, /fe2 still streams from fe1/);

          // A sender that is, spelled exactly, another known node (here fe9, the same
          // server under a second name): a cascading stream, which says nothing about fe1;
          // a node out of recovery says nothing either. Nobody vouches: not certain.
          const cascading = await corroborate(
            spelled({
              fe1: `localhost:${port}`,
              fe2: `127.0.0.1:${cluster.nodes.fe2.port}`,
              fe9: `127.0.0.1:${port}`,
            }),
            { primary: fe1, mine: refusals[0] },
          );
          assert.deepEqual(
            cascading.receivers.map((r) => [r.node, r.streaming, r.why]),
            [
              [
                "fe2",
                null,
                `receiver streaming from fe9 (127.0.0.1:${port}): says nothing about fe1`,
              ],
              ["fe9", null, "out of recovery: no WAL receiver to tell about fe1"],
            ],
          );
          const blind = judgeEvidence({ primary: fe1, lastGoodSample: sample }, {
            ...cascading,
            observers: refusals,
          });
          assert.equal(blind.certain, false, blind.why);
          assert.match(blind.why, /no replica answered to show its WAL receiver/);
        },
      );

      await t.step("promote is refused while the primary still answers", async () => {
        const err = await rejected(promote(base, {
          primary: { node: "fe1", epoch: 1, readOnlyNode: null },
          token: null,
          last: sample,
        }));
        assert.equal(err.code, "FAILOVER_REFUSED");
        assert.match(err.message, /fe1/);
        assert.equal(await inRecovery("fe2"), true, "nothing was promoted");
      });

      await t.step(
        "no eligible replica: nothing promoted; promote and reassess give one decision",
        async () => {
          const before = { published: await published(), history: await history("fe1", "true") };
          // Promote's and reassess's look at the same cluster: one sentence, one fallback.
          const outcome = async (deps: FailoverDeps, last: ReplicationSample) => {
            const primary = { node: "fe3", epoch: 1, readOnlyNode: null };
            const out = await promote(deps, { primary, token: null, last });
            if (out.node !== null) assert.fail(`nothing may be promoted, got ${out.node}`);
            const again = await reassess(deps, { primary, last, token: null });
            assert.equal(again.primaryOk, false);
            assert.equal(again.choice.node, null);
            const promoted = degradedSentence("fe3", {
              why: out.choice.why,
              readOnlyNode: out.readOnlyNode,
            });
            const reassessed = degradedSentence("fe3", {
              why: again.choice.why,
              readOnlyNode: again.readOnlyNode,
            });
            assert.equal(reassessed, promoted, "the same situation, the same sentence");
            return { readOnlyNode: out.readOnlyNode, sentence: promoted };
          };

          // The only replica was far behind at the last sample (asynchronous mode): it is not
          // promoted, but it serves reads.
          const lagging: ReplicationSample = {
            at: Date.now(),
            primary: "fe3",
            sync: null,
            nodes: [{ ...sample!.nodes.find((n) => n.name === "fe2")!, lagBytes: 2 ** 40 }],
          };
          const behind = await outcome(only(["fe3", "fe2"], { syncMode: false }), lagging);
          assert.equal(behind.readOnlyNode, "fe2");
          assert.match(
            behind.sentence,
            /^degraded: fe3 is down and no eligible replica: fe2 was 1024\.0 GB behind at the last sample \(limit [^)]+\); reads go to fe2, writes are refused$/,
          );

          // Synchronous mode: a standby that confirmed commits cannot be checked, so the
          // reachable replica may not hold every acknowledged write.
          const unsure = await outcome(only(["fe3", "fe2"]), {
            ...sample!,
            primary: "fe3",
            sync: { method: "FIRST", num: 2, names: ["fe2", "fe4"] },
          });
          assert.equal(unsure.readOnlyNode, "fe2");
          assert.match(
            unsure.sentence,
            /^degraded: fe3 is down and no replica provably holds every acknowledged write: every one of fe2, fe4 confirmed commits, and fe4 cannot be checked; reads go to fe2, writes are refused$/,
          );

          // Every replica gone, while the dead one is still a synchronous standby: the plain
          // reason, not the synchronous-standby argument (issue 12, run 2), and nobody to read.
          const gone = createNodeClient(
            { name: "fe4", url: DOWN_URL, address: "127.0.0.1:1" },
            { applicationName: "fe-test" },
          );
          try {
            const deps = {
              ...only(["fe3"]),
              nodes: new Map([...only(["fe3"]).nodes, ["fe4", gone]]),
            };
            const none = await outcome(deps, {
              ...sample!,
              primary: "fe3",
              sync: { method: "ANY", num: 1, names: ["fe4"] },
            });
            assert.equal(none.readOnlyNode, null);
            assert.match(
              none.sentence,
              /^degraded: fe3 is down and no eligible replica: fe4 is unreachable \(connection refused\); no node serves reads or writes$/,
            );
          } finally {
            await gone.close();
          }

          assert.equal(await inRecovery("fe2"), true, "nothing was promoted");
          assert.deepEqual(
            { published: await published(), history: await history("fe1", "true") },
            before,
            "nothing was published or recorded",
          );
        },
      );

      await t.step("a node already out of recovery is adopted, not promoted again", async () => {
        const out = await promote(only(["fe3", "fe1", "fe2"]), {
          primary: { node: "fe3", epoch: 1, readOnlyNode: null },
          token: null,
          last: null,
        });
        assert.equal(out.node, "fe1");
        assert.equal(out.adopted, true);
        assert.equal(await inRecovery("fe2"), true);
      });

      await t.step("switchover refusals leave the primary writable and unfenced", async () => {
        const request = (target: string | null) => ({ id: "r1", target, requestedBy: "test" });
        const primary = { node: "fe1", epoch: 1, readOnlyNode: null };
        const cases: [string, () => Promise<unknown>][] = [
          // Not a node of the cluster.
          ["fe9", () => switchover(base, { primary, token: null, request: request("fe9") })],
          // Already the primary.
          ["fe1", () => switchover(base, { primary, token: null, request: request("fe1") })],
          // Not a streaming replica.
          ["fe3", () => switchover(base, { primary, token: null, request: request("fe3") })],
          // The primary itself is not healthy.
          ["fe3", () =>
            switchover(base, {
              primary: { node: "fe3", epoch: 1, readOnlyNode: null },
              token: null,
              request: request("fe2"),
            })],
        ];
        for (const [named, call] of cases) {
          const err = await rejected(call());
          assert.equal(err.code, "FAILOVER_REFUSED", err.message);
          assert.match(err.message, new RegExp(named));
        }
        assert.equal(await psql("fe1", "show default_transaction_read_only"), "off");
        assert.equal(await inRecovery("fe1"), false);
        assert.equal(await inRecovery("fe2"), true);
      });

      await t.step("repairs: lift a fence, set and clear synchronous standbys", async () => {
        const primary = { node: "fe1", epoch: 1, readOnlyNode: null };
        await clients.get("fe1")!.run(fenceNode, { timeoutMs: 5000, what: "fence" });
        await assert.rejects(
          psql("fe1", "insert into replication_canary (instance) values ('fenced')"),
          /read-only transaction/,
        );
        await repair(base, {
          finding: { kind: "unfence", node: "fe1", why: "fe1 is the published primary" },
          primary,
          token: null,
        });
        await psql("fe1", "insert into replication_canary (instance) values ('unfenced')");

        await repair(base, {
          finding: { kind: "sync", node: "fe1", standbys: ["fe2"], why: "fe2 streams" },
          primary,
          token: null,
        });
        assert.match(await psql("fe1", "show synchronous_standby_names"), /fe2/);
        assert.equal(await psql("fe1", "show synchronous_commit"), "remote_apply");
        // A commit now waits for fe2 to apply it: it is visible there when it returns.
        const id = await psql(
          "fe1",
          "insert into replication_canary (instance) values ('sync') returning id",
        );
        assert.equal(
          await psql("fe2", `select count(*) from replication_canary where id=${id}`),
          "1",
        );
        await repair(base, {
          finding: { kind: "sync", node: "fe1", standbys: [], why: "no standby" },
          primary,
          token: null,
        });
        assert.equal(await psql("fe1", "show synchronous_standby_names"), "");
      });

      await t.step("re-pointing a replica keeps it streaming through its slot", async () => {
        const out = await repair(base, {
          finding: { kind: "repoint_replica", node: "fe2", why: "fe2 follows fe1" },
          primary: { node: "fe1", epoch: 1, readOnlyNode: null },
          token: null,
        });
        assert.match(made(out), /fe2/);
        const conninfo = await psql("fe2", "show primary_conninfo");
        assert.match(conninfo, new RegExp(`port=${cluster.nodes.fe1.port}\\b`));
        assert.match(conninfo, /application_name=fe2/);
        assert.equal(await psql("fe2", "show primary_slot_name"), "rs_fe2");
        await until(
          async () =>
            (await sampleCluster(base, "fe1", 5000)).nodes.find((n) => n.name === "fe2")!
              .streaming,
          { ms: 30_000, what: "fe2 streaming again after the re-point" },
        );
      });

      await t.step("a rejoin that cannot start is recorded as fenced, with the error", async () => {
        const primary = { node: "fe1", epoch: 1, readOnlyNode: null };
        const down = await repair(base, {
          finding: { kind: "rejoin", node: "fe3", why: "fe3 must follow fe1" },
          primary,
          token: null,
        });
        assert.ok(!down.ok, "the rejoin of a node that is down fails");
        assert.match(down.error, /^cannot fence fe3: .*refused/);
        assert.equal(down.leftStopped, false, "nothing was stopped here");
        assert.equal(down.notOurs, false, "down, not another host's: tried again later");
        const unknown = await repair(base, {
          finding: { kind: "start_standby", node: "fe3", why: "fe3 was parked" },
          primary,
          token: null,
        });
        assert.ok(!unknown.ok);
        assert.equal(unknown.error, "where fe3 runs is not known");
        assert.equal(unknown.leftStopped, false, "not startable from here: not ours to park");
        assert.deepEqual((await history("fe1", "old_primary = 'fe3'")).split("\n"), [
          "rejoin|fe3|fe1|fenced|true",
          "rejoin|fe3|fe1|fenced|true",
        ]);
      });

      await t.step(
        "a switchover whose target does not catch up is aborted: fe1 stays primary",
        async () => {
          // Replay paused: fe2 receives WAL but never replays past fe1's last checkpoint.
          await psql("fe2", "select pg_wal_replay_pause()");
          const err = await rejected(switchover(base, {
            primary: { node: "fe1", epoch: 1, readOnlyNode: null },
            token: null,
            request: { id: "r2", target: "fe2", requestedBy: "test" },
          }));
          assert.equal(err.code, "FAILOVER_TIMEOUT");
          assert.match(err.message, /fe1/);
          // fe1 was stopped cleanly and started again: primary, unfenced, taking writes.
          assert.equal(await inRecovery("fe1"), false);
          assert.equal(await psql("fe1", "show default_transaction_read_only"), "off");
          const id = await psql(
            "fe1",
            "insert into replication_canary (instance) values ('after abort') returning id",
          );
          assert.equal(await inRecovery("fe2"), true);
          await psql("fe2", "select pg_wal_replay_resume()");
          await until(
            async () =>
              (await psql("fe2", `select count(*) from replication_canary where id=${id}`)) === "1",
            { ms: 30_000, what: `fe2 to replay canary ${id} written on fe1 after the abort` },
          );
          // pg_ctl started fe1 again; hand it back to the harness, which later kills and
          // restarts it (a postmaster killed outside the harness may linger as a zombie).
          const stopped = await pgCtlStop(base.tools, cluster.nodes.fe1.dataDir);
          assert.ok(stopped.success, stopped.stderr);
          await cluster.nodes.fe1.start();
        },
      );

      let epoch = 0;
      await t.step("publication: epochs only grow, and Redis garbage is not believed", async () => {
        await redis.set(primaryKey(keyspace), "not json");
        assert.equal(await published(), null);
        await redis.set(primaryKey(keyspace), JSON.stringify({ node: "fe1", epoch: -1 }));
        assert.equal(await published(), null);
        // Past every epoch failover_history already names (the rejoin records above).
        const recorded = Number(
          await psql("fe1", "select coalesce(max(epoch), 0) from failover_history"),
        );
        const boot = await publish(base, {
          kind: "bootstrap",
          node: "fe1",
          oldPrimary: "fe1",
          epoch: 0,
          readOnlyNode: null,
          token: null,
          startedAt: null,
          why: "first primary",
          requestId: null,
        });
        epoch = boot.published.epoch;
        assert.equal(epoch, recorded + 1);
        const record = await published();
        assert.deepEqual({ node: record?.node, epoch: record?.epoch }, { node: "fe1", epoch });
        assert.equal(
          await history("fe1", "kind = 'bootstrap'"),
          "bootstrap|fe1|fe1|completed|false",
        );
      });

      await t.step("degraded: a lagging replica is not promoted but serves reads", async () => {
        const lagging: ReplicationSample = {
          ...sample!,
          nodes: sample!.nodes.map((n) => n.name === "fe2" ? { ...n, lagBytes: 2 ** 40 } : n),
        };
        const deps = only(["fe3", "fe2"], { syncMode: false });
        const before = await published();
        const out = await reassess(deps, {
          primary: { node: "fe3", epoch, readOnlyNode: null },
          last: lagging,
          token: null,
        });
        assert.equal(out.primaryOk, false);
        assert.equal(out.choice.node, null);
        assert.match(out.choice.why, /^no eligible replica: fe2 was .+ behind/);
        assert.equal(out.readOnlyNode, "fe2");
        // A re-check only looks: announcing the fallback is the chart's (degraded.announcing).
        assert.deepEqual(await published(), before, "reassess published nothing");
        const why = degradedSentence("fe3", {
          why: out.choice.why,
          readOnlyNode: out.readOnlyNode,
        });
        await publish(deps, {
          kind: "degraded",
          node: "fe3",
          oldPrimary: "fe3",
          epoch,
          readOnlyNode: out.readOnlyNode,
          token: null,
          startedAt: null,
          why,
          requestId: null,
        });
        const record = await published();
        assert.equal(record?.kind, "degraded");
        assert.equal(record?.node, "fe3");
        assert.equal(record?.readOnlyNode, "fe2");
        assert.equal(record?.epoch, epoch, "degraded mode keeps the epoch");
        assert.equal(record?.why, why);

        // The primary answers again: degraded mode ends and Redis says so, whether or not a
        // replica served reads meanwhile.
        for (const readOnlyNode of ["fe2", null]) {
          await publish(base, {
            kind: "degraded",
            node: "fe1",
            oldPrimary: "fe1",
            epoch,
            readOnlyNode,
            token: null,
            startedAt: null,
            why: `degraded: fe1 is down (${readOnlyNode ?? "no fallback"})`,
            requestId: null,
          });
          const back = await reassess(base, {
            primary: { node: "fe1", epoch, readOnlyNode },
            last: sample,
            token: null,
          });
          assert.equal(back.primaryOk, true);
          const after = await published();
          assert.deepEqual(
            {
              kind: after?.kind,
              node: after?.node,
              readOnlyNode: after?.readOnlyNode,
              epoch: after?.epoch,
            },
            { kind: "recovered", node: "fe1", readOnlyNode: null, epoch },
            `recovered after degraded with read-only fallback ${readOnlyNode}`,
          );
          assert.equal(after?.why, "fe1 is back: leaving degraded mode");
        }
        // Degraded and recovered are statuses, not events of the history.
        assert.equal(
          await psql("fe1", "select count(*) from failover_history where kind <> 'rejoin'"),
          "1",
        );
      });

      let last: ReplicationSample | null = null;
      await t.step("failover: the killed primary's replica is promoted and published", async () => {
        const before = await psql(
          "fe1",
          "insert into replication_canary (instance) values ('before kill') returning id",
        );
        await until(
          async () =>
            (await psql("fe2", `select count(*) from replication_canary where id=${before}`)) ===
              "1",
          { ms: 30_000, what: `fe2 to replay canary ${before} before fe1 is killed` },
        );
        // The coordinator's last good sample: fe2 streams, so it can witness the stream lost.
        await until(async () => {
          last = await sampleCluster(base, "fe1", 5000);
          return last.nodes.find((n) => n.name === "fe2")!.streaming;
        }, { ms: 30_000, what: "fe2 streaming from fe1 before fe1 is killed" });
        await cluster.kill("fe1");
        // A crash: refused, and fe2's WAL receiver lost its stream (read again briefly while
        // it still showed one). One instance is not enough for certain evidence.
        const mine = { instance: "fe-test", refused: true, why: "connection refused" };
        const gone = await corroborate(base, {
          primary: { node: "fe1", epoch, readOnlyNode: null },
          mine,
        });
        const receiver = gone.receivers.find((r) => r.node === "fe2")!;
        assert.equal(receiver.streaming, false, receiver.why);
        const state = { primary: { node: "fe1", epoch, readOnlyNode: null }, lastGoodSample: last };
        const alone = judgeEvidence(state, gone);
        assert.equal(alone.certain, false);
        assert.match(alone.why, /only 1 of 1 instances saw fe1 refuse connections/);
        const two = judgeEvidence(state, {
          ...gone,
          observers: [mine, { ...mine, instance: "other" }],
        });
        assert.equal(two.certain, true, two.why);
        const out = await promote(base, {
          primary: { node: "fe1", epoch, readOnlyNode: null },
          token: null,
          last,
        });
        assert.equal(out.node, "fe2");
        assert.equal(out.adopted, false);
        assert.equal(await inRecovery("fe2"), false);
        assert.equal(
          await psql("fe2", `select count(*) from replication_canary where id=${before}`),
          "1",
        );
        const pub = await publish(base, {
          kind: "failover",
          node: "fe2",
          oldPrimary: "fe1",
          epoch: epoch + 1,
          readOnlyNode: null,
          token: null,
          startedAt: Date.now() - 1000,
          why: out.why,
          requestId: null,
        });
        assert.equal(pub.published.epoch, epoch + 1);
        epoch = pub.published.epoch;
        assert.deepEqual(
          { node: (await published())?.node, epoch: (await published())?.epoch },
          { node: "fe2", epoch },
        );
        assert.equal(await history("fe2", "kind = 'failover'"), "failover|fe1|fe2|completed|false");
      });

      await t.step("the pool follows the newer epoch only", async () => {
        const err = await rejected(
          repointPool(base, { node: "fe9", epoch: epoch + 1, readOnly: false }),
        );
        assert.equal(err.code, "VALIDATION_FAILED");
        await repointPool(base, { node: "fe2", epoch, readOnly: false });
        const port = async () => Number((await db!.sql`select inet_server_port() as p`)[0].p);
        assert.equal(await port(), cluster.nodes.fe2.port);
        // An older epoch (a late message about fe1) changes nothing.
        await repointPool(base, { node: "fe1", epoch: epoch - 1, readOnly: false });
        assert.equal(db!.epoch, epoch);
        assert.equal(await port(), cluster.nodes.fe2.port);
      });

      await t.step(
        "the old primary on another host is only fenced: the rejoin says it is not ours to stop",
        async () => {
          await cluster.nodes.fe1.start();
          assert.equal(await inRecovery("fe1"), false, "it came back writable: split brain to fix");
          const out = await repair({ ...base, settings: { ...settings, localNodes: ["fe2"] } }, {
            finding: { kind: "rejoin", node: "fe1", why: "fe1 is writable but not the primary" },
            primary: { node: "fe2", epoch, readOnlyNode: null },
            token: null,
          });
          assert.ok(!out.ok);
          assert.match(
            out.error,
            /^fe1 is fenced read-only but FAILOVER_LOCAL_NODES puts it on another host: stop it there and run pg_rewind/,
          );
          assert.equal(out.leftStopped, false, "the chart must not park (and start) fe1");
          assert.equal(out.notOurs, true, "the chart leaves fe1 to its operator");
          // Still running, writable no more: what the operator finds there, and what the
          // chart's samples show while it waits for them (no new rejoin while fenced).
          assert.equal(await inRecovery("fe1"), false);
          assert.equal(await psql("fe1", "show default_transaction_read_only"), "on");
          const { nodes } = await sampleCluster(base, "fe2", 5000);
          const seen = nodes.find((n) => n.name === "fe1")!;
          assert.deepEqual(
            [seen.reachable, seen.inRecovery, seen.readOnlyFenced, seen.state],
            [true, false, true, "fenced"],
          );
        },
      );

      await t.step(
        "the old primary, started again, is rewound and rejoins as a replica",
        async () => {
          assert.equal(await inRecovery("fe1"), false, "it is still writable: split brain to fix");
          const out = await repair(base, {
            finding: { kind: "rejoin", node: "fe1", why: "fe1 is writable but not the primary" },
            primary: { node: "fe2", epoch, readOnlyNode: null },
            token: null,
          });
          assert.match(made(out), /fe1/);
          assert.equal(await inRecovery("fe1"), true);
          const id = await psql(
            "fe2",
            "insert into replication_canary (instance) values ('after rejoin') returning id",
          );
          await until(
            async () =>
              (await psql("fe1", `select count(*) from replication_canary where id=${id}`)) === "1",
            { ms: 30_000, what: `fe1 to replay canary ${id} written on fe2` },
          );
          assert.deepEqual(
            (await history("fe2", "kind = 'rejoin' and old_primary = 'fe1'")).split("\n"),
            ["rejoin|fe1|fe2|fenced|true", "rejoin|fe1|fe2|completed|false"],
          );
        },
      );

      await t.step(
        "a rejoin that fails after stopping a node here says so; started later, it streams",
        async () => {
          // pg_rewind cannot reach its source (the primary vanished for it): a real failure
          // after the stop.
          const tools = base.tools;
          const cutOff: FailoverDeps = {
            ...base,
            tools: {
              ...tools,
              run: (program, args, options) =>
                tools.run(
                  program,
                  args,
                  program === "pg_rewind" ? { ...options, connection: { url: DOWN_URL } } : options,
                ),
            },
          };
          const primary = { node: "fe2", epoch, readOnlyNode: null };
          // The coordinator's samples remember where each node runs (start_standby needs it).
          await sampleNodes(base, { primary, leader: 1, alerts: [], why: "sample" });
          assert.ok(base.identities.has("fe1"));
          const out = await repair(cutOff, {
            finding: { kind: "rejoin", node: "fe1", why: "fe1 must be rewound" },
            primary,
            token: null,
          });
          assert.ok(!out.ok);
          assert.match(out.error, /^pg_rewind of fe1 failed, it stays stopped: /);
          assert.equal(out.leftStopped, true, "the chart parks fe1 and starts it later");
          assert.equal(out.notOurs, false);
          await assert.rejects(psql("fe1", "select 1"));
          // What the chart's start_standby does with a parked node once its backoff is over.
          const started = await repair(base, {
            finding: { kind: "start_standby", node: "fe1", why: "fe1 was parked" },
            primary,
            token: null,
          });
          assert.match(made(started), /^started fe1 as a replica of fe2/);
          assert.equal(await inRecovery("fe1"), true);
        },
      );
    } finally {
      await db?.close(0);
      await Promise.all([...clients.values()].map((c) => c.close()));
      await transport.close();
      await bus.close();
      await closeRedis(redis);
    }
  },
});
