/**
 * The sessions concern: sessions (create / validate / refresh / revoke / limit /
 * cleanup), TOTP MFA with backup codes and lockout, and one statechart actor per login
 * attempt, under the session supervisor.
 *
 * {@linkcode createSessionsParts} builds the service and its actor from the runtime's
 * services and the sessions settings; concerns/sessions.ts adds the routes (api/sessions.ts).
 * @module
 */
import type { Snapshot } from "xstate";
import type { ActorSpec, ConcernParts, RuntimeServices } from "../runtime/types.ts";
import type {
  SessionSupervisorContext,
  SessionSupervisorInput,
} from "../../machines/session_supervisor.ts";
import { createSessionService, type SessionService } from "./service.ts";
import { createSessionSupervisorLogic } from "./supervisor.ts";
import type { SessionsSettings } from "./settings.ts";
import { DEFAULT_LIMITS, type LimitsSettings } from "../../lib/limits.ts";
import { createSmtpMailer } from "./mailer.ts";

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

/** The sessions concern's service, its actor and its shutdown. */
export function createSessionsParts(
  services: RuntimeServices,
  settings: SessionsSettings,
  limits: LimitsSettings = DEFAULT_LIMITS,
): ConcernParts<SessionService> {
  const cfg = settings;
  const mailer = cfg.smtp ? createSmtpMailer(cfg.smtp) : null;
  const service = createSessionService({
    webauthn: cfg.webauthn,
    mailer,
    sql: services.db.sql,
    redis: services.redis,
    keyspace: services.keyspace,
    bus: services.bus,
    secretKey: services.secretKey,
    auth: services.messageAuth,
    previousSecretKey: services.config.previousSecretKey,
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
      hashLimits: { concurrency: limits.hashConcurrency, queue: limits.hashQueue },
    },
  });
  return {
    api: service,
    actors: [createSessionsActorSpec(service)],
    stop: async () => {
      await service.close();
      mailer?.close();
    },
  };
}
