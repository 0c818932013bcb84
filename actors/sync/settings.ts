/**
 * Settings of the sync concern, parsed with zod as part of the one configuration
 * (concerns/config.ts). A wrong value stops start-up (exit 2) naming the variable.
 * @module
 */
import { z } from "zod";
import type { ConcernConfig } from "../../lib/config.ts";
import { parseSettings, pickSettings } from "../../lib/settings.ts";

/** Settings of the sync concern. */
export interface SyncSettings {
  /** Least time between two announcements after this node's sequence moved (ms). */
  headsMs: number;
  /** Announcement period while nothing moved (ms). */
  keepAliveMs: number;
  /** Period of snapshot rounds (ms). */
  snapshotMs: number;
  /** Pause before retrying an incomplete repair (ms). */
  repairRetryMs: number;
  /** How long a batch of a gone origin may stay missing before it is given up (ms). */
  giveUpMs: number;
  /** Events buffered per event-stream client. */
  sseBuffer: number;
}

/** The environment variables of the sync concern, with their defaults. */
export const SYNC_SETTINGS = [
  {
    env: "RS_SYNC_HEADS_MS",
    default: "1000",
    description: "Least time between two sync sequence announcements after the sequence moved",
  },
  {
    env: "RS_SYNC_KEEPALIVE_MS",
    default: "10000",
    description: "Sync sequence announcement period while nothing moved (a backstop for lost ones)",
  },
  { env: "RS_SYNC_SNAPSHOT_MS", default: "10000", description: "Sync snapshot round period" },
  { env: "RS_SYNC_REPAIR_RETRY_MS", default: "250", description: "Pause between repair attempts" },
  {
    env: "RS_SYNC_GIVE_UP_MS",
    default: "30000",
    description: "How long batches of a gone origin may stay missing before they are given up",
  },
] as const;

function ms(min: number, max: number, fallback: number) {
  return z.string().regex(/^\d+$/, { message: "an integer (milliseconds)" }).transform(Number)
    .refine((n) => n >= min && n <= max, { message: `between ${min} and ${max}` })
    .optional().transform((n) => n ?? fallback);
}

const envSchema = z.object({
  RS_SYNC_HEADS_MS: ms(50, 60_000, 1000),
  RS_SYNC_KEEPALIVE_MS: ms(100, 600_000, 10_000),
  RS_SYNC_SNAPSHOT_MS: ms(100, 3_600_000, 10_000),
  RS_SYNC_REPAIR_RETRY_MS: ms(10, 60_000, 250),
  RS_SYNC_GIVE_UP_MS: ms(500, 3_600_000, 30_000),
});

/** Reads and validates the sync settings from environment variables. */
export function readSyncSettings(env: Record<string, string | undefined>): SyncSettings {
  const d = parseSettings(envSchema, pickSettings(env, SYNC_SETTINGS.map((s) => s.env)));
  return {
    headsMs: d.RS_SYNC_HEADS_MS,
    keepAliveMs: Math.max(d.RS_SYNC_KEEPALIVE_MS, d.RS_SYNC_HEADS_MS),
    snapshotMs: d.RS_SYNC_SNAPSHOT_MS,
    repairRetryMs: d.RS_SYNC_REPAIR_RETRY_MS,
    giveUpMs: d.RS_SYNC_GIVE_UP_MS,
    sseBuffer: 256,
  };
}

/** The sync concern's part of the one configuration. */
export const SYNC_CONFIG: ConcernConfig<SyncSettings> = {
  title: "State synchronisation",
  intro: "Read by the sync concern (actors/sync).",
  variables: SYNC_SETTINGS,
  parse: (env) => readSyncSettings(env),
};

/**
 * How long an origin may stay silent before repair counts it gone although its instance is a
 * live member: three keep-alives and one announcement gap.
 */
export function originLiveMs(s: { keepAliveMs?: number; headsMs?: number } = {}): number {
  return 3 * (s.keepAliveMs ?? 10_000) + (s.headsMs ?? 1000);
}
