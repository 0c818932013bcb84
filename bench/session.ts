/**
 * Session suite: cached token validation and session creation, each next to the raw
 * operation underneath measured in the same run on the same servers.
 *
 * Figures:
 * - `validate_ops_per_s` and `validate_p99_ms`: `SessionStore.validate` (SHA-256 of the
 *   token, one Redis GET, parse, expiry and device checks) from 64 concurrent callers, all
 *   tokens cached; baseline: raw ioredis GET of the same keys from 64 callers on the same
 *   connection (`redis_get_ops_per_s`, `redis_get_p99_ms`).
 * - `create_ops_per_s`: `SessionStore.create` (token, one transaction: user row lock,
 *   eviction beyond the limit, INSERT; then the cache write) from 32 callers over 256 users (default limit of 10 live sessions each, so most
 *   creations also evict the oldest session: the full path);
 *   baseline: a raw single-row INSERT into sessions from 32 callers (`pg_insert_ops_per_s`).
 *
 * Each figure is the median of REPS timed rounds; subject and baseline rounds alternate so
 * drift (JIT warm-up, other load) affects both alike.
 * @module
 */
import { createHash, randomBytes } from "node:crypto";
import postgres from "postgres";
import { createRedisBus } from "../store/bus.ts";
import { migrate } from "../store/migrations.ts";
import { closeRedis, createKeyspace, createRedisClient } from "../store/redis.ts";
import { createSessionStore } from "../store/sessions.ts";
import type { Sql } from "../store/types.ts";
import { createUser } from "../store/users.ts";
import { startPostgres, startRedis } from "../tests/harness/mod.ts";
import { type Figure, median, percentile, progress, round } from "./_util.ts";
import { createMessageAuth } from "../lib/message_auth.ts";

const REPS = 5;
const ROUND_MS = 1000;
const VALIDATE_CALLERS = 64;
const CREATE_CALLERS = 32;
const USERS = 256;
const TOKENS = 2000;

interface RoundResult {
  opsPerS: number;
  p99Ms: number;
}

/** Runs `op` from `callers` concurrent loops for `ms`; throughput and p99 latency. */
async function timed(
  callers: number,
  ms: number,
  op: (caller: number, i: number) => Promise<unknown>,
): Promise<RoundResult> {
  const latencies: number[] = [];
  const started = performance.now();
  const deadline = started + ms;
  await Promise.all(Array.from({ length: callers }, async (_, caller) => {
    for (let i = 0; performance.now() < deadline; i++) {
      const t0 = performance.now();
      await op(caller, i);
      latencies.push(performance.now() - t0);
    }
  }));
  const elapsed = (performance.now() - started) / 1000;
  return { opsPerS: latencies.length / elapsed, p99Ms: percentile(latencies, 0.99) };
}

