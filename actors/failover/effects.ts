/**
 * The real effects of machines/failover/: reading where to start, probing and sampling the
 * PostgreSQL nodes, votes over the cluster transport, promotion and switchover under the
 * failover lease's fencing token, publication of the primary and its epoch in Redis,
 * re-pointing the pool, the coordinator's repairs, and the alerts and query waits the chart
 * asks for. Each effect gets what the chart decided as input and answers with its output;
 * none keeps state of its own. Each reads as a script of named steps; time comes from
 * `deps.now`.
 * @module
 */
import { dirname } from "node:path";
import { type AnyActorRef, fromCallback, fromPromise } from "xstate";
import { isConnectionLost } from "../../lib/db_errors.ts";
import { describeError, RuntimeError } from "../../lib/errors.ts";
import type { Logger } from "../../lib/log.ts";
import type { Database } from "../../store/database.ts";
import type { MessageBus } from "../../store/bus.ts";
import {
  FAILOVER_LEASE_ROLE,
  type FailoverStore,
  type PublishedRecord,
} from "../../store/redis_failover.ts";
import {
  alterSystem,
  ensureSlot,
  fenceNode,
  insertFailoverRecord,
  isInRecovery,
  maxRecordedEpoch,
  type NodeIdentity,
  type NodeState,
  promoteNode,
  readNodeIdentity,
  readNodeState,
  readReplicationRows,
  type ReplicationRow,
  terminateClients,
  unfenceNode,
  upsertReplicationStatus,
} from "../../store/replication.ts";
import {
  type Assessment,
  type CandidateChoice,
  CERTAIN_OBSERVERS,
  chooseCandidate,
  type Evidence,
  type FailoverContext,
  type FailoverEvent,
  failoverMachine,
  type Finding,
  formatSyncStandbys,
  type LagAlert,
  lsnToNumber,
  type NodeSample,
  type NoPromotion,
  type Observation,
  parseSyncStandbys,
  type PoolTarget,
  type ProbeOutput,
  type PromotionOutput,
  type Published,
  type PublishInput,
  type PublishOutput,
  readOnlyFallback,
  type ReassertInput,
  type ReceiverState,
  type RepairOutput,
  type ReplicationSample,
  type StartFacts,
  type SwitchoverRequest,
  voteFromState,
  type VoteOutput,
} from "../../machines/failover/mod.ts";
import type { LeaseManager } from "../runtime/leases.ts";
import type { Membership } from "../runtime/membership.ts";
import type { Transport } from "../runtime/types.ts";
import { conninfoOf, type NodeClient, nodeForUrl, shortError, slotName } from "./nodes.ts";
import { pgCtlStart, pgCtlStop, type PgTools } from "../../store/pg_tools.ts";
import { leftStopped, localPostmaster, notOurs, rejoinNode, startParkedNode } from "./rejoin.ts";
import type { FailoverSettings } from "./settings.ts";

/** The lease role whose holder takes failover decisions. */
export const FAILOVER_ROLE = FAILOVER_LEASE_ROLE;

/** A lease event source the `watchLease` actor subscribes to. */
export interface LeaseFeed {
  /** The current token, or null when not held. */
  token(): number | null;
  /** Registers a listener; returns the unsubscribe. */
  listen(fn: (event: FailoverEvent) => void): () => void;
}

/** Everything the effects need. */
export interface FailoverDeps {
  /** This instance's id. */
  instanceId: string;
  /** Validated settings. */
  settings: FailoverSettings;
  /** Connections to every node, by name. */
  nodes: Map<string, NodeClient>;
  /** The runtime's database handle (re-pointed by `repointPool`). */
  db: Database;
  /** The published primary in Redis (store/redis_failover.ts), or null for a single instance. */
  published: FailoverStore | null;
  /** Cluster messages. */
  transport: Transport;
  /** Pub/sub bus (replication alerts go out on it). */
  bus: Pick<MessageBus, "publish">;
  /** Leases, or null for a single instance. */
  leases: LeaseManager | null;
  /** Live members, or null for a single instance. */
  membership: Membership | null;
  /** The failover lease. */
  lease: LeaseFeed;
  /** Logger. */
  log: Logger;
  /** The clock: every time and duration the effects report comes from it. */
  now: () => number;
  /** The PostgreSQL programs (pg_ctl, pg_rewind, pg_controldata). */
  tools: PgTools;
  /** Where each node ran when last seen (for fencing and rejoins on this host). */
  identities: Map<string, NodeIdentity>;
  /** The running failover actor, once started. */
  actor(): AnyActorRef | undefined;
}

/** Reads the published primary from Redis; null when none or Redis does not answer. */
export async function readPublished(
  deps: Pick<FailoverDeps, "published">,
  timeoutMs = 500,
): Promise<PublishedRecord | null> {
  return deps.published ? await deps.published.readPrimary(timeoutMs) : null;
}

