/**
 * In-process sync nodes for integration tests: each with its own Redis connections, bus,
 * transport, lease manager and cluster membership (the real heartbeat chart: whether a
 * peer is alive is membership's), the real statechart driving it, and a switch that drops
 * the node's inbound pub/sub messages (to simulate loss deterministically).
 * @module
 */
import type { RedisTarget } from "../support/redis_target.ts";
import { type AnyActorRef, createActor } from "xstate";
import { createLeaseManager, type LeaseManager } from "../../actors/runtime/leases.ts";
import {
  createMembership,
  liveMembersOf,
  type Membership,
} from "../../actors/runtime/membership.ts";
import { createRedisTransport } from "../../actors/runtime/transport.ts";
import { syncActorSpec, type SyncSettings } from "../../actors/sync/mod.ts";
import { type Heads, HEADS_CHANNEL } from "../../actors/sync/wire.ts";
import { createSyncNode, type SyncNode, type SyncNodeOptions } from "../../actors/sync/node.ts";
import { createLogger, type Logger, silentLogger } from "../../lib/log.ts";
import { createRedisBus, type MessageBus } from "../../store/bus.ts";
import { closeRedis, createKeyspace, createRedisClient } from "../../store/redis.ts";
import type { Sql } from "../../store/types.ts";
import { until as untilHolds } from "../support/instance.ts";
import { testAuth } from "../support/message_auth.ts";

/** One key for every node a test builds by hand (they share one cluster). */
const SYNC_TEST_AUTH = testAuth();

/** Which inbound messages a node loses. */
export interface Loss {
  /** Drop every inbound batch and announcement while true. */
  all: boolean;
  /** Drop this many next inbound batches. */
  nextBatches: number;
  /** Batches dropped so far. */
  dropped: number;
}

/** A running test node. */
export interface TestNode {
  /** Its name (instance id). */
  name: string;
  /** The node. */
  node: SyncNode;
  /** Loss switch. */
  loss: Loss;
  /** The statechart actor. */
  actor: AnyActorRef;
  /** Its cluster membership. */
  membership: Membership;
  /**
   * Freezes the node: no statechart (no announcements), no answers to requests, no
   * heartbeats (the others' membership drops it after the dead-after window).
   */
  freeze(): void;
  /** Stops everything it started. */
  close(): Promise<void>;
}

/** A bus that drops inbound sync messages as `loss` says. */
function lossyBus(bus: MessageBus, loss: Loss): MessageBus {
  return {
    ...bus,
    subscribe: (channel, handler) =>
      bus.subscribe(channel, (message, ch) => {
        if (ch.startsWith("sync.") && loss.all) return;
        if (ch === "sync.batches" && loss.nextBatches > 0) {
          loss.nextBatches--;
          loss.dropped++;
          return;
        }
        handler(message, ch);
      }),
  };
}

/** Polls until `check` holds; rejects after `ms` naming `what` (the suite's one `until`). */
export async function until(
  check: () => boolean | Promise<boolean>,
  what: string,
  ms = 10_000,
): Promise<void> {
  await untilHolds(check, { what, ms, everyMs: 20 });
}

/** Options of {@linkcode startTestNode}. */
export interface TestNodeOptions {
  /** Redis URL (single Redis), or `redis`. */
  redisUrl?: string;
  /** The Redis deployment (single or cluster); takes precedence over `redisUrl`. */
  redis?: RedisTarget;
  /** Key prefix shared by the nodes of one test. */
  prefix: string;
  /** PostgreSQL. */
  sql: Sql;
  /** Statechart settings. */
  settings?: Partial<SyncSettings>;
  /** Node options. */
  node?: Partial<SyncNodeOptions>;
  /** Campaign for the snapshot role (default true). */
  leases?: boolean;
  /** Log warnings to stderr (debugging). */
  verbose?: boolean;
}

/** Heartbeat period and dead-after window of the test nodes' membership (ms). */
export const TEST_HEARTBEAT_MS = 200;
export const TEST_DEAD_AFTER_MS = 800;

/** Every announcement on the heads channel, opened and parsed, with when it arrived. */
export interface HeadsListener {
  /** Announcements heard so far, oldest first. */
  heard: { at: number; heads: Heads }[];
  /** Stops listening. */
  close(): Promise<void>;
}

