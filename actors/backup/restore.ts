/**
 * Getting data back out of backups, never half-way:
 *
 * - The manifest's signature is checked first: a wrong key stops a restore before anything
 *   is read or written.
 * - A logical restore goes into a staging database that is renamed to the requested name
 *   only after pg_restore succeeded, the stream's HMAC matched at its end, and the probes
 *   (row counts) agree; on any failure the staging database is dropped.
 * - A physical restore (PITR) first checks that every stored file it needs is there with its
 *   recorded size, then unpacks into a staging directory next to the target while each file
 *   is authenticated (HMAC) beside the unpacking, replays WAL in a throw-away server on a
 *   private socket, probes it, stops it cleanly and only then renames the directory to the
 *   target; on any failure (a file that does not authenticate included) the staging files
 *   are removed. `precheck` reads every file once up front instead (SHA-256 and HMAC).
 *
 * The same functions serve verification: a test-restore into a throw-away cluster.
 * @module
 */
import {
  type AuthenticatedFile,
  authenticateFile,
  checkEncryptedFile,
  constantTimeEqualHex,
  createAuthStream,
  OPENSSL_PASS_ENV,
  opensslEncArgs,
} from "../../lib/backup_crypto.ts";
import { redactUrl } from "../../lib/config.ts";
import { describeError, RuntimeError } from "../../lib/errors.ts";
import {
  catalogEntries,
  connectServer,
  countRows,
  createDatabase,
  databaseExists,
  dropDatabase,
  recoveryState,
  renameDatabase,
  withServer,
} from "../../store/backup_server.ts";
import {
  assertSuccess,
  parseLsn,
  type PgServerProcess,
  type ToolProcess,
  walSegmentNumber,
} from "../../store/pg_tools.ts";
import {
  assertServerCanReach,
  type BackupContext,
  removeTree,
  scratchDir,
  userOf,
} from "./context.ts";
import { type Catalog, type Manifest, type ManifestFile, readManifest } from "./manifest.ts";
import { codecCommand, makeFifo, runPipeline, spawnCodec } from "./pipeline.ts";
import type { ProgressListener } from "./progress.ts";
import { filesNotListed } from "./base_files.ts";

/** The result of checking one stored file. */
export interface FileCheck {
  /** File name inside the backup. */
  file: string;
  /** ok, or what is wrong with it. */
  status: "ok" | "missing" | "size_mismatch" | "checksum_mismatch" | "hmac_mismatch";
  /** Bytes found (null when missing). */
  size: number | null;
  /** Bytes the manifest recorded. */
  expectedSize: number;
}

/** Checks every stored file of a backup against its manifest (typed results, no throw). */
export async function checkFiles(
  ctx: BackupContext,
  manifest: Manifest,
  options: { onProgress?: ProgressListener } = {},
): Promise<FileCheck[]> {
  const checks: FileCheck[] = [];
  const total = manifest.files.reduce((n, f) => n + f.size, 0);
  let before = 0;
  for (const file of manifest.files) {
    const key = `${manifest.name}/${file.name}`;
    const local = ctx.storage.localPath?.(key);
    if (local && (await ctx.storage.stat(key))?.size === file.size) {
      // Local storage: 4 MiB reads hashed natively, no stream.
      const done = before;
      const seen = await authenticateFile(local, ctx.passphrase, {
        iterations: manifest.encryption.iterations,
        name: key,
        onProgress: options.onProgress &&
          ((bytes) =>
            options.onProgress!({
              phase: `checking ${manifest.name}`,
              bytes: done + bytes,
              total,
            })),
      }).catch((err) => {
        // No `Salted__` header: the bytes are not what was stored.
        if (err instanceof RuntimeError && err.code === "BACKUP_FAILED") return null;
        throw err;
      });
      before += file.size;
      const status = !seen || !constantTimeEqualHex(seen.sha256!, file.sha256)
        ? "checksum_mismatch"
        : !constantTimeEqualHex(seen.hmac, file.hmac.toLowerCase())
        ? "hmac_mismatch"
        : "ok";
      checks.push({ file: file.name, status, size: file.size, expectedSize: file.size });
      continue;
    }
    const stat = await ctx.storage.stat(key);
    if (!stat) {
      checks.push({ file: file.name, status: "missing", size: null, expectedSize: file.size });
      continue;
    }
    if (stat.size !== file.size) {
      checks.push({
        file: file.name,
        status: "size_mismatch",
        size: stat.size,
        expectedSize: file.size,
      });
      continue;
    }
    const result = await checkEncryptedFile(await ctx.storage.get(key), ctx.passphrase, {
      size: file.size,
      sha256: file.sha256,
      hmac: file.hmac,
      iterations: manifest.encryption.iterations,
    });
    checks.push({
      file: file.name,
      status: result.status,
      size: result.size,
      expectedSize: file.size,
    });
  }
  return checks;
}

