/**
 * Data access for `backup_history` (migration 003) and the advisory lock that keeps backup
 * work to one run at a time across every process sharing the database.
 *
 * Times come from the caller's injected clock. A run is inserted `in_progress`, then
 * completed or failed; verification and retention update it later. Rows are never deleted:
 * a pruned backup keeps its row with `deleted_at`.
 * @module
 */
import { RuntimeError } from "../lib/errors.ts";
import type { Sql } from "./types.ts";

/** Advisory-lock key of backup work ("rsbackup" as a 63-bit number). */
export const BACKUP_LOCK_KEY = 0x72736261636b7570n;

/** Backup types stored in the table. */
export type BackupHistoryType = "full" | "base" | "incremental" | "differential";

/** Statuses of a run. */
export type BackupStatus = "in_progress" | "completed" | "failed";

/** What started a run. */
export type BackupTrigger = "schedule" | "missed" | "manual" | "retry";

/** One row of backup_history. */
export interface BackupRecord {
  /** Database id. */
  id: number;
  /** Storage name, e.g. 20250115T020000Z-full-3fa9c1. */
  name: string;
  /** Backup type. */
  type: BackupHistoryType;
  /** Storage location (URL). */
  path: string;
  /** Bytes read from PostgreSQL. */
  backupSize: number;
  /** Bytes stored. */
  compressedSize: number | null;
  /** Encryption method, e.g. aes-256-cbc+hmac-sha256. */
  encryptionMethod: string | null;
  /** Run status. */
  status: BackupStatus;
  /** When the run started. */
  startedAt: Date;
  /** When it completed or failed. */
  completedAt: Date | null;
  /** Why it failed. */
  errorMessage: string | null;
  /** Manifest summary and other facts. */
  metadata: Record<string, unknown>;
  /** Base backup id of an incremental / differential. */
  parentId: number | null;
  /** What started it. */
  trigger: BackupTrigger;
  /** Instance that ran it. */
  instanceId: string | null;
  /** When its test-restore last passed. */
  verifiedAt: Date | null;
  /** The last verification's result. */
  verification: Record<string, unknown> | null;
  /** When retention removed its files. */
  deletedAt: Date | null;
}

interface Row {
  id: string;
  name: string;
  backup_type: BackupHistoryType;
  backup_path: string;
  backup_size: string;
  compressed_size: string | null;
  encryption_method: string | null;
  status: BackupStatus;
  started_at: Date;
  completed_at: Date | null;
  error_message: string | null;
  metadata: Record<string, unknown>;
  parent_id: string | null;
  trigger: BackupTrigger;
  instance_id: string | null;
  verified_at: Date | null;
  verification: Record<string, unknown> | null;
  deleted_at: Date | null;
}

function toRecord(r: Row): BackupRecord {
  return {
    id: Number(r.id),
    name: r.name,
    type: r.backup_type,
    path: r.backup_path,
    backupSize: Number(r.backup_size),
    compressedSize: r.compressed_size === null ? null : Number(r.compressed_size),
    encryptionMethod: r.encryption_method,
    status: r.status,
    startedAt: r.started_at,
    completedAt: r.completed_at,
    errorMessage: r.error_message,
    metadata: r.metadata ?? {},
    parentId: r.parent_id === null ? null : Number(r.parent_id),
    trigger: r.trigger,
    instanceId: r.instance_id,
    verifiedAt: r.verified_at,
    verification: r.verification,
    deletedAt: r.deleted_at,
  };
}

