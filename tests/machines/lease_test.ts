import assert from "node:assert/strict";
import { type Actor, createActor, fromPromise, SimulatedClock } from "xstate";
import {
  type LeaseAcquireInput,
  type LeaseAcquireOutput,
  type LeaseEmitted,
  leaseMachine,
  type LeaseMachineInput,
  type LeaseReleaseInput,
  type LeaseReleaseOutput,
  type LeaseRenewInput,
  type LeaseRenewOutput,
} from "../../machines/lease.ts";

const TTL = 300; // renew every 100, retry every 100, margin 60 -> act for 240 ms

/** What the fake Redis answers; each test changes it between steps. */
interface FakeRedis {
  /** "ok": behaves; "down": every call rejects; "hang": calls never settle. */
  mode: "ok" | "down" | "hang";
  /** Holder the fake reports when someone else holds the lease. */
  other: { instance: string; token: number; ttlMs: number } | null;
  /** Simulated round trip of a successful call. */
  latencyMs: number;
  nextToken: number;
  /** Our lease in the fake (null: not ours). */
  mine: number | null;
  calls: { op: string; at: number; input: unknown }[];
}

function harness(input: Partial<LeaseMachineInput> = {}) {
  const clock = new SimulatedClock();
  const fake: FakeRedis = {
    mode: "ok",
    other: null,
    latencyMs: 0,
    nextToken: 1,
    mine: null,
    calls: [],
  };
  const emitted: LeaseEmitted[] = [];

  function gate<T>(op: string, input: unknown, answer: () => T): Promise<T> {
    fake.calls.push({ op, at: clock.now(), input });
    if (fake.mode === "down") return Promise.reject(new Error("connect ECONNREFUSED"));
    if (fake.mode === "hang") return new Promise<T>(() => {});
    if (fake.latencyMs === 0) return Promise.resolve(answer());
    return new Promise<T>((resolve) => clock.setTimeout(() => resolve(answer()), fake.latencyMs));
  }

  const logic = leaseMachine.provide({
    actors: {
      acquireLease: fromPromise<LeaseAcquireOutput, LeaseAcquireInput>(({ input }) => {
        const sentAt = clock.now();
        return gate("acquire", input, () => {
          if (fake.other) {
            return {
              acquired: false,
              holder: { instance: fake.other.instance, token: fake.other.token },
              holderTtlMs: fake.other.ttlMs,
              sentAt,
              receivedAt: clock.now(),
            };
          }
          fake.mine = fake.nextToken++;
          return { acquired: true, token: fake.mine, sentAt, receivedAt: clock.now() };
        });
      }),
      renewLease: fromPromise<LeaseRenewOutput, LeaseRenewInput>(({ input }) => {
        const sentAt = clock.now();
        return gate("renew", input, () => {
          const renewed = fake.mine === input.token && fake.other === null;
          return {
            renewed,
            holder: renewed || !fake.other
              ? null
              : { instance: fake.other.instance, token: fake.other.token },
            sentAt,
            receivedAt: clock.now(),
          };
        });
      }),
      releaseLease: fromPromise<LeaseReleaseOutput, LeaseReleaseInput>(({ input }) =>
        gate("release", input, () => {
          const released = fake.mine !== null &&
            (input.token === null || input.token === fake.mine);
          if (released) fake.mine = null;
          return { released };
        })
      ),
    },
  });
  const actor = createActor(logic, {
    clock,
    input: { role: "backup-scheduler", instanceId: "a", ttlMs: TTL, ...input },
  });
  actor.on("*", (e) => emitted.push(e as LeaseEmitted));
  actor.start();

  /** Moves the simulated clock 1 ms at a time, letting effect promises settle in between. */
  async function advance(ms: number): Promise<void> {
    await settle();
    clock.set(clock.now());
    await settle();
    for (let i = 0; i < ms; i++) {
      clock.increment(1);
      await settle();
    }
  }
  return { clock, fake, emitted, actor, advance, [Symbol.dispose]: () => actor.stop() };
}

async function settle(): Promise<void> {
  for (let i = 0; i < 8; i++) await Promise.resolve();
}

