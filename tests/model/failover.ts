/**
 * Model of the `failover` chart of one instance: the `failover` lease comes and goes (each
 * acquisition with a newer fencing token), other coordinators announce newer primaries,
 * an operator asks for a switchover, and every effect answers, fails or hangs: probes
 * answer or fail, votes reach a majority or not, a promotion promotes / finds nothing /
 * crashes, a fake Redis accepts a publication only under a fencing token at least as new
 * as the last one it accepted and only for a newer epoch. Probes fail two ways: ambiguously
 * (a timeout-like error: the careful path counts) or refused (the fast path gathers evidence,
 * `corroborate`, which comes back certain, uncertain or fails).
 *
 * Invariants: never two promotions published for one epoch; the detector enters
 * `promoting` only as the coordinator and only on a majority vote of this suspicion
 * round, on either path; the fast path reaches the vote only on certain evidence (and a
 * sample of the primary whose replicas streamed, for the WAL receivers to witness); a
 * promotion happens only under the lease's token, never older than the token of the record
 * Redis holds (a promote under an older one is refused, like the real `fenced()`); every
 * promote / switchover / publish runs under the token of the lease held now, never older
 * than a token used before.
 * @module
 */
import { type FailoverInput, failoverMachine } from "../../machines/failover/mod.ts";
import type { Answer, Call, ChartModel, Run, StepView } from "./_walk.ts";

/** The failover model's world: the fake Redis and what the monitors remember. */
export interface FailoverWorld {
  /** Published record in the fake Redis, with the token it was written under. */
  redis: { node: string; epoch: number; token: number } | null;
  /** Token of the last LEASE_ACQUIRED, null while the lease is lost. */
  lease: number | null;
  /** Highest token ever given. */
  lastToken: number;
  /** Highest token an effect ran under. */
  highestUsed: number;
  /** Node accepted by the fake Redis per epoch (from anyone). */
  published: Record<number, string>;
  /** Node this instance's promote / switchover promoted, per epoch it is to be published at. */
  promoted: Record<number, string>;
  /** The last vote round's answer since the detector last left `healthy`. */
  vote: "majority" | "minority" | null;
  /** The last evidence gathered (fast path) since the detector last left `healthy`. */
  evidence: "certain" | "uncertain" | null;
  /** Every promotion made: its token, the vote before it and Redis's token then. */
  promotions: { token: number; vote: string | null; redisToken: number }[];
}

const FENCED = ["promote", "switchover", "publish", "reassert"];
/** FAILOVER_CONFIRMATIONS of the model's instance. */
const CONFIRMATIONS = 2;

function candidate(primary: string): string {
  return primary === "pg2" ? "pg3" : "pg2";
}

function now(run: Run<FailoverWorld>): number {
  return run.clock.now();
}

function probe(ok: boolean, refused = false) {
  return (_c: Call, run: Run<FailoverWorld>): Answer => {
    const r = run.world.redis;
    return {
      output: {
        ok,
        error: ok ? null : refused ? "connection refused" : "connection lost",
        latencyMs: ok ? 1 : -1,
        refused,
        at: now(run),
        published: r ? { node: r.node, epoch: r.epoch, readOnlyNode: null } : null,
        redisAnswered: true,
      },
    };
  };
}

/** A node of a sample: the primary, or a replica streaming from it in sync. */
function sampleNode(name: string, primary: boolean) {
  return {
    name,
    address: `127.0.0.1:${5432 + Number(name.slice(2))}`,
    reachable: true,
    role: primary ? "primary" : "replica",
    state: primary ? "primary" : "streaming",
    healthy: true,
    inRecovery: !primary,
    readOnlyFenced: false,
    currentLsn: primary ? "0/3000000" : null,
    receiveLsn: primary ? null : "0/3000000",
    replayLsn: primary ? null : "0/3000000",
    sentLsn: primary ? null : "0/3000000",
    writeLsn: primary ? null : "0/3000000",
    flushLsn: primary ? null : "0/3000000",
    lagBytes: primary ? null : 0,
    lagSeconds: primary ? null : 0,
    syncState: primary ? null : "quorum",
    timeline: 1,
    upstream: null,
    streaming: !primary,
    error: null,
    why: primary ? `${name} is the primary` : `${name} streams`,
  };
}

