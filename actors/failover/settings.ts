/**
 * Settings of the failover concern, read from the environment and validated with zod as part
 * of the one configuration (concerns/config.ts). A wrong value stops start-up (exit 2) with
 * a message naming the variable (CONFIG_INVALID).
 * @module
 */
import { z } from "zod";
import type { ConcernConfig } from "../../lib/config.ts";
import { parseSettings, pickSettings } from "../../lib/settings.ts";

/** One PostgreSQL node of the cluster. */
export interface NodeSetting {
  /** Node name: its cluster_name, which is also the application_name it streams under. */
  name: string;
  /** postgres:// URL of the node (same database as DATABASE_URL). */
  url: string;
  /** host:port, for matching WAL-receiver senders and for display. */
  address: string;
}

/** Validated failover settings. */
export interface FailoverSettings {
  /** DATABASE_NODES, in priority order (empty: failover unavailable). */
  nodes: NodeSetting[];
  /** FAILOVER_PROBE_INTERVAL_MS: pause between probes of the primary. */
  probeIntervalMs: number;
  /** FAILOVER_PROBE_TIMEOUT_MS: a probe unanswered this long failed. */
  probeTimeoutMs: number;
  /** FAILOVER_CONFIRMATIONS: consecutive failed probes before a vote. */
  confirmations: number;
  /** FAILOVER_VOTE_TIMEOUT_MS: how long the coordinator waits for each vote. */
  voteTimeoutMs: number;
  /** FAILOVER_MONITOR_INTERVAL_MS: pause between samplings of every node. */
  monitorIntervalMs: number;
  /** FAILOVER_SYNC_MODE: keep synchronous_standby_names on the streaming replicas. */
  syncMode: boolean;
  /** FAILOVER_FAST_PATH: certain evidence (refused by ≥ 2 instances, no WAL stream) skips the count. */
  fastPath: boolean;
  /** FAILOVER_MAX_LAG_BYTES: async mode: a replica further behind is not promoted. */
  maxLagBytes: number;
  /** FAILOVER_QUERY_WAIT_MS: a query caught by a failover waits this long for the switch. */
  queryWaitMs: number;
  /** FAILOVER_SWITCHOVER_TIMEOUT_MS: how long a switchover waits for the target to catch up. */
  switchoverTimeoutMs: number;
  /** FAILOVER_USE_SLOTS: replicas stream through physical replication slots. */
  useSlots: boolean;
  /** FAILOVER_STARTUP_REDIS_WAIT_MS: start-up waits this long for Redis to name the primary. */
  startupRedisWaitMs: number;
  /** REPLICATION_LAG_ALERT_BYTES: lag above which an alert is raised. */
  lagAlertBytes: number;
  /** REPLICATION_LAG_ALERT_S: lag above which an alert is raised. */
  lagAlertSeconds: number;
  /**
   * FAILOVER_LOCAL_NODES: the nodes this host may act on (kill before a promotion, stop,
   * pg_rewind, start), each still only when its postmaster.pid here names the same server;
   * null (`auto`): any node whose postmaster.pid is found here.
   */
  localNodes: string[] | null;
  /** FAILOVER_FAILPOINT: test-only fault injection (`exit-after-promote`). */
  failpoint: "exit-after-promote" | null;
}

