/**
 * The failover chart's pure decisions, Patroni `ha.py` style: each takes what the chart
 * knows (and what an effect observed) and returns what to do together with one sentence
 * saying why. The chart's guards ask these functions, its actions store their sentences
 * in `context.why`, the effects log them and record them in `failover_history`, and the
 * tests assert them. Nothing here does I/O or reads a clock.
 * @module
 */
import type {
  CandidateChoice,
  Evidence,
  Finding,
  LagAlert,
  NodeSample,
  PoolTarget,
  ProbeResult,
  PromotionOutput,
  Published,
  PublishInput,
  ReplicationSample,
  StartFacts,
  SwitchoverRequest,
  SyncConfig,
  VoteOutput,
} from "./types.ts";

// ---------------------------------------------------------------------------------------
// WAL positions and synchronous_standby_names
// ---------------------------------------------------------------------------------------

/** An LSN such as `0/3000148` as a number of bytes (exact below 2^53, i.e. 8 PiB of WAL). */
export function lsnToNumber(lsn: string | null | undefined): number | null {
  if (!lsn) return null;
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(lsn);
  if (!m) return null;
  return parseInt(m[1], 16) * 2 ** 32 + parseInt(m[2], 16);
}

/** Bytes for a sentence: `512 B`, `3.2 MB`. */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 ** 2) return `${(bytes / 1024).toFixed(1)} kB`;
  if (bytes < 1024 ** 3) return `${(bytes / 1024 ** 2).toFixed(1)} MB`;
  return `${(bytes / 1024 ** 3).toFixed(1)} GB`;
}

/** Parses synchronous_standby_names (`ANY 1 ("a", b)`, `FIRST 2 (a,b)`, `a, b`, `''`). */
export function parseSyncStandbys(value: string | null | undefined): SyncConfig | null {
  const text = (value ?? "").trim();
  if (!text) return null;
  const m = /^(ANY|FIRST)?\s*(\d+)?\s*\((.*)\)\s*$/i.exec(text);
  const list = m ? m[3] : text;
  const names = list.split(",").map((n) => n.trim().replace(/^"(.*)"$/, "$1")).filter(Boolean);
  if (!names.length) return null;
  const method = m?.[1]?.toUpperCase() === "ANY" ? "ANY" : "FIRST";
  const num = m?.[2] ? Number(m[2]) : 1;
  return { method, num, names };
}

/** synchronous_standby_names for these standbys: `ANY 1 ("a", "b")`, or `''` for none. */
export function formatSyncStandbys(standbys: string[]): string {
  if (!standbys.length) return "";
  return `ANY 1 (${standbys.map((s) => `"${s.replaceAll('"', '""')}"`).join(", ")})`;
}

// ---------------------------------------------------------------------------------------
// Where to start, and which primary to follow
// ---------------------------------------------------------------------------------------

/** What {@linkcode chooseStart} decided. */
export interface StartChoice {
  /** The primary to follow from now on. */
  primary: Published;
  /** One sentence: why this one. */
  why: string;
}

/**
 * Where an instance starts: the primary published in Redis when it is one of the nodes
 * (the pool follows it: an instance restarted after a failover must not keep writing to a
 * demoted node); else where the pool points, at the pool's epoch (0 on a first start: the
 * coordinator then publishes it, see {@linkcode judgeProbe}); else the first node.
 */
export function chooseStart(facts: StartFacts, nodes: string[]): StartChoice {
  const p = facts.published;
  const pool = facts.pool;
  const onNode = pool !== null && !pool.readOnly && nodes.includes(pool.node);
  const fallback: Published = onNode
    ? { node: pool.node, epoch: pool.epoch, readOnlyNode: null }
    : { node: nodes[0] ?? "", epoch: 0, readOnlyNode: null };
  const where = onNode
    ? `${fallback.node}, where the pool points,`
    : `${fallback.node}, the first of DATABASE_NODES (the pool points at none of them),`;
  const until = fallback.epoch === 0 ? " until the coordinator publishes it" : "";
  // Redis lost the newest publication (the pool started on the epoch failover_history
  // records): the older record is not followed; the coordinator writes it back.
  if (p && onNode && pool.epoch > p.epoch) {
    return {
      primary: fallback,
      why: `starting: the published primary ${p.node} (epoch ${p.epoch}) is older than the ` +
        `epoch ${pool.epoch} recorded in failover_history: following ${where} with epoch ` +
        `${pool.epoch} until the coordinator re-asserts it`,
    };
  }
  if (p && nodes.includes(p.node)) {
    return {
      primary: p,
      why: `starting: following ${p.node} (epoch ${p.epoch}), the primary published in Redis` +
        (p.readOnlyNode ? `; it takes no writes, reads go to ${p.readOnlyNode}` : ""),
    };
  }
  if (p) {
    return {
      primary: fallback,
      why: `starting: the published primary ${p.node} is none of DATABASE_NODES ` +
        `(${nodes.join(", ")}); following ${where} with epoch ${fallback.epoch}${until}`,
    };
  }
  return {
    primary: fallback,
    why: `starting: no primary is published (or Redis did not answer); following ${where} ` +
      `with epoch ${fallback.epoch}${until}`,
  };
}

