/**
 * The backup scheduler actor: machines/backup_scheduler.ts with real effects.
 *
 * - `leaseWatch` campaigns for the `backup-scheduler` lease (cluster singleton); without
 *   Redis this lone instance holds it at once.
 * - `readSchedule` / `loadLastRuns` answer with the injected clock's time and croner's next
 *   runs (in BACKUP_TIMEZONE); the chart decides what is due or was missed.
 * - `createBackup` runs the service under the fencing token the chart got with
 *   LEASE.ACQUIRED (its input), so an instance that lost the lease without noticing cannot
 *   start a backup; the backup advisory lock in PostgreSQL additionally keeps any two
 *   backups (scheduler, CLI) from overlapping. It and `verifyBackup` answer a failure as a
 *   typed outcome with its time.
 * - `alert` logs an error line and broadcasts `backup.alert` to the `backup` actor of
 *   every live instance (each records it as `lastAlert`, visible in /actors).
 * @module
 */
import { type AnyActorRef, fromCallback, fromPromise, type Snapshot } from "xstate";
import { z } from "zod";
import { describeError, isRuntimeError, RuntimeError } from "../../lib/errors.ts";
import type { Logger } from "../../lib/log.ts";
import {
  type BackupAlert,
  type BackupJob,
  type BackupSchedulerContext,
  type BackupSchedulerEvent,
  backupSchedulerMachine,
  type CreateBackupInput,
  type CreateBackupOutput,
  type LastRuns,
  type LastRunsReading,
  type NextRuns,
  type PruneOutput,
  type ReadScheduleInput,
  type ScheduleReading,
  type VerifyBackupOutput,
} from "../../machines/backup_scheduler.ts";
import type { LeaseManager } from "../runtime/leases.ts";
import type { ActorSpec, RemoteEvent, Transport } from "../runtime/types.ts";
import type { BackupService } from "./service.ts";
import { BACKUP_TYPES, type BackupSettings, nextCronRun } from "./settings.ts";

/** The lease role of the scheduler. */
export const SCHEDULER_ROLE = "backup-scheduler";

/** The scheduler's actor id (and its address on every instance). */
export const BACKUP_ACTOR_ID = "backup";

/** What the scheduler actor needs. */
export interface SchedulerDeps {
  /** The backup operations. */
  service: BackupService;
  /** Settings (schedules, retries, verification). */
  settings: BackupSettings;
  /** Leases, or null without Redis. */
  leases: LeaseManager | null;
  /** Lease time to live. */
  leaseTtlMs: number;
  /** For alert broadcasts. */
  transport: Transport;
  /** This instance's id. */
  instanceId: string;
  /** Log. */
  log: Logger;
  /** Wall clock. */
  now: () => number;
}

const backupType = z.enum(BACKUP_TYPES);

const alertEvent = z.object({
  type: z.literal("backup.alert"),
  kind: z.enum(["failed", "gave_up"]),
  backupType,
  attempt: z.number().int().nonnegative(),
  error: z.string().max(4000),
  at: z.number(),
  instance: z.string().max(128).optional(),
}).passthrough() as unknown as z.ZodType<RemoteEvent>;

const requestEvent = z.object({
  type: z.literal("backup.request"),
  backupType,
  incremental: z.boolean().optional(),
}).passthrough() as unknown as z.ZodType<RemoteEvent>;

/** The time now and each schedule's next run after it (croner, in the configured zone). */
export function readSchedule(
  deps: Pick<SchedulerDeps, "settings" | "now">,
  input: ReadScheduleInput,
): ScheduleReading {
  const at = deps.now();
  const next: NextRuns = {};
  for (const s of input.schedules) {
    next[s.type] = nextCronRun(s.cron, at, { timezone: deps.settings.timezone });
  }
  return { at, next };
}

/** The last run of each type (history) and each schedule's first run after it. */
export async function loadLastRuns(
  deps: Pick<SchedulerDeps, "service" | "settings" | "now">,
  input: ReadScheduleInput,
): Promise<LastRunsReading> {
  const lastRuns: LastRuns = await deps.service.lastRuns();
  const nextAfterLast: NextRuns = {};
  for (const s of input.schedules) {
    const last = lastRuns[s.type];
    if (last !== undefined) {
      nextAfterLast[s.type] = nextCronRun(s.cron, last, { timezone: deps.settings.timezone });
    }
  }
  return { at: deps.now(), lastRuns, nextAfterLast };
}

