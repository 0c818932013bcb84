/**
 * The backup scheduler: a cluster singleton that runs cron-scheduled backups one at a time.
 *
 * - `standby` until the lease watcher (`leaseWatch`, invoked for the machine's whole life)
 *   reports `LEASE.ACQUIRED` with its fencing token, which the chart keeps (`leaseToken`)
 *   and hands to every backup it starts; `LEASE.LOST` returns there from anywhere,
 *   abandoning (and, through the invoked effect's abort signal, killing) a running backup.
 * - `active` has two regions. `clock` reads the schedules (`readSchedule`: the injected
 *   clock's time and each cron expression's next run), queues the types that fell due and
 *   waits for the earliest next one (`untilNextDue`, at most a day at a time). `work` first
 *   loads the last run of each type (`planning`): a schedule that fell due while no
 *   instance held the lease is queued once ("missed"). Then `idle` ⇄ `running`: one job at
 *   a time, in queue order.
 * - `running` = `creating` (effect `createBackup`: dump → compress → encrypt → checksum →
 *   store, streamed in one pass) → `verifying` (`verifyBackup`: checksums + test-restore) →
 *   `pruning` (`prune`: retention; a failure there is logged, not retried).
 * - A failure in creating or verifying goes to `failed`: an alert, then a retry after
 *   `retryDelay` (doubling), or — out of retries — a final alert and back to work.
 * - Requests (`BACKUP.REQUEST`, from the CLI / HTTP through the transport) join the queue;
 *   a type already queued or running is not queued twice.
 *
 * The context is data only, so a snapshot serialises. Time is what the effects and events
 * report from the injected clock (`at`, kept as `clockAt`); cron evaluation is an effect
 * (croner in production); every wait is an XState delay, so a SimulatedClock drives the
 * whole machine. Every state change sets `reason`, one sentence saying why.
 *
 * XState does not restart a pending `after` timer when it restores a persisted snapshot,
 * and it runs an in-flight promise actor again; {@linkcode resumeSnapshot} prepares a
 * persisted snapshot so that neither can happen: it restores into `standby` with the
 * interrupted job first in line, and the next `LEASE.ACQUIRED` re-plans and re-arms every
 * wait from the context's data.
 * @module
 */
import { assign, fromCallback, fromPromise, raise, setup, type Snapshot } from "xstate";

/** Backup types the scheduler knows. */
export type ScheduledBackupType = "full" | "base" | "incremental" | "differential";

/** Order in which types due at the same moment run (a base before the WAL that follows it). */
const PRIORITY: ScheduledBackupType[] = ["full", "base", "differential", "incremental"];

/** One scheduled type with its cron expression. */
export interface Schedule {
  /** Backup type. */
  type: ScheduledBackupType;
  /** Cron expression (evaluated by the `readSchedule` and `loadLastRuns` effects). */
  cron: string;
  /** Base backups: file-level incremental (only the files changed since the newest base). */
  incremental?: boolean;
}

/** One queued or running backup. */
export interface BackupJob {
  /** Type to take. */
  type: ScheduledBackupType;
  /** What asked for it. */
  trigger: "schedule" | "missed" | "manual";
  /** Base backups: file-level incremental (only the files changed since the newest base). */
  incremental?: boolean;
  /** When it was queued (injected clock). */
  queuedAt: number;
}

/** Next run of each schedule (ms), or null when its expression never fires again. */
export type NextRuns = Partial<Record<ScheduledBackupType, number | null>>;

/** Input of the `readSchedule` effect. */
export interface ReadScheduleInput {
  /** The schedules to evaluate. */
  schedules: Schedule[];
}

/** Output of the `readSchedule` effect: the time now and each schedule's next run after it. */
export interface ScheduleReading {
  /** Now (injected clock, ms). */
  at: number;
  /** Each schedule's next run strictly after `at`. */
  next: NextRuns;
}

/** Last start time per type (ms), from the history. */
export type LastRuns = Partial<Record<ScheduledBackupType, number>>;

