/**
 * Bringing an old primary (or a stray replica) back as a replica of the current primary,
 * as a script of named steps: fence → check it runs on this host → stop → CHECKPOINT on
 * the primary → pg_rewind → rewrite primary_conninfo / primary_slot_name → start →
 * verify (streaming on the primary's timeline AND a canary row written on the primary
 * arrives). When any step cannot be done the node stays fenced (read-only, or stopped) and
 * the error says what to do by hand, and whether this host left it stopped
 * ({@linkcode leftStopped}): only then is it the coordinator's to start later; or whether
 * this host may not act on it at all ({@linkcode notOurs}): then it is its operator's.
 * @module
 */
import { dirname } from "node:path";
import { describeError, isRuntimeError, RuntimeError } from "../../lib/errors.ts";
import type { Logger } from "../../lib/log.ts";
import { isProcessStartedAt } from "../../lib/process.ts";
import {
  canaryVisible,
  checkpoint,
  ensureSlot,
  fenceNode,
  type NodeIdentity,
  readNodeIdentity,
  readNodeState,
  readReplicationRows,
  writeCanary,
} from "../../store/replication.ts";
import { conninfoOf, type NodeClient, shortError, slotName } from "./nodes.ts";
import { pgCtlStart, pgCtlStop, pgRewind, type PgTools } from "../../store/pg_tools.ts";

/** What the rejoin steps need. */
export interface RejoinDeps {
  /** The current primary. */
  primary: NodeClient;
  /** The node to bring back. */
  node: NodeClient;
  /** This host may act on the node (FAILOVER_LOCAL_NODES): stop, rewind, start it. */
  local: boolean;
  /** The PostgreSQL programs (pg_ctl, pg_rewind). */
  tools: PgTools;
  /** Stream through a replication slot. */
  useSlots: boolean;
  /** Instance id (canary rows name it). */
  instanceId: string;
  /** Logger. */
  log: Logger;
  /** The clock (deadlines and the timings in the record). */
  now: () => number;
  /** How long streaming and the canary may take to show up. */
  verifyTimeoutMs?: number;
}

/** Outcome of a successful rejoin. */
export interface RejoinResult {
  /** One sentence for the record. */
  why: string;
  /** Timings and facts for failover_history.details. */
  details: Record<string, unknown>;
}

/**
 * The postmaster pid when the server with this identity runs on this host (its
 * postmaster.pid names the same port and start time), else null.
 */
export async function localPostmaster(identity: NodeIdentity): Promise<number | null> {
  let lines: string[];
  try {
    lines = (await Deno.readTextFile(`${identity.dataDir}/postmaster.pid`)).split("\n");
  } catch {
    return null;
  }
  const pid = Number(lines[0]);
  const startedS = Number(lines[2]);
  const port = Number(lines[3]);
  if (!pid || port !== identity.port) return null;
  if (Math.abs(startedS * 1000 - identity.startedAt) > 2000) return null;
  // A postmaster killed with SIGKILL leaves its postmaster.pid behind, and pids are reused
  // (pid_max is 32,768 on many hosts): the pid must still be a process started then.
  return isProcessStartedAt(pid, startedS * 1000) ? pid : null;
}

const STANDBY_KEYS = [
  "primary_conninfo",
  "primary_slot_name",
  "synchronous_standby_names",
  "default_transaction_read_only",
];

/**
 * Rewrites postgresql.auto.conf for a standby of `conninfo` (pg_rewind and pg_basebackup
 * copy the source's file, which names the wrong upstream or none) and creates
 * standby.signal; both keep the data directory's owner.
 */
export async function writeStandbyConfig(
  dataDir: string,
  options: { conninfo: string; slot: string | null },
): Promise<void> {
  const path = `${dataDir}/postgresql.auto.conf`;
  const current = await Deno.readTextFile(path).catch(() => "");
  const kept = current.split("\n").filter((line) => {
    const key = line.split("=")[0].trim();
    return line.trim() !== "" && !STANDBY_KEYS.includes(key);
  });
  const quote = (v: string) => `'${v.replaceAll("'", "''")}'`;
  kept.push(`primary_conninfo = ${quote(options.conninfo)}`);
  if (options.slot) kept.push(`primary_slot_name = ${quote(options.slot)}`);
  await Deno.writeTextFile(path, kept.join("\n") + "\n");
  await Deno.writeTextFile(`${dataDir}/standby.signal`, "");
  const owner = await Deno.stat(dataDir);
  if (Deno.uid() === 0 && owner.uid !== null && owner.gid !== null) {
    for (const file of [path, `${dataDir}/standby.signal`]) {
      await Deno.chown(file, owner.uid, owner.gid);
    }
  }
}

function fail(message: string, cause?: unknown): never {
  throw new RuntimeError("REJOIN_FAILED", message, { cause });
}

/**
 * Fails because this host may not or cannot stop, rewind and start the node (it is another
 * host's): the error says so ({@linkcode notOurs}), and what to run there by hand.
 */
