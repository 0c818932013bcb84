/**
 * The sources the default alert rules read (actors/metrics/activity_sources.ts), against a
 * real PostgreSQL: failed logins and MFA lockouts from the login journal, MFA enrolment,
 * sessions, each backup type's last outcome and whether its verified backup is overdue,
 * database reachability and the supervisor's given-up actors.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import type { MetricPoint } from "../../lib/line_protocol.ts";
import { migrate } from "../../store/migrations.ts";
import { createEventStore } from "../../store/event_store.ts";
import {
  completeBackupRun,
  failBackupRun,
  insertBackupRun,
  markVerified,
} from "../../store/backup_history.ts";
import type { Sql } from "../../store/types.ts";
import { createUser } from "../../store/users.ts";
import { nextCronRun } from "../../actors/backup/settings.ts";
import {
  actorsSource,
  authSource,
  backupSource,
  databaseUpSource,
} from "../../actors/metrics/activity_sources.ts";
import { freePort, startPostgres } from "../harness/mod.ts";

function one(points: MetricPoint[], measurement: string, tags: Record<string, string> = {}) {
  const found = points.filter((p) =>
    p.measurement === measurement &&
    Object.entries(tags).every(([k, v]) => String(p.tags?.[k]) === v)
  );
  assert.equal(found.length, 1, `${measurement} ${JSON.stringify(tags)}: ${found.length} points`);
  return found[0].fields;
}

const HOUR = 3_600_000;

Deno.test("activity sources (PostgreSQL)", async (t) => {
  await using pg = await startPostgres();
  const sql = postgres(await pg.createDatabase(), { max: 2, onnotice: () => {} }) as Sql;
  try {
    await migrate(sql);
    const events = createEventStore(sql);
    const user = await createUser(sql, {
      username: "watched",
      email: "watched@example.com",
      password: "long enough password",
    }, { hashing: { ln: 10 } });
    const journal = async (type: string, n: number) => {
      for (let i = 0; i < n; i++) {
        await events.append({ type: "login", id: crypto.randomUUID() }, [{ type, data: {} }], {
          expectedVersion: 0,
        });
      }
    };

    await t.step(
      "auth: logins ended per interval, from the journal, history not replayed",
      async () => {
        await journal("Failed", 4); // before the first cycle: not counted
        const auth = authSource(sql, { maxGapMs: 30_000 });
        const t0 = Date.now();
        let fields = one(await auth.collect(t0), "auth_logins");
        assert.deepEqual(fields, { failed: 0, succeeded: 0, mfa_required: 0, mfa_locked: 0 });

        await journal("Failed", 12);
        await journal("Locked", 2);
        await journal("Authenticated", 3);
        // Another aggregate's events move the watermark but are not counted.
        await events.append({ type: "stream", id: "1" }, [{ type: "Failed", data: {} }], {
          expectedVersion: 0,
        });
        fields = one(await auth.collect(t0 + 10_000), "auth_logins");
        assert.deepEqual(fields, { failed: 12, succeeded: 3, mfa_required: 0, mfa_locked: 2 });
        fields = one(await auth.collect(t0 + 20_000), "auth_logins");
        assert.equal(fields.failed, 0, "counted once");

        // A long gap (the coordinator lease was elsewhere): the events in it are not one burst.
        await journal("Failed", 20);
        fields = one(await auth.collect(t0 + 120_000), "auth_logins");
        assert.equal(fields.failed, 0, "counting starts over after a gap");
        await journal("Failed", 1);
        fields = one(await auth.collect(t0 + 130_000), "auth_logins");
        assert.equal(fields.failed, 1);

        const counters = auth.counters!()[0];
        assert.equal(counters.name, "rootstream_auth_login_attempts_total");
        assert.equal(counters.samples.find((s) => s.labels?.outcome === "failed")?.value, 13);
      },
    );

    await t.step(
      "auth: a login journaled with a smaller id but committed after a larger one is counted",
      async () => {
        const auth = authSource(sql, { maxGapMs: 30_000 });
        const t0 = Date.now();
        one(await auth.collect(t0), "auth_logins");
        // The first login takes its id, then waits to commit while a second one commits.
        const slow = await sql.reserve();
        try {
          await slow`BEGIN`;
          await slow`INSERT INTO event_log (aggregate_type, aggregate_id, version, event_type)
                     VALUES ('login', ${crypto.randomUUID()}, 1, 'Failed')`;
          await journal("Failed", 1);
          const early = one(await auth.collect(t0 + 1_000), "auth_logins");
          assert.equal(early.failed, 1, "the committed one");
          await slow`COMMIT`;
        } finally {
          slow.release();
        }
        let fields = one(await auth.collect(t0 + 2_000), "auth_logins");
        assert.equal(fields.failed, 1, "the late one, below the position already read");
        fields = one(await auth.collect(t0 + 3_000), "auth_logins");
        assert.equal(fields.failed, 0, "each counted once");
      },
    );

    await t.step("auth: MFA enrolment and code checks, sessions", async () => {
      const auth = authSource(sql, { maxGapMs: 30_000 });
      const t0 = Date.now();
      await auth.collect(t0);
      await sql`
        INSERT INTO user_mfa (user_id, method, secret, is_enabled, confirmed_at)
        VALUES (${user.id}, 'totp', 'v1.0000abcd.AAAA.BBBB', true, now())`;
      await sql`
        INSERT INTO mfa_attempts (user_id, method, purpose, success, outcome)
        VALUES (${user.id}, 'totp', 'login', false, 'invalid'),
               (${user.id}, 'totp', 'login', false, 'invalid'),
               (${user.id}, 'totp', 'login', true, 'accepted')`;
      const points = await auth.collect(t0 + 10_000);
      assert.deepEqual(one(points, "auth_mfa_checks", { method: "totp", outcome: "invalid" }), {
        count: 2,
      });
      assert.deepEqual(one(points, "auth_mfa_enrolled", { method: "totp" }), { users: 1 });
      assert.deepEqual(one(points, "auth_mfa_users"), {
        active_users: 1,
        enrolled: 1,
        percent: 100,
      });
      assert.deepEqual(one(points, "sessions"), { active: 0, created: 0, revoked: 0 });
    });

    await t.step("backup: last run failed, verified backup overdue for its schedule", async () => {
      const now = Date.UTC(2026, 0, 10, 12, 0, 0);
      let calls = 0;
      const view = {
        schedules: { full: "0 2 * * *", base: null },
        nextRun: (cron: string, after: number) => {
          calls++;
          return nextCronRun(cron, after);
        },
        verified: true,
        graceMs: HOUR,
      };
      const backup = backupSource(sql, view);
      // Nothing yet: a scheduled type with no backup counts from the source's start.
      let f = one(await backup.collect(now), "backup_status", { type: "full" });
      assert.equal(f.overdue, 0);
      assert.equal(f.last_failed, 0);
      f = one(await backup.collect(now + 16 * HOUR), "backup_status", { type: "full" });
      assert.equal(f.overdue, 1, "02:00 + 1 h passed with no verified backup");
      assert.equal(calls, 1, "the schedule is not recomputed while the newest backup is the same");

      const run = async (at: number, ok: boolean, suffix: string) => {
        const r = await insertBackupRun(sql, {
          name: `20260110T${suffix}Z-full-abcdef`,
          type: "full",
          path: "/b",
          startedAt: new Date(at),
          trigger: "schedule",
          instanceId: "t",
        });
        if (!ok) return await failBackupRun(sql, r.id, { completedAt: new Date(at), error: "x" });
        await completeBackupRun(sql, r.id, {
          completedAt: new Date(at + 60_000),
          backupSize: 2000,
          compressedSize: 1000,
          encryptionMethod: "aes-256-cbc+hmac-sha256",
          metadata: {},
        });
        await markVerified(sql, r.name, { verifiedAt: new Date(at + 120_000), verification: {} });
      };
      await run(Date.UTC(2026, 0, 11, 2, 0, 0), true, "020000");
      const day2 = Date.UTC(2026, 0, 11, 12, 0, 0);
      f = one(await backup.collect(day2), "backup_status", { type: "full" });
      assert.deepEqual(
        { overdue: f.overdue, last_failed: f.last_failed, size: f.size_bytes },
        { overdue: 0, last_failed: 0, size: 1000 },
      );
      assert.equal(f.verified_age_seconds, (day2 - Date.UTC(2026, 0, 11, 2, 1, 0)) / 1000);
      assert.equal(f.allowed_age_seconds, (24 * HOUR - 60_000 + HOUR) / 1000);
      assert.equal(calls, 2, "a newer verified backup moves the next scheduled time");

      // The next night's run fails: last_failed, and overdue once 03:00 has passed.
      await run(Date.UTC(2026, 0, 12, 2, 0, 0), false, "020001");
      f = one(await backup.collect(Date.UTC(2026, 0, 12, 2, 30, 0)), "backup_status", {
        type: "full",
      });
      assert.deepEqual([f.last_failed, f.overdue], [1, 0]);
      f = one(await backup.collect(Date.UTC(2026, 0, 12, 3, 2, 0)), "backup_status", {
        type: "full",
      });
      assert.deepEqual([f.last_failed, f.overdue], [1, 1]);
      // An unscheduled type is reported but never overdue.
      assert.equal(
        (await backup.collect(day2)).filter((p) => p.tags?.type === "base").length,
        0,
      );
    });

    await t.step("database_up: 1 while PostgreSQL answers, 0 when it does not", async () => {
      const up = databaseUpSource(sql, { host: "db", instance: "rs-1", timeoutMs: 2000 });
      assert.deepEqual(
        one(await up.collect(Date.now()), "database_up", { host: "db", instance: "rs-1" }),
        { up: 1 },
      );
      // Nothing listens on a free port: the connection is refused.
      const closed = postgres(`postgres://rs@127.0.0.1:${await freePort()}/rs`, {
        max: 1,
        connect_timeout: 1,
        onnotice: () => {},
      }) as Sql;
      try {
        const down = databaseUpSource(closed, { host: "db", instance: "rs-1", timeoutMs: 2000 });
        assert.deepEqual(one(await down.collect(Date.now()), "database_up"), { up: 0 });
        assert.equal(down.counters!()[0].samples[0].value, 0);
      } finally {
        await closed.end();
      }
    });
  } finally {
    await sql.end();
  }
});

Deno.test("actors source counts given-up actors", async () => {
  const children = {
    metrics: { status: "running", restarts: 0, recentFailures: 0, generation: 1, lastError: null },
    sync: { status: "failed", restarts: 5, recentFailures: 5, generation: 6, lastError: "boom" },
    backup: { status: "restarting", restarts: 1, recentFailures: 1, generation: 2, lastError: "x" },
  } as const;
  const source = actorsSource(() => ({ ...children }), { host: "rs-1" });
  const [p] = await source.collect(1000);
  assert.equal(p.measurement, "runtime_actors");
  assert.deepEqual(p.tags, { host: "rs-1" });
  assert.deepEqual(p.fields, { running: 1, restarting: 1, given_up: 1 });
});
