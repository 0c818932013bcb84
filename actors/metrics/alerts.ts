/**
 * Alert actors: one machines/alert.ts actor per configured rule (`alert.<name>`), whose
 * `evaluate` effect asks the metrics reader for the rule's aggregate over its window and
 * whose `notify` effect tells three places:
 *
 * - the log (warn when firing, info when resolved), one sentence with the reason;
 * - the webhook (ALERT_WEBHOOK_URL), a JSON POST delivered with retries (webhook.ts);
 * - the cluster: a `metrics.alert` broadcast to the `metrics` actor of every instance.
 *
 * Each instance evaluates every rule; a rule filtered to `host` reads that host's series.
 * Payloads carry the evaluating instance so a receiver can tell duplicates apart.
 * @module
 */
import { fromPromise } from "xstate";
import { describeError } from "../../lib/errors.ts";
import type { Logger } from "../../lib/log.ts";
import {
  type AlertContext,
  alertMachine,
  type AlertNotification,
  type AlertRule,
  type AlertSample,
  type AlertStatus,
} from "../../machines/alert.ts";
import type { ActorSpec, RemoteEvent } from "../runtime/types.ts";
import type { GroupValue, MetricsReader } from "./reader.ts";
import type { AlertRuleConfig } from "./settings.ts";
import type { Webhook } from "./webhook.ts";

/** What /alerts shows of one rule. */
export interface AlertView {
  /** Rule name. */
  rule: string;
  /** Status now. */
  status: AlertStatus;
  /** Severity. */
  severity: string;
  /** Summary of the rule. */
  summary: string;
  /** Last value (null: no data). */
  value: number | null;
  /** Tags of that value's series. */
  tags: Record<string, string>;
  /** When the current breach began. */
  since: number | null;
  /** When it last fired. */
  firedAt: number | null;
  /** When it last resolved. */
  resolvedAt: number | null;
  /** Last evaluation. */
  evaluatedAt: number | null;
  /** Why it is in its state. */
  reason: string;
  /** Last evaluation error. */
  lastError: string | null;
}

/** The JSON body the webhook receives. */
export interface AlertPayload {
  /** Payload format version. */
  version: 1;
  /** `firing` or `resolved`. */
  status: "firing" | "resolved";
  /** Rule name. */
  rule: string;
  /** Severity. */
  severity: string;
  /** Summary of the rule. */
  summary: string;
  /** Value that caused the change (null: no data). */
  value: number | null;
  /** Comparison. */
  op: string;
  /** Threshold. */
  threshold: number;
  /** Tags of the value's series. */
  tags: Record<string, string>;
  /** When the breach began (ISO 8601), if known. */
  since: string | null;
  /** When the change happened (ISO 8601). */
  at: string;
  /** Instance that evaluated the rule. */
  instance: string;
  /** One sentence. */
  reason: string;
}

/** Options of {@linkcode createAlerts}. */
export interface AlertsOptions {
  /** The rules. */
  rules: readonly AlertRuleConfig[];
  /** Reader the rules query. */
  reader: MetricsReader;
  /** Injected clock. */
  now: () => number;
  /** This instance's id. */
  instanceId: string;
  /** Logger. */
  log: Logger;
  /** Webhook, or null. */
  webhook: Webhook | null;
  /** Sends the cluster event (transport broadcast to `metrics`). */
  broadcast: (event: RemoteEvent) => Promise<void>;
}

/** The alert actors and what they know. */
export interface Alerts {
  /** Registry entries, one per rule. */
  specs: ActorSpec[];
  /** Every rule's current view. */
  views(): AlertView[];
  /** Notifications sent by channel and outcome. */
  notifications(): Record<string, number>;
}

/** Reduces group values to one per the rule; the chosen group's tags come along. */
export function reduceGroups(
  rule: Pick<AlertRuleConfig, "reduce">,
  groups: readonly GroupValue[],
): { value: number | null; tags: Record<string, string> } {
  if (!groups.length) return { value: null, tags: {} };
  if (rule.reduce === "sum" || rule.reduce === "mean") {
    const sum = groups.reduce((a, g) => a + g.value, 0);
    return { value: rule.reduce === "sum" ? sum : sum / groups.length, tags: {} };
  }
  let best = groups[0];
  for (const g of groups) {
    if (rule.reduce === "max" ? g.value > best.value : g.value < best.value) best = g;
  }
  return { value: best.value, tags: best.tags };
}

