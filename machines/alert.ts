/**
 * The statechart of one alert rule: it evaluates the rule on a schedule and tracks
 * whether the condition holds.
 *
 * Two regions run side by side. `evaluation` waits `everyMs` and runs the `evaluate` effect
 * (a query through the metrics reader). Its answer takes one path: `recordSample` keeps the
 * value, then `judgeSample` raises the verdict — `CONDITION.HOLDS` or `CONDITION.CLEAR`, or
 * nothing when the rule's `noData` policy is `keep` and there was no data. A failed query
 * is counted (`recordFailure`) and changes nothing else: a storage outage neither fires
 * nor resolves an alert. `status` follows the verdicts only:
 *
 * inactive → pending (condition holds) → firing (still holding after `forMs`) → resolved
 * (condition clear again) → pending … A sample with no data counts as the rule's `noData`
 * policy says: `ok` (clear), `alerting` (holds) or `keep` (no verdict).
 *
 * The context is data only. Every timestamp comes from the effects (`at`, from the injected
 * clock); every wait is an XState delay, so the chart runs on a SimulatedClock in tests.
 * `notify` (firing and resolved) and `track` (every status change and evaluation) are
 * placeholders; actors/metrics/alerts.ts provides the log, webhook and cluster-event
 * notifications.
 * @module
 */
import { assign, enqueueActions, fromPromise, setup } from "xstate";

/** Comparison of an alert rule. */
export type AlertOperator = ">" | ">=" | "<" | "<=" | "==" | "!=";

/** What an alert rule checks; the query part is opaque to the chart. */
export interface AlertRule {
  /** Rule name (unique; also the actor id suffix). */
  name: string;
  /** How the value compares with the threshold. */
  op: AlertOperator;
  /** The threshold. */
  threshold: number;
  /** How long the condition must hold before the alert fires (ms, 0 = at once). */
  forMs: number;
  /** Time between evaluations (ms). */
  everyMs: number;
  /** How a sample without data counts. */
  noData: "ok" | "alerting" | "keep";
  /** Severity label passed to notifications. */
  severity: string;
  /** One line for humans, passed to notifications. */
  summary: string;
}

/** Output of the `evaluate` effect: the value (null: no data) at a time from the injected clock. */
export interface AlertSample {
  /** The evaluated value, or null when the query returned no data. */
  value: number | null;
  /** Injected-clock time of the evaluation (ms). */
  at: number;
  /** Tags of the series the value came from, if any. */
  tags?: Record<string, string>;
}

/** Status of an alert. */
export type AlertStatus = "inactive" | "pending" | "firing" | "resolved";

/** Parameters of the `notify` action. */
export interface AlertNotification {
  /** The rule. */
  rule: AlertRule;
  /** `firing` or `resolved`. */
  status: "firing" | "resolved";
  /** The value that triggered the change (null: no data). */
  value: number | null;
  /** Tags of that value's series. */
  tags: Record<string, string>;
  /** When the condition started holding. */
  since: number | null;
  /** When the change happened (injected clock). */
  at: number;
  /** One sentence saying why. */
  reason: string;
}

/** Context of an alert. */
export interface AlertContext {
  rule: AlertRule;
  /** Status now (mirrors the `status` region, for the `track` action). */
  status: AlertStatus;
  /** Last evaluated value (null: no data or never evaluated). */
  value: number | null;
  /** Tags of the last value's series. */
  tags: Record<string, string>;
  /** When the current breach started (ms), or null. */
  since: number | null;
  /** When the alert last fired. */
  firedAt: number | null;
  /** When it last resolved. */
  resolvedAt: number | null;
  /** Time of the last evaluation. */
  evaluatedAt: number | null;
  /** Evaluations done (successful or not). */
  evaluations: number;
  /** Consecutive failed evaluations. */
  failures: number;
  /** Last evaluation error. */
  lastError: string | null;
  /** Why the alert is in its state, one sentence. */
  reason: string;
}

/** Events of an alert (`CONDITION.*` are raised by the chart itself from each sample). */
export type AlertEvent =
  | { type: "EVALUATE_NOW" }
  | { type: "CONDITION.HOLDS" }
  | { type: "CONDITION.CLEAR" };

