/**
 * The SQL behind the metrics concern's `auth` and `backup` sources: login outcomes from the
 * login journal (event_log), MFA enrolment and code checks, live and new sessions, and each
 * backup type's last run and last verified backup. Every statement is a postgres.js tagged
 * template; nothing is spliced into SQL text.
 *
 * Journal rows are counted by id past a position (ids only grow), not by created_at: the
 * journal's created_at is the database's clock, the collector's cycle is the runtime's. Ids
 * that committed out of order are asked for again (see {@linkcode EventCounts}).
 * @module
 */
import type { Sql } from "./types.ts";

/**
 * Counts of journal rows read past a position, and what the next read starts from.
 *
 * Ids come from a sequence when a row is inserted, but rows become visible when their
 * transaction commits, so a smaller id can appear after a larger one was read (two logins
 * committing out of order). A reader that only kept "the highest id seen" would skip such a
 * row for good; so every id below the highest one that was not there is reported in `gaps`,
 * and the caller asks for it again (`pending`) until it appears or is old enough to be a
 * rolled-back insert.
 */
export interface EventCounts {
  /** Highest id seen (the next call's `afterId`). */
  lastId: number;
  /** Count per event type (or per `method/outcome` for MFA checks). */
  counts: Record<string, number>;
  /** Pending ids (asked again) that have appeared now. */
  found: number[];
  /** Ids in (`afterId`, `lastId`] not there yet: ask for them again. */
  gaps: number[];
}

/** The highest id of the login journal and of the MFA attempts log (where counting starts). */
export async function activityWatermarks(
  sql: Sql,
): Promise<{ loginEvents: number; mfaAttempts: number }> {
  const [row] = await sql<{ e: string | null; a: string | null }[]>`
    SELECT (SELECT max(id) FROM event_log) AS e, (SELECT max(id) FROM mfa_attempts) AS a`;
  return { loginEvents: Number(row.e ?? 0), mfaAttempts: Number(row.a ?? 0) };
}

interface CountRow {
  counts: Record<string, string | number> | null;
  last: string | null;
  found: string[] | null;
  gaps: string[] | null;
}

function toCounts(row: CountRow, afterId: number): EventCounts {
  return {
    lastId: Math.max(afterId, Number(row.last ?? afterId)),
    counts: Object.fromEntries(
      Object.entries(row.counts ?? {}).map(([k, n]) => [k, Number(n)]),
    ),
    found: (row.found ?? []).map(Number),
    gaps: (row.gaps ?? []).map(Number),
  };
}

/**
 * Login attempt outcomes journaled after `afterId` or among the `pending` ids (event types of
 * machines/login.ts: `Failed`, `Locked`, `Authenticated`, `MfaRequired`, …), at most `limit`
 * rows read.
 */
export async function loginEventsSince(
  sql: Sql,
  afterId: number,
  pending: number[] = [],
  limit = 100_000,
): Promise<EventCounts> {
  // Over every row past the position (one statement), so the position moves past other
  // aggregates' events too; only the login aggregate's are counted.
  const [row] = await sql<CountRow[]>`
    WITH e AS (
      SELECT id, aggregate_type, event_type FROM event_log
      WHERE id > ${afterId} OR id = ANY(${pending}::bigint[])
      ORDER BY id LIMIT ${limit}
    ), top AS (SELECT max(id) AS last FROM e WHERE id > ${afterId})
    SELECT
      (SELECT json_object_agg(event_type, n) FROM (
        SELECT event_type, count(*) AS n FROM e WHERE aggregate_type = 'login'
        GROUP BY event_type) c) AS counts,
      (SELECT last FROM top) AS last,
      (SELECT array_agg(id) FROM e WHERE id <= ${afterId}) AS found,
      (SELECT array_agg(g) FROM generate_series(${afterId} + 1, (SELECT last FROM top)) g
        WHERE NOT EXISTS (SELECT 1 FROM e WHERE e.id = g)) AS gaps`;
  return toCounts(row, afterId);
}

/** MFA code checks logged after `afterId` or among `pending`, counted per `method/outcome`. */
export async function mfaAttemptsSince(
  sql: Sql,
  afterId: number,
  pending: number[] = [],
  limit = 100_000,
): Promise<EventCounts> {
  const [row] = await sql<CountRow[]>`
    WITH a AS (
      SELECT id, method, outcome FROM mfa_attempts
      WHERE id > ${afterId} OR id = ANY(${pending}::bigint[])
      ORDER BY id LIMIT ${limit}
    ), top AS (SELECT max(id) AS last FROM a WHERE id > ${afterId})
    SELECT
      (SELECT json_object_agg(k, n) FROM (
        SELECT method || '/' || outcome AS k, count(*) AS n FROM a GROUP BY 1) c) AS counts,
      (SELECT last FROM top) AS last,
      (SELECT array_agg(id) FROM a WHERE id <= ${afterId}) AS found,
      (SELECT array_agg(g) FROM generate_series(${afterId} + 1, (SELECT last FROM top)) g
        WHERE NOT EXISTS (SELECT 1 FROM a WHERE a.id = g)) AS gaps`;
  return toCounts(row, afterId);
}