function node(deps: FailoverDeps, name: string): NodeClient {
  const n = deps.nodes.get(name);
  if (!n) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Unknown node ${name}: it is not in DATABASE_NODES`,
    );
  }
  return n;
}

/** Runs `fn` only while `token` is the failover lease's current token (no-op check without Redis). */
async function fenced<T>(
  deps: FailoverDeps,
  token: number | null,
  fn: () => Promise<T>,
): Promise<T> {
  if (!deps.leases || token === null || token === 0) return await fn();
  return await deps.leases.fenced({ role: FAILOVER_ROLE, token }, fn);
}

// ---------------------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------------------

/**
 * What the chart needs to decide where to start: the primary published in Redis (1 s to
 * answer) and where the runtime's pool points now (the runtime opened it on the published
 * primary when it could, else on DATABASE_URL).
 */
export async function readStart(deps: FailoverDeps): Promise<StartFacts> {
  const record = await readPublished(deps, 1000);
  const poolNode = nodeForUrl([...deps.nodes.values()].map((n) => n.setting), deps.db.describe);
  return {
    published: record
      ? { node: record.node, epoch: record.epoch, readOnlyNode: record.readOnlyNode }
      : null,
    pool: poolNode
      ? { node: poolNode.name, epoch: deps.db.epoch, readOnly: deps.db.readOnly }
      : null,
  };
}

// ---------------------------------------------------------------------------------------
// Probes and samples
// ---------------------------------------------------------------------------------------

/** True when `err` is a refused TCP connection (the host answered, nothing listens). */
export function isRefused(err: unknown): boolean {
  return (err as { code?: unknown } | null)?.code === "ECONNREFUSED";
}

/** A connection the server (or the network) closed: lost, not refused, not timed out. */
function closedByServer(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return isConnectionLost(err) && code !== "CONNECT_TIMEOUT" && code !== "ETIMEDOUT";
}

/**
 * One probe of `name`: answers and is out of recovery; `refused` when ECONNREFUSED. The probe
 * connection is kept between probes; when the server closed it (a crashed postmaster's
 * backends die with it, an administrator terminated it) the probe looks once more on a fresh
 * connection, within the same timeout: a kept connection's loss says nothing about the
 * server now, a fresh connection's answer does (a dead server refuses it, which is what the
 * fast path's evidence asks for; a live one answers). A stalled server loses no connection:
 * its probe times out as before.
 */
export async function probeNode(
  deps: FailoverDeps,
  name: string,
  timeoutMs: number,
): Promise<{ ok: boolean; error: string | null; latencyMs: number; refused: boolean }> {
  const t0 = deps.now();
  const probe = (ms: number) =>
    node(deps, name).probe((sql) => isInRecovery(sql), { timeoutMs: ms });
  try {
    let recovery: boolean;
    try {
      recovery = await probe(timeoutMs);
    } catch (err) {
      const left = timeoutMs - (deps.now() - t0);
      // The lost connection's pool was dropped (NodeClient): this one connects afresh. A
      // timeout is no loss: it is what a stalled server gives, and stays one failed probe.
      if (!closedByServer(err) || left < 1) throw err;
      recovery = await probe(left);
    }
    const latencyMs = Math.round(deps.now() - t0);
    if (recovery) {
      return { ok: false, error: `${name} answers but is in recovery`, latencyMs, refused: false };
    }
    return { ok: true, error: null, latencyMs, refused: false };
  } catch (err) {
    return {
      ok: false,
      error: shortError(err),
      latencyMs: Math.round(deps.now() - t0),
      refused: isRefused(err),
    };
  }
}

interface Look {
  name: string;
  state: NodeState | null;
  rows: ReplicationRow[];
  error: string | null;
}

async function look(deps: FailoverDeps, name: string, timeoutMs: number): Promise<Look> {
  const client = node(deps, name);
  try {
    const state = await client.run(readNodeState, { timeoutMs, what: "state" });
    const rows = state.inRecovery
      ? []
      : await client.run(readReplicationRows, { timeoutMs, what: "pg_stat_replication" });
    return { name, state, rows, error: null };
  } catch (err) {
    return { name, state: null, rows: [], error: shortError(err) };
  }
}

/** Builds node samples from raw looks, against `primary`. */
function toSamples(deps: FailoverDeps, looks: Look[], primary: string): NodeSample[] {
  const p = looks.find((l) => l.name === primary);
  const byAddress = new Map(
    [...deps.nodes.values()].map((n) => [n.setting.address, n.setting.name]),
  );
  return looks.map((l): NodeSample => {
    const setting = node(deps, l.name).setting;
    const base = {
      name: l.name,
      address: setting.address,
      readOnlyFenced: l.state?.readOnly ?? false,
      sentLsn: null,
      writeLsn: null,
      flushLsn: null,
      syncState: null,
      upstream: null,
      streaming: false,
      error: l.error,
    };
    if (!l.state) {
      return {
        ...base,
        reachable: false,
        role: "unknown",
        state: "unreachable",
        healthy: false,
        inRecovery: null,
        currentLsn: null,
        receiveLsn: null,
        replayLsn: null,
        lagBytes: null,
        lagSeconds: null,
        timeline: null,
        why: `${l.name} is unreachable: ${l.error}`,
      };
    }
    const s = l.state;
    if (!s.inRecovery) {
      const isPrimary = l.name === primary;
      return {
        ...base,
        reachable: true,
        role: "primary",
        state: s.readOnly ? "fenced" : isPrimary ? "primary" : "rogue",
        healthy: isPrimary && !s.readOnly,
        inRecovery: false,
        currentLsn: s.currentLsn,
        receiveLsn: null,
        replayLsn: null,
        lagBytes: null,
        lagSeconds: null,
        timeline: s.timeline,
        why: isPrimary
          ? `${l.name} is the primary at ${s.currentLsn} on timeline ${s.timeline}` +
            (s.readOnly ? ", fenced read-only" : "")
          : s.readOnly
          ? `${l.name} is out of recovery but fenced read-only: not the published primary`
          : `${l.name} is writable but not the published primary`,
      };
    }
    const row = p?.rows.find((r) => r.applicationName === l.name);
    const upstream = s.sender ? byAddress.get(s.sender) ?? s.sender : null;
    const streaming = !!row && (row.state === "streaming" || row.state === "catchup");
    let lagBytes = row?.lagBytes ?? null;
    if (lagBytes === null && p?.state?.currentLsn && s.replayLsn) {
      const a = lsnToNumber(p.state.currentLsn);
      const b = lsnToNumber(s.replayLsn);
      lagBytes = a !== null && b !== null ? Math.max(0, a - b) : null;
    }
    const lagSeconds = row ? row.lagSeconds ?? 0 : null;
    const state = row?.state ?? (s.receiverStatus ? `receiver ${s.receiverStatus}` : "detached");
    return {
      ...base,
      reachable: true,
      role: "replica",
      state,
      healthy: streaming,
      inRecovery: true,
      currentLsn: null,
      receiveLsn: s.receiveLsn,
      replayLsn: s.replayLsn,
      sentLsn: row?.sentLsn ?? null,
      writeLsn: row?.writeLsn ?? null,
      flushLsn: row?.flushLsn ?? null,
      lagBytes,
      lagSeconds,
      syncState: row?.syncState ?? null,
      timeline: s.timeline,
      upstream,
      streaming,
      why: streaming
        ? `${l.name} streams from ${primary} (${row!.syncState}), ${lagBytes ?? "?"} bytes behind`
        : `${l.name} is in recovery but not streaming from ${primary}` +
          (upstream ? ` (its upstream is ${upstream})` : ""),
    };
  });
}

/** Samples every node against `primary`. */
export async function sampleCluster(
  deps: FailoverDeps,
  primary: string,
  timeoutMs: number,
): Promise<ReplicationSample> {
  const at = deps.now();
  const looks = await Promise.all([...deps.nodes.keys()].map((n) => look(deps, n, timeoutMs)));
  const p = looks.find((l) => l.name === primary);
  return {
    at,
    primary,
    nodes: toSamples(deps, looks, primary),
    sync: p?.state && !p.state.inRecovery ? parseSyncStandbys(p.state.syncStandbyNames) : null,
  };
}

/** Remembers where each reachable node runs (for fencing and rejoins from this host). */
async function refreshIdentities(deps: FailoverDeps, sample: ReplicationSample): Promise<void> {
  await Promise.all(
    sample.nodes.filter((n) => n.reachable).map(async (n) => {
      try {
        const identity = await node(deps, n.name).run(readNodeIdentity, {
          timeoutMs: 2000,
          what: "identity",
        });
        deps.identities.set(n.name, identity);
      } catch {
        // Not a superuser, or it went away: fencing / rejoin from this host won't be possible.
      }
    }),
  );
}

// ---------------------------------------------------------------------------------------
// Promotion
// ---------------------------------------------------------------------------------------

/**
 * Whether this host may act on `name` (kill, stop, rewind, start): FAILOVER_LOCAL_NODES
 * lists it, or is `auto`. Its postmaster.pid must still be found here too.
 */
function mayActOn(deps: FailoverDeps, name: string): boolean {
  return deps.settings.localNodes === null || deps.settings.localNodes.includes(name);
}

/** The postmaster pid of `name` when it runs on this host and this host may act on it. */
async function localPid(
  deps: FailoverDeps,
  name: string,
  identity: NodeIdentity,
): Promise<number | null> {
  return mayActOn(deps, name) ? await localPostmaster(identity) : null;
}

/**
 * Best effort, before a promotion: a primary that does not answer but whose postmaster
 * still runs on this host (hung, stopped) is killed, so it cannot take writes when it wakes.
 * A node FAILOVER_LOCAL_NODES puts on another host is left alone: when it wakes it is a
 * stale primary nobody follows (every pool is on a newer epoch), fenced by the rejoin.
 */
async function fenceUnreachable(deps: FailoverDeps, name: string): Promise<string> {
  const identity = deps.identities.get(name);
  if (!identity) return "";
  const pid = await localPid(deps, name, identity);
  // localPostmaster checked that the pid is that postmaster's, started when its file says.
  if (pid === null) return "";
  try {
    Deno.kill(pid, "SIGKILL");
    deps.log.warn("killed the unresponsive old primary on this host before promoting", {
      node: name,
      pid,
    });
    return `; killed ${name}'s unresponsive postmaster (pid ${pid}) on this host first`;
  } catch (err) {
    return `; could not kill ${name}'s postmaster (pid ${pid}): ${describeError(err)}`;
  }
}

