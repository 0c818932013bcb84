/**
 * The failover statechart of one runtime instance, and the pure decisions it takes.
 *
 * Five parallel regions:
 * - `role`: follower or coordinator, from the `failover` lease (fed by `watchLease`).
 * - `detector`: healthy → suspect (a probe of the primary failed) → confirming (N
 *   consecutive failed probes AND a majority of the live instances agree) → promoting
 *   (best replica by replay LSN, then priority) → publishing (the new primary and its
 *   epoch go to Redis under the lease's fencing token, and to every instance) → healthy.
 *   Only the coordinator confirms, promotes and publishes; followers probe, vote and
 *   follow. Also `switchover` (planned, zero loss) and `degraded` (no eligible replica).
 * - `pool`: keeps this instance's database pool on the newest published primary.
 * - `monitor`: samples every node (role, LSNs, lag), raises lag alerts; on the coordinator
 *   it also repairs what the sample shows (rejoins a returned old primary, re-points a
 *   stray replica, keeps synchronous_standby_names right) in `maintaining`.
 *
 * Patroni-style, every decision is one sentence in `context.why` (and `context.decision`
 * for the ones an operator asked for), logged, stored and asserted by the tests.
 *
 * Effects are placeholders here; the real ones live in actors/failover/.
 * @module
 */
import { assign, fromCallback, fromPromise, setup } from "xstate";

// ---------------------------------------------------------------------------------------
// Data shapes shared with the effects
// ---------------------------------------------------------------------------------------

/** The primary as published in Redis: node, epoch, and a read-only fallback when degraded. */
export interface Published {
  /** Node name of the primary. */
  node: string;
  /** Epoch: grows with every promotion; instances never go back to an older one. */
  epoch: number;
  /** Degraded: a replica that serves reads while no primary takes writes, else null. */
  readOnlyNode: string | null;
}

/** Where this instance's pool points. */
export interface PoolTarget {
  /** Node name. */
  node: string;
  /** Epoch of the published primary the pool follows. */
  epoch: number;
  /** True when the pool points at a read-only replica (degraded). */
  readOnly: boolean;
}

/** synchronous_standby_names as configured on a primary. */
export interface SyncConfig {
  /** ANY (quorum) or FIRST (priority). */
  method: "ANY" | "FIRST";
  /** How many standbys must confirm. */
  num: number;
  /** Standby names (application_name = node name). */
  names: string[];
}

/** One node as one sampling saw it. */
export interface NodeSample {
  /** Node name (its cluster_name / application_name). */
  name: string;
  /** host:port. */
  address: string;
  /** Whether it answered. */
  reachable: boolean;
  /** primary, replica, or unknown when unreachable. */
  role: "primary" | "replica" | "unknown";
  /** primary, fenced, streaming, catchup, startup, stopped, unreachable, rogue … */
  state: string;
  /** False when unreachable, diverged, fenced or alerting. */
  healthy: boolean;
  /** pg_is_in_recovery(), or null when unreachable. */
  inRecovery: boolean | null;
  /** default_transaction_read_only is on (fenced by us). */
  readOnlyFenced: boolean;
  /** pg_current_wal_lsn() of a primary. */
  currentLsn: string | null;
  /** Replica: last WAL received and flushed. */
  receiveLsn: string | null;
  /** Replica: last WAL replayed. */
  replayLsn: string | null;
  /** From the primary's pg_stat_replication for this node. */
  sentLsn: string | null;
  /** From the primary's pg_stat_replication for this node. */
  writeLsn: string | null;
  /** From the primary's pg_stat_replication for this node. */
  flushLsn: string | null;
  /** Bytes the node's replay is behind the primary's current WAL position. */
  lagBytes: number | null;
  /** Replay lag in seconds (pg_stat_replication.replay_lag; 0 when caught up). */
  lagSeconds: number | null;
  /** sync, quorum, potential or async (from the primary's view). */
  syncState: string | null;
  /** Timeline the node is on (or receives). */
  timeline: number | null;
  /** Node (or address) it streams from. */
  upstream: string | null;
  /** Listed as streaming (or catching up) in the primary's pg_stat_replication. */
  streaming: boolean;
  /** The error when unreachable. */
  error: string | null;
  /** One sentence about the node. */
  why: string;
}

/** One sampling of every node. */
export interface ReplicationSample {
  /** Injected-clock time of the sample. */
  at: number;
  /** The primary the sample was taken against. */
  primary: string;
  /** Every node, in configuration order. */
  nodes: NodeSample[];
  /** synchronous_standby_names of the primary (null when unreachable or unset). */
  sync: SyncConfig | null;
}

/** A repair the coordinator should make. */
export type Finding =
  | { kind: "rejoin"; node: string; why: string }
  | { kind: "unfence"; node: string; why: string }
  | { kind: "start_standby"; node: string; why: string }
  | { kind: "repoint_replica"; node: string; why: string }
  | { kind: "sync"; node: string; standbys: string[]; why: string };

