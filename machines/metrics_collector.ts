/**
 * The metrics collector statechart: every `intervalMs` it runs the `collect` effect (stream,
 * system, database and cache sources) and hands the points to the `record` action, which
 * queues them for the time-series writer and keeps them for `GET /metrics`. Recording
 * never waits for the storage: a slow or absent InfluxDB cannot stall the cycle.
 *
 * running.starting → (after firstDelayMs) collecting → waiting → (after intervalMs or
 * COLLECT_NOW) collecting …
 * A cycle fails when the effect throws or every source failed; after `failAfter` failed
 * cycles in a row the collector is `degraded` (it keeps trying on the same schedule) and
 * the next good cycle brings it back. A failing source alone only shows in `sourceErrors`.
 *
 * Which sources are failing is the chart's too (`sourceErrors`): when a source starts or
 * stops failing, `reportSources` is told once, so the log says so once, not every cycle.
 * The context is data only.
 *
 * The collector is also the concern's mailbox for alert notices other instances broadcast
 * (`metrics.alert`); it keeps the most recent ones.
 * @module
 */
import { assign, fromPromise, setup } from "xstate";

/** One collected point (structurally the same as lib/line_protocol.ts `MetricPoint`). */
export interface CollectedPoint {
  /** Measurement name. */
  measurement: string;
  /** Tags. */
  tags?: Readonly<Record<string, string | number | null | undefined>>;
  /** Numeric fields. */
  fields: Readonly<Record<string, number | null | undefined>>;
  /** Milliseconds since the epoch. */
  time: number;
}

/** How one source did in a cycle. */
export interface SourceReport {
  /** Points it produced. */
  points: number;
  /** Milliseconds it took. */
  ms: number;
  /** Why it failed, or null. */
  error: string | null;
  /** Why it was skipped (e.g. "another instance collects cluster metrics"), or null. */
  skipped?: string | null;
}

/** Output of the `collect` effect. */
export interface CollectOutput {
  /** Injected-clock time of the cycle (ms); every point carries it. */
  at: number;
  /** Wall time the cycle took (ms). */
  durationMs: number;
  /** The points. */
  points: readonly CollectedPoint[];
  /** Per-source outcome. */
  sources: Record<string, SourceReport>;
}

/** An alert notice broadcast by an instance. */
export interface AlertNotice {
  /** Rule name. */
  rule: string;
  /** `firing` or `resolved`. */
  status: "firing" | "resolved";
  /** The value, or null (no data). */
  value: number | null;
  /** Instance that evaluated the rule. */
  instance: string;
  /** When it happened (ms). */
  at: number;
}

/** Input of the collector. */
export interface CollectorInput {
  /** Time between collections (ms, default 10 000). */
  intervalMs?: number;
  /** Wait before the first collection (ms, default 0: at once). */
  firstDelayMs?: number;
  /** Failed cycles in a row before the collector calls itself degraded (default 3). */
  failAfter?: number;
  /** Alert notices kept (default 50). */
  keepNotices?: number;
}

/** Context of the collector. */
export interface CollectorContext {
  intervalMs: number;
  firstDelayMs: number;
  failAfter: number;
  keepNotices: number;
  /** Cycles completed (good or failed). */
  cycles: number;
  /** Points collected since start. */
  totalPoints: number;
  /** Points of the last good cycle. */
  lastPoints: number;
  /** Time of the last good cycle (injected clock). */
  lastCollectedAt: number | null;
  /** Duration of the last cycle (ms). */
  lastDurationMs: number | null;
  /** Failed cycles in a row. */
  failures: number;
  /** Why the last cycle failed. */
  lastError: string | null;
  /** Sources that failed in the last cycle, with the reason. */
  sourceErrors: Record<string, string>;
  /** Recent alert notices from the cluster, oldest first. */
  notices: AlertNotice[];
  /** Why the collector is in its state, one sentence. */
  reason: string;
}

/** Events of the collector. */
export type CollectorEvent =
  | { type: "COLLECT_NOW" }
  | { type: "STOP" }
  | ({ type: "metrics.alert"; origin?: unknown } & AlertNotice);

/** Parameters of the `reportSources` action: sources that started or stopped failing. */
export interface SourceChanges {
  /** Sources failing now that did not fail in the previous recorded cycle, with the reason. */
  failed: Record<string, string>;
  /** Sources that failed in the previous recorded cycle and answered now. */
  recovered: string[];
}

function errorsOf(output: CollectOutput): Record<string, string> {
  const errors: Record<string, string> = {};
  for (const [name, report] of Object.entries(output.sources)) {
    if (report.error) errors[name] = report.error;
  }
  return errors;
}

/** Which sources started or stopped failing between two cycles' `sourceErrors`. */
export function sourceChanges(
  before: Record<string, string>,
  now: Record<string, string>,
): SourceChanges {
  return {
    failed: Object.fromEntries(Object.entries(now).filter(([name]) => !(name in before))),
    recovered: Object.keys(before).filter((name) => !(name in now)),
  };
}

