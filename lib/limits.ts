/**
 * Bounds on the work one client can cause: event-stream clients per address and in all,
 * how long the inspector keeps views of stopped actors, and how many password hashes run
 * at once (and wait). Parsed with zod as part of the one configuration (concerns/config.ts);
 * a wrong value stops start-up (exit 2) naming the variable.
 * @module
 */
import { z } from "zod";
import { type ConcernConfig, intIn, type SettingDoc } from "./config.ts";
import { parseSettings, pickSettings } from "./settings.ts";

/** The validated limits. */
export interface LimitsSettings {
  /** Event streams (`/state/stream`, `/actors/stream`, `/console/events`) per client address. */
  sseMaxPerClient: number;
  /** Event streams this instance serves at once, all clients together. */
  sseMaxTotal: number;
  /** How long the inspector keeps the view of a stopped actor (ms). */
  inspectorRetentionMs: number;
  /** Views of stopped actors kept at most (the oldest go first). */
  inspectorMaxStopped: number;
  /** Password hashes (login, re-authentication, registration) computed at once. */
  hashConcurrency: number;
  /** Password checks waiting for a slot; beyond it a login answers 503 SERVER_BUSY. */
  hashQueue: number;
  /** Whether this instance records its transitions and messages in the cluster's history. */
  history: boolean;
  /** Records the cluster's recorded history keeps at most (approximately). */
  historyMaxEntries: number;
  /** How long the recorded history keeps an entry, by the Redis server clock (ms). */
  historyMaxAgeMs: number;
  /** How often this instance records a keyframe (every actor's state) in the history (ms). */
  historyKeyframeMs: number;
}

/** The defaults, for components built without a configuration (tests, examples). */
export const DEFAULT_LIMITS: Readonly<LimitsSettings> = Object.freeze({
  sseMaxPerClient: 8,
  sseMaxTotal: 256,
  inspectorRetentionMs: 60_000,
  inspectorMaxStopped: 1000,
  hashConcurrency: 4,
  hashQueue: 64,
  history: true,
  historyMaxEntries: 500_000,
  historyMaxAgeMs: 7 * 86_400_000,
  historyKeyframeMs: 300_000,
});

/** The variables of the limits, documented. */
export const LIMITS_SETTINGS: readonly SettingDoc[] = [
  {
    env: "RS_SSE_MAX_PER_CLIENT",
    default: String(DEFAULT_LIMITS.sseMaxPerClient),
    description: "Event streams (/state/stream, /actors/stream, /console/events) one client " +
      "address may hold open; one more answers 429 STREAMS_PER_CLIENT_EXCEEDED",
  },
  {
    env: "RS_SSE_MAX_TOTAL",
    default: String(DEFAULT_LIMITS.sseMaxTotal),
    description: "Event streams this instance serves at once, all clients together; one " +
      "more answers 503 STREAMS_EXHAUSTED",
  },
  {
    env: "RS_INSPECTOR_RETENTION_S",
    default: String(DEFAULT_LIMITS.inspectorRetentionMs / 1000),
    description: "How long /actors keeps showing an actor after it stopped (a finished " +
      "login attempt, say)",
  },
  {
    env: "RS_INSPECTOR_MAX_STOPPED",
    default: String(DEFAULT_LIMITS.inspectorMaxStopped),
    description: "Views of stopped actors kept at most; the oldest are dropped first",
  },
  {
    env: "RS_HASH_CONCURRENCY",
    default: String(DEFAULT_LIMITS.hashConcurrency),
    description: "Password hashes (scrypt, 32 MiB each) computed at once by logins, " +
      "re-authentications and registrations",
  },
  {
    env: "RS_HASH_QUEUE",
    default: String(DEFAULT_LIMITS.hashQueue),
    description: "Password checks waiting for a hashing slot; one more answers 503 " +
      "SERVER_BUSY with Retry-After",
  },
  {
    env: "RS_HISTORY",
    default: "on",
    description: "on: this instance records its transitions and the messages it receives in " +
      "the cluster's history (Redis, docs/console.md); off: it records nothing (GET /history " +
      "still reads what others record), e.g. to measure the recorder's cost",
  },
  {
    env: "RS_HISTORY_MAX_ENTRIES",
    default: String(DEFAULT_LIMITS.historyMaxEntries),
    description: "Records (transitions, messages and keyframes of every instance) the " +
      "recorded history in Redis keeps at most, approximately; the oldest are trimmed " +
      "(docs/console.md)",
  },
  {
    env: "RS_HISTORY_MAX_AGE_S",
    default: String(DEFAULT_LIMITS.historyMaxAgeMs / 1000),
    description: "How long the recorded history keeps an entry, by the Redis server clock",
  },
  {
    env: "RS_HISTORY_KEYFRAME_S",
    default: String(DEFAULT_LIMITS.historyKeyframeMs / 1000),
    description: "How often an instance records a keyframe (every running actor's state) in " +
      "the history, besides one at start; a past moment's states start from the keyframe " +
      "before it",
  },
];

