/**
 * One login attempt as a statechart with two regions.
 *
 * `attempt`: credentials → (mfa_required: waiting ⇄ verifying) → issuing_session →
 * authenticated; or locked, failed, expired.
 *
 * - `credentials` checks the password (effect `checkCredentials`); a wrong one ends in
 *   `failed`, an MFA lock already in force in `locked`. The check reports the time it
 *   finished (the injected clock): the wait for a code starts then, and its `deadline`
 *   (kept in the context, shared with other instances through the challenge record) is
 *   that time plus `mfaTimeoutMs`.
 * - `mfa_required` waits for a code. Its timeout (`mfaTimeout`, what is left until the
 *   deadline) runs on the parent state, so a rejected code does not restart the clock.
 *   `SUBMIT_CODE` names its method; `verifying` runs the one verifier effect
 *   (`verifyCode`) with that method and records the method's own event (see
 *   {@linkcode MFA_METHODS}: totp, backup_code, webauthn, email; adding a method is one entry
 *   there plus its verifier in actors/sessions/, never another state). Every check is
 *   bounded by `verifyTimeout`. A rejected code returns to `waiting` until the attempt's
 *   own limit (`maxMfaAttempts`) ends it in `failed`; the user-wide lockout (store/mfa.ts,
 *   shared by all instances) ends it in `locked`.
 * - A passkey login (`input.passwordless`) has no password: it starts in `mfa_required` with
 *   no user, its deadline `mfaTimeoutMs` from its start; only `webauthn` is offered, and the
 *   verifier that accepts the passkey names the user (`CodeResult.userId`).
 * - An attempt started on another instance can be *resumed* here (`input.resume`): it
 *   starts in `mfa_required` with its deadline and failures.
 *
 * `journal`: what the attempt must write, in order — its events for the event store
 * (aggregate `login`, id = attempt id: `LoginStarted`, `MfaRequired`, `CodeRejected`,
 * `Authenticated`, ...), the resumable challenge record, and its removal when the attempt
 * ends. Transitions of `attempt` append entries to `journal.pending` (pure assigns);
 * `writing` hands the pending entries to the `writeJournal` effect, which answers with the
 * event-store version it reached. The attempt is done only when it has ended *and* its
 * journal is written, so whoever waits for it sees every write made. {@linkcode awaitingCode}
 * says when a waiting attempt can be answered (its challenge record is saved).
 *
 * The context is data only (it survives a JSON round trip): the password lives in it only
 * while `credentials` runs and is erased on exit; codes never enter it; an effect's crash
 * is kept as `{code, message, details}`. Real effects are provided in actors/sessions/.
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

/**
 * The second factors a login can be finished with, and the event each records when a code
 * is submitted. One `verifying` state serves them all: adding a method is an entry here
 * plus its verifier (actors/sessions/service.ts, `verifiers`, typed by this table).
 */
export const MFA_METHODS = {
  totp: { submitted: "TotpSubmitted" },
  backup_code: { submitted: "BackupCodeSubmitted" },
  /** A passkey's assertion (the code is its JSON); also the only method of a passkey login. */
  webauthn: { submitted: "PasskeySubmitted" },
  /** A six-digit code sent by e-mail. */
  email: { submitted: "EmailCodeSubmitted" },
} as const;

/** A second-factor method (a key of {@linkcode MFA_METHODS}). */
export type MfaMethod = keyof typeof MFA_METHODS;

/** The methods offered to a client, in the order of {@linkcode MFA_METHODS}. */
export const MFA_METHOD_NAMES: readonly MfaMethod[] = Object.keys(MFA_METHODS) as MfaMethod[];

/** True when `method` is one of {@linkcode MFA_METHODS}. */
export function isMfaMethod(method: unknown): method is MfaMethod {
  return typeof method === "string" && Object.hasOwn(MFA_METHODS, method);
}