/** One node as start-up sees it before opening the pool (see {@linkcode chooseStartupNode}). */
export interface StartupNodeView {
  /** Node name. */
  name: string;
  /** It answered. */
  reachable: boolean;
  /** pg_is_in_recovery() (false when unreachable). */
  inRecovery: boolean;
  /** Its failover_history: newest publication and highest epoch, or null (none). */
  recorded: { node: string; epoch: number; maxEpoch: number } | null;
  /** Why it did not answer. */
  error: string | null;
}

/** What start-up knows when it decides which node to open the pool on. */
export interface StartupFacts {
  /** Redis's answer: `answered` false when it gave none. */
  redis: { answered: boolean; record: Published | null };
  /** How long start-up has waited for Redis so far. */
  waitedMs: number;
  /** How long it waits for Redis before falling back to failover_history (ms). */
  redisWaitMs: number;
  /** The DATABASE_NODES name of DATABASE_URL, or null when it is none of them. */
  configured: string | null;
  /** Every node of DATABASE_NODES. */
  nodes: StartupNodeView[];
}

/** Open the pool on `node` (null: DATABASE_URL) labelled `epoch`, or wait and decide again. */
export type StartupChoice =
  | { open: true; node: string | null; epoch: number; why: string }
  | { open: false; why: string; error: boolean };

/**
 * Which node start-up opens its pool on, before migrating on it. The primary published in
 * Redis only when its node answers out of recovery and its epoch is not below the highest
 * epoch failover_history records (Redis replication is asynchronous: a Sentinel failover
 * can bring back an older record). Redis not answering is waited for (`redisWaitMs`). Else
 * the primary failover_history records last, when it answers out of recovery; else
 * DATABASE_URL, on a cluster that recorded nothing yet, when it is out of recovery.
 * Anything else: wait (a coordinator publishes the primary) and decide again.
 */
export function chooseStartupNode(facts: StartupFacts): StartupChoice {
  const view = (name: string) => facts.nodes.find((n) => n.name === name) ?? null;
  const writable = (n: StartupNodeView | null) => n !== null && n.reachable && !n.inRecovery;
  const state = (n: StartupNodeView | null) =>
    !n
      ? "none of DATABASE_NODES"
      : !n.reachable
      ? `unreachable (${n.error ?? "no answer"})`
      : n.inRecovery
      ? "in recovery (a replica)"
      : "writable";
  let newest: StartupNodeView["recorded"] = null;
  for (const n of facts.nodes) {
    if (n.reachable && n.recorded && (!newest || n.recorded.epoch > newest.epoch)) {
      newest = n.recorded;
    }
  }
  const bar = Math.max(0, ...facts.nodes.map((n) => n.recorded?.maxEpoch ?? 0));
  const { record } = facts.redis;
  const published = record && view(record.node) ? record : null;
  let prefix: string;
  if (published) {
    const n = view(published.node);
    if (writable(n) && published.epoch >= bar) {
      return {
        open: true,
        node: published.node,
        epoch: published.epoch,
        why: `start-up: opening ${published.node} (epoch ${published.epoch}), the primary ` +
          `published in Redis`,
      };
    }
    prefix = published.epoch < bar
      ? `the published primary ${published.node} (epoch ${published.epoch}) is older than ` +
        `epoch ${bar} recorded in failover_history`
      : `the published primary ${published.node} (epoch ${published.epoch}) is ${state(n)}`;
  } else if (!facts.redis.answered && facts.waitedMs < facts.redisWaitMs) {
    return {
      open: false,
      error: false,
      why: `start-up: waiting for Redis to name the primary (no answer for ${facts.waitedMs} ms; ` +
        `after ${facts.redisWaitMs} ms the primary failover_history records is checked instead)`,
    };
  } else {
    prefix = !facts.redis.answered
      ? `Redis gave no answer for ${facts.waitedMs} ms`
      : record
      ? `the published primary ${record.node} is none of DATABASE_NODES`
      : "no primary is published in Redis";
  }
  if (newest) {
    const n = view(newest.node);
    if (writable(n) && (n!.recorded?.epoch ?? -1) === newest.epoch) {
      return {
        open: true,
        node: newest.node,
        epoch: bar,
        why: `start-up: ${prefix}: opening ${newest.node} (epoch ${bar}), the primary ` +
          `failover_history records, which is writable`,
      };
    }
    return {
      open: false,
      error: true,
      why: `start-up: ${prefix}, and the primary failover_history records, ${newest.node} ` +
        `(epoch ${newest.epoch}), is ${state(n)}: waiting for the coordinator to publish the ` +
        `primary`,
    };
  }
  const c = facts.configured ? view(facts.configured) : null;
  if (!facts.configured) {
    return {
      open: true,
      node: null,
      epoch: 0,
      why: `start-up: ${prefix}; DATABASE_URL is none of DATABASE_NODES: opening it`,
    };
  }
  if (writable(c) && !published) {
    return {
      open: true,
      node: null,
      epoch: 0,
      why: `start-up: ${prefix} and failover_history records none: opening DATABASE_URL ` +
        `(${facts.configured}), which is writable`,
    };
  }
  return {
    open: false,
    error: true,
    why: `start-up: ${prefix}, failover_history records no primary and DATABASE_URL ` +
      `(${facts.configured}) is ${state(c)}: waiting for a primary to be published`,
  };
}

