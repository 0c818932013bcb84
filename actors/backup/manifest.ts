/**
 * The manifest of a backup: one signed JSON file, `<name>/manifest.json`, next to the
 * backup's data files in the storage. It lists every stored file with its size, SHA-256 and
 * HMAC, and what is needed to restore without this project's database: the type, the WAL
 * range, the base it applies to, row counts for the test-restore probes.
 *
 * The manifest is written last, so a folder without one is an unfinished backup. After a
 * successful verification `<name>/verification.json` (also signed) records it, so the
 * retention policy knows the newest verified backup from the storage alone.
 * @module
 */
import { z } from "zod";
import { signManifest, verifyManifest } from "../../lib/backup_crypto.ts";
import { RuntimeError } from "../../lib/errors.ts";
import type { BackupStorage } from "./storage.ts";
import { BACKUP_TYPES, type BackupType } from "./settings.ts";

/** Manifest format tag. */
export const MANIFEST_FORMAT = "rootstream-backup/1";

/** A backup name: `<UTC start>-<type>-<6 hex>`, e.g. `20250115T020000Z-full-3fa9c1`. */
export const BACKUP_NAME_RE =
  /^[0-9]{8}T[0-9]{6}Z-(full|base|incremental|differential)-[0-9a-f]{6}$/;

const hex64 = z.string().regex(/^[0-9a-f]{64}$/);
const lsn = z.string().regex(/^[0-9A-F]{1,8}\/[0-9A-F]{1,8}$/);
const segment = z.string().regex(/^[0-9A-F]{24}$/);

const fileSchema = z.object({
  /** File name inside the backup folder. */
  name: z.string().regex(/^[a-z0-9._-]+$/),
  /** What it holds. */
  content: z.enum(["pg_dump-custom", "pg_basebackup-tar", "wal-tar"]),
  /** Compression applied before encryption. */
  compression: z.enum(["zstd", "gzip"]),
  /** Stored bytes (compressed and encrypted). */
  size: z.number().int().nonnegative(),
  /** SHA-256 of the stored bytes. */
  sha256: hex64,
  /** HMAC-SHA256 of the stored bytes (key derived from the passphrase and the file's salt). */
  hmac: hex64,
  /** Bytes the PostgreSQL tool produced (before compression). */
  plainSize: z.number().int().nonnegative(),
  /**
   * SHA-256 of those bytes: written by earlier versions only (the HMAC of the stored bytes
   * and the compressor's own frame checksums cover the plain bytes without a second pass).
   */
  plainSha256: hex64.optional(),
});

const walFileSchema = z.object({
  name: z.string().regex(/^[0-9A-F]{8}(\.history|[0-9A-F]{16}(\.[0-9A-F]{8}\.backup)?)$/),
  size: z.number().int().nonnegative(),
  sha256: hex64,
});