/** Output of the `probePrimary` effect. */
export interface ProbeOutput {
  /** The primary answered and is out of recovery. */
  ok: boolean;
  /** Why it failed, as a sentence fragment ("connection refused"). */
  error: string | null;
  /** Round trip in ms. */
  latencyMs: number;
  /** Injected-clock time of the probe. */
  at: number;
  /** Newest primary published in Redis (null: none, or Redis unreachable). */
  published: Published | null;
}

/** Output of the `collectVotes` effect. */
export interface VoteOutput {
  /** Instances (this one included) that see the primary down. */
  agree: number;
  /** Live instances (this one included). */
  live: number;
  /** Each answer. */
  votes: { instance: string; agree: boolean; why: string }[];
}

/** Output of the `promote` and `switchover` effects. */
export interface PromotionOutput {
  /** The node that is now writable. */
  node: string;
  /** Its LSN at promotion. */
  lsn: string | null;
  /** True when it was already promoted (by a coordinator that died) and is adopted. */
  adopted: boolean;
  /** Why this node. */
  why: string;
  /** A node this effect stopped (switchover), to restart as a standby. */
  parked: string | null;
}

/** Output of the `promote` effect when no replica may be promoted (an outcome, not an error). */
export interface NoPromotion {
  /** No node: nothing was promoted. */
  node: null;
  /** Why no replica qualifies ({@linkcode chooseCandidate}'s sentence). */
  choice: CandidateChoice;
  /** A replica that can serve reads meanwhile ({@linkcode readOnlyFallback}), or null. */
  readOnlyNode: string | null;
}

/** Output of the `reassess` effect: the degraded coordinator's look at the cluster. */
export interface Assessment {
  /** The primary answers again. */
  primaryOk: boolean;
  /** The replica that may be promoted now, or why none. */
  choice: CandidateChoice;
  /** A replica that can serve reads meanwhile, or null. */
  readOnlyNode: string | null;
}

/** Input of the `publish` effect. */
export interface PublishInput {
  /** What is published. */
  kind: "bootstrap" | "failover" | "switchover" | "degraded" | "recovered";
  /** New primary. */
  node: string;
  /** Previous primary. */
  oldPrimary: string;
  /** Proposed epoch (the effect may raise it past anything already published). */
  epoch: number;
  /** Read-only fallback (degraded) or null. */
  readOnlyNode: string | null;
  /** Fencing token of the failover lease. */
  token: number | null;
  /** Injected-clock time the failure was first seen (or the switchover asked). */
  startedAt: number | null;
  /** The decision's sentence. */
  why: string;
  /** Switchover request id, when an operator asked. */
  requestId: string | null;
}

/** Output of the `publish` effect. */
export interface PublishOutput {
  /** Published primary. */
  published: Published;
  /** Sentence for the record. */
  why: string;
}

/** A switchover an operator asked for. */
export interface SwitchoverRequest {
  /** Request id (the API waits for the decision with this id). */
  id: string;
  /** Target node, or null for the best replica. */
  target: string | null;
  /** Who asked. */
  requestedBy: string;
}

/** The last decision taken for someone who waits on it (switchover API). */
export interface Decision {
  /** Request id or null. */
  id: string | null;
  /** failover, switchover, degraded, rejoin … */
  kind: string;
  /** Whether it succeeded. */
  ok: boolean;
  /** The sentence. */
  why: string;
  /** Published primary after it. */
  primary: Published | null;
}

/** An active lag / health alert. */
export interface LagAlert {
  /** Node name. */
  node: string;
  /** lag or unreachable. */
  kind: "lag" | "unreachable";
  /** Injected-clock time it was raised. */
  since: number;
  /** Sentence. */
  why: string;
}

/** Events of the failover machine. */
export type FailoverEvent =
  | { type: "LEASE_ACQUIRED"; token: number }
  | { type: "LEASE_LOST"; why: string }
  | { type: "failover.primary"; node: string; epoch: number; readOnlyNode?: string | null }
  | { type: "SWITCHOVER"; id: string; target: string | null; requestedBy: string };

/** Input of {@linkcode failoverMachine}. */
export interface FailoverInput {
  /** This instance's id. */
  instanceId: string;
  /** Node names in priority order (earlier = preferred at equal LSN). */
  nodes: string[];
  /** The primary this instance follows at start. */
  primary: Published;
  /** Where the pool points at start. */
  pool: PoolTarget;
  /** Pause between probes of the primary. */
  probeIntervalMs?: number;
  /** A probe without an answer within this is a failed probe. */
  probeTimeoutMs?: number;
  /** Consecutive failed probes before the coordinator asks for votes. */
  confirmations?: number;
  /** Pause between samplings of every node. */
  monitorIntervalMs?: number;
  /** Upper bound of a vote round. */
  confirmTimeoutMs?: number;
  /** Lag above which an alert is raised (bytes). */
  lagAlertBytes?: number;
  /** Lag above which an alert is raised (seconds). */
  lagAlertSeconds?: number;
  /** Synchronous replication wanted (synchronous_standby_names kept to streaming replicas). */
  syncMode?: boolean;
  /** Async mode: a replica further behind than this at the last sample is not eligible. */
  maxLagBytes?: number;
  /** After a failed repair of a node, wait this long before trying it again. */
  maintenanceBackoffMs?: number;
  /** Pause before retrying a pool switch that failed. */
  poolRetryMs?: number;
}

