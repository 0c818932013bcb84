/**
 * The membership protocol on Redis: key layout, Lua scripts and typed calls
 * (actors/runtime/membership.ts drives them from the cluster-node statechart).
 *
 * - `{members}`: a sorted set of instance ids scored by their last heartbeat, in ms of the
 *   Redis server's own clock (so host clock skew cannot make a live instance look dead);
 * - `{members}:log`: the change stream, one entry per join (`j` = id) or departure (`l` = id),
 *   capped near {@linkcode CHANGE_LOG_MAX} entries;
 * - `{members}:member:<id>`: the instance's JSON info, written when it changed (and refreshed slowly),
 *   with a TTL of a few refresh periods.
 *
 * Costs do not grow with the number of instances N: a heartbeat is one script of four
 * commands whatever N (TIME, ZADD, a `ZRANGEBYSCORE … LIMIT` that reaps members silent past
 * the dead-after window — each reap appends a departure — and an `XRANGE` of the changes
 * since the caller's cursor). A full read of the live set (O(N)) happens only on join or
 * after a gap: the caller's cursor was trimmed from the stream, or more changes than one
 * page piled up. A member reaped while it was still alive (a long pause) is re-added by its
 * next heartbeat, which appends a join.
 *
 * The info carries the member's URL, which the console fetches server-side, so it is sealed
 * (lib/message_auth.ts, purpose `membership.info`, bound to the member id): an info written
 * without the cluster's secret key, or a genuine one copied under another id, reads as
 * absent — the member is not listed and its URL never fetched. The change stream, like the
 * sorted set, holds only ids: what a forged entry could do is make an instance look
 * joined or departed until the next full read, never make one of its URLs fetched.
 *
 * Redis Cluster: the scripts' keys share one slot through the hash tag `{members}`
 * (`{members}`, `{members}:log`, `{members}:member:<id>`, built by {@linkcode membersKey} and
 * {@linkcode memberInfoKey}), so every script and the MGET of infos run on one shard.
 * @module
 */
import type { MessageAuth } from "../lib/message_auth.ts";
import { defineScript, type Keyspace, type RedisClient } from "./redis.ts";

/** Key of the member set; its hash tag `{members}` is shared by every membership key. */
export function membersKey(keyspace: Keyspace): string {
  return keyspace.key("{members}");
}

/** Key of the membership change stream (same hash tag as {@linkcode membersKey}). */
export function membersLogKey(keyspace: Keyspace): string {
  return keyspace.key("{members}", "log");
}

/** Key of member `id`'s info (same hash tag as {@linkcode membersKey}). */
export function memberInfoKey(keyspace: Keyspace, id: string): string {
  return keyspace.key("{members}", "member", id);
}

/** Entries the change stream keeps, about. */
export const CHANGE_LOG_MAX = 1000;
/** Changes one delta read returns at most; more is read as a gap (a full read). */
const PAGE = 256;
/** Members reaped by one heartbeat at most (the others by the next ones). */
const REAP_LIMIT = 16;

/** A live member and the time since its last heartbeat. */
export interface MemberAge {
  /** Instance id. */
  id: string;
  /** Milliseconds since its last heartbeat, by the Redis server's clock. */
  ageMs: number;
}

/** What a heartbeat or a change read answers: the member list moved to a new cursor. */
export interface MemberDelta {
  /** `full`: `members` is the whole live set; `delta`: `changes` apply to the caller's list. */
  mode: "full" | "delta";
  /** The change stream id this answer is current to. */
  cursor: string;
  /** Live ids (mode `full`). */
  members: string[];
  /** Joins and departures after the caller's cursor, oldest first (mode `delta`). */
  changes: { op: "join" | "leave"; id: string }[];
  /** True when this call appended changes (a join of the caller, or reaped members). */
  wrote: boolean;
  /** True when the caller was not in the set (first beat, reaped, or Redis lost it). */
  rejoined: boolean;
}

/** The membership calls on one connection and keyspace. */
export interface MemberStore {
  /**
   * Records a heartbeat of `id` (with its sealed info when `info` is not null) and answers
   * the changes since `cursor` (null: a full read).
   */
  heartbeat(id: string, info: string | null, cursor: string | null): Promise<MemberDelta>;
  /** The changes since `cursor` (null: a full read), without a heartbeat. */
  changes(cursor: string | null): Promise<MemberDelta>;
  /** The live members. */
  live(): Promise<MemberAge[]>;
  /** The stored info (JSON, unparsed) of each id, null where it expired or is not sealed by us. */
  infos(ids: readonly string[]): Promise<(string | null)[]>;
  /** Removes `id` from the registry at once (a departure in the change stream). */
  remove(id: string): Promise<void>;
}

/**
 * Shared tail of both scripts: the answer since cursor ARGV[c] over KEYS[1] (set) and KEYS[2]
 * (stream). Delta: `XRANGE log cursor + COUNT page+1` starts with the cursor's own entry
 * while it is still in the stream; when it is not (trimmed, or the stream was lost) or the
 * page is full, the answer is a full read. The stream is never empty once read, so a cursor
 * always names an entry.
 */