/** Output of the `loadLastRuns` effect. */
export interface LastRunsReading {
  /** Now (injected clock, ms). */
  at: number;
  /** Start of the latest run of each type. */
  lastRuns: LastRuns;
  /** Each schedule's first run after its latest run (due before `at`: it was missed). */
  nextAfterLast: NextRuns;
}

/** Input of the `createBackup` effect. */
export interface CreateBackupInput {
  /** The job. */
  job: BackupJob;
  /** 1 for the first attempt, 2 for the first retry, … */
  attempt: number;
  /** Fencing token of the scheduler lease this attempt runs under (null without Redis). */
  leaseToken: number | null;
}

/** Output of the `createBackup` effect: a typed outcome, a failure included. */
export type CreateBackupOutput =
  | {
    ok: true;
    /** Name of the stored backup (null when skipped). */
    name: string | null;
    /** Nothing to back up (e.g. no new WAL). */
    skipped: boolean;
    /** One sentence for logs and the summary. */
    summary: string;
    /** When it finished (injected clock). */
    at: number;
  }
  | {
    ok: false;
    /** The failure, as a sentence. */
    error: string;
    /** When it failed (injected clock). */
    at: number;
  };

/** Output of the `verifyBackup` effect: a typed outcome, a failure included. */
export type VerifyBackupOutput =
  | { ok: true; summary: string; at: number }
  | { ok: false; error: string; at: number };

/** Output of the `prune` effect. */
export interface PruneOutput {
  /** Backups deleted. */
  deleted: number;
}

/** Parameters of the `alert` action: a failure everyone should hear about. */
export interface BackupAlert {
  /** `failed` (a retry follows) or `gave_up` (no retries left). */
  kind: "failed" | "gave_up";
  /** The job's type. */
  type: ScheduledBackupType;
  /** Attempt that failed. */
  attempt: number;
  /** The error, as a sentence. */
  error: string;
  /** When (injected clock). */
  at: number;
}

/** Input of {@linkcode backupSchedulerMachine}. */
export interface BackupSchedulerInput {
  /** Cron expression per type (null / absent: not scheduled). */
  schedules: Partial<Record<ScheduledBackupType, string | null>>;
  /** Scheduled base backups are file-level incremental ones (default false). */
  baseIncremental?: boolean;
  /** Retries after a failed backup (default 3). */
  retryMax?: number;
  /** First pause before a retry (default 60 s; doubling up to 1 h). */
  retryDelayMs?: number;
  /** Run `verifyBackup` after each backup (default true). */
  verify?: boolean;
}

/** Counters of the scheduler. */
export interface BackupSchedulerStats {
  /** Backups stored (and verified, when verification is on). */
  completed: number;
  /** Attempts that failed. */
  failed: number;
  /** Retries started. */
  retries: number;
  /** Jobs given up after the last retry. */
  gaveUp: number;
  /** Schedules missed while no instance held the lease, run at takeover. */
  missed: number;
  /** Runs with nothing to back up. */
  skipped: number;
  /** Backups retention deleted. */
  pruned: number;
  /** Requests refused because this instance is not the scheduler. */
  refused: number;
}

/** The last finished job. */
export interface LastRun {
  /** Its type. */
  type: ScheduledBackupType;
  /** The backup it stored (null: skipped, or failed before storing). */
  name: string | null;
  /** Whether it succeeded. */
  ok: boolean;
  /** When it finished (injected clock). */
  at: number | null;
  /** One sentence. */
  summary: string;
}

