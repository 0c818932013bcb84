import assert from "node:assert/strict";
import { createActor, fromPromise, SimulatedClock } from "xstate";
import {
  type CollectOutput,
  cycleFailed,
  metricsCollectorMachine,
  type SourceChanges,
  type SourceReport,
} from "../../machines/metrics_collector.ts";

type Script = { sources: Record<string, SourceReport>; points: number; throws: string | null };

function harness(
  input: { intervalMs?: number; failAfter?: number; keepNotices?: number; firstDelayMs?: number } =
    {},
) {
  const clock = new SimulatedClock();
  const script: Script = {
    sources: { system: { points: 3, ms: 1, error: null } },
    points: 3,
    throws: null,
  };
  const recorded: CollectOutput[] = [];
  const changes: SourceChanges[] = [];
  const cycles: number[] = [];
  const logic = metricsCollectorMachine.provide({
    actors: {
      collect: fromPromise<CollectOutput, { cycle: number }>(({ input }) => {
        cycles.push(input.cycle);
        if (script.throws) return Promise.reject(new Error(script.throws));
        return Promise.resolve({
          at: clock.now(),
          durationMs: 2,
          points: Array.from({ length: script.points }, (_, i) => ({
            measurement: "m",
            fields: { v: i },
            time: clock.now(),
          })),
          sources: structuredClone(script.sources),
        });
      }),
    },
    actions: {
      record: (_, output: CollectOutput) => recorded.push(output),
      reportSources: (_, c: SourceChanges) => changes.push(c),
    },
  });
  const actor = createActor(logic, { clock, input: { intervalMs: 10_000, ...input } });
  async function settle() {
    for (let i = 0; i < 5; i++) await Promise.resolve();
  }
  async function advance(ms: number) {
    clock.increment(ms);
    await settle();
  }
  const state = () => JSON.stringify(actor.getSnapshot().value);
  return { clock, script, recorded, changes, cycles, actor, advance, settle, state };
}

