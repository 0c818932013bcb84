import assert from "node:assert/strict";
import { createActor, fromCallback, fromPromise, SimulatedClock, type Snapshot } from "xstate";
import {
  type BackupAlert,
  type BackupSchedulerInput,
  backupSchedulerMachine,
  type CreateBackupInput,
  type CreateBackupOutput,
  type LastRuns,
  type LastRunsReading,
  type NextRuns,
  type ReadScheduleInput,
  resumeSnapshot,
  type ScheduleReading,
  type VerifyBackupOutput,
} from "../../machines/backup_scheduler.ts";
import { nextCronRun } from "../../actors/backup/settings.ts";

const HOUR = 3_600_000;
const T0 = Date.parse("2025-01-15T00:30:00Z");

/** A backup effect the test settles by hand. */
interface Pending {
  input: CreateBackupInput;
  signal: AbortSignal;
  resolve(output: CreateBackupOutput): void;
  reject(error: Error): void;
}

/** Each schedule's next run after `at`, as croner computes it in production. */
function nextRuns(input: ReadScheduleInput, at: number): NextRuns {
  return Object.fromEntries(input.schedules.map((s) => [s.type, nextCronRun(s.cron, at)]));
}

function harness(options: {
  input?: Partial<BackupSchedulerInput>;
  lastRuns?: LastRuns;
  verifyFails?: boolean;
  /** Restore from this persisted snapshot instead of starting fresh. */
  snapshot?: Snapshot<unknown>;
  /** Start the simulated clock here (default T0). */
  at?: number;
} = {}) {
  const clock = new SimulatedClock();
  clock.set(options.at ?? T0);
  const pending: Pending[] = [];
  const readings: number[] = [];
  const alerts: BackupAlert[] = [];
  const verified: string[] = [];
  let prunes = 0;
  let inFlight = 0;
  let maxInFlight = 0;
  const logic = backupSchedulerMachine.provide({
    actors: {
      leaseWatch: fromCallback(() => () => {}),
      readSchedule: fromPromise<ScheduleReading, ReadScheduleInput>(({ input }) => {
        readings.push(clock.now());
        return Promise.resolve({ at: clock.now(), next: nextRuns(input, clock.now()) });
      }),
      loadLastRuns: fromPromise<LastRunsReading, ReadScheduleInput>(({ input }) => {
        const lastRuns = options.lastRuns ?? {};
        const nextAfterLast: NextRuns = {};
        for (const s of input.schedules) {
          const last = lastRuns[s.type];
          if (last !== undefined) nextAfterLast[s.type] = nextCronRun(s.cron, last);
        }
        return Promise.resolve({ at: clock.now(), lastRuns, nextAfterLast });
      }),
      createBackup: fromPromise<CreateBackupOutput, CreateBackupInput>(({ input, signal }) => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        return new Promise<CreateBackupOutput>((resolve, reject) => {
          const done = () => inFlight--;
          pending.push({
            input,
            signal,
            resolve: (o) => {
              done();
              resolve(o);
            },
            reject: (e) => {
              done();
              reject(e);
            },
          });
          signal.addEventListener("abort", () => {
            done();
            reject(new Error("aborted"));
          });
        });
      }),
      verifyBackup: fromPromise<VerifyBackupOutput, { name: string }>(({ input }) => {
        verified.push(input.name);
        return Promise.resolve(
          options.verifyFails
            ? { ok: false, error: "test-restore failed: row counts differ", at: clock.now() }
            : { ok: true, summary: `verified ${input.name}`, at: clock.now() },
        );
      }),
      prune: fromPromise(() => {
        prunes++;
        return Promise.resolve({ deleted: 1 });
      }),
    },
    actions: { alert: (_, params: BackupAlert) => void alerts.push(params) },
  });
  const actor = createActor(logic, {
    clock,
    snapshot: options.snapshot,
    input: {
      schedules: { full: "0 2 * * *", incremental: "0 * * * *" },
      retryMax: 2,
      retryDelayMs: 60_000,
      ...options.input,
    },
  });
  actor.start();
  return {
    clock,
    actor,
    pending,
    readings,
    alerts,
    verified,
    prunes: () => prunes,
    maxInFlight: () => maxInFlight,
    state: () => JSON.stringify(actor.getSnapshot().value),
    ctx: () => actor.getSnapshot().context,
    /** Asks for a backup as the transport does, stamped with the injected clock. */
    request: (backupType: "full" | "base" | "incremental" | "differential") =>
      actor.send({ type: "BACKUP.REQUEST", backupType, at: clock.now() }),
    /** The persisted snapshot after a JSON round trip, as a store would hand it back. */
    persisted: () => JSON.parse(JSON.stringify(actor.getPersistedSnapshot())) as Snapshot<unknown>,
    /** Lets promise callbacks run. */
    settle: () => new Promise<void>((resolve) => setTimeout(resolve, 0)),
    /** Moves the simulated clock to `at` (ms since epoch), then settles. */
    async advanceTo(at: number) {
      clock.increment(at - clock.now());
      await new Promise<void>((resolve) => setTimeout(resolve, 0));
    },
  };
}