/**
 * One attempt of a job, under the lease token the chart holds: an instance that lost the
 * lease without noticing cannot start a backup. A failure is an answer, not a throw.
 */
export async function createBackup(
  deps: Pick<SchedulerDeps, "service" | "leases" | "now">,
  input: CreateBackupInput,
  signal: AbortSignal,
): Promise<CreateBackupOutput> {
  const run = () =>
    deps.service.create(input.job.type, {
      trigger: input.attempt > 1 ? "retry" : input.job.trigger,
      signal,
      ...(input.job.incremental ? { incremental: true } : {}),
    });
  try {
    let result;
    if (!deps.leases) result = await run();
    else if (input.leaseToken === null) {
      throw new RuntimeError(
        "LEASE_NOT_HELD",
        "Refused to start a backup: this instance does not hold the scheduler lease",
      );
    } else {
      result = await deps.leases.fenced({ role: SCHEDULER_ROLE, token: input.leaseToken }, run);
    }
    return {
      ok: true,
      name: result.name,
      skipped: result.skipped,
      summary: result.summary,
      at: deps.now(),
    };
  } catch (err) {
    return { ok: false, error: describeError(err), at: deps.now() };
  }
}

/** Verifies a stored backup; a backup that fails its verification is discarded. */
export async function verifyStoredBackup(
  deps: Pick<SchedulerDeps, "service" | "now">,
  input: { name: string },
  signal: AbortSignal,
): Promise<VerifyBackupOutput> {
  try {
    const result = await deps.service.verify(input.name, { signal, discardOnFailure: true });
    if (!result.ok) {
      return {
        ok: false,
        error: result.error?.message ?? `Backup ${input.name} failed verification`,
        at: deps.now(),
      };
    }
    return {
      ok: true,
      summary: `verified ${input.name} (${result.mode}) in ${result.durationMs} ms`,
      at: deps.now(),
    };
  } catch (err) {
    return { ok: false, error: describeError(err), at: deps.now() };
  }
}

/** Applies retention; while another process backs up, it waits for the next backup. */
export async function pruneBackups(deps: Pick<SchedulerDeps, "service">): Promise<PruneOutput> {
  try {
    const report = await deps.service.prune();
    return { deleted: report.deleted.length };
  } catch (err) {
    if (isRuntimeError(err, "BACKUP_BUSY")) return { deleted: 0 };
    throw err;
  }
}

/** Logs a backup alert and broadcasts it to the `backup` actor of every live instance. */
export function sendAlert(
  deps: Pick<SchedulerDeps, "transport" | "instanceId" | "log">,
  params: BackupAlert,
): void {
  const { log } = deps;
  log.error(
    params.kind === "gave_up"
      ? `backup alert: gave up on the ${params.type} backup after attempt ${params.attempt}`
      : `backup alert: the ${params.type} backup failed (attempt ${params.attempt}); retrying`,
    { error: params.error },
  );
  deps.transport.broadcast(BACKUP_ACTOR_ID, {
    type: "backup.alert",
    kind: params.kind,
    backupType: params.type,
    attempt: params.attempt,
    error: params.error,
    at: params.at,
    instance: deps.instanceId,
  }).catch((err) =>
    log.warn("could not broadcast the backup alert", { error: describeError(err) })
  );
}

/**
 * Campaigns for the scheduler lease and reports LEASE.ACQUIRED (with the fencing token) and
 * LEASE.LOST; without Redis this lone instance holds it at once. Returns the cleanup.
 */
function watchLease(
  deps: Pick<SchedulerDeps, "leases" | "leaseTtlMs" | "log">,
  sendBack: (event: BackupSchedulerEvent) => void,
): () => void {
  const { leases, log } = deps;
  if (!leases) {
    sendBack({ type: "LEASE.ACQUIRED", token: null });
    return () => {};
  }
  let stopped = false;
  let timer: number | undefined;
  let campaign: ReturnType<LeaseManager["campaign"]> | null = null;
  const start = () => {
    if (stopped) return;
    try {
      campaign = leases.campaign(SCHEDULER_ROLE, {
        ttlMs: deps.leaseTtlMs,
        onAcquired: (token) => sendBack({ type: "LEASE.ACQUIRED", token }),
        onLost: (reason, why) => sendBack({ type: "LEASE.LOST", reason: `${reason}: ${why}` }),
      });
    } catch (err) {
      // A previous incarnation of this actor is still resigning: try again shortly.
      if (isRuntimeError(err, "CONFLICT")) timer = setTimeout(start, 200);
      else log.error("cannot campaign for the backup scheduler", { error: describeError(err) });
    }
  };
  start();
  return () => {
    stopped = true;
    clearTimeout(timer);
    void campaign?.resign();
  };
}

