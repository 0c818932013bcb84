/**
 * The failover statechart of one runtime instance. Four parallel regions, each a named
 * state config below:
 *
 * - {@linkcode ROLE}: follower or coordinator, from the `failover` lease (fed by `watchLease`).
 * - {@linkcode DETECTOR}: starting (which primary to follow: the published one, else where
 *   the pool points) → healthy → suspect (a probe of the primary failed) → confirming (N
 *   consecutive failed probes AND a majority of the live instances agree) → promoting (best
 *   replica by replay LSN, then priority) → publishing (the new primary and its epoch go to
 *   Redis under the lease's fencing token, and to every instance) → healthy. Only the
 *   coordinator confirms, promotes and publishes; followers probe, vote and follow. Also
 *   `switchover` (planned, zero loss) and `degraded` (no eligible replica).
 * - {@linkcode POOL}: keeps this instance's database pool on the primary the detector follows.
 * - {@linkcode MONITOR}: samples every node, keeps lag alerts; on the coordinator, while
 *   the detector is healthy, repairs what the sample shows (rejoins a returned old primary,
 *   re-points a stray replica, keeps synchronous_standby_names right) in `maintaining`.
 *
 * Probing is one state config ({@linkcode PROBING}) used at both health levels: every probe
 * goes through one decision ({@linkcode judgeProbe}) whose verdict picks the target. Two
 * paths lead to the vote: the careful one counts N consecutive failed probes (timeouts,
 * slow or wrong answers: ambiguous); the fast one starts from a probe the coordinator saw
 * refused (ECONNREFUSED) and goes through `corroborating` ({@linkcode CORROBORATING}): other
 * instances look afresh and the replicas' WAL receivers are read, and only *certain*
 * evidence ({@linkcode judgeEvidence}: refused by ≥ 2 instances, no replica streaming from
 * the primary, and at least one that streamed at the last good sample lost its stream) skips
 * the count. The vote, the promotion (with its fencing token and sync-mode
 * checks) and the publication are the same states on both paths. A query through the pool
 * that lost its connection is a hint (`context.hint`, kept until a probe starts) that brings
 * the next probe forward while healthy; a suspect primary's probes keep their interval.
 *
 * Patroni-style, every decision is one sentence in `context.why` (and `context.decision`
 * for the ones an operator asked for), logged, stored and asserted by the tests. Every
 * action and guard is named in `setup()`; effects are placeholders here, the real ones are
 * supplied by actors/failover/ with `machine.provide`.
 * @module
 */
import { and, assign, fromCallback, fromPromise, not, setup, stateIn } from "xstate";
import {
  chooseStart,
  degradedSentence,
  findRepair,
  isNewer,
  judgeAnnouncement,
  judgeEvidence,
  judgeProbe,
  judgeVotes,
  poolBehind,
  poolTarget,
  promotionSentence,
  publicationOf,
  type RepairInput,
  updateAlerts,
} from "./decisions.ts";
import type {
  Assessment,
  CandidateChoice,
  Evidence,
  FailoverContext,
  FailoverEvent,
  FailoverInput,
  Finding,
  LagAlert,
  NoPromotion,
  Observation,
  PoolTarget,
  ProbeOutput,
  ProbeResult,
  PromotionOutput,
  Published,
  PublishInput,
  PublishOutput,
  ReassertInput,
  RepairOutput,
  ReplicationSample,
  StartFacts,
  SwitchoverRequest,
  VoteOutput,
} from "./types.ts";

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** A failed repair, as the `repair` effect answers it (or as a thrown one reads). */
type RepairFailure = Omit<Extract<RepairOutput, { ok: false }>, "ok">;

/** What {@linkcode findRepair} looks at: the sample and the chart's repair bookkeeping. */
function repairInput(context: FailoverContext, sample: ReplicationSample): RepairInput {
  return {
    sample,
    primary: context.primary,
    syncMode: context.syncMode,
    backoff: context.backoff,
    repoints: context.repoints,
    parked: context.parked,
    awaitingOperator: context.awaitingOperator,
  };
}

const HEALTHY = "#failover.detector.healthy";
const SUSPECT = "#failover.detector.suspect";

// ---------------------------------------------------------------------------------------
// Names: effects, actions, guards, delays
// ---------------------------------------------------------------------------------------

