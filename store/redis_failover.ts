/**
 * The failover concern's keys on Redis: key layout, the stored record and typed calls
 * (actors/failover/effects.ts decides what to publish and when):
 *
 * - `failover:primary`: the published primary as JSON ({@linkcode PublishedRecord}), no TTL;
 *   every instance reads it to know where the pool points, and a restarting one to know
 *   which node to open;
 * - `failover:status`: the coordinator's last monitor status as JSON, for 60 s.
 *
 * The coordinator writes both under the failover lease's fencing token: the calls here
 * only describe those writes ({@linkcode FencedWrite}) and actors/runtime/leases.ts makes
 * them in the fence's script, so a deposed coordinator cannot publish. Only a lone
 * instance (no leases) writes the primary directly.
 *
 * A stored record is parsed with a schema: anything else in that key counts as none. Both
 * are sealed (lib/message_auth.ts, purpose `failover.record`, bound to their key) and opened
 * before they are parsed: a primary written without the cluster's secret key counts as none
 * published, so nobody with only Redis access can re-point the instances' pools. The
 * primary has no TTL, so one still sealed with RS_SECRET_KEY_PREVIOUS is re-sealed with the
 * current key when read (compare-and-set: never over a newer record).
 * @module
 */
import { z } from "zod";
import { claimedSender, type MessageAuth } from "../lib/message_auth.ts";
import { defineScript, type Keyspace, type RedisClient } from "./redis.ts";
import { type FencedWrite, leaseTag } from "./redis_leases.ts";

/** The published primary as stored in Redis. */
export const PublishedRecord = z.object({
  node: z.string().min(1),
  epoch: z.number().int().nonnegative(),
  readOnlyNode: z.string().nullable().default(null),
  token: z.number().nullable().default(null),
  by: z.string().default(""),
  at: z.number().default(0),
  kind: z.string().default("failover"),
  why: z.string().default(""),
});

/** The record stored at `failover:primary`. */
export type PublishedRecord = z.infer<typeof PublishedRecord>;

/** The coordinator's last monitor status, stored at `failover:status`. */
export interface CoordinatorStatus {
  /** Instance id of the coordinator. */
  by: string;
  /** When the sample was taken (ms since the epoch). */
  at: number;
  /** The monitor's sentence. */
  why: string;
  /** synchronous_standby_names of the primary as sampled. */
  sync: unknown;
}

/** How long the coordinator's status outlives its last write. */
const STATUS_TTL_MS = 60_000;

/** The failover calls on one connection and keyspace. */
export interface FailoverStore {
  /**
   * The published primary; null when none is published, the value is not a record, or
   * Redis gives no answer within `timeoutMs`. Never throws.
   */
  readPrimary(timeoutMs: number): Promise<PublishedRecord | null>;
  /**
   * Like {@linkcode readPrimary}, but tells "Redis did not answer" (`answered: false`) from
   * "no record" (`answered: true, record: null`). Never throws.
   */
  readPrimaryAnswer(
    timeoutMs: number,
  ): Promise<{ answered: boolean; record: PublishedRecord | null }>;
  /** Publishes `record` unconditionally (a lone instance, which holds no lease). */
  writePrimary(record: PublishedRecord): Promise<void>;
  /** The write that publishes `record`, for a fenced write under the failover lease. */
  primaryWrite(record: PublishedRecord): FencedWrite;
  /** The write that stores the coordinator's status, for a fenced write. */
  statusWrite(status: CoordinatorStatus): FencedWrite;
}

/**
 * The lease role of the failover coordinator. Its records are written under that lease
 * (a fenced write), so their keys carry the role's hash tag and share its slot.
 */
export const FAILOVER_LEASE_ROLE = "failover";

/** Redis key of the published primary. */
export function primaryKey(keyspace: Keyspace): string {
  return keyspace.key("failover", leaseTag(FAILOVER_LEASE_ROLE), "primary");
}

/** Redis key of the coordinator's last status. */
export function statusKey(keyspace: Keyspace): string {
  return keyspace.key("failover", leaseTag(FAILOVER_LEASE_ROLE), "status");
}

// KEYS: the key. ARGV: the value read, its replacement. Replaces only an unchanged value.
const RESEAL = defineScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0`);

/** `promise`, or a rejection once `ms` have passed; the timer is always cleared. */
async function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: number | undefined;
  promise.catch(() => {});
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`redis: no answer within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** The failover calls over `redis`, with keys under `keyspace`. */
export function createFailoverStore(
  redis: RedisClient,
  keyspace: Keyspace,
  auth: MessageAuth,
): FailoverStore {
  const primary = primaryKey(keyspace);
  const status = statusKey(keyspace);
  const seal = (key: string, value: unknown) =>
    auth.seal("failover.record", key, JSON.stringify(value));
  async function readAnswer(
    timeoutMs: number,
  ): Promise<{ answered: boolean; record: PublishedRecord | null }> {
    let raw: string | null;
    try {
      raw = await withTimeout(redis.get(primary), timeoutMs);
    } catch {
      return { answered: false, record: null };
    }
    return { answered: true, record: raw ? await openRecord(raw, timeoutMs) : null };
  }
  async function openRecord(raw: string, timeoutMs: number): Promise<PublishedRecord | null> {
    try {
      const opened = auth.open("failover.record", primary, raw);
      if (!opened) {
        auth.refused("failover.record", claimedSender(raw), { key: "failover:primary" });
        return null;
      }
      const parsed = PublishedRecord.safeParse(JSON.parse(opened.body));
      if (parsed.success && opened.previous) {
        const resealed = auth.seal("failover.record", primary, opened.body);
        await withTimeout(RESEAL(redis, [primary], [raw, resealed]), timeoutMs)
          .catch(() => {}); // the next read tries again
      }
      return parsed.success ? parsed.data : null;
    } catch {
      return null;
    }
  }
  return {
    async readPrimary(timeoutMs) {
      return (await readAnswer(timeoutMs)).record;
    },
    readPrimaryAnswer: readAnswer,
    async writePrimary(record) {
      await redis.set(primary, seal(primary, record));
    },
    primaryWrite(record) {
      return { key: primary, value: seal(primary, record) };
    },
    statusWrite(value) {
      return { key: status, value: seal(status, value), pxMs: STATUS_TTL_MS };
    },
  };
}