/** Context of {@linkcode backupSchedulerMachine}: data only, so snapshots serialise. */
export interface BackupSchedulerContext {
  /** Scheduled types with their cron expressions, in priority order. */
  schedules: Schedule[];
  /** Retries after a failed attempt. */
  retryMax: number;
  /** First pause before a retry (ms). */
  retryDelayMs: number;
  /** Whether each backup is verified. */
  verify: boolean;
  /** Fencing token of the held scheduler lease (null in standby, or without Redis). */
  leaseToken: number | null;
  /** The latest injected-clock time an effect or event reported (ms), or null before any. */
  clockAt: number | null;
  /** Next due time per scheduled type. */
  nextDue: Partial<Record<ScheduledBackupType, number>>;
  /** Jobs waiting. */
  queue: BackupJob[];
  /** The job running or waiting for its retry. */
  job: BackupJob | null;
  /** Attempt number of the job (1 = first). */
  attempt: number;
  /** The backup the current job produced (for verification). */
  produced: string | null;
  /** The last finished job. */
  lastRun: LastRun | null;
  /** The last error, as a sentence. */
  lastError: string | null;
  /** The last alert raised here or received from another instance. */
  lastAlert: (BackupAlert & { instance?: string }) | null;
  /** Counters. */
  stats: BackupSchedulerStats;
  /** Why the scheduler is where it is, one sentence. */
  reason: string;
}

/** Events of the scheduler. */
export type BackupSchedulerEvent =
  | { type: "LEASE.ACQUIRED"; token?: number | null }
  | { type: "LEASE.LOST"; reason: string }
  | {
    type: "BACKUP.REQUEST";
    backupType: ScheduledBackupType;
    at: number;
    /** Base backups: file-level incremental. */
    incremental?: boolean;
  }
  | {
    type: "backup.alert";
    kind: "failed" | "gave_up";
    backupType: ScheduledBackupType;
    attempt: number;
    error: string;
    at: number;
    instance?: string;
  }
  | { type: "QUEUE.CHANGED" };

/** Longest single wait of the clock region (timers cannot hold ~25 days, and clocks drift). */
const MAX_WAIT_MS = 86_400_000;

function describe(error: unknown): string {
  if (error instanceof Error) return error.message;
  return typeof error === "string" ? error : JSON.stringify(error) ?? String(error);
}

/** The pause before retry number `attempt` (1-based attempts already made). */
export function retryDelay(attempt: number, baseMs: number): number {
  return Math.min(baseMs * 2 ** Math.max(0, attempt - 1), 3_600_000);
}

function enqueue(
  queue: BackupJob[],
  current: BackupJob | null,
  jobs: BackupJob[],
): { queue: BackupJob[]; added: BackupJob[] } {
  const added: BackupJob[] = [];
  const next = [...queue];
  for (const job of jobs) {
    if (current?.type === job.type || next.some((q) => q.type === job.type)) continue;
    next.push(job);
    added.push(job);
  }
  return { queue: next, added };
}

function byPriority(a: ScheduledBackupType, b: ScheduledBackupType): number {
  return PRIORITY.indexOf(a) - PRIORITY.indexOf(b);
}

function iso(ms: number | null | undefined): string {
  return ms === undefined || ms === null ? "never" : new Date(ms).toISOString();
}

const EMPTY_STATS: BackupSchedulerStats = {
  completed: 0,
  failed: 0,
  retries: 0,
  gaveUp: 0,
  missed: 0,
  skipped: 0,
  pruned: 0,
  refused: 0,
};

/** The current job as the last run: stored (summary: the reason) or failed (the error). */
function finishedRun(context: BackupSchedulerContext, ok: boolean): LastRun {
  return {
    type: context.job!.type,
    name: context.produced,
    ok,
    at: context.clockAt,
    summary: ok ? context.reason : context.lastError ?? "failed",
  };
}

/** What the `noteFailure` action records. */
interface Failure {
  /** The failure, as a sentence. */
  error: string;
  /** When, if an effect said so. */
  at: number | null;
}