const failover = setup({
  types: {
    context: {} as FailoverContext,
    input: {} as FailoverInput,
    events: {} as FailoverEvent,
  },
  actors: {
    /** Feeds LEASE_ACQUIRED / LEASE_LOST from the `failover` lease campaign. */
    watchLease: fromCallback<FailoverEvent>(() => () => {}),
    /** Reads the published primary from Redis and where the runtime's pool points now. */
    readStart: fromPromise<StartFacts>(() =>
      Promise.reject(new Error("readStart is not provided"))
    ),
    /** Probes the primary (and reads the published primary from Redis). */
    probePrimary: fromPromise<ProbeOutput, { primary: Published }>(() =>
      Promise.reject(new Error("probePrimary is not provided"))
    ),
    /**
     * Fast path: after a refused probe, every live instance's fresh look at the primary and
     * every other node's WAL receiver (is the evidence certain?).
     */
    corroborate: fromPromise<Evidence, { primary: Published; mine: Observation }>(() =>
      Promise.reject(new Error("corroborate is not provided"))
    ),
    /** Asks every live instance whether it sees the primary down. */
    collectVotes: fromPromise<VoteOutput, { primary: Published; failures: number }>(() =>
      Promise.reject(new Error("collectVotes is not provided"))
    ),
    /** Chooses, fences around and promotes the best replica; or says why none qualifies. */
    promote: fromPromise<
      PromotionOutput | NoPromotion,
      { primary: Published; token: number | null; last: ReplicationSample | null }
    >(() => Promise.reject(new Error("promote is not provided"))),
    /** Planned switchover: fence, wait for the target to replay everything, promote. */
    switchover: fromPromise<
      PromotionOutput,
      { primary: Published; token: number | null; request: SwitchoverRequest }
    >(() => Promise.reject(new Error("switchover is not provided"))),
    /** Writes the primary and epoch to Redis under the fencing token, tells every instance, records it. */
    publish: fromPromise<PublishOutput, PublishInput>(() =>
      Promise.reject(new Error("publish is not provided"))
    ),
    /** Writes the followed primary back to Redis, same epoch, under the fencing token. */
    reassert: fromPromise<{ why: string }, ReassertInput>(() =>
      Promise.reject(new Error("reassert is not provided"))
    ),
    /** Degraded: looks again at the primary and the replicas. */
    reassess: fromPromise<
      Assessment,
      { primary: Published; last: ReplicationSample | null; token: number | null }
    >(() => Promise.reject(new Error("reassess is not provided"))),
    /** Switches this instance's pool to a node. */
    repointPool: fromPromise<PoolTarget, PoolTarget>(() =>
      Promise.reject(new Error("repointPool is not provided"))
    ),
    /** Samples every node; persists and publishes the status when coordinating. */
    sampleNodes: fromPromise<
      ReplicationSample,
      { primary: Published; leader: number | null; alerts: LagAlert[]; why: string }
    >(() => Promise.reject(new Error("sampleNodes is not provided"))),
    /**
     * Makes one repair (rejoin, unfence, re-point a replica, sync standbys); a failed rejoin
     * or start of a parked node is an outcome saying whether it left the node stopped.
     */
    repair: fromPromise<
      RepairOutput,
      { finding: Finding; primary: Published; token: number | null }
    >(() => Promise.reject(new Error("repair is not provided"))),
  },
  actions: {
    // Effects (supplied by actors/failover/).
    /** Hands the running actor to the actor layer (routes and request handlers read it). */
    announceSelf: () => {},
    /** Failpoint hook after a promotion (tests kill the coordinator here). */
    afterPromotion: (_, _params: { node: string; adopted: boolean }) => {},
    /** Queries caught by a pool switch wait for it (a new primary is coming). */
    letQueriesWait: () => {},
    /** Degraded: no primary is coming, so failing queries fail at once. */
    failQueriesFast: () => {},
    /** Tells the cluster about alerts raised and resolved by a sample. */
    announceAlerts: (_, _params: { raised: LagAlert[]; resolved: LagAlert[] }) => {},

    // Context.
    /** One sentence, nothing else changes. */
    say: assign((_, params: { why: string }) => ({ why: params.why })),
    /** Where to start ({@linkcode chooseStart}): the primary to follow and where the pool is. */
    decideStart: assign(({ context }, facts: StartFacts) => {
      const start = chooseStart(facts, context.nodes);
      return { primary: start.primary, pool: facts.pool ?? context.pool, why: start.why };
    }),
    /** Follows a newer primary a coordinator announced. */
    followAnnounced: assign(({ context }, published: Published) => ({
      primary: published,
      // A promotion of ours never published belongs to an epoch that is over now.
      promotion: null,
      failures: 0,
      suspectSince: null,
      path: "careful" as const,
      evidence: null,
      evidenceWhy: null,
      hint: null,
      why: judgeAnnouncement(context.primary, published).why,
    })),
    /** Weighs one probe ({@linkcode judgeProbe}) and keeps what its verdict says. */
    recordProbe: assign(({ context }, probe: ProbeResult) => {
      const verdict = judgeProbe(context, probe);
      const lastProbe = {
        ok: probe.ok,
        error: probe.error,
        latencyMs: probe.latencyMs,
        refused: probe.refused,
      };
      switch (verdict.verdict) {
        case "newer":
          // A promotion of ours never published belongs to an epoch that is over now.
          return { primary: verdict.primary, failures: 0, promotion: null, why: verdict.why };
        case "unpublished":
          // A node this coordinator already promoted (a failover or switchover whose
          // publication failed) is the primary now: publish it, never the node it replaced.
          return { lastProbe, switchover: null, why: verdict.why };
        case "bootstrap":
          return {
            lastProbe,
            promotion: {
              node: context.primary.node,
              lsn: null,
              adopted: true,
              why: `${context.primary.node} is the primary and nothing is published yet`,
              parked: null,
            },
            switchover: null,
            why: verdict.why,
          };
        case "reassert":
          return { lastProbe, failures: 0, why: verdict.why };
        case "answered":
          return verdict.why === null ? { lastProbe } : { lastProbe, why: verdict.why };
        case "failed":
        case "refused":
          return {
            failures: verdict.failures,
            suspectSince: context.suspectSince ?? probe.at,
            lastProbe,
            why: verdict.why,
          };
      }
    }),
    /** A pool error: kept as a hint until the next probe starts. */
    noteHint: assign((_, event: { why: string }) => ({ hint: { why: event.why } })),
    /** A probe starts: it covers every hint seen so far. */
    takeHint: assign({ hint: null }),
    /** A healthy primary: no streak of failed probes. */
    resetSuspicion: assign({
      failures: 0,
      suspectSince: null,
      path: "careful" as const,
      evidence: null,
      evidenceWhy: null,
    }),
    /**
     * Keeps the evidence gathered after a refused probe and its judgement
     * ({@linkcode judgeEvidence}): certain → the fast path; otherwise the careful path goes on
     * counting failed probes.
     */
    recordEvidence: assign(({ context }, evidence: Evidence) => {
      const judged = judgeEvidence(context, evidence);
      return {
        evidence,
        evidenceWhy: judged.certain ? judged.why : null,
        path: judged.certain ? "fast" as const : "careful" as const,
        why: judged.why,
      };
    }),
    /** Takes on a switchover an operator asked for. */
    beginSwitchover: assign((_, request: SwitchoverRequest) => ({
      switchover: request,
      why: `switchover to ${
        request.target ?? "the best replica"
      } requested by ${request.requestedBy}`,
    })),
    /** Answers a switchover request with a refusal (the API waits on the id). */
    refuseSwitchover: assign(({ context }, params: { id: string; why: string }) => ({
      decision: {
        id: params.id,
        kind: "switchover",
        ok: false,
        why: params.why,
        primary: context.primary,
      },
    })),
    /** Keeps the vote round and its judgement ({@linkcode judgeVotes}). */
    recordVotes: assign(({ context }, votes: VoteOutput) => {
      const judged = judgeVotes({
        primary: context.primary,
        failures: context.failures,
        lastError: context.lastProbe?.error ?? null,
        evidenceWhy: context.path === "fast" ? context.evidenceWhy : null,
      }, votes);
      return judged.failover ? { votes, why: judged.why } : {
        votes,
        failures: 0,
        path: "careful" as const,
        evidenceWhy: null,
        why: judged.why,
      };
    }),
    /** Not failing over now: the streak starts again. */
    startOver: assign((_, params: { why: string }) => ({
      failures: 0,
      path: "careful" as const,
      evidenceWhy: null,
      why: params.why,
    })),
    /** Keeps the promotion (or adoption) about to be published. */
    recordPromotion: assign(({ context }, output: PromotionOutput) => ({
      promotion: output,
      switchover: null,
      degradedWhy: null,
      why: promotionSentence(context, output),
    })),
    /** Keeps the switchover's promotion and the node it stopped. */
    recordSwitchover: assign(({ context }, output: PromotionOutput) => ({
      promotion: output,
      parked: output.parked
        ? [...context.parked.filter((n) => n !== output.parked), output.parked]
        : context.parked,
      why: `switched over to ${output.node}: ${output.why}`,
    })),
    /** A switchover that was refused or failed: the decision says why. */
    switchoverFailed: assign(({ context }, params: { why: string }) => ({
      decision: {
        id: context.switchover?.id ?? null,
        kind: "switchover",
        ok: false,
        why: params.why,
        primary: context.primary,
      },
      switchover: null,
      why: params.why,
    })),
    /** Follows the primary just published, and records the decision. */
    recordPublication: assign(({ context }, output: PublishOutput) => ({
      primary: output.published,
      decision: {
        id: context.switchover?.id ?? null,
        kind: context.switchover ? "switchover" : "failover",
        ok: true,
        why: output.why,
        primary: output.published,
      },
      switchover: null,
      degradedWhy: null,
      why: output.why,
    })),
    /** Publishing failed: decide again (a waiting switchover gets a refusal). */
    publicationFailed: assign(({ context }, params: { error: string }) => ({
      decision: context.switchover
        ? {
          id: context.switchover.id,
          kind: "switchover",
          ok: false,
          why: `publishing failed: ${params.error}`,
          primary: context.primary,
        }
        : context.decision,
      switchover: null,
      failures: 0,
      why: `publishing ${context.promotion?.node} failed, will decide again: ${params.error}`,
    })),
    /**
     * The one way into (or through) the degraded state: the same sentence, decision and
     * read-only fallback whether the promotion found no candidate or a re-check did.
     */
    enterDegraded: assign(
      ({ context }, params: { why: string; readOnlyNode: string | null }) => {
        const primary = { ...context.primary, readOnlyNode: params.readOnlyNode };
        const why = degradedSentence(context.primary.node, params);
        return {
          primary,
          degradedWhy: params.why,
          decision: { id: null, kind: "degraded", ok: false, why, primary },
          why,
        };
      },
    ),
    /** A new degraded spell: nothing of it is published yet. */
    forgetAnnouncement: assign({ announced: null }),
    /** The degraded record just published. */
    markAnnounced: assign((_, published: Published) => ({ announced: published })),
    /** The primary answers again: degraded mode ends. */
    leaveDegraded: assign(({ context }) => {
      const primary = { ...context.primary, readOnlyNode: null };
      const why = `${context.primary.node} is back: leaving degraded mode`;
      return {
        degradedWhy: null,
        primary,
        decision: { id: null, kind: "recovered", ok: true, why, primary },
        why,
      };
    }),
    /** Where the pool points now. */
    recordPool: assign((_, pool: PoolTarget) => ({ pool })),
    /** The pool could not switch yet. */
    poolSwitchFailed: assign(({ context }, params: { error: string }) => ({
      why: `cannot re-point the pool to ${
        poolTarget(context.primary).node
      } yet, retrying: ${params.error}`,
    })),
    /** Keeps the sample (and the last one taken while the primary answered) and the alerts. */
    recordSample: assign(({ context }, sample: ReplicationSample) => {
      const primary = sample.nodes.find((n) => n.name === context.primary.node);
      // Only a sample taken against the primary followed now: an older one pairs the old
      // primary's synchronous standbys and lags with the new primary.
      const current = sample.primary === context.primary.node;
      return {
        sample,
        // A parked node seen streaming as a replica was brought back (by us or by hand).
        parked: context.parked.filter((name) =>
          !sample.nodes.some((n) =>
            n.name === name && n.reachable && n.inRecovery === true && n.streaming
          )
        ),
        // A node waits for its operator only while it is seen writable and still fenced:
        // the fence lifted, gone (and maybe back), a replica — it is judged afresh.
        awaitingOperator: context.awaitingOperator.filter((name) =>
          sample.nodes.some((n) =>
            n.name === name && n.reachable && n.inRecovery === false && n.readOnlyFenced
          )
        ),
        lastGoodSample: current && primary?.reachable && primary.inRecovery === false
          ? sample
          : context.lastGoodSample,
        alerts: updateAlerts(context.alerts, {
          sample,
          lagAlertBytes: context.lagAlertBytes,
          lagAlertSeconds: context.lagAlertSeconds,
        }).alerts,
      };
    }),
    /** The repair the sample calls for ({@linkcode findRepair}). */
    planRepair: assign(({ context }) => {
      const finding = context.sample && findRepair(repairInput(context, context.sample));
      return { finding, why: finding?.why ?? context.why };
    }),
    /** A repair made: counts re-points, un-parks, records rejoins. */
    repairDone: assign(({ context }, params: { why: string }) => {
      const f = context.finding!;
      return {
        repoints: f.kind === "repoint_replica"
          ? { ...context.repoints, [f.node]: (context.repoints[f.node] ?? 0) + 1 }
          : f.kind === "rejoin" || f.kind === "start_standby"
          ? { ...context.repoints, [f.node]: 0 }
          : context.repoints,
        // A re-pointed replica gets time to connect before it is judged again.
        backoff: f.kind === "repoint_replica"
          ? {
            ...context.backoff,
            [f.node]: (context.sample?.at ?? 0) + context.maintenanceBackoffMs / 2,
          }
          : context.backoff,
        parked: f.kind === "start_standby"
          ? context.parked.filter((n) => n !== f.node)
          : context.parked,
        decision: f.kind === "rejoin" || f.kind === "start_standby"
          ? { id: null, kind: "rejoin", ok: true, why: params.why, primary: context.primary }
          : context.decision,
        finding: null,
        why: params.why,
      };
    }),
    /**
     * A repair failed: the node is left alone for a while. A rejoin stops the node before its
     * rewind: when a later step failed it stays stopped, which no sample would ever show as a
     * node to repair, so it is kept with the parked ones and started as a replica (rewound if
     * it must be) once its backoff is over. Only when the effect says it left the node
     * stopped: a node on another host is never stopped by us (only fenced over SQL), and
     * parking it would try, every backoff, to start a node we may not start. A parked node
     * that may not be started from here leaves the list for the same reason. A rejoin that
     * fenced a node it may not act on further leaves it to its operator: no new rejoin
     * (a re-fence and a `fenced` row every backoff) while it stays fenced.
     */
    repairFailed: assign(({ context }, params: RepairFailure) => {
      const f = context.finding!;
      const waits = params.notOurs && f.kind === "rejoin";
      const why = `${f.kind.replace("_", " ")} of ${f.node} failed, ${
        waits
          ? "left fenced for its operator (no new rejoin while it stays fenced)"
          : `retrying in ${Math.round(context.maintenanceBackoffMs / 1000)} s${
            params.leftStopped ? " (started as a replica then if it stays stopped)" : ""
          }`
      }: ${params.error}`;
      const others = context.parked.filter((n) => n !== f.node);
      return {
        backoff: {
          ...context.backoff,
          [f.node]: (context.sample?.at ?? 0) + context.maintenanceBackoffMs,
        },
        parked: params.leftStopped
          ? [...others, f.node]
          : f.kind === "start_standby"
          ? others
          : context.parked,
        awaitingOperator: waits
          ? [...context.awaitingOperator.filter((n) => n !== f.node), f.node]
          : context.awaitingOperator,
        decision: f.kind === "rejoin"
          ? { id: null, kind: "rejoin", ok: false, why, primary: context.primary }
          : context.decision,
        finding: null,
        why,
      };
    }),
    /** This instance now holds the failover lease. */
    becomeCoordinator: assign((_, params: { token: number }) => ({
      leader: params.token,
      why: `became the failover coordinator with fencing token ${params.token}`,
    })),
    /** The lease was renewed under a (possibly new) token. */
    renewToken: assign((_, params: { token: number }) => ({ leader: params.token })),
    /** The lease is gone: stop acting at once. */
    stepDown: assign((_, params: { why: string }) => ({
      leader: null,
      why: `no longer the failover coordinator: ${params.why}`,
    })),
  },
  delays: {
    probeInterval: ({ context }) => context.probeIntervalMs,
    probeTimeout: ({ context }) => context.probeTimeoutMs,
    earlyProbeHoldoff: ({ context }) => Math.min(100, Math.floor(context.probeIntervalMs / 5)),
    monitorInterval: ({ context }) => context.monitorIntervalMs,
    confirmTimeout: ({ context }) => context.confirmTimeoutMs,
    poolRetry: ({ context }) => context.poolRetryMs,
  },
  guards: {
    isLeader: ({ context }) => context.leader !== null,
    /** A pool error came since the last probe started. */
    hinted: ({ context }) => context.hint !== null,
    /** The detector has decided where to start. */
    started: not(stateIn("#failover.detector.starting")),
    /** The detector is healthy: the only time repairs run. */
    calm: stateIn(HEALTHY),
    confirmedAsLeader: ({ context }) =>
      context.leader !== null && context.failures >= context.confirmations,
    newerPublished: ({ context }, probe: ProbeResult) =>
      judgeProbe(context, probe).verdict === "newer",
    /** Nothing is published yet, or a promotion of ours is not: publish it. */
    needsPublication: ({ context }, probe: ProbeResult) => {
      const { verdict } = judgeProbe(context, probe);
      return verdict === "bootstrap" || verdict === "unpublished";
    },
    /** Redis holds an older epoch than the one followed, or no record: write it back. */
    needsReassert: ({ context }, probe: ProbeResult) =>
      judgeProbe(context, probe).verdict === "reassert",
    probeAnswered: ({ context }, probe: ProbeResult) =>
      judgeProbe(context, probe).verdict === "answered",
    /** The coordinator's probe was refused with the fast path on: gather the evidence. */
    probeRefused: ({ context }, probe: ProbeResult) =>
      judgeProbe(context, probe).verdict === "refused",
    /** The evidence gathered is certain ({@linkcode judgeEvidence}), and still the coordinator. */
    certain: ({ context }, evidence: Evidence) =>
      context.leader !== null && judgeEvidence(context, evidence).certain,
    newerPrimary: ({ context }, published: Published) => isNewer(context.primary, published),
    majority: ({ context }, votes: VoteOutput) =>
      judgeVotes({
        primary: context.primary,
        failures: context.failures,
        lastError: context.lastProbe?.error ?? null,
      }, votes).failover,
    nothingPromoted: (_, output: { node: string | null }) => output.node === null,
    /** The repair (a rejoin, a start of a parked node) failed, and says what it left. */
    repairFailedOutcome: (_, output: RepairOutput) => !output.ok,
    fallbackAnnounced: ({ context }, params: { readOnlyNode: string | null }) =>
      context.announced !== null && context.announced.epoch === context.primary.epoch &&
      context.announced.readOnlyNode === params.readOnlyNode,
    poolBehind: ({ context }) => poolBehind(context.pool, context.primary),
    // A sample taken against an earlier primary (the switch happened while it ran) says
    // nothing reliable about the cluster around the new one: it is never acted on.
    repairDue: ({ context }) =>
      context.leader !== null && context.sample !== null &&
      context.sample.primary === context.primary.node &&
      findRepair(repairInput(context, context.sample)) !== null,
    bootstrapping: ({ context }) => publicationOf(context).kind === "bootstrap",
    ownPublication: ({ context }, params: { node: string }) =>
      context.promotion?.node === params.node,
    sameEpoch: ({ context }, params: { node: string; epoch: number }) =>
      params.node === context.primary.node && params.epoch === context.primary.epoch,
    primaryBack: (_, output: { primaryOk: boolean }) => output.primaryOk,
    candidateFound: (_, output: { choice: CandidateChoice }) => output.choice.node !== null,
  },
});

