/**
 * The sessions concern's module API: what the HTTP routes call (register, login, MFA,
 * session listing and revocation) and the effects the sessions actor is built from.
 *
 * Login attempts run as `login` actors held by the sessions actor (the session
 * supervisor); this module asks it to spawn one through the actor's `feed` bridge, then
 * waits for the attempt to settle (authenticated, waiting for a code, or ended). Until
 * the actor is running, logins answer ACTOR_UNAVAILABLE (503). Token validation, refresh
 * and revocation go straight to the session store: they are the hot path and need no
 * statechart.
 *
 * An attempt waiting for a code can be finished on any instance: its resumable record
 * (actors/sessions/challenges.ts) lets another instance start a `login` actor that
 * continues it (`input.resume`); when the attempt ends anywhere, the instance that ended
 * it publishes `sessions.login` so the others drop their copy.
 *
 * Enabling or disabling MFA revokes the user's other sessions (reason `mfa_changed`):
 * they were established under the old rules.
 * @module
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { Buffer } from "node:buffer";
import type { Redis } from "ioredis";
import { type AnyActorRef, waitFor } from "xstate";
import { RuntimeError } from "../../lib/errors.ts";
import { type Logger, silentLogger } from "../../lib/log.ts";
import type { PasswordOptions } from "../../lib/password.ts";
import type {
  CodeCheckInput,
  CodeResult,
  CredentialsResult,
  IssuedSession,
  LoginContext,
  LoginDevice,
  LoginOutput,
  LoginRecord,
} from "../../machines/login.ts";
import {
  type CleanupReport,
  loginActorId,
  type SessionSupervisorEvent,
  type SessionSupervisorInput,
} from "../../machines/session_supervisor.ts";
import type { MessageBus } from "../../store/bus.ts";
import { createEventStore, type EventStore } from "../../store/event_store.ts";
import { createMfaStore, type Enrollment, type MfaCheck, type MfaStore } from "../../store/mfa.ts";
import type { Keyspace } from "../../store/redis.ts";
import { randomToken } from "../../store/secure_random.ts";
import {
  createSessionStore,
  type DeviceInfo,
  type Session,
  type SessionStore,
  type SessionStoreOptions,
  type ValidSession,
} from "../../store/sessions.ts";
import type { Sql } from "../../store/types.ts";
import {
  createUser,
  type CreateUserInput,
  getUserById,
  recordLogin,
  type User,
  verifyCredentials,
} from "../../store/users.ts";
import { createChallengeStore } from "./challenges.ts";
import { createRateLimiter, type RateLimit } from "./rate_limit.ts";
import { ping } from "../../store/database_stats.ts";

/** Bus channel on which an instance announces that a login attempt ended. */
export const LOGIN_CHANNEL = "sessions.login";

/** Tunables of the sessions concern; every field optional. */
export interface SessionServiceOptions {
  /** Session lifetimes, limit, cache (see store/sessions.ts). */
  sessions?: Pick<
    SessionStoreOptions,
    | "ttlMs"
    | "rememberTtlMs"
    | "maxLifetimeMs"
    | "rememberMaxLifetimeMs"
    | "maxSessionsPerUser"
    | "activityThrottleMs"
    | "cacheTtlMs"
    | "revokedRetentionMs"
  >;
  /** MFA lockout and backup-code cost (see store/mfa.ts). */
  mfa?: {
    issuer?: string;
    maxFailures?: number;
    lockWindowMs?: number;
    backupCodeCost?: number;
    attemptRetentionMs?: number;
  };
  /** Login attempt limits (see machines/login.ts). */
  login?: {
    maxMfaAttempts?: number;
    mfaTimeoutMs?: number;
    credentialsTimeoutMs?: number;
    verifyTimeoutMs?: number;
  };
  /** Attempt limits; defaults: 10 per IP+login and 100 per IP per 15 min, 20 registrations per IP per hour. */
  rateLimits?: { perIpLogin?: RateLimit; perIp?: RateLimit; registerPerIp?: RateLimit };
  /** scrypt cost of password hashes (tests use `{ ln: 10 }`). */
  hashing?: PasswordOptions;
  /** Input of the sessions actor (cleanup interval, probe backoff, login cap). */
  supervisor?: SessionSupervisorInput;
}