/** Users with a confirmed MFA method, per method, and active users. */
export async function mfaEnrolment(
  sql: Sql,
): Promise<{ activeUsers: number; enrolled: Record<string, number> }> {
  const rows = await sql<{ method: string; n: string }[]>`
    SELECT method, count(*) AS n FROM user_mfa WHERE is_enabled GROUP BY method`;
  const [users] = await sql<{ n: string }[]>`SELECT count(*) AS n FROM users WHERE is_active`;
  return {
    activeUsers: Number(users.n),
    enrolled: Object.fromEntries(rows.map((r) => [r.method, Number(r.n)])),
  };
}

/** Live sessions at `at`, and sessions created and revoked in (`from`, `at`]. */
export async function sessionActivity(
  sql: Sql,
  from: Date,
  at: Date,
): Promise<{ active: number; created: number; revoked: number }> {
  const [row] = await sql<{ active: string; created: string; revoked: string }[]>`
    SELECT
      (SELECT count(*) FROM sessions WHERE revoked_at IS NULL AND expires_at > ${at}) AS active,
      (SELECT count(*) FROM sessions WHERE created_at > ${from} AND created_at <= ${at})
        AS created,
      (SELECT count(*) FROM sessions WHERE revoked_at > ${from} AND revoked_at <= ${at})
        AS revoked`;
  return { active: Number(row.active), created: Number(row.created), revoked: Number(row.revoked) };
}

/** One backup type's latest finished run and latest good backup. */
export interface BackupTypeStatus {
  /** full, base, incremental or differential. */
  type: string;
  /** Status of the latest finished run (completed or failed), null without one. */
  lastStatus: "completed" | "failed" | null;
  /** When that run finished (failed runs: when they started, if no end was written). */
  lastFinishedAt: Date | null;
  /** Completion time of the newest completed backup not deleted. */
  lastCompletedAt: Date | null;
  /** Completion time of the newest verified backup not deleted. */
  lastVerifiedAt: Date | null;
  /** Size (compressed) of the newest completed backup. */
  lastSizeBytes: number | null;
  /** Duration of the newest completed backup (ms). */
  lastDurationMs: number | null;
}

/** Every backup type that has a run, with its latest outcome and latest good backup. */
export async function backupStatusByType(sql: Sql): Promise<BackupTypeStatus[]> {
  const rows = await sql<{
    backup_type: string;
    last_status: "completed" | "failed" | null;
    last_finished_at: Date | null;
    last_completed_at: Date | null;
    last_verified_at: Date | null;
    last_size: string | null;
    last_duration_ms: number | null;
  }[]>`
    SELECT t.backup_type,
      f.status AS last_status, f.finished AS last_finished_at,
      c.completed_at AS last_completed_at, c.size AS last_size, c.duration_ms AS last_duration_ms,
      v.completed_at AS last_verified_at
    FROM (SELECT DISTINCT backup_type FROM backup_history) t
    LEFT JOIN LATERAL (
      SELECT status, coalesce(completed_at, started_at) AS finished FROM backup_history h
      WHERE h.backup_type = t.backup_type AND h.status <> 'in_progress'
      ORDER BY coalesce(completed_at, started_at) DESC, id DESC LIMIT 1
    ) f ON true
    LEFT JOIN LATERAL (
      SELECT completed_at, compressed_size AS size,
        (extract(epoch FROM completed_at - started_at) * 1000)::float8 AS duration_ms
      FROM backup_history h
      WHERE h.backup_type = t.backup_type AND h.status = 'completed' AND h.deleted_at IS NULL
      ORDER BY completed_at DESC, id DESC LIMIT 1
    ) c ON true
    LEFT JOIN LATERAL (
      SELECT completed_at FROM backup_history h
      WHERE h.backup_type = t.backup_type AND h.verified_at IS NOT NULL AND h.deleted_at IS NULL
      ORDER BY completed_at DESC, id DESC LIMIT 1
    ) v ON true
    ORDER BY t.backup_type`;
  return rows.map((r) => ({
    type: r.backup_type,
    lastStatus: r.last_status,
    lastFinishedAt: r.last_finished_at,
    lastCompletedAt: r.last_completed_at,
    lastVerifiedAt: r.last_verified_at,
    lastSizeBytes: r.last_size === null ? null : Number(r.last_size),
    lastDurationMs: r.last_duration_ms,
  }));
}
