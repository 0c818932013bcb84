/**
 * The backup service: the operations the scheduler actor, the HTTP routes and the CLI
 * share — create, verify, restore (logical and point-in-time), prune, list — with the
 * history table and the advisory lock around them.
 *
 * `create` reads as pgBackRest's cmdBackup does, a script of named steps: lock → mark
 * interrupted runs → plan → record start → dump | compress | encrypt | checksum | store →
 * write manifest → record completion → unlock. Verification and retention are separate
 * calls (the scheduler's `verifying` and `pruning` states).
 * @module
 */
import { RuntimeError } from "../../lib/errors.ts";
import {
  type BackupRecord,
  type BackupTrigger,
  completeBackupRun,
  failBackupRun,
  failInterruptedRuns,
  getBackup,
  getBackupByName,
  insertBackupRun,
  lastRunTimes,
  listBackups,
  type ListBackupsOptions,
  markDeleted,
  markVerificationFailed,
  markVerified,
  recordBackupProgress,
  tryBackupLock,
} from "../../store/backup_history.ts";
import { BACKUP_CIPHER, passphraseFromSecretKey } from "../../lib/backup_crypto.ts";
import type { Logger } from "../../lib/log.ts";
import { createPgTools } from "../../store/pg_tools.ts";
import type { Sql } from "../../store/types.ts";
import { type BackupContext, EMBEDDED_REASON, requireServer } from "./context.ts";
import {
  createBaseBackup,
  createFullBackup,
  createIncrementalBaseBackup,
  createWalBackup,
  planWalBackup,
} from "./create.ts";
import {
  BACKUP_NAME_RE,
  type Catalog,
  type Manifest,
  manifestKey,
  newBackupName,
  readCatalog,
  readManifest,
  writeManifest,
  writeVerification,
} from "./manifest.ts";
import {
  type LogicalRestoreOptions,
  type LogicalRestoreReport,
  type PitrReport,
  restoreLogical,
  restorePointInTime,
} from "./restore.ts";
import { type ProgressListener, ProgressMeter } from "./progress.ts";
import { planRetention, type RetentionPlan } from "./retention.ts";
import type { BackupSettings, BackupType } from "./settings.ts";
import { type BackupStorage, createLocalStorage, createS3Storage } from "./storage.ts";
import { verifyBackup, type VerifyResult } from "./verify.ts";
import { cleanArchive } from "./wal.ts";

/** What one `create` did. */
export interface BackupRunResult {
  /** Backup name (null when skipped). */
  name: string | null;
  /** Type. */
  type: BackupType;
  /** History id (null when skipped or without a history table). */
  id: number | null;
  /** True when there was nothing to back up (a WAL backup with no new WAL). */
  skipped: boolean;
  /** One sentence about the outcome. */
  summary: string;
  /** Bytes the PostgreSQL tool produced. */
  plainBytes: number;
  /** Bytes stored. */
  storedBytes: number;
  /** Wall time. */
  durationMs: number;
}

/** What one prune did. */
export interface PruneReport {
  /** The plan it applied (or would apply, in a dry run). */
  plan: RetentionPlan;
  /** Backups whose files were deleted. */
  deleted: string[];
  /** Archived WAL files deleted. */
  walDeleted: number;
  /** Nothing was changed. */
  dryRun: boolean;
}

/** How often a running backup's progress is written to its history row. */
const PROGRESS_RECORD_MS = 2000;