/** Context of {@linkcode failoverMachine}. */
export interface FailoverContext {
  instanceId: string;
  nodes: string[];
  /** The primary this instance follows. */
  primary: Published;
  /** Where the pool points. */
  pool: PoolTarget;
  /** Fencing token while this instance holds the failover lease. */
  leader: number | null;
  probeIntervalMs: number;
  probeTimeoutMs: number;
  confirmations: number;
  monitorIntervalMs: number;
  confirmTimeoutMs: number;
  lagAlertBytes: number;
  lagAlertSeconds: number;
  syncMode: boolean;
  maxLagBytes: number;
  maintenanceBackoffMs: number;
  poolRetryMs: number;
  /** Consecutive failed probes of the current primary. */
  failures: number;
  /** The last probe. */
  lastProbe: { ok: boolean; error: string | null; latencyMs: number } | null;
  /** Time (from sample clocks) the first failed probe of this streak was seen. */
  suspectSince: number | null;
  /** The last vote round. */
  votes: VoteOutput | null;
  /** The last promotion. */
  promotion: PromotionOutput | null;
  /** The switchover being worked on. */
  switchover: SwitchoverRequest | null;
  /** The last sample of every node. */
  sample: ReplicationSample | null;
  /** The last sample taken while the primary answered (sync config, lags). */
  lastGoodSample: ReplicationSample | null;
  /** The repair being made. */
  finding: Finding | null;
  /** Per node: no repair before this sample time. */
  backoff: Record<string, number>;
  /** Per node: re-points that did not make it stream. */
  repoints: Record<string, number>;
  /** Nodes a switchover stopped, to be started as standbys. */
  parked: string[];
  /** Active alerts by `node:kind`. */
  alerts: Record<string, LagAlert>;
  /** The last decision (switchover API waits on `decision.id`). */
  decision: Decision | null;
  /** Why the degraded state holds. */
  degradedWhy: string | null;
  /** The degraded record this coordinator last published in this degraded spell (or null). */
  announced: Published | null;
  /** True while the detector is healthy: repairs run only then. */
  calm: boolean;
  /** One sentence saying why the machine is where it is. */
  why: string;
}

// ---------------------------------------------------------------------------------------
// Pure decisions
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

/** True when `agree` is a strict majority of `live` instances. */
export function isMajority(agree: number, live: number): boolean {
  return live > 0 && agree * 2 > live;
}

/** What {@linkcode chooseCandidate} decided. */
export interface CandidateChoice {
  /** The node to promote (or adopt), or null when none is eligible. */
  node: string | null;
  /** True when the node is already out of recovery (adopt, don't promote). */
  adopt: boolean;
  /** One sentence: why this node, or why none. */
  why: string;
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
  /** Nodes stopped by a switchover, to start as standbys. */
  parked: string[];
}

/**
 * The most urgent repair the sample calls for, or null: a second writable node first
 * (fence and rejoin it), then a fenced primary, parked nodes, stray replicas (re-point;
 * rewind after two re-points that did not help), then synchronous_standby_names.
 */