/** What {@linkcode createSessionService} needs. */
export interface SessionServiceDeps {
  /** Database pool. */
  sql: Sql;
  /** Redis command connection, or null (single instance, per-process caches). */
  redis: Redis | null;
  /** Key namer. */
  keyspace: Keyspace;
  /** Message bus (revocations, finished logins). */
  bus: MessageBus;
  /** The runtime's 32-byte secret key (seals TOTP secrets). */
  secretKey: Uint8Array;
  /** This instance's id. */
  instanceId?: string;
  /** Clock in ms; the composition root passes the runtime's. */
  now?: () => number;
  /** Log. */
  log?: Logger;
  /** Tunables. */
  options?: SessionServiceOptions;
}

/** Client details of a request. */
export type RequestContext = DeviceInfo;

/** An authenticated caller. */
export interface AuthContext {
  /** The bearer token (to tell the current session in listings). */
  token: string;
  /** The validated session. */
  session: ValidSession;
}

/** What a login step answers. */
export type LoginResult =
  | {
    status: "authenticated";
    token: string;
    userId: number;
    session: { id: string; expiresAt: string };
    /** After a backup-code login: codes left. */
    backupCodesRemaining: number | null;
  }
  | {
    status: "mfa_required";
    /** Opaque token for /auth/mfa/verify. */
    challenge: string;
    /** When the challenge expires (ISO 8601). */
    expiresAt: string;
    methods: ("totp" | "backup_code")[];
  };

/** The bridge the sessions actor opens for this module. */
export interface ActorBridge {
  /** Sends an event to the sessions actor. */
  send(event: SessionSupervisorEvent): void;
  /** The actor system (login actors are found by system id). */
  system: { get(id: string): AnyActorRef | undefined };
}

/** The effects the sessions actor and its login actors are built from. */
export interface SessionEffects {
  /** Password check plus MFA state. */
  checkCredentials(input: { attemptId: string; login: string; password: string }): Promise<
    CredentialsResult
  >;
  /** TOTP check for a login. */
  verifyTotp(input: CodeCheckInput): Promise<CodeResult>;
  /** Backup-code check for a login. */
  verifyBackupCode(input: CodeCheckInput): Promise<CodeResult>;
  /** Creates the session at the end of a login. */
  issueSession(input: {
    userId: number;
    remember: boolean;
    device: LoginDevice;
    attemptId: string;
  }): Promise<IssuedSession>;
  /** Appends a login transition to the event store (queued per attempt). */
  record(context: LoginContext, event: LoginRecord): void;
  /** Saves the resumable record of an attempt waiting for a code (queued). */
  saveChallenge(context: LoginContext): void;
  /** Forgets it and tells the other instances (queued). */
  forgetChallenge(context: LoginContext): void;
  /** One cleanup round. */
  cleanup(): Promise<CleanupReport>;
  /** Health probe of PostgreSQL and Redis. */
  probe(): Promise<void>;
  /** Connects the sessions actor (its feed); returns the disconnect. */
  connect(bridge: ActorBridge): () => void;
}

