/**
 * The composition root: builds every concern of an instance from the runtime's services and
 * the configuration, then the `core` concern around them, and puts all their routes on one
 * HTTP app. This folder is the only place that imports both actors/ (effects) and api/
 * (routes); docs/architecture.md draws the layers.
 *
 * A concern that needs another gets that concern's service as a typed argument of its
 * factory, so the order below is the one the compiler accepts, not a convention.
 * @module
 */
import type { OpenAPIHono } from "@hono/zod-openapi";
import { resolvePrimaryUrl } from "../actors/failover/mod.ts";
import type { BackupService } from "../actors/backup/service.ts";
import type { FailoverApi } from "../actors/failover/mod.ts";
import type { MetricsApi } from "../actors/metrics/mod.ts";
import type { SessionService } from "../actors/sessions/mod.ts";
import type { SyncService } from "../actors/sync/mod.ts";
import type { RuntimeServices } from "../actors/runtime/types.ts";
import { assertAllDeclared, createApp } from "../api/app.ts";
import {
  type AuthBackend,
  createAuthorizer,
  createPeerSigner,
  createStreamLimiter,
} from "../api/authz/mod.ts";
import { clientIp } from "../api/client.ts";
import { addOpenApiRoute } from "../api/openapi.ts";
import type { Logger } from "../lib/log.ts";
import type { MessageAuth } from "../lib/message_auth.ts";
import { createBackupConcern } from "./backup.ts";
import type { Config } from "./config.ts";
import { type CoreApi, type CoreDeps, createCoreConcern } from "./core.ts";
import { createFailoverConcern } from "./failover.ts";
import { createMetricsConcern } from "./metrics.ts";
import { createSessionsConcern } from "./sessions.ts";
import { createSyncConcern } from "./sync.ts";
import type { Concern, ConcernFactory } from "./types.ts";

export type { Concern, ConcernFactory, RouteContext } from "./types.ts";

/** Each concern's service, by concern name. */
export interface ConcernApis {
  /** The runtime's own: health. */
  core: CoreApi;
  /** Sessions and MFA. */
  sessions: SessionService;
  /** The sync node and the stream cache. */
  sync: SyncService;
  /** Replication status, switchover, canary. */
  failover: FailoverApi;
  /** Metrics writer, reader and exposition. */
  metrics: MetricsApi;
  /** Backups: list, create, verify, restore. */
  backup: BackupService;
}

/** The running concerns, in start order (`core` first). */
export type Concerns = readonly (readonly [string, Concern])[];

/** What {@linkcode createConcerns} needs besides the services and the configuration. */
export interface CreateConcernsOptions {
  /** The core concern's dependencies (everything it shows lives in the runtime). */
  core: Omit<CoreDeps, "concerns">;
  /** Concerns to run instead of the default set (tests, embedders); `core` always runs. */
  factories?: Record<string, ConcernFactory>;
}

/** The default concerns, each from its settings and the services of the ones it needs. */
async function defaultConcerns(
  services: RuntimeServices,
  config: Config,
  core: Omit<CoreDeps, "concerns">,
  built: [string, Concern][],
): Promise<void> {
  const scoped = (name: string): RuntimeServices => ({
    ...services,
    log: services.log.child(name),
  });
  built.push(["sync", createSyncConcern(scoped("sync"), config.concerns.sync)]);
  built.push([
    "sessions",
    createSessionsConcern(
      scoped("sessions"),
      config.concerns.sessions,
      config.concerns.limits,
    ),
  ]);
  built.push([
    "failover",
    await createFailoverConcern(scoped("failover"), config.concerns.failover),
  ]);
  built.push([
    "metrics",
    createMetricsConcern(scoped("metrics"), config.concerns.metrics, {
      supervised: () => core.supervisor().children(),
      backup: {
        schedules: config.concerns.backup.schedules,
        timezone: config.concerns.backup.timezone,
        verify: config.concerns.backup.verify,
      },
    }),
  ]);
  built.push(["backup", createBackupConcern(scoped("backup"), config.concerns.backup)]);
}

/**
 * Builds the concerns (the default set, or `options.factories`) and then `core` around them.
 * If one cannot be built, those already built are stopped before the error is rethrown.
 */