export function findRepair(input: RepairInput): Finding | null {
  const { sample, primary } = input;
  const p = sample.nodes.find((n) => n.name === primary.node);
  if (!p || !p.reachable || p.inRecovery !== false) return null;
  const ready = (name: string) => (input.backoff[name] ?? 0) <= sample.at;
  for (const n of sample.nodes) {
    if (n.name !== p.name && n.reachable && n.inRecovery === false && ready(n.name)) {
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
        why: `${name} was stopped by the switchover: starting it as a replica of ${p.name}`,
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

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

// ---------------------------------------------------------------------------------------
// The machine
// ---------------------------------------------------------------------------------------

/** The failover statechart of one instance. */
export const failoverMachine = setup({
  types: {
    context: {} as FailoverContext,
    input: {} as FailoverInput,
    events: {} as FailoverEvent,
  },
  actors: {
    /** Feeds LEASE_ACQUIRED / LEASE_LOST from the `failover` lease campaign. */
    watchLease: fromCallback<FailoverEvent>(() => () => {}),
    /** Probes the primary (and reads the published primary from Redis). */
    probePrimary: fromPromise<ProbeOutput, { primary: Published }>(() =>
      Promise.reject(new Error("probePrimary is not provided"))
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
    /** Degraded: looks again at the primary and the replicas. */
    reassess: fromPromise<Assessment, { primary: Published; last: ReplicationSample | null }>(() =>
      Promise.reject(new Error("reassess is not provided"))
    ),
    /** Switches this instance's pool to a node. */
    repointPool: fromPromise<PoolTarget, PoolTarget>(() =>
      Promise.reject(new Error("repointPool is not provided"))
    ),
    /** Samples every node; persists and publishes the status when coordinating. */
    sampleNodes: fromPromise<
      ReplicationSample,
      { primary: Published; leader: number | null; alerts: LagAlert[]; why: string }
    >(() => Promise.reject(new Error("sampleNodes is not provided"))),
    /** Makes one repair (rejoin, unfence, re-point a replica, sync standbys). */
    repair: fromPromise<
      { why: string },
      { finding: Finding; primary: Published; token: number | null }
    >(() => Promise.reject(new Error("repair is not provided"))),
  },
  actions: {
    /** Hands the running actor to the actor layer (routes and request handlers read it). */
    announceSelf: () => {},
    /** Failpoint hook after a promotion (tests kill the coordinator here). */
    afterPromotion: (_, _params: { node: string; adopted: boolean }) => {},
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
    /** Keeps the sample (and the last one taken while the primary answered); raises / resolves alerts. */
    recordSample: assign(({ context }, sample: ReplicationSample) => {
      const primary = sample.nodes.find((n) => n.name === context.primary.node);
      // Only a sample taken against the primary followed now: an older one pairs the old
      // primary's synchronous standbys and lags with the new primary.
      const current = sample.primary === context.primary.node;
      return {
        sample,
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
  },
  delays: {
    probeInterval: ({ context }) => context.probeIntervalMs,
    probeTimeout: ({ context }) => context.probeTimeoutMs,
    monitorInterval: ({ context }) => context.monitorIntervalMs,
    confirmTimeout: ({ context }) => context.confirmTimeoutMs,
    poolRetry: ({ context }) => context.poolRetryMs,
  },
  guards: {
    isLeader: ({ context }) => context.leader !== null,
    probeOk: (_, output: ProbeOutput) => output.ok,
    confirmedAsLeader: ({ context }) =>
      context.leader !== null && context.failures >= context.confirmations,
    needsBootstrap: ({ context }, output: ProbeOutput) =>
      output.ok && context.leader !== null && context.primary.epoch === 0 &&
      output.published === null,
    majority: (_, output: VoteOutput) => isMajority(output.agree, output.live),
    nothingPromoted: (_, output: { node: string | null }) => output.node === null,
    fallbackAnnounced: ({ context }, params: { readOnlyNode: string | null }) =>
      context.announced !== null && context.announced.epoch === context.primary.epoch &&
      context.announced.readOnlyNode === params.readOnlyNode,
    newerPrimary: ({ context }, params: { published: Published | null }) => {
      const p = params.published;
      if (!p) return false;
      return p.epoch > context.primary.epoch ||
        (p.epoch === context.primary.epoch && p.node === context.primary.node &&
          p.readOnlyNode !== context.primary.readOnlyNode);
    },
    poolBehind: ({ context }) => {
      const want = context.primary.readOnlyNode ?? context.primary.node;
      return context.pool.node !== want || context.pool.epoch < context.primary.epoch ||
        context.pool.readOnly !== (context.primary.readOnlyNode !== null);
    },
    // A sample taken against an earlier primary (the switch happened while it ran) says
    // nothing reliable about the cluster around the new one: it is never acted on.
    shouldRepair: ({ context }, sample: ReplicationSample) =>
      context.leader !== null && context.calm && sample.primary === context.primary.node &&
      findRepair({
          sample,
          primary: context.primary,
          syncMode: context.syncMode,
          backoff: context.backoff,
          repoints: context.repoints,
          parked: context.parked,
        }) !== null,
    bootstrapping: ({ context }) =>
      context.primary.epoch === 0 && !context.switchover &&
      context.promotion?.node === context.primary.node,
    ownPublication: ({ context }, params: { node: string }) =>
      context.promotion?.node === params.node,
    sameEpoch: ({ context }, params: { node: string; epoch: number }) =>
      params.node === context.primary.node && params.epoch === context.primary.epoch,
    primaryBack: (_, output: { primaryOk: boolean }) => output.primaryOk,
    candidateFound: (_, output: { choice: CandidateChoice }) => output.choice.node !== null,
  },
}).createMachine({
  id: "failover",
  type: "parallel",
  context: ({ input }) => ({
    instanceId: input.instanceId,
    nodes: input.nodes,
    primary: input.primary,
    pool: input.pool,
    leader: null,
    probeIntervalMs: input.probeIntervalMs ?? 500,
    probeTimeoutMs: input.probeTimeoutMs ?? 1000,
    confirmations: input.confirmations ?? 3,
    monitorIntervalMs: input.monitorIntervalMs ?? 1000,
    confirmTimeoutMs: input.confirmTimeoutMs ?? 5000,
    lagAlertBytes: input.lagAlertBytes ?? 16 * 1024 * 1024,
    lagAlertSeconds: input.lagAlertSeconds ?? 10,
    syncMode: input.syncMode ?? true,
    maxLagBytes: input.maxLagBytes ?? 16 * 1024 * 1024,
    maintenanceBackoffMs: input.maintenanceBackoffMs ?? 10_000,
    poolRetryMs: input.poolRetryMs ?? 500,
    failures: 0,
    lastProbe: null,
    suspectSince: null,
    votes: null,
    promotion: null,
    switchover: null,
    sample: null,
    lastGoodSample: null,
    finding: null,
    backoff: {},
    repoints: {},
    parked: [],
    alerts: {},
    decision: null,
    degradedWhy: null,
    announced: null,
    calm: true,
    why: `following ${input.primary.node} (epoch ${input.primary.epoch})`,
  }),
  entry: "announceSelf",
  invoke: { src: "watchLease" },
  // A newer primary published by any coordinator wins, whatever this instance was doing.
  on: {
    SWITCHOVER: {
      actions: assign(({ event, context }) => ({
        decision: {
          id: event.id,
          kind: "switchover",
          ok: false,
          why: `refused the switchover: a failover decision is under way (${context.why})`,
          primary: context.primary,
        },
      })),
    },
    "failover.primary": {
      guard: {
        type: "newerPrimary",
        params: ({ event }) => ({
          published: {
            node: event.node,
            epoch: event.epoch,
            readOnlyNode: event.readOnlyNode ?? null,
          },
        }),
      },
      target: ".detector.healthy",
      actions: assign(({ event, context }) => ({
        primary: { node: event.node, epoch: event.epoch, readOnlyNode: event.readOnlyNode ?? null },
        failures: 0,
        suspectSince: null,
        why: event.readOnlyNode
          ? `degraded: ${event.node} (epoch ${event.epoch}) takes no writes; reads go to ${event.readOnlyNode}`
          : `following ${event.node} (epoch ${event.epoch}), announced by the coordinator` +
            (event.node !== context.primary.node ? ` instead of ${context.primary.node}` : ""),
      })),
    },
  },
  states: {
    role: {
      initial: "follower",
      states: {
        follower: {
          on: {
            LEASE_ACQUIRED: {
              target: "coordinator",
              actions: assign({
                leader: ({ event }) => event.token,
                why: ({ event }) =>
                  `became the failover coordinator with fencing token ${event.token}`,
              }),
            },
          },
        },
        coordinator: {
          on: {
            LEASE_ACQUIRED: { actions: assign({ leader: ({ event }) => event.token }) },
            LEASE_LOST: {
              target: "follower",
              actions: assign({
                leader: null,
                why: ({ event }) => `no longer the failover coordinator: ${event.why}`,
              }),
            },
          },
        },
      },
    },

    detector: {
      initial: "healthy",
      states: {
        healthy: {
          initial: "waiting",
          entry: assign({ failures: 0, suspectSince: null, calm: true }),
          exit: assign({ calm: false }),
          on: {
            SWITCHOVER: [
              {
                guard: "isLeader",
                target: "switchover",
                actions: assign({
                  switchover: ({ event }) => ({
                    id: event.id,
                    target: event.target,
                    requestedBy: event.requestedBy,
                  }),
                  why: ({ event }) =>
                    `switchover to ${
                      event.target ?? "the best replica"
                    } requested by ${event.requestedBy}`,
                }),
              },
              {
                actions: assign({
                  decision: ({ event, context }) => ({
                    id: event.id,
                    kind: "switchover",
                    ok: false,
                    why: "refused the switchover: this instance is not the failover coordinator",
                    primary: context.primary,
                  }),
                }),
              },
            ],
          },
          states: {
            waiting: { after: { probeInterval: "probing" } },
            probing: {
              invoke: {
                src: "probePrimary",
                input: ({ context }) => ({ primary: context.primary }),
                onDone: [
                  {
                    guard: {
                      type: "newerPrimary",
                      params: ({ event }) => ({ published: event.output.published }),
                    },
                    target: "waiting",
                    actions: assign(({ event }) => ({
                      primary: event.output.published!,
                      failures: 0,
                      why: `following ${event.output.published!.node} (epoch ${
                        event.output.published!.epoch
                      }), read from Redis`,
                    })),
                  },
                  {
                    guard: { type: "needsBootstrap", params: ({ event }) => event.output },
                    target: "#failover.detector.publishing",
                    actions: assign(({ context, event }) => ({
                      lastProbe: {
                        ok: true,
                        error: null,
                        latencyMs: event.output.latencyMs,
                      },
                      promotion: {
                        node: context.primary.node,
                        lsn: null,
                        adopted: true,
                        why: `${context.primary.node} is the primary and nothing is published yet`,
                        parked: null,
                      },
                      switchover: null,
                      why:
                        `bootstrap: publishing ${context.primary.node} as the primary (epoch 1 or later)`,
                    })),
                  },
                  {
                    guard: { type: "probeOk", params: ({ event }) => event.output },
                    target: "waiting",
                    actions: assign({
                      lastProbe: ({ event }) => ({
                        ok: true,
                        error: null,
                        latencyMs: event.output.latencyMs,
                      }),
                    }),
                  },
                  {
                    target: "#failover.detector.suspect",
                    actions: assign(({ context, event }) => ({
                      failures: 1,
                      suspectSince: event.output.at,
                      lastProbe: {
                        ok: false,
                        error: event.output.error,
                        latencyMs: event.output.latencyMs,
                      },
                      why: `suspect: a probe of ${context.primary.node} failed (${
                        event.output.error ?? "no answer"
                      })`,
                    })),
                  },
                ],
                onError: {
                  target: "#failover.detector.suspect",
                  actions: assign(({ context, event }) => ({
                    failures: 1,
                    lastProbe: { ok: false, error: errorText(event.error), latencyMs: -1 },
                    why: `suspect: a probe of ${context.primary.node} failed (${
                      errorText(event.error)
                    })`,
                  })),
                },
              },
              after: {
                probeTimeout: {
                  target: "#failover.detector.suspect",
                  actions: assign(({ context }) => ({
                    failures: 1,
                    lastProbe: {
                      ok: false,
                      error: `no answer within ${context.probeTimeoutMs} ms`,
                      latencyMs: context.probeTimeoutMs,
                    },
                    why:
                      `suspect: ${context.primary.node} gave no answer within ${context.probeTimeoutMs} ms`,
                  })),
                },
              },
            },
          },
        },

        suspect: {
          initial: "waiting",
          states: {
            waiting: {
              always: { guard: "confirmedAsLeader", target: "#failover.detector.confirming" },
              after: { probeInterval: "probing" },
            },
            probing: {
              invoke: {
                src: "probePrimary",
                input: ({ context }) => ({ primary: context.primary }),
                onDone: [
                  {
                    guard: {
                      type: "newerPrimary",
                      params: ({ event }) => ({ published: event.output.published }),
                    },
                    target: "#failover.detector.healthy",
                    actions: assign(({ event }) => ({
                      primary: event.output.published!,
                      why: `following ${event.output.published!.node} (epoch ${
                        event.output.published!.epoch
                      }), read from Redis`,
                    })),
                  },
                  {
                    guard: { type: "probeOk", params: ({ event }) => event.output },
                    target: "#failover.detector.healthy",
                    actions: assign(({ context, event }) => ({
                      lastProbe: { ok: true, error: null, latencyMs: event.output.latencyMs },
                      why:
                        `${context.primary.node} answered again after ${context.failures} failed ` +
                        `probe${context.failures === 1 ? "" : "s"}: not failing over`,
                    })),
                  },
                  {
                    target: "waiting",
                    actions: assign(({ context, event }) => ({
                      failures: context.failures + 1,
                      lastProbe: {
                        ok: false,
                        error: event.output.error,
                        latencyMs: event.output.latencyMs,
                      },
                      why:
                        `suspect: ${
                          context.failures + 1
                        } consecutive probes of ${context.primary.node} ` +
                        `failed (${event.output.error ?? "no answer"})`,
                    })),
                  },
                ],
                onError: {
                  target: "waiting",
                  actions: assign(({ context, event }) => ({
                    failures: context.failures + 1,
                    lastProbe: { ok: false, error: errorText(event.error), latencyMs: -1 },
                    why:
                      `suspect: ${
                        context.failures + 1
                      } consecutive probes of ${context.primary.node} ` +
                      `failed (${errorText(event.error)})`,
                  })),
                },
              },
              after: {
                probeTimeout: {
                  target: "waiting",
                  actions: assign(({ context }) => ({
                    failures: context.failures + 1,
                    lastProbe: {
                      ok: false,
                      error: `no answer within ${context.probeTimeoutMs} ms`,
                      latencyMs: context.probeTimeoutMs,
                    },
                    why:
                      `suspect: ${
                        context.failures + 1
                      } consecutive probes of ${context.primary.node} ` +
                      `failed (no answer within ${context.probeTimeoutMs} ms)`,
                  })),
                },
              },
            },
          },
        },

        confirming: {
          invoke: {
            src: "collectVotes",
            input: ({ context }) => ({ primary: context.primary, failures: context.failures }),
            onDone: [
              {
                guard: { type: "majority", params: ({ event }) => event.output },
                target: "promoting",
                actions: assign(({ context, event }) => ({
                  votes: event.output,
                  why: `${context.primary.node} failed ${context.failures} consecutive probes ` +
                    `(last: ${
                      context.lastProbe?.error ?? "no answer"
                    }) and ${event.output.agree} of ` +
                    `${event.output.live} live instances agree: failing over`,
                })),
              },
              {
                target: "suspect",
                actions: assign(({ context, event }) => ({
                  votes: event.output,
                  failures: 0,
                  why:
                    `not failing over: only ${event.output.agree} of ${event.output.live} live ` +
                    `instances see ${context.primary.node} down (${
                      event.output.votes.filter((v) => !v.agree).map((v) =>
                        `${v.instance}: ${v.why}`
                      ).join("; ") || "no majority"
                    })`,
                })),
              },
            ],
            onError: {
              target: "suspect",
              actions: assign(({ event }) => ({
                failures: 0,
                why: `not failing over: the vote failed: ${errorText(event.error)}`,
              })),
            },
          },
          after: {
            confirmTimeout: {
              target: "suspect",
              actions: assign(({ context }) => ({
                failures: 0,
                why: `not failing over: the vote took longer than ${context.confirmTimeoutMs} ms`,
              })),
            },
          },
          on: {
            LEASE_LOST: {
              target: "suspect",
              actions: assign({ why: "stopped confirming: lost the failover lease" }),
            },
          },
        },

        promoting: {
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
                  assign(({ context, event }) => {
                    const output = event.output as PromotionOutput;
                    return {
                      promotion: output,
                      switchover: null,
                      degradedWhy: null,
                      why: `${context.why}; ` +
                        (output.adopted
                          ? `${output.why}: publishing it instead of ${context.primary.node}`
                          : `promoted ${output.node} because ${output.why}`),
                    };
                  }),
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
              actions: assign(({ event }) => ({
                failures: 0,
                why: `promotion failed, will decide again: ${errorText(event.error)}`,
              })),
            },
          },
          on: {
            LEASE_LOST: {
              target: "suspect",
              actions: assign({
                why: "stopped promoting: lost the failover lease; the next coordinator finishes",
              }),
            },
          },
        },

        switchover: {
          invoke: {
            src: "switchover",
            input: ({ context }) => ({
              primary: context.primary,
              token: context.leader,
              request: context.switchover!,
            }),
            onDone: {
              target: "publishing",
              actions: assign(({ context, event }) => ({
                promotion: event.output,
                parked: event.output.parked
                  ? [
                    ...context.parked.filter((n) => n !== event.output.parked),
                    event.output.parked,
                  ]
                  : context.parked,
                why: `switched over to ${event.output.node}: ${event.output.why}`,
              })),
            },
            onError: {
              target: "healthy",
              actions: assign(({ context, event }) => ({
                decision: {
                  id: context.switchover?.id ?? null,
                  kind: "switchover",
                  ok: false,
                  why: `switchover refused: ${errorText(event.error)}`,
                  primary: context.primary,
                },
                switchover: null,
                why: `switchover refused: ${errorText(event.error)}`,
              })),
            },
          },
          on: {
            LEASE_LOST: {
              target: "suspect",
              actions: assign({ why: "stopped the switchover: lost the failover lease" }),
            },
          },
        },

        publishing: {
          invoke: {
            src: "publish",
            input: ({ context }) => ({
              kind: context.switchover
                ? "switchover" as const
                : context.primary.epoch === 0 && context.promotion?.node === context.primary.node
                ? "bootstrap" as const
                : "failover" as const,
              node: context.promotion!.node,
              oldPrimary: context.primary.node,
              epoch: context.primary.epoch + 1,
              readOnlyNode: null,
              token: context.leader,
              startedAt: context.suspectSince,
              why: context.why,
              requestId: context.switchover?.id ?? null,
            }),
            onDone: {
              target: "healthy",
              actions: assign(({ context, event }) => ({
                primary: event.output.published,
                decision: {
                  id: context.switchover?.id ?? null,
                  kind: context.switchover ? "switchover" : "failover",
                  ok: true,
                  why: event.output.why,
                  primary: event.output.published,
                },
                switchover: null,
                degradedWhy: null,
                why: event.output.why,
              })),
            },
            onError: [
              {
                guard: "bootstrapping",
                target: "healthy",
                actions: assign(({ event }) => ({
                  why: `bootstrap: publishing the primary failed, will retry: ${
                    errorText(event.error)
                  }`,
                })),
              },
              {
                target: "suspect",
                actions: assign(({ context, event }) => ({
                  decision: context.switchover
                    ? {
                      id: context.switchover.id,
                      kind: "switchover",
                      ok: false,
                      why: `publishing failed: ${errorText(event.error)}`,
                      primary: context.primary,
                    }
                    : context.decision,
                  switchover: null,
                  failures: 0,
                  why: `publishing ${context.promotion?.node} failed, will decide again: ${
                    errorText(event.error)
                  }`,
                })),
              },
            ],
          },
          on: {
            LEASE_LOST: {
              target: "suspect",
              actions: assign({
                why: "stopped publishing: lost the failover lease; the next coordinator finishes",
              }),
            },
            // The echo of our own broadcast may arrive before the effect returns: wait for it.
            "failover.primary": {
              guard: {
                type: "ownPublication",
                params: ({ event }) => ({ node: event.node }),
              },
            },
          },
        },

        degraded: {
          initial: "announcing",
          // A new degraded spell: nothing of it is published yet.
          entry: assign({ announced: null }),
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
                  actions: assign({ announced: ({ event }) => event.output.published }),
                },
                // Not announced: the next re-check tries again (the guard below sees it).
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
                }),
                onDone: [
                  {
                    guard: { type: "primaryBack", params: ({ event }) => event.output },
                    target: "#failover.detector.healthy",
                    actions: assign(({ context }) => {
                      const primary = { ...context.primary, readOnlyNode: null };
                      const why = `${context.primary.node} is back: leaving degraded mode`;
                      return {
                        degradedWhy: null,
                        primary,
                        decision: { id: null, kind: "recovered", ok: true, why, primary },
                        why,
                      };
                    }),
                  },
                  {
                    guard: { type: "candidateFound", params: ({ event }) => event.output },
                    target: "#failover.detector.confirming",
                    actions: assign(({ event }) => ({
                      why:
                        `a replica became eligible (${event.output.choice.why}): confirming again`,
                    })),
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
            LEASE_LOST: {
              target: "suspect",
              actions: assign({ why: "no longer coordinating while degraded: lost the lease" }),
            },
            // Our own read-only announcement (same epoch) must not end the degraded state.
            "failover.primary": {
              guard: {
                type: "sameEpoch",
                params: ({ event }) => ({ node: event.node, epoch: event.epoch }),
              },
            },
          },
        },
      },
    },

    pool: {
      initial: "current",
      states: {
        current: {
          always: { guard: "poolBehind", target: "switching" },
        },
        switching: {
          invoke: {
            src: "repointPool",
            input: ({ context }) => ({
              node: context.primary.readOnlyNode ?? context.primary.node,
              epoch: context.primary.epoch,
              readOnly: context.primary.readOnlyNode !== null,
            }),
            onDone: {
              target: "current",
              actions: assign({ pool: ({ event }) => event.output }),
            },
            onError: {
              target: "retrying",
              actions: assign(({ context, event }) => ({
                why: `cannot re-point the pool to ${
                  context.primary.readOnlyNode ?? context.primary.node
                } yet, retrying: ${errorText(event.error)}`,
              })),
            },
          },
        },
        retrying: {
          after: { poolRetry: "current" },
        },
      },
    },

    monitor: {
      initial: "waiting",
      states: {
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
            onDone: [
              {
                guard: { type: "shouldRepair", params: ({ event }) => event.output },
                target: "maintaining",
                actions: [
                  { type: "recordSample", params: ({ event }) => event.output },
                  assign(({ context, event }) => {
                    const finding = findRepair({
                      sample: event.output,
                      primary: context.primary,
                      syncMode: context.syncMode,
                      backoff: context.backoff,
                      repoints: context.repoints,
                      parked: context.parked,
                    })!;
                    return { finding, why: finding.why };
                  }),
                ],
              },
              {
                target: "waiting",
                actions: { type: "recordSample", params: ({ event }) => event.output },
              },
            ],
            onError: { target: "waiting" },
          },
        },
        maintaining: {
          invoke: {
            src: "repair",
            input: ({ context }) => ({
              finding: context.finding!,
              primary: context.primary,
              token: context.leader,
            }),
            onDone: {
              target: "waiting",
              actions: assign(({ context, event }) => {
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
                    ? {
                      id: null,
                      kind: "rejoin",
                      ok: true,
                      why: event.output.why,
                      primary: context.primary,
                    }
                    : context.decision,
                  finding: null,
                  why: event.output.why,
                };
              }),
            },
            onError: {
              target: "waiting",
              actions: assign(({ context, event }) => {
                const f = context.finding!;
                const why = `${f.kind.replace("_", " ")} of ${f.node} failed, retrying in ${
                  Math.round(context.maintenanceBackoffMs / 1000)
                } s: ${errorText(event.error)}`;
                return {
                  backoff: {
                    ...context.backoff,
                    [f.node]: (context.sample?.at ?? 0) + context.maintenanceBackoffMs,
                  },
                  decision: f.kind === "rejoin"
                    ? { id: null, kind: "rejoin", ok: false, why, primary: context.primary }
                    : context.decision,
                  finding: null,
                  why,
                };
              }),
            },
          },
        },
      },
    },
  },
});
