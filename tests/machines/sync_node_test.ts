import assert from "node:assert/strict";
import { type Actor, createActor, fromCallback, fromPromise, SimulatedClock } from "xstate";
import {
  type SyncCatchUpOutput,
  type SyncNodeEvent,
  syncNodeMachine,
  type SyncRepairOutput,
  type SyncSnapshotOutput,
} from "../../machines/sync_node.ts";

const HEADS = 100;
const SNAPSHOT = 1000;
const REPAIR_RETRY = 50;
const RETRY = 200;

/** Fake effects the steps steer, recording when each was called (simulated ms). */
interface Fakes {
  openFailures: number;
  catchUpFailures: number;
  catchUp: SyncCatchUpOutput;
  /** Outputs of successive repairs; the last one repeats. */
  repairs: SyncRepairOutput[];
  calls: { op: string; at: number }[];
  resyncs: number;
}

function harness(init: Partial<Fakes> = {}) {
  const clock = new SimulatedClock();
  const fakes: Fakes = {
    openFailures: 0,
    catchUpFailures: 0,
    catchUp: { entities: 3, batches: 10, checkpoint: 7, missing: 0 },
    repairs: [{ repaired: 2, lost: 0, remaining: 0 }],
    calls: [],
    resyncs: 0,
    ...init,
  };
  let sendBack: ((e: SyncNodeEvent) => void) | null = null;
  let roleSendBack: ((e: SyncNodeEvent) => void) | null = null;
  const call = (op: string) => fakes.calls.push({ op, at: clock.now() });
  const logic = syncNodeMachine.provide({
    actors: {
      open: fromPromise(() => {
        call("open");
        if (fakes.openFailures > 0) {
          fakes.openFailures--;
          return Promise.reject(new Error("connect ECONNREFUSED"));
        }
        return Promise.resolve({ origin: "node-a~x1" });
      }),
      catchUp: fromPromise(() => {
        call("catchUp");
        if (fakes.catchUpFailures > 0) {
          fakes.catchUpFailures--;
          return Promise.reject(new Error("the database is unreachable"));
        }
        return Promise.resolve(fakes.catchUp);
      }),
      repair: fromPromise(() => {
        call("repair");
        const out = fakes.repairs.length > 1 ? fakes.repairs.shift()! : fakes.repairs[0];
        return Promise.resolve(out);
      }),
      announce: fromPromise(() => {
        call("announce");
        return Promise.resolve();
      }),
      snapshot: fromPromise<SyncSnapshotOutput, { origin: string | null }>(() => {
        call("snapshot");
        return Promise.resolve({ round: 1, entities: 4 });
      }),
      link: fromCallback(({ sendBack: send }) => {
        sendBack = send;
        return () => sendBack = null;
      }),
      role: fromCallback(({ sendBack: send }) => {
        roleSendBack = send;
        return () => roleSendBack = null;
      }),
    },
    actions: { resync: () => void fakes.resyncs++ },
  });
  const actor = createActor(logic, {
    clock,
    input: {
      instanceId: "node-a",
      headsMs: HEADS,
      snapshotMs: SNAPSHOT,
      repairRetryMs: REPAIR_RETRY,
      retryMs: RETRY,
    },
  });
  actor.start();

  async function advance(ms: number): Promise<void> {
    await settle();
    for (let i = 0; i < ms; i++) {
      clock.increment(1);
      await settle();
    }
  }
  function link(e: SyncNodeEvent): void {
    assert.ok(sendBack, "the link effect runs");
    sendBack(e);
  }
  function role(held: boolean): void {
    assert.ok(roleSendBack, "the role effect runs");
    roleSendBack({ type: "sync.role", held });
  }
  const count = (op: string) => fakes.calls.filter((c) => c.op === op).length;
  return { clock, fakes, actor, advance, link, role, count, [Symbol.dispose]: () => actor.stop() };
}

async function settle(): Promise<void> {
  for (let i = 0; i < 8; i++) await Promise.resolve();
}

function region(actor: Actor<typeof syncNodeMachine>, name: string): string {
  const value = actor.getSnapshot().value as Record<string, unknown> | string;
  if (typeof value === "string") return value;
  const running = value.running as Record<string, unknown> | undefined;
  if (!running) return Object.keys(value)[0];
  return JSON.stringify(running[name]);
}