/** The manifest schema (without its `auth` block). */
export const manifestSchema = z.object({
  format: z.literal(MANIFEST_FORMAT),
  name: z.string().regex(BACKUP_NAME_RE),
  type: z.enum(BACKUP_TYPES),
  startedAt: z.iso.datetime(),
  completedAt: z.iso.datetime(),
  encryption: z.object({
    method: z.literal("aes-256-cbc+hmac-sha256"),
    kdf: z.literal("pbkdf2-hmac-sha256"),
    iterations: z.number().int().min(1000),
  }),
  server: z.object({ version: z.string(), systemIdentifier: z.string().nullable() }),
  files: z.array(fileSchema).min(1),
  /** Base backup an incremental / differential applies to (its name). */
  base: z.string().regex(BACKUP_NAME_RE).nullable(),
  /** Previous link of an incremental chain (base or incremental). */
  previous: z.string().regex(BACKUP_NAME_RE).nullable(),
  /** WAL range: what a base backup needs, or what a WAL backup holds. */
  wal: z.object({
    timeline: z.number().int().positive(),
    startLsn: lsn,
    endLsn: lsn,
    startSegment: segment,
    endSegment: segment,
    /** Wall time the backup became consistent (base) / its last WAL was switched (WAL). */
    endTime: z.iso.datetime(),
    /** WAL backups: every archived file they hold. */
    files: z.array(walFileSchema).optional(),
    segmentBytes: z.number().int().positive(),
  }).nullable(),
  /** Full backups: the database and its tables with row counts at dump time. */
  logical: z.object({
    database: z.string(),
    tables: z.array(
      z.object({ schema: z.string(), table: z.string(), rows: z.number().int().nonnegative() }),
    ).nullable(),
  }).nullable(),
  /**
   * Base backups: the databases of the cluster; incremental base backups (and the root of
   * their chain) also list every file and the backup storing it (see base_files.ts).
   */
  physical: z.object({
    databases: z.array(z.string()),
    /** The base backup an incremental base backup references (null: stores everything). */
    parent: z.string().regex(BACKUP_NAME_RE).nullable().optional(),
    /** Every regular file of the data directory and which backup of the chain holds it. */
    files: z.array(z.object({
      path: z.string().min(1),
      size: z.number().int().nonnegative(),
      mtime: z.number().int(),
      sha256: z.string().regex(/^[0-9a-f]{64}$/),
      in: z.string().regex(BACKUP_NAME_RE),
    })).optional(),
  }).nullable(),
});

/** A backup manifest (signed on disk). */
export type Manifest = z.infer<typeof manifestSchema>;

/** One stored file of a backup. */
export type ManifestFile = z.infer<typeof fileSchema>;

/** One archived WAL file held by a WAL backup. */
export type WalFileEntry = z.infer<typeof walFileSchema>;

/** The signed record of a successful verification. */
export const verificationSchema = z.object({
  name: z.string().regex(BACKUP_NAME_RE),
  verifiedAt: z.iso.datetime(),
  mode: z.enum(["restore", "checksums"]),
  probes: z.record(z.string(), z.unknown()),
});

/** A verification record. */
export type VerificationRecord = z.infer<typeof verificationSchema>;

/** A backup as found in the storage: its manifest and, if verified, the record of it. */
export interface CatalogEntry {
  /** The verified manifest. */
  manifest: Manifest;
  /** The verification record, or null when never verified. */
  verification: VerificationRecord | null;
}

