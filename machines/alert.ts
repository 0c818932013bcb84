/**
 * The statechart of one alert rule: it evaluates the rule on a schedule and tracks
 * whether the condition holds.
 *
 * Two regions run side by side. `evaluation` waits `everyMs`, runs the `evaluate` effect
 * (a query through the metrics reader) and turns its answer into a `SAMPLE` (or, when the
 * query failed, an `EVALUATION_FAILED`, which changes nothing: a storage outage neither
 * fires nor resolves an alert). `status` follows the samples:
 *
 * inactive → pending (condition true) → firing (still true after `forMs`) → resolved
 * (condition false again) → pending … A sample with no data counts as the rule's `noData`
 * policy says: `ok` (condition false), `alerting` (condition true) or `keep` (ignored).
 *
 * Every timestamp comes from the effects (`at`, from the injected clock); every wait is an
 * XState delay, so the chart runs on a SimulatedClock in tests. `notify` (firing and
 * resolved) and `track` (every status change and evaluation) are placeholders; actors/metrics/alerts.ts
 * provides the log, webhook and cluster-event notifications.
 * @module
 */
import { assign, fromPromise, raise, setup } from "xstate";

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

/** Events of an alert. */
export type AlertEvent =
  | { type: "SAMPLE"; value: number | null; at: number; tags?: Record<string, string> }
  | { type: "EVALUATION_FAILED"; error: string }
  | { type: "EVALUATE_NOW" };

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

type Sample = Extract<AlertEvent, { type: "SAMPLE" }>;

function breaching(rule: AlertRule, event: Sample): boolean {
  if (event.value === null) return rule.noData === "alerting";
  return conditionHolds(rule, event.value);
}