function done(name: string, at = 0): CreateBackupOutput {
  return { ok: true, name, skipped: false, summary: `stored ${name}`, at };
}

Deno.test("backup scheduler", async (t) => {
  await t.step("waits in standby without the lease and refuses requests", async () => {
    const h = harness();
    await h.settle();
    assert.equal(h.state(), '"standby"');
    h.request("full");
    assert.equal(h.ctx().stats.refused, 1);
    assert.equal(h.pending.length, 0);
    h.actor.stop();
  });

  await t.step("runs each schedule when due: create, verify, prune, then idle", async () => {
    const h = harness();
    h.actor.send({ type: "LEASE.ACQUIRED", token: 7 });
    await h.settle();
    assert.match(h.state(), /"work":"idle"/);
    assert.equal(h.ctx().nextDue.incremental, Date.parse("2025-01-15T01:00:00Z"));
    await h.advanceTo(Date.parse("2025-01-15T01:00:00Z"));
    assert.equal(h.pending.length, 1);
    assert.deepEqual(h.pending[0].input.job.type, "incremental");
    assert.equal(h.pending[0].input.job.trigger, "schedule");
    assert.match(h.state(), /"running":"creating"/);
    h.pending[0].resolve(done("i1"));
    await h.settle();
    assert.deepEqual(h.verified, ["i1"]);
    assert.equal(h.prunes(), 1);
    assert.match(h.state(), /"work":"idle"/);
    assert.equal(h.ctx().stats.completed, 1);
    // At 02:00 both schedules are due: full runs first, then the incremental, one at a time.
    await h.advanceTo(Date.parse("2025-01-15T02:00:00Z"));
    assert.equal(h.pending.length, 2);
    assert.equal(h.pending[1].input.job.type, "full");
    h.pending[1].resolve(done("f1"));
    await h.settle();
    assert.equal(h.pending.length, 3);
    assert.equal(h.pending[2].input.job.type, "incremental");
    h.pending[2].resolve(done("i2"));
    await h.settle();
    assert.equal(h.maxInFlight(), 1);
    assert.equal(h.ctx().nextDue.full, Date.parse("2025-01-16T02:00:00Z"));
    h.actor.stop();
  });

  await t.step("never runs two backups at once; a busy type is queued only once", async () => {
    const h = harness();
    h.actor.send({ type: "LEASE.ACQUIRED" });
    await h.settle();
    h.request("full");
    await h.settle();
    assert.equal(h.pending.length, 1);
    // A long full backup: hourly incrementals fall due three times, requests arrive twice.
    await h.advanceTo(T0 + 3 * HOUR);
    h.request("incremental");
    h.request("full");
    await h.settle();
    assert.equal(h.pending.length, 1, "still only the first backup in flight");
    assert.deepEqual(h.ctx().queue.map((j) => j.type), ["incremental"]);
    h.pending[0].resolve(done("f1"));
    await h.settle();
    assert.equal(h.pending.length, 2);
    assert.equal(h.pending[1].input.job.type, "incremental");
    h.pending[1].resolve(done("i1"));
    await h.settle();
    assert.equal(h.maxInFlight(), 1);
    assert.deepEqual(h.ctx().queue, []);
    h.actor.stop();
  });

  await t.step("a failure alerts and retries with backoff; then gives up", async () => {
    const h = harness();
    h.actor.send({ type: "LEASE.ACQUIRED" });
    await h.settle();
    h.request("full");
    await h.settle();
    h.pending[0].reject(new Error("pg_dump failed: connection refused"));
    await h.settle();
    assert.match(h.state(), /"work":"failed"/);
    assert.equal(h.alerts.length, 1);
    assert.equal(h.alerts[0].kind, "failed");
    assert.match(h.alerts[0].error, /connection refused/);
    // First retry after 60 s.
    await h.advanceTo(T0 + 59_999);
    assert.equal(h.pending.length, 1);
    await h.advanceTo(T0 + 60_000);
    assert.equal(h.pending.length, 2);
    assert.equal(h.pending[1].input.attempt, 2);
    h.pending[1].reject(new Error("still down"));
    await h.settle();
    // Second retry after 120 s more.
    await h.advanceTo(T0 + 60_000 + 120_000);
    assert.equal(h.pending.length, 3);
    h.pending[2].reject(new Error("still down"));
    await h.settle();
    assert.equal(h.alerts.length, 3);
    assert.equal(h.alerts[2].kind, "gave_up");
    assert.match(h.state(), /"work":"idle"/);
    assert.equal(h.ctx().stats.gaveUp, 1);
    assert.equal(h.ctx().job, null);
    h.actor.stop();
  });

  await t.step("a failed verification fails the run and raises an alert", async () => {
    const h = harness({ verifyFails: true, input: { retryMax: 0 } });
    h.actor.send({ type: "LEASE.ACQUIRED" });
    await h.settle();
    h.request("base");
    await h.settle();
    h.pending[0].resolve(done("b1"));
    await h.settle();
    assert.deepEqual(h.verified, ["b1"]);
    assert.equal(h.alerts[0].kind, "gave_up");
    assert.match(h.alerts[0].error, /verification failed: test-restore failed/);
    assert.equal(h.ctx().stats.completed, 0);
    h.actor.stop();
  });

  await t.step("a schedule missed while nobody held the lease runs once at takeover", async () => {
    // The last full backup ran three days ago (02:00 schedule): missed three times, run once.
    const h = harness({
      input: { schedules: { full: "0 2 * * *" } },
      lastRuns: { full: Date.parse("2025-01-12T02:00:00Z") },
    });
    h.actor.send({ type: "LEASE.ACQUIRED" });
    await h.settle();
    assert.equal(h.pending.length, 1);
    assert.equal(h.pending[0].input.job.trigger, "missed");
    assert.equal(h.ctx().stats.missed, 1);
    h.pending[0].resolve(done("f1"));
    await h.settle();
    assert.match(h.state(), /"work":"idle"/);
    assert.equal(h.pending.length, 1);
    // Nothing else until the next 02:00.
    await h.advanceTo(Date.parse("2025-01-15T01:59:59Z"));
    assert.equal(h.pending.length, 1);
    await h.advanceTo(Date.parse("2025-01-15T02:00:00Z"));
    assert.equal(h.pending.length, 2);
    assert.equal(h.pending[1].input.job.trigger, "schedule");
    h.actor.stop();
  });

  await t.step("nothing is missed when the last run is recent", async () => {
    const h = harness({
      input: { schedules: { full: "0 2 * * *" } },
      lastRuns: { full: Date.parse("2025-01-14T02:00:00Z") },
    });
    h.actor.send({ type: "LEASE.ACQUIRED" });
    await h.settle();
    assert.equal(h.pending.length, 0);
    assert.equal(h.ctx().stats.missed, 0);
    h.actor.stop();
  });

  await t.step("losing the lease aborts the running backup and stops scheduling", async () => {
    const h = harness();
    h.actor.send({ type: "LEASE.ACQUIRED" });
    await h.settle();
    h.request("full");
    await h.settle();
    assert.equal(h.pending[0].signal.aborted, false);
    h.actor.send({ type: "LEASE.LOST", reason: "taken" });
    await h.settle();
    assert.equal(h.pending[0].signal.aborted, true);
    assert.equal(h.state(), '"standby"');
    assert.match(h.ctx().reason, /abandoned the full backup/);
    await h.advanceTo(T0 + 5 * HOUR);
    assert.equal(h.pending.length, 1, "no schedule runs on a standby");
    h.actor.stop();
  });

  await t.step("each attempt carries the fencing token the chart got with the lease", async () => {
    const h = harness();
    h.actor.send({ type: "LEASE.ACQUIRED", token: 7 });
    await h.settle();
    h.request("full");
    await h.settle();
    assert.equal(h.pending[0].input.leaseToken, 7);
    h.actor.send({ type: "LEASE.LOST", reason: "expired" });
    await h.settle();
    assert.equal(h.ctx().leaseToken, null);
    h.actor.send({ type: "LEASE.ACQUIRED", token: 9 });
    await h.settle();
    h.request("full");
    await h.settle();
    assert.equal(h.pending[1].input.leaseToken, 9);
    h.actor.stop();
  });

  await t.step("a failure the effect reports is timed by the effect's clock", async () => {
    const h = harness({ input: { retryMax: 0 } });
    h.actor.send({ type: "LEASE.ACQUIRED" });
    await h.settle();
    h.request("full");
    await h.settle();
    await h.advanceTo(T0 + 90_000);
    h.pending[0].resolve({ ok: false, error: "disk full", at: h.clock.now() });
    await h.settle();
    assert.deepEqual(h.ctx().lastRun, {
      type: "full",
      name: null,
      ok: false,
      at: T0 + 90_000,
      summary: "disk full",
    });
    assert.equal(h.alerts[0].at, T0 + 90_000);
    assert.equal(h.alerts[0].kind, "gave_up");
    h.actor.stop();
  });

  await t.step("the context is data: snapshots in every phase survive JSON", async () => {
    const h = harness({ input: { retryMax: 1 } });
    const phases: string[] = [];
    const check = () => {
      assert.deepEqual(JSON.parse(JSON.stringify(h.ctx())), h.ctx(), `context of ${h.state()}`);
      phases.push(h.state());
    };
    check(); // standby
    h.actor.send({ type: "LEASE.ACQUIRED", token: 3 });
    await h.settle();
    check(); // idle
    h.request("full");
    await h.settle();
    check(); // creating
    h.pending[0].reject(new Error("connection refused"));
    await h.settle();
    check(); // failed, waiting for the retry
    assert.match(phases.join(" "), /standby.*idle.*creating.*failed/);
    h.actor.stop();
  });

  await t.step(
    "a restored snapshot re-runs nothing on its own, then resumes the interrupted job and re-arms its timers",
    async () => {
      const first = harness();
      first.actor.send({ type: "LEASE.ACQUIRED", token: 1 });
      await first.settle();
      first.request("full");
      await first.settle();
      assert.match(first.state(), /"running":"creating"/);
      const persisted = first.persisted();
      first.actor.stop();

      const h = harness({ snapshot: resumeSnapshot(persisted), at: first.clock.now() });
      await h.settle();
      assert.equal(h.state(), '"standby"');
      assert.equal(h.pending.length, 0, "the in-flight backup does not run again by itself");
      assert.match(h.ctx().reason, /restored from a snapshot.*interrupted full backup/);
      assert.equal(h.ctx().leaseToken, null);
      h.actor.send({ type: "LEASE.ACQUIRED", token: 2 });
      await h.settle();
      assert.equal(h.pending.length, 1);
      assert.equal(h.pending[0].input.job.type, "full");
      assert.equal(h.pending[0].input.attempt, 2, "the interrupted attempt counts");
      assert.equal(h.pending[0].input.leaseToken, 2);
      h.pending[0].resolve(done("f1", h.clock.now()));
      await h.settle();
      assert.match(h.state(), /"work":"idle"/);
      // The clock region was re-armed from the schedules: the 01:00 incremental runs.
      await h.advanceTo(Date.parse("2025-01-15T01:00:00Z"));
      assert.equal(h.pending.length, 2);
      assert.equal(h.pending[1].input.job.type, "incremental");
      h.actor.stop();
    },
  );

  await t.step(
    "a snapshot restored while waiting for a schedule fires at the due time",
    async () => {
      const first = harness({ input: { schedules: { full: "0 2 * * *" } } });
      first.actor.send({ type: "LEASE.ACQUIRED" });
      await first.settle();
      await first.advanceTo(Date.parse("2025-01-15T01:00:00Z"));
      const persisted = first.persisted();
      first.actor.stop();
      const h = harness({
        input: { schedules: { full: "0 2 * * *" } },
        snapshot: resumeSnapshot(persisted),
        at: Date.parse("2025-01-15T01:30:00Z"),
      });
      h.actor.send({ type: "LEASE.ACQUIRED" });
      await h.settle();
      await h.advanceTo(Date.parse("2025-01-15T01:59:59Z"));
      assert.equal(h.pending.length, 0);
      await h.advanceTo(Date.parse("2025-01-15T02:00:00Z"));
      assert.equal(h.pending.length, 1, "the restored clock region fired at 02:00");
      assert.equal(h.pending[0].input.job.trigger, "schedule");
      h.actor.stop();
    },
  );

  await t.step("records alerts broadcast by other instances", () => {
    const h = harness();
    h.actor.send({
      type: "backup.alert",
      kind: "gave_up",
      backupType: "full",
      attempt: 4,
      error: "disk full",
      at: T0,
      instance: "host-b",
    });
    assert.equal(h.ctx().lastAlert?.instance, "host-b");
    assert.equal(h.ctx().lastAlert?.error, "disk full");
    h.actor.stop();
  });
});
