import assert from "node:assert/strict";
import { type Actor, createActor, fromCallback, fromPromise, SimulatedClock } from "xstate";
import {
  type CandidateChoice,
  chooseCandidate,
  chooseStartupNode,
  degradedSentence,
  type Evidence,
  type FailoverEvent,
  type FailoverInput,
  failoverMachine,
  type Finding,
  findRepair,
  formatSyncStandbys,
  isMajority,
  judgeEvidence,
  judgeProbe,
  judgeVotes,
  type LagAlert,
  lsnToNumber,
  type NodeSample,
  type NoPromotion,
  parseSyncStandbys,
  type PoolTarget,
  type PromotionOutput,
  publicationOf,
  type Published,
  type PublishInput,
  readOnlyFallback,
  type ReplicationSample,
  type StartFacts,
  updateAlerts,
  voteFromState,
  type VoteOutput,
} from "../../machines/failover/mod.ts";

/** What the fake cluster answers; tests change it between steps. */
interface World {
  /** What `readStart` finds: the published primary and where the pool points. */
  start: StartFacts;
  /** `readStart` hangs while false. */
  startReady: boolean;
  /**
   * up: answers at once; down: fails at once (connection lost); refused: ECONNREFUSED at
   * once; hang: never answers; slow: answers after slowMs; error: the probe itself fails.
   */
  primary: "up" | "down" | "refused" | "hang" | "slow" | "error";
  /** What `corroborate` gathers (fast path). */
  evidence: Evidence;
  slowMs: number;
  published: Published | null;
  votes: VoteOutput;
  promotion: PromotionOutput | NoPromotion | { error: string; code: string };
  degraded: { primaryOk: boolean; choice: CandidateChoice; readOnlyNode: string | null };
  sample: ReplicationSample | null;
  calls: { op: string; at: number; input: unknown }[];
  /** Promotions / publications / switchovers hang while false. */
  release: boolean;
  /** Publications hang while true. */
  holdPublish: boolean;
  /** Publications fail with this while set. */
  publishError: string | null;
  /** The repair effect reports this failure (what a failed rejoin / start of a parked node answers). */
  repairFailure?: { error: string; leftStopped: boolean; notOurs?: boolean } | null;
  /** The repair effect throws this (before it touched the node: the fencing token refused). */
  repairError?: string | null;
}

const NODES = ["pg1", "pg2", "pg3"];

function node(name: string, over: Partial<NodeSample> = {}): NodeSample {
  return {
    name,
    address: `127.0.0.1:${5000 + NODES.indexOf(name)}`,
    reachable: true,
    role: "replica",
    state: "streaming",
    healthy: true,
    inRecovery: true,
    readOnlyFenced: false,
    currentLsn: null,
    receiveLsn: "0/3000000",
    replayLsn: "0/3000000",
    sentLsn: "0/3000000",
    writeLsn: "0/3000000",
    flushLsn: "0/3000000",
    lagBytes: 0,
    lagSeconds: 0,
    syncState: "quorum",
    timeline: 1,
    upstream: "pg1",
    streaming: true,
    error: null,
    why: "streaming",
    ...over,
  };
}

function primaryNode(name: string, over: Partial<NodeSample> = {}): NodeSample {
  return node(name, {
    role: "primary",
    state: "primary",
    inRecovery: false,
    currentLsn: "0/3000000",
    receiveLsn: null,
    replayLsn: null,
    lagBytes: null,
    lagSeconds: null,
    syncState: null,
    upstream: null,
    streaming: false,
    ...over,
  });
}

function sampleOf(at: number, nodes: NodeSample[], names = ["pg2", "pg3"]): ReplicationSample {
  return { at, primary: "pg1", nodes, sync: { method: "ANY", num: 1, names } };
}

/** A sample of pg1 where pg3 came back writable: a second primary to rejoin. */
function pg3Writable(): ReplicationSample {
  return sampleOf(0, [primaryNode("pg1"), node("pg2"), primaryNode("pg3")]);
}

/** A sample of pg1 taken at `at` where pg3 is down (pg2 the only synchronous standby). */
function pg3Down(at: number): ReplicationSample {
  return {
    ...sampleOf(0, [primaryNode("pg1"), node("pg2"), node("pg3", { reachable: false })], ["pg2"]),
    at,
  };
}

/** A sample of pg1 taken at `at` where pg3 is up, out of recovery and fenced read-only. */
function pg3Fenced(at: number): ReplicationSample {
  const fenced = primaryNode("pg3", { readOnlyFenced: true, state: "fenced", healthy: false });
  return { ...sampleOf(0, [primaryNode("pg1"), node("pg2"), fenced], ["pg2"]), at };
}

/** What a rejoin of pg3 answers when FAILOVER_LOCAL_NODES puts pg3 on another host. */
const PG3_NOT_OURS = {
  error: "pg3 is fenced read-only but FAILOVER_LOCAL_NODES puts it on another host: " +
    "stop it there and run pg_rewind",
  leftStopped: false,
  notOurs: true,
};

/** The rejoins and starts of parked nodes the chart asked for, oldest first, as "kind node". */
function rejoinsAsked(h: ReturnType<typeof harness>): string[] {
  return h.ops("repair").map((c) => (c.input as { finding: Finding }).finding)
    .filter((f) => f.kind === "rejoin" || f.kind === "start_standby")
    .map((f) => `${f.kind} ${f.node}`);
}

/** Lets `times` monitor rounds of `ms` pass, each sample taken anew at its time. */
async function samplesAgain(h: ReturnType<typeof harness>, times: number, ms: number) {
  for (let i = 0; i < times; i++) {
    await h.advance(ms);
    h.world.sample = { ...h.world.sample!, at: h.clock.now() };
  }
}