const schedulerSetup = setup({
  types: {
    context: {} as BackupSchedulerContext,
    input: {} as BackupSchedulerInput,
    events: {} as BackupSchedulerEvent,
  },
  actors: {
    /** Campaigns for the scheduler lease; sends LEASE.ACQUIRED / LEASE.LOST. */
    leaseWatch: fromCallback(() => () => {}),
    /** The time now and each schedule's next run after it. */
    readSchedule: fromPromise<ScheduleReading, ReadScheduleInput>(() =>
      Promise.reject(new Error("readSchedule is not provided"))
    ),
    /** Start time of the last run of each type, from the history. */
    loadLastRuns: fromPromise<LastRunsReading, ReadScheduleInput>(() =>
      Promise.reject(new Error("loadLastRuns is not provided"))
    ),
    /** Takes one backup: dump → compress → encrypt → checksum → store. */
    createBackup: fromPromise<CreateBackupOutput, CreateBackupInput>(() =>
      Promise.reject(new Error("createBackup is not provided"))
    ),
    /** Verifies a stored backup (checksums + test-restore). */
    verifyBackup: fromPromise<VerifyBackupOutput, { name: string }>(() =>
      Promise.reject(new Error("verifyBackup is not provided"))
    ),
    /** Applies the retention policy. */
    prune: fromPromise<PruneOutput>(() => Promise.resolve({ deleted: 0 })),
  },
  actions: {
    /** Tells operators about a failure (log + cluster broadcast in production). */
    alert: (_, _params: BackupAlert) => {},
    /** Keeps an alert broadcast by any instance (this one included). */
    recordRemoteAlert: assign(({ event }) => {
      if (event.type !== "backup.alert") return {};
      return {
        lastAlert: {
          kind: event.kind,
          type: event.backupType,
          attempt: event.attempt,
          error: event.error,
          at: event.at,
          instance: event.instance,
        },
      };
    }),
    /** This instance holds the lease: keep its fencing token for the backups it starts. */
    takeLease: assign((_, params: { token: number | null }) => ({
      leaseToken: params.token,
      reason: "holds the scheduler lease; runs the backup schedules",
    })),
    /** The lease is gone: forget the token, the queue and the running job. */
    dropLease: assign(({ context }, params: { reason: string }) => ({
      leaseToken: null,
      job: null,
      queue: [],
      attempt: 0,
      produced: null,
      nextDue: {},
      reason: `lost the scheduler lease (${params.reason})${
        context.job ? `; abandoned the ${context.job.type} backup` : ""
      }`,
    })),
    /** A request reached an instance that is not the scheduler. */
    refuseRequest: assign(({ context }, params: { backupType: ScheduledBackupType }) => ({
      stats: { ...context.stats, refused: context.stats.refused + 1 },
      reason: `refused a ${params.backupType} backup request: another instance (or none yet) ` +
        "holds the scheduler lease",
    })),
    /** Queues a requested backup unless its type is already queued or running. */
    queueRequest: assign((
      { context },
      params: { backupType: ScheduledBackupType; at: number; incremental: boolean },
    ) => {
      const incremental = params.incremental && params.backupType === "base";
      const { queue, added } = enqueue(context.queue, context.job, [{
        type: params.backupType,
        trigger: "manual",
        queuedAt: params.at,
        ...(incremental ? { incremental: true } : {}),
      }]);
      return {
        queue,
        clockAt: params.at,
        reason: added.length
          ? `queued a requested ${incremental ? "incremental base" : params.backupType} backup`
          : `a ${params.backupType} backup is already queued or running`,
      };
    }),
    /** Takes a schedule reading: queues what fell due, moves those schedules on. */
    applyReading: assign(({ context }, reading: ScheduleReading) => {
      const at = reading.at;
      const dueSchedules = context.schedules
        .filter((s) => (context.nextDue[s.type] ?? Infinity) <= at);
      const due = dueSchedules.map((s) => s.type).sort(byPriority);
      const nextDue: BackupSchedulerContext["nextDue"] = {};
      for (const s of context.schedules) {
        const kept = context.nextDue[s.type];
        const next = kept === undefined || due.includes(s.type) ? reading.next[s.type] : kept;
        if (next !== null && next !== undefined) nextDue[s.type] = next;
      }
      if (!due.length) return { nextDue, clockAt: at };
      const { queue, added } = enqueue(
        context.queue,
        context.job,
        due.map((type) => ({
          type,
          trigger: "schedule" as const,
          queuedAt: at,
          ...(dueSchedules.some((s) => s.type === type && s.incremental)
            ? { incremental: true }
            : {}),
        })),
      );
      return {
        nextDue,
        queue,
        clockAt: at,
        reason: added.length
          ? `schedule due: queued ${added.map((j) => j.type).join(", ")}`
          : `schedule due for ${due.join(", ")}, already queued or running`,
      };
    }),
    /** The schedules could not be evaluated. */
    noteClockError: assign((_, params: { error: string }) => ({
      lastError: params.error,
      reason: `cannot evaluate the backup schedules (${params.error}); trying again later`,
    })),
    /** Queues, once, each schedule that fell due since its last run (missed without a lease). */
    queueMissed: assign(({ context }, reading: LastRunsReading) => {
      const missed = context.schedules
        .filter((s) => {
          const due = reading.nextAfterLast[s.type];
          return reading.lastRuns[s.type] !== undefined && typeof due === "number" &&
            due <= reading.at;
        })
        .map((s) => ({
          type: s.type,
          trigger: "missed" as const,
          queuedAt: reading.at,
          ...(s.incremental ? { incremental: true } : {}),
        }));
      const { queue, added } = enqueue(context.queue, context.job, missed);
      return {
        queue,
        clockAt: reading.at,
        stats: { ...context.stats, missed: context.stats.missed + added.length },
        reason: added.length
          ? `took over the schedules; running missed ${
            added.map((j) => `${j.type} (last run ${iso(reading.lastRuns[j.type])})`).join(", ")
          } once`
          : "took over the schedules; nothing was missed",
      };
    }),
    /** The history could not be read. */
    noteHistoryError: assign((_, params: { error: string }) => ({
      lastError: params.error,
      reason: `cannot read the backup history (${params.error}); missed schedules are not ` +
        "checked",
    })),
    /** Says what the scheduler waits for. */
    describeIdle: assign(({ context }) => ({
      reason: context.schedules.length
        ? `idle; next: ${
          context.schedules.map((s) => `${s.type} at ${iso(context.nextDue[s.type])}`).join(", ")
        }`
        : "idle; no backup is scheduled (requests only)",
    })),
    /** Starts the next attempt: the job waiting for its retry, else the head of the queue. */
    startAttempt: assign(({ context }) => {
      const job = context.job ?? context.queue[0];
      return {
        job,
        queue: context.job ? context.queue : context.queue.slice(1),
        attempt: context.attempt + 1,
        produced: null,
        reason: `running a ${job.type} backup (${job.trigger}, attempt ${context.attempt + 1})`,
      };
    }),
    /** Nothing to back up (a WAL backup without new WAL). */
    noteSkipped: assign(({ context }, params: { summary: string; at: number }) => ({
      clockAt: params.at,
      stats: { ...context.stats, skipped: context.stats.skipped + 1 },
      lastRun: {
        type: context.job!.type,
        name: null,
        ok: true,
        at: params.at,
        summary: params.summary,
      },
      reason: params.summary,
    })),
    /** The backup is stored. */
    noteStored: assign((_, params: { name: string | null; summary: string; at: number }) => ({
      produced: params.name,
      clockAt: params.at,
      reason: params.summary,
    })),
    /** The stored backup passed verification. */
    noteVerified: assign((_, params: { summary: string; at: number }) => ({
      clockAt: params.at,
      reason: params.summary,
    })),
    /** The attempt failed (creating or verifying). */
    noteFailure: assign(({ context }, params: Failure) => ({
      lastError: params.error,
      clockAt: params.at ?? context.clockAt,
    })),
    /** Counts the stored (and verified) backup as the job's result. */
    recordSuccess: assign(({ context }) => ({
      stats: { ...context.stats, completed: context.stats.completed + 1 },
      lastRun: finishedRun(context, true),
      lastError: null,
    })),
    /** Counts what retention deleted. */
    notePruned: assign(({ context }, params: PruneOutput) => ({
      stats: { ...context.stats, pruned: context.stats.pruned + params.deleted },
    })),
    /** Retention failed: logged, not retried (the next backup prunes again). */
    noteRetentionError: assign((_, params: { error: string }) => ({
      lastError: `retention failed: ${params.error}`,
    })),
    /** The job is over. */
    finishJob: assign(({ context }) => ({
      job: null,
      attempt: 0,
      produced: null,
      reason: `finished the ${context.job?.type} backup`,
    })),
    /** Records a failed attempt and says what happens next. */
    recordFailure: assign(({ context }) => ({
      stats: { ...context.stats, failed: context.stats.failed + 1 },
      lastRun: finishedRun(context, false),
      reason: `the ${
        context.job!.type
      } backup failed (attempt ${context.attempt}): ${context.lastError}; ${
        context.attempt <= context.retryMax
          ? `retrying in ${retryDelay(context.attempt, context.retryDelayMs)} ms`
          : "no retries left"
      }`,
    })),
    /** Out of retries: the job is dropped. */
    giveUp: assign(({ context }) => ({
      stats: { ...context.stats, gaveUp: context.stats.gaveUp + 1 },
      reason: `gave up on the ${context.job!.type} backup after ${context.attempt} attempts: ` +
        `${context.lastError}`,
      job: null,
      attempt: 0,
      produced: null,
    })),
    /** A retry starts. */
    countRetry: assign(({ context }) => ({
      stats: { ...context.stats, retries: context.stats.retries + 1 },
    })),
  },
  guards: {
    /** At least one type has a cron expression. */
    hasSchedules: ({ context }) => context.schedules.length > 0,
    /** A job waits for its retry or the queue is not empty. */
    hasWork: ({ context }) => context.queue.length > 0 || context.job !== null,
    /** An effect answered with a failure. */
    failedOutcome: (_, params: { ok: boolean }) => !params.ok,
    /** The backup effect found nothing to back up. */
    skipped: (_, params: { skipped: boolean }) => params.skipped,
    /** Each backup is verified. */
    verifyEnabled: ({ context }) => context.verify,
    /** The failed attempt was the last one allowed. */
    outOfRetries: ({ context }) => context.attempt > context.retryMax,
  },
  delays: {
    /** Until the earliest due schedule (at most a day; re-armed after each wake-up). */
    untilNextDue: ({ context }) => {
      const dues = Object.values(context.nextDue).filter((v): v is number => v !== undefined);
      if (!dues.length || context.clockAt === null) return MAX_WAIT_MS;
      return Math.min(Math.max(0, Math.min(...dues) - context.clockAt), MAX_WAIT_MS);
    },
    /** Backoff before retrying a failed job. */
    retryDelay: ({ context }) => retryDelay(context.attempt, context.retryDelayMs),
  },
});