function ignored(rule: AlertRule, event: Sample): boolean {
  return event.value === null && rule.noData === "keep";
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

function sampleUpdate(event: AlertEvent): Partial<AlertContext> {
  const e = event as Sample;
  return { value: e.value, tags: e.tags ?? {}, evaluatedAt: e.at, failures: 0, lastError: null };
}

/** The alert statechart (one actor per rule). */
export const alertMachine = setup({
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
  },
  delays: {
    every: ({ context }) => context.rule.everyMs,
    forDuration: ({ context }) => context.rule.forMs,
  },
  guards: {
    breaching: ({ context, event }) =>
      event.type === "SAMPLE" && !ignored(context.rule, event) && breaching(context.rule, event),
    clearing: ({ context, event }) =>
      event.type === "SAMPLE" && !ignored(context.rule, event) && !breaching(context.rule, event),
  },
}).createMachine({
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
    evaluation: {
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
                assign({ evaluations: ({ context }) => context.evaluations + 1 }),
                raise(({ event }) => ({
                  type: "SAMPLE" as const,
                  value: event.output.value,
                  at: event.output.at,
                  tags: event.output.tags,
                })),
              ],
            },
            onError: {
              target: "waiting",
              actions: [
                assign({ evaluations: ({ context }) => context.evaluations + 1 }),
                raise(({ event }) => ({
                  type: "EVALUATION_FAILED" as const,
                  error: message(event.error),
                })),
              ],
            },
          },
        },
      },
    },
    status: {
      initial: "inactive",
      on: {
        EVALUATION_FAILED: {
          actions: [
            assign({
              failures: ({ context }) => context.failures + 1,
              lastError: ({ event }) => event.error,
              reason: ({ context, event }) =>
                `evaluation failed (${context.failures + 1} in a row), state kept: ${event.error}`,
            }),
            { type: "track", params: ({ context }) => ({ status: context.status, context }) },
          ],
        },
      },
      states: {
        inactive: {
          entry: [assign({ status: "inactive" as const }), {
            type: "track",
            params: ({ context }) => ({ status: context.status, context }),
          }],
          on: {
            SAMPLE: [
              {
                guard: "breaching",
                target: "pending",
                actions: [
                  assign(({ event }) => sampleUpdate(event)),
                  assign({
                    since: ({ event }) => (event as Sample).at,
                    reason: ({ context, event }) =>
                      `condition holds (${
                        describeCondition(context.rule, (event as Sample).value)
                      }); firing after ${context.rule.forMs} ms`,
                  }),
                ],
              },
              {
                actions: [
                  assign(({ event }) => sampleUpdate(event)),
                  assign({
                    reason: ({ context, event }) =>
                      `condition does not hold (${
                        describeCondition(context.rule, (event as Sample).value)
                      } is false)`,
                  }),
                  { type: "track", params: ({ context }) => ({ status: context.status, context }) },
                ],
              },
            ],
          },
        },
        pending: {
          entry: [assign({ status: "pending" as const }), {
            type: "track",
            params: ({ context }) => ({ status: context.status, context }),
          }],
          after: {
            forDuration: {
              target: "firing",
              actions: assign({
                reason: ({ context }) =>
                  `fired: ${
                    describeCondition(context.rule, context.value)
                  } held for ${context.rule.forMs} ms`,
              }),
            },
          },
          on: {
            SAMPLE: [
              {
                guard: "breaching",
                actions: [assign(({ event }) => sampleUpdate(event)), {
                  type: "track",
                  params: ({ context }) => ({ status: context.status, context }),
                }],
              },
              {
                guard: "clearing",
                target: "inactive",
                actions: [
                  assign(({ event }) => sampleUpdate(event)),
                  assign({
                    since: null,
                    reason: ({ context, event }) =>
                      `condition stopped holding before ${context.rule.forMs} ms (${
                        show((event as Sample).value)
                      })`,
                  }),
                ],
              },
            ],
          },
        },
        firing: {
          entry: [
            assign({ status: "firing" as const }),
            assign({
              // The delay ran on the actor's clock: the alert fired `forMs` after the breach began.
              firedAt: ({ context }) =>
                context.since !== null
                  ? context.since + context.rule.forMs
                  : (context.evaluatedAt ?? 0),
            }),
            {
              type: "notify",
              params: ({ context }) => ({
                rule: context.rule,
                status: "firing" as const,
                value: context.value,
                tags: context.tags,
                since: context.since,
                at: context.firedAt ?? 0,
                reason: context.reason,
              }),
            },
            { type: "track", params: ({ context }) => ({ status: context.status, context }) },
          ],
          on: {
            SAMPLE: [
              {
                guard: "breaching",
                actions: [assign(({ event }) => sampleUpdate(event)), {
                  type: "track",
                  params: ({ context }) => ({ status: context.status, context }),
                }],
              },
              {
                guard: "clearing",
                target: "resolved",
                actions: [
                  assign(({ event }) => sampleUpdate(event)),
                  assign({
                    reason: ({ context, event }) =>
                      `resolved: ${
                        describeCondition(context.rule, (event as Sample).value)
                      } no longer holds`,
                  }),
                ],
              },
            ],
          },
        },
        resolved: {
          entry: [
            assign({ status: "resolved" as const }),
            assign({ resolvedAt: ({ context }) => context.evaluatedAt }),
            {
              type: "notify",
              params: ({ context }) => ({
                rule: context.rule,
                status: "resolved" as const,
                value: context.value,
                tags: context.tags,
                since: context.since,
                at: context.evaluatedAt ?? 0,
                reason: context.reason,
              }),
            },
            assign({ since: null }),
            { type: "track", params: ({ context }) => ({ status: context.status, context }) },
          ],
          on: {
            SAMPLE: [
              {
                guard: "breaching",
                target: "pending",
                actions: [
                  assign(({ event }) => sampleUpdate(event)),
                  assign({
                    since: ({ event }) => (event as Sample).at,
                    reason: ({ context, event }) =>
                      `condition holds again (${
                        describeCondition(context.rule, (event as Sample).value)
                      }); firing after ${context.rule.forMs} ms`,
                  }),
                ],
              },
              {
                actions: [assign(({ event }) => sampleUpdate(event)), {
                  type: "track",
                  params: ({ context }) => ({ status: context.status, context }),
                }],
              },
            ],
          },
        },
      },
    },
  },
});