/** True when `published` is news against the primary followed now: a newer epoch, or a new read-only fallback. */
export function isNewer(current: Published, published: Published | null): boolean {
  if (!published) return false;
  return published.epoch > current.epoch ||
    (published.epoch === current.epoch && published.node === current.node &&
      published.readOnlyNode !== current.readOnlyNode);
}

/** What {@linkcode judgeAnnouncement} decided. */
export interface AnnouncementJudgement {
  /** Follow the announced primary. */
  follow: boolean;
  /** One sentence: what this instance follows now, or why it ignores the announcement. */
  why: string;
}

/**
 * A primary announced by a coordinator (on the bus): followed when its epoch is newer, or
 * when at the same epoch its read-only fallback changed (degraded); an older one is stale.
 */
export function judgeAnnouncement(
  current: Published,
  announced: Published,
): AnnouncementJudgement {
  if (!isNewer(current, announced)) {
    return {
      follow: false,
      why: `ignored ${announced.node} (epoch ${announced.epoch}): already following ` +
        `${current.node} (epoch ${current.epoch})`,
    };
  }
  return {
    follow: true,
    why: announced.readOnlyNode
      ? `degraded: ${announced.node} (epoch ${announced.epoch}) takes no writes; reads go to ${announced.readOnlyNode}`
      : `following ${announced.node} (epoch ${announced.epoch}), announced by the coordinator` +
        (announced.node !== current.node ? ` instead of ${current.node}` : ""),
  };
}

/** Where the pool should point to follow `primary`: its read-only fallback while degraded. */
export function poolTarget(primary: Published): PoolTarget {
  return {
    node: primary.readOnlyNode ?? primary.node,
    epoch: primary.epoch,
    readOnly: primary.readOnlyNode !== null,
  };
}

/** True when the pool does not follow `primary` yet (other node, older epoch, other mode). */
export function poolBehind(pool: PoolTarget, primary: Published): boolean {
  const want = poolTarget(primary);
  return pool.node !== want.node || pool.epoch < want.epoch || pool.readOnly !== want.readOnly;
}

// ---------------------------------------------------------------------------------------
// Detection: probes and votes
// ---------------------------------------------------------------------------------------

/** What the detector knows when it weighs a probe. */
export interface DetectorState {
  /** The primary followed now. */
  primary: Published;
  /** Consecutive failed probes so far. */
  failures: number;
  /** Fencing token while coordinating, else null. */
  leader: number | null;
  /** Certain evidence may skip the count (FAILOVER_FAST_PATH). */
  fastPath?: boolean;
  /** The promotion (or adoption) this coordinator made and has not published yet. */
  promotion?: { node: string } | null;
}

/**
 * What one probe means. `newer`: Redis names a newer primary (follow it); `unpublished`: the
 * coordinator promoted another node and publishing it failed (publish it now, never follow the
 * node it replaced again); `bootstrap`: the coordinator sees the primary answer and nothing
 * published (publish it); `reassert`: Redis lost the publication (write it back); `answered`:
 * the primary is fine (`why` is null when there is nothing new to say); `failed`: one more
 * failed probe in the streak; `refused`: one more failed probe, refused outright, seen by
 * the coordinator with the fast path on: it gathers the evidence that may make it certain
 * (see {@linkcode judgeEvidence}) instead of waiting for the count.
 */
