/**
 * Fixed-window attempt counters for login and registration: in Redis (shared by every
 * instance; keys and commands in store/redis_sessions.ts) or, without Redis, in this process.
 *
 * `hit` counts an attempt *before* the work it guards, so concurrent attempts each see a
 * distinct count and a burst cannot slip past the limit. When Redis
 * fails the limiter lets the attempt through (and reports it): the per-user MFA lockout in
 * PostgreSQL still bounds guessing, and refusing every login during a Redis outage would
 * turn a cache failure into a full outage.
 * @module
 */
import type { Keyspace, RedisClient } from "../../store/redis.ts";
import { createRateCounterStore, rateLimitKey } from "../../store/redis_sessions.ts";

/** A limit: at most `limit` attempts per `windowMs`. */
export interface RateLimit {
  /** Attempts allowed per window. */
  limit: number;
  /** Window length in ms. */
  windowMs: number;
}

/** Outcome of one counted attempt. */
export interface RateDecision {
  /** Under the limit. */
  allowed: boolean;
  /** Attempts in the window, this one included. */
  count: number;
  /** When refused: ms until the window resets. */
  retryAfterMs: number;
}

/** The limiter returned by {@linkcode createRateLimiter}. */
export interface RateLimiter {
  /** Counts an attempt against `key` (a list of key parts) and decides. */
  hit(key: string[], limit: RateLimit): Promise<RateDecision>;
  /** Forgets the attempts of `key` (after a success). */
  reset(key: string[]): Promise<void>;
}

/** Options of {@linkcode createRateLimiter}. */
export interface RateLimiterOptions {
  /** Redis connection; null: counters live in this process. */
  redis: RedisClient | null;
  /** Key namer (in-process counters use the same keys). */
  keyspace: Keyspace;
  /** Clock (in-process counters only; Redis expires keys on its own clock). */
  now: () => number;
  /** Called when Redis fails. */
  onError?: (err: unknown) => void;
}

/** Creates a limiter backed by Redis, or by a bounded map when `redis` is null. */
export function createRateLimiter(options: RateLimiterOptions): RateLimiter {
  const { redis, keyspace, now } = options;
  const onError = options.onError ?? (() => {});
  const counters = redis ? createRateCounterStore(redis) : null;
  const local = new Map<string, { count: number; resetAt: number }>();

  async function hitRedis(key: string, limit: RateLimit): Promise<RateDecision> {
    try {
      const { count, ttlMs } = await counters!.hit(key, limit.windowMs);
      const allowed = count <= limit.limit;
      return { allowed, count, retryAfterMs: allowed ? 0 : Math.max(1, ttlMs) };
    } catch (err) {
      onError(err);
      return { allowed: true, count: 0, retryAfterMs: 0 };
    }
  }

  function hitLocal(key: string, limit: RateLimit): RateDecision {
    const at = now();
    let entry = local.get(key);
    if (!entry || entry.resetAt <= at) {
      entry = { count: 0, resetAt: at + limit.windowMs };
      local.set(key, entry);
    }
    entry.count++;
    if (local.size > 50_000) {
      for (const [k, v] of local) if (v.resetAt <= at) local.delete(k);
    }
    const allowed = entry.count <= limit.limit;
    return { allowed, count: entry.count, retryAfterMs: allowed ? 0 : entry.resetAt - at };
  }

  return {
    hit(parts, limit) {
      const key = rateLimitKey(keyspace, parts);
      return counters ? hitRedis(key, limit) : Promise.resolve(hitLocal(key, limit));
    },
    async reset(parts) {
      const key = rateLimitKey(keyspace, parts);
      if (!counters) {
        local.delete(key);
        return;
      }
      try {
        await counters.reset(key);
      } catch (err) {
        onError(err);
      }
    },
  };
}
