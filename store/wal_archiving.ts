/**
 * SQL of WAL archiving (used by actors/backup/wal.ts): switching to a new segment, the
 * segment size, archive_mode and archive_command as the server has them, and what
 * pg_stat_archiver and pg_stat_activity say about the archiver process.
 * @module
 */
import type { Sql } from "./types.ts";

/** The archiver as the server reports it. */
export interface ArchiverStatus {
  /** pg_stat_archiver.failed_count: archive_command failures since the stats reset. */
  failedCount: number;
  /** The WAL file whose archiving failed last. */
  lastFailedWal: string | null;
  /** When that was. */
  lastFailedTime: Date | null;
  /** Pid of the archiver process, null when none runs (it exits when the command cannot run at all). */
  pid: number | null;
  /** The WAL file archive_command last succeeded for (exit code 0). */
  lastArchivedWal: string | null;
}

/** A completed WAL switch. */
export interface WalSwitch {
  /** LSN returned by pg_switch_wal(). */
  lsn: string;
  /** The segment the switch completed. */
  segment: string;
}

/** current_setting('archive_mode'): off, on or always. */
export async function archiveMode(sql: Sql): Promise<string> {
  const [row] = await sql<{ mode: string }[]>`SELECT current_setting('archive_mode') AS mode`;
  return row.mode;
}

/**
 * current_setting('archive_command'); readable by superusers and members of
 * pg_read_all_settings, an error for other roles.
 */
export async function archiveCommandSetting(sql: Sql): Promise<string> {
  const [row] = await sql<{ command: string }[]>`
    SELECT current_setting('archive_command') AS command`;
  return row.command;
}

/** pg_stat_archiver's failure counters and the archiver's pid. */
export async function archiverStatus(sql: Sql): Promise<ArchiverStatus> {
  const [row] = await sql<
    {
      failed_count: string;
      last_failed_wal: string | null;
      last_failed_time: Date | null;
      pid: number | null;
      last_archived_wal: string | null;
    }[]
  >`
    SELECT failed_count::text AS failed_count, last_failed_wal, last_failed_time,
           (SELECT pid FROM pg_stat_activity WHERE backend_type = 'archiver' LIMIT 1) AS pid,
           last_archived_wal
    FROM pg_stat_archiver`;
  return {
    failedCount: Number(row.failed_count),
    lastFailedWal: row.last_failed_wal,
    lastFailedTime: row.last_failed_time,
    pid: row.pid,
    lastArchivedWal: row.last_archived_wal,
  };
}

/** pg_switch_wal(): closes the current segment so the archiver gets it. */
export async function switchWal(sql: Sql): Promise<WalSwitch> {
  const [row] = await sql<WalSwitch[]>`
    SELECT lsn::text AS lsn, pg_walfile_name(lsn) AS segment FROM pg_switch_wal() AS lsn`;
  return row;
}

/** wal_segment_size of the server, in bytes. */
export async function walSegmentBytes(sql: Sql): Promise<number> {
  const [row] = await sql<{ bytes: string }[]>`
    SELECT setting AS bytes FROM pg_settings WHERE name = 'wal_segment_size'`;
  return Number(row.bytes);
}
