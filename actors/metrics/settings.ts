/**
 * Settings of the metrics concern, read from the environment and validated with zod as part
 * of the one configuration (concerns/config.ts); a wrong value stops start-up (exit 2) with
 * a CONFIG_INVALID sentence naming the variable, like every other setting.
 * `ALERT_RULES` holds JSON (an array of rules, or `{ "rules": [...] }`) or the path of a
 * file containing it.
 * @module
 */
import { z } from "zod";
import type { ConcernConfig, SettingDoc } from "../../lib/config.ts";
import { RuntimeError } from "../../lib/errors.ts";
import { parseSettings, pickSettings } from "../../lib/settings.ts";
import type { AlertOperator, AlertRule } from "../../machines/alert.ts";
import { DEFAULT_ALERT_RULE_NAMES, DEFAULT_ALERT_RULES } from "./default_rules.ts";
import { type Aggregate, AGGREGATES } from "./reader.ts";

/** The metrics settings, documented like lib/config.ts SETTINGS. */
export const METRICS_SETTINGS: readonly SettingDoc[] = [
  {
    env: "INFLUX_URL",
    default: "(none: metrics are collected and served at /metrics, not stored)",
    description: "Base URL of InfluxDB 2.x/3.x (or VictoriaMetrics) receiving /api/v2/write",
  },
  { env: "INFLUX_TOKEN", default: "(none)", description: "API token sent as `Token <token>`" },
  { env: "INFLUX_ORG", default: "rootstream", description: "Organisation of the bucket" },
  {
    env: "INFLUX_BUCKET",
    default: "rootstream",
    description: "Bucket written to (and the database name InfluxQL reads)",
  },
  {
    env: "METRICS_QUERY_LANGUAGE",
    default: "influxql",
    description:
      "How dashboards and alerts read: influxql (/query, InfluxDB's v1-compatible API) or promql (/api/v1/query_range, VictoriaMetrics)",
  },
  {
    env: "METRICS_INTERVAL_MS",
    default: "10000",
    description: "Time between metric collections",
  },
  {
    env: "METRICS_BUFFER_POINTS",
    default: "100000",
    description: "Points held while the time-series server is slow or down; older ones are dropped",
  },
  {
    env: "ALERT_RULES",
    default: "(none)",
    description:
      "Alert rules added to the defaults (one with a default's name replaces it): JSON, or the path of a JSON file (see docs/monitoring.md)",
  },
  {
    env: "ALERT_DEFAULTS_DISABLED",
    default: "(none: every default rule is on)",
    description: `Default alert rules turned off, comma-separated, or all (${
      DEFAULT_ALERT_RULE_NAMES.join(", ")
    })`,
  },
  {
    env: "ALERT_WEBHOOK_URL",
    default: "(none)",
    description: "URL that receives a JSON POST when an alert fires or resolves",
  },
];

/** One alert rule as configured: the query it evaluates plus the chart's rule. */
export interface AlertRuleConfig extends AlertRule {
  /** Measurement read. */
  measurement: string;
  /** Field read. */
  field: string;
  /** Aggregate over the window, per series. */
  aggregate: Aggregate;
  /** Window the aggregate covers, ending at evaluation time (ms). */
  windowMs: number;
  /** Tag filters (equality). */
  where: Record<string, string>;
  /** Tag keys the aggregate is computed per (default none: one value over all series). */
  groupBy: string[];
  /** How the values of several groups become one: max, min, sum or mean. */
  reduce: "max" | "min" | "sum" | "mean";
  /** `default` (shipped, DEFAULT_ALERT_RULES) or `configured` (ALERT_RULES). */
  origin: "default" | "configured";
}

/** The validated settings. */
export interface MetricsSettings {
  /** Where points are written; null when INFLUX_URL is unset. */
  influx: { url: string; token: string | null; org: string; bucket: string } | null;
  /** Reader backend. */
  queryLanguage: "influxql" | "promql";
  /** Time between collections (ms). */
  intervalMs: number;
  /** Bound of the writer's buffer (points). */
  bufferPoints: number;
  /** Alert rules. */
  alertRules: AlertRuleConfig[];
  /** Webhook for alert notifications, or null. */
  webhookUrl: string | null;
}

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses `500ms`, `30s`, `5m`, `1h`, `1d` (or a number of ms); null when malformed. */
export function parseDuration(value: string | number): number | null {
  if (typeof value === "number") return Number.isFinite(value) && value >= 0 ? value : null;
  const m = DURATION.exec(value.trim());
  return m ? Math.round(Number(m[1]) * UNIT_MS[m[2]]) : null;
}

