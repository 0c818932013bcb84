import assert from "node:assert/strict";
import { createActor, createMachine, fromCallback, SimulatedClock } from "xstate";
import { backoffDelay, supervisedChildren, supervisorMachine } from "../../machines/supervisor.ts";

/** A child that runs until told to CRASH (then its machine throws). */
function crashable(log: string[], name: string) {
  return createMachine({
    id: name,
    initial: "up",
    states: {
      up: {
        invoke: {
          src: fromCallback(() => {
            log.push(`start ${name}`);
            return () => log.push(`stop ${name}`);
          }),
        },
        on: {
          CRASH: {
            actions: () => {
              throw new Error(`${name} crashed`);
            },
          },
          FINISH: "done",
        },
      },
      done: { type: "final" },
    },
  });
}

function start(log: string[], opts: { maxRestarts?: number; withinMs?: number } = {}) {
  const clock = new SimulatedClock();
  const actor = createActor(supervisorMachine, {
    clock,
    input: {
      children: [
        { id: "a", logic: crashable(log, "a") },
        { id: "b", logic: crashable(log, "b") },
        { id: "c", logic: crashable(log, "c") },
      ],
      maxRestarts: opts.maxRestarts ?? 3,
      withinMs: opts.withinMs ?? 10_000,
      backoffBaseMs: 100,
      backoffMaxMs: 1_000,
    },
  });
  const errors: unknown[] = [];
  actor.subscribe({ error: (e) => errors.push(e) });
  actor.start();
  return { actor, clock, errors };
}

function crash(actor: ReturnType<typeof start>["actor"], id: string) {
  const child = supervisedChildren(actor.getSnapshot())[id];
  assert.ok(child, `child ${id} is running`);
  child.send({ type: "CRASH" });
}

Deno.test("supervisor statechart (simulated clock)", async (t) => {
  await t.step("backoff doubles and is capped", () => {
    const o = { baseMs: 100, maxMs: 1000 };
    assert.deepEqual([1, 2, 3, 4, 5, 6].map((n) => backoffDelay(n, o)), [
      100,
      200,
      400,
      800,
      1000,
      1000,
    ]);
  });

  await t.step("spawns children in registry order", () => {
    const log: string[] = [];
    const { actor } = start(log);
    assert.deepEqual(log, ["start a", "start b", "start c"]);
    assert.deepEqual(actor.getSnapshot().value, { supervising: "healthy" });
    actor.stop();
  });

  await t.step("a failed child alone is restarted after its backoff", () => {
    const log: string[] = [];
    const { actor, clock, errors } = start(log);
    log.length = 0;
    crash(actor, "b");
    let snap = actor.getSnapshot();
    assert.equal(snap.context.children.b.status, "restarting");
    assert.match(snap.context.reason, /restarting b in 100 ms because it failed: b crashed/);
    assert.equal(supervisedChildren(snap).b, undefined, "the crashed incarnation is gone");
    assert.ok(supervisedChildren(snap).a && supervisedChildren(snap).c, "siblings keep running");
    clock.increment(99);
    assert.equal(actor.getSnapshot().context.children.b.status, "restarting");
    clock.increment(1);
    snap = actor.getSnapshot();
    assert.equal(snap.context.children.b.status, "running");
    assert.equal(snap.context.children.b.generation, 2);
    assert.equal(snap.context.children.b.restarts, 1);
    assert.deepEqual(log, ["stop b", "start b"]);
    assert.deepEqual(errors, [], "the supervisor itself never fails");
    actor.stop();
  });

  await t.step("consecutive failures back off exponentially", () => {
    const log: string[] = [];
    const { actor, clock } = start(log);
    crash(actor, "a");
    clock.increment(100);
    crash(actor, "a");
    clock.increment(199);
    assert.equal(actor.getSnapshot().context.children.a.status, "restarting");
    clock.increment(1);
    assert.equal(actor.getSnapshot().context.children.a.status, "running");
    actor.stop();
  });

  await t.step("more than K failures within T gives the child up and degrades", () => {
    const log: string[] = [];
    const { actor, clock } = start(log, { maxRestarts: 3, withinMs: 10_000 });
    for (let i = 0; i < 3; i++) {
      crash(actor, "c");
      clock.increment(1_000);
    }
    assert.equal(actor.getSnapshot().context.children.c.status, "running");
    crash(actor, "c");
    const snap = actor.getSnapshot();
    assert.deepEqual(snap.value, { supervising: "degraded" });
    assert.equal(snap.context.children.c.status, "failed");
    assert.match(snap.context.reason, /gave up c because it failed 4 times within 10000 ms/);
    clock.increment(60_000);
    assert.equal(supervisedChildren(actor.getSnapshot()).c, undefined, "no restart loop");
    // A sibling failing once is still restarted.
    crash(actor, "a");
    clock.increment(100);
    assert.equal(actor.getSnapshot().context.children.a.status, "running");
    // RETRY brings the given-up child back and the supervisor is healthy again.
    actor.send({ type: "RETRY", id: "c" });
    assert.deepEqual(actor.getSnapshot().value, { supervising: "healthy" });
    assert.ok(supervisedChildren(actor.getSnapshot()).c);
    actor.stop();
  });

  await t.step("failures spread wider than T never exceed the intensity", () => {
    const log: string[] = [];
    const { actor, clock } = start(log, { maxRestarts: 2, withinMs: 5_000 });
    for (let i = 0; i < 6; i++) {
      crash(actor, "a");
      clock.increment(6_000);
    }
    const snap = actor.getSnapshot();
    assert.equal(snap.context.children.a.status, "running");
    assert.equal(snap.context.children.a.restarts, 6);
    assert.deepEqual(snap.value, { supervising: "healthy" });
    actor.stop();
  });

  await t.step("a child reaching its final state exits without restart", () => {
    const log: string[] = [];
    const { actor, clock } = start(log);
    supervisedChildren(actor.getSnapshot()).b!.send({ type: "FINISH" });
    clock.increment(60_000);
    assert.equal(actor.getSnapshot().context.children.b.status, "exited");
    assert.equal(supervisedChildren(actor.getSnapshot()).b, undefined);
    actor.stop();
  });

  await t.step("STOP stops children in reverse start order and cancels restarts", () => {
    const log: string[] = [];
    const { actor, clock } = start(log);
    crash(actor, "a"); // a restart is pending
    log.length = 0;
    actor.send({ type: "STOP" });
    assert.equal(actor.getSnapshot().status, "done");
    assert.deepEqual(log, ["stop c", "stop b"]);
    clock.increment(10_000);
    assert.deepEqual(log, ["stop c", "stop b"], "the pending restart was cancelled");
  });
});
