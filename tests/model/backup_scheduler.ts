/**
 * Model of the `backup_scheduler` chart: two schedules (full, incremental), a lease that
 * comes and goes, operator requests, and effects that store, skip, fail, throw or hang.
 *
 * Invariants: never two backups (create or verify) running at once; a backup runs only
 * while the scheduler holds the lease; a job is given up after `retryMax` retries, never
 * attempted more often.
 * @module
 */
import { backupSchedulerMachine } from "../../machines/backup_scheduler.ts";
import type { Call, ChartModel, Run } from "./_walk.ts";

const RETRY_MAX = 1;

/** The scheduler model's world: the lease tokens handed out. */
export interface BackupWorld {
  token: number;
}

function at(run: Run<BackupWorld>): number {
  return run.clock.now();
}

const BACKUPS = ["createBackup", "verifyBackup"];

/** The backup scheduler chart's model. */
export const backupSchedulerModel: ChartModel<BackupWorld> = {
  name: "backup_scheduler",
  maxDepth: 9,
  world: () => ({ token: 7 }),
  build(run) {
    return {
      logic: backupSchedulerMachine.provide({
        actors: {
          // The lease arrives as LEASE.ACQUIRED / LEASE.LOST moves.
          leaseWatch: run.effect("leaseWatch"),
          readSchedule: run.effect("readSchedule"),
          loadLastRuns: run.effect("loadLastRuns"),
          createBackup: run.effect("createBackup"),
          verifyBackup: run.effect("verifyBackup"),
          prune: run.effect("prune"),
        },
      }),
      input: {
        schedules: { full: "0 3 * * *", incremental: "*/5 * * * *" },
        retryMax: RETRY_MAX,
        retryDelayMs: 100,
        verify: true,
      },
    };
  },
  events(snapshot, world) {
    return snapshot.matches("standby") ? [{ type: "LEASE.ACQUIRED", token: world.token }] : [
      { type: "LEASE.LOST", reason: "lease expired" },
      { type: "BACKUP.REQUEST", backupType: "full", at: 0 },
    ];
  },
  effects: {
    leaseWatch: {},
    readSchedule: {
      answer: (_c, run) => ({
        output: {
          at: at(run),
          next: { full: at(run) + 300, incremental: at(run) + 200 },
        },
      }),
      error: () => ({ error: new Error("cron: cannot read the clock") }),
    },
    loadLastRuns: {
      nothing_missed: (_c, run) => ({ output: { at: at(run), lastRuns: {}, nextAfterLast: {} } }),
      full_missed: (_c, run) => ({
        output: {
          at: at(run),
          lastRuns: { full: at(run) - 1000 },
          nextAfterLast: { full: at(run) - 500 },
        },
      }),
      error: () => ({ error: new Error("history: connection refused") }),
    },
    createBackup: {
      stored: (c: Call, run) => ({
        output: {
          ok: true,
          name: `b-${c.seq}`,
          skipped: false,
          summary: "stored",
          at: at(run),
        },
      }),
      skipped: (_c, run) => ({
        output: { ok: true, name: null, skipped: true, summary: "no new WAL", at: at(run) },
      }),
      failed: (_c, run) => ({ output: { ok: false, error: "pg_dump exited 1", at: at(run) } }),
      threw: () => ({ error: new Error("spawn pg_dump ENOENT") }),
    },
    verifyBackup: {
      ok: (_c, run) => ({ output: { ok: true, summary: "restored and checked", at: at(run) } }),
      failed: (_c, run) => ({ output: { ok: false, error: "checksum mismatch", at: at(run) } }),
    },
    prune: {
      ok: () => ({ output: { deleted: 1 } }),
      error: () => ({ error: new Error("storage: permission denied") }),
    },
  },
  key(snapshot, _w, now) {
    const c = snapshot.context;
    return [
      c.leaseToken !== null,
      c.queue.map((j: { type: string }) => j.type),
      c.job?.type ?? null,
      c.attempt,
      c.clockAt === null ? null : c.clockAt - now,
      Object.entries(c.nextDue).map(([k, v]) => [k, (v as number) - now]),
    ];
  },
  invariants: {
    "never two backups at once": ({ snapshot }) => {
      const running = Object.values(snapshot.children ?? {}).filter((ref) =>
        // deno-lint-ignore no-explicit-any
        BACKUPS.includes(String((ref as any).src))
      );
      return running.length <= 1 ? null : `${running.length} backups running at once`;
    },
    "a backup runs only under the lease": ({ snapshot }) => {
      const running = Object.values(snapshot.children ?? {}).some((ref) =>
        // deno-lint-ignore no-explicit-any
        BACKUPS.includes(String((ref as any).src))
      );
      if (!running) return null;
      return snapshot.matches("active") && snapshot.context.leaseToken !== null
        ? null
        : `a backup is running in ${JSON.stringify(snapshot.value)} without the lease`;
    },
    "a job is attempted at most 1 + retryMax times": ({ snapshot }) =>
      snapshot.context.attempt <= RETRY_MAX + 1
        ? null
        : `attempt ${snapshot.context.attempt} of one job (retryMax ${RETRY_MAX})`,
  },
};