export type ProbeVerdict =
  | { verdict: "newer"; primary: Published; why: string }
  | { verdict: "unpublished"; why: string }
  | { verdict: "bootstrap"; why: string }
  | { verdict: "reassert"; why: string }
  | { verdict: "answered"; why: string | null }
  | { verdict: "failed"; failures: number; why: string }
  | { verdict: "refused"; failures: number; why: string };

/**
 * Weighs one probe of the primary, whatever the detector's level (healthy or suspect): the
 * one place where an observation of the primary becomes a verdict. A failed probe's
 * sentence counts the streak and reads the same however the probe failed (refused, error,
 * no answer in time).
 */
export function judgeProbe(state: DetectorState, probe: ProbeResult): ProbeVerdict {
  const { primary } = state;
  if (probe.published && isNewer(primary, probe.published)) {
    const p = probe.published;
    return {
      verdict: "newer",
      primary: p,
      why: `following ${p.node} (epoch ${p.epoch}), read from Redis`,
    };
  }
  // A promotion this coordinator made whose publication failed: that node is a primary now
  // (the old one was fenced before it), so an answer of the old one must not bring the
  // detector back to following it; the promotion is published instead, under this lease.
  const promoted = state.promotion?.node;
  if (probe.ok && state.leader !== null && promoted && promoted !== primary.node) {
    return {
      verdict: "unpublished",
      why: `publishing ${promoted}, promoted earlier but never published (not following ` +
        `${primary.node} again although it answered)`,
    };
  }
  if (probe.ok && state.leader !== null && primary.epoch === 0 && probe.published === null) {
    return {
      verdict: "bootstrap",
      why: `bootstrap: publishing ${primary.node} as the primary (epoch 1 or later)`,
    };
  }
  // Redis lost the publication (its replication is asynchronous: a Sentinel failover can
  // promote a replica that never saw it): the coordinator writes what it knows back, or a
  // restarting instance would follow the stale record.
  if (probe.ok && state.leader !== null && primary.epoch > 0) {
    const found = probe.published;
    if (found ? found.epoch < primary.epoch : probe.redisAnswered === true) {
      return {
        verdict: "reassert",
        why: found
          ? `Redis holds ${found.node} at epoch ${found.epoch}, older than ${primary.node} at ` +
            `epoch ${primary.epoch}: re-asserting the publication`
          : `Redis holds no published primary, ${primary.node} is at epoch ${primary.epoch}: ` +
            `re-asserting the publication`,
      };
    }
  }
  if (probe.ok) {
    return {
      verdict: "answered",
      why: state.failures > 0
        ? `${primary.node} answered again after ${state.failures} failed ` +
          `probe${state.failures === 1 ? "" : "s"}: not failing over`
        : null,
    };
  }
  const failures = state.failures + 1;
  const error = probe.error ?? "no answer";
  if (probe.refused && state.leader !== null && state.fastPath) {
    return {
      verdict: "refused",
      failures,
      why: `suspect: ${primary.node} refused the connection: asking the other instances ` +
        `and the replicas' WAL receivers whether the evidence is certain (fast path)`,
    };
  }
  return {
    verdict: "failed",
    failures,
    why: failures === 1
      ? `suspect: a probe of ${primary.node} failed (${error})`
      : `suspect: ${failures} consecutive probes of ${primary.node} failed (${error})`,
  };
}

/** True when `agree` is a strict majority of `live` instances. */
export function isMajority(agree: number, live: number): boolean {
  return live > 0 && agree * 2 > live;
}

/** What {@linkcode judgeVotes} decided. */
export interface VoteJudgement {
  /** Fail over now. */
  failover: boolean;
  /** One sentence: the evidence and the vote, or who disagreed. */
  why: string;
}

/** The vote after N failed probes: a strict majority of the live instances must agree. */
export function judgeVotes(
  state: {
    primary: Published;
    failures: number;
    lastError: string | null;
    evidenceWhy?: string | null;
  },
  votes: VoteOutput,
): VoteJudgement {
  if (isMajority(votes.agree, votes.live)) {
    if (state.evidenceWhy) {
      return {
        failover: true,
        why: `${state.evidenceWhy}, and ${votes.agree} of ${votes.live} live instances agree: ` +
          `failing over (fast path)`,
      };
    }
    return {
      failover: true,
      why: `${state.primary.node} failed ${state.failures} consecutive probes ` +
        `(last: ${state.lastError ?? "no answer"}) and ${votes.agree} of ` +
        `${votes.live} live instances agree: failing over`,
    };
  }
  return {
    failover: false,
    why: `not failing over: only ${votes.agree} of ${votes.live} live ` +
      `instances see ${state.primary.node} down (${
        votes.votes.filter((v) => !v.agree).map((v) => `${v.instance}: ${v.why}`).join("; ") ||
        "no majority"
      })`,
  };
}