function harness(input: Partial<FailoverInput> = {}, over: Partial<World> = {}) {
  const clock = new SimulatedClock();
  const world: World = {
    start: {
      published: { node: "pg1", epoch: 1, readOnlyNode: null },
      pool: { node: "pg1", epoch: 1, readOnly: false },
    },
    startReady: true,
    primary: "up",
    slowMs: 0,
    published: null,
    votes: { agree: 3, live: 3, votes: [] },
    evidence: {
      observers: [
        { instance: "a", refused: true, why: "connection refused" },
        { instance: "b", refused: true, why: "connection refused" },
        { instance: "c", refused: true, why: "connection refused" },
      ],
      receivers: [
        { node: "pg2", streaming: false, why: "no WAL receiver" },
        { node: "pg3", streaming: false, why: "no WAL receiver" },
      ],
    },
    promotion: { node: "pg2", lsn: "0/3000100", adopted: false, why: "pg2 is best", parked: null },
    degraded: {
      primaryOk: false,
      choice: { node: null, adopt: false, why: "no eligible replica: pg2 is unreachable" },
      readOnlyNode: null,
    },
    sample: null,
    calls: [],
    release: true,
    holdPublish: false,
    publishError: null,
    ...over,
  };
  let leaseSend: ((e: FailoverEvent) => void) | null = null;

  function record(op: string, input: unknown): void {
    world.calls.push({ op, at: clock.now(), input });
  }
  function gated<T>(fn: () => T, open = () => world.release): Promise<T> {
    if (open()) return Promise.resolve().then(fn);
    return new Promise<T>((resolve) => {
      const poll = () => open() ? resolve(fn()) : clock.setTimeout(poll, 1);
      clock.setTimeout(poll, 1);
    });
  }

  const logic = failoverMachine.provide({
    actors: {
      watchLease: fromCallback<FailoverEvent>(({ sendBack }) => {
        leaseSend = sendBack;
        return () => leaseSend = null;
      }),
      readStart: fromPromise(() => {
        record("start", null);
        return gated(() => structuredClone(world.start), () => world.startReady);
      }),
      probePrimary: fromPromise(({ input }) => {
        record("probe", input);
        const at = clock.now();
        const answer = () => ({
          ok: true,
          error: null,
          latencyMs: clock.now() - at,
          refused: false,
          at,
          published: world.published,
        });
        switch (world.primary) {
          case "up":
            return Promise.resolve(answer());
          case "down":
          case "refused":
            return Promise.resolve({
              ok: false,
              error: world.primary === "down" ? "connection lost" : "connection refused",
              latencyMs: 1,
              refused: world.primary === "refused",
              at,
              published: world.published,
            });
          case "hang":
            return new Promise(() => {});
          case "error":
            return Promise.reject(new Error("probe crashed"));
          case "slow":
            return new Promise((resolve) =>
              clock.setTimeout(() => resolve(answer()), world.slowMs)
            );
        }
      }),
      corroborate: fromPromise(({ input }) => {
        record("corroborate", input);
        return Promise.resolve(structuredClone(world.evidence));
      }),
      collectVotes: fromPromise(({ input }) => {
        record("votes", input);
        return Promise.resolve(world.votes);
      }),
      promote: fromPromise(({ input }) => {
        record("promote", input);
        return gated(() => {
          const p = world.promotion;
          if ("error" in p) throw Object.assign(new Error(p.error), { code: p.code });
          return p;
        });
      }),
      switchover: fromPromise(({ input }) => {
        record("switchover", input);
        return gated(() => ({
          node: input.request.target ?? "pg2",
          lsn: "0/4000000",
          adopted: false,
          why: `pg2 replayed up to 0/4000000`,
          parked: input.primary.node,
        }));
      }),
      publish: fromPromise(({ input }: { input: PublishInput }) => {
        record("publish", input);
        return gated(() => {
          if (world.publishError) throw new Error(world.publishError);
          const published: Published = {
            node: input.node,
            epoch: input.epoch,
            readOnlyNode: input.readOnlyNode,
          };
          world.published = published;
          return {
            published,
            why: input.kind === "degraded"
              ? input.why
              : `published ${input.node} with epoch ${input.epoch}`,
          };
        }, () => world.release && !world.holdPublish);
      }),
      reassess: fromPromise(({ input }) => {
        record("reassess", input);
        // Like the real effect: a primary that is back is published without its fallback.
        if (world.degraded.primaryOk && world.published) {
          world.published = { ...world.published, readOnlyNode: null };
        }
        return Promise.resolve(structuredClone(world.degraded));
      }),
      repointPool: fromPromise(({ input }: { input: PoolTarget }) => {
        record("repoint", input);
        return Promise.resolve(input);
      }),
      sampleNodes: fromPromise(({ input }) => {
        record("sample", input);
        return Promise.resolve(
          world.sample ?? sampleOf(clock.now(), [
            primaryNode("pg1"),
            node("pg2"),
            node("pg3"),
          ]),
        );
      }),
      repair: fromPromise(
        ({ input }: { input: { finding: Finding; primary: Published; token: number | null } }) => {
          record("repair", input);
          if (world.repairError) return Promise.reject(new Error(world.repairError));
          if (world.repairFailure) {
            return Promise.resolve({ ok: false, notOurs: false, ...world.repairFailure });
          }
          return Promise.resolve({ ok: true, why: `repaired ${input.finding.node}` });
        },
      ),
    },
    actions: {
      letQueriesWait: () => record("queries", "wait"),
      failQueriesFast: () => record("queries", "fail fast"),
      announceAlerts: (_, news: { raised: LagAlert[]; resolved: LagAlert[] }) =>
        record("alerts", news),
    },
  });
  const actor = createActor(logic, {
    clock,
    input: {
      instanceId: "a",
      nodes: NODES,
      probeIntervalMs: 100,
      probeTimeoutMs: 300,
      confirmations: 3,
      monitorIntervalMs: 1000,
      confirmTimeoutMs: 2000,
      ...input,
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
  return {
    clock,
    world,
    actor,
    advance,
    lease: {
      acquire: (token: number) => leaseSend?.({ type: "LEASE_ACQUIRED", token }),
      lose: (why: string) => leaseSend?.({ type: "LEASE_LOST", why }),
    },
    ops: (op: string) => world.calls.filter((c) => c.op === op),
    [Symbol.dispose]: () => actor.stop(),
  };
}

async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}

function detector(actor: Actor<typeof failoverMachine>): string {
  const value = actor.getSnapshot().value as Record<string, unknown>;
  const d = value.detector;
  return typeof d === "string" ? d : Object.keys(d as object)[0];
}

Deno.test("failover machine", async (t) => {
  await t.step("a healthy primary is probed every interval and nothing happens", async () => {
    using h = harness();
    h.lease.acquire(10);
    await h.advance(1000);
    assert.equal(detector(h.actor), "healthy");
    assert.deepEqual(h.ops("probe").map((c) => c.at), [
      100,
      200,
      300,
      400,
      500,
      600,
      700,
      800,
      900,
      1000,
    ]);
    assert.equal(h.ops("votes").length, 0);
  });

  await t.step(
    "a dead primary: the coordinator confirms after N failed probes, a majority agrees, it promotes and publishes",
    async () => {
      using h = harness();
      h.lease.acquire(10);
      await h.advance(150);
      h.world.primary = "down";
      await h.advance(50); // t=200: the first probe after the crash fails
      assert.equal(detector(h.actor), "suspect");
      assert.match(
        h.actor.getSnapshot().context.why,
        /suspect: a probe of pg1 failed \(connection lost\)/,
      );
      await h.advance(200); // failures at 300 and 400 -> confirming at 400
      const votes = h.ops("votes");
      assert.equal(votes.length, 1);
      assert.equal(votes[0].at, 400, "the vote starts right after the third failed probe");
      assert.deepEqual(votes[0].input, {
        primary: { node: "pg1", epoch: 1, readOnlyNode: null },
        failures: 3,
      });
      assert.equal(h.ops("promote").length, 1);
      const publish = h.ops("publish")[0].input as PublishInput;
      assert.equal(publish.kind, "failover");
      assert.equal(publish.node, "pg2");
      assert.equal(publish.oldPrimary, "pg1");
      assert.equal(publish.epoch, 2);
      assert.equal(publish.token, 10);
      assert.equal(publish.startedAt, 200, "the failure is dated from the first failed probe");
      assert.equal(detector(h.actor), "healthy");
      const ctx = h.actor.getSnapshot().context;
      assert.deepEqual(ctx.primary, { node: "pg2", epoch: 2, readOnlyNode: null });
      assert.deepEqual(ctx.decision?.primary, ctx.primary);
      assert.equal(ctx.why, "published pg2 with epoch 2");
      const repoint = h.ops("repoint").at(-1)!.input;
      assert.deepEqual(repoint, { node: "pg2", epoch: 2, readOnly: false });
      assert.deepEqual(h.actor.getSnapshot().context.pool, {
        node: "pg2",
        epoch: 2,
        readOnly: false,
      });
    },
  );

  await t.step(
    "fast path: a refused probe with certain evidence goes to the vote at once, and says why",
    async () => {
      // A sample of pg1 with its replicas streaming (at 50): they witness the lost streams.
      using h = harness({ monitorIntervalMs: 50 });
      h.lease.acquire(10);
      h.world.release = false;
      await h.advance(150);
      h.world.primary = "refused";
      await h.advance(50); // t=200: the first probe after the crash is refused
      const gathered = h.ops("corroborate");
      assert.equal(gathered.length, 1);
      assert.deepEqual(gathered[0].input, {
        primary: { node: "pg1", epoch: 1, readOnlyNode: null },
        mine: { instance: "a", refused: true, why: "connection refused" },
      });
      const votes = h.ops("votes");
      assert.equal(votes.length, 1, "the vote is not skipped on the fast path");
      assert.equal(votes[0].at, 200, "the vote starts right after the first refused probe");
      assert.equal(detector(h.actor), "promoting");
      const ctx = h.actor.getSnapshot().context;
      assert.equal(ctx.path, "fast");
      assert.equal(ctx.failures, 1);
      assert.equal(
        ctx.why,
        "certain: pg1 refused connections from 3 of 3 instances (a, b, c) and no replica's " +
          "WAL receiver streams from it (pg2: no WAL receiver; pg3: no WAL receiver), and 3 of " +
          "3 live instances agree: failing over (fast path)",
      );
      h.world.release = true;
      await h.advance(5);
      const publish = h.ops("publish")[0].input as PublishInput;
      assert.equal(publish.kind, "failover");
      assert.equal(publish.token, 10, "published under the lease's fencing token");
      assert.match(publish.why, /failing over \(fast path\); promoted pg2 because pg2 is best/);
      assert.equal(detector(h.actor), "healthy");
      assert.equal(h.actor.getSnapshot().context.path, "careful", "the next round starts careful");
    },
  );

  await t.step(
    "fast path: refused but a replica still streams -> the careful path counts on",
    async () => {
      using h = harness();
      h.lease.acquire(10);
      h.world.release = false;
      h.world.primary = "refused";
      h.world.evidence.receivers[1] = { node: "pg3", streaming: true, why: "streaming" };
      await h.advance(100); // first refused probe at 100
      assert.equal(h.ops("corroborate").length, 1);
      assert.equal(h.ops("votes").length, 0);
      assert.equal(detector(h.actor), "suspect");
      assert.equal(
        h.actor.getSnapshot().context.why,
        "not certain, staying on the careful path: pg3 still streams from pg1",
      );
      await h.advance(200); // refused at 200 and 300: the third failure calls the vote
      assert.equal(h.ops("corroborate").length, 3);
      assert.equal(h.ops("votes").length, 1);
      assert.equal(h.ops("votes")[0].at, 300);
      assert.equal(
        h.actor.getSnapshot().context.why,
        "pg1 failed 3 consecutive probes (last: connection refused) and 3 of 3 live instances agree: failing over",
      );
    },
  );

  await t.step(
    "fast path: one instance seeing a refusal is not certain; a majority is still needed",
    async () => {
      // A sample of pg1 with its replicas streaming (at 50): they witness the lost streams.
      using h = harness({ monitorIntervalMs: 50 });
      h.lease.acquire(10);
      h.world.primary = "refused";
      h.world.evidence.observers = [
        { instance: "a", refused: true, why: "connection refused" },
        { instance: "b", refused: false, why: "pg1 answered here in 2 ms" },
      ];
      h.world.votes = {
        agree: 1,
        live: 2,
        votes: [{ instance: "b", agree: false, why: "pg1 answered here in 2 ms" }],
      };
      await h.advance(100);
      assert.equal(detector(h.actor), "suspect");
      assert.equal(
        h.actor.getSnapshot().context.why,
        "not certain, staying on the careful path: only 1 of 2 instances saw pg1 refuse " +
          "connections (2 needed) (b: pg1 answered here in 2 ms)",
      );
      await h.advance(400);
      assert.ok(h.ops("votes").length >= 1);
      assert.equal(h.ops("promote").length, 0, "no majority, no promotion, whatever the path");
    },
  );

  await t.step(
    "fast path: followers and FAILOVER_FAST_PATH=off never gather evidence",
    async () => {
      {
        using h = harness();
        h.world.primary = "refused";
        await h.advance(500);
        assert.equal(h.ops("corroborate").length, 0);
        assert.equal(detector(h.actor), "suspect");
      }
      {
        using h = harness({ fastPath: false });
        h.lease.acquire(10);
        h.world.primary = "refused";
        await h.advance(250);
        assert.equal(h.ops("corroborate").length, 0);
        assert.equal(h.ops("votes").length, 0);
        await h.advance(50);
        assert.equal(h.ops("votes").length, 1, "after 3 failed probes, as before");
      }
    },
  );

  await t.step("fast path: losing the lease while gathering evidence stops acting", async () => {
    using h = harness();
    h.lease.acquire(10);
    h.world.primary = "refused";
    h.world.release = false;
    // Evidence that never arrives: the gathering hangs until the lease is lost.
    h.world.evidence = { observers: [], receivers: [] };
    await h.advance(100);
    assert.equal(h.ops("corroborate").length, 1);
    assert.equal(detector(h.actor), "suspect", "uncertain (no observers) -> careful");
    h.lease.lose("lease expired");
    await h.advance(1000);
    assert.equal(h.ops("votes").length, 0);
    assert.equal(h.ops("promote").length, 0);
  });

  await t.step(
    "a pool query that lost its connection brings the next probe forward, once per hold-off",
    async () => {
      using h = harness();
      h.lease.acquire(10);
      await h.advance(110); // probe at 100, answered; hold-off (20 ms at 100) until 120
      h.actor.send({ type: "POOL_ERROR", why: "connection lost" });
      await h.advance(1);
      assert.deepEqual(h.ops("probe").map((c) => c.at), [100], "within the hold-off: kept");
      await h.advance(9); // t=120: the hold-off is over, the hint is acted on
      assert.deepEqual(h.ops("probe").map((c) => c.at), [100, 120]);
      assert.equal(
        h.actor.getSnapshot().context.why,
        "probing pg1 at once: a query through the pool failed (connection lost)",
      );
      await h.advance(25); // t=145: listening since 140
      h.actor.send({ type: "POOL_ERROR", why: "connection lost" });
      await h.advance(1);
      assert.deepEqual(h.ops("probe").map((c) => c.at), [100, 120, 145]);
      // Only a probe: the primary answered, nothing else happens, the interval goes on.
      assert.equal(detector(h.actor), "healthy");
      assert.equal(h.actor.getSnapshot().context.hint, null, "the probe took the hint");
      await h.advance(100);
      assert.deepEqual(h.ops("probe").map((c) => c.at), [100, 120, 145, 245]);
      // A suspect primary's probes keep their interval: the careful count never speeds up
      // on errors that are not refusals.
      h.world.primary = "down";
      await h.advance(100); // t=346: the probe at 345 failed
      assert.equal(detector(h.actor), "suspect");
      const before = h.ops("probe").length;
      h.actor.send({ type: "POOL_ERROR", why: "connection lost" });
      await h.advance(50);
      assert.equal(h.ops("probe").length, before);
    },
  );

  await t.step("a pool error during a probe that answers is acted on after it", async () => {
    using h = harness();
    h.world.primary = "slow";
    h.world.slowMs = 10;
    await h.advance(105); // the probe at 100 is in flight until 110
    h.actor.send({ type: "POOL_ERROR", why: "write CONNECTION_CLOSED 127.0.0.1:5000" });
    await h.advance(30); // answered at 110; hold-off until 130
    assert.deepEqual(h.ops("probe").map((c) => c.at), [100, 130]);
  });

  await t.step(
    "a suspect coordinator keeps the probe interval whatever the pool says",
    async () => {
      using h = harness();
      h.lease.acquire(10);
      h.world.primary = "down";
      await h.advance(101); // the probe at 100 failed
      assert.equal(detector(h.actor), "suspect");
      h.world.primary = "refused";
      h.actor.send({ type: "POOL_ERROR", why: "connect ECONNREFUSED 127.0.0.1:5000" });
      await h.advance(50);
      assert.deepEqual(h.ops("probe").map((c) => c.at), [100], "the careful count keeps pace");
      assert.deepEqual(h.actor.getSnapshot().context.hint, {
        why: "connect ECONNREFUSED 127.0.0.1:5000",
      });
      await h.advance(50); // the probe at 200 takes the hint
      assert.deepEqual(h.ops("probe").map((c) => c.at), [100, 200]);
      assert.equal(h.actor.getSnapshot().context.hint, null);
    },
  );

  await t.step("the promotion's sentence names the candidate and the vote", async () => {
    using h = harness();
    h.lease.acquire(10);
    h.world.primary = "down";
    h.world.release = false;
    await h.advance(300);
    assert.equal(detector(h.actor), "promoting");
    assert.equal(
      h.actor.getSnapshot().context.why,
      "pg1 failed 3 consecutive probes (last: connection lost) and 3 of 3 live instances agree: failing over",
    );
    h.world.release = true;
    await h.advance(5);
    assert.equal(detector(h.actor), "healthy");
  });

  await t.step("a follower counts failures but never promotes", async () => {
    using h = harness();
    h.world.primary = "down";
    await h.advance(2000);
    assert.equal(detector(h.actor), "suspect");
    assert.equal(h.actor.getSnapshot().context.failures, 20);
    assert.equal(h.ops("votes").length, 0);
    assert.equal(h.ops("promote").length, 0);
    // It takes over at once when it becomes the coordinator.
    h.lease.acquire(11);
    await h.advance(1);
    assert.equal(h.ops("votes").length, 1);
  });

  await t.step(
    "a primary that stalls for less than the detection window is not failed over",
    async () => {
      using h = harness();
      h.lease.acquire(10);
      await h.advance(50);
      h.world.primary = "hang"; // SIGSTOP: probes time out after 300 ms each
      await h.advance(750); // probe at 100 times out at 400; probe 500 times out at 800
      assert.equal(detector(h.actor), "suspect");
      assert.equal(h.actor.getSnapshot().context.failures, 2);
      h.world.primary = "up"; // SIGCONT before the third timeout
      await h.advance(400);
      assert.equal(detector(h.actor), "healthy");
      assert.equal(h.ops("votes").length, 0);
      assert.match(
        h.world.calls.length ? h.actor.getSnapshot().context.why : "",
        /pg1 answered again after 2 failed probes: not failing over/,
      );
    },
  );

  await t.step("a slow primary that answers within the probe timeout stays healthy", async () => {
    using h = harness();
    h.lease.acquire(10);
    h.world.primary = "slow";
    h.world.slowMs = 250;
    await h.advance(3000);
    assert.equal(detector(h.actor), "healthy");
    assert.equal(h.ops("votes").length, 0);
  });

  await t.step("without a majority it does not fail over, and says who disagreed", async () => {
    using h = harness();
    h.lease.acquire(10);
    h.world.primary = "down";
    h.world.votes = {
      agree: 1,
      live: 3,
      votes: [
        { instance: "a", agree: true, why: "3 failed probes" },
        { instance: "b", agree: false, why: "pg1 answered in 2 ms" },
        { instance: "c", agree: false, why: "pg1 answered in 3 ms" },
      ],
    };
    await h.advance(300);
    assert.equal(h.ops("promote").length, 0);
    assert.equal(detector(h.actor), "suspect");
    assert.equal(
      h.actor.getSnapshot().context.why,
      "not failing over: only 1 of 3 live instances see pg1 down (b: pg1 answered in 2 ms; c: pg1 answered in 3 ms)",
    );
    assert.equal(isMajority(2, 3), true);
    assert.equal(isMajority(2, 4), false);
  });

  await t.step(
    "no eligible replica: one sentence, one decision, whichever path finds it; then the primary comes back",
    async () => {
      using h = harness();
      h.lease.acquire(10);
      h.world.primary = "down";
      const none = {
        node: null,
        adopt: false,
        why: "no eligible replica: pg2 is unreachable; pg3 is unreachable",
      };
      // The promotion finds no candidate; every later re-check finds the same.
      h.world.promotion = { node: null, choice: none, readOnlyNode: null };
      h.world.degraded = { primaryOk: false, choice: none, readOnlyNode: null };
      await h.advance(300);
      assert.equal(detector(h.actor), "degraded");
      const sentence =
        "degraded: pg1 is down and no eligible replica: pg2 is unreachable; pg3 is unreachable; " +
        "no node serves reads or writes";
      const atPromotion = h.actor.getSnapshot().context;
      assert.equal(atPromotion.why, sentence);
      assert.deepEqual(atPromotion.decision, {
        id: null,
        kind: "degraded",
        ok: false,
        why: sentence,
        primary: { node: "pg1", epoch: 1, readOnlyNode: null },
      });
      // Announced once at the same epoch, with no read-only fallback.
      assert.deepEqual(
        h.ops("publish").map((c) => {
          const p = c.input as PublishInput;
          return [p.kind, p.node, p.epoch, p.readOnlyNode, p.why];
        }),
        [["degraded", "pg1", 1, null, sentence]],
      );
      // The re-check path says exactly the same and does not announce it again.
      await h.advance(1000);
      assert.equal(h.ops("reassess").length, 1);
      const atRecheck = h.actor.getSnapshot().context;
      assert.equal(atRecheck.why, atPromotion.why);
      assert.deepEqual(atRecheck.decision, atPromotion.decision);
      assert.equal(h.ops("publish").length, 1);
      assert.equal(h.ops("repoint").length, 0, "no node to move the pool to");

      // A replica that can serve reads turns up: announced, and the pool follows read-only.
      h.world.degraded.readOnlyNode = "pg3";
      h.world.degraded.choice.why =
        "no eligible replica: pg3 was 40.0 MB behind at the last sample";
      await h.advance(1000);
      const withReads = degradedSentence("pg1", {
        why: "no eligible replica: pg3 was 40.0 MB behind at the last sample",
        readOnlyNode: "pg3",
      });
      assert.equal(h.actor.getSnapshot().context.why, withReads);
      assert.match(withReads, /; reads go to pg3, writes are refused$/);
      assert.equal(h.actor.getSnapshot().context.decision?.why, withReads);
      assert.deepEqual(
        h.ops("publish").map((c) => (c.input as PublishInput).readOnlyNode),
        [null, "pg3"],
      );
      assert.deepEqual(h.ops("repoint").at(-1)?.input, { node: "pg3", epoch: 1, readOnly: true });

      h.world.degraded.primaryOk = true;
      h.world.primary = "up";
      await h.advance(1000);
      assert.equal(detector(h.actor), "healthy");
      const back = h.actor.getSnapshot().context;
      assert.equal(back.why, "pg1 is back: leaving degraded mode");
      assert.equal(back.decision?.kind, "recovered");
      assert.equal(back.decision?.ok, true);
      assert.deepEqual(h.ops("repoint").at(-1)?.input, { node: "pg1", epoch: 1, readOnly: false });
    },
  );

  await t.step("a degraded announcement that failed is made at the next re-check", async () => {
    using h = harness();
    h.lease.acquire(10);
    h.world.primary = "down";
    const none = { node: null, adopt: false, why: "no eligible replica: pg2 is unreachable" };
    h.world.promotion = { node: null, choice: none, readOnlyNode: null };
    h.world.degraded = { primaryOk: false, choice: none, readOnlyNode: null };
    h.world.publishError = "redis: no answer within 2000 ms";
    await h.advance(300);
    assert.equal(detector(h.actor), "degraded");
    assert.equal(h.ops("publish").length, 1);
    const sentence = h.actor.getSnapshot().context.why;
    h.world.publishError = null;
    await h.advance(1000);
    assert.equal(h.ops("publish").length, 2, "announced again after the failure");
    await h.advance(1000);
    assert.equal(h.ops("publish").length, 2, "and only once");
    assert.equal(h.actor.getSnapshot().context.why, sentence, "the same sentence throughout");
  });

  await t.step("losing the lease mid-promotion stops acting; nothing is published", async () => {
    using h = harness();
    h.lease.acquire(10);
    h.world.primary = "down";
    h.world.release = false;
    await h.advance(300);
    assert.equal(detector(h.actor), "promoting");
    h.lease.lose("renewal found it held by b (token 12)");
    await h.advance(1);
    assert.equal(detector(h.actor), "suspect");
    h.world.release = true;
    await h.advance(50);
    assert.equal(h.ops("publish").length, 0);
    assert.equal(h.actor.getSnapshot().context.leader, null);
  });

  await t.step("the echo of its own publication does not cut the publication short", async () => {
    using h = harness();
    h.lease.acquire(10);
    h.world.primary = "down";
    h.world.holdPublish = true;
    await h.advance(300);
    assert.equal(detector(h.actor), "publishing");
    // Our own broadcast arrives before the effect has returned.
    h.actor.send({ type: "failover.primary", node: "pg2", epoch: 2 });
    await h.advance(1);
    assert.equal(detector(h.actor), "publishing");
    h.world.holdPublish = false;
    await h.advance(5);
    assert.equal(detector(h.actor), "healthy");
    assert.equal(h.actor.getSnapshot().context.decision?.why, "published pg2 with epoch 2");
  });

  await t.step(
    "a newer epoch from the coordinator is followed; an older one is ignored",
    async () => {
      using h = harness();
      h.actor.send({ type: "failover.primary", node: "pg3", epoch: 5 });
      await h.advance(1);
      assert.deepEqual(h.actor.getSnapshot().context.primary, {
        node: "pg3",
        epoch: 5,
        readOnlyNode: null,
      });
      assert.deepEqual(h.ops("repoint").at(-1)?.input, { node: "pg3", epoch: 5, readOnly: false });
      h.actor.send({ type: "failover.primary", node: "pg1", epoch: 4 });
      await h.advance(1);
      assert.equal(h.actor.getSnapshot().context.primary.node, "pg3");
      assert.equal(h.ops("repoint").length, 1);
      // A publication missed on the bus is read from Redis by the next probe.
      h.world.published = { node: "pg2", epoch: 6, readOnlyNode: null };
      await h.advance(100);
      assert.equal(h.actor.getSnapshot().context.primary.node, "pg2");
      assert.match(h.actor.getSnapshot().context.why, /following pg2 \(epoch 6\), read from Redis/);
    },
  );

  await t.step(
    "bootstrap: the coordinator publishes the primary when nothing is published",
    async () => {
      using h = harness({}, {
        start: { published: null, pool: { node: "pg1", epoch: 0, readOnly: false } },
      });
      await h.advance(200);
      assert.equal(h.ops("publish").length, 0, "a follower does not bootstrap");
      h.lease.acquire(10);
      await h.advance(100);
      const publish = h.ops("publish")[0].input as PublishInput;
      assert.equal(publish.kind, "bootstrap");
      assert.equal(publish.node, "pg1");
      assert.equal(publish.epoch, 1);
      assert.deepEqual(h.actor.getSnapshot().context.primary, {
        node: "pg1",
        epoch: 1,
        readOnlyNode: null,
      });
    },
  );

  await t.step(
    "switchover: only the coordinator runs it; the decision carries the request id",
    async () => {
      using h = harness();
      await h.advance(0); // started: following pg1
      h.actor.send({ type: "SWITCHOVER", id: "r1", target: "pg3", requestedBy: "admin" });
      await h.advance(1);
      assert.deepEqual(h.actor.getSnapshot().context.decision, {
        id: "r1",
        kind: "switchover",
        ok: false,
        why: "refused the switchover: this instance is not the failover coordinator",
        primary: { node: "pg1", epoch: 1, readOnlyNode: null },
      });
      h.lease.acquire(10);
      h.actor.send({ type: "SWITCHOVER", id: "r2", target: "pg3", requestedBy: "admin" });
      await h.advance(2);
      const decision = h.actor.getSnapshot().context.decision!;
      assert.equal(decision.id, "r2");
      assert.equal(decision.ok, true);
      assert.deepEqual(decision.primary, { node: "pg3", epoch: 2, readOnlyNode: null });
      assert.equal((h.ops("publish")[0].input as PublishInput).kind, "switchover");
      assert.deepEqual(h.actor.getSnapshot().context.parked, ["pg1"]);
    },
  );

  await t.step("the coordinator repairs what the sample shows, only while healthy", async () => {
    using h = harness();
    h.world.sample = sampleOf(0, [
      primaryNode("pg1"),
      node("pg2", { streaming: false, upstream: "pg9", state: "startup" }),
      node("pg3"),
    ]);
    await h.advance(1000);
    assert.equal(h.ops("repair").length, 0, "followers only watch");
    h.lease.acquire(10);
    await h.advance(1000);
    const repair = h.ops("repair")[0].input as { finding: Finding };
    assert.equal(repair.finding.kind, "repoint_replica");
    assert.equal(repair.finding.node, "pg2");
    assert.equal(h.actor.getSnapshot().context.why, "repaired pg2");
    assert.equal(h.actor.getSnapshot().context.repoints.pg2, 1);
  });

  await t.step(
    "a rejoin that failed after stopping the node: it is started as a replica after its backoff",
    async () => {
      using h = harness({ maintenanceBackoffMs: 4000 });
      h.lease.acquire(10);
      // pg3 came back writable (a killed old primary restarted): rejoin it.
      h.world.sample = pg3Writable();
      h.world.repairFailure = {
        error: "pg_rewind of pg3 failed, it stays stopped: could not find WAL",
        leftStopped: true,
      };
      await h.advance(1000);
      assert.equal((h.ops("repair")[0].input as { finding: Finding }).finding.kind, "rejoin");
      const failed = h.actor.getSnapshot().context;
      assert.deepEqual(failed.parked, ["pg3"]);
      assert.match(failed.why, /rejoin of pg3 failed, retrying in 4 s \(started as a replica/);
      // The rejoin left it stopped: no sample shows it as anything to repair but the parked.
      h.world.repairFailure = null;
      h.world.sample = pg3Down(h.clock.now());
      await h.advance(2000);
      assert.equal(h.ops("repair").length, 1, "nothing within the backoff");
      await h.advance(4000);
      h.world.sample = { ...h.world.sample, at: h.clock.now() };
      await h.advance(1000);
      assert.deepEqual(rejoinsAsked(h), ["rejoin pg3", "start_standby pg3"]);
      assert.deepEqual(h.actor.getSnapshot().context.parked, []);
    },
  );

  await t.step(
    "a rejoin that fenced another host's node: never parked nor started, left to its operator while it stays fenced",
    async () => {
      using h = harness({ maintenanceBackoffMs: 4000 });
      h.lease.acquire(10);
      // pg3 came back writable on a host FAILOVER_LOCAL_NODES does not give us: the rejoin
      // fences it over SQL and fails, telling the operator to rewind it there.
      h.world.sample = pg3Writable();
      h.world.repairFailure = PG3_NOT_OURS;
      await h.advance(1000);
      assert.deepEqual(rejoinsAsked(h), ["rejoin pg3"]);
      const failed = h.actor.getSnapshot().context;
      assert.deepEqual(failed.parked, []);
      assert.equal(
        failed.why,
        "rejoin of pg3 failed, left fenced for its operator (no new rejoin while it stays " +
          "fenced): pg3 is fenced read-only but FAILOVER_LOCAL_NODES puts it on another host: " +
          "stop it there and run pg_rewind",
      );
      assert.equal(failed.decision?.ok, false);
      // The fence holds: pg3 stays up, out of recovery and read-only, until its operator
      // rewinds it. Five backoffs later it was not fenced (nor a row written) again.
      h.world.sample = pg3Fenced(h.clock.now());
      await samplesAgain(h, 5, 4000);
      assert.deepEqual(rejoinsAsked(h), ["rejoin pg3"], "no rejoin while it stays fenced");
      assert.deepEqual(h.actor.getSnapshot().context.awaitingOperator, ["pg3"]);
      // Someone lifted the fence: a stale primary that takes writes again, fenced again.
      h.world.sample = { ...pg3Writable(), at: h.clock.now() };
      await h.advance(1000);
      const twice = ["rejoin pg3", "rejoin pg3"];
      assert.deepEqual(rejoinsAsked(h), twice);
      assert.deepEqual(h.actor.getSnapshot().context.awaitingOperator, ["pg3"]);
      // The operator stops it there to rewind it by hand: down, and not ours to start.
      h.world.sample = pg3Down(h.clock.now());
      await samplesAgain(h, 3, 5000);
      assert.deepEqual(rejoinsAsked(h), twice);
      assert.deepEqual(h.actor.getSnapshot().context.parked, []);
      assert.deepEqual(h.actor.getSnapshot().context.awaitingOperator, []);
      // Back, still fenced: judged afresh (this coordinator cannot tell what happened to it).
      h.world.sample = pg3Fenced(h.clock.now());
      await h.advance(1000);
      assert.deepEqual(rejoinsAsked(h), [...twice, "rejoin pg3"]);
      assert.deepEqual(h.actor.getSnapshot().context.awaitingOperator, ["pg3"]);
      // Its operator rewound it: a streaming replica leaves the list; nothing more to do.
      h.world.repairFailure = null;
      h.world.sample = sampleOf(h.clock.now(), [primaryNode("pg1"), node("pg2"), node("pg3")]);
      await h.advance(1000);
      assert.deepEqual(h.actor.getSnapshot().context.awaitingOperator, []);
      assert.equal(rejoinsAsked(h).length, 3);
    },
  );

  await t.step(
    "a local node whose rejoin failed before the stop is fenced again every backoff, as before",
    async () => {
      using h = harness({ maintenanceBackoffMs: 4000 });
      h.lease.acquire(10);
      h.world.sample = pg3Writable();
      // A fence that did not take (a timeout): nothing says the node is not ours.
      h.world.repairFailure = { error: "cannot fence pg3: timed out", leftStopped: false };
      await h.advance(1000);
      h.world.sample = pg3Fenced(h.clock.now());
      await samplesAgain(h, 2, 4000);
      assert.deepEqual(rejoinsAsked(h), ["rejoin pg3", "rejoin pg3"]);
      assert.deepEqual(h.actor.getSnapshot().context.awaitingOperator, []);
    },
  );

  await t.step(
    "a parked node that may not be started from here leaves the list; a thrown repair parks nothing",
    async () => {
      using h = harness({ maintenanceBackoffMs: 4000 });
      h.lease.acquire(10);
      h.world.sample = pg3Writable();
      // Refused before it touched the node (a stale fencing token): nothing was stopped.
      h.world.repairError = "LEASE_STALE_TOKEN: token 10 is no longer current";
      await h.advance(1000);
      assert.deepEqual(h.actor.getSnapshot().context.parked, []);
      assert.match(h.actor.getSnapshot().context.why, /^rejoin of pg3 failed, retrying in 4 s: /);
      h.world.repairError = null;
      await h.advance(5000);
      h.world.sample = { ...h.world.sample, at: h.clock.now() };
      h.world.repairFailure = {
        error: "pg_rewind of pg3 failed, it stays stopped",
        leftStopped: true,
      };
      await h.advance(1000);
      assert.deepEqual(h.actor.getSnapshot().context.parked, ["pg3"]);
      // Down, parked: started after the backoff, but where it runs is not known here.
      h.world.repairFailure = { error: "where pg3 runs is not known", leftStopped: false };
      h.world.sample = pg3Down(h.clock.now());
      await samplesAgain(h, 1, 5000);
      await h.advance(1000);
      const asked = ["rejoin pg3", "rejoin pg3", "start_standby pg3"];
      assert.deepEqual(rejoinsAsked(h), asked);
      assert.deepEqual(h.actor.getSnapshot().context.parked, []);
      assert.match(h.actor.getSnapshot().context.why, /^start standby of pg3 failed/);
      await samplesAgain(h, 3, 5000);
      assert.deepEqual(rejoinsAsked(h), asked, "no start every backoff of a node we cannot start");
    },
  );

  await t.step("a parked node seen streaming as a replica is no longer parked", async () => {
    using h = harness();
    h.lease.acquire(10);
    h.world.sample = pg3Writable();
    h.world.repairFailure = {
      error: "cannot stop pg3 for pg_rewind: timed out",
      leftStopped: true,
    };
    await h.advance(1000);
    assert.deepEqual(h.actor.getSnapshot().context.parked, ["pg3"]);
    // Someone (an operator) brought it back as a replica meanwhile.
    h.world.repairFailure = null;
    h.world.sample = { ...sampleOf(0, [primaryNode("pg1"), node("pg2"), node("pg3")]) };
    await h.advance(1000);
    assert.deepEqual(h.actor.getSnapshot().context.parked, []);
  });

  await t.step("a sample taken against the previous primary is never acted on", async () => {
    using h = harness();
    h.lease.acquire(10);
    await h.advance(1000);
    const before = h.actor.getSnapshot().context.lastGoodSample;
    assert.equal(before?.primary, "pg1");
    // A switch to pg2 while a sampling against pg1 was under way: that sample sees pg1
    // still writable and pg3 following it. Against pg2 it would call for a rejoin of pg1.
    h.actor.send({ type: "failover.primary", node: "pg2", epoch: 2 });
    const stale = sampleOf(h.clock.now(), [
      primaryNode("pg1"),
      primaryNode("pg2"),
      node("pg3", { streaming: false, upstream: "pg1" }),
    ]);
    h.world.sample = stale;
    await h.advance(1000);
    assert.equal(h.ops("repair").length, 0, "no repair from a sample of another primary");
    assert.equal(h.actor.getSnapshot().context.lastGoodSample, before, "nor a failover basis");
    // The same picture sampled against pg2 is acted on.
    h.world.sample = { ...stale, primary: "pg2", at: h.clock.now() };
    await h.advance(1000);
    const repair = h.ops("repair")[0]?.input as { finding: Finding } | undefined;
    assert.equal(repair?.finding.kind, "rejoin");
    assert.equal(repair?.finding.node, "pg1");
  });

  await t.step("lag alerts are raised and resolved", async () => {
    using h = harness({ lagAlertBytes: 1000 });
    h.world.sample = sampleOf(0, [
      primaryNode("pg1"),
      node("pg2", { lagBytes: 5000 }),
      node("pg3"),
    ]);
    await h.advance(1000);
    const alerts = Object.values(h.actor.getSnapshot().context.alerts);
    assert.equal(alerts.length, 1);
    assert.equal(alerts[0].node, "pg2");
    assert.match(alerts[0].why, /pg2 lags 4\.9 kB/);
    assertSerialisable(h.actor, "alerting");
    h.world.sample = sampleOf(1, [primaryNode("pg1"), node("pg2"), node("pg3")]);
    await h.advance(1000);
    assert.deepEqual(h.actor.getSnapshot().context.alerts, {});
    // The chart announces each change once: raised, then resolved.
    const news = h.ops("alerts").map((c) => c.input as { raised: LagAlert[]; resolved: LagAlert[] })
      .map((n) => ({
        raised: n.raised.map((a) => `${a.node}:${a.kind}`),
        resolved: n.resolved.map((a) => `${a.node}:${a.kind}`),
      }));
    assert.deepEqual(news, [
      { raised: ["pg2:lag"], resolved: [] },
      { raised: [], resolved: ["pg2:lag"] },
    ]);
  });
});

/** The detector's state, whole (`healthy.waiting`). */
function detectorPath(actor: Actor<typeof failoverMachine>): string {
  const d = (actor.getSnapshot().value as Record<string, unknown>).detector;
  return typeof d === "string" ? d : Object.entries(d as object).map(([k, v]) => `${k}.${v}`)[0];
}

/**
 * Asserts the chart holds data only: its context survives a JSON round trip unchanged, and
 * a snapshot persisted as JSON restores to the same state and context.
 */
function assertSerialisable(actor: Actor<typeof failoverMachine>, when: string): void {
  const snapshot = actor.getSnapshot();
  assert.deepEqual(JSON.parse(JSON.stringify(snapshot.context)), snapshot.context, when);
  const json = JSON.stringify(actor.getPersistedSnapshot());
  // Restored, not started: the placeholder effects never run.
  const restored = createActor(failoverMachine, {
    snapshot: JSON.parse(json),
    input: { instanceId: "a", nodes: NODES },
  }).getSnapshot();
  assert.deepEqual(restored.value, snapshot.value, `state restored at ${when}`);
  assert.deepEqual(restored.context, snapshot.context, `context restored at ${when}`);
}

Deno.test("start-up: which node the pool opens on", () => {
  const node = (name: string, inRecovery: boolean, epoch: number | null) => ({
    name,
    reachable: true,
    inRecovery,
    recorded: epoch === null ? null : { node: "pg2", epoch, maxEpoch: epoch },
    error: null,
  });
  const nodes = [node("pg1", true, 32), node("pg2", false, 32)];
  const base = { waitedMs: 0, redisWaitMs: 15_000, configured: "pg1", nodes };
  // The soak's case: Redis brought back pg1 at epoch 31, failover_history says pg2 at 32.
  const stale = chooseStartupNode({
    ...base,
    redis: { answered: true, record: { node: "pg1", epoch: 31, readOnlyNode: null } },
  });
  assert.deepEqual(stale, {
    open: true,
    node: "pg2",
    epoch: 32,
    why: "start-up: the published primary pg1 (epoch 31) is older than epoch 32 recorded in " +
      "failover_history: opening pg2 (epoch 32), the primary failover_history records, " +
      "which is writable",
  });
  // A current record is followed.
  assert.deepEqual(
    chooseStartupNode({
      ...base,
      redis: { answered: true, record: { node: "pg2", epoch: 32, readOnlyNode: null } },
    }),
    {
      open: true,
      node: "pg2",
      epoch: 32,
      why: "start-up: opening pg2 (epoch 32), the primary published in Redis",
    },
  );
  // Redis not answering is waited for, then failover_history decides.
  const silent = { answered: false, record: null };
  const waiting = chooseStartupNode({ ...base, redis: silent, waitedMs: 1000 });
  assert.equal(waiting.open, false);
  assert.match(waiting.why, /waiting for Redis to name the primary/);
  assert.equal(chooseStartupNode({ ...base, redis: silent, waitedMs: 15_000 }).open, true);
  // The recorded primary in recovery: never opened; wait and say why.
  const demoted = chooseStartupNode({
    ...base,
    nodes: [node("pg1", true, 32), node("pg2", true, 32)],
    redis: silent,
    waitedMs: 15_000,
  });
  assert.deepEqual(demoted, {
    open: false,
    error: true,
    why: "start-up: Redis gave no answer for 15000 ms, and the primary failover_history " +
      "records, pg2 (epoch 32), is in recovery (a replica): waiting for the coordinator to " +
      "publish the primary",
  });
  // Nothing recorded anywhere (a new cluster): DATABASE_URL, only out of recovery.
  const fresh = [node("pg1", false, null), node("pg2", true, null)];
  const none = { answered: true, record: null };
  assert.deepEqual(chooseStartupNode({ ...base, nodes: fresh, redis: none }), {
    open: true,
    node: null,
    epoch: 0,
    why: "start-up: no primary is published in Redis and failover_history records none: " +
      "opening DATABASE_URL (pg1), which is writable",
  });
  assert.equal(
    chooseStartupNode({ ...base, configured: "pg2", nodes: fresh, redis: none }).open,
    false,
  );
});

Deno.test("failover machine: what the chart decides itself", async (t) => {
  await t.step(
    "start: the published primary wins; the pool and the monitor wait for the decision",
    async () => {
      using h = harness({}, {
        startReady: false,
        start: {
          published: { node: "pg2", epoch: 3, readOnlyNode: null },
          pool: { node: "pg1", epoch: 0, readOnly: false },
        },
      });
      await h.advance(2000); // Redis is slow to answer
      assert.equal(detector(h.actor), "starting");
      assert.equal(h.ops("start").length, 1);
      assert.equal(h.ops("probe").length, 0, "nothing to probe before the start is decided");
      assert.equal(h.ops("repoint").length, 0, "the pool waits for the decision");
      assert.equal(h.ops("sample").length, 0, "so does the monitor");
      assertSerialisable(h.actor, "starting");
      h.world.startReady = true;
      await h.advance(1);
      assert.equal(detector(h.actor), "healthy");
      const ctx = h.actor.getSnapshot().context;
      assert.deepEqual(ctx.primary, { node: "pg2", epoch: 3, readOnlyNode: null });
      assert.equal(ctx.why, "starting: following pg2 (epoch 3), the primary published in Redis");
      assert.deepEqual(h.ops("repoint").map((c) => c.input), [
        { node: "pg2", epoch: 3, readOnly: false },
      ]);
      assert.deepEqual(ctx.pool, { node: "pg2", epoch: 3, readOnly: false });
      await h.advance(1000);
      assert.deepEqual(h.ops("probe")[0].input, { primary: ctx.primary }, "probes follow pg2");
      assert.equal(h.ops("sample")[0]?.at, h.ops("start")[0].at + 2001 + 1000);
    },
  );

  await t.step("start: with nothing published, the node the pool is on at its epoch", async () => {
    const cases: { start: StartFacts; primary: Published; why: string; repoint: unknown[] }[] = [
      {
        start: { published: null, pool: { node: "pg1", epoch: 0, readOnly: false } },
        primary: { node: "pg1", epoch: 0, readOnlyNode: null },
        why: "starting: no primary is published (or Redis did not answer); following pg1, " +
          "where the pool points, with epoch 0 until the coordinator publishes it",
        repoint: [],
      },
      {
        // Restarted after a failover while Redis does not answer: stay where the pool is.
        start: { published: null, pool: { node: "pg2", epoch: 4, readOnly: false } },
        primary: { node: "pg2", epoch: 4, readOnlyNode: null },
        why: "starting: no primary is published (or Redis did not answer); following pg2, " +
          "where the pool points, with epoch 4",
        repoint: [],
      },
      {
        start: {
          published: { node: "pg9", epoch: 7, readOnlyNode: null },
          pool: { node: "pg1", epoch: 0, readOnly: false },
        },
        primary: { node: "pg1", epoch: 0, readOnlyNode: null },
        why: "starting: the published primary pg9 is none of DATABASE_NODES (pg1, pg2, pg3); " +
          "following pg1, where the pool points, with epoch 0 until the coordinator publishes it",
        repoint: [],
      },
      {
        start: { published: null, pool: null },
        primary: { node: "pg1", epoch: 0, readOnlyNode: null },
        why: "starting: no primary is published (or Redis did not answer); following pg1, the " +
          "first of DATABASE_NODES (the pool points at none of them), with epoch 0 until the " +
          "coordinator publishes it",
        repoint: [{ node: "pg1", epoch: 0, readOnly: false }],
      },
    ];
    for (const c of cases) {
      using h = harness({}, { start: c.start, published: null });
      await h.advance(1);
      const ctx = h.actor.getSnapshot().context;
      assert.deepEqual(ctx.primary, c.primary);
      assert.equal(ctx.why, c.why);
      assert.deepEqual(h.ops("repoint").map((r) => r.input), c.repoint);
    }
  });

  await t.step("start: only epoch 0 is bootstrapped, a restarted instance never is", async () => {
    using h = harness({}, {
      start: { published: null, pool: { node: "pg2", epoch: 4, readOnly: false } },
      published: null,
    });
    h.lease.acquire(10);
    await h.advance(1000);
    assert.equal(h.ops("publish").length, 0);
    assert.equal(detector(h.actor), "healthy");
  });

  await t.step("start: a newer primary announced meanwhile is followed at once", async () => {
    using h = harness({}, { startReady: false });
    await h.advance(50);
    h.actor.send({ type: "failover.primary", node: "pg3", epoch: 5 });
    await h.advance(1);
    assert.equal(detector(h.actor), "healthy");
    assert.deepEqual(h.actor.getSnapshot().context.primary, {
      node: "pg3",
      epoch: 5,
      readOnlyNode: null,
    });
    assert.deepEqual(h.ops("repoint").at(-1)?.input, { node: "pg3", epoch: 5, readOnly: false });
    h.world.startReady = true;
    await h.advance(200);
    assert.equal(h.actor.getSnapshot().context.primary.node, "pg3", "the late start is dropped");
  });

  await t.step(
    "one probing path at both levels: a crash, a timeout and a refusal read alike",
    async () => {
      using h = harness();
      await h.advance(50);
      h.world.primary = "error";
      await h.advance(50); // t=100: the probe fails
      assert.equal(detector(h.actor), "suspect");
      assert.equal(
        h.actor.getSnapshot().context.why,
        "suspect: a probe of pg1 failed (probe crashed)",
      );
      await h.advance(100); // t=200
      assert.equal(
        h.actor.getSnapshot().context.why,
        "suspect: 2 consecutive probes of pg1 failed (probe crashed)",
      );
      h.world.primary = "hang";
      await h.advance(400); // t=300 probe times out at 600
      assert.equal(
        h.actor.getSnapshot().context.why,
        "suspect: 3 consecutive probes of pg1 failed (no answer within 300 ms)",
      );
      h.world.primary = "up";
      await h.advance(400);
      assert.equal(detector(h.actor), "healthy");
      assert.equal(
        h.actor.getSnapshot().context.why,
        "pg1 answered again after 3 failed probes: not failing over",
      );
      assert.equal(h.actor.getSnapshot().context.failures, 0);

      // The first failed probe reads the same whether it was refused or timed out.
      using g = harness();
      g.world.primary = "hang";
      await g.advance(400); // probe at 100 times out at 400
      assert.equal(
        g.actor.getSnapshot().context.why,
        "suspect: a probe of pg1 failed (no answer within 300 ms)",
      );
    },
  );

  await t.step("an announcement moves the detector only: the coordinator stays one", async () => {
    using h = harness();
    h.lease.acquire(10);
    await h.advance(500);
    const value = () => h.actor.getSnapshot().value as Record<string, unknown>;
    assert.equal(value().role, "coordinator");
    h.actor.send({ type: "failover.primary", node: "pg2", epoch: 2 });
    await h.advance(1);
    assert.equal(value().role, "coordinator");
    assert.equal(h.actor.getSnapshot().context.leader, 10);
    assert.equal(h.actor.getSnapshot().context.primary.node, "pg2");
    // The monitor kept its rhythm: a sample every second, not restarted by the news.
    await h.advance(500);
    assert.deepEqual(h.ops("sample").map((c) => c.at), [1000]);
  });

  await t.step("degraded: failing queries fail at once until the primary is back", async () => {
    using h = harness();
    h.lease.acquire(10);
    h.world.primary = "down";
    const none = { node: null, adopt: false, why: "no eligible replica: pg2 is unreachable" };
    h.world.promotion = { node: null, choice: none, readOnlyNode: null };
    h.world.degraded = { primaryOk: false, choice: none, readOnlyNode: null };
    await h.advance(300);
    assert.equal(detector(h.actor), "degraded");
    assertSerialisable(h.actor, "degraded");
    assert.deepEqual(h.ops("queries").map((c) => c.input), ["wait", "fail fast"]);
    h.world.degraded.primaryOk = true;
    h.world.primary = "up";
    await h.advance(1000);
    assert.equal(detector(h.actor), "healthy");
    assert.deepEqual(h.ops("queries").map((c) => c.input), ["wait", "fail fast", "wait"]);
  });

  await t.step("the context is data at every step of a failover", async () => {
    using h = harness();
    h.lease.acquire(10);
    h.world.primary = "down";
    h.world.release = false;
    const seen = new Set<string>();
    for (let i = 0; i < 40; i++) {
      await h.advance(10);
      seen.add(detector(h.actor));
      assertSerialisable(h.actor, detectorPath(h.actor));
    }
    h.world.release = true;
    await h.advance(10);
    assertSerialisable(h.actor, detectorPath(h.actor));
    assert.deepEqual([...seen], ["healthy", "suspect", "promoting"]);
    assert.equal(detector(h.actor), "healthy");
  });
});

Deno.test("failover decisions", async (t) => {
  const last = sampleOf(0, [primaryNode("pg1"), node("pg2"), node("pg3")]);
  await t.step("the replica with the highest replay LSN wins; priority breaks ties", () => {
    const fresh = [
      node("pg2", { replayLsn: "0/3000100" }),
      node("pg3", { replayLsn: "0/3000200" }),
    ];
    const choice = chooseCandidate({
      fresh,
      oldPrimary: "pg1",
      priority: NODES,
      last,
      syncMode: true,
      maxLagBytes: 1000,
    });
    assert.deepEqual(choice, {
      node: "pg3",
      adopt: false,
      why: "pg3 has the highest replay LSN 0/3000200 (pg2 0/3000100)",
    });
    const tie = chooseCandidate({
      fresh: [node("pg3"), node("pg2")],
      oldPrimary: "pg1",
      priority: NODES,
      last,
      syncMode: true,
      maxLagBytes: 1000,
    });
    assert.equal(tie.node, "pg2");
    assert.match(tie.why, /comes first in priority/);
  });

  await t.step("a node already promoted by a dead coordinator is adopted", () => {
    const choice = chooseCandidate({
      fresh: [
        node("pg2", { inRecovery: false, timeline: 2, currentLsn: "0/4000000" }),
        node("pg3"),
      ],
      oldPrimary: "pg1",
      priority: NODES,
      last,
      syncMode: true,
      maxLagBytes: 1000,
    });
    assert.equal(choice.node, "pg2");
    assert.equal(choice.adopt, true);
    assert.match(choice.why, /already out of recovery/);
  });

  await t.step(
    "sync mode: no promotion unless some reachable standby confirmed every commit",
    () => {
      const choice = chooseCandidate({
        fresh: [node("pg2"), node("pg3", { reachable: false, error: "connection refused" })],
        oldPrimary: "pg1",
        priority: NODES,
        last,
        syncMode: true,
        maxLagBytes: 1000,
      });
      assert.equal(choice.node, null);
      assert.match(
        choice.why,
        /no replica provably holds every acknowledged write: ANY 1 of pg2, pg3 confirmed commits, and pg3 cannot be checked/,
      );
      // With only pg2 as synchronous standby, pg2 alone is enough.
      const single = chooseCandidate({
        fresh: [node("pg2"), node("pg3", { reachable: false })],
        oldPrimary: "pg1",
        priority: NODES,
        last: sampleOf(0, last.nodes, ["pg2"]),
        syncMode: true,
        maxLagBytes: 1000,
      });
      assert.equal(single.node, "pg2");
    },
  );

  await t.step(
    "every replica gone: the same sentence whether or not the dead standby was still listed",
    () => {
      const gone = [
        node("pg2", { reachable: false, inRecovery: null, error: "connection refused" }),
        node("pg3", {
          reachable: false,
          inRecovery: null,
          error: "pg3 gave no answer within 1000 ms (state)",
        }),
      ];
      const base = { fresh: gone, oldPrimary: "pg1", priority: NODES, maxLagBytes: 1000 };
      const whys = [
        chooseCandidate({ ...base, last, syncMode: true }), // ANY 1 (pg2, pg3) still set
        chooseCandidate({ ...base, last: sampleOf(0, last.nodes, ["pg3"]), syncMode: true }),
        chooseCandidate({ ...base, last: { ...last, sync: null }, syncMode: true }), // cleared
        chooseCandidate({ ...base, last: null, syncMode: true }),
        chooseCandidate({ ...base, last, syncMode: false }),
      ].map((c) => c.why);
      assert.deepEqual(
        new Set(whys),
        new Set([
          "no eligible replica: pg2 is unreachable (connection refused); " +
          "pg3 is unreachable (pg3 gave no answer within 1000 ms (state))",
        ]),
      );
      assert.equal(readOnlyFallback(gone, "pg1"), null);
      assert.equal(
        readOnlyFallback(
          [node("pg2", { replayLsn: "0/1000" }), node("pg3", { replayLsn: "0/2000" })],
          "pg1",
        ),
        "pg3",
      );
    },
  );

  await t.step("async mode: a replica too far behind at the last sample is not eligible", () => {
    const lagging = sampleOf(0, [
      primaryNode("pg1"),
      node("pg2", { lagBytes: 50_000_000 }),
      node("pg3"),
    ]);
    const choice = chooseCandidate({
      fresh: [node("pg2", { replayLsn: "0/9000000" }), node("pg3", { reachable: false })],
      oldPrimary: "pg1",
      priority: NODES,
      last: { ...lagging, sync: null },
      syncMode: false,
      maxLagBytes: 16 * 1024 * 1024,
    });
    assert.equal(choice.node, null);
    assert.match(choice.why, /pg2 was 47\.7 MB behind at the last sample \(limit 16\.0 MB\)/);
  });

  await t.step(
    "repairs: a second writable node first, then stray replicas, then sync standbys",
    () => {
      const primary = { node: "pg2", epoch: 2, readOnlyNode: null };
      const base = {
        primary,
        syncMode: true,
        backoff: {},
        repoints: {},
        parked: [],
        awaitingOperator: [],
      };
      const rogue = findRepair({
        ...base,
        sample: sampleOf(0, [
          primaryNode("pg1"),
          primaryNode("pg2"),
          node("pg3", { streaming: false }),
        ]),
      });
      assert.equal(rogue?.kind, "rejoin");
      assert.equal(
        rogue?.why,
        "pg1 is up and writable but pg2 is the primary of epoch 2: fencing pg1 and rejoining it as a replica",
      );
      const stray = findRepair({
        ...base,
        sample: sampleOf(0, [
          node("pg1", { reachable: false, inRecovery: null }),
          primaryNode("pg2"),
          node("pg3", { streaming: false, upstream: "pg1" }),
        ]),
      });
      assert.deepEqual(stray, {
        kind: "repoint_replica",
        node: "pg3",
        why: "pg3 is a replica but does not stream from pg2 (it follows pg1): re-pointing it",
      });
      const stuck = findRepair({
        ...base,
        repoints: { pg3: 2 },
        sample: sampleOf(0, [primaryNode("pg2"), node("pg3", { streaming: false })]),
      });
      assert.equal(stuck?.kind, "rejoin");
      const sync = findRepair({
        ...base,
        sample: { ...sampleOf(0, [primaryNode("pg2"), node("pg3")]), sync: null },
      });
      assert.deepEqual(sync, {
        kind: "sync",
        node: "pg2",
        standbys: ["pg3"],
        why: "synchronous standbys should be pg3 (streaming now), not none",
      });
      const none = findRepair({
        ...base,
        sample: sampleOf(0, [
          primaryNode("pg2"),
          node("pg3", { reachable: false, inRecovery: null, streaming: false }),
        ], ["pg3"]),
      });
      assert.equal(none?.kind, "sync");
      assert.match(none!.why, /no replica streams: clearing synchronous_standby_names/);
      assert.equal(
        findRepair({ ...base, sample: sampleOf(0, [primaryNode("pg2"), node("pg3")], ["pg3"]) }),
        null,
      );
      // A node fenced by a rejoin that could go no further waits for its operator while the
      // sample shows it fenced; the same node unfenced, or fenced but not waiting (a new
      // coordinator's first look), is rejoined.
      const fencedPg1 = (fenced: boolean) =>
        sampleOf(0, [
          primaryNode("pg1", { readOnlyFenced: fenced }),
          primaryNode("pg2"),
          node("pg3"),
        ], ["pg3"]);
      const waiting = { ...base, awaitingOperator: ["pg1"] };
      assert.equal(findRepair({ ...waiting, sample: fencedPg1(true) }), null);
      assert.equal(findRepair({ ...waiting, sample: fencedPg1(false) })?.kind, "rejoin");
      assert.equal(findRepair({ ...base, sample: fencedPg1(true) })?.kind, "rejoin");
    },
  );

  await t.step("probes, votes and publications: each decision says why", () => {
    const primary = { node: "pg1", epoch: 2, readOnlyNode: null };
    const probe = {
      ok: true,
      error: null,
      latencyMs: 3,
      refused: false,
      at: 10,
      published: primary,
    };
    assert.deepEqual(judgeProbe({ primary, failures: 0, leader: null }, probe), {
      verdict: "answered",
      why: null,
    });
    assert.deepEqual(
      judgeProbe({ primary, failures: 0, leader: 7 }, {
        ...probe,
        published: { node: "pg2", epoch: 3, readOnlyNode: null },
      }),
      {
        verdict: "newer",
        primary: { node: "pg2", epoch: 3, readOnlyNode: null },
        why: "following pg2 (epoch 3), read from Redis",
      },
    );
    // Bootstrap only for the coordinator, only at epoch 0, only with nothing published.
    const first = { ...primary, epoch: 0 };
    assert.equal(
      judgeProbe({ primary: first, failures: 0, leader: 7 }, { ...probe, published: null })
        .verdict,
      "bootstrap",
    );
    assert.equal(
      judgeProbe({ primary: first, failures: 0, leader: null }, { ...probe, published: null })
        .verdict,
      "answered",
    );
    // Redis lost the publication (older epoch, or answered with none): the coordinator
    // re-asserts; a follower, or a Redis that did not answer, does nothing.
    const older = { node: "pg1", epoch: 1, readOnlyNode: null };
    assert.deepEqual(
      judgeProbe({ primary, failures: 0, leader: 7 }, { ...probe, published: older }),
      {
        verdict: "reassert",
        why: "Redis holds pg1 at epoch 1, older than pg1 at epoch 2: re-asserting the publication",
      },
    );
    assert.equal(
      judgeProbe({ primary, failures: 0, leader: null }, { ...probe, published: older }).verdict,
      "answered",
    );
    assert.equal(
      judgeProbe({ primary, failures: 0, leader: 7 }, {
        ...probe,
        published: null,
        redisAnswered: true,
      }).verdict,
      "reassert",
    );
    assert.equal(
      judgeProbe({ primary, failures: 0, leader: 7 }, { ...probe, published: null }).verdict,
      "answered",
    );
    assert.deepEqual(
      judgeProbe({ primary, failures: 2, leader: null }, { ...probe, ok: false, error: "refused" }),
      {
        verdict: "failed",
        failures: 3,
        why: "suspect: 3 consecutive probes of pg1 failed (refused)",
      },
    );

    const votes: VoteOutput = {
      agree: 2,
      live: 3,
      votes: [
        { instance: "a", agree: true, why: "3 failed" },
        { instance: "b", agree: true, why: "refused here" },
        { instance: "c", agree: false, why: "pg1 answered in 2 ms" },
      ],
    };
    assert.deepEqual(judgeVotes({ primary, failures: 3, lastError: "refused" }, votes), {
      failover: true,
      why: "pg1 failed 3 consecutive probes (last: refused) and 2 of 3 live instances agree: " +
        "failing over",
    });
    assert.equal(
      judgeVotes({ primary, failures: 3, lastError: null }, { ...votes, agree: 1 }).failover,
      false,
    );

    assert.deepEqual(
      voteFromState({ primary, failures: 0, lastProbe: null }, { node: "pg0", epoch: 1 }),
      { agree: false, why: "I follow pg1 of the newer epoch 2" },
    );
    assert.deepEqual(
      voteFromState({ primary, failures: 2, lastProbe: { error: "refused" } }, {
        node: "pg1",
        epoch: 2,
      }),
      { agree: true, why: "2 consecutive probes failed here (refused)" },
    );
    assert.equal(
      voteFromState({ primary, failures: 0, lastProbe: null }, { node: "pg1", epoch: 2 }),
      null,
      "knows nothing: a fresh probe decides",
    );

    const state = {
      primary,
      promotion: { node: "pg2", lsn: null, adopted: false, why: "best", parked: null },
      switchover: null,
      leader: 7,
      suspectSince: 100,
      why: "failing over",
    };
    assert.equal(publicationOf(state).kind, "failover");
    assert.equal(publicationOf(state).epoch, 3);
    assert.equal(
      publicationOf({ ...state, switchover: { id: "r", target: "pg2", requestedBy: "x" } }).kind,
      "switchover",
    );
    assert.equal(
      publicationOf({
        ...state,
        primary: first,
        promotion: { ...state.promotion, node: "pg1", adopted: true },
      }).kind,
      "bootstrap",
    );
  });

  await t.step("certain evidence: refusals from 2 instances AND no WAL stream left", () => {
    const pg1: Published = { node: "pg1", epoch: 3, readOnlyNode: null };
    // The last sample taken while pg1 answered: pg2 and pg3 streamed from it.
    const before = sampleOf(1, [primaryNode("pg1"), node("pg2"), node("pg3")]);
    const state = { primary: pg1, lastGoodSample: before };
    const refused = (instance: string) => ({ instance, refused: true, why: "connection refused" });
    const gone = (node: string) => ({ node, streaming: false, why: "no WAL receiver" });
    const certain = judgeEvidence(state, {
      observers: [refused("a"), refused("b")],
      receivers: [gone("pg2"), { node: "pg3", streaming: null, why: "no answer" }],
    });
    assert.equal(certain.certain, true);
    // A replica that cannot be reached neither blocks nor counts, and the sentence says so.
    assert.equal(
      certain.why,
      "certain: pg1 refused connections from 2 of 2 instances (a, b) and no replica's WAL " +
        "receiver streams from it (pg2: no WAL receiver; not counted: pg3: no answer)",
    );
    // A timeout (SIGSTOP, load, partition) is never a refusal.
    const stalled = judgeEvidence(state, {
      observers: [refused("a"), {
        instance: "b",
        refused: false,
        why: "pg1 gave no answer within 1000 ms (probe)",
      }],
      receivers: [gone("pg2"), gone("pg3")],
    });
    assert.equal(stalled.certain, false);
    assert.match(stalled.why, /only 1 of 2 instances saw pg1 refuse connections/);
    // A port blocked for new connections leaves the streams up: not certain.
    const blocked = judgeEvidence(state, {
      observers: [refused("a"), refused("b"), refused("c")],
      receivers: [{ node: "pg2", streaming: true, why: "streaming" }, gone("pg3")],
    });
    assert.equal(blocked.certain, false);
    assert.equal(
      blocked.why,
      "not certain, staying on the careful path: pg2 still streams from pg1",
    );
    // One replica still streaming blocks, even when the others lost their streams or
    // cannot be reached.
    const one = judgeEvidence(state, {
      observers: [refused("a"), refused("b")],
      receivers: [{ node: "pg2", streaming: null, why: "no answer" }, {
        node: "pg3",
        streaming: true,
        why: "receiver streaming from 10.0.0.1:5432, no other node's address: taken as pg1",
      }],
    });
    assert.equal(one.certain, false);
    assert.match(one.why, /pg3 still streams from pg1/);
    // No replica answered: nothing shows the streams are gone.
    const blind = judgeEvidence(state, {
      observers: [refused("a"), refused("b")],
      receivers: [{ node: "pg2", streaming: null, why: "no answer" }],
    });
    assert.equal(blind.certain, false);
    assert.match(blind.why, /no replica answered to show its WAL receiver/);
    // A replica that was not streaming before either is no witness of a lost stream.
    const detached = judgeEvidence(
      {
        primary: pg1,
        lastGoodSample: sampleOf(1, [
          primaryNode("pg1"),
          node("pg2", { streaming: false, state: "receiver waiting" }),
          node("pg3"),
        ]),
      },
      {
        observers: [refused("a"), refused("b")],
        receivers: [gone("pg2"), { node: "pg3", streaming: null, why: "no answer" }],
      },
    );
    assert.equal(detached.certain, false);
    assert.equal(
      detached.why,
      "not certain, staying on the careful path: no replica lost a stream from pg1: pg2 did " +
        "not stream from it at the last sample",
    );
    // No sample of pg1 yet (just started, or only samples of another primary): no witness.
    const unseen = judgeEvidence(
      { primary: pg1, lastGoodSample: { ...before, primary: "pg2" } },
      { observers: [refused("a"), refused("b")], receivers: [gone("pg2"), gone("pg3")] },
    );
    assert.equal(unseen.certain, false);
    assert.match(unseen.why, /pg2, pg3 did not stream from it at the last sample \(none taken/);
    // The refused verdict is the coordinator's, with the fast path on.
    const probe = {
      ok: false,
      error: "connection refused",
      latencyMs: 1,
      refused: true,
      at: 5,
      published: null,
    };
    assert.equal(
      judgeProbe({ primary: pg1, failures: 0, leader: 7, fastPath: true }, probe).verdict,
      "refused",
    );
    assert.equal(
      judgeProbe({ primary: pg1, failures: 0, leader: null, fastPath: true }, probe).verdict,
      "failed",
    );
    assert.equal(
      judgeProbe({ primary: pg1, failures: 0, leader: 7, fastPath: false }, probe).verdict,
      "failed",
    );
  });

  await t.step("LSNs, sync standby names and alerts", () => {
    assert.equal(lsnToNumber("0/3000148"), 0x3000148);
    assert.equal(lsnToNumber("1/0"), 2 ** 32);
    assert.equal(lsnToNumber("nope"), null);
    assert.deepEqual(parseSyncStandbys('ANY 1 ("pg2", pg3)'), {
      method: "ANY",
      num: 1,
      names: ["pg2", "pg3"],
    });
    assert.deepEqual(parseSyncStandbys("pg2, pg3"), {
      method: "FIRST",
      num: 1,
      names: ["pg2", "pg3"],
    });
    assert.equal(parseSyncStandbys(""), null);
    assert.equal(formatSyncStandbys(["pg2", "pg3"]), 'ANY 1 ("pg2", "pg3")');
    assert.equal(formatSyncStandbys([]), "");
    const first = updateAlerts({}, {
      sample: sampleOf(5, [
        primaryNode("pg1"),
        node("pg2", { reachable: false, error: "refused" }),
      ]),
      lagAlertBytes: 10,
      lagAlertSeconds: 10,
    });
    assert.deepEqual(first.raised.map((a) => `${a.node}:${a.kind}:${a.since}`), [
      "pg2:unreachable:5",
    ]);
    const second = updateAlerts(first.alerts, {
      sample: sampleOf(6, [primaryNode("pg1"), node("pg2")]),
      lagAlertBytes: 10,
      lagAlertSeconds: 10,
    });
    assert.equal(second.resolved.length, 1);
    assert.deepEqual(second.alerts, {});
  });
});
