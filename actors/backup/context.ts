/**
 * What every backup operation works with: settings, storage, the PostgreSQL tools, the
 * passphrase, the database (when there is one), a logger and the injected clock.
 * @module
 */
import { RuntimeError } from "../../lib/errors.ts";
import type { Logger } from "../../lib/log.ts";
import { type AccessNeed, accessProblem, lookupAccount } from "../../lib/os_access.ts";
import type { PgTools } from "../../store/pg_tools.ts";
import type { Sql } from "../../store/types.ts";
import type { BackupSettings } from "./settings.ts";
import type { BackupStorage } from "./storage.ts";

/** Shared dependencies of the backup operations. */
export interface BackupContext {
  /** Validated settings. */
  settings: BackupSettings;
  /** Where backups are kept. */
  storage: BackupStorage;
  /** Runs pg_dump, pg_basebackup, zstd, tar, … */
  tools: PgTools;
  /** Encryption passphrase. */
  passphrase: string;
  /** PostgreSQL server URL, or null (embedded PGlite or no database). */
  databaseUrl: string | null;
  /** Pool on that server (history, WAL switch, row counts), or null. */
  sql: Sql | null;
  /** Instance id recorded in the history. */
  instanceId: string | null;
  /** Log. */
  log: Logger;
  /** Wall clock (injected). */
  now: () => number;
}

/** Why backups cannot run without a PostgreSQL server. */
export const EMBEDDED_REASON =
  "backups need a PostgreSQL server: pg_dump and pg_basebackup cannot read the embedded " +
  "PGlite database (set DATABASE_URL to back up a real server)";

/** The server URL and pool; BACKUP_UNAVAILABLE when there is no PostgreSQL server. */
export function requireServer(ctx: BackupContext, what: string): { url: string; sql: Sql } {
  if (!ctx.databaseUrl || !ctx.sql) {
    throw new RuntimeError("BACKUP_UNAVAILABLE", `Cannot take ${what}: ${EMBEDDED_REASON}`);
  }
  return { url: ctx.databaseUrl, sql: ctx.sql };
}

/**
 * BACKUP_UNAVAILABLE, naming the obstacle, unless the PostgreSQL servers this runtime starts
 * (throw-away restores and test-restores: as the server user when root, else as this
 * process's user) can `need` `path` — so a directory below one only root may enter fails
 * here, in one sentence, instead of as a server that will not start or WAL that never comes.
 */
export async function assertServerCanReach(
  ctx: BackupContext,
  path: string,
  options: { need: AccessNeed; what: string; creatable?: boolean },
): Promise<void> {
  const self = Deno.uid();
  if (self === null) return; // no Unix accounts to check (not Linux)
  const account = await lookupAccount(ctx.tools.dropsPrivileges ? ctx.tools.serverUser : self);
  const problem = account
    ? await accessProblem(account, path, { need: options.need, creatable: options.creatable })
    : null;
  if (!problem) return;
  throw new RuntimeError(
    "BACKUP_UNAVAILABLE",
    `${options.what}: ${problem}. HINT: PostgreSQL runs as the OS user ${account!.name}, ` +
      "which must be able to enter every directory above it: choose a place such as /tmp or " +
      "/var/lib/postgresql, or open the blocking directory to it",
    { details: { path, problem } },
  );
}

/** A new private directory for throw-away clusters and staging, owned by the server user. */
export async function scratchDir(ctx: BackupContext, label: string): Promise<string> {
  const root = ctx.settings.scratchDir ?? Deno.env.get("TMPDIR") ?? "/tmp";
  await Deno.mkdir(root, { recursive: true });
  const dir = await Deno.makeTempDir({ dir: root, prefix: `rs-${label}-` });
  try {
    await Deno.chmod(dir, 0o700);
    await ctx.tools.chownToServerUser(dir);
    await assertServerCanReach(ctx, dir, {
      need: "enter",
      what: `Cannot stage in ${root} (BACKUP_SCRATCH_DIR, else $TMPDIR or /tmp)`,
    });
  } catch (err) {
    await removeTree(dir);
    throw err;
  }
  return dir;
}

/** Removes a directory tree; never throws (cleanup paths must not hide the real error). */
export async function removeTree(path: string): Promise<void> {
  await Deno.remove(path, { recursive: true }).catch(() => {});
}

/** The database name in a postgres:// URL. */
export function databaseOf(url: string): string {
  const u = new URL(url);
  return decodeURIComponent(u.pathname.replace(/^\//, "")) || decodeURIComponent(u.username) ||
    "postgres";
}

/** The user name in a postgres:// URL (default postgres). */
export function userOf(url: string | null): string {
  if (!url) return "postgres";
  return decodeURIComponent(new URL(url).username) || "postgres";
}
