/**
 * The sessions concern: sessions (create / validate / refresh / revoke / limit /
 * cleanup), TOTP MFA with backup codes and lockout, and one statechart actor per login
 * attempt, under the session supervisor.
 *
 * Wiring (runtime.ts):
 * ```ts
 * const sessions = createSessionService({ sql: db.sql, redis, keyspace, bus, secretKey });
 * registry.push(createSessionsActorSpec(sessions));   // the "sessions" actor
 * addAuthRoutes(app, { sessions });                    // api/auth.ts
 * // on stop, after the actors: await sessions.close();
 * ```
 * @module
 */
import type { Snapshot } from "xstate";
import { addAuthRoutes } from "../../api/auth.ts";
import type { ActorSpec, Concern, RuntimeServices } from "../runtime/types.ts";
import type {
  SessionSupervisorContext,
  SessionSupervisorInput,
} from "../../machines/session_supervisor.ts";
import { createSessionService, type SessionService } from "./service.ts";
import { createSessionSupervisorLogic } from "./supervisor.ts";

export {
  type AuthContext,
  createSessionService,
  LOGIN_CHANNEL,
  type LoginResult,
  type RequestContext,
  type SessionEffects,
  type SessionService,
  type SessionServiceDeps,
  type SessionServiceOptions,
} from "./service.ts";
export { createLoginLogic, createSessionSupervisorLogic } from "./supervisor.ts";

/** The registry entry of the sessions actor (id `sessions`, chart `session_supervisor`). */
export function createSessionsActorSpec(
  service: SessionService,
  options: { supervisor?: SessionSupervisorInput } = {},
): ActorSpec {
  const logic = createSessionSupervisorLogic(service);
  return {
    id: "sessions",
    chart: "session_supervisor",
    create: () => logic,
    input: () => options.supervisor ?? service.supervisorInput,
    summarize(snapshot: Snapshot<unknown>) {
      const s = snapshot as Snapshot<unknown> & {
        value?: unknown;
        context?: SessionSupervisorContext;
      };
      const c = s.context;
      if (!c) return { status: s.status };
      return {
        state: s.value,
        reason: c.reason,
        loginsInProgress: Object.keys(c.logins).length,
        failures: c.failures,
        lastError: c.lastError,
        stats: c.stats,
      };
    },
  };
}

/** The sessions concern: the session service, its actor, the auth routes and shutdown. */
export function createSessionsConcern(services: RuntimeServices): Concern & {
  service: SessionService;
} {
  const cfg = services.config.sessions;
  const service = createSessionService({
    sql: services.db.sql,
    redis: services.redis,
    keyspace: services.keyspace,
    bus: services.bus,
    secretKey: services.secretKey,
    instanceId: services.instanceId,
    now: services.now,
    log: services.log,
    sessionsActor: () => services.actors.ref("sessions"),
    options: {
      sessions: {
        ttlMs: cfg.ttlMs,
        rememberTtlMs: cfg.rememberTtlMs,
        maxSessionsPerUser: cfg.maxPerUser,
      },
      mfa: { maxFailures: cfg.mfaMaxFailures, lockWindowMs: cfg.mfaLockWindowMs },
    },
  });
  return {
    service,
    actors: [createSessionsActorSpec(service)],
    routes: (app) =>
      addAuthRoutes(app, { sessions: service, trustProxy: cfg.trustProxy, log: services.log }),
    stop: () => service.close(),
  };
}
