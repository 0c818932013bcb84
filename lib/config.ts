/**
 * Runtime configuration: environment variables and command-line flags, validated once.
 *
 * Flags override environment variables. A wrong value stops start-up with a message that
 * names the variable (and its flag) and says what it expects; nothing starts half-configured.
 *
 * This module parses the core settings ({@linkcode SETTINGS}) and knows how to fold in each
 * concern's own ({@linkcode ConcernConfig}); the list of concerns is composition, so it lives
 * in concerns/config.ts, whose `loadConfig` is the one configuration the runtime starts from.
 * @module
 */
import { parseArgs } from "node:util";
import { z } from "zod";
import { RuntimeError } from "./errors.ts";
import { parseSettings, pickSettings } from "./settings.ts";

/** One configuration setting: its environment variable, optional flag and documentation. */
export interface SettingDoc {
  /** Environment variable name. */
  env: string;
  /** Command-line flag (without dashes), if any. */
  flag?: string;
  /** Default shown in docs. */
  default: string;
  /** What it is for. */
  description: string;
}

/** Every core setting, in the order the README's configuration table lists them. */
export const SETTINGS: readonly SettingDoc[] = [
  { env: "RS_PORT", flag: "port", default: "8080", description: "HTTP port (0 picks a free one)" },
  { env: "RS_HOST", flag: "host", default: "127.0.0.1", description: "HTTP listen address" },
  {
    env: "DATABASE_URL",
    flag: "database-url",
    default: "(embedded PGlite)",
    description: "PostgreSQL URL, e.g. postgres://user:pass@host:5432/rootstream",
  },
  {
    env: "DATABASE_POOL_SIZE",
    default: "20",
    description: "Connections in the PostgreSQL pool",
  },
  {
    env: "DATABASE_CONNECT_TIMEOUT_S",
    default: "30",
    description: "How long start-up retries an unreachable database (with backoff) before exiting",
  },
  {
    env: "DATABASE_QUERY_TIMEOUT_MS",
    default: "15000",
    description: "Statement timeout set on every pooled connection",
  },
  {
    env: "REDIS_URL",
    flag: "redis-url",
    default: "(in-process bus)",
    description: "Redis URL, e.g. redis://:password@host:6379/0",
  },
  {
    env: "REDIS_SENTINELS",
    default: "(none)",
    description: "Comma-separated Sentinel host:port list; when set, Redis is reached through them",
  },
  {
    env: "REDIS_CLUSTER_NODES",
    default: "(none)",
    description:
      "Comma-separated host:port list of Redis Cluster nodes (any few); when set, Redis is a cluster (docs/redis-cluster.md)",
  },
  {
    env: "REDIS_WAIT_REPLICAS",
    default: "0",
    description:
      "Replicas that must hold an addressed message before its send succeeds (WAIT); 0: the master's answer suffices (asynchronous replication: a master dying at once may lose it)",
  },
  {
    env: "REDIS_WAIT_TIMEOUT_MS",
    default: "1000",
    description:
      "With REDIS_WAIT_REPLICAS: how long a send waits for its replicas before it fails with REDIS_UNAVAILABLE",
  },
  {
    env: "REDIS_SENTINEL_MASTER",
    default: "mymaster",
    description: "Master name the Sentinels monitor",
  },
  {
    env: "REDIS_SENTINEL_PASSWORD",
    default: "(none)",
    description: "Password of the Sentinels themselves (the data-node password goes in REDIS_URL)",
  },
  {
    env: "REDIS_CA_FILE",
    default: "(system roots)",
    description:
      "CA certificate (PEM) a rediss:// server's and the Sentinels' certificates must chain to",
  },
  {
    env: "RS_KEY_PREFIX",
    default: "rs:",
    description: "Namespace prefix of every Redis key and channel",
  },
  {
    env: "RS_DATA_DIR",
    flag: "data-dir",
    default: "./.rootstream",
    description: "Where embedded mode keeps its database and generated key",
  },
  {
    env: "RS_CACHE_DIR",
    default: "~/.cache/rootstream",
    description:
      "Where embedded mode caches the template of a new database (made once per PGlite version, copied into each new RS_DATA_DIR instead of running initdb again; $XDG_CACHE_HOME/rootstream when that is set); off: every new data directory runs initdb",
  },
  {
    env: "RS_INSTANCE_ID",
    flag: "instance-id",
    default: "<hostname>-<pid>",
    description: "This instance's id in the cluster",
  },
  {
    env: "RS_SECRET_KEY",
    default: "(generated into RS_DATA_DIR)",
    description:
      "32-byte key, base64, encrypting secrets at rest and keying the MACs of every record in Redis; every instance of a cluster must share it",
  },
  {
    env: "RS_SECRET_KEY_PREVIOUS",
    default: "(none)",
    description:
      "During a rotation of RS_SECRET_KEY, the old key (32 bytes, base64): records in Redis sealed with it are still accepted; unset it once every instance runs the new key (docs/security.md)",
  },
  {
    env: "RS_MESSAGE_MAX_AGE_S",
    default: "300",
    description:
      "Requests and broadcasts between instances older than this (or dated this far ahead) are refused, which bounds replays",
  },
  {
    env: "LOG_LEVEL",
    flag: "log-level",
    default: "info",
    description: "debug, info, warn or error",
  },
  { env: "LOG_FORMAT", default: "text", description: "text or json" },
  {
    env: "RS_PUBLIC_URL",
    default: "(the listen address)",
    description: "URL other instances and the console use to reach this one",
  },
  {
    env: "RS_HEARTBEAT_MS",
    default: "1000",
    description:
      "Cluster heartbeat period (departures reach every instance by notice, not by heartbeat)",
  },
  {
    env: "RS_DEAD_AFTER_MS",
    default: "2000",
    description:
      "An instance silent this long is dead (noticed within this plus one heartbeat divided by the instance count)",
  },
  {
    env: "RS_LEASE_TTL_MS",
    default: "5000",
    description:
      "Lease time of cluster-singleton roles: a dead holder's role moves to another instance within it",
  },
  {
    env: "RS_MAX_RESTARTS",
    default: "5",
    description: "Failures of one actor tolerated within RS_RESTART_WINDOW_S before it is given up",
  },
  {
    env: "RS_RESTART_WINDOW_S",
    default: "60",
    description: "Restart-intensity window of the supervisor",
  },
  {
    env: "RS_SHUTDOWN_TIMEOUT_S",
    default: "10",
    description: "Grace period for in-flight work on SIGINT/SIGTERM",
  },
  {
    env: "RS_ENV",
    default: "(none)",
    description:
      "Deployment environment; `production` (or NODE_ENV=production) refuses test-only switches",
  },
  {
    env: "RS_TEST_FAILPOINTS",
    default: "0",
    description:
      "1 allows fault injection (FAILOVER_FAILPOINT) for tests; refused in production (exit 2)",
  },
];

