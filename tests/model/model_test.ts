/**
 * Model-based tests of the critical charts: every (state, move) pair reachable within each
 * model's depth bound is driven on the real machine with scripted effects and a simulated
 * clock, invariants checked at every step (see tests/model/_walk.ts). Figures go to the
 * test output; a broken invariant fails the test with its path as a replayable JSON list.
 *
 * `MODEL_DEPTH=N` overrides every model's depth bound (deeper walks for an on-demand run).
 */
import assert from "node:assert/strict";
import { type ChartModel, describeReport, type Move, replay, walkChart } from "./_walk.ts";
import { backupSchedulerModel } from "./backup_scheduler.ts";
import { failoverModel, failoverRepairsModel } from "./failover.ts";
import { leaseModel } from "./lease.ts";
import { loginModel, loginResumedModel } from "./login.ts";
import { supervisorModel } from "./supervisor.ts";
import { syncNodeModel } from "./sync_node.ts";

const depth = Number(Deno.env.get("MODEL_DEPTH") ?? "") || null;

// deno-lint-ignore no-explicit-any
function walk(model: ChartModel<any>): void {
  const report = walkChart(depth ? { ...model, maxDepth: depth } : model);
  console.log(describeReport(report));
  assert.ok(report.paths > report.states, "the walk explored more than the initial state");
  assert.deepEqual(
    report.violations.map((v) => `${v.invariant}: ${v.message} after ${JSON.stringify(v.path)}`),
    [],
  );
}

/** Replays a path once found broken and asserts it now keeps every invariant. */
// deno-lint-ignore no-explicit-any
function regression(model: ChartModel<any>, path: Move[]): void {
  const end = replay(model, path);
  assert.equal(end.violation, null, JSON.stringify(end.violation));
  assert.equal(end.steps, path.length);
}

Deno.test("model: lease", () => walk(leaseModel));

Deno.test("model: supervisor", async (t) => {
  await t.step("every path within the bound keeps the invariants", () => walk(supervisorModel));
  await t.step(
    "regression: failures from before a RETRY no longer free room for failures after it",
    () => {
      // Found by the walk: maxRestarts 1; a fails twice (given up), RETRY, fails again at
      // 300, and at 1000 the window event of the failure at 0 erased the failure at 300,
      // so the failure at 1100 was restarted although a had failed twice within 1000 ms.
      const path: Move[] = [
        { type: "settle", src: "a", outcome: "crash" },
        { type: "tick", ms: 100 },
        { type: "settle", src: "a", outcome: "crash" },
        { type: "send", event: { type: "RETRY", id: "a" } },
        { type: "settle", src: "a", outcome: "crash" },
        { type: "tick", ms: 100 },
        { type: "tick", ms: 800 },
        { type: "settle", src: "a", outcome: "crash" },
      ];
      regression(supervisorModel, path);
      const end = replay(supervisorModel, path);
      assert.equal(end.snapshot.context.children.a.status, "failed");
    },
  );
});

/** The instance becomes the failover coordinator and reads what Redis holds. */
const COORDINATOR_STARTS: Move[] = [
  { type: "send", event: { type: "LEASE_ACQUIRED", token: 11 } },
  { type: "settle", src: "readStart", outcome: "answer" },
];

/**
 * A sample shows the replicas streaming; then a refused probe, certain evidence and a
 * majority vote: the fast path to promoting.
 */
const FAST_PATH_MAJORITY: Move[] = [
  { type: "tick", ms: 50 },
  { type: "settle", src: "sampleNodes", outcome: "streaming" },
  { type: "tick", ms: 50 },
  { type: "settle", src: "probePrimary", outcome: "refused" },
  { type: "settle", src: "corroborate", outcome: "certain" },
  { type: "settle", src: "collectVotes", outcome: "majority" },
];