function failNotOurs(message: string): never {
  throw new RuntimeError("REJOIN_FAILED", message, { details: { notOurs: true } });
}

/**
 * Runs the steps that follow this host's stop of the node: whatever fails there leaves it
 * stopped by us, and the error says so (same code and sentence).
 */
async function stoppedHere<T>(steps: () => Promise<T>): Promise<T> {
  try {
    return await steps();
  } catch (err) {
    const known = isRuntimeError(err);
    throw new RuntimeError(
      known ? err.code : "REJOIN_FAILED",
      known ? err.message : describeError(err),
      {
        cause: known ? err.cause : err,
        details: { ...(known ? err.details : {}), leftStopped: true },
      },
    );
  }
}

/**
 * True when a failed {@linkcode rejoinNode} / {@linkcode startParkedNode} left the node
 * stopped by this host (ours to start as a replica later); false when it never stopped it
 * (fenced over SQL only, or not ours to act on).
 */
export function leftStopped(err: unknown): boolean {
  return isRuntimeError(err) && err.details?.leftStopped === true;
}

/**
 * True when a failed {@linkcode rejoinNode} / {@linkcode startParkedNode} could not act on
 * the node because it is not this host's (FAILOVER_LOCAL_NODES puts it on another host, or
 * its data directory is not here): a rejoin left it fenced read-only for its operator.
 */
export function notOurs(err: unknown): boolean {
  return isRuntimeError(err) && err.details?.notOurs === true;
}

function tail(text: string): string {
  return text.trim().split("\n").slice(-3).join(" / ");
}

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

/**
 * Rewinds the stopped node onto the primary's timeline: CHECKPOINT on the primary first, or
 * pg_rewind may see no divergence.
 */
async function rewindStopped(
  deps: RejoinDeps,
  identity: NodeIdentity,
): Promise<Awaited<ReturnType<typeof pgRewind>>> {
  await deps.primary.run(checkpoint, { timeoutMs: 30_000, what: "checkpoint" });
  const rewind = await pgRewind(deps.tools, {
    dataDir: identity.dataDir,
    source: { url: deps.primary.setting.url },
  });
  if (!rewind.success) {
    fail(
      `pg_rewind of ${deps.node.setting.name} failed, it stays stopped: ${
        tail(rewind.stderr || rewind.stdout)
      }`,
    );
  }
  return rewind;
}

/** Starts a stopped local node as a standby and proves it replicates; returns the facts. */
async function startAndVerify(
  deps: RejoinDeps,
  identity: NodeIdentity,
): Promise<{ timeline: number | null; canary: number; ms: number }> {
  const name = deps.node.setting.name;
  const started = deps.now();
  const slot = deps.useSlots ? slotName(name) : null;
  if (slot) {
    await deps.primary.run((sql) => ensureSlot(sql, slot), { timeoutMs: 5000, what: "slot" });
  }
  await writeStandbyConfig(identity.dataDir, {
    conninfo: conninfoOf(deps.primary.setting, { applicationName: name, withPassword: true }),
    slot,
  });
  const logFile = `${dirname(identity.dataDir)}/${name}-rejoin.log`;
  const start = await pgCtlStart(deps.tools, identity.dataDir, {
    logFile,
    settings: identity.commandLine,
    timeoutS: 60,
  });
  if (!start.success) {
    fail(`${name} did not start as a replica: pg_ctl: ${tail(start.stderr || start.stdout)}`);
  }
  const deadline = deps.now() + (deps.verifyTimeoutMs ?? 20_000);
  const primaryState = await deps.primary.run(readNodeState, { timeoutMs: 5000, what: "state" });
  let streaming = false;
  while (!streaming && deps.now() < deadline) {
    const rows = await deps.primary.run(readReplicationRows, { timeoutMs: 5000, what: "stats" })
      .catch(() => []);
    streaming = rows.some((r) => r.applicationName === name && r.state === "streaming");
    if (!streaming) await sleep(50);
  }
  if (!streaming) fail(`${name} started but does not stream from ${deps.primary.setting.name}`);
  // Data, not just state: a row written on the primary now must arrive on the replica.
  const canary = await deps.primary.run(
    (sql) => writeCanary(sql, { instance: deps.instanceId, epoch: null, note: `rejoin ${name}` }),
    { timeoutMs: 5000, what: "canary" },
  );
  let seen = false;
  while (!seen && deps.now() < deadline) {
    seen = await deps.node.run((sql) => canaryVisible(sql, canary.id), {
      timeoutMs: 2000,
      what: "canary check",
    }).catch(() => false);
    if (!seen) await sleep(50);
  }
  const state = await deps.node.run(readNodeState, { timeoutMs: 5000, what: "state" });
  if (!seen || !state.inRecovery || state.timeline !== primaryState.timeline) {
    await pgCtlStop(deps.tools, identity.dataDir, { mode: "fast" });
    fail(
      `${name} reported streaming but ${
        seen
          ? `is on timeline ${state.timeline}, not ${primaryState.timeline}`
          : `canary row ${canary.id} written on ${deps.primary.setting.name} never arrived`
      }: stopped it again`,
    );
  }
  return {
    timeline: state.timeline,
    canary: canary.id,
    ms: Math.round(deps.now() - started),
  };
}

