/**
 * Verification of a backup, as a typed result rather than an exception: the manifest's
 * signature (right key, unaltered), every stored file's size, SHA-256 and HMAC, and — in
 * `restore` mode — a test-restore into a throw-away cluster with probe queries:
 *
 * - full: pg_restore into a freshly initdb'd cluster; every table's row count must equal
 *   the count taken in pg_dump's own snapshot.
 * - base: pg_verifybackup against pg_basebackup's CRC32C manifest, then start the copy
 *   (crash recovery from its own WAL) and connect to every database it had.
 * - incremental / differential: the base plus the WAL chain up to this backup, replayed to
 *   the end; the replay must reach this backup's last segment.
 * @module
 */
import { RuntimeError } from "../../lib/errors.ts";
import type { BackupContext } from "./context.ts";
import { type Catalog, type Manifest, readCatalog, readManifest } from "./manifest.ts";
import type { ProgressListener } from "./progress.ts";
import { checkFiles, type FileCheck, testRestoreLogical, testRestorePhysical } from "./restore.ts";

/** What a verification found. */
export interface VerifyResult {
  /** Backup name. */
  name: string;
  /** Backup type, when the manifest could be read. */
  type: Manifest["type"] | null;
  /** True when every check passed. */
  ok: boolean;
  /** `checksums` or `restore`. */
  mode: "checksums" | "restore";
  /** Per-file results (empty when the manifest could not be read). */
  files: FileCheck[];
  /** The test-restore's probes, when it ran and passed. */
  probes: Record<string, unknown> | null;
  /** The first failure, with its code. */
  error: { code: string; message: string } | null;
  /** Wall time. */
  durationMs: number;
}

/** Verifies one backup; never throws for problems with the backup itself. */
export async function verifyBackup(
  ctx: BackupContext,
  name: string,
  options: {
    mode: "checksums" | "restore";
    catalog?: Catalog;
    signal?: AbortSignal;
    onProgress?: ProgressListener;
  },
): Promise<VerifyResult> {
  const started = performance.now();
  const result: VerifyResult = {
    name,
    type: null,
    ok: false,
    mode: options.mode,
    files: [],
    probes: null,
    error: null,
    durationMs: 0,
  };
  try {
    const manifest = await readManifest(ctx.storage, name, { passphrase: ctx.passphrase });
    result.type = manifest.type;
    result.files = await checkFiles(ctx, manifest, { onProgress: options.onProgress });
    const bad = result.files.find((f) => f.status !== "ok");
    if (bad) {
      throw new RuntimeError(
        "BACKUP_CORRUPT",
        `File ${bad.file} of backup ${name}: ${bad.status.replace("_", " ")}` +
          (bad.status === "size_mismatch" ? ` (${bad.size} of ${bad.expectedSize} bytes)` : ""),
      );
    }
    if (options.mode === "restore") {
      if (manifest.type === "full") {
        const report = await testRestoreLogical(ctx, manifest, {
          signal: options.signal,
          onProgress: options.onProgress,
        });
        result.probes = { tablesChecked: report.tablesChecked, rows: report.rows };
      } else {
        const catalog = options.catalog ?? await readCatalog(ctx.storage, ctx.passphrase);
        const probe = await testRestorePhysical(ctx, manifest, {
          catalog,
          signal: options.signal,
          onProgress: options.onProgress,
        });
        result.probes = { ...probe };
      }
    }
    result.ok = true;
  } catch (err) {
    result.error = err instanceof RuntimeError
      ? { code: err.code, message: err.message }
      : { code: "BACKUP_VERIFY_FAILED", message: err instanceof Error ? err.message : String(err) };
  }
  result.durationMs = Math.round(performance.now() - started);
  return result;
}