function duration(min: number, max: number) {
  return z.union([z.number(), z.string()]).transform((v, ctx) => {
    const ms = parseDuration(v);
    if (ms === null || ms < min || ms > max) {
      ctx.addIssue({
        code: "custom",
        message: `must be a duration between ${min} ms and ${max} ms (e.g. 30s, 5m or 1500)`,
      });
      return z.NEVER;
    }
    return ms;
  });
}

function httpUrl(what: string) {
  return z.string().trim().refine((s) => {
    try {
      const u = new URL(s);
      return (u.protocol === "http:" || u.protocol === "https:") && u.hostname !== "";
    } catch {
      return false;
    }
  }, { message: `must be an http(s) URL like ${what}` });
}

function intIn(min: number, max: number) {
  return z.string().trim().regex(/^\d+$/, { message: "must be an integer" }).transform(Number)
    .refine((n) => n >= min && n <= max, {
      message: `must be an integer between ${min} and ${max}`,
    });
}

const OPERATORS = [">", ">=", "<", "<=", "==", "!="] as const satisfies readonly AlertOperator[];
const NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const TAG_KEY = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;

const ruleSchema = z.object({
  name: z.string().regex(NAME, { message: "must be 1-64 letters, digits, '.', '_' or '-'" }),
  measurement: z.string().min(1).max(256),
  field: z.string().min(1).max(256),
  aggregate: z.enum(AGGREGATES).default("mean"),
  window: duration(1000, 30 * 86_400_000).default(60_000),
  where: z.record(
    z.string().regex(TAG_KEY, { message: "tag keys must be letters, digits and '_'" }),
    z.string().max(256),
  ).default({}),
  groupBy: z.array(
    z.string().regex(TAG_KEY, { message: "tag keys must be letters, digits and '_'" }),
  ).max(8).default([]),
  reduce: z.enum(["max", "min", "sum", "mean"]).optional(),
  op: z.enum(OPERATORS),
  threshold: z.number().refine(Number.isFinite, { message: "must be a finite number" }),
  for: duration(0, 7 * 86_400_000).default(0),
  every: duration(100, 86_400_000).optional(),
  noData: z.enum(["ok", "alerting", "keep"]).default("ok"),
  severity: z.string().max(32).default("warning"),
  summary: z.string().max(500).optional(),
}).strict();

const rulesSchema = z.array(ruleSchema);

const envSchema = z.object({
  INFLUX_URL: httpUrl("http://influxdb:8086").optional(),
  INFLUX_TOKEN: z.string().optional(),
  INFLUX_ORG: z.string().trim().min(1).max(256).default("rootstream"),
  INFLUX_BUCKET: z.string().trim().min(1).max(256).default("rootstream"),
  METRICS_QUERY_LANGUAGE: z.enum(["influxql", "promql"], {
    message: "must be influxql or promql",
  }).default("influxql"),
  METRICS_INTERVAL_MS: intIn(100, 3_600_000).default(10_000),
  METRICS_BUFFER_POINTS: intIn(1000, 10_000_000).default(100_000),
  ALERT_RULES: z.string().optional(),
  ALERT_DEFAULTS_DISABLED: z.string().max(4096).optional(),
  ALERT_WEBHOOK_URL: httpUrl("https://hooks.example.com/alerts").optional(),
});

function invalid(name: string, problem: string, shown?: string): RuntimeError {
  const sentence = `${name} ${problem}${shown === undefined ? "" : `, got ${shown}`}`;
  return new RuntimeError("CONFIG_INVALID", `Invalid configuration: ${sentence}`, {
    details: { variable: name, problems: [sentence] },
  });
}