const schema = z.object({
  RS_SSE_MAX_PER_CLIENT: intIn(1, 10_000, "streams").default(DEFAULT_LIMITS.sseMaxPerClient),
  RS_SSE_MAX_TOTAL: intIn(1, 100_000, "streams").default(DEFAULT_LIMITS.sseMaxTotal),
  RS_INSPECTOR_RETENTION_S: intIn(0, 86_400, "seconds").default(60),
  RS_INSPECTOR_MAX_STOPPED: intIn(0, 1_000_000, "views").default(
    DEFAULT_LIMITS.inspectorMaxStopped,
  ),
  RS_HASH_CONCURRENCY: intIn(1, 256, "hashes").default(DEFAULT_LIMITS.hashConcurrency),
  RS_HASH_QUEUE: intIn(0, 100_000, "waiting checks").default(DEFAULT_LIMITS.hashQueue),
  RS_HISTORY: z.enum(["on", "off"], { message: "on or off" }).default("on"),
  RS_HISTORY_MAX_ENTRIES: intIn(1000, 100_000_000, "records").default(
    DEFAULT_LIMITS.historyMaxEntries,
  ),
  RS_HISTORY_MAX_AGE_S: intIn(60, 90 * 86_400, "seconds").default(
    DEFAULT_LIMITS.historyMaxAgeMs / 1000,
  ),
  RS_HISTORY_KEYFRAME_S: intIn(10, 86_400, "seconds").default(
    DEFAULT_LIMITS.historyKeyframeMs / 1000,
  ),
});

/** Reads and validates the limits; CONFIG_INVALID names every bad variable. */
export function loadLimitsSettings(env: Record<string, string | undefined>): LimitsSettings {
  const c = parseSettings(schema, pickSettings(env, LIMITS_SETTINGS.map((s) => s.env)));
  return {
    sseMaxPerClient: c.RS_SSE_MAX_PER_CLIENT,
    sseMaxTotal: c.RS_SSE_MAX_TOTAL,
    inspectorRetentionMs: c.RS_INSPECTOR_RETENTION_S * 1000,
    inspectorMaxStopped: c.RS_INSPECTOR_MAX_STOPPED,
    hashConcurrency: c.RS_HASH_CONCURRENCY,
    hashQueue: c.RS_HASH_QUEUE,
    history: c.RS_HISTORY === "on",
    historyMaxEntries: c.RS_HISTORY_MAX_ENTRIES,
    historyMaxAgeMs: c.RS_HISTORY_MAX_AGE_S * 1000,
    historyKeyframeMs: c.RS_HISTORY_KEYFRAME_S * 1000,
  };
}

/** The limits' part of the one configuration. */
export const LIMITS_CONFIG: ConcernConfig<LimitsSettings> = {
  title: "Limits",
  intro: "Bounds on the work one client can cause (read by the HTTP app, the inspector and " +
    "the sessions concern).",
  variables: LIMITS_SETTINGS,
  parse: (env) => loadLimitsSettings(env),
};