/** The sessions concern's API, returned by {@linkcode createSessionService}. */
export interface SessionService {
  /** The session store (validation hot path). */
  readonly sessions: SessionStore;
  /** The MFA store. */
  readonly mfa: MfaStore;
  /** The event store login attempts are recorded in. */
  readonly events: EventStore;
  /** Effects for the sessions actor (actors/sessions/supervisor.ts). */
  readonly effects: SessionEffects;
  /** Input for the sessions actor. */
  readonly supervisorInput: SessionSupervisorInput;
  /** True while a sessions actor is connected. */
  readonly connected: boolean;
  /** The clock everything here runs on (ms). */
  now(): number;
  /** Creates an account. */
  register(input: CreateUserInput, ctx?: RequestContext): Promise<User>;
  /** Password step of a login. */
  login(
    input: { login: string; password: string; remember?: boolean },
    ctx?: RequestContext,
  ): Promise<LoginResult>;
  /** Code step of a login. */
  verifyMfa(
    input: { challenge: string; code: string; method?: "totp" | "backup_code" },
    ctx?: RequestContext,
  ): Promise<LoginResult>;
  /** Validates a bearer token; throws the 401 that fits. */
  authenticate(token: string | null | undefined, ctx?: RequestContext): Promise<AuthContext>;
  /** Starts TOTP enrolment for the caller. */
  enrollMfa(auth: AuthContext): Promise<Enrollment>;
  /** Confirms enrolment; returns the backup codes. */
  confirmMfa(
    auth: AuthContext,
    code: string,
    ctx?: RequestContext,
  ): Promise<{ backupCodes: string[] }>;
  /** New backup codes after a fresh TOTP code. */
  regenerateBackupCodes(
    auth: AuthContext,
    code: string,
    ctx?: RequestContext,
  ): Promise<{ backupCodes: string[] }>;
  /** Turns MFA off after a fresh code. */
  disableMfa(
    auth: AuthContext,
    input: { code: string; method?: "totp" | "backup_code" },
    ctx?: RequestContext,
  ): Promise<void>;
  /** Ends the caller's session. */
  logout(auth: AuthContext): Promise<void>;
  /** Slides the caller's session expiry. */
  refresh(auth: AuthContext): Promise<Session>;
  /** The caller's live sessions, newest first. */
  listSessions(auth: AuthContext): Promise<Session[]>;
  /** Revokes one of the caller's sessions. */
  revokeSession(auth: AuthContext, sessionId: string): Promise<void>;
  /** Waits for queued writes and drops bus subscriptions. */
  close(): Promise<void>;
}

const MINUTE = 60_000;
const CHALLENGE_RE =
  /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.[A-Za-z0-9_-]{43}$/;
const FINAL_RECORDS = new Set<LoginRecord>(["Authenticated", "Locked", "Failed", "Expired"]);

