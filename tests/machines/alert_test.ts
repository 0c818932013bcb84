import assert from "node:assert/strict";
import { createActor, fromPromise, SimulatedClock } from "xstate";
import {
  type AlertContext,
  alertMachine,
  type AlertNotification,
  type AlertRule,
  type AlertSample,
  type AlertStatus,
} from "../../machines/alert.ts";

const RULE: AlertRule = {
  name: "memory_high",
  op: ">",
  threshold: 90,
  forMs: 30_000,
  everyMs: 10_000,
  noData: "ok",
  severity: "critical",
  summary: "memory above 90 %",
};

/** Runs the alert chart on a SimulatedClock with a scripted evaluation. */
function harness(rule: Partial<AlertRule> = {}) {
  const clock = new SimulatedClock();
  const script = { value: 0 as number | null, fail: null as string | null, calls: 0 };
  const notified: AlertNotification[] = [];
  const statuses: AlertStatus[] = [];
  const tracked: (number | null)[] = [];
  const last = { tracked: null as AlertContext | null };
  const logic = alertMachine.provide({
    actors: {
      evaluate: fromPromise<AlertSample, { rule: AlertRule }>(() => {
        script.calls++;
        if (script.fail) return Promise.reject(new Error(script.fail));
        return Promise.resolve({ value: script.value, at: clock.now(), tags: { host: "h1" } });
      }),
    },
    actions: {
      notify: (_, n: AlertNotification) => notified.push(n),
      track: (_, p: { status: AlertStatus; context: AlertContext }) => {
        if (statuses.at(-1) !== p.status) statuses.push(p.status);
        tracked.push(p.context.value);
        last.tracked = p.context;
      },
    },
  });
  const actor = createActor(logic, { clock, input: { rule: { ...RULE, ...rule } } });
  actor.start();
  /** Moves the clock and lets the evaluation promise settle. */
  async function advance(ms: number) {
    clock.increment(ms);
    for (let i = 0; i < 5; i++) await Promise.resolve();
  }
  const status = () => (actor.getSnapshot().value as { status: AlertStatus }).status;
  return { clock, script, notified, statuses, tracked, last, actor, advance, status };
}

