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
 * Costs do not grow with the number of instances N: a heartbeat is one script of three
 * commands whatever N at idle (TIME, ZADD, a `ZRANGEBYSCORE … LIMIT` that reaps members silent
 * past the dead-after window — each reap appends a departure), plus an `XRANGE` of the changes
 * since the caller's cursor when something changed. A full read of the live set (O(N))
 * happens only on join or after a gap: the caller's cursor was trimmed from the stream, or
 * more changes than one page piled up. A member reaped while it was still alive (a long
 * pause) is re-added by its next heartbeat, which appends a join.
 *
 * The version: the set also holds the sentinel {@linkcode VERSION_MEMBER} (`~v`), scored minus
 * the encoded id of the stream's newest entry ({@linkcode encodeStreamId}); every script that
 * appends to the stream sets it in the same script. Its score is negative, so the reap's
 * range (from -inf) returns it first — the heartbeat reads it with no command of its own —
 * and the live range never does. When it names the caller's cursor, nothing came after the
 * cursor and the heartbeat answers without the `XRANGE`; absent or different (an older
 * version's script removed it or appended without it, see docs/scaling.md "Rolling upgrade"),
 * the heartbeat reads the stream as before.
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
 * The member set's sentinel: not an instance id (ids match `[\w.-]`, lib/config.ts), never
 * live (its score is negative). Its score is minus {@linkcode encodeStreamId} of the change
 * stream's newest entry, or it is absent when that is unknown.
 */
export const VERSION_MEMBER = "~v";

/**
 * The number the sentinel {@linkcode VERSION_MEMBER} holds (negated) for stream id
 * `<ms>-<seq>`: `ms * 1024 + seq`, exact in a double while `ms < 2^43` (year 2248) and
 * `seq < 1024`; null otherwise (then the sentinel is removed: "unknown").
 */
export function encodeStreamId(id: string): number | null {
  const m = /^(\d+)-(\d+)$/.exec(id);
  if (!m) return null;
  const ms = Number(m[1]), seq = Number(m[2]);
  if (ms > 2 ** 43 - 1 || seq > 1023) return null;
  return ms * 1024 + seq;
}

/**
 * Shared head of the scripts that write the change stream: {@linkcode encodeStreamId} in Lua
 * and `mark`, which records an id as the stream's newest entry in the sentinel (every XADD to
 * the stream is followed by a `mark` of the id it returned, in the same script).
 */
const VERSION = `
local V = '${VERSION_MEMBER}'
local function encode(id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  if not ms then return nil end
  ms = tonumber(ms)
  seq = tonumber(seq)
  if ms > 8796093022207 or seq > 1023 then return nil end
  return ms * 1024 + seq
end
local function mark(id)
  local e = encode(id)
  if e then
    redis.call('ZADD', KEYS[1], string.format('%.0f', -e), V)
  else
    redis.call('ZREM', KEYS[1], V)
  end
  return e
end
`;

/**
 * Shared tail of both scripts: the answer since cursor ARGV[c] over KEYS[1] (set) and KEYS[2]
 * (stream). Delta: `XRANGE log cursor + COUNT page+1` starts with the cursor's own entry
 * while it is still in the stream; when it is not (trimmed, or the stream was lost) or the
 * page is full, the answer is a full read. The stream is never empty once read, so a cursor
 * always names an entry.
 *
 * `known` is the sentinel's number as this script last read or wrote it (nil: absent or not
 * read). When it equals the cursor's, the cursor is the newest entry: the answer is an empty
 * delta without an XRANGE (the idle heartbeat). With `heal`, an answer that found the newest
 * entry while the sentinel was absent or stale sets it — unless that entry is a departure of
 * the sentinel itself, which only an older version's reap writes: while one runs it removes
 * the sentinel at every beat, and re-adding it would append a departure a second.
 */
const ANSWER = VERSION + `
local function heal_to(known, heal, id, fields)
  if heal and known ~= encode(id) and not (fields[1] == 'l' and fields[2] == V) then mark(id) end
end
local function full(now, dead, known, heal)
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  local cursor
  if #last == 0 then
    cursor = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'n', '')
    mark(cursor)
  else
    cursor = last[1][1]
    heal_to(known, heal, cursor, last[1][2])
  end
  local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - dead, '+inf')
  local out = {'full', cursor}
  for i = 1, #live do out[#out + 1] = live[i] end
  return out
end
local function answer(now, dead, cursor, page, known, heal)
  if cursor == '' then return full(now, dead, known, heal) end
  if known ~= nil and known == encode(cursor) then return {'delta', cursor} end
  local entries = redis.call('XRANGE', KEYS[2], cursor, '+', 'COUNT', page + 1)
  if #entries == 0 or entries[1][1] ~= cursor or #entries > page then
    return full(now, dead, known, heal)
  end
  local newest = entries[#entries]
  heal_to(known, heal, newest[1], newest[2])
  local out = {'delta', newest[1]}
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
// The reap's range starts at -inf, so it meets the sentinel (negative score) first: read
// WITHSCORES with one more than the limit, it is the version, not a member to reap. The idle
// beat is TIME, ZADD and this ZRANGEBYSCORE: the answer needs no XRANGE when the sentinel says
// the caller's cursor is the newest entry (a beat that wrote has a newer one, so it reads).
const HEARTBEAT = defineScript(
  ANSWER + `
local dead = tonumber(ARGV[2])
local wrote = 0
local last = nil
local added = redis.call('ZADD', KEYS[1], now, ARGV[5])
if added == 1 then
  last = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'j', ARGV[5])
  wrote = 1
