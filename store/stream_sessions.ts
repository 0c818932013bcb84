/**
 * Data access for stream sessions: one row per broadcast of a stream, with its viewer
 * statistics, bytes transferred and duration.
 *
 * A stream has at most one open session (a partial unique index enforces it), and the
 * duration is a generated column, so the database is the single source of both facts.
 * store/streams.ts opens and closes sessions together with the stream's live flag;
 * the functions here serve the metrics path and history pages.
 * @module
 */
import type postgres from "postgres";
import { z } from "zod";
import { RuntimeError } from "../lib/errors.ts";
import { isForeignKeyViolation, isUniqueViolation, rethrowDatabaseError } from "./pg_errors.ts";
import type { Sql } from "./types.ts";
import { countSchema, idSchema, parseInput } from "./validate.ts";

/** One broadcast of a stream. */
export interface StreamSession {
  /** Database id. */
  id: number;
  /** The stream that broadcast. */
  streamId: number;
  /** When the broadcast started. */
  startedAt: Date;
  /** When it ended, or null while it is open. */
  endedAt: Date | null;
  /** Whole seconds between start and end (computed by the database), or null while open. */
  durationSeconds: number | null;
  /** Viewers over the whole session, as last reported. */
  totalViewers: number;
  /** Highest concurrent viewer count seen. */
  peakViewers: number;
  /** Bytes sent to viewers so far. */
  bytesTransferred: number;
  /** Whether the session is being recorded. */
  isRecorded: boolean;
  /** When the row was created. */
  createdAt: Date;
  /** When the row last changed. */
  updatedAt: Date;
}

/** Viewer statistics reported by {@linkcode updateViewerStats}. */
export interface ViewerStats {
  /** Viewers over the whole session so far (replaces the stored value). */
  totalViewers: number;
  /** Concurrent viewers now; the stored peak only ever grows. */
  peakViewers: number;
}

/** Internal: works with both the pool and a transaction. */
// deno-lint-ignore ban-types
export type Queryable = postgres.ISql<{}>;

/** Internal: a stream_sessions row as postgres.js returns it. */
export interface StreamSessionRow {
  id: string;
  stream_id: string;
  started_at: Date;
  ended_at: Date | null;
  duration_seconds: number | null;
  total_viewers: number;
  peak_viewers: number;
  bytes_transferred: string;
  is_recorded: boolean;
  created_at: Date;
  updated_at: Date;
}

const viewerStatsSchema = z.object({ totalViewers: countSchema, peakViewers: countSchema });
const bytesSchema = z.object({
  bytes: z.union([
    z.number({ error: "must be a number" }).int("must be an integer").min(0, "must not be negative")
      .max(Number.MAX_SAFE_INTEGER, "is too large"),
    z.bigint().min(0n, "must not be negative"),
  ], { error: "must be a non-negative integer" }),
});
const listSchema = z.object({
  limit: z.number({ error: "must be a number" }).int("must be an integer")
    .min(1, "must be at least 1").max(1000, "must be at most 1000").optional(),
});

