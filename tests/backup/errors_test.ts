/**
 * Backups and restores that cannot be done, against a real PostgreSQL 15 server: each
 * refuses with its error code and a sentence that says what to change, is recorded as
 * failed where it had started, and leaves nothing half-made behind (no stored file, no
 * staging database, no restored database).
 */
import assert from "node:assert/strict";
import type { BackupService } from "../../actors/backup/service.ts";
import { listArchive, switchAndAwaitArchive } from "../../actors/backup/wal.ts";
import { createEncryptStream } from "../../lib/backup_crypto.ts";
import { isRuntimeError, type RuntimeError } from "../../lib/errors.ts";
import { BACKUP_LOCK_KEY } from "../../store/backup_history.ts";
import { freePort, startPostgres } from "../harness/mod.ts";
import { migratedPool, pool, seedApp, tempDir, testService } from "./_helpers.ts";

async function rejected(promise: Promise<unknown>): Promise<RuntimeError> {
  const err = await promise.then(() => null, (e) => e);
  assert.ok(err, "the call should have failed");
  assert.ok(isRuntimeError(err), `a RuntimeError, got ${err}`);
  return err;
}

Deno.test("an encrypting stream cancelled before its key is derived frees its cipher", async () => {
  // What a storage that refuses at once does to it. The result settles only once the key
  // derivation is over, so the sanitizers are the check: no derivation still running (it
  // used to outlive the result, by however long a busy machine takes) and no native cipher
  // left open (it used to be created after cancel() and never freed).
  const encrypt = createEncryptStream("test-passphrase-0123456789abcdef");
  await encrypt.stream.readable.cancel(new Error("the storage refused"));
  await assert.rejects(encrypt.result, /the storage refused/);
});

