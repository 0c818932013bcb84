import assert from "node:assert/strict";
import postgres from "postgres";
import { isRuntimeError } from "../../lib/errors.ts";
import { loadMigrationFiles, migrate, migrationStatus } from "../../store/migrations.ts";
import type { Sql } from "../../store/types.ts";
import { startPostgres } from "../harness/mod.ts";

function client(url: string): Sql {
  return postgres(url, { max: 2, onnotice: () => {} });
}

async function tempMigrations(files: Record<string, string>): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "rs-migrations-" });
  for (const [name, text] of Object.entries(files)) {
    await Deno.writeTextFile(`${dir}/${name}`, text);
  }
  return dir;
}

Deno.test("migrations runner on PostgreSQL 15", async (t) => {
  await using pg = await startPostgres();

  await t.step("the project's migrations apply once and are recorded with checksums", async () => {
    const sql = client(await pg.createDatabase());
    try {
      const files = await loadMigrationFiles();
      assert.ok(files.length >= 1);
      assert.equal(files[0].name, "001_initial_schema");
      const first = await migrate(sql);
      assert.deepEqual(first.applied, files.map((f) => f.name));
      const again = await migrate(sql);
      assert.deepEqual(again.applied, []);
      assert.equal(again.total, files.length);
      const rows = await sql`SELECT name, checksum FROM schema_migrations ORDER BY version`;
      assert.deepEqual(rows.map((r) => r.checksum), files.map((f) => f.checksum));
      const tables = await sql`
        SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'`;
      const names = new Set(tables.map((r) => r.table_name));
      for (
        const table of [
          "users",
          "sessions",
          "streams",
          "stream_sessions",
          "recordings",
          "usage_logs",
          "billing_accounts",
          "event_log",
          "snapshots",
        ]
      ) assert.ok(names.has(table), `missing table ${table}`);
      assert.deepEqual(await migrationStatus(sql), {
        applied: files.map((f) => f.name),
        pending: [],
      });
    } finally {
      await sql.end();
    }
  });

  await t.step("instances starting at once apply each migration exactly once", async () => {
    const url = await pg.createDatabase();
    const clients = [client(url), client(url), client(url), client(url)];
    try {
      const reports = await Promise.all(clients.map((sql) => migrate(sql)));
      const files = await loadMigrationFiles();
      const appliedTotal = reports.reduce((n, r) => n + r.applied.length, 0);
      assert.equal(appliedTotal, files.length);
      const [{ count }] = await clients[0]`SELECT count(*)::int AS count FROM schema_migrations`;
      assert.equal(count, files.length);
    } finally {
      await Promise.all(clients.map((sql) => sql.end()));
    }
  });

  await t.step("a changed applied file stops the run with a clear error", async () => {
    const dir = await tempMigrations({ "001_a.sql": "CREATE TABLE a (id int);" });
    const sql = client(await pg.createDatabase());
    try {
      await migrate(sql, { dir });
      await Deno.writeTextFile(`${dir}/001_a.sql`, "CREATE TABLE a (id bigint);");
      await Deno.writeTextFile(`${dir}/002_b.sql`, "CREATE TABLE b (id int);");
      const err = await migrate(sql, { dir }).then(() => null, (e) => e);
      assert.ok(isRuntimeError(err, "MIGRATION_CHECKSUM_MISMATCH"));
      assert.match(err.message, /001_a\.sql changed after it was applied/);
      // Nothing after the mismatch ran.
      const [{ b }] = await sql`SELECT to_regclass('b')::text AS b`;
      assert.equal(b, null);
    } finally {
      await sql.end();
      await Deno.remove(dir, { recursive: true });
    }
  });

  await t.step("a failing file is rolled back whole and earlier ones stay", async () => {
    const dir = await tempMigrations({
      "001_ok.sql": "CREATE TABLE ok (id int);",
      "002_bad.sql": "CREATE TABLE half (id int);\nSELECT * FROM no_such_table;",
    });
    const sql = client(await pg.createDatabase());
    try {
      const err = await migrate(sql, { dir }).then(() => null, (e) => e);
      assert.ok(isRuntimeError(err, "MIGRATION_FAILED"));
      assert.match(err.message, /002_bad\.sql failed and was rolled back: .*no_such_table/);
      const [{ ok, half }] = await sql`
        SELECT to_regclass('ok')::text AS ok, to_regclass('half')::text AS half`;
      assert.equal(ok, "ok");
      assert.equal(half, null);
      const rows = await sql`SELECT name FROM schema_migrations`;
      assert.deepEqual(rows.map((r) => r.name), ["001_ok"]);
      // Fixing the file lets the next start continue where it stopped.
      await Deno.writeTextFile(`${dir}/002_bad.sql`, "CREATE TABLE half (id int);");
      const report = await migrate(sql, { dir });
      assert.deepEqual(report.applied, ["002_bad"]);
    } finally {
      await sql.end();
      await Deno.remove(dir, { recursive: true });
    }
  });

  await t.step("badly named or duplicate-version files are refused", async () => {
    const bad = await tempMigrations({ "1_x.sql": "SELECT 1;" });
    const dup = await tempMigrations({ "001_a.sql": "SELECT 1;", "001_b.sql": "SELECT 1;" });
    try {
      const e1 = await loadMigrationFiles(bad).then(() => null, (e) => e);
      assert.ok(isRuntimeError(e1, "MIGRATION_INVALID"));
      assert.match(e1.message, /1_x\.sql/);
      const e2 = await loadMigrationFiles(dup).then(() => null, (e) => e);
      assert.ok(isRuntimeError(e2, "MIGRATION_INVALID"));
      assert.match(e2.message, /share version 1/);
    } finally {
      await Deno.remove(bad, { recursive: true });
      await Deno.remove(dup, { recursive: true });
    }
  });
});