// ---------------------------------------------------------------------------------------
// Role
// ---------------------------------------------------------------------------------------

/** Follower or coordinator: whoever holds the `failover` lease decides. */
const ROLE = failover.createStateConfig({
  initial: "follower",
  states: {
    follower: {
      on: {
        LEASE_ACQUIRED: {
          target: "coordinator",
          actions: { type: "becomeCoordinator", params: ({ event }) => ({ token: event.token }) },
        },
      },
    },
    coordinator: {
      on: {
        LEASE_ACQUIRED: {
          actions: { type: "renewToken", params: ({ event }) => ({ token: event.token }) },
        },
        LEASE_LOST: {
          target: "follower",
          actions: { type: "stepDown", params: ({ event }) => ({ why: event.why }) },
        },
      },
    },
  },
});

// ---------------------------------------------------------------------------------------
// Detector
// ---------------------------------------------------------------------------------------

/**
 * Losing the lease in the middle of the coordinator's work stops it at once: back to
 * suspect, where probes decide again (the next coordinator finishes), with one sentence
 * saying what stopped.
 */
function stopActing(why: string) {
  return { target: "suspect", actions: { type: "say", params: { why } } } as const;
}

/** Where to start: the published primary, else where the pool points ({@linkcode chooseStart}). */
const STARTING = failover.createStateConfig({
  on: {
    SWITCHOVER: {
      actions: {
        type: "refuseSwitchover",
        params: ({ event }) => ({
          id: event.id,
          why: "refused the switchover: this instance is still starting",
        }),
      },
    },
  },
  invoke: {
    src: "readStart",
    onDone: {
      target: "healthy",
      actions: { type: "decideStart", params: ({ event }) => event.output },
    },
    // The effect does not fail (Redis not answering is "nothing published"); if it ever
    // does, start as with nothing known rather than never.
    onError: {
      target: "healthy",
      actions: { type: "decideStart", params: () => ({ published: null, pool: null }) },
    },
  },
});

