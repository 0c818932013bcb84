import assert from "node:assert/strict";
import { createActor, fromPromise, SimulatedClock, waitFor } from "xstate";
import {
  awaitingCode,
  type CodeCheckInput,
  type CodeResult,
  type CredentialsResult,
  type IssuedSession,
  type JournalEntry,
  type JournalInput,
  type JournalOutput,
  type LoginInput,
  loginMachine,
  MFA_METHOD_NAMES,
  MFA_METHODS,
} from "../../machines/login.ts";

const GOOD_TOTP = "123456";
const GOOD_BACKUP = "abcde-fghij";
const INVALID: CodeResult = { ok: false, reason: "invalid", locked: false, retryAfterMs: 0 };
/** The epoch the simulated clock's 0 stands for: effects report times on this clock. */
const T0 = Date.UTC(2030, 0, 1);

interface Fakes {
  credentials?: (
    input: { login: string; password: string },
    at: number,
  ) => Promise<CredentialsResult>;
  totp?: (code: string) => Promise<CodeResult>;
  backup?: (code: string) => Promise<CodeResult>;
  issue?: () => Promise<IssuedSession>;
  /** Replaces the journal writer (the default one logs every entry and counts versions). */
  journal?: (input: JournalInput) => Promise<JournalOutput>;
}

function mfaUser(_: unknown, at: number): Promise<CredentialsResult> {
  return Promise.resolve({
    outcome: "ok",
    userId: 7,
    mfaEnabled: true,
    mfaLocked: false,
    retryAfterMs: 0,
    at,
  });
}

function baseInput(startedAt: number): LoginInput {
  return {
    attemptId: "0b7e7d1c-3c2c-4f59-9a43-7d3f1a4d2b11",
    login: "alice",
    password: "right password",
    challengeHash: "ab".repeat(32),
    remember: false,
    device: { fingerprint: "fp", ipAddress: "192.0.2.1", userAgent: "ua", geoLocation: null },
    startedAt,
  };
}

function describeEntry(e: JournalEntry): string {
  if (e.kind === "record") return e.event;
  if (e.kind === "save_challenge") return `save failures=${e.mfaFailures}`;
  return "forget";
}

function start(fakes: Fakes = {}, input: Partial<LoginInput> = {}) {
  const journal: string[] = [];
  const entries: JournalEntry[] = [];
  const effects: string[] = [];
  const codeInputs: CodeCheckInput[] = [];
  // Every write must start from the version the previous one reached (null: unknown).
  const versionErrors: string[] = [];
  let written = 0;
  const clock = new SimulatedClock();
  const now = () => T0 + clock.now();
  const logic = loginMachine.provide({
    actors: {
      checkCredentials: fromPromise(({ input }) =>
        fakes.credentials ? fakes.credentials(input, now()) : Promise.resolve(
          input.password === "right password"
            ? {
              outcome: "ok",
              userId: 7,
              mfaEnabled: false,
              mfaLocked: false,
              retryAfterMs: 0,
              at: now(),
            } as const
            : { outcome: "invalid" } as const,
        )
      ),
      verifyCode: fromPromise(({ input }) => {
        codeInputs.push(input);
        effects.push(`${input.method} ${input.userId} ${input.ipAddress}`);
        if (input.method === "backup_code") {
          return fakes.backup ? fakes.backup(input.code) : Promise.resolve(
            input.code === GOOD_BACKUP ? { ok: true, backupCodesRemaining: 9 } as const : INVALID,
          );
        }
        return fakes.totp ? fakes.totp(input.code) : Promise.resolve(
          input.code === GOOD_TOTP ? { ok: true, backupCodesRemaining: 10 } as const : INVALID,
        );
      }),
      issueSession: fromPromise(({ input }) => {
        effects.push(`issue ${input.userId} remember=${input.remember}`);
        return fakes.issue
          ? fakes.issue()
          : Promise.resolve({ sessionId: "s-1", token: "t".repeat(43), expiresAt: 1 });
      }),
      writeJournal: fromPromise(({ input }) => {
        if (fakes.journal) return fakes.journal(input);
        const expected = written === 0 && input.version === null ? null : written;
        if (input.version !== expected) {
          versionErrors.push(`write started at ${input.version}, expected ${expected}`);
        }
        for (const e of input.entries) {
          journal.push(describeEntry(e));
          entries.push(e);
          if (e.kind === "record") written++;
        }
        return Promise.resolve({ version: written, failures: [] });
      }),
    },
  });
  const actor = createActor(logic, {
    clock,
    input: { ...baseInput(now()), ...input },
  });
  actor.start();
  return { actor, clock, journal, entries, effects, codeInputs, versionErrors };
}

