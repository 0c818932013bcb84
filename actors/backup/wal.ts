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
import {
  archiveCommandSetting,
  archiveMode,
  type ArchiverStatus,
  archiverStatus,
  switchWal,
  walSegmentBytes,
  type WalSwitch,
} from "../../store/wal_archiving.ts";

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
        `The WAL archive directory ${dir} does not exist. HINT: create it and archive_command ` +
          "with `deno task cli backup install-archiver --archive-dir " + dir +
          "` (docs/backup.md), and set BACKUP_WAL_ARCHIVE_DIR to it",
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
  /** The injected clock the wait is measured with. */
  now: () => number;
  /** Aborting stops the wait. */
  signal?: AbortSignal;
  /**
   * Says why the server's OS user cannot run the configured archive_command (see
   * actors/backup/archiver.ts), or null; asked only once archiving has failed.
   */
  explain?: (command: string) => Promise<string | null>;
}

/** wal_segment_size of the server, in bytes. */
export function segmentSize(sql: Sql): Promise<number> {
  return walSegmentBytes(sql);
}

/**
 * PostgreSQL's archiver tries a failing archive_command this many times in a row, then
 * sleeps until the next WAL switch or a minute has passed (NUM_ARCHIVE_RETRIES in pgarch.c).
 */
const ARCHIVER_RETRIES = 3;

/**
 * How long after the switch an archiver that was not running may take to appear. The
 * postmaster restarts a stopped archiver at most every 10 s (PGARCH_RESTART_INTERVAL); one
 * that cannot run archive_command lives only milliseconds, so it may never be seen at all.
 */
const ARCHIVER_ABSENT_MS = 20_000;

/** Why PostgreSQL stops its archiver; the one sentence for that situation. */
const ARCHIVER_STOPPED = "the archiver process stopped, which PostgreSQL does when " +
  "archive_command cannot be run at all (not found or not executable: exit code 126 or 127, " +
  "or killed by a signal)";

/** What a wait has seen of the archiver since just before the switch. */
interface ArchiverWatch {
  /** pg_stat_archiver.failed_count before the switch. */
  failedBefore: number;
  /** The archiver pid last seen (null: none seen running). */
  pid: number | null;
}

/**
 * One look at the archiver: the verdict when archiving cannot succeed without a change —
 * PostgreSQL's retries used up, or an archiver seen running has stopped (or never came) —
 * else null, with what to remember for the next look.
 */
function observeArchiver(
  watch: ArchiverWatch,
  now: ArchiverStatus,
  sinceSwitchMs: number,
): { watch: ArchiverWatch; verdict: string | null } {
  const failures = now.failedCount - watch.failedBefore;
  if (failures >= ARCHIVER_RETRIES) {
    return {
      watch,
      verdict:
        `archive_command failed ${failures} times for ${now.lastFailedWal} (last at ${now.lastFailedTime?.toISOString()}), and PostgreSQL now waits up to a minute before trying again`,
    };
  }
  // The archiver exits (FATAL) only when archive_command cannot be run at all.
  const stopped = watch.pid !== null && now.pid !== watch.pid;
  const neverCame = watch.pid === null && now.pid === null && sinceSwitchMs > ARCHIVER_ABSENT_MS;
  return {
    watch: { ...watch, pid: now.pid ?? watch.pid },
    verdict: stopped || neverCame ? ARCHIVER_STOPPED : null,
  };
}

/**
 * Switches to a new WAL segment and waits until the completed one is in the archive, so a
 * WAL backup taken now holds every commit made before this call. It fails at once when
 * archive_mode is off, and within seconds when pg_stat_archiver shows archive_command
 * failing (or the archiver gone), naming — through `explain` — what the server's OS user
 * cannot reach; `timeoutMs` bounds only a slow archive.
 */
export async function switchAndAwaitArchive(
  sql: Sql,
  options: AwaitArchiveOptions,
): Promise<SwitchedWal> {
  if (await archiveMode(sql) === "off") {
    throw new RuntimeError(
      "WAL_ARCHIVE_FAILED",
      `Cannot archive WAL into ${options.dir}: archive_mode is off on the server. HINT: set ` +
        "archive_mode = on and archive_command (deno task cli backup install-archiver prints " +
        "it; docs/backup.md), then restart PostgreSQL",
    );
  }
  const before = await archiverStatus(sql);
  let row: WalSwitch;
  try {
    row = await switchWal(sql);
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
  const switchedAt = options.now();
  const bytes = await segmentSize(sql);
  const path = `${options.dir.replace(/\/+$/, "")}/${row.segment}`;
  const deadline = switchedAt + options.timeoutMs;
  const fail = (why: string, reach: string | null) =>
    new RuntimeError(
      "WAL_ARCHIVE_FAILED",
      `WAL segment ${row.segment} was not archived into ${options.dir}: ${why}` +
        `${reach ? `: ${reach}` : ""}. HINT: PostgreSQL runs archive_command as its own OS ` +
        "user, which must be able to run deno, read archive_wal.ts and write into the " +
        "archive; `deno task cli backup install-archiver` puts them where it can and checks " +
        "(docs/backup.md); the PostgreSQL log has the command's own error",
      { details: { segment: row.segment, problem: reach } },
    );
  // No archiver before the switch means its last attempt could not run the command at all;
  // if this host shows why, there is nothing to wait for.
  if (before.pid === null) {
    const reach = await explain(sql, options);
    if (reach) throw fail(ARCHIVER_STOPPED, reach);
  }
  let watch: ArchiverWatch = { failedBefore: before.failedCount, pid: before.pid };
  while (true) {
    options.signal?.throwIfAborted();
    const state = await archiverStatus(sql);
    // Done when the file is there and PostgreSQL counts it archived: a command that writes
    // the file but exits non-zero is retried forever and holds back every later segment.
    if (archivedUpTo(state, row.segment) && await isFile(path)) break;
    const look = observeArchiver(watch, state, options.now() - switchedAt);
    watch = look.watch;
    if (look.verdict) throw fail(look.verdict, await explain(sql, options));
    if (options.now() > deadline) {
      throw fail(
        `it was not there after ${Math.round(options.timeoutMs / 1000)} s ` +
          "(BACKUP_WAL_TIMEOUT_S), and PostgreSQL's archiver, still running, has not given up " +
          "on it: archiving is slow or far behind",
        null,
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

/** Whether pg_stat_archiver's last archived file is `segment` or a later one. */
function archivedUpTo(state: ArchiverStatus, segment: string): boolean {
  const last = state.lastArchivedWal;
  // Segments, .partial and .backup files start with the 24-digit segment name; timeline
  // .history files (8 digits) say nothing about segments.
  return last !== null && /^[0-9A-F]{24}/.test(last) && last.slice(0, 24) >= segment;
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

/** The configured archive_command explained by `options.explain`, or null (hidden, or nothing found). */
async function explain(sql: Sql, options: AwaitArchiveOptions): Promise<string | null> {
  if (!options.explain) return null;
  try {
    return await options.explain(await archiveCommandSetting(sql));
  } catch {
    return null;
  }
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
