/**
 * Cluster membership on Redis: heartbeats with the Redis server's own clock (so host
 * clock skew cannot make a live instance look dead), the changes to the live-member list
 * from the same round trip (a full list only on join or after a gap), and per-instance info
 * (URL, roles, actors' states) for `GET /cluster`, written only when it changed (and
 * refreshed every `infoTtlMs / 3`). An instance whose heartbeat appended a change (its own
 * join, or members it reaped) publishes a sealed notice on the bus channel `members`; every
 * instance reads the changes when the notice arrives, so a departure reaches the whole
 * cluster at once instead of one heartbeat later. A lost notice costs nothing but time: the
 * next heartbeat reads the same changes.
 * The keys and scripts are store/redis_membership.ts; this module drives them from the
 * cluster-node statechart.
 * @module
 */
import { type AnyActorRef, fromCallback, fromPromise } from "xstate";
import { type Logger, silentLogger } from "../../lib/log.ts";
import type { MessageAuth } from "../../lib/message_auth.ts";
import type { Keyspace, RedisClient } from "../../store/redis.ts";
import type { MessageBus } from "../../store/bus.ts";
import { applyDelta, createMemberStore, type MemberDelta } from "../../store/redis_membership.ts";
import {
  type ClusterNodeEvent,
  clusterNodeMachine,
  type MembershipAnswer,
  type MembershipQuery,
} from "../../machines/cluster_node.ts";
import type { ActorSpec, LiveMembers } from "./types.ts";

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
  /** Carries change notices (channel `members`); without it changes travel by heartbeat only. */
  bus?: MessageBus;
  /** Lifetime of a written info (ms); it is rewritten when it changes or a third of this passed. */
  infoTtlMs?: number;
  /** Clock (ms) of the info refresh. */
  now?: () => number;
}

/** The bus channel of membership change notices. */
export const MEMBERS_CHANNEL = "members";

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

/**
 * The live instances as the cluster chart (`cluster_node`, run as actor `cluster`) last learnt
 * them, itself included, read from its context — null before its first answer: who is alive
 * within the detection time, without a read. The set is built once per answer.
 */
export function liveMembersOf(ref: () => AnyActorRef | undefined): LiveMembers {
  let seen: { members: readonly string[]; set: ReadonlySet<string> } | null = null;
  return {
    live() {
      const ctx = ref()?.getSnapshot().context as
        | { members: readonly string[]; cursor: string | null }
        | undefined;
      if (!ctx || ctx.cursor === null) return null;
      if (seen?.members !== ctx.members) seen = { members: ctx.members, set: new Set(ctx.members) };
      return seen.set;
    },
  };
}

/** Creates the membership service on a Redis connection. */
export function createMembership(redis: RedisClient, options: MembershipOptions): Membership {
  const log = options.log ?? silentLogger;
  const heartbeatMs = options.heartbeatMs ?? 1000;
  const deadAfterMs = options.deadAfterMs ?? 2000;
  const infoTtlMs = options.infoTtlMs ?? Math.max(60_000, deadAfterMs * 3);
  const store = createMemberStore(redis, options.keyspace, {
    deadAfterMs,
    auth: options.auth,
    infoTtlMs,
  });
  const listeners = new Set<(c: { joined: string[]; left: string[] }) => void>();
  const bus = options.bus;
  /** The info last written and when: an unchanged info is not rewritten every heartbeat. */
  let written: { info: string; at: number } | null = null;

  function answer(query: MembershipQuery, delta: MemberDelta): MembershipAnswer {
    return {
      members: applyDelta(query.cursor === null ? [] : query.members, delta),
      cursor: delta.cursor,
    };
  }

  /** Tells every instance to read the changes this call appended (awaited: no stray op). */
  async function announce(delta: MemberDelta): Promise<void> {
    if (!delta.wrote || !bus) return;
    await bus.publish(MEMBERS_CHANNEL, delta.cursor).catch((err) =>
      log.debug("membership notice not sent", { error: String(err) })
    );
  }

  async function heartbeat(query: MembershipQuery): Promise<MembershipAnswer> {
    const info = JSON.stringify(options.info());
    const now = (options.now ?? Date.now)();
    const send = written === null || written.info !== info || now - written.at > infoTtlMs / 3;
    const delta = await store.heartbeat(options.instanceId, send ? info : null, query.cursor);
    if (send) written = { info, at: now };
    // Not in the set before this beat (reaped during a pause, or Redis lost its data): the
    // info may be gone too, so the next beat writes it again.
    if (delta.rejoined && !send) written = null;
    await announce(delta);
    return answer(query, delta);
  }

  const logic = clusterNodeMachine.provide({
    actors: {
      heartbeat: fromPromise(({ input }) => heartbeat(input)),
      readChanges: fromPromise(async ({ input }) =>
        answer(input, await store.changes(input.cursor))
      ),
      changeFeed: fromCallback<ClusterNodeEvent>(({ sendBack }) => {
        if (!bus) return () => {};
        let stopped = false;
        let off: (() => Promise<void>) | null = null;
        bus.subscribe(MEMBERS_CHANNEL, () => sendBack({ type: "CHANGED" })).then((o) => {
          if (stopped) o().catch(() => {});
          else off = o;
        }, (err) => log.warn("membership notices unavailable", { error: String(err) }));
        return () => {
          stopped = true;
          off?.().catch(() => {});
        };
      }),
      deregister: fromPromise(async () => {
        await store.remove(options.instanceId);
        await bus?.publish(MEMBERS_CHANNEL, "leave").catch(() => {});
      }),
    },
    actions: {
      membershipChanged: (_, p: { joined: string[]; left: string[] }) => {
        if (!p.joined.length && !p.left.length) return;
        const change = { joined: p.joined, left: p.left };
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
      try {
        await store.remove(options.instanceId);
        await bus?.publish(MEMBERS_CHANNEL, "leave");
      } catch { /* shutting down: the others reap it after the dead-after window */ }
    },
  };
}