/**
 * The cheap part of {@linkcode checkFiles}: every stored file is there with the size the
 * manifest recorded (a stat each, no read). The contents are authenticated as they stream.
 */
export async function checkSizes(ctx: BackupContext, manifest: Manifest): Promise<FileCheck[]> {
  const checks: FileCheck[] = [];
  for (const file of manifest.files) {
    const stat = await ctx.storage.stat(`${manifest.name}/${file.name}`);
    const status = !stat ? "missing" : stat.size !== file.size ? "size_mismatch" : "ok";
    checks.push({ file: file.name, status, size: stat?.size ?? null, expectedSize: file.size });
  }
  return checks;
}

/** Throws BACKUP_CORRUPT describing the first bad file, if any. */
export function assertFilesOk(name: string, checks: FileCheck[]): void {
  const bad = checks.find((c) => c.status !== "ok");
  if (!bad) return;
  const what: Record<FileCheck["status"], string> = {
    ok: "",
    missing: "is missing",
    size_mismatch: `is ${bad.size} bytes, the manifest says ${bad.expectedSize} (truncated?)`,
    checksum_mismatch: "does not match its SHA-256 in the manifest (corrupted)",
    hmac_mismatch: "does not match its HMAC (altered, or encrypted with another key)",
  };
  throw new RuntimeError(
    "BACKUP_CORRUPT",
    `Backup ${name} cannot be restored: its file ${bad.file} ${
      what[bad.status]
    }; nothing was restored`,
    { details: { backup: name, file: bad.file, status: bad.status } },
  );
}

/**
 * Streams one stored file into `path` (a FIFO a consumer program reads), the bulk work done
 * by native programs.
 *
 * Local storage: `openssl enc -d -in <stored file>` → FIFO → zstd -d / gzip -d → `path`,
 * while this process reads the same file beside it (4 MiB reads from the page cache, on
 * the other core) for its HMAC (and SHA-256 when asked); nothing of the stream passes
 * through this process. S3: storage → (this process: HMAC in 1 MiB batches) → openssl -d
 * → FIFO → zstd -d → `path`, the last batch held back until the HMAC matched.
 *
 * Either way the consumer may have seen data before the HMAC was compared: callers write
 * into staging only, and a mismatch fails the run with BACKUP_CORRUPT. zstd / gzip check
 * their own frame checksums.
 */
async function streamStoredFileToPath(
  ctx: BackupContext,
  manifest: Manifest,
  file: ManifestFile,
  options: {
    path: string;
    consumer: ToolProcess;
    signal?: AbortSignal;
    sha256?: boolean;
    onProgress?: (bytes: number) => void;
  },
): Promise<void> {
  const key = `${manifest.name}/${file.name}`;
  const what = `restore of ${key}`;
  const local = ctx.storage.localPath?.(key) ?? null;
  if (local && !(await ctx.storage.stat(key))) {
    throw new RuntimeError("BACKUP_NOT_FOUND", `The backup file ${local} does not exist`);
  }
  const source = local ? null : await ctx.storage.get(key);
  const running: ToolProcess[] = [];
  try {
    const between = await makeFifo(ctx.tools, `${options.path}.compressed`);
    const decrypt = ctx.tools.spawnTool("openssl", [
      ...opensslEncArgs({ decrypt: true }, manifest.encryption.iterations),
      ...(local ? ["-in", local] : []),
      "-out",
      between,
    ], {
      stdin: local ? "null" : "piped",
      stdout: "null",
      env: { [OPENSSL_PASS_ENV]: ctx.passphrase },
      signal: options.signal,
    });
    running.push(decrypt);
    const writer = spawnCodec(
      ctx.tools,
      codecCommand({ tool: file.compression, decompress: true }),
      {
        input: between,
        output: options.path,
        signal: options.signal,
      },
    );
    running.push(writer);
    const processes = [decrypt, writer, options.consumer];
    if (local) {
      await runPipeline({
        source: new ReadableStream({ start: (c) => c.close() }),
        stages: [],
        pumps: [authenticateStored(ctx, manifest, file, local, options)],
        sink: (stream) => stream.pipeTo(new WritableStream()),
        processes,
        signal: options.signal,
        what,
      });
      return;
    }
    let seen = 0;
    const auth = createAuthStream(ctx.passphrase, {
      iterations: manifest.encryption.iterations,
      expect: {
        hmac: file.hmac,
        size: file.size,
        ...(options.sha256 ? { sha256: file.sha256 } : {}),
      },
      name: key,
    });
    const progress = new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        seen += chunk.length;
        options.onProgress?.(seen);
        controller.enqueue(chunk);
      },
    });
    await runPipeline({
      source: source!,
      stages: [progress, auth.stream],
      sink: (stream) => stream.pipeTo(decrypt.stdin!),
      processes,
      signal: options.signal,
      what,
    });
    await auth.result;
  } catch (err) {
    for (const p of running) p.kill("SIGKILL");
    await source?.cancel().catch(() => {});
    throw err;
  }
}

