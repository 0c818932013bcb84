/**
 * The lease protocol on Redis: key layout, Lua scripts and typed calls. Each operation is
 * one script, so atomic on the Redis master (actors/runtime/leases.ts builds campaigns,
 * fencing and error handling on top):
 *
 * - `lease:<role>` holds `{"holder": <instance>, "token": <n>}` with the lease's TTL;
 * - `lease:<role>:fence` holds the newest token ever issued for the role (no TTL).
 *
 * - acquire: compare-and-create. Only when the lease key is absent is a new token issued,
 *   `max(previous + 1, Redis TIME in ms)`, so tokens still only grow when the fence counter
 *   was lost (a Redis restart without persistence, a failover to a replica that missed it);
 * - renew / release: compare-and-set on holder and token; one renew script extends every
 *   lease of a holder given to it (the keys of one call must share a slot on a Redis
 *   Cluster: there, one call per role);
 * - fence: whether a token is the newest issued and its lease still held, and optionally a
 *   write of a target key in the same script.
 *
 * A stored lease value is parsed with a schema: anything else in that key counts as no lease.
 * @module
 */
import { z } from "zod";
import { defineScript, type Keyspace, type RedisClient } from "./redis.ts";

/** A lease as stored: its holder and fencing token. */
export interface StoredLease {
  /** Instance id of the holder. */
  instance: string;
  /** Its fencing token. */
  token: number;
}

/** What acquire answered. */
export type AcquireReply =
  | { acquired: true; token: number }
  | { acquired: false; holder: StoredLease | null; holderTtlMs: number | null };

/**
 * What a fence check found: `current` (the token is the newest issued and its lease is
 * held), `stale` (a newer token exists), `not_held` (the newest, but its lease is gone) or
 * `unknown` (never issued here).
 */
export type FenceStatus = "current" | "stale" | "not_held" | "unknown";

/** A write made only while a fence is current. */
export interface FencedWrite {
  /** Target key (built with the keyspace). */
  key: string;
  /** Value to store. */
  value: string;
  /** Optional expiry of the written key (ms). */
  pxMs?: number;
}

/** One lease to renew: its role and the token it must still carry. */
export interface RenewRequest {
  /** Role name. */
  role: string;
  /** Token of our lease. */
  token: number;
}

/** What a renewal of one lease answered. */
export interface RenewReply {
  /** True when the lease was still ours (holder and token) and its TTL was reset. */
  renewed: boolean;
  /** Who holds it instead when not renewed (null: nobody, or an unreadable value). */
  holder: StoredLease | null;
}

/** The lease calls on one connection and keyspace. */
export interface LeaseStore {
  /** Takes the lease of `role` for `holder` when nobody holds it. */
  acquire(role: string, holder: string, ttlMs: number): Promise<AcquireReply>;
  /**
   * Extends each lease `holder` still holds with its token, in one script; answers per
   * lease, in order, renewed or who holds it now. On a Redis Cluster every role given must
   * share a slot, so one role per call there.
   */
  renewMany(holder: string, ttlMs: number, leases: readonly RenewRequest[]): Promise<RenewReply[]>;
  /** Drops the lease when `holder` holds it (with `token`, or any token when null). */
  release(role: string, holder: string, token: number | null): Promise<boolean>;
  /** The current lease of `role` and its remaining time (0 when none). */
  holder(role: string): Promise<{ lease: StoredLease | null; ttlMs: number }>;
  /** Checks a token against the role's newest, writing `write` in the same step if current. */
  fence(
    role: string,
    token: number,
    write?: FencedWrite,
  ): Promise<{ status: FenceStatus; newest: number }>;
}

// KEYS: lease, fence. ARGV: holder, ttl ms.
const ACQUIRE = defineScript(`
local current = redis.call('GET', KEYS[1])
if current then
  return {0, current, redis.call('PTTL', KEYS[1])}
end
local time = redis.call('TIME')
local nowMs = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local last = tonumber(redis.call('GET', KEYS[2])) or 0
local token = string.format('%d', math.max(last + 1, nowMs))
redis.call('SET', KEYS[2], token)
redis.call('SET', KEYS[1], '{"holder":' .. cjson.encode(ARGV[1]) .. ',"token":' .. token .. '}',
  'PX', ARGV[2])
return {1, token}
`);

const DECODE = `
local function mine(current, holder, token)
  local ok, lease = pcall(cjson.decode, current)
  return ok and type(lease) == 'table' and lease.holder == holder and
    (token == '' or tonumber(lease.token) == tonumber(token))
end
`;

