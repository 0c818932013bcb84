import assert from "node:assert/strict";
import { createActor, fromCallback, fromPromise, SimulatedClock } from "xstate";
import {
  clusterNodeMachine,
  cursorNotOlder,
  type MembershipAnswer,
} from "../../machines/cluster_node.ts";

/** Runs the machine with a scripted heartbeat: each call takes the next answer. */
function start(answers: (MembershipAnswer | Error)[], reads: MembershipAnswer[] = []) {
  const changes: { joined: string[]; left: string[] }[] = [];
  let calls = 0;
  const readInputs: (string | null)[] = [];
  let feed: ((e: { type: "CHANGED" }) => void) | null = null;
  const clock = new SimulatedClock();
  const actor = createActor(
    clusterNodeMachine.provide({
      actors: {
        heartbeat: fromPromise(() => {
          const a = answers[Math.min(calls++, answers.length - 1)];
          return a instanceof Error ? Promise.reject(a) : Promise.resolve(a);
        }),
        readChanges: fromPromise(({ input }) => {
          readInputs.push(input.cursor);
          return Promise.resolve(reads.shift()!);
        }),
        changeFeed: fromCallback(({ sendBack }) => {
          feed = sendBack;
          return () => feed = null;
        }),
      },
      actions: {
        membershipChanged: (_, { joined, left }) => changes.push({ joined, left }),
      },
    }),
    { clock, input: { instanceId: "a", heartbeatMs: 100, isolateAfter: 2 } },
  );
  actor.start();
  return {
    actor,
    clock,
    changes,
    readInputs,
    calls: () => calls,
    notice: () => feed!({ type: "CHANGED" }),
  };
}

const tick = () => new Promise((r) => setTimeout(r, 0));
let seq = 0;
/** An answer with the next cursor. */
const members = (...ids: string[]): MembershipAnswer => ({ members: ids, cursor: `1-${++seq}` });

Deno.test("cluster node statechart (simulated clock)", async (t) => {
  await t.step("joins, then heartbeats and reports joins and departures", async () => {
    const { actor, clock, changes } = start([members("a"), members("a", "b"), members("b")]);
    await tick();
    assert.deepEqual(actor.getSnapshot().value, { member: { beat: "waiting", view: "idle" } });
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
    assert.deepEqual(actor.getSnapshot().value, { member: { beat: "waiting", view: "idle" } });
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
    assert.deepEqual(snap.value, { member: { beat: "waiting", view: "idle" } });
    assert.equal(snap.context.failures, 0);
    assert.equal(snap.context.lastError, null);
    assert.equal(snap.context.reason, "rejoined after isolation");
    assert.deepEqual(snap.context.members, ["a", "c"]);
    actor.stop();
  });

  await t.step("a change notice reads the changes at once, before the next heartbeat", async () => {
    const { actor, changes, readInputs, notice, calls } = start([members("a")], [
      members("a", "b"),
    ]);
    await tick();
    const cursor = actor.getSnapshot().context.cursor;
    notice();
    await tick();
    assert.deepEqual(readInputs, [cursor], "read from the held cursor");
    assert.equal(calls(), 1, "no extra heartbeat");
    assert.deepEqual(actor.getSnapshot().context.members, ["a", "b"]);
    assert.deepEqual(changes.at(-1), { joined: ["b"], left: [] });
    actor.stop();
  });

  await t.step("an answer older than the list held is ignored", async () => {
    const older = members("a", "x");
    const { actor, clock, changes } = start([members("a"), members("a", "b"), older]);
    await tick();
    clock.increment(100);
    await tick();
    const held = actor.getSnapshot().context;
    assert.deepEqual(held.members, ["a", "b"]);
    // The scripted third answer has a later cursor; make one that is older than the held one.
    older.cursor = "0-1";
    clock.increment(100);
    await tick();
    assert.deepEqual(actor.getSnapshot().context.members, ["a", "b"]);
    assert.equal(changes.length, 2);
    assert.equal(cursorNotOlder("2-0", "1-9"), true);
    assert.equal(cursorNotOlder("1-10", "1-9"), true);
    assert.equal(cursorNotOlder("1-8", "1-9"), false);
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