Deno.test("model: failover", async (t) => {
  await t.step("every path within the bound keeps the invariants", () => walk(failoverModel));
  await t.step(
    "regression: a switchover whose publication failed is published, not the node it replaced",
    () => {
      // Found by the walk: on a fresh cluster (nothing published) the coordinator switched
      // over to pg2, publishing it failed, and the next probe of pg1 "bootstrapped" pg1 as
      // the primary of epoch 1 although pg2 had been promoted.
      const path: Move[] = [
        ...COORDINATOR_STARTS,
        {
          type: "send",
          event: { type: "SWITCHOVER", id: "sw1", target: "pg2", requestedBy: "ops" },
        },
        { type: "settle", src: "repointPool", outcome: "ok" },
        { type: "settle", src: "switchover", outcome: "done" },
        { type: "settle", src: "publish", outcome: "crash" },
        { type: "tick", ms: 100 },
        { type: "settle", src: "probePrimary", outcome: "answers" },
      ];
      regression(failoverModel, path);
      const end = replay(failoverModel, [...path, {
        type: "settle",
        src: "publish",
        outcome: "answer",
      }]);
      assert.equal(end.violation, null);
      assert.deepEqual(end.world.redis, { node: "pg2", epoch: 1, token: 11 });
    },
  );
  await t.step(
    "regression: a failover whose publication failed is published when the old primary answers",
    () => {
      // Seen reading the chart: pg1 published at epoch 1; after the failover's publication
      // failed the detector went back to suspect, and the next answer of pg1 (back from a
      // partition) made it healthy following pg1 again, while pg2 was a promoted primary
      // nobody published. (At epoch 0 the bootstrap rule already published pg2.) Longer than
      // the walk's depth bound, so replayed here; the invariant above guards every shorter path.
      const path: Move[] = [
        ...COORDINATOR_STARTS,
        { type: "tick", ms: 100 },
        { type: "settle", src: "probePrimary", outcome: "answers" },
        { type: "settle", src: "publish", outcome: "answer" },
        ...FAST_PATH_MAJORITY,
        { type: "settle", src: "promote", outcome: "promoted" },
        { type: "settle", src: "publish", outcome: "crash" },
        { type: "tick", ms: 100 },
        { type: "settle", src: "probePrimary", outcome: "answers" },
      ];
      regression(failoverModel, path);
      const end = replay(failoverModel, [...path, {
        type: "settle",
        src: "publish",
        outcome: "answer",
      }]);
      assert.equal(end.violation, null);
      assert.deepEqual(end.world.redis, { node: "pg2", epoch: 2, token: 11 });
      assert.equal(end.snapshot.context.primary.node, "pg2");
    },
  );
  await t.step(
    "the walk reaches a fast-path promotion, and the fast path still needs a majority",
    () => {
      // Within the depth bound: one refused probe, certain evidence, a majority: promoting
      // (so the walk above covers the fast path and its invariants).
      const fast: Move[] = [...COORDINATOR_STARTS, ...FAST_PATH_MAJORITY];
      const end = replay(failoverModel, fast);
      assert.equal(end.violation, null);
      assert.equal(end.steps, fast.length);
      assert.ok(
        end.snapshot.matches({ detector: "promoting" }),
        JSON.stringify(end.snapshot.value),
      );
      assert.equal(end.snapshot.context.path, "fast");
      assert.ok(fast.length <= failoverModel.maxDepth);
      // Certain evidence and a minority: no promotion.
      const minority = replay(failoverModel, [
        ...fast.slice(0, -1),
        { type: "settle", src: "collectVotes", outcome: "minority" },
      ]);
      assert.equal(minority.violation, null);
      assert.ok(minority.snapshot.matches({ detector: "suspect" }));
    },
  );
});

Deno.test("model: failover repairs", async (t) => {
  await t.step(
    "every path within the bound keeps the invariants",
    () => walk(failoverRepairsModel),
  );
  await t.step(
    "a node is started as a standby after a rejoin left it stopped, not otherwise",
    () => {
      // pg3 came back writable; its rejoin fails; then it is down for two samples.
      const after = (outcome: string): Move[] => [
        ...COORDINATOR_STARTS,
        { type: "tick", ms: 50 },
        { type: "settle", src: "sampleNodes", outcome: "writable" },
        { type: "settle", src: "repair", outcome },
        { type: "tick", ms: 50 },
        { type: "settle", src: "sampleNodes", outcome: "down" },
        { type: "tick", ms: 50 },
        { type: "settle", src: "sampleNodes", outcome: "down" },
      ];
      const starts = (outcome: string) => {
        const end = replay(failoverRepairsModel, after(outcome));
        assert.equal(end.violation, null);
        return end.calls.filter((c) =>
          c.src === "repair" &&
          (c.input as { finding: { kind: string } }).finding.kind === "start_standby"
        ).length;
      };
      assert.equal(starts("stoppedHere"), 1, "stopped here: started as a replica");
      assert.equal(starts("notOurs"), 0, "on another host: never started from here");
      assert.equal(starts("crash"), 0, "refused before touching it: nothing to start");
    },
  );
  await t.step(
    "a node a rejoin left to its operator is rejoined again only once the sample changes",
    () => {
      // pg3 came back writable on another host: the rejoin fences it and fails (not ours);
      // two samples show it still fenced (its backoff is over at the second), then the fence
      // is lifted.
      const sample = (outcome: string): Move[] => [
        { type: "tick", ms: 50 },
        { type: "settle", src: "sampleNodes", outcome },
      ];
      const fenced: Move[] = [
        ...COORDINATOR_STARTS,
        ...sample("writable"),
        { type: "settle", src: "repair", outcome: "notOurs" },
        ...sample("fenced"),
        ...sample("fenced"),
      ];
      const rejoining = (path: Move[]) => {
        const end = replay(failoverRepairsModel, path);
        assert.equal(end.violation, null, JSON.stringify(end.violation));
        assert.equal(end.steps, path.length);
        return end.calls.filter((c) =>
          c.src === "repair" &&
          (c.input as { finding: { kind: string } }).finding.kind === "rejoin"
        ).length;
      };
      assert.equal(rejoining(fenced), 0, "fenced and left to its operator: not fenced again");
      assert.equal(rejoining([...fenced, ...sample("writable")]), 1, "the fence lifted: again");
    },
  );
});

Deno.test("model: login", () => walk(loginModel));

Deno.test("model: login resumed on another instance", () => walk(loginResumedModel));

Deno.test("model: backup_scheduler", () => walk(backupSchedulerModel));

Deno.test("model: sync_node", () => walk(syncNodeModel));