/**
 * One probe of the primary, the same state config at both health levels. What it leads to,
 * in order: a newer published primary is followed; the coordinator publishes a promotion of
 * its own that was never published, or the first primary (bootstrap); it writes back a
 * publication Redis lost; an answer means healthy; anything else (an error, no answer within
 * the probe timeout) is one more failed probe. Targets are absolute, so each level re-enters
 * the level the verdict calls for.
 */
const PROBING = failover.createStateConfig({
  // This probe weighs whatever the pool saw before it started.
  entry: "takeHint",
  invoke: {
    src: "probePrimary",
    input: ({ context }) => ({ primary: context.primary }),
    onDone: [
      {
        guard: { type: "newerPublished", params: ({ event }) => event.output },
        target: HEALTHY,
        actions: { type: "recordProbe", params: ({ event }) => event.output },
      },
      {
        guard: { type: "needsPublication", params: ({ event }) => event.output },
        target: "#failover.detector.publishing",
        actions: { type: "recordProbe", params: ({ event }) => event.output },
      },
      {
        guard: { type: "needsReassert", params: ({ event }) => event.output },
        target: "#failover.detector.reasserting",
        actions: { type: "recordProbe", params: ({ event }) => event.output },
      },
      {
        guard: { type: "probeAnswered", params: ({ event }) => event.output },
        target: HEALTHY,
        actions: { type: "recordProbe", params: ({ event }) => event.output },
      },
      {
        guard: { type: "probeRefused", params: ({ event }) => event.output },
        target: "#failover.detector.corroborating",
        actions: { type: "recordProbe", params: ({ event }) => event.output },
      },
      {
        target: SUSPECT,
        actions: { type: "recordProbe", params: ({ event }) => event.output },
      },
    ],
    onError: {
      target: SUSPECT,
      actions: {
        type: "recordProbe",
        params: ({ event }) => ({
          ok: false,
          error: errorText(event.error),
          latencyMs: -1,
          refused: false,
          at: null,
          published: null,
        }),
      },
    },
  },
  after: {
    probeTimeout: {
      target: SUSPECT,
      actions: {
        type: "recordProbe",
        params: ({ context }) => ({
          ok: false,
          error: `no answer within ${context.probeTimeoutMs} ms`,
          latencyMs: context.probeTimeoutMs,
          refused: false,
          at: null,
          published: null,
        }),
      },
    },
  },
});