/** The environment: variable names to values (empty values count as unset). */
export type Env = Record<string, string | undefined>;

/** The validated core configuration (what every part of the runtime may read). */
export interface CoreConfig {
  http: { port: number; host: string };
  database: {
    /** null selects embedded PGlite. */
    url: string | null;
    poolSize: number;
    connectTimeoutS: number;
    queryTimeoutMs: number;
  };
  redis: {
    /** null (and no sentinels) selects the in-process bus. */
    url: string | null;
    sentinels: { host: string; port: number }[];
    sentinelMaster: string;
    sentinelPassword: string | null;
    /** REDIS_CLUSTER_NODES: seed nodes of a Redis Cluster; empty for single Redis / Sentinel. */
    clusterNodes: { host: string; port: number }[];
    /** REDIS_WAIT_REPLICAS: replicas an addressed message must reach before its send succeeds. */
    waitReplicas: number;
    /** REDIS_WAIT_TIMEOUT_MS: how long a send waits for those replicas. */
    waitTimeoutMs: number;
    keyPrefix: string;
    /** REDIS_CA_FILE: the CA of rediss:// servers, or null for the system's roots. */
    caFile: string | null;
  };
  dataDir: string;
  /** RS_CACHE_DIR: where embedded mode caches a new database's template; null: no cache. */
  cacheDir: string | null;
  instanceId: string;
  /** Raw 32-byte key, or null when it is to be read from / generated into the data dir. */
  secretKey: Uint8Array | null;
  /** The key being rotated out (RS_SECRET_KEY_PREVIOUS): still accepted on records read from Redis. */
  previousSecretKey: Uint8Array | null;
  /** Requests and broadcasts older than this are refused (bounds replays), ms. */
  messageMaxAgeMs: number;
  log: { level: "debug" | "info" | "warn" | "error"; format: "text" | "json" };
  shutdownTimeoutS: number;
  /** Advertised URL, or null to derive it from the listen address. */
  publicUrl: string | null;
  cluster: { heartbeatMs: number; deadAfterMs: number; leaseTtlMs: number };
  supervisor: { maxRestarts: number; withinMs: number };
  /** RS_TEST_FAILPOINTS=1: fault injection allowed (never in production). */
  testFailpoints: boolean;
}