/** The backup operations. */
export interface BackupService {
  /** Whether backups can run here, and why not. */
  readonly availability: { ok: boolean; reason: string | null };
  /** The shared dependencies (for tests and the CLI). */
  readonly context: BackupContext;
  /** Takes a backup (BACKUP_BUSY when another run holds the lock). */
  create(
    type: BackupType,
    options?: {
      trigger?: BackupTrigger;
      signal?: AbortSignal;
      /** Base backups: store only the files changed since the newest base (base_files.ts). */
      incremental?: boolean;
      /** Progress as it runs (also recorded in the history row's metadata.progress). */
      onProgress?: ProgressListener;
    },
  ): Promise<BackupRunResult>;
  /** Verifies a backup and records the outcome (history + verification.json). */
  verify(
    nameOrId: string,
    options?: {
      mode?: "checksums" | "restore";
      signal?: AbortSignal;
      discardOnFailure?: boolean;
      onProgress?: ProgressListener;
    },
  ): Promise<VerifyResult>;
  /** Restores a full backup into a new database. */
  restoreLogical(
    nameOrId: string,
    options: LogicalRestoreOptions,
  ): Promise<LogicalRestoreReport>;
  /** Point-in-time recovery into a new data directory. */
  restorePointInTime(
    options: {
      targetTime: Date | null;
      targetDir: string;
      base?: string;
      signal?: AbortSignal;
      onProgress?: ProgressListener;
    },
  ): Promise<PitrReport>;
  /** Applies the retention policy (BACKUP_BUSY while a backup runs). */
  prune(options?: { dryRun?: boolean }): Promise<PruneReport>;
  /** History rows, newest first (empty without a database). */
  list(options?: ListBackupsOptions): Promise<BackupRecord[]>;
  /** One history row by id or name. */
  get(nameOrId: string): Promise<BackupRecord | null>;
  /** The backups in the storage (the source of truth for restores). */
  catalog(): Promise<Catalog>;
  /** One manifest from the storage. */
  manifest(nameOrId: string): Promise<Manifest>;
  /** Start time of the latest run per type, from the history. */
  lastRuns(): Promise<Partial<Record<BackupType, number>>>;
  /** Releases the storage client. */
  close(): void;
}

/** What {@linkcode openBackupService} builds a service from. */
export interface OpenBackupServiceOptions {
  /** Validated settings (loadBackupSettings). */
  settings: BackupSettings;
  /**
   * PostgreSQL server URL, or null (embedded mode / no database); a function is asked at
   * each use, so pg_dump follows the pool when a failover re-points it.
   */
  databaseUrl: string | null | (() => string | null);
  /** Pool on that server, or null. */
  sql: Sql | null;
  /** RS_SECRET_KEY; the passphrase is derived from it when BACKUP_ENCRYPTION_KEY is unset. */
  secretKey: Uint8Array | null;
  /** Instance id for the history. */
  instanceId: string | null;
  /** Log. */
  log: Logger;
  /** Wall clock. */
  now: () => number;
}

/** The storage the settings name. */
export function openStorage(settings: BackupSettings): BackupStorage {
  const s = settings.storage;
  return s.kind === "local" ? createLocalStorage(s.dir) : createS3Storage({
    bucket: s.bucket,
    prefix: s.prefix,
    endpoint: s.endpoint,
    region: s.region,
    accessKeyId: s.accessKeyId,
    secretAccessKey: s.secretAccessKey,
    forcePathStyle: s.forcePathStyle,
  });
}

/** The backup passphrase: BACKUP_ENCRYPTION_KEY, else derived from RS_SECRET_KEY. */
export function backupPassphrase(settings: BackupSettings, secretKey: Uint8Array | null): string {
  if (settings.passphrase) return settings.passphrase;
  if (secretKey) return passphraseFromSecretKey(secretKey);
  throw new RuntimeError(
    "CONFIG_INVALID",
    "Backups need an encryption key: set BACKUP_ENCRYPTION_KEY (or RS_SECRET_KEY)",
  );
}

/** Builds the service: storage, tools and passphrase from the settings. */
export function openBackupService(options: OpenBackupServiceOptions): BackupService {
  const { settings } = options;
  return createBackupService({
    settings,
    storage: openStorage(settings),
    tools: createPgTools({
      binDir: settings.pgBinDir,
      serverUser: settings.pgServerUser,
      log: options.log.child("tools"),
    }),
    passphrase: backupPassphrase(settings, options.secretKey),
    get databaseUrl() {
      const url = options.databaseUrl;
      return typeof url === "function" ? url() : url;
    },
    sql: options.sql,
    instanceId: options.instanceId,
    log: options.log,
    now: options.now,
  });
}