/** The primary answers: probe it every interval; the coordinator takes switchovers here. */
const HEALTHY_STATE = failover.createStateConfig({
  initial: "waiting",
  entry: "resetSuspicion",
  on: {
    // A pool query that lost its connection is a hint, kept until the next probe starts
    // (also when it came during a probe or the hold-off).
    POOL_ERROR: { actions: { type: "noteHint", params: ({ event }) => ({ why: event.why }) } },
    SWITCHOVER: [
      {
        guard: "isLeader",
        target: "switchover",
        actions: {
          type: "beginSwitchover",
          params: ({ event }) => ({
            id: event.id,
            target: event.target,
            requestedBy: event.requestedBy,
          }),
        },
      },
      {
        actions: {
          type: "refuseSwitchover",
          params: ({ event }) => ({
            id: event.id,
            why: "refused the switchover: this instance is not the failover coordinator",
          }),
        },
      },
    ],
  },
  states: {
    // A hint brings the next probe forward: it runs at once rather than at the end of the
    // interval, or when the hold-off after the last probe ends (at most one early probe per
    // `earlyProbeHoldoff`, so a pool failing on and on cannot make the probes run back to
    // back). It is only a probe: what it finds is weighed like any other.
    waiting: {
      initial: "resting",
      after: { probeInterval: "probing" },
      states: {
        resting: { after: { earlyProbeHoldoff: "listening" } },
        listening: {
          always: {
            guard: "hinted",
            target: "#failover.detector.healthy.probing",
            actions: {
              type: "say",
              params: ({ context }) => ({
                why: `probing ${context.primary.node} at once: a query through the pool ` +
                  `failed (${context.hint?.why})`,
              }),
            },
          },
        },
      },
    },
    probing: PROBING,
  },
});

