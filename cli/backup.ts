/**
 * `deno task cli backup <command>`: take, list, verify, restore and prune backups from a
 * shell, with the same settings (BACKUP_*, DATABASE_URL, RS_DATA_DIR, RS_SECRET_KEY) as the
 * runtime. docs/backup.md walks through every command.
 *
 * ```sh
 * deno task cli backup create [--type full|base|incremental|differential] [--incremental]
 *   [--no-verify]
 * deno task cli backup list [--type T] [--limit N] [--all] [--storage]
 * deno task cli backup verify <id|name> [--checksums-only]
 * deno task cli backup restore <id|name> --database <new-db> [--url <postgres-url>] [--no-owner]
 * deno task cli backup restore --to "2025-01-15 14:30:00+00" --target-dir <dir> [--base <name>]
 * deno task cli backup restore <base-id|name> --target-dir <dir>
 * deno task cli backup prune [--dry-run]
 * deno task cli backup key
 * deno task cli backup install-archiver [--archive-dir <dir>] [--script-dir <dir>] [--deno <path>]
 * ```
 *
 * Add `--json` for machine-readable output. Exit codes: 0 done, 1 failed, 2 bad usage.
 * @module
 */
import { parseArgs } from "node:util";
import { z } from "zod";
import { loadConfig } from "../concerns/config.ts";
import { redactUrl } from "../lib/config.ts";
import { describeError, RuntimeError } from "../lib/errors.ts";
import { createLogger, type Logger } from "../lib/log.ts";
import { openServerPool } from "../store/backup_server.ts";
import { migrate, migrationStatus } from "../store/migrations.ts";
import type { Sql } from "../store/types.ts";
import {
  backupPassphrase,
  type BackupService,
  openBackupService,
} from "../actors/backup/service.ts";
import { BACKUP_TYPES, type BackupType } from "../actors/backup/settings.ts";
import { type TerminalProgress, terminalProgress } from "../actors/backup/progress.ts";
import { installArchiver } from "../actors/backup/archiver.ts";
import { createPgTools } from "../store/pg_tools.ts";

/** Where the CLI writes and what it runs against (tests inject these). */
export interface BackupCliDeps {
  /** Environment variables (default: the process's). */
  env?: Record<string, string | undefined>;
  /** Standard output lines. */
  out?: (line: string) => void;
  /** Standard error lines. */
  err?: (line: string) => void;
  /** The progress line (default: on stdout when it is a terminal and `out` is not given). */
  progress?: TerminalProgress;
}

const USAGE = `usage: deno task cli backup <command> [options]

commands:
  create [--type full|base|incremental|differential] [--incremental] [--no-verify]
                       take a backup now (default type: full) and verify it;
                       --type base --incremental stores only the data files changed
                       since the newest base backup (file-level incremental base)
  list [--type T] [--limit N] [--all] [--storage]
                       the backup history (--storage: the backups found in the storage)
  verify <id|name> [--checksums-only]
                       check a backup's files and test-restore it into a throw-away cluster
  restore <id|name> --database <new-db> [--url <postgres-url>] [--no-owner]
                       restore a full backup into a new database
  restore --to "<timestamp>" --target-dir <dir> [--base <id|name>]
                       point-in-time recovery into a new data directory
  restore <base-id|name> --target-dir <dir>
                       restore a base backup and replay all archived WAL
  prune [--dry-run]    apply the retention policy
  key                  print the encryption passphrase (for openssl; keep it secret)
  install-archiver [--archive-dir <dir>] [--script-dir <dir>] [--deno <path>]
                       copy scripts/archive_wal.ts where PostgreSQL's OS user can read it,
                       create the WAL archive for that user, check both as that user and
                       print archive_command (archive dir default: BACKUP_WAL_ARCHIVE_DIR;
                       script dir default: "archiver" beside the archive)

options: --json for machine-readable output
         --yes   let the CLI create the runtime's tables in a database that has none
                 (it applies pending migrations to DATABASE_URL's database and says so)`;

