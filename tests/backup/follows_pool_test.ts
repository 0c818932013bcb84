/**
 * Regression (found by the chaos soak, docs/testing.md): after a failover re-pointed the
 * runtime's pool, full backups ran pg_dump against DATABASE_URL — the old primary, now a
 * replica or down — with a snapshot exported on the new primary, and failed ("invalid
 * snapshot identifier", or connection refused). The backup concern now hands pg_dump the
 * URL the pool points at when the backup runs.
 */
import assert from "node:assert/strict";
import { createBackupParts } from "../../actors/backup/mod.ts";
import { loadBackupSettings } from "../../actors/backup/settings.ts";
import type { RuntimeServices } from "../../actors/runtime/types.ts";
import { silentLogger } from "../../lib/log.ts";
import { openDatabase } from "../../store/database.ts";
import { migrate } from "../../store/migrations.ts";
import { startPostgres } from "../harness/mod.ts";
import { pool, tempDir, TEST_KEY } from "./_helpers.ts";

Deno.test("a full backup reads the server the pool points at, not DATABASE_URL", async () => {
  const dir = await tempDir("rs-bk-follow-");
  await using first = await startPostgres({ name: "bk-follow-1" });
  await using second = await startPostgres({ name: "bk-follow-2" });
  const configured = await first.createDatabase("app");
  const moved = await second.createDatabase("app");
  for (const url of [configured, moved]) {
    const sql = pool(url);
    await migrate(sql, { log: silentLogger });
    await sql.end();
  }
  await second.psql("CREATE TABLE only_on_second(id int); INSERT INTO only_on_second VALUES (7)", {
    database: "app",
  });
  const db = await openDatabase({ url: configured, poolSize: 4, log: silentLogger });
  try {
    // What the failover actor does when another node is published as the primary.
    await db.repoint(moved, { epoch: 2 });
    const settings = loadBackupSettings({
      BACKUP_DIR: `${dir}/store`,
      BACKUP_ENCRYPTION_KEY: TEST_KEY,
      BACKUP_SCRATCH_DIR: `${dir}/scratch`,
      BACKUP_SCHEDULE_FULL: "off",
      BACKUP_ROW_COUNTS: "true",
    }, { dataDir: dir });
    const services = {
      log: silentLogger,
      db,
      config: { database: { url: configured }, cluster: { leaseTtlMs: 5000 } },
      secretKey: null,
      instanceId: "follow-test",
      now: Date.now,
      leases: null,
      transport: null,
    } as unknown as RuntimeServices;
    const parts = createBackupParts(services, settings);
    try {
      const result = await parts.api!.create("full");
      const manifest = await parts.api!.manifest(result.name!);
      const tables = manifest.logical?.tables ?? [];
      assert.deepEqual(
        tables.filter((t) => t.table === "only_on_second").map((t) => t.rows),
        [1],
        `the dump holds the moved-to server's table: ${JSON.stringify(tables)}`,
      );
    } finally {
      await parts.stop?.();
    }
  } finally {
    await db.close(5);
    await Deno.remove(dir, { recursive: true });
  }
});