/** The `clock` region: read the schedules, queue what fell due, wait for the next one. */
const clockRegion = schedulerSetup.createStateConfig({
  initial: "arming",
  states: {
    arming: {
      always: [{ guard: "hasSchedules", target: "reading" }, { target: "off" }],
    },
    reading: {
      invoke: {
        src: "readSchedule",
        input: ({ context }) => ({ schedules: context.schedules }),
        onDone: {
          target: "waiting",
          actions: [
            { type: "applyReading", params: ({ event }) => event.output },
            raise({ type: "QUEUE.CHANGED" }),
          ],
        },
        onError: {
          target: "waiting",
          actions: {
            type: "noteClockError",
            params: ({ event }) => ({ error: describe(event.error) }),
          },
        },
      },
    },
    waiting: {
      after: { untilNextDue: { target: "reading" } },
    },
    off: {},
  },
});

/** One backup job: create → verify → record → prune. */
const runningState = schedulerSetup.createStateConfig({
  entry: "startAttempt",
  initial: "creating",
  states: {
    creating: {
      invoke: {
        src: "createBackup",
        input: ({ context }) => ({
          job: context.job!,
          attempt: context.attempt,
          leaseToken: context.leaseToken,
        }),
        onDone: [
          {
            guard: { type: "failedOutcome", params: ({ event }) => event.output },
            target: "#backup_scheduler.active.work.failed",
            actions: {
              type: "noteFailure",
              params: ({ event }) => ({
                error: event.output.ok ? "" : event.output.error,
                at: event.output.at,
              }),
            },
          },
          {
            guard: {
              type: "skipped",
              params: ({ event }) => ({ skipped: event.output.ok && event.output.skipped }),
            },
            target: "done",
            actions: {
              type: "noteSkipped",
              params: ({ event }) => ({
                summary: event.output.ok ? event.output.summary : "",
                at: event.output.at,
              }),
            },
          },
          {
            guard: "verifyEnabled",
            target: "verifying",
            actions: { type: "noteStored", params: ({ event }) => storedParams(event.output) },
          },
          {
            target: "recorded",
            actions: { type: "noteStored", params: ({ event }) => storedParams(event.output) },
          },
        ],
        onError: {
          target: "#backup_scheduler.active.work.failed",
          actions: {
            type: "noteFailure",
            params: ({ event }) => ({ error: describe(event.error), at: null }),
          },
        },
      },
    },
    verifying: {
      invoke: {
        src: "verifyBackup",
        input: ({ context }) => ({ name: context.produced! }),
        onDone: [
          {
            guard: { type: "failedOutcome", params: ({ event }) => event.output },
            target: "#backup_scheduler.active.work.failed",
            actions: {
              type: "noteFailure",
              params: ({ event }) => ({
                error: `verification failed: ${event.output.ok ? "" : event.output.error}`,
                at: event.output.at,
              }),
            },
          },
          {
            target: "recorded",
            actions: {
              type: "noteVerified",
              params: ({ event }) => ({
                summary: event.output.ok ? event.output.summary : "",
                at: event.output.at,
              }),
            },
          },
        ],
        onError: {
          target: "#backup_scheduler.active.work.failed",
          actions: {
            type: "noteFailure",
            params: ({ event }) => ({
              error: `verification failed: ${describe(event.error)}`,
              at: null,
            }),
          },
        },
      },
    },
    recorded: {
      always: { target: "pruning", actions: "recordSuccess" },
    },
    pruning: {
      invoke: {
        src: "prune",
        onDone: {
          target: "done",
          actions: { type: "notePruned", params: ({ event }) => event.output },
        },
        onError: {
          target: "done",
          actions: {
            type: "noteRetentionError",
            params: ({ event }) => ({ error: describe(event.error) }),
          },
        },
      },
    },
    done: { type: "final" },
  },
  onDone: { target: "dispatch", actions: "finishJob" },
});