/** Listens to the heads channel of the nodes under `prefix` (a connection of its own). */
export async function listenHeads(
  options: { redis: RedisTarget; prefix: string },
): Promise<HeadsListener> {
  const client = createRedisClient(options.redis.settings(options.prefix), {
    name: "heads-listener",
    overrides: { retryStrategy: () => 50 },
  });
  await client.connect();
  const bus = createRedisBus(client, {
    keyspace: createKeyspace(options.prefix),
    auth: SYNC_TEST_AUTH,
  });
  const heard: HeadsListener["heard"] = [];
  const off = await bus.subscribe(HEADS_CHANNEL, (raw) => {
    heard.push({ at: Date.now(), heads: JSON.parse(raw) as Heads });
  });
  return {
    heard,
    async close() {
      await off();
      await bus.close();
      await closeRedis(client);
    },
  };
}

/** Starts a node and waits until it caught up. */
export async function startTestNode(name: string, options: TestNodeOptions): Promise<TestNode> {
  const log: Logger = options.verbose ? createLogger(name, { level: "debug" }) : silentLogger;
  const settings = options.redis ? options.redis.settings(options.prefix) : {
    url: options.redisUrl ?? null,
    sentinels: [],
    sentinelMaster: "mymaster",
    sentinelPassword: null,
    keyPrefix: options.prefix,
  };
  const keyspace = createKeyspace(options.prefix);
  const client = createRedisClient(settings, {
    name,
    overrides: { retryStrategy: () => 50 },
  });
  await client.connect();
  const rawBus = createRedisBus(client, { keyspace, auth: SYNC_TEST_AUTH });
  const loss: Loss = { all: false, nextBatches: 0, dropped: 0 };
  const local: { spec?: ReturnType<typeof syncActorSpec>; actor?: AnyActorRef } = {};
  const transport = createRedisTransport(client, {
    keyspace,
    auth: SYNC_TEST_AUTH,
    bus: rawBus,
    instanceId: name,
    actors: { spec: (id) => id === "sync" ? local.spec : undefined, ref: () => local.actor },
    requestTimeoutMs: 1000,
  });
  await transport.start();
  const leases: LeaseManager | null = options.leases === false
    ? null
    : createLeaseManager({ redis: client, keyspace, instanceId: name });
  const membership = createMembership(client, {
    keyspace,
    instanceId: name,
    info: () => ({ id: name, url: "", version: "test", startedAt: 0, roles: [], actors: [] }),
    heartbeatMs: TEST_HEARTBEAT_MS,
    deadAfterMs: TEST_DEAD_AFTER_MS,
    auth: SYNC_TEST_AUTH,
    bus: rawBus,
    log,
  });
  const member = createActor(membership.spec.create(undefined as never), {
    input: membership.spec.input!(undefined as never),
  });
  member.start();
  const members = liveMembersOf(() => member);
  await until(() => members.live()?.has(name) ?? false, `${name} to join the cluster`);
  const node = createSyncNode({
    instanceId: name,
    sql: options.sql,
    bus: lossyBus(rawBus, loss),
    transport,
    leases,
    leaseTtlMs: 1000,
    log,
    giveUpMs: 2000,
    peerTimeoutMs: 500,
    members,
    originLiveMs: 3 * (options.settings?.keepAliveMs ?? 1000) + 200,
    ...options.node,
  });
  local.spec = syncActorSpec(node, {
    headsMs: 200,
    keepAliveMs: 1000,
    snapshotMs: 60_000,
    repairRetryMs: 50,
    ...options.settings,
  });
  const actor = createActor(local.spec.create(undefined as never), {
    input: local.spec.input!(undefined as never),
  });
  local.actor = actor;
  actor.start();
  await until(() => node.stats().caughtUp, `${name} to catch up`);
  return {
    name,
    node,
    loss,
    actor,
    membership,
    freeze() {
      actor.stop();
      member.stop();
      local.spec = undefined;
    },
    async close() {
      actor.stop();
      member.stop();
      await membership.deregister();
      await node.close();
      await leases?.close();
      await transport.close();
      await rawBus.close();
      await closeRedis(client);
    },
  };
}
