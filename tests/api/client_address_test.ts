/**
 * Finding 5: client addresses. Behind N trusted proxies the client is the N-th
 * `X-Forwarded-For` entry from the right, so what a client writes into the header itself
 * changes nothing; login limits are keyed per real client, and a flood from one client
 * cannot lock an account (or everyone) out for the others. Served on a real socket, with
 * the sessions service on real PostgreSQL and Redis.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { type AnyActorRef, createActor } from "xstate";
import { createSessionsActorSpec, createSessionService } from "../../actors/sessions/mod.ts";
import { loadSessionsSettings } from "../../actors/sessions/settings.ts";
import type { RuntimeServices } from "../../actors/runtime/types.ts";
import { forwardedFor } from "../../api/client.ts";
import { addSessionRoutes } from "../../api/sessions.ts";
import { authBackendOf } from "../../concerns/mod.ts";
import { RuntimeError } from "../../lib/errors.ts";
import { createMessageAuth } from "../../lib/message_auth.ts";
import { createRedisBus } from "../../store/bus.ts";
import { migrate } from "../../store/migrations.ts";
import { closeRedis, createKeyspace, createRedisClient } from "../../store/redis.ts";
import type { Sql } from "../../store/types.ts";
import { createUser } from "../../store/users.ts";
import { startPostgres, startRedis } from "../harness/mod.ts";
import { testApp } from "../support/auth.ts";

const PASSWORD = "correct horse battery staple";

Deno.test("client address: the N-th X-Forwarded-For entry from the right", () => {
  assert.equal(forwardedFor("203.0.113.7", 1), "203.0.113.7");
  assert.equal(forwardedFor("10.6.6.6, 203.0.113.7", 1), "203.0.113.7");
  assert.equal(forwardedFor("10.6.6.6,203.0.113.7, 192.0.2.1", 2), "203.0.113.7");
  assert.equal(forwardedFor("2001:db8::1", 1), "2001:db8::1");
  // Fewer entries than hops: the request skipped an outer proxy; the leftmost is all there is.
  assert.equal(forwardedFor("203.0.113.7", 3), "203.0.113.7");
  // Not an address: no client address from the header.
  assert.equal(forwardedFor("203.0.113.7, evil", 1), null);
  assert.equal(forwardedFor("", 1), null);
  assert.equal(forwardedFor(",".repeat(100_000) + "203.0.113.7", 1), "203.0.113.7");
});

Deno.test("client address: RS_TRUST_PROXY=true stops start-up saying what to set", () => {
  assert.equal(loadSessionsSettings({}).trustedProxyHops, 0);
  assert.equal(loadSessionsSettings({ RS_TRUSTED_PROXY_HOPS: "2" }).trustedProxyHops, 2);
  assert.equal(loadSessionsSettings({ RS_TRUST_PROXY: "false" }).trustedProxyHops, 0);
  assert.throws(
    () => loadSessionsSettings({ RS_TRUST_PROXY: "true" }),
    (err: unknown) =>
      err instanceof RuntimeError && err.code === "CONFIG_INVALID" &&
      /RS_TRUST_PROXY was replaced by RS_TRUSTED_PROXY_HOPS/.test(err.message),
  );
  assert.throws(() => loadSessionsSettings({ RS_TRUSTED_PROXY_HOPS: "-1" }), /RS_TRUSTED_PROXY/);
});

Deno.test("client address: login limits per real client (finding 5)", async (t) => {
  await using pg = await startPostgres();
  await using redisServer = await startRedis();
  const dbUrl = await pg.createDatabase();
  const sql = postgres(dbUrl, { max: 4, onnotice: () => {} }) as Sql;
  await migrate(sql);
  const redis = createRedisClient({
    url: redisServer.url,
    sentinels: [],
    sentinelMaster: "m",
    sentinelPassword: null,
    keyPrefix: "rs:",
  }, { name: "client-address" });
  await redis.connect();
  const keyspace = createKeyspace("rs:");
  const secretKey = crypto.getRandomValues(new Uint8Array(32));
  const auth = createMessageAuth(secretKey);
  const bus = createRedisBus(redis, { keyspace, auth });
  let actor: AnyActorRef | undefined = undefined;
  // The default limits (10 per client+login, 100 per client, 50 per login): those the
  // finding counted. Only the hashing is cheap, so a hundred attempts take no time.
  const service = createSessionService({
    sql,
    redis,
    keyspace,
    bus,
    secretKey,
    auth,
    sessionsActor: () => actor,
    options: { hashing: { ln: 4 } },
  });
  const spec = createSessionsActorSpec(service);
  const services = {} as RuntimeServices;
  const started = createActor(spec.create(services), { input: spec.input?.(services) });
  started.start();
  actor = started;
  for (const username of ["alice", "bob"]) {
    await createUser(sql, { username, email: `${username}@example.com`, password: PASSWORD }, {
      hashing: { ln: 4 },
    });
  }

  // One app per deployment shape, each on a real socket (the peer is 127.0.0.1: the "proxy").
  const servers: Deno.HttpServer[] = [];
  function serve(hops: number): string {
    const app = testApp({ backend: authBackendOf(service), trustedProxyHops: hops });
    addSessionRoutes(app, { sessions: service, trustedProxyHops: hops });
    const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, app.fetch);
    servers.push(server);
    return `http://127.0.0.1:${(server.addr as Deno.NetAddr).port}`;
  }
  const behindNginx = serve(1);
  const direct = serve(0);

  async function login(
    base: string,
    body: { login: string; password: string },
    forwarded?: string,
  ): Promise<{ status: number; code: string | null }> {
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (forwarded !== undefined) headers["x-forwarded-for"] = forwarded;
    const res = await fetch(`${base}/auth/login`, {
      method: "POST",
      headers,
      body: JSON.stringify(body),
    });
    const reply = await res.json();
    return { status: res.status, code: reply?.error?.code ?? null };
  }
  const wrong = (login: string) => ({ login, password: "not the password" });

  try {
    await t.step("a spoofed X-Forwarded-For cannot evade the login limit", async () => {
      // The client writes a fresh address into the header each time; the proxy appends the
      // one it saw (203.0.113.7). Only that one counts.
      for (let i = 1; i <= 10; i++) {
        const r = await login(behindNginx, wrong("alice"), `10.0.0.${i}, 203.0.113.7`);
        assert.equal(r.code, "INVALID_CREDENTIALS", `attempt ${i}`);
      }
      const eleventh = await login(behindNginx, wrong("alice"), "10.0.0.99, 203.0.113.7");
      assert.deepEqual(eleventh, { status: 429, code: "RATE_LIMITED" });
      // Even with the right password: that client is limited for alice.
      const right = await login(behindNginx, { login: "alice", password: PASSWORD }, "203.0.113.7");
      assert.deepEqual(right, { status: 429, code: "RATE_LIMITED" });
    });

    await t.step("the flood for alice does not lock alice out for another client", async () => {
      const other = await login(
        behindNginx,
        { login: "alice", password: PASSWORD },
        "198.51.100.20",
      );
      assert.equal(other.status, 200, JSON.stringify(other));
    });

    await t.step("one client cannot use up alice's account-wide budget", async () => {
      // The flooding client keeps going: refused before anything counts account-wide.
      for (let i = 0; i < 60; i++) {
        const r = await login(behindNginx, wrong("alice"), "203.0.113.7");
        assert.equal(r.code, "RATE_LIMITED");
      }
      // A second client guesses too (its own 10), then a third still gets in.
      for (let i = 0; i < 10; i++) {
        await login(behindNginx, wrong("alice"), "203.0.113.8");
      }
      const third = await login(behindNginx, { login: "alice", password: PASSWORD }, "192.0.2.30");
      assert.equal(third.status, 200, JSON.stringify(third));
    });

    await t.step(
      "a flood over many logins from one client does not lock out everyone",
      async () => {
        let limited = 0;
        for (let i = 0; i < 101; i++) {
          const r = await login(behindNginx, wrong(`nobody${i}`), "203.0.113.50");
          if (r.code === "RATE_LIMITED") limited++;
        }
        assert.equal(limited, 1, "the 101st attempt of that client is refused");
        const bob = await login(behindNginx, { login: "bob", password: PASSWORD }, "198.51.100.21");
        assert.equal(bob.status, 200, JSON.stringify(bob));
      },
    );

    await t.step("without trusted proxies the header is ignored: the socket counts", async () => {
      for (let i = 1; i <= 10; i++) {
        const r = await login(direct, wrong("bob"), `10.1.0.${i}`);
        assert.equal(r.code, "INVALID_CREDENTIALS", `attempt ${i}`);
      }
      const spoofed = await login(direct, wrong("bob"), "10.1.0.200");
      assert.deepEqual(spoofed, { status: 429, code: "RATE_LIMITED" });
    });
  } finally {
    for (const server of servers) await server.shutdown();
    started.stop();
    await service.close();
    await bus.close();
    await closeRedis(redis);
    await sql.end();
  }
});