Deno.test("sync node machine", async (t) => {
  await t.step("opens, catches up and goes live; announces its heads every headsMs", async () => {
    using h = harness();
    await h.advance(0);
    assert.equal(region(h.actor, "replication"), '"live"');
    const ctx = h.actor.getSnapshot().context;
    assert.equal(ctx.origin, "node-a~x1");
    assert.equal(ctx.caughtUp, true);
    assert.match(ctx.reason, /live: caught up from 3 snapshots and 10 batches/);
    await h.advance(HEADS * 3);
    assert.equal(h.count("announce"), 3);
  });

  await t.step("a failed start is retried after retryMs, and says why meanwhile", async () => {
    using h = harness({ openFailures: 2 });
    await h.advance(0);
    assert.equal(region(h.actor, "replication"), "retrying");
    assert.match(h.actor.getSnapshot().context.reason, /cannot start: connect ECONNREFUSED/);
    await h.advance(RETRY - 1);
    assert.equal(h.count("open"), 1, "no retry before retryMs");
    await h.advance(1);
    assert.equal(h.count("open"), 2);
    await h.advance(RETRY);
    assert.equal(h.count("open"), 3);
    assert.equal(region(h.actor, "replication"), '"live"');
  });

  await t.step(
    "a catch-up that fails is retried; one that leaves gaps goes repairing",
    async () => {
      using h = harness({
        catchUpFailures: 1,
        catchUp: { entities: 1, batches: 2, checkpoint: null, missing: 5 },
      });
      await h.advance(0);
      assert.equal(region(h.actor, "replication"), '"catch_up_retry"');
      await h.advance(RETRY);
      assert.equal(h.count("catchUp"), 2);
      assert.equal(h.count("repair"), 1, "gaps left by the catch-up are repaired at once");
      assert.equal(region(h.actor, "replication"), '"live"');
    },
  );

  await t.step(
    "a gap is repaired; what is still missing is retried after repairRetryMs",
    async () => {
      using h = harness();
      await h.advance(0);
      h.fakes.repairs = [
        { repaired: 3, lost: 0, remaining: 4 },
        { repaired: 4, lost: 0, remaining: 0 },
      ];
      h.link({ type: "sync.gap", missing: 7 });
      await h.advance(0);
      assert.equal(region(h.actor, "replication"), '"repair_wait"');
      assert.match(h.actor.getSnapshot().context.reason, /4 batches still missing; retrying/);
      await h.advance(REPAIR_RETRY - 1);
      assert.equal(h.count("repair"), 1);
      await h.advance(1);
      assert.equal(h.count("repair"), 2);
      assert.equal(region(h.actor, "replication"), '"live"');
      const ctx = h.actor.getSnapshot().context;
      assert.equal(ctx.repaired, 7);
      assert.equal(ctx.missing, 0);
    },
  );

  await t.step("only the snapshot-role holder writes snapshots, every snapshotMs", async () => {
    using h = harness();
    await h.advance(SNAPSHOT * 2);
    assert.equal(h.count("snapshot"), 0, "no role, no snapshots");
    h.role(true);
    await h.advance(SNAPSHOT * 3);
    assert.equal(h.count("snapshot"), 3);
    assert.equal(h.actor.getSnapshot().context.snapshotRounds, 3);
    h.role(false);
    await h.advance(SNAPSHOT * 2);
    assert.equal(h.count("snapshot"), 3, "the role is gone, so are the snapshots");
  });

  await t.step("snapshots wait until the node has caught up", async () => {
    using h = harness({ catchUpFailures: 100 });
    await h.advance(0);
    h.role(true);
    await h.advance(SNAPSHOT * 2);
    assert.equal(h.count("snapshot"), 0);
    h.fakes.catchUpFailures = 0;
    await h.advance(SNAPSHOT * 2);
    assert.ok(h.count("snapshot") >= 1);
  });

  await t.step("the link coming back resynchronises, once per reconnect", async () => {
    using h = harness();
    await h.advance(0);
    h.link({ type: "sync.link_down", reason: "Connection is closed." });
    await h.advance(0);
    assert.equal(region(h.actor, "link"), '"down"');
    assert.match(h.actor.getSnapshot().context.reason, /pub\/sub link down/);
    h.link({ type: "sync.link_down", reason: "again" });
    h.link({ type: "sync.link_up" });
    await h.advance(0);
    assert.equal(region(h.actor, "link"), '"up"');
    assert.equal(h.fakes.resyncs, 1);
    // A reconnect that no failed publish revealed still resynchronises.
    h.link({ type: "sync.link_up" });
    await h.advance(0);
    assert.equal(h.fakes.resyncs, 2);
  });
});
