/**
 * The backup scheduler actor: machines/backup_scheduler.ts with real effects.
 *
 * - `leaseWatch` campaigns for the `backup-scheduler` lease (cluster singleton); without
 *   Redis this lone instance holds it at once.
 * - `createBackup` runs the service under the lease's fencing token, so an instance that
 *   lost the lease without noticing cannot start a backup; the backup advisory lock in
 *   PostgreSQL additionally keeps any two backups (scheduler, CLI) from overlapping.
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
  type BackupSchedulerContext,
  backupSchedulerMachine,
  type CreateBackupInput,
  type CreateBackupOutput,
  type LastRuns,
  type PruneOutput,
} from "../../machines/backup_scheduler.ts";
import type { LeaseFence, LeaseManager } from "../runtime/leases.ts";
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
}).passthrough() as unknown as z.ZodType<RemoteEvent>;

/** The scheduler's logic with real effects. */
export function createSchedulerLogic(deps: SchedulerDeps) {
  const { service, leases, log } = deps;
  let fence: LeaseFence | null = null;

  return backupSchedulerMachine.provide({
    actors: {
      leaseWatch: fromCallback(({ sendBack }) => {
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
              onAcquired: (token) => {
                fence = { role: SCHEDULER_ROLE, token };
                sendBack({ type: "LEASE.ACQUIRED", token });
              },
              onLost: (reason, why) => {
                fence = null;
                sendBack({ type: "LEASE.LOST", reason: `${reason}: ${why}` });
              },
            });
          } catch (err) {
            // A previous incarnation of this actor is still resigning: try again shortly.
            if (isRuntimeError(err, "CONFLICT")) timer = setTimeout(start, 200);
            else {log.error("cannot campaign for the backup scheduler", {
                error: describeError(err),
              });}
          }
        };
        start();
        return () => {
          stopped = true;
          clearTimeout(timer);
          fence = null;
          void campaign?.resign();
        };
      }),
      loadLastRuns: fromPromise<LastRuns>(() => service.lastRuns()),
      createBackup: fromPromise<CreateBackupOutput, CreateBackupInput>(
        async ({ input, signal }) => {
          const run = () =>
            service.create(input.job.type, {
              trigger: input.attempt > 1 ? "retry" : input.job.trigger,
              signal,
            });
          const result = leases
            ? fence ? await leases.fenced(fence, run) : (() => {
              throw new RuntimeError(
                "LEASE_NOT_HELD",
                "Refused to start a backup: this instance does not hold the scheduler lease",
              );
            })()
            : await run();
          return { name: result.name, skipped: result.skipped, summary: result.summary };
        },
      ),
      verifyBackup: fromPromise<{ summary: string }, { name: string }>(
        async ({ input, signal }) => {
          const result = await service.verify(input.name, { signal, discardOnFailure: true });
          if (!result.ok) {
            throw new RuntimeError(
              "BACKUP_VERIFY_FAILED",
              result.error?.message ?? `Backup ${input.name} failed verification`,
            );
          }
          return {
            summary: `verified ${input.name} (${result.mode}) in ${result.durationMs} ms`,
          };
        },
      ),
      prune: fromPromise<PruneOutput>(async () => {
        try {
          const report = await service.prune();
          return { deleted: report.deleted.length };
        } catch (err) {
          // Another process is backing up: retention runs after the next backup instead.
          if (isRuntimeError(err, "BACKUP_BUSY")) return { deleted: 0 };
          throw err;
        }
      }),
    },
    actions: {
      alert: (_, params: BackupAlert) => {
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
      },
    },
  });
}

/** A small summary of the scheduler's context for /actors. */
export function summarizeScheduler(snapshot: Snapshot<unknown>): Record<string, unknown> {
  const ctx = (snapshot as unknown as { context: BackupSchedulerContext }).context;
  return {
    job: ctx.job,
    attempt: ctx.attempt,
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
      now: deps.now,
      nextRun: (cron: string, after: number) =>
        nextCronRun(cron, after, { timezone: deps.settings.timezone }),
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
          return Promise.resolve(queueRequest(ref, event, deps.instanceId));
        },
      },
    },
  };
}

function queueRequest(
  ref: AnyActorRef | undefined,
  event: RemoteEvent,
  instanceId: string,
): { queued: true; instance: string } {
  if (!ref) {
    throw new RuntimeError("ACTOR_UNAVAILABLE", "The backup scheduler is restarting; try again");
  }
  if (ref.getSnapshot().value === "standby") {
    throw new RuntimeError(
      "CONFLICT",
      `Instance ${instanceId} does not hold the backup scheduler lease`,
    );
  }
  ref.send({ type: "BACKUP.REQUEST", backupType: event.backupType });
  return { queued: true, instance: instanceId };
}