/** The scheduler's logic with real effects. */
export function createSchedulerLogic(deps: SchedulerDeps) {
  return backupSchedulerMachine.provide({
    actors: {
      leaseWatch: fromCallback(({ sendBack }) => watchLease(deps, sendBack)),
      readSchedule: fromPromise<ScheduleReading, ReadScheduleInput>(({ input }) =>
        Promise.resolve(readSchedule(deps, input))
      ),
      loadLastRuns: fromPromise<LastRunsReading, ReadScheduleInput>(({ input }) =>
        loadLastRuns(deps, input)
      ),
      createBackup: fromPromise<CreateBackupOutput, CreateBackupInput>(({ input, signal }) =>
        createBackup(deps, input, signal)
      ),
      verifyBackup: fromPromise<VerifyBackupOutput, { name: string }>(({ input, signal }) =>
        verifyStoredBackup(deps, input, signal)
      ),
      prune: fromPromise<PruneOutput>(() => pruneBackups(deps)),
    },
    actions: {
      alert: (_, params: BackupAlert) => sendAlert(deps, params),
    },
  });
}

/** A small summary of the scheduler's context for /actors. */
export function summarizeScheduler(snapshot: Snapshot<unknown>): Record<string, unknown> {
  const ctx = (snapshot as unknown as { context: BackupSchedulerContext }).context;
  return {
    job: ctx.job,
    attempt: ctx.attempt,
    leaseToken: ctx.leaseToken,
    queue: ctx.queue.map((j) => j.type),
    nextDue: Object.fromEntries(
      Object.entries(ctx.nextDue).map(([k, v]) => [k, v ? new Date(v).toISOString() : null]),
    ),
    lastRun: ctx.lastRun,
    lastError: ctx.lastError,
    lastAlert: ctx.lastAlert,
    stats: ctx.stats,
    reason: ctx.reason,
  };
}

/** The registry entry of the scheduler actor. */
export function schedulerSpec(deps: SchedulerDeps): ActorSpec {
  return {
    id: BACKUP_ACTOR_ID,
    chart: "backup_scheduler",
    create: () => createSchedulerLogic(deps),
    input: () => ({
      schedules: deps.settings.schedules,
      baseIncremental: deps.settings.baseIncremental,
      retryMax: deps.settings.retry.max,
      retryDelayMs: deps.settings.retry.delayMs,
      verify: deps.settings.verify !== "off",
    }),
    summarize: summarizeScheduler,
    accepts: { "backup.alert": alertEvent },
    requests: {
      "backup.request": {
        schema: requestEvent,
        handle(event, { ref }) {
          return Promise.resolve(queueRequest(ref, event, deps));
        },
      },
    },
  };
}

function queueRequest(
  ref: AnyActorRef | undefined,
  event: RemoteEvent,
  deps: Pick<SchedulerDeps, "instanceId" | "now">,
): { queued: true; instance: string } {
  const { instanceId } = deps;
  if (!ref) {
    throw new RuntimeError("ACTOR_UNAVAILABLE", "The backup scheduler is restarting; try again");
  }
  if (ref.getSnapshot().value === "standby") {
    throw new RuntimeError(
      "CONFLICT",
      `Instance ${instanceId} does not hold the backup scheduler lease`,
    );
  }
  const at = deps.now();
  ref.send({
    type: "BACKUP.REQUEST",
    backupType: event.backupType,
    at,
    ...(event.incremental === true ? { incremental: true } : {}),
  });
  // The chart decided at once: queued (or already started), or not queued because a backup of
  // that type is still queued or running. The caller hears which, in the chart's words.
  const context = (ref.getSnapshot() as { context: BackupSchedulerContext }).context;
  const ours = (job: BackupJob | null) =>
    job !== null && job.trigger === "manual" && job.type === event.backupType &&
    job.queuedAt === at;
  if (!context.queue.some(ours) && !ours(context.job)) {
    throw new RuntimeError("CONFLICT", `Not queued: ${context.reason}`);
  }
  return { queued: true, instance: instanceId };
}
