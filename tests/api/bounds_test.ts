/**
 * Regression tests of findings 1 and 6 of issue 14 (no pathological input, bounded
 * resources) against one runtime on real PostgreSQL and Redis (tests/harness):
 *
 * - finding 1: a subscription pattern never becomes a regular expression; a pattern that
 *   froze an instance is served, one with regex syntax is refused;
 * - finding 6: event streams are capped per client address (429) and in all (503); the
 *   inspector forgets finished login attempts; a login storm waits for a bounded number of
 *   password hashes and the excess is refused with 503 and Retry-After.
 *
 * The inspector's retention with an injected clock is tested in
 * tests/actors/runtime/inspector_test.ts, the incremental GET /state digest in
 * tests/sync/digest_test.ts.
 */
import assert from "node:assert/strict";
import { loadConfig } from "../../concerns/config.ts";
import { type Runtime, startRuntime } from "../../runtime.ts";
import { createUser } from "../../store/users.ts";
import { startPostgres, startRedis } from "../harness/mod.ts";
import {
  ADMIN_HEADERS,
  TEST_ADMIN_TOKEN,
  TEST_STATE_WRITE_TOKEN,
  WRITER_HEADERS,
} from "../support/auth.ts";
import { until } from "../support/instance.ts";

/** `app.request` as a client at `address` (the socket address api/client.ts reads). */
function from(address: string) {
  return { remoteAddr: { hostname: address, port: 40000, transport: "tcp" } };
}

async function errorOf(res: Response): Promise<string | null> {
  const body = await res.json().catch(() => null);
  return body?.error?.code ?? null;
}