// KEYS: leases. ARGV: holder, ttl ms, then one token per key. Per key: {1} renewed, {0}
// absent, {0, current value} someone else's (another holder or token): left untouched.
const RENEW_MANY = defineScript(
  DECODE + `
local replies = {}
for i, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  if not current then
    replies[i] = {0}
  elseif mine(current, ARGV[1], ARGV[i + 2]) then
    redis.call('PEXPIRE', key, ARGV[2])
    replies[i] = {1}
  else
    replies[i] = {0, current}
  end
end
return replies
`,
);

// KEYS: lease. ARGV: holder, token ('' = any token of this holder).
const RELEASE = defineScript(
  DECODE + `
local current = redis.call('GET', KEYS[1])
if current and mine(current, ARGV[1], ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
`,
);

// KEYS: lease, fence[, target]. ARGV: token[, value, px ms or ''].
// Status: 0 current, 1 older than the newest token, 2 newest but no longer held, 3 unknown.
const FENCE = defineScript(`
local token = tonumber(ARGV[1])
local newest = tonumber(redis.call('GET', KEYS[2])) or 0
local status = 0
if token < newest then
  status = 1
elseif token > newest then
  status = 3
else
  local current = redis.call('GET', KEYS[1])
  local ok, lease = false, nil
  if current then ok, lease = pcall(cjson.decode, current) end
  if not (ok and type(lease) == 'table' and tonumber(lease.token) == token) then status = 2 end
end
if status == 0 and KEYS[3] then
  if ARGV[3] ~= '' then
    redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
  else
    redis.call('SET', KEYS[3], ARGV[2])
  end
end
return {status, string.format('%d', newest)}
`);

// KEYS: lease.
const HOLDER = defineScript(`return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}`);

const FENCE_STATUS: readonly FenceStatus[] = ["current", "stale", "not_held", "unknown"];

const LeaseValue = z.object({
  holder: z.string().min(1),
  token: z.number().int().positive(),
});

/** Parses a stored lease value; null when it is not one of ours. */
function parseLease(raw: unknown): StoredLease | null {
  if (typeof raw !== "string") return null;
  try {
    const value = LeaseValue.safeParse(JSON.parse(raw));
    return value.success ? { instance: value.data.holder, token: value.data.token } : null;
  } catch {
    return null;
  }
}

/**
 * The hash tag of `role`'s keys (`{role}`): the lease, its fence counter and every key a
 * fenced write of the role touches carry it, so FENCE runs within one slot of a Redis
 * Cluster (a key without it is refused there with CROSSSLOT).
 */
export function leaseTag(role: string): string {
  return `{${role}}`;
}

/** The lease calls over `redis`, with keys under `keyspace`. */
export function createLeaseStore(redis: RedisClient, keyspace: Keyspace): LeaseStore {
  const leaseKey = (role: string) => keyspace.key("lease", leaseTag(role));
  const fenceKey = (role: string) => keyspace.key("lease", leaseTag(role), "fence");
  return {
    async acquire(role, holder, ttlMs) {
      const reply = await ACQUIRE(redis, [leaseKey(role), fenceKey(role)], [holder, ttlMs]) as [
        number,
        string,
        number?,
      ];
      if (reply[0] === 1) return { acquired: true, token: Number(reply[1]) };
      const ttl = Number(reply[2]);
      return {
        acquired: false,
        holder: parseLease(reply[1]),
        holderTtlMs: Number.isFinite(ttl) && ttl >= 0 ? ttl : null,
      };
    },
    async renewMany(holder, ttlMs, leases) {
      if (leases.length === 0) return [];
      const replies = await RENEW_MANY(
        redis,
        leases.map((l) => leaseKey(l.role)),
        [holder, ttlMs, ...leases.map((l) => l.token)],
      ) as [number, string?][];
      if (!Array.isArray(replies) || replies.length !== leases.length) {
        throw new Error(
          `renew script answered ${JSON.stringify(replies)} for ${leases.length} leases`,
        );
      }
      return replies.map((reply) => ({
        renewed: reply[0] === 1,
        holder: reply[0] === 1 ? null : parseLease(reply[1]),
      }));
    },
    async release(role, holder, token) {
      return await RELEASE(redis, [leaseKey(role)], [holder, token ?? ""]) === 1;
    },
    async holder(role) {
      const reply = await HOLDER(redis, [leaseKey(role)], []) as [string | null, number];
      return { lease: parseLease(reply[0]), ttlMs: Math.max(0, Number(reply[1])) };
    },
    async fence(role, token, write) {
      const keys = [leaseKey(role), fenceKey(role)];
      const args: (string | number)[] = [token];
      if (write) {
        keys.push(write.key);
        args.push(write.value, write.pxMs ?? "");
      }
      const reply = await FENCE(redis, keys, args) as [number, string];
      return { status: FENCE_STATUS[reply[0]] ?? "unknown", newest: Number(reply[1]) };
    },
  };
}