const EFFECTS = [
  "readStart",
  "probePrimary",
  "corroborate",
  "collectVotes",
  "promote",
  "switchover",
  "publish",
  "reassert",
  "reassess",
  "repointPool",
  "sampleNodes",
  "repair",
];

/** The real failover chart with every effect scripted, for instance a of pg1..pg3. */
function buildFailover<W>(run: Run<W>, input: Partial<FailoverInput>) {
  return {
    logic: failoverMachine.provide({
      actors: Object.fromEntries(EFFECTS.map((src) => [src, run.effect(src)])) as never,
    }),
    input: {
      instanceId: "a",
      nodes: ["pg1", "pg2", "pg3"],
      confirmations: CONFIRMATIONS,
      ...input,
    },
  };
}

function detector(snapshot: StepView<FailoverWorld>["snapshot"]): string {
  const v = snapshot.value.detector;
  return typeof v === "string" ? v : Object.keys(v)[0];
}

/** The failover chart's model. */
export const failoverModel: ChartModel<FailoverWorld> = {
  name: "failover",
  maxDepth: 9,
  world: () => ({
    redis: null,
    lease: null,
    lastToken: 10,
    highestUsed: 0,
    published: {},
    promoted: {},
    vote: null,
    evidence: null,
    promotions: [],
  }),
  build(run) {
    return buildFailover(run, {
      probeIntervalMs: 100,
      probeTimeoutMs: 150,
      // Before the first probe: a sample can witness the replicas' streams for the fast path.
      monitorIntervalMs: 50,
      confirmTimeoutMs: 200,
      poolRetryMs: 100,
    });
  },
  events(snapshot, world) {
    const events: ({ type: string } & Record<string, unknown>)[] = [];
    if (snapshot.matches({ role: "follower" })) {
      events.push({ type: "LEASE_ACQUIRED", token: world.lastToken + 1 });
    } else {
      events.push({ type: "LEASE_LOST", why: "lease expired" });
    }
    const p = snapshot.context.primary;
    if (
      p.epoch > 0 &&
      (snapshot.matches({ detector: "healthy" }) || snapshot.matches({ detector: "suspect" }))
    ) {
      // Another coordinator published a newer primary.
      events.push({ type: "failover.primary", node: candidate(p.node), epoch: p.epoch + 1 });
    }
    if (snapshot.matches({ detector: "healthy" }) || snapshot.matches({ detector: "suspect" })) {
      // A query through the pool lost its connection: a hint to probe early (kept while
      // suspect, where probes keep their interval).
      events.push({ type: "POOL_ERROR", why: "connection refused" });
    }
    if (snapshot.matches({ role: "coordinator", detector: "healthy" })) {
      events.push({ type: "SWITCHOVER", id: "sw1", target: candidate(p.node), requestedBy: "ops" });
    }
    return events;
  },
  effects: {
    readStart: {
      // What Redis holds (nothing on a fresh cluster).
      answer: (_c, run) => {
        const r = run.world.redis;
        return {
          output: {
            published: r ? { node: r.node, epoch: r.epoch, readOnlyNode: null } : null,
            pool: null,
          },
        };
      },
    },
    probePrimary: {
      answers: probe(true),
      fails: probe(false),
      refused: probe(false, true),
      // A Redis failover lost the record (asynchronous replication): Redis answers with none.
      redisLost: (c, run) => {
        run.world.redis = null;
        return probe(true)(c, run);
      },
    },
    corroborate: {
      certain: (c, run) => {
        run.world.evidence = "certain";
        const mine = (c.input as { mine: unknown }).mine;
        return {
          output: {
            observers: [mine, { instance: "b", refused: true, why: "connection refused" }],
            receivers: [{ node: "pg2", streaming: false, why: "no WAL receiver" }],
          },
        };
      },
      uncertain: (c, run) => {
        run.world.evidence = "uncertain";
        const mine = (c.input as { mine: unknown }).mine;
        return {
          output: {
            observers: [mine, { instance: "b", refused: false, why: "no answer within 150 ms" }],
            receivers: [{ node: "pg2", streaming: true, why: "streaming" }],
          },
        };
      },
      crash: () => ({ error: new Error("bus: timeout") }),
    },
    collectVotes: {
      majority: (_c, run) => {
        run.world.vote = "majority";
        return { output: { agree: 2, live: 3, votes: [] } };
      },
      minority: (_c, run) => {
        run.world.vote = "minority";
        return {
          output: { agree: 1, live: 3, votes: [{ instance: "b", agree: false, why: "answers" }] },
        };
      },
      crash: () => ({ error: new Error("bus: timeout") }),
    },
    promote: {
      promoted: (c, run) => {
        const input = c.input as { primary: { node: string; epoch: number }; token: number | null };
        const redisToken = run.world.redis?.token ?? 0;
        // Like the real `fenced()`: pg_promote runs only under the lease's current token.
        if (input.token === null || input.token !== run.world.lease || input.token < redisToken) {
          return { error: new Error(`fenced: token ${input.token}`) };
        }
        run.world.promotions.push({ token: input.token, vote: run.world.vote, redisToken });
        const node = candidate(input.primary.node);
        run.world.promoted[input.primary.epoch + 1] = node;
        return {
          output: { node, lsn: "0/3000000", adopted: false, why: "best replica", parked: null },
        };
      },
      none: () => ({
        output: {
          node: null,
          choice: { node: null, adopt: false, why: "no replica is caught up" },
          readOnlyNode: "pg3",
        },
      }),
      crash: () => ({ error: new Error("pg_ctl promote failed") }),
    },
    switchover: {
      done: (c, run) => {
        const input = c.input as {
          request: { target: string };
          primary: { epoch: number };
        };
        run.world.promoted[input.primary.epoch + 1] = input.request.target;
        return {
          output: {
            node: input.request.target,
            lsn: "0/3000000",
            adopted: false,
            why: "caught up",
            parked: null,
          },
        };
      },
      refused: () => ({ error: new Error("target is lagging") }),
    },
    publish: {
      answer: (c, run) => {
        const input = c.input as {
          kind: string;
          node: string;
          epoch: number;
          token: number | null;
          readOnlyNode: string | null;
        };
        const r = run.world.redis;
        const token = input.token ?? -1;
        const same = r && r.node === input.node && r.epoch === input.epoch;
        if (r && !same && (token < r.token || input.epoch <= r.epoch)) {
          return { error: new Error(`fenced: token ${input.token} epoch ${input.epoch}`) };
        }
        if (input.kind !== "degraded") {
          run.world.redis = { node: input.node, epoch: input.epoch, token };
          run.world.published[input.epoch] ??= input.node;
        }
        return {
          output: {
            published: { node: input.node, epoch: input.epoch, readOnlyNode: input.readOnlyNode },
            why: `published ${input.node} (epoch ${input.epoch})`,
          },
        };
      },
      crash: () => ({ error: new Error("redis: connection lost") }),
    },
    reassert: {
      // The fake Redis takes the record back only under a token at least as new as its own.
      answer: (c, run) => {
        const input = c.input as {
          primary: { node: string; epoch: number };
          token: number;
        };
        const r = run.world.redis;
        if (r && (input.token < r.token || r.epoch >= input.primary.epoch)) {
          return { output: { why: "not re-asserted" } };
        }
        run.world.redis = {
          node: input.primary.node,
          epoch: input.primary.epoch,
          token: input.token,
        };
        run.world.published[input.primary.epoch] ??= input.primary.node;
        return { output: { why: "re-asserted" } };
      },
      crash: () => ({ error: new Error("redis: connection lost") }),
    },
    reassess: {
      back: () => ({
        output: {
          primaryOk: true,
          choice: { node: null, adopt: false, why: "primary answers" },
          readOnlyNode: null,
        },
      }),
      candidate: () => ({
        output: {
          primaryOk: false,
          choice: { node: "pg2", adopt: false, why: "pg2 caught up" },
          readOnlyNode: null,
        },
      }),
      still_down: () => ({
        output: {
          primaryOk: false,
          choice: { node: null, adopt: false, why: "no replica is caught up" },
          readOnlyNode: "pg3",
        },
      }),
    },
    repointPool: {
      ok: (c) => ({ output: c.input }),
    },
    sampleNodes: {
      // A sample of the primary followed now, its replicas streaming: the witnesses the
      // fast path needs (judgeEvidence: a replica that lost a stream it had).
      streaming: (c, run) => {
        const primary = (c.input as { primary: { node: string } }).primary.node;
        return {
          output: {
            at: now(run),
            primary,
            nodes: ["pg1", "pg2", "pg3"].map((name) => sampleNode(name, name === primary)),
            sync: {
              method: "ANY",
              num: 1,
              names: ["pg1", "pg2", "pg3"].filter((n) => n !== primary),
            },
          },
        };
      },
      failed: () => ({ error: new Error("sampling timed out") }),
    },
    repair: { ok: () => ({ output: { ok: true, why: "repaired" } }) },
  },
  key(snapshot, world) {
    const c = snapshot.context;
    return [
      c.leader === null ? null : c.leader === world.lease,
      c.failures,
      c.primary,
      c.pool,
      c.promotion?.node ?? null,
      c.switchover !== null,
      c.announced,
      world.redis,
      world.lease !== null,
      world.vote,
      world.evidence,
      c.path,
      c.lastGoodSample?.primary === c.primary.node,
      c.hint !== null,
    ];
  },
  invariants: {
    "track the lease and the vote round": ({ move, snapshot, prev, world }) => {
      if (move?.type === "send" && move.event.type === "LEASE_ACQUIRED") {
        world.lease = move.event.token as number;
        world.lastToken = Math.max(world.lastToken, world.lease);
      }
      if (move?.type === "send" && move.event.type === "LEASE_LOST") world.lease = null;
      if (move?.type === "send" && move.event.type === "failover.primary") {
        // Another coordinator published it: Redis has it, under a newer token.
        const { node, epoch } = move.event as unknown as { node: string; epoch: number };
        world.lastToken++;
        world.redis = { node, epoch, token: world.lastToken };
        world.published[epoch] ??= node;
      }
      if (detector(snapshot) === "healthy" && detector(prev) !== "healthy") {
        world.vote = null;
        world.evidence = null;
      }
      return null;
    },
    "an answer of the old primary never undoes an unpublished promotion": ({ move, snapshot }) => {
      // Found reading the chart (docs/testing.md): a failover whose publication failed went
      // back to suspect, and an answer of the old primary made the coordinator healthy
      // following it again while the node it promoted was a primary nobody published.
      if (move?.type !== "settle" || move.src !== "probePrimary") return null;
      const c = snapshot.context;
      if (detector(snapshot) !== "healthy" || c.leader === null) return null;
      if (c.promotion && c.promotion.node !== c.primary.node) {
        return `healthy following ${c.primary.node} although it promoted ${c.promotion.node}, ` +
          `never published`;
      }
      return null;
    },
    "each path reaches the vote only on its evidence": ({ snapshot, prev, world }) => {
      const from = detector(prev);
      if (detector(snapshot) !== "confirming" || from === "confirming") return null;
      // A degraded coordinator votes again when a replica became eligible.
      if (from === "degraded") return null;
      const c = snapshot.context;
      if (c.path === "fast") {
        if (world.evidence !== "certain") {
          return `fast path to the vote after ${world.evidence ?? "no"} evidence`;
        }
        if (c.failures < 1) return "fast path to the vote without a refused probe";
        if (c.lastGoodSample?.primary !== c.primary.node) {
          return "fast path to the vote without a sample showing the streams it lost";
        }
        return null;
      }
      if (c.failures < CONFIRMATIONS) {
        return `careful path to the vote after ${c.failures} failed probes (< ${CONFIRMATIONS})`;
      }
      return null;
    },
    "every promotion: majority vote and a token not older than Redis's": ({ world }) => {
      for (const p of world.promotions) {
        if (p.vote !== "majority") return `promoted under token ${p.token} after a ${p.vote} vote`;
        if (p.token < p.redisToken) {
          return `promoted under token ${p.token}, older than Redis's ${p.redisToken}`;
        }
      }
      return null;
    },
    "never two promotions published for one epoch": ({ snapshot, world }) => {
      for (const ref of Object.values(snapshot.children ?? {})) {
        // deno-lint-ignore no-explicit-any
        const r = ref as any;
        if (r.src !== "publish") continue;
        const input = r.getSnapshot().input;
        if (input.kind === "degraded") continue;
        const accepted = world.published[input.epoch];
        if (accepted !== undefined && accepted !== input.node) {
          return `publishing ${input.node} for epoch ${input.epoch}, which already has ${accepted}`;
        }
        const promoted = world.promoted[input.epoch];
        if (promoted !== undefined && promoted !== input.node) {
          return `publishing ${input.node} for epoch ${input.epoch}, for which ${promoted} was promoted`;
        }
      }
      return null;
    },
    "promoting only as the coordinator, on a majority vote": ({ snapshot, prev, world }) => {
      if (detector(snapshot) !== "promoting" || detector(prev) === "promoting") return null;
      if (snapshot.context.leader === null) return "promoting without the lease";
      if (world.vote !== "majority") {
        return `promoting after a ${world.vote ?? "missing"} vote`;
      }
      return null;
    },
    "fenced effects run under the newest token": ({ snapshot, world }) => {
      for (const ref of Object.values(snapshot.children ?? {})) {
        // deno-lint-ignore no-explicit-any
        const r = ref as any;
        if (!FENCED.includes(r.src)) continue;
        const input = r.getSnapshot().input;
        if (r.src === "publish" && input.kind === "degraded" && input.token === null) continue;
        if (input.token === null || input.token !== world.lease) {
          return `${r.src} runs under token ${input.token} while the lease token is ${world.lease}`;
        }
        if (input.token < world.highestUsed) {
          return `${r.src} runs under token ${input.token}, older than ${world.highestUsed} used before`;
        }
        world.highestUsed = input.token;
      }
      return null;
    },
  },
};