type Actor = ReturnType<typeof start>["actor"];

/** Waits until the attempt can be answered: waiting for a code with its journal written, or done. */
function waiting(actor: Actor) {
  return waitFor(actor, (s) => awaitingCode(s) || s.status === "done");
}

function done(actor: Actor) {
  return waitFor(actor, (s) => s.status === "done");
}

function roundTrips(value: unknown): void {
  assert.deepEqual(JSON.parse(JSON.stringify(value)), value);
}

function deferred<T>() {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

Deno.test("login statechart (fake effects, simulated clock)", async (t) => {
  await t.step("no MFA: credentials → session → authenticated", async () => {
    const { actor, journal, effects, versionErrors } = start({}, { remember: true });
    const snap = await done(actor);
    assert.deepEqual(snap.value, { attempt: "authenticated", journal: "closed" });
    assert.equal(snap.output?.outcome, "authenticated");
    assert.equal(snap.output?.session?.sessionId, "s-1");
    assert.equal(snap.output?.userId, 7);
    // No challenge was saved, so there is none to forget.
    assert.deepEqual(journal, ["LoginStarted", "CredentialsAccepted", "Authenticated"]);
    assert.deepEqual(effects, ["issue 7 remember=true"]);
    assert.equal(snap.context.password, null, "the password is erased");
    assert.deepEqual(versionErrors, []);
    assert.equal(snap.context.journal.version, 3, "the chart keeps the event-store version");
  });

  await t.step("a wrong password fails the attempt", async () => {
    const { actor, journal } = start({}, { password: "wrong" });
    const snap = await done(actor);
    assert.equal(snap.output?.outcome, "failed");
    assert.ok(snap.matches({ attempt: "failed" }));
    assert.deepEqual(snap.output && [snap.output.outcome, snap.output.reason], [
      "failed",
      "invalid_credentials",
    ]);
    assert.deepEqual(journal, ["LoginStarted", "Failed"]);
    assert.equal(snap.output?.session, null);
  });

  await t.step("MFA: a wrong code waits again, the right one authenticates", async () => {
    const { actor, journal, effects, versionErrors } = start({ credentials: mfaUser });
    let snap = await waiting(actor);
    assert.ok(snap.matches({ attempt: { mfa_required: "waiting" } }));
    actor.send({ type: "SUBMIT_CODE", method: "totp", code: "000000" });
    snap = await waitFor(actor, (s) => awaitingCode(s) && s.context.rejections === 1);
    assert.deepEqual(snap.context.lastRejection, { reason: "invalid", attemptsLeft: 4 });
    // The code may come from another address than the password did; the log says which.
    actor.send({
      type: "SUBMIT_CODE",
      method: "totp",
      code: GOOD_TOTP,
      ipAddress: "198.51.100.2",
    });
    snap = await done(actor);
    assert.ok(snap.matches({ attempt: "authenticated" }));
    assert.deepEqual(journal, [
      "LoginStarted",
      "CredentialsAccepted",
      "MfaRequired",
      "save failures=0",
      "TotpSubmitted",
      "CodeRejected",
      "save failures=1",
      "TotpSubmitted",
      "MfaAccepted",
      "Authenticated",
      "forget",
    ]);
    assert.deepEqual(effects, [
      "totp 7 192.0.2.1",
      "totp 7 198.51.100.2",
      "issue 7 remember=false",
    ]);
    assert.deepEqual(versionErrors, []);
    assert.ok(!JSON.stringify(snap.context).includes(GOOD_TOTP), "codes never enter the context");
  });

  await t.step("MFA with a backup code reports how many are left", async () => {
    const { actor, journal, codeInputs } = start({ credentials: mfaUser });
    await waiting(actor);
    actor.send({ type: "SUBMIT_CODE", method: "backup_code", code: GOOD_BACKUP });
    const snap = await done(actor);
    assert.equal(snap.output?.outcome, "authenticated");
    assert.equal(snap.output?.backupCodesRemaining, 9);
    assert.ok(journal.includes("BackupCodeSubmitted"));
    assert.deepEqual(codeInputs.map((i) => i.method), ["backup_code"]);
  });

  await t.step("one verifying state serves every method; its table names the event", async () => {
    assert.deepEqual(MFA_METHOD_NAMES, ["totp", "backup_code", "webauthn", "email"]);
    const { actor, journal, codeInputs } = start({ credentials: mfaUser });
    await waiting(actor);
    // A method the chart does not know is not a transition: the attempt keeps waiting.
    actor.send({ type: "SUBMIT_CODE", method: "sms" as "totp", code: GOOD_TOTP });
    assert.ok(awaitingCode(actor.getSnapshot()));
    assert.equal(codeInputs.length, 0);
    for (const method of MFA_METHOD_NAMES) {
      const before = actor.getSnapshot().context.rejections;
      actor.send({ type: "SUBMIT_CODE", method, code: "wrong" });
      assert.ok(actor.getSnapshot().matches({ attempt: { mfa_required: "verifying" } }));
      await waitFor(actor, (s) => awaitingCode(s) && s.context.rejections > before);
    }
    assert.deepEqual(codeInputs.map((i) => i.method), MFA_METHOD_NAMES);
    assert.deepEqual(
      journal.filter((e) => e.endsWith("Submitted")),
      MFA_METHOD_NAMES.map((m) => MFA_METHODS[m].submitted),
    );
    actor.send({ type: "CANCEL" });
  });

  await t.step(
    "a passkey login: no password, only webauthn, the passkey names its user",
    async () => {
      const { actor, journal, entries, codeInputs, effects } = start({
        // The fake verifier of every method but backup codes: a passkey that belongs to 42.
        totp: (code) =>
          Promise.resolve(
            code === "passkey"
              ? { ok: true, backupCodesRemaining: 0, userId: 42 } as const
              : INVALID,
          ),
      }, { login: "", password: undefined, passwordless: true });
      await waiting(actor);
      const waitingSnap = actor.getSnapshot();
      assert.ok(waitingSnap.matches({ attempt: { mfa_required: "waiting" } }));
      assert.equal(waitingSnap.context.userId, null);
      assert.equal(waitingSnap.context.deadline, waitingSnap.context.waitFrom! + 300_000);
      // Only a passkey finishes a passkey login: other methods are not transitions.
      actor.send({ type: "SUBMIT_CODE", method: "totp", code: "passkey" });
      actor.send({ type: "SUBMIT_CODE", method: "email", code: "passkey" });
      assert.ok(awaitingCode(actor.getSnapshot()));
      assert.equal(codeInputs.length, 0);
      actor.send({ type: "SUBMIT_CODE", method: "webauthn", code: "passkey" });
      const snap = await done(actor);
      assert.equal(codeInputs[0].userId, null, "the verifier is told no user");
      assert.equal(snap.output?.outcome, "authenticated");
      assert.equal(snap.output?.userId, 42);
      assert.deepEqual(effects.at(-1), "issue 42 remember=false");
      // The resumable record is saved without a user: another instance can take the passkey.
      assert.deepEqual(journal.slice(0, 4), [
        "LoginStarted",
        "MfaRequired",
        "save failures=0",
        "PasskeySubmitted",
      ]);
      const saved = entries.find((e) => e.kind === "save_challenge");
      assert.equal(saved?.kind === "save_challenge" && saved.userId, null);
      assert.ok(!journal.includes("CredentialsAccepted"));
    },
  );

  await t.step("the user-wide lockout ends the attempt in locked", async () => {
    let n = 0;
    const { actor, journal } = start({
      credentials: mfaUser,
      totp: () =>
        Promise.resolve(
          ++n < 2 ? INVALID : { ok: false, reason: "invalid", locked: true, retryAfterMs: 900_000 },
        ),
    });
    await waiting(actor);
    actor.send({ type: "SUBMIT_CODE", method: "totp", code: "111111" });
    await waitFor(actor, (s) => awaitingCode(s) && s.context.rejections === 1);
    actor.send({ type: "SUBMIT_CODE", method: "totp", code: "222222" });
    const snap = await done(actor);
    assert.ok(snap.matches({ attempt: "locked" }));
    assert.equal(snap.output?.retryAfterMs, 900_000);
    assert.deepEqual(journal.slice(-2), ["Locked", "forget"]);
  });

  await t.step("a lock already in force stops the login after the password", async () => {
    const { actor, journal } = start({
      credentials: (_, at) =>
        Promise.resolve({
          outcome: "ok",
          userId: 7,
          mfaEnabled: true,
          mfaLocked: true,
          retryAfterMs: 5000,
          at,
        }),
    });
    const snap = await done(actor);
    assert.ok(snap.matches({ attempt: "locked" }));
    assert.equal(snap.output?.retryAfterMs, 5000);
    assert.deepEqual(journal, ["LoginStarted", "Locked"], "no challenge was ever saved");
  });

  await t.step("an attempt may get only maxMfaAttempts codes wrong", async () => {
    const { actor } = start({ credentials: mfaUser }, { maxMfaAttempts: 3 });
    await waiting(actor);
    for (let i = 1; i <= 2; i++) {
      actor.send({ type: "SUBMIT_CODE", method: "totp", code: "000000" });
      await waitFor(actor, (s) => awaitingCode(s) && s.context.rejections === i);
    }
    actor.send({ type: "SUBMIT_CODE", method: "totp", code: "000000" });
    const snap = await done(actor);
    assert.deepEqual([snap.output?.outcome, snap.output?.reason], ["failed", "too_many_codes"]);
  });

  await t.step(
    "the deadline is the check's time plus the timeout; codes do not move it",
    async () => {
      const { actor, clock, journal, entries } = start({
        credentials: async (input, at) => {
          await Promise.resolve(); // runs after start() returned the clock
          // The password check itself takes 2 s of the injected clock.
          clock.increment(2_000);
          return await mfaUser(input, at + 2_000);
        },
      }, { mfaTimeoutMs: 300_000 });
      let snap = await waiting(actor);
      assert.equal(snap.context.waitFrom, T0 + 2_000);
      assert.equal(snap.context.deadline, T0 + 302_000);
      clock.increment(200_000);
      actor.send({ type: "SUBMIT_CODE", method: "totp", code: "000000" });
      snap = await waitFor(actor, (s) => awaitingCode(s) && s.context.rejections === 1);
      assert.equal(snap.context.deadline, T0 + 302_000, "a rejected code keeps the deadline");
      const saves = entries.filter((e) => e.kind === "save_challenge");
      assert.deepEqual(saves.map((e) => e.deadline), [T0 + 302_000, T0 + 302_000]);
      clock.increment(99_999);
      assert.equal(actor.getSnapshot().status, "active");
      clock.increment(1);
      snap = await done(actor);
      assert.equal(T0 + clock.now(), snap.context.deadline, "expired exactly at the deadline");
      assert.deepEqual([snap.output?.outcome, snap.output?.reason], ["expired", "mfa_timeout"]);
      assert.deepEqual(journal.slice(-2), ["Expired", "forget"]);
    },
  );

  await t.step("a hanging password check and code check time out", async () => {
    const hang = () => new Promise<never>(() => {});
    const a = start({ credentials: hang });
    a.clock.increment(15_000);
    let snap = await done(a.actor);
    assert.deepEqual([snap.output?.outcome, snap.output?.reason], [
      "failed",
      "credentials_timeout",
    ]);
    assert.equal(snap.context.password, null);

    const b = start({ credentials: mfaUser, totp: hang });
    await waiting(b.actor);
    b.actor.send({ type: "SUBMIT_CODE", method: "totp", code: "123456" });
    b.clock.increment(15_000);
    snap = await done(b.actor);
    assert.equal(snap.output?.reason, "verify_timeout");
  });

  await t.step("a crashing effect fails the attempt; its error is kept as data", async () => {
    const crash = Object.assign(new Error("database is down"), {
      code: "DATABASE_UNAVAILABLE",
      details: { retryAfterMs: 2000 },
    });
    const { actor } = start({ issue: () => Promise.reject(crash) });
    const snap = await done(actor);
    assert.deepEqual([snap.output?.outcome, snap.output?.reason], [
      "failed",
      "error: database is down",
    ]);
    assert.deepEqual(snap.output?.error, {
      code: "DATABASE_UNAVAILABLE",
      message: "database is down",
      details: { retryAfterMs: 2000 },
    });
    roundTrips(snap.context);
  });

  await t.step("resumed on another instance: straight to MFA, with its deadline", async () => {
    const { actor, journal, entries, versionErrors } = start({}, {
      password: undefined,
      resume: { userId: 9, mfaFailures: 2, deadline: T0 + 60_000 },
      maxMfaAttempts: 3,
    });
    let snap = await waiting(actor);
    assert.equal(snap.context.userId, 9);
    assert.equal(snap.context.journal.version, 2, "the chart keeps the version reached");
    assert.deepEqual(journal, ["LoginResumed", "MfaRequired", "save failures=2"]);
    assert.deepEqual(entries.at(-1), {
      kind: "save_challenge",
      userId: 9,
      mfaFailures: 2,
      deadline: T0 + 60_000,
    });
    actor.send({ type: "SUBMIT_CODE", method: "totp", code: "000000" });
    snap = await done(actor);
    assert.equal(snap.output?.reason, "too_many_codes", "failures carried over");
    assert.deepEqual(versionErrors, []);

    // Started 45 s into its minute: 15 s are left here.
    const other = start({}, {
      startedAt: T0 + 45_000,
      resume: { userId: 9, mfaFailures: 0, deadline: T0 + 60_000 },
    });
    await waiting(other.actor);
    other.clock.increment(14_999);
    assert.ok(awaitingCode(other.actor.getSnapshot()));
    other.clock.increment(1);
    snap = await done(other.actor);
    assert.deepEqual([snap.output?.outcome, snap.output?.reason], ["expired", "mfa_timeout"]);
  });

  await t.step("CANCEL ends a pending attempt", async () => {
    const { actor } = start({ credentials: mfaUser });
    await waiting(actor);
    actor.send({ type: "CANCEL" });
    const snap = await done(actor);
    assert.deepEqual([snap.output?.outcome, snap.output?.reason], ["failed", "cancelled"]);
  });

  await t.step("the attempt is answerable only once its challenge is saved", async () => {
    const held = deferred<JournalOutput>();
    let writes = 0;
    const { actor } = start({
      credentials: mfaUser,
      journal: (input) => {
        writes++;
        // The write holding the challenge record is held back.
        return input.entries.some((e) => e.kind === "save_challenge")
          ? held.promise
          : Promise.resolve({ version: null, failures: [] });
      },
    });
    await waitFor(actor, (s) => s.matches({ attempt: { mfa_required: "waiting" } }));
    assert.ok(actor.getSnapshot().matches({ journal: "writing" }));
    assert.equal(awaitingCode(actor.getSnapshot()), false, "the record is not saved yet");
    held.resolve({ version: 3, failures: [] });
    const snap = await waiting(actor);
    assert.ok(awaitingCode(snap));
    assert.ok(writes >= 2);
    actor.send({ type: "CANCEL" });
    await done(actor);
  });

  await t.step("an ended attempt is done only when its journal is written", async () => {
    const held = deferred<JournalOutput>();
    const { actor } = start({
      journal: (input) =>
        input.entries.some((e) => e.kind === "record" && e.event === "Authenticated")
          ? held.promise
          : Promise.resolve({ version: null, failures: [] }),
    });
    await waitFor(actor, (s) => s.matches({ attempt: "authenticated" }));
    assert.equal(actor.getSnapshot().status, "active", "the Authenticated event is not written");
    held.resolve({ version: 3, failures: [] });
    const snap = await done(actor);
    assert.equal(snap.output?.outcome, "authenticated");
  });

  await t.step("failed and hung journal writes are counted, and the attempt goes on", async () => {
    let calls = 0;
    const { actor, clock } = start({
      journal: (input) => {
        calls++;
        // The first write hangs (15 s bound), the others report their entries unwritable.
        if (calls === 1) return new Promise<never>(() => {});
        return Promise.resolve({
          version: null,
          failures: input.entries.map((e) => `${describeEntry(e)}: Redis is down`),
        });
      },
    });
    await waitFor(actor, (s) => s.matches({ attempt: "authenticated" }));
    clock.increment(15_000);
    const snap = await done(actor);
    assert.equal(snap.output?.outcome, "authenticated");
    // LoginStarted was lost to the hung write; CredentialsAccepted and Authenticated failed.
    assert.equal(snap.output?.journalFailures, 3);
    assert.equal(snap.context.journal.version, null);
    assert.match(snap.context.journal.lastFailure ?? "", /(Redis is down|timed out)/);
  });

  await t.step("every snapshot is data: its context and persisted form survive JSON", async () => {
    const { actor } = start({ credentials: mfaUser });
    const seen: unknown[] = [];
    actor.subscribe((s) => seen.push(s.context));
    await waiting(actor);
    for (const c of seen) roundTrips(c);
    // A waiting attempt persisted as JSON and restored continues where it was.
    const persisted = JSON.parse(JSON.stringify(actor.getPersistedSnapshot()));
    actor.stop();
    const clock = new SimulatedClock();
    const restored = createActor(
      loginMachine.provide({
        actors: {
          verifyCode: fromPromise<CodeResult, CodeCheckInput>(() =>
            Promise.resolve({ ok: true, backupCodesRemaining: 10 })
          ),
          issueSession: fromPromise(() =>
            Promise.resolve({ sessionId: "s-2", token: "t".repeat(43), expiresAt: 1 })
          ),
        },
      }),
      // The input is not read again: the restored context carries everything.
      { clock, snapshot: persisted, input: baseInput(T0) },
    );
    restored.start();
    assert.ok(awaitingCode(restored.getSnapshot()));
    restored.send({ type: "SUBMIT_CODE", method: "totp", code: GOOD_TOTP });
    const snap = await done(restored);
    assert.equal(snap.output?.session?.sessionId, "s-2");
    roundTrips(snap.context);
    roundTrips(snap.output);
  });
});
