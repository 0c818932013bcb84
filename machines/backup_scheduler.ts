/**
 * The backup scheduler: a cluster singleton that runs cron-scheduled backups one at a time.
 *
 * - `standby` until the lease watcher (`leaseWatch`, invoked for the machine's whole life)
 *   reports `LEASE.ACQUIRED`; `LEASE.LOST` returns there from anywhere, abandoning (and,
 *   through the invoked effect's abort signal, killing) a running backup.
 * - `active` has two regions. `clock` waits for the next due schedule (`untilNextDue`, at
 *   most a day at a time) and queues the due backup types. `work` first loads the last run
 *   of each type (`planning`): a schedule that fell due while no instance held the lease is
 *   queued once ("missed"). Then `idle` ⇄ `running`: one job at a time, in queue order.
 * - `running` = `creating` (effect `createBackup`: dump → compress → encrypt → checksum →
 *   store, streamed in one pass) → `verifying` (`verifyBackup`: checksums + test-restore) →
 *   `pruning` (`prune`: retention; a failure there is logged, not retried).
 * - A failure in creating or verifying goes to `failed`: an alert, then a retry after
 *   `retryDelay` (doubling), or — out of retries — a final alert and back to work.
 * - Requests (`BACKUP.REQUEST`, from the CLI / HTTP through the transport) join the queue;
 *   a type already queued or running is not queued twice.
 *
 * Time comes from the injected `now()`; due times from the injected `nextRun()` (croner in
 * production, anything in tests); every wait is an XState delay, so a SimulatedClock drives
 * the whole machine. Every state change sets `reason`, one sentence saying why.
 * @module
 */
import { assign, fromCallback, fromPromise, raise, setup } from "xstate";

/** Backup types the scheduler knows. */
export type ScheduledBackupType = "full" | "base" | "incremental" | "differential";

/** Order in which types due at the same moment run (a base before the WAL that follows it). */
const PRIORITY: ScheduledBackupType[] = ["full", "base", "differential", "incremental"];

/** One queued or running backup. */
export interface BackupJob {
  /** Type to take. */
  type: ScheduledBackupType;
  /** What asked for it. */
  trigger: "schedule" | "missed" | "manual";
  /** When it was queued (injected clock). */
  queuedAt: number;
}

/** Input of the `createBackup` effect. */
export interface CreateBackupInput {
  /** The job. */
  job: BackupJob;
  /** 1 for the first attempt, 2 for the first retry, … */
  attempt: number;
}

/** Output of the `createBackup` effect. */
export interface CreateBackupOutput {
  /** Name of the stored backup (null when skipped). */
  name: string | null;
  /** Nothing to back up (e.g. no new WAL). */
  skipped: boolean;
  /** One sentence for logs and the summary. */
  summary: string;
}

/** Output of the `prune` effect. */
export interface PruneOutput {
  /** Backups deleted. */
  deleted: number;
}

/** Last start time per type (ms), from the history. */
export type LastRuns = Partial<Record<ScheduledBackupType, number>>;

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
  /** Wall clock (ms). */
  now: () => number;
  /** Next time `expression` fires strictly after `afterMs`, or null for never. */
  nextRun: (expression: string, afterMs: number) => number | null;
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

/** Context of {@linkcode backupSchedulerMachine}. */
export interface BackupSchedulerContext {
  /** Scheduled types with their cron expressions. */
  schedules: { type: ScheduledBackupType; cron: string }[];
  /** Wall clock. */
  now: () => number;
  /** Cron evaluation. */
  nextRun: (expression: string, afterMs: number) => number | null;
  retryMax: number;
  retryDelayMs: number;
  verify: boolean;
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
  lastRun: {
    type: ScheduledBackupType;
    name: string | null;
    ok: boolean;
    at: number;
    summary: string;
  } | null;
  /** The last error, as a sentence. */
  lastError: string | null;
  /** The last alert raised here or received from another instance. */
  lastAlert: (BackupAlert & { instance?: string }) | null;
  stats: BackupSchedulerStats;
  /** Why the scheduler is where it is, one sentence. */
  reason: string;
}

/** Events of the scheduler. */
export type BackupSchedulerEvent =
  | { type: "LEASE.ACQUIRED"; token?: number | null }
  | { type: "LEASE.LOST"; reason: string }
  | { type: "BACKUP.REQUEST"; backupType: ScheduledBackupType }
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

function iso(ms: number | undefined): string {
  return ms === undefined ? "never" : new Date(ms).toISOString();
}

