import assert from "node:assert/strict";
import { installArchiver } from "../../actors/backup/archiver.ts";
import { isRuntimeError } from "../../lib/errors.ts";
import { withServer } from "../../store/backup_server.ts";
import { createPgTools } from "../../store/pg_tools.ts";
import { startPostgres } from "../harness/mod.ts";
import { migratedPool, tempDir, testService } from "./_helpers.ts";

const tools = createPgTools();
const chownPostgres = (path: string) => tools.chownToServerUser(path);

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

Deno.test("physical backups, WAL archiving and point-in-time recovery", async (t) => {
  const dir = await tempDir("rs-bk-pitr-");
  // As a deployment does it: the script is copied out of the checkout (which the postgres
  // user may not be able to enter) into a directory that user owns.
  const archiver = await installArchiver(tools, {
    archiveDir: `${dir}/wal-archive`,
    scriptDir: `${dir}/archiver`,
  });
  const archive = archiver.archiveDir;
  await using pg = await startPostgres({
    name: "bk-pitr",
    settings: { archive_mode: "on", archive_command: archiver.command },
  });
  const url = await pg.createDatabase("app");
  await pg.psql(
    `CREATE TABLE t(id serial PRIMARY KEY, phase text NOT NULL,
                    at timestamptz NOT NULL DEFAULT clock_timestamp());
     INSERT INTO t(phase) SELECT 'base' FROM generate_series(1, 500);`,
    { database: "app" },
  );
  const sql = await migratedPool(url);
  const env = { BACKUP_WAL_ARCHIVE_DIR: archive, BACKUP_WAL_TIMEOUT_S: "30" };
  const service = testService({ url, sql, dir, env });
  let base = "";
  let target = new Date(0);
  try {
    await t.step("a base backup records its WAL range", async () => {
      const result = await service.create("base");
      base = result.name!;
      const manifest = await service.manifest(base);
      assert.equal(manifest.type, "base");
      assert.match(manifest.wal!.startSegment, /^[0-9A-F]{24}$/);
      assert.ok(manifest.physical!.databases.includes("app"));
    });

    await t.step("incrementals chain: each starts right after the previous one", async () => {
      const first = await service.create("incremental");
      const second = await service.create("incremental");
      const a = await service.manifest(first.name!);
      const b = await service.manifest(second.name!);
      assert.equal(a.previous, base);
      assert.equal(b.previous, a.name);
      const next = (segment: string) => BigInt(`0x${segment.slice(8)}`) + 1n;
      assert.equal(BigInt(`0x${b.wal!.startSegment.slice(8)}`), next(a.wal!.endSegment));
      const differential = await service.manifest((await service.create("differential")).name!);
      assert.equal(differential.previous, base);
      assert.equal(
        differential.wal!.startSegment,
        (await service.manifest(base)).wal!.startSegment,
      );
      assert.equal((await service.get(first.name!))?.parentId, (await service.get(base))?.id);
    });

    await t.step("rows before and after a target second are archived", async () => {
      await pg.psql("INSERT INTO t(phase) SELECT 'before' FROM generate_series(1, 100)", {
        database: "app",
      });
      // The target is the next whole second; 'after' commits a few ms past it.
      const serverNow = Date.parse(
        await pg.psql(
          "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', " +
            '\'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\')',
        ),
      );
      target = new Date(Math.floor(serverNow / 1000) * 1000 + 1000);
      await sleep(target.getTime() - serverNow + 20);
      await pg.psql("INSERT INTO t(phase) SELECT 'after' FROM generate_series(1, 100)", {
        database: "app",
      });
      const result = await service.create("incremental");
      assert.equal(result.skipped, false);
      const manifest = await service.manifest(result.name!);
      assert.equal(manifest.base, base);
      assert.ok(manifest.wal!.files!.length >= 1);
    });

    await t.step("verify test-restores the base and the incremental chain", async () => {
      const list = await service.list({ type: "incremental" });
      for (const name of [base, list[0].name]) {
        const result = await service.verify(name, { mode: "restore" });
        assert.equal(result.ok, true, `${name}: ${result.error?.message}`);
      }
    });

    await t.step("PITR to the second: exactly the rows committed before it", async () => {
      // Only the storage's WAL backups, not the local archive: they must suffice.
      const restoreOnly = testService({ url: null, sql: null, dir, env: {} });
      const targetDir = `${dir}/restored`;
      try {
        const report = await restoreOnly.restorePointInTime({ targetTime: target, targetDir });
        assert.equal(report.base, base);
        assert.equal(report.usedArchive, false);
        assert.ok(report.lastReplayedCommit! < target.toISOString());
        assert.match(report.stoppedAt ?? "", /recovery stopping before commit/);
      } finally {
        restoreOnly.close();
      }
      const scratch = await tempDir("rs-bk-pitr-run-");
      await chownPostgres(scratch);
      const server = await tools.startServer(targetDir, {
        tcp: false,
        trustLocalSocket: true,
        socketDir: scratch,
        logPath: `${scratch}/log`,
        settings: { archive_mode: "off" },
      });
      try {
        const rows = await withServer(
          server.url("app"),
          {},
          (sql) =>
            sql<{ phase: string; n: string; before: boolean }[]>`
            SELECT phase, count(*)::text AS n, max(at) < ${target} AS before
            FROM t GROUP BY 1 ORDER BY 1`,
        );
        assert.deepEqual(rows.map((r) => [r.phase, r.n, r.before]), [
          ["base", "500", true],
          ["before", "100", true],
        ]);
      } finally {
        await server.stop();
        await Deno.remove(scratch, { recursive: true });
      }
    });

    await t.step(
      "a target after the last archived commit is refused, nothing restored",
      async () => {
        const targetDir = `${dir}/too-late`;
        await assert.rejects(
          service.restorePointInTime({
            targetTime: new Date(Date.now() + 3_600_000),
            targetDir,
          }),
          (err) => isRuntimeError(err, "PITR_TARGET_NOT_REACHED"),
        );
        const leftovers = [...Deno.readDirSync(dir)].map((e) => e.name)
          .filter((n) => n.includes("too-late"));
        assert.deepEqual(leftovers, []);
      },
    );

    await t.step(
      "a target directory PostgreSQL's user cannot enter is refused before unpacking",
      async () => {
        if (!tools.dropsPrivileges) return; // as one user, servers can enter our directories
        const locked = await Deno.makeTempDir({ prefix: "rs-bk-pitr-locked-" });
        await Deno.chmod(locked, 0o700);
        try {
          await assert.rejects(
            service.restorePointInTime({ targetTime: target, targetDir: `${locked}/restored` }),
            (err) =>
              isRuntimeError(err, "BACKUP_UNAVAILABLE") &&
              err.message.includes(`it cannot enter ${locked} (mode 0700, owner root)`),
          );
          assert.deepEqual([...Deno.readDirSync(locked)], []);
        } finally {
          await Deno.remove(locked, { recursive: true });
        }
      },
    );

    await t.step("a damaged base backup is refused and nothing is left behind", async () => {
      const file = `${dir}/store/${base}/${(await service.manifest(base)).files[0].name}`;
      const saved = await Deno.readFile(file);
      const bytes = saved.slice();
      bytes[bytes.length >> 1] ^= 0x01;
      await Deno.writeFile(file, bytes);
      try {
        await assert.rejects(
          service.restorePointInTime({ targetTime: target, targetDir: `${dir}/damaged` }),
          (err) =>
            isRuntimeError(err, "BACKUP_CORRUPT") && /nothing was restored/.test(err.message),
        );
        assert.deepEqual(
          [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.includes("damaged")),
          [],
        );
      } finally {
        await Deno.writeFile(file, saved);
      }
    });

    await t.step("a target before every base backup is refused", async () => {
      await assert.rejects(
        service.restorePointInTime({ targetTime: new Date(0), targetDir: `${dir}/early` }),
        (err) => isRuntimeError(err, "BACKUP_NOT_FOUND"),
      );
    });
  } finally {
    await sql.end();
    service.close();
    await pg.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