/** Input of a login attempt. */
export interface LoginInput {
  /** Attempt id (UUID): the event-store aggregate id and the actor's id. */
  attemptId: string;
  /** Username or email as typed ("" for a passkey login: the passkey names its user). */
  login: string;
  /**
   * A passkey login: no password; the attempt waits for a passkey from the start, and the
   * passkey's verifier says whose it is.
   */
  passwordless?: boolean;
  /** The password (absent when resuming or for a passkey login). */
  password?: string;
  /** Hex SHA-256 of the MFA challenge token handed to the client. */
  challengeHash: string;
  /** "Remember me". */
  remember: boolean;
  /** Where the attempt comes from. */
  device: LoginDevice;
  /** When the attempt starts (here), ms since the epoch, from the injected clock. */
  startedAt: number;
  /** Codes one attempt may get wrong before it fails; 5. */
  maxMfaAttempts?: number;
  /** Longest password check in ms; 15 s. */
  credentialsTimeoutMs?: number;
  /** Time to enter a code in ms; 5 min. */
  mfaTimeoutMs?: number;
  /** Longest code check in ms; 15 s. */
  verifyTimeoutMs?: number;
  /** Longest write of the journal (events, challenge record) in ms; 15 s. */
  journalTimeoutMs?: number;
  /** Continue an attempt from another instance: its user, failures and deadline (ms since the epoch). */
  resume?: { userId: number | null; mfaFailures: number; deadline: number };
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
    /** When the check finished, ms since the epoch (the injected clock). */
    at: number;
  };

/** What a code check reports (the shape of store/mfa.ts's MfaCheck, minus what we don't use). */
export type CodeResult =
  | {
    ok: true;
    backupCodesRemaining: number;
    /** Whose factor it was: set by a passkey login's verifier (the attempt had no user yet). */
    userId?: number;
  }
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

/** A crashed effect, as data: its error code (null when it had none), message and details. */
export interface LoginFault {
  /** The error's code (a RuntimeError code from the effect layer), or null. */
  code: string | null;
  /** The error's message. */
  message: string;
  /** Details safe to show the caller, or null. */
  details: Record<string, unknown> | null;
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
  /** The crash that ended the attempt, if one did. */
  error: LoginFault | null;
  /** Journal entries that could not be written (logged by the effect). */
  journalFailures: number;
}

/** The last rejected code, for the HTTP answer. */
export interface Rejection {
  /** invalid or replayed. */
  reason: string;
  /** Codes this attempt may still try. */
  attemptsLeft: number;
}

/** Names of the events the attempt records (event-store event types). */
export type LoginRecord =
  | "LoginStarted"
  | "LoginResumed"
  | "CredentialsAccepted"
  | "MfaRequired"
  | (typeof MFA_METHODS)[MfaMethod]["submitted"]
  | "CodeRejected"
  | "MfaAccepted"
  | "Authenticated"
  | "Locked"
  | "Failed"
  | "Expired";

/** One write the attempt owes: an event, the resumable challenge record, or its removal. */
export type JournalEntry =
  | {
    kind: "record";
    event: LoginRecord;
    /** The user, once known. */
    userId: number | null;
    /** Codes rejected so far. */
    mfaFailures: number;
    /** The reason noted so far, or null. */
    reason: string | null;
    /** The session, for `Authenticated`. */
    sessionId: string | null;
  }
  | {
    kind: "save_challenge";
    /** The user; null in a passkey login (not known until the passkey is). */
    userId: number | null;
    mfaFailures: number;
    deadline: number;
  }
  | { kind: "forget_challenge" };

/** The journal region's data. */
export interface LoginJournal {
  /** Entries not yet written, in order. */
  pending: JournalEntry[];
  /** How many of `pending` (from the front) the running write holds. */
  writing: number;
  /** Event-store version of the attempt reached so far; null: unknown (read it first). */
  version: number | null;
  /** Entries that could not be written. */
  failures: number;
  /** The last of those, one line. */
  lastFailure: string | null;
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
  journalTimeoutMs: number;
  resumed: boolean;
  /** A passkey login (no password; only `webauthn` is offered). */
  passwordless: boolean;
  /** When this instance started waiting for a code, ms since the epoch; null before. */
  waitFrom: number | null;
  /** When the wait for a code ends, ms since the epoch; null until the attempt needs a code. */
  deadline: number | null;
  /** The method of the code being (or last) checked. */
  method: MfaMethod | null;
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
  /** The crash of an effect that ended the attempt. */
  error: LoginFault | null;
  journal: LoginJournal;
}

