/**
 * The sync concern inside two runtimes on one PostgreSQL and Redis: the /state routes
 * (authorisation, validation, server-sent events with a bounded buffer, conflicts), the
 * health and actor views, and the stream cache invalidated across instances.
 */
import assert from "node:assert/strict";
import { concernApi } from "../../concerns/mod.ts";
import { createSyncConcern } from "../../concerns/sync.ts";
import { loadConfig } from "../../concerns/config.ts";
import { type Runtime, startRuntime } from "../../runtime.ts";
import { createStream, startStream } from "../../store/streams.ts";
import { recordConflicts } from "../../store/sync.ts";
import { createUser } from "../../store/users.ts";
import { startPostgres, startRedis } from "../harness/mod.ts";
import { until } from "./support.ts";
import { sseReader } from "../support/sse.ts";
import { ADMIN_HEADERS, TEST_ADMIN_TOKEN, TEST_STATE_WRITE_TOKEN } from "../support/auth.ts";

const KEY = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
const TOKEN = TEST_STATE_WRITE_TOKEN;
/** What the write token may read (state:read); the rest needs an operator. */
const reader = { authorization: `Bearer ${TOKEN}` };
const auth = { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" };

Deno.test("state routes and the sync concern in two runtimes", async (t) => {
  await using pg = await startPostgres();
  await using redis = await startRedis();
  const dbUrl = await pg.createDatabase();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-sync-api-" });
  const runtimes: Runtime[] = [];
  const start = async (id: string) => {
    const config = loadConfig({
      env: {
        DATABASE_URL: dbUrl,
        REDIS_URL: redis.url,
        RS_SECRET_KEY: KEY,
        RS_PORT: "0",
        RS_DATA_DIR: dataDir,
        RS_INSTANCE_ID: id,
        RS_KEY_PREFIX: "rsapi:",
        RS_LEASE_TTL_MS: "1000",
        RS_STATE_WRITE_TOKEN: TOKEN,
        RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
      },
      args: [],
    });
    const rt = await startRuntime(config, {
      concerns: {
        sync: (services, c) =>
          createSyncConcern(services, {
            ...c.concerns.sync,
            sseBuffer: 4,
            headsMs: 200,
            snapshotMs: 60_000,
            repairRetryMs: 50,
          }),
      },
    });
    runtimes.push(rt);
    return rt;
  };

  try {
    const a = await start("api-a");
    const b = await start("api-b");

    await t.step("writes need the bearer token", async () => {
      const body = JSON.stringify({ title: "x" });
      const none = await fetch(`${a.url}/state/stream/1`, { method: "PATCH", body });
      assert.equal(none.status, 401);
      assert.equal((await none.json()).error.code, "UNAUTHORIZED");
      const wrong = await fetch(`${a.url}/state/stream/1`, {
        method: "PATCH",
        body,
        headers: { authorization: `Bearer ${TOKEN}x` },
      });
      assert.equal(wrong.status, 401);
      await wrong.body?.cancel();

      // Writing state is for programs with a state:write token: not even the admin token.
      const admin = await fetch(`${a.url}/state/stream/1`, {
        method: "PATCH",
        body,
        headers: { ...ADMIN_HEADERS, "content-type": "application/json" },
      });
      assert.equal(admin.status, 403);
      assert.equal((await admin.json()).error.code, "FORBIDDEN");
      // JSON only with a JSON content type (finding 8).
      const text = await fetch(`${a.url}/state/stream/1`, {
        method: "PATCH",
        body,
        headers: { authorization: `Bearer ${TOKEN}`, "content-type": "text/plain" },
      });
      assert.equal(text.status, 415);
      assert.equal((await text.json()).error.code, "UNSUPPORTED_MEDIA_TYPE");
    });

    await t.step("a PATCH is validated, applied and visible on the other instance", async () => {
      const bad = await fetch(`${a.url}/state/stream/1`, {
        method: "PATCH",
        headers: auth,
        body: JSON.stringify({ viewers: "lots" }),
      });
      assert.equal(bad.status, 400);
      assert.match((await bad.json()).error.message, /viewers is a counter/);
      const badField = await fetch(`${a.url}/state/stream/1`, {
        method: "PATCH",
        headers: auth,
        body: JSON.stringify({ "no spaces": 1 }),
      });
      assert.equal(badField.status, 400);
      await badField.body?.cancel();
      const badType = await fetch(`${a.url}/state/Stream!/1`, { headers: reader });
      assert.equal(badType.status, 400);
      await badType.body?.cancel();

      const ok = await fetch(`${a.url}/state/stream/1`, {
        method: "PATCH",
        headers: auth,
        body: JSON.stringify({ title: "Finals", viewers: { inc: 3 } }),
      });
      assert.equal(ok.status, 200);
      assert.deepEqual((await ok.json()).entity.state, { title: "Finals", viewers: 3 });
      await until(async () => {
        const res = await fetch(`${b.url}/state/stream/1`, { headers: reader });
        const body = await res.json();
        return res.status === 200 && body.entity.state.viewers === 3;
      }, "the entity on B");
      // PostgreSQL alone (snapshot + deltas) rebuilds the same state.
      await until(async () => {
        const res = await fetch(`${b.url}/state/stream/1?source=db`, { headers: reader });
        // Read the body whatever the status: an unread one leaks (the test's sanitizer says so).
        const body = await res.json();
        return res.status === 200 && body.entity.state.title === "Finals";
      }, "the entity from the database");
      const missing = await fetch(`${b.url}/state/stream/404`, { headers: reader });
      assert.equal(missing.status, 404);
      assert.equal((await missing.json()).error.code, "STATE_NOT_FOUND");
    });

    await t.step("finding 8: fields named like Object.prototype members are data", async () => {
      const fields = { constructor: "c", toString: "t", hasOwnProperty: 7, valueOf: false };
      const ok = await fetch(`${a.url}/state/stream/proto`, {
        method: "PATCH",
        headers: auth,
        body: JSON.stringify(fields),
      });
      assert.equal(ok.status, 200);
      assert.deepEqual((await ok.json()).entity.state, fields);
      await until(async () => {
        const res = await fetch(`${b.url}/state/stream/proto`, { headers: reader });
        // Read the body whatever the status (a 404 before the change reached B): an unread one
        // leaks, and the sanitizer fails the test for it.
        const body = await res.json();
        return res.status === 200 && body.entity.state.constructor === "c";
      }, "the prototype-named fields on B");
      await until(async () => {
        const res = await fetch(`${b.url}/state/stream/proto?source=db`, { headers: reader });
        if (res.status !== 200) {
          await res.body?.cancel();
          return false;
        }
        const state = (await res.json()).entity.state;
        return state.toString === "t" && state.hasOwnProperty === 7 && state.valueOf === false;
      }, "the prototype-named fields rebuilt from the database");
      // `__proto__` cannot be data in a JS object: refused, never accepted and dropped.
      const proto = await fetch(`${a.url}/state/stream/proto`, {
        method: "PATCH",
        headers: auth,
        body: '{"__proto__":{"polluted":true},"title":"x"}',
      });
      assert.equal(proto.status, 400);
      assert.equal((await proto.json()).error.code, "VALIDATION_FAILED");
      const after = await fetch(`${a.url}/state/stream/proto`, { headers: reader });
      assert.equal((await after.json()).entity.state.title, undefined, "no partial write");
      assert.equal(({} as Record<string, unknown>).polluted, undefined);
    });

    await t.step("the event stream follows a pattern across instances", async () => {
      const res = await fetch(`${b.url}/state/stream?pattern=stream.*`, { headers: reader });
      assert.equal(res.headers.get("content-type"), "text/event-stream");
      const sse = sseReader(res);
      assert.equal((await sse.next()).event, "hello");
      await fetch(`${a.url}/state/stream/1`, {
        method: "PATCH",
        headers: auth,
        body: JSON.stringify({ title: "Grand finals" }),
      }).then((r) => r.body?.cancel());
      const change = await sse.next();
      assert.equal(change.event, "change");
      assert.deepEqual(change.data.data, {
        type: "stream",
        id: "1",
        changes: { title: "Grand finals" },
      });
      concernApi(a.concerns, "sync")!.node.publish("stream.started", { streamId: 1, userId: 5 });
      const kinds = new Set<string>();
      while (!kinds.has("event")) kinds.add((await sse.next()).event);
      await sse.cancel();
    });

    await t.step("a slow client is told it missed events; the node never waits", async () => {
      const res = await fetch(`${a.url}/state/stream?pattern=stream.changed`, { headers: reader });
      const sse = sseReader(res);
      assert.equal((await sse.next()).event, "hello");
      const node = concernApi(a.concerns, "sync")!.node;
      // One synchronous burst: the client's buffer (4) overflows before it can read, and the
      // node cannot have waited for the client (nothing in a synchronous loop can).
      for (let i = 0; i < 200; i++) node.applyDelta("stream", 9, { fps: i });
      const first = await sse.next();
      assert.equal(first.event, "missed");
      assert.ok((first.data.missed as number) >= 190, JSON.stringify(first.data));
      assert.match(first.data.hint as string, /refetch/);
      const rest: number[] = [];
      while (rest.length < 4) {
        const e = await sse.next();
        rest.push((e.data.data as { changes: { fps: number } }).changes.fps);
      }
      assert.deepEqual(rest, [196, 197, 198, 199], "the newest events are kept");
      await sse.cancel();
    });

    await t.step(
      "stream data: a change on one instance invalidates the cache of the other",
      async () => {
        const user = await createUser(a.db.sql, {
          username: "syncer",
          email: "syncer@example.com",
          password: "long enough password",
        }, { hashing: { ln: 10 } });
        const { stream } = await createStream(a.db.sql, { userId: user.id, name: "Cached" });
        const cacheB = concernApi(b.concerns, "sync")!.streams;
        assert.equal((await cacheB.get(String(stream.id)))?.isLive, false);
        assert.equal(cacheB.peek(String(stream.id))?.isLive, false, "cached on B");
        await startStream(a.db.sql, stream.id);
        await until(() => cacheB.peek(String(stream.id)) === undefined, "the invalidation on B");
        assert.equal((await cacheB.get(String(stream.id)))?.isLive, true);
      },
    );

    await t.step("conflicts are listed and resolved by an operator", async () => {
      await recordConflicts(a.db.sql, [{
        entityType: "user",
        entityId: "42",
        field: "email",
        key: "user:42/email/x@1,y@1",
        candidates: [{ value: "x@example.com" }, { value: "y@example.com" }],
        winner: { value: "y@example.com" },
        detectedBy: "api-a",
        detectedAt: new Date(),
      }]);
      const list = await fetch(`${a.url}/state/conflicts`, { headers: auth });
      const { conflicts } = await list.json();
      assert.equal(conflicts.length, 1);
      const anon = await fetch(`${a.url}/state/conflicts`);
      assert.equal(anon.status, 401);
      await anon.body?.cancel();
      const res = await fetch(`${a.url}/state/conflicts/${conflicts[0].id}/resolve`, {
        method: "POST",
        headers: auth,
        body: JSON.stringify({ value: "x@example.com" }),
      });
      assert.equal(res.status, 200);
      const body = await res.json();
      assert.equal(body.conflict.status, "resolved");
      assert.equal(body.entity.state.email, "x@example.com");
      await until(
        () =>
          concernApi(b.concerns, "sync")!.node.getSnapshot("user", 42)?.state.email ===
            "x@example.com",
        "the resolution on B",
      );
      const again = await fetch(`${a.url}/state/conflicts/${conflicts[0].id}/resolve`, {
        method: "POST",
        headers: auth,
        body: JSON.stringify({ value: "y@example.com" }),
      });
      assert.equal(again.status, 404);
      await again.body?.cancel();
    });

    await t.step("health and the actor view report the sync node", async () => {
      const health = await (await fetch(`${a.url}/health`, { headers: ADMIN_HEADERS })).json();
      assert.equal(health.checks.sync.ok, true);
      assert.equal(health.checks.sync.caughtUp, true);
      const actors = await (await fetch(`${a.url}/actors`, { headers: ADMIN_HEADERS })).json();
      const sync = actors.actors.find((x: { id: string }) => x.id === "sync");
      assert.ok(sync, "the sync actor is listed");
      assert.equal(sync.machine, "sync_node");
      assert.match(sync.summary.origin, /^api-a~/);
      const state = await (await fetch(`${a.url}/state`, { headers: reader })).json();
      const stateB = await (await fetch(`${b.url}/state`, { headers: reader })).json();
      await until(async () => {
        const x = await (await fetch(`${a.url}/state`, { headers: reader })).json();
        const y = await (await fetch(`${b.url}/state`, { headers: reader })).json();
        return x.digest === y.digest;
      }, "equal digests");
      assert.match(state.digest, /^[0-9a-f]{64}$/);
      assert.equal(stateB.instance, "api-b");
    });
  } finally {
    for (const rt of runtimes.reverse()) await rt.stop();
    await Deno.remove(dataDir, { recursive: true });
  }
});