/** Builds the webhook payload of a notification. */
export function alertPayload(n: AlertNotification, instance: string): AlertPayload {
  return {
    version: 1,
    status: n.status,
    rule: n.rule.name,
    severity: n.rule.severity,
    summary: n.rule.summary,
    value: n.value,
    op: n.rule.op,
    threshold: n.rule.threshold,
    tags: n.tags,
    since: n.since === null ? null : new Date(n.since).toISOString(),
    at: new Date(n.at).toISOString(),
    instance,
    reason: n.reason,
  };
}

/** The view of a rule that is not evaluated (no reader), saying why. */
export function unevaluatedView(rule: AlertRuleConfig, why: string): AlertView {
  return { ...view(rule, "inactive", null), reason: `not evaluated: ${why}` };
}

function view(rule: AlertRuleConfig, status: AlertStatus, c: AlertContext | null): AlertView {
  return {
    rule: rule.name,
    status,
    severity: rule.severity,
    summary: rule.summary,
    value: c?.value ?? null,
    tags: c?.tags ?? {},
    since: c?.since ?? null,
    firedAt: c?.firedAt ?? null,
    resolvedAt: c?.resolvedAt ?? null,
    evaluatedAt: c?.evaluatedAt ?? null,
    reason: c?.reason ?? "not started",
    lastError: c?.lastError ?? null,
  };
}

/** Creates the alert actors of `rules`. */
export function createAlerts(options: AlertsOptions): Alerts {
  const { log, reader, now } = options;
  // A read model for /alerts and /metrics, pushed by each chart's `track` action after
  // every evaluation and status change; the decisions themselves stay in the charts.
  const views = new Map<string, AlertView>(
    options.rules.map((r) => [r.name, view(r, "inactive", null)]),
  );
  const counts: Record<string, number> = {};
  const count = (key: string) => counts[key] = (counts[key] ?? 0) + 1;

  const specs = options.rules.map((rule): ActorSpec => {
    const logic = alertMachine.provide({
      actors: {
        evaluate: fromPromise<AlertSample, { rule: AlertRule }>(async () => {
          const at = now();
          const groups = await reader.aggregate({
            measurement: rule.measurement,
            field: rule.field,
            aggregate: rule.aggregate,
            where: rule.where,
            groupBy: rule.groupBy,
            start: at - rule.windowMs,
            end: at,
          });
          return { ...reduceGroups(rule, groups), at };
        }),
      },
      actions: {
        track: (_, p: { status: AlertStatus; context: AlertContext }) => {
          views.set(rule.name, view(rule, p.status, p.context));
        },
        notify: (_, n: AlertNotification) => {
          const fields = { rule: n.rule.name, value: n.value, severity: n.rule.severity };
          if (n.status === "firing") log.warn(`alert ${n.rule.name} firing: ${n.reason}`, fields);
          else log.info(`alert ${n.rule.name} resolved: ${n.reason}`, fields);
          count(`log_${n.status}`);
          if (options.webhook) {
            options.webhook.send(alertPayload(n, options.instanceId));
            count(`webhook_queued`);
          }
          options.broadcast({
            type: "metrics.alert",
            rule: n.rule.name,
            status: n.status,
            value: n.value,
            instance: options.instanceId,
            at: n.at,
          }).then(() => count("cluster_sent"), (err) => {
            count("cluster_failed");
            log.warn("alert cluster event not sent", {
              rule: n.rule.name,
              error: describeError(err),
            });
          });
        },
      },
    });
    return {
      id: `alert.${rule.name}`,
      chart: "alert",
      create: () => logic,
      input: () => ({ rule }),
      summarize: (snapshot) => {
        const c = (snapshot as unknown as { context: AlertContext }).context;
        return { status: c.status, value: c.value, reason: c.reason };
      },
    };
  });

  return {
    specs,
    views: () => [...views.values()],
    notifications: () => ({ ...counts }),
  };
}