function clip(text: string, max = 4000): string {
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

/** Fields of a new run. */
export interface NewBackupRun {
  /** Storage name. */
  name: string;
  /** Type. */
  type: BackupHistoryType;
  /** Storage location. */
  path: string;
  /** Start time (injected clock). */
  startedAt: Date;
  /** What started it. */
  trigger: BackupTrigger;
  /** Instance running it. */
  instanceId: string | null;
  /** Base backup id (incremental / differential). */
  parentId?: number | null;
}

/** Records a run that starts now (`in_progress`). */
export async function insertBackupRun(sql: Sql, run: NewBackupRun): Promise<BackupRecord> {
  const [row] = await sql<Row[]>`
    INSERT INTO backup_history
      (name, backup_type, backup_path, status, started_at, trigger, instance_id, parent_id)
    VALUES (${run.name}, ${run.type}, ${run.path}, 'in_progress', ${run.startedAt},
            ${run.trigger}, ${run.instanceId}, ${run.parentId ?? null})
    RETURNING *`;
  return toRecord(row);
}

/** Marks a run completed with its sizes and manifest summary. */
export async function completeBackupRun(
  sql: Sql,
  id: number,
  fields: {
    completedAt: Date;
    backupSize: number;
    compressedSize: number;
    encryptionMethod: string;
    metadata: Record<string, unknown>;
  },
): Promise<BackupRecord> {
  const [row] = await sql<Row[]>`
    UPDATE backup_history
    SET status = 'completed', completed_at = ${fields.completedAt},
        backup_size = ${fields.backupSize}, compressed_size = ${fields.compressedSize},
        encryption_method = ${fields.encryptionMethod},
        metadata = ${sql.json(fields.metadata as never)}, error_message = NULL
    WHERE id = ${id}
    RETURNING *`;
  if (!row) throw new RuntimeError("BACKUP_NOT_FOUND", `Backup ${id} does not exist`);
  return toRecord(row);
}

/**
 * Records the progress of a running backup (metadata.progress) so every process can show
 * it; ignored once the run has finished (completion replaces the metadata).
 */
export async function recordBackupProgress(
  sql: Sql,
  id: number,
  progress: Record<string, unknown>,
): Promise<void> {
  await sql`
    UPDATE backup_history
    SET metadata = metadata || jsonb_build_object('progress', ${sql.json(progress as never)}::jsonb)
    WHERE id = ${id} AND status = 'in_progress'`;
}

/** Marks a run failed with the reason. */
export async function failBackupRun(
  sql: Sql,
  id: number,
  fields: { completedAt: Date; error: string },
): Promise<void> {
  await sql`
    UPDATE backup_history
    SET status = 'failed', completed_at = GREATEST(${fields.completedAt}, started_at),
        error_message = ${clip(fields.error)}, verified_at = NULL,
        metadata = metadata - 'progress'
    WHERE id = ${id}`;
}

/** Records a passed verification (by storage name; unknown names are ignored). */
export async function markVerified(
  sql: Sql,
  name: string,
  fields: { verifiedAt: Date; verification: Record<string, unknown> },
): Promise<void> {
  await sql`
    UPDATE backup_history
    SET verified_at = ${fields.verifiedAt}, verification = ${sql.json(fields.verification as never)}
    WHERE name = ${name} AND status = 'completed'`;
}

/** Records a failed verification: the backup is not usable, so the run counts as failed. */
export async function markVerificationFailed(
  sql: Sql,
  name: string,
  fields: { at: Date; error: string; verification: Record<string, unknown> },
): Promise<void> {
  await sql`
    UPDATE backup_history
    SET status = 'failed', error_message = ${clip(`verification failed: ${fields.error}`)},
        verified_at = NULL, verification = ${sql.json(fields.verification as never)},
        completed_at = COALESCE(completed_at, GREATEST(${fields.at}, started_at))
    WHERE name = ${name}`;
}

/** Records that retention deleted these backups' files. */
export async function markDeleted(
  sql: Sql,
  names: string[],
  options: { at: Date },
): Promise<number> {
  if (!names.length) return 0;
  const rows = await sql`
    UPDATE backup_history SET deleted_at = ${options.at}
    WHERE name = ANY(${names}) AND deleted_at IS NULL
    RETURNING id`;
  return rows.length;
}

/** Options of {@linkcode listBackups}. */
export interface ListBackupsOptions {
  /** Only this type. */
  type?: BackupHistoryType;
  /** Newest first, at most this many (default 50). */
  limit?: number;
  /** Include backups retention deleted. */
  includeDeleted?: boolean;
}

/** Lists runs, newest first. */
export async function listBackups(
  sql: Sql,
  options: ListBackupsOptions = {},
): Promise<BackupRecord[]> {
  const limit = Math.min(Math.max(options.limit ?? 50, 1), 1000);
  const rows = await sql<Row[]>`
    SELECT * FROM backup_history
    WHERE (${options.type ?? null}::text IS NULL OR backup_type = ${options.type ?? null})
      AND (${options.includeDeleted ?? false} OR deleted_at IS NULL)
    ORDER BY started_at DESC, id DESC
    LIMIT ${limit}`;
  return rows.map(toRecord);
}

/** One run by id, or null. */
export async function getBackup(sql: Sql, id: number): Promise<BackupRecord | null> {
  const [row] = await sql<Row[]>`SELECT * FROM backup_history WHERE id = ${id}`;
  return row ? toRecord(row) : null;
}

/** One run by storage name, or null. */
export async function getBackupByName(sql: Sql, name: string): Promise<BackupRecord | null> {
  const [row] = await sql<Row[]>`SELECT * FROM backup_history WHERE name = ${name}`;
  return row ? toRecord(row) : null;
}

/** Start time of the latest run of each type (any status), for missed-schedule detection. */
export async function lastRunTimes(sql: Sql): Promise<Partial<Record<BackupHistoryType, Date>>> {
  const rows = await sql<{ backup_type: BackupHistoryType; last: Date }[]>`
    SELECT backup_type, max(started_at) AS last FROM backup_history GROUP BY backup_type`;
  return Object.fromEntries(rows.map((r) => [r.backup_type, r.last]));
}

/**
 * Marks runs still `in_progress` as failed: called while holding the backup lock, so no
 * live process is running them (their process stopped mid-way). Returns their names.
 */
export async function failInterruptedRuns(sql: Sql, at: Date): Promise<string[]> {
  const rows = await sql<{ name: string }[]>`
    UPDATE backup_history
    SET status = 'failed', completed_at = GREATEST(${at}, started_at),
        error_message = 'interrupted: the process running this backup stopped before it finished'
    WHERE status = 'in_progress'
    RETURNING name`;
  return rows.map((r) => r.name);
}

/** A held backup lock. */
export interface BackupLock {
  /** Releases the lock and its connection; idempotent. */
  release(): Promise<void>;
}

/**
 * Takes the backup advisory lock on a reserved connection, or returns null when another
 * session holds it. The lock dies with the connection, so a crashed holder frees it.
 */
export async function tryBackupLock(sql: Sql): Promise<BackupLock | null> {
  const conn = await sql.reserve();
  try {
    const [row] = await conn<{ locked: boolean }[]>`
      SELECT pg_try_advisory_lock(${BACKUP_LOCK_KEY.toString()}::bigint) AS locked`;
    if (!row.locked) {
      conn.release();
      return null;
    }
  } catch (err) {
    conn.release();
    throw err;
  }
  let released = false;
  return {
    async release() {
      if (released) return;
      released = true;
      try {
        await conn`SELECT pg_advisory_unlock(${BACKUP_LOCK_KEY.toString()}::bigint)`;
      } catch {
        // The connection is gone, and the lock with it.
      } finally {
        conn.release();
      }
    },
  };
}