/** Makes a new backup name for `type` started at `startedAtMs`. */
export function newBackupName(type: BackupType, startedAtMs: number): string {
  const stamp = new Date(startedAtMs).toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
  const suffix = Array.from(
    crypto.getRandomValues(new Uint8Array(3)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
  return `${stamp}-${type}-${suffix}`;
}

/** The storage key of a backup's manifest. */
export function manifestKey(name: string): string {
  return `${name}/manifest.json`;
}

/** Signs and stores a manifest (after checking it against the schema). */
export async function writeManifest(
  storage: BackupStorage,
  manifest: Manifest,
  options: { passphrase: string },
): Promise<void> {
  const { passphrase } = options;
  const checked = manifestSchema.parse(manifest);
  const signed = await signManifest(checked as unknown as Record<string, unknown>, passphrase);
  await storage.putText(manifestKey(manifest.name), JSON.stringify(signed, null, 2) + "\n");
}

async function readSigned(
  storage: BackupStorage,
  key: string,
  passphrase: string,
  name: string,
): Promise<Record<string, unknown>> {
  const text = await storage.getText(key);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new RuntimeError("BACKUP_CORRUPT", `The file ${key} of backup ${name} is not JSON`);
  }
  if (!json || typeof json !== "object" || Array.isArray(json)) {
    throw new RuntimeError("BACKUP_CORRUPT", `The file ${key} of backup ${name} is not an object`);
  }
  await verifyManifest(json as Record<string, unknown>, passphrase, { name: `backup ${name}` });
  const { auth: _auth, ...body } = json as Record<string, unknown>;
  return body;
}

/**
 * Reads and checks a backup's manifest: BACKUP_NOT_FOUND, BACKUP_KEY_MISMATCH or
 * BACKUP_CORRUPT when it cannot be trusted.
 */
export async function readManifest(
  storage: BackupStorage,
  name: string,
  options: { passphrase: string },
): Promise<Manifest> {
  const { passphrase } = options;
  if (!BACKUP_NAME_RE.test(name)) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Invalid backup name ${JSON.stringify(name)}: expected e.g. 20250115T020000Z-full-3fa9c1`,
    );
  }
  const body = await readSigned(storage, manifestKey(name), passphrase, name);
  const parsed = manifestSchema.safeParse(body);
  if (!parsed.success || parsed.data.name !== name) {
    throw new RuntimeError(
      "BACKUP_CORRUPT",
      `The manifest of backup ${name} does not describe it: ${
        parsed.success ? `it names ${parsed.data.name}` : z.prettifyError(parsed.error)
      }`,
    );
  }
  return parsed.data;
}

/** Signs and stores the record of a successful verification. */
export async function writeVerification(
  storage: BackupStorage,
  record: VerificationRecord,
  options: { passphrase: string },
): Promise<void> {
  const { passphrase } = options;
  const signed = await signManifest(
    verificationSchema.parse(record) as unknown as Record<string, unknown>,
    passphrase,
  );
  await storage.putText(`${record.name}/verification.json`, JSON.stringify(signed, null, 2) + "\n");
}

/** Reads a backup's verification record; null when there is none or it cannot be trusted. */
export async function readVerification(
  storage: BackupStorage,
  name: string,
  options: { passphrase: string },
): Promise<VerificationRecord | null> {
  const { passphrase } = options;
  try {
    const body = await readSigned(storage, `${name}/verification.json`, passphrase, name);
    const parsed = verificationSchema.safeParse(body);
    return parsed.success && parsed.data.name === name ? parsed.data : null;
  } catch (err) {
    if (err instanceof RuntimeError && err.code !== "STORAGE_FAILED") return null;
    throw err;
  }
}

/** What {@linkcode readCatalog} found. */
export interface Catalog {
  /** Backups with a valid manifest, oldest first. */
  entries: CatalogEntry[];
  /** Folders without a manifest (unfinished or failed runs), with their keys. */
  unfinished: { name: string; keys: string[] }[];
  /** Folders whose manifest cannot be trusted, with the reason. */
  unreadable: { name: string; error: string }[];
}

/** Lists every backup in the storage from its manifest (the source of truth for restores). */
export async function readCatalog(storage: BackupStorage, passphrase: string): Promise<Catalog> {
  const objects = await storage.list("");
  const folders = new Map<string, string[]>();
  for (const o of objects) {
    const name = o.key.split("/")[0];
    if (!BACKUP_NAME_RE.test(name)) continue;
    folders.set(name, [...(folders.get(name) ?? []), o.key]);
  }
  const catalog: Catalog = { entries: [], unfinished: [], unreadable: [] };
  for (const [name, keys] of [...folders].sort(([a], [b]) => a < b ? -1 : 1)) {
    if (!keys.includes(manifestKey(name))) {
      catalog.unfinished.push({ name, keys });
      continue;
    }
    try {
      const manifest = await readManifest(storage, name, { passphrase });
      const verification = keys.includes(`${name}/verification.json`)
        ? await readVerification(storage, name, { passphrase })
        : null;
      catalog.entries.push({ manifest, verification });
    } catch (err) {
      if (err instanceof RuntimeError && err.code === "STORAGE_FAILED") throw err;
      catalog.unreadable.push({ name, error: err instanceof Error ? err.message : String(err) });
    }
  }
  catalog.entries.sort((a, b) =>
    a.manifest.startedAt < b.manifest.startedAt
      ? -1
      : a.manifest.startedAt > b.manifest.startedAt
      ? 1
      : a.manifest.name < b.manifest.name
      ? -1
      : 1
  );
  return catalog;
}
