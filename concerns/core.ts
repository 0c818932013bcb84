/**
 * The `core` concern: the runtime's own actors (cluster membership, diagnostics) and routes
 * (`/health`, `/actors` and `/cluster`, `/history`, `/charts`, `/console`, `/streams`), built like every
 * other concern from typed dependencies. Its /health folds in every other concern's facts,
 * so it is built after them and gets them as an argument.
 * @module
 */
import { diagnosticsSpec } from "../actors/runtime/diagnostics.ts";
import { checkHealth, type HealthReport } from "../actors/runtime/health.ts";
import type { Inspector } from "../actors/runtime/inspector.ts";
import type { LiveMember, MemberInfo, Membership } from "../actors/runtime/membership.ts";
import type { Supervisor } from "../actors/runtime/supervisor.ts";
import type { HealthFact, RuntimeServices } from "../actors/runtime/types.ts";
import { addChartRoutes } from "../api/core/charts.ts";
import { addClusterRoutes } from "../api/core/cluster.ts";
import { addConsoleRoutes } from "../api/core/console.ts";
import { addHealthRoutes } from "../api/core/health.ts";
import { addHistoryRoutes } from "../api/core/history.ts";
import { readHistory, readKeyframes } from "../store/redis_history.ts";
import { addStreamRoutes } from "../api/core/streams.ts";
import { MACHINES } from "../machines/mod.ts";
import type { MigrationReport } from "../store/migrations.ts";
import { getStreamById, listLiveStreams } from "../store/streams.ts";
import type { Concern } from "./types.ts";

/** The core concern's service. */
export interface CoreApi {
  /** Runs the live health checks. */
  health(): Promise<HealthReport>;
}

/** What the core concern is built from, besides the runtime's services. */
export interface CoreDeps {
  /** Release version reported by /health and heartbeats. */
  version: string;
  /** `performance.now()` at start-up. */
  startedAt: number;
  /** Features this mode cannot offer, with the reason. */
  unavailable: Record<string, string>;
  /** Migrations applied at start-up. */
  migrations: MigrationReport;
  /** RS_HISTORY_KEYFRAME_S in ms: every live instance records a keyframe this often. */
  historyKeyframeMs: number;
  /** Live view of every actor. */
  inspector: Inspector;
  /** Cluster membership, or null without Redis. */
  membership: Membership | null;
  /** What this instance publishes about itself. */
  self(): MemberInfo;
  /** The root supervisor (started after the routes exist, so read when asked). */
  supervisor(): Supervisor;
  /** The other concerns' health facts, by name. */
  concerns: readonly (readonly [string, () => Promise<HealthFact>])[];
}

/** Builds the core concern. */
export function createCoreConcern(services: RuntimeServices, deps: CoreDeps): Concern<CoreApi> {
  const { config, db, redis, bus, transport } = services;
  const health = () =>
    checkHealth({
      config,
      version: deps.version,
      db,
      redis,
      bus,
      migrations: deps.migrations,
      unavailable: deps.unavailable,
      startedAt: deps.startedAt,
      supervisor: deps.supervisor,
      concerns: deps.concerns,
      messageAuth: services.messageAuth,
    });
  return {
    api: { health },
    actors: [
      ...(deps.membership ? [deps.membership.spec] : []),
      diagnosticsSpec({ instanceId: config.instanceId, now: services.now }),
    ],
    routes(app, context) {
      addHealthRoutes(app, { health });
      addStreamRoutes(app, {
        listLive: (options) => listLiveStreams(db.sql, options),
        get: (id) => getStreamById(db.sql, id),
      });
      addClusterRoutes(app, {
        instanceId: config.instanceId,
        inspector: deps.inspector,
        supervisor: () => {
          const supervisor = deps.supervisor();
          return { ...supervisor.state(), children: supervisor.children() };
        },
        members: deps.membership ? () => deps.membership!.members() : null,
        self: (): LiveMember => ({ ...deps.self(), heartbeatAgeMs: 0 }),
        transportStats: () => transport.stats(),
        signal: context.signal,
      });
      const redisClient = redis;
      addHistoryRoutes(app, {
        read: redisClient
          ? (options) => readHistory(redisClient, services.keyspace, services.messageAuth, options)
          : null,
        keyframes: redisClient
          ? (options) =>
            readKeyframes(redisClient, services.keyspace, services.messageAuth, {
              ...options,
              // Every live instance writes one per interval (the cluster shares the setting).
              windowMs: 2 * deps.historyKeyframeMs,
            })
          : null,
      });
      addChartRoutes(app, {
        machines: MACHINES,
        // The first live actor running that machine (top-level actors first).
        activeState: (name) =>
          deps.inspector.list()
            .filter((v) => v.machine === name && v.status === "active")
            .sort((a, b) => a.path.split("/").length - b.path.split("/").length)[0]?.state,
      });
      addConsoleRoutes(app, {
        instanceId: config.instanceId,
        signal: context.signal,
        log: services.log.child("console"),
        peer: context.peer,
      });
    },
  };
}
