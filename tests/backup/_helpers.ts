/**
 * Shared pieces of the backup tests: a service over a throw-away server, sample data and
 * table fingerprints.
 * @module
 */
import postgres from "postgres";
import { silentLogger } from "../../lib/log.ts";
import { migrate } from "../../store/migrations.ts";
import type { Sql } from "../../store/types.ts";
import { type BackupService, openBackupService } from "../../actors/backup/service.ts";
import { loadBackupSettings } from "../../actors/backup/settings.ts";
import type { PgServer } from "../harness/mod.ts";

/** The passphrase the tests encrypt with. */
export const TEST_KEY = "test-passphrase-0123456789abcdef";

/** Opens a pool (quiet, small) on `url`. */
export function pool(url: string): Sql {
  return postgres(url, { max: 4, onnotice: () => {}, idle_timeout: 5 }) as Sql;
}

/** A backup service over `url` with settings from `env` (merged over test defaults). */
export function testService(
  options: {
    url: string | null;
    sql: Sql | null;
    dir: string;
    env?: Record<string, string>;
    now?: () => number;
  },
): BackupService {
  const settings = loadBackupSettings({
    BACKUP_DIR: `${options.dir}/store`,
    BACKUP_ENCRYPTION_KEY: TEST_KEY,
    BACKUP_SCRATCH_DIR: `${options.dir}/scratch`,
    ...options.env,
  }, { dataDir: options.dir });
  return openBackupService({
    settings,
    databaseUrl: options.url,
    sql: options.sql,
    secretKey: null,
    instanceId: "test",
    log: silentLogger,
    now: options.now ?? Date.now,
  });
}

/** Creates a small application schema (tables, sequence, view, function) with data. */
export async function seedApp(pg: PgServer, database: string, rows = 2000): Promise<void> {
  await pg.psql(
    `
    CREATE TABLE customers(id bigserial PRIMARY KEY, email text UNIQUE NOT NULL,
                           created timestamptz NOT NULL DEFAULT '2025-01-01 00:00:00+00');
    CREATE TABLE orders(id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers(id),
                        amount numeric(12,2), meta jsonb);
    CREATE INDEX ON orders(customer_id);
    CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 500;
    CREATE FUNCTION total(c bigint) RETURNS numeric LANGUAGE sql
      AS $$ SELECT sum(amount) FROM orders WHERE customer_id = c $$;
    INSERT INTO customers(email) SELECT 'u' || g || '@x.test' FROM generate_series(1, ${rows}) g;
    INSERT INTO orders(customer_id, amount, meta)
      SELECT 1 + g % ${rows}, (g % 1000)::numeric, jsonb_build_object('g', g, 'tag', md5(g::text))
      FROM generate_series(1, ${rows * 3}) g;
    `,
    { database },
  );
}

/** A fingerprint of the sample data: row counts, content hashes, sequence, view, function. */
export function fingerprint(pg: PgServer, database: string): Promise<string> {
  return pg.psql(
    `SELECT (SELECT count(*) FROM customers) || '/' || (SELECT count(*) FROM orders) || '/' ||
            (SELECT md5(string_agg(c::text, ',' ORDER BY id)) FROM customers c) || '/' ||
            (SELECT md5(string_agg(o::text, ',' ORDER BY id)) FROM orders o) || '/' ||
            total(42) || '/' || (SELECT count(*) FROM big_orders) || '/' ||
            (SELECT last_value FROM orders_id_seq)`,
    { database },
  );
}

/** Makes a temp dir the `postgres` OS user can use (tests may run as root). */
export async function tempDir(prefix: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix });
  await Deno.chmod(dir, 0o755);
  return dir;
}

/** Migrates `url`'s database (the history table lives there) and returns a pool on it. */
export async function migratedPool(url: string): Promise<Sql> {
  const sql = pool(url);
  await migrate(sql);
  return sql;
}