const OPTIONS = {
  type: { type: "string" },
  "no-verify": { type: "boolean" },
  incremental: { type: "boolean" },
  limit: { type: "string" },
  all: { type: "boolean" },
  storage: { type: "boolean" },
  "checksums-only": { type: "boolean" },
  database: { type: "string" },
  url: { type: "string" },
  "no-owner": { type: "boolean" },
  to: { type: "string" },
  "target-dir": { type: "string" },
  base: { type: "string" },
  "dry-run": { type: "boolean" },
  "archive-dir": { type: "string" },
  "script-dir": { type: "string" },
  deno: { type: "string" },
  json: { type: "boolean" },
  yes: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

const TIMESTAMP_RE =
  /^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?)\s*(Z|UTC|[+-]\d{2}(?::?\d{2})?)?$/i;

/**
 * Parses a recovery target: `YYYY-MM-DD HH:MM:SS[.ffffff][Z|±HH[:MM]]`; without an offset
 * the time is UTC. Sub-millisecond digits are dropped.
 */
export function parseTargetTime(text: string): Date {
  const m = TIMESTAMP_RE.exec(text.trim());
  if (!m) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Invalid --to ${JSON.stringify(text)}: expected a time like "2025-01-15 14:30:00+00" ` +
        "(no offset means UTC)",
    );
  }
  let zone = (m[3] ?? "Z").toUpperCase();
  if (zone === "UTC") zone = "Z";
  if (/^[+-]\d{2}$/.test(zone)) zone += ":00";
  if (/^[+-]\d{4}$/.test(zone)) zone = `${zone.slice(0, 3)}:${zone.slice(3)}`;
  const [hms, frac = ""] = m[2].split(".");
  const iso = `${m[1]}T${hms}${frac ? "." + frac.slice(0, 3).padEnd(3, "0") : ""}${zone}`;
  const time = new Date(iso);
  const [y, mo, d] = m[1].split("-").map(Number);
  const realDay = new Date(Date.UTC(y, mo - 1, d)).getUTCDate() === d;
  if (Number.isNaN(time.getTime()) || !realDay) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Invalid --to ${JSON.stringify(text)}: no such time`,
    );
  }
  return time;
}

function readSecretKey(dataDir: string): Uint8Array | null {
  try {
    const bin = atob(Deno.readTextFileSync(`${dataDir.replace(/\/$/, "")}/secret.key`).trim());
    return bin.length === 32 ? Uint8Array.from(bin, (c) => c.charCodeAt(0)) : null;
  } catch {
    return null;
  }
}

interface Opened {
  service: BackupService;
  sql: Sql | null;
  close(): Promise<void>;
}

/**
 * Applies the runtime's pending migrations (as the runtime does at start-up, so the history
 * table exists before its first start), saying which database it changes. A database
 * without any runtime table is most likely not the runtime's: without `--yes` the CLI does
 * not touch it: commands that need the history fail (VALIDATION_FAILED), the others go on
 * with the storage alone. Returns whether the database is the runtime's (now migrated).
 */
async function migrateKnowingly(
  pool: Sql,
  url: string,
  options: { needDatabase: boolean; log: Logger; yes: boolean; err: (line: string) => void },
): Promise<boolean> {
  const status = await migrationStatus(pool);
  const where = `database ${databaseName(url)} at ${redactUrl(url)}`;
  if (!status.applied.length && !options.yes) {
    const sentence = `${where} has no runtime tables yet: the backup CLI would create them ` +
      `(${status.pending.length} migrations). HINT: check DATABASE_URL, or pass --yes to ` +
      "create them there";
    if (options.needDatabase) throw new RuntimeError("VALIDATION_FAILED", `Refusing: ${sentence}`);
    options.err(`warning: not using the database: ${sentence}; using the backup storage alone`);
    return false;
  }
  if (status.pending.length) {
    options.err(
      `applying ${status.pending.length} pending runtime migration(s) to ${where}: ` +
        status.pending.join(", "),
    );
    await migrate(pool, { log: options.log });
  }
  return true;
}