/** Instances that must see the primary refuse connections for the evidence to be certain. */
export const CERTAIN_OBSERVERS = 2;

/** What {@linkcode judgeEvidence} decided. */
export interface EvidenceJudgement {
  /** The evidence is certain: the fast path may skip the count (the vote stays). */
  certain: boolean;
  /** One sentence: what makes it certain, or what is missing. */
  why: string;
}

/**
 * Whether what the coordinator gathered after a refused probe is *certain* evidence that
 * the primary is gone, not merely slow or cut off. All three must hold:
 *
 * 1. at least {@linkcode CERTAIN_OBSERVERS} independent instances had their fresh
 *    connection refused on the primary's address (the host answers, no PostgreSQL listens);
 * 2. no replica that answered still streams from the primary (its walsenders are gone);
 * 3. at least one replica is a *witness*: it streamed from the primary in `lastGoodSample` (the
 *    last sample taken while the primary answered: pg_stat_replication on the primary) and its WAL
 *    receiver has now lost that stream. A replica that was not streaming then (detached,
 *    lagging behind a broken slot, just started) proves nothing by not streaming now.
 *
 * Replicas that say nothing (no answer, out of recovery, streaming from another node) neither
 * block nor count: a replica that cannot be reached cannot show a stream either way, and
 * requiring every replica would turn a crash with one replica down (maintenance, or on the
 * dead primary's host) into the careful path without adding safety. Safety is elsewhere: the
 * fast path only decides *when* to vote, never *whether* to fail over (every refusal is also
 * a failed probe the careful path counts); the vote, the re-probe, the fencing token and
 * synchronous mode are the same on both paths. A stalled (SIGSTOPped), overloaded or
 * partitioned primary produces timeouts, not refusals, and keeps its streams: it never
 * qualifies and stays on the careful path.
 */
export function judgeEvidence(
  state: { primary: Published; lastGoodSample: ReplicationSample | null },
  evidence: Evidence,
): EvidenceJudgement {
  const node = state.primary.node;
  const before = state.lastGoodSample;
  const refused = evidence.observers.filter((o) => o.refused);
  const answered = evidence.receivers.filter((r) => r.streaming !== null);
  const streaming = answered.filter((r) => r.streaming === true);
  const silent = evidence.receivers.filter((r) => r.streaming === null);
  const streamedBefore = (name: string) =>
    before?.primary === node && before.nodes.some((n) => n.name === name && n.streaming);
  const witnesses = answered.filter((r) => r.streaming === false && streamedBefore(r.node));
  const others = evidence.observers.filter((o) => !o.refused);
  const missing: string[] = [];
  if (refused.length < CERTAIN_OBSERVERS) {
    missing.push(
      `only ${refused.length} of ${evidence.observers.length} instances saw ${node} refuse ` +
        `connections (${CERTAIN_OBSERVERS} needed)` +
        (others.length ? ` (${others.map((o) => `${o.instance}: ${o.why}`).join("; ")})` : ""),
    );
  }
  if (!answered.length) missing.push("no replica answered to show its WAL receiver");
  if (streaming.length) {
    missing.push(
      `${streaming.map((r) => r.node).join(", ")} still stream${
        streaming.length === 1 ? "s" : ""
      } from ${node}`,
    );
  } else if (answered.length && !witnesses.length) {
    missing.push(
      `no replica lost a stream from ${node}: ${
        answered.map((r) => r.node).join(", ")
      } did not stream from it at the last sample ${
        before?.primary === node ? "" : `(none taken while ${node} answered)`
      }`.trimEnd(),
    );
  }
  if (missing.length) {
    return {
      certain: false,
      why: `not certain, staying on the careful path: ${missing.join("; ")}`,
    };
  }
  return {
    certain: true,
    why: `certain: ${node} refused connections from ${refused.length} of ` +
      `${evidence.observers.length} instances (${refused.map((o) => o.instance).join(", ")}) ` +
      `and no replica's WAL receiver streams from it (${
        answered.map((r) => `${r.node}: ${r.why}`).join("; ")
      }${
        silent.length ? `; not counted: ${silent.map((r) => `${r.node}: ${r.why}`).join("; ")}` : ""
      })`,
  };
}

/**
 * How this instance answers another's "is `node` of this epoch down?" from what its chart
 * knows, or null when the chart knows nothing either way and a fresh probe must decide.
 */
