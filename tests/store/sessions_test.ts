import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import type { Redis } from "ioredis";
import postgres from "postgres";
import { createLocalBus, createRedisBus, type MessageBus } from "../../store/bus.ts";
import { createEventStore } from "../../store/event_store.ts";
import { migrate } from "../../store/migrations.ts";
import { closeRedis, createKeyspace, createRedisClient } from "../../store/redis.ts";
import { createSessionStore, type SessionStoreOptions } from "../../store/sessions.ts";
import type { Sql } from "../../store/types.ts";
import { createUser } from "../../store/users.ts";
import { startPostgres } from "../harness/mod.ts";
import {
  redisClusterTarget,
  type RedisTarget,
  singleRedisTarget,
} from "../support/redis_target.ts";
import { until } from "../support/instance.ts";
import { testAuth } from "../support/message_auth.ts";

const INJECTIONS = [
  "'; DROP TABLE sessions; --",
  "Robert'); DELETE FROM users;--",
  "\\' OR 1=1 --",
  "x' UNION SELECT token_hash FROM sessions --",
];

const SECOND = 1000;
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

function sha256Hex(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

let counter = 0;
async function newUser(sql: Sql): Promise<number> {
  const n = ++counter;
  const user = await createUser(sql, {
    username: `viewer${n}`,
    email: `viewer${n}@example.com`,
    password: "viewer-password",
  }, { hashing: { ln: 4 } });
  return user.id;
}

Deno.test("session store on PostgreSQL + Redis", async (t) => {
  await using redis = await singleRedisTarget();
  await sessionSuite(t, redis);
});

Deno.test("session store on PostgreSQL + a Redis Cluster", async (t) => {
  await using redis = await redisClusterTarget();
  await sessionSuite(t, redis);
});

/** The session store's behaviours on `target` (single Redis or a cluster). */
async function sessionSuite(t: Deno.TestContext, target: RedisTarget): Promise<void> {
  await using pg = await startPostgres();
  const url = await pg.createDatabase();
  const sql = postgres(url, { max: 8, onnotice: () => {} }) as Sql;
  const sql2 = postgres(url, { max: 4, onnotice: () => {} }) as Sql;
  const redis = createRedisClient(target.settings("rs-t:"), { name: "sessions-a" });
  const redis2 = createRedisClient(target.settings("rs-t:"), { name: "sessions-b" });
  await redis.connect();
  await redis2.connect();
  const keyspace = createKeyspace("rs-t:");
  const auth = testAuth();
  const bus = createRedisBus(redis, { keyspace, auth });
  const bus2 = createRedisBus(redis2, { keyspace, auth });
  let clock = Date.UTC(2030, 0, 1);
  const now = () => clock;
  const events = createEventStore(sql);
  const base: SessionStoreOptions = { redis, auth, keyspace, bus, now, eventStore: events };
  const store = createSessionStore(sql, { ...base, instanceId: "a" });
  // A second instance: its own pool, Redis connection and bus, same servers.
  const other = createSessionStore(sql2, {
    ...base,
    redis: redis2,
    bus: bus2,
    instanceId: "b",
  });
  try {
    await migrate(sql);
    const userId = await newUser(sql);

    await t.step("create hands out a 256-bit token once and stores only its SHA-256", async () => {
      const { session, token } = await store.create({
        userId,
        fingerprint: "device-A",
        ipAddress: "203.0.113.7",
        userAgent: "Mozilla/5.0",
        geoLocation: "DE/Berlin",
      });
      assert.match(token, /^[A-Za-z0-9_-]{43}$/);
      assert.equal(session.userId, userId);
      assert.equal(session.ipAddress, "203.0.113.7");
      assert.equal(session.expiresAt.getTime(), clock + 12 * HOUR);
      assert.equal(session.isRemembered, false);
      const [row] = await sql<Record<string, unknown>[]>`
        SELECT *, encode(token_hash, 'hex') AS hex FROM sessions WHERE id = ${session.id}`;
      assert.equal(row.hex, sha256Hex(token));
      assert.ok(!JSON.stringify(row).includes(token), "the plain token is stored nowhere");
      assert.equal((await store.getByToken(token))?.id, session.id);
      assert.equal((await store.getById(session.id))?.userId, userId);
      // Cached under the hash, with a TTL no longer than the cache cap or the lifetime.
      const ttl = await redis.pttl(keyspace.key("session", sha256Hex(token)));
      assert.ok(ttl > 0 && ttl <= 5 * 60 * SECOND, `ttl ${ttl}`);
      assert.equal(await redis.exists(keyspace.key("session", token)), 0);
    });

    await t.step("validation: cached, falls back to PostgreSQL on a miss and refills", async () => {
      const { token, session } = await store.create({ userId });
      const first = await store.validate(token);
      assert.ok(first.ok);
      assert.equal(first.session.id, session.id);
      const key = keyspace.key("session", sha256Hex(token));
      await redis.del(key);
      const second = await other.validate(token);
      assert.ok(second.ok, "served from PostgreSQL on a miss");
      assert.equal(await redis.exists(key), 1, "and the cache refilled");
      assert.deepEqual(await store.validate("not-a-token"), {
        ok: false,
        reason: "unknown",
        sessionId: null,
        userId: null,
      });
      const unknown = token.slice(0, -1) + (token.endsWith("A") ? "B" : "A");
      assert.equal((await store.validate(unknown)).ok, false);
    });

    await t.step("the cache TTL never outlives the session", async () => {
      const short = createSessionStore(sql, { ...base, ttlMs: 20 * SECOND });
      const { token } = await short.create({ userId });
      const ttl = await redis.pttl(keyspace.key("session", sha256Hex(token)));
      assert.ok(ttl > 0 && ttl <= 20 * SECOND, `ttl ${ttl}`);
    });

    await t.step("an expired session is refused (injected clock)", async () => {
      const { token } = await store.create({ userId });
      clock += 12 * HOUR - 1;
      assert.equal((await store.validate(token)).ok, true);
      clock += 1;
      const check = await store.validate(token);
      assert.equal(check.ok, false);
      assert.equal(!check.ok && check.reason, "expired");
      assert.equal((await other.validate(token)).ok, false);
      assert.equal(await store.refresh((await store.getByToken(token))!.id), null);
    });

    await t.step("revocation is refused at once on every instance", async () => {
      const { token, session } = await store.create({ userId });
      assert.equal((await other.validate(token)).ok, true, "cached as valid first");
      const seen: string[] = [];
      const off = await other.subscribeRevocations((m) =>
        seen.push(...m.sessions.map((s) => s.id))
      );
      assert.equal(await store.revoke(session.id), true);
      const check = await other.validate(token);
      assert.equal(!check.ok && check.reason, "revoked");
      assert.equal(
        await redis.get(keyspace.key("session", sha256Hex(token))),
        "!revoked",
        "a tombstone, so a concurrent miss cannot refill the key with the stale row",
      );
      assert.equal(await store.revoke(session.id), false, "revoking twice is a no-op");
      assert.equal(await other.refresh(session.id), null, "a revoked session cannot be refreshed");
      await until(() => seen.includes(session.id), {
        what: "the revocation announced on the bus",
      });
      await off();
      const row = await store.getById(session.id);
      assert.equal(row?.revokedReason, "revoked");
      assert.equal(row?.revokedAt?.getTime(), clock);
    });

    await t.step("revoke honours ownership; revoke-all keeps the current session", async () => {
      const mine = await store.create({ userId });
      const someoneElse = await newUser(sql);
      assert.equal(await store.revoke(mine.session.id, { userId: someoneElse }), false);
      assert.equal((await store.validate(mine.token)).ok, true);
      const b = await store.create({ userId });
      const c = await store.create({ userId });
      const revoked = await store.revokeAllForUser(userId, { exceptId: mine.session.id });
      assert.ok(revoked.includes(b.session.id) && revoked.includes(c.session.id));
      assert.ok(!revoked.includes(mine.session.id));
      assert.equal((await other.validate(b.token)).ok, false);
      assert.equal((await other.validate(c.token)).ok, false);
      assert.equal((await other.validate(mine.token)).ok, true);
      const live = await store.listForUser(userId);
      assert.deepEqual(live.map((s) => s.id), [mine.session.id]);
    });

    await t.step(
      "the per-user limit evicts the oldest sessions, also under concurrency",
      async () => {
        const limited = createSessionStore(sql, { ...base, maxSessionsPerUser: 3 });
        const u = await newUser(sql);
        const made = [];
        for (let i = 0; i < 4; i++) {
          clock += SECOND;
          made.push(await limited.create({ userId: u }));
        }
        assert.deepEqual(made[3].evicted, [made[0].session.id]);
        const oldest = await limited.validate(made[0].token);
        assert.equal(!oldest.ok && oldest.reason, "revoked");
        assert.equal((await limited.getById(made[0].session.id))?.revokedReason, "evicted");
        assert.equal((await limited.listForUser(u)).length, 3);

        const v = await newUser(sql);
        const burst = await Promise.all(
          Array.from({ length: 12 }, () => limited.create({ userId: v })),
        );
        assert.equal(burst.length, 12);
        assert.equal((await limited.listForUser(v)).length, 3, "never more than the limit");
        await assert.rejects(limited.create({ userId: 999_999 }), /no active user/);
      },
    );

    await t.step("refresh slides the expiry, longer when remembered, capped overall", async () => {
      const normal = await store.create({ userId });
      const remembered = await store.create({ userId, remember: true });
      assert.equal(remembered.session.expiresAt.getTime(), clock + 30 * DAY);
      const created = clock;
      clock += 6 * HOUR;
      const r1 = await store.refresh(normal.session.id);
      assert.equal(r1?.expiresAt.getTime(), clock + 12 * HOUR);
      const cached = await store.validate(normal.token);
      assert.ok(cached.ok);
      assert.equal(cached.session.expiresAt.getTime(), clock + 12 * HOUR, "cache updated too");
      // Refreshing every 10 h keeps it alive up to the 7-day cap, not beyond.
      while (clock < created + 7 * DAY + DAY) {
        clock += 10 * HOUR;
        if (!(await store.refresh(normal.session.id))) break;
      }
      const final = await store.getById(normal.session.id);
      assert.equal(final?.expiresAt.getTime(), created + 7 * DAY);
      const r2 = await store.refresh(remembered.session.id);
      assert.ok(r2 && r2.expiresAt.getTime() > clock + 29 * DAY);
    });

    await t.step("another device's token is refused, and the attempt recorded", async () => {
      const { token, session } = await store.create({ userId, fingerprint: "device-A" });
      assert.equal((await store.validate(token, { fingerprint: "device-A" })).ok, true);
      const stolen = await other.validate(token, {
        fingerprint: "device-B",
        ipAddress: "198.51.100.9",
        userAgent: "curl/8",
      });
      assert.equal(!stolen.ok && stolen.reason, "device_mismatch");
      const none = await other.validate(token, {});
      assert.equal(!none.ok && none.reason, "device_mismatch");
      const row = await store.getById(session.id);
      assert.equal(row?.deviceMismatches, 2);
      const log = await events.readEvents<{ ipAddress: string }>({
        type: "session",
        id: session.id,
      });
      assert.deepEqual(log.map((e) => e.type), ["SessionDeviceMismatch", "SessionDeviceMismatch"]);
      assert.equal(log[0].data.ipAddress, "198.51.100.9");
      assert.equal(log[0].userId, userId);
      assert.equal((await store.validate(token, { fingerprint: "device-A" })).ok, true);
    });

    await t.step("activity is written at most once per throttle interval", async () => {
      const { token, session } = await store.create({ userId });
      const t0 = clock;
      clock += 10 * SECOND;
      await store.validate(token);
      assert.equal((await store.getById(session.id))?.lastActivityAt?.getTime(), t0);
      clock += 61 * SECOND;
      await store.validate(token);
      assert.equal((await store.getById(session.id))?.lastActivityAt?.getTime(), clock);
    });

    await t.step("SQL-injection strings are stored verbatim and match no token", async () => {
      for (const text of INJECTIONS) {
        const { session } = await store.create({
          userId,
          fingerprint: text,
          userAgent: text,
          geoLocation: text,
        });
        assert.equal(session.deviceFingerprint, text);
        assert.equal(session.userAgent, text);
        assert.equal((await store.validate(text)).ok, false);
        assert.equal(await store.getByToken(text), null);
        assert.equal(await store.getById(text), null);
        assert.equal(await store.revoke(text), false);
      }
      await assert.rejects(store.create({ userId, ipAddress: "1.2.3.4'; --" }), /IPv4 or IPv6/);
      const [{ n }] = await sql<{ n: number }[]>`SELECT count(*)::int AS n FROM users`;
      assert.ok(n >= 1);
    });

    await t.step("cleanup deletes expired and long-revoked sessions only", async () => {
      const u = await newUser(sql);
      const live = await store.create({ userId: u, remember: true });
      const dying = await store.create({ userId: u });
      const revoked = await store.create({ userId: u, remember: true });
      await store.revoke(revoked.session.id);
      clock += 13 * HOUR;
      await store.cleanupExpired();
      assert.equal(await store.getById(dying.session.id), null);
      assert.ok(await store.getById(revoked.session.id), "revoked rows kept for a while");
      clock += 8 * DAY;
      await store.cleanupExpired();
      assert.equal(await store.getById(revoked.session.id), null);
      assert.ok(await store.getById(live.session.id));
    });

    await t.step(
      "without Redis a per-process cache stands in; the bus invalidates it",
      async () => {
        const local = createLocalBus();
        const a = createSessionStore(sql, { keyspace, now, bus: local, instanceId: "a" });
        const b = createSessionStore(sql2, { keyspace, now, bus: local, instanceId: "b" });
        assert.equal(a.cacheKind, "local");
        const off = await b.subscribeRevocations();
        const { token, session } = await a.create({ userId });
        assert.equal((await b.validate(token)).ok, true, "now cached in b's process");
        await a.revoke(session.id);
        await new Promise((r) => setTimeout(r, 0));
        const check = await b.validate(token);
        assert.equal(!check.ok && check.reason, "revoked");
        await off();
        await local.close();
      },
    );

    await t.step("with Redis down, validation falls back to PostgreSQL and says so", async () => {
      // A client whose every command fails the way ioredis fails while disconnected.
      const down = () => Promise.reject(new Error("Connection is closed."));
      const broken = { get: down, set: down, eval: down } as unknown as Redis;
      const failures: string[] = [];
      const degraded = createSessionStore(sql, {
        keyspace,
        now,
        redis: broken,
        auth,
        onDependencyError: (what) => failures.push(what),
      });
      const { token } = await store.create({ userId });
      const check = await degraded.validate(token);
      assert.equal(check.ok, true);
      assert.ok(failures.includes("redis"));
    });
  } finally {
    await closeBuses([bus, bus2]);
    await closeRedis(redis);
    await closeRedis(redis2);
    await sql.end();
    await sql2.end();
  }
}

async function closeBuses(buses: MessageBus[]): Promise<void> {
  for (const b of buses) await b.close();
}
