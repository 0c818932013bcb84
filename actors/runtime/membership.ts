/**
 * Cluster membership on Redis: heartbeats with the Redis server's own clock (so host
 * clock skew cannot make a live instance look dead), a live-member list from the same
 * round trip, and per-instance info (URL, roles, actors' states) for `GET /cluster`.
 * The keys and scripts are store/redis_membership.ts; this module drives them from the
 * cluster-node statechart.
 * @module
 */
import { fromPromise } from "xstate";
import { type Logger, silentLogger } from "../../lib/log.ts";
import type { MessageAuth } from "../../lib/message_auth.ts";
import type { Keyspace, RedisClient } from "../../store/redis.ts";
import { createMemberStore } from "../../store/redis_membership.ts";
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
  /** Seals this instance's info and opens the others' (store/redis_membership.ts). */
  auth: MessageAuth;
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

/** Creates the membership service on a Redis connection. */
export function createMembership(redis: RedisClient, options: MembershipOptions): Membership {
  const log = options.log ?? silentLogger;
  const heartbeatMs = options.heartbeatMs ?? 500;
  const deadAfterMs = options.deadAfterMs ?? 2000;
  const store = createMemberStore(redis, options.keyspace, { deadAfterMs, auth: options.auth });
  const listeners = new Set<(c: { joined: string[]; left: string[] }) => void>();

  function heartbeat(): Promise<MemberView[]> {
    return store.heartbeat(options.instanceId, JSON.stringify(options.info()));
  }

  const logic = clusterNodeMachine.provide({
    actors: {
      heartbeat: fromPromise(() => heartbeat()),
      deregister: fromPromise(() => store.remove(options.instanceId)),
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
      const live = await store.live();
      if (!live.length) return [];
      const infos = await store.infos(live.map((m) => m.id));
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
      await store.remove(options.instanceId).catch(() => {});
    },
  };
}