/** The `work` region: plan at takeover, then one job at a time with retries. */
const workRegion = schedulerSetup.createStateConfig({
  initial: "planning",
  states: {
    planning: {
      invoke: {
        src: "loadLastRuns",
        input: ({ context }) => ({ schedules: context.schedules }),
        onDone: {
          target: "dispatch",
          actions: { type: "queueMissed", params: ({ event }) => event.output },
        },
        onError: {
          target: "dispatch",
          actions: {
            type: "noteHistoryError",
            params: ({ event }) => ({ error: describe(event.error) }),
          },
        },
      },
    },
    dispatch: {
      always: [{ guard: "hasWork", target: "running" }, { target: "idle" }],
    },
    idle: {
      entry: "describeIdle",
      on: { "QUEUE.CHANGED": "dispatch" },
    },
    running: runningState,
    failed: {
      entry: [
        "recordFailure",
        {
          type: "alert",
          params: ({ context }) => ({
            kind: context.attempt <= context.retryMax ? "failed" : "gave_up",
            type: context.job!.type,
            attempt: context.attempt,
            error: context.lastError ?? "unknown error",
            at: context.clockAt ?? 0,
          }),
        },
      ],
      always: { guard: "outOfRetries", target: "dispatch", actions: "giveUp" },
      after: { retryDelay: { target: "running", actions: "countRetry" } },
    },
  },
});

