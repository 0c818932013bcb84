/**
 * The one Redis client module: connection (direct, through Sentinel, or to a Redis
 * Cluster), the key namespace helper, Lua scripts, and a health probe.
 *
 * Every key and channel the runtime touches is built by {@linkcode createKeyspace}, so
 * one prefix (RS_KEY_PREFIX) isolates a deployment and nothing else invents key names.
 * Each Redis protocol (its key layout, its scripts, typed calls) has its own module beside
 * this one: store/redis_leases.ts, store/redis_membership.ts, store/redis_inbox.ts,
 * store/redis_sessions.ts, store/redis_failover.ts (and store/sessions.ts its cache).
 * @module
 */
import { Cluster, type ClusterOptions, Redis, type RedisOptions } from "ioredis";
import { RuntimeError } from "../lib/errors.ts";
import { type Logger, silentLogger } from "../lib/log.ts";
import type { EventEmitter as NodeEventEmitter } from "node:events";

/** Redis connection settings (the `redis` part of the runtime config). */
export interface RedisSettings {
  /** redis:// URL; with sentinels it only carries the password / db of the data nodes. */
  url: string | null;
  /** Sentinel endpoints; when non-empty the master is discovered through them. */
  sentinels: { host: string; port: number }[];
  /** Name of the monitored master. */
  sentinelMaster: string;
  /** Password of the Sentinels themselves. */
  sentinelPassword: string | null;
  /**
   * Seed nodes of a Redis Cluster (REDIS_CLUSTER_NODES); when non-empty the client is an
   * ioredis `Cluster` and `url` only carries the password / TLS scheme of the nodes.
   */
  clusterNodes?: { host: string; port: number }[];
  /** Replicas an addressed message must reach before its send succeeds (REDIS_WAIT_REPLICAS). */
  waitReplicas?: number;
  /** How long a send waits for those replicas (REDIS_WAIT_TIMEOUT_MS). */
  waitTimeoutMs?: number;
  /** Namespace prefix of every key and channel. */
  keyPrefix: string;
  /**
   * CA certificate file (PEM) that a `rediss://` server's certificate (and, with Sentinels,
   * theirs) must chain to; null or absent: the system's roots.
   */
  caFile?: string | null;
}

/**
 * TLS options for a `rediss://` URL: the server's certificate verified against `caFile`
 * (or the system's roots) and its name against the host; null for `redis://`.
 */
function tlsOptions(settings: RedisSettings): { ca?: string; rejectUnauthorized: true } | null {
  const secure = settings.url !== null && new URL(settings.url).protocol === "rediss:";
  if (!secure) return null;
  if (!settings.caFile) return { rejectUnauthorized: true };
  try {
    return { ca: Deno.readTextFileSync(settings.caFile), rejectUnauthorized: true };
  } catch (err) {
    throw new RuntimeError(
      "CONFIG_INVALID",
      `Cannot read the Redis CA file ${settings.caFile} (REDIS_CA_FILE): ${
        err instanceof Error ? err.message : String(err)
      }`,
      { cause: err },
    );
  }
}

/** Builds namespaced Redis key and channel names. */
export interface Keyspace {
  /** The prefix every name starts with. */
  readonly prefix: string;
  /** `prefix + parts.join(":")`; parts must be non-empty and free of control characters. */
  key(...parts: (string | number)[]): string;
  /** A pub/sub channel name (same rules, under `prefix + "ch:"`). */
  channel(...parts: (string | number)[]): string;
}

/** Creates the key/channel namer for a prefix such as `rs:`. */
export function createKeyspace(prefix: string): Keyspace {
  function join(parts: (string | number)[]): string {
    if (parts.length === 0) throw new TypeError("A Redis key needs at least one part");
    return parts.map((p) => {
      const s = String(p);
      // deno-lint-ignore no-control-regex
      if (s === "" || /[\s\x00-\x1f]/.test(s)) {
        throw new TypeError(`Invalid Redis key part: ${JSON.stringify(s)}`);
      }
      return s;
    }).join(":");
  }
  return {
    prefix,
    key: (...parts) => prefix + join(parts),
    channel: (...parts) => prefix + "ch:" + join(parts),
  };
}

/**
 * A command connection: one server (direct or Sentinel-managed) or a Redis Cluster. Every
 * store module takes this type; a key a Lua script or MULTI touches together shares one hash
 * tag (`{...}`), so each such call stays within one slot of a cluster.
 */
