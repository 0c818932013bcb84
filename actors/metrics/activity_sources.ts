/**
 * The sources the default alert rules and the plan's dashboards read besides system,
 * streams, database and cache (sources.ts):
 *
 * | source | scope | writes |
 * | --- | --- | --- |
 * | `auth` | cluster | `auth_logins` (failed, succeeded, mfa_required, mfa_locked per interval), `auth_mfa_checks` per method and outcome, `auth_mfa_enrolled` per method, `sessions` (active, created, revoked) |
 * | `backup` | cluster | `backup_status` per type: last run failed, age of the newest verified backup, the age its schedule allows, overdue, size and duration of the newest backup |
 * | `database_up` | host | `database_up` (1 when this instance reached PostgreSQL within the probe timeout, else 0) |
 * | `actors` | host | `runtime_actors` (running, restarting, given up) |
 *
 * Counts "per interval" are the events since the previous cycle (a source starts counting
 * at its first cycle, so a restart does not replay history); a sum over a window is then the
 * number of events in that window.
 * @module
 */
import type { MetricPoint } from "../../lib/line_protocol.ts";
import {
  activityWatermarks,
  backupStatusByType,
  type EventCounts,
  loginEventsSince,
  mfaAttemptsSince,
  mfaEnrolment,
  sessionActivity,
} from "../../store/activity_stats.ts";
import { ping } from "../../store/database_stats.ts";
import type { Sql } from "../../store/types.ts";
import type { ChildStatus } from "../../machines/supervisor.ts";
import type { PromFamily } from "./prometheus.ts";
import type { Source } from "./sources.ts";

// ---------------------------------------------------------------------------------------
// auth
// ---------------------------------------------------------------------------------------

/** Login journal event types counted as `auth_logins` fields. */
const LOGIN_FIELDS: Record<string, string> = {
  Failed: "failed",
  Authenticated: "succeeded",
  MfaRequired: "mfa_required",
  Locked: "mfa_locked",
};

/** How long an id missing below the read position is asked for (then: a rolled-back insert). */
const GAP_WAIT_MS = 60_000;
/** At most this many missing ids are asked for (the oldest are given up first). */
const GAP_MAX = 1_000;

/** Forgets the ids that appeared, remembers new gaps, gives up old or too many ones. */
function trackGaps(gaps: Map<number, number>, read: EventCounts, at: number): void {
  for (const id of read.found) gaps.delete(id);
  for (const id of read.gaps) if (!gaps.has(id)) gaps.set(id, at);
  for (const [id, since] of gaps) {
    if (at - since > GAP_WAIT_MS || gaps.size > GAP_MAX) gaps.delete(id);
  }
}

/**
 * Login outcomes, MFA checks and enrolment, and sessions (PostgreSQL, whole cluster).
 *
 * Counting starts at the first cycle, and starts over after a gap longer than `maxGapMs`
 * (another instance collected meanwhile, as the coordinator lease moved): what happened in
 * the gap is not reported as one interval's burst, which would look like an attack.
 */
export function authSource(sql: Sql, options: { maxGapMs: number }): Source {
  let marks: { loginEvents: number; mfaAttempts: number } | null = null;
  let lastAt: number | null = null;
  /** Ids below the position not committed yet, with when each was first missed. */
  const loginGaps = new Map<number, number>();
  const checkGaps = new Map<number, number>();
  const totals: Record<string, number> = {
    failed: 0,
    succeeded: 0,
    mfa_required: 0,
    mfa_locked: 0,
  };
  return {
    name: "auth",
    scope: "cluster",
    async collect(at) {
      const points: MetricPoint[] = [];
      const first = marks === null || lastAt === null || at - lastAt > options.maxGapMs;
      if (first || marks === null) {
        marks = await activityWatermarks(sql);
        loginGaps.clear();
        checkGaps.clear();
      }
      const logins = await loginEventsSince(sql, marks.loginEvents, [...loginGaps.keys()]);
      const checks = await mfaAttemptsSince(sql, marks.mfaAttempts, [...checkGaps.keys()]);
      marks = { loginEvents: logins.lastId, mfaAttempts: checks.lastId };
      trackGaps(loginGaps, logins, at);
      trackGaps(checkGaps, checks, at);
      const fields: Record<string, number> = {};
      for (const [event, field] of Object.entries(LOGIN_FIELDS)) {
        fields[field] = logins.counts[event] ?? 0;
        totals[field] += fields[field];
      }
      // Zeros are written too: "no failed login" is a value, not a gap an alert reads as
      // no data.
      points.push({ measurement: "auth_logins", fields, time: at });
      for (const [key, count] of Object.entries(checks.counts)) {
        const [method, outcome] = key.split("/");
        points.push({
          measurement: "auth_mfa_checks",
          tags: { method, outcome },
          fields: { count },
          time: at,
        });
      }
      const enrolment = await mfaEnrolment(sql);
      const enrolled = Object.values(enrolment.enrolled).reduce((a, b) => a + b, 0);
      points.push({
        measurement: "auth_mfa_users",
        fields: {
          active_users: enrolment.activeUsers,
          enrolled,
          percent: enrolment.activeUsers > 0 ? (enrolled / enrolment.activeUsers) * 100 : 0,
        },
        time: at,
      });
      for (const [method, users] of Object.entries(enrolment.enrolled)) {
        points.push({
          measurement: "auth_mfa_enrolled",
          tags: { method },
          fields: { users },
          time: at,
        });
      }
      const from = first || lastAt === null ? at : lastAt;
      const s = await sessionActivity(sql, new Date(from), new Date(at));
      lastAt = at;
      points.push({
        measurement: "sessions",
        fields: { active: s.active, created: s.created, revoked: s.revoked },
        time: at,
      });
      return points;
    },
    counters() {
      if (marks === null) return [];
      const name = "rootstream_auth_login_attempts_total";
      return [{
        name,
        help: "Login attempts ended since this instance's collector started, by outcome",
        type: "counter",
        samples: Object.entries(totals).map(([outcome, value]) => ({
          name,
          labels: { outcome },
          value,
        })),
      }];
    },
  };
}