/** The backup scheduler statechart (placeholder effects; see actors/backup/scheduler.ts). */
export const backupSchedulerMachine = setup({
  types: {
    context: {} as BackupSchedulerContext,
    input: {} as BackupSchedulerInput,
    events: {} as BackupSchedulerEvent,
  },
  actors: {
    /** Campaigns for the scheduler lease; sends LEASE.ACQUIRED / LEASE.LOST. */
    leaseWatch: fromCallback(() => () => {}),
    /** Start time of the last run of each type, from the history. */
    loadLastRuns: fromPromise<LastRuns>(() => Promise.resolve({})),
    /** Takes one backup: dump → compress → encrypt → checksum → store. */
    createBackup: fromPromise<CreateBackupOutput, CreateBackupInput>(() =>
      Promise.reject(new Error("createBackup is not provided"))
    ),
    /** Verifies a stored backup (checksums + test-restore); rejects when it fails. */
    verifyBackup: fromPromise<{ summary: string }, { name: string }>(() =>
      Promise.reject(new Error("verifyBackup is not provided"))
    ),
    /** Applies the retention policy. */
    prune: fromPromise<PruneOutput>(() => Promise.resolve({ deleted: 0 })),
  },
  actions: {
    /** Tells operators about a failure (log + cluster broadcast in production). */
    alert: (_, _params: BackupAlert) => {},
  },
  guards: {
    hasSchedules: ({ context }) => context.schedules.length > 0,
    hasQueued: ({ context }) => context.queue.length > 0 || context.job !== null,
    skipped: ({ event }) => (event as unknown as { output: CreateBackupOutput }).output.skipped,
    verifyEnabled: ({ context }) => context.verify,
    outOfRetries: ({ context }) => context.attempt > context.retryMax,
  },
  delays: {
    /** Until the earliest due schedule (at most a day; re-armed after each wake-up). */
    untilNextDue: ({ context }) => {
      const dues = Object.values(context.nextDue).filter((v): v is number => v !== undefined);
      if (!dues.length) return MAX_WAIT_MS;
      return Math.min(Math.max(0, Math.min(...dues) - context.now()), MAX_WAIT_MS);
    },
    /** Backoff before retrying a failed job. */
    retryDelay: ({ context }) => retryDelay(context.attempt, context.retryDelayMs),
  },
}).createMachine({
  id: "backup_scheduler",
  context: ({ input }) => ({
    schedules: Object.entries(input.schedules)
      .filter((e): e is [ScheduledBackupType, string] => typeof e[1] === "string" && e[1] !== "")
      .map(([type, cron]) => ({ type, cron }))
      .sort((a, b) => byPriority(a.type, b.type)),
    now: input.now,
    nextRun: input.nextRun,
    retryMax: input.retryMax ?? 3,
    retryDelayMs: input.retryDelayMs ?? 60_000,
    verify: input.verify ?? true,
    nextDue: {},
    queue: [],
    job: null,
    attempt: 0,
    produced: null,
    lastRun: null,
    lastError: null,
    lastAlert: null,
    stats: {
      completed: 0,
      failed: 0,
      retries: 0,
      gaveUp: 0,
      missed: 0,
      skipped: 0,
      pruned: 0,
      refused: 0,
    },
    reason: "started; waiting for the scheduler lease",
  }),
  invoke: { id: "leaseWatch", src: "leaseWatch" },
  initial: "standby",
  on: {
    "backup.alert": {
      actions: assign(({ event }) => ({
        lastAlert: {
          kind: event.kind,
          type: event.backupType,
          attempt: event.attempt,
          error: event.error,
          at: event.at,
          instance: event.instance,
        },
      })),
    },
  },
  states: {
    standby: {
      on: {
        "LEASE.ACQUIRED": {
          target: "active",
          actions: assign({ reason: "holds the scheduler lease; runs the backup schedules" }),
        },
        "BACKUP.REQUEST": {
          actions: assign(({ context, event }) => ({
            stats: { ...context.stats, refused: context.stats.refused + 1 },
            reason: `refused a ${event.backupType} backup request: another instance (or ` +
              "none yet) holds the scheduler lease",
          })),
        },
      },
    },
    active: {
      type: "parallel",
      on: {
        "LEASE.LOST": {
          target: "standby",
          actions: assign(({ context, event }) => ({
            job: null,
            queue: [],
            attempt: 0,
            produced: null,
            nextDue: {},
            reason: `lost the scheduler lease (${event.reason})${
              context.job ? `; abandoned the ${context.job.type} backup` : ""
            }`,
          })),
        },
        "BACKUP.REQUEST": {
          actions: [
            assign(({ context, event }) => {
              const { queue, added } = enqueue(context.queue, context.job, [{
                type: event.backupType,
                trigger: "manual",
                queuedAt: context.now(),
              }]);
              return {
                queue,
                reason: added.length
                  ? `queued a requested ${event.backupType} backup`
                  : `a ${event.backupType} backup is already queued or running`,
              };
            }),
            raise({ type: "QUEUE.CHANGED" }),
          ],
        },
      },
      states: {
        clock: {
          initial: "arming",
          states: {
            arming: {
              always: [
                {
                  guard: "hasSchedules",
                  target: "waiting",
                  actions: assign(({ context }) => {
                    const now = context.now();
                    const nextDue: BackupSchedulerContext["nextDue"] = {};
                    for (const s of context.schedules) {
                      nextDue[s.type] = context.nextRun(s.cron, now) ?? undefined;
                    }
                    return { nextDue };
                  }),
                },
                { target: "off" },
              ],
            },
            waiting: {
              after: {
                untilNextDue: {
                  target: "waiting",
                  reenter: true,
                  actions: [
                    assign(({ context }) => {
                      const now = context.now();
                      const due = context.schedules
                        .filter((s) => (context.nextDue[s.type] ?? Infinity) <= now)
                        .map((s) => s.type)
                        .sort(byPriority);
                      if (!due.length) return {};
                      const nextDue = { ...context.nextDue };
                      for (const s of context.schedules) {
                        if (due.includes(s.type)) {
                          nextDue[s.type] = context.nextRun(
                            s.cron,
                            Math.max(now, context.nextDue[s.type]!),
                          ) ?? undefined;
                        }
                      }
                      const { queue, added } = enqueue(
                        context.queue,
                        context.job,
                        due.map((type) => ({ type, trigger: "schedule" as const, queuedAt: now })),
                      );
                      return {
                        nextDue,
                        queue,
                        reason: added.length
                          ? `schedule due: queued ${added.map((j) => j.type).join(", ")}`
                          : `schedule due for ${due.join(", ")}, already queued or running`,
                      };
                    }),
                    raise({ type: "QUEUE.CHANGED" }),
                  ],
                },
              },
            },
            off: {},
          },
        },
        work: {
          initial: "planning",
          states: {
            planning: {
              invoke: {
                src: "loadLastRuns",
                onDone: {
                  target: "dispatch",
                  actions: assign(({ context, event }) => {
                    const now = context.now();
                    const last = event.output;
                    const missed = context.schedules
                      .filter((s) => {
                        const at = last[s.type];
                        if (at === undefined) return false;
                        const due = context.nextRun(s.cron, at);
                        return due !== null && due <= now;
                      })
                      .map((s) => ({ type: s.type, trigger: "missed" as const, queuedAt: now }));
                    const { queue, added } = enqueue(context.queue, context.job, missed);
                    return {
                      queue,
                      stats: { ...context.stats, missed: context.stats.missed + added.length },
                      reason: added.length
                        ? `took over the schedules; running missed ${
                          added.map((j) => `${j.type} (last run ${iso(last[j.type])})`).join(", ")
                        } once`
                        : "took over the schedules; nothing was missed",
                    };
                  }),
                },
                onError: {
                  target: "dispatch",
                  actions: assign(({ event }) => ({
                    lastError: describe(event.error),
                    reason: `cannot read the backup history (${
                      describe(event.error)
                    }); missed schedules are not checked`,
                  })),
                },
              },
            },
            dispatch: {
              always: [{ guard: "hasQueued", target: "running" }, { target: "idle" }],
            },
            idle: {
              entry: assign(({ context }) => ({
                reason: context.schedules.length
                  ? `idle; next: ${
                    context.schedules.map((s) => `${s.type} at ${iso(context.nextDue[s.type])}`)
                      .join(", ")
                  }`
                  : "idle; no backup is scheduled (requests only)",
              })),
              on: { "QUEUE.CHANGED": "dispatch" },
            },
            running: {
              entry: assign(({ context }) => {
                const job = context.job ?? context.queue[0];
                return {
                  job,
                  queue: context.job ? context.queue : context.queue.slice(1),
                  attempt: context.attempt + 1,
                  produced: null,
                  reason: `running a ${job.type} backup (${job.trigger}, attempt ${
                    context.attempt + 1
                  })`,
                };
              }),
              initial: "creating",
              states: {
                creating: {
                  invoke: {
                    src: "createBackup",
                    input: ({ context }) => ({ job: context.job!, attempt: context.attempt }),
                    onDone: [
                      {
                        guard: "skipped",
                        target: "done",
                        actions: assign(({ context, event }) => ({
                          stats: { ...context.stats, skipped: context.stats.skipped + 1 },
                          lastRun: {
                            type: context.job!.type,
                            name: null,
                            ok: true,
                            at: context.now(),
                            summary: event.output.summary,
                          },
                          reason: event.output.summary,
                        })),
                      },
                      {
                        guard: "verifyEnabled",
                        target: "verifying",
                        actions: assign(({ event }) => ({
                          produced: event.output.name,
                          reason: event.output.summary,
                        })),
                      },
                      {
                        target: "recorded",
                        actions: assign(({ event }) => ({
                          produced: event.output.name,
                          reason: event.output.summary,
                        })),
                      },
                    ],
                    onError: {
                      target: "#backup_scheduler.active.work.failed",
                      actions: assign(({ event }) => ({ lastError: describe(event.error) })),
                    },
                  },
                },
                verifying: {
                  invoke: {
                    src: "verifyBackup",
                    input: ({ context }) => ({ name: context.produced! }),
                    onDone: {
                      target: "recorded",
                      actions: assign(({ event }) => ({ reason: event.output.summary })),
                    },
                    onError: {
                      target: "#backup_scheduler.active.work.failed",
                      actions: assign(({ event }) => ({
                        lastError: `verification failed: ${describe(event.error)}`,
                      })),
                    },
                  },
                },
                recorded: {
                  always: {
                    target: "pruning",
                    actions: assign(({ context }) => ({
                      stats: { ...context.stats, completed: context.stats.completed + 1 },
                      lastRun: {
                        type: context.job!.type,
                        name: context.produced,
                        ok: true,
                        at: context.now(),
                        summary: context.reason,
                      },
                      lastError: null,
                    })),
                  },
                },
                pruning: {
                  invoke: {
                    src: "prune",
                    onDone: {
                      target: "done",
                      actions: assign(({ context, event }) => ({
                        stats: {
                          ...context.stats,
                          pruned: context.stats.pruned + event.output.deleted,
                        },
                      })),
                    },
                    onError: {
                      target: "done",
                      actions: assign(({ event }) => ({
                        lastError: `retention failed: ${describe(event.error)}`,
                      })),
                    },
                  },
                },
                done: { type: "final" },
              },
              onDone: {
                target: "dispatch",
                actions: assign(({ context }) => ({
                  job: null,
                  attempt: 0,
                  produced: null,
                  reason: `finished the ${context.job?.type} backup`,
                })),
              },
            },
            failed: {
              entry: [
                assign(({ context }) => ({
                  stats: { ...context.stats, failed: context.stats.failed + 1 },
                  lastRun: {
                    type: context.job!.type,
                    name: context.produced,
                    ok: false,
                    at: context.now(),
                    summary: context.lastError ?? "failed",
                  },
                  reason: `the ${
                    context.job!.type
                  } backup failed (attempt ${context.attempt}): ${context.lastError}; ${
                    context.attempt <= context.retryMax
                      ? `retrying in ${retryDelay(context.attempt, context.retryDelayMs)} ms`
                      : "no retries left"
                  }`,
                })),
                {
                  type: "alert",
                  params: ({ context }) => ({
                    kind: context.attempt <= context.retryMax ? "failed" : "gave_up",
                    type: context.job!.type,
                    attempt: context.attempt,
                    error: context.lastError ?? "unknown error",
                    at: context.now(),
                  }),
                },
              ],
              always: {
                guard: "outOfRetries",
                target: "dispatch",
                actions: assign(({ context }) => ({
                  stats: { ...context.stats, gaveUp: context.stats.gaveUp + 1 },
                  reason: `gave up on the ${context.job!.type} backup after ${context.attempt} ` +
                    `attempts: ${context.lastError}`,
                  job: null,
                  attempt: 0,
                  produced: null,
                })),
              },
              after: {
                retryDelay: {
                  target: "running",
                  actions: assign(({ context }) => ({
                    stats: { ...context.stats, retries: context.stats.retries + 1 },
                  })),
                },
              },
            },
          },
        },
      },
    },
  },
});