function sha256Hex(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

function sameHex(a: string, b: string): boolean {
  const x = Buffer.from(a, "hex");
  const y = Buffer.from(b, "hex");
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}

function device(ctx: RequestContext = {}): LoginDevice {
  return {
    fingerprint: ctx.fingerprint ?? null,
    ipAddress: ctx.ipAddress ?? null,
    userAgent: ctx.userAgent ?? null,
    geoLocation: ctx.geoLocation ?? null,
  };
}

function codeRefusal(r: MfaCheck, action: string): RuntimeError {
  if (r.ok) return new RuntimeError("INTERNAL", `Cannot ${action}: unexpected success`);
  if (r.reason === "locked" || r.locked) {
    return new RuntimeError(
      "MFA_LOCKED",
      `Cannot ${action}: too many wrong codes; try again in ${Math.ceil(r.retryAfterMs / 1000)} s`,
      { details: { retryAfterMs: r.retryAfterMs } },
    );
  }
  if (r.reason === "not_enrolled") {
    return new RuntimeError(
      "MFA_NOT_ENROLLED",
      `Cannot ${action}: MFA is not set up for this state`,
    );
  }
  return new RuntimeError("MFA_INVALID_CODE", `Cannot ${action}: the code is ${r.reason}`, {
    details: { reason: r.reason, failures: r.failures, maxFailures: r.maxFailures },
  });
}

/** Creates the sessions concern's API and effects. */
export function createSessionService(deps: SessionServiceDeps): SessionService {
  const { sql, redis, keyspace, bus } = deps;
  const now = deps.now ?? Date.now;
  const log = deps.log ?? silentLogger;
  const instanceId = deps.instanceId ?? "local";
  const o = deps.options ?? {};
  const limits = {
    perIpLogin: o.rateLimits?.perIpLogin ?? { limit: 10, windowMs: 15 * MINUTE },
    perIp: o.rateLimits?.perIp ?? { limit: 100, windowMs: 15 * MINUTE },
    registerPerIp: o.rateLimits?.registerPerIp ?? { limit: 20, windowMs: 60 * MINUTE },
  };
  const loginOptions = {
    maxMfaAttempts: o.login?.maxMfaAttempts ?? 5,
    mfaTimeoutMs: o.login?.mfaTimeoutMs ?? 5 * MINUTE,
    credentialsTimeoutMs: o.login?.credentialsTimeoutMs ?? 15_000,
    verifyTimeoutMs: o.login?.verifyTimeoutMs ?? 15_000,
  };
  // How long an HTTP request waits for an attempt to settle: longer than any of its steps.
  const settleTimeoutMs =
    Math.max(loginOptions.credentialsTimeoutMs, loginOptions.verifyTimeoutMs) +
    5_000;

  let bridge: ActorBridge | null = null;
  let lastReport = 0;
  function reportFailure(what: "redis" | "database", err: unknown): void {
    // At most one report a second: an outage must not flood the actor's mailbox.
    const at = now();
    if (!bridge || at - lastReport < 1000) return;
    lastReport = at;
    bridge.send({
      type: "DEPENDENCY_FAILED",
      what,
      error: err instanceof Error ? err.message : String(err),
    });
  }

  const events = createEventStore(sql);
  const sessions = createSessionStore(sql, {
    ...o.sessions,
    redis,
    keyspace,
    bus,
    eventStore: events,
    now,
    instanceId,
    log: log.child("store"),
    onDependencyError: reportFailure,
  });
  const mfa = createMfaStore(sql, { secretKey: deps.secretKey, now, ...o.mfa });
  const limiter = createRateLimiter({
    redis,
    keyspace,
    now,
    onError: (err) => reportFailure("redis", err),
  });
  const challenges = createChallengeStore({ redis, keyspace, now });

  // Per-attempt bookkeeping, dropped when the attempt ends.
  const queues = new Map<string, Promise<void>>();
  const versions = new Map<string, number>();
  const deadlines = new Map<string, number>();
  const errors = new Map<string, unknown>();
  const subscriptions = new Set<Promise<(() => Promise<void>) | null>>();
  const unsubscribing = new Set<Promise<void>>();

  function enqueue(attemptId: string, what: string, fn: () => Promise<void>): void {
    const previous = queues.get(attemptId) ?? Promise.resolve();
    const next = previous.then(fn).catch((err) => {
      log.error(`login attempt: cannot ${what}`, {
        attempt: attemptId,
        error: err instanceof Error ? err.message : String(err),
      });
    });
    queues.set(attemptId, next);
    next.then(() => {
      if (queues.get(attemptId) === next) queues.delete(attemptId);
    });
  }

  async function flush(attemptId: string): Promise<void> {
    while (queues.has(attemptId)) await queues.get(attemptId);
  }

  function ipLoginKey(ip: string | null, login: string): string[] {
    return ["login", sha256Hex(`${ip ?? "-"}\n${login.toLowerCase()}`).slice(0, 32)];
  }

  function stash<T>(attemptId: string, promise: Promise<T>): Promise<T> {
    return promise.catch((err) => {
      if (errors.size > 10_000) errors.clear();
      errors.set(attemptId, err);
      throw err;
    });
  }

  function toCode(r: MfaCheck): CodeResult {
    return r.ok
      ? { ok: true, backupCodesRemaining: r.backupCodesRemaining }
      : { ok: false, reason: r.reason, locked: r.locked, retryAfterMs: r.retryAfterMs };
  }

  const effects: SessionEffects = {
    checkCredentials(input) {
      return stash(
        input.attemptId,
        (async (): Promise<CredentialsResult> => {
          const user = await verifyCredentials(sql, {
            login: input.login,
            password: input.password,
          }, { hashing: o.hashing });
          if (!user) return { outcome: "invalid" };
          const status = await mfa.status(user.id);
          if (!status.enabled) {
            return {
              outcome: "ok",
              userId: user.id,
              mfaEnabled: false,
              mfaLocked: false,
              retryAfterMs: 0,
            };
          }
          const lock = await mfa.lockState(user.id);
          return {
            outcome: "ok",
            userId: user.id,
            mfaEnabled: true,
            mfaLocked: lock.locked,
            retryAfterMs: lock.retryAfterMs,
          };
        })(),
      );
    },
    verifyTotp(input) {
      return stash(
        input.attemptId,
        mfa.verifyTotp(input.userId, input.code, { ipAddress: input.ipAddress }).then(toCode),
      );
    },
    verifyBackupCode(input) {
      return stash(
        input.attemptId,
        mfa.verifyBackupCode(input.userId, input.code, { ipAddress: input.ipAddress })
          .then(toCode),
      );
    },
    issueSession(input) {
      return stash(
        input.attemptId,
        (async (): Promise<IssuedSession> => {
          const { session, token } = await sessions.create({
            userId: input.userId,
            remember: input.remember,
            ...input.device,
          });
          await recordLogin(sql, input.userId, { at: new Date(now()) });
          return { sessionId: session.id, token, expiresAt: session.expiresAt.getTime() };
        })(),
      );
    },
    record(context, event) {
      const aggregate = { type: "login", id: context.attemptId };
      const data = {
        login: context.login.slice(0, 254),
        ipAddress: context.device.ipAddress,
        userAgent: context.device.userAgent?.slice(0, 200) ?? null,
        remember: context.remember,
        mfaFailures: context.mfaFailures,
        reason: context.reason || null,
        sessionId: event === "Authenticated" ? context.session?.sessionId ?? null : null,
        instance: instanceId,
      };
      enqueue(context.attemptId, `record ${event}`, async () => {
        for (let attempt = 0;; attempt++) {
          const version = versions.get(context.attemptId) ??
            await events.currentVersion(aggregate);
          try {
            await events.append(aggregate, [{ type: event, data, userId: context.userId }], {
              expectedVersion: version,
            });
            versions.set(context.attemptId, version + 1);
            break;
          } catch (err) {
            // Another instance (a resumed copy) appended meanwhile: re-read and retry.
            versions.delete(context.attemptId);
            if ((err as RuntimeError).code !== "EVENT_VERSION_CONFLICT" || attempt >= 4) throw err;
          }
        }
        if (FINAL_RECORDS.has(event)) versions.delete(context.attemptId);
      });
    },
    saveChallenge(context) {
      if (context.userId === null) return;
      const deadline = deadlines.get(context.attemptId) ?? now() + context.mfaTimeoutMs;
      deadlines.set(context.attemptId, deadline);
      const record = {
        attemptId: context.attemptId,
        challengeHash: context.challengeHash,
        userId: context.userId,
        login: context.login,
        remember: context.remember,
        device: context.device,
        mfaFailures: context.mfaFailures,
        deadline,
      };
      enqueue(context.attemptId, "save the challenge", () => challenges.save(record));
    },
    forgetChallenge(context) {
      const id = context.attemptId;
      const had = deadlines.delete(id);
      enqueue(id, "forget the challenge", async () => {
        if (!had) return;
        await challenges.remove(id);
        await bus.publish(LOGIN_CHANNEL, JSON.stringify({ attemptId: id, origin: instanceId }));
      });
    },
    async cleanup() {
      const removed = await sessions.cleanupExpired();
      const attempts = await mfa.cleanupAttempts();
      return { sessions: removed, attempts };
    },
    async probe() {
      await ping(sql);
      if (redis) await redis.ping();
    },
    connect(b) {
      bridge = b;
      let closed = false;
      const track = (p: Promise<() => Promise<void>>) => {
        const settled = p.then((off) => {
          if (closed) {
            off();
            return null;
          }
          return off;
        }, (err) => {
          log.warn("sessions actor: cannot subscribe", {
            error: err instanceof Error ? err.message : String(err),
          });
          reportFailure("redis", err);
          return null;
        });
        subscriptions.add(settled);
      };
      track(sessions.subscribeRevocations((m) => {
        if (bridge === b) b.send({ type: "SESSIONS.REVOKED", count: m.sessions.length });
      }));
      track(bus.subscribe(LOGIN_CHANNEL, (text) => {
        let m: { attemptId?: unknown; origin?: unknown };
        try {
          m = JSON.parse(text);
        } catch {
          return;
        }
        if (typeof m?.attemptId !== "string" || m.origin === instanceId) return;
        deadlines.delete(m.attemptId);
        versions.delete(m.attemptId);
        errors.delete(m.attemptId);
        if (bridge === b) b.send({ type: "LOGIN.FORGET", attemptId: m.attemptId });
      }));
      return () => {
        closed = true;
        if (bridge === b) bridge = null;
        for (const s of subscriptions) {
          unsubscribing.add(s.then((off) => off?.()).catch(() => {}));
        }
        subscriptions.clear();
      };
    },
  };

  function requireBridge(): ActorBridge {
    if (!bridge) {
      throw new RuntimeError(
        "ACTOR_UNAVAILABLE",
        "Cannot log in: the sessions actor is not running; try again shortly",
      );
    }
    return bridge;
  }

  /** Waits until the attempt waits for a code or has ended. */
  async function settle(ref: AnyActorRef, predicate: (s: LoginSnapshot) => boolean) {
    try {
      return await waitFor(ref, (s) => predicate(s as LoginSnapshot), {
        timeout: settleTimeoutMs,
      }) as LoginSnapshot;
    } catch (err) {
      const snap = ref.getSnapshot() as LoginSnapshot;
      if (snap.status === "done") return snap;
      throw new RuntimeError("LOGIN_EXPIRED", "The login attempt ended; log in again", {
        cause: err,
      });
    }
  }

  async function answer(snap: LoginSnapshot, challenge: string): Promise<LoginResult> {
    const attemptId = snap.context.attemptId;
    await flush(attemptId);
    if (snap.status !== "done") {
      return {
        status: "mfa_required",
        challenge,
        expiresAt: new Date(deadlines.get(attemptId) ?? now() + snap.context.mfaTimeoutMs)
          .toISOString(),
        methods: ["totp", "backup_code"],
      };
    }
    const out = snap.output as LoginOutput;
    const cause = errors.get(attemptId);
    errors.delete(attemptId);
    switch (out.outcome) {
      case "authenticated":
        return {
          status: "authenticated",
          token: out.session!.token,
          userId: out.userId!,
          session: {
            id: out.session!.sessionId,
            expiresAt: new Date(out.session!.expiresAt).toISOString(),
          },
          backupCodesRemaining: out.backupCodesRemaining,
        };
      case "locked":
        throw new RuntimeError(
          "MFA_LOCKED",
          `Too many wrong codes: MFA is locked for this account; try again in ${
            Math.ceil(out.retryAfterMs / 1000)
          } s`,
          { details: { retryAfterMs: out.retryAfterMs } },
        );
      case "expired":
        throw new RuntimeError("LOGIN_EXPIRED", "The login attempt expired; log in again");
      default:
        if (cause instanceof RuntimeError) throw cause;
        if (cause) throw cause;
        if (out.reason === "invalid_credentials") {
          throw new RuntimeError("INVALID_CREDENTIALS", "Invalid login or password");
        }
        if (out.reason === "too_many_codes") {
          throw new RuntimeError(
            "MFA_INVALID_CODE",
            "The code is invalid, and this login attempt has used up its tries; log in again",
            { details: { reason: "invalid", attemptsLeft: 0 } },
          );
        }
        throw new RuntimeError(
          "LOGIN_EXPIRED",
          `The login attempt ended (${out.reason}); log in again`,
        );
    }
  }

  async function login(
    input: { login: string; password: string; remember?: boolean },
    ctx: RequestContext = {},
  ): Promise<LoginResult> {
    const b = requireBridge();
    const d = device(ctx);
    const key = ipLoginKey(d.ipAddress, input.login);
    const [perIp, perIpLogin] = await Promise.all([
      limiter.hit(["login-ip", d.ipAddress ?? "unknown"], limits.perIp),
      limiter.hit(key, limits.perIpLogin),
    ]);
    for (const decision of [perIp, perIpLogin]) {
      if (!decision.allowed) {
        log.warn("login rate limited", { ip: d.ipAddress, count: decision.count });
        throw new RuntimeError(
          "RATE_LIMITED",
          `Too many login attempts; try again in ${Math.ceil(decision.retryAfterMs / 1000)} s`,
          { details: { retryAfterMs: decision.retryAfterMs } },
        );
      }
    }
    const attemptId = crypto.randomUUID();
    const challenge = `${attemptId}.${randomToken(32)}`;
    b.send({
      type: "LOGIN.START",
      attemptId,
      input: {
        attemptId,
        login: input.login,
        password: input.password,
        challengeHash: sha256Hex(challenge),
        remember: input.remember ?? false,
        device: d,
        ...loginOptions,
      },
    });
    const ref = b.system.get(loginActorId(attemptId));
    if (!ref) {
      throw new RuntimeError(
        "ACTOR_UNAVAILABLE",
        "Cannot log in: too many login attempts are in progress; try again shortly",
      );
    }
    const snap = await settle(
      ref,
      (s) => s.status === "done" || s.matches({ mfa_required: "waiting" }),
    );
    const result = await answer(snap, challenge);
    if (result.status === "authenticated") await limiter.reset(key);
    return result;
  }

  async function verifyMfa(
    input: { challenge: string; code: string; method?: "totp" | "backup_code" },
    ctx: RequestContext = {},
  ): Promise<LoginResult> {
    const b = requireBridge();
    const m = typeof input.challenge === "string" ? CHALLENGE_RE.exec(input.challenge) : null;
    const expired = () =>
      new RuntimeError("LOGIN_EXPIRED", "Unknown or expired login challenge; log in again");
    if (!m) throw expired();
    const attemptId = m[1];
    const hash = sha256Hex(input.challenge);
    let ref = b.system.get(loginActorId(attemptId));
    if (!ref || (ref.getSnapshot() as LoginSnapshot).status !== "active") {
      // Started on another instance (or this one restarted): resume from the record.
      const record = await challenges.load(attemptId);
      if (!record || !sameHex(record.challengeHash, hash)) throw expired();
      deadlines.set(attemptId, record.deadline);
      b.send({
        type: "LOGIN.START",
        attemptId,
        input: {
          attemptId,
          login: record.login,
          challengeHash: record.challengeHash,
          remember: record.remember,
          device: record.device,
          ...loginOptions,
          resume: {
            userId: record.userId,
            mfaFailures: record.mfaFailures,
            remainingMs: record.deadline - now(),
          },
        },
      });
      ref = b.system.get(loginActorId(attemptId));
      if (!ref) {
        throw new RuntimeError("ACTOR_UNAVAILABLE", "Cannot continue the login; try again shortly");
      }
      await settle(ref, (s) => s.status === "done" || s.matches({ mfa_required: "waiting" }));
    }
    const before = ref.getSnapshot() as LoginSnapshot;
    if (!sameHex(before.context.challengeHash, hash)) throw expired();
    if (before.status !== "active") return await answer(before, input.challenge);
    if (!before.matches({ mfa_required: "waiting" })) {
      throw new RuntimeError("LOGIN_BUSY", "A code for this login is being checked; wait for it");
    }
    const rejections = before.context.rejections;
    ref.send(
      input.method === "backup_code"
        ? { type: "SUBMIT_BACKUP_CODE", code: String(input.code), ipAddress: ctx.ipAddress }
        : { type: "SUBMIT_TOTP", code: String(input.code), ipAddress: ctx.ipAddress },
    );
    const snap = await settle(
      ref,
      (s) =>
        s.status === "done" ||
        (s.matches({ mfa_required: "waiting" }) && s.context.rejections > rejections),
    );
    if (snap.status !== "done") {
      await flush(attemptId);
      const rejection = snap.context.lastRejection!;
      throw new RuntimeError("MFA_INVALID_CODE", `The code is ${rejection.reason}`, {
        details: { reason: rejection.reason, attemptsLeft: rejection.attemptsLeft },
      });
    }
    const result = await answer(snap, input.challenge);
    if (result.status === "authenticated") {
      await limiter.reset(ipLoginKey(snap.context.device.ipAddress, snap.context.login));
    }
    return result;
  }

  async function authenticate(
    token: string | null | undefined,
    ctx: RequestContext = {},
  ): Promise<AuthContext> {
    if (!token) {
      throw new RuntimeError(
        "UNAUTHORIZED",
        "Authentication required: send a Bearer token or the session cookie",
      );
    }
    const check = await sessions.validate(token, ctx);
    if (check.ok) return { token, session: check.session };
    switch (check.reason) {
      case "expired":
        throw new RuntimeError("SESSION_EXPIRED", "The session has expired; log in again");
      case "revoked":
        throw new RuntimeError("SESSION_REVOKED", "The session was revoked; log in again");
      case "device_mismatch":
        throw new RuntimeError(
          "SESSION_DEVICE_MISMATCH",
          "The session belongs to another device; log in on this one",
        );
      default:
        throw new RuntimeError("SESSION_INVALID", "The session token is not valid; log in again");
    }
  }

  async function register(input: CreateUserInput, ctx: RequestContext = {}): Promise<User> {
    const decision = await limiter.hit(
      ["register", ctx.ipAddress ?? "unknown"],
      limits.registerPerIp,
    );
    if (!decision.allowed) {
      throw new RuntimeError(
        "RATE_LIMITED",
        `Too many registrations from this address; try again in ${
          Math.ceil(decision.retryAfterMs / 1000)
        } s`,
        { details: { retryAfterMs: decision.retryAfterMs } },
      );
    }
    return await createUser(sql, input, { hashing: o.hashing });
  }

  async function enrollMfa(auth: AuthContext): Promise<Enrollment> {
    const user = await getUserById(sql, auth.session.userId);
    if (!user) throw new RuntimeError("USER_NOT_FOUND", "The account no longer exists");
    return await mfa.beginEnrollment(user.id, { account: user.username });
  }

  async function confirmMfa(
    auth: AuthContext,
    code: string,
    ctx: RequestContext = {},
  ): Promise<{ backupCodes: string[] }> {
    const r = await mfa.confirmEnrollment(auth.session.userId, code, { ipAddress: ctx.ipAddress });
    if (!r.ok) {
      if (r.reason === "not_enrolled") {
        const status = await mfa.status(auth.session.userId);
        throw status.enabled
          ? new RuntimeError("MFA_ALREADY_ENABLED", "MFA is already enabled")
          : new RuntimeError(
            "MFA_NOT_ENROLLED",
            "Start an enrolment first (POST /auth/mfa/enroll)",
          );
      }
      throw codeRefusal(r, "confirm MFA");
    }
    await sessions.revokeAllForUser(auth.session.userId, {
      exceptId: auth.session.id,
      reason: "mfa_changed",
    });
    return { backupCodes: r.backupCodes! };
  }

  async function regenerateBackupCodes(
    auth: AuthContext,
    code: string,
    ctx: RequestContext = {},
  ): Promise<{ backupCodes: string[] }> {
    const r = await mfa.regenerateBackupCodes(auth.session.userId, code, {
      ipAddress: ctx.ipAddress,
    });
    if (!r.ok) throw codeRefusal(r, "regenerate backup codes");
    return { backupCodes: r.backupCodes! };
  }

  async function disableMfa(
    auth: AuthContext,
    input: { code: string; method?: "totp" | "backup_code" },
    ctx: RequestContext = {},
  ): Promise<void> {
    const r = await mfa.disable(auth.session.userId, input.code, {
      ipAddress: ctx.ipAddress,
      method: input.method,
    });
    if (!r.ok) throw codeRefusal(r, "disable MFA");
    await sessions.revokeAllForUser(auth.session.userId, {
      exceptId: auth.session.id,
      reason: "mfa_changed",
    });
  }

  async function logout(auth: AuthContext): Promise<void> {
    await sessions.revoke(auth.session.id, { userId: auth.session.userId, reason: "logout" });
  }

  async function refresh(auth: AuthContext): Promise<Session> {
    const s = await sessions.refresh(auth.session.id);
    if (!s) throw new RuntimeError("SESSION_EXPIRED", "The session can no longer be refreshed");
    return s;
  }

  function listSessions(auth: AuthContext): Promise<Session[]> {
    return sessions.listForUser(auth.session.userId);
  }

  async function revokeSession(auth: AuthContext, sessionId: string): Promise<void> {
    const ok = await sessions.revoke(sessionId, { userId: auth.session.userId, reason: "revoked" });
    if (!ok) {
      throw new RuntimeError("SESSION_NOT_FOUND", "No such live session among yours");
    }
  }

  async function close(): Promise<void> {
    while (queues.size) await Promise.all([...queues.values()]);
    for (const s of subscriptions) {
      const off = await s;
      await off?.().catch(() => {});
    }
    subscriptions.clear();
    await Promise.all(unsubscribing);
    unsubscribing.clear();
  }

  return {
    sessions,
    mfa,
    events,
    effects,
    supervisorInput: o.supervisor ?? {},
    get connected() {
      return bridge !== null;
    },
    now,
    register,
    login,
    verifyMfa,
    authenticate,
    enrollMfa,
    confirmMfa,
    regenerateBackupCodes,
    disableMfa,
    logout,
    refresh,
    listSessions,
    revokeSession,
    close,
  };
}

/** The parts of a login actor's snapshot this module reads. */
interface LoginSnapshot {
  status: "active" | "done" | "error" | "stopped";
  context: LoginContext;
  output?: LoginOutput;
  matches(value: unknown): boolean;
}