/**
 * Probes failed: keep probing; the coordinator asks for votes after N in a row. A suspect
 * primary's probes keep their interval whatever the pool says (a hint is only kept for the
 * next probe), so the careful count never runs faster.
 */
const SUSPECT_STATE = failover.createStateConfig({
  initial: "waiting",
  on: {
    POOL_ERROR: { actions: { type: "noteHint", params: ({ event }) => ({ why: event.why }) } },
  },
  states: {
    waiting: {
      always: { guard: "confirmedAsLeader", target: "#failover.detector.confirming" },
      after: { probeInterval: "probing" },
    },
    probing: PROBING,
  },
});

/**
 * The fast path's gate (coordinator only, after a refused probe): every live instance looks
 * at the primary afresh and every other node's WAL receiver is read. Certain evidence
 * ({@linkcode judgeEvidence}) goes straight to the vote; anything less goes back to
 * `suspect`, where the careful path keeps counting failed probes.
 */
const CORROBORATING = failover.createStateConfig({
  invoke: {
    src: "corroborate",
    input: ({ context }) => ({
      primary: context.primary,
      mine: {
        instance: context.instanceId,
        refused: context.lastProbe?.refused ?? false,
        why: context.lastProbe?.error ?? "no answer",
      },
    }),
    onDone: [
      {
        guard: { type: "certain", params: ({ event }) => event.output },
        target: "confirming",
        actions: { type: "recordEvidence", params: ({ event }) => event.output },
      },
      {
        target: "suspect",
        actions: { type: "recordEvidence", params: ({ event }) => event.output },
      },
    ],
    onError: {
      target: "suspect",
      actions: {
        type: "say",
        params: ({ event }) => ({
          why: `not certain, staying on the careful path: gathering the evidence failed: ${
            errorText(event.error)
          }`,
        }),
      },
    },
  },
  after: {
    confirmTimeout: {
      target: "suspect",
      actions: {
        type: "say",
        params: ({ context }) => ({
          why: `not certain, staying on the careful path: gathering the evidence took longer ` +
            `than ${context.confirmTimeoutMs} ms`,
        }),
      },
    },
  },
  on: {
    LEASE_LOST: stopActing("stopped gathering evidence: lost the failover lease"),
  },
});

/** The coordinator asks every live instance; a strict majority must see the primary down. */
const CONFIRMING = failover.createStateConfig({
  invoke: {
    src: "collectVotes",
    input: ({ context }) => ({ primary: context.primary, failures: context.failures }),
    onDone: [
      {
        guard: { type: "majority", params: ({ event }) => event.output },
        target: "promoting",
        actions: { type: "recordVotes", params: ({ event }) => event.output },
      },
      {
        target: "suspect",
        actions: { type: "recordVotes", params: ({ event }) => event.output },
      },
    ],
    onError: {
      target: "suspect",
      actions: {
        type: "startOver",
        params: ({ event }) => ({
          why: `not failing over: the vote failed: ${errorText(event.error)}`,
        }),
      },
    },
  },
  after: {
    confirmTimeout: {
      target: "suspect",
      actions: {
        type: "startOver",
        params: ({ context }) => ({
          why: `not failing over: the vote took longer than ${context.confirmTimeoutMs} ms`,
        }),
      },
    },
  },
  on: {
    LEASE_LOST: stopActing("stopped confirming: lost the failover lease"),
  },
});

/** The best replica is promoted (or one already promoted adopted), or none qualifies. */
const PROMOTING = failover.createStateConfig({
  invoke: {
    src: "promote",
    input: ({ context }) => ({
      primary: context.primary,
      token: context.leader,
      last: context.lastGoodSample,
    }),
    onDone: [
      {
        guard: { type: "nothingPromoted", params: ({ event }) => event.output },
        target: "degraded",
        actions: {
          type: "enterDegraded",
          params: ({ event }) => {
            const none = event.output as NoPromotion;
            return { why: none.choice.why, readOnlyNode: none.readOnlyNode };
          },
        },
      },
      {
        target: "publishing",
        actions: [
          { type: "recordPromotion", params: ({ event }) => event.output as PromotionOutput },
          {
            type: "afterPromotion",
            params: ({ event }) => ({
              node: (event.output as PromotionOutput).node,
              adopted: (event.output as PromotionOutput).adopted,
            }),
          },
        ],
      },
    ],
    onError: {
      target: "suspect",
      actions: {
        type: "startOver",
        params: ({ event }) => ({
          why: `promotion failed, will decide again: ${errorText(event.error)}`,
        }),
      },
    },
  },
  on: {
    LEASE_LOST: stopActing(
      "stopped promoting: lost the failover lease; the next coordinator finishes",
    ),
  },
});

/** A planned switchover an operator asked for: zero loss or refused. */
const SWITCHING_OVER = failover.createStateConfig({
  invoke: {
    src: "switchover",
    input: ({ context }) => ({
      primary: context.primary,
      token: context.leader,
      request: context.switchover!,
    }),
    onDone: {
      target: "publishing",
      actions: { type: "recordSwitchover", params: ({ event }) => event.output },
    },
    onError: {
      target: "healthy",
      actions: {
        type: "switchoverFailed",
        params: ({ event }) => ({ why: `switchover refused: ${errorText(event.error)}` }),
      },
    },
  },
  on: {
    LEASE_LOST: stopActing("stopped the switchover: lost the failover lease"),
  },
});

