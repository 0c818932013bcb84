/**
 * SQL that backups, restores and test-restores run on a PostgreSQL server, as typed
 * functions over postgres.js tagged templates: the facts a manifest records, the exported
 * snapshot a full backup dumps and counts rows in, creating / renaming / dropping the
 * staging database of a logical restore, and the probes of a restored server. (The history
 * table is store/backup_history.ts; WAL archiving is store/wal_archiving.ts; the programs
 * themselves — pg_dump, pg_restore, postgres — run through store/pg_tools.ts.)
 *
 * A restore works on servers the runtime's pool does not reach — another URL, a staging
 * database, a throw-away server listening only on a private Unix socket — so this module
 * also opens short-lived connections from a libpq-style URL ({@linkcode connectServer},
 * {@linkcode withServer}), the socket directory given as `?host=/dir`.
 * @module
 */
import { pgConnectArgs } from "./pg_tls.ts";
import postgres from "postgres";
import { RuntimeError } from "../lib/errors.ts";
import type { Sql } from "./types.ts";

/** Facts about a server that every manifest records. */
export interface ServerFacts {
  /** server_version, e.g. `15.10 (Debian 15.10-1.pgdg120+1)`. */
  version: string;
  /** The cluster's system identifier (null when pg_control_system() is not readable). */
  systemIdentifier: string | null;
}

/** A table, by schema and name. */
export interface TableName {
  /** Schema. */
  schema: string;
  /** Table. */
  table: string;
}

/** A table with its row count. */
export interface TableRows extends TableName {
  /** Rows counted. */
  rows: number;
}

/** How a restored server came out of recovery. */
export interface RecoveryState {
  /** Still in recovery (a restore must have finished it). */
  inRecovery: boolean;
  /** Commit time of the last transaction replayed, if any. */
  lastReplayedCommit: Date | null;
  /** The last WAL position replayed, if any (`X/X`). */
  replayedLsn: string | null;
  /** Timeline of the latest checkpoint. */
  timeline: number | null;
  /** Databases that accept connections, by name. */
  databases: string[];
}

/** Options of {@linkcode connectServer}. */
export interface ConnectServerOptions {
  /** Database to use instead of the URL's. */
  database?: string;
  /** Connections in the pool (default 1). */
  max?: number;
  /** application_name shown in pg_stat_activity (default rootstream-backup). */
  applicationName?: string;
}

/**
 * A postgres.js pool on a libpq-style URL; `?host=/dir` (how throw-away servers on a private
 * socket are addressed) becomes the Unix socket `/dir/.s.PGSQL.<port>`. Close it with
 * `end()`; {@linkcode withServer} does that for one piece of work.
 */
export function connectServer(url: string, options: ConnectServerOptions = {}): Sql {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new RuntimeError("VALIDATION_FAILED", "Invalid database URL: it cannot be parsed");
  }
  if (parsed.protocol !== "postgres:" && parsed.protocol !== "postgresql:") {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Invalid database URL: expected postgres://, got ${parsed.protocol}//`,
    );
  }
  const socketDir = parsed.searchParams.get("host");
  let path: string | undefined;
  if (socketDir?.startsWith("/")) {
    const port = parsed.searchParams.get("port") ?? (parsed.port || "5432");
    parsed.searchParams.delete("host");
    parsed.searchParams.delete("port");
    path = `${socketDir.replace(/\/+$/, "")}/.s.PGSQL.${port}`;
  }
  const tls = pgConnectArgs(parsed.toString());
  return postgres(tls.url, {
    ...tls.options,
    max: options.max ?? 1,
    ...(path ? { path } : {}),
    ...(options.database ? { database: options.database } : {}),
    onnotice: () => {},
    idle_timeout: 5,
    connect_timeout: 10,
    connection: { application_name: options.applicationName ?? "rootstream-backup" },
  }) as Sql;
}