/**
 * A concern's part of the configuration: its variables, documented, and the zod-backed
 * parser that turns them into the settings its factory receives. concerns/config.ts lists
 * one per concern; docs/configuration.md is generated from `variables`.
 */
export interface ConcernConfig<T> {
  /** Heading of its section in docs/configuration.md. */
  title: string;
  /** Who reads these settings, for the same section. */
  intro: string;
  /** Its variables with their defaults and meaning. */
  variables: readonly SettingDoc[];
  /**
   * Parses and validates its variables from `env` (empty values count as unset); throws
   * CONFIG_INVALID with `details.problems`, one sentence per bad variable, naming it.
   */
  parse(env: Env, core: CoreConfig): T;
}

/** The settings each concern of `C` parses to. */
export type ConcernSettingsOf<C extends Record<string, ConcernConfig<unknown>>> = {
  [K in keyof C]: C[K] extends ConcernConfig<infer T> ? T : never;
};

/** A zod schema of an integer variable in [min, max]; `what` names the unit in messages. */
export function intIn(
  min: number,
  max: number,
  what: string,
): z.ZodType<number, string> {
  return z.string().trim().regex(/^\d+$/, { message: `an integer (${what})` })
    .transform(Number)
    .refine((n) => n >= min && n <= max, {
      message: `an integer between ${min} and ${max} (${what})`,
    });
}

function urlWith(protocols: string[], example: string) {
  return z.string().trim().refine((s) => {
    try {
      const u = new URL(s);
      return protocols.includes(u.protocol) && u.hostname !== "";
    } catch {
      return false;
    }
  }, { message: `a URL like ${example}` });
}

const hostPort = /^[A-Za-z0-9.\-:[\]]+:\d{1,5}$/;

