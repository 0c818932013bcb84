/**
 * The membership protocol on Redis: key layout, Lua scripts and typed calls
 * (actors/runtime/membership.ts drives them from the cluster-node statechart).
 *
 * - `{members}`: a sorted set of instance ids scored by their last heartbeat, in ms of the
 *   Redis server's own clock (so host clock skew cannot make a live instance look dead);
 * - `{members}:member:<id>`: the instance's JSON info, with a TTL of the dead-after window.
 *
 * A heartbeat writes both and reads the live members in the same round trip; members dead
 * for 30 windows are dropped from the set.
 *
 * The info carries the member's URL, which the console fetches server-side, so it is sealed
 * (lib/message_auth.ts, purpose `membership.info`, bound to the member id): an info written
 * without the cluster's secret key, or a genuine one copied under another id, reads as
 * absent — the member is not listed and its URL never fetched.
 * @module
 */
import type { MessageAuth } from "../lib/message_auth.ts";
import { defineScript, type Keyspace, type RedisClient } from "./redis.ts";

/** A live member and the time since its last heartbeat. */
export interface MemberAge {
  /** Instance id. */
  id: string;
  /** Milliseconds since its last heartbeat, by the Redis server's clock. */
  ageMs: number;
}

/** The membership calls on one connection and keyspace. */
export interface MemberStore {
  /** Records a heartbeat of `id` with its info (JSON); answers the live members. */
  heartbeat(id: string, info: string): Promise<MemberAge[]>;
  /** The live members. */
  live(): Promise<MemberAge[]>;
  /** The stored info (JSON, unparsed) of each id, null where it expired or is not sealed by us. */
  infos(ids: readonly string[]): Promise<(string | null)[]>;
  /** Removes `id` from the registry at once. */
  remove(id: string): Promise<void>;
}

/**
 * Key of the member set. Its hash tag (`{members}`) is shared by every info key, so the
 * heartbeat script and the MGET of infos stay within one slot of a Redis Cluster.
 */
export function membersKey(keyspace: Keyspace): string {
  return keyspace.key("{members}");
}

/** Key of member `id`'s info (same hash tag as {@linkcode membersKey}). */
export function memberInfoKey(keyspace: Keyspace, id: string): string {
  return keyspace.key("{members}", "member", id);
}

// KEYS: members, member:<id>. ARGV: id, info, dead-after ms.
const HEARTBEAT = defineScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', dead)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - dead * 30)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - dead, '+inf', 'WITHSCORES')
local out = {}
for i = 1, #live, 2 do
  out[#out + 1] = live[i]
  out[#out + 1] = tostring(now - tonumber(live[i + 1]))
end
return out`);

// KEYS: members. ARGV: dead-after ms.
const LIVE = defineScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf', 'WITHSCORES')
local out = {}
for i = 1, #live, 2 do
  out[#out + 1] = live[i]
  out[#out + 1] = tostring(now - tonumber(live[i + 1]))
end
return out`);

function pairs(flat: string[]): MemberAge[] {
  const out: MemberAge[] = [];
  for (let i = 0; i < flat.length; i += 2) out.push({ id: flat[i], ageMs: Number(flat[i + 1]) });
  return out;
}

/** The membership calls over `redis`; a member silent for `deadAfterMs` is not live. */
export function createMemberStore(
  redis: RedisClient,
  keyspace: Keyspace,
  options: { deadAfterMs: number; auth: MessageAuth },
): MemberStore {
  const auth = options.auth;
  const zset = membersKey(keyspace);
  const infoKey = (id: string) => memberInfoKey(keyspace, id);
  const dead = String(options.deadAfterMs);
  return {
    async heartbeat(id, info) {
      const sealed = auth.seal("membership.info", id, info);
      return pairs(await HEARTBEAT(redis, [zset, infoKey(id)], [id, sealed, dead]) as string[]);
    },
    async live() {
      return pairs(await LIVE(redis, [zset], [dead]) as string[]);
    },
    async infos(ids) {
      if (!ids.length) return [];
      const raw = await redis.mget(...ids.map(infoKey));
      return raw.map((value, i) => {
        if (value === null) return null;
        const opened = auth.open("membership.info", ids[i], value);
        if (opened) return opened.body;
        auth.refused("membership.info", ids[i], { member: ids[i] });
        return null;
      });
    },
    async remove(id) {
      await redis.multi().zrem(zset, id).del(infoKey(id)).exec();
    },
  };
}
