import assert from "node:assert/strict";
import { type Actor, createActor, fromCallback, fromPromise, SimulatedClock } from "xstate";
import {
  type SyncAnnounceInput,
  type SyncCatchUpOutput,
  type SyncLinkWatchInput,
  type SyncNodeEvent,
  syncNodeFacts,
  syncNodeMachine,
  type SyncRepairOutput,
  type SyncSnapshotInput,
  type SyncSnapshotOutput,
} from "../../machines/sync_node.ts";

const HEADS = 100;
const KEEPALIVE = 1000;
const SNAPSHOT = 1000;
const REPAIR_RETRY = 50;
const RETRY = 200;
const ANSWER = 30;

/** Fake effects the steps steer, recording when each was called (simulated ms). */
interface Fakes {
  openFailures: number;
  catchUpFailures: number;
  catchUp: SyncCatchUpOutput;
  /** Outputs of successive repairs; the last one repeats. */
  repairs: SyncRepairOutput[];
  calls: { op: string; at: number; input?: unknown }[];
  cacheClears: number;
}

type Send = (e: SyncNodeEvent) => void;

function harness(init: Partial<Fakes> = {}) {
  const clock = new SimulatedClock();
  const fakes: Fakes = {
    openFailures: 0,
    catchUpFailures: 0,
    catchUp: { entities: 3, batches: 10, checkpoint: 7, missing: 0 },
    repairs: [{ repaired: 2, lost: 0, remaining: 0 }],
    calls: [],
    cacheClears: 0,
    ...init,
  };
  // The watchers the chart has invoked right now, as the data plane would see them.
  const watchers: {
    gaps: Send | null;
    link: { send: Send; report: SyncLinkWatchInput["report"] } | null;
    role: Send | null;
    requests: Send | null;
    sequence: Send | null;
  } = { gaps: null, link: null, role: null, requests: null, sequence: null };
  const call = (op: string, input?: unknown) => fakes.calls.push({ op, at: clock.now(), input });
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
      announce: fromPromise(({ input }: { input: SyncAnnounceInput }) => {
        call(input.want ? "ask" : "announce", input);
        return Promise.resolve({ at: clock.now() });
      }),
      snapshot: fromPromise<SyncSnapshotOutput, SyncSnapshotInput>(({ input }) => {
        call("snapshot", input);
        return Promise.resolve({ round: 1, entities: 4 });
      }),
      detectGaps: fromCallback(({ sendBack }) => {
        watchers.gaps = sendBack;
        return () => watchers.gaps = null;
      }),
      watchLink: fromCallback<SyncNodeEvent, SyncLinkWatchInput>(({ sendBack, input }) => {
        const w = { send: sendBack, report: input.report };
        watchers.link = w;
        return () => {
          if (watchers.link === w) watchers.link = null;
        };
      }),
      watchRole: fromCallback(({ sendBack }) => {
        watchers.role = sendBack;
        return () => watchers.role = null;
      }),
      watchRequests: fromCallback(({ sendBack }) => {
        watchers.requests = sendBack;
        return () => watchers.requests = null;
      }),
      watchSequence: fromCallback(({ sendBack }) => {
        watchers.sequence = sendBack;
        return () => watchers.sequence = null;
      }),
    },
    actions: { clearCaches: () => void fakes.cacheClears++ },
  });
  const actor = createActor(logic, {
    clock,
    input: {
      instanceId: "node-a",
      headsMs: HEADS,
      keepAliveMs: KEEPALIVE,
      snapshotMs: SNAPSHOT,
      repairRetryMs: REPAIR_RETRY,
      retryMs: RETRY,
      answerMs: ANSWER,
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
  function gap(missing: number): void {
    assert.ok(watchers.gaps, "the chart watches for gaps");
    watchers.gaps({ type: "sync.gap", missing });
  }
  function link(e: SyncNodeEvent): void {
    assert.ok(watchers.link, "the chart watches the link");
    watchers.link.send(e);
  }
  function role(token: number | null): void {
    assert.ok(watchers.role, "the role effect runs");
    watchers.role({ type: "sync.role", token });
  }
  const count = (op: string) => fakes.calls.filter((c) => c.op === op).length;
  const last = (op: string) => fakes.calls.filter((c) => c.op === op).at(-1);
  const facts = () => syncNodeFacts(actor.getSnapshot());
  return {
    clock,
    fakes,
    watchers,
    actor,
    advance,
    gap,
    link,
    role,
    count,
    last,
    facts,
    [Symbol.dispose]: () => actor.stop(),
  };
}

/** This node sealed a batch (through the watcher, as the data plane would). */
function moved(h: ReturnType<typeof harness>): boolean {
  const send = h.watchers.sequence;
  if (!send) return false;
  send({ type: "sync.heads_moved", at: h.clock.now() });
  return true;
}

/** A peer asks every node to announce (through the watcher, as the data plane would). */
function requestAnswer(h: ReturnType<typeof harness>): void {
  const send = h.watchers.requests;
  assert.ok(send, "requests are watched between announcements");
  send({ type: "sync.heads_wanted", at: h.clock.now() });
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
  await t.step(
    "opens, catches up, greets its peers (asking them to announce); idle, only keep-alives",
    async () => {
      using h = harness();
      assert.deepEqual(h.facts(), { open: false, caughtUp: false, linkUp: true, roleToken: null });
      await h.advance(0);
      assert.equal(region(h.actor, "replication"), '{"caught_up":"live"}');
      const ctx = h.actor.getSnapshot().context;
      assert.equal(ctx.origin, "node-a~x1");
      assert.match(ctx.reason, /live: caught up from 3 snapshots and 10 batches/);
      assert.deepEqual(h.facts(), { open: true, caughtUp: true, linkUp: true, roleToken: null });
      assert.equal(h.count("ask"), 1, "greeted once caught up, asking every peer to announce");
      await h.advance(HEADS * 5);
      assert.equal(h.count("announce"), 0, "nothing moved: nothing announced every headsMs");
      await h.advance(KEEPALIVE * 3 - HEADS * 5);
      assert.equal(h.count("announce"), 3, "a keep-alive every keepAliveMs");
      assert.equal(h.count("ask"), 1);
    },
  );

  await t.step("the greeting waits for the catch-up, keepAliveMs at most", async () => {
    using h = harness({ catchUpFailures: 100 });
    await h.advance(KEEPALIVE - 1);
    assert.equal(h.count("ask"), 0, "not before caught up");
    await h.advance(1);
    assert.equal(h.count("ask"), 1, "a catch-up that keeps failing delays it keepAliveMs");
  });

  await t.step(
    "a moved sequence is announced at once after a quiet spell, then once per headsMs",
    async () => {
      using h = harness();
      await h.advance(HEADS);
      assert.ok(moved(h));
      await h.advance(0);
      assert.equal(h.count("announce"), 1, "at once: the last one is headsMs old");
      await h.advance(10);
      assert.ok(moved(h));
      await h.advance(0);
      assert.equal(h.watchers.sequence, null, "one due announcement covers what moves meanwhile");
      await h.advance(HEADS - 11);
      assert.equal(h.count("announce"), 1, "not within headsMs of the previous one");
      await h.advance(1);
      assert.equal(h.count("announce"), 2);
      // Quiet again: the next one is a keep-alive, keepAliveMs later.
      await h.advance(KEEPALIVE - 1);
      assert.equal(h.count("announce"), 2);
      await h.advance(1);
      assert.equal(h.count("announce"), 3);
    },
  );

  await t.step("a failed start is retried after retryMs, and says why meanwhile", async () => {
    using h = harness({ openFailures: 2 });
    await h.advance(0);
    assert.equal(region(h.actor, "replication"), "retrying");
    assert.match(h.actor.getSnapshot().context.reason, /cannot start: connect ECONNREFUSED/);
    assert.equal(h.facts().open, false);
    await h.advance(RETRY - 1);
    assert.equal(h.count("open"), 1, "no retry before retryMs");
    await h.advance(1);
    assert.equal(h.count("open"), 2);
    await h.advance(RETRY);
    assert.equal(h.count("open"), 3);
    assert.equal(region(h.actor, "replication"), '{"caught_up":"live"}');
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
      assert.match(h.actor.getSnapshot().context.reason, /catch-up failed: the database/);
      await h.advance(RETRY);
      assert.equal(h.count("catchUp"), 2);
      assert.equal(h.count("repair"), 1, "gaps left by the catch-up are repaired at once");
      assert.equal(region(h.actor, "replication"), '{"caught_up":"live"}');
    },
  );

  await t.step("gaps are looked for only once caught up, and then repaired", async () => {
    using h = harness({ catchUpFailures: 1 });
    await h.advance(0);
    assert.equal(h.watchers.gaps, null, "while catching up, the catch-up decides what is missing");
    assert.equal(h.facts().caughtUp, false);
    await h.advance(RETRY);
    assert.ok(h.watchers.gaps, "caught up: gap detection runs");
    h.gap(4);
    await h.advance(0);
    assert.equal(h.count("repair"), 1);
    assert.equal(h.actor.getSnapshot().context.repaired, 2);
    assert.ok(h.watchers.gaps, "gap detection keeps running through repairs");
  });

  await t.step(
    "a gap is repaired; what is still missing is retried after repairRetryMs",
    async () => {
      using h = harness();
      await h.advance(0);
      h.fakes.repairs = [
        { repaired: 3, lost: 0, remaining: 4 },
        { repaired: 4, lost: 0, remaining: 0 },
      ];
      h.gap(7);
      await h.advance(0);
      assert.equal(region(h.actor, "replication"), '{"caught_up":"repair_wait"}');
      assert.match(h.actor.getSnapshot().context.reason, /4 batches still missing; retrying/);
      h.gap(9);
      await h.advance(0);
      assert.equal(h.count("repair"), 1, "a gap noticed while waiting waits for the retry");
      await h.advance(REPAIR_RETRY - 1);
      assert.equal(h.count("repair"), 1);
      await h.advance(1);
      assert.equal(h.count("repair"), 2);
      assert.equal(region(h.actor, "replication"), '{"caught_up":"live"}');
      const ctx = h.actor.getSnapshot().context;
      assert.equal(ctx.repaired, 7);
      assert.equal(ctx.missing, 0);
    },
  );

  await t.step("only the snapshot-role holder writes snapshots, under its token", async () => {
    using h = harness();
    await h.advance(SNAPSHOT * 2);
    assert.equal(h.count("snapshot"), 0, "no role, no snapshots");
    h.role(7);
    await h.advance(0);
    assert.equal(h.facts().roleToken, 7);
    await h.advance(SNAPSHOT * 3);
    assert.equal(h.count("snapshot"), 3);
    assert.deepEqual(h.last("snapshot")?.input, { token: 7 });
    assert.equal(h.actor.getSnapshot().context.snapshotRounds, 3);
    h.role(9);
    await h.advance(SNAPSHOT);
    assert.deepEqual(h.last("snapshot")?.input, { token: 9 }, "re-acquired: the new token");
    h.role(null);
    await h.advance(0);
    assert.equal(h.facts().roleToken, null);
    await h.advance(SNAPSHOT * 2);
    assert.equal(h.count("snapshot"), 4, "the role is gone, so are the snapshots");
  });

  await t.step("snapshots wait until the node has caught up", async () => {
    using h = harness({ catchUpFailures: 100 });
    await h.advance(0);
    h.role(1);
    await h.advance(SNAPSHOT * 2);
    assert.equal(h.count("snapshot"), 0);
    h.fakes.catchUpFailures = 0;
    await h.advance(SNAPSHOT * 2);
    assert.ok(h.count("snapshot") >= 1);
  });

  await t.step("the chart decides the link: a failed publish takes it down", async () => {
    using h = harness();
    await h.advance(0);
    assert.equal(h.watchers.link?.report, "loss", "while up, only failures matter");
    h.link({ type: "sync.link_lost", reason: "Connection is closed." });
    await h.advance(0);
    assert.equal(region(h.actor, "link"), '"down"');
    assert.equal(h.facts().linkUp, false);
    assert.match(h.actor.getSnapshot().context.reason, /pub\/sub link down: Connection is closed/);
    assert.equal(h.watchers.link?.report, "recovery", "while down, only successes matter");
    // Writes go on meanwhile: nothing else stops.
    await h.advance(KEEPALIVE);
    assert.equal(h.count("announce"), 1);
  });

  await t.step("the link coming back resynchronises, once per reconnect", async () => {
    using h = harness();
    await h.advance(0);
    h.link({ type: "sync.link_lost", reason: "Connection is closed." });
    await h.advance(0);
    h.link({ type: "sync.link_back" });
    await h.advance(0);
    assert.equal(region(h.actor, "link"), '{"up":"steady"}');
    assert.equal(h.facts().linkUp, true);
    assert.equal(h.fakes.cacheClears, 1, "caches cleared: invalidations may be lost");
    assert.equal(h.count("ask"), 2, "every peer is asked to announce (as in the greeting)");
    assert.match(h.actor.getSnapshot().context.reason, /link back; resynchronising/);
    // A reconnect that no failed publish revealed still resynchronises.
    h.link({ type: "sync.resubscribed" });
    await h.advance(0);
    assert.equal(h.fakes.cacheClears, 2);
    assert.equal(h.count("ask"), 3);
    assert.equal(region(h.actor, "link"), '{"up":"steady"}');
  });

  await t.step(
    "a peer's request is answered, no sooner than answerMs after the last announcement",
    async () => {
      using h = harness();
      await h.advance(KEEPALIVE);
      assert.equal(h.count("announce"), 1);
      const announcedAt = h.last("announce")!.at;
      await h.advance(10);
      requestAnswer(h);
      await h.advance(0);
      assert.equal(h.watchers.requests, null, "one answer at a time");
      await h.advance(ANSWER - 11);
      assert.equal(h.count("announce"), 1, "not within answerMs of the previous one");
      await h.advance(1);
      assert.equal(h.count("announce"), 2);
      assert.equal(h.last("announce")!.at - announcedAt, ANSWER);
      // Long after the last announcement, a request is answered at once.
      await h.advance(HEADS / 2);
      requestAnswer(h);
      await h.advance(0);
      assert.equal(h.count("announce"), 3);
    },
  );

  await t.step("the context is plain data: a snapshot serialises and restores", async () => {
    using h = harness();
    await h.advance(0);
    h.role(3);
    h.link({ type: "sync.link_lost", reason: "timeout" });
    await h.advance(HEADS);
    const ctx = h.actor.getSnapshot().context;
    assert.deepEqual(JSON.parse(JSON.stringify(ctx)), ctx);
    const persisted = JSON.parse(JSON.stringify(h.actor.getPersistedSnapshot()));
    const restored = createActor(syncNodeMachine, { snapshot: persisted, input: ctx });
    assert.deepEqual(syncNodeFacts(restored.getSnapshot()), {
      open: true,
      caughtUp: true,
      linkUp: false,
      roleToken: 3,
    });
  });
});
