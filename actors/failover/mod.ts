/**
 * The failover concern: one `failover` actor per instance (machines/failover/ with the
 * effects of ./effects.ts), the service its routes use (concerns/failover.ts adds api/failover.ts), its /health entry and the
 * `failover` lease campaign whose holder takes the decisions. Everything about the
 * concern's phase (where to start, which primary the pool follows, degraded or not, who
 * coordinates) is in the chart's states and context; this module wires effects to it and
 * reads its snapshots.
 *
 * Modes: embedded PGlite → replication and failover report themselves unavailable; a
 * server without DATABASE_NODES → `GET /replication` shows the primary's own view
 * (pg_stat_replication) and says failover needs DATABASE_NODES; with DATABASE_NODES →
 * everything.
 * @module
 */
import type { AnyActorRef, Snapshot } from "xstate";
import type { CoreConfig } from "../../lib/config.ts";
import { guardSocketErrors } from "../../lib/db_errors.ts";
import type { Logger } from "../../lib/log.ts";
import type { MessageAuth } from "../../lib/message_auth.ts";
import {
  closeRedis,
  createKeyspace,
  createRedisClient,
  type RedisClient,
  redisConfigured,
} from "../../store/redis.ts";
import { createFailoverStore } from "../../store/redis_failover.ts";
import { z } from "zod";
import { describeError, RuntimeError } from "../../lib/errors.ts";
import { createPgTools } from "../../store/pg_tools.ts";
import {
  isInRecovery,
  listFailoverRecords,
  type NodeIdentity,
  readNodeState,
  readReplicationRows,
  recordedPrimary,
  writeCanary,
} from "../../store/replication.ts";
import {
  chooseStartupNode,
  type Decision,
  type FailoverContext,
  type FailoverEvent,
  type FailoverInput,
  type StartupNodeView,
  type SwitchoverRequest,
} from "../../machines/failover/mod.ts";
import { createMembership } from "../runtime/membership.ts";
import type { ActorSpec, ConcernParts, RemoteEvent, RuntimeServices } from "../runtime/types.ts";
import {
  answerObserve,
  answerVote,
  createFailoverLogic,
  FAILOVER_ROLE,
  type FailoverDeps,
  readPublished,
} from "./effects.ts";
import { createNodeClient, type NodeClient, nodeForUrl, shortError } from "./nodes.ts";
import type { FailoverSettings } from "./settings.ts";

export { FAILOVER_VARIABLES, type FailoverSettings, loadFailoverSettings } from "./settings.ts";

const EMBEDDED_REASON =
  "replication and failover need PostgreSQL servers with streaming replicas (set DATABASE_URL " +
  "and DATABASE_NODES); this instance runs on embedded PGlite";

const primaryEvent = z.object({
  type: z.literal("failover.primary"),
  node: z.string().regex(/^[A-Za-z0-9_.-]{1,63}$/),
  epoch: z.number().int().nonnegative(),
  readOnlyNode: z.string().nullable().optional(),
}) as unknown as z.ZodType<RemoteEvent>;

const voteEvent = z.object({
  type: z.literal("failover.vote"),
  node: z.string().regex(/^[A-Za-z0-9_.-]{1,63}$/),
  epoch: z.number().int().nonnegative(),
}) as unknown as z.ZodType<RemoteEvent>;

const observeEvent = z.object({
  type: z.literal("failover.observe"),
  node: z.string().regex(/^[A-Za-z0-9_.-]{1,63}$/),
  epoch: z.number().int().nonnegative(),
}) as unknown as z.ZodType<RemoteEvent>;

const switchoverEvent = z.object({
  type: z.literal("failover.switchover"),
  id: z.string().min(1).max(64),
  target: z.string().regex(/^[A-Za-z0-9_.-]{1,63}$/).nullable(),
  requestedBy: z.string().max(200),
}) as unknown as z.ZodType<RemoteEvent>;

type FailoverSnapshot = Snapshot<unknown> & {
  value: Record<string, unknown>;
  context: FailoverContext;
};

function stateName(value: unknown): string {
  if (typeof value === "string") return value;
  if (value && typeof value === "object") {
    const [k, v] = Object.entries(value)[0] ?? [];
    return k ? `${k}.${stateName(v)}` : "";
  }
  return "";
}

