/**
 * Model of the `login` chart: a password check that may say invalid, ok with or without
 * MFA, MFA locked, or crash; codes that are accepted, rejected, replayed, locked out or
 * crash; a user who submits codes or cancels; a journal whose writes succeed, partly fail or
 * crash; timeouts from the simulated clock. A second model resumes an attempt handed over
 * by another instance (MFA on by definition).
 *
 * Invariants: no session is issued (nor the attempt authenticated) without accepted
 * credentials, nor, when MFA is on, without an accepted second factor of this attempt; no
 * session after the attempt was locked; at most one session per attempt.
 * @module
 */
import { loginMachine } from "../../machines/login.ts";
import type { LoginInput } from "../../machines/login.ts";
import type { Answer, Call, ChartModel, Run, StepView } from "./_walk.ts";

const MAX_CODES = 2;

/** The login model's world: what the effects said so far. */
export interface LoginWorld {
  credentialsOk: boolean;
  mfaEnabled: boolean;
  factorAccepted: boolean;
  locked: boolean;
  sessions: number;
}

function credentials(mfaEnabled: boolean, mfaLocked: boolean) {
  return (_c: Call, run: Run<LoginWorld>): Answer => {
    run.world.credentialsOk = true;
    run.world.mfaEnabled = mfaEnabled;
    run.world.locked = mfaLocked;
    return {
      output: {
        outcome: "ok",
        userId: 42,
        mfaEnabled,
        mfaLocked,
        retryAfterMs: mfaLocked ? 1000 : 0,
        at: run.clock.now(),
      },
    };
  };
}

function rejected(reason: "invalid" | "replayed" | "locked") {
  return (_c: Call, run: Run<LoginWorld>): Answer => {
    if (reason === "locked") run.world.locked = true;
    return {
      output: { ok: false, reason, locked: reason === "locked", retryAfterMs: 0 },
    };
  };
}

function issuing(snapshot: StepView<LoginWorld>["snapshot"]): boolean {
  return Object.values(snapshot.children ?? {}).some((ref) =>
    // deno-lint-ignore no-explicit-any
    (ref as any).src === "issueSession"
  );
}

function build(resume: boolean) {
  return (run: Run<LoginWorld>) => {
    const input: LoginInput = {
      attemptId: "attempt-1",
      login: "ada",
      password: resume ? undefined : "correct horse",
      challengeHash: "c".repeat(64),
      remember: false,
      device: { fingerprint: null, ipAddress: null, userAgent: null, geoLocation: null },
      startedAt: 0,
      maxMfaAttempts: MAX_CODES,
      credentialsTimeoutMs: 50,
      mfaTimeoutMs: 400,
      verifyTimeoutMs: 50,
      journalTimeoutMs: 50,
      ...(resume ? { resume: { userId: 42, mfaFailures: 1, deadline: 300 } } : {}),
    };
    return {
      logic: loginMachine.provide({
        actors: {
          checkCredentials: run.effect("checkCredentials"),
          verifyCode: run.effect("verifyCode"),
          issueSession: run.effect("issueSession"),
          writeJournal: run.effect("writeJournal"),
        },
      }),
      input,
    };
  };
}

function model(resume: boolean): ChartModel<LoginWorld> {
  return {
    name: resume ? "login (resumed)" : "login",
    maxDepth: 8,
    world: () => ({
      credentialsOk: resume,
      mfaEnabled: resume,
      factorAccepted: false,
      locked: false,
      sessions: 0,
    }),
    build: build(resume),
    events: (snapshot) =>
      snapshot.matches({ attempt: "mfa_required" })
        ? [
          { type: "SUBMIT_CODE", method: "totp", code: "123456" },
          { type: "SUBMIT_CODE", method: "backup_code", code: "abcd-efgh" },
          { type: "CANCEL" },
        ]
        : [],
    effects: {
      checkCredentials: {
        invalid: () => ({ output: { outcome: "invalid" } }),
        ok_no_mfa: credentials(false, false),
        ok_mfa: credentials(true, false),
        ok_mfa_locked: credentials(true, true),
        crash: () => ({ error: new Error("database is down") }),
      },
      verifyCode: {
        accepted: (_c, run) => {
          run.world.factorAccepted = true;
          return { output: { ok: true, backupCodesRemaining: 9 } };
        },
        invalid: rejected("invalid"),
        replayed: rejected("replayed"),
        locked: rejected("locked"),
        crash: () => ({ error: new Error("database is down") }),
      },
      issueSession: {
        ok: (_c, run) => {
          run.world.sessions++;
          return {
            output: { sessionId: "s1", token: "t".repeat(43), expiresAt: run.clock.now() + 1000 },
          };
        },
        crash: () => ({ error: new Error("database is down") }),
      },
      writeJournal: {
        ok: (c) => {
          const input = c.input as { version: number | null; entries: unknown[] };
          return { output: { version: (input.version ?? 0) + input.entries.length, failures: [] } };
        },
        partly_failed: () => ({ output: { version: null, failures: ["event store: conflict"] } }),
        crash: () => ({ error: new Error("event store is down") }),
      },
    },
    key(snapshot, world, now) {
      const c = snapshot.context;
      return [
        c.mfaFailures,
        c.deadline === null ? null : c.deadline - now,
        c.journal.pending.length,
        c.journal.version === null,
        c.journal.failures > 0,
        world,
      ];
    },
    invariants: {
      "no session without accepted credentials and, with MFA on, an accepted factor": (
        { snapshot, world },
      ) => {
        const authenticated = snapshot.matches({ attempt: "authenticated" });
        if (!issuing(snapshot) && !authenticated) return null;
        if (!world.credentialsOk) return "a session without accepted credentials";
        if (world.mfaEnabled && !world.factorAccepted) {
          return `${
            authenticated ? "authenticated" : "issuing a session"
          } with MFA on and no accepted factor`;
        }
        return null;
      },
      "no session after the attempt was locked": ({ snapshot, world }) =>
        world.locked && (issuing(snapshot) || snapshot.matches({ attempt: "authenticated" }))
          ? "a session for a locked attempt"
          : null,
      "at most one session per attempt": ({ world }) =>
        world.sessions <= 1 ? null : `${world.sessions} sessions issued for one attempt`,
    },
  };
}

/** The login chart's model. */
export const loginModel: ChartModel<LoginWorld> = model(false);
/** The login chart's model, resuming an attempt another instance started. */
export const loginResumedModel: ChartModel<LoginWorld> = model(true);
