import assert from "node:assert/strict";
import {
  type AnyActorRef,
  createActor,
  fromCallback,
  fromPromise,
  SimulatedClock,
  type Snapshot,
} from "xstate";
import { awaitingCode, type LoginInput, loginMachine } from "../../machines/login.ts";
import {
  type CleanupReport,
  loginActorId,
  probeDelay,
  sessionSupervisorMachine,
} from "../../machines/session_supervisor.ts";

interface Fakes {
  cleanup?: () => Promise<CleanupReport>;
  probe?: () => Promise<void>;
  /** Journal entries each write reports unwritable. */
  journalFailures?: number;
}

function loginInput(attemptId: string, extra: Partial<LoginInput> = {}): LoginInput {
  return {
    attemptId,
    login: "alice",
    password: "pw",
    challengeHash: "00".repeat(32),
    remember: false,
    device: { fingerprint: null, ipAddress: null, userAgent: null, geoLocation: null },
    startedAt: 0,
    ...extra,
  };
}

function start(fakes: Fakes = {}, input = {}, snapshot?: Snapshot<unknown>) {
  const clock = new SimulatedClock();
  const calls: string[] = [];
  let sendBack: ((e: { type: string; [k: string]: unknown }) => void) | null = null;
  let feedStopped = false;
  const login = loginMachine.provide({
    actors: {
      // Passwords decide the fake outcome: "pw" → MFA pending, "ok" → authenticated.
      checkCredentials: fromPromise(({ input }) =>
        Promise.resolve(
          {
            outcome: "ok",
            userId: 1,
            mfaEnabled: input.password !== "ok",
            mfaLocked: false,
            retryAfterMs: 0,
            at: 0,
          } as const,
        )
      ),
      issueSession: fromPromise(() =>
        Promise.resolve({ sessionId: "s", token: "t".repeat(43), expiresAt: 0 })
      ),
      writeJournal: fromPromise(({ input }) =>
        Promise.resolve({
          version: null,
          failures: input.entries.slice(0, fakes.journalFailures ?? 0).map(() => "Redis is down"),
        })
      ),
    },
  });
  const logic = sessionSupervisorMachine.provide({
    actors: {
      login,
      cleanup: fromPromise(() => {
        calls.push("cleanup");
        return fakes.cleanup ? fakes.cleanup() : Promise.resolve({ sessions: 3, attempts: 1 });
      }),
      probe: fromPromise(() => {
        calls.push("probe");
        return fakes.probe ? fakes.probe() : Promise.resolve();
      }),
      feed: fromCallback(({ sendBack: send }) => {
        sendBack = send as typeof sendBack;
        return () => {
          feedStopped = true;
        };
      }),
    },
  });
  const actor = createActor(logic, {
    clock,
    input: { cleanupIntervalMs: 60_000, probeBaseMs: 1_000, probeMaxMs: 8_000, ...input },
    snapshot,
  });
  actor.start();
  return {
    actor,
    clock,
    calls,
    feed: (e: { type: string; [k: string]: unknown }) => sendBack!(e),
    feedStopped: () => feedStopped,
  };
}

function child(actor: ReturnType<typeof start>["actor"], attemptId: string) {
  return actor.system.get(loginActorId(attemptId)) as AnyActorRef | undefined;
}

async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((r) => setTimeout(r, 0));
}