end
if ARGV[6] ~= '' then redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[7]) end
local limit = tonumber(ARGV[8])
local known = nil
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - dead - 1, 'WITHSCORES', 'LIMIT', 0, limit + 1)
local reaped = 0
for i = 1, #gone, 2 do
  if gone[i] == V then
    known = -tonumber(gone[i + 1])
  elseif reaped < limit then
    redis.call('ZREM', KEYS[1], gone[i])
    last = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'l', gone[i])
    reaped = reaped + 1
    wrote = 1
  end
end
if last then known = mark(last) end
-- Not in the set before: first beat, reaped during a pause, or Redis lost its data (then a
-- new stream may even reuse the cursor's id): read everything.
local cursor = ARGV[3]
if added == 1 then cursor = '' end
local out = answer(now, dead, cursor, tonumber(ARGV[4]), known, true)
table.insert(out, 1, added)
table.insert(out, 1, wrote)
return out`,
);

// KEYS: members, members:log. ARGV: log max, dead-after ms, cursor, page.
// Always reads the stream (the sentinel is not read here: it is for the idle heartbeat).
const CHANGES = defineScript(
  ANSWER + `
local out = answer(now, tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), nil, false)
table.insert(out, 1, 0)
table.insert(out, 1, 0)
return out`,
);

// KEYS: members, members:log, member:<id>. ARGV: log max, id.
const REMOVE = defineScript(
  VERSION + `
if redis.call('ZREM', KEYS[1], ARGV[2]) == 1 then
  mark(redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'l', ARGV[2]))
end
redis.call('DEL', KEYS[3])
return 1`,
);

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
  // The sentinel is never a member: an older version's reap reports it as a departure (and
  // writes one to the stream), and a forged score could put it in the live range.
  if (mode === "full") out.members = rest.filter((id) => id !== VERSION_MEMBER);
  else {
    for (let i = 0; i < rest.length; i += 2) {
      if (rest[i + 1] === VERSION_MEMBER) continue;
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
      if (id === VERSION_MEMBER) throw new Error(`"${id}" is reserved, not an instance id`);
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
      return pairs(await LIVE(redis, [zset], [dead]) as string[]).filter((m) =>
        m.id !== VERSION_MEMBER
      );
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
