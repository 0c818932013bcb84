/**
 * Pending MFA challenges: what another instance needs to resume a login attempt that is
 * waiting for a code (the client's next request may reach any instance).
 *
 * Stored in Redis (`login:attempt:<id>`, store/redis_sessions.ts) with a TTL equal to the
 * time left, or in this process without Redis (a single instance). The record holds the
 * SHA-256 of the challenge token, never the token, and no password or code; what comes back
 * from Redis is parsed with the record's schema before it is believed.
 * @module
 */
import { z } from "zod";
import type { MessageAuth } from "../../lib/message_auth.ts";
import type { LoginDevice } from "../../machines/login.ts";
import type { Keyspace, RedisClient } from "../../store/redis.ts";
import { createLoginAttemptStore } from "../../store/redis_sessions.ts";

/** A resumable login attempt. */
export interface ChallengeRecord {
  /** Attempt id. */
  attemptId: string;
  /** Hex SHA-256 of the challenge token. */
  challengeHash: string;
  /** The user whose password matched; null in a passkey login (no user until the passkey). */
  userId: number | null;
  /** A passkey login. */
  passwordless: boolean;
  /** Login as typed (for the rate-limit key and the audit trail). */
  login: string;
  /** "Remember me". */
  remember: boolean;
  /** Client details from the password step. */
  device: LoginDevice;
  /** Codes rejected so far. */
  mfaFailures: number;
  /** When the attempt expires, ms since the epoch. */
  deadline: number;
}

/** Where pending challenges are kept. */
export interface ChallengeStore {
  /** Saves (or updates) a record until its deadline. */
  save(record: ChallengeRecord): Promise<void>;
  /** The record, or null when unknown, expired or unreadable. */
  load(attemptId: string): Promise<ChallengeRecord | null>;
  /** Deletes a record. */
  remove(attemptId: string): Promise<void>;
}

const recordSchema = z.object({
  attemptId: z.string().uuid(),
  challengeHash: z.string().regex(/^[0-9a-f]{64}$/),
  userId: z.number().int().positive().nullable(),
  passwordless: z.boolean().default(false),
  login: z.string().max(254),
  remember: z.boolean(),
  device: z.object({
    fingerprint: z.string().nullable(),
    ipAddress: z.string().nullable(),
    userAgent: z.string().nullable(),
    geoLocation: z.string().nullable(),
  }),
  mfaFailures: z.number().int().min(0),
  deadline: z.number(),
});

/** Creates the store: Redis when given, else a per-process map. */
export function createChallengeStore(options: {
  redis: RedisClient | null;
  keyspace: Keyspace;
  now: () => number;
  /** Seals the records kept in Redis; required with `redis`. */
  auth?: MessageAuth | null;
}): ChallengeStore {
  const { redis, keyspace, now } = options;
  if (redis && !options.auth) {
    throw new TypeError("createChallengeStore: records in Redis need `auth` to be sealed");
  }
  const stored = redis ? createLoginAttemptStore(redis, keyspace, options.auth!) : null;
  const local = new Map<string, ChallengeRecord>();
  return {
    async save(record) {
      const ttl = Math.max(1, record.deadline - now());
      if (stored) await stored.save(record.attemptId, JSON.stringify(record), ttl);
      else {
        local.set(record.attemptId, record);
        if (local.size > 10_000) {
          for (const [id, r] of local) if (r.deadline <= now()) local.delete(id);
        }
      }
    },
    async load(attemptId) {
      let raw: unknown;
      if (stored) {
        const text = await stored.load(attemptId);
        if (text === null) return null;
        try {
          raw = JSON.parse(text);
        } catch {
          return null;
        }
      } else {
        raw = local.get(attemptId);
      }
      const parsed = recordSchema.safeParse(raw);
      if (!parsed.success || parsed.data.deadline <= now()) return null;
      return parsed.data;
    },
    async remove(attemptId) {
      if (stored) await stored.remove(attemptId);
      else local.delete(attemptId);
    },
  };
}