Deno.test("backup and restore refusals leave nothing behind", async (t) => {
  await using pg = await startPostgres();
  const url = await pg.createDatabase("rsbackuperr");
  const database = "rsbackuperr";
  await seedApp(pg, database, 200);
  // A login role without superuser: it can read its own table but not `secret`.
  await pg.psql(
    `CREATE ROLE limited LOGIN;
     GRANT CONNECT ON DATABASE ${database} TO limited;
     CREATE TABLE secret(id int);
     GRANT SELECT ON customers, orders TO limited;`,
    { database },
  );
  const limitedUrl = url.replace("postgres@", "limited@");
  const sql = await migratedPool(url);
  const dir = await tempDir("rs-backup-errors-");
  const services: BackupService[] = [];
  const service = (env: Record<string, string> = {}, urls: { url?: string | null } = {}) => {
    const s = testService({
      url: urls.url === undefined ? url : urls.url,
      sql: urls.url === null ? null : sql,
      dir,
      env,
    });
    services.push(s);
    return s;
  };
  const history = async () =>
    (await sql`SELECT name, backup_type, status, error_message FROM backup_history ORDER BY id`)
      .map((r) => ({ ...r }));
  const databases = async () =>
    (await pg.psql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database"))
      .split(",");
  const svc = service();
  try {
    await t.step("a backup while another holds the backup lock is BACKUP_BUSY", async () => {
      const holder = await sql.reserve();
      try {
        await holder`SELECT pg_advisory_lock(${BACKUP_LOCK_KEY.toString()}::bigint)`;
        const busy = await rejected(svc.create("full"));
        assert.equal(busy.code, "BACKUP_BUSY");
        const prune = await rejected(svc.prune());
        assert.equal(prune.code, "BACKUP_BUSY");
      } finally {
        await holder`SELECT pg_advisory_unlock(${BACKUP_LOCK_KEY.toString()}::bigint)`;
        holder.release();
      }
      assert.deepEqual(await history(), [], "nothing recorded");
      assert.deepEqual(await svc.context.storage.list(""), [], "nothing stored");
    });

    await t.step("WAL backups name the archive setting, then the missing base backup", async () => {
      const noArchive = await rejected(svc.create("incremental"));
      assert.equal(noArchive.code, "BACKUP_UNAVAILABLE");
      assert.match(noArchive.message, /BACKUP_WAL_ARCHIVE_DIR/);
      await Deno.mkdir(`${dir}/archive`);
      const archived = service({ BACKUP_WAL_ARCHIVE_DIR: `${dir}/archive` });
      const noBase = await rejected(archived.create("differential"));
      assert.equal(noBase.code, "BACKUP_FAILED");
      assert.match(noBase.message, /base backup/);
      assert.deepEqual(await history(), [], "nothing recorded");
    });

    await t.step(
      "a storage path that is a file: STORAGE_FAILED, the run recorded failed",
      async () => {
        await Deno.writeTextFile(`${dir}/not-a-dir`, "");
        const broken = service({ BACKUP_DIR: `${dir}/not-a-dir` });
        const err = await rejected(broken.create("full"));
        assert.equal(err.code, "STORAGE_FAILED");
        assert.match(err.message, /not-a-dir/);
        const runs = await history();
        assert.equal(runs.length, 1);
        assert.equal(runs[0].status, "failed");
        assert.match(runs[0].error_message, /not-a-dir/);
        assert.equal(await Deno.readTextFile(`${dir}/not-a-dir`), "", "the file is untouched");
      },
    );

    await t.step("pg_dump refused half-way: recorded failed, no partial file stored", async () => {
      const limited = service({}, { url: limitedUrl });
      const err = await rejected(limited.create("full"));
      assert.match(err.message, /permission denied/);
      const run = (await history()).at(-1)!;
      assert.equal(run.backup_type, "full");
      assert.equal(run.status, "failed");
      assert.match(run.error_message, /permission denied/);
      assert.deepEqual(await svc.context.storage.list(`${run.name}/`), []);
      assert.deepEqual(await svc.context.storage.list(""), [], "no other file either");
    });

    let name = "";
    await t.step("restores that cannot start create no database", async () => {
      const made = await svc.create("full");
      name = made.name!;
      const before = await databases();
      const badName = await rejected(svc.restoreLogical(name, { database: "Bad-Name" }));
      assert.equal(badName.code, "VALIDATION_FAILED");
      const noSuchId = await rejected(svc.restoreLogical("999999", { database: "r1" }));
      assert.equal(noSuchId.code, "BACKUP_NOT_FOUND");
      const badRef = await rejected(svc.restoreLogical("../etc/passwd", { database: "r1" }));
      assert.equal(badRef.code, "VALIDATION_FAILED");
      const port = await freePort();
      const unreachable = await rejected(svc.restoreLogical(name, {
        database: "r1",
        url: `postgres://postgres:s3cret@127.0.0.1:${port}/postgres`,
      }));
      assert.equal(unreachable.code, "DATABASE_CONNECT_FAILED");
      assert.match(unreachable.message, new RegExp(`127\\.0\\.0\\.1:${port}`));
      assert.doesNotMatch(unreachable.message, /s3cret/);
      // An instance on embedded PGlite has no server to back up or restore into.
      const embedded = service({}, { url: null });
      assert.equal(embedded.availability.ok, false);
      const noServer = await rejected(embedded.restoreLogical(name, { database: "r1" }));
      assert.equal(noServer.code, "BACKUP_UNAVAILABLE");
      const noBackup = await rejected(embedded.create("full"));
      assert.equal(noBackup.code, "BACKUP_UNAVAILABLE");
      const noId = await rejected(embedded.verify("1"));
      assert.equal(noId.code, "BACKUP_NOT_FOUND");
      assert.deepEqual(await databases(), before);
    });

    await t.step(
      "a backup whose file went missing: verify says so, restore leaves nothing",
      async () => {
        const [file] = await svc.context.storage.list(`${name}/dump`);
        assert.ok(file, "the dump file is stored");
        const path = `${dir}/store/${file.key}`;
        await Deno.rename(path, `${dir}/aside`);
        try {
          const verified = await svc.verify(name, { mode: "checksums" });
          assert.equal(verified.ok, false);
          assert.deepEqual(verified.files.map((f) => f.status), ["missing"]);
          const [row] = await sql`SELECT verified_at, verification FROM backup_history
                                 WHERE name = ${name}`;
          assert.equal(row.verified_at, null);
          assert.equal(row.verification.ok, false);
          const before = await databases();
          const checked = await rejected(
            svc.restoreLogical(name, { database: "r2", precheck: true }),
          );
          assert.match(checked.message, /missing/);
          // Without the pre-check the restore starts, fails reading the file, drops its
          // staging database and stops the pg_restore that waited for the data (a process
          // left running fails this test's sanitizer).
          const streamed = await rejected(svc.restoreLogical(name, { database: "r2" }));
          assert.equal(streamed.code, "BACKUP_NOT_FOUND");
          assert.deepEqual(await databases(), before, "no r2, no staging database");
        } finally {
          await Deno.rename(`${dir}/aside`, path);
        }
        // The file back, the same backup restores.
        const restored = await svc.restoreLogical(name, { database: "r3" });
        assert.equal(restored.database, "r3");
      },
    );

    await t.step("point-in-time recovery needs a base backup", async () => {
      const none = await rejected(
        svc.restorePointInTime({ targetTime: new Date(), targetDir: `${dir}/pitr` }),
      );
      assert.equal(none.code, "BACKUP_NOT_FOUND");
      assert.match(none.message, /base backup/);
      const named = await rejected(svc.restorePointInTime({
        targetTime: null,
        targetDir: `${dir}/pitr`,
        base: "20250115T020000Z-base-3fa9c1",
      }));
      assert.equal(named.code, "BACKUP_NOT_FOUND");
      await assert.rejects(Deno.stat(`${dir}/pitr`), Deno.errors.NotFound);
    });

    await t.step("WAL switching says what the server or the role lacks", async () => {
      // The harness server does not archive: that is said at once, whoever asks, before
      // any WAL switch (the role's own lack would only matter once the server archives).
      for (const who of ["postgres", "limited"]) {
        const conn = who === "postgres" ? sql : pool(limitedUrl);
        try {
          const off = await rejected(
            switchAndAwaitArchive(conn, { dir: `${dir}/archive`, timeoutMs: 200, now: Date.now }),
          );
          assert.equal(off.code, "WAL_ARCHIVE_FAILED", `as ${who}: ${off.message}`);
          assert.match(off.message, /archive_mode is off/);
        } finally {
          if (conn !== sql) await conn.end();
        }
      }
      // A server that archives, and a role that may not switch WAL: what it lacks is said.
      // (archive_command is never reached: the switch is refused first.)
      await using archiving = await startPostgres({
        name: "bk-errors-archiving",
        settings: { archive_mode: "on", archive_command: "/bin/true" },
      });
      await archiving.psql("CREATE ROLE limited LOGIN");
      const limited = pool(archiving.url.replace("postgres@", "limited@"));
      try {
        const denied = await rejected(
          switchAndAwaitArchive(limited, { dir: `${dir}/archive`, timeoutMs: 200, now: Date.now }),
        );
        assert.equal(denied.code, "BACKUP_FAILED", denied.message);
        assert.match(denied.message, /pg_switch_wal/);
        assert.match(denied.message, /GRANT EXECUTE ON FUNCTION pg_switch_wal\(\)/);
      } finally {
        await limited.end();
      }
      const missing = await rejected(listArchive(`${dir}/no-archive`, 16 * 1024 * 1024));
      assert.equal(missing.code, "WAL_ARCHIVE_FAILED");
      assert.match(missing.message, /does not exist/);
      const file = await rejected(listArchive(`${dir}/not-a-dir`, 16 * 1024 * 1024));
      assert.equal(file.code, "WAL_ARCHIVE_FAILED");
    });
  } finally {
    for (const s of services) s.close();
    await sql.end();
    await Deno.remove(dir, { recursive: true });
  }
});