/**
 * Works around an ioredis race (5.x, Sentinel mode with failoverDetector): a
 * `+switch-master` that arrives while the client is resolving the master makes connect()
 * fail with "Connection is closed." and leaves the client in status `end` for good. When
 * that happens outside a shutdown, connect again. (The lasting fix belongs in
 * store/redis.ts: `failoverDetector: false` — Sentinel already kills the clients of the
 * nodes it reconfigures, and ioredis checks the role of the node it connects to.)
 */
export function keepConnected(
  client: RedisClient,
  options: { log: Logger; stopping: () => boolean },
): void {
  client.on("end", () => {
    if (options.stopping()) return;
    options.log.warn("redis connection ended outside a shutdown; connecting again");
    setTimeout(() => {
      if (!options.stopping() && client.status === "end") client.connect().catch(() => {});
    }, 200);
  });
}

/**
 * Watches the Redis connection (direct or through Sentinel): reconnects (a Sentinel master
 * switch is one), the bus's resubscriptions after them, and the master it talks to now.
 */
function watchRedis(
  services: RuntimeServices,
  stopping: () => boolean,
): () => Record<string, unknown> {
  const { redis, log } = services;
  let reconnects = 0;
  let lastReconnectAt: number | null = null;
  if (redis) {
    keepConnected(redis, { log, stopping });
    let ready = redis.status === "ready";
    redis.on("ready", () => {
      if (ready) {
        reconnects++;
        lastReconnectAt = services.now();
        log.warn("redis reconnected (a Sentinel master switch or a restart)", { reconnects });
      }
      ready = true;
    });
  }
  services.bus.onResubscribed(() =>
    log.info("bus subscriptions restored after a Redis reconnect", {
      resubscribes: services.bus.stats().resubscribes,
    })
  );
  return () => {
    const stream = (redis as unknown as {
      stream?: { remoteAddress?: string; remotePort?: number };
    } | null)?.stream;
    return {
      mode: services.config.redis.sentinels.length
        ? "sentinel"
        : services.config.redis.clusterNodes?.length
        ? "cluster"
        : redis
        ? "direct"
        : "none",
      master: stream?.remoteAddress ? `${stream.remoteAddress}:${stream.remotePort}` : null,
      reconnects,
      lastReconnectAt: lastReconnectAt ? new Date(lastReconnectAt).toISOString() : null,
      busResubscribes: services.bus.stats().resubscribes,
    };
  };
}

/**
 * The URL the runtime should open its pool on, and the epoch it follows, decided by
 * {@linkcode chooseStartupNode} before anything is written: with DATABASE_NODES and Redis
 * configured, the primary published in Redis when its node is out of recovery and its epoch
 * is not below failover_history's highest (Redis replication is asynchronous: a Sentinel
 * failover can bring back an older record); Redis not answering is waited for up to
 * FAILOVER_STARTUP_REDIS_WAIT_MS; then the primary failover_history records, else
 * DATABASE_URL on a cluster that recorded nothing, each only out of recovery. Otherwise it
 * says why (once per new reason) and decides again every `retryMs` until a coordinator
 * publishes a usable primary, or `signal` aborts (then it throws). Without DATABASE_NODES
 * or Redis: `config.database.url` with epoch 0.
 */
