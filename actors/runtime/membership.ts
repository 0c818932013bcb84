/**
 * Cluster membership on Redis: heartbeats with the Redis server's own clock (so host
 * clock skew cannot make a live instance look dead), a live-member list from the same
 * round trip, and per-instance info (URL, roles, actors' states) for `GET /cluster`.
 *
 * Keys: a sorted set `members` scored by last heartbeat (ms), and `member:<id>` holding
 * the instance's JSON info with a TTL of the dead-after window.
 * @module
 */
import type { Redis } from "ioredis";
import { fromPromise } from "xstate";
import { type Logger, silentLogger } from "../../lib/log.ts";
import type { Keyspace } from "../../store/redis.ts";
import { clusterNodeMachine, type MemberView } from "../../machines/cluster_node.ts";
import type { ActorSpec } from "./types.ts";

/** What an instance publishes about itself. */
export interface MemberInfo {
  /** Instance id. */
  id: string;
  /** Base URL of its HTTP server. */
  url: string;
  /** Release version. */
  version: string;
  /** Start time (ms since epoch). */
  startedAt: number;
  /** Cluster-singleton roles it holds now, with their fencing tokens. */
  roles: { role: string; token: number }[];
  /** Its actors' current states. */
  actors: { id: string; state: unknown; status: string; summary: Record<string, unknown> }[];
}

/** A live member as /cluster shows it. */
export interface LiveMember extends MemberInfo {
  /** Milliseconds since its last heartbeat. */
  heartbeatAgeMs: number;
}

const HEARTBEAT_LUA = `
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
return out`;

const LIVE_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf', 'WITHSCORES')
local out = {}
for i = 1, #live, 2 do
  out[#out + 1] = live[i]
  out[#out + 1] = tostring(now - tonumber(live[i + 1]))
end
return out`;

/** Options of {@linkcode createMembership}. */
export interface MembershipOptions {
  /** Key namespace. */
  keyspace: Keyspace;
  /** This instance's id. */
  instanceId: string;
  /** Produces this instance's info at each heartbeat. */
  info: () => MemberInfo;
  /** Heartbeat period (ms). */
  heartbeatMs?: number;
  /** A member silent for longer than this is dead (ms). */
  deadAfterMs?: number;
  /** Logger. */
  log?: Logger;
}

/** Membership service: the `cluster` actor spec plus reads of the live member list. */
export interface Membership {
  /** Registry entry of the cluster-node actor. */
  spec: ActorSpec;
  /** Live members with their info. */
  members(): Promise<LiveMember[]>;
  /** Listens to joins and departures seen by this instance. */
  onChange(fn: (change: { joined: string[]; left: string[] }) => void): () => void;
  /** Removes this instance from the registry at once (on shutdown). */
  deregister(): Promise<void>;
}

function pairs(flat: string[]): MemberView[] {
  const out: MemberView[] = [];
  for (let i = 0; i < flat.length; i += 2) out.push({ id: flat[i], ageMs: Number(flat[i + 1]) });
  return out;
}

/** Creates the membership service on a Redis connection. */
export function createMembership(redis: Redis, options: MembershipOptions): Membership {
  const log = options.log ?? silentLogger;
  const ks = options.keyspace;
  const heartbeatMs = options.heartbeatMs ?? 500;
  const deadAfterMs = options.deadAfterMs ?? 2000;
  const zset = ks.key("members");
  const infoKey = (id: string) => ks.key("member", id);
  const listeners = new Set<(c: { joined: string[]; left: string[] }) => void>();

  async function heartbeat(): Promise<MemberView[]> {
    const info = JSON.stringify(options.info());
    const flat = await redis.eval(
      HEARTBEAT_LUA,
      2,
      zset,
      infoKey(options.instanceId),
      options.instanceId,
      info,
      String(deadAfterMs),
    ) as string[];
    return pairs(flat);
  }

  const logic = clusterNodeMachine.provide({
    actors: {
      heartbeat: fromPromise(() => heartbeat()),
      deregister: fromPromise(async () => {
        await redis.multi().zrem(zset, options.instanceId).del(infoKey(options.instanceId)).exec();
      }),
    },
    actions: {
      membershipChanged: (_, change: { joined: string[]; left: string[] }) => {
        if (!change.joined.length && !change.left.length) return;
        log.info("membership changed", change);
        for (const fn of [...listeners]) {
          try {
            fn(change);
          } catch (err) {
            log.error("membership listener failed", { error: String(err) });
          }
        }
      },
    },
  });

  return {
    spec: {
      id: "cluster",
      chart: "cluster_node",
      create: () => logic,
      input: () => ({ instanceId: options.instanceId, heartbeatMs }),
      summarize: (snapshot) => {
        const ctx = (snapshot as unknown as { context: { members: string[]; reason: string } })
          .context;
        return { members: ctx.members, reason: ctx.reason };
      },
    },
    async members() {
      const live = pairs(await redis.eval(LIVE_LUA, 1, zset, String(deadAfterMs)) as string[]);
      if (!live.length) return [];
      const infos = await redis.mget(...live.map((m) => infoKey(m.id)));
      const out: LiveMember[] = [];
      live.forEach((m, i) => {
        const raw = infos[i];
        if (!raw) return;
        try {
          out.push({ ...(JSON.parse(raw) as MemberInfo), heartbeatAgeMs: m.ageMs });
        } catch {
          log.warn("unreadable member info", { instance: m.id });
        }
      });
      return out.sort((a, b) => a.id.localeCompare(b.id));
    },
    onChange(fn) {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
    async deregister() {
      await redis.multi().zrem(zset, options.instanceId).del(infoKey(options.instanceId)).exec()
        .catch(() => {});
    },
  };
}