const schema = z.object({
  RS_PORT: intIn(0, 65535, "TCP port").default(8080),
  RS_HOST: z.string().trim().min(1, { message: "a listen address like 0.0.0.0" }).default(
    "127.0.0.1",
  ),
  DATABASE_URL: urlWith(["postgres:", "postgresql:"], "postgres://user:pass@host:5432/db")
    .optional(),
  DATABASE_POOL_SIZE: intIn(1, 1000, "connections").default(20),
  DATABASE_CONNECT_TIMEOUT_S: intIn(0, 3600, "seconds").default(30),
  DATABASE_QUERY_TIMEOUT_MS: intIn(100, 3_600_000, "milliseconds").default(15000),
  REDIS_URL: urlWith(["redis:", "rediss:"], "redis://host:6379/0").optional(),
  REDIS_SENTINELS: z.string().trim().refine(
    (s) => s.split(",").every((p) => hostPort.test(p.trim())),
    { message: "a comma-separated list of host:port" },
  ).optional(),
  REDIS_CLUSTER_NODES: z.string().trim().refine(
    (s) => s.split(",").every((p) => hostPort.test(p.trim())),
    { message: "a comma-separated list of host:port" },
  ).optional(),
  REDIS_WAIT_REPLICAS: intIn(0, 16, "replicas").default(0),
  REDIS_WAIT_TIMEOUT_MS: intIn(10, 60_000, "milliseconds").default(1000),
  REDIS_SENTINEL_MASTER: z.string().trim().regex(/^[\w.-]+$/, {
    message: "a master name of letters, digits, '.', '_' or '-'",
  }).default("mymaster"),
  REDIS_SENTINEL_PASSWORD: z.string().optional(),
  REDIS_CA_FILE: z.string().trim().min(1, { message: "a file path" }).optional(),
  RS_KEY_PREFIX: z.string().regex(/^[\w.:-]{1,32}$/, {
    message: "1-32 characters of letters, digits, '.', ':', '_' or '-'",
  }).default("rs:"),
  RS_DATA_DIR: z.string().trim().min(1, { message: "a directory path" }).default("./.rootstream"),
  RS_CACHE_DIR: z.string().trim().min(1, { message: "a directory path or off" }).optional(),
  RS_INSTANCE_ID: z.string().trim().regex(/^[\w.-]{1,64}$/, {
    message: "1-64 characters of letters, digits, '.', '_' or '-'",
  }).optional(),
  RS_SECRET_KEY: z.string().trim().refine((s) => decodeKey(s) !== null, {
    message: "32 bytes encoded as base64 (e.g. the output of `openssl rand -base64 32`)",
  }).optional(),
  RS_SECRET_KEY_PREVIOUS: z.string().trim().refine((s) => decodeKey(s) !== null, {
    message: "32 bytes encoded as base64 (the RS_SECRET_KEY being rotated out)",
  }).optional(),
  RS_MESSAGE_MAX_AGE_S: intIn(5, 86_400, "seconds").default(300),
  LOG_LEVEL: z.enum(["debug", "info", "warn", "error"], {
    message: "one of debug, info, warn, error",
  }).default("info"),
  LOG_FORMAT: z.enum(["text", "json"], { message: "text or json" }).default("text"),
  RS_SHUTDOWN_TIMEOUT_S: intIn(0, 600, "seconds").default(10),
  RS_PUBLIC_URL: urlWith(["http:", "https:"], "http://host:8080").optional(),
  RS_HEARTBEAT_MS: intIn(50, 60_000, "milliseconds").default(1000),
  RS_DEAD_AFTER_MS: intIn(100, 600_000, "milliseconds").default(2000),
  RS_LEASE_TTL_MS: intIn(300, 600_000, "milliseconds").default(5000),
  RS_MAX_RESTARTS: intIn(0, 1000, "failures").default(5),
  RS_RESTART_WINDOW_S: intIn(1, 86_400, "seconds").default(60),
  RS_ENV: z.string().trim().regex(/^[\w.-]{1,32}$/, {
    message: "a name like production, staging or test",
  }).optional(),
  RS_TEST_FAILPOINTS: z.enum(["0", "1"], { message: "0 or 1" }).default("0"),
}).refine((c) => c.RS_DEAD_AFTER_MS >= 2 * c.RS_HEARTBEAT_MS, {
  message: "at least twice RS_HEARTBEAT_MS, so one late heartbeat does not declare death",
  path: ["RS_DEAD_AFTER_MS"],
});

/** `host:port,host:port` (validated by the schema) as endpoints; `[v6]:port` unbracketed. */
function hostPorts(list: string): { host: string; port: number }[] {
  return list.split(",").map((part) => {
    const p = part.trim();
    const i = p.lastIndexOf(":");
    return { host: p.slice(0, i).replace(/^\[|\]$/g, ""), port: Number(p.slice(i + 1)) };
  });
}

function decodeKey(s: string): Uint8Array | null {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(s)) return null;
  try {
    const bin = atob(s);
    if (bin.length !== 32) return null;
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}

