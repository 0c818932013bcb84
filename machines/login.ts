/**
 * One login attempt as a statechart: credentials → (mfa_required → totp | backup_code)
 * → issuing_session → authenticated; or locked, failed, expired.
 *
 * - `credentials` checks the password (effect `checkCredentials`); a wrong one ends in
 *   `failed`, an MFA lock already in force in `locked`.
 * - `mfa_required` waits for a code. Its timeout (`mfaTimeout`) runs on the parent state,
 *   so a rejected code does not restart the clock; every code check is bounded by
 *   `verifyTimeout`. A rejected code returns to `waiting` until the attempt's own limit
 *   (`maxMfaAttempts`) ends it in `failed`; the user-wide lockout (store/mfa.ts, shared
 *   by all instances) ends it in `locked`.
 * - An attempt started on another instance can be *resumed* here (`input.resume`): it
 *   starts in `mfa_required` with the time and failures it had left.
 * - Every transition is recorded through the `record` action with a named event
 *   (`LoginStarted`, `MfaRequired`, `CodeRejected`, `Authenticated`, ...); the effect
 *   layer appends them to the event store (aggregate `login`, id = attempt id).
 *
 * The password lives in the context only while `credentials` runs and is erased on exit;
 * codes never enter the context. Real effects are provided in actors/sessions/.
 * @module
 */
import { assign, fromPromise, setup } from "xstate";

/** Client details carried into the session. */
export interface LoginDevice {
  /** Device fingerprint, or null. */
  fingerprint: string | null;
  /** IP address, or null. */
  ipAddress: string | null;
  /** User agent, or null. */
  userAgent: string | null;
  /** Coarse location, or null. */
  geoLocation: string | null;
}

/** Input of a login attempt. */
export interface LoginInput {
  /** Attempt id (UUID): the event-store aggregate id and the actor's id. */
  attemptId: string;
  /** Username or email as typed. */
  login: string;
  /** The password (absent when resuming). */
  password?: string;
  /** Hex SHA-256 of the MFA challenge token handed to the client. */
  challengeHash: string;
  /** "Remember me". */
  remember: boolean;
  /** Where the attempt comes from. */
  device: LoginDevice;
  /** Codes one attempt may get wrong before it fails; 5. */
  maxMfaAttempts?: number;
  /** Longest password check in ms; 15 s. */
  credentialsTimeoutMs?: number;
  /** Time to enter a code in ms; 5 min. */
  mfaTimeoutMs?: number;
  /** Longest code check in ms; 15 s. */
  verifyTimeoutMs?: number;
  /** Continue an attempt from another instance. */
  resume?: { userId: number; mfaFailures: number; remainingMs: number };
}

/** What `checkCredentials` reports. */
export type CredentialsResult =
  | { outcome: "invalid" }
  | {
    outcome: "ok";
    userId: number;
    mfaEnabled: boolean;
    mfaLocked: boolean;
    retryAfterMs: number;
  };

/** What a code check reports (the shape of store/mfa.ts's MfaCheck, minus what we don't use). */
export type CodeResult =
  | { ok: true; backupCodesRemaining: number }
  | {
    ok: false;
    reason: "invalid" | "replayed" | "locked" | "not_enrolled";
    locked: boolean;
    retryAfterMs: number;
  };

/** What `issueSession` reports: the new session (the token is for the client only). */
export interface IssuedSession {
  /** Session id. */
  sessionId: string;
  /** Bearer token, shown once. */
  token: string;
  /** Expiry, ms since the epoch. */
  expiresAt: number;
}

/** How the attempt ended. */
export type LoginOutcome = "authenticated" | "locked" | "failed" | "expired";

/** Output of a finished attempt. */
export interface LoginOutput {
  /** The final state. */
  outcome: LoginOutcome;
  /** Why, one short phrase (`invalid_credentials`, `mfa_locked`, `timeout`, ...). */
  reason: string;
  /** The user, once known. */
  userId: number | null;
  /** When locked: ms until MFA accepts codes again. */
  retryAfterMs: number;
  /** When authenticated: the session. */
  session: IssuedSession | null;
  /** Backup codes left after a backup-code login (to warn when running low). */
  backupCodesRemaining: number | null;
}

/** The last rejected code, for the HTTP answer. */
export interface Rejection {
  /** invalid or replayed. */
  reason: string;
  /** Codes this attempt may still try. */
  attemptsLeft: number;
}

/** Context of a login attempt. */
export interface LoginContext {
  attemptId: string;
  login: string;
  password: string | null;
  challengeHash: string;
  remember: boolean;
  device: LoginDevice;
  userId: number | null;
  maxMfaAttempts: number;
  credentialsTimeoutMs: number;
  mfaTimeoutMs: number;
  verifyTimeoutMs: number;
  resumed: boolean;
  /** Codes rejected in this attempt. */
  mfaFailures: number;
  /** Increments on every rejection (callers wait for it to change). */
  rejections: number;
  lastRejection: Rejection | null;
  outcome: LoginOutcome | null;
  reason: string;
  retryAfterMs: number;
  session: IssuedSession | null;
  backupCodesRemaining: number | null;
}

