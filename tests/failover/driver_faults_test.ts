/**
 * Two database-driver faults that ended runtime instances when a primary died or was fenced
 * under load, and what the process does about them now (lib/db_errors.ts, store/database.ts).
 *
 * 1. postgres.js 3.4 (porsager/postgres#1154, #1208): `sql.begin` answers a failed query
 *    with a ROLLBACK; when the connection closed meanwhile, that write runs from a
 *    `setImmediate` on a null socket and throws where nobody can catch it. It also leaves
 *    the connection object broken: its next reconnects stall until connect_timeout.
 * 2. Deno's node:net can emit a failed write's `error` after the socket's `close`;
 *    postgres.js removes every listener on `close`, so the error has none and is thrown.
 *
 * Each is provoked in a process of its own (tests/fixtures/driver_fault.ts): without the
 * guard the process dies; with it the process lives, counts the fault, logs it once, and
 * the runtime's pool is renewed so every later query succeeds.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import {
  driverFaultCounts,
  guardSocketErrors,
  isConnectionError,
  isConnectionLost,
  uncaughtDriverFault,
} from "../../lib/db_errors.ts";
import { createLogger } from "../../lib/log.ts";
import { openDatabase } from "../../store/database.ts";
import type { Sql } from "../../store/types.ts";
import { type PgServer, startPostgres } from "../harness/mod.ts";
import { ROOT, until } from "../support/instance.ts";

const FIXTURE = "tests/fixtures/driver_fault.ts";

/** Runs the fixture; its exit code, stdout and stderr. */
async function fixture(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const res = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", FIXTURE, ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1", RUST_BACKTRACE: "0" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: res.code, out: dec.decode(res.stdout), err: dec.decode(res.stderr) };
}

/**
 * True while this process holds a TCP socket on local port `port` that its application has
 * not closed (ESTABLISHED or CLOSE_WAIT in /proc/net/tcp).
 */
function socketOpen(port: number): boolean {
  const hex = port.toString(16).toUpperCase().padStart(4, "0");
  return Deno.readTextFileSync("/proc/net/tcp").split("\n").slice(1).some((line) => {
    const [, local, , state] = line.trim().split(/\s+/);
    return local?.endsWith(`:${hex}`) && (state === "01" || state === "08");
  });
}

/** Ends one backend the way a fence or an administrator does (FATAL 57P01, then close). */
async function terminate(pg: PgServer, pid: number): Promise<void> {
  assert.equal(await pg.psql(`SELECT pg_terminate_backend(${pid})`), "t");
}

/**
 * Starts a transaction on `sql` and ends its backend while its query runs; resolves with
 * what the transaction rejected with. postgres.js then sends the transaction's ROLLBACK on
 * the closed connection, the write that finds no socket.
 */
async function cutTransaction(sql: Pick<Sql, "begin">, pg: PgServer): Promise<unknown> {
  let pid: number | null = null;
  const tx = sql.begin(async (q) => {
    pid = (await q`SELECT pg_backend_pid() AS pid`)[0].pid as number;
    await q`SELECT pg_sleep(30)`;
  }).then(() => null, (e) => e);
  await until(() => pid, { what: "the transaction's backend pid" });
  await terminate(pg, pid!);
  return await tx;
}

Deno.test("the guard recognises exactly the driver faults, and only those", () => {
  const nullWrite = new TypeError("Cannot read properties of null (reading 'write')");
  nullWrite.stack = `TypeError: ${nullWrite.message}\n    at nextWrite (file:///x/node_modules/` +
    `.deno/postgres@3.4.9/node_modules/postgres/src/connection.js:255:22)\n    at ext:deno_web/02_timers.js:35:14`;
  assert.equal(uncaughtDriverFault(nullWrite), "null-socket-write");
  const elsewhere = new TypeError(nullWrite.message);
  elsewhere.stack = `TypeError: ${nullWrite.message}\n    at nextWrite (file:///app/mine.js:1:1)`;
  assert.equal(uncaughtDriverFault(elsewhere), null, "the same message from other code is fatal");
  const orphan = Object.assign(new Error("write UNKNOWN"), {
    code: "UNKNOWN",
    errno: -4094,
    syscall: "write",
  });
  orphan.stack = "Error: write UNKNOWN\n    at __node_internal_errnoException " +
    "(ext:deno_node/internal/errors.ts:138:10)\n    at WriteWrap.onWriteComplete [as oncomplete] " +
    "(ext:deno_node/internal/stream_base_commons.ts:90:16)";
  assert.equal(uncaughtDriverFault(orphan), "orphaned-socket-error");
  const fsError = Object.assign(new Error("open EBADF"), {
    code: "EBADF",
    errno: -9,
    syscall: "open",
  });
  assert.equal(uncaughtDriverFault(fsError), null);
  assert.equal(uncaughtDriverFault(new Error("boom")), null);
  // The same socket errors reaching a query are connection errors (503, retried on a switch).
  assert.equal(isConnectionError(orphan), true);
  assert.equal(isConnectionLost(orphan), true);
  assert.equal(isConnectionLost(Object.assign(new Error("x"), { code: "ECONNREFUSED" })), false);
});

