import assert from "node:assert/strict";
import { loadConfig } from "../concerns/config.ts";
import { startRuntime } from "../runtime.ts";
import { createUser } from "../store/users.ts";
import { createStream, startStream } from "../store/streams.ts";
import { startPostgres, startRedis } from "./harness/mod.ts";
import { until } from "./support/instance.ts";
import { ADMIN_HEADERS, TEST_ADMIN_TOKEN } from "./support/auth.ts";

const KEY = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));

async function getJson(url: string) {
  const res = await fetch(url, { headers: ADMIN_HEADERS });
  return { status: res.status, body: await res.json() };
}

Deno.test("runtime on real PostgreSQL and Redis", async (t) => {
  await using pg = await startPostgres();
  await using redis = await startRedis();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-runtime-" });
  const config = loadConfig({
    env: {
      DATABASE_URL: await pg.createDatabase(),
      REDIS_URL: redis.url,
      RS_SECRET_KEY: KEY,
      RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
      RS_PORT: "0",
      RS_DATA_DIR: dataDir,
      DATABASE_CONNECT_TIMEOUT_S: "5",
    },
    args: [],
  });
  const rt = await startRuntime(config);
  try {
    await t.step("health is ok and names the mode", async () => {
      const { status, body } = await getJson(`${rt.url}/health`);
      assert.equal(status, 200);
      assert.equal(body.status, "ok");
      assert.deepEqual(body.mode, { database: "postgres", bus: "redis" });
      assert.equal(body.checks.database.ok, true);
      assert.equal(body.checks.redis.ok, true);
      assert.equal(body.checks.migrations.latest, rt.migrations.latest);
      assert.ok(body.checks.migrations.applied >= 1);
      assert.deepEqual(Object.keys(body.unavailable), []);
    });

    let streamId = 0;
    await t.step("the public stream directory serves live streams", async () => {
      const user = await createUser(rt.db.sql, {
        username: "caster",
        email: "caster@example.com",
        password: "long enough password",
        displayName: "Robert'); DROP TABLE streams;--",
      }, { hashing: { ln: 10 } });
      const { stream } = await createStream(rt.db.sql, {
        userId: user.id,
        name: "<script>alert(1)</script>",
      });
      streamId = stream.id;
      await startStream(rt.db.sql, stream.id);
      const list = await getJson(`${rt.url}/streams`);
      assert.equal(list.status, 200);
      assert.equal(list.body.streams.length, 1);
      assert.equal(list.body.streams[0].name, "<script>alert(1)</script>");
      assert.equal(list.body.streams[0].streamKeyPrefix, undefined, "key prefix stays private");
      const one = await getJson(`${rt.url}/streams/${stream.id}`);
      assert.equal(one.body.stream.isLive, true);
    });

    await t.step("bad ids and unknown streams get JSON errors with codes", async () => {
      const bad = await getJson(`${rt.url}/streams/1%20OR%201=1`);
      assert.equal(bad.status, 400);
      assert.equal(bad.body.error.code, "VALIDATION_FAILED");
      const missing = await getJson(`${rt.url}/streams/999999`);
      assert.equal(missing.status, 404);
      assert.equal(missing.body.error.code, "STREAM_NOT_FOUND");
      const limit = await getJson(`${rt.url}/streams?limit=5000`);
      assert.equal(limit.status, 400);
    });

    await t.step(
      "database lost: health turns red, requests get 503, then it recovers",
      async () => {
        await pg.kill("SIGKILL");
        const health = await getJson(`${rt.url}/health`);
        assert.equal(health.status, 503);
        assert.equal(health.body.status, "unavailable");
        assert.equal(health.body.checks.database.ok, false);
        const req = await getJson(`${rt.url}/streams/${streamId}`);
        assert.equal(req.status, 503);
        assert.equal(req.body.error.code, "DATABASE_UNAVAILABLE");
        await pg.start();
        let last: unknown = null;
        await until(async () => (last = await getJson(`${rt.url}/health`)).status === 200, {
          what: "/health answering 200 once PostgreSQL is back",
          ms: 20_000,
          state: () => last,
        });
        await until(async () => (await getJson(`${rt.url}/streams/${streamId}`)).status === 200, {
          what: "the stream readable again once PostgreSQL is back",
          ms: 20_000,
        });
      },
    );

    await t.step("redis lost: health says degraded (still serving), then ok again", async () => {
      await redis.kill("SIGKILL");
      const health = await getJson(`${rt.url}/health`);
      assert.equal(health.status, 200);
      assert.equal(health.body.status, "degraded");
      assert.equal(health.body.checks.redis.ok, false);
      await redis.start();
      let last: unknown = null;
      await until(async () => (last = await getJson(`${rt.url}/health`)).body.status === "ok", {
        what: '/health saying "ok" once Redis is back',
        ms: 20_000,
        state: () => last,
      });
    });

    await t.step(
      "/metrics counts each supervised actor (metrics gets the supervisor)",
      async () => {
        const text = await (await fetch(`${rt.url}/metrics`, { headers: ADMIN_HEADERS })).text();
        for (const actor of ["cluster", "sync", "sessions", "metrics"]) {
          assert.match(text, new RegExp(`^rootstream_actor_up\\{actor="${actor}"\\} 1$`, "m"));
          assert.match(
            text,
            new RegExp(`^rootstream_actor_restarts_total\\{actor="${actor}"\\} \\d+$`, "m"),
          );
        }
      },
    );

    await t.step("unknown routes answer a JSON 404", async () => {
      const res = await getJson(`${rt.url}/no/such/route`);
      assert.equal(res.status, 404);
      assert.equal(res.body.error.code, "NOT_FOUND");
    });
  } finally {
    await rt.stop();
    await Deno.remove(dataDir, { recursive: true });
  }
});
