/**
 * Starts one runtime instance from a validated config: database (server or embedded),
 * migrations, Redis (or the in-process bus), the concerns (concerns/mod.ts) and the HTTP
 * server with their routes; and stops it in reverse.
 * @module
 */
import type { OpenAPIHono } from "@hono/zod-openapi";
import {
  type Concern,
  concernApi,
  type ConcernFactory,
  createConcerns,
  createHttpApp,
  startupDatabase,
} from "./concerns/mod.ts";
import type { Config } from "./concerns/config.ts";
import type { HealthReport } from "./actors/runtime/health.ts";
import { createInspector, type Inspector } from "./actors/runtime/inspector.ts";
import { createHistoryRecorder, type ReceivedMessage } from "./actors/runtime/history.ts";
import { createHistoryWriter } from "./store/redis_history.ts";
import {
  createMembership,
  liveMembersOf,
  type MemberInfo,
  type Membership,
} from "./actors/runtime/membership.ts";
import { startSupervisor, type Supervisor } from "./actors/runtime/supervisor.ts";
import {
  createLeaseManager,
  type LeaseCampaign,
  type LeaseManager,
} from "./actors/runtime/leases.ts";
import { createLocalTransport, createRedisTransport } from "./actors/runtime/transport.ts";
import type { ActorSpec, RuntimeServices, Transport } from "./actors/runtime/types.ts";
import { redactUrl } from "./lib/config.ts";
import { type Logger, silentLogger } from "./lib/log.ts";
import { createMessageAuth } from "./lib/message_auth.ts";
import { loadSecretKey } from "./lib/secret_key.ts";
import { createLocalBus, createRedisBus, type MessageBus } from "./store/bus.ts";
import { type Database, openDatabase } from "./store/database.ts";
import { migrate, type MigrationReport } from "./store/migrations.ts";
import { maxRecordedEpoch } from "./store/replication.ts";
import {
  closeRedis,
  createKeyspace,
  createRedisClient,
  describeRedis,
  type Keyspace,
  type RedisClient,
  redisConfigured,
} from "./store/redis.ts";

/** The release version reported by /health. */
export const VERSION = "0.1.0";

/** Features that need a real PostgreSQL server. */
const NEEDS_SERVER_DB = {
  replication: "needs a PostgreSQL server with streaming replicas (set DATABASE_URL)",
  failover: "needs a PostgreSQL server with streaming replicas (set DATABASE_URL)",
  physical_backups: "pg_basebackup and WAL archiving need a PostgreSQL server (set DATABASE_URL)",
};
/** Features that need Redis. */
const NEEDS_REDIS = {
  cluster: "membership, cross-instance messages and leases need Redis (set REDIS_URL)",
};

/** A running instance. */
export interface Runtime {
  /** The validated configuration it runs with. */
  readonly config: Config;
  /** Base URL of the HTTP server, e.g. http://127.0.0.1:8080. */
  readonly url: string;
  /** The database pool. */
  readonly db: Database;
  /** The Redis command connection, or null in single-instance mode. */
  readonly redis: RedisClient | null;
  /** The message bus (Redis pub/sub or in-process). */
  readonly bus: MessageBus;
  /** Namespaced Redis key builder. */
  readonly keyspace: Keyspace;
  /** The secret-at-rest key. */
  readonly secretKey: Uint8Array;
  /** The HTTP app (tests call `app.request()`). */
  readonly app: OpenAPIHono;
  /** Migrations applied at start-up. */
  readonly migrations: MigrationReport;
  /** The root supervisor and its children. */
  readonly supervisor: Supervisor;
  /** Messaging between instances. */
  readonly transport: Transport;
  /** Live view of every actor. */
  readonly inspector: Inspector;
  /** Cluster membership, or null without Redis. */
  readonly membership: Membership | null;
  /** Leases of cluster-singleton roles, or null without Redis. */
  readonly leases: LeaseManager | null;
  /** This instance's campaign for the cluster coordinator role, or null without Redis. */
  readonly coordinator: LeaseCampaign | null;
  /** The running concerns by name (`core` and concerns/mod.ts), each with its typed API. */
  readonly concerns: Readonly<Record<string, Concern>>;
  /** Runs the live health checks. */
  health(): Promise<HealthReport>;
  /** Graceful stop: HTTP first, then the bus, Redis and the database. Idempotent. */
  stop(): Promise<void>;
}

