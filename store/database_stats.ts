/**
 * The SQL of the metrics concern (its data-access module): live streams with their open
 * session, connection counts, database size and replication lag. Every statement is a
 * postgres.js tagged template; nothing is spliced into SQL text.
 * @module
 */
import type { Sql } from "./types.ts";

/** A live stream with the figures the collector reports. */
export interface LiveStreamStats {
  /** Stream id. */
  id: number;
  /** Owner. */
  userId: number;
  /** Concurrent viewers. */
  viewers: number;
  /** Bitrate (kbit/s) or null. */
  bitrateKbps: number | null;
  /** Frames per second or null. */
  fps: number | null;
  /** `WIDTHxHEIGHT` or null. */
  resolution: string | null;
  /** When the broadcast started. */
  startedAt: Date | null;
  /** Bytes sent in the open session (0 without one). */
  bytesTransferred: number;
}

/** Connection counts of the server. */
export interface ConnectionStats {
  /** Client backends. */
  total: number;
  /** Client backends running a query. */
  active: number;
  /** Idle client backends. */
  idle: number;
  /** max_connections. */
  max: number;
}

/** Replication lag of one replica, or of this server when it is a standby. */
export interface ReplicaLag {
  /** application_name of the replica (`self` for this standby). */
  replica: string;
  /** Replay lag in seconds (0 when caught up and idle). */
  seconds: number;
  /** WAL bytes not yet replayed, when known. */
  bytes: number | null;
  /** WAL sender state (`streaming`, `catchup`, …). */
  state: string;
}

/** Live streams (at most `limit`, by id) with their open session's bytes. */
export async function liveStreamStats(sql: Sql, limit: number): Promise<LiveStreamStats[]> {
  const rows = await sql<{
    id: string;
    user_id: string;
    viewer_count: number;
    bitrate_kbps: number | null;
    fps: number | null;
    resolution: string | null;
    started_at: Date | null;
    bytes_transferred: string | null;
  }[]>`
    SELECT s.id, s.user_id, s.viewer_count, s.bitrate_kbps, s.fps, s.resolution, s.started_at,
           ss.bytes_transferred
    FROM streams s
    LEFT JOIN stream_sessions ss ON ss.stream_id = s.id AND ss.ended_at IS NULL
    WHERE s.is_live
    ORDER BY s.id
    LIMIT ${limit}`;
  return rows.map((r) => ({
    id: Number(r.id),
    userId: Number(r.user_id),
    viewers: r.viewer_count,
    bitrateKbps: r.bitrate_kbps,
    fps: r.fps,
    resolution: r.resolution,
    startedAt: r.started_at,
    bytesTransferred: Number(r.bytes_transferred ?? 0),
  }));
}

/** Client connections of the whole server and its max_connections. */
export async function connectionStats(sql: Sql): Promise<ConnectionStats> {
  const [row] = await sql<{ total: string; active: string; idle: string; max: number }[]>`
    SELECT count(*) AS total,
           count(*) FILTER (WHERE state = 'active') AS active,
           count(*) FILTER (WHERE state = 'idle') AS idle,
           current_setting('max_connections')::int AS max
    FROM pg_stat_activity
    WHERE backend_type = 'client backend'`;
  return {
    total: Number(row.total),
    active: Number(row.active),
    idle: Number(row.idle),
    max: row.max,
  };
}

/** Name and size in bytes of the current database. */
export async function databaseSize(sql: Sql): Promise<{ name: string; bytes: number }> {
  const [row] = await sql<{ name: string; bytes: string }[]>`
    SELECT current_database() AS name, pg_database_size(current_database()) AS bytes`;
  return { name: row.name, bytes: Number(row.bytes) };
}

/**
 * Lag of each streaming replica (on a primary), or of this server itself (on a standby,
 * as `self`: time since the last replayed transaction). Empty without replication.
 */
export async function replicationLag(sql: Sql): Promise<ReplicaLag[]> {
  const [{ standby }] = await sql<{ standby: boolean }[]>`SELECT pg_is_in_recovery() AS standby`;
  if (standby) {
    const [row] = await sql<{ seconds: number | null; bytes: string | null }[]>`
      SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS seconds,
             pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) AS bytes`;
    return row.seconds === null ? [] : [{
      replica: "self",
      seconds: Math.max(0, row.seconds),
      bytes: row.bytes === null ? null : Number(row.bytes),
      state: "standby",
    }];
  }
  const rows = await sql<{
    name: string;
    state: string;
    seconds: number | null;
    bytes: string | null;
  }[]>`
    SELECT application_name AS name, state,
           extract(epoch FROM coalesce(replay_lag, interval '0'))::float8 AS seconds,
           pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) AS bytes
    FROM pg_stat_replication
    ORDER BY application_name`;
  return rows.map((r) => ({
    replica: r.name || "unnamed",
    seconds: r.seconds ?? 0,
    bytes: r.bytes === null ? null : Number(r.bytes),
    state: r.state,
  }));
}

/** A round trip (`SELECT 1`), for query-time percentiles of the bare connection. */
export async function ping(sql: Sql): Promise<void> {
  await sql`SELECT 1`;
}
