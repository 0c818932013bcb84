import assert from "node:assert/strict";
import { isRuntimeError } from "../../lib/errors.ts";
import {
  connectionEnv,
  conninfoWithoutPassword,
  createPgTools,
  formatLsn,
  parseBaseBackupWal,
  parseLsn,
  walFileName,
  walSegmentNumber,
} from "../../store/pg_tools.ts";
import { withServer } from "../../store/backup_server.ts";
import { tempDir } from "./_helpers.ts";

const tools = createPgTools();

Deno.test("pg_tools: typed results, captured stderr, no secrets in argv", async (t) => {
  await t.step("a failing program returns its exit code and stderr", async () => {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (listener.addr as Deno.NetAddr).port;
    listener.close();
    const url = `postgres://someone:s3cret@127.0.0.1:${port}/app`;
    const result = await tools.run("pg_dump", ["--schema-only"], { connection: { url } });
    assert.equal(result.success, false);
    assert.equal(result.program, "pg_dump");
    assert.match(result.stderr, /connection|connect/i);
    await assert.rejects(
      tools.runOk("pg_dump", ["--schema-only"], { connection: { url } }),
      (e) =>
        isRuntimeError(e, "PG_TOOL_FAILED") && /pg_dump exited with code 1/.test(e.message) &&
        !e.message.includes("s3cret"),
    );
  });

  await t.step("the connection travels in PG* variables", () => {
    const env = connectionEnv({
      url: "postgresql://u%40x:p%3Aw@db.example:6432/app?sslmode=verify-full&application_name=rs",
    });
    assert.deepEqual(env, {
      PGHOST: "db.example",
      PGPORT: "6432",
      PGUSER: "u@x",
      PGPASSWORD: "p:w",
      PGDATABASE: "app",
      PGSSLMODE: "verify-full",
      PGAPPNAME: "rs",
      PGCONNECT_TIMEOUT: "10",
    });
    assert.equal(
      connectionEnv({ url: "postgres://u@localhost:1/db?host=/run/sock" }).PGHOST,
      "/run/sock",
    );
    assert.equal(
      conninfoWithoutPassword({ url: "postgres://o'k:secret@h:5/db" }),
      "host='h' port='5' user='o\\'k' dbname='db' connect_timeout='10'",
    );
    assert.throws(
      () => connectionEnv({ url: "mysql://x/y" }),
      (e) => isRuntimeError(e, "VALIDATION_FAILED"),
    );
  });

  await t.step("stderr is bounded: head and tail of a flood", async () => {
    const result = await tools.runTool("bash", [
      "-c",
      "echo first >&2; head -c 300000 /dev/zero | tr '\\0' x >&2; echo; echo last >&2; exit 3",
    ]);
    assert.equal(result.code, 3);
    assert.ok(result.stderr.length < 70_000, `${result.stderr.length} chars kept`);
    assert.match(result.stderr, /^first/);
    assert.match(result.stderr, /bytes left out/);
    assert.match(result.stderr.trimEnd(), /last$/);
  });

  await t.step("versions, and a missing program named clearly", async () => {
    assert.match(await tools.version("pg_dump"), /^pg_dump \(PostgreSQL\) 15\./);
    const broken = createPgTools({ binDir: "/nonexistent/bin" });
    assert.throws(
      () => broken.spawn("pg_dump", []),
      (e) => isRuntimeError(e, "PG_TOOL_FAILED") && /was not found/.test(e.message),
    );
  });
});

Deno.test("pg_tools: a throw-away cluster on a private socket", async () => {
  const dir = await tempDir("rs-pgtools-");
  await tools.prepareDir(`${dir}/run`);
  await tools.initdb(`${dir}/run/data`);
  const server = await tools.startServer(`${dir}/run/data`, {
    tcp: false,
    trustLocalSocket: true,
    socketDir: `${dir}/run`,
    logPath: `${dir}/run/server.log`,
  });
  try {
    assert.match(server.url(), /\?host=/);
    // Only the socket reaches it: postgres.js connects there (store/backup_server.ts).
    const rows = await withServer(
      server.url(),
      {},
      (sql) =>
        sql<{ word: string; nothing: string | null; four: number }[]>`
        SELECT ${"it's quoted"} || '!' AS word, NULL::text AS nothing, 2 + 2 AS four`,
    );
    assert.deepEqual([...rows], [{ word: "it's quoted!", nothing: null, four: 4 }]);
    await assert.rejects(
      withServer(server.url(), {}, (sql) => sql`SELECT * FROM nope`),
      /relation "nope" does not exist/,
    );
  } finally {
    await server.stop();
  }
  const control = await tools.controlData(`${dir}/run/data`);
  assert.equal(control["Database cluster state"], "shut down");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("pg_tools: LSNs and WAL file names", () => {
  assert.equal(parseLsn("16/B374D848"), 0x16B374D848n);
  assert.equal(formatLsn(0x16B374D848n), "16/B374D848");
  assert.equal(walFileName("0/2000028", { timeline: 1 }), "000000010000000000000002");
  assert.equal(walFileName("16/B374D848", { timeline: 3 }), "0000000300000016000000B3");
  assert.equal(walSegmentNumber("0000000300000016000000B3"), 0x16n * 256n + 0xB3n);
  assert.deepEqual(
    parseBaseBackupWal(
      "pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1\n" +
        "pg_basebackup: write-ahead log end point: 0/2000100\n",
    ),
    { startLsn: "0/2000028", timeline: 1, endLsn: "0/2000100" },
  );
  assert.equal(parseBaseBackupWal("nothing"), null);
});
