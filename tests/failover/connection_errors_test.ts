/**
 * A database connection cut during its start-up never ends the process.
 *
 * postgres.js runs an array-types query as the first statement of every new connection
 * (unless `fetch_types: false`) and drops that query's promise (porsager/postgres#1192,
 * #1223): when the connection is cut while it runs, the rejection has nobody listening and
 * Deno ends the process. Two ways that happened under load, each replayed here through a
 * TCP relay in front of a real PostgreSQL that acts when it sees that query:
 *
 * - a probe of a stalled primary timed out and ended its pool (the relay stalls);
 * - a switchover's fence ended every session of the old primary while the pools were
 *   reconnecting to it (the relay answers FATAL 57P01, as pg_terminate_backend does).
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { guardSocketErrors } from "../../lib/db_errors.ts";
import { createNodeClient } from "../../actors/failover/nodes.ts";
import { createLogger } from "../../lib/log.ts";
import { startPostgres } from "../harness/mod.ts";
import { until } from "../support/instance.ts";

const TYPES_QUERY = "pg_catalog.pg_type";

/** PostgreSQL's ErrorResponse for a session ended by pg_terminate_backend / a fast shutdown. */
function terminated(): Uint8Array {
  const fields = [
    ["S", "FATAL"],
    ["V", "FATAL"],
    ["C", "57P01"],
    ["M", "terminating connection due to administrator command"],
  ];
  const body = new TextEncoder().encode(fields.map(([k, v]) => `${k}${v}\0`).join("") + "\0");
  const out = new Uint8Array(5 + body.length);
  out[0] = "E".charCodeAt(0);
  new DataView(out.buffer).setInt32(1, 4 + body.length);
  out.set(body, 5);
  return out;
}

/**
 * Relays 127.0.0.1:<port> to `target`. When a client sends postgres.js's array-types query,
 * `stall` swallows everything from then on (both ways); `terminate` answers FATAL 57P01 and
 * closes that connection (once: later connections pass untouched).
 */
function relay(target: number, mode: "stall" | "terminate") {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const pumps: Promise<void>[] = [];
  let acted = 0;
  function close(c: Deno.Conn) {
    try {
      c.close();
    } catch { /* already closed */ }
  }
  async function pump(from: Deno.Conn, to: Deno.Conn, frozen: { on: boolean }, watch: boolean) {
    const buf = new Uint8Array(64 * 1024);
    try {
      while (true) {
        const n = await from.read(buf);
        if (n === null) break;
        const chunk = buf.subarray(0, n);
        if (watch && !frozen.on && new TextDecoder().decode(chunk).includes(TYPES_QUERY)) {
          if (mode === "stall") {
            frozen.on = true;
            acted++;
          } else if (acted === 0) {
            acted++;
            await from.write(terminated());
            close(from);
            close(to);
            break;
          }
        }
        if (frozen.on) continue; // the server never hears, the client never hears back
        await to.write(chunk);
      }
    } catch { /* closed */ }
  }
  const accepting = (async () => {
    for await (const client of listener) {
      const server = await Deno.connect({ hostname: "127.0.0.1", port: target });
      conns.add(client).add(server);
      const frozen = { on: false };
      pumps.push(pump(client, server, frozen, true), pump(server, client, frozen, false));
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    acted: () => acted,
    async close() {
      listener.close();
      conns.forEach(close);
      await Promise.all([accepting, ...pumps]);
    },
  };
}

Deno.test("the failover's node pools never run the start-up query that can strand a rejection", async () => {
  await using pg = await startPostgres();
  const stalling = relay(pg.port, "stall");
  const client = createNodeClient(
    { name: "pgx", url: `postgres://postgres@127.0.0.1:${stalling.port}/postgres`, address: "x" },
    { applicationName: "connection-errors-test" },
  );
  try {
    // With the types query the probe would stall, time out, end its pool and strand the
    // query's rejection; without it the probe simply answers.
    const recovery = await client.probe(
      (sql) => sql`SELECT pg_is_in_recovery() AS r`.then((rows) => rows[0].r as boolean),
      { timeoutMs: 5000 },
    );
    assert.equal(recovery, false);
    assert.equal(stalling.acted(), 0, "the node pools send no array-types query");
    // A call that does run out of time says so, in one sentence.
    await assert.rejects(
      client.run((sql) => sql`SELECT pg_sleep(5)`, { timeoutMs: 200, what: "sleep" }),
      /pgx gave no answer within 200 ms \(sleep\)/,
    );
  } finally {
    await client.close();
    await stalling.close();
  }
});

Deno.test("a session ended during its start-up query leaves the process running", async () => {
  const lines: string[] = [];
  // What main.ts installs; the runtime's own pool keeps postgres.js's default types query.
  guardSocketErrors(createLogger("test", { sink: (l) => lines.push(l) }));
  await using pg = await startPostgres();
  const ending = relay(pg.port, "terminate");
  const sql = postgres(`postgres://postgres@127.0.0.1:${ending.port}/postgres`, {
    max: 1,
    onnotice: () => {},
  });
  try {
    // The first connection is ended in its types query; the query asked for fails or runs
    // on the next connection, and the pool carries on either way.
    await sql`SELECT 1 AS one`.catch(() => null);
    assert.equal(ending.acted(), 1, "the relay ended a session in its start-up query");
    const [row] = await until(() => sql`SELECT 1 AS one`.catch(() => null), {
      what: "a query answered on a new connection",
    });
    assert.equal(row.one, 1);
    await until(
      () => lines.some((l) => /caught a database driver fault .*kind=stranded-rejection/.test(l)),
      {
        what: "the stranded 57P01 rejection caught and logged",
        state: () => lines,
      },
    );
    assert.match(lines.join("\n"), /code=57P01/);
  } finally {
    await sql.end({ timeout: 1 });
    await ending.close();
  }
});