function storedParams(output: CreateBackupOutput): {
  name: string | null;
  summary: string;
  at: number;
} {
  return output.ok
    ? { name: output.name, summary: output.summary, at: output.at }
    : { name: null, summary: output.error, at: output.at };
}

/** The backup scheduler statechart (placeholder effects; see actors/backup/scheduler.ts). */
export const backupSchedulerMachine = schedulerSetup.createMachine({
  id: "backup_scheduler",
  context: ({ input }) => ({
    schedules: Object.entries(input.schedules)
      .filter((e): e is [ScheduledBackupType, string] => typeof e[1] === "string" && e[1] !== "")
      .map(([type, cron]) => ({
        type,
        cron,
        ...(type === "base" && input.baseIncremental ? { incremental: true } : {}),
      }))
      .sort((a, b) => byPriority(a.type, b.type)),
    retryMax: input.retryMax ?? 3,
    retryDelayMs: input.retryDelayMs ?? 60_000,
    verify: input.verify ?? true,
    leaseToken: null,
    clockAt: null,
    nextDue: {},
    queue: [],
    job: null,
    attempt: 0,
    produced: null,
    lastRun: null,
    lastError: null,
    lastAlert: null,
    stats: { ...EMPTY_STATS },
    reason: "started; waiting for the scheduler lease",
  }),
  invoke: { id: "leaseWatch", src: "leaseWatch" },
  initial: "standby",
  on: { "backup.alert": { actions: "recordRemoteAlert" } },
  states: {
    standby: {
      on: {
        "LEASE.ACQUIRED": {
          target: "active",
          actions: { type: "takeLease", params: ({ event }) => ({ token: event.token ?? null }) },
        },
        "BACKUP.REQUEST": {
          actions: {
            type: "refuseRequest",
            params: ({ event }) => ({ backupType: event.backupType }),
          },
        },
      },
    },
    active: {
      type: "parallel",
      on: {
        "LEASE.LOST": {
          target: "standby",
          actions: { type: "dropLease", params: ({ event }) => ({ reason: event.reason }) },
        },
        "BACKUP.REQUEST": {
          actions: [
            {
              type: "queueRequest",
              params: ({ event }) => ({
                backupType: event.backupType,
                at: event.at,
                incremental: event.incremental === true,
              }),
            },
            raise({ type: "QUEUE.CHANGED" }),
          ],
        },
      },
      states: {
        clock: clockRegion,
        work: workRegion,
      },
    },
  },
});