Deno.test("metrics collector statechart", async (t) => {
  await t.step("collects at start and then every interval, recording each cycle", async () => {
    const h = harness();
    h.actor.start();
    await h.settle();
    assert.equal(h.recorded.length, 1);
    assert.equal(h.state(), '{"running":"waiting"}');
    await h.advance(9_999);
    assert.equal(h.recorded.length, 1);
    await h.advance(1);
    assert.equal(h.recorded.length, 2);
    await h.advance(10_000);
    const ctx = h.actor.getSnapshot().context;
    assert.equal(ctx.cycles, 3);
    assert.equal(ctx.totalPoints, 9);
    assert.equal(ctx.lastCollectedAt, 20_000);
    assert.deepEqual(h.cycles, [1, 2, 3]);
    assert.match(ctx.reason, /collected 3 points from 1 sources/);
    h.actor.stop();
  });

  await t.step("with firstDelayMs the first collection waits (COLLECT_NOW does not)", async () => {
    const h = harness({ firstDelayMs: 1000 });
    h.actor.start();
    await h.settle();
    assert.equal(h.state(), '{"running":"starting"}');
    await h.advance(999);
    assert.equal(h.recorded.length, 0);
    await h.advance(1);
    assert.equal(h.recorded.length, 1);
    h.actor.stop();
    const now = harness({ firstDelayMs: 60_000 });
    now.actor.start();
    now.actor.send({ type: "COLLECT_NOW" });
    await now.settle();
    assert.equal(now.recorded.length, 1);
    now.actor.stop();
  });

  await t.step("COLLECT_NOW collects without waiting", async () => {
    const h = harness();
    h.actor.start();
    await h.settle();
    h.actor.send({ type: "COLLECT_NOW" });
    await h.settle();
    assert.equal(h.recorded.length, 2);
    h.actor.stop();
  });

  await t.step("a failing source alone is reported, not a failed cycle", async () => {
    const h = harness();
    h.script.sources.cache = { points: 0, ms: 5, error: "ECONNREFUSED" };
    h.actor.start();
    await h.settle();
    const ctx = h.actor.getSnapshot().context;
    assert.equal(ctx.failures, 0);
    assert.deepEqual(ctx.sourceErrors, { cache: "ECONNREFUSED" });
    assert.match(ctx.reason, /failed: cache/);
    h.actor.stop();
  });

  await t.step("failAfter failed cycles make it degraded; a good one recovers", async () => {
    const h = harness({ failAfter: 3 });
    h.script.sources = {
      system: { points: 0, ms: 1, error: "no /proc" },
      database: { points: 0, ms: 1, error: "timeout" },
    };
    h.script.points = 0;
    h.actor.start();
    await h.settle();
    assert.equal(h.state(), '{"running":"waiting"}');
    assert.equal(h.actor.getSnapshot().context.failures, 1);
    h.script.throws = "boom";
    await h.advance(10_000);
    assert.equal(h.actor.getSnapshot().context.failures, 2);
    await h.advance(10_000);
    assert.equal(h.state(), '{"running":"degraded"}');
    assert.match(h.actor.getSnapshot().context.reason, /degraded because 3 collections/);
    assert.equal(h.recorded.length, 1, "a thrown collection records nothing");

    h.script.throws = null;
    h.script.sources = { system: { points: 3, ms: 1, error: null } };
    h.script.points = 3;
    await h.advance(10_000);
    assert.equal(h.state(), '{"running":"waiting"}');
    assert.equal(h.actor.getSnapshot().context.failures, 0);
    h.actor.stop();
  });

  await t.step("skipped sources do not make a cycle fail", () => {
    const output = {
      at: 0,
      durationMs: 0,
      points: [],
      sources: {
        streams: { points: 0, ms: 0, error: null, skipped: "another instance" },
        system: { points: 0, ms: 0, error: "x" },
      },
    };
    assert.equal(cycleFailed(output), true);
    output.sources.system.error = null as unknown as string;
    assert.equal(cycleFailed(output), false);
  });

  await t.step("keeps the latest alert notices from the cluster", async () => {
    const h = harness({ keepNotices: 2 });
    h.actor.start();
    await h.settle();
    for (const rule of ["a", "b", "c"]) {
      h.actor.send({
        type: "metrics.alert",
        rule,
        status: "firing",
        value: 1,
        instance: "i2",
        at: 5,
      });
    }
    assert.deepEqual(h.actor.getSnapshot().context.notices.map((n) => n.rule), ["b", "c"]);
    h.actor.stop();
  });

  await t.step("STOP ends it", async () => {
    const h = harness();
    h.actor.start();
    await h.settle();
    h.actor.send({ type: "STOP" });
    assert.equal(h.actor.getSnapshot().status, "done");
    await h.advance(60_000);
    assert.equal(h.recorded.length, 1);
  });

  await t.step("a source's failure and recovery are reported once each, by the chart", async () => {
    const h = harness();
    h.actor.start();
    await h.settle();
    h.script.sources.cache = { points: 0, ms: 5, error: "ECONNREFUSED" };
    await h.advance(10_000);
    await h.advance(10_000); // still failing: not reported again
    h.script.throws = "boom"; // a thrown cycle says nothing about sources
    await h.advance(10_000);
    h.script.throws = null;
    delete h.script.sources.cache;
    await h.advance(10_000);
    await h.advance(10_000);
    const reported = h.changes.filter((c) => Object.keys(c.failed).length || c.recovered.length);
    assert.deepEqual(reported, [
      { failed: { cache: "ECONNREFUSED" }, recovered: [] },
      { failed: {}, recovered: ["cache"] },
    ]);
    assert.deepEqual(h.actor.getSnapshot().context.sourceErrors, {});
    h.actor.stop();
  });

  await t.step("the context is data: a persisted snapshot survives JSON and restores", async () => {
    const h = harness({ failAfter: 1 });
    h.script.sources = { system: { points: 0, ms: 1, error: "no /proc" } };
    h.actor.start();
    await h.settle();
    assert.equal(h.state(), '{"running":"degraded"}');
    const ctx = h.actor.getSnapshot().context;
    assert.deepEqual(JSON.parse(JSON.stringify(ctx)), ctx);
    const persisted = JSON.parse(JSON.stringify(h.actor.getPersistedSnapshot()));
    h.actor.stop();
    const restored = createActor(metricsCollectorMachine, { snapshot: persisted, input: {} });
    restored.start();
    assert.deepEqual(restored.getSnapshot().value, { running: "degraded" });
    assert.deepEqual(restored.getSnapshot().context, ctx);
    restored.stop();
  });
});
