import assert from "node:assert/strict";
import { filterBaseTar, IncrementalMismatch } from "../../actors/backup/base_files.ts";
import { tarHeader } from "../../actors/backup/tar.ts";
import type { ProgressEvent } from "../../actors/backup/progress.ts";
import {
  failBackupRun,
  getBackupByName,
  insertBackupRun,
  recordBackupProgress,
} from "../../store/backup_history.ts";
import { createPgTools } from "../../store/pg_tools.ts";
import { startPostgres } from "../harness/mod.ts";
import { until } from "../support/instance.ts";
import { fingerprint, migratedPool, seedApp, tempDir, testService } from "./_helpers.ts";

const tools = createPgTools();

Deno.test("file-level incremental base backups: create, verify, restore, retention", async (t) => {
  const dir = await tempDir("rs-bk-incbase-");
  await using pg = await startPostgres({ name: "bk-incbase" });
  const url = await pg.createDatabase("app");
  await seedApp(pg, "app", 3000);
  // A table the next backups leave alone, and one they see dropped.
  await pg.psql(
    `CREATE TABLE still(id int PRIMARY KEY, v text) WITH (autovacuum_enabled = off);
     INSERT INTO still SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
     CREATE TABLE doomed(id int PRIMARY KEY);
     INSERT INTO doomed SELECT generate_series(1, 5000);`,
    { database: "app" },
  );
  // Hint bits and the visibility map set now, so nothing rewrites `still` later.
  await pg.psql("VACUUM still", { database: "app" });
  await pg.psql("CHECKPOINT", { database: "app" });
  // Files last written before a backup's start second may be referenced by the next one (a
  // file written in that second may change again within it): let the clock leave it.
  const seededAt = Date.now();
  const stillFile = await pg.psql("SELECT pg_relation_filepath('still')", { database: "app" });
  const sql = await migratedPool(url);
  await until(() => Date.now() >= seededAt + 2100, {
    what: "the clock to pass the second the sample tables were written in",
  });
  const env = { BACKUP_RETENTION_BASE_COUNT: "1", BACKUP_RETENTION_BASE_DAYS: "0" };
  const service = testService({ url, sql, dir, env });
  const names: string[] = [];
  try {
    await t.step("the first one stores every file and lists them (the chain's root)", async () => {
      const result = await service.create("base", { incremental: true });
      names.push(result.name!);
      const m = await service.manifest(result.name!);
      assert.equal(m.physical!.parent, null);
      const files = m.physical!.files!;
      assert.ok(files.length > 100, `${files.length} files`);
      assert.ok(files.every((f) => f.in === m.name));
      assert.ok(files.some((f) => f.path === "backup_manifest"));
    });

    await t.step("the next stores only what changed and references the rest", async () => {
      await pg.psql(
        `UPDATE orders SET amount = amount + 1 WHERE id % 10 = 0;
         DROP TABLE doomed;
         CHECKPOINT;`,
        { database: "app" },
      );
      const events: ProgressEvent[] = [];
      const result = await service.create("base", {
        incremental: true,
        onProgress: (e) => events.push(e),
      });
      names.push(result.name!);
      // The last event counts every byte pg_basebackup sent (not only what was stored).
      const last = events.at(-1)!;
      assert.equal(last.phase, "copying the cluster");
      assert.ok(last.total! > 0 && last.bytes > result.plainBytes, JSON.stringify(last));
      const row = await getBackupByName(sql, result.name!);
      assert.equal(row!.status, "completed");
      assert.equal(row!.metadata.progress, undefined);
      const root = await service.manifest(names[0]);
      const m = await service.manifest(result.name!);
      assert.equal(m.physical!.parent, names[0]);
      const files = m.physical!.files!;
      const copied = files.filter((f) => f.in === m.name);
      const referenced = files.filter((f) => f.in === names[0]);
      assert.ok(referenced.length > 0, "nothing referenced");
      // The table nobody touched is not stored again.
      assert.equal(files.find((f) => f.path === stillFile)?.in, names[0], stillFile);
      assert.ok(copied.length < files.length, "everything copied");
      assert.equal(copied.length + referenced.length, files.length);
      // Stored: a fraction of the root's bytes.
      assert.ok(
        m.files[0].plainSize < root.files[0].plainSize,
        `${m.files[0].plainSize} >= ${root.files[0].plainSize}`,
      );
      // Every referenced file is exactly the parent's (size and checksum).
      const parentFiles = new Map(root.physical!.files!.map((f) => [f.path, f]));
      for (const f of referenced) {
        assert.equal(f.sha256, parentFiles.get(f.path)!.sha256, f.path);
        assert.equal(f.size, parentFiles.get(f.path)!.size, f.path);
      }
      // The dropped table's files are gone from the list.
      assert.ok(files.length < root.physical!.files!.length + 50);
    });

    await t.step("a third one chains on the second", async () => {
      await pg.psql(`INSERT INTO customers(email) VALUES ('late@x.test'); CHECKPOINT;`, {
        database: "app",
      });
      const result = await service.create("base", { incremental: true });
      names.push(result.name!);
      const m = await service.manifest(result.name!);
      assert.equal(m.physical!.parent, names[1]);
      const holders = new Set(m.physical!.files!.map((f) => f.in));
      assert.ok(holders.has(m.name));
      assert.ok(holders.has(names[0]) || holders.has(names[1]));
    });

    await t.step("verify assembles the chain and pg_verifybackup accepts it", async () => {
      const result = await service.verify(names[2], { mode: "restore" });
      assert.equal(result.ok, true, result.error?.message);
    });

    await t.step("restore assembles the chain into a data directory and replays", async () => {
      const expected = await fingerprint(pg, "app");
      const target = `${dir}/restored`;
      const events: ProgressEvent[] = [];
      const report = await service.restorePointInTime({
        targetTime: null,
        targetDir: target,
        base: names[2],
        onProgress: (e) => events.push(e),
      });
      // Each backup of the chain that holds files is unpacked, its stored bytes counted.
      const unpacked = new Set(events.map((e) => e.phase));
      assert.ok(unpacked.has(`unpacking ${names[2]}`), [...unpacked].join(","));
      const end = events.filter((e) => e.phase === `unpacking ${names[2]}`).at(-1)!;
      assert.equal(end.bytes, end.total);
      assert.equal(report.base, names[2]);
      assert.ok(report.databases.includes("app"));
      const sockets = `${dir}/sockets`;
      await tools.prepareDir(sockets);
      const server = await tools.startServer(target, {
        tcp: false,
        trustLocalSocket: true,
        socketDir: sockets,
        logPath: `${sockets}/restored.log`,
        settings: { archive_mode: "off" },
      });
      try {
        const psql = (query: string) =>
          tools.runOk("psql", ["-X", "-q", "-At", "-c", query], {
            connection: { url: server.url("app") },
          }).then((r) => r.stdout.trim());
        const got = await psql(
          `SELECT (SELECT count(*) FROM customers) || '/' || (SELECT count(*) FROM orders) ||
                  '/' || (SELECT md5(string_agg(c::text, ',' ORDER BY id)) FROM customers c) ||
                  '/' || (SELECT md5(string_agg(o::text, ',' ORDER BY id)) FROM orders o) ||
                  '/' || total(42) || '/' || (SELECT count(*) FROM big_orders) || '/' ||
                  (SELECT last_value FROM orders_id_seq)`,
        );
        assert.equal(got, expected);
        assert.equal(await psql("SELECT count(*) FROM still"), "20000");
        assert.equal(await psql("SELECT to_regclass('doomed') IS NULL"), "t");
      } finally {
        await server.stop();
      }
    });

    await t.step("a running backup's progress is in its history row", async () => {
      const run = await insertBackupRun(sql, {
        name: "20250101T000000Z-full-0a0b0c",
        type: "full",
        path: "file:///nowhere/",
        startedAt: new Date(),
        trigger: "manual",
        instanceId: "test",
      });
      const progress = { phase: "dumping", bytesDone: 1, bytesTotal: 2, etaSeconds: 3 };
      await recordBackupProgress(sql, run.id, progress);
      assert.deepEqual((await getBackupByName(sql, run.name))!.metadata.progress, progress);
      await failBackupRun(sql, run.id, { completedAt: new Date(), error: "test" });
      await recordBackupProgress(sql, run.id, progress);
      assert.equal((await getBackupByName(sql, run.name))!.metadata.progress, undefined);
    });

    await t.step("retention keeps the parents a kept incremental needs", async () => {
      const report = await service.prune({ dryRun: true });
      const kept = new Map(report.plan.keep.map((k) => [k.name, k.reason]));
      assert.ok(kept.has(names[2]), JSON.stringify([...kept]));
      assert.match(kept.get(names[1]) ?? "", /references files in it/);
      assert.match(kept.get(names[0]) ?? "", /references files in it/);
      assert.ok(!report.plan.delete.some((d) => names.includes(d.name)));
    });

    await t.step("a chain with a parent missing is refused, nothing restored", async () => {
      const root = `${dir}/store/${names[0]}`;
      await Deno.rename(root, `${root}.away`);
      try {
        await assert.rejects(
          service.restorePointInTime({
            targetTime: null,
            targetDir: `${dir}/orphan`,
            base: names[2],
          }),
          (err: Error) => /not in the storage|BACKUP_NOT_FOUND/.test(`${err.message}`),
        );
        await assert.rejects(Deno.stat(`${dir}/orphan`));
      } finally {
        await Deno.rename(`${root}.away`, root);
      }
    });
  } finally {
    await sql.end();
    service.close();
    await pg.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("the incremental filter: size + mtime choose, the checksum confirms", async (t) => {
  const enc = new TextEncoder();
  const tar = (files: { name: string; data: string; mtimeS: number }[]) => {
    const parts: Uint8Array[] = [];
    for (const f of files) {
      const data = enc.encode(f.data);
      parts.push(tarHeader(f.name, { size: data.length, mtimeS: f.mtimeS }), data);
      const pad = (512 - (data.length % 512)) % 512;
      if (pad) parts.push(new Uint8Array(pad));
    }
    parts.push(new Uint8Array(1024));
    return ReadableStream.from(parts);
  };
  const drain = async (stream: ReadableStream<Uint8Array>) => {
    let bytes = 0;
    for await (const chunk of stream) bytes += chunk.length;
    return bytes;
  };
  const old = 1_700_000_000;
  const root = filterBaseTar(
    tar([{ name: "base/1/100", data: "aaaa", mtimeS: old }, {
      name: "base/1/200",
      data: "bbbb",
      mtimeS: old,
    }]),
    { name: "root", parent: null },
  );
  await drain(root.stream);
  const listed = (await root.result).files;
  const parent = { name: "root", startedAtS: old + 100, files: listed };

  await t.step("an unchanged file is referenced, a changed one copied", async () => {
    const child = filterBaseTar(
      tar([{ name: "base/1/100", data: "aaaa", mtimeS: old }, {
        name: "base/1/200",
        data: "cccc",
        mtimeS: old + 200,
      }]),
      { name: "child", parent },
    );
    const bytes = await drain(child.stream);
    const result = await child.result;
    assert.deepEqual(result.files.map((f) => [f.path, f.in]), [
      ["base/1/100", "root"],
      ["base/1/200", "child"],
    ]);
    assert.equal(bytes, 512 * 2 + 1024); // one header + one data block + the trailer
  });

  await t.step("a file written in the parent's start second is copied", async () => {
    const late = { ...parent, startedAtS: old + 1 };
    const child = filterBaseTar(tar([{ name: "base/1/100", data: "aaaa", mtimeS: old }]), {
      name: "child",
      parent: late,
    });
    await drain(child.stream);
    assert.equal((await child.result).files[0].in, "child");
  });

  await t.step("content changed without size or mtime: IncrementalMismatch", async () => {
    const child = filterBaseTar(tar([{ name: "base/1/100", data: "zzzz", mtimeS: old }]), {
      name: "child",
      parent,
    });
    await assert.rejects(drain(child.stream), (err) => err instanceof IncrementalMismatch);
    await assert.rejects(child.result, (err) => err instanceof IncrementalMismatch);
  });

  await t.step("a truncated stream fails", async () => {
    const whole = new Uint8Array(
      await new Response(tar([{ name: "x", data: "abc", mtimeS: old }]))
        .arrayBuffer(),
    );
    const cut = filterBaseTar(ReadableStream.from([whole.subarray(0, 600)]), {
      name: "child",
      parent: null,
    });
    await assert.rejects(drain(cut.stream), /truncated/);
  });
});