/**
 * Fences a node that should not take writes and brings it back as a replica of the primary
 * with pg_rewind. Throws REJOIN_FAILED (the node stays fenced or stopped) when it can't.
 */
export async function rejoinNode(deps: RejoinDeps): Promise<RejoinResult> {
  const name = deps.node.setting.name;
  const primaryName = deps.primary.setting.name;
  const t0 = deps.now();
  // 1. Fence: whatever happens next, nothing writes through it any more.
  const ended = await deps.node.run(fenceNode, { timeoutMs: 5000, what: "fence" }).catch((err) =>
    fail(`cannot fence ${name}: ${shortError(err)}`, err)
  );
  deps.log.warn("fenced a node that must not take writes", { node: name, sessionsEnded: ended });
  // 2. Can this host stop, rewind and start it?
  const identity = await deps.node.run(readNodeIdentity, { timeoutMs: 5000, what: "identity" });
  const pid = deps.local ? await localPostmaster(identity) : null;
  if (pid === null) {
    failNotOurs(
      `${name} is fenced read-only but ` +
        (deps.local
          ? `its data directory ${identity.dataDir} is not on this host`
          : `FAILOVER_LOCAL_NODES puts it on another host`) +
        `: stop it there and run pg_rewind --source-server='${
          conninfoOf(deps.primary.setting)
        }', then start it with primary_conninfo pointing at ${primaryName}`,
    );
  }
  // 3. Stop it cleanly (pg_rewind needs a clean shutdown). From the stop on, a failure
  // leaves it stopped by us (a failed stop too: it may still go down).
  const { rewind, verified } = await stoppedHere(async () => {
    const stop = await pgCtlStop(deps.tools, identity.dataDir, { mode: "fast", timeoutS: 60 });
    if (!stop.success) {
      fail(`cannot stop ${name} for pg_rewind: ${tail(stop.stderr || stop.stdout)}`);
    }
    // 4-5. CHECKPOINT on the new primary, rewind onto its timeline.
    const rewind = await rewindStopped(deps, identity);
    // 6-8. Standby config, start, verify with data.
    return { rewind, verified: await startAndVerify(deps, identity) };
  });
  const ms = Math.round(deps.now() - t0);
  return {
    why:
      `rejoined ${name} as a replica of ${primaryName}: ${
        rewind.noRewindNeeded ? "pg_rewind found nothing to rewind" : "pg_rewind rewound it"
      }, it streams on timeline ${verified.timeline} and canary ${verified.canary} arrived ` +
      `(${ms} ms)`,
    details: {
      rewindMs: rewind.durationMs,
      noRewindNeeded: rewind.noRewindNeeded,
      startAndVerifyMs: verified.ms,
      canary: verified.canary,
      timeline: verified.timeline,
      sessionsEnded: ended,
    },
  };
}

/**
 * Starts a node a switchover stopped cleanly as a standby of the new primary; if it cannot
 * follow the new timeline, rewinds it first.
 */
export async function startParkedNode(
  deps: RejoinDeps,
  identity: NodeIdentity,
): Promise<RejoinResult> {
  const name = deps.node.setting.name;
  if (!deps.local) {
    failNotOurs(
      `${name} cannot be started from here: FAILOVER_LOCAL_NODES puts it on another host`,
    );
  }
  // A switchover or a failed rejoin stopped it here: a failure leaves it stopped by us.
  return await stoppedHere(() => startOrRewind(deps, identity));
}

/** Starts the stopped node as a standby; rewinds it first when it cannot follow directly. */
async function startOrRewind(deps: RejoinDeps, identity: NodeIdentity): Promise<RejoinResult> {
  const name = deps.node.setting.name;
  const t0 = deps.now();
  try {
    const verified = await startAndVerify(deps, identity);
    return {
      why:
        `started ${name} as a replica of ${deps.primary.setting.name} after it was stopped here; ` +
        `it streams on timeline ${verified.timeline} and canary ${verified.canary} arrived`,
      details: { ...verified, rewound: false },
    };
  } catch (err) {
    deps.log.warn("the stopped old primary could not follow directly; rewinding it", {
      node: name,
      error: describeError(err),
    });
    await pgCtlStop(deps.tools, identity.dataDir, { mode: "fast" });
    await rewindStopped(deps, identity);
    const verified = await startAndVerify(deps, identity);
    return {
      why: `started ${name} as a replica of ${deps.primary.setting.name} after a pg_rewind; ` +
        `canary ${verified.canary} arrived (${Math.round(deps.now() - t0)} ms)`,
      details: { ...verified, rewound: true },
    };
  }
}