/**
 * Redis lost the publication (an older epoch or none): the coordinator writes the primary
 * it follows back, same node and epoch, under its fencing token. Either way back to
 * healthy: a failed write is tried again after the next probe that finds Redis behind.
 */
const REASSERTING = failover.createStateConfig({
  invoke: {
    src: "reassert",
    input: ({ context }) => ({
      primary: context.primary,
      token: context.leader ?? 0,
    }),
    onDone: {
      target: "healthy",
      actions: { type: "say", params: ({ event }) => ({ why: event.output.why }) },
    },
    onError: {
      target: "healthy",
      actions: {
        type: "say",
        params: ({ event }) => ({
          why: `re-asserting the publication failed, will retry: ${errorText(event.error)}`,
        }),
      },
    },
  },
  on: {
    LEASE_LOST: stopActing("stopped re-asserting: lost the failover lease"),
  },
});

/** The new primary and its epoch go to Redis (fenced), the history and every instance. */
const PUBLISHING = failover.createStateConfig({
  invoke: {
    src: "publish",
    input: ({ context }) => publicationOf(context),
    onDone: {
      target: "healthy",
      actions: { type: "recordPublication", params: ({ event }) => event.output },
    },
    onError: [
      {
        guard: "bootstrapping",
        target: "healthy",
        actions: {
          type: "say",
          params: ({ event }) => ({
            why: `bootstrap: publishing the primary failed, will retry: ${errorText(event.error)}`,
          }),
        },
      },
      {
        target: "suspect",
        actions: {
          type: "publicationFailed",
          params: ({ event }) => ({ error: errorText(event.error) }),
        },
      },
    ],
  },
  on: {
    LEASE_LOST: stopActing(
      "stopped publishing: lost the failover lease; the next coordinator finishes",
    ),
    // The echo of our own broadcast may arrive before the effect returns: wait for it.
    "failover.primary": {
      guard: { type: "ownPublication", params: ({ event }) => ({ node: event.node }) },
    },
  },
});

/**
 * No eligible replica: the read-only fallback (or that there is none) is announced at the
 * same epoch; every monitor interval the coordinator looks again, until the primary is
 * back or a replica became eligible. Failing queries fail at once meanwhile.
 */
const DEGRADED = failover.createStateConfig({
  initial: "announcing",
  entry: ["forgetAnnouncement", "failQueriesFast"],
  exit: "letQueriesWait",
  states: {
    // Publishes the read-only fallback (or that there is none) at the same epoch, under
    // the fencing token, so every instance's pool serves reads from it.
    announcing: {
      invoke: {
        src: "publish",
        input: ({ context }) => ({
          kind: "degraded" as const,
          node: context.primary.node,
          oldPrimary: context.primary.node,
          epoch: context.primary.epoch,
          readOnlyNode: context.primary.readOnlyNode,
          token: context.leader,
          startedAt: context.suspectSince,
          why: context.why,
          requestId: null,
        }),
        onDone: {
          target: "waiting",
          actions: { type: "markAnnounced", params: ({ event }) => event.output.published },
        },
        // Not announced: the next re-check tries again (`fallbackAnnounced` sees it).
        onError: { target: "waiting" },
      },
    },
    waiting: { after: { monitorInterval: "checking" } },
    checking: {
      invoke: {
        src: "reassess",
        input: ({ context }) => ({
          primary: context.primary,
          last: context.lastGoodSample,
          token: context.leader,
        }),
        onDone: [
          {
            guard: { type: "primaryBack", params: ({ event }) => event.output },
            target: HEALTHY,
            actions: "leaveDegraded",
          },
          {
            guard: { type: "candidateFound", params: ({ event }) => event.output },
            target: "#failover.detector.confirming",
            actions: {
              type: "say",
              params: ({ event }) => ({
                why: `a replica became eligible (${event.output.choice.why}): confirming again`,
              }),
            },
          },
          {
            guard: {
              type: "fallbackAnnounced",
              params: ({ event }) => ({ readOnlyNode: event.output.readOnlyNode }),
            },
            target: "waiting",
            actions: {
              type: "enterDegraded",
              params: ({ event }) => ({
                why: event.output.choice.why,
                readOnlyNode: event.output.readOnlyNode,
              }),
            },
          },
          {
            target: "announcing",
            actions: {
              type: "enterDegraded",
              params: ({ event }) => ({
                why: event.output.choice.why,
                readOnlyNode: event.output.readOnlyNode,
              }),
            },
          },
        ],
        onError: { target: "waiting" },
      },
    },
  },
  on: {
    LEASE_LOST: stopActing("no longer coordinating while degraded: lost the lease"),
    // Our own read-only announcement (same epoch) must not end the degraded state.
    "failover.primary": {
      guard: {
        type: "sameEpoch",
        params: ({ event }) => ({ node: event.node, epoch: event.epoch }),
      },
    },
  },
});

/**
 * Which primary this instance follows, and what the coordinator does when it fails. A newer
 * primary announced by any coordinator wins, whatever the detector was doing (handled on
 * this region, so the other regions carry on undisturbed).
 */
const DETECTOR = failover.createStateConfig({
  initial: "starting",
  on: {
    SWITCHOVER: {
      actions: {
        type: "refuseSwitchover",
        params: ({ context, event }) => ({
          id: event.id,
          why: `refused the switchover: a failover decision is under way (${context.why})`,
        }),
      },
    },
    "failover.primary": {
      guard: {
        type: "newerPrimary",
        params: ({ event }) => ({
          node: event.node,
          epoch: event.epoch,
          readOnlyNode: event.readOnlyNode ?? null,
        }),
      },
      target: ".healthy",
      actions: {
        type: "followAnnounced",
        params: ({ event }) => ({
          node: event.node,
          epoch: event.epoch,
          readOnlyNode: event.readOnlyNode ?? null,
        }),
      },
    },
  },
  states: {
    starting: STARTING,
    healthy: HEALTHY_STATE,
    suspect: SUSPECT_STATE,
    corroborating: CORROBORATING,
    confirming: CONFIRMING,
    promoting: PROMOTING,
    switchover: SWITCHING_OVER,
    publishing: PUBLISHING,
    reasserting: REASSERTING,
    degraded: DEGRADED,
  },
});