/** Makes sure a node about to be promoted will not hang on synchronous standbys or a fence. */
async function preparePromotion(client: NodeClient): Promise<void> {
  await client.run(
    (sql) =>
      alterSystem(sql, {
        synchronous_standby_names: null,
        default_transaction_read_only: null,
      }),
    { timeoutMs: 5000, what: "reset synchronous standbys" },
  );
}

async function promoteCandidate(
  deps: FailoverDeps,
  name: string,
  token: number | null,
): Promise<string | null> {
  const client = node(deps, name);
  await preparePromotion(client);
  const promoted = await fenced(
    deps,
    token,
    () =>
      client.run((sql) => promoteNode(sql, { waitS: 60 }), {
        timeoutMs: 65_000,
        what: "pg_promote",
      }),
  );
  if (!promoted) {
    throw new RuntimeError("FAILOVER_REFUSED", `pg_promote on ${name} did not finish within 60 s`);
  }
  const state = await client.run(readNodeState, { timeoutMs: 5000, what: "state" });
  if (state.inRecovery) {
    throw new RuntimeError("FAILOVER_REFUSED", `${name} is still in recovery after pg_promote`);
  }
  return state.currentLsn;
}

async function candidates(
  deps: FailoverDeps,
  oldPrimary: string,
): Promise<NodeSample[]> {
  const names = [...deps.nodes.keys()].filter((n) => n !== oldPrimary);
  const looks = await Promise.all(
    names.map((n) => look(deps, n, deps.settings.probeTimeoutMs)),
  );
  return toSamples(deps, looks, oldPrimary);
}

function choose(
  deps: FailoverDeps,
  fresh: NodeSample[],
  options: { oldPrimary: string; last: ReplicationSample | null; only?: string | null },
): CandidateChoice {
  return chooseCandidate({
    fresh,
    oldPrimary: options.oldPrimary,
    priority: [...deps.nodes.keys()],
    last: options.last,
    syncMode: deps.settings.syncMode,
    maxLagBytes: deps.settings.maxLagBytes,
    only: options.only,
  });
}