export function voteFromState(
  state: { primary: Published; failures: number; lastProbe: { error: string | null } | null },
  ask: { node: string; epoch: number },
): { agree: boolean; why: string } | null {
  if (state.primary.epoch > ask.epoch) {
    return {
      agree: false,
      why: `I follow ${state.primary.node} of the newer epoch ${state.primary.epoch}`,
    };
  }
  if (state.primary.node === ask.node && state.failures > 0) {
    return {
      agree: true,
      why: `${state.failures} consecutive probes failed here (${
        state.lastProbe?.error ?? "no answer"
      })`,
    };
  }
  return null;
}

// ---------------------------------------------------------------------------------------
// Promotion and publication
// ---------------------------------------------------------------------------------------

/** What the chart knows when it publishes a promotion (or a bootstrap). */
export interface PublicationState {
  /** The primary followed until now. */
  primary: Published;
  /** The promotion (or adoption) to publish. */
  promotion: PromotionOutput | null;
  /** The switchover being worked on, if any. */
  switchover: SwitchoverRequest | null;
  /** Fencing token. */
  leader: number | null;
  /** Clock time of the first failed probe of the streak. */
  suspectSince: number | null;
  /** The decision's sentence so far. */
  why: string;
}

/**
 * What to publish after a promotion, at the next epoch: a switchover, the bootstrap of the
 * first primary (epoch 0 and the "promotion" names the primary itself), or a failover.
 */
export function publicationOf(state: PublicationState): PublishInput {
  const kind = state.switchover
    ? "switchover"
    : state.primary.epoch === 0 && state.promotion?.node === state.primary.node
    ? "bootstrap"
    : "failover";
  return {
    kind,
    node: state.promotion?.node ?? state.primary.node,
    oldPrimary: state.primary.node,
    epoch: state.primary.epoch + 1,
    readOnlyNode: null,
    token: state.leader,
    startedAt: state.suspectSince,
    why: state.why,
    requestId: state.switchover?.id ?? null,
  };
}

/** The sentence of a promotion (or adoption) about to be published. */
export function promotionSentence(
  state: { primary: Published; why: string },
  output: PromotionOutput,
): string {
  return `${state.why}; ` +
    (output.adopted
      ? `${output.why}: publishing it instead of ${state.primary.node}`
      : `promoted ${output.node} because ${output.why}`);
}

/** Input of {@linkcode chooseCandidate}. */
export interface CandidateInput {
  /** Fresh look at every node but the failed primary. */
  fresh: NodeSample[];
  /** The failed primary. */
  oldPrimary: string;
  /** Node names in priority order. */
  priority: string[];
  /** The last sample taken while the primary answered (lags, sync states, sync config). */
  last: ReplicationSample | null;
  /** Synchronous mode wanted. */
  syncMode: boolean;
  /** Async eligibility limit. */
  maxLagBytes: number;
  /** Only this node may be chosen (switchover target). */
  only?: string | null;
}

/**
 * Chooses the replica to promote: a node already out of recovery is adopted (a coordinator
 * died after promoting it: promoting another would make two writable primaries); else the
 * reachable replica with the highest replay LSN (receive LSN, then priority, break ties).
 * In synchronous mode the choice must provably hold every acknowledged write: enough
 * synchronous standbys must be reachable that one of them confirmed each commit. With no
 * eligible replica at all the sentence is always `no eligible replica: …`.
 */