export type RedisClient = Redis | Cluster;

/** True when the settings name a Redis server (URL, Sentinels or cluster nodes). */
export function redisConfigured(settings: RedisSettings): boolean {
  return settings.url !== null || settings.sentinels.length > 0 || isClusterMode(settings);
}

/** True when the settings name a Redis Cluster (REDIS_CLUSTER_NODES). */
export function isClusterMode(settings: RedisSettings): boolean {
  return (settings.clusterNodes?.length ?? 0) > 0;
}

/** True when `client` is a Redis Cluster client. */
export function isCluster(client: RedisClient): client is Cluster {
  return client instanceof Cluster;
}

/** Describes the target for logs, password masked. */
export function describeRedis(settings: RedisSettings): string {
  if (isClusterMode(settings)) {
    return `cluster via ${settings.clusterNodes!.map((s) => `${s.host}:${s.port}`).join(",")}`;
  }
  if (settings.sentinels.length > 0) {
    return `sentinel master "${settings.sentinelMaster}" via ${
      settings.sentinels.map((s) => `${s.host}:${s.port}`).join(",")
    }`;
  }
  if (!settings.url) return "none";
  const u = new URL(settings.url);
  if (u.password) u.password = "***";
  return u.toString();
}

/** Options of {@linkcode createRedisClient}. */
export interface RedisClientOptions {
  /** Connection name shown in CLIENT LIST. */
  name?: string;
  /** Where connection changes are logged. */
  log?: Logger;
  /** Extra ioredis options (tests shorten retry timings); per node in a cluster. */
  overrides?: Partial<RedisOptions>;
  /** Extra ioredis `Cluster` options (cluster mode only). */
  clusterOverrides?: Partial<ClusterOptions>;
}

/**
 * Opens an ioredis client for the settings (a `Cluster` when cluster nodes are set).
 * Connects lazily, retries forever with capped backoff (a Redis outage must not kill the
 * process) and fails queued commands fast while disconnected so callers get
 * REDIS_UNAVAILABLE instead of hanging.
 */
export function createRedisClient(
  settings: RedisSettings,
  options: RedisClientOptions = {},
): RedisClient {
  if (!redisConfigured(settings)) {
    throw new RuntimeError("REDIS_UNAVAILABLE", "Redis is not configured: set REDIS_URL");
  }
  const log = options.log ?? silentLogger;
  const u = settings.url ? new URL(settings.url) : null;
  const tls = tlsOptions(settings);
  const common: RedisOptions = {
    connectionName: options.name ?? "rootstream",
    lazyConnect: true,
    maxRetriesPerRequest: 2,
    enableOfflineQueue: true,
    connectTimeout: 3000,
    retryStrategy: (times) => Math.min(50 * 2 ** Math.min(times, 6), 2000),
    password: u?.password ? decodeURIComponent(u.password) : undefined,
    username: u?.username ? decodeURIComponent(u.username) : undefined,
    db: u && u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0,
    ...options.overrides,
  };
  if (isClusterMode(settings)) {
    return watch(createClusterClient(settings, common, tls, options.clusterOverrides), log);
  }
  const client = settings.sentinels.length > 0
    ? new Redis({
      ...common,
      sentinels: settings.sentinels,
      name: settings.sentinelMaster,
      sentinelPassword: settings.sentinelPassword ?? undefined,
      // rediss:// with Sentinels: the data nodes and the Sentinels both speak TLS.
      ...(tls ? { tls, enableTLSForSentinelMode: true, sentinelTLS: tls } : {}),
      sentinelRetryStrategy: (times) => Math.min(100 * times, 2000),
      // Off: ioredis's detector can leave a connection closed for good when +switch-master
      // arrives mid-reconnect (seen in the Sentinel failover test); the reconnect after the
      // old master drops the connection re-resolves the master through the Sentinels.
      failoverDetector: false,
    })
    : new Redis({
      ...common,
      host: u!.hostname,
      port: u!.port ? Number(u!.port) : 6379,
      tls: tls ?? undefined,
    });
  return watch(client, log);
}