/** Failover: re-check the primary, choose the best replica, fence, promote (or say why none). */
export async function promote(
  deps: FailoverDeps,
  input: { primary: Published; token: number | null; last: ReplicationSample | null },
): Promise<PromotionOutput | NoPromotion> {
  const old = input.primary.node;
  // 1. The primary must still be down: a late answer cancels the failover.
  const again = await probeNode(deps, old, deps.settings.probeTimeoutMs);
  if (again.ok) {
    throw new RuntimeError(
      "FAILOVER_REFUSED",
      `${old} answered again (in ${again.latencyMs} ms) just before the promotion`,
    );
  }
  // 2. Choose.
  const fresh = await candidates(deps, old);
  const choice = choose(deps, fresh, { oldPrimary: old, last: input.last });
  // No candidate is an outcome the chart handles (degraded), the same one `reassess` reports.
  if (!choice.node) return { node: null, choice, readOnlyNode: readOnlyFallback(fresh, old) };
  if (choice.adopt) {
    const n = fresh.find((f) => f.name === choice.node)!;
    return { node: choice.node, lsn: n.currentLsn, adopted: true, why: choice.why, parked: null };
  }
  // 3. Fence the old primary where this host can, then promote under the fencing token.
  const fenceNote = await fenceUnreachable(deps, old);
  const lsn = await promoteCandidate(deps, choice.node, input.token);
  return { node: choice.node, lsn, adopted: false, why: choice.why + fenceNote, parked: null };
}

