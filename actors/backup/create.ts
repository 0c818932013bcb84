/**
 * Taking backups, one function per type; each reads as a script of named steps and ends
 * with the manifest it will write (the caller signs and stores it last):
 *
 * - full: export a snapshot → pg_dump -Fc -Z0 in that snapshot (and row counts in it) →
 *   compress → encrypt → checksum → store.
 * - base: pg_basebackup -Ft -X fetch to stdout (with its own CRC32C backup_manifest inside)
 *   → compress → encrypt → checksum → store; the WAL range from its verbose output.
 * - incremental / differential: pg_switch_wal() and wait for the archive → choose the
 *   archived WAL since the previous link (incremental) or since the base (differential),
 *   with a gap check → tar → compress → encrypt → checksum → store.
 * @module
 */
import {
  type AuthenticatedFile,
  authenticateFile,
  BACKUP_CIPHER,
  createAuthStream,
  encryptionHeader,
  OPENSSL_PASS_ENV,
  opensslEncArgs,
  PBKDF2_ITERATIONS,
} from "../../lib/backup_crypto.ts";
import { RuntimeError } from "../../lib/errors.ts";
import { lookupAccount } from "../../lib/os_access.ts";
import {
  formatLsn,
  parseBaseBackupWal,
  type ToolProcess,
  type ToolResult,
  walFileName,
  walSegmentNumber,
} from "../../store/pg_tools.ts";
import {
  connectableDatabases,
  estimateSizes,
  serverFacts,
  withExportedSnapshot,
} from "../../store/backup_server.ts";
import {
  type BackupContext,
  databaseOf,
  removeTree,
  requireServer,
  scratchDir,
} from "./context.ts";
import {
  type CatalogEntry,
  type Manifest,
  MANIFEST_FORMAT,
  type ManifestFile,
  readCatalog,
} from "./manifest.ts";
import { explainArchiveCommand } from "./archiver.ts";
import { codecCommand, counter, makeFifo, runPipeline, spawnCodec } from "./pipeline.ts";
import { filterBaseTar, IncrementalMismatch, type IncrementalParent } from "./base_files.ts";
import type { ProgressListener } from "./progress.ts";
import type { StagedFile } from "./storage.ts";
import { tarFiles } from "./tar.ts";
import { listArchive, segmentSize, selectWal, switchAndAwaitArchive } from "./wal.ts";

/** Options shared by the create functions. */
export interface CreateOptions {
  /** The new backup's name. */
  name: string;
  /** Its start time (injected clock). */
  startedAt: number;
  /** Aborting kills the tools and fails the run. */
  signal?: AbortSignal;
  /** Receives the bytes read so far (about twice a second). */
  onProgress?: ProgressListener;
}

/** How often a running backup reports its progress. */
const PROGRESS_EVERY_MS = 500;

