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
import { leaseModel } from "./lease.ts";
import { supervisorModel } from "./supervisor.ts";

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