/** Events of a login attempt. */
export type LoginEvent =
  | { type: "SUBMIT_CODE"; method: MfaMethod; code: string; ipAddress?: string | null }
  | { type: "CANCEL" };

/** Input of the code-check effect. */
export interface CodeCheckInput {
  /** Attempt id. */
  attemptId: string;
  /** The user; null in a passkey login (the passkey names its user). */
  userId: number | null;
  /** Which second factor the code is for. */
  method: MfaMethod;
  /** The code as typed. */
  code: string;
  /** Caller's address, for the attempts log. */
  ipAddress: string | null;
}

/** Input of the password-check effect. */
export interface CredentialsInput {
  /** Attempt id. */
  attemptId: string;
  /** Login as typed. */
  login: string;
  /** The password. */
  password: string;
}

/** Input of the session-issuing effect. */
export interface IssueInput {
  /** The user. */
  userId: number;
  /** "Remember me". */
  remember: boolean;
  /** Client details. */
  device: LoginDevice;
  /** Attempt id. */
  attemptId: string;
}

/** Input of the journal effect: the entries to write, in order, and what they need. */
export interface JournalInput {
  /** Attempt id (the event-store aggregate id, the challenge record's key). */
  attemptId: string;
  /** Login as typed. */
  login: string;
  /** "Remember me". */
  remember: boolean;
  /** Client details of the password step. */
  device: LoginDevice;
  /** Hex SHA-256 of the challenge token. */
  challengeHash: string;
  /** A passkey login (the resumable record says so). */
  passwordless: boolean;
  /** Event-store version reached so far; null: read it first. */
  version: number | null;
  /** The entries. */
  entries: JournalEntry[];
}

/** What the journal effect reports: the version reached, and what it could not write. */
export interface JournalOutput {
  /** Event-store version after the writes; null when unknown (a write failed). */
  version: number | null;
  /** One line per entry that could not be written. */
  failures: string[];
}

/** The parts of a login snapshot {@linkcode awaitingCode} reads. */
export interface LoginSnapshotLike {
  /** Actor status. */
  status: string;
  /** State matcher. */
  matches(value: unknown): boolean;
}

/**
 * True when the attempt waits for a code and has written everything so far (its challenge
 * record included): the moment to answer the client, whose next step may reach any instance.
 */
export function awaitingCode(snapshot: LoginSnapshotLike): boolean {
  return snapshot.status === "active" &&
    snapshot.matches({ attempt: { mfa_required: "waiting" }, journal: "idle" });
}

type Done<T> = { output: T };

function describe(error: unknown): string {
  if (error instanceof Error) return error.message;
  return typeof error === "string" ? error : JSON.stringify(error) ?? String(error);
}

/** An effect's error as data (RuntimeErrors from the effect layer keep code and details). */
function faultOf(error: unknown): LoginFault {
  const e = error as { code?: unknown; details?: unknown } | null;
  let details: Record<string, unknown> | null = null;
  try {
    // A copy, so the context holds plain data whatever the effect threw.
    if (e && typeof e.details === "object" && e.details !== null) {
      details = JSON.parse(JSON.stringify(e.details));
    }
  } catch {
    details = null;
  }
  return {
    code: e && typeof e.code === "string" ? e.code : null,
    message: describe(error),
    details,
  };
}

function noted(context: LoginContext, ...entries: JournalEntry[]): { journal: LoginJournal } {
  return { journal: { ...context.journal, pending: [...context.journal.pending, ...entries] } };
}