/** Every variable this module reads, with its default (docs/configuration.md lists them). */
export const FAILOVER_VARIABLES: readonly { env: string; default: string; description: string }[] =
  [
    {
      env: "DATABASE_NODES",
      default: "(none: failover unavailable)",
      description: "name=postgres://… per PostgreSQL node, comma-separated, in priority order",
    },
    { env: "FAILOVER_PROBE_INTERVAL_MS", default: "500", description: "pause between probes" },
    { env: "FAILOVER_PROBE_TIMEOUT_MS", default: "1000", description: "a slower probe failed" },
    {
      env: "FAILOVER_CONFIRMATIONS",
      default: "3",
      description: "consecutive failed probes before the coordinator asks for votes",
    },
    {
      env: "FAILOVER_VOTE_TIMEOUT_MS",
      default: "probe timeout + 500",
      description: "how long each instance may take to vote",
    },
    {
      env: "FAILOVER_MONITOR_INTERVAL_MS",
      default: "1000",
      description: "pause between samplings of every node (status, lag, repairs)",
    },
    {
      env: "FAILOVER_SYNC_MODE",
      default: "on",
      description: "on: synchronous_commit=remote_apply with ANY 1 of the streaming replicas",
    },
    {
      env: "FAILOVER_FAST_PATH",
      default: "on",
      description:
        "on: a primary refusing connections from 2 instances while no replica streams from it is voted on at once, without waiting for FAILOVER_CONFIRMATIONS",
    },
    {
      env: "FAILOVER_MAX_LAG_BYTES",
      default: "16777216",
      description: "async mode: replicas further behind are not promoted",
    },
    {
      env: "FAILOVER_QUERY_WAIT_MS",
      default: "10000",
      description: "a query failing during a failover waits this long and is retried once",
    },
    {
      env: "FAILOVER_SWITCHOVER_TIMEOUT_MS",
      default: "30000",
      description: "how long a switchover waits for the target to replay everything",
    },
    { env: "FAILOVER_USE_SLOTS", default: "on", description: "stream through replication slots" },
    {
      env: "FAILOVER_STARTUP_REDIS_WAIT_MS",
      default: "15000",
      description: "start-up waits this long for Redis to name the primary, then checks the " +
        "primary failover_history records (never a node in recovery or behind the newest epoch)",
    },
    {
      env: "REPLICATION_LAG_ALERT_BYTES",
      default: "16777216",
      description: "replica lag (bytes) that raises an alert",
    },
    {
      env: "REPLICATION_LAG_ALERT_S",
      default: "10",
      description: "replica lag (seconds) that raises an alert",
    },
    {
      env: "FAILOVER_LOCAL_NODES",
      default: "auto",
      description:
        "nodes of DATABASE_NODES on this host, comma-separated, or none: only these are killed before a promotion, stopped, rewound and started from here (auto: any whose postmaster.pid is found here); the others are fenced read-only and left to their host",
    },
    {
      env: "FAILOVER_FAILPOINT",
      default: "(none)",
      description:
        "tests only, needs RS_TEST_FAILPOINTS=1: exit-after-promote kills the coordinator right after pg_promote",
    },
  ];

function int(min: number, max: number, what: string) {
  return z.string().trim().regex(/^\d+$/, { message: `an integer (${what})` }).transform(Number)
    .refine((n) => n >= min && n <= max, {
      message: `an integer between ${min} and ${max} (${what})`,
    });
}

const onOff = z.enum(["on", "off", "true", "false", "1", "0"], { message: "on or off" })
  .transform((v) => v === "on" || v === "true" || v === "1");

const NODE_NAME = /^[A-Za-z0-9_.-]{1,63}$/;

const nodesSchema = z.string().trim().transform((text, ctx) => {
  const out: NodeSetting[] = [];
  for (const part of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const at = part.indexOf("=");
    const name = at > 0 ? part.slice(0, at).trim() : "";
    const url = at > 0 ? part.slice(at + 1).trim() : "";
    if (!NODE_NAME.test(name)) {
      ctx.addIssue({
        code: "custom",
        message: `name=postgres://… entries; ${
          JSON.stringify(name || part)
        } is not a node name (letters, digits, '.', '_', '-')`,
      });
      return z.NEVER;
    }
    let u: URL;
    try {
      u = new URL(url);
      if (!["postgres:", "postgresql:"].includes(u.protocol) || !u.hostname) throw new Error();
    } catch {
      ctx.addIssue({ code: "custom", message: `a postgres:// URL for node ${name}` });
      return z.NEVER;
    }
    if (out.some((n) => n.name === name)) {
      ctx.addIssue({ code: "custom", message: `unique node names (${name} appears twice)` });
      return z.NEVER;
    }
    out.push({ name, url, address: `${u.hostname}:${u.port || "5432"}` });
  }
  return out;
});

