/**
 * The migrations runner.
 *
 * `migrations/NNN_name.sql` files are applied in numeric order, each in its own
 * transaction, and recorded with the SHA-256 of their content in `schema_migrations`.
 * A file that was applied and later changed stops start-up (MIGRATION_CHECKSUM_MISMATCH):
 * silently running a different schema than the one recorded is how replicas drift.
 *
 * Several instances may start at once: the whole run holds a session-level advisory lock
 * on one reserved connection, so each migration is applied exactly once and the others
 * wait, then find nothing left to do.
 * @module
 */
import { RuntimeError } from "../lib/errors.ts";
import { type Logger, silentLogger } from "../lib/log.ts";
import type { Sql } from "./types.ts";

/** Advisory-lock key of the migrations run ("rsmigrat" as a 63-bit number). */
export const MIGRATION_LOCK_KEY = 0x72736d6967726174n;

/** The directory holding the project's migrations. */
export const DEFAULT_MIGRATIONS_DIR = new URL("../migrations/", import.meta.url);

/** One migration file found on disk. */
export interface MigrationFile {
  /** The number prefix, e.g. 1 for 001_initial_schema.sql. */
  version: number;
  /** The file name without `.sql`. */
  name: string;
  /** The SQL text. */
  sql: string;
  /** Hex SHA-256 of the file content. */
  checksum: string;
}

/** What a run did; `applied` lists migrations this call applied. */
export interface MigrationReport {
  /** Migrations applied by this run, in order. */
  applied: string[];
  /** Total applied in the database after the run. */
  total: number;
  /** Name of the newest applied migration, or null on an empty database. */
  latest: string | null;
  /** Migrations recorded in the database that have no file here (a newer release ran). */
  unknown: string[];
}

/** Options of {@linkcode migrate}. */
export interface MigrateOptions {
  /** Directory of `NNN_name.sql` files; defaults to the project's migrations/. */
  dir?: string | URL;
  /** Where progress is logged. */
  log?: Logger;
}

const FILE_RE = /^(\d{3,})_([a-z0-9_]+)\.sql$/;

async function sha256Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Reads and validates the migration files of `dir`, sorted by version. */
export async function loadMigrationFiles(
  dir: string | URL = DEFAULT_MIGRATIONS_DIR,
): Promise<MigrationFile[]> {
  const files: MigrationFile[] = [];
  const seen = new Map<number, string>();
  const base = typeof dir === "string"
    ? dir.replace(/\/?$/, "/")
    : new URL(dir.href.endsWith("/") ? dir.href : dir.href + "/");
  for await (const entry of Deno.readDir(dir)) {
    if (!entry.isFile || !entry.name.endsWith(".sql")) continue;
    const m = FILE_RE.exec(entry.name);
    if (!m) {
      throw new RuntimeError(
        "MIGRATION_INVALID",
        `Migration file name is invalid: ${entry.name} (expected NNN_lower_snake_name.sql)`,
      );
    }
    const version = Number(m[1]);
    const name = entry.name.slice(0, -4);
    const other = seen.get(version);
    if (other) {
      throw new RuntimeError(
        "MIGRATION_INVALID",
        `Two migrations share version ${version}: ${other} and ${name}`,
      );
    }
    seen.set(version, name);
    const path = typeof base === "string" ? base + entry.name : new URL(entry.name, base);
    const text = await Deno.readTextFile(path);
    files.push({ version, name, sql: text, checksum: await sha256Hex(text) });
  }
  return files.sort((a, b) => a.version - b.version);
}

/**
 * Applies pending migrations; safe to call from several instances at once.
 * Throws MIGRATION_CHECKSUM_MISMATCH when an applied file changed, MIGRATION_FAILED
 * when a file's SQL fails (that file's transaction is rolled back; earlier ones stay).
 */
export async function migrate(sql: Sql, options: MigrateOptions = {}): Promise<MigrationReport> {
  const log = options.log ?? silentLogger;
  const files = await loadMigrationFiles(options.dir);
  const conn = await sql.reserve();
  try {
    await conn`SELECT pg_advisory_lock(${MIGRATION_LOCK_KEY.toString()}::bigint)`;
    try {
      await conn.unsafe(`
        CREATE TABLE IF NOT EXISTS schema_migrations (
          version     INTEGER PRIMARY KEY,
          name        TEXT NOT NULL,
          checksum    TEXT NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
          applied_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
          duration_ms INTEGER NOT NULL CHECK (duration_ms >= 0)
        )`);
      const rows = await conn<{ version: number; name: string; checksum: string }[]>`
        SELECT version, name, checksum FROM schema_migrations ORDER BY version`;
      const applied = new Map(rows.map((r) => [r.version, r]));
      for (const file of files) {
        const row = applied.get(file.version);
        if (row && row.checksum !== file.checksum) {
          throw new RuntimeError(
            "MIGRATION_CHECKSUM_MISMATCH",
            `Migration ${file.name}.sql changed after it was applied: recorded checksum ` +
              `${row.checksum.slice(0, 12)}…, file now ${file.checksum.slice(0, 12)}…. ` +
              `HINT: restore the original file and put the change in a new migration.`,
            { details: { migration: file.name } },
          );
        }
      }
      const done: string[] = [];
      for (const file of files) {
        if (applied.has(file.version)) continue;
        const started = performance.now();
        await conn.unsafe("BEGIN");
        try {
          await conn.unsafe(file.sql);
          const ms = Math.round(performance.now() - started);
          await conn`
            INSERT INTO schema_migrations (version, name, checksum, duration_ms)
            VALUES (${file.version}, ${file.name}, ${file.checksum}, ${ms})`;
          await conn.unsafe("COMMIT");
          done.push(file.name);
          log.info("applied migration", { migration: file.name, ms });
        } catch (err) {
          await conn.unsafe("ROLLBACK").catch(() => {});
          throw new RuntimeError(
            "MIGRATION_FAILED",
            `Migration ${file.name}.sql failed and was rolled back: ${
              err instanceof Error ? err.message : String(err)
            }`,
            { cause: err, details: { migration: file.name } },
          );
        }
      }
      const known = new Set(files.map((f) => f.version));
      const unknown = rows.filter((r) => !known.has(r.version)).map((r) => r.name);
      if (unknown.length) {
        log.warn("database has migrations this release does not know", { unknown });
      }
      const all = [...rows.map((r) => r.name), ...done];
      const latestRow = await conn<{ name: string }[]>`
        SELECT name FROM schema_migrations ORDER BY version DESC LIMIT 1`;
      return {
        applied: done,
        total: all.length,
        latest: latestRow[0]?.name ?? null,
        unknown,
      };
    } finally {
      await conn`SELECT pg_advisory_unlock(${MIGRATION_LOCK_KEY.toString()}::bigint)`.catch(
        () => {},
      );
    }
  } finally {
    conn.release();
  }
}

/** Migration status without applying anything: applied names and pending files. */
export async function migrationStatus(
  sql: Sql,
  options: { dir?: string | URL } = {},
): Promise<{ applied: string[]; pending: string[] }> {
  const files = await loadMigrationFiles(options.dir);
  const exists = await sql<{ t: string | null }[]>`
    SELECT to_regclass('schema_migrations')::text AS t`;
  if (!exists[0]?.t) return { applied: [], pending: files.map((f) => f.name) };
  const rows = await sql<{ version: number; name: string }[]>`
    SELECT version, name FROM schema_migrations ORDER BY version`;
  const have = new Set(rows.map((r) => r.version));
  return {
    applied: rows.map((r) => r.name),
    pending: files.filter((f) => !have.has(f.version)).map((f) => f.name),
  };
}