/** Authenticates a stored local file (size, HMAC, SHA-256 when asked); BACKUP_CORRUPT if not. */
async function authenticateStored(
  ctx: BackupContext,
  manifest: Manifest,
  file: ManifestFile,
  path: string,
  options: { sha256?: boolean; onProgress?: (bytes: number) => void; signal?: AbortSignal },
): Promise<void> {
  const name = `${manifest.name}/${file.name}`;
  const corrupt = (detail: string) =>
    new RuntimeError("BACKUP_CORRUPT", `Cannot decrypt ${name}: ${detail}`);
  let seen: AuthenticatedFile;
  try {
    seen = await authenticateFile(path, ctx.passphrase, {
      iterations: manifest.encryption.iterations,
      name,
      sha256: options.sha256 ?? false,
      onProgress: options.onProgress,
      signal: options.signal,
    });
  } catch (err) {
    if (err instanceof RuntimeError && err.code === "BACKUP_FAILED") {
      throw corrupt("it does not start with the openssl `Salted__` header");
    }
    throw err;
  }
  if (seen.size !== file.size) {
    throw corrupt(`it is ${seen.size} bytes, the manifest says ${file.size} (truncated?)`);
  }
  if (options.sha256 && !constantTimeEqualHex(seen.sha256!, file.sha256)) {
    throw corrupt("its SHA-256 does not match the manifest");
  }
  if (!constantTimeEqualHex(seen.hmac, file.hmac.toLowerCase())) {
    throw corrupt("its HMAC-SHA256 does not match (altered, truncated, or another key)");
  }
}

const DB_NAME_RE = /^[a-z_][a-z0-9_]{0,62}$/;

/** Options of {@linkcode restoreLogical}. */
export interface LogicalRestoreOptions {
  /** Name of the new database (must not exist). */
  database: string;
  /** Server to restore into (default: the runtime's DATABASE_URL). */
  url?: string;
  /** Skip ownership and privileges (restoring onto a server without the same roles). */
  noOwner?: boolean;
  /**
   * Check every stored file (SHA-256, HMAC) before restoring. Off by default: the restore
   * streams into a staging database and the stream's own HMAC check decides, so a damaged
   * backup costs a wasted staging restore instead of a second read of every backup.
   */
  precheck?: boolean;
  /** Aborting stops and rolls back. */
  signal?: AbortSignal;
  /** Reports the stored bytes read so far. */
  onProgress?: ProgressListener;
}

/** What a logical restore did. */
export interface LogicalRestoreReport {
  /** Backup restored. */
  backup: string;
  /** The new database. */
  database: string;
  /** Tables whose row counts were compared with the dump-time counts. */
  tablesChecked: number;
  /** Rows in those tables. */
  rows: number;
  /** Bytes of the dump restored. */
  bytes: number;
  /** Wall time. */
  durationMs: number;
}

/**
 * Restores a full (logical) backup into a new database: check the manifest → create a
 * staging database → decrypt (HMAC) | decompress | pg_restore (single transaction) →
 * compare row counts → rename; any failure
 * drops the staging database, so the requested name never holds a partial restore.
 */