/** True when a cycle produced nothing because every source that ran failed. */
export function cycleFailed(output: CollectOutput): boolean {
  const ran = Object.values(output.sources).filter((s) => !s.skipped);
  return ran.length > 0 && ran.every((s) => s.error !== null);
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function describeCycle(output: CollectOutput): string {
  const errors = Object.keys(errorsOf(output));
  const base = `collected ${output.points.length} points from ${
    Object.values(output.sources).filter((s) => !s.skipped && !s.error).length
  } sources in ${Math.round(output.durationMs)} ms`;
  return errors.length ? `${base}; failed: ${errors.sort().join(", ")}` : base;
}

const collectorSetup = setup({
  types: {
    context: {} as CollectorContext,
    events: {} as CollectorEvent,
    input: {} as CollectorInput | undefined,
  },
  actors: {
    /** Reads every source once. */
    collect: fromPromise<CollectOutput, { cycle: number }>(() =>
      Promise.resolve({ at: 0, durationMs: 0, points: [], sources: {} })
    ),
  },
  actions: {
    /** Queues the points for the writer and keeps them for /metrics (must not block). */
    record: (_, _params: CollectOutput) => {},
    /** Told when sources start or stop failing (logged once each way, not every cycle). */
    reportSources: (_, _params: SourceChanges) => {},
    /** Keeps a notice another instance broadcast (the most recent `keepNotices`). */
    keepNotice: assign(({ context, event }) => {
      if (event.type !== "metrics.alert") return {};
      return {
        notices: [...context.notices, {
          rule: event.rule,
          status: event.status,
          value: event.value,
          instance: event.instance,
          at: event.at,
        }].slice(-context.keepNotices),
      };
    }),
    /** Every source that ran failed: the cycle counts as failed. */
    noteEmptyCycle: assign((_, output: CollectOutput) => ({
      lastDurationMs: output.durationMs,
      sourceErrors: errorsOf(output),
      lastError: `every source failed: ${
        Object.entries(errorsOf(output)).map(([k, v]) => `${k}: ${v}`).join("; ")
      }`,
    })),
    /** A good cycle. */
    noteCycle: assign(({ context }, output: CollectOutput) => ({
      cycles: context.cycles + 1,
      totalPoints: context.totalPoints + output.points.length,
      lastPoints: output.points.length,
      lastCollectedAt: output.at,
      lastDurationMs: output.durationMs,
      failures: 0,
      lastError: null,
      sourceErrors: errorsOf(output),
      reason: describeCycle(output),
    })),
    /** The collect effect itself failed. */
    noteCollectError: assign((_, params: { error: string }) => ({
      lastError: `collection failed: ${params.error}`,
    })),
    /** Counts a failed cycle; says so. */
    countFailure: assign(({ context }, params: { degraded: boolean }) => ({
      cycles: context.cycles + 1,
      failures: context.failures + 1,
      reason: params.degraded
        ? `degraded because ${
          context.failures + 1
        } collections in a row failed; last: ${context.lastError}`
        : context.lastError ?? "collection failed",
    })),
  },
  delays: {
    interval: ({ context }) => context.intervalMs,
    firstDelay: ({ context }) => context.firstDelayMs,
  },
  guards: {
    /** Every source that ran failed. */
    emptyCycle: (_, output: CollectOutput) => cycleFailed(output),
    /** This failure makes `failAfter` in a row. */
    degrading: ({ context }) => context.failures + 1 >= context.failAfter,
    /** No wait before the first collection. */
    noFirstDelay: ({ context }) => context.firstDelayMs <= 0,
  },
});

/** Actions of every answered collection: report changed sources, then record the points. */
const RECORD = [
  {
    type: "reportSources",
    params: ({ context, event }: { context: CollectorContext; event: { output: CollectOutput } }) =>
      sourceChanges(context.sourceErrors, errorsOf(event.output)),
  },
  {
    type: "record",
    params: ({ event }: { event: { output: CollectOutput } }) => event.output,
  },
] as const;

/** The `running` state: collect on a schedule, count failures, degrade and recover. */
const runningState = collectorSetup.createStateConfig({
  initial: "starting",
  on: { STOP: "stopped" },
  states: {
    starting: {
      always: { guard: "noFirstDelay", target: "collecting" },
      after: { firstDelay: "collecting" },
      on: { COLLECT_NOW: "collecting" },
    },
    collecting: {
      invoke: {
        src: "collect",
        input: ({ context }) => ({ cycle: context.cycles + 1 }),
        onDone: [
          {
            guard: { type: "emptyCycle", params: ({ event }) => event.output },
            target: "#metrics_collector.running.failedCycle",
            actions: [...RECORD, { type: "noteEmptyCycle", params: ({ event }) => event.output }],
          },
          {
            target: "waiting",
            actions: [...RECORD, { type: "noteCycle", params: ({ event }) => event.output }],
          },
        ],
        onError: {
          target: "failedCycle",
          actions: {
            type: "noteCollectError",
            params: ({ event }) => ({ error: message(event.error) }),
          },
        },
      },
    },
    failedCycle: {
      always: [
        {
          guard: "degrading",
          target: "degraded",
          actions: { type: "countFailure", params: { degraded: true } },
        },
        { target: "waiting", actions: { type: "countFailure", params: { degraded: false } } },
      ],
    },
    waiting: {
      after: { interval: "collecting" },
      on: { COLLECT_NOW: "collecting" },
    },
    degraded: {
      after: { interval: "collecting" },
      on: { COLLECT_NOW: "collecting" },
    },
  },
});

/** The metrics collector statechart. */
export const metricsCollectorMachine = collectorSetup.createMachine({
  id: "metrics_collector",
  context: ({ input }) => ({
    intervalMs: input?.intervalMs ?? 10_000,
    firstDelayMs: input?.firstDelayMs ?? 0,
    failAfter: input?.failAfter ?? 3,
    keepNotices: input?.keepNotices ?? 50,
    cycles: 0,
    totalPoints: 0,
    lastPoints: 0,
    lastCollectedAt: null,
    lastDurationMs: null,
    failures: 0,
    lastError: null,
    sourceErrors: {},
    notices: [],
    reason: "starting the first collection",
  }),
  initial: "running",
  on: { "metrics.alert": { actions: "keepNotice" } },
  states: {
    running: runningState,
    stopped: { type: "final" },
  },
});