export function chooseCandidate(input: CandidateInput): CandidateChoice {
  const rank = (name: string) => {
    const i = input.priority.indexOf(name);
    return i < 0 ? Number.MAX_SAFE_INTEGER : i;
  };
  const others = input.fresh.filter((n) =>
    n.name !== input.oldPrimary && (!input.only || n.name === input.only)
  );
  const problems: string[] = [];
  const promoted = others.filter((n) => n.reachable && n.inRecovery === false);
  if (promoted.length) {
    promoted.sort((a, b) =>
      (b.timeline ?? 0) - (a.timeline ?? 0) ||
      (lsnToNumber(b.currentLsn) ?? 0) - (lsnToNumber(a.currentLsn) ?? 0) ||
      rank(a.name) - rank(b.name)
    );
    const n = promoted[0];
    return {
      node: n.name,
      adopt: true,
      why: `adopting ${n.name}: it is already out of recovery (timeline ${n.timeline ?? "?"}), ` +
        "promoted by an earlier coordinator",
    };
  }
  const eligible: NodeSample[] = [];
  for (const n of others) {
    if (!n.reachable) {
      problems.push(`${n.name} is unreachable${n.error ? ` (${n.error})` : ""}`);
      continue;
    }
    if (n.inRecovery !== true || n.replayLsn === null) {
      problems.push(`${n.name} reports no replay position`);
      continue;
    }
    const before = input.last?.nodes.find((m) => m.name === n.name);
    const syncOn = input.syncMode && !!input.last?.sync;
    if (!syncOn && before?.lagBytes !== null && before?.lagBytes !== undefined) {
      if (before.lagBytes > input.maxLagBytes) {
        problems.push(
          `${n.name} was ${formatBytes(before.lagBytes)} behind at the last sample (limit ${
            formatBytes(input.maxLagBytes)
          })`,
        );
        continue;
      }
    }
    eligible.push(n);
  }
  // With no eligible replica at all the synchronous-standby argument is moot: say the plain
  // reason, so "every replica is gone" reads the same whether or not the monitor had already
  // dropped a dead standby from synchronous_standby_names when the primary died.
  if (!eligible.length) {
    return {
      node: null,
      adopt: false,
      why: `no eligible replica: ${problems.join("; ") || "none is configured"}`,
    };
  }
  if (input.syncMode && input.last?.sync) {
    const sync = input.last.sync;
    const reachable = sync.names.filter((name) =>
      eligible.some((n) => n.name === name) || name === input.only
    );
    const needed = sync.method === "ANY" ? sync.names.length - sync.num + 1 : sync.names.length;
    // A switchover target has replayed everything already; the check is for failovers.
    if (!input.only && reachable.length < needed) {
      const missing = sync.names.filter((n) => !reachable.includes(n));
      return {
        node: null,
        adopt: false,
        why:
          `no replica provably holds every acknowledged write: ${
            sync.method === "ANY" ? `ANY ${sync.num} of` : "every one of"
          } ${sync.names.join(", ")} confirmed commits, and ${
            missing.join(", ")
          } cannot be checked` + (problems.length ? ` (${problems.join("; ")})` : ""),
      };
    }
  }
  eligible.sort((a, b) =>
    (lsnToNumber(b.replayLsn) ?? 0) - (lsnToNumber(a.replayLsn) ?? 0) ||
    (lsnToNumber(b.receiveLsn) ?? 0) - (lsnToNumber(a.receiveLsn) ?? 0) ||
    rank(a.name) - rank(b.name)
  );
  const best = eligible[0];
  const rest = eligible.slice(1).map((n) => `${n.name} ${n.replayLsn}`);
  const tie = eligible.length > 1 && eligible[1].replayLsn === best.replayLsn;
  return {
    node: best.name,
    adopt: false,
    why: `${best.name} has the highest replay LSN ${best.replayLsn}` +
      (rest.length ? ` (${rest.join(", ")})` : "") +
      (tie ? `, and comes first in priority` : "") +
      (problems.length ? `; skipped: ${problems.join("; ")}` : ""),
  };
}

/**
 * The replica that serves reads while no primary takes writes: the reachable node in
 * recovery with the highest replay LSN (configuration order breaks ties), or null.
 */
export function readOnlyFallback(fresh: NodeSample[], oldPrimary: string): string | null {
  const readable = fresh.filter((n) => n.name !== oldPrimary && n.reachable && n.inRecovery);
  readable.sort((a, b) => (lsnToNumber(b.replayLsn) ?? 0) - (lsnToNumber(a.replayLsn) ?? 0));
  return readable[0]?.name ?? null;
}

/**
 * The one sentence of the degraded state, whichever path found it (the failed promotion
 * or a later re-check): `degraded: pg2 is down and no eligible replica: …; reads go to pg3,
 * writes are refused` (or `; no node serves reads or writes`).
 */
export function degradedSentence(
  primary: string,
  options: { why: string; readOnlyNode: string | null },
): string {
  return `degraded: ${primary} is down and ${options.why}; ` +
    (options.readOnlyNode
      ? `reads go to ${options.readOnlyNode}, writes are refused`
      : "no node serves reads or writes");
}

// ---------------------------------------------------------------------------------------
// Monitoring: repairs and alerts
// ---------------------------------------------------------------------------------------

/** Input of {@linkcode findRepair}. */
export interface RepairInput {
  /** The sample to look at. */
  sample: ReplicationSample;
  /** The published primary. */
  primary: Published;
  /** Synchronous mode wanted. */
  syncMode: boolean;
  /** Per node: no repair before this time. */
  backoff: Record<string, number>;
  /** Per node: re-points that did not make it stream. */
  repoints: Record<string, number>;
  /** Nodes this host stopped (a switchover, a failed rejoin), to start as standbys. */
  parked: string[];
  /**
   * Nodes a rejoin fenced but could not bring back (not this host's to act on): no rejoin
   * of one is proposed while the sample shows it writable and still fenced read-only.
   */
  awaitingOperator: string[];
}

/**
 * The most urgent repair the sample calls for, or null: a second writable node first
 * (fence and rejoin it; not one fenced already that waits for its operator), then a fenced
 * primary, parked nodes, stray replicas (re-point; rewind after two re-points that did not
 * help), then synchronous_standby_names.
 */
