/**
 * The switchable database handle: `db.sql` follows a re-point, a replica or an older
 * epoch is refused, and a query caught by the switch is retried once on the new primary.
 */
import assert from "node:assert/strict";
import { isRuntimeError } from "../../lib/errors.ts";
import { openDatabase } from "../../store/database.ts";
import { startPostgres, startReplica } from "../harness/mod.ts";
import { until } from "../support/instance.ts";

Deno.test("database handle re-points to a new primary", async (t) => {
  await using primary = await startPostgres({ name: "rp1" });
  await using replica = await startReplica(primary, { name: "rp2" });
  const db = await openDatabase({ url: primary.url, connectTimeoutS: 5, poolSize: 4 });
  // Captured once, the way every data-access module captures it.
  const sql = db.sql;
  try {
    await sql`CREATE TABLE t (id int PRIMARY KEY)`;
    await sql`INSERT INTO t VALUES (1)`;
    await until(async () => (await replica.psql("select count(*) from t")) === "1", {
      what: "the row replayed on the replica",
    });

    await t.step("a replica is refused as a primary", async () => {
      const err = await db.repoint(replica.url, { epoch: 1 }).then(() => null, (e) => e);
      assert.ok(isRuntimeError(err, "DATABASE_NOT_PRIMARY"), String(err));
      assert.match(err.message, /it is in recovery/);
      assert.equal(db.generation, 0);
      const [row] = await sql`SELECT inet_server_port() AS port`;
      assert.equal(row.port, primary.port);
    });

    await t.step(
      "a query failing with a connection error waits for the switch and runs once on the new primary",
      async () => {
        // Far longer than anything below takes: a write that finishes did not wait it out.
        db.setSwitchWait(120_000);
        const [before] = await sql`SELECT inet_server_port() AS port`;
        assert.equal(before.port, primary.port);
        // The failover concern's hint: told of connection errors, not of SQL errors.
        const told: string[] = [];
        const off = db.onConnectionError((why) => told.push(why));
        const syntax = await sql`SELECT nope_no_such_column`.then(() => null, (e) => e);
        assert.ok(syntax, "a SQL error");
        assert.deepEqual(told, [], "a SQL error is no connection error");
        await primary.kill("SIGKILL");
        // In flight while the primary is gone: it fails to connect, then waits.
        const pending = sql`INSERT INTO t VALUES (2) RETURNING inet_server_port() AS port`;
        let settled = false;
        const result = pending.then((rows) => rows[0].port as number).finally(() => settled = true);
        result.catch(() => {});
        await until(() => told.length > 0, { what: "the connection error told to the listener" });
        assert.match(told[0], /refused|closed|reset|connection/i);
        off();
        await replica.psql("select pg_promote(true, 30)");
        assert.equal(settled, false, "the write waits for a switch instead of failing");
        const switched = await db.repoint(replica.url, { epoch: 1 });
        assert.equal(switched.epoch, 1);
        await until(() => settled, {
          ms: 30_000,
          what: "the waiting write to run on the new primary once the pool switched",
        });
        assert.equal(await result, replica.port, "the write landed on the new primary");
        assert.equal(db.generation, 1);
        assert.equal(db.epoch, 1);
        assert.match(db.describe, new RegExp(`:${replica.port}/`));
        const rows = await sql`SELECT id FROM t ORDER BY id`;
        assert.deepEqual(rows.map((r) => r.id), [1, 2]);
        // Transactions follow too.
        const inTx = await sql.begin((tx) => tx`SELECT inet_server_port() AS port`);
        assert.equal(inTx[0].port, replica.port);
        assert.equal((await db.ping()).ok, true);
      },
    );

    await t.step("an older epoch is refused", async () => {
      const err = await db.repoint(replica.url, { epoch: 0 }).then(() => null, (e) => e);
      assert.ok(isRuntimeError(err, "DATABASE_STALE_EPOCH"), String(err));
      assert.equal(db.epoch, 1);
    });

    await t.step(
      "dropping the switch wait (degraded: no primary is coming) fails the waiting queries",
      async () => {
        db.setSwitchWait(120_000);
        await replica.kill("SIGKILL");
        const seen: { outcome: unknown } = { outcome: null };
        const query = sql`SELECT 1`.then(() => "answered", (e) => e);
        query.then((o) => seen.outcome = o);
        await new Promise((r) => setTimeout(r, 300)); // time to fail the connect; it must wait
        assert.ok(seen.outcome === null, "the query waits for a switch");
        db.setSwitchWait(0);
        await until(() => seen.outcome !== null, {
          ms: 30_000,
          what: "the waiting query to fail once the wait is dropped (it would wait 120 s)",
        });
        const outcome = await query;
        assert.ok(outcome instanceof Error, `the query failed: ${outcome}`);
        const err = await sql`SELECT 1`.then(() => null, (e) => e);
        assert.ok(err, "and a new one fails without waiting");
      },
    );
  } finally {
    await db.close(0);
  }
});