export async function restoreLogical(
  ctx: BackupContext,
  nameOrManifest: string | Manifest,
  options: LogicalRestoreOptions,
): Promise<LogicalRestoreReport> {
  const started = performance.now();
  const manifest = typeof nameOrManifest === "string"
    ? await readManifest(ctx.storage, nameOrManifest, { passphrase: ctx.passphrase })
    : nameOrManifest;
  if (manifest.type !== "full" || !manifest.logical) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Backup ${manifest.name} is a ${manifest.type} backup: only full (logical) backups ` +
        "restore into a database; use `restore --to <time>` for physical backups",
    );
  }
  if (!DB_NAME_RE.test(options.database)) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Invalid database name ${JSON.stringify(options.database)}: use 1-63 lowercase ` +
        "letters, digits and _",
    );
  }
  const url = options.url ?? ctx.databaseUrl;
  if (!url) {
    throw new RuntimeError(
      "BACKUP_UNAVAILABLE",
      "Cannot restore: no PostgreSQL server to restore into (set DATABASE_URL or --url)",
    );
  }
  if (options.precheck) assertFilesOk(manifest.name, await checkFiles(ctx, manifest));
  const admin = connectServer(url);
  try {
    const exists = await databaseExists(admin, options.database).catch((err) => {
      throw new RuntimeError(
        "DATABASE_CONNECT_FAILED",
        `Cannot restore: the server at ${redactUrl(url)} cannot be used: ${describeError(err)}`,
        { cause: err },
      );
    });
    if (exists) {
      throw new RuntimeError(
        "RESTORE_TARGET_EXISTS",
        `Cannot restore into database ${options.database}: it already exists; choose a new ` +
          "name (a restore never overwrites a database)",
      );
    }
    const staging = `rs_restore_${crypto.randomUUID().replace(/-/g, "").slice(0, 16)}`;
    await createDatabase(admin, staging);
    let scratch: string | null = null;
    let restore: ToolProcess | null = null;
    try {
      scratch = await scratchDir(ctx, "restore");
      // The decompressed dump goes from zstd to pg_restore through a FIFO, not through this
      // process: only the (smaller) encrypted stream passes here, where its HMAC is checked.
      const fifo = `${scratch}/dump.fifo`;
      assertSuccess(await ctx.tools.runTool("mkfifo", ["-m", "600", fifo]), "mkfifo");
      restore = ctx.tools.spawn("pg_restore", [
        // An explicit format: format discovery would open the FIFO twice and lose its head.
        "--format=custom",
        "--exit-on-error",
        "--single-transaction",
        "--no-password",
        `--dbname=${staging}`,
        ...(options.noOwner ? ["--no-owner", "--no-privileges"] : []),
        fifo,
      ], {
        connection: { url, database: staging },
        stdout: "null",
        signal: options.signal,
      });
      const file = manifest.files[0];
      await streamStoredFileToPath(ctx, manifest, file, {
        path: fifo,
        consumer: restore,
        signal: options.signal,
        onProgress: options.onProgress &&
          ((bytes) => options.onProgress!({ phase: "restoring", bytes, total: file.size })),
      });
      const probe = await compareRowCounts(url, staging, manifest);
      await renameDatabase(admin, staging, options.database);
      return {
        backup: manifest.name,
        database: options.database,
        tablesChecked: probe.tables,
        rows: probe.rows,
        bytes: file.plainSize,
        durationMs: Math.round(performance.now() - started),
      };
    } catch (err) {
      // A failure before the stream reached it (the stored file unreadable) leaves
      // pg_restore blocked opening the FIFO for good: stop it.
      restore?.kill("SIGKILL");
      await restore?.finished;
      await dropDatabase(admin, staging).catch((dropErr) =>
        ctx.log.error("could not drop the staging database of a failed restore", {
          database: staging,
          error: dropErr instanceof Error ? dropErr.message : String(dropErr),
        })
      );
      if (err instanceof RuntimeError && err.code === "BACKUP_CORRUPT") {
        throw new RuntimeError(
          "BACKUP_CORRUPT",
          `${err.message}; nothing was restored (the staging database was dropped)`,
          { cause: err, details: err.details },
        );
      }
      throw err;
    } finally {
      if (scratch) await removeTree(scratch);
    }
  } finally {
    await admin.end({ timeout: 5 });
  }
}

/**
 * Compares the restored tables' row counts with the counts taken at dump time, on a
 * connection to the staging database that is closed again before it is renamed.
 */
async function compareRowCounts(
  url: string,
  database: string,
  manifest: Manifest,
): Promise<{ tables: number; rows: number }> {
  const tables = manifest.logical?.tables;
  if (!tables) return { tables: 0, rows: 0 };
  const counted = await withServer(url, { database }, (sql) => countRows(sql, tables));
  let rows = 0;
  for (const [i, t] of tables.entries()) {
    const found = counted[i].rows;
    if (found !== t.rows) {
      throw new RuntimeError(
        "RESTORE_FAILED",
        `Restored table ${t.schema}.${t.table} has ${found} rows, the backup recorded ${t.rows}`,
      );
    }
    rows += t.rows;
  }
  return { tables: tables.length, rows };
}

/**
 * Unpacks a stored tar file (base backup or WAL) into `dir`, as the server user; each file
 * is authenticated (size, HMAC) while it streams (see streamStoredFileToPath), so callers
 * unpack into staging only.
 */
async function extractTar(
  ctx: BackupContext,
  manifest: Manifest,
  dir: string,
  options: { signal?: AbortSignal; onProgress?: ProgressListener; sha256?: boolean } = {},
): Promise<void> {
  const { signal } = options;
  const scratch = await scratchDir(ctx, "extract");
  const total = manifest.files.reduce((n, f) => n + f.size, 0);
  let before = 0;
  try {
    for (const [i, file] of manifest.files.entries()) {
      const fifo = await makeFifo(ctx.tools, `${scratch}/tar-${i}.fifo`);
      const tar = ctx.tools.spawnTool("tar", ["-x", "-f", fifo, "-C", dir], {
        asServerUser: true,
        stdout: "null",
        signal,
      });
      const done = before;
      await streamStoredFileToPath(ctx, manifest, file, {
        path: fifo,
        consumer: tar,
        signal,
        sha256: options.sha256,
        onProgress: options.onProgress &&
          ((bytes) =>
            options.onProgress!({
              phase: `unpacking ${manifest.name}`,
              bytes: done + bytes,
              total,
            })),
      });
      before += file.size;
    }
  } finally {
    await removeTree(scratch);
  }
}