/** The fields of a persisted scheduler snapshot that {@linkcode resumeSnapshot} rewrites. */
interface PersistedScheduler {
  value: unknown;
  context: BackupSchedulerContext;
  children: Record<string, unknown>;
  historyValue?: unknown;
}

/**
 * A persisted snapshot (e.g. `JSON.parse(JSON.stringify(actor.getPersistedSnapshot()))`)
 * made safe to restore with `createActor(logic, { snapshot })`:
 *
 * - XState would start an in-flight `createBackup` or `verifyBackup` again on restore, under
 *   a lease this process may no longer hold; the restored scheduler is in `standby` instead,
 *   with only the lease watcher running, and runs nothing until `LEASE.ACQUIRED`.
 * - XState would not restart the pending `after` timers (next due schedule, retry backoff);
 *   `LEASE.ACQUIRED` re-enters `active`, whose `reading` and `planning` states re-arm
 *   them from the injected clock and the history.
 * - The interrupted job stays first in line (its attempt counted), the queue, counters,
 *   last run and last alert are kept; the lease token and due times are not (both are
 *   read again).
 */
export function resumeSnapshot(snapshot: Snapshot<unknown>): Snapshot<unknown> {
  const persisted = snapshot as Snapshot<unknown> & PersistedScheduler;
  const ctx = persisted.context;
  const lease = persisted.children.leaseWatch;
  const interrupted = ctx.job
    ? `; the interrupted ${ctx.job.type} backup (attempt ${ctx.attempt}) runs first`
    : "";
  const resumed: PersistedScheduler = {
    ...persisted,
    value: "standby",
    children: lease ? { leaseWatch: lease } : {},
    historyValue: {},
    context: {
      ...ctx,
      leaseToken: null,
      nextDue: {},
      produced: null,
      reason: `restored from a snapshot; waiting for the scheduler lease${interrupted}`,
    },
  };
  return resumed as unknown as Snapshot<unknown>;
}
