/**
 * The sessions concern's module API: what the HTTP routes call (register, login, MFA,
 * session listing and revocation) and the effects the sessions actor is built from.
 *
 * Login attempts run as `login` actors held by the sessions actor (the session
 * supervisor). This module finds that actor through `deps.sessionsActor` (the runtime's
 * registry: the runtime supervisor's chart knows whether it runs), asks it to spawn an
 * attempt, then waits until the attempt's chart says it can be answered: ended, or waiting
 * for a code with its journal written (machines/login.ts `awaitingCode`). Until the actor
 * runs, logins answer ACTOR_UNAVAILABLE (503). Token validation, refresh and revocation go
 * straight to the session store: they are the hot path and need no statechart.
 *
 * Nothing about an attempt is kept here: its deadline, failures, event-store version and
 * the crash that ended it are in its chart's context; the effects below get them as input
 * and answer with their results. The `writeJournal` effect writes what the chart noted (its
 * events, the resumable challenge record, the record's removal) in order.
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
import { type AnyActorRef, waitFor } from "xstate";
import { describeError, ERROR_STATUS, type ErrorCode, RuntimeError } from "../../lib/errors.ts";
import { type Logger, silentLogger } from "../../lib/log.ts";
import type { MessageAuth } from "../../lib/message_auth.ts";
import { createSecretBox } from "../../lib/secret_box.ts";
import type { PasswordOptions } from "../../lib/password.ts";
import {
  awaitingCode,
  type CodeCheckInput,
  type CodeResult,
  type CredentialsInput,
  type CredentialsResult,
  isMfaMethod,
  type IssuedSession,
  type IssueInput,
  type JournalEntry,
  type JournalInput,
  type JournalOutput,
  type LoginContext,
  type LoginDevice,
  type LoginFault,
  type LoginInput,
  type LoginOutput,
  MFA_METHOD_NAMES,
  type MfaMethod,
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
import type { Keyspace, RedisClient } from "../../store/redis.ts";
import { type AccessService, createAccessService } from "./access.ts";
import { randomToken } from "../../store/secure_random.ts";
import {
  createSessionStore,
  type DeviceInfo,
  type Session,
  type SessionAuthority,
  type SessionStore,
  type SessionStoreOptions,
  type ValidSession,
} from "../../store/sessions.ts";
import type { Sql } from "../../store/types.ts";
import {
  checkPassword,
  createUser,
  type CreateUserInput,
  getUserById,
  recordLogin,
  type User,
  verifyCredentials,
} from "../../store/users.ts";
import { createChallengeStore } from "./challenges.ts";
import { createFactors, type Factors, type WebAuthnSettings } from "./factors.ts";
import type { Mailer } from "./mailer.ts";
import type { Passkey } from "../../store/webauthn.ts";
import type {
  PublicKeyCredentialCreationOptionsJSON,
  PublicKeyCredentialRequestOptionsJSON,
} from "@simplewebauthn/server";
import { createRateLimiter, type RateLimit } from "./rate_limit.ts";
import { ping } from "../../store/database_stats.ts";
import { isConnectionError } from "../../lib/db_errors.ts";
import { createGate } from "../../lib/gate.ts";
import { DEFAULT_LIMITS } from "../../lib/limits.ts";

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
    journalTimeoutMs?: number;
  };
  /**
   * Attempt limits; defaults: 10 per IP+login, 100 per IP and 50 per login (from every
   * address, counting only attempts the per-address limits let through) per 15 min, 20
   * registrations per IP per hour, 10 failed re-authentications per user per 15 min.
   */
  rateLimits?: {
    perIpLogin?: RateLimit;
    perLogin?: RateLimit;
    perIp?: RateLimit;
    registerPerIp?: RateLimit;
    reauthPerUser?: RateLimit;
    /** E-mail codes sent per user; 5 per 15 min. */
    emailPerUser?: RateLimit;
    /** E-mail codes sent per address; 5 per 15 min. */
    emailPerAddress?: RateLimit;
  };
  /** scrypt cost of password hashes (tests use `{ ln: 10 }`). */
  hashing?: PasswordOptions;
  /**
   * Password hashes computed at once and checks waiting for one (lib/limits.ts); beyond
   * the queue a login, re-authentication or registration answers 503 SERVER_BUSY.
   */
  hashLimits?: { concurrency: number; queue: number };
  /** Input of the sessions actor (cleanup interval, probe backoff, login cap). */
  supervisor?: SessionSupervisorInput;
}