/** True when `value` meets the rule's condition. */
export function conditionHolds(rule: AlertRule, value: number): boolean {
  switch (rule.op) {
    case ">":
      return value > rule.threshold;
    case ">=":
      return value >= rule.threshold;
    case "<":
      return value < rule.threshold;
    case "<=":
      return value <= rule.threshold;
    case "==":
      return value === rule.threshold;
    case "!=":
      return value !== rule.threshold;
  }
}

/** What a sample says about the rule: the condition holds, is clear, or (no data, `keep`) nothing. */
export function verdict(rule: AlertRule, value: number | null): "holds" | "clear" | null {
  if (value === null) {
    return rule.noData === "keep" ? null : rule.noData === "alerting" ? "holds" : "clear";
  }
  return conditionHolds(rule, value) ? "holds" : "clear";
}

function show(value: number | null): string {
  return value === null ? "no data" : String(Math.round(value * 1000) / 1000);
}

function describeCondition(rule: AlertRule, value: number | null): string {
  return `${show(value)} ${rule.op} ${rule.threshold}`;
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

const alertSetup = setup({
  types: {
    context: {} as AlertContext,
    events: {} as AlertEvent,
    input: {} as { rule: AlertRule },
  },
  actors: {
    /** Evaluates the rule's query now. */
    evaluate: fromPromise<AlertSample, { rule: AlertRule }>(() =>
      Promise.resolve({ value: null, at: 0 })
    ),
  },
  actions: {
    /** Sends a firing or resolved notification (log, webhook, cluster event). */
    notify: (_, _params: AlertNotification) => {},
    /** Told about every status change and evaluation (for /alerts and /metrics). */
    track: (_, _params: { status: AlertStatus; context: AlertContext }) => {},
    /** Keeps an evaluation's answer; a sample without a verdict keeps the last value. */
    recordSample: assign(({ context }, sample: AlertSample) => {
      const counted = {
        evaluatedAt: sample.at,
        evaluations: context.evaluations + 1,
        failures: 0,
        lastError: null,
      };
      if (verdict(context.rule, sample.value) === null) return counted;
      return { ...counted, value: sample.value, tags: sample.tags ?? {} };
    }),
    /** Raises the verdict of the sample just recorded, if it has one. */
    judgeSample: enqueueActions(({ context, enqueue }, sample: { value: number | null }) => {
      const found = verdict(context.rule, sample.value);
      if (found === "holds") enqueue.raise({ type: "CONDITION.HOLDS" });
      if (found === "clear") enqueue.raise({ type: "CONDITION.CLEAR" });
    }),
    /** A failed evaluation: counted, the state kept. */
    recordFailure: assign(({ context }, params: { error: string }) => ({
      evaluations: context.evaluations + 1,
      failures: context.failures + 1,
      lastError: params.error,
      reason: `evaluation failed (${context.failures + 1} in a row), state kept: ${params.error}`,
    })),
    /** Mirrors the status region in the context (for `track` and summaries). */
    enterStatus: assign((_, params: { status: AlertStatus }) => ({ status: params.status })),
    /** The condition does not hold while inactive. */
    noteClear: assign(({ context }) => ({
      reason: `condition does not hold (${describeCondition(context.rule, context.value)} is ` +
        "false)",
    })),
    /** A breach begins at the last evaluation. */
    startBreach: assign(({ context }, params: { again: boolean }) => ({
      since: context.evaluatedAt,
      reason: `condition holds${params.again ? " again" : ""} (${
        describeCondition(context.rule, context.value)
      }); firing after ${context.rule.forMs} ms`,
    })),
    /** The breach ended before `forMs`. */
    endBreach: assign(({ context }) => ({
      since: null,
      reason: `condition stopped holding before ${context.rule.forMs} ms (${show(context.value)})`,
    })),
    /** The breach lasted `forMs`. */
    noteFired: assign(({ context }) => ({
      reason: `fired: ${
        describeCondition(context.rule, context.value)
      } held for ${context.rule.forMs} ms`,
      // The delay ran on the actor's clock: the alert fired `forMs` after the breach began.
      firedAt: context.since !== null
        ? context.since + context.rule.forMs
        : (context.evaluatedAt ?? 0),
    })),
    /** The condition cleared while firing. */
    noteResolved: assign(({ context }) => ({
      reason: `resolved: ${describeCondition(context.rule, context.value)} no longer holds`,
      resolvedAt: context.evaluatedAt,
    })),
    /** The resolved breach is over. */
    clearSince: assign({ since: null }),
  },
  delays: {
    every: ({ context }) => context.rule.everyMs,
    forDuration: ({ context }) => context.rule.forMs,
  },
});

/** The notification of a status change: firing at `firedAt`, resolved at the evaluation. */
function notification(
  context: AlertContext,
  status: "firing" | "resolved",
): AlertNotification {
  return {
    rule: context.rule,
    status,
    value: context.value,
    tags: context.tags,
    since: context.since,
    at: (status === "firing" ? context.firedAt : context.evaluatedAt) ?? 0,
    reason: context.reason,
  };
}

/** Tracks the context as it is now (every status change and evaluation). */
const TRACK = {
  type: "track",
  params: ({ context }: { context: AlertContext }) => ({ status: context.status, context }),
} as const;

/** The `evaluation` region: wait, evaluate, record the sample and raise its verdict. */
const evaluationRegion = alertSetup.createStateConfig({
  initial: "waiting",
  states: {
    waiting: {
      after: { every: "evaluating" },
      on: { EVALUATE_NOW: "evaluating" },
    },
    evaluating: {
      invoke: {
        src: "evaluate",
        input: ({ context }) => ({ rule: context.rule }),
        onDone: {
          target: "waiting",
          actions: [
            { type: "recordSample", params: ({ event }) => event.output },
            { type: "judgeSample", params: ({ event }) => ({ value: event.output.value }) },
            TRACK,
          ],
        },
        onError: {
          target: "waiting",
          actions: [
            { type: "recordFailure", params: ({ event }) => ({ error: message(event.error) }) },
            TRACK,
          ],
        },
      },
    },
  },
});

/** The `status` region: follows the verdicts, fires after `forMs`, notifies. */
const statusRegion = alertSetup.createStateConfig({
  initial: "inactive",
  states: {
    inactive: {
      entry: [{ type: "enterStatus", params: { status: "inactive" } }, TRACK],
      on: {
        "CONDITION.HOLDS": {
          target: "pending",
          actions: { type: "startBreach", params: { again: false } },
        },
        "CONDITION.CLEAR": { actions: ["noteClear", TRACK] },
      },
    },
    pending: {
      entry: [{ type: "enterStatus", params: { status: "pending" } }, TRACK],
      after: { forDuration: { target: "firing", actions: "noteFired" } },
      on: { "CONDITION.CLEAR": { target: "inactive", actions: "endBreach" } },
    },
    firing: {
      entry: [
        { type: "enterStatus", params: { status: "firing" } },
        { type: "notify", params: ({ context }) => notification(context, "firing") },
        TRACK,
      ],
      on: { "CONDITION.CLEAR": { target: "resolved", actions: "noteResolved" } },
    },
    resolved: {
      entry: [
        { type: "enterStatus", params: { status: "resolved" } },
        { type: "notify", params: ({ context }) => notification(context, "resolved") },
        "clearSince",
        TRACK,
      ],
      on: {
        "CONDITION.HOLDS": {
          target: "pending",
          actions: { type: "startBreach", params: { again: true } },
        },
      },
    },
  },
});

/** The alert statechart (one actor per rule). */
export const alertMachine = alertSetup.createMachine({
  id: "alert",
  type: "parallel",
  context: ({ input }) => ({
    rule: input.rule,
    status: "inactive",
    value: null,
    tags: {},
    since: null,
    firedAt: null,
    resolvedAt: null,
    evaluatedAt: null,
    evaluations: 0,
    failures: 0,
    lastError: null,
    reason: "not evaluated yet",
  }),
  states: {
    evaluation: evaluationRegion,
    status: statusRegion,
  },
});