// ---------------------------------------------------------------------------------------
// Pool
// ---------------------------------------------------------------------------------------

/** Keeps the pool on the primary the detector follows (its read-only fallback while degraded). */
const POOL = failover.createStateConfig({
  initial: "starting",
  states: {
    starting: { always: { guard: "started", target: "current" } },
    current: { always: { guard: "poolBehind", target: "switching" } },
    switching: {
      invoke: {
        src: "repointPool",
        input: ({ context }) => poolTarget(context.primary),
        onDone: {
          target: "current",
          actions: { type: "recordPool", params: ({ event }) => event.output },
        },
        onError: {
          target: "retrying",
          actions: {
            type: "poolSwitchFailed",
            params: ({ event }) => ({ error: errorText(event.error) }),
          },
        },
      },
    },
    retrying: { after: { poolRetry: "current" } },
  },
});

// ---------------------------------------------------------------------------------------
// Monitor
// ---------------------------------------------------------------------------------------

/** Samples every node each interval; the calm coordinator repairs what a sample shows. */
const MONITOR = failover.createStateConfig({
  initial: "starting",
  states: {
    starting: { always: { guard: "started", target: "waiting" } },
    waiting: { after: { monitorInterval: "sampling" } },
    sampling: {
      invoke: {
        src: "sampleNodes",
        input: ({ context }) => ({
          primary: context.primary,
          leader: context.leader,
          alerts: Object.values(context.alerts),
          why: context.why,
        }),
        onDone: {
          target: "deciding",
          actions: [
            // Alerts first: the news is the difference against the alerts recorded so far.
            {
              type: "announceAlerts",
              params: ({ context, event }) => alertNews(context, event.output),
            },
            { type: "recordSample", params: ({ event }) => event.output },
          ],
        },
        onError: { target: "waiting" },
      },
    },
    // Only the coordinator repairs, only while the detector is healthy, only on a sample of
    // the primary followed now.
    deciding: {
      always: [
        { guard: and(["calm", "repairDue"]), target: "maintaining", actions: "planRepair" },
        { target: "waiting" },
      ],
    },
    maintaining: {
      invoke: {
        src: "repair",
        input: ({ context }) => ({
          finding: context.finding!,
          primary: context.primary,
          token: context.leader,
        }),
        onDone: [
          {
            guard: { type: "repairFailedOutcome", params: ({ event }) => event.output },
            target: "waiting",
            actions: {
              type: "repairFailed",
              params: ({ event }) => event.output as RepairFailure,
            },
          },
          {
            target: "waiting",
            actions: {
              type: "repairDone",
              params: ({ event }) => ({ why: (event.output as { why: string }).why }),
            },
          },
        ],
        // Thrown: the fencing token was refused before anything ran, or an unfence /
        // re-point / sync repair failed; none of them stops a node.
        onError: {
          target: "waiting",
          actions: {
            type: "repairFailed",
            params: ({ event }) => ({
              error: errorText(event.error),
              leftStopped: false,
              notOurs: false,
            }),
          },
        },
      },
    },
  },
});

function alertNews(
  context: FailoverContext,
  sample: ReplicationSample,
): { raised: LagAlert[]; resolved: LagAlert[] } {
  const { raised, resolved } = updateAlerts(context.alerts, {
    sample,
    lagAlertBytes: context.lagAlertBytes,
    lagAlertSeconds: context.lagAlertSeconds,
  });
  return { raised, resolved };
}

// ---------------------------------------------------------------------------------------
// The machine
// ---------------------------------------------------------------------------------------

/** The failover statechart of one instance. */
export const failoverMachine = failover.createMachine({
  id: "failover",
  type: "parallel",
  context: ({ input }) => ({
    instanceId: input.instanceId,
    nodes: input.nodes,
    // Placeholders until `starting` decides; the pool and monitor regions wait for it.
    primary: { node: input.nodes[0] ?? "", epoch: 0, readOnlyNode: null },
    pool: { node: "", epoch: 0, readOnly: false },
    leader: null,
    probeIntervalMs: input.probeIntervalMs ?? 500,
    probeTimeoutMs: input.probeTimeoutMs ?? 1000,
    confirmations: input.confirmations ?? 3,
    monitorIntervalMs: input.monitorIntervalMs ?? 1000,
    confirmTimeoutMs: input.confirmTimeoutMs ?? 5000,
    lagAlertBytes: input.lagAlertBytes ?? 16 * 1024 * 1024,
    lagAlertSeconds: input.lagAlertSeconds ?? 10,
    syncMode: input.syncMode ?? true,
    fastPath: input.fastPath ?? true,
    maxLagBytes: input.maxLagBytes ?? 16 * 1024 * 1024,
    maintenanceBackoffMs: input.maintenanceBackoffMs ?? 10_000,
    poolRetryMs: input.poolRetryMs ?? 500,
    failures: 0,
    lastProbe: null,
    hint: null,
    suspectSince: null,
    path: "careful",
    evidence: null,
    evidenceWhy: null,
    votes: null,
    promotion: null,
    switchover: null,
    sample: null,
    lastGoodSample: null,
    finding: null,
    backoff: {},
    repoints: {},
    parked: [],
    awaitingOperator: [],
    alerts: {},
    decision: null,
    degradedWhy: null,
    announced: null,
    why: "starting: reading the published primary",
  }),
  entry: ["announceSelf", "letQueriesWait"],
  invoke: { src: "watchLease" },
  states: {
    role: ROLE,
    detector: DETECTOR,
    pool: POOL,
    monitor: MONITOR,
  },
});