/** What {@linkcode createSessionService} needs. */
export interface SessionServiceDeps {
  /** Database pool. */
  sql: Sql;
  /** Redis command connection, or null (single instance, per-process caches). */
  redis: RedisClient | null;
  /** Key namer. */
  keyspace: Keyspace;
  /** Message bus (revocations, finished logins). */
  bus: MessageBus;
  /** The runtime's 32-byte secret key (seals TOTP secrets). */
  secretKey: Uint8Array;
  /** Seals what is kept in Redis (session cache, login attempts); required with `redis`. */
  auth?: MessageAuth | null;
  /** RS_SECRET_KEY_PREVIOUS during a rotation: MFA secrets sealed with it still open. */
  previousSecretKey?: Uint8Array | null;
  /** This instance's id. */
  instanceId?: string;
  /** Clock in ms; the composition root passes the runtime's. */
  now?: () => number;
  /** Log. */
  log?: Logger;
  /** Tunables. */
  options?: SessionServiceOptions;
  /** Passkeys' relying party (settings WEBAUTHN_*); default localhost:8080. */
  webauthn?: WebAuthnSettings;
  /** The e-mail code sender (SMTP_URL), or null: e-mail codes are off. */
  mailer?: Mailer | null;
  /**
   * The running sessions actor (the runtime supervisor's child `sessions`, built from
   * {@linkcode SessionService.effects}), or undefined while it is not running. Logins go
   * through it; failures the request path sees are reported to it.
   */
  sessionsActor: () => AnyActorRef | undefined;
}

/** The second factors a re-authentication takes. */
export type ReauthMethod = "totp" | "backup_code" | "webauthn" | "email";

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
    methods: MfaMethod[];
  };

/** The effects the sessions actor and its login actors are built from. */
export interface SessionEffects {
  /** Password check plus MFA state, and when it finished. */
  checkCredentials(input: CredentialsInput): Promise<CredentialsResult>;
  /** Code checks of a login, one per method of machines/login.ts `MFA_METHODS`. */
  verifiers: { readonly [M in MfaMethod]: (input: CodeCheckInput) => Promise<CodeResult> };
  /** Creates the session at the end of a login. */
  issueSession(input: IssueInput): Promise<IssuedSession>;
  /** Writes a login's journal entries in order (events, challenge record, its removal). */
  writeJournal(input: JournalInput): Promise<JournalOutput>;
  /** One cleanup round. */
  cleanup(): Promise<CleanupReport>;
  /** Health probe of PostgreSQL and Redis. */
  probe(): Promise<void>;
  /** Subscribes the sessions actor (its feed) to the bus; returns the unsubscribe. */
  subscribe(send: (event: SessionSupervisorEvent) => void): () => void;
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
  /** True while the sessions actor runs (logins need it). */
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
    input: { challenge: string; code: string; method?: MfaMethod },
    ctx?: RequestContext,
  ): Promise<LoginResult>;
  /** Validates a bearer token; throws the 401 that fits. */
  authenticate(token: string | null | undefined, ctx?: RequestContext): Promise<AuthContext>;
  /** A session's role and last re-authentication, from PostgreSQL (null: not live there). */
  authority(token: string): Promise<SessionAuthority | null>;
  /**
   * Re-authentication in a live session: the password, and a TOTP (or backup) code when MFA
   * is on. Records `reauthenticated_at` on the session; REAUTH_FAILED when wrong.
   */
  reauthenticate(
    auth: AuthContext,
    input: { password: string; code?: string; method?: ReauthMethod },
    ctx?: RequestContext,
  ): Promise<{ reauthenticatedAt: Date }>;
  /**
   * What a re-authentication with a passkey or an e-mail code answers: a passkey's options
   * (bound to the session), or where the code was sent.
   */
  reauthChallenge(
    auth: AuthContext,
    method: "webauthn" | "email",
  ): Promise<
    { options: PublicKeyCredentialRequestOptionsJSON } | { sentTo: string; expiresAt: string }
  >;
  /** The caller's account and what the session may do. */
  me(auth: AuthContext): Promise<{ user: User; authority: SessionAuthority }>;
  /** Roles and machine tokens (admin routes, CLI). */
  readonly access: AccessService;
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
  /** Passkeys and e-mail codes (actors/sessions/factors.ts). */
  readonly factors: Factors;
  /** Starts a passkey login: a login attempt waiting for a passkey, and its options. */
  passkeyLogin(
    ctx?: RequestContext,
  ): Promise<
    { challenge: string; expiresAt: string; options: PublicKeyCredentialRequestOptionsJSON }
  >;
  /** Options for a passkey as the second factor of login attempt `challenge`. */
  passkeyOptions(challenge: string): Promise<PublicKeyCredentialRequestOptionsJSON>;
  /** Sends an e-mail code for login attempt `challenge`. */
  sendLoginCode(challenge: string): Promise<{ sentTo: string; expiresAt: string }>;
  /** The caller's passkeys. */
  listPasskeys(auth: AuthContext): Promise<Passkey[]>;
  /** Options to register a passkey (bound to the caller's session). */
  passkeyRegistrationOptions(auth: AuthContext): Promise<PublicKeyCredentialCreationOptionsJSON>;
  /** Verifies and stores a new passkey. */
  registerPasskey(auth: AuthContext, input: { name: string; response: unknown }): Promise<Passkey>;
  /** Removes one of the caller's passkeys. */
  removePasskey(auth: AuthContext, id: number): Promise<void>;
  /** Sends a code to the account's address to turn e-mail codes on. */
  startEmailCodes(auth: AuthContext): Promise<{ sentTo: string; expiresAt: string }>;
  /** Turns e-mail codes on with the code sent. */
  confirmEmailCodes(auth: AuthContext, code: string, ctx?: RequestContext): Promise<void>;
  /** Turns e-mail codes off. */
  disableEmailCodes(auth: AuthContext): Promise<void>;
  /** Waits for journal writes in flight and drops bus subscriptions. */
  close(): Promise<void>;
}