export async function resolvePrimaryUrl(
  config: CoreConfig,
  settings: FailoverSettings,
  options: { auth: MessageAuth; log?: Logger; retryMs?: number; signal?: AbortSignal },
): Promise<{ url: string | null; epoch: number }> {
  const url = config.database.url;
  if (!url || !redisConfigured(config.redis)) return { url, epoch: 0 };
  if (!settings.nodes.length) return { url, epoch: 0 };
  const log = options.log;
  const client = createRedisClient(config.redis, { name: "rs-resolve-primary" });
  const nodes = settings.nodes.map((n) =>
    createNodeClient(n, {
      applicationName: `rootstream-start-${config.instanceId}`.slice(0, 63),
    })
  );
  const configured = nodeForUrl(settings.nodes, url)?.name ?? null;
  const started = Date.now();
  let said = "";
  try {
    // Not awaited: a Redis that is down (failing over) is waited for below, not given up on.
    client.connect().catch(() => {});
    const store = createFailoverStore(
      client,
      createKeyspace(config.redis.keyPrefix),
      options.auth,
    );
    for (;;) {
      // Measured before the read: the first unanswered read is always waited for (and said).
      const waitedMs = Date.now() - started;
      const [answer, views] = await Promise.all([
        store.readPrimaryAnswer(1000),
        Promise.all(nodes.map((n) => viewNode(n))),
      ]);
      const choice = chooseStartupNode({
        redis: {
          answered: answer.answered,
          record: answer.record
            ? {
              node: answer.record.node,
              epoch: answer.record.epoch,
              readOnlyNode: answer.record.readOnlyNode,
            }
            : null,
        },
        waitedMs: answer.answered ? 0 : waitedMs,
        redisWaitMs: settings.startupRedisWaitMs,
        configured,
        nodes: views,
      });
      if (choice.open) {
        log?.info(choice.why);
        const node = choice.node === null
          ? null
          : settings.nodes.find((n) => n.name === choice.node) ?? null;
        return { url: node ? node.url : url, epoch: choice.epoch };
      }
      if (choice.why !== said) {
        if (choice.error) log?.error(choice.why);
        else log?.warn(choice.why);
        said = choice.why;
      }
      await pause(options.retryMs ?? 500, options.signal);
    }
  } finally {
    await Promise.all(nodes.map((n) => n.close()));
    await closeRedis(client);
  }
}

/** One node as start-up sees it: answers, in recovery, what its failover_history records. */
async function viewNode(node: NodeClient): Promise<StartupNodeView> {
  const name = node.setting.name;
  try {
    const [inRecovery, recorded] = await node.run(
      (sql) => Promise.all([isInRecovery(sql), recordedPrimary(sql)]),
      { timeoutMs: 2000, what: "start-up check" },
    );
    return { name, reachable: true, inRecovery, recorded, error: null };
  } catch (err) {
    return { name, reachable: false, inRecovery: false, recorded: null, error: shortError(err) };
  }
}

/** Waits `ms`, or rejects when `signal` aborts. */
function pause(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", stop);
      resolve();
    }, ms);
    const stop = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", stop, { once: true });
  });
}

/** A switchover's outcome, as the coordinator decided it. */
export interface SwitchoverResult {
  /** Whether the switch happened. */
  ok: boolean;
  /** The decision's sentence. */
  why: string;
  /** Primary after it. */
  primary: { node: string; epoch: number } | null;
}

/** The replication concern's API for embedding programs. */
export interface ReplicationApi {
  /** Nodes, roles, LSNs, lag and the failover state, as GET /replication shows them. */
  status(): Promise<Record<string, unknown>>;
  /** A planned, zero-loss switchover to a replica (see docs/failover.md). */
  switchover(options: { target: string | null; requestedBy: string }): Promise<SwitchoverResult>;
}

/** The failover concern's service: what its routes (api/failover.ts) and embedders use. */
export interface FailoverApi {
  /** Why replication is unavailable here (embedded mode), or null when it is available. */
  unavailable: string | null;
  /** The replication status as JSON. */
  status(): Promise<Record<string, unknown>>;
  /** Writes a canary row through this instance's pool. */
  canary(options?: { note: string | null }): Promise<Record<string, unknown>>;
  /** Runs a switchover and waits for the decision; absent without DATABASE_NODES. */
  switchover?: ReplicationApi["switchover"];
}

/** Builds the failover concern's actors and service from the runtime's services. */
export function createFailoverParts(
  services: RuntimeServices,
  settings: FailoverSettings,
): ConcernParts<FailoverApi> {
  if (services.db.mode === "embedded") {
    return {
      actors: [],
      api: {
        unavailable: EMBEDDED_REASON,
        status: () => Promise.resolve({}),
        canary: () => Promise.resolve({}),
      },
      health: () => Promise.resolve({ ok: true, available: false, reason: EMBEDDED_REASON }),
    };
  }
  if (!settings.nodes.length) return monitorOnly(services);
  return fullConcern(services, settings);
}