Deno.test("session supervisor statechart (simulated clock)", async (t) => {
  await t.step("probe backoff doubles and is capped", () => {
    const o = { baseMs: 1000, maxMs: 8000 };
    assert.deepEqual([1, 2, 3, 4, 5].map((n) => probeDelay(n, o)), [1000, 2000, 4000, 8000, 8000]);
  });

  await t.step("cleans up on schedule and says what it removed", async () => {
    const { actor, clock, calls } = start();
    assert.equal(actor.getSnapshot().value, "running");
    clock.increment(59_999);
    assert.deepEqual(calls, []);
    clock.increment(1);
    assert.equal(actor.getSnapshot().value, "cleaning");
    await settle();
    const snap = actor.getSnapshot();
    assert.equal(snap.value, "running");
    assert.equal(snap.context.stats.cleanups, 1);
    assert.equal(snap.context.stats.sessionsRemoved, 3);
    assert.equal(snap.context.reason, "cleanup removed 3 sessions and 1 MFA attempts");
    clock.increment(60_000);
    await settle();
    assert.deepEqual(calls, ["cleanup", "cleanup"]);
    actor.stop();
  });

  await t.step("a failing database degrades it; probes back off until it recovers", async () => {
    let dbUp = false;
    const { actor, clock, calls } = start({
      cleanup: () => Promise.reject(new Error("connect ECONNREFUSED")),
      probe: () => dbUp ? Promise.resolve() : Promise.reject(new Error("still down")),
    });
    actor.send({ type: "CLEANUP_NOW" });
    await settle();
    let snap = actor.getSnapshot();
    assert.equal(snap.value, "degraded");
    assert.match(
      snap.context.reason,
      /degraded because connect ECONNREFUSED; probing again in 1000/,
    );
    clock.increment(1000);
    await settle();
    snap = actor.getSnapshot();
    assert.equal(snap.value, "degraded");
    assert.equal(snap.context.failures, 2);
    clock.increment(1999);
    assert.deepEqual(calls, ["cleanup", "probe"]);
    dbUp = true;
    clock.increment(1);
    await settle();
    snap = actor.getSnapshot();
    assert.equal(snap.value, "running");
    assert.equal(snap.context.reason, "recovered after 2 failed checks");
    actor.stop();
  });

  await t.step("the request path can report a failing dependency", () => {
    const { actor, feed } = start();
    feed({ type: "DEPENDENCY_FAILED", what: "redis", error: "Connection is closed." });
    assert.equal(actor.getSnapshot().value, "degraded");
    assert.match(actor.getSnapshot().context.reason, /redis: Connection is closed/);
    actor.stop();
  });

  await t.step("holds one login actor per attempt and drops it when it ends", async () => {
    const { actor, feed } = start();
    feed({ type: "LOGIN.START", attemptId: "a1", input: loginInput("a1") });
    feed({ type: "LOGIN.START", attemptId: "a2", input: loginInput("a2", { password: "ok" }) });
    assert.ok(child(actor, "a1"), "spawned and reachable by system id");
    await settle();
    let snap = actor.getSnapshot();
    assert.deepEqual(Object.keys(snap.context.logins), ["a1"], "a2 authenticated and was dropped");
    assert.equal(child(actor, "a2"), undefined);
    assert.deepEqual(snap.context.stats.loginsFinished, { authenticated: 1 });
    const a1 = child(actor, "a1")!;
    assert.ok(awaitingCode(a1.getSnapshot()));
    a1.send({ type: "CANCEL" });
    // Held until its journal (the Failed event, the record's removal) is written.
    await settle();
    snap = actor.getSnapshot();
    assert.deepEqual(snap.context.logins, {});
    assert.deepEqual(snap.context.stats.loginsFinished, { authenticated: 1, failed: 1 });
    assert.equal(a1.getSnapshot().status, "done");
    actor.stop();
  });

  await t.step("login timeouts run on the same clock; the actor is then stopped", async () => {
    const { actor, clock, feed } = start();
    feed({
      type: "LOGIN.START",
      attemptId: "slow",
      input: loginInput("slow", { mfaTimeoutMs: 30_000 }),
    });
    await settle();
    assert.ok(child(actor, "slow"));
    clock.increment(29_999);
    await settle();
    assert.ok(child(actor, "slow"));
    clock.increment(1);
    await settle();
    assert.equal(child(actor, "slow"), undefined);
    assert.deepEqual(actor.getSnapshot().context.stats.loginsFinished, { expired: 1 });
    actor.stop();
  });

  await t.step("refuses logins beyond its limit and duplicates; forgets on request", async () => {
    const { actor, feed } = start({}, { maxLogins: 2 });
    for (const id of ["x", "y", "z", "x"]) {
      feed({ type: "LOGIN.START", attemptId: id, input: loginInput(id) });
    }
    await settle();
    let snap = actor.getSnapshot();
    assert.deepEqual(Object.keys(snap.context.logins).sort(), ["x", "y"]);
    assert.equal(snap.context.stats.loginsRefused, 2);
    feed({ type: "LOGIN.FORGET", attemptId: "x" });
    snap = actor.getSnapshot();
    assert.deepEqual(Object.keys(snap.context.logins), ["y"]);
    assert.equal(child(actor, "x"), undefined);
    actor.stop();
  });

  await t.step("counts revocations; STOP stops the logins and the feed", async () => {
    const { actor, feed, feedStopped } = start();
    feed({ type: "SESSIONS.REVOKED", count: 3 });
    feed({ type: "LOGIN.START", attemptId: "p", input: loginInput("p") });
    await settle();
    const p = child(actor, "p")!;
    assert.equal(actor.getSnapshot().context.stats.revocationsSeen, 3);
    actor.send({ type: "STOP" });
    assert.equal(actor.getSnapshot().status, "done");
    assert.equal(actor.getSnapshot().context.reason, "stopped on request");
    assert.equal(p.getSnapshot().status, "stopped");
    assert.equal(feedStopped(), true);
  });

  await t.step("counts what finished attempts could not write", async () => {
    const { actor, feed } = start({ journalFailures: 1 });
    feed({ type: "LOGIN.START", attemptId: "w", input: loginInput("w", { password: "ok" }) });
    await settle();
    const snap = actor.getSnapshot();
    assert.deepEqual(snap.context.stats.loginsFinished, { authenticated: 1 });
    assert.ok(snap.context.stats.journalFailures >= 1, "every failed write is counted");
    actor.stop();
  });

  await t.step("its snapshot is data: context and held logins survive JSON", async () => {
    const { actor, feed } = start();
    feed({ type: "LOGIN.START", attemptId: "j", input: loginInput("j") });
    feed({ type: "DEPENDENCY_FAILED", what: "redis", error: "Connection is closed." });
    await settle();
    const snap = actor.getSnapshot();
    assert.deepEqual(JSON.parse(JSON.stringify(snap.context)), snap.context);
    // Persisted as JSON and restored, it holds the same attempt, which goes on from there.
    const copy = JSON.parse(JSON.stringify(actor.getPersistedSnapshot()));
    actor.stop();
    const again = start({}, {}, copy);
    const j = child(again.actor, "j");
    assert.ok(j, "the held login is restored");
    assert.ok(awaitingCode(j.getSnapshot()));
    assert.equal(j.getSnapshot().context.deadline, 300_000);
    assert.deepEqual(again.actor.getSnapshot().context, snap.context);
    j.send({ type: "CANCEL" });
    await settle();
    assert.deepEqual(again.actor.getSnapshot().context.logins, {});
    again.actor.stop();
  });
});