/** Where configuration is read from; both default to the real process. */
export interface ConfigSources {
  /** Environment variables. */
  env?: Env;
  /** Command-line arguments (without the program name). */
  args?: string[];
  /** Host name for the default instance id. */
  hostname?: string;
  /** Process id for the default instance id. */
  pid?: number;
}

function flagOptions() {
  const options: Record<string, { type: "string" }> = {};
  for (const s of SETTINGS) if (s.flag) options[s.flag] = { type: "string" };
  return options;
}

/** The variables from `env` and the flags from `args` (flags win), empty ones dropped. */
function readSources(sources: ConfigSources): { env: Env; raw: Record<string, string> } {
  const env = { ...(sources.env ?? Deno.env.toObject()) };
  const raw = pickSettings(env, SETTINGS.map((s) => s.env));
  let parsedFlags: Record<string, string | boolean | undefined>;
  try {
    parsedFlags = parseArgs({
      args: sources.args ?? Deno.args,
      options: flagOptions(),
      strict: true,
      allowPositionals: false,
    }).values as Record<string, string | undefined>;
  } catch (err) {
    const known = SETTINGS.filter((s) => s.flag).map((s) => `--${s.flag}`).join(", ");
    throw new RuntimeError(
      "CONFIG_INVALID",
      `Invalid command line: ${
        (err instanceof Error ? err.message : String(err)).replace(/\.$/, "")
      }. Known flags: ${known}`,
    );
  }
  for (const s of SETTINGS) {
    const v = s.flag ? parsedFlags[s.flag] : undefined;
    if (typeof v === "string") raw[s.env] = env[s.env] = v;
  }
  return { env, raw };
}

/** The problems of a concern's CONFIG_INVALID error, one sentence per variable. */
function problemsOf(err: unknown): string[] {
  if (!(err instanceof RuntimeError) || err.code !== "CONFIG_INVALID") throw err;
  const listed = (err.details as { problems?: unknown } | undefined)?.problems;
  return Array.isArray(listed) && listed.every((p) => typeof p === "string")
    ? listed
    : [err.message];
}

/**
 * Parses and validates the core settings and then each concern's (`concerns`, by name);
 * throws one CONFIG_INVALID naming every bad variable. Nothing but `sources` is read: with
 * `sources.env` given, the process environment is not consulted.
 */
export function loadConfigWith<C extends Record<string, ConcernConfig<unknown>>>(
  sources: ConfigSources,
  concerns: C,
): CoreConfig & { concerns: ConcernSettingsOf<C> } {
  const { env, raw } = readSources(sources);
  const problems: string[] = [];
  let core: CoreConfig | null = null;
  try {
    core = parseCore(raw, sources);
  } catch (err) {
    problems.push(...problemsOf(err));
  }
  const production = [["RS_ENV", raw.RS_ENV], ["NODE_ENV", env.NODE_ENV]]
    .find(([, v]) => v?.trim().toLowerCase() === "production");
  if (production && raw.RS_TEST_FAILPOINTS === "1") {
    // Fault injection kills processes on purpose: never where it could do so for real.
    problems.push(
      `RS_TEST_FAILPOINTS=1 is refused with ${
        production[0]
      }=production: fail-points are for tests only`,
    );
  }
  // With a bad core value the concerns are still checked (against the core defaults), so
  // one run names every bad variable.
  const base = core ?? parseCore({}, sources);
  const settings: Record<string, unknown> = {};
  for (const [name, concern] of Object.entries(concerns)) {
    try {
      settings[name] = concern.parse(env, base);
    } catch (err) {
      problems.push(...problemsOf(err));
    }
  }
  if (problems.length) {
    throw new RuntimeError(
      "CONFIG_INVALID",
      `Invalid configuration: ${problems.join("; ")}`,
      { details: { problems } },
    );
  }
  return { ...base, concerns: settings as ConcernSettingsOf<C> };
}

