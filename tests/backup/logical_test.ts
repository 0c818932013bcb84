import assert from "node:assert/strict";
import { isRuntimeError } from "../../lib/errors.ts";
import { readCatalog, readManifest } from "../../actors/backup/manifest.ts";
import { startPostgres } from "../harness/mod.ts";
import {
  fingerprint,
  migratedPool,
  pool,
  seedApp,
  tempDir,
  TEST_KEY,
  testService,
} from "./_helpers.ts";

function rejectsWith(code: string, pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(isRuntimeError(err), `expected a RuntimeError, got ${err}`);
    assert.equal(err.code, code, err.message);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

async function databases(pg: { psql(sql: string): Promise<string> }): Promise<string[]> {
  return (await pg.psql("SELECT datname FROM pg_database ORDER BY 1")).split("\n");
}

Deno.test("full (logical) backups", async (t) => {
  await using pg = await startPostgres({ name: "bk-logical" });
  const dir = await tempDir("rs-bk-logical-");
  const url = await pg.createDatabase("app");
  await seedApp(pg, "app");
  let sql = await migratedPool(url);
  // Exact row counts are off by default (a second read of every table); these steps turn
  // them on so the test-restore compares them.
  const env = { BACKUP_ROW_COUNTS: "true" };
  let service = testService({ url, sql, dir, env });
  let name = "";
  let dumpFile = "";
  try {
    await t.step("create stores one encrypted dump and a signed manifest", async () => {
      const result = await service.create("full", { trigger: "manual" });
      assert.ok(result.name);
      name = result.name;
      assert.match(name, /^\d{8}T\d{6}Z-full-[0-9a-f]{6}$/);
      const manifest = await readManifest(service.context.storage, name, { passphrase: TEST_KEY });
      assert.equal(manifest.files.length, 1);
      const [file] = manifest.files;
      dumpFile = `${dir}/store/${name}/${file.name}`;
      assert.equal((await Deno.stat(dumpFile)).size, file.size);
      assert.ok(file.plainSize > file.size / 2, "the dump was read in full");
      const orders = manifest.logical?.tables?.find((x) => x.table === "orders");
      assert.equal(orders?.rows, 6000);
      const record = await service.get(name);
      assert.equal(record?.status, "completed");
      assert.equal(record?.compressedSize, file.size);
      assert.equal(record?.encryptionMethod, "aes-256-cbc+hmac-sha256");
    });

    await t.step("standard tools decrypt it: openssl | zstd -d, then pg_restore", async () => {
      const plain = `${dir}/dump.pgc`;
      const out = await new Deno.Command("bash", {
        args: [
          "-c",
          // The exact command docs/backup.md gives.
          "set -o pipefail; openssl enc -d -aes-256-cbc -pbkdf2 -iter 100000 -md sha256 " +
          `-pass env:BACKUP_ENCRYPTION_KEY -in "$1" | zstd -d -q -o "$2" && ` +
          `sha256sum "$2" && /usr/lib/postgresql/15/bin/pg_restore --list "$2"`,
          "bash",
          dumpFile,
          plain,
        ],
        env: { BACKUP_ENCRYPTION_KEY: TEST_KEY },
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(out.code, 0, `exit ${out.code}: ${new TextDecoder().decode(out.stderr)}`);
      const stdout = new TextDecoder().decode(out.stdout);
      const manifest = await readManifest(service.context.storage, name, { passphrase: TEST_KEY });
      assert.equal(
        (await Deno.stat(plain)).size,
        manifest.files[0].plainSize,
        "the decrypted, decompressed file is the dump the manifest describes",
      );
      assert.match(stdout, /TABLE DATA public orders/);
      await Deno.remove(plain);
    });

    await t.step("verify test-restores it into a throw-away cluster", async () => {
      const result = await service.verify(name, { mode: "restore" });
      assert.equal(result.ok, true, result.error?.message);
      assert.ok(result.files.every((f) => f.status === "ok"));
      assert.ok(Number(result.probes?.rows) >= 8000);
      assert.ok((await service.get(name))?.verifiedAt);
      const catalog = await readCatalog(service.context.storage, TEST_KEY);
      assert.ok(catalog.entries.find((e) => e.manifest.name === name)?.verification);
    });

    await t.step("backup, drop the database, restore: identical data", async () => {
      const before = await fingerprint(pg, "app");
      await sql.end();
      await pg.psql("DROP DATABASE app WITH (FORCE)");
      const report = await service.restoreLogical(name, { database: "app", url: pg.url });
      assert.equal(report.database, "app");
      assert.equal(await fingerprint(pg, "app"), before);
      // The history came back with the data; go on with a fresh pool on the restored database.
      sql = pool(url);
      service.close();
      service = testService({ url, sql, dir, env });
    });

    await t.step("a corrupted file is refused and nothing is restored", async () => {
      const bytes = await Deno.readFile(dumpFile);
      const saved = bytes.slice();
      bytes[Math.floor(bytes.length / 2)] ^= 0xff;
      await Deno.writeFile(dumpFile, bytes);
      const result = await service.verify(name, { mode: "checksums" });
      assert.equal(result.ok, false);
      assert.equal(result.error?.code, "BACKUP_CORRUPT");
      assert.equal(result.files[0].status, "checksum_mismatch");
      await assert.rejects(
        service.restoreLogical(name, { database: "app_corrupt", url: pg.url, precheck: true }),
        rejectsWith("BACKUP_CORRUPT", /nothing was restored/),
      );
      // Without the up-front check the damage is found at the end of the stream; the
      // restore went into a staging database that is dropped: the name never appears.
      await assert.rejects(
        service.restoreLogical(name, { database: "app_corrupt", url: pg.url }),
        rejectsWith("BACKUP_CORRUPT", /nothing was restored \(the staging database was dropped\)/),
      );
      const dbs = await databases(pg);
      assert.ok(!dbs.includes("app_corrupt"), dbs.join(","));
      assert.ok(!dbs.some((d) => d.startsWith("rs_restore_")), dbs.join(","));
      await Deno.writeFile(dumpFile, saved);
    });

    await t.step("a truncated file is refused and nothing is restored", async () => {
      const saved = await Deno.readFile(dumpFile);
      await Deno.writeFile(dumpFile, saved.subarray(0, Math.floor(saved.length * 0.6)));
      const result = await service.verify(name, { mode: "checksums" });
      assert.equal(result.files[0].status, "size_mismatch");
      await assert.rejects(
        service.restoreLogical(name, { database: "app_truncated", url: pg.url }),
        rejectsWith("BACKUP_CORRUPT"),
      );
      assert.ok(!(await databases(pg)).includes("app_truncated"));
      await Deno.writeFile(dumpFile, saved);
    });

    await t.step("the wrong key is named as such and nothing is restored", async () => {
      const other = testService({
        url: null,
        sql: null,
        dir,
        env: { BACKUP_ENCRYPTION_KEY: "another-passphrase-0123456789" },
      });
      try {
        await assert.rejects(
          other.restoreLogical(name, { database: "app_wrong_key", url: pg.url }),
          rejectsWith("BACKUP_KEY_MISMATCH", /another key/),
        );
        const result = await other.verify(name, { mode: "checksums" });
        assert.equal(result.error?.code, "BACKUP_KEY_MISMATCH");
      } finally {
        other.close();
      }
      assert.ok(!(await databases(pg)).includes("app_wrong_key"));
    });

    await t.step("an altered manifest is refused", async () => {
      const path = `${dir}/store/${name}/manifest.json`;
      const original = await Deno.readTextFile(path);
      await Deno.writeTextFile(path, original.replace(/"rows": 6000/, '"rows": 6001'));
      await assert.rejects(
        service.restoreLogical(name, { database: "app_altered", url: pg.url }),
        rejectsWith("BACKUP_CORRUPT", /altered/),
      );
      await Deno.writeTextFile(path, original);
    });

    await t.step("gzip and row counts off (the defaults but zstd) round-trip too", async () => {
      const gz = testService({ url, sql, dir, env: { BACKUP_COMPRESSION: "gzip" } });
      try {
        const result = await gz.create("full", { trigger: "manual" });
        const manifest = await readManifest(gz.context.storage, result.name!, {
          passphrase: TEST_KEY,
        });
        assert.equal(manifest.files[0].compression, "gzip");
        assert.equal(manifest.files[0].name, "dump.pgc.gz.enc");
        assert.equal(manifest.logical?.tables, null, "no row counts unless asked");
        assert.ok(manifest.files[0].plainSize > manifest.files[0].size / 2);
        const report = await gz.restoreLogical(result.name!, { database: "app_gz", url: pg.url });
        assert.equal(report.tablesChecked, 0);
        assert.equal(await fingerprint(pg, "app_gz"), await fingerprint(pg, "app"));
      } finally {
        gz.close();
      }
    });

    await t.step("restoring onto an existing database is refused", async () => {
      await assert.rejects(
        service.restoreLogical(name, { database: "app", url: pg.url }),
        rejectsWith("RESTORE_TARGET_EXISTS"),
      );
    });
  } finally {
    await sql.end().catch(() => {});
    service.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