async function waitReplayed(
  target: NodeClient,
  lsn: string,
  options: { deadline: number; strictlyAfter: boolean; now: () => number },
): Promise<{ ok: boolean; replay: string | null }> {
  const goal = lsnToNumber(lsn);
  if (goal === null) {
    throw new RuntimeError(
      "FAILOVER_REFUSED",
      `cannot read the primary's last WAL position (${lsn})`,
    );
  }
  let replay: string | null = null;
  while (options.now() < options.deadline) {
    const state = await target.run(readNodeState, { timeoutMs: 2000, what: "replay" })
      .catch(() => null);
    replay = state?.replayLsn ?? replay;
    const at = lsnToNumber(replay);
    if (at !== null && (options.strictlyAfter ? at > goal : at >= goal)) {
      return { ok: true, replay };
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  return { ok: false, replay };
}

/**
 * Planned switchover, zero loss: fence the primary (read-only, sessions ended; stopped
 * cleanly when it runs on this host), wait until the target replayed everything it wrote,
 * then promote the target. On a timeout the old primary is un-fenced and stays primary.
 */
export async function switchover(
  deps: FailoverDeps,
  input: { primary: Published; token: number | null; request: SwitchoverRequest },
): Promise<PromotionOutput> {
  const old = input.primary.node;
  const oldClient = node(deps, old);
  // 1. Check the cluster and the target.
  if (input.request.target !== null && !deps.nodes.has(input.request.target)) {
    throw new RuntimeError(
      "FAILOVER_REFUSED",
      `${input.request.target} is not a node of this cluster (${
        [...deps.nodes.keys()].join(", ")
      })`,
    );
  }
  if (input.request.target === old) {
    throw new RuntimeError("FAILOVER_REFUSED", `${old} is already the primary`);
  }
  const sample = await sampleCluster(deps, old, deps.settings.probeTimeoutMs * 2);
  const p = sample.nodes.find((n) => n.name === old)!;
  if (!p.reachable || p.inRecovery !== false) {
    throw new RuntimeError("FAILOVER_REFUSED", `the primary ${old} is not healthy: ${p.why}`);
  }
  const streaming = sample.nodes.filter((n) => n.name !== old && n.streaming);
  const choice = choose(deps, streaming, {
    oldPrimary: old,
    last: sample,
    only: input.request.target,
  });
  if (!choice.node) {
    throw new RuntimeError(
      "FAILOVER_REFUSED",
      input.request.target
        ? `${input.request.target} is not a streaming replica of ${old}`
        : `no streaming replica to switch over to: ${choice.why}`,
    );
  }
  const targetName = choice.node;
  const target = node(deps, targetName);
  await fenced(deps, input.token, () => Promise.resolve());
  // 2. Fence the primary: from here on it takes no writes.
  const identity = await oldClient.run(readNodeIdentity, { timeoutMs: 5000, what: "identity" })
    .catch(() => null);
  const local = identity ? await localPid(deps, old, identity) : null;
  await oldClient.run(fenceNode, { timeoutMs: 5000, what: "fence" });
  let finalLsn: string;
  let parked: string | null = null;
  if (identity && local !== null) {
    // 3a. On this host: a clean stop writes a shutdown checkpoint the target must replay.
    const stop = await pgCtlStop(deps.tools, identity.dataDir, { mode: "fast", timeoutS: 60 });
    if (!stop.success) {
      await oldClient.run(unfenceNode, { timeoutMs: 5000, what: "unfence" }).catch(() => {});
      throw new RuntimeError("FAILOVER_REFUSED", `cannot stop ${old}: ${stop.stderr.trim()}`);
    }
    const control = await deps.tools.controlData(identity.dataDir);
    finalLsn = control["Latest checkpoint location"] ?? "";
    parked = old;
    deps.identities.set(old, identity);
  } else {
    // 3b. Elsewhere: it stays up, read-only; its current WAL position is the target.
    await oldClient.run(terminateClients, { timeoutMs: 5000, what: "terminate" });
    const state = await oldClient.run(readNodeState, { timeoutMs: 5000, what: "lsn" });
    finalLsn = state.currentLsn ?? "";
  }
  // 4. Wait until the target replayed everything.
  const waited = await waitReplayed(target, finalLsn, {
    deadline: deps.now() + deps.settings.switchoverTimeoutMs,
    strictlyAfter: parked !== null,
    now: deps.now,
  });
  if (!waited.ok) {
    if (parked && identity) {
      await pgCtlStart(deps.tools, identity.dataDir, {
        logFile: `${dirname(identity.dataDir)}/${old}-switchover-abort.log`,
        settings: identity.commandLine,
      });
    }
    await oldClient.run(unfenceNode, { timeoutMs: 5000, what: "unfence" }).catch(() => {});
    throw new RuntimeError(
      "FAILOVER_TIMEOUT",
      `${targetName} replayed only up to ${waited.replay} of ${finalLsn} within ${deps.settings.switchoverTimeoutMs} ms: ` +
        `switchover aborted, ${old} stays the primary`,
    );
  }
  // 5. Promote it under the fencing token.
  const lsn = await promoteCandidate(deps, targetName, input.token);
  return {
    node: targetName,
    lsn,
    adopted: false,
    why: `${targetName} replayed up to ${waited.replay}, past ${old}'s last WAL at ${finalLsn}, ` +
      `before it was promoted (zero loss)` + (parked ? `; ${old} was stopped cleanly` : ""),
    parked,
  };
}

// ---------------------------------------------------------------------------------------
// Publication
// ---------------------------------------------------------------------------------------

/** Publishes the primary: Redis under the fencing token, failover_history, every instance. */
export async function publish(deps: FailoverDeps, input: PublishInput): Promise<PublishOutput> {
  const current = await readPublished(deps, 2000);
  const target = node(deps, input.node);
  // Degraded / recovered keep the epoch (and the primary is down: don't wait on it).
  const sameEpoch = input.kind === "degraded" || input.kind === "recovered";
  const recorded = sameEpoch
    ? 0
    : await target.run(maxRecordedEpoch, { timeoutMs: 5000, what: "epoch" }).catch(() => 0);
  const epoch = sameEpoch
    ? input.epoch
    : Math.max(input.epoch, (current?.epoch ?? 0) + 1, recorded + 1);
  const record: PublishedRecord = {
    node: input.node,
    epoch,
    readOnlyNode: input.readOnlyNode,
    token: input.token,
    by: deps.instanceId,
    at: deps.now(),
    kind: input.kind,
    why: input.why,
  };
  // 1. Redis, only under the current fencing token: a deposed coordinator cannot publish.
  if (deps.published) {
    if (deps.leases && input.token) {
      await deps.leases.fencedSet(
        { role: FAILOVER_ROLE, token: input.token },
        deps.published.primaryWrite(record),
      );
    } else {
      await deps.published.writePrimary(record);
    }
  }
  const ms = input.startedAt !== null ? deps.now() - input.startedAt : null;
  const why = input.kind === "bootstrap"
    ? `published ${input.node} as the primary with epoch ${epoch} (bootstrap)`
    : input.kind === "degraded" || input.kind === "recovered"
    ? input.why
    : `${input.why}; published ${input.node} with epoch ${epoch}` +
      (input.token ? ` under fencing token ${input.token}` : "") +
      `: every instance re-points to it` +
      (ms !== null ? ` (${ms} ms after the first failed probe)` : "");
  // 2. The record in the database (best effort: the publication above is what counts).
  const kind = input.kind;
  if (kind !== "degraded" && kind !== "recovered") {
    await target.run((sql) =>
      insertFailoverRecord(sql, {
        kind,
        oldPrimary: input.oldPrimary,
        newPrimary: input.node,
        reason: why,
        initiatedBy: deps.instanceId,
        startedAt: new Date(input.startedAt ?? deps.now()),
        completedAt: new Date(deps.now()),
        status: "completed",
        errorMessage: null,
        epoch,
        fencingToken: input.token,
        details: { requestId: input.requestId, durationMs: ms },
      }), { timeoutMs: 5000, what: "history" }).catch((err) =>
        deps.log.warn("failover_history not written", { error: describeError(err) })
      );
  }
  // 3. Every instance (at-most-once; the others also read Redis on every probe).
  await deps.transport.broadcast("failover", {
    type: "failover.primary",
    node: input.node,
    epoch,
    readOnlyNode: input.readOnlyNode,
  }, { from: "failover" }).catch((err) =>
    deps.log.warn("broadcast of the new primary failed", { error: describeError(err) })
  );
  return { published: { node: input.node, epoch, readOnlyNode: input.readOnlyNode }, why };
}

/**
 * Writes the followed primary back to Redis, unchanged, under the fencing token: Redis
 * lost it (an older epoch or none). Never over a record at least as new (read first; the
 * fence refuses a deposed coordinator). No history row: the publication is recorded already.
 */
export async function reassert(
  deps: FailoverDeps,
  input: ReassertInput,
): Promise<{ why: string }> {
  const { primary, token } = input;
  if (!deps.published || !deps.leases) throw new Error("no Redis to re-assert the primary in");
  const answer = await deps.published.readPrimaryAnswer(2000);
  if (!answer.answered) throw new Error("Redis did not answer");
  const found = answer.record;
  if (found && found.epoch >= primary.epoch) {
    return {
      why: `not re-asserted: Redis already holds ${found.node} at epoch ${found.epoch}`,
    };
  }
  await deps.leases.fencedSet(
    { role: FAILOVER_ROLE, token },
    deps.published.primaryWrite({
      node: primary.node,
      epoch: primary.epoch,
      readOnlyNode: primary.readOnlyNode,
      token,
      by: deps.instanceId,
      at: deps.now(),
      kind: "reassert",
      why: "re-asserted: Redis had lost the publication",
    }),
  );
  const why = `re-asserted ${primary.node} at epoch ${primary.epoch} in Redis under fencing ` +
    `token ${token} (Redis held ` +
    (found ? `${found.node} at epoch ${found.epoch})` : "no published primary)");
  deps.log.warn(why);
  return { why };
}

// ---------------------------------------------------------------------------------------
// Votes
// ---------------------------------------------------------------------------------------

/** How this instance votes on "is `node` down?". */
export async function answerVote(
  deps: FailoverDeps,
  event: { node: string; epoch: number },
): Promise<{ agree: boolean; why: string }> {
  const ctx = (deps.actor()?.getSnapshot() as { context?: FailoverContext } | undefined)?.context;
  const known = ctx ? voteFromState(ctx, event) : null;
  if (known) return known;
  const fresh = await probeNode(
    deps,
    event.node,
    Math.max(50, Math.min(deps.settings.probeTimeoutMs, deps.settings.voteTimeoutMs - 100)),
  );
  return fresh.ok
    ? { agree: false, why: `${event.node} answered here in ${fresh.latencyMs} ms` }
    : { agree: true, why: `a fresh probe failed here (${fresh.error})` };
}

// ---------------------------------------------------------------------------------------
// Fast path: certain evidence
// ---------------------------------------------------------------------------------------

/** How this instance answers "look at `node` of this epoch now": a fresh probe. */
export async function answerObserve(
  deps: FailoverDeps,
  event: { node: string; epoch: number },
): Promise<{ refused: boolean; why: string }> {
  const ctx = (deps.actor()?.getSnapshot() as { context?: FailoverContext } | undefined)?.context;
  if (ctx && ctx.primary.epoch > event.epoch) {
    return {
      refused: false,
      why: `I follow ${ctx.primary.node} of the newer epoch ${ctx.primary.epoch}`,
    };
  }
  const fresh = await probeNode(
    deps,
    event.node,
    Math.max(50, Math.min(deps.settings.probeTimeoutMs, deps.settings.voteTimeoutMs - 100)),
  );
  return fresh.ok
    ? { refused: false, why: `${event.node} answered here in ${fresh.latencyMs} ms` }
    : { refused: fresh.refused, why: fresh.error ?? "no answer" };
}

/**
 * Whether `replica`'s WAL receiver streams from `primary` now (pg_stat_wal_receiver), for
 * the fast path's evidence. The replica names its sender as it spells it in its
 * primary_conninfo (`sender_host:sender_port`), which need not be how DATABASE_NODES spells
 * the primary (a host name against an IP address, localhost against 127.0.0.1, a socket
 * directory): so a `streaming` receiver counts as streaming from the primary unless its
 * sender is, spelled exactly the same, another node of DATABASE_NODES. When in doubt it
 * streams, which keeps the careful path. A receiver streaming from another node (cascading)
 * and a node out of recovery say nothing about the primary either way: `streaming: null`,
 * like a replica that did not answer.
 */
async function receiverOf(
  deps: FailoverDeps,
  replica: string,
  primary: string,
): Promise<ReceiverState> {
  try {
    const s = await node(deps, replica).run(readNodeState, {
      timeoutMs: deps.settings.probeTimeoutMs,
      what: "WAL receiver",
    });
    if (!s.inRecovery) {
      return {
        node: replica,
        streaming: null,
        why: `out of recovery: no WAL receiver to tell about ${primary}`,
      };
    }
    const from = node(deps, primary).setting.address;
    if (s.receiverStatus === "streaming") {
      const other = s.sender === null || s.sender === from ? undefined : [...deps.nodes.values()]
        .find((n) => n.setting.name !== primary && n.setting.address === s.sender);
      if (other) {
        return {
          node: replica,
          streaming: null,
          why: `receiver streaming from ${other.setting.name} (${s.sender}): says nothing ` +
            `about ${primary}`,
        };
      }
      return {
        node: replica,
        streaming: true,
        why: s.sender === from
          ? `receiver streaming from ${from}`
          : `receiver streaming from ${
            s.sender ?? "an unnamed sender"
          }, no other node's address: taken as ${primary} (${from})`,
      };
    }
    return {
      node: replica,
      streaming: false,
      why: s.receiverStatus
        ? `receiver ${s.receiverStatus}${s.sender ? ` from ${s.sender}` : ""}`
        : "no WAL receiver",
    };
  } catch (err) {
    return { node: replica, streaming: null, why: `no answer (${shortError(err)})` };
  }
}

/**
 * After a refused probe (fast path): every other live instance looks at the primary afresh
 * (`failover.observe`), and every other node's WAL receiver is read, all at once. A
 * receiver lags its primary's death by the time the walsender takes to exit and the replica
 * to read the end of the stream: when the instances saw refusals but a receiver still
 * streamed, the receivers are read again every 20 ms for up to min(250 ms, half a probe
 * interval), instead of leaving it to the next probe. What it all means is
 * {@linkcode judgeEvidence}'s to say.
 */
export async function corroborate(
  deps: FailoverDeps,
  input: { primary: Published; mine: Observation },
): Promise<Evidence> {
  const primary = input.primary.node;
  const replicas = [...deps.nodes.keys()].filter((n) => n !== primary);
  const members = deps.membership ? await deps.membership.members() : [];
  const others = members.map((m) => m.id).filter((id) => id !== deps.instanceId);
  const [observed, receivers] = await Promise.all([
    Promise.all(others.map(async (instance): Promise<Observation> => {
      try {
        const reply = await deps.transport.request<{ refused: boolean; why: string }>(
          { instance, actor: "failover" },
          { type: "failover.observe", node: primary, epoch: input.primary.epoch },
          { timeoutMs: deps.settings.voteTimeoutMs, from: "failover" },
        );
        return { instance, refused: reply.refused === true, why: String(reply.why ?? "") };
      } catch (err) {
        return { instance, refused: false, why: `no answer: ${describeError(err)}` };
      }
    })),
    Promise.all(replicas.map((r) => receiverOf(deps, r, primary))),
  ]);
  const observers = [input.mine, ...observed];
  let settled = receivers;
  const refusals = observers.filter((o) => o.refused).length;
  const until = deps.now() + Math.min(250, deps.settings.probeIntervalMs / 2);
  while (
    refusals >= CERTAIN_OBSERVERS && settled.some((r) => r.streaming === true) &&
    deps.now() < until
  ) {
    await new Promise((r) => setTimeout(r, 20));
    settled = await Promise.all(replicas.map((r) => receiverOf(deps, r, primary)));
  }
  return { observers, receivers: settled };
}

/** Asks every live instance whether it sees the primary down; this one agrees. */
export async function collectVotes(
  deps: FailoverDeps,
  input: { primary: Published; failures: number },
): Promise<VoteOutput> {
  const mine = {
    instance: deps.instanceId,
    agree: true,
    why: `${input.failures} consecutive probes failed`,
  };
  if (!deps.membership) return { agree: 1, live: 1, votes: [mine] };
  const members = await deps.membership.members();
  const others = members.map((m) => m.id).filter((id) => id !== deps.instanceId);
  const answers = await Promise.all(others.map(async (instance) => {
    try {
      const reply = await deps.transport.request<{ agree: boolean; why: string }>(
        { instance, actor: "failover" },
        { type: "failover.vote", node: input.primary.node, epoch: input.primary.epoch },
        { timeoutMs: deps.settings.voteTimeoutMs, from: "failover" },
      );
      return { instance, agree: reply.agree === true, why: String(reply.why ?? "") };
    } catch (err) {
      return { instance, agree: false, why: `no vote: ${describeError(err)}` };
    }
  }));
  const votes = [mine, ...answers];
  return { agree: votes.filter((v) => v.agree).length, live: votes.length, votes };
}

// ---------------------------------------------------------------------------------------
// Degraded mode
// ---------------------------------------------------------------------------------------

/**
 * Degraded: is the primary back, has a replica become eligible, who can serve reads? (The
 * chart publishes the read-only fallback; only the return of the primary is published here.)
 */
export async function reassess(
  deps: FailoverDeps,
  input: { primary: Published; last: ReplicationSample | null; token: number | null },
): Promise<Assessment> {
  const probe = await probeNode(deps, input.primary.node, deps.settings.probeTimeoutMs);
  if (probe.ok) {
    // The chart announces every degraded spell, with or without a read-only fallback, so
    // its end is published too: the record must not keep saying the primary is down.
    await publish(deps, {
      kind: "recovered",
      node: input.primary.node,
      oldPrimary: input.primary.node,
      epoch: input.primary.epoch,
      readOnlyNode: null,
      token: input.token,
      startedAt: null,
      why: `${input.primary.node} is back: leaving degraded mode`,
      requestId: null,
    }).catch(() => {});
    return {
      primaryOk: true,
      choice: { node: null, adopt: false, why: "the primary answers" },
      readOnlyNode: null,
    };
  }
  const fresh = await candidates(deps, input.primary.node);
  const choice = choose(deps, fresh, { oldPrimary: input.primary.node, last: input.last });
  const readOnlyNode = choice.node ? null : readOnlyFallback(fresh, input.primary.node);
  return { primaryOk: false, choice, readOnlyNode };
}

// ---------------------------------------------------------------------------------------
// Pool, monitoring, repairs
// ---------------------------------------------------------------------------------------

/** Switches this instance's pool to the target node (refusing older epochs). */
export async function repointPool(deps: FailoverDeps, target: PoolTarget): Promise<PoolTarget> {
  const n = node(deps, target.node);
  try {
    await deps.db.repoint(n.setting.url, { epoch: target.epoch, readOnly: target.readOnly });
  } catch (err) {
    // The pool already follows a newer epoch: nothing to do.
    if (err instanceof RuntimeError && err.code === "DATABASE_STALE_EPOCH") return target;
    throw err;
  }
  return target;
}

/** Logs the alerts a sample raised and resolved; raised ones also go out on the bus. */
export function announceAlerts(
  deps: FailoverDeps,
  news: { raised: LagAlert[]; resolved: LagAlert[] },
): void {
  for (const alert of news.raised) {
    deps.log.warn(`replication alert: ${alert.why}`, { node: alert.node, kind: alert.kind });
    deps.bus.publish(
      "replication.alert",
      JSON.stringify({ ...alert, instance: deps.instanceId }),
    ).catch(() => {});
  }
  for (const alert of news.resolved) {
    deps.log.info("replication alert resolved", { alert: `${alert.node}:${alert.kind}` });
  }
}

/** Samples every node; on the coordinator also stores the status and refreshes identities. */
export async function sampleNodes(
  deps: FailoverDeps,
  input: { primary: Published; leader: number | null; alerts: LagAlert[]; why: string },
): Promise<ReplicationSample> {
  const sample = await sampleCluster(
    deps,
    input.primary.node,
    Math.max(2000, deps.settings.probeTimeoutMs),
  );
  if (input.leader === null) return sample;
  await refreshIdentities(deps, sample);
  const alerting = new Map(input.alerts.map((a) => [a.node, a.why]));
  const p = sample.nodes.find((n) => n.name === input.primary.node);
  if (p?.reachable && p.inRecovery === false) {
    await node(deps, p.name).run((sql) =>
      upsertReplicationStatus(
        sql,
        sample.nodes.map((n) => ({
          nodeName: n.name,
          nodeRole: n.role,
          nodeAddress: n.address,
          nodeState: n.state,
          isHealthy: n.healthy && !alerting.has(n.name),
          lagBytes: n.lagBytes,
          lagSeconds: n.lagSeconds,
          sentLsn: n.sentLsn,
          writeLsn: n.writeLsn,
          flushLsn: n.flushLsn,
          replayLsn: n.role === "primary" ? n.currentLsn : n.replayLsn,
          syncState: n.syncState,
          timeline: n.timeline,
          epoch: input.primary.epoch,
          checkedAt: new Date(sample.at),
          metadata: { why: n.why, alert: alerting.get(n.name) ?? null, error: n.error },
        })),
      ), { timeoutMs: 5000, what: "replication_status" }).catch((err) =>
        deps.log.debug("replication_status not stored", { error: describeError(err) })
      );
  }
  if (deps.published && deps.leases && input.leader) {
    await deps.leases.fencedSet(
      { role: FAILOVER_ROLE, token: input.leader },
      deps.published.statusWrite({
        by: deps.instanceId,
        at: sample.at,
        why: input.why,
        sync: sample.sync,
      }),
    ).catch(() => {});
  }
  return sample;
}

/**
 * Makes one repair the monitor asked for; returns its sentence. A rejoin or start of a
 * parked node that fails is an outcome (recorded as `fenced`) saying whether it left the
 * node stopped here, or could not act on it because it is another host's; the other
 * repairs throw.
 */
export async function repair(
  deps: FailoverDeps,
  input: { finding: Finding; primary: Published; token: number | null },
): Promise<RepairOutput> {
  const f = input.finding;
  const primary = node(deps, input.primary.node);
  const target = node(deps, f.node);
  return await fenced(deps, input.token, async () => {
    switch (f.kind) {
      case "unfence":
        await target.run(unfenceNode, { timeoutMs: 5000, what: "unfence" });
        return {
          ok: true,
          why: `lifted the read-only fence of ${f.node}, the published primary`,
        };
      case "sync": {
        const value = formatSyncStandbys(f.standbys);
        await target.run((sql) =>
          alterSystem(sql, {
            synchronous_standby_names: value || null,
            synchronous_commit: deps.settings.syncMode && value ? "remote_apply" : null,
          }), { timeoutMs: 5000, what: "synchronous standbys" });
        return { ok: true, why: `${f.why}: set synchronous_standby_names to '${value}'` };
      }
      case "repoint_replica": {
        const slot = deps.settings.useSlots ? slotName(f.node) : null;
        if (slot) {
          await primary.run((sql) => ensureSlot(sql, slot), { timeoutMs: 5000, what: "slot" });
        }
        await target.run((sql) =>
          alterSystem(sql, {
            primary_conninfo: conninfoOf(primary.setting, {
              applicationName: f.node,
              withPassword: true,
            }),
            primary_slot_name: slot,
          }), { timeoutMs: 5000, what: "primary_conninfo" });
        return {
          ok: true,
          why: `re-pointed ${f.node} to ${primary.setting.name}` + (slot ? ` (slot ${slot})` : "") +
            " by ALTER SYSTEM and a reload, without a restart",
        };
      }
      case "rejoin":
      case "start_standby": {
        const started = deps.now();
        try {
          const identity = deps.identities.get(f.node);
          const rejoinDeps = {
            primary,
            node: target,
            local: mayActOn(deps, f.node),
            tools: deps.tools,
            useSlots: deps.settings.useSlots,
            instanceId: deps.instanceId,
            log: deps.log,
            now: deps.now,
          };
          const result = f.kind === "rejoin"
            ? await rejoinNode(rejoinDeps)
            : identity
            ? await startParkedNode(rejoinDeps, identity)
            : (() => {
              throw new RuntimeError("REJOIN_FAILED", `where ${f.node} runs is not known`);
            })();
          await record(deps, primary, {
            node: f.node,
            status: "completed",
            why: result.why,
            started,
            details: result.details,
            token: input.token,
            epoch: input.primary.epoch,
          });
          return { ok: true, why: result.why };
        } catch (err) {
          await record(deps, primary, {
            node: f.node,
            status: "fenced",
            why: f.why,
            error: describeError(err),
            started,
            details: {},
            token: input.token,
            epoch: input.primary.epoch,
          });
          return {
            ok: false,
            error: err instanceof Error ? err.message : String(err),
            leftStopped: leftStopped(err),
            notOurs: notOurs(err),
          };
        }
      }
    }
  });
}

async function record(
  deps: FailoverDeps,
  primary: NodeClient,
  r: {
    node: string;
    status: "completed" | "fenced";
    why: string;
    error?: string;
    started: number;
    details: Record<string, unknown>;
    token: number | null;
    epoch: number;
  },
): Promise<void> {
  await primary.run((sql) =>
    insertFailoverRecord(sql, {
      kind: "rejoin",
      oldPrimary: r.node,
      newPrimary: primary.setting.name,
      reason: r.why,
      initiatedBy: deps.instanceId,
      startedAt: new Date(r.started),
      completedAt: new Date(deps.now()),
      status: r.status,
      errorMessage: r.error ?? null,
      epoch: r.epoch,
      fencingToken: r.token,
      details: r.details,
    }), { timeoutMs: 5000, what: "history" }).catch((err) =>
      deps.log.warn("failover_history not written", { error: describeError(err) })
    );
}

// ---------------------------------------------------------------------------------------
// The machine with these effects
// ---------------------------------------------------------------------------------------

/** The failover machine wired to real effects. */
export function createFailoverLogic(
  deps: FailoverDeps,
  hooks: { onSelf(ref: AnyActorRef): void },
) {
  return failoverMachine.provide({
    actors: {
      watchLease: fromCallback<FailoverEvent>(({ sendBack }) => {
        const token = deps.lease.token();
        if (token !== null) sendBack({ type: "LEASE_ACQUIRED", token });
        return deps.lease.listen(sendBack);
      }),
      probePrimary: fromPromise<ProbeOutput, { primary: Published }>(async ({ input }) => {
        const at = deps.now();
        const [probe, answer] = await Promise.all([
          probeNode(deps, input.primary.node, deps.settings.probeTimeoutMs),
          deps.published
            ? deps.published.readPrimaryAnswer(Math.min(500, deps.settings.probeTimeoutMs))
            : null,
        ]);
        const published = answer?.record ?? null;
        return {
          ...probe,
          at,
          redisAnswered: answer?.answered ?? false,
          published: published
            ? { node: published.node, epoch: published.epoch, readOnlyNode: published.readOnlyNode }
            : null,
        };
      }),
      readStart: fromPromise(() => readStart(deps)),
      corroborate: fromPromise(({ input }) => corroborate(deps, input)),
      collectVotes: fromPromise(({ input }) => collectVotes(deps, input)),
      promote: fromPromise(({ input }) => promote(deps, input)),
      switchover: fromPromise(({ input }) => switchover(deps, input)),
      publish: fromPromise(({ input }) => publish(deps, input)),
      reassert: fromPromise(({ input }) => reassert(deps, input)),
      reassess: fromPromise(({ input }) => reassess(deps, input)),
      repointPool: fromPromise(({ input }) => repointPool(deps, input)),
      sampleNodes: fromPromise(({ input }) => sampleNodes(deps, input)),
      repair: fromPromise(({ input }) => repair(deps, input)),
    },
    actions: {
      announceSelf: ({ self }) => hooks.onSelf(self),
      letQueriesWait: () => deps.db.setSwitchWait(deps.settings.queryWaitMs),
      failQueriesFast: () => deps.db.setSwitchWait(0),
      announceAlerts: (_, news: { raised: LagAlert[]; resolved: LagAlert[] }) =>
        announceAlerts(deps, news),
      afterPromotion: (_, params: { node: string; adopted: boolean }) => {
        // Test-only fault injection: die between pg_promote and publishing it.
        if (deps.settings.failpoint === "exit-after-promote" && !params.adopted) {
          deps.log.error("failpoint exit-after-promote: killing this process", params);
          Deno.kill(Deno.pid, "SIGKILL");
        }
      },
    },
  });
}