function recordEntry(context: LoginContext, event: LoginRecord): JournalEntry {
  return {
    kind: "record",
    event,
    userId: context.userId,
    mfaFailures: context.mfaFailures,
    reason: context.reason || null,
    sessionId: context.session?.sessionId ?? null,
  };
}

const login = setup({
  types: {
    context: {} as LoginContext,
    input: {} as LoginInput,
    events: {} as LoginEvent,
    output: {} as LoginOutput,
  },
  actors: {
    /** Checks the password and the user's MFA state. */
    checkCredentials: fromPromise<CredentialsResult, CredentialsInput>(() =>
      Promise.resolve({ outcome: "invalid" })
    ),
    /** Checks a code with the verifier of its method (store/mfa.ts). */
    verifyCode: fromPromise<CodeResult, CodeCheckInput>(() =>
      Promise.resolve({ ok: false, reason: "invalid", locked: false, retryAfterMs: 0 } as const)
    ),
    /** Creates the session. */
    issueSession: fromPromise<IssuedSession, IssueInput>(() =>
      Promise.reject(new Error("issueSession is not provided"))
    ),
    /** Writes journal entries in order; answers with the event-store version reached. */
    writeJournal: fromPromise<JournalOutput, JournalInput>(({ input }) =>
      Promise.resolve({ version: input.version, failures: [] })
    ),
  },
  actions: {
    /** Notes an event for the event store. */
    record: assign(({ context }, params: { event: LoginRecord }) =>
      noted(context, recordEntry(context, params.event))
    ),
    /** Notes the event of the submitted code's method. */
    recordSubmission: assign(({ context }) =>
      context.method
        ? noted(context, recordEntry(context, MFA_METHODS[context.method].submitted))
        : {}
    ),
    /** Notes the resumable record (deadline, failures) another instance needs. */
    saveChallenge: assign(({ context }) =>
      (context.userId === null && !context.passwordless) || context.deadline === null
        ? {}
        : noted(context, {
          kind: "save_challenge",
          userId: context.userId,
          mfaFailures: context.mfaFailures,
          deadline: context.deadline,
        })
    ),
    /** Notes the removal of the resumable record, when the attempt had one (it is over). */
    forgetChallenge: assign(({ context }) =>
      context.deadline === null ? {} : noted(context, { kind: "forget_challenge" })
    ),
    /** Erases the password from the context. */
    erasePassword: assign({ password: null }),
    /** Notes the user once the password matched. */
    acceptCredentials: assign(({ event }) => {
      const r = (event as unknown as Done<CredentialsResult>).output;
      return r.outcome === "ok" ? { userId: r.userId } : {};
    }),
    /** Starts the wait for a code: from when the check finished until the deadline. */
    openChallenge: assign(({ context, event }) => {
      const r = (event as unknown as Done<CredentialsResult>).output;
      if (r.outcome !== "ok") return {};
      return { waitFrom: r.at, deadline: r.at + context.mfaTimeoutMs };
    }),
    /** Notes which method the submitted code is for. */
    chooseMethod: assign(({ event }) => ({
      method: (event as Extract<LoginEvent, { type: "SUBMIT_CODE" }>).method,
    })),
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
    acceptCode: assign(({ context, event }) => {
      const r = (event as unknown as Done<CodeResult>).output;
      return {
        backupCodesRemaining: r.ok ? r.backupCodesRemaining : null,
        // A passkey login learns its user from the passkey.
        userId: r.ok && context.userId === null ? r.userId ?? null : context.userId,
      };
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
    /** Notes a failure caused by a crashed effect, keeping the error as data. */
    finishError: assign(({ event }) => {
      const fault = faultOf((event as { error?: unknown }).error);
      return { outcome: "failed" as const, reason: `error: ${fault.message}`, error: fault };
    }),
    /** Hands the pending entries to the write that starts. */
    takeBatch: assign(({ context }) => ({
      journal: { ...context.journal, writing: context.journal.pending.length },
    })),
    /** Drops the written entries; keeps the version reached and counts what failed. */
    journalWritten: assign(({ context, event }) => {
      const r = (event as unknown as Done<JournalOutput>).output;
      const j = context.journal;
      return {
        journal: {
          pending: j.pending.slice(j.writing),
          writing: 0,
          version: r.version,
          failures: j.failures + r.failures.length,
          lastFailure: r.failures.at(-1) ?? j.lastFailure,
        },
      };
    }),
    /** Drops the batch of a write that crashed or hung; the version is then unknown. */
    journalLost: assign(({ context, event }) => {
      const j = context.journal;
      const why = "error" in event ? describe((event as { error?: unknown }).error) : "timed out";
      return {
        journal: {
          pending: j.pending.slice(j.writing),
          writing: 0,
          version: null,
          failures: j.failures + j.writing,
          lastFailure: `${j.writing} entries lost: ${why}`,
        },
      };
    }),
  },
  guards: {
    /** The attempt continues one started on another instance. */
    resuming: ({ context }) => context.resumed,
    /** A passkey login: no password to check. */
    passwordless: ({ context }) => context.passwordless,
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
    /** The submitted code names a method this chart knows. */
    methodOffered: ({ context, event }) => {
      const method = (event as { method?: unknown }).method;
      return isMfaMethod(method) && (!context.passwordless || method === "webauthn");
    },
    /** The code was accepted (and, in a passkey login, named its user). */
    codeAccepted: ({ context, event }) => {
      const r = (event as unknown as Done<CodeResult>).output;
      return r.ok && (context.userId !== null || typeof r.userId === "number");
    },
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
    /** Entries wait to be written. */
    journalPending: ({ context }) => context.journal.pending.length > 0,
    /** The attempt has ended (its last entries are noted on the way into its final state). */
    attemptOver: ({ context }) => context.outcome !== null,
  },
  delays: {
    /** Longest password check. */
    credentialsTimeout: ({ context }) => context.credentialsTimeoutMs,
    /** Time left to enter a code: from the start of the wait here to the deadline. */
    mfaTimeout: ({ context }) => Math.max(0, (context.deadline ?? 0) - (context.waitFrom ?? 0)),
    /** Longest code check. */
    verifyTimeout: ({ context }) => context.verifyTimeoutMs,
    /** Longest journal write. */
    journalTimeout: ({ context }) => context.journalTimeoutMs,
  },
});

/** Password check. */
const credentialsState = login.createStateConfig({
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
        actions: { type: "finish", params: { outcome: "failed", reason: "invalid_credentials" } },
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
          "openChallenge",
          { type: "record", params: { event: "CredentialsAccepted" } },
        ],
      },
      {
        target: "issuing_session",
        actions: ["acceptCredentials", {
          type: "record",
          params: { event: "CredentialsAccepted" },
        }],
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
});

/** One code check, whatever its method: the method picks the verifier and the event. */
const verifyingState = login.createStateConfig({
  entry: "recordSubmission",
  invoke: {
    src: "verifyCode",
    input: ({ context, event }) => {
      const e = event as Partial<Extract<LoginEvent, { type: "SUBMIT_CODE" }>>;
      return {
        attemptId: context.attemptId,
        userId: context.userId,
        method: context.method!,
        code: e.code ?? "",
        // The address the code came from (the attempts log), else the login's.
        ipAddress: e.ipAddress ?? context.device.ipAddress,
      };
    },
    onDone: [
      {
        guard: "codeAccepted",
        target: "#login.attempt.issuing_session",
        actions: ["acceptCode", { type: "record", params: { event: "MfaAccepted" } }],
      },
      { guard: "codeLocked", target: "#login.attempt.locked", actions: "finishLocked" },
      {
        guard: "notEnrolled",
        target: "#login.attempt.failed",
        actions: { type: "finish", params: { outcome: "failed", reason: "mfa_disabled" } },
      },
      {
        guard: "attemptsExhausted",
        target: "#login.attempt.failed",
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
    onError: { target: "#login.attempt.failed", actions: "finishError" },
  },
  after: {
    verifyTimeout: {
      target: "#login.attempt.failed",
      actions: { type: "finish", params: { outcome: "failed", reason: "verify_timeout" } },
    },
  },
});

/** Waiting for a second factor, until the deadline. */
const mfaRequiredState = login.createStateConfig({
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
        SUBMIT_CODE: { guard: "methodOffered", target: "verifying", actions: "chooseMethod" },
      },
    },
    verifying: verifyingState,
  },
});

