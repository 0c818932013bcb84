/**
 * The Redis deployment a suite runs against, so one suite covers single Redis and Redis
 * Cluster alike: the instance environment (REDIS_URL or REDIS_CLUSTER_NODES) and the
 * settings an in-process client connects with.
 * @module
 */
import type { RedisSettings } from "../../store/redis.ts";
import {
  type RedisClusterServer,
  type RedisServer,
  startRedis,
  startRedisCluster,
} from "../harness/mod.ts";

/** A throw-away Redis deployment. */
export interface RedisTarget extends AsyncDisposable {
  /** `single` (one redis-server) or `cluster` (3 masters + 3 replicas). */
  readonly kind: "single" | "cluster";
  /** Environment naming it for a runtime instance. */
  readonly env: Record<string, string>;
  /** The server (single) or null. */
  readonly server: RedisServer | null;
  /** The cluster or null. */
  readonly cluster: RedisClusterServer | null;
  /** Client settings with key prefix `prefix`. */
  settings(prefix: string): RedisSettings;
}

/** One throw-away redis-server. */
export async function singleRedisTarget(): Promise<RedisTarget> {
  const server = await startRedis();
  return {
    kind: "single",
    env: { REDIS_URL: server.url },
    server,
    cluster: null,
    settings: (prefix) => ({
      url: server.url,
      sentinels: [],
      sentinelMaster: "mymaster",
      sentinelPassword: null,
      keyPrefix: prefix,
    }),
    [Symbol.asyncDispose]: () => server[Symbol.asyncDispose](),
  };
}

/** A throw-away Redis Cluster of 3 masters + 3 replicas. */
export async function redisClusterTarget(): Promise<RedisTarget> {
  const cluster = await startRedisCluster();
  return {
    kind: "cluster",
    // Every addressed message is on a replica before its send succeeds, so a master killed
    // at any moment loses no accepted message.
    // Generous wait: on a busy test machine a replica may answer late; a send still fails
    // (visibly) when no replica answers at all.
    env: {
      REDIS_CLUSTER_NODES: cluster.seeds,
      REDIS_WAIT_REPLICAS: "1",
      REDIS_WAIT_TIMEOUT_MS: "5000",
    },
    server: null,
    cluster,
    settings: (prefix) => ({
      url: null,
      sentinels: [],
      sentinelMaster: "mymaster",
      sentinelPassword: null,
      clusterNodes: cluster.startupNodes,
      waitReplicas: 1,
      waitTimeoutMs: 5000,
      keyPrefix: prefix,
    }),
    [Symbol.asyncDispose]: () => cluster[Symbol.asyncDispose](),
  };
}
