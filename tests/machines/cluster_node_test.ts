import assert from "node:assert/strict";
import { createActor, fromPromise, SimulatedClock } from "xstate";
import { clusterNodeMachine, type MemberView } from "../../machines/cluster_node.ts";

/** Runs the machine with a scripted heartbeat: each call takes the next answer. */
function start(answers: (MemberView[] | Error)[]) {
  const changes: { joined: string[]; left: string[] }[] = [];
  let calls = 0;
  const clock = new SimulatedClock();
  const actor = createActor(
    clusterNodeMachine.provide({
      actors: {
        heartbeat: fromPromise(() => {
          const a = answers[Math.min(calls++, answers.length - 1)];
          return a instanceof Error ? Promise.reject(a) : Promise.resolve(a);
        }),
      },
      actions: { membershipChanged: (_, change) => changes.push(change) },
    }),
    { clock, input: { instanceId: "a", heartbeatMs: 100, isolateAfter: 2 } },
  );
  actor.start();
  return { actor, clock, changes, calls: () => calls };
}

const tick = () => new Promise((r) => setTimeout(r, 0));
const members = (...ids: string[]) => ids.map((id) => ({ id, ageMs: 0 }));

Deno.test("cluster node statechart (simulated clock)", async (t) => {
  await t.step("joins, then heartbeats and reports joins and departures", async () => {
    const { actor, clock, changes } = start([members("a"), members("a", "b"), members("b")]);
    await tick();
    assert.deepEqual(actor.getSnapshot().value, { member: "waiting" });
    assert.deepEqual(actor.getSnapshot().context.members, ["a"]);
    clock.increment(100);
    await tick();
    clock.increment(100);
    await tick();
    assert.deepEqual(changes, [
      { joined: ["a"], left: [] },
      { joined: ["b"], left: [] },
      { joined: [], left: ["a"] },
    ]);
    actor.stop();
  });

  await t.step("consecutive failed heartbeats isolate it; the next success rejoins", async () => {
    const err = new Error("connection refused");
    const { actor, clock } = start([members("a"), err, err, err, members("a", "c")]);
    await tick();
    clock.increment(100); // first failure: still a member
    await tick();
    assert.deepEqual(actor.getSnapshot().value, { member: "waiting" });
    assert.equal(actor.getSnapshot().context.failures, 1);
    clock.increment(100); // second failure: isolated
    await tick();
    let snap = actor.getSnapshot();
    assert.deepEqual(snap.value, { isolated: "waiting" });
    assert.equal(snap.context.reason, "isolated because 2 heartbeats in a row failed");
    assert.equal(snap.context.lastError, "connection refused");
    clock.increment(100); // still failing
    await tick();
    assert.deepEqual(actor.getSnapshot().value, { isolated: "waiting" });
    clock.increment(100); // recovered
    await tick();
    snap = actor.getSnapshot();
    assert.deepEqual(snap.value, { member: "waiting" });
    assert.equal(snap.context.failures, 0);
    assert.equal(snap.context.lastError, null);
    assert.equal(snap.context.reason, "rejoined after isolation");
    assert.deepEqual(snap.context.members, ["a", "c"]);
    actor.stop();
  });

  await t.step("LEAVE deregisters and ends in `left`", async () => {
    const { actor } = start([members("a")]);
    await tick();
    actor.send({ type: "LEAVE" });
    await tick();
    assert.equal(actor.getSnapshot().status, "done");
    assert.equal(actor.getSnapshot().context.reason, "left the cluster");
  });
});