/** `POST /replication/canary`: a row written through this instance's pool, and where. */
function canaryVia({ db, instanceId }: RuntimeServices): FailoverApi["canary"] {
  return async (options) => {
    const row = await writeCanary(db.sql, {
      instance: instanceId,
      epoch: db.epoch,
      note: options?.note ?? null,
    });
    return { ...row, epoch: db.epoch, instance: instanceId };
  };
}

/** A server without DATABASE_NODES: the primary's own view, no failover. */
function monitorOnly(services: RuntimeServices): ConcernParts<FailoverApi> {
  const { db, instanceId } = services;
  let stopping = false;
  const redisStatus = watchRedis(services, () => stopping);
  const reason =
    "failover needs DATABASE_NODES (name=postgres://… for every node, comma-separated)";
  return {
    actors: [],
    stop() {
      stopping = true;
      return Promise.resolve();
    },
    api: {
      unavailable: null,
      async status() {
        const [state, replicas] = await Promise.all([
          readNodeState(db.sql),
          readReplicationRows(db.sql).catch(() => []),
        ]);
        return {
          available: true,
          instance: instanceId,
          failover: { available: false, reason },
          primary: { target: db.describe, ...state },
          replicas,
          redis: redisStatus(),
        };
      },
      canary: canaryVia(services),
    },
  };
}