/** Events of a login attempt. */
export type LoginEvent =
  | { type: "SUBMIT_TOTP"; code: string; ipAddress?: string | null }
  | { type: "SUBMIT_BACKUP_CODE"; code: string; ipAddress?: string | null }
  | { type: "CANCEL" };

/** Names of the events the attempt records (event-store event types). */
export type LoginRecord =
  | "LoginStarted"
  | "LoginResumed"
  | "CredentialsAccepted"
  | "MfaRequired"
  | "TotpSubmitted"
  | "BackupCodeSubmitted"
  | "CodeRejected"
  | "MfaAccepted"
  | "Authenticated"
  | "Locked"
  | "Failed"
  | "Expired";

/** Input of the code-check effects. */
export interface CodeCheckInput {
  /** Attempt id. */
  attemptId: string;
  /** The user. */
  userId: number;
  /** The code as typed. */
  code: string;
  /** Caller's address, for the attempts log. */
  ipAddress: string | null;
}

type Done<T> = { output: T };

/** The login-attempt statechart (placeholder effects; see actors/sessions/). */
export const loginMachine = setup({
  types: {
    context: {} as LoginContext,
    input: {} as LoginInput,
    events: {} as LoginEvent,
    output: {} as LoginOutput,
  },
  actors: {
    /** Checks the password and the user's MFA state. */
    checkCredentials: fromPromise<
      CredentialsResult,
      { attemptId: string; login: string; password: string }
    >(() => Promise.resolve({ outcome: "invalid" })),
    /** Checks a TOTP code for the user (store/mfa.ts). */
    verifyTotp: fromPromise<CodeResult, CodeCheckInput>(() =>
      Promise.resolve({ ok: false, reason: "invalid", locked: false, retryAfterMs: 0 } as const)
    ),
    /** Checks and consumes a backup code. */
    verifyBackupCode: fromPromise<CodeResult, CodeCheckInput>(() =>
      Promise.resolve({ ok: false, reason: "invalid", locked: false, retryAfterMs: 0 } as const)
    ),
    /** Creates the session. */
    issueSession: fromPromise<
      IssuedSession,
      { userId: number; remember: boolean; device: LoginDevice; attemptId: string }
    >(() => Promise.reject(new Error("issueSession is not provided"))),
  },
  actions: {
    /** Records a transition (appended to the event store by the effect layer). */
    record: (_, _params: { event: LoginRecord }) => {},
    /** Persists what another instance needs to resume the attempt. */
    saveChallenge: () => {},
    /** Forgets the resumable attempt (it is over). */
    forgetChallenge: () => {},
    /** Erases the password from the context. */
    erasePassword: assign({ password: null }),
    /** Notes the user once the password matched. */
    acceptCredentials: assign(({ event }) => {
      const r = (event as unknown as Done<CredentialsResult>).output;
      return r.outcome === "ok" ? { userId: r.userId } : {};
    }),
    /** Counts a rejected code. */
    rejectCode: assign(({ context, event }) => {
      const r = (event as unknown as Done<CodeResult>).output;
      const failures = context.mfaFailures + 1;
      return {
        mfaFailures: failures,
        rejections: context.rejections + 1,
        lastRejection: {
          reason: r.ok ? "invalid" : r.reason,
          attemptsLeft: Math.max(0, context.maxMfaAttempts - failures),
        },
      };
    }),
    /** Notes how many backup codes are left. */
    acceptCode: assign(({ event }) => {
      const r = (event as unknown as Done<CodeResult>).output;
      return { backupCodesRemaining: r.ok ? r.backupCodesRemaining : null };
    }),
    /** Keeps the new session. */
    keepSession: assign(({ event }) => ({
      session: (event as unknown as Done<IssuedSession>).output,
    })),
    /** Notes the end: outcome and reason. */
    finish: assign((_, params: { outcome: LoginOutcome; reason: string }) => ({
      outcome: params.outcome,
      reason: params.reason,
    })),
    /** Notes the end with the reason and lock time taken from an effect's result. */
    finishLocked: assign(({ event }) => {
      const r = (event as unknown as Done<CredentialsResult | CodeResult>).output;
      return {
        outcome: "locked" as const,
        reason: "mfa_locked",
        retryAfterMs: "retryAfterMs" in r ? r.retryAfterMs : 0,
      };
    }),
    /** Notes a failure caused by a crashed effect. */
    finishError: assign(({ event }) => ({
      outcome: "failed" as const,
      reason: `error: ${describe((event as { error?: unknown }).error)}`,
    })),
  },
  guards: {
    /** The attempt continues one started on another instance. */
    resuming: ({ context }) => context.resumed,
    /** The password did not match (or the account is unknown or inactive). */
    credentialsInvalid: ({ event }) =>
      (event as unknown as Done<CredentialsResult>).output.outcome === "invalid",
    /** The user's MFA is locked already. */
    mfaLockedNow: ({ event }) => {
      const r = (event as unknown as Done<CredentialsResult>).output;
      return r.outcome === "ok" && r.mfaEnabled && r.mfaLocked;
    },
    /** The user has MFA on. */
    mfaEnabled: ({ event }) => {
      const r = (event as unknown as Done<CredentialsResult>).output;
      return r.outcome === "ok" && r.mfaEnabled;
    },
    /** The code was accepted. */
    codeAccepted: ({ event }) => (event as unknown as Done<CodeResult>).output.ok,
    /** The user-wide lockout is (now) in force. */
    codeLocked: ({ event }) => {
      const r = (event as unknown as Done<CodeResult>).output;
      return !r.ok && (r.locked || r.reason === "locked");
    },
    /** MFA was turned off meanwhile: nothing left to check against. */
    notEnrolled: ({ event }) => {
      const r = (event as unknown as Done<CodeResult>).output;
      return !r.ok && r.reason === "not_enrolled";
    },
    /** This rejection uses up the attempt's allowance. */
    attemptsExhausted: ({ context }) => context.mfaFailures + 1 >= context.maxMfaAttempts,
  },
  delays: {
    /** Longest password check. */
    credentialsTimeout: ({ context }) => context.credentialsTimeoutMs,
    /** Time the user has to enter a code (what is left of it, when resumed). */
    mfaTimeout: ({ context }) => context.mfaTimeoutMs,
    /** Longest code check. */
    verifyTimeout: ({ context }) => context.verifyTimeoutMs,
  },
}).createMachine({
  id: "login",
  context: ({ input }) => ({
    attemptId: input.attemptId,
    login: input.login,
    password: input.password ?? null,
    challengeHash: input.challengeHash,
    remember: input.remember,
    device: input.device,
    userId: input.resume?.userId ?? null,
    maxMfaAttempts: input.maxMfaAttempts ?? 5,
    credentialsTimeoutMs: input.credentialsTimeoutMs ?? 15_000,
    mfaTimeoutMs: input.resume
      ? Math.max(0, input.resume.remainingMs)
      : (input.mfaTimeoutMs ?? 300_000),
    verifyTimeoutMs: input.verifyTimeoutMs ?? 15_000,
    resumed: input.resume !== undefined,
    mfaFailures: input.resume?.mfaFailures ?? 0,
    rejections: 0,
    lastRejection: null,
    outcome: null,
    reason: "",
    retryAfterMs: 0,
    session: null,
    backupCodesRemaining: null,
  }),
  initial: "start",
  states: {
    start: {
      always: [
        {
          guard: "resuming",
          target: "mfa_required",
          actions: { type: "record", params: { event: "LoginResumed" } },
        },
        {
          target: "credentials",
          actions: { type: "record", params: { event: "LoginStarted" } },
        },
      ],
    },
    credentials: {
      exit: "erasePassword",
      invoke: {
        src: "checkCredentials",
        input: ({ context }) => ({
          attemptId: context.attemptId,
          login: context.login,
          password: context.password ?? "",
        }),
        onDone: [
          {
            guard: "credentialsInvalid",
            target: "failed",
            actions: {
              type: "finish",
              params: { outcome: "failed", reason: "invalid_credentials" },
            },
          },
          {
            guard: "mfaLockedNow",
            target: "locked",
            actions: ["acceptCredentials", "finishLocked"],
          },
          {
            guard: "mfaEnabled",
            target: "mfa_required",
            actions: [
              "acceptCredentials",
              { type: "record", params: { event: "CredentialsAccepted" } },
            ],
          },
          {
            target: "issuing_session",
            actions: [
              "acceptCredentials",
              { type: "record", params: { event: "CredentialsAccepted" } },
            ],
          },
        ],
        onError: { target: "failed", actions: "finishError" },
      },
      after: {
        credentialsTimeout: {
          target: "failed",
          actions: { type: "finish", params: { outcome: "failed", reason: "credentials_timeout" } },
        },
      },
    },
    mfa_required: {
      entry: [{ type: "record", params: { event: "MfaRequired" } }, "saveChallenge"],
      after: {
        mfaTimeout: {
          target: "expired",
          actions: { type: "finish", params: { outcome: "expired", reason: "mfa_timeout" } },
        },
      },
      on: {
        CANCEL: {
          target: "failed",
          actions: { type: "finish", params: { outcome: "failed", reason: "cancelled" } },
        },
      },
      initial: "waiting",
      states: {
        waiting: {
          on: {
            SUBMIT_TOTP: "totp",
            SUBMIT_BACKUP_CODE: "backup_code",
          },
        },
        totp: {
          entry: { type: "record", params: { event: "TotpSubmitted" } },
          invoke: {
            src: "verifyTotp",
            input: ({ context, event }) => ({
              attemptId: context.attemptId,
              userId: context.userId!,
              code: (event as { code?: string }).code ?? "",
              // The address the code came from (the attempts log), else the login's.
              ipAddress: (event as { ipAddress?: string | null }).ipAddress ??
                context.device.ipAddress,
            }),
            onDone: [
              {
                guard: "codeAccepted",
                target: "#login.issuing_session",
                actions: ["acceptCode", { type: "record", params: { event: "MfaAccepted" } }],
              },
              { guard: "codeLocked", target: "#login.locked", actions: "finishLocked" },
              {
                guard: "notEnrolled",
                target: "#login.failed",
                actions: { type: "finish", params: { outcome: "failed", reason: "mfa_disabled" } },
              },
              {
                guard: "attemptsExhausted",
                target: "#login.failed",
                actions: [
                  "rejectCode",
                  { type: "record", params: { event: "CodeRejected" } },
                  { type: "finish", params: { outcome: "failed", reason: "too_many_codes" } },
                ],
              },
              {
                target: "waiting",
                actions: [
                  "rejectCode",
                  { type: "record", params: { event: "CodeRejected" } },
                  "saveChallenge",
                ],
              },
            ],
            onError: { target: "#login.failed", actions: "finishError" },
          },
          after: {
            verifyTimeout: {
              target: "#login.failed",
              actions: { type: "finish", params: { outcome: "failed", reason: "verify_timeout" } },
            },
          },
        },
        backup_code: {
          entry: { type: "record", params: { event: "BackupCodeSubmitted" } },
          invoke: {
            src: "verifyBackupCode",
            input: ({ context, event }) => ({
              attemptId: context.attemptId,
              userId: context.userId!,
              code: (event as { code?: string }).code ?? "",
              // The address the code came from (the attempts log), else the login's.
              ipAddress: (event as { ipAddress?: string | null }).ipAddress ??
                context.device.ipAddress,
            }),
            onDone: [
              {
                guard: "codeAccepted",
                target: "#login.issuing_session",
                actions: ["acceptCode", { type: "record", params: { event: "MfaAccepted" } }],
              },
              { guard: "codeLocked", target: "#login.locked", actions: "finishLocked" },
              {
                guard: "notEnrolled",
                target: "#login.failed",
                actions: { type: "finish", params: { outcome: "failed", reason: "mfa_disabled" } },
              },
              {
                guard: "attemptsExhausted",
                target: "#login.failed",
                actions: [
                  "rejectCode",
                  { type: "record", params: { event: "CodeRejected" } },
                  { type: "finish", params: { outcome: "failed", reason: "too_many_codes" } },
                ],
              },
              {
                target: "waiting",
                actions: [
                  "rejectCode",
                  { type: "record", params: { event: "CodeRejected" } },
                  "saveChallenge",
                ],
              },
            ],
            onError: { target: "#login.failed", actions: "finishError" },
          },
          after: {
            verifyTimeout: {
              target: "#login.failed",
              actions: { type: "finish", params: { outcome: "failed", reason: "verify_timeout" } },
            },
          },
        },
      },
    },
    issuing_session: {
      invoke: {
        src: "issueSession",
        input: ({ context }) => ({
          userId: context.userId!,
          remember: context.remember,
          device: context.device,
          attemptId: context.attemptId,
        }),
        onDone: {
          target: "authenticated",
          actions: [
            "keepSession",
            { type: "finish", params: { outcome: "authenticated", reason: "ok" } },
          ],
        },
        onError: { target: "failed", actions: "finishError" },
      },
    },
    authenticated: {
      type: "final",
      entry: [{ type: "record", params: { event: "Authenticated" } }, "forgetChallenge"],
    },
    locked: {
      type: "final",
      entry: [{ type: "record", params: { event: "Locked" } }, "forgetChallenge"],
    },
    failed: {
      type: "final",
      entry: [{ type: "record", params: { event: "Failed" } }, "forgetChallenge"],
    },
    expired: {
      type: "final",
      entry: [{ type: "record", params: { event: "Expired" } }, "forgetChallenge"],
    },
  },
  output: ({ context }) => ({
    outcome: context.outcome ?? "failed",
    reason: context.reason,
    userId: context.userId,
    retryAfterMs: context.retryAfterMs,
    session: context.session,
    backupCodesRemaining: context.backupCodesRemaining,
  }),
});

function describe(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
