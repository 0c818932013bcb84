import assert from "node:assert/strict";
import { isRuntimeError } from "../../lib/errors.ts";
import { openDatabase } from "../../store/database.ts";
import { migrate } from "../../store/migrations.ts";
import { createUser, getUserByUsername, verifyCredentials } from "../../store/users.ts";
import { createEventStore } from "../../store/event_store.ts";
import { createStream, getStreamByKey, startStream } from "../../store/streams.ts";
import { freePort, startPostgres } from "../harness/mod.ts";
import { until } from "../support/instance.ts";

const fastHash = { hashing: { ln: 10 } };

Deno.test("database: a server that never answers fails start-up with a clear error", async () => {
  const port = await freePort();
  const slept: number[] = [];
  const err = await openDatabase({
    url: `postgres://postgres:hunter2@127.0.0.1:${port}/rootstream`,
    connectTimeoutS: 1,
    sleep: (ms) => {
      slept.push(ms);
      return new Promise((r) => setTimeout(r, Math.min(ms, 50)));
    },
  }).then(() => null, (e) => e);
  assert.ok(isRuntimeError(err, "DATABASE_CONNECT_FAILED"), String(err));
  assert.match(
    err.message,
    /Cannot reach the database at postgres:\/\/postgres:\*\*\*@127\.0\.0\.1/,
  );
  assert.match(err.message, /after \d+ attempts over 1 s/);
  assert.ok(!err.message.includes("hunter2"), "the password is never printed");
  // Backoff grows between attempts.
  assert.ok(slept.length >= 2 && slept[1] > slept[0], `backoff ${slept}`);
});

Deno.test("database: start-up waits for a server that comes up late", async () => {
  await using pg = await startPostgres();
  await pg.stop();
  const opening = openDatabase({ url: pg.url, connectTimeoutS: 30 });
  await new Promise((r) => setTimeout(r, 700)); // the server stays down a while (the scenario)
  await pg.start();
  const db = await opening;
  try {
    assert.equal(db.mode, "postgres");
    assert.equal((await db.ping()).ok, true);
  } finally {
    await db.close();
  }
});

Deno.test("database: lost while running, then recovers", async () => {
  await using pg = await startPostgres();
  const db = await openDatabase({ url: pg.url, connectTimeoutS: 5 });
  try {
    assert.equal((await db.ping()).ok, true);
    await pg.kill("SIGKILL");
    const down = await db.ping(1500);
    assert.equal(down.ok, false);
    assert.ok(down.error);
    await pg.start();
    let last: unknown = null;
    await until(async () => (last = await db.ping(1000)).ok, {
      what: "the pool reconnecting once the server is back",
      ms: 20_000,
      state: () => last,
    });
  } finally {
    await db.close(0);
  }
});

Deno.test({
  name: "database: embedded PGlite runs the same data layer and guards its directory",
  // PGlite's wasm runtime keeps internal async work alive past close().
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    const dataDir = await Deno.makeTempDir({ prefix: "rs-embedded-" });
    const db = await openDatabase({ dataDir });
    try {
      await t.step("it is embedded and migrates", async () => {
        assert.equal(db.mode, "embedded");
        const report = await migrate(db.sql);
        assert.ok(report.applied.includes("001_initial_schema"));
      });
      await t.step("users, streams and the event store work unchanged", async () => {
        const user = await createUser(db.sql, {
          username: "embedded_user",
          email: "e@example.com",
          password: "correct horse battery",
          displayName: "'; DROP TABLE users; --",
        }, fastHash);
        assert.equal((await getUserByUsername(db.sql, "EMBEDDED_USER"))?.id, user.id);
        assert.equal(
          (await getUserByUsername(db.sql, "embedded_user"))?.displayName,
          "'; DROP TABLE users; --",
        );
        assert.ok(
          await verifyCredentials(db.sql, {
            login: "e@example.com",
            password: "correct horse battery",
          }, fastHash),
        );
        const { stream, streamKey } = await createStream(db.sql, { userId: user.id, name: "s" });
        assert.equal((await getStreamByKey(db.sql, streamKey))?.id, stream.id);
        await startStream(db.sql, stream.id);
        const events = createEventStore(db.sql);
        await events.append({ type: "stream", id: String(stream.id) }, [
          { type: "started", data: { bitrate: 6000 } },
        ], { expectedVersion: 0 });
        const err = await events.append({ type: "stream", id: String(stream.id) }, [
          { type: "started", data: {} },
        ], { expectedVersion: 0 }).then(() => null, (e) => e);
        assert.ok(isRuntimeError(err, "EVENT_VERSION_CONFLICT"));
      });
      await t.step("a second process on the same directory is refused", async () => {
        const child = new Deno.Command(Deno.execPath(), {
          args: [
            "eval",
            `import { openDatabase } from "${new URL("../../store/database.ts", import.meta.url)}";
             try { await openDatabase({ dataDir: ${
              JSON.stringify(dataDir)
            } }); console.log("opened"); }
             catch (e) { console.log(e.code + ": " + e.message); }`,
          ],
          stdout: "piped",
          stderr: "null",
          cwd: new URL("../..", import.meta.url).pathname,
        });
        const out = new TextDecoder().decode((await child.output()).stdout);
        assert.match(
          out,
          /DATABASE_CONNECT_FAILED: The embedded database in .* is in use by process/,
        );
      });
    } finally {
      await db.close();
    }
    await t.step("data survives a restart", async () => {
      // A lock left by a crashed instance whose pid now belongs to another live process
      // (pid 1, which did not start when the lock says) is stale: it does not block the start.
      await Deno.writeTextFile(`${dataDir}/pgdata.lock`, `1\n${Date.now() - 60_000}\n`);
      const again = await openDatabase({ dataDir });
      try {
        assert.ok(await getUserByUsername(again.sql, "embedded_user"));
      } finally {
        await again.close();
        await Deno.remove(dataDir, { recursive: true });
      }
    });
  },
});