const ANSWER = `
local function full(now, dead)
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  local cursor
  if #last == 0 then
    cursor = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'n', '')
  else
    cursor = last[1][1]
  end
  local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - dead, '+inf')
  local out = {'full', cursor}
  for i = 1, #live do out[#out + 1] = live[i] end
  return out
end
local function answer(now, dead, cursor, page)
  if cursor == '' then return full(now, dead) end
  local entries = redis.call('XRANGE', KEYS[2], cursor, '+', 'COUNT', page + 1)
  if #entries == 0 or entries[1][1] ~= cursor or #entries > page then return full(now, dead) end
  local out = {'delta', entries[#entries][1]}
  for i = 2, #entries do
    local f = entries[i][2]
    if f[1] == 'j' or f[1] == 'l' then
      out[#out + 1] = f[1]
      out[#out + 1] = f[2]
    end
  end
  return out
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`;

// KEYS: members, members:log, member:<id>.
// ARGV: log max, dead-after ms, cursor, page, id, sealed info ('' = unchanged), info TTL ms, reap limit.
const HEARTBEAT = defineScript(
  ANSWER + `
local dead = tonumber(ARGV[2])
local wrote = 0
local added = redis.call('ZADD', KEYS[1], now, ARGV[5])
if added == 1 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'j', ARGV[5])
  wrote = 1
end
if ARGV[6] ~= '' then redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[7]) end
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - dead - 1, 'LIMIT', 0, tonumber(ARGV[8]))
for i = 1, #gone do
  redis.call('ZREM', KEYS[1], gone[i])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'l', gone[i])
  wrote = 1
end
-- Not in the set before: first beat, reaped during a pause, or Redis lost its data (then a
-- new stream may even reuse the cursor's id): read everything.
local cursor = ARGV[3]
if added == 1 then cursor = '' end
local out = answer(now, dead, cursor, tonumber(ARGV[4]))
table.insert(out, 1, added)
table.insert(out, 1, wrote)
return out`,
);

// KEYS: members, members:log. ARGV: log max, dead-after ms, cursor, page.
const CHANGES = defineScript(
  ANSWER + `
local out = answer(now, tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]))
table.insert(out, 1, 0)
table.insert(out, 1, 0)
return out`,
);

// KEYS: members, members:log, member:<id>. ARGV: log max, id.
const REMOVE = defineScript(`
if redis.call('ZREM', KEYS[1], ARGV[2]) == 1 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'l', ARGV[2])
end
redis.call('DEL', KEYS[3])
return 1`);

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

/** Decodes `[wrote, added, mode, cursor, ...]`. */
function delta(raw: unknown): MemberDelta {
  const flat = raw as (string | number)[];
  const mode = flat[2] === "full" ? "full" : "delta";
  const rest = flat.slice(4).map(String);
  const out: MemberDelta = {
    mode,
    cursor: String(flat[3]),
    members: [],
    changes: [],
    wrote: Number(flat[0]) === 1,
    rejoined: Number(flat[1]) === 1,
  };
  if (mode === "full") out.members = rest;
  else {
    for (let i = 0; i < rest.length; i += 2) {
      out.changes.push({ op: rest[i] === "j" ? "join" : "leave", id: rest[i + 1] });
    }
  }
  return out;
}

/**
 * Applies an answer to the list it was asked for (`before`, at the cursor the call was given):
 * the live ids after it, sorted.
 */
export function applyDelta(before: readonly string[], answer: MemberDelta): string[] {
  if (answer.mode === "full") return [...new Set(answer.members)].sort();
  const set = new Set(before);
  for (const c of answer.changes) {
    if (c.op === "join") set.add(c.id);
    else set.delete(c.id);
  }
  return [...set].sort();
}

/** The membership calls over `redis`; a member silent for `deadAfterMs` is not live. */
export function createMemberStore(
  redis: RedisClient,
  keyspace: Keyspace,
  options: { deadAfterMs: number; auth: MessageAuth; infoTtlMs?: number },
): MemberStore {
  const auth = options.auth;
  const zset = membersKey(keyspace);
  const log = membersLogKey(keyspace);
  const infoKey = (id: string) => memberInfoKey(keyspace, id);
  const dead = String(options.deadAfterMs);
  const infoTtl = String(options.infoTtlMs ?? 60_000);
  const max = String(CHANGE_LOG_MAX);
  return {
    async heartbeat(id, info, cursor) {
      const sealed = info === null ? "" : auth.seal("membership.info", id, info);
      return delta(
        await HEARTBEAT(redis, [zset, log, infoKey(id)], [
          max,
          dead,
          cursor ?? "",
          String(PAGE),
          id,
          sealed,
          infoTtl,
          String(REAP_LIMIT),
        ]),
      );
    },
    async changes(cursor) {
      return delta(await CHANGES(redis, [zset, log], [max, dead, cursor ?? "", String(PAGE)]));
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
      await REMOVE(redis, [zset, log, infoKey(id)], [max, id]);
    },
  };
}