function databaseName(url: string): string {
  try {
    return decodeURIComponent(new URL(url).pathname.replace(/^\//, "")) || "(default)";
  } catch {
    return "(unknown)";
  }
}

/** Opens the service from the environment; the database is optional for restores. */
async function open(
  env: Record<string, string | undefined>,
  options: { needDatabase: boolean; log: Logger; yes: boolean; err: (line: string) => void },
): Promise<Opened> {
  const config = loadConfig({ env, args: [] });
  const settings = config.concerns.backup;
  const url = config.database.url;
  let sql: Sql | null = null;
  if (url) {
    try {
      const pool = await openServerPool(url, { max: 4, applicationName: "rootstream-cli-backup" });
      let migrated = false;
      try {
        migrated = await migrateKnowingly(pool, url, options);
      } catch (err) {
        await pool.end({ timeout: 1 });
        throw err;
      }
      if (migrated) {
        sql = pool;
      } else {
        await pool.end({ timeout: 1 });
      }
    } catch (err) {
      if (err instanceof RuntimeError && err.code === "VALIDATION_FAILED") throw err;
      if (options.needDatabase) {
        throw new RuntimeError(
          "DATABASE_CONNECT_FAILED",
          `Cannot use the database at DATABASE_URL: ${describeError(err)}`,
          { cause: err },
        );
      }
      options.log.warn(
        `the database is unreachable (${describeError(err)}); using the ` +
          "backup storage alone",
      );
    }
  } else if (options.needDatabase) {
    throw new RuntimeError(
      "BACKUP_UNAVAILABLE",
      "This command needs a PostgreSQL server: set DATABASE_URL (embedded PGlite cannot be " +
        "backed up with pg_dump or pg_basebackup)",
    );
  }
  const service = openBackupService({
    settings,
    databaseUrl: sql ? url : null,
    sql,
    secretKey: config.secretKey ?? readSecretKey(config.dataDir),
    instanceId: `cli-${Deno.hostname()}-${Deno.pid}`,
    log: options.log,
    now: Date.now,
  });
  return {
    service,
    sql,
    async close() {
      service.close();
      await sql?.end({ timeout: 5 });
    },
  };
}

function human(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** Runs `backup <command> …`; returns the exit code. */
export async function runBackupCli(args: string[], deps: BackupCliDeps = {}): Promise<number> {
  const env = deps.env ?? Deno.env.toObject();
  const out = deps.out ?? ((line: string) => console.log(line));
  const err = deps.err ?? ((line: string) => console.error(line));
  let parsed: ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>;
  try {
    parsed = parseArgs({ args, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (e) {
    err(`${describeError(e)}\n\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  const [command, ref, ...extra] = positionals;
  if (values.help || !command) {
    (command ? out : err)(USAGE);
    return command ? 0 : 2;
  }
  const usage = (message: string) => {
    err(`${message}\n\n${USAGE}`);
    return 2;
  };
  if (extra.length) return usage(`Unexpected arguments: ${extra.join(" ")}`);
  const log = createLogger("cli.backup", {
    level: (env.LOG_LEVEL as "debug" | "info" | "warn" | "error" | undefined) ?? "warn",
    sink: err,
  });
  const json = values.json === true;
  const print = (value: unknown, text: string) =>
    out(
      json ? JSON.stringify(value, (_k, v) => typeof v === "bigint" ? v.toString() : v, 2) : text,
    );

  let type: BackupType = "full";
  if (values.type !== undefined) {
    const t = z.enum(BACKUP_TYPES).safeParse(values.type);
    if (!t.success) return usage(`Invalid --type ${values.type}: ${BACKUP_TYPES.join(", ")}`);
    type = t.data;
  }
  if (values.incremental && (command !== "create" || type !== "base")) {
    return usage("--incremental applies to base backups: create --type base --incremental");
  }

  const needs: Record<string, boolean> = {
    create: true,
    list: false,
    verify: false,
    restore: false,
    prune: false,
    key: false,
    "install-archiver": false,
  };
  if (!(command in needs)) return usage(`Unknown command: ${command}`);
  if (command === "key") {
    try {
      const config = loadConfig({ env, args: [] });
      const settings = config.concerns.backup;
      out(backupPassphrase(settings, config.secretKey ?? readSecretKey(config.dataDir)));
      return 0;
    } catch (e) {
      err(`error: ${describeError(e)}`);
      return 1;
    }
  }
  if (command === "install-archiver") {
    if (ref) return usage(`Unexpected argument: ${ref}`);
    try {
      const config = loadConfig({ env, args: [] });
      const settings = config.concerns.backup;
      const archiveDir = values["archive-dir"] ?? settings.walArchiveDir;
      if (!archiveDir) {
        return usage("install-archiver needs --archive-dir <dir> or BACKUP_WAL_ARCHIVE_DIR");
      }
      const tools = createPgTools({ binDir: settings.pgBinDir, serverUser: settings.pgServerUser });
      const parent = archiveDir.replace(/\/+$/, "").replace(/\/[^/]*$/, "") || "/";
      const install = await installArchiver(tools, {
        archiveDir,
        scriptDir: values["script-dir"] ?? `${parent.replace(/\/$/, "")}/archiver`,
        deno: values.deno,
      });
      print(
        install,
        [
          `installed ${install.script} for the OS user ${install.user} ` +
          (install.probed
            ? `(checked by running it as ${install.user})`
            : `(checked from file modes only: run this as root or as ${install.user} to run the check as ${install.user})`),
          `WAL archive: ${install.archiveDir}`,
          "add to postgresql.conf (a change of archive_mode needs a restart):",
          "  archive_mode = on",
          `  archive_command = '${install.command}'`,
          `and set BACKUP_WAL_ARCHIVE_DIR=${install.archiveDir} for the runtime and this CLI`,
        ].join("\n"),
      );
      return 0;
    } catch (e) {
      if (e instanceof RuntimeError) err(`error ${e.code}: ${e.message}`);
      else err(`error: ${describeError(e)}`);
      return 1;
    }
  }
  if ((command === "verify") && !ref) return usage(`${command} needs a backup id or name`);
  if (command === "restore") {
    if (values.to !== undefined && ref) {
      return usage("restore takes either a backup (<id|name>) or --to, not both");
    }
    if (!values.to && !ref) return usage("restore needs a backup id or name, or --to <time>");
    if (values.to !== undefined && values.database !== undefined) {
      return usage(
        "--to recovers a whole cluster into --target-dir; --database restores a full backup",
      );
    }
    if (values.database === undefined && values["target-dir"] === undefined) {
      return usage("restore needs --database <new-db> (full backups) or --target-dir <dir>");
    }
  }

  let opened: Opened | null = null;
  try {
    opened = await open(env, {
      needDatabase: needs[command],
      log,
      yes: values.yes === true,
      err,
    });
    const { service } = opened;
    // On a terminal: one line of progress (phase, bytes, rate, ETA); otherwise nothing.
    const bar = deps.progress ??
      (json || deps.out ? { listener: null, done() {} } : terminalProgress());
    switch (command) {
      case "create": {
        const result = await service.create(type, {
          trigger: "manual",
          incremental: values.incremental === true,
          onProgress: bar.listener ?? undefined,
        });
        bar.done();
        let verified: unknown = null;
        if (
          !result.skipped && result.name && !values["no-verify"] &&
          service.context.settings.verify !== "off"
        ) {
          const v = await service.verify(result.name, {
            discardOnFailure: true,
            onProgress: bar.listener ?? undefined,
          });
          bar.done();
          verified = v;
          if (!v.ok) {
            print(
              { result, verification: v },
              `${result.summary}\nverification FAILED: ${v.error?.message}`,
            );
            return 1;
          }
          print(
            { result, verification: v },
            `${result.summary}\nverified (${v.mode}) in ${v.durationMs} ms`,
          );
          return 0;
        }
        print({ result, verification: verified }, result.summary);
        return 0;
      }
      case "list": {
        if (values.storage || !opened.sql) {
          const catalog = await service.catalog();
          print(
            catalog,
            [
              ...catalog.entries.map((e) =>
                `${e.manifest.name}  ${e.manifest.type.padEnd(12)} ${
                  human(e.manifest.files.reduce((n, f) => n + f.size, 0)).padStart(10)
                }  ${e.verification ? `verified ${e.verification.verifiedAt}` : "not verified"}`
              ),
              ...catalog.unfinished.map((u) => `${u.name}  unfinished (no manifest)`),
              ...catalog.unreadable.map((u) => `${u.name}  UNREADABLE: ${u.error}`),
            ].join("\n") || "no backups in the storage",
          );
          return 0;
        }
        const limit = values.limit ? Number(values.limit) : 50;
        if (!Number.isInteger(limit) || limit < 1 || limit > 1000) {
          return usage("--limit must be 1-1000");
        }
        const rows = await service.list({
          type: values.type ? type : undefined,
          limit,
          includeDeleted: values.all === true,
        });
        print(
          rows,
          rows.map((r) =>
            `${String(r.id).padStart(5)}  ${r.name}  ${r.type.padEnd(12)} ${r.status.padEnd(11)} ${
              human(r.compressedSize ?? 0).padStart(10)
            }  ${r.verifiedAt ? "verified" : r.status === "completed" ? "unverified" : ""}${
              r.deletedAt ? " (deleted)" : ""
            }${r.errorMessage ? `  ${r.errorMessage}` : ""}`
          ).join("\n") || "no backups yet",
        );
        return 0;
      }
      case "verify": {
        const result = await service.verify(ref!, {
          mode: values["checksums-only"] ? "checksums" : "restore",
          onProgress: bar.listener ?? undefined,
        });
        bar.done();
        print(
          result,
          result.ok
            ? `${result.name}: OK (${result.mode}; ${result.files.length} file(s)) in ${result.durationMs} ms`
            : `${result.name}: FAILED: ${result.error?.code}: ${result.error?.message}`,
        );
        return result.ok ? 0 : 1;
      }
      case "restore": {
        if (values.database !== undefined) {
          if (!ref) return usage("--database restores a full backup: give its id or name");
          const report = await service.restoreLogical(ref, {
            database: values.database,
            url: values.url,
            noOwner: values["no-owner"] === true,
            onProgress: bar.listener ?? undefined,
          });
          bar.done();
          print(
            report,
            `restored ${report.backup} into database ${report.database}: ` +
              `${report.tablesChecked} tables, ${report.rows} rows checked, ${report.durationMs} ms`,
          );
          return 0;
        }
        const target = values.to ? parseTargetTime(values.to) : null;
        const report = await service.restorePointInTime({
          targetTime: target,
          targetDir: values["target-dir"]!,
          base: values.base ?? ref,
          onProgress: bar.listener ?? undefined,
        });
        bar.done();
        print(
          report,
          [
            `restored base backup ${report.base} + ${report.walBackups.length} WAL backup(s)` +
            `${report.usedArchive ? " + the WAL archive" : ""} into ${report.dataDir}`,
            `target: ${report.targetTime ?? "end of the archived WAL"}; last replayed commit: ` +
            `${report.lastReplayedCommit ?? "none"}${
              report.stoppedAt ? ` (${report.stoppedAt})` : ""
            }`,
            `databases: ${
              report.databases.join(", ")
            }; timeline ${report.timeline}; ${report.durationMs} ms`,
            `start it with: pg_ctl -D ${report.dataDir} start (as the postgres user; check its ` +
            "port and archive settings first)",
          ].join("\n"),
        );
        return 0;
      }
      case "prune": {
        const report = await service.prune({ dryRun: values["dry-run"] === true });
        print(
          report,
          [
            ...report.plan.delete.map((d) =>
              `${report.dryRun ? "would delete" : "deleted"} ${d.name}: ${d.reason}`
            ),
            `kept ${report.plan.keep.length} backup(s); ${
              report.dryRun ? "would delete" : "deleted"
            } ${report.plan.delete.length}; archived WAL files deleted: ${report.walDeleted}`,
          ].join("\n"),
        );
        return 0;
      }
    }
    return 2;
  } catch (e) {
    if (e instanceof RuntimeError) err(`error ${e.code}: ${e.message}`);
    else err(`error: ${describeError(e)}`);
    return 1;
  } finally {
    await opened?.close();
  }
}