/** Logs reconnects, errors and master switches of a client. */
function watch<C extends RedisClient>(client: C, log: Logger): C {
  const name = isCluster(client)
    ? client.options.redisOptions?.connectionName
    : client.options.connectionName;
  let wasReady = false;
  client.on("ready", () => {
    if (wasReady) log.info("redis reconnected", { name });
    wasReady = true;
  });
  client.on("error", (err: Error) => {
    log.debug("redis connection error", { name, error: err.message });
  });
  client.on("+switch-master", () => log.warn("redis master switched"));
  client.on("-node", (node: Redis) => {
    log.debug("redis cluster node removed", {
      name,
      node: `${node.options.host}:${node.options.port}`,
    });
  });
  return client;
}

/**
 * A Redis Cluster client: commands go to the master of their key's slot, MOVED / ASK
 * replies are followed by ioredis (which re-reads the slot map then, and when a node is
 * lost), and the map is also re-read every few seconds (`keepSlotsFresh`).
 * Sharded pub/sub is enabled on subscriber connections only ({@linkcode duplicateRedis}).
 */
function createClusterClient(
  settings: RedisSettings,
  common: RedisOptions,
  tls: { ca?: string; rejectUnauthorized: true } | null,
  overrides: Partial<ClusterOptions> | undefined,
): Cluster {
  const { db: _db, ...nodeOptions } = common;
  const refreshMs = overrides?.slotsRefreshInterval ?? SLOTS_REFRESH_MS;
  const cluster = new Cluster(settings.clusterNodes!, {
    lazyConnect: true,
    enableOfflineQueue: true,
    maxRedirections: 16,
    retryDelayOnFailover: 200,
    retryDelayOnClusterDown: 200,
    retryDelayOnTryAgain: 200,
    slotsRefreshTimeout: 2000,
    clusterRetryStrategy: (times) => Math.min(100 * 2 ** Math.min(times, 5), 2000),
    // A connection to a dead node never closes by itself after end(): destroy it soon
    // (ioredis waits 2 s by default, keeping a timer per dead connection that long).
    redisOptions: { ...nodeOptions, disconnectTimeout: 200, tls: tls ?? undefined },
    ...overrides,
    // Ours instead (keepSlotsFresh): ioredis's own periodic refresh schedules its next round
    // when a refresh in flight at quit() completes, so a closed client kept refreshing.
    slotsRefreshInterval: 0,
  });
  keepSlotsFresh(cluster, refreshMs);
  return cluster;
}

/**
 * How often a cluster client re-reads the slot map when nothing else made it (a MOVED, a
 * node lost). Each read is a connection of its own (CLIENT SETNAME, CLUSTER SLOTS), so it is
 * sparse for command connections; the sharded subscriber, which learns of a failover only
 * this way, reads more often.
 */
const SLOTS_REFRESH_MS = 5000;
/** The sharded subscriber's slot-map period (a failover's subscriptions move within it). */
const SUBSCRIBER_SLOTS_REFRESH_MS = 2000;

/** The slot-map refresh period of each cluster client (duplicates inherit it). */
const refreshPeriods = new WeakMap<Cluster, number>();

/**
 * Re-reads `cluster`'s slot map every `everyMs` while it is ready (0: never), so a failover
 * is followed before a command meets it; stopped when the connection closes or ends.
 */
function keepSlotsFresh(cluster: Cluster, everyMs: number): void {
  refreshPeriods.set(cluster, everyMs);
  if (everyMs <= 0) return;
  let timer: number | undefined;
  const stop = () => {
    clearInterval(timer);
    timer = undefined;
  };
  cluster.on("ready", () => {
    if (timer !== undefined) return;
    timer = setInterval(() => {
      if (cluster.status === "ready") cluster.refreshSlotsCache(() => {});
    }, everyMs);
  });
  cluster.on("close", stop);
  cluster.on("end", stop);
}

/**
 * A new connection to the same Redis (or cluster) as `client`, e.g. for blocking reads or
 * a subscriber; `name` is its CLIENT LIST name.
 */