function fullConcern(
  services: RuntimeServices,
  settings: FailoverSettings,
): ConcernParts<FailoverApi> {
  const { db, redis, keyspace, transport, leases, log, config, instanceId } = services;
  guardSocketErrors(log);
  const nodes = new Map<string, NodeClient>(settings.nodes.map((n) => [
    n.name,
    createNodeClient(n, { applicationName: `rootstream-failover-${instanceId}`.slice(0, 63) }),
  ]));
  const membership = redis
    ? createMembership(redis, {
      keyspace,
      instanceId,
      deadAfterMs: config.cluster.deadAfterMs,
      auth: services.messageAuth,
      info: () => ({ id: instanceId, url: "", version: "", startedAt: 0, roles: [], actors: [] }),
    })
    : null;

  // The failover lease: its holder decides. Without Redis this lone instance always does.
  // The campaign owns the token; the chart's role region hears about it through `watchLease`.
  const listeners = new Set<(e: FailoverEvent) => void>();
  function tell(event: FailoverEvent): void {
    for (const fn of [...listeners]) fn(event);
  }
  const campaign = leases
    ? leases.campaign(FAILOVER_ROLE, {
      ttlMs: config.cluster.leaseTtlMs,
      onAcquired: (token) => tell({ type: "LEASE_ACQUIRED", token }),
      onLost: (_reason, why) => tell({ type: "LEASE_LOST", why }),
    })
    : null;

  let ref: AnyActorRef | undefined;
  // A query through the pool that lost (or could not get) its connection: the chart may
  // probe the primary at once instead of at the next interval (detection starts sooner).
  const unhookPool = db.onConnectionError((why) => {
    if (!stopping && ref?.getSnapshot().status === "active") ref.send({ type: "POOL_ERROR", why });
  });
  const identities = new Map<string, NodeIdentity>();
  const deps: FailoverDeps = {
    instanceId,
    settings,
    nodes,
    db,
    published: redis ? createFailoverStore(redis, keyspace, services.messageAuth) : null,
    transport,
    bus: services.bus,
    leases,
    membership,
    lease: {
      token: () => campaign ? campaign.token() : 0,
      listen(fn) {
        listeners.add(fn);
        return () => listeners.delete(fn);
      },
    },
    log,
    now: services.now,
    identities,
    tools: createPgTools({ log: log.child("pg_tools") }),
    actor: () => ref,
  };

  // Where to start is the chart's first decision (its `starting` state reads the published
  // primary and where the pool points); the pool region moves the pool if it must.
  if (!nodeForUrl(settings.nodes, config.database.url)) {
    log.warn("DATABASE_URL is none of DATABASE_NODES; the pool moves to the published primary", {
      nodes: settings.nodes.map((n) => n.name),
    });
  }

  // Watch the actor: log every new sentence (alerts and query waits are chart actions).
  let lastWhy = "";
  function watch(actor: AnyActorRef): void {
    actor.subscribe({
      next(snapshot) {
        const s = snapshot as FailoverSnapshot;
        const ctx = s.context;
        if (ctx.why !== lastWhy) {
          // "suspect: 7 consecutive probes…" after "suspect: 6 …" is the same news: debug.
          const repeat = ctx.why.split(":")[0] === lastWhy.split(":")[0] &&
            /^(suspect|degraded):/.test(ctx.why);
          lastWhy = ctx.why;
          const calm = stateName(s.value.detector).startsWith("healthy");
          log[repeat ? "debug" : calm ? "info" : "warn"](ctx.why, {
            state: stateName(s.value.detector),
          });
        }
      },
      error: (err) => log.error("failover actor failed", { error: describeError(err) }),
    });
  }

  const logic = createFailoverLogic(deps, {
    onSelf(self) {
      ref = self;
      // Subscribe once the actor has started (entry actions run before it is observable).
      queueMicrotask(() => watch(self));
    },
  });

  function input(): FailoverInput {
    return {
      instanceId,
      nodes: settings.nodes.map((n) => n.name),
      probeIntervalMs: settings.probeIntervalMs,
      probeTimeoutMs: settings.probeTimeoutMs,
      confirmations: settings.confirmations,
      monitorIntervalMs: settings.monitorIntervalMs,
      confirmTimeoutMs: settings.voteTimeoutMs * 2 + 1000,
      lagAlertBytes: settings.lagAlertBytes,
      lagAlertSeconds: settings.lagAlertSeconds,
      syncMode: settings.syncMode,
      fastPath: settings.fastPath,
      maxLagBytes: settings.maxLagBytes,
    };
  }

  function context(): FailoverContext | null {
    return (ref?.getSnapshot() as FailoverSnapshot | undefined)?.context ?? null;
  }

  /** Sends a switchover to the local actor and waits for its decision. */
  function runSwitchover(request: SwitchoverRequest): Promise<Decision> {
    const actor = ref;
    if (!actor) {
      return Promise.reject(
        new RuntimeError("ACTOR_UNAVAILABLE", "The failover actor is not running"),
      );
    }
    const limit = settings.switchoverTimeoutMs + 30_000;
    const result = new Promise<Decision>((resolve, reject) => {
      const timer = setTimeout(() => {
        sub.unsubscribe();
        reject(new RuntimeError("FAILOVER_TIMEOUT", `The switchover took longer than ${limit} ms`));
      }, limit);
      const sub = actor.subscribe((snapshot) => {
        const d = (snapshot as FailoverSnapshot).context.decision;
        if (d?.id !== request.id) return;
        clearTimeout(timer);
        sub.unsubscribe();
        resolve(d);
      });
    });
    actor.send({
      type: "SWITCHOVER",
      id: request.id,
      target: request.target,
      requestedBy: request.requestedBy,
    });
    return result;
  }

  async function switchover(
    options: { target: string | null; requestedBy: string },
  ): Promise<SwitchoverResult> {
    const request: SwitchoverRequest = { id: crypto.randomUUID(), ...options };
    const holder = leases ? await leases.holder(FAILOVER_ROLE) : { instance: instanceId };
    if (!holder) {
      throw new RuntimeError("FAILOVER_REFUSED", "No instance holds the failover lease right now");
    }
    const decision = holder.instance === instanceId
      ? await runSwitchover(request)
      : await transport.request<Decision>(
        { instance: holder.instance, actor: "failover" },
        { type: "failover.switchover", ...request },
        { timeoutMs: settings.switchoverTimeoutMs + 35_000, from: "failover" },
      );
    return { ok: decision.ok, why: decision.why, primary: decision.primary };
  }

  let stopping = false;
  const redisStatus = watchRedis(services, () => stopping);

  async function status(): Promise<Record<string, unknown>> {
    const snap = ref?.getSnapshot() as FailoverSnapshot | undefined;
    const ctx = snap?.context ?? null;
    const parked = ctx?.parked ?? [];
    const awaiting = ctx?.awaitingOperator ?? [];
    const [record, coordinator, history] = await Promise.all([
      readPublished(deps, 1000),
      leases
        ? leases.holder(FAILOVER_ROLE).catch(() => null)
        : Promise.resolve({ instance: instanceId, token: 0, ttlMs: 0 }),
      listFailoverRecords(db.sql, { limit: 10 }).then(
        (rows) => ({ rows, error: null }),
        (err) => ({ rows: null, error: describeError(err) }),
      ),
    ]);
    return {
      available: true,
      instance: instanceId,
      failover: { available: true },
      state: snap
        ? Object.fromEntries(Object.entries(snap.value).map(([k, v]) => [k, stateName(v)]))
        : null,
      role: ctx?.leader !== null && ctx?.leader !== undefined ? "coordinator" : "follower",
      coordinator,
      why: ctx?.why ?? null,
      decision: ctx?.decision ?? null,
      failures: ctx?.failures ?? 0,
      lastProbe: ctx?.lastProbe ?? null,
      // Which path this suspicion round is on, and the evidence gathered on the fast one.
      path: ctx?.path ?? "careful",
      fastPath: settings.fastPath,
      evidence: ctx?.evidence ?? null,
      primary: ctx
        ? { ...ctx.primary, address: nodes.get(ctx.primary.node)?.setting.address ?? null }
        : null,
      published: record,
      pool: {
        ...ctx?.pool,
        target: db.describe,
        generation: db.generation,
        epoch: db.epoch,
        readOnly: db.readOnly,
      },
      sync: {
        mode: settings.syncMode ? "on" : "off",
        standbys: ctx?.sample?.sync ?? null,
      },
      checkedAt: ctx?.sample ? new Date(ctx.sample.at).toISOString() : null,
      // What the chart holds for a node beyond the sample: stopped here and to be started
      // as a replica (parked), or fenced and left to its operator (another host's).
      nodes: (ctx?.sample?.nodes ?? []).map((n) => ({
        ...n,
        parked: parked.includes(n.name),
        awaitingOperator: awaiting.includes(n.name),
      })),
      parked,
      awaitingOperator: awaiting,
      alerts: ctx ? Object.values(ctx.alerts) : [],
      thresholds: {
        lagAlertBytes: settings.lagAlertBytes,
        lagAlertSeconds: settings.lagAlertSeconds,
      },
      redis: redisStatus(),
      history: history.rows,
      historyError: history.error,
    };
  }

  const spec: ActorSpec = {
    id: "failover",
    chart: "failover",
    create: () => logic,
    input,
    summarize(snapshot) {
      const s = snapshot as FailoverSnapshot;
      const ctx = s.context;
      if (!ctx) return {};
      return {
        detector: stateName(s.value?.detector),
        primary: ctx.primary.node,
        epoch: ctx.primary.epoch,
        coordinator: ctx.leader !== null,
        failures: ctx.failures,
        why: ctx.why,
      };
    },
    accepts: { "failover.primary": primaryEvent },
    requests: {
      "failover.vote": {
        schema: voteEvent,
        handle: (event) => answerVote(deps, event as unknown as { node: string; epoch: number }),
      },
      "failover.observe": {
        schema: observeEvent,
        handle: (event) => answerObserve(deps, event as unknown as { node: string; epoch: number }),
      },
      "failover.switchover": {
        schema: switchoverEvent,
        handle: (event) => runSwitchover(event as unknown as SwitchoverRequest),
      },
    },
  };

  return {
    api: {
      unavailable: null,
      status,
      switchover,
      canary: canaryVia(services),
    },
    actors: [spec],
    health() {
      const snap = ref?.getSnapshot() as FailoverSnapshot | undefined;
      const ctx = context();
      const detector = snap ? stateName(snap.value.detector) : "starting";
      return Promise.resolve({
        ok: !detector.startsWith("degraded"),
        state: detector,
        primary: ctx?.primary.node ?? null,
        epoch: ctx?.primary.epoch ?? null,
        coordinator: ctx ? ctx.leader !== null : false,
        why: ctx?.why ?? "starting",
      });
    },
    async stop() {
      stopping = true;
      unhookPool();
      await campaign?.resign().catch(() => {});
      await Promise.all([...nodes.values()].map((n) => n.close()));
    },
  };
}