/** Creates the service over a context. */
export function createBackupService(ctx: BackupContext): BackupService {
  const availability = ctx.databaseUrl && ctx.sql
    ? { ok: true, reason: null }
    : { ok: false, reason: EMBEDDED_REASON };

  async function resolveName(nameOrId: string): Promise<string> {
    if (BACKUP_NAME_RE.test(nameOrId)) return nameOrId;
    if (/^[1-9]\d{0,17}$/.test(nameOrId)) {
      if (!ctx.sql) {
        throw new RuntimeError(
          "BACKUP_NOT_FOUND",
          `Backup ${nameOrId}: ids need the database; give the backup's name instead`,
        );
      }
      const record = await getBackup(ctx.sql, Number(nameOrId));
      if (!record) throw new RuntimeError("BACKUP_NOT_FOUND", `Backup ${nameOrId} does not exist`);
      return record.name;
    }
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Invalid backup reference ${JSON.stringify(nameOrId)}: give an id (42) or a name ` +
        "(20250115T020000Z-full-3fa9c1)",
    );
  }

  async function removeBackupFiles(name: string): Promise<void> {
    const keys = (await ctx.storage.list(`${name}/`)).map((o) => o.key);
    // The manifest first: a half-deleted backup must look unfinished, never valid.
    if (keys.includes(manifestKey(name))) await ctx.storage.delete(manifestKey(name));
    for (const key of keys) if (key !== manifestKey(name)) await ctx.storage.delete(key);
  }

  async function create(
    type: BackupType,
    options: {
      trigger?: BackupTrigger;
      signal?: AbortSignal;
      incremental?: boolean;
      onProgress?: ProgressListener;
    } = {},
  ): Promise<BackupRunResult> {
    const { sql } = requireServer(ctx, `a ${type} backup`);
    const started = performance.now();
    const lock = await tryBackupLock(sql);
    if (!lock) {
      throw new RuntimeError(
        "BACKUP_BUSY",
        `Cannot start a ${type} backup: another backup or prune is running (it holds the ` +
          "backup lock); try again when it has finished",
      );
    }
    try {
      const interrupted = await failInterruptedRuns(sql, new Date(ctx.now()));
      if (interrupted.length) {
        ctx.log.warn("marked interrupted backup runs as failed", { backups: interrupted });
      }
      const plan = type === "incremental" || type === "differential"
        ? await planWalBackup(ctx, type, { signal: options.signal })
        : null;
      if ((type === "incremental" || type === "differential") && !plan) {
        const summary = `${type} backup skipped: no WAL was archived since the previous one`;
        ctx.log.info(summary);
        return {
          name: null,
          type,
          id: null,
          skipped: true,
          summary,
          plainBytes: 0,
          storedBytes: 0,
          durationMs: Math.round(performance.now() - started),
        };
      }
      const startedAt = ctx.now();
      const name = newBackupName(type, startedAt);
      const parent = plan ? await getBackupByName(sql, plan.base.manifest.name) : null;
      if (plan && !parent) {
        throw new RuntimeError(
          "BACKUP_FAILED",
          `Cannot record ${type} backup ${name}: its base ${plan.base.manifest.name} is in ` +
            "the storage but not in this database's history (was the database restored?). " +
            "HINT: take a new base backup to start a new chain",
        );
      }
      let progressWrite: Promise<void> | null = null;
      const record = await insertBackupRun(sql, {
        name,
        type,
        path: ctx.storage.locate(`${name}/`),
        startedAt: new Date(startedAt),
        trigger: options.trigger ?? "manual",
        instanceId: ctx.instanceId,
        parentId: parent?.id ?? null,
      });
      ctx.log.info("backup started", { name, type, trigger: options.trigger ?? "manual" });
      try {
        // Progress: to the caller at once, to the history row every few seconds.
        const meter = new ProgressMeter(ctx.now);
        let recorded = 0;
        const onProgress: ProgressListener = (event) => {
          meter.update(event);
          options.onProgress?.(event);
          if (ctx.now() - recorded < PROGRESS_RECORD_MS || progressWrite) return;
          recorded = ctx.now();
          progressWrite = recordBackupProgress(sql, record.id, { ...meter.snapshot() })
            .catch((err) => ctx.log.debug("could not record backup progress", { error: `${err}` }))
            .finally(() => progressWrite = null);
        };
        const createOptions = { name, startedAt, signal: options.signal, onProgress };
        const manifest = type === "full"
          ? await createFullBackup(ctx, createOptions)
          : type === "base"
          ? await (options.incremental ? createIncrementalBaseBackup : createBaseBackup)(
            ctx,
            createOptions,
          )
          : await createWalBackup(ctx, { ...createOptions, type, plan: plan! });
        await writeManifest(ctx.storage, manifest, { passphrase: ctx.passphrase });
        const plainBytes = manifest.files.reduce((n, f) => n + f.plainSize, 0);
        const storedBytes = manifest.files.reduce((n, f) => n + f.size, 0);
        await progressWrite;
        // An incremental base backup's parent is chosen while it runs (the newest base with
        // a file list); recorded when that base is in this database's history.
        const baseParent = manifest.physical?.parent
          ? await getBackupByName(sql, manifest.physical.parent)
          : null;
        await completeBackupRun(sql, record.id, {
          parentId: baseParent?.id ?? null,
          completedAt: new Date(ctx.now()),
          backupSize: plainBytes,
          compressedSize: storedBytes,
          encryptionMethod: BACKUP_CIPHER,
          metadata: summarize(manifest),
        });
        const durationMs = Math.round(performance.now() - started);
        const summary = `${type} backup ${name} stored: ${plainBytes} bytes read, ` +
          `${storedBytes} bytes stored at ${ctx.storage.locate(`${name}/`)} in ${durationMs} ms`;
        ctx.log.info("backup completed", { name, type, plainBytes, storedBytes, durationMs });
        return {
          name,
          type,
          id: record.id,
          skipped: false,
          summary,
          plainBytes,
          storedBytes,
          durationMs,
        };
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        await progressWrite;
        await failBackupRun(sql, record.id, { completedAt: new Date(ctx.now()), error: message })
          .catch(() => {});
        await removeBackupFiles(name).catch(() => {});
        ctx.log.error("backup failed", { name, type, error: message });
        throw err instanceof RuntimeError ? err : new RuntimeError(
          "BACKUP_FAILED",
          `${type} backup ${name} failed: ${message}`,
          { cause: err },
        );
      }
    } finally {
      await lock.release();
    }
  }

  async function verify(
    nameOrId: string,
    options: {
      mode?: "checksums" | "restore";
      signal?: AbortSignal;
      discardOnFailure?: boolean;
      onProgress?: ProgressListener;
    } = {},
  ): Promise<VerifyResult> {
    const name = await resolveName(nameOrId);
    const mode = options.mode ?? (ctx.settings.verify === "checksums" ? "checksums" : "restore");
    const result = await verifyBackup(ctx, name, {
      mode,
      signal: options.signal,
      onProgress: options.onProgress,
    });
    const at = new Date(ctx.now());
    const detail = { ...result } as unknown as Record<string, unknown>;
    if (result.ok) {
      await writeVerification(ctx.storage, {
        name,
        verifiedAt: at.toISOString(),
        mode,
        probes: result.probes ?? {},
      }, { passphrase: ctx.passphrase });
      if (ctx.sql) await markVerified(ctx.sql, name, { verifiedAt: at, verification: detail });
      ctx.log.info("backup verified", { name, mode, ms: result.durationMs });
    } else {
      ctx.log.error("backup verification failed", { name, mode, error: result.error?.message });
      if (ctx.sql) {
        await markVerificationFailed(ctx.sql, name, {
          at,
          error: result.error?.message ?? "unknown",
          verification: detail,
        });
      }
      // A fresh backup that fails its own verification must never serve a restore or
      // anchor a WAL chain: its manifest goes, so it counts as unfinished.
      if (options.discardOnFailure) await ctx.storage.delete(manifestKey(name)).catch(() => {});
    }
    return result;
  }

  async function prune(options: { dryRun?: boolean } = {}): Promise<PruneReport> {
    const lock = ctx.sql ? await tryBackupLock(ctx.sql) : null;
    if (ctx.sql && !lock) {
      throw new RuntimeError(
        "BACKUP_BUSY",
        "Cannot prune: a backup is running (it holds the backup lock); try again later",
      );
    }
    try {
      const catalog = await readCatalog(ctx.storage, ctx.passphrase);
      const plan = planRetention(catalog, { now: ctx.now(), rules: ctx.settings.retention });
      const report: PruneReport = { plan, deleted: [], walDeleted: 0, dryRun: !!options.dryRun };
      for (const u of catalog.unreadable) {
        ctx.log.warn("backup folder skipped by retention: its manifest cannot be verified", {
          name: u.name,
          error: u.error,
        });
      }
      if (options.dryRun) return report;
      for (const d of plan.delete) {
        await removeBackupFiles(d.name);
        report.deleted.push(d.name);
        ctx.log.info("backup deleted by retention", { name: d.name, reason: d.reason });
      }
      if (ctx.sql && report.deleted.length) {
        await markDeleted(ctx.sql, report.deleted, { at: new Date(ctx.now()) });
      }
      const archive = ctx.settings.walArchiveDir;
      if (archive && plan.walKeepFrom !== null && plan.segmentBytes) {
        const removed = await cleanArchive(archive, {
          keepFrom: plan.walKeepFrom,
          segmentBytes: plan.segmentBytes,
        }).catch((err) => {
          ctx.log.warn("could not clean the WAL archive", { error: String(err) });
          return [];
        });
        report.walDeleted = removed.length;
      }
      return report;
    } finally {
      await lock?.release();
    }
  }

  return {
    availability,
    context: ctx,
    create,
    verify,
    async restoreLogical(nameOrId, options) {
      return await restoreLogical(ctx, await resolveName(nameOrId), options);
    },
    async restorePointInTime(options) {
      const catalog = await readCatalog(ctx.storage, ctx.passphrase);
      return await restorePointInTime(ctx, {
        ...options,
        base: options.base ? await resolveName(options.base) : undefined,
        catalog,
      });
    },
    prune,
    async list(options = {}) {
      return ctx.sql ? await listBackups(ctx.sql, options) : [];
    },
    async get(nameOrId) {
      if (!ctx.sql) return null;
      if (BACKUP_NAME_RE.test(nameOrId)) return await getBackupByName(ctx.sql, nameOrId);
      if (!/^[1-9]\d{0,17}$/.test(nameOrId)) return null;
      return await getBackup(ctx.sql, Number(nameOrId));
    },
    catalog: () => readCatalog(ctx.storage, ctx.passphrase),
    async manifest(nameOrId) {
      return await readManifest(ctx.storage, await resolveName(nameOrId), {
        passphrase: ctx.passphrase,
      });
    },
    async lastRuns() {
      if (!ctx.sql) return {};
      const times = await lastRunTimes(ctx.sql);
      return Object.fromEntries(
        Object.entries(times).map(([type, at]) => [type, at.getTime()]),
      ) as Partial<Record<BackupType, number>>;
    },
    close() {
      ctx.storage.close();
    },
  };
}

/** The manifest facts kept in backup_history.metadata (files, WAL range, counts). */
function summarize(m: Manifest): Record<string, unknown> {
  return {
    manifest: m.format,
    server: m.server,
    files: m.files.map((f) => ({
      name: f.name,
      size: f.size,
      sha256: f.sha256,
      plainSize: f.plainSize,
      compression: f.compression,
    })),
    base: m.base,
    previous: m.previous,
    wal: m.wal
      ? {
        timeline: m.wal.timeline,
        startLsn: m.wal.startLsn,
        endLsn: m.wal.endLsn,
        startSegment: m.wal.startSegment,
        endSegment: m.wal.endSegment,
        endTime: m.wal.endTime,
        files: m.wal.files?.length,
      }
      : null,
    database: m.logical?.database ?? null,
    tables: m.logical?.tables?.length ?? null,
    rows: m.logical?.tables?.reduce((n, t) => n + t.rows, 0) ?? null,
    databases: m.physical?.databases ?? null,
    ...(m.physical?.files
      ? {
        parent: m.physical.parent ?? null,
        filesCopied: m.physical.files.filter((f) => f.in === m.name).length,
        filesReferenced: m.physical.files.filter((f) => f.in !== m.name).length,
      }
      : {}),
  };
}