function loadRules(
  raw: string,
  intervalMs: number,
  readTextFile: (path: string) => string,
): AlertRuleConfig[] {
  const text = raw.trim();
  let source = "ALERT_RULES";
  let json = text;
  if (!text.startsWith("[") && !text.startsWith("{")) {
    source = `ALERT_RULES (file ${text})`;
    try {
      json = readTextFile(text);
    } catch (err) {
      throw invalid(
        "ALERT_RULES",
        `must be JSON or the path of a readable JSON file: cannot read ${text}: ${
          err instanceof Error ? err.message : err
        }`,
      );
    }
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch (err) {
    throw invalid(source, `is not valid JSON: ${err instanceof Error ? err.message : err}`);
  }
  // `{ "rules": [...] }` or the bare array.
  const list = parsed !== null && typeof parsed === "object" && !Array.isArray(parsed) &&
      "rules" in parsed
    ? (parsed as { rules: unknown }).rules
    : parsed;
  return parseRules(list, source, intervalMs, "configured");
}

function parseRules(
  list: unknown,
  source: string,
  intervalMs: number,
  origin: AlertRuleConfig["origin"],
): AlertRuleConfig[] {
  const result = rulesSchema.safeParse(list);
  if (!result.success) {
    const issue = result.error.issues[0];
    const [index, ...rest] = issue.path;
    const where = typeof index === "number"
      ? `rule ${index + 1}${rest.length ? ` field ${rest.join(".")}` : ""}`
      : "the rules (an array, or an object with a `rules` array)";
    throw invalid(source, `is invalid: ${where} ${issue.message.replace(/^Invalid input: /, "")}`);
  }
  const names = new Set<string>();
  return result.data.map((r) => {
    if (names.has(r.name)) throw invalid(source, `names rule ${r.name} twice`);
    names.add(r.name);
    const up = r.op === ">" || r.op === ">=";
    const down = r.op === "<" || r.op === "<=";
    return {
      name: r.name,
      measurement: r.measurement,
      field: r.field,
      aggregate: r.aggregate,
      windowMs: r.window,
      where: r.where,
      groupBy: r.groupBy,
      reduce: r.reduce ?? (up ? "max" : down ? "min" : "max"),
      op: r.op,
      threshold: r.threshold,
      forMs: r.for,
      everyMs: r.every ?? intervalMs,
      noData: r.noData,
      severity: r.severity,
      summary: r.summary ??
        `${r.aggregate}(${r.measurement}.${r.field}) over ${r.window} ms ${r.op} ${r.threshold}`,
      origin,
    };
  });
}

/** The default rules `ALERT_DEFAULTS_DISABLED` turns off; CONFIG_INVALID for an unknown name. */
function disabledDefaults(raw: string | undefined): Set<string> {
  const names = (raw ?? "").split(",").map((n) => n.trim()).filter((n) => n !== "");
  if (names.length === 1 && names[0] === "all") return new Set(DEFAULT_ALERT_RULE_NAMES);
  for (const name of names) {
    if (!DEFAULT_ALERT_RULE_NAMES.includes(name)) {
      throw invalid(
        "ALERT_DEFAULTS_DISABLED",
        `names no default rule: ${JSON.stringify(name.slice(0, 64))} (the defaults are ${
          DEFAULT_ALERT_RULE_NAMES.join(", ")
        }, or all)`,
      );
    }
  }
  return new Set(names);
}

/**
 * Reads and validates the metrics settings from `env`; throws CONFIG_INVALID naming the
 * variable. Empty variables count as unset.
 */
export function loadMetricsSettings(
  env: Record<string, string | undefined>,
  options: { readTextFile?: (path: string) => string } = {},
): MetricsSettings {
  const c = parseSettings(envSchema, pickSettings(env, METRICS_SETTINGS.map((s) => s.env)));
  const configured = c.ALERT_RULES
    ? loadRules(c.ALERT_RULES, c.METRICS_INTERVAL_MS, options.readTextFile ?? Deno.readTextFileSync)
    : [];
  const disabled = disabledDefaults(c.ALERT_DEFAULTS_DISABLED);
  const replaced = new Set(configured.map((r) => r.name));
  const defaults = parseRules(
    DEFAULT_ALERT_RULES.filter((r) => !disabled.has(r.name) && !replaced.has(r.name)),
    "DEFAULT_ALERT_RULES",
    c.METRICS_INTERVAL_MS,
    "default",
  );
  const alertRules = [...defaults, ...configured];
  return {
    influx: c.INFLUX_URL
      ? {
        url: c.INFLUX_URL.replace(/\/+$/, ""),
        token: c.INFLUX_TOKEN ?? null,
        org: c.INFLUX_ORG,
        bucket: c.INFLUX_BUCKET,
      }
      : null,
    queryLanguage: c.METRICS_QUERY_LANGUAGE,
    intervalMs: c.METRICS_INTERVAL_MS,
    bufferPoints: c.METRICS_BUFFER_POINTS,
    alertRules,
    webhookUrl: c.ALERT_WEBHOOK_URL ?? null,
  };
}

/** The metrics concern's part of the one configuration. */
export const METRICS_CONFIG: ConcernConfig<MetricsSettings> = {
  title: "Metrics and alerts",
  intro: "Read by the metrics concern (actors/metrics).",
  variables: METRICS_SETTINGS,
  parse: (env) => loadMetricsSettings(env),
};
