import assert from "node:assert/strict";
import { isRuntimeError } from "../../lib/errors.ts";
import {
  connectServer,
  countRows,
  createDatabase,
  databaseExists,
  dropDatabase,
  openServerPool,
  recoveryState,
  renameDatabase,
  serverFacts,
  userTables,
  withExportedSnapshot,
  withServer,
} from "../../store/backup_server.ts";
import { freePort, startPostgres } from "../harness/mod.ts";

Deno.test("backup_server: the SQL of backups and restores, typed", async (t) => {
  await using pg = await startPostgres({ name: "store-backup-server" });
  const url = await pg.createDatabase("app");
  await pg.psql(
    `CREATE SCHEMA "Odd schema";
     CREATE TABLE "Odd schema"."it's a table"(id int);
     INSERT INTO "Odd schema"."it's a table" SELECT generate_series(1, 7);
     CREATE TABLE plain(v text);
     INSERT INTO plain VALUES ('a'), ('b');`,
    { database: "app" },
  );
  const sql = connectServer(url, { max: 2 });
  try {
    await t.step("server facts and tables come back as typed fields", async () => {
      const facts = await serverFacts(sql);
      assert.match(facts.version, /^15\./);
      assert.match(facts.systemIdentifier ?? "", /^\d+$/);
      const tables = await userTables(sql);
      assert.deepEqual(tables, [
        { schema: "Odd schema", table: "it's a table" },
        { schema: "public", table: "plain" },
      ]);
      assert.deepEqual(await countRows(sql, tables), [
        { schema: "Odd schema", table: "it's a table", rows: 7 },
        { schema: "public", table: "plain", rows: 2 },
      ]);
    });

    await t.step("an exported snapshot counts what it saw, not later writes", async () => {
      const counted = await withExportedSnapshot(sql, async (snapshot) => {
        assert.match(snapshot.id, /^[0-9A-F]+-[0-9A-F]+-\d+$/);
        // A write committed after the export is invisible in the snapshot.
        await withServer(url, {}, (other) => other`INSERT INTO plain VALUES ('late')`);
        return await snapshot.countRows();
      });
      assert.equal(counted.find((c) => c.table === "plain")?.rows, 2);
      assert.equal((await countRows(sql, [{ schema: "public", table: "plain" }]))[0].rows, 3);
    });

    await t.step("databases are created, renamed and dropped by name, quoted", async () => {
      const name = `Restore "${crypto.randomUUID().slice(0, 6)}" it's`;
      assert.equal(await databaseExists(sql, name), false);
      await createDatabase(sql, name);
      assert.equal(await databaseExists(sql, name), true);
      await renameDatabase(sql, name, `${name} renamed`);
      assert.equal(await databaseExists(sql, name), false);
      // A connection to it does not stop the drop (FORCE).
      const holder = connectServer(url, { database: `${name} renamed` });
      try {
        await holder`SELECT 1`;
        await dropDatabase(sql, `${name} renamed`);
      } finally {
        await holder.end({ timeout: 1 }).catch(() => {});
      }
      assert.equal(await databaseExists(sql, `${name} renamed`), false);
      await dropDatabase(sql, "never_existed"); // IF EXISTS
    });

    await t.step("a primary's recovery state", async () => {
      const state = await recoveryState(sql);
      assert.equal(state.inRecovery, false);
      assert.equal(state.lastReplayedCommit, null);
      assert.equal(state.timeline, 1);
      assert.ok(state.databases.includes("app") && state.databases.includes("postgres"));
    });
  } finally {
    await sql.end();
  }

  await t.step("bad URLs and unreachable servers are refused clearly", async () => {
    assert.throws(() => connectServer("not a url"), (e) => isRuntimeError(e, "VALIDATION_FAILED"));
    assert.throws(
      () => connectServer("mysql://h/db"),
      (e) => isRuntimeError(e, "VALIDATION_FAILED") && /postgres:\/\//.test(e.message),
    );
    const port = await freePort();
    await assert.rejects(
      openServerPool(`postgres://postgres@127.0.0.1:${port}/postgres`),
      /ECONNREFUSED|connect|refused/i,
    );
  });
});