const MINUTE = 60_000;
const CHALLENGE_RE =
  /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.[A-Za-z0-9_-]{43}$/;

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
  const { sql, redis, keyspace, bus, sessionsActor } = deps;
  const now = deps.now ?? Date.now;
  const log = deps.log ?? silentLogger;
  const instanceId = deps.instanceId ?? "local";
  const o = deps.options ?? {};
  const limits = {
    perIpLogin: o.rateLimits?.perIpLogin ?? { limit: 10, windowMs: 15 * MINUTE },
    perIp: o.rateLimits?.perIp ?? { limit: 100, windowMs: 15 * MINUTE },
    perLogin: o.rateLimits?.perLogin ?? { limit: 50, windowMs: 15 * MINUTE },
    registerPerIp: o.rateLimits?.registerPerIp ?? { limit: 20, windowMs: 60 * MINUTE },
    reauthPerUser: o.rateLimits?.reauthPerUser ?? { limit: 10, windowMs: 15 * MINUTE },
  };
  const loginOptions = {
    maxMfaAttempts: o.login?.maxMfaAttempts ?? 5,
    mfaTimeoutMs: o.login?.mfaTimeoutMs ?? 5 * MINUTE,
    credentialsTimeoutMs: o.login?.credentialsTimeoutMs ?? 15_000,
    verifyTimeoutMs: o.login?.verifyTimeoutMs ?? 15_000,
    journalTimeoutMs: o.login?.journalTimeoutMs ?? 15_000,
  };
  // How long an HTTP request waits for an attempt to settle: longer than its longest step
  // plus the journal write that follows it.
  const settleTimeoutMs =
    Math.max(loginOptions.credentialsTimeoutMs, loginOptions.verifyTimeoutMs) +
    loginOptions.journalTimeoutMs + 5_000;

  // The request path reports every failure it sees; the chart decides whether it is news
  // (only in `running`), so nothing here needs to remember earlier reports.
  function reportFailure(what: "redis" | "database", err: unknown): void {
    sessionsActor()?.send(
      {
        type: "DEPENDENCY_FAILED",
        what,
        error: err instanceof Error ? err.message : String(err),
      } satisfies SessionSupervisorEvent,
    );
  }

  const events = createEventStore(sql);
  const sessions = createSessionStore(sql, {
    ...o.sessions,
    redis,
    auth: deps.auth,
    keyspace,
    bus,
    eventStore: events,
    now,
    instanceId,
    log: log.child("store"),
    onDependencyError: reportFailure,
  });
  const mfa = createMfaStore(sql, {
    box: createSecretBox(deps.secretKey, {
      previousKeys: deps.previousSecretKey ? [deps.previousSecretKey] : [],
    }),
    now,
    ...o.mfa,
  });
  const limiter = createRateLimiter({
    redis,
    keyspace,
    now,
    onError: (err) => reportFailure("redis", err),
  });
  const challenges = createChallengeStore({ redis, keyspace, now, auth: deps.auth });
  const factors = createFactors({
    sql,
    mfa,
    limiter,
    now,
    log: log.child("factors"),
    secretKey: deps.secretKey,
    webauthn: deps.webauthn ??
      { rpId: "localhost", rpName: "RootStream", origins: ["http://localhost:8080"] },
    mailer: deps.mailer ?? null,
    limits: {
      emailPerUser: o.rateLimits?.emailPerUser ?? { limit: 5, windowMs: 15 * MINUTE },
      emailPerAddress: o.rateLimits?.emailPerAddress ?? { limit: 5, windowMs: 15 * MINUTE },
    },
  });
  // scrypt takes 32 MiB and ~160 ms a hash: a login storm waits here, a bounded number of
  // checks at a time, instead of holding memory for every attempt at once.
  const hashGate = createGate({
    limit: o.hashLimits?.concurrency ?? DEFAULT_LIMITS.hashConcurrency,
    queue: o.hashLimits?.queue ?? DEFAULT_LIMITS.hashQueue,
    what: "Password checks",
  });
  const access = createAccessService({
    sql,
    events,
    now,
    log: log.child("access"),
    hashing: o.hashing,
  });

  // Resources, not lifecycle: journal writes still running (a stopped attempt does not wait
  // for its last write; close() does) and the feed's bus subscriptions (close() ends those a
  // still-running actor holds, and waits for every unsubscribe).
  const writesInFlight = new Set<Promise<unknown>>();
  const openFeeds = new Set<() => void>();
  const unsubscribing = new Set<Promise<void>>();

  function ipLoginKey(ip: string | null, login: string): string[] {
    return ["login", sha256Hex(`${ip ?? "-"}\n${login.toLowerCase()}`).slice(0, 32)];
  }

  function loginKey(login: string): string[] {
    return ["login-account", sha256Hex(login.toLowerCase()).slice(0, 32)];
  }

  function rateLimited(decision: { count: number; retryAfterMs: number }, ip: string | null) {
    log.warn("login rate limited", { ip, count: decision.count });
    return new RuntimeError(
      "RATE_LIMITED",
      `Too many login attempts; try again in ${Math.ceil(decision.retryAfterMs / 1000)} s`,
      { details: { retryAfterMs: decision.retryAfterMs } },
    );
  }

  /**
   * What a crashed login effect hands its chart: a RuntimeError (kept as code, message and
   * details in the chart's context). Unexpected errors are logged here, with the attempt.
   */
  function asFault(attemptId: string, step: string, err: unknown): RuntimeError {
    if (err instanceof RuntimeError) return err;
    if (isConnectionError(err)) {
      log.warn(`login attempt: cannot ${step}: the database is unreachable`, {
        attempt: attemptId,
        error: describeError(err),
      });
      return new RuntimeError("DATABASE_UNAVAILABLE", "The database is unreachable; try again", {
        cause: err,
        details: { retryAfterMs: 2000 },
      });
    }
    log.error(`login attempt: cannot ${step}`, {
      attempt: attemptId,
      error: err instanceof Error ? (err.stack ?? err.message) : String(err),
    });
    return new RuntimeError("INTERNAL", "Internal error; it has been logged", { cause: err });
  }

  function faulting<T>(attemptId: string, step: string, run: () => Promise<T>): Promise<T> {
    return run().catch((err) => {
      throw asFault(attemptId, step, err);
    });
  }

  function toCode(r: MfaCheck): CodeResult {
    return r.ok
      ? { ok: true, backupCodesRemaining: r.backupCodesRemaining }
      : { ok: false, reason: r.reason, locked: r.locked, retryAfterMs: r.retryAfterMs };
  }

  /** Appends one event at the version the chart reached (re-read when unknown or moved on). */
  async function appendRecord(
    input: JournalInput,
    entry: Extract<JournalEntry, { kind: "record" }>,
    known: number | null,
  ): Promise<number> {
    const aggregate = { type: "login", id: input.attemptId };
    const data = {
      login: input.login.slice(0, 254),
      ipAddress: input.device.ipAddress,
      userAgent: input.device.userAgent?.slice(0, 200) ?? null,
      remember: input.remember,
      mfaFailures: entry.mfaFailures,
      reason: entry.reason,
      sessionId: entry.sessionId,
      instance: instanceId,
    };
    let version = known;
    for (let attempt = 0;; attempt++) {
      version ??= await events.currentVersion(aggregate);
      try {
        await events.append(aggregate, [{ type: entry.event, data, userId: entry.userId }], {
          expectedVersion: version,
        });
        return version + 1;
      } catch (err) {
        // Another instance (a resumed copy) appended meanwhile: re-read and retry.
        version = null;
        if ((err as RuntimeError).code !== "EVENT_VERSION_CONFLICT" || attempt >= 4) throw err;
      }
    }
  }

  async function writeEntry(
    input: JournalInput,
    entry: JournalEntry,
    version: number | null,
  ): Promise<number | null> {
    switch (entry.kind) {
      case "record":
        return await appendRecord(input, entry, version);
      case "save_challenge":
        await challenges.save({
          attemptId: input.attemptId,
          challengeHash: input.challengeHash,
          userId: entry.userId,
          passwordless: input.passwordless,
          login: input.login,
          remember: input.remember,
          device: input.device,
          mfaFailures: entry.mfaFailures,
          deadline: entry.deadline,
        });
        return version;
      case "forget_challenge":
        await challenges.remove(input.attemptId);
        await bus.publish(
          LOGIN_CHANNEL,
          JSON.stringify({ attemptId: input.attemptId, origin: instanceId }),
        );
        return version;
    }
  }

  function entryName(entry: JournalEntry): string {
    return entry.kind === "record" ? `record ${entry.event}` : entry.kind.replace("_", " the ");
  }

  async function writeJournal(input: JournalInput): Promise<JournalOutput> {
    let version = input.version;
    const failures: string[] = [];
    for (const entry of input.entries) {
      try {
        version = await writeEntry(input, entry, version);
      } catch (err) {
        // Logged and reported to the chart, which counts it; the attempt goes on.
        if (entry.kind === "record") version = null;
        log.error(`login attempt: cannot ${entryName(entry)}`, {
          attempt: input.attemptId,
          error: describeError(err),
        });
        failures.push(`${entryName(entry)}: ${describeError(err)}`);
      }
    }
    return { version, failures };
  }

  const effects: SessionEffects = {
    checkCredentials(input) {
      return faulting(input.attemptId, "check the password", async () => {
        const user = await hashGate.run(() =>
          verifyCredentials(sql, {
            login: input.login,
            password: input.password,
          }, { hashing: o.hashing })
        );
        if (!user) return { outcome: "invalid" };
        const status = await mfa.status(user.id);
        const enabled = status.enabled || await factors.hasFactor(user.id);
        const lock = enabled ? await mfa.lockState(user.id) : null;
        return {
          outcome: "ok",
          userId: user.id,
          mfaEnabled: enabled,
          mfaLocked: lock?.locked ?? false,
          retryAfterMs: lock?.retryAfterMs ?? 0,
          at: now(),
        };
      });
    },
    verifiers: {
      totp: (input) =>
        faulting(
          input.attemptId,
          "check a TOTP code",
          () =>
            mfa.verifyTotp(input.userId!, input.code, { ipAddress: input.ipAddress }).then(toCode),
        ),
      backup_code: (input) =>
        faulting(
          input.attemptId,
          "check a backup code",
          () =>
            mfa.verifyBackupCode(input.userId!, input.code, { ipAddress: input.ipAddress })
              .then(toCode),
        ),
      webauthn: (input) =>
        faulting(input.attemptId, "check a passkey", () => factors.verifiers.webauthn(input)),
      email: (input) =>
        faulting(input.attemptId, "check an e-mail code", () => factors.verifiers.email(input)),
    },
    issueSession(input) {
      return faulting(input.attemptId, "issue the session", async () => {
        const { session, token } = await sessions.create({
          userId: input.userId,
          remember: input.remember,
          ...input.device,
        });
        await recordLogin(sql, input.userId, { at: new Date(now()) });
        return { sessionId: session.id, token, expiresAt: session.expiresAt.getTime() };
      });
    },
    writeJournal(input) {
      const write = writeJournal(input);
      writesInFlight.add(write);
      write.finally(() => writesInFlight.delete(write)).catch(() => {});
      return write;
    },
    async cleanup() {
      const removed = await sessions.cleanupExpired();
      const attempts = await mfa.cleanupAttempts();
      // Expired passkey challenges and e-mail codes: already refused by their checks, dropped here.
      await factors.passkeys.cleanup(now());
      await factors.emailCodes.cleanup(now());
      return { sessions: removed, attempts };
    },
    async probe() {
      await ping(sql);
      if (redis) await redis.ping();
    },
    subscribe(send) {
      let open = true;
      const subscribed: Promise<(() => Promise<void>) | null>[] = [];
      const track = (p: Promise<() => Promise<void>>) => {
        subscribed.push(p.catch((err) => {
          log.warn("sessions actor: cannot subscribe", { error: describeError(err) });
          if (open) send({ type: "DEPENDENCY_FAILED", what: "redis", error: describeError(err) });
          return null;
        }));
      };
      track(sessions.subscribeRevocations((m) => {
        if (open) send({ type: "SESSIONS.REVOKED", count: m.sessions.length });
      }));
      track(bus.subscribe(LOGIN_CHANNEL, (text) => {
        let m: { attemptId?: unknown; origin?: unknown };
        try {
          m = JSON.parse(text);
        } catch {
          return;
        }
        if (typeof m?.attemptId !== "string" || m.origin === instanceId) return;
        if (open) send({ type: "LOGIN.FORGET", attemptId: m.attemptId });
      }));
      const stop = () => {
        if (!open) return;
        open = false;
        openFeeds.delete(stop);
        for (const s of subscribed) {
          const done = s.then((off) => off?.()).catch(() => {});
          unsubscribing.add(done);
          done.then(() => unsubscribing.delete(done));
        }
      };
      openFeeds.add(stop);
      return stop;
    },
  };

  function requireActor(action: string): AnyActorRef {
    const actor = sessionsActor();
    if (!actor) {
      throw new RuntimeError(
        "ACTOR_UNAVAILABLE",
        `Cannot ${action}: the sessions actor is not running; try again shortly`,
      );
    }
    return actor;
  }

  /** Asks the sessions actor for a login actor; refused when too many are in progress. */
  function startAttempt(actor: AnyActorRef, input: LoginInput, action: string): AnyActorRef {
    actor.send({ type: "LOGIN.START", attemptId: input.attemptId, input });
    const ref = actor.system.get(loginActorId(input.attemptId)) as AnyActorRef | undefined;
    if (!ref) {
      throw new RuntimeError(
        "ACTOR_UNAVAILABLE",
        `Cannot ${action}: too many login attempts are in progress; try again shortly`,
      );
    }
    return ref;
  }

  /** Waits until the attempt's chart says it can be answered. */
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

  function answerable(s: LoginSnapshot): boolean {
    return s.status !== "active" || awaitingCode(s);
  }

  function faultError(fault: LoginFault): RuntimeError {
    const code = fault.code !== null && Object.hasOwn(ERROR_STATUS, fault.code)
      ? fault.code as ErrorCode
      : "INTERNAL";
    return new RuntimeError(code, fault.message, fault.details ? { details: fault.details } : {});
  }

  function answer(snap: LoginSnapshot, challenge: string): LoginResult {
    if (snap.status !== "done") {
      return {
        status: "mfa_required",
        challenge,
        expiresAt: new Date(snap.context.deadline!).toISOString(),
        methods: [...MFA_METHOD_NAMES],
      };
    }
    const out = snap.output as LoginOutput;
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
        if (out.error) throw faultError(out.error);
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
    const actor = requireActor("log in");
    const d = device(ctx);
    const key = ipLoginKey(d.ipAddress, input.login);
    const [perIp, perIpLogin] = await Promise.all([
      limiter.hit(["login-ip", d.ipAddress ?? "unknown"], limits.perIp),
      limiter.hit(key, limits.perIpLogin),
    ]);
    for (const decision of [perIp, perIpLogin]) {
      if (!decision.allowed) throw rateLimited(decision, d.ipAddress);
    }
    // The account-wide limit (guessing one password from many addresses) counts only what
    // the per-address limits let through: one client adds at most perIpLogin.limit to it,
    // so a flood from one address can never lock the account for everyone else.
    const perLogin = await limiter.hit(loginKey(input.login), limits.perLogin);
    if (!perLogin.allowed) throw rateLimited(perLogin, d.ipAddress);
    const attemptId = crypto.randomUUID();
    const challenge = `${attemptId}.${randomToken(32)}`;
    const ref = startAttempt(actor, {
      attemptId,
      login: input.login,
      password: input.password,
      challengeHash: sha256Hex(challenge),
      remember: input.remember ?? false,
      device: d,
      startedAt: now(),
      ...loginOptions,
    }, "log in");
    const snap = await settle(ref, answerable);
    const result = answer(snap, challenge);
    if (result.status === "authenticated") {
      await Promise.all([limiter.reset(key), limiter.reset(loginKey(input.login))]);
    }
    if (result.status === "mfa_required" && snap.context.userId !== null) {
      // The methods this account has, in the chart's order.
      const userId = snap.context.userId;
      const [totp, others] = await Promise.all([mfa.status(userId), factors.methodsOf(userId)]);
      const has = new Set<MfaMethod>(others);
      if (totp.enabled) has.add("totp").add("backup_code");
      result.methods = MFA_METHOD_NAMES.filter((m) => has.has(m));
    }
    return result;
  }

  async function verifyMfa(
    input: { challenge: string; code: string; method?: MfaMethod },
    ctx: RequestContext = {},
  ): Promise<LoginResult> {
    const actor = requireActor("continue the login");
    const method = input.method ?? "totp";
    if (!isMfaMethod(method)) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Invalid request: method must be one of ${MFA_METHOD_NAMES.join(", ")}`,
      );
    }
    const { ref, before } = await attemptOf(actor, input.challenge);
    if (before.status !== "active") return answer(before, input.challenge);
    if (!awaitingCode(before)) {
      throw new RuntimeError("LOGIN_BUSY", "A code for this login is being checked; wait for it");
    }
    const rejections = before.context.rejections;
    ref.send({ type: "SUBMIT_CODE", method, code: String(input.code), ipAddress: ctx.ipAddress });
    const snap = await settle(
      ref,
      (s) => s.status !== "active" || (awaitingCode(s) && s.context.rejections > rejections),
    );
    if (snap.status !== "done") {
      const rejection = snap.context.lastRejection!;
      throw new RuntimeError("MFA_INVALID_CODE", `The code is ${rejection.reason}`, {
        details: { reason: rejection.reason, attemptsLeft: rejection.attemptsLeft },
      });
    }
    const result = answer(snap, input.challenge);
    if (result.status === "authenticated" && !snap.context.passwordless) {
      await Promise.all([
        limiter.reset(ipLoginKey(snap.context.device.ipAddress, snap.context.login)),
        limiter.reset(loginKey(snap.context.login)),
      ]);
    }
    return result;
  }

  /** The live login actor of a challenge token (resumed here from its record if need be). */
  async function attemptOf(
    actor: AnyActorRef,
    challenge: string,
  ): Promise<{ ref: AnyActorRef; before: LoginSnapshot }> {
    const m = typeof challenge === "string" ? CHALLENGE_RE.exec(challenge) : null;
    const expired = () =>
      new RuntimeError("LOGIN_EXPIRED", "Unknown or expired login challenge; log in again");
    if (!m) throw expired();
    const attemptId = m[1];
    const hash = sha256Hex(challenge);
    let ref = actor.system.get(loginActorId(attemptId)) as AnyActorRef | undefined;
    if (!ref || (ref.getSnapshot() as LoginSnapshot).status !== "active") {
      // Started on another instance (or this one restarted): resume from the record.
      const record = await challenges.load(attemptId);
      if (!record || !sameHex(record.challengeHash, hash)) throw expired();
      ref = startAttempt(actor, {
        attemptId,
        login: record.login,
        challengeHash: record.challengeHash,
        remember: record.remember,
        device: record.device,
        startedAt: now(),
        ...loginOptions,
        passwordless: record.passwordless,
        resume: {
          userId: record.userId,
          mfaFailures: record.mfaFailures,
          deadline: record.deadline,
        },
      }, "continue the login");
      await settle(ref, answerable);
    }
    const before = ref.getSnapshot() as LoginSnapshot;
    if (!sameHex(before.context.challengeHash, hash)) throw expired();
    return { ref, before };
  }

  /** A login attempt waiting for a second factor, with its user (never a passkey login's). */
  async function waitingAttempt(challenge: string) {
    const actor = requireActor("continue the login");
    const { before } = await attemptOf(actor, challenge);
    if (before.status !== "active" || !awaitingCode(before)) {
      throw new RuntimeError("LOGIN_EXPIRED", "The login attempt ended; log in again");
    }
    return before.context;
  }

  async function passkeyLogin(ctx: RequestContext = {}) {
    const actor = requireActor("log in");
    const d = device(ctx);
    const perIp = await limiter.hit(["login-ip", d.ipAddress ?? "unknown"], limits.perIp);
    if (!perIp.allowed) throw rateLimited(perIp, d.ipAddress);
    const attemptId = crypto.randomUUID();
    const challenge = `${attemptId}.${randomToken(32)}`;
    const startedAt = now();
    const ref = startAttempt(actor, {
      attemptId,
      login: "",
      passwordless: true,
      challengeHash: sha256Hex(challenge),
      remember: false,
      device: d,
      startedAt,
      ...loginOptions,
    }, "log in");
    const snap = await settle(ref, answerable);
    if (snap.status !== "active") answer(snap, challenge);
    const deadline = snap.context.deadline!;
    const options = await factors.loginOptions(attemptId, null, deadline);
    return { challenge, expiresAt: new Date(deadline).toISOString(), options };
  }

  async function passkeyOptions(challenge: string) {
    const context = await waitingAttempt(challenge);
    if (context.passwordless || context.userId === null) {
      throw new RuntimeError("LOGIN_EXPIRED", "Unknown or expired login challenge; log in again");
    }
    return await factors.loginOptions(context.attemptId, context.userId, context.deadline!);
  }

  function masked(address: string): string {
    const at = address.lastIndexOf("@");
    return at <= 0 ? "***" : `${address[0]}***${address.slice(at)}`;
  }

  async function sendLoginCode(challenge: string) {
    const context = await waitingAttempt(challenge);
    const address = context.userId === null
      ? null
      : await factors.emailCodes.address(context.userId);
    if (context.userId === null || address === null) {
      throw new RuntimeError("MFA_NOT_ENROLLED", "E-mail codes are not on for this account");
    }
    const { expiresAt } = await factors.sendCode(
      context.userId,
      address,
      `login:${context.attemptId}`,
      "sign in",
    );
    return { sentTo: masked(address), expiresAt: new Date(expiresAt).toISOString() };
  }

  async function userOf(auth: AuthContext): Promise<User> {
    const user = await getUserById(sql, auth.session.userId);
    if (!user) throw new RuntimeError("USER_NOT_FOUND", "The account no longer exists");
    return user;
  }

  /** A factor was added: when it turned MFA on, sessions made without it end. */
  async function factorAdded(auth: AuthContext, hadFactor: boolean): Promise<void> {
    if (hadFactor) return;
    await sessions.revokeAllForUser(auth.session.userId, {
      exceptId: auth.session.id,
      reason: "mfa_changed",
    });
  }

  async function anyFactor(userId: number): Promise<boolean> {
    return (await mfa.status(userId)).enabled || await factors.hasFactor(userId);
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

  async function reauthenticate(
    auth: AuthContext,
    input: { password: string; code?: string; method?: ReauthMethod },
    ctx: RequestContext = {},
  ): Promise<{ reauthenticatedAt: Date }> {
    const userId = auth.session.userId;
    const key = ["reauth", String(userId)];
    const decision = await limiter.hit(key, limits.reauthPerUser);
    if (!decision.allowed) {
      throw new RuntimeError(
        "RATE_LIMITED",
        `Too many re-authentication attempts; try again in ${
          Math.ceil(decision.retryAfterMs / 1000)
        } s`,
        { details: { retryAfterMs: decision.retryAfterMs } },
      );
    }
    const refused = (reason: string, message: string) =>
      new RuntimeError("REAUTH_FAILED", `Re-authentication failed: ${message}`, {
        details: { reason },
      });
    const matches = await hashGate.run(() =>
      checkPassword(sql, userId, input.password, { hashing: o.hashing })
    );
    if (!matches) {
      throw refused("invalid_password", "the password is wrong");
    }
    const status = await mfa.status(userId);
    const others = await factors.methodsOf(userId);
    if (status.enabled || others.length) {
      if (!input.code) {
        throw refused(
          "code_required",
          "a second factor is on for this account: send a code (TOTP, backup or e-mail) " +
            "or a passkey's answer with the password",
        );
      }
      const method = input.method ?? (status.enabled ? "totp" : others[0]);
      const opts = { ipAddress: ctx.ipAddress, purpose: "reauth" as const };
      const subject = `reauth:${auth.session.id}`;
      const check: { ok: boolean; reason?: string; locked?: boolean; retryAfterMs?: number } =
        method === "backup_code"
          ? await mfa.verifyBackupCode(userId, input.code, opts)
          : method === "webauthn"
          ? await factors.checkReauthPasskey(userId, auth.session.id, input.code, opts)
          : method === "email"
          ? await factors.checkCode(userId, subject, input.code, opts)
          : await mfa.verifyTotp(userId, input.code, opts);
      if (!check.ok) {
        if (check.reason === "locked" || check.locked) {
          const retryAfterMs = check.retryAfterMs ?? 0;
          throw new RuntimeError(
            "MFA_LOCKED",
            `Cannot re-authenticate: too many wrong codes; try again in ${
              Math.ceil(retryAfterMs / 1000)
            } s`,
            { details: { retryAfterMs } },
          );
        }
        throw refused(`code_${check.reason}`, `the code is ${check.reason}`);
      }
    }
    const at = new Date(now());
    if (!await sessions.markReauthenticated(auth.session.id, at)) {
      throw new RuntimeError("SESSION_INVALID", "The session is no longer live; log in again");
    }
    await limiter.reset(key);
    return { reauthenticatedAt: at };
  }

  async function me(auth: AuthContext) {
    const [user, authority] = await Promise.all([
      getUserById(sql, auth.session.userId),
      sessions.authority(auth.token),
    ]);
    if (!user || !authority) {
      throw new RuntimeError("SESSION_INVALID", "The session is no longer live; log in again");
    }
    return { user, authority };
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
    return await hashGate.run(() => createUser(sql, input, { hashing: o.hashing }));
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
    while (writesInFlight.size) await Promise.allSettled([...writesInFlight]);
    for (const stop of [...openFeeds]) stop();
    while (unsubscribing.size) await Promise.all([...unsubscribing]);
  }

  return {
    sessions,
    mfa,
    events,
    effects,
    supervisorInput: o.supervisor ?? {},
    get connected() {
      return sessionsActor() !== undefined;
    },
    now,
    register,
    login,
    verifyMfa,
    authenticate,
    authority: (token) => sessions.authority(token),
    reauthenticate,
    me,
    access,
    enrollMfa,
    confirmMfa,
    regenerateBackupCodes,
    disableMfa,
    logout,
    refresh,
    listSessions,
    revokeSession,
    factors,
    passkeyLogin,
    passkeyOptions,
    async reauthChallenge(auth, method) {
      const userId = auth.session.userId;
      if (method === "webauthn") {
        if (await factors.passkeys.count(userId) === 0) {
          throw new RuntimeError("MFA_NOT_ENROLLED", "This account has no passkey");
        }
        return { options: await factors.reauthOptions(userId, auth.session.id) };
      }
      const address = await factors.emailCodes.address(userId);
      if (address === null) {
        throw new RuntimeError("MFA_NOT_ENROLLED", "E-mail codes are not on for this account");
      }
      const { expiresAt } = await factors.sendCode(
        userId,
        address,
        `reauth:${auth.session.id}`,
        "confirm it is you",
      );
      return { sentTo: masked(address), expiresAt: new Date(expiresAt).toISOString() };
    },
    sendLoginCode,
    listPasskeys: (auth) => factors.passkeys.list(auth.session.userId),
    async passkeyRegistrationOptions(auth) {
      return await factors.registrationOptions(await userOf(auth), auth.session.id);
    },
    async registerPasskey(auth, input) {
      const had = await anyFactor(auth.session.userId);
      const passkey = await factors.register(auth.session.userId, auth.session.id, input);
      await factorAdded(auth, had);
      return passkey;
    },
    async removePasskey(auth, id) {
      if (!await factors.passkeys.remove(auth.session.userId, id)) {
        throw new RuntimeError("WEBAUTHN_NOT_FOUND", "No such passkey among yours");
      }
    },
    async startEmailCodes(auth) {
      const user = await userOf(auth);
      const { expiresAt } = await factors.sendCode(
        user.id,
        user.email,
        `enable:${auth.session.id}`,
        "turn on e-mail codes",
      );
      return { sentTo: masked(user.email), expiresAt: new Date(expiresAt).toISOString() };
    },
    async confirmEmailCodes(auth, code, ctx = {}) {
      const user = await userOf(auth);
      const had = await anyFactor(user.id);
      const r = await factors.checkCode(user.id, `enable:${auth.session.id}`, code, {
        purpose: "confirm",
        ipAddress: ctx.ipAddress,
      });
      if (!r.ok) throw codeRefusal(r, "turn on e-mail codes");
      await factors.emailCodes.enable(user.id, user.email, now());
      await factorAdded(auth, had);
    },
    async disableEmailCodes(auth) {
      if (!await factors.emailCodes.disable(auth.session.userId)) {
        throw new RuntimeError("MFA_NOT_ENROLLED", "E-mail codes are not on for this account");
      }
    },
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