export async function createConcerns(
  services: RuntimeServices,
  config: Config,
  options: CreateConcernsOptions,
): Promise<Concerns> {
  const built: [string, Concern][] = [];
  try {
    if (options.factories) {
      for (const [name, factory] of Object.entries(options.factories)) {
        built.push([name, await factory({ ...services, log: services.log.child(name) }, config)]);
      }
    } else {
      await defaultConcerns(services, config, options.core, built);
    }
  } catch (err) {
    for (const [, concern] of built.reverse()) await concern.stop?.().catch(() => {});
    throw err;
  }
  const core = createCoreConcern(services, {
    ...options.core,
    concerns: built.flatMap(([name, c]) => c.health ? [[name, c.health] as const] : []),
  });
  return [["core", core], ...built];
}

/** What the authorizer asks the sessions concern: sessions, their authority, machine tokens. */
export function authBackendOf(sessions: SessionService): AuthBackend {
  return {
    authenticate: (token, ctx) => sessions.authenticate(token, ctx),
    authority: (token) => sessions.authority(token),
    verifyMachineToken: (token) => sessions.access.verifyToken(token),
  };
}

/** What {@linkcode createHttpApp} needs besides the concerns. */
export interface HttpAppOptions {
  /** Request and error log. */
  log: Logger;
  /** Aborted on shutdown (event streams end). */
  signal: AbortSignal;
  /** The configuration (access settings, proxy trust, instance id). */
  config: Config;
  /** The cluster's shared secret key (peer signatures between instances). */
  secretKey: Uint8Array;
  /** Release version, for /openapi.json. */
  version: string;
  /** Clock (ms). */
  now: () => number;
}

/**
 * The HTTP app with every concern's routes, registered the one way: `Concern.routes`, each
 * declared (who may call it, its schemas). The authorizer checks sessions through the
 * sessions concern when it runs, and the static tokens of the configuration. Throws when a
 * route has no declaration.
 */
export function createHttpApp(concerns: Concerns, options: HttpAppOptions): OpenAPIHono {
  const { config, log } = options;
  const sessions = concernApi(Object.fromEntries(concerns), "sessions");
  const backend = sessions ? authBackendOf(sessions) : null;
  const peer = createPeerSigner(options.secretKey, {
    instanceId: config.instanceId,
    now: options.now,
    previous: config.previousSecretKey,
  });
  const access = config.concerns.access;
  if (!access.secureCookie && !["127.0.0.1", "::1", "localhost"].includes(config.http.host)) {
    log.warn(
      "the session cookie is sent over plain http (rs_session, not Secure): set " +
        "RS_ALLOWED_ORIGINS (or RS_PUBLIC_URL) to the https origin browsers use",
    );
  }
  const authorizer = createAuthorizer({
    backend,
    settings: access,
    peer,
    trustedProxyHops: config.concerns.sessions.trustedProxyHops,
    now: options.now,
  });
  const streams = createStreamLimiter({
    maxPerClient: config.concerns.limits.sseMaxPerClient,
    maxTotal: config.concerns.limits.sseMaxTotal,
    addressOf: (c) => clientIp(c, config.concerns.sessions.trustedProxyHops),
  });
  const app = createApp({ log, authorizer, streams });
  for (const [, concern] of concerns) concern.routes?.(app, { signal: options.signal, peer });
  addOpenApiRoute(app, { version: options.version });
  assertAllDeclared(app);
  return app;
}

/** A concern's service by name, typed (undefined when that concern does not run). */
export function concernApi<K extends keyof ConcernApis>(
  concerns: Readonly<Record<string, Concern>>,
  name: K,
): ConcernApis[K] | undefined {
  return concerns[name]?.api as ConcernApis[K] | undefined;
}

/**
 * The URL the database pool opens on and the epoch it follows: after a failover, the primary
 * the cluster last agreed on (the failover concern's record in Redis, unless failover_history
 * records a newer epoch or its node is in recovery), else the primary failover_history
 * records, else DATABASE_URL (0); it waits (and says why) while none is usable.
 */
export function startupDatabase(
  config: Config,
  auth: MessageAuth,
  options: { log?: Logger; signal?: AbortSignal } = {},
): Promise<{ url: string | null; epoch: number }> {
  return resolvePrimaryUrl(config, config.concerns.failover, { auth, ...options });
}