const schema = z.object({
  DATABASE_NODES: nodesSchema.optional(),
  FAILOVER_PROBE_INTERVAL_MS: int(20, 60_000, "milliseconds").default(500),
  FAILOVER_PROBE_TIMEOUT_MS: int(50, 60_000, "milliseconds").default(1000),
  FAILOVER_CONFIRMATIONS: int(1, 100, "probes").default(3),
  FAILOVER_VOTE_TIMEOUT_MS: int(50, 60_000, "milliseconds").optional(),
  FAILOVER_MONITOR_INTERVAL_MS: int(100, 600_000, "milliseconds").default(1000),
  FAILOVER_SYNC_MODE: onOff.default(true),
  FAILOVER_FAST_PATH: onOff.default(true),
  FAILOVER_MAX_LAG_BYTES: int(0, Number.MAX_SAFE_INTEGER, "bytes").default(16 * 1024 * 1024),
  FAILOVER_QUERY_WAIT_MS: int(0, 600_000, "milliseconds").default(10_000),
  FAILOVER_SWITCHOVER_TIMEOUT_MS: int(100, 3_600_000, "milliseconds").default(30_000),
  FAILOVER_USE_SLOTS: onOff.default(true),
  FAILOVER_STARTUP_REDIS_WAIT_MS: int(0, 3_600_000, "milliseconds").default(15_000),
  REPLICATION_LAG_ALERT_BYTES: int(0, Number.MAX_SAFE_INTEGER, "bytes").default(16 * 1024 * 1024),
  REPLICATION_LAG_ALERT_S: int(0, 86_400, "seconds").default(10),
  FAILOVER_LOCAL_NODES: z.string().trim().transform((text, ctx) => {
    if (text === "auto") return null;
    if (text === "none") return [];
    const names = text.split(",").map((n) => n.trim());
    if (!names.every((n) => NODE_NAME.test(n))) {
      ctx.addIssue({ code: "custom", message: "auto, none or node names, comma-separated" });
      return z.NEVER;
    }
    return [...new Set(names)];
  }).default(null),
  FAILOVER_FAILPOINT: z.enum(["exit-after-promote"], { message: "exit-after-promote" })
    .optional(),
});

/** A FAILOVER_LOCAL_NODES name that is not a node of DATABASE_NODES: one problem each. */
function unknownLocalNodes(picked: Record<string, string | undefined>): string[] {
  const local = schema.shape.FAILOVER_LOCAL_NODES.safeParse(picked.FAILOVER_LOCAL_NODES);
  const nodes = nodesSchema.optional().safeParse(picked.DATABASE_NODES);
  if (!local.success || !local.data || !nodes.success) return [];
  const known = new Set((nodes.data ?? []).map((n) => n.name));
  return local.data.filter((n) => !known.has(n)).map((n) =>
    `FAILOVER_LOCAL_NODES: ${n} is not a node of DATABASE_NODES (${
      [...known].join(", ") || "none set"
    })`
  );
}

/** Reads and validates the failover settings; CONFIG_INVALID names every wrong variable. */
export function loadFailoverSettings(
  env: Record<string, string | undefined>,
  options: { testFailpoints?: boolean } = {},
): FailoverSettings {
  const picked = pickSettings(env, Object.keys(schema.shape));
  const extra = picked.FAILOVER_FAILPOINT !== undefined && !options.testFailpoints
    ? [
      "FAILOVER_FAILPOINT is a test-only fault injection: it needs RS_TEST_FAILPOINTS=1 " +
      "(refused in production)",
    ]
    : [];
  const e = parseSettings(schema, picked, { extra: [...extra, ...unknownLocalNodes(picked)] });
  return {
    nodes: e.DATABASE_NODES ?? [],
    probeIntervalMs: e.FAILOVER_PROBE_INTERVAL_MS,
    probeTimeoutMs: e.FAILOVER_PROBE_TIMEOUT_MS,
    confirmations: e.FAILOVER_CONFIRMATIONS,
    voteTimeoutMs: e.FAILOVER_VOTE_TIMEOUT_MS ?? e.FAILOVER_PROBE_TIMEOUT_MS + 500,
    monitorIntervalMs: e.FAILOVER_MONITOR_INTERVAL_MS,
    syncMode: e.FAILOVER_SYNC_MODE,
    fastPath: e.FAILOVER_FAST_PATH,
    maxLagBytes: e.FAILOVER_MAX_LAG_BYTES,
    queryWaitMs: e.FAILOVER_QUERY_WAIT_MS,
    switchoverTimeoutMs: e.FAILOVER_SWITCHOVER_TIMEOUT_MS,
    useSlots: e.FAILOVER_USE_SLOTS,
    startupRedisWaitMs: e.FAILOVER_STARTUP_REDIS_WAIT_MS,
    lagAlertBytes: e.REPLICATION_LAG_ALERT_BYTES,
    lagAlertSeconds: e.REPLICATION_LAG_ALERT_S,
    localNodes: e.FAILOVER_LOCAL_NODES,
    failpoint: e.FAILOVER_FAILPOINT ?? null,
  };
}

/** The failover concern's part of the one configuration. */
export const FAILOVER_CONFIG: ConcernConfig<FailoverSettings> = {
  title: "Replication and failover",
  intro: "Read by the failover concern (actors/failover).",
  variables: FAILOVER_VARIABLES,
  parse: (env, core) => loadFailoverSettings(env, { testFailpoints: core.testFailpoints }),
};
