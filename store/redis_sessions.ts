/**
 * The sessions concern's keys on Redis: key layout and typed calls (actors/sessions/
 * challenges.ts and rate_limit.ts decide what to keep, parse what they read back, and fall
 * back to this process without Redis):
 *
 * - `login:attempt:<attempt id>`: a login attempt waiting for its MFA code, as JSON, with a
 *   TTL of the time the attempt has left, so the code may arrive at another instance;
 * - `ratelimit:<parts…>`: a fixed-window attempt counter, created at 0 with the window as
 *   its TTL and incremented in the same MULTI, so a counter never lives without its expiry.
 *
 * Values come back unparsed: the caller validates them with its schema, since anything in
 * Redis may have been written by someone else. A login attempt's record is also sealed
 * (lib/message_auth.ts, purpose `login.attempt`, bound to the attempt id): one written
 * without the secret key (say, a forged attempt with its failure count reset to 0) reads
 * as no attempt at all.
 * @module
 */
import { claimedSender, type MessageAuth } from "../lib/message_auth.ts";
import type { Keyspace, RedisClient } from "./redis.ts";

/** Pending login attempts on one connection and keyspace. */
export interface LoginAttemptStore {
  /** Stores the attempt's record (JSON) for `ttlMs`, replacing any earlier one. */
  save(attemptId: string, record: string, ttlMs: number): Promise<void>;
  /** The stored record (JSON, unparsed), or null when unknown, expired or not sealed by us. */
  load(attemptId: string): Promise<string | null>;
  /** Deletes the attempt's record. */
  remove(attemptId: string): Promise<void>;
}

/** The login-attempt calls over `redis`, with keys under `keyspace`. */
export function createLoginAttemptStore(
  redis: RedisClient,
  keyspace: Keyspace,
  auth: MessageAuth,
): LoginAttemptStore {
  const key = (attemptId: string) => keyspace.key("login", "attempt", attemptId);
  return {
    async save(attemptId, record, ttlMs) {
      await redis.set(key(attemptId), auth.seal("login.attempt", attemptId, record), "PX", ttlMs);
    },
    async load(attemptId) {
      const raw = await redis.get(key(attemptId));
      if (raw === null) return null;
      const opened = auth.open("login.attempt", attemptId, raw);
      if (opened) return opened.body;
      auth.refused("login.attempt", claimedSender(raw), { attempt: attemptId });
      return null;
    },
    async remove(attemptId) {
      await redis.del(key(attemptId));
    },
  };
}

/**
 * The key of the counter of `parts` (e.g. `["login-ip", ip]`); a TypeError when a part is
 * empty or holds whitespace or control characters. The limiter builds it before it counts,
 * so a bad part is the caller's error, never taken for a Redis failure.
 */
export function rateLimitKey(keyspace: Keyspace, parts: readonly string[]): string {
  return keyspace.key("ratelimit", ...parts);
}

/** One counted attempt, as Redis saw it. */
export interface CounterHit {
  /** Attempts in the window, this one included. */
  count: number;
  /** Time left in the window (PTTL), ms. */
  ttlMs: number;
}

/** Fixed-window counters on one connection; keys come from {@linkcode rateLimitKey}. */
export interface RateCounterStore {
  /** Counts one attempt in the window of `key`, starting a `windowMs` window when none runs. */
  hit(key: string, windowMs: number): Promise<CounterHit>;
  /** Forgets the counter. */
  reset(key: string): Promise<void>;
}

/** The counter calls over `redis`. */
export function createRateCounterStore(redis: RedisClient): RateCounterStore {
  return {
    async hit(key, windowMs) {
      const results = await redis.multi()
        .set(key, "0", "PX", windowMs, "NX")
        .incr(key)
        .pttl(key)
        .exec();
      const failed = results?.find(([err]) => err);
      if (!results || failed) throw failed?.[0] ?? new Error("MULTI was aborted");
      return { count: Number(results[1][1]), ttlMs: Number(results[2][1]) };
    },
    async reset(key) {
      await redis.del(key);
    },
  };
}