/**
 * The base backups a base backup needs, oldest first: itself for a plain one; for a
 * file-level incremental one, its parents up to the root of its chain.
 */
export function baseChain(catalog: Catalog, base: Manifest): Manifest[] {
  const chain = [base];
  const byName = new Map(catalog.entries.map((e) => [e.manifest.name, e.manifest]));
  for (let m = base; m.physical?.parent;) {
    const parent = byName.get(m.physical.parent);
    if (!parent) {
      throw new RuntimeError(
        "BACKUP_NOT_FOUND",
        `Base backup ${base.name} references files in ${m.physical.parent}, which is not in ` +
          "the storage: it cannot be restored",
      );
    }
    if (chain.includes(parent)) {
      throw new RuntimeError("BACKUP_CORRUPT", `The chain of base backup ${base.name} loops`);
    }
    chain.unshift(parent);
    m = parent;
  }
  return chain;
}

/**
 * Assembles a data directory from a chain of base backups (baseChain): each tar that holds
 * some of the newest backup's files is unpacked in order, the later ones over the earlier,
 * then the files the newest backup does not list (removed from the cluster since) are
 * deleted. The result is byte for byte what pg_basebackup sent for the newest backup.
 */
async function unpackBase(
  ctx: BackupContext,
  chain: Manifest[],
  dir: string,
  options: { signal?: AbortSignal; onProgress?: ProgressListener; sha256?: boolean },
): Promise<void> {
  const newest = chain.at(-1)!;
  const files = newest.physical?.files;
  if (chain.length === 1 || !files) {
    for (const m of chain) await extractTar(ctx, m, dir, options);
    return;
  }
  const holders = new Set(files.map((f) => f.in));
  for (const m of chain) {
    // The newest always: its tar has the directories, backup_label and the WAL.
    if (m === newest || holders.has(m.name)) await extractTar(ctx, m, dir, options);
  }
  const extra = await filesNotListed(dir, new Set(files.map((f) => f.path)));
  for (const path of extra) await Deno.remove(`${dir}/${path}`);
}

/** How a restored data directory recovers. */
interface RecoveryPlan {
  /** Directories restore_command copies WAL from, in order. */
  walDirs: string[];
  /** Stop at this time (recovery_target_time); null replays all available WAL. */
  targetTime: Date | null;
}

const SAFE_PATH = /^[A-Za-z0-9_./+-]+$/;