Deno.test("alert statechart", async (t) => {
  await t.step("fires after the condition held for `for`, then resolves", async () => {
    const h = harness();
    h.script.value = 50;
    await h.advance(10_000);
    assert.equal(h.status(), "inactive");
    assert.match(h.actor.getSnapshot().context.reason, /does not hold \(50 > 90 is false\)/);

    h.script.value = 95;
    await h.advance(10_000); // t = 20 s: breach begins
    assert.equal(h.status(), "pending");
    assert.equal(h.actor.getSnapshot().context.since, 20_000);
    await h.advance(10_000); // 30 s
    await h.advance(10_000); // 40 s
    assert.equal(h.status(), "pending");
    assert.equal(h.notified.length, 0);

    h.script.value = 97;
    await h.advance(10_000); // 50 s = since + for
    assert.equal(h.status(), "firing");
    assert.equal(h.notified.length, 1);
    assert.equal(h.notified[0].status, "firing");
    assert.equal(h.notified[0].at, 50_000);
    assert.equal(h.notified[0].since, 20_000);
    assert.deepEqual(h.notified[0].tags, { host: "h1" });
    assert.match(h.notified[0].reason, /held for 30000 ms/);

    h.script.value = 40;
    await h.advance(10_000); // 60 s
    assert.equal(h.status(), "resolved");
    assert.equal(h.notified.length, 2);
    assert.equal(h.notified[1].status, "resolved");
    assert.equal(h.notified[1].value, 40);
    assert.equal(h.notified[1].at, 60_000);
    assert.match(h.notified[1].reason, /resolved: 40 > 90 no longer holds/);
    assert.deepEqual(h.statuses, ["inactive", "pending", "firing", "resolved"]);
    // Every evaluation is tracked, so /alerts shows the latest value, not the one at the change.
    assert.equal(h.tracked.at(-1), 40);
    assert.ok(h.tracked.filter((v) => v === 95).length >= 3, "pending re-tracks each sample");

    await h.advance(10_000); // still fine: no more notifications
    assert.equal(h.notified.length, 2);
    h.actor.stop();
  });

  await t.step("a breach shorter than `for` never fires", async () => {
    const h = harness();
    h.script.value = 99;
    await h.advance(10_000);
    assert.equal(h.status(), "pending");
    h.script.value = 10;
    await h.advance(10_000);
    assert.equal(h.status(), "inactive");
    assert.equal(h.actor.getSnapshot().context.since, null);
    await h.advance(60_000);
    assert.equal(h.notified.length, 0);
    h.actor.stop();
  });

  await t.step("a failed evaluation keeps the state and is recorded", async () => {
    const h = harness({ forMs: 0 });
    h.script.value = 95;
    await h.advance(10_000);
    await h.advance(0); // the zero `for` delay
    assert.equal(h.status(), "firing");
    h.script.fail = "connect ECONNREFUSED";
    await h.advance(10_000);
    await h.advance(10_000);
    const ctx = h.actor.getSnapshot().context;
    assert.equal(h.status(), "firing");
    assert.equal(ctx.failures, 2);
    assert.equal(ctx.lastError, "connect ECONNREFUSED");
    assert.match(ctx.reason, /evaluation failed \(2 in a row\), state kept/);
    h.script.fail = null;
    h.script.value = 1;
    await h.advance(10_000);
    assert.equal(h.status(), "resolved");
    assert.equal(h.actor.getSnapshot().context.failures, 0);
    h.actor.stop();
  });

  await t.step("no data counts as the rule says", async () => {
    const ok = harness({ forMs: 0, noData: "ok" });
    ok.script.value = 95;
    await ok.advance(10_000);
    await ok.advance(0);
    assert.equal(ok.status(), "firing");
    ok.script.value = null;
    await ok.advance(10_000);
    assert.equal(ok.status(), "resolved");
    assert.equal(ok.notified.at(-1)?.value, null);
    ok.actor.stop();

    const keep = harness({ forMs: 0, noData: "keep" });
    keep.script.value = 95;
    await keep.advance(10_000);
    await keep.advance(0);
    keep.script.value = null;
    await keep.advance(10_000);
    assert.equal(keep.status(), "firing");
    keep.actor.stop();

    const alerting = harness({ forMs: 20_000, noData: "alerting" });
    alerting.script.value = null;
    await alerting.advance(10_000);
    assert.equal(alerting.status(), "pending");
    await alerting.advance(20_000);
    assert.equal(alerting.status(), "firing");
    alerting.actor.stop();
  });

  await t.step("EVALUATE_NOW evaluates without waiting", async () => {
    const h = harness();
    h.script.value = 95;
    h.actor.send({ type: "EVALUATE_NOW" });
    for (let i = 0; i < 5; i++) await Promise.resolve();
    assert.equal(h.script.calls, 1);
    assert.equal(h.status(), "pending");
    h.actor.stop();
  });

  await t.step("every operator compares as written", async () => {
    const cases: [AlertRule["op"], number, boolean][] = [
      [">", 91, true],
      [">", 90, false],
      [">=", 90, true],
      ["<", 89, true],
      ["<=", 90, true],
      ["<=", 91, false],
      ["==", 90, true],
      ["!=", 90, false],
    ];
    for (const [op, value, fires] of cases) {
      const h = harness({ op, forMs: 0 });
      h.script.value = value;
      await h.advance(10_000);
      await h.advance(0);
      assert.equal(h.status() === "firing", fires, `${value} ${op} 90`);
      h.actor.stop();
    }
  });

  await t.step(
    "one sample path: each evaluation counted once, tracked as the chart holds it",
    async () => {
      const h = harness();
      for (const value of [50, 95, 95, 95, 97, 40]) {
        h.script.value = value;
        await h.advance(10_000);
        const ctx = h.actor.getSnapshot().context;
        assert.deepEqual(h.last.tracked, ctx, `after ${value}`);
      }
      assert.equal(h.actor.getSnapshot().context.evaluations, 6);
      assert.equal(h.status(), "resolved");
      h.actor.stop();
    },
  );

  await t.step("no data under `keep` counts the evaluation but keeps the last value", async () => {
    const h = harness({ noData: "keep", forMs: 20_000 });
    h.script.value = 95;
    await h.advance(10_000);
    assert.equal(h.status(), "pending");
    h.script.value = null;
    await h.advance(10_000);
    const ctx = h.actor.getSnapshot().context;
    assert.equal(ctx.value, 95);
    assert.equal(ctx.evaluatedAt, 20_000);
    assert.equal(ctx.evaluations, 2);
    await h.advance(10_000); // 30 s = since + for
    assert.equal(h.status(), "firing");
    assert.equal(h.notified[0].value, 95);
    assert.match(h.notified[0].reason, /95 > 90 held for 20000 ms/);
    h.actor.stop();
  });

  await t.step("the context is data: a persisted snapshot survives JSON and restores", async () => {
    const h = harness({ forMs: 0 });
    h.script.value = 95;
    await h.advance(10_000);
    await h.advance(0);
    assert.equal(h.status(), "firing");
    const ctx = h.actor.getSnapshot().context;
    assert.deepEqual(JSON.parse(JSON.stringify(ctx)), ctx);
    const persisted = JSON.parse(JSON.stringify(h.actor.getPersistedSnapshot()));
    h.actor.stop();
    const restored = createActor(alertMachine, { snapshot: persisted, input: { rule: RULE } });
    restored.start();
    assert.deepEqual(restored.getSnapshot().value, { evaluation: "waiting", status: "firing" });
    assert.deepEqual(restored.getSnapshot().context, ctx);
    restored.stop();
  });
});