/** Runs `fn` on a fresh connection to `url` and closes it, whatever happens. */
export async function withServer<T>(
  url: string,
  options: ConnectServerOptions,
  fn: (sql: Sql) => Promise<T>,
): Promise<T> {
  const sql = connectServer(url, options);
  try {
    return await fn(sql);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/**
 * A pool on `url` that has answered once (the backup CLI's connection to DATABASE_URL);
 * the connection error otherwise, with the pool closed.
 */
export async function openServerPool(
  url: string,
  options: ConnectServerOptions = {},
): Promise<Sql> {
  const sql = connectServer(url, options);
  try {
    await sql`SELECT 1`;
    return sql;
  } catch (err) {
    await sql.end({ timeout: 1 });
    throw err;
  }
}

/** server_version and the system identifier. */
export async function serverFacts(sql: Sql): Promise<ServerFacts> {
  const [row] = await sql<{ version: string; sysid: string | null }[]>`
    SELECT current_setting('server_version') AS version,
           (SELECT system_identifier::text FROM pg_control_system()) AS sysid`;
  return { version: row.version, systemIdentifier: row.sysid };
}

/**
 * Sizes that estimate how many bytes a backup reads: the tables of the connected database
 * (heap + TOAST, what pg_dump reads; no indexes) and the whole cluster (a base backup).
 */
export async function estimateSizes(
  sql: Sql,
): Promise<{ tables: number; cluster: number }> {
  const [row] = await sql<{ tables: string; cluster: string }[]>`
    SELECT (SELECT coalesce(sum(pg_table_size(c.oid)), 0) FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          )::text AS tables,
           (SELECT sum(pg_database_size(datname)) FROM pg_database
             WHERE datallowconn)::text AS cluster`;
  return { tables: Number(row.tables), cluster: Number(row.cluster) };
}

/** Databases that accept connections, by name. */
export async function connectableDatabases(sql: Sql): Promise<string[]> {
  const rows = await sql<{ datname: string }[]>`
    SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname`;
  return rows.map((r) => r.datname);
}

/** Every user table (plain and partitioned), in schema and name order. */
export async function userTables(sql: Sql): Promise<TableName[]> {
  const rows = await sql<TableName[]>`
    SELECT n.nspname AS schema, c.relname AS table
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
    ORDER BY 1, 2`;
  return rows.map((r) => ({ schema: r.schema, table: r.table }));
}

/** The row count of each table, in the caller's transaction (and so its snapshot). */
export async function countRows(sql: Sql, tables: readonly TableName[]): Promise<TableRows[]> {
  const counted: TableRows[] = [];
  for (const t of tables) {
    const [row] = await sql<{ n: string }[]>`
      SELECT count(*)::text AS n FROM ${sql(t.schema)}.${sql(t.table)}`;
    counted.push({ schema: t.schema, table: t.table, rows: Number(row.n) });
  }
  return counted;
}

/** A snapshot exported by a read-only transaction that stays open while `fn` runs. */
export interface ExportedSnapshot {
  /** The id to hand to `pg_dump --snapshot`. */
  id: string;
  /** Every user table's row count in that snapshot. */
  countRows(): Promise<TableRows[]>;
}

/**
 * Opens a repeatable-read, read-only transaction, exports its snapshot and runs `fn` while
 * it stays open (pg_dump reads that snapshot; row counts taken in it match the dump
 * exactly); commits after `fn`, rolls back when it throws.
 */
export async function withExportedSnapshot<T>(
  sql: Sql,
  fn: (snapshot: ExportedSnapshot) => Promise<T>,
): Promise<T> {
  const conn = await sql.reserve();
  try {
    await conn`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`;
    await conn`SET LOCAL statement_timeout = 0`;
    const [{ snapshot }] = await conn<{ snapshot: string }[]>`
      SELECT pg_export_snapshot() AS snapshot`;
    const result = await fn({
      id: snapshot,
      countRows: async () => await countRows(conn, await userTables(conn)),
    });
    await conn`COMMIT`;
    return result;
  } catch (err) {
    await conn`ROLLBACK`.catch(() => {});
    throw err;
  } finally {
    conn.release();
  }
}

/** Whether a database of that name exists. */
export async function databaseExists(sql: Sql, name: string): Promise<boolean> {
  const [row] = await sql<{ found: boolean }[]>`
    SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = ${name}) AS found`;
  return row.found;
}

/** CREATE DATABASE (owned by the connecting role). */
export async function createDatabase(sql: Sql, name: string): Promise<void> {
  await sql`CREATE DATABASE ${sql(name)}`;
}

/** ALTER DATABASE … RENAME TO … (nobody may be connected to it). */
export async function renameDatabase(sql: Sql, from: string, to: string): Promise<void> {
  await sql`ALTER DATABASE ${sql(from)} RENAME TO ${sql(to)}`;
}

/** DROP DATABASE IF EXISTS … WITH (FORCE): its connections are terminated first. */
export async function dropDatabase(sql: Sql, name: string): Promise<void> {
  await sql`DROP DATABASE IF EXISTS ${sql(name)} WITH (FORCE)`;
}

/** Where a restored server's recovery ended, and which databases it has. */
export async function recoveryState(sql: Sql): Promise<RecoveryState> {
  const [row] = await sql<
    {
      in_recovery: boolean;
      last_commit: Date | null;
      replayed: string | null;
      timeline: number | null;
    }[]
  >`
    SELECT pg_is_in_recovery() AS in_recovery,
           pg_last_xact_replay_timestamp() AS last_commit,
           pg_last_wal_replay_lsn()::text AS replayed,
           (SELECT timeline_id FROM pg_control_checkpoint()) AS timeline`;
  return {
    inRecovery: row.in_recovery,
    lastReplayedCommit: row.last_commit,
    replayedLsn: row.replayed,
    timeline: row.timeline,
    databases: await connectableDatabases(sql),
  };
}

/** Reads the database's catalog (a probe that its files are readable); returns its size. */
export async function catalogEntries(sql: Sql): Promise<number> {
  const [row] = await sql<{ n: string }[]>`SELECT count(*)::text AS n FROM pg_class`;
  return Number(row.n);
}