/** Appends the recovery settings to postgresql.auto.conf; returns a function undoing it. */
async function configureRecovery(
  ctx: BackupContext,
  dataDir: string,
  plan: RecoveryPlan,
): Promise<() => Promise<void>> {
  for (const dir of plan.walDirs) {
    if (!SAFE_PATH.test(dir)) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Cannot use ${dir} in restore_command: use a path of letters, digits, . _ / + -`,
      );
    }
  }
  const autoConf = `${dataDir}/postgresql.auto.conf`;
  const original = await Deno.readTextFile(autoConf).catch(() => null);
  const copies = plan.walDirs.map((d) => `cp "${d}/%f" "%p"`).join(" 2>/dev/null || ");
  const lines = [
    "",
    "# --- added by rootstream restore; removed when recovery has finished ---",
    `restore_command = '${plan.walDirs.length ? copies : "false"}'`,
    ...(plan.targetTime
      ? [
        `recovery_target_time = '${formatTarget(plan.targetTime)}'`,
        "recovery_target_inclusive = on",
      ]
      : []),
    "recovery_target_action = 'promote'",
    "",
  ];
  await Deno.writeTextFile(autoConf, (original ?? "") + lines.join("\n"), { mode: 0o600 });
  await Deno.writeTextFile(`${dataDir}/recovery.signal`, "", { mode: 0o600 });
  await Deno.remove(`${dataDir}/standby.signal`).catch(() => {});
  await ctx.tools.chownToServerUser(autoConf);
  await ctx.tools.chownToServerUser(`${dataDir}/recovery.signal`);
  return async () => {
    if (original === null) await Deno.remove(autoConf).catch(() => {});
    else await Deno.writeTextFile(autoConf, original);
    await Deno.remove(`${dataDir}/recovery.signal`).catch(() => {});
  };
}

/** A recovery target as PostgreSQL reads it: `YYYY-MM-DD HH:MM:SS.mmm+00`. */
export function formatTarget(time: Date): string {
  return time.toISOString().replace("T", " ").replace("Z", "+00");
}

/** Settings of every throw-away server on restored data. */
function throwAwaySettings(): Record<string, string> {
  return {
    // Never push this throw-away server's WAL into the production archive.
    archive_mode: "off",
    // Restored configuration may ask for synchronous standbys that do not exist here.
    synchronous_standby_names: "",
    cluster_name: "rs-restore",
    hot_standby: "off",
    // A production-sized buffer pool might not fit next to the production server.
    shared_buffers: "128MB",
  };
}

/** Starts a throw-away server on a private socket; maps recovery failures to clear errors. */
async function startRestored(
  ctx: BackupContext,
  dataDir: string,
  options: { socketDir: string; logPath: string; targetTime: Date | null },
): Promise<PgServerProcess> {
  try {
    return await ctx.tools.startServer(dataDir, {
      tcp: false,
      trustLocalSocket: true,
      socketDir: options.socketDir,
      logPath: options.logPath,
      settings: throwAwaySettings(),
      superuser: userOf(ctx.databaseUrl),
    });
  } catch (err) {
    const log = await Deno.readTextFile(options.logPath).catch(() => "");
    if (/recovery ended before configured recovery target was reached/.test(log)) {
      throw new RuntimeError(
        "PITR_TARGET_NOT_REACHED",
        `Cannot recover to ${
          options.targetTime ? formatTarget(options.targetTime) : "the end of the WAL"
        }: the archived WAL ends before a transaction committed after that time. HINT: ` +
          "choose an earlier time, or archive more WAL (a commit after the target, then " +
          "SELECT pg_switch_wal()) and take an incremental backup; nothing was restored",
        { cause: err },
      );
    }
    if (/requested recovery stop point is before consistent recovery point/.test(log)) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        "Cannot recover to that time: it is before the base backup became consistent; " +
          "choose a later time or an older base backup; nothing was restored",
        { cause: err },
      );
    }
    throw err;
  }
}

/** Options of {@linkcode restorePointInTime}. */
export interface PitrOptions {
  /** Recover to this time (commits after it are not applied); null: all available WAL. */
  targetTime: Date | null;
  /** The new data directory (must not exist, or be empty). */
  targetDir: string;
  /** Use this base backup instead of the newest that finished before the target. */
  base?: string;
  /** The storage catalog (read when not given). */
  catalog: Catalog;
  /**
   * Read every stored file once up front (SHA-256, HMAC) before unpacking anything. Off by
   * default: the files are authenticated while they are unpacked into the staging
   * directory, which is removed on a mismatch, so a damaged backup costs a wasted
   * unpacking instead of a second read of every backup.
   */
  precheck?: boolean;
  /** Reports the phase and the stored bytes read so far. */
  onProgress?: ProgressListener;
  /** Aborting stops and removes the staging files. */
  signal?: AbortSignal;
}

/** What a point-in-time restore did. */
export interface PitrReport {
  /** Base backup used. */
  base: string;
  /** WAL backups unpacked from the storage. */
  walBackups: string[];
  /** Whether the local WAL archive was used too. */
  usedArchive: boolean;
  /** The target (ISO), or null for "all WAL". */
  targetTime: string | null;
  /** Commit time of the last transaction replayed (ISO), if any. */
  lastReplayedCommit: string | null;
  /** PostgreSQL's own sentence about where recovery stopped. */
  stoppedAt: string | null;
  /** Timeline of the restored cluster after promotion. */
  timeline: number | null;
  /** Databases found. */
  databases: string[];
  /** The data directory, ready to be started. */
  dataDir: string;
  /** Wall time. */
  durationMs: number;
}

/** The base backup to use for a recovery to `target` (newest that finished before it). */
export function chooseBase(catalog: Catalog, target: Date | null, name?: string): Manifest {
  const bases = catalog.entries.map((e) => e.manifest).filter((m) => m.type === "base" && m.wal);
  if (name) {
    const chosen = bases.find((m) => m.name === name);
    if (!chosen) {
      throw new RuntimeError("BACKUP_NOT_FOUND", `There is no base backup named ${name}`);
    }
    return chosen;
  }
  const usable = target
    ? bases.filter((m) => Date.parse(m.wal!.endTime) < target.getTime())
    : bases;
  const base = usable.at(-1);
  if (!base) {
    throw new RuntimeError(
      "BACKUP_NOT_FOUND",
      target
        ? `No base backup finished before ${target.toISOString()}${
          bases.length ? ` (the oldest finished at ${bases[0].wal!.endTime})` : ""
        }: point-in-time recovery needs one`
        : "There is no base backup: point-in-time recovery needs one",
    );
  }
  return base;
}

/**
 * Point-in-time recovery into a new data directory: base backup + archived WAL (from the
 * storage's WAL backups of that base and the local archive), replayed up to `targetTime`
 * in a throw-away server, probed, stopped cleanly, then moved into place.
 */
export async function restorePointInTime(
  ctx: BackupContext,
  options: PitrOptions,
): Promise<PitrReport> {
  const started = performance.now();
  const base = chooseBase(options.catalog, options.targetTime, options.base);
  const walBackups = options.catalog.entries.map((e) => e.manifest).filter((m) =>
    (m.type === "incremental" || m.type === "differential") && m.base === base.name
  );
  const target = options.targetDir.replace(/\/+$/, "");
  await assertEmptyTarget(target);
  const parent = target.slice(0, target.lastIndexOf("/")) || "/";
  const leaf = target.slice(target.lastIndexOf("/") + 1);
  const suffix = crypto.randomUUID().slice(0, 8);
  const staging = `${parent}/.${leaf}.restoring-${suffix}`;
  const walDir = `${parent}/.${leaf}.wal-${suffix}`;
  const archive = ctx.settings.walArchiveDir;
  const usedArchive = archive !== null && await isDir(archive);
  // PostgreSQL (its OS user) opens the staging directory and runs restore_command's cp
  // from the WAL directories: say now if it cannot, not after unpacking everything.
  await assertServerCanReach(ctx, target, {
    need: "enter",
    creatable: true,
    what: `Cannot restore into ${target}`,
  });
  if (usedArchive) {
    await assertServerCanReach(ctx, archive!, {
      need: "read",
      what: `Cannot replay WAL from the archive ${archive} (BACKUP_WAL_ARCHIVE_DIR)`,
    });
  }
  const scratch = await scratchDir(ctx, "pitr");
  let server: PgServerProcess | null = null;
  try {
    const check = options.precheck ? checkFiles : checkSizes;
    const bases = baseChain(options.catalog, base);
    for (const m of [...bases, ...walBackups]) assertFilesOk(m.name, await check(ctx, m));
    await Deno.mkdir(parent, { recursive: true });
    await ctx.tools.prepareDir(staging);
    await unpackBase(ctx, bases, staging, options);
    await ctx.tools.prepareDir(walDir);
    for (const m of walBackups) await extractTar(ctx, m, walDir, options);
    const undo = await configureRecovery(ctx, staging, {
      walDirs: [walDir, ...(usedArchive ? [archive!] : [])],
      targetTime: options.targetTime,
    });
    const logPath = `${scratch}/server.log`;
    server = await startRestored(ctx, staging, {
      socketDir: scratch,
      logPath,
      targetTime: options.targetTime,
    });
    const state = await withServer(server.url("postgres"), {}, recoveryState);
    if (state.inRecovery) {
      throw new RuntimeError("RESTORE_FAILED", "The restored server did not finish recovery");
    }
    const log = await server.log();
    await server.stop();
    server = null;
    await undo();
    const lastCommit = state.lastReplayedCommit;
    if (options.targetTime && lastCommit && lastCommit.getTime() > options.targetTime.getTime()) {
      throw new RuntimeError(
        "RESTORE_FAILED",
        `Recovery replayed a commit at ${lastCommit.toISOString()}, after the target`,
      );
    }
    await Deno.rename(staging, target);
    return {
      base: base.name,
      walBackups: walBackups.map((m) => m.name),
      usedArchive,
      targetTime: options.targetTime?.toISOString() ?? null,
      lastReplayedCommit: lastCommit?.toISOString() ?? null,
      stoppedAt: /(recovery stopping [^\n]*)/.exec(log)?.[1]?.trim() ?? null,
      timeline: state.timeline,
      databases: state.databases,
      dataDir: target,
      durationMs: Math.round(performance.now() - started),
    };
  } catch (err) {
    if (server) await server.stop();
    await removeTree(staging);
    if (err instanceof RuntimeError && err.code === "BACKUP_CORRUPT") {
      throw new RuntimeError(
        "BACKUP_CORRUPT",
        /nothing was restored/.test(err.message)
          ? err.message
          : `${err.message}; nothing was restored (the staging directory was removed)`,
        { cause: err, details: err.details },
      );
    }
    throw err;
  } finally {
    await removeTree(walDir);
    await removeTree(scratch);
  }
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}

async function assertEmptyTarget(target: string): Promise<void> {
  try {
    const entries = await Array.fromAsync(Deno.readDir(target));
    if (entries.length) {
      throw new RuntimeError(
        "RESTORE_TARGET_EXISTS",
        `Cannot restore into ${target}: the directory is not empty (a restore never overwrites)`,
      );
    }
    await Deno.remove(target);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return;
    if (err instanceof Deno.errors.NotADirectory) {
      throw new RuntimeError(
        "RESTORE_TARGET_EXISTS",
        `Cannot restore into ${target}: it is a file`,
      );
    }
    throw err;
  }
}

/** What a test-restore of a physical backup found. */
export interface PhysicalProbe {
  /** Databases the restored cluster has. */
  databases: string[];
  /** Last WAL position replayed (WAL backups). */
  replayedLsn?: string;
  /** pg_verifybackup said the base backup's files match its own manifest. */
  pgVerifybackup?: boolean;
}

/**
 * Test-restore of a base backup (crash recovery from its own WAL) or of a WAL backup (its
 * base plus the chain up to it, replayed to the end) in a throw-away server; returns
 * the probe results, throws when the backup does not restore.
 */
export async function testRestorePhysical(
  ctx: BackupContext,
  manifest: Manifest,
  options: { catalog: Catalog; signal?: AbortSignal; onProgress?: ProgressListener },
): Promise<PhysicalProbe> {
  const { catalog, signal } = options;
  const scratch = await scratchDir(ctx, "verify");
  const dataDir = `${scratch}/data`;
  const walDir = `${scratch}/wal`;
  let server: PgServerProcess | null = null;
  try {
    const base = manifest.type === "base"
      ? manifest
      : catalog.entries.map((e) => e.manifest).find((m) => m.name === manifest.base);
    if (!base) {
      throw new RuntimeError(
        "BACKUP_VERIFY_FAILED",
        `Backup ${manifest.name} applies to base backup ${manifest.base}, which is not in the storage`,
      );
    }
    const chain = manifest.type === "incremental"
      ? catalog.entries.map((e) => e.manifest).filter((m) =>
        m.type === "incremental" && m.base === base.name && m.startedAt <= manifest.startedAt
      )
      : manifest.type === "differential"
      ? [manifest]
      : [];
    // Sizes now; SHA-256 and HMAC of every file while it is unpacked (one read).
    const bases = baseChain(catalog, base);
    for (const m of [...bases, ...chain]) assertFilesOk(m.name, await checkSizes(ctx, m));
    await ctx.tools.prepareDir(dataDir);
    await unpackBase(ctx, bases, dataDir, { ...options, sha256: true });
    const probe: PhysicalProbe = { databases: [] };
    if (manifest.type === "base") {
      const verified = await ctx.tools.run("pg_verifybackup", ["--quiet", dataDir], {
        asServerUser: true,
        signal,
      });
      if (!verified.success) {
        throw new RuntimeError(
          "BACKUP_VERIFY_FAILED",
          `pg_verifybackup rejected base backup ${manifest.name}: ${
            verified.stderr.trim().slice(0, 500)
          }`,
        );
      }
      probe.pgVerifybackup = true;
    } else {
      await ctx.tools.prepareDir(walDir);
      for (const m of chain) await extractTar(ctx, m, walDir, { ...options, sha256: true });
      await configureRecovery(ctx, dataDir, { walDirs: [walDir], targetTime: null });
    }
    server = await startRestored(ctx, dataDir, {
      socketDir: scratch,
      logPath: `${scratch}/server.log`,
      targetTime: null,
    });
    const state = await withServer(server.url("postgres"), {}, recoveryState);
    probe.databases = state.databases;
    const expected = base.physical?.databases ?? [];
    const missing = expected.filter((d) => !probe.databases.includes(d));
    if (missing.length) {
      throw new RuntimeError(
        "BACKUP_VERIFY_FAILED",
        `The test-restore of ${manifest.name} lacks databases: ${missing.join(", ")}`,
      );
    }
    for (const database of probe.databases) {
      await withServer(server.url(database), {}, catalogEntries);
    }
    if (manifest.type !== "base" && manifest.wal) {
      const log = await server.log();
      const redo = /redo done at ([0-9A-F]+\/[0-9A-F]+)/.exec(log)?.[1] ?? state.replayedLsn;
      probe.replayedLsn = redo ?? undefined;
      const last = walSegmentNumber(manifest.wal.endSegment, manifest.wal.segmentBytes);
      const reached = redo ? parseLsn(redo) : 0n;
      if (reached < last * BigInt(manifest.wal.segmentBytes)) {
        throw new RuntimeError(
          "BACKUP_VERIFY_FAILED",
          `The test-restore of ${manifest.name} replayed WAL only to ${redo ?? "nowhere"}, ` +
            `not into its last segment ${manifest.wal.endSegment}`,
        );
      }
    }
    return probe;
  } finally {
    if (server) await server.stop();
    await removeTree(scratch);
  }
}

/** Test-restore of a full backup into a throw-away cluster (initdb'd here); returns probes. */
export async function testRestoreLogical(
  ctx: BackupContext,
  manifest: Manifest,
  options: { signal?: AbortSignal; onProgress?: ProgressListener } = {},
): Promise<LogicalRestoreReport> {
  const { signal } = options;
  const scratch = await scratchDir(ctx, "verify");
  let server: PgServerProcess | null = null;
  try {
    await ctx.tools.initdb(`${scratch}/data`, { signal });
    server = await ctx.tools.startServer(`${scratch}/data`, {
      tcp: false,
      socketDir: scratch,
      logPath: `${scratch}/server.log`,
      settings: { fsync: "off", full_page_writes: "off", synchronous_commit: "off" },
    });
    return await restoreLogical(ctx, manifest, {
      database: safeDatabaseName(manifest.logical?.database ?? "restored"),
      url: server.url("postgres"),
      noOwner: true,
      signal,
      onProgress: options.onProgress,
    });
  } finally {
    if (server) await server.stop();
    await removeTree(scratch);
  }
}

function safeDatabaseName(name: string): string {
  return DB_NAME_RE.test(name) ? name : "restored";
}