/** Internal: maps a row to the public shape. */
export function toStreamSession(row: StreamSessionRow): StreamSession {
  return {
    id: Number(row.id),
    streamId: Number(row.stream_id),
    startedAt: row.started_at,
    endedAt: row.ended_at,
    durationSeconds: row.duration_seconds,
    totalViewers: row.total_viewers,
    peakViewers: row.peak_viewers,
    bytesTransferred: Number(row.bytes_transferred),
    isRecorded: row.is_recorded,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

function sessionNotFound(action: string, id: number): RuntimeError {
  return new RuntimeError("NOT_FOUND", `Cannot ${action}: no stream session has id ${id}`, {
    details: { id },
  });
}

/** Internal: opens a session for `streamId` on `sql` (which may be a transaction). */
export async function insertStreamSession(
  sql: Queryable,
  streamId: number,
  options: { action?: string } = {},
): Promise<StreamSession> {
  const action = options.action ?? "create stream session";
  try {
    const rows = await sql<StreamSessionRow[]>`
      INSERT INTO stream_sessions (stream_id) VALUES (${streamId}) RETURNING *`;
    return toStreamSession(rows[0]);
  } catch (err) {
    if (isForeignKeyViolation(err)) {
      throw new RuntimeError("STREAM_NOT_FOUND", `Cannot ${action}: no stream has id ${streamId}`, {
        cause: err,
        details: { streamId },
      });
    }
    if (isUniqueViolation(err, "stream_sessions_one_open_per_stream_key")) {
      throw new RuntimeError(
        "STREAM_STATE_INVALID",
        `Cannot ${action}: stream ${streamId} already has an open session`,
        { cause: err, details: { streamId } },
      );
    }
    throw err;
  }
}

/**
 * Internal: closes the open session of `streamId`, returning it, or null if none is open.
 * The end time never precedes the start, even if the clock of a newly promoted primary
 * is slightly behind the old one.
 */
export async function closeOpenSession(
  sql: Queryable,
  streamId: number,
): Promise<StreamSession | null> {
  const rows = await sql<StreamSessionRow[]>`
    UPDATE stream_sessions SET ended_at = GREATEST(now(), started_at)
    WHERE stream_id = ${streamId} AND ended_at IS NULL
    RETURNING *`;
  return rows.length ? toStreamSession(rows[0]) : null;
}

/**
 * Opens a session for a stream; STREAM_NOT_FOUND if there is no such stream,
 * STREAM_STATE_INVALID if one is already open. Prefer `startStream`, which also marks
 * the stream live in the same transaction.
 */
export async function createStreamSession(sql: Sql, streamId: number): Promise<StreamSession> {
  const action = "create stream session";
  const id = parseInput(idSchema, streamId, { action: action, name: "streamId" });
  try {
    return await insertStreamSession(sql, id, { action });
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/** The session with this id, or null. */
export async function getStreamSession(sql: Sql, id: number): Promise<StreamSession | null> {
  const action = "load stream session";
  const sessionId = parseInput(idSchema, id, { action: action, name: "id" });
  try {
    const rows = await sql<StreamSessionRow[]>`
      SELECT * FROM stream_sessions WHERE id = ${sessionId}`;
    return rows.length ? toStreamSession(rows[0]) : null;
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/** The open (not yet ended) session of a stream, or null. */
export async function getOpenSession(sql: Sql, streamId: number): Promise<StreamSession | null> {
  const action = "load open stream session";
  const id = parseInput(idSchema, streamId, { action: action, name: "streamId" });
  try {
    const rows = await sql<StreamSessionRow[]>`
      SELECT * FROM stream_sessions WHERE stream_id = ${id} AND ended_at IS NULL`;
    return rows.length ? toStreamSession(rows[0]) : null;
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/**
 * Records viewer statistics: total viewers is replaced, the peak becomes the larger of
 * the stored and reported values (reports from several hosts may arrive out of order).
 */
export async function updateViewerStats(
  sql: Sql,
  id: number,
  stats: ViewerStats,
): Promise<StreamSession> {
  const action = "update viewer stats";
  const sessionId = parseInput(idSchema, id, { action: action, name: "id" });
  const data = parseInput(viewerStatsSchema, stats, { action: action, name: "stats" });
  try {
    const rows = await sql<StreamSessionRow[]>`
      UPDATE stream_sessions
      SET total_viewers = ${data.totalViewers},
          peak_viewers = GREATEST(peak_viewers, ${data.peakViewers})
      WHERE id = ${sessionId}
      RETURNING *`;
    if (!rows.length) throw sessionNotFound(action, sessionId);
    return toStreamSession(rows[0]);
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/** Adds `bytes` to the session's transferred total atomically; returns the updated session. */
export async function addBytesTransferred(
  sql: Sql,
  id: number,
  options: { bytes: number | bigint },
): Promise<StreamSession> {
  const action = "add bytes transferred";
  const sessionId = parseInput(idSchema, id, { action: action, name: "id" });
  const { bytes } = parseInput(bytesSchema, options, { action: action, name: "options" });
  try {
    // One UPDATE with the increment in SQL: concurrent reporters cannot lose updates.
    const rows = await sql<StreamSessionRow[]>`
      UPDATE stream_sessions
      SET bytes_transferred = bytes_transferred + ${bytes.toString()}::bigint
      WHERE id = ${sessionId}
      RETURNING *`;
    if (!rows.length) throw sessionNotFound(action, sessionId);
    return toStreamSession(rows[0]);
  } catch (err) {
    if ((err as { code?: string }).code === "22003") {
      throw new RuntimeError("VALIDATION_FAILED", `Cannot ${action}: bytes overflow the total`, {
        cause: err,
        details: { field: "bytes" },
      });
    }
    rethrowDatabaseError(err, action);
  }
}

/**
 * Ends an open session now; the database computes its duration. STREAM_STATE_INVALID if
 * it already ended. Prefer `stopStream`, which also takes the stream off the air.
 */
export async function endStreamSession(sql: Sql, id: number): Promise<StreamSession> {
  const action = "end stream session";
  const sessionId = parseInput(idSchema, id, { action: action, name: "id" });
  try {
    const rows = await sql<StreamSessionRow[]>`
      UPDATE stream_sessions SET ended_at = GREATEST(now(), started_at)
      WHERE id = ${sessionId} AND ended_at IS NULL
      RETURNING *`;
    if (rows.length) return toStreamSession(rows[0]);
    const existing = await sql`SELECT 1 FROM stream_sessions WHERE id = ${sessionId}`;
    if (!existing.length) throw sessionNotFound(action, sessionId);
    throw new RuntimeError(
      "STREAM_STATE_INVALID",
      `Cannot ${action}: session ${sessionId} has already ended`,
      { details: { id: sessionId } },
    );
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/** Sessions of a stream, newest first (`limit` 1–1000, default 100). */
export async function listSessionsForStream(
  sql: Sql,
  streamId: number,
  options: { limit?: number } = {},
): Promise<StreamSession[]> {
  const action = "list stream sessions";
  const id = parseInput(idSchema, streamId, { action: action, name: "streamId" });
  const { limit = 100 } = parseInput(listSchema, options, { action: action, name: "options" });
  try {
    const rows = await sql<StreamSessionRow[]>`
      SELECT * FROM stream_sessions WHERE stream_id = ${id}
      ORDER BY started_at DESC, id DESC
      LIMIT ${limit}`;
    return rows.map(toStreamSession);
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}