/**
 * The repairs model's world: the failover world plus the nodes this host stopped and the
 * nodes left fenced for their operator.
 */
export interface RepairsWorld extends FailoverWorld {
  /** Nodes a repair reported left stopped here (a switchover's stop parks too). */
  stoppedHere: string[];
  /**
   * Nodes a rejoin fenced but said were not this host's to act on, and every sample since
   * showed up, writable and still fenced: the operator's to rewind, not ours to fence again.
   */
  awaitingOperator: string[];
}

/**
 * A sample of pg1 (the primary) where pg3 is writable, writable but fenced read-only (as a
 * rejoin leaves a node on another host), unreachable, or streaming. Any but `fenced` is a
 * change a node left to its operator is judged afresh on.
 */
function repairSample(pg3: "writable" | "fenced" | "down" | "streaming") {
  return (_c: Call, run: Run<RepairsWorld>): Answer => {
    if (pg3 !== "fenced") {
      run.world.awaitingOperator = run.world.awaitingOperator.filter((n) => n !== "pg3");
    }
    const nodes = ["pg1", "pg2", "pg3"].map((name) => sampleNode(name, name === "pg1"));
    if (pg3 === "writable") nodes[2] = sampleNode("pg3", true);
    if (pg3 === "fenced") {
      nodes[2] = { ...sampleNode("pg3", true), state: "fenced", readOnlyFenced: true };
    }
    if (pg3 === "down") nodes[2] = { ...nodes[2], reachable: false, streaming: false };
    return {
      output: {
        at: now(run),
        primary: "pg1",
        nodes,
        sync: null,
      },
    };
  };
}