Deno.test("bounded resources (findings 1 and 6)", async (t) => {
  await using pg = await startPostgres();
  await using redis = await startRedis();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-bounds-" });
  const config = loadConfig({
    env: {
      DATABASE_URL: await pg.createDatabase(),
      REDIS_URL: redis.url,
      RS_KEY_PREFIX: `bounds${crypto.randomUUID().slice(0, 8)}:`,
      RS_SECRET_KEY: btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32)))),
      RS_DATA_DIR: dataDir,
      RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
      RS_STATE_WRITE_TOKEN: TEST_STATE_WRITE_TOKEN,
      BACKUP_SCHEDULE_FULL: "off",
      LOG_LEVEL: "error",
      RS_SSE_MAX_PER_CLIENT: "2",
      RS_SSE_MAX_TOTAL: "3",
      RS_INSPECTOR_RETENTION_S: "0",
      RS_HASH_CONCURRENCY: "1",
      RS_HASH_QUEUE: "1",
    },
    args: [],
  });
  let rt: Runtime | null = null;
  const open: Response[] = [];
  try {
    rt = await startRuntime(config, { serve: false });
    const app = rt.app;

    await t.step(
      "finding 1: a pattern that froze an instance is served in linear time",
      async () => {
        // Matched against a long channel name, this pattern took a backtracking regex
        // exponential time; the segment glob walks it once.
        const pattern = "*".repeat(60) + "z";
        const res = await app.request(
          `/state/stream?pattern=${encodeURIComponent(pattern)}`,
          { headers: ADMIN_HEADERS },
          from("10.0.1.1"),
        );
        assert.equal(res.status, 200);
        const patch = await app.request(`/state/stream/${"a".repeat(120)}`, {
          method: "PATCH",
          headers: { ...WRITER_HEADERS, "content-type": "application/json" },
          body: JSON.stringify({ title: "x".repeat(100) }),
        });
        assert.equal(patch.status, 200, await patch.clone().text());
        await patch.body?.cancel();
        const live = await app.request("/health/live");
        assert.equal(live.status, 200);
        await live.body?.cancel();
        await res.body?.cancel();
      },
    );

    await t.step("finding 1: regular-expression syntax in a pattern is refused", async () => {
      for (const pattern of ["(a+)+$", "[a-z]+", "a{1,99}", "\\d"]) {
        const res = await app.request(
          `/state/stream?pattern=${encodeURIComponent(pattern)}`,
          { headers: ADMIN_HEADERS },
          from("10.0.1.2"),
        );
        assert.equal(res.status, 400, pattern);
        assert.equal(await errorOf(res), "VALIDATION_FAILED");
      }
    });

    await t.step("finding 6: event streams per client address are capped (429)", async () => {
      for (let i = 0; i < 2; i++) {
        const res = await app.request(
          "/actors/stream",
          { headers: ADMIN_HEADERS },
          from("10.0.0.1"),
        );
        assert.equal(res.status, 200);
        open.push(res);
      }
      const third = await app.request(
        "/state/stream",
        { headers: ADMIN_HEADERS },
        from("10.0.0.1"),
      );
      assert.equal(third.status, 429);
      assert.ok(Number(third.headers.get("retry-after")) >= 1, "Retry-After");
      assert.equal(await errorOf(third), "STREAMS_PER_CLIENT_EXCEEDED");
    });

    await t.step("finding 6: event streams of the instance are capped (503)", async () => {
      const other = await app.request(
        "/state/stream",
        { headers: ADMIN_HEADERS },
        from("10.0.0.2"),
      );
      assert.equal(other.status, 200, "another client still gets one");
      open.push(other);
      const full = await app.request(
        "/console/events",
        { headers: ADMIN_HEADERS },
        from("10.0.0.3"),
      );
      assert.equal(full.status, 503);
      assert.ok(Number(full.headers.get("retry-after")) >= 1, "Retry-After");
      assert.equal(await errorOf(full), "STREAMS_EXHAUSTED");
    });

    await t.step("a stream that ends gives its slot back", async () => {
      await open.shift()!.body!.cancel();
      const again = await until(async () => {
        const res = await app.request(
          "/actors/stream",
          { headers: ADMIN_HEADERS },
          from("10.0.0.1"),
        );
        if (res.status === 200) return res;
        await res.body?.cancel();
        return null;
      }, { what: "a stream slot for 10.0.0.1 after one of its streams closed" });
      open.push(again);
      for (const res of open.splice(0)) await res.body?.cancel();
    });

    await t.step("finding 6: a login storm is refused beyond the hashing queue (503)", async () => {
      // One hash at a time and one waiting: of a burst of logins most are refused at once,
      // each with Retry-After, instead of all holding 32 MiB of scrypt memory.
      const answers = await Promise.all(Array.from({ length: 8 }, async (_, i) => {
        const res = await app.request("/auth/login", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ login: `storm-${i}`, password: "wrong password" }),
        }, from(`10.0.2.${i + 1}`));
        return {
          status: res.status,
          code: await errorOf(res),
          retryAfter: res.headers.get("retry-after"),
        };
      }));
      const busy = answers.filter((a) => a.status === 503);
      assert.ok(busy.length >= 1, `some logins were refused: ${JSON.stringify(answers)}`);
      for (const a of busy) {
        assert.equal(a.code, "SERVER_BUSY");
        assert.ok(Number(a.retryAfter) >= 1, "Retry-After");
      }
      for (const a of answers.filter((a) => a.status !== 503)) {
        assert.equal(a.status, 401, JSON.stringify(a));
      }
    });

    await t.step("after the storm a login works, and its attempt leaves no view", async () => {
      await createUser(rt!.db.sql, {
        username: "calm",
        email: "calm@example.com",
        password: "calm password 1",
      }, { hashing: { ln: 10 } });
      const res = await app.request("/auth/login", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ login: "calm", password: "calm password 1" }),
      }, from("10.0.3.1"));
      assert.equal(res.status, 200, await res.clone().text());
      await res.body?.cancel();
      // Every attempt above was an actor `login:<uuid>`; with a retention of 0 s the
      // inspector drops each view once the attempt stopped.
      await until(async () => {
        const actors = await (await app.request("/actors", { headers: ADMIN_HEADERS })).json();
        return !actors.actors.some((a: { id: string }) => a.id.startsWith("login:"));
      }, {
        what: "no login:<uuid> view in /actors",
        state: () => rt!.inspector.list().map((v) => `${v.path} ${v.status}`),
      });
    });
  } finally {
    for (const res of open) await res.body?.cancel();
    await rt?.stop();
    await Deno.remove(dataDir, { recursive: true });
  }
});