/** Runs the suite. */
export async function run(): Promise<Figure[]> {
  progress("session: starting PostgreSQL and Redis");
  await using pg = await startPostgres({ name: "bench-session" });
  await using redisServer = await startRedis();
  const sql = postgres(await pg.createDatabase(), { max: 20, onnotice: () => {} }) as Sql;
  const redis = createRedisClient({
    url: redisServer.url,
    sentinels: [],
    sentinelMaster: "mymaster",
    sentinelPassword: null,
    keyPrefix: "rsbench:",
  }, { name: "bench-session" });
  await redis.connect();
  const keyspace = createKeyspace("rsbench:");
  const auth = createMessageAuth(crypto.getRandomValues(new Uint8Array(32)));
  const bus = createRedisBus(redis, { keyspace, auth });
  try {
    await migrate(sql);
    // The bench is a composition root: it hands the store the real clock.
    const store = createSessionStore(sql, {
      redis,
      auth,
      keyspace,
      bus,
      now: () => Date.now(),
    });

    progress(`session: creating ${USERS} users and ${TOKENS} sessions`);
    const users: number[] = [];
    for (let i = 0; i < USERS; i++) {
      const user = await createUser(sql, {
        username: `bench${i}`,
        email: `bench${i}@example.com`,
        password: "bench-password",
      }, { hashing: { ln: 4 } });
      users.push(user.id);
    }
    // The raw INSERT baseline writes its rows for users of its own, so the thousands of
    // rows it adds never sit in the live-session lists the measured creations scan.
    const baselineUsers: number[] = [];
    for (let i = 0; i < CREATE_CALLERS; i++) {
      const user = await createUser(sql, {
        username: `baseline${i}`,
        email: `baseline${i}@example.com`,
        password: "bench-password",
      }, { hashing: { ln: 4 } });
      baselineUsers.push(user.id);
    }
    const tokens: string[] = [];
    // ≤ 8 per user: under the default limit of 10, so none is evicted before it is used.
    for (let i = 0; i < TOKENS; i += 50) {
      const batch = await Promise.all(
        Array.from(
          { length: 50 },
          (_, j) => store.create({ userId: users[(i + j) % USERS], fingerprint: "bench-device" }),
        ),
      );
      tokens.push(...batch.map((b) => b.token));
    }
    const keys = tokens.map((t) =>
      keyspace.key("session", createHash("sha256").update(t).digest("hex"))
    );
    const device = { fingerprint: "bench-device" };

    // Warm-up: JIT, connection, and every key cached.
    for (let i = 0; i < tokens.length; i++) {
      const check = await store.validate(tokens[i], device);
      if (!check.ok) throw new Error(`bench token ${i} does not validate: ${check.reason}`);
    }
    await timed(VALIDATE_CALLERS, 300, (c, i) => redis.get(keys[(c * 31 + i) % keys.length]));

    const getRounds: RoundResult[] = [];
    const validateRounds: RoundResult[] = [];
    for (let r = 0; r < REPS; r++) {
      getRounds.push(
        await timed(
          VALIDATE_CALLERS,
          ROUND_MS,
          (c, i) => redis.get(keys[(c * 31 + i) % keys.length]),
        ),
      );
      validateRounds.push(
        await timed(VALIDATE_CALLERS, ROUND_MS, async (c, i) => {
          const check = await store.validate(tokens[(c * 31 + i) % tokens.length], device);
          if (!check.ok) throw new Error(`validation failed: ${check.reason}`);
        }),
      );
      progress(
        `session: round ${r + 1}/${REPS}: GET ${Math.round(getRounds[r].opsPerS)}/s, ` +
          `validate ${Math.round(validateRounds[r].opsPerS)}/s ` +
          `(p99 ${round(validateRounds[r].p99Ms)} ms)`,
      );
    }

    const expires = new Date(Date.now() + 3_600_000);
    const insertRounds: RoundResult[] = [];
    const createRounds: RoundResult[] = [];
    for (let r = 0; r < REPS; r++) {
      insertRounds.push(
        await timed(CREATE_CALLERS, ROUND_MS, (c) =>
          sql`
            INSERT INTO sessions (user_id, token_hash, expires_at)
            VALUES (${baselineUsers[c]}, ${randomBytes(32)}, ${expires})`),
      );
      createRounds.push(
        await timed(
          CREATE_CALLERS,
          ROUND_MS,
          (c, i) => store.create({ userId: users[(c + i * CREATE_CALLERS) % USERS] }),
        ),
      );
      progress(
        `session: round ${r + 1}/${REPS}: INSERT ${Math.round(insertRounds[r].opsPerS)}/s, ` +
          `create ${Math.round(createRounds[r].opsPerS)}/s`,
      );
    }

    const med = (rounds: RoundResult[], k: keyof RoundResult) => median(rounds.map((x) => x[k]));
    return [
      {
        suite: "session",
        name: "validate_ops_per_s",
        unit: "ops/s",
        value: Math.round(med(validateRounds, "opsPerS")),
        better: "higher",
        baseline: { name: "redis_get_ops_per_s", value: Math.round(med(getRounds, "opsPerS")) },
      },
      {
        suite: "session",
        name: "validate_p99_ms",
        unit: "ms",
        value: round(med(validateRounds, "p99Ms")),
        better: "lower",
        baseline: { name: "redis_get_p99_ms", value: round(med(getRounds, "p99Ms")) },
      },
      {
        suite: "session",
        name: "create_ops_per_s",
        unit: "ops/s",
        value: Math.round(med(createRounds, "opsPerS")),
        better: "higher",
        baseline: { name: "pg_insert_ops_per_s", value: Math.round(med(insertRounds, "opsPerS")) },
      },
    ];
  } finally {
    await bus.close();
    await closeRedis(redis);
    await sql.end();
  }
}

if (import.meta.main) {
  for (const figure of await run()) console.log(JSON.stringify(figure));
}