Deno.test("a transaction cut by its server: the process survives and the pool is renewed", async (t) => {
  await using pg = await startPostgres();

  await t.step("without the guard, postgres.js's deferred ROLLBACK ends the process", async () => {
    const res = await fixture(["tx-cut", pg.url]);
    assert.equal(res.code, 1, `expected Deno's uncaught-error exit; stdout: ${res.out}`);
    assert.match(res.err, /Uncaught TypeError: Cannot read properties of null \(reading 'write'\)/);
    assert.match(res.err, /at nextWrite \(\S*postgres\/src\/connection\.js/);
  });

  await t.step(
    "with the guard: caught, logged once, counted; every later query succeeds",
    async () => {
      const res = await fixture(["tx-cut", pg.url, "--guard"]);
      assert.equal(res.code, 0, `the process must live; stderr:\n${res.err}`);
      const report = JSON.parse(res.out.trim().split("\n").at(-1)!);
      assert.match(report.transaction, /^CONNECTION_CLOSED: /, "the caller got a connection error");
      assert.equal(report.faults["null-socket-write"], 1);
      assert.ok(report.renewals >= 1, "the pool that held the broken connection was renewed");
      assert.deepEqual(report.after.failed, [], "every query after the fault succeeded");
      const warned = res.err.split("\n").filter((l) => /caught a database driver fault/.test(l));
      assert.equal(warned.length, 1, warned.join("\n"));
      assert.match(warned[0], /WARN .*kind=null-socket-write/);
    },
  );

  await t.step(
    "why the pool is renewed: the broken connection stalls every query sent to it",
    async () => {
      // A bare postgres.js pool, the guard catching the crash, nothing renewing it.
      guardSocketErrors(createLogger("test", { level: "error" }));
      const before = driverFaultCounts()["null-socket-write"];
      const sql = postgres(pg.url, { max: 1, connect_timeout: 1, onnotice: () => {} });
      try {
        const cut = await cutTransaction(sql as unknown as Sql, pg);
        assert.equal((cut as { code?: string })?.code, "CONNECTION_CLOSED", String(cut));
        await until(() => driverFaultCounts()["null-socket-write"] > before, {
          what: "postgres.js's null-socket write caught by the guard",
        });
        // The only connection of this pool is the broken one: it never opens again.
        const err = await sql`SELECT 1`.then(() => null, (e) => e);
        assert.equal(err?.code, "CONNECT_TIMEOUT", `the broken connection answered: ${err}`);
      } finally {
        await sql.end({ timeout: 1 });
      }
    },
  );
});

Deno.test("the runtime's pool heals after a cut transaction and a cut reserved connection", async (t) => {
  guardSocketErrors(createLogger("test", { level: "error" }));
  await using pg = await startPostgres();
  // One connection: any broken one left in the pool would be the one the next query gets.
  const db = await openDatabase({ url: pg.url, poolSize: 1, connectTimeoutS: 10 });
  const sql = db.sql;
  try {
    await t.step("a transaction whose backend is ended", async () => {
      const faults = driverFaultCounts()["null-socket-write"];
      const renewals = db.renewals;
      const cut = await cutTransaction(sql, pg);
      assert.ok(isConnectionError(cut), `the transaction failed as a connection error: ${cut}`);
      await until(() => driverFaultCounts()["null-socket-write"] > faults, {
        what: "the deferred ROLLBACK's crash caught by the guard",
        state: () => driverFaultCounts(),
      });
      assert.ok(db.renewals > renewals, "the pool was renewed");
      const rows = await Promise.all(
        Array.from({ length: 10 }, (_, i) => sql`SELECT ${i}::int AS i`),
      );
      assert.deepEqual(rows.map((r) => r[0].i), [...Array(10).keys()]);
    });

    await t.step("a reserved connection cut in a query: the next query fails at once", async () => {
      const faults = driverFaultCounts()["null-socket-write"];
      const renewals = db.renewals;
      const conn = await sql.reserve();
      const [{ pid }] = await conn`SELECT pg_backend_pid() AS pid`;
      const sleeping = conn`SELECT pg_sleep(30)`.then(() => null, (e) => e);
      await until(
        async () =>
          (await pg.psql(`SELECT state FROM pg_stat_activity WHERE pid = ${pid}`)) === "active",
        { what: "the reserved connection's pg_sleep running" },
      );
      await terminate(pg, pid);
      const cutErr = await sleeping;
      assert.ok(isConnectionError(cutErr), `the running query failed as ${cutErr}`);
      // What a lock holder sends next (its unlock) is refused before postgres.js writes it
      // to the closed connection, where it would throw and never be answered.
      const unlock = await conn`SELECT 1`.then(() => null, (e) => e);
      assert.equal(unlock, cutErr, "the unlock fails at once with the connection's error");
      conn.release();
      assert.equal(driverFaultCounts()["null-socket-write"], faults, "nothing was written");
      assert.ok(db.renewals > renewals, "the pool was renewed");
      const [row] = await sql`SELECT 1 AS one`;
      assert.equal(row.one, 1);
    });

    await t.step(
      "a reserved connection ended while idle, then used: caught, answered",
      async () => {
        const faults = driverFaultCounts()["null-socket-write"];
        const renewals = db.renewals;
        const conn = await sql.reserve();
        const [{ pid }] = await conn`SELECT pg_backend_pid() AS pid`;
        const port = Number(
          await pg.psql(`SELECT client_port FROM pg_stat_activity WHERE pid = ${pid}`),
        );
        await terminate(pg, pid);
        // Nothing of the reserved connection says it closed; its socket does, once postgres.js
        // has closed its end (the kernel keeps it in CLOSE_WAIT until then).
        await until(() => !socketOpen(port), {
          what: `postgres.js closing its socket (local port ${port}) after the server ended it`,
        });
        const stranded = await conn`SELECT 1`.then(() => null, (e) => e);
        assert.ok(isConnectionError(stranded), `the query settled with ${stranded}`);
        assert.equal(driverFaultCounts()["null-socket-write"], faults + 1, "the guard caught it");
        assert.ok(db.renewals > renewals, "the pool was renewed");
        conn.release();
        const [row] = await sql`SELECT 1 AS one`;
        assert.equal(row.one, 1);
      },
    );
  } finally {
    await db.close(1);
  }
});

Deno.test("a socket error emitted after close is caught, not fatal", async (t) => {
  await t.step("without the guard, Deno's close-before-error order ends the process", async () => {
    const res = await fixture(["orphan"]);
    assert.notEqual(res.code, 3, "300 rounds never made Deno emit a write error after close");
    assert.equal(res.code, 1, `expected Deno's uncaught-error exit; stdout: ${res.out}`);
    assert.match(res.err, /Uncaught Error: write (EBADF|UNKNOWN|EPIPE|ECONNRESET)/);
  });

  await t.step(
    "with the guard: the process lives, the fault is counted and logged once",
    async () => {
      const res = await fixture(["orphan", "--guard"]);
      assert.notEqual(res.code, 3, "300 rounds never made Deno emit a write error after close");
      assert.equal(res.code, 0, `the process must live; stderr:\n${res.err}`);
      const report = JSON.parse(res.out.trim().split("\n").at(-1)!);
      assert.ok(report.faults["orphaned-socket-error"] >= 1);
      const warned = res.err.split("\n").filter((l) => /caught a database driver fault/.test(l));
      assert.equal(warned.length, 1, warned.join("\n"));
      assert.match(warned[0], /kind=orphaned-socket-error/);
    },
  );
});
