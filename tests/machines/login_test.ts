import assert from "node:assert/strict";
import { createActor, fromPromise, SimulatedClock, waitFor } from "xstate";
import {
  type CodeResult,
  type CredentialsResult,
  type IssuedSession,
  type LoginInput,
  loginMachine,
} from "../../machines/login.ts";

const GOOD_TOTP = "123456";
const GOOD_BACKUP = "abcde-fghij";
const INVALID: CodeResult = { ok: false, reason: "invalid", locked: false, retryAfterMs: 0 };

interface Fakes {
  credentials?: (input: { login: string; password: string }) => Promise<CredentialsResult>;
  totp?: (code: string) => Promise<CodeResult>;
  backup?: (code: string) => Promise<CodeResult>;
  issue?: () => Promise<IssuedSession>;
}

function mfaUser(): Promise<CredentialsResult> {
  return Promise.resolve({
    outcome: "ok",
    userId: 7,
    mfaEnabled: true,
    mfaLocked: false,
    retryAfterMs: 0,
  });
}

function start(fakes: Fakes = {}, input: Partial<LoginInput> = {}) {
  const records: string[] = [];
  const effects: string[] = [];
  const clock = new SimulatedClock();
  const logic = loginMachine.provide({
    actors: {
      checkCredentials: fromPromise(({ input }) =>
        fakes.credentials ? fakes.credentials(input) : Promise.resolve(
          input.password === "right password"
            ? {
              outcome: "ok",
              userId: 7,
              mfaEnabled: false,
              mfaLocked: false,
              retryAfterMs: 0,
            } as const
            : { outcome: "invalid" } as const,
        )
      ),
      verifyTotp: fromPromise(({ input }) => {
        effects.push(`totp ${input.userId} ${input.ipAddress}`);
        return fakes.totp ? fakes.totp(input.code) : Promise.resolve(
          input.code === GOOD_TOTP ? { ok: true, backupCodesRemaining: 10 } as const : INVALID,
        );
      }),
      verifyBackupCode: fromPromise(({ input }) =>
        fakes.backup ? fakes.backup(input.code) : Promise.resolve(
          input.code === GOOD_BACKUP ? { ok: true, backupCodesRemaining: 9 } as const : INVALID,
        )
      ),
      issueSession: fromPromise(({ input }) => {
        effects.push(`issue ${input.userId} remember=${input.remember}`);
        return fakes.issue
          ? fakes.issue()
          : Promise.resolve({ sessionId: "s-1", token: "t".repeat(43), expiresAt: 1 });
      }),
    },
    actions: {
      record: (_, params) => records.push(params.event),
      saveChallenge: ({ context }) => effects.push(`save failures=${context.mfaFailures}`),
      forgetChallenge: () => effects.push("forget"),
    },
  });
  const actor = createActor(logic, {
    clock,
    input: {
      attemptId: "0b7e7d1c-3c2c-4f59-9a43-7d3f1a4d2b11",
      login: "alice",
      password: "right password",
      challengeHash: "ab".repeat(32),
      remember: false,
      device: { fingerprint: "fp", ipAddress: "192.0.2.1", userAgent: "ua", geoLocation: null },
      ...input,
    },
  });
  actor.start();
  return { actor, clock, records, effects };
}

type Actor = ReturnType<typeof start>["actor"];

function waiting(actor: Actor) {
  return waitFor(actor, (s) => s.matches({ mfa_required: "waiting" }) || s.status === "done");
}

function done(actor: Actor) {
  return waitFor(actor, (s) => s.status === "done");
}