/** Options of {@linkcode startRuntime}. */
export interface StartOptions {
  /** Root logger. */
  log?: Logger;
  /** Start the HTTP server (default true); tests may use `app.request()` only. */
  serve?: boolean;
  /** Extra registry entries, started after the built-in ones (tests, embedders). */
  actors?: ActorSpec[];
  /** Concerns to run instead of the default set of concerns/mod.ts (tests, embedders). */
  concerns?: Record<string, ConcernFactory>;
  /**
   * The clock (ms) the concerns run on (login deadlines, code and session expiry, rate-limit
   * windows); default `Date.now`. Tests move it forward instead of sleeping.
   */
  now?: () => number;
}

/** Starts an instance; throws a RuntimeError (and leaves nothing running) if it can't. */
export async function startRuntime(config: Config, options: StartOptions = {}): Promise<Runtime> {
  const log = options.log ?? silentLogger;
  const startedAt = performance.now();
  const unavailable: Record<string, string> = {};
  const redisOn = redisConfigured(config.redis);
  if (config.database.url) {
    log.info(`mode: PostgreSQL server ${redactUrl(config.database.url)}`);
  } else {
    log.info(
      `mode: embedded PostgreSQL (PGlite) in ${config.dataDir}/pgdata; ` +
        `unavailable in this mode: replication, failover, physical backups`,
    );
    Object.assign(unavailable, NEEDS_SERVER_DB);
  }
  if (redisOn) {
    log.info(`mode: RedisClient ${describeRedis(config.redis)}`);
  } else {
    log.info(
      "mode: in-process message bus (no REDIS_URL): single instance; " +
        "unavailable in this mode: cluster membership, cross-instance messages, leases",
    );
    Object.assign(unavailable, NEEDS_REDIS);
  }

  const cleanups: (() => Promise<void>)[] = [];
  async function cleanup(): Promise<void> {
    for (const fn of cleanups.reverse()) {
      // One stuck step (a peer that never answers, a socket that never drains) must not
      // keep the rest of the instance from stopping.
      let timer: number | undefined;
      const limit = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), (config.shutdownTimeoutS + 1) * 1000);
      });
      const outcome = await Promise.race([fn().catch(() => {}), limit]);
      clearTimeout(timer);
      if (outcome === "timeout") log.warn("a shutdown step did not finish in time; continuing");
    }
    cleanups.length = 0;
  }
  try {
    const secret = await loadSecretKey(config.secretKey, { dataDir: config.dataDir });
    if (secret.source === "generated") {
      log.warn(
        `generated a new secret key in ${secret.path}; instances of one cluster must share ` +
          "one key: set RS_SECRET_KEY on each",
      );
    } else if (secret.source === "file" && config.database.url) {
      log.warn(`using the secret key from ${secret.path}; set RS_SECRET_KEY on every instance`);
    }
    // Every record this instance writes to Redis is sealed with keys derived from the secret
    // key, and every one it reads is opened before it is believed (docs/security.md).
    const messageAuth = createMessageAuth(secret.key, {
      previous: config.previousSecretKey,
      log: log.child("message-auth"),
    });
    if (config.previousSecretKey) {
      log.info("RS_SECRET_KEY_PREVIOUS is set: records sealed with it are still accepted");
    }

    // After a failover the configured URL may name a demoted node: start on the primary
    // the cluster last agreed on (the failover concern's key in Redis).
    const start = await startupDatabase(config, messageAuth, { log: log.child("start-up") });
    const db = await openDatabase({
      url: start.url,
      epoch: start.epoch,
      dataDir: config.dataDir,
      cacheDir: config.cacheDir,
      poolSize: config.database.poolSize,
      connectTimeoutS: config.database.connectTimeoutS,
      queryTimeoutMs: config.database.queryTimeoutMs,
      applicationName: `rootstream-${config.instanceId}`.slice(0, 63),
      log: log.child("db"),
    });
    cleanups.push(() => db.close(config.shutdownTimeoutS));

    const migrations = await migrate(db.sql, { log: log.child("migrate") });
    // Redis named no primary (it did not answer, or lost its data in a restart or a Sentinel
    // switch): the epoch comes from the database, which records every publication, so what
    // this pool writes is never labelled older than an epoch the cluster already agreed on.
    if (start.epoch === 0 && db.mode === "postgres") {
      db.adoptEpoch(await maxRecordedEpoch(db.sql).catch(() => 0));
    }
    log.info("database ready", {
      target: db.describe,
      migrationsApplied: migrations.applied.length,
      latest: migrations.latest,
    });

    const keyspace = createKeyspace(config.redis.keyPrefix);
    let redis: RedisClient | null = null;
    let bus: MessageBus;
    if (redisOn) {
      const client = createRedisClient(config.redis, {
        name: `rs-${config.instanceId}`,
        log: log.child("redis"),
      });
      redis = client;
      cleanups.push(() => closeRedis(client));
      try {
        await client.connect();
      } catch (err) {
        // Redis being down must not stop the instance: it reconnects in the background
        // and /health says degraded until then.
        log.warn("redis unreachable at start-up; retrying in the background", {
          error: err instanceof Error ? err.message : String(err),
        });
      }
      bus = createRedisBus(client, { keyspace, auth: messageAuth, log: log.child("bus") });
    } else {
      bus = createLocalBus({ log: log.child("bus") });
    }
    cleanups.push(() => bus.close());

    const inspector = createInspector({
      retentionMs: config.concerns.limits.inspectorRetentionMs,
      maxStopped: config.concerns.limits.inspectorMaxStopped,
      summarize: (id, snapshot) => specsById.get(id)?.summarize?.(snapshot as never),
    });
    const specsById = new Map<string, ActorSpec>();
    let supervisor: Supervisor | null = null;
    const localActors = {
      spec: (id: string) => specsById.get(id),
      ref: (id: string) => supervisor?.ref(id),
    };
    // Every transition and every message received is recorded in the cluster's history
    // (Redis stream, docs/console.md), batched off the hot path — except the routine steps of
    // periodic cycles (states tagged `routine` in the charts: heartbeats, lease renewals, heads
    // announcements, metric rounds), which at idle were most of the instance's Redis commands.
    // Keyframes (every actor's state, at start and every RS_HISTORY_KEYFRAME_S) let a past
    // moment show actors that have not moved for a while. RS_HISTORY=off records nothing.
    const history = redis && config.concerns.limits.history
      ? createHistoryRecorder({
        instanceId: config.instanceId,
        append: createHistoryWriter(redis, keyspace, messageAuth, {
          maxEntries: config.concerns.limits.historyMaxEntries,
          maxAgeMs: config.concerns.limits.historyMaxAgeMs,
        }).append,
        log: log.child("history"),
        keyframes: {
          everyMs: config.concerns.limits.historyKeyframeMs,
          actors: () => inspector.list(),
        },
      })
      : null;
    if (history) {
      inspector.subscribe((view, t) => {
        if (t && !t.routine) history.transition(t, view.machine);
      });
      cleanups.push(() => history.close());
    }
    const transportOptions = {
      instanceId: config.instanceId,
      actors: localActors,
      bus,
      log: log.child("transport"),
      maxMessageAgeMs: config.messageMaxAgeMs,
      onReceived: history ? (m: ReceivedMessage, at: number) => history.message(m, at) : undefined,
    };
    const transport = redis
      ? createRedisTransport(redis, {
        ...transportOptions,
        keyspace,
        auth: messageAuth,
        inboxReplicas: config.redis.waitReplicas ?? 0,
        inboxWaitMs: config.redis.waitTimeoutMs,
      })
      : createLocalTransport(transportOptions);
    cleanups.push(() => transport.close());

    let url = "";
    let advertised = config.publicUrl ?? "";
    const startedAtMs = Date.now();
    const selfInfo = (): MemberInfo => ({
      id: config.instanceId,
      url: advertised,
      version: VERSION,
      startedAt: startedAtMs,
      roles: coordinator?.fence() ? [coordinator.fence()!] : [],
      actors: inspector.list()
        .filter((v) => v.path.split("/").length === 2)
        .map((v) => ({ id: v.id, state: v.state, status: v.status, summary: v.summary })),
    });
    const membership = redis
      ? createMembership(redis, {
        keyspace,
        instanceId: config.instanceId,
        info: selfInfo,
        heartbeatMs: config.cluster.heartbeatMs,
        deadAfterMs: config.cluster.deadAfterMs,
        auth: messageAuth,
        bus,
        log: log.child("cluster"),
      })
      : null;
    if (membership) cleanups.push(() => membership.deregister());
    const leases = redis
      ? createLeaseManager({
        redis,
        keyspace,
        instanceId: config.instanceId,
        bus,
        // Departures wake the standbys (below), so they need not poll each held lease.
        standbyTtls: membership ? 2 : undefined,
        log: log.child("leases"),
        inspect: (ev) => inspector.inspect(ev),
      })
      : null;
    // The cluster coordinator: one instance at a time decides for the cluster (the
    // failover coordinator builds on it). Without Redis this lone instance is it.
    const coordinator = leases
      ? leases.campaign("coordinator", {
        ttlMs: config.cluster.leaseTtlMs,
        onAcquired: (token) => log.info("became the cluster coordinator", { token }),
        onLost: (reason) => log.warn("no longer the cluster coordinator", { reason }),
      })
      : null;
    if (leases) cleanups.push(() => leases.close());
    // An instance that left may have held leases: its standbys try at once (and again right
    // when its lease runs out) instead of polling every held lease.
    if (leases && membership) {
      membership.onChange((change) => {
        if (change.left.length) leases.wake();
      });
    }

    const services: RuntimeServices = {
      config,
      instanceId: config.instanceId,
      log,
      db,
      redis,
      keyspace,
      bus,
      transport,
      leases,
      ...(membership ? { members: liveMembersOf(() => localActors.ref("cluster")) } : {}),
      secretKey: secret.key,
      messageAuth,
      now: options.now ?? Date.now,
      actors: localActors,
    };
    const concerns = await createConcerns(services, config, {
      factories: options.concerns,
      core: {
        version: VERSION,
        startedAt,
        unavailable,
        migrations,
        historyKeyframeMs: config.concerns.limits.historyKeyframeMs,
        inspector,
        membership,
        self: selfInfo,
        // Bound below, before the first request can reach it.
        supervisor: () => supervisor!,
      },
    });
    for (const [, concern] of concerns) {
      if (concern.stop) cleanups.push(concern.stop);
    }
    const specs: ActorSpec[] = [
      ...concerns.flatMap(([, c]) => c.actors),
      ...(options.actors ?? []),
    ];
    for (const spec of specs) specsById.set(spec.id, spec);
    // Routes and the HTTP server exist before the actors start, so the first heartbeat
    // already advertises this instance's URL; `supervisor` is bound just below.
    await transport.start();

    const byName = Object.fromEntries(concerns);
    const health = concernApi(byName, "core")!.health;
    const shutdown = new AbortController();
    const app = createHttpApp(concerns, {
      log: log.child("http"),
      signal: shutdown.signal,
      config,
      secretKey: secret.key,
      version: VERSION,
      now: services.now,
    });
    let server: Deno.HttpServer | null = null;
    if (options.serve !== false) {
      server = Deno.serve({
        port: config.http.port,
        hostname: config.http.host,
        onListen: () => {},
      }, app.fetch);
      const addr = server.addr as Deno.NetAddr;
      const shownHost = addr.hostname === "0.0.0.0" || addr.hostname === "::"
        ? "localhost"
        : addr.hostname.includes(":")
        ? `[${addr.hostname}]`
        : addr.hostname;
      url = `http://${shownHost}:${addr.port}`;
    }
    if (!config.publicUrl) advertised = url;
    const started = startSupervisor({
      specs,
      services,
      inspector,
      maxRestarts: config.supervisor.maxRestarts,
      withinMs: config.supervisor.withinMs,
      log: log.child("supervisor"),
    });
    supervisor = started;
    // The first keyframe: every actor as it started.
    history?.keyframe();
    cleanups.push(() => Promise.resolve(started.stop()));
    // Stopping runs in reverse: HTTP first (event streams end so shutdown can finish),
    // then the actors, then transport, bus, Redis and the database.
    cleanups.push(async () => {
      shutdown.abort();
      await server?.shutdown();
    });

    let stopping: Promise<void> | null = null;
    return {
      config,
      url,
      db,
      redis,
      bus,
      keyspace,
      secretKey: secret.key,
      app,
      migrations,
      supervisor: started,
      transport,
      inspector,
      membership,
      leases,
      coordinator,
      concerns: byName,
      health,
      stop() {
        stopping ??= (async () => {
          log.info("stopping");
          await cleanup();
          log.info("stopped");
        })();
        return stopping;
      },
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