/** The repair's finding in a call. */
function findingOf(c: Call): { kind: string; node: string } {
  return (c.input as { finding: { kind: string; node: string } }).finding;
}

/**
 * Model of the failover chart's repairs on the coordinator: pg1 stays the primary and
 * answers; samples show pg3 come back writable (a returned old primary), writable but
 * fenced read-only, go down, or stream again; a rejoin or start of a parked node is made,
 * fails after this host stopped the node, fails without stopping it (FAILOVER_LOCAL_NODES
 * puts it on another host: fenced only, left to its operator), fails before the fence took
 * (neither), or throws (the fencing token refused).
 *
 * Invariants: a node is started as a standby (`start_standby`) only when a repair here left
 * it stopped: never a node this host did not stop (it may not be ours to start, and each
 * attempt would write a `fenced` row every backoff). No rejoin of a node a rejoin left to
 * its operator while it stays fenced (each would fence it again and write a `fenced` row).
 */
export const failoverRepairsModel: ChartModel<RepairsWorld> = {
  name: "failover repairs",
  maxDepth: 13,
  world: () => ({
    ...failoverModel.world(),
    redis: { node: "pg1", epoch: 1, token: 5 },
    stoppedHere: [],
    awaitingOperator: [],
  }),
  build(run) {
    return buildFailover(run, {
      // Probes are rare: the walk spends its depth on samples and repairs.
      probeIntervalMs: 1000,
      probeTimeoutMs: 900,
      monitorIntervalMs: 50,
      maintenanceBackoffMs: 100,
      // Synchronous standbys are a repair of their own, not this model's.
      syncMode: false,
    });
  },
  events(snapshot) {
    return snapshot.matches({ role: "follower" }) ? [{ type: "LEASE_ACQUIRED", token: 11 }] : [];
  },
  effects: {
    readStart: failoverModel.effects.readStart,
    probePrimary: { answers: failoverModel.effects.probePrimary.answers },
    repointPool: failoverModel.effects.repointPool,
    sampleNodes: {
      writable: repairSample("writable"),
      fenced: repairSample("fenced"),
      down: repairSample("down"),
      streaming: repairSample("streaming"),
    },
    repair: {
      ok: (c, run) => {
        const f = findingOf(c);
        if (f.kind === "start_standby") {
          run.world.stoppedHere = run.world.stoppedHere.filter((n) => n !== f.node);
        }
        return { output: { ok: true, why: `repaired ${f.node}` } };
      },
      stoppedHere: (c, run) => {
        const f = findingOf(c);
        if (!run.world.stoppedHere.includes(f.node)) run.world.stoppedHere.push(f.node);
        return {
          output: { ok: false, error: "pg_rewind failed", leftStopped: true, notOurs: false },
        };
      },
      notOurs: (c, run) => {
        const f = findingOf(c);
        // A rejoin fenced it first; a start of a parked node touched nothing.
        if (f.kind === "rejoin" && !run.world.awaitingOperator.includes(f.node)) {
          run.world.awaitingOperator.push(f.node);
        }
        return {
          output: {
            ok: false,
            error: "FAILOVER_LOCAL_NODES puts it on another host",
            leftStopped: false,
            notOurs: true,
          },
        };
      },
      unfenced: () => ({
        output: { ok: false, error: "cannot fence pg3", leftStopped: false, notOurs: false },
      }),
      crash: () => ({ error: new Error("LEASE_STALE_TOKEN") }),
    },
  },
  outcomes(call) {
    if (call.src !== "repair") return Object.keys(this.effects[call.src] ?? {});
    const kind = findingOf(call).kind;
    return kind === "rejoin" || kind === "start_standby"
      ? ["ok", "stoppedHere", "notOurs", "unfenced", "crash"]
      : ["ok", "crash"];
  },
  key(snapshot, world) {
    const c = snapshot.context;
    return [
      c.leader !== null,
      c.parked,
      c.awaitingOperator,
      Object.keys(c.backoff).sort(),
      c.sample?.nodes[2]?.reachable ?? null,
      c.sample?.nodes[2]?.inRecovery ?? null,
      c.sample?.nodes[2]?.readOnlyFenced ?? null,
      c.finding?.kind ?? null,
      [...world.stoppedHere].sort(),
      [...world.awaitingOperator].sort(),
    ];
  },
  invariants: {
    "a node is started as a standby only when a repair here left it stopped": (
      { snapshot, world },
    ) => {
      for (const ref of Object.values(snapshot.children ?? {})) {
        // deno-lint-ignore no-explicit-any
        const r = ref as any;
        if (r.src !== "repair") continue;
        const f = r.getSnapshot().input.finding;
        if (f.kind === "start_standby" && !world.stoppedHere.includes(f.node)) {
          return `starting ${f.node} as a standby, which no repair here left stopped`;
        }
      }
      return null;
    },
    "parked holds only nodes stopped here": ({ snapshot, world }) => {
      const stray = snapshot.context.parked.filter((n: string) => !world.stoppedHere.includes(n));
      return stray.length ? `parked ${stray.join(", ")}, never stopped here` : null;
    },
    "no rejoin of a node awaiting the operator while it stays fenced": ({ snapshot, world }) => {
      for (const ref of Object.values(snapshot.children ?? {})) {
        // deno-lint-ignore no-explicit-any
        const r = ref as any;
        if (r.src !== "repair") continue;
        const f = r.getSnapshot().input.finding;
        if (f.kind === "rejoin" && world.awaitingOperator.includes(f.node)) {
          return `rejoining ${f.node} again, fenced and left to its operator since`;
        }
      }
      return null;
    },
  },
};