// ---------------------------------------------------------------------------------------
// backup
// ---------------------------------------------------------------------------------------

/** What the backup source needs of the backup settings. */
export interface BackupScheduleView {
  /** Cron expression per type, or null when not scheduled. */
  schedules: Readonly<Record<string, string | null>>;
  /** Next time a cron expression fires strictly after `afterMs` (null: never). */
  nextRun(expression: string, afterMs: number): number | null;
  /** True when backups are verified after they are taken (BACKUP_VERIFY is not off). */
  verified: boolean;
  /** How long after a scheduled time its verified backup may still be missing (ms). */
  graceMs: number;
}

/**
 * Each backup type's last outcome and the age of its newest verified backup against the age
 * its schedule allows: a backup is overdue when a scheduled time has passed more than
 * `graceMs` ago since the newest verified one completed (since the source started when
 * there is none). An unscheduled type is never overdue.
 */
export function backupSource(sql: Sql, view: BackupScheduleView): Source {
  let startedAt: number | null = null;
  // The next scheduled time after the newest good backup, per type, by (cron, since): both
  // stay the same between backups, so croner (about 1 ms a call, its time-zone conversions
  // measured as the costliest part of an idle metrics round) runs once per backup, not
  // once per round.
  const dueCache = new Map<string, { cron: string; since: number; due: number | null }>();
  const nextRun = (type: string, cron: string, since: number): number | null => {
    const hit = dueCache.get(type);
    if (hit && hit.cron === cron && hit.since === since) return hit.due;
    const due = view.nextRun(cron, since);
    dueCache.set(type, { cron, since, due });
    return due;
  };
  return {
    name: "backup",
    scope: "cluster",
    async collect(at) {
      startedAt ??= at;
      const rows = await backupStatusByType(sql);
      const byType = new Map(rows.map((r) => [r.type, r]));
      const types = new Set([
        ...rows.map((r) => r.type),
        ...Object.entries(view.schedules).filter(([, c]) => c).map(([t]) => t),
      ]);
      const points: MetricPoint[] = [];
      for (const type of [...types].sort()) {
        const r = byType.get(type);
        const good = view.verified ? r?.lastVerifiedAt : r?.lastCompletedAt;
        const since = good?.getTime() ?? startedAt;
        const cron = view.schedules[type] ?? null;
        const due = cron ? nextRun(type, cron, since) : null;
        const fields: Record<string, number | null> = {
          last_failed: r?.lastStatus === "failed" ? 1 : 0,
          verified_age_seconds: good ? Math.max(0, (at - good.getTime()) / 1000) : null,
          allowed_age_seconds: due !== null ? (due + view.graceMs - since) / 1000 : null,
          overdue: due !== null && at > due + view.graceMs ? 1 : 0,
          size_bytes: r?.lastSizeBytes ?? null,
          duration_seconds: r?.lastDurationMs != null ? r.lastDurationMs / 1000 : null,
        };
        points.push({ measurement: "backup_status", tags: { type }, fields, time: at });
      }
      return points;
    },
  };
}

// ---------------------------------------------------------------------------------------
// database_up
// ---------------------------------------------------------------------------------------

/**
 * Whether this instance reaches PostgreSQL: `SELECT 1` within `timeoutMs`. A failure is a
 * point (up = 0), not a source error: database downtime is what this source reports.
 */
export function databaseUpSource(
  sql: Sql,
  options: {
    host: string;
    instance: string;
    timeoutMs: number;
    probe?: (sql: Sql) => Promise<void>;
  },
): Source {
  const probe = options.probe ?? ping;
  let up: number | null = null;
  return {
    name: "database_up",
    scope: "host",
    async collect(at) {
      let timer: number | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error("timed out")), options.timeoutMs);
      });
      try {
        await Promise.race([probe(sql), timeout]);
        up = 1;
      } catch {
        up = 0;
      } finally {
        clearTimeout(timer);
      }
      return [{
        measurement: "database_up",
        tags: { host: options.host, instance: options.instance },
        fields: { up },
        time: at,
      }];
    },
    counters(): PromFamily[] {
      if (up === null) return [];
      return [{
        name: "rootstream_database_up",
        help: "1 when this instance reached PostgreSQL in the last cycle",
        type: "gauge",
        samples: [{
          name: "rootstream_database_up",
          labels: { host: options.host, instance: options.instance },
          value: up,
        }],
      }];
    },
  };
}

// ---------------------------------------------------------------------------------------
// actors
// ---------------------------------------------------------------------------------------

/** How many supervised actors run, wait to restart, or were given up, on this instance. */
export function actorsSource(
  supervised: () => Record<string, ChildStatus>,
  options: { host: string },
): Source {
  return {
    name: "actors",
    scope: "host",
    collect(at) {
      const counts = { running: 0, restarting: 0, given_up: 0 };
      for (const c of Object.values(supervised())) {
        if (c.status === "running") counts.running++;
        else if (c.status === "restarting") counts.restarting++;
        else if (c.status === "failed") counts.given_up++;
      }
      return Promise.resolve([{
        measurement: "runtime_actors",
        tags: { host: options.host },
        fields: counts,
        time: at,
      }]);
    },
  };
}