/** RS_CACHE_DIR, else the XDG cache directory (or ~/.cache), of `rootstream`; null for `off`. */
function cacheDirOf(setting: string | undefined, env: Env): string | null {
  if (setting !== undefined) return setting.toLowerCase() === "off" ? null : setting;
  if (env.XDG_CACHE_HOME?.startsWith("/")) return `${env.XDG_CACHE_HOME}/rootstream`;
  return env.HOME ? `${env.HOME.replace(/\/$/, "")}/.cache/rootstream` : null;
}

/** Parses the core settings from the raw variables; throws CONFIG_INVALID naming each bad one. */
function parseCore(raw: Record<string, string>, sources: ConfigSources): CoreConfig {
  const c = parseSettings(schema, raw, {
    label: (name) => {
      const doc = SETTINGS.find((s) => s.env === name);
      return doc?.flag ? `${name} (--${doc.flag})` : name;
    },
  });
  const sentinels = c.REDIS_SENTINELS ? hostPorts(c.REDIS_SENTINELS) : [];
  const clusterNodes = c.REDIS_CLUSTER_NODES ? hostPorts(c.REDIS_CLUSTER_NODES) : [];
  if (sentinels.length > 0 && clusterNodes.length > 0) {
    throw new RuntimeError(
      "CONFIG_INVALID",
      "Invalid configuration: REDIS_SENTINELS and REDIS_CLUSTER_NODES are both set; " +
        "Redis is either Sentinel-managed or a Redis Cluster, set one of them",
      { details: { problems: ["REDIS_SENTINELS and REDIS_CLUSTER_NODES are both set"] } },
    );
  }
  const secretKey = c.RS_SECRET_KEY ? decodeKey(c.RS_SECRET_KEY) : null;
  const hostname = sources.hostname ?? Deno.hostname();
  const pid = sources.pid ?? Deno.pid;
  return {
    http: { port: c.RS_PORT, host: c.RS_HOST },
    database: {
      url: c.DATABASE_URL ?? null,
      poolSize: c.DATABASE_POOL_SIZE,
      connectTimeoutS: c.DATABASE_CONNECT_TIMEOUT_S,
      queryTimeoutMs: c.DATABASE_QUERY_TIMEOUT_MS,
    },
    redis: {
      url: c.REDIS_URL ?? null,
      sentinels,
      sentinelMaster: c.REDIS_SENTINEL_MASTER,
      sentinelPassword: c.REDIS_SENTINEL_PASSWORD ?? null,
      clusterNodes,
      waitReplicas: c.REDIS_WAIT_REPLICAS,
      waitTimeoutMs: c.REDIS_WAIT_TIMEOUT_MS,
      keyPrefix: c.RS_KEY_PREFIX,
      caFile: c.REDIS_CA_FILE ?? null,
    },
    dataDir: c.RS_DATA_DIR,
    cacheDir: cacheDirOf(c.RS_CACHE_DIR, sources.env ?? Deno.env.toObject()),
    instanceId: c.RS_INSTANCE_ID ??
      `${hostname.replace(/[^\w.-]/g, "-").slice(0, 40)}-${pid}`,
    secretKey,
    previousSecretKey: c.RS_SECRET_KEY_PREVIOUS ? decodeKey(c.RS_SECRET_KEY_PREVIOUS) : null,
    messageMaxAgeMs: c.RS_MESSAGE_MAX_AGE_S * 1000,
    log: { level: c.LOG_LEVEL, format: c.LOG_FORMAT },
    shutdownTimeoutS: c.RS_SHUTDOWN_TIMEOUT_S,
    publicUrl: c.RS_PUBLIC_URL ?? null,
    cluster: {
      heartbeatMs: c.RS_HEARTBEAT_MS,
      deadAfterMs: c.RS_DEAD_AFTER_MS,
      leaseTtlMs: c.RS_LEASE_TTL_MS,
    },
    supervisor: { maxRestarts: c.RS_MAX_RESTARTS, withinMs: c.RS_RESTART_WINDOW_S * 1000 },
    testFailpoints: c.RS_TEST_FAILPOINTS === "1",
  };
}

/** A URL with its password masked, safe for logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "<invalid url>";
  }
}