export function findRepair(input: RepairInput): Finding | null {
  const { sample, primary } = input;
  const p = sample.nodes.find((n) => n.name === primary.node);
  if (!p || !p.reachable || p.inRecovery !== false) return null;
  const ready = (name: string) => (input.backoff[name] ?? 0) <= sample.at;
  // Fenced by a rejoin that could go no further from here: its operator's to rewind.
  const awaiting = (n: NodeSample) => n.readOnlyFenced && input.awaitingOperator.includes(n.name);
  for (const n of sample.nodes) {
    if (
      n.name !== p.name && n.reachable && n.inRecovery === false && ready(n.name) && !awaiting(n)
    ) {
      return {
        kind: "rejoin",
        node: n.name,
        why:
          `${n.name} is up and writable but ${p.name} is the primary of epoch ${primary.epoch}: ` +
          `fencing ${n.name} and rejoining it as a replica`,
      };
    }
  }
  if (p.readOnlyFenced && ready(p.name)) {
    return {
      kind: "unfence",
      node: p.name,
      why: `${p.name} is the published primary but still fenced read-only: lifting the fence`,
    };
  }
  for (const name of input.parked) {
    const n = sample.nodes.find((m) => m.name === name);
    if (n && !n.reachable && ready(name)) {
      return {
        kind: "start_standby",
        node: name,
        why: `${name} was stopped by a switchover or a failed rejoin: starting it as a replica ` +
          `of ${p.name}`,
      };
    }
  }
  for (const n of sample.nodes) {
    if (n.name === p.name || !n.reachable || n.inRecovery !== true || n.streaming) continue;
    if (!ready(n.name)) continue;
    const tries = input.repoints[n.name] ?? 0;
    if (tries >= 2) {
      return {
        kind: "rejoin",
        node: n.name,
        why: `${n.name} still does not stream from ${p.name} after ${tries} re-points ` +
          `(timeline ${n.timeline ?? "?"}): rewinding it`,
      };
    }
    return {
      kind: "repoint_replica",
      node: n.name,
      why: `${n.name} is a replica but does not stream from ${p.name}` +
        (n.upstream ? ` (it follows ${n.upstream})` : "") + `: re-pointing it`,
    };
  }
  const wanted = input.syncMode
    ? sample.nodes.filter((n) => n.name !== p.name && n.streaming && n.reachable)
      .map((n) => n.name).sort()
    : [];
  const configured = [...(sample.sync?.names ?? [])].sort();
  if (wanted.join(",") !== configured.join(",") && ready(p.name)) {
    return {
      kind: "sync",
      node: p.name,
      standbys: wanted,
      why: wanted.length
        ? `synchronous standbys should be ${wanted.join(", ")} (streaming now), not ${
          configured.join(", ") || "none"
        }`
        : input.syncMode
        ? `no replica streams: clearing synchronous_standby_names so writes do not hang`
        : `synchronous mode is off: clearing synchronous_standby_names`,
    };
  }
  return null;
}

/** Alerts after a sample: which to raise and which resolved. */
export function updateAlerts(
  current: Record<string, LagAlert>,
  options: { sample: ReplicationSample; lagAlertBytes: number; lagAlertSeconds: number },
): { alerts: Record<string, LagAlert>; raised: LagAlert[]; resolved: LagAlert[] } {
  const next: Record<string, LagAlert> = {};
  const raised: LagAlert[] = [];
  const { sample } = options;
  for (const n of sample.nodes) {
    const checks: [LagAlert["kind"], string | null][] = [
      [
        "unreachable",
        n.reachable ? null : `${n.name} is unreachable${n.error ? `: ${n.error}` : ""}`,
      ],
      [
        "lag",
        n.role === "replica" &&
          ((n.lagBytes ?? 0) > options.lagAlertBytes ||
            (n.lagSeconds ?? 0) > options.lagAlertSeconds)
          ? `${n.name} lags ${formatBytes(n.lagBytes ?? 0)} / ${
            (n.lagSeconds ?? 0).toFixed(1)
          } s behind ${sample.primary} (alert above ${
            formatBytes(options.lagAlertBytes)
          } or ${options.lagAlertSeconds} s)`
          : null,
      ],
    ];
    for (const [kind, why] of checks) {
      const key = `${n.name}:${kind}`;
      if (!why) continue;
      if (current[key]) next[key] = { ...current[key], why };
      else {
        next[key] = { node: n.name, kind, since: sample.at, why };
        raised.push(next[key]);
      }
    }
  }
  const resolved = Object.entries(current).filter(([k]) => !next[k]).map(([, a]) => a);
  return { alerts: next, raised, resolved };
}