Deno.test("login statechart (fake effects, simulated clock)", async (t) => {
  await t.step("no MFA: credentials → session → authenticated", async () => {
    const { actor, records, effects } = start({}, { remember: true });
    const snap = await done(actor);
    assert.equal(snap.value, "authenticated");
    assert.equal(snap.output?.outcome, "authenticated");
    assert.equal(snap.output?.session?.sessionId, "s-1");
    assert.equal(snap.output?.userId, 7);
    assert.deepEqual(records, ["LoginStarted", "CredentialsAccepted", "Authenticated"]);
    assert.deepEqual(effects, ["issue 7 remember=true", "forget"]);
    assert.equal(snap.context.password, null, "the password is erased");
  });

  await t.step("a wrong password fails the attempt", async () => {
    const { actor, records } = start({}, { password: "wrong" });
    const snap = await done(actor);
    assert.equal(snap.value, "failed");
    assert.deepEqual(snap.output && [snap.output.outcome, snap.output.reason], [
      "failed",
      "invalid_credentials",
    ]);
    assert.deepEqual(records, ["LoginStarted", "Failed"]);
    assert.equal(snap.output?.session, null);
  });

  await t.step("MFA: a wrong code waits again, the right one authenticates", async () => {
    const { actor, records, effects } = start({ credentials: mfaUser });
    let snap = await waiting(actor);
    assert.deepEqual(snap.value, { mfa_required: "waiting" });
    actor.send({ type: "SUBMIT_TOTP", code: "000000" });
    snap = await waitFor(actor, (s) => s.context.rejections === 1);
    assert.deepEqual(snap.value, { mfa_required: "waiting" });
    assert.deepEqual(snap.context.lastRejection, { reason: "invalid", attemptsLeft: 4 });
    // The code may come from another address than the password did; the log says which.
    actor.send({ type: "SUBMIT_TOTP", code: GOOD_TOTP, ipAddress: "198.51.100.2" });
    snap = await done(actor);
    assert.equal(snap.value, "authenticated");
    assert.deepEqual(records, [
      "LoginStarted",
      "CredentialsAccepted",
      "MfaRequired",
      "TotpSubmitted",
      "CodeRejected",
      "TotpSubmitted",
      "MfaAccepted",
      "Authenticated",
    ]);
    assert.deepEqual(effects, [
      "save failures=0",
      "totp 7 192.0.2.1",
      "save failures=1",
      "totp 7 198.51.100.2",
      "issue 7 remember=false",
      "forget",
    ]);
    assert.ok(!JSON.stringify(snap.context).includes(GOOD_TOTP), "codes never enter the context");
  });

  await t.step("MFA with a backup code reports how many are left", async () => {
    const { actor, records } = start({ credentials: mfaUser });
    await waiting(actor);
    actor.send({ type: "SUBMIT_BACKUP_CODE", code: GOOD_BACKUP });
    const snap = await done(actor);
    assert.equal(snap.output?.outcome, "authenticated");
    assert.equal(snap.output?.backupCodesRemaining, 9);
    assert.ok(records.includes("BackupCodeSubmitted"));
  });

  await t.step("the user-wide lockout ends the attempt in locked", async () => {
    let n = 0;
    const { actor, records } = start({
      credentials: mfaUser,
      totp: () =>
        Promise.resolve(
          ++n < 2 ? INVALID : { ok: false, reason: "invalid", locked: true, retryAfterMs: 900_000 },
        ),
    });
    await waiting(actor);
    actor.send({ type: "SUBMIT_TOTP", code: "111111" });
    await waitFor(actor, (s) => s.context.rejections === 1);
    actor.send({ type: "SUBMIT_TOTP", code: "222222" });
    const snap = await done(actor);
    assert.equal(snap.value, "locked");
    assert.equal(snap.output?.retryAfterMs, 900_000);
    assert.equal(records.at(-1), "Locked");
  });

  await t.step("a lock already in force stops the login after the password", async () => {
    const { actor } = start({
      credentials: () =>
        Promise.resolve({
          outcome: "ok",
          userId: 7,
          mfaEnabled: true,
          mfaLocked: true,
          retryAfterMs: 5000,
        }),
    });
    const snap = await done(actor);
    assert.equal(snap.value, "locked");
    assert.equal(snap.output?.retryAfterMs, 5000);
  });

  await t.step("an attempt may get only maxMfaAttempts codes wrong", async () => {
    const { actor } = start({ credentials: mfaUser }, { maxMfaAttempts: 3 });
    await waiting(actor);
    for (let i = 1; i <= 2; i++) {
      actor.send({ type: "SUBMIT_TOTP", code: "000000" });
      await waitFor(actor, (s) => s.context.rejections === i);
    }
    actor.send({ type: "SUBMIT_TOTP", code: "000000" });
    const snap = await done(actor);
    assert.deepEqual([snap.value, snap.output?.reason], ["failed", "too_many_codes"]);
  });

  await t.step("the MFA timeout is not restarted by wrong codes", async () => {
    const { actor, clock, records } = start({ credentials: mfaUser }, { mfaTimeoutMs: 300_000 });
    await waiting(actor);
    clock.increment(200_000);
    actor.send({ type: "SUBMIT_TOTP", code: "000000" });
    await waitFor(actor, (s) => s.context.rejections === 1);
    clock.increment(99_999);
    assert.equal(actor.getSnapshot().status, "active");
    clock.increment(1);
    const snap = actor.getSnapshot();
    assert.deepEqual([snap.value, snap.output?.reason], ["expired", "mfa_timeout"]);
    assert.equal(records.at(-1), "Expired");
  });

  await t.step("a hanging password check and code check time out", async () => {
    const hang = () => new Promise<never>(() => {});
    const a = start({ credentials: hang });
    a.clock.increment(15_000);
    assert.deepEqual([a.actor.getSnapshot().value, a.actor.getSnapshot().output?.reason], [
      "failed",
      "credentials_timeout",
    ]);
    assert.equal(a.actor.getSnapshot().context.password, null);

    const b = start({ credentials: mfaUser, totp: hang });
    await waiting(b.actor);
    b.actor.send({ type: "SUBMIT_TOTP", code: "123456" });
    b.clock.increment(15_000);
    assert.equal(b.actor.getSnapshot().output?.reason, "verify_timeout");
  });

  await t.step("a crashing effect fails the attempt with its reason", async () => {
    const { actor } = start({ issue: () => Promise.reject(new Error("database is down")) });
    const snap = await done(actor);
    assert.deepEqual([snap.value, snap.output?.reason], ["failed", "error: database is down"]);
  });

  await t.step("resumed on another instance: straight to MFA, with the time left", async () => {
    const { actor, clock, records } = start({}, {
      password: undefined,
      resume: { userId: 9, mfaFailures: 2, remainingMs: 60_000 },
      maxMfaAttempts: 3,
    });
    const snap = await waiting(actor);
    assert.equal(snap.context.userId, 9);
    assert.deepEqual(records, ["LoginResumed", "MfaRequired"]);
    actor.send({ type: "SUBMIT_TOTP", code: "000000" });
    const end = await done(actor);
    assert.equal(end.output?.reason, "too_many_codes", "failures carried over");

    const other = start({}, { resume: { userId: 9, mfaFailures: 0, remainingMs: 60_000 } });
    await waiting(other.actor);
    other.clock.increment(60_000);
    assert.equal(other.actor.getSnapshot().value, "expired");
    clock.increment(1);
  });

  await t.step("CANCEL ends a pending attempt", async () => {
    const { actor } = start({ credentials: mfaUser });
    await waiting(actor);
    actor.send({ type: "CANCEL" });
    assert.deepEqual([actor.getSnapshot().value, actor.getSnapshot().output?.reason], [
      "failed",
      "cancelled",
    ]);
  });
});