function stateOf(actor: Actor<typeof leaseMachine>): string {
  return JSON.stringify(actor.getSnapshot().value);
}

function calls(fake: FakeRedis, op: string): number[] {
  return fake.calls.filter((c) => c.op === op).map((c) => c.at);
}

Deno.test("lease machine", async (t) => {
  await t.step("acquires at once when the lease is free and announces the token", async () => {
    using h = harness();
    assert.equal(stateOf(h.actor), '"standby"');
    await h.advance(0);
    assert.equal(stateOf(h.actor), '{"held":"waiting"}');
    assert.deepEqual(h.emitted, [{ type: "acquired", role: "backup-scheduler", token: 1 }]);
    const ctx = h.actor.getSnapshot().context;
    assert.equal(ctx.token, 1);
    assert.equal(ctx.lastRenewedAt, 0);
    assert.match(ctx.why, /acquired the lease with token 1/);
  });

  await t.step("renews every renewMs and stays held while renewals succeed", async () => {
    using h = harness();
    await h.advance(1000);
    assert.deepEqual(calls(h.fake, "renew"), [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]);
    assert.equal(stateOf(h.actor), '{"held":"waiting"}');
    assert.equal(h.actor.getSnapshot().context.lastRenewedAt, 1000);
    assert.equal(h.actor.getSnapshot().context.renewals, 10);
    assert.deepEqual(h.emitted.filter((e) => e.type !== "renewDue").map((e) => e.type), [
      "acquired",
    ], "no loss announced");
    assert.equal(h.emitted.filter((e) => e.type === "renewDue").length, 10);
  });

  await t.step(
    "RENEW_NOW renews at once and restarts the timer; only the timer says renewDue",
    async () => {
      using h = harness();
      await h.advance(150); // acquired at 0, renewed on the timer at 100
      h.actor.send({ type: "RENEW_NOW" });
      assert.equal(stateOf(h.actor), '{"held":"renewing"}');
      await h.advance(0);
      assert.equal(stateOf(h.actor), '{"held":"waiting"}');
      assert.equal(h.actor.getSnapshot().context.lastRenewedAt, 150);
      await h.advance(200);
      // The next renewals count from 150: the timer restarted with the early renewal.
      assert.deepEqual(calls(h.fake, "renew"), [100, 150, 250, 350]);
      // The renewal at RENEW_NOW announces nothing (the manager must not pull the others again).
      const due = h.emitted.filter((e) => e.type === "renewDue");
      assert.equal(due.length, 3);
      assert.deepEqual(due[0], { type: "renewDue", role: "backup-scheduler" });
    },
  );

  await t.step("RENEW_NOW is ignored while renewing, retrying or standing by", async () => {
    using h = harness();
    h.fake.latencyMs = 20;
    await h.advance(125); // held from 20; the timer's renewal went out at 120, answer due at 140
    assert.equal(stateOf(h.actor), '{"held":"renewing"}');
    h.actor.send({ type: "RENEW_NOW" });
    await h.advance(20);
    assert.deepEqual(calls(h.fake, "renew"), [120], "no second renewal while one runs");
    assert.equal(stateOf(h.actor), '{"held":"waiting"}');
    h.fake.mode = "down";
    await h.advance(100); // the renewal at 240 fails: retry after renewRetryMs (25)
    assert.equal(stateOf(h.actor), '{"held":"retrying"}');
    h.actor.send({ type: "RENEW_NOW" });
    assert.equal(stateOf(h.actor), '{"held":"retrying"}');
    assert.deepEqual(calls(h.fake, "renew"), [120, 240]);
    await h.advance(20);
    assert.deepEqual(calls(h.fake, "renew"), [120, 240, 265], "retried on its own timer");

    using s = harness();
    s.fake.other = { instance: "b", token: 7, ttlMs: 250 };
    await s.advance(10);
    assert.equal(stateOf(s.actor), '"standby"');
    s.actor.send({ type: "RENEW_NOW" });
    await s.advance(0);
    assert.equal(stateOf(s.actor), '"standby"');
    assert.deepEqual(calls(s.fake, "acquire"), [0]);
    assert.deepEqual(calls(s.fake, "renew"), []);
  });

  await t.step("a renewal that finds another holder drops to standby at once", async () => {
    using h = harness();
    await h.advance(150);
    h.fake.other = { instance: "b", token: 7, ttlMs: 250 };
    await h.advance(50);
    assert.equal(stateOf(h.actor), '"standby"');
    assert.deepEqual(h.emitted.at(-1), {
      type: "lost",
      role: "backup-scheduler",
      token: 1,
      reason: "taken",
      why: "lost the lease: renewal found it held by b (token 7)",
    });
    assert.deepEqual(h.actor.getSnapshot().context.holder, { instance: "b", token: 7 });
  });

  await t.step("a renewal that finds the lease gone reports it expired", async () => {
    using h = harness();
    await h.advance(50);
    h.fake.mine = null;
    await h.advance(50);
    assert.equal(stateOf(h.actor), '"standby"');
    const lost = h.emitted.at(-1);
    assert.equal(lost?.type === "lost" && lost.reason, "expired");
  });

  const outages = { down: "refuses every call", hang: "never answers" } as const;
  for (const mode of ["down", "hang"] as const) {
    await t.step(`demotes itself at ttl - margin when Redis ${outages[mode]}`, async () => {
      using h = harness();
      await h.advance(100); // last successful renewal is sent at t=100
      assert.equal(h.actor.getSnapshot().context.lastRenewedAt, 100);
      h.fake.mode = mode;
      await h.advance(239); // t=339: 239 ms after the renewal, margin not reached yet
      assert.match(stateOf(h.actor), /held/);
      const retries = calls(h.fake, "renew").filter((at) => at > 100);
      assert.ok(retries.length >= 2, `it kept retrying the renewal: ${retries}`);
      await h.advance(1); // t=340 = 100 + ttl 300 - margin 60
      assert.equal(stateOf(h.actor), '"standby"');
      const lost = h.emitted.at(-1);
      assert.ok(lost?.type === "lost");
      assert.equal(lost.reason, "expired");
      assert.match(lost.why, /not renewed within 240 ms/);
    });
  }

  await t.step("the deadline counts from when the renewal was sent, not answered", async () => {
    using h = harness();
    await h.advance(0);
    h.fake.latencyMs = 30;
    await h.advance(130); // renewal sent at 100, answered at 130
    assert.equal(h.actor.getSnapshot().context.lastRenewedAt, 100);
    assert.equal(h.actor.getSnapshot().context.observedAt, 130);
    h.fake.mode = "down";
    await h.advance(209); // t=339
    assert.match(stateOf(h.actor), /held/);
    await h.advance(1); // t=340 = 100 + 240, not 130 + 240
    assert.equal(stateOf(h.actor), '"standby"');
  });

  await t.step("a standby waits for the holder's TTL, not every retryMs", async () => {
    using h = harness();
    h.fake.other = { instance: "b", token: 4, ttlMs: 5000 };
    await h.advance(350);
    assert.deepEqual(calls(h.fake, "acquire"), [0]);
    assert.equal(stateOf(h.actor), '"standby"');
    assert.match(h.actor.getSnapshot().context.why, /held by b \(token 4\) for 5000 ms more/);
    // The holder released and said so: WAKE tries at once.
    h.fake.other = null;
    h.actor.send({ type: "WAKE" });
    await h.advance(0);
    assert.deepEqual(calls(h.fake, "acquire"), [0, 350]);
    assert.equal(stateOf(h.actor), '{"held":"waiting"}');
    assert.equal(h.actor.getSnapshot().context.token, 1);
  });

  await t.step("with WAKEs wired, a standby polls a held lease only every standbyMs", async () => {
    using h = harness({ standbyMs: 1000 });
    h.fake.other = { instance: "b", token: 4, ttlMs: 300 };
    await h.advance(1500);
    assert.deepEqual(calls(h.fake, "acquire"), [0, 1000]);
    // The holder left the cluster: WAKE tries now, finds its lease still running for 300 ms,
    // and tries again right at its end, not standbyMs later.
    h.actor.send({ type: "WAKE" });
    await h.advance(0);
    assert.deepEqual(calls(h.fake, "acquire"), [0, 1000, 1500]);
    h.fake.other = null;
    await h.advance(301);
    assert.deepEqual(calls(h.fake, "acquire"), [0, 1000, 1500, 1801]);
    assert.equal(stateOf(h.actor), '{"held":"waiting"}');
  });

  await t.step("with no holder seen, retries every retryMs", async () => {
    using h = harness();
    h.fake.mode = "down";
    await h.advance(250);
    assert.deepEqual(calls(h.fake, "acquire"), [0, 100, 200]);
  });

  await t.step("wakes up right when a seen lease runs out", async () => {
    using h = harness();
    h.fake.other = { instance: "b", token: 4, ttlMs: 37 };
    await h.advance(0);
    h.fake.other = null;
    await h.advance(40);
    assert.deepEqual(calls(h.fake, "acquire"), [0, 38]);
    assert.match(stateOf(h.actor), /held/);
  });

  await t.step("an unreachable Redis while acquiring is a transition, not a crash", async () => {
    using h = harness();
    h.fake.mode = "down";
    await h.advance(250);
    assert.equal(h.actor.getSnapshot().status, "active");
    assert.equal(stateOf(h.actor), '"standby"');
    assert.equal(h.actor.getSnapshot().context.lastError, "connect ECONNREFUSED");
    assert.deepEqual(calls(h.fake, "acquire"), [0, 100, 200]);
    assert.deepEqual(h.emitted[0], {
      type: "failed",
      role: "backup-scheduler",
      op: "acquire",
      error: "connect ECONNREFUSED",
    });
    h.fake.mode = "hang";
    await h.advance(250); // the t=300 attempt hangs, times out at 350, retries at 450
    assert.deepEqual(calls(h.fake, "acquire").slice(3), [300, 450]);
    h.fake.mode = "ok";
    await h.advance(200);
    assert.match(stateOf(h.actor), /held/);
  });

  await t.step("RESIGN stops acting first, then releases its token and finishes", async () => {
    using h = harness();
    await h.advance(50);
    h.actor.send({ type: "RESIGN" });
    assert.equal(stateOf(h.actor), '"resigning"');
    assert.deepEqual(h.emitted.at(-1), {
      type: "lost",
      role: "backup-scheduler",
      token: 1,
      reason: "resigned",
      why: "resigning: stopped acting before releasing the lease",
    });
    await h.advance(0);
    assert.equal(h.actor.getSnapshot().status, "done");
    assert.deepEqual(h.fake.calls.at(-1)?.input, {
      role: "backup-scheduler",
      instanceId: "a",
      token: 1,
    });
    assert.equal(h.fake.mine, null);
  });

  await t.step("RESIGN with Redis down still finishes after the op timeout", async () => {
    using h = harness();
    h.fake.other = { instance: "b", token: 2, ttlMs: 1000 };
    await h.advance(10);
    h.fake.mode = "hang";
    h.actor.send({ type: "RESIGN" });
    assert.equal(h.emitted.length, 0, "a standby instance announces no loss");
    await h.advance(49);
    assert.equal(h.actor.getSnapshot().status, "active");
    await h.advance(1);
    assert.equal(h.actor.getSnapshot().status, "done");
    assert.match(h.actor.getSnapshot().context.why, /expires by itself/);
  });

  await t.step("delays come from the input", async () => {
    using h = harness({ renewMs: 20, retryMs: 7, safetyMarginMs: 100 });
    h.fake.mode = "down";
    await h.advance(15);
    assert.deepEqual(calls(h.fake, "acquire"), [0, 7, 14]);
    h.fake.mode = "ok";
    await h.advance(50);
    assert.deepEqual(calls(h.fake, "renew"), [41, 61]);
    h.fake.mode = "down";
    await h.advance(195); // t=260; last renewal sent at 61: valid until 61 + 300 - 100 = 261
    assert.match(stateOf(h.actor), /held/);
    await h.advance(1);
    assert.equal(stateOf(h.actor), '"standby"');
  });
});