/** Creating the session once every factor is accepted. */
const issuingSessionState = login.createStateConfig({
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
});

/** An end of the attempt: its event, and the removal of its resumable record. */
function endState(event: "Authenticated" | "Locked" | "Failed" | "Expired") {
  return login.createStateConfig({
    type: "final",
    entry: [{ type: "record", params: { event } }, "forgetChallenge"],
  });
}

/** The attempt itself: which step it is at and how it ended. */
const attemptRegion = login.createStateConfig({
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
          guard: "passwordless",
          target: "mfa_required",
          actions: { type: "record", params: { event: "LoginStarted" } },
        },
        { target: "credentials", actions: { type: "record", params: { event: "LoginStarted" } } },
      ],
    },
    credentials: credentialsState,
    mfa_required: mfaRequiredState,
    issuing_session: issuingSessionState,
    authenticated: endState("Authenticated"),
    locked: endState("Locked"),
    failed: endState("Failed"),
    expired: endState("Expired"),
  },
});

/** The attempt's writes, in order; closed once the attempt has ended and all are written. */
const journalRegion = login.createStateConfig({
  initial: "idle",
  states: {
    idle: {
      always: [
        { guard: "journalPending", target: "writing" },
        { guard: "attemptOver", target: "closed" },
      ],
    },
    writing: {
      entry: "takeBatch",
      invoke: {
        src: "writeJournal",
        input: ({ context }) => ({
          attemptId: context.attemptId,
          login: context.login,
          remember: context.remember,
          device: context.device,
          challengeHash: context.challengeHash,
          passwordless: context.passwordless,
          version: context.journal.version,
          entries: context.journal.pending.slice(0, context.journal.writing),
        }),
        onDone: { target: "idle", actions: "journalWritten" },
        onError: { target: "idle", actions: "journalLost" },
      },
      after: { journalTimeout: { target: "idle", actions: "journalLost" } },
    },
    closed: { type: "final" },
  },
});

