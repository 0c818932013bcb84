/**
 * The WAL archive directory that scripts/archive_wal.ts fills (PostgreSQL's
 * archive_command): listing it, choosing the files a WAL backup holds (with a gap check),
 * forcing and awaiting the archiving of the current segment, and removing WAL no kept base
 * backup needs.
 * @module
 */
import { RuntimeError } from "../../lib/errors.ts";
import { walSegmentNumber } from "../../store/pg_tools.ts";
import type { Sql } from "../../store/types.ts";

/** One file of the WAL archive. */
export interface ArchivedWal {
  /** File name, e.g. 000000010000000000000003 or 00000002.history. */
  name: string;
  /** Absolute path. */
  path: string;
  /** segment, timeline history, or backup history (`.backup`). */
  kind: "segment" | "history" | "backup";
  /** Segment number across timelines (null for history files). */
  segno: bigint | null;
}

const SEGMENT_RE = /^[0-9A-F]{24}$/;
const HISTORY_RE = /^[0-9A-F]{8}\.history$/;
const BACKUP_RE = /^[0-9A-F]{24}\.[0-9A-F]{8}\.backup$/;

/** Lists the archive (unknown and temporary files are ignored). */
export async function listArchive(dir: string, segmentBytes: number): Promise<ArchivedWal[]> {
  const files: ArchivedWal[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (!entry.isFile) continue;
      const path = `${dir.replace(/\/+$/, "")}/${entry.name}`;
      if (SEGMENT_RE.test(entry.name)) {
        files.push({
          name: entry.name,
          path,
          kind: "segment",
          segno: walSegmentNumber(entry.name, segmentBytes),
        });
      } else if (BACKUP_RE.test(entry.name)) {
        files.push({
          name: entry.name,
          path,
          kind: "backup",
          segno: walSegmentNumber(entry.name.slice(0, 24), segmentBytes),
        });
      } else if (HISTORY_RE.test(entry.name)) {
        files.push({ name: entry.name, path, kind: "history", segno: null });
      }
    }
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new RuntimeError(
        "WAL_ARCHIVE_FAILED",
        `The WAL archive directory ${dir} does not exist. HINT: set archive_command to ` +
          `scripts/archive_wal.ts with this directory (docs/backup.md) and BACKUP_WAL_ARCHIVE_DIR`,
      );
    }
    throw new RuntimeError(
      "WAL_ARCHIVE_FAILED",
      `Cannot read the WAL archive directory ${dir}: ${err instanceof Error ? err.message : err}`,
      { cause: err },
    );
  }
  return files.sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
}

/**
 * The files a WAL backup of segments `[from, to]` holds: those segments (every timeline),
 * the `.backup` files among them and all timeline history files. WAL_ARCHIVE_FAILED when a
 * segment number in the range has no file (a gap would make every later restore stop there).
 */
export function selectWal(
  files: ArchivedWal[],
  range: { from: bigint; to: bigint; segmentBytes: number },
): ArchivedWal[] {
  const chosen = files.filter((f) =>
    f.kind === "history" || (f.segno !== null && f.segno >= range.from && f.segno <= range.to)
  );
  const present = new Set(chosen.filter((f) => f.kind === "segment").map((f) => f.segno));
  for (let s = range.from; s <= range.to; s++) {
    if (!present.has(s)) {
      throw new RuntimeError(
        "WAL_ARCHIVE_FAILED",
        `The WAL archive has a gap: no file for segment number ${s} (between ` +
          `${range.from} and ${range.to}). HINT: check archive_command and pg_stat_archiver; ` +
          "take a new base backup to start a new chain",
      );
    }
  }
  return chosen;
}

/** What {@linkcode switchAndAwaitArchive} reports. */
export interface SwitchedWal {
  /** LSN returned by pg_switch_wal(). */
  lsn: string;
  /** Name of the segment that switch completed (now in the archive). */
  segment: string;
  /** Its timeline. */
  timeline: number;
  /** wal_segment_size in bytes. */
  segmentBytes: number;
}

/** Options of {@linkcode switchAndAwaitArchive}. */
export interface AwaitArchiveOptions {
  /** Archive directory to look in. */
  dir: string;
  /** How long to wait. */
  timeoutMs: number;
  /** Aborting stops the wait. */
  signal?: AbortSignal;
}

/** wal_segment_size of the server, in bytes. */
export async function segmentSize(sql: Sql): Promise<number> {
  const [row] = await sql<{ bytes: string }[]>`
    SELECT setting AS bytes FROM pg_settings WHERE name = 'wal_segment_size'`;
  return Number(row.bytes);
}

/**
 * Switches to a new WAL segment and waits until the completed one is in the archive, so a
 * WAL backup taken now holds every commit made before this call.
 */
export async function switchAndAwaitArchive(
  sql: Sql,
  options: AwaitArchiveOptions,
): Promise<SwitchedWal> {
  let row: { lsn: string; segment: string; recovery: boolean };
  try {
    [row] = await sql<{ lsn: string; segment: string; recovery: boolean }[]>`
      SELECT lsn::text AS lsn, pg_walfile_name(lsn) AS segment, false AS recovery
      FROM pg_switch_wal() AS lsn`;
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new RuntimeError(
      "BACKUP_FAILED",
      /recovery is in progress/.test(message)
        ? "Cannot switch WAL: the server is a standby; WAL backups run against the primary"
        : `Cannot switch WAL: ${message}. HINT: the database role needs superuser or ` +
          "EXECUTE on pg_switch_wal() (GRANT EXECUTE ON FUNCTION pg_switch_wal() TO …)",
      { cause: err },
    );
  }
  const bytes = await segmentSize(sql);
  const path = `${options.dir.replace(/\/+$/, "")}/${row.segment}`;
  const deadline = Date.now() + options.timeoutMs;
  while (true) {
    options.signal?.throwIfAborted();
    try {
      await Deno.stat(path);
      break;
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
    if (Date.now() > deadline) {
      const [archiver] = await sql<
        { last_failed_wal: string | null; last_failed_time: Date | null; archive_mode: string }[]
      >`
        SELECT last_failed_wal, last_failed_time,
               current_setting('archive_mode') AS archive_mode
        FROM pg_stat_archiver`;
      const why = archiver.archive_mode === "off"
        ? "archive_mode is off on the server"
        : archiver.last_failed_wal
        ? `archiving ${archiver.last_failed_wal} last failed at ${archiver.last_failed_time?.toISOString()}`
        : "the archiver has not reported a failure";
      throw new RuntimeError(
        "WAL_ARCHIVE_FAILED",
        `WAL segment ${row.segment} did not reach the archive ${options.dir} within ` +
          `${Math.round(options.timeoutMs / 1000)} s: ${why}. HINT: see the PostgreSQL log ` +
          "and docs/backup.md for archive_command",
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return {
    lsn: row.lsn,
    segment: row.segment,
    timeline: parseInt(row.segment.slice(0, 8), 16),
    segmentBytes: bytes,
  };
}

/**
 * Deletes archived segments (and `.backup` files) below segment number `keepFrom`;
 * timeline history files are always kept. Returns the names deleted.
 */
export async function cleanArchive(
  dir: string,
  options: { keepFrom: bigint; segmentBytes: number; dryRun?: boolean },
): Promise<string[]> {
  const deleted: string[] = [];
  for (const f of await listArchive(dir, options.segmentBytes)) {
    if (f.segno === null || f.segno >= options.keepFrom) continue;
    if (!options.dryRun) await Deno.remove(f.path).catch(() => {});
    deleted.push(f.name);
  }
  return deleted;
}