/** The bytes a process has read so far (`rchar` of /proc/<pid>/io); null when unknown. */
async function bytesReadBy(pid: number): Promise<number | null> {
  try {
    const text = await Deno.readTextFile(`/proc/${pid}/io`);
    const m = /^rchar:\s*(\d+)/m.exec(text);
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** File extension of the configured compression. */
function extension(ctx: BackupContext): string {
  return ctx.settings.compression.tool === "zstd" ? "zst" : "gz";
}

function encryptionFacts(): Manifest["encryption"] {
  return { method: BACKUP_CIPHER, kdf: "pbkdf2-hmac-sha256", iterations: PBKDF2_ITERATIONS };
}

/**
 * Streams `source` into `<name>/<fileName>`, the bulk work done by native programs:
 *
 *   tool → FIFO → zstd → FIFO → openssl enc → the storage's staged file (local storage),
 *   hashed (SHA-256 + HMAC, 4 MiB reads) and written out to disk as it grows, then fsynced
 *   and renamed;
 *   S3: openssl enc → (this process: SHA-256 + HMAC in 1 MiB batches) → upload.
 *
 * The compressor and openssl run beside the tool on other cores. A stream source (the WAL
 * tar) or gzip (no byte count of its own) feeds the compressor through this process. On
 * any failure the partial object is deleted and the error says which stage failed.
 */
export async function storeEncrypted(
  ctx: BackupContext,
  options: {
    name: string;
    fileName: string;
    content: ManifestFile["content"];
    /**
     * The data: a stream, or a program started here that writes to `output` (a FIFO the
     * compressor reads, so the plain bytes never pass through this process) or, when
     * `output` is null, to its stdout.
     */
    source: ReadableStream<Uint8Array> | ((output: string | null) => ToolProcess);
    /** Programs behind a stream `source` (each must exit 0). */
    producers?: ToolProcess[];
    signal?: AbortSignal;
    /** Progress: plain bytes read, of about `total`. */
    progress?: {
      phase: string;
      total: number | null;
      listener: ProgressListener;
      /** The bytes read so far, when the caller counts them (a filtered stream). */
      bytes?: () => number;
    };
  },
): Promise<{ file: ManifestFile; results: ToolResult[] }> {
  const key = `${options.name}/${options.fileName}`;
  const scratch = await scratchDir(ctx, "backup");
  const running: ToolProcess[] = [];
  let staged: StagedFile | null = null;
  let ticker: number | null = null;
  try {
    const fifo = await makeFifo(ctx.tools, `${scratch}/compressed.fifo`);
    // zstd -vv reports the exact bytes it read, so a program can write straight into it;
    // gzip does not, so its input is counted here.
    const direct = typeof options.source === "function" &&
      ctx.settings.compression.tool === "zstd";
    const plainFifo = direct ? await makeFifo(ctx.tools, `${scratch}/plain.fifo`) : null;
    const codec = spawnCodec(ctx.tools, codecCommand(ctx.settings.compression, { count: direct }), {
      input: plainFifo,
      output: fifo,
      signal: options.signal,
    });
    running.push(codec);
    const tools: ToolProcess[] = [...(options.producers ?? [])];
    running.push(...tools);
    let input: ReadableStream<Uint8Array> | null = null;
    if (typeof options.source === "function") {
      const tool = options.source(plainFifo);
      tools.push(tool);
      running.push(tool);
      if (!direct) input = tool.stdout!;
    } else {
      input = options.source;
    }
    const plain = counter();
    const pumps = input ? [input.pipeThrough(plain.stage).pipeTo(codec.stdin!)] : [];
    const progress = options.progress;
    if (progress) {
      // The compressor's own read count when the tool writes into it directly.
      const count = progress.bytes ??
        (direct ? () => bytesReadBy(codec.pid) : () => plain.bytes());
      ticker = setInterval(() => {
        Promise.resolve(count()).then((bytes) => {
          if (bytes !== null && ticker !== null) {
            progress.listener({ phase: progress.phase, bytes, total: progress.total });
          }
        }, () => {});
      }, PROGRESS_EVERY_MS);
    }
    const what = `backup ${options.name}`;
    const env = { [OPENSSL_PASS_ENV]: ctx.passphrase };
    let sealed: AuthenticatedFile;
    let results: ToolResult[];
    if (ctx.storage.stage) {
      // Local storage: openssl writes the file in place (salt and header included) while this
      // process hashes it (4 MiB page-cache reads) and the kernel writes it out every 250 ms;
      // commit fsyncs what is left and renames.
      staged = await ctx.storage.stage(key);
      const encrypt = ctx.tools.spawnTool("openssl", [
        ...opensslEncArgs({ encrypt: null }, PBKDF2_ITERATIONS),
        "-in",
        fifo,
        "-out",
        staged.path,
      ], { stdout: "null", env, signal: options.signal });
      running.push(encrypt);
      const flusher = flushWhileWriting(staged);
      const pipeline = runPipeline({
        source: new ReadableStream({ start: (c) => c.close() }),
        stages: [],
        pumps,
        sink: (stream) => stream.pipeTo(new WritableStream()),
        processes: [...tools, codec, encrypt],
        signal: options.signal,
        what,
      });
      // Hashed as openssl writes it (page-cache reads), on the core the compressor leaves.
      const hashing = authenticateFile(staged.path, ctx.passphrase, {
        name: key,
        growing: pipeline,
      });
      // Handled here too: a hash that fails before the pipeline settles (a read error) is
      // awaited below, and must not count as an unhandled rejection meanwhile.
      hashing.catch(() => {});
      try {
        ({ results } = await pipeline);
      } catch (err) {
        await hashing.catch(() => {}); // moot: the pipeline's error is the one to report
        throw err;
      } finally {
        await flusher.stop();
      }
      [sealed] = await Promise.all([hashing, staged.flush()]);
      const { size } = await staged.commit();
      staged = null;
      if (size !== sealed.size) {
        throw new RuntimeError("STORAGE_FAILED", `${what}: ${key} changed while it was stored`);
      }
    } else {
      const salt = crypto.getRandomValues(new Uint8Array(8));
      const encrypt = ctx.tools.spawnTool("openssl", [
        ...opensslEncArgs({ encrypt: salt }, PBKDF2_ITERATIONS),
        "-in",
        fifo,
      ], { stdout: "piped", env, signal: options.signal });
      running.push(encrypt);
      const auth = createAuthStream(ctx.passphrase, {
        sha256: true,
        prefix: encryptionHeader(salt),
      });
      const run = await runPipeline({
        source: encrypt.stdout!,
        stages: [auth.stream],
        pumps,
        sink: (stream) => ctx.storage.put(key, stream, { signal: options.signal }),
        processes: [...tools, codec, encrypt],
        signal: options.signal,
        what,
      });
      results = run.results;
      sealed = await auth.result;
      if (sealed.size !== run.value.size) {
        throw new RuntimeError(
          "STORAGE_FAILED",
          `Backup ${options.name}: the storage kept ${run.value.size} of ${sealed.size} bytes ` +
            `of ${key}`,
        );
      }
    }
    const plainSize = direct ? zstdBytesRead(results, options.name) : plain.bytes();
    if (progress) {
      clearInterval(ticker!);
      ticker = null;
      const bytes = progress.bytes?.() ?? plainSize;
      progress.listener({ phase: progress.phase, bytes, total: progress.total });
    }
    return {
      file: {
        name: options.fileName,
        content: options.content,
        compression: ctx.settings.compression.tool,
        size: sealed.size,
        sha256: sealed.sha256!,
        hmac: sealed.hmac,
        plainSize,
      },
      results,
    };
  } catch (err) {
    for (const p of running) p.kill("SIGKILL");
    await staged?.abort();
    await ctx.storage.delete(key).catch(() => {});
    throw err;
  } finally {
    if (ticker !== null) clearInterval(ticker);
    ticker = null;
    await removeTree(scratch);
  }
}

/** How often a staged file is written out while a program still appends to it. */
const FLUSH_EVERY_MS = 250;

/**
 * Writes a staged file out to disk every {@linkcode FLUSH_EVERY_MS} while openssl still
 * appends to it (as PostgreSQL's own `*_flush_after` settings do), so the disk works beside
 * the compressor instead of after it and the fsync before the rename finds little left: on
 * 550 MB that fsync alone took 0.5–0.7 s at the end. A failed flush is left to that fsync,
 * which reports it.
 */
function flushWhileWriting(staged: StagedFile): { stop(): Promise<void> } {
  let stopped = false;
  let timer: number | null = null;
  let flushing: Promise<void> = Promise.resolve();
  const tick = () => {
    timer = null;
    flushing = staged.flush().catch(() => {}).then(() => {
      if (!stopped) timer = setTimeout(tick, FLUSH_EVERY_MS);
    });
  };
  timer = setTimeout(tick, FLUSH_EVERY_MS);
  return {
    async stop() {
      stopped = true;
      if (timer !== null) clearTimeout(timer);
      timer = null;
      await flushing;
    },
  };
}

/** The exact byte count `zstd -vv` reports having read (`( 123 B =>  45 B, …)`). */
function zstdBytesRead(results: ToolResult[], name: string): number {
  for (const r of results) {
    const all = [...r.stderr.matchAll(/\(\s*(\d+) B =>\s*\d+ B,/g)];
    if (all.length) return Number(all.at(-1)![1]);
  }
  throw new RuntimeError(
    "BACKUP_FAILED",
    `Backup ${name}: zstd did not report how many bytes it compressed (zstd -vv)`,
  );
}

/** A full logical backup: pg_dump custom format of the runtime's database. */
export async function createFullBackup(
  ctx: BackupContext,
  options: CreateOptions,
): Promise<Manifest> {
  const { url, sql } = requireServer(ctx, "a full (logical) backup");
  const database = databaseOf(url);
  const server = await serverFacts(sql);
  // One exported snapshot for pg_dump and the row counts: the test-restore can then demand
  // exactly these counts.
  return await withExportedSnapshot(sql, async (snapshot) => {
    const counting = ctx.settings.rowCounts ? snapshot.countRows() : Promise.resolve(null);
    counting.catch(() => {});
    const estimate = options.onProgress ? await estimateSizes(sql) : null;
    const { file } = await storeEncrypted(ctx, {
      name: options.name,
      fileName: `dump.pgc.${extension(ctx)}.enc`,
      progress: options.onProgress && {
        phase: "dumping",
        total: estimate!.tables,
        listener: options.onProgress,
      },
      content: "pg_dump-custom",
      source: (output) =>
        ctx.tools.spawn("pg_dump", [
          "--format=custom",
          "--compress=0",
          `--snapshot=${snapshot.id}`,
          "--no-password",
          // Into the compressor's FIFO; --no-sync, as pg_dump would fsync that (EINVAL) —
          // the storage makes the stored file durable.
          ...(output ? [`--file=${output}`, "--no-sync"] : []),
        ], {
          connection: { url },
          stdout: output ? "null" : "piped",
          signal: options.signal,
        }),
      signal: options.signal,
    });
    const tables = await counting;
    return {
      format: MANIFEST_FORMAT,
      name: options.name,
      type: "full",
      startedAt: new Date(options.startedAt).toISOString(),
      completedAt: new Date(ctx.now()).toISOString(),
      encryption: encryptionFacts(),
      server,
      files: [file],
      base: null,
      previous: null,
      wal: null,
      logical: { database, tables },
      physical: null,
    };
  });
}

/**
 * A file-level incremental base backup: pg_basebackup's tar stream filtered against the
 * newest base backup's file list (base_files.ts), so only the files changed since then are
 * stored; the manifest lists every file and the backup holding it. Without a parent that
 * has a file list (the newest base is a plain one, or from another cluster) everything is
 * stored, as the root of a new chain. A file whose content changed without its size or
 * mtime changing makes the run start over storing everything.
 */
export async function createIncrementalBaseBackup(
  ctx: BackupContext,
  options: CreateOptions,
): Promise<Manifest> {
  const { url, sql } = requireServer(ctx, "an incremental base backup");
  const server = await serverFacts(sql);
  const catalog = await readCatalog(ctx.storage, ctx.passphrase);
  const newest = catalog.entries.map((e) => e.manifest)
    .filter((m) => m.type === "base" && m.wal).at(-1);
  const parent: IncrementalParent | null = newest?.physical?.files &&
      newest.server.systemIdentifier === server.systemIdentifier
    ? {
      name: newest.name,
      startedAtS: Math.floor(Date.parse(newest.startedAt) / 1000),
      files: newest.physical.files,
    }
    : null;
  try {
    return await takeBase(ctx, options, { url, sql, server, parent });
  } catch (err) {
    if (!parent || !isMismatch(err)) throw err;
    ctx.log.warn("incremental base backup: a file changed without its size or mtime; storing all", {
      name: options.name,
      error: err instanceof Error ? err.message : String(err),
    });
    return await takeBase(ctx, options, { url, sql, server, parent: null });
  }
}

function isMismatch(err: unknown): boolean {
  for (let e = err, depth = 0; e && depth < 6; depth++) {
    if (e instanceof IncrementalMismatch) return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

/** A physical base backup of the whole cluster (pg_basebackup, WAL fetched into the tar). */
export function createBaseBackup(ctx: BackupContext, options: CreateOptions): Promise<Manifest> {
  const { url, sql } = requireServer(ctx, "a base (physical) backup");
  return takeBase(ctx, options, { url, sql, server: null, parent: undefined });
}

/**
 * Runs pg_basebackup into the storage: straight into the compressor (plain base backups,
 * `parent` undefined) or through the incremental filter (`parent` null or a backup).
 */
async function takeBase(
  ctx: BackupContext,
  options: CreateOptions,
  run: {
    url: string;
    sql: ReturnType<typeof requireServer>["sql"];
    server: Manifest["server"] | null;
    parent: IncrementalParent | null | undefined;
  },
): Promise<Manifest> {
  const { url, sql, parent } = run;
  const server = run.server ?? await serverFacts(sql);
  const databases = await connectableDatabases(sql);
  const bytes = await segmentSize(sql);
  const args = [
    "--pgdata=-",
    "--format=tar",
    "--wal-method=fetch",
    "--checkpoint=fast",
    // CRC32C (the default) is enough for pg_verifybackup to find damaged files: the stored
    // file has its own HMAC, and SHA-256 here costs the server a full hash pass.
    "--manifest-checksums=CRC32C",
    "--verbose",
    "--no-password",
  ];
  let backup: ToolProcess | null = null;
  let filtered: ReturnType<typeof filterBaseTar> | null = null;
  if (parent !== undefined) {
    backup = ctx.tools.spawn("pg_basebackup", args, {
      connection: { url },
      signal: options.signal,
    });
    filtered = filterBaseTar(backup.stdout!, { name: options.name, parent });
  }
  const estimate = options.onProgress ? await estimateSizes(sql) : null;
  const filteredSoFar = filtered;
  const { file } = await storeEncrypted(ctx, {
    name: options.name,
    fileName: `base.tar.${extension(ctx)}.enc`,
    progress: options.onProgress && {
      phase: "copying the cluster",
      total: estimate!.cluster,
      listener: options.onProgress,
      bytes: filteredSoFar ? () => filteredSoFar.bytesRead() : undefined,
    },
    content: "pg_basebackup-tar",
    source: filtered ? filtered.stream : (output) =>
      backup = output
        // pg_basebackup writes a tar stream to stdout only: the shell points that at the
        // FIFO the compressor reads, then becomes pg_basebackup (exec).
        ? ctx.tools.spawnTool(
          "sh",
          ["-c", 'exec "$0" "$@" > "$RS_OUTPUT"', `${ctx.tools.binDir}/pg_basebackup`, ...args],
          {
            connection: { url },
            env: { RS_OUTPUT: output },
            stdout: "null",
            signal: options.signal,
          },
        )
        : ctx.tools.spawn("pg_basebackup", args, { connection: { url }, signal: options.signal }),
    producers: filtered ? [backup!] : [],
    signal: options.signal,
  });
  const listed = filtered ? await filtered.result : null;
  const endTime = new Date(ctx.now()).toISOString();
  const stderr = (await backup!.finished).stderr;
  const range = parseBaseBackupWal(stderr);
  if (!range) {
    await ctx.storage.delete(`${options.name}/${file.name}`).catch(() => {});
    throw new RuntimeError(
      "BACKUP_FAILED",
      `Base backup ${options.name}: pg_basebackup did not report its WAL range: ${
        stderr.trim().slice(-300)
      }`,
    );
  }
  return {
    format: MANIFEST_FORMAT,
    name: options.name,
    type: "base",
    startedAt: new Date(options.startedAt).toISOString(),
    completedAt: endTime,
    encryption: encryptionFacts(),
    server,
    files: [file],
    base: null,
    previous: null,
    wal: {
      timeline: range.timeline,
      startLsn: range.startLsn,
      endLsn: range.endLsn,
      startSegment: walFileName(range.startLsn, { timeline: range.timeline, segmentBytes: bytes }),
      endSegment: walFileName(range.endLsn, { timeline: range.timeline, segmentBytes: bytes }),
      endTime,
      segmentBytes: bytes,
    },
    logical: null,
    physical: listed
      ? { databases, parent: parent?.name ?? null, files: listed.files }
      : { databases },
  };
}

/** What a WAL backup will hold, decided before anything is stored. */
export interface WalPlan {
  /** The base backup the chain starts from. */
  base: CatalogEntry;
  /** The previous link (incremental: last incremental or the base; differential: the base). */
  previous: CatalogEntry;
  /** First segment number to include. */
  from: bigint;
  /** Last segment number to include (the one just switched and archived). */
  to: bigint;
  /** The WAL switch that ends the range. */
  switched: { lsn: string; segment: string; timeline: number; segmentBytes: number };
}

/**
 * Decides the WAL range of an incremental or differential backup: forces a WAL switch,
 * waits for the archive, and returns null when no WAL was archived since the previous link.
 */
export async function planWalBackup(
  ctx: BackupContext,
  type: "incremental" | "differential",
  options: { signal?: AbortSignal } = {},
): Promise<WalPlan | null> {
  const { sql } = requireServer(ctx, `an ${type} backup`);
  const dir = ctx.settings.walArchiveDir;
  if (!dir) {
    throw new RuntimeError(
      "BACKUP_UNAVAILABLE",
      `Cannot take an ${type} backup: BACKUP_WAL_ARCHIVE_DIR is not set. HINT: configure WAL ` +
        "archiving (`deno task cli backup install-archiver` installs scripts/archive_wal.ts " +
        "and prints archive_command) and point BACKUP_WAL_ARCHIVE_DIR at its directory",
    );
  }
  const catalog = await readCatalog(ctx.storage, ctx.passphrase);
  const bases = catalog.entries.filter((e) => e.manifest.type === "base" && e.manifest.wal);
  const base = bases.at(-1);
  if (!base) {
    throw new RuntimeError(
      "BACKUP_FAILED",
      `Cannot take an ${type} backup: there is no base backup to apply it to. HINT: run ` +
        "`deno task cli backup create --type base` first",
    );
  }
  const baseWal = base.manifest.wal!;
  let previous = base;
  let from = walSegmentNumber(baseWal.startSegment, baseWal.segmentBytes);
  if (type === "incremental") {
    const links = catalog.entries.filter((e) =>
      e.manifest.type === "incremental" && e.manifest.base === base.manifest.name && e.manifest.wal
    );
    const last = links.at(-1);
    if (last) {
      previous = last;
      from = walSegmentNumber(last.manifest.wal!.endSegment, baseWal.segmentBytes) + 1n;
    }
  }
  const switched = await switchAndAwaitArchive(sql, {
    dir,
    timeoutMs: ctx.settings.walTimeoutMs,
    now: ctx.now,
    signal: options.signal,
    explain: async (command) => {
      const account = await lookupAccount(ctx.tools.serverUser);
      return account ? await explainArchiveCommand(command, account) : null;
    },
  });
  const to = walSegmentNumber(switched.segment, switched.segmentBytes);
  if (to < from) return null;
  return { base, previous, from, to, switched };
}

/** An incremental or differential backup: the archived WAL of a plan, as one tar. */
export async function createWalBackup(
  ctx: BackupContext,
  options: CreateOptions & { type: "incremental" | "differential"; plan: WalPlan },
): Promise<Manifest> {
  const { type, plan } = options;
  const { sql } = requireServer(ctx, `an ${type} backup`);
  const server = await serverFacts(sql);
  const bytes = plan.switched.segmentBytes;
  const archive = await listArchive(ctx.settings.walArchiveDir!, bytes);
  const chosen = selectWal(archive, { from: plan.from, to: plan.to, segmentBytes: bytes });
  const tar = tarFiles(chosen.map((f) => f.path));
  const { file } = await storeEncrypted(ctx, {
    name: options.name,
    fileName: `wal.tar.${extension(ctx)}.enc`,
    content: "wal-tar",
    source: tar.stream,
    signal: options.signal,
  });
  const files = await tar.tarred;
  const first = chosen.find((f) => f.kind === "segment")!;
  return {
    format: MANIFEST_FORMAT,
    name: options.name,
    type,
    startedAt: new Date(options.startedAt).toISOString(),
    completedAt: new Date(ctx.now()).toISOString(),
    encryption: encryptionFacts(),
    server,
    files: [file],
    base: plan.base.manifest.name,
    previous: plan.previous.manifest.name,
    wal: {
      timeline: plan.switched.timeline,
      startLsn: formatLsn(plan.from * BigInt(bytes)),
      endLsn: plan.switched.lsn,
      startSegment: first.name,
      endSegment: plan.switched.segment,
      endTime: new Date(ctx.now()).toISOString(),
      files,
      segmentBytes: bytes,
    },
    logical: null,
    physical: null,
  };
}