/** The login-attempt statechart (placeholder effects; see actors/sessions/). */
export const loginMachine = login.createMachine({
  id: "login",
  type: "parallel",
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
    mfaTimeoutMs: input.mfaTimeoutMs ?? 300_000,
    verifyTimeoutMs: input.verifyTimeoutMs ?? 15_000,
    journalTimeoutMs: input.journalTimeoutMs ?? 15_000,
    resumed: input.resume !== undefined,
    passwordless: input.passwordless === true,
    // A resumed attempt waits from now until its deadline; a passkey login from its start.
    waitFrom: input.resume || input.passwordless ? input.startedAt : null,
    deadline: input.resume?.deadline ??
      (input.passwordless ? input.startedAt + (input.mfaTimeoutMs ?? 300_000) : null),
    method: null,
    mfaFailures: input.resume?.mfaFailures ?? 0,
    rejections: 0,
    lastRejection: null,
    outcome: null,
    reason: "",
    retryAfterMs: 0,
    session: null,
    backupCodesRemaining: null,
    error: null,
    journal: { pending: [], writing: 0, version: null, failures: 0, lastFailure: null },
  }),
  states: {
    attempt: attemptRegion,
    journal: journalRegion,
  },
  output: ({ context }) => ({
    outcome: context.outcome ?? "failed",
    reason: context.reason,
    userId: context.userId,
    retryAfterMs: context.retryAfterMs,
    session: context.session,
    backupCodesRemaining: context.backupCodesRemaining,
    error: context.error,
    journalFailures: context.journal.failures,
  }),
});