export function duplicateRedis(
  client: RedisClient,
  options: {
    name: string;
    autoResubscribe?: boolean;
    enableAutoPipelining?: boolean;
    /**
     * Cluster only: SSUBSCRIBE on this connection, through ioredis's subscriber group (one
     * subscriber per master; after the slot map changed, each channel is subscribed again on
     * the master now owning its slot, then `subscribersReady` is emitted).
     */
    sharded?: boolean;
  },
): RedisClient {
  if (isCluster(client)) {
    if (options.sharded) {
      const sub = client.duplicate([], {
        shardedSubscribers: true,
        redisOptions: { ...client.options.redisOptions, connectionName: options.name },
      });
      trackShardedRetries(sub);
      keepSlotsFresh(
        sub,
        Math.min(refreshPeriods.get(client) ?? SLOTS_REFRESH_MS, SUBSCRIBER_SLOTS_REFRESH_MS) ||
          SUBSCRIBER_SLOTS_REFRESH_MS,
      );
      return sub;
    }
    const dup = client.duplicate([], {
      ...(options.enableAutoPipelining !== undefined
        ? { enableAutoPipelining: options.enableAutoPipelining }
        : {}),
      redisOptions: {
        ...client.options.redisOptions,
        connectionName: options.name,
        ...(options.autoResubscribe !== undefined
          ? { autoResubscribe: options.autoResubscribe }
          : {}),
      },
    });
    keepSlotsFresh(dup, refreshPeriods.get(client) ?? SLOTS_REFRESH_MS);
    return dup;
  }
  return client.duplicate({
    connectionName: options.name,
    ...(options.autoResubscribe !== undefined ? { autoResubscribe: options.autoResubscribe } : {}),
    ...(options.enableAutoPipelining !== undefined
      ? { enableAutoPipelining: options.enableAutoPipelining }
      : {}),
  });
}

/**
 * ioredis 5.11 retries a sharded subscriber that could not connect (its master just died)
 * after a backoff of up to 2 s, on a timer nobody clears: it outlives close() (a leaked timer
 * in tests, a stray slot refresh in production). This puts the same retry on timers that
 * are cleared once the client ends. Relies on the private `subscriberGroupEmitter`; on an
 * ioredis without it nothing changes.
 */
function trackShardedRetries(cluster: Cluster): void {
  const group = (cluster as unknown as { subscriberGroupEmitter?: NodeEventEmitter })
    .subscriberGroupEmitter;
  if (!group) return;
  group.removeAllListeners("subscriberConnectFailed");
  const timers = new Set<number>();
  group.on("subscriberConnectFailed", (failure: { delay: number; error: Error }) => {
    cluster.emit("error", failure.error);
    const timer = setTimeout(() => {
      timers.delete(timer);
      if (cluster.status !== "ready") return;
      cluster.refreshSlotsCache((err) => {
        if (err?.name === "ClusterAllFailedError") cluster.disconnect(true);
      });
    }, failure.delay);
    timers.add(timer);
  });
  cluster.on("end", () => {
    for (const timer of timers) clearTimeout(timer);
    timers.clear();
  });
}

/** Sends PING within `timeoutMs`; never throws. */
export async function pingRedis(
  client: RedisClient,
  timeoutMs = 1000,
): Promise<{ ok: boolean; latencyMs: number; error?: string }> {
  const started = performance.now();
  let timer: number | undefined;
  try {
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    });
    const ping = client.ping();
    ping.catch(() => {});
    const answer = await Promise.race([ping, timeout]);
    if (answer !== "PONG") throw new Error(`unexpected answer ${answer}`);
    return { ok: true, latencyMs: Math.round((performance.now() - started) * 10) / 10 };
  } catch (err) {
    return {
      ok: false,
      latencyMs: Math.round(performance.now() - started),
      error: err instanceof Error ? err.message : String(err),
    };
  } finally {
    clearTimeout(timer);
  }
}

/** Closes a client: QUIT when connected, disconnect otherwise; never throws. */
export async function closeRedis(client: RedisClient): Promise<void> {
  if (client.status === "ready") {
    await client.quit().catch(() => client.disconnect());
  } else {
    client.disconnect();
  }
}

/** A Lua script: run on a connection with its keys and arguments. */
export type RedisScript = (
  redis: RedisClient,
  keys: readonly string[],
  args: readonly (string | number)[],
) => Promise<unknown>;

async function sha1(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-1", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * A Lua script sent by its SHA (EVALSHA), and in full (EVAL) only when the server does not
 * know it yet or lost its script cache (a restart, SCRIPT FLUSH).
 */
export function defineScript(source: string): RedisScript {
  let sha: Promise<string> | null = null;
  return async (redis, keys, args) => {
    sha ??= sha1(source);
    try {
      return await redis.evalsha(await sha, keys.length, ...keys, ...args);
    } catch (err) {
      if (!(err instanceof Error ? err.message : String(err)).startsWith("NOSCRIPT")) throw err;
      return await redis.eval(source, keys.length, ...keys, ...args);
    }
  };
}
