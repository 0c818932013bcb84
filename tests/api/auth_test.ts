import assert from "node:assert/strict";
import postgres from "postgres";
import { type AnyActorRef, createActor } from "xstate";
import {
  createSessionsActorSpec,
  createSessionService,
  type SessionService,
} from "../../actors/sessions/mod.ts";
import type { RuntimeServices } from "../../actors/runtime/types.ts";
import { addSessionRoutes } from "../../api/sessions.ts";
import { authBackendOf } from "../../concerns/mod.ts";
import { testApp } from "../support/auth.ts";
import { totpCode, totpCodeAt, totpStep } from "../../lib/totp.ts";
import { createRedisBus, type MessageBus } from "../../store/bus.ts";
import { createEventStore } from "../../store/event_store.ts";
import { migrate } from "../../store/migrations.ts";
import { closeRedis, createKeyspace, createRedisClient } from "../../store/redis.ts";
import type { Sql } from "../../store/types.ts";
import { loginActorId } from "../../machines/session_supervisor.ts";
import { startPostgres, startRedis } from "../harness/mod.ts";
import { until } from "../support/instance.ts";
import { createMessageAuth } from "../../lib/message_auth.ts";

const HOUR = 3_600_000;
const INJECTIONS = [
  "' OR '1'='1",
  "admin'--",
  "'; DROP TABLE users; --",
  "x' UNION SELECT password_hash FROM users --",
];

interface Reply {
  status: number;
  // deno-lint-ignore no-explicit-any
  body: any;
  headers: Headers;
}

interface Instance {
  name: string;
  app: ReturnType<typeof testApp>;
  service: SessionService;
  actor: AnyActorRef;
  stop(): Promise<void>;
}

let clock = Date.UTC(2030, 5, 1, 12, 0, 5);

/** One runtime instance: its own pool, Redis connection, bus, sessions actor and app. */
async function startInstance(
  name: string,
  urls: { db: string; redis: string },
  secretKey: Uint8Array,
): Promise<Instance> {
  const sql = postgres(urls.db, { max: 8, onnotice: () => {} }) as Sql;
  const redis = createRedisClient({
    url: urls.redis,
    sentinels: [],
    sentinelMaster: "m",
    sentinelPassword: null,
    keyPrefix: "rs:",
  }, { name });
  await redis.connect();
  const keyspace = createKeyspace("rs:");
  // Sealed with the shared key, like every instance of a cluster.
  const auth = createMessageAuth(secretKey);
  const bus: MessageBus = createRedisBus(redis, { keyspace, auth });
  // The test is the composition root: the service reaches the actor it builds below.
  let actor: AnyActorRef | undefined = undefined;
  const service = createSessionService({
    sql,
    redis,
    keyspace,
    bus,
    auth,
    secretKey,
    instanceId: name,
    now: () => clock,
    sessionsActor: () => actor,
    options: {
      hashing: { ln: 4 },
      mfa: { backupCodeCost: 4 },
      rateLimits: { perIpLogin: { limit: 10, windowMs: 60_000 } },
    },
  });
  const spec = createSessionsActorSpec(service);
  const services = {} as RuntimeServices;
  const started = createActor(spec.create(services), { input: spec.input?.(services) });
  started.start();
  actor = started;
  // The production cookie: __Host-rs_session, Secure (every browser origin is https).
  const app = testApp({
    backend: authBackendOf(service),
    trustProxy: true,
    now: () => clock,
    settings: { secureCookie: true },
  });
  addSessionRoutes(app, { sessions: service, trustProxy: true });
  return {
    name,
    app,
    service,
    actor: started,
    async stop() {
      started.stop();
      await service.close();
      await bus.close();
      await closeRedis(redis);
      await sql.end();
    },
  };
}

async function call(
  inst: Instance,
  method: string,
  path: string,
  opts: {
    body?: unknown;
    token?: string;
    cookie?: string;
    ip?: string;
    fingerprint?: string;
  } = {},
): Promise<Reply> {
  const headers: Record<string, string> = {
    "x-forwarded-for": opts.ip ?? "198.51.100.1",
    "user-agent": "auth-test/1.0",
  };
  if (opts.body !== undefined) headers["content-type"] = "application/json";
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  if (opts.cookie) headers.cookie = opts.cookie;
  if (opts.fingerprint) headers["x-device-fingerprint"] = opts.fingerprint;
  const res = await inst.app.request(path, {
    method,
    headers,
    body: opts.body === undefined
      ? undefined
      : typeof opts.body === "string"
      ? opts.body
      : JSON.stringify(opts.body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null, headers: res.headers };
}

function expectError(reply: Reply, status: number, code: string): void {
  assert.equal(reply.status, status, JSON.stringify(reply.body));
  assert.equal(reply.body?.error?.code, code, JSON.stringify(reply.body));
  assert.equal(typeof reply.body.error.message, "string");
}

/** A 6-digit string that is not a code of any step near `now`. */
function wrongCode(secret: string, now: number): string {
  const near = new Set([-2, -1, 0, 1, 2].map((d) => totpCodeAt(secret, totpStep(now) + d)));
  for (let n = 0;; n++) {
    const c = String(n).padStart(6, "0");
    if (!near.has(c)) return c;
  }
}

Deno.test("auth over HTTP on two instances sharing PostgreSQL and Redis", async (t) => {
  await using pg = await startPostgres();
  await using redisServer = await startRedis();
  const dbUrl = await pg.createDatabase();
  const setup = postgres(dbUrl, { max: 2, onnotice: () => {} }) as Sql;
  await migrate(setup);
  const secretKey = crypto.getRandomValues(new Uint8Array(32));
  const urls = { db: dbUrl, redis: redisServer.url };
  const a = await startInstance("a", urls, secretKey);
  const b = await startInstance("b", urls, secretKey);
  try {
    let password1 = "";
    let mfaSecret = "";
    let backupCodes: string[] = [];
    const password = "correct horse battery staple";

    await t.step("register validates input and refuses duplicates", async () => {
      const ok = await call(a, "POST", "/auth/register", {
        body: { username: "alice", email: "alice@example.com", password },
      });
      assert.equal(ok.status, 201);
      assert.equal(ok.body.user.username, "alice");
      assert.equal(ok.body.user.passwordHash, undefined);
      expectError(
        await call(b, "POST", "/auth/register", {
          body: { username: "ALICE", email: "other@example.com", password },
        }),
        409,
        "USER_EXISTS",
      );
      expectError(
        await call(a, "POST", "/auth/register", { body: { username: "bob" } }),
        400,
        "VALIDATION_FAILED",
      );
      expectError(
        await call(a, "POST", "/auth/register", { body: "{not json" }),
        400,
        "VALIDATION_FAILED",
      );
    });

    await t.step(
      "password login without MFA sets a strict cookie and returns the token",
      async () => {
        const r = await call(a, "POST", "/auth/login", {
          body: { login: "alice", password },
          fingerprint: "laptop",
        });
        assert.equal(r.status, 200, JSON.stringify(r.body));
        assert.equal(r.body.status, "authenticated");
        assert.match(r.body.token, /^[A-Za-z0-9_-]{43}$/);
        const cookie = r.headers.get("set-cookie") ?? "";
        assert.match(cookie, new RegExp(`^__Host-rs_session=${r.body.token};`));
        assert.ok(!/domain=/i.test(cookie), `no Domain attribute in ${cookie}`);
        for (const attr of ["HttpOnly", "Secure", "SameSite=Strict", "Path=/", "Max-Age=43200"]) {
          assert.ok(cookie.includes(attr), `${attr} in ${cookie}`);
        }
        assert.equal(r.headers.get("cache-control"), "no-store");
        password1 = r.body.token;
      },
    );

    await t.step("enrolling needs a recent re-authentication (finding 4)", async () => {
      // A session alone (a stolen one, say) cannot add a second factor the owner lacks.
      const refused = await call(b, "POST", "/auth/mfa/enroll", {
        token: password1,
        fingerprint: "laptop",
      });
      expectError(refused, 403, "REAUTH_REQUIRED");
      assert.equal(refused.body.error.details.reauthenticate, "POST /auth/reauth");
      expectError(
        await call(a, "POST", "/auth/reauth", {
          token: password1,
          fingerprint: "laptop",
          body: { password: "not the password" },
        }),
        403,
        "REAUTH_FAILED",
      );
      expectError(
        await call(b, "POST", "/auth/mfa/enroll", { token: password1, fingerprint: "laptop" }),
        403,
        "REAUTH_REQUIRED",
      );
      const ok = await call(a, "POST", "/auth/reauth", {
        token: password1,
        fingerprint: "laptop",
        body: { password },
      });
      assert.equal(ok.status, 200, JSON.stringify(ok.body));
      assert.equal(Date.parse(ok.body.reauthenticatedAt), clock);
    });

    await t.step("enrol on one instance, confirm on the other, with the URI's secret", async () => {
      const e = await call(b, "POST", "/auth/mfa/enroll", {
        token: password1,
        fingerprint: "laptop",
      });
      assert.equal(e.status, 200, JSON.stringify(e.body));
      assert.match(e.body.qrSvg, /^<svg/);
      // What an authenticator app does with the QR code: read the URI, keep the secret.
      const uri = new URL(e.body.uri);
      assert.equal(uri.protocol, "otpauth:");
      assert.match(decodeURIComponent(uri.pathname), /alice/);
      mfaSecret = uri.searchParams.get("secret")!;
      assert.equal(mfaSecret, e.body.secret);

      const status = await call(a, "GET", "/auth/mfa", { token: password1, fingerprint: "laptop" });
      assert.deepEqual([status.body.enrolled, status.body.enabled], [true, false]);

      expectError(
        await call(a, "POST", "/auth/mfa/confirm", {
          token: password1,
          fingerprint: "laptop",
          body: { code: wrongCode(mfaSecret, clock) },
        }),
        401,
        "MFA_INVALID_CODE",
      );
      const c = await call(a, "POST", "/auth/mfa/confirm", {
        token: password1,
        fingerprint: "laptop",
        body: { code: totpCode(mfaSecret, clock) },
      });
      assert.equal(c.status, 200, JSON.stringify(c.body));
      assert.equal(c.body.enabled, true);
      assert.equal(c.body.backupCodes.length, 10);
      backupCodes = c.body.backupCodes;
      clock += 30_000;
    });

    await t.step("logout ends the session everywhere", async () => {
      const r = await call(a, "POST", "/auth/logout", { token: password1, fingerprint: "laptop" });
      assert.equal(r.status, 200);
      assert.match(r.headers.get("set-cookie") ?? "", /__Host-rs_session=;.*Max-Age=0/);
      expectError(
        await call(b, "GET", "/sessions", { token: password1, fingerprint: "laptop" }),
        401,
        "SESSION_REVOKED",
      );
    });

    let token = "";
    let attemptId = "";
    await t.step(
      "password + TOTP login; the code step may land on the other instance",
      async () => {
        const first = await call(a, "POST", "/auth/login", {
          body: { login: "Alice", password, remember: true },
          fingerprint: "laptop",
        });
        assert.equal(first.status, 200, JSON.stringify(first.body));
        assert.equal(first.body.status, "mfa_required");
        assert.deepEqual(first.body.methods, ["totp", "backup_code"]);
        assert.equal(first.body.token, undefined);
        assert.equal(first.headers.get("set-cookie"), null);
        const challenge = first.body.challenge as string;
        // Five minutes from the password check, by the injected clock.
        assert.equal(Date.parse(first.body.expiresAt), clock + 5 * 60_000);

        // Instance b never saw this attempt: it resumes it from the shared record.
        const wrong = await call(b, "POST", "/auth/mfa/verify", {
          body: { challenge, code: wrongCode(mfaSecret, clock) },
        });
        expectError(wrong, 401, "MFA_INVALID_CODE");
        assert.deepEqual(wrong.body.error.details, { reason: "invalid", attemptsLeft: 4 });
        // b's copy of the attempt keeps the deadline a set (it travelled in the record).
        const onB = b.actor.system.get(loginActorId(challenge.split(".")[0]));
        assert.equal(onB?.getSnapshot().context.deadline, Date.parse(first.body.expiresAt));

        const tampered = challenge.slice(0, -1) + (challenge.endsWith("A") ? "B" : "A");
        expectError(
          await call(b, "POST", "/auth/mfa/verify", {
            body: { challenge: tampered, code: totpCode(mfaSecret, clock) },
          }),
          401,
          "LOGIN_EXPIRED",
        );

        const ok = await call(b, "POST", "/auth/mfa/verify", {
          body: { challenge, code: totpCode(mfaSecret, clock) },
        });
        assert.equal(ok.status, 200, JSON.stringify(ok.body));
        assert.equal(ok.body.status, "authenticated");
        assert.match(ok.headers.get("set-cookie") ?? "", /Max-Age=2592000/, "remember me: 30 days");
        token = ok.body.token;

        // The attempt is over everywhere: once a hears of it on the bus (it drops its copy of
        // the attempt), the same challenge is refused on both instances.
        const copyOnA = () => a.actor.system.get(loginActorId(challenge.split(".")[0]));
        await until(() => !copyOnA() || copyOnA()!.getSnapshot().status !== "active", {
          what: "instance a dropping its copy of the attempt finished on b (sessions.login)",
        });
        for (const inst of [a, b]) {
          expectError(
            await call(inst, "POST", "/auth/mfa/verify", {
              body: { challenge, code: totpCode(mfaSecret, clock + 30_000) },
            }),
            401,
            "LOGIN_EXPIRED",
          );
        }

        // Every transition is in the event store, in order.
        const events = createEventStore(setup);
        attemptId = challenge.split(".")[0];
        const log = await events.readEvents({ type: "login", id: attemptId });
        assert.deepEqual(log.map((e) => e.type), [
          "LoginStarted",
          "CredentialsAccepted",
          "MfaRequired",
          "LoginResumed",
          "MfaRequired",
          "TotpSubmitted",
          "CodeRejected",
          "TotpSubmitted",
          "MfaAccepted",
          "Authenticated",
        ]);
        assert.equal(log[0].userId, null, "unknown until the password matched");
        assert.ok(log.slice(1).every((e) => e.userId === ok.body.userId));
        assert.ok(!JSON.stringify(log).includes(password), "no password in the audit trail");
      },
    );

    await t.step("the same code is refused for the next login (replay)", async () => {
      const used = totpCode(mfaSecret, clock);
      const again = await call(a, "POST", "/auth/login", {
        body: { login: "alice", password },
        fingerprint: "laptop",
      });
      const r = await call(a, "POST", "/auth/mfa/verify", {
        body: { challenge: again.body.challenge, code: used },
      });
      expectError(r, 401, "MFA_INVALID_CODE");
      assert.equal(r.body.error.details.reason, "replayed");
      // A code from two steps ago has expired.
      const expired = totpCodeAt(mfaSecret, totpStep(clock) - 2);
      const e = await call(b, "POST", "/auth/mfa/verify", {
        body: { challenge: again.body.challenge, code: expired },
      });
      expectError(e, 401, "MFA_INVALID_CODE");
      clock += 30_000;
      // Backup code instead, on the other instance, from a phone.
      const phone = await call(b, "POST", "/auth/login", {
        body: { login: "alice@example.com", password },
        fingerprint: "phone",
      });
      const ok = await call(b, "POST", "/auth/mfa/verify", {
        body: { challenge: phone.body.challenge, code: backupCodes[0], method: "backup_code" },
      });
      assert.equal(ok.status, 200, JSON.stringify(ok.body));
      assert.equal(ok.body.backupCodesRemaining, 9);
      await a.service.mfa.resetLock(ok.body.userId);
    });

    await t.step(
      "list sessions (cookie or bearer) and revoke one: refused at once on the other instance",
      async () => {
        const list = await call(b, "GET", "/sessions", {
          cookie: `__Host-rs_session=${token}`,
          fingerprint: "laptop",
        });
        assert.equal(list.status, 200, JSON.stringify(list.body));
        assert.equal(list.body.sessions.length, 2);
        assert.equal(list.body.sessions.filter((s: { current: boolean }) => s.current).length, 1);
        assert.ok(list.body.sessions.every((s: { token?: string }) => s.token === undefined));

        const phone = await call(a, "POST", "/auth/login", {
          body: { login: "alice", password },
          fingerprint: "tablet",
        });
        const code = totpCode(mfaSecret, clock);
        const tablet = await call(a, "POST", "/auth/mfa/verify", {
          body: { challenge: phone.body.challenge, code },
        });
        const tabletToken = tablet.body.token;
        assert.equal(
          (await call(b, "GET", "/sessions", { token: tabletToken, fingerprint: "tablet" })).status,
          200,
          "valid (and cached) on b",
        );
        const del = await call(a, "DELETE", `/sessions/${tablet.body.session.id}`, {
          token,
          fingerprint: "laptop",
        });
        assert.equal(del.status, 200, JSON.stringify(del.body));
        expectError(
          await call(b, "GET", "/sessions", { token: tabletToken, fingerprint: "tablet" }),
          401,
          "SESSION_REVOKED",
        );
        expectError(
          await call(a, "DELETE", `/sessions/${tablet.body.session.id}`, {
            token,
            fingerprint: "laptop",
          }),
          404,
          "SESSION_NOT_FOUND",
        );
        expectError(
          await call(a, "DELETE", "/sessions/1%20OR%201=1", { token, fingerprint: "laptop" }),
          400,
          "VALIDATION_FAILED",
        );
        clock += 30_000;
      },
    );

    await t.step("another device's token, a missing or forged token are refused", async () => {
      expectError(
        await call(a, "GET", "/sessions", { token, fingerprint: "attacker-pc" }),
        401,
        "SESSION_DEVICE_MISMATCH",
      );
      expectError(await call(b, "GET", "/sessions", { token }), 401, "SESSION_DEVICE_MISMATCH");
      const [row] = await setup<{ n: number }[]>`
        SELECT max(device_mismatches)::int AS n FROM sessions`;
      assert.ok(row.n >= 2, "mismatches recorded");
      const none = await call(a, "GET", "/sessions");
      expectError(none, 401, "UNAUTHORIZED");
      assert.match(none.headers.get("www-authenticate") ?? "", /Bearer/);
      expectError(
        await call(a, "GET", "/sessions", { token: "x".repeat(43) }),
        401,
        "SESSION_INVALID",
      );
      for (const text of INJECTIONS) {
        expectError(
          await call(a, "GET", "/sessions", {
            cookie: `__Host-rs_session=${encodeURIComponent(text)}`,
          }),
          401,
          "SESSION_INVALID",
        );
      }
    });

    await t.step("SQL-injection strings in the login form are just wrong credentials", async () => {
      for (const text of INJECTIONS) {
        const r = await call(a, "POST", "/auth/login", {
          body: { login: text, password: text },
          ip: "203.0.113.50",
        });
        expectError(r, 401, "INVALID_CREDENTIALS");
      }
      const [{ n }] = await setup<{ n: number }[]>`SELECT count(*)::int AS n FROM users`;
      assert.equal(n, 1);
    });

    await t.step("a login step that throws answers with its error's code", async () => {
      // The password check refuses a password that is not a string (HTTP validates it first; a
      // program calling the service may not): the chart keeps the error as data, the
      // service answers with it.
      await assert.rejects(
        () =>
          a.service.login({ login: "alice", password: 42 as unknown as string }, {
            ipAddress: "192.0.2.9",
          }),
        (err: { code?: string }) => err.code === "VALIDATION_FAILED",
      );
    });

    await t.step("refresh slides the expiry; an expired session is refused", async () => {
      clock += HOUR;
      const r = await call(a, "POST", "/sessions/refresh", { token, fingerprint: "laptop" });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(Date.parse(r.body.session.expiresAt), clock + 30 * 24 * HOUR);
      // A normal (not remembered) session, then 12 h and a second later.
      const plain = await call(b, "POST", "/auth/login", {
        body: { login: "alice", password },
        fingerprint: "kiosk",
      });
      const done = await call(b, "POST", "/auth/mfa/verify", {
        body: { challenge: plain.body.challenge, code: totpCode(mfaSecret, clock) },
      });
      assert.equal(done.status, 200, JSON.stringify(done.body));
      clock += 12 * HOUR + 1000;
      expectError(
        await call(a, "GET", "/sessions", { token: done.body.token, fingerprint: "kiosk" }),
        401,
        "SESSION_EXPIRED",
      );
      assert.equal(
        (await call(a, "GET", "/sessions", { token, fingerprint: "laptop" })).status,
        200,
        "the remembered one lives on",
      );
    });

    await t.step("brute force: five wrong codes lock MFA for the account", async () => {
      const start = await call(a, "POST", "/auth/login", {
        body: { login: "alice", password },
        ip: "192.0.2.66",
      });
      const challenge = start.body.challenge;
      for (let i = 1; i <= 4; i++) {
        const r = await call(i % 2 ? a : b, "POST", "/auth/mfa/verify", {
          body: { challenge, code: wrongCode(mfaSecret, clock) },
          ip: "192.0.2.66",
        });
        expectError(r, 401, "MFA_INVALID_CODE");
      }
      const fifth = await call(a, "POST", "/auth/mfa/verify", {
        body: { challenge, code: wrongCode(mfaSecret, clock) },
        ip: "192.0.2.66",
      });
      expectError(fifth, 429, "MFA_LOCKED");
      assert.ok(Number(fifth.headers.get("retry-after")) > 0);
      // A new attempt on the other instance stops right after the password.
      const again = await call(b, "POST", "/auth/login", {
        body: { login: "alice", password },
        ip: "192.0.2.66",
      });
      expectError(again, 429, "MFA_LOCKED");
      const attempts = await a.service.mfa.listAttempts(
        (await a.service.sessions.validate(token, { fingerprint: "laptop" }) as {
          session: { userId: number };
        }).session.userId,
      );
      assert.ok(attempts.filter((x) => x.ipAddress === "192.0.2.66").length >= 5);
      clock += 16 * 60_000;
    });

    await t.step("login attempts are rate limited per IP and login", async () => {
      let last: Reply | null = null;
      for (let i = 0; i < 11; i++) {
        last = await call(i % 2 ? a : b, "POST", "/auth/login", {
          body: { login: "alice", password: "wrong password" },
          ip: "203.0.113.99",
        });
      }
      expectError(last!, 429, "RATE_LIMITED");
      assert.ok(Number(last!.headers.get("retry-after")) > 0);
      // Another address is not affected.
      const other = await call(a, "POST", "/auth/login", {
        body: { login: "alice", password: "wrong password" },
        ip: "203.0.113.100",
      });
      expectError(other, 401, "INVALID_CREDENTIALS");
    });

    await t.step("unenrolling needs a re-authentication and a fresh code", async () => {
      expectError(
        await call(a, "DELETE", "/auth/mfa", {
          token,
          fingerprint: "laptop",
          body: { code: totpCode(mfaSecret, clock) },
        }),
        403,
        "REAUTH_REQUIRED",
      );
      // With MFA on, re-authentication takes the second factor too.
      const noCode = await call(a, "POST", "/auth/reauth", {
        token,
        fingerprint: "laptop",
        body: { password },
      });
      expectError(noCode, 403, "REAUTH_FAILED");
      assert.equal(noCode.body.error.details.reason, "code_required");
      const reauth = await call(b, "POST", "/auth/reauth", {
        token,
        fingerprint: "laptop",
        body: { password, code: totpCode(mfaSecret, clock) },
      });
      assert.equal(reauth.status, 200, JSON.stringify(reauth.body));
      // The next code: an accepted code is never accepted again.
      clock += 30_000;
      expectError(
        await call(a, "DELETE", "/auth/mfa", {
          token,
          fingerprint: "laptop",
          body: { code: wrongCode(mfaSecret, clock) },
        }),
        401,
        "MFA_INVALID_CODE",
      );
      const off = await call(b, "DELETE", "/auth/mfa", {
        token,
        fingerprint: "laptop",
        body: { code: totpCode(mfaSecret, clock) },
      });
      assert.equal(off.status, 200, JSON.stringify(off.body));
      const r = await call(a, "POST", "/auth/login", { body: { login: "alice", password } });
      assert.equal(r.body.status, "authenticated");
      // Still the session that turned MFA off; the others were revoked.
      assert.equal(
        (await call(a, "GET", "/sessions", { token, fingerprint: "laptop" })).status,
        200,
      );
    });

    await t.step("both sessions actors are running and counted the logins", () => {
      for (const inst of [a, b]) {
        const snap = inst.actor.getSnapshot();
        assert.equal(snap.value, "running", `${inst.name}: ${snap.context.reason}`);
        assert.ok(snap.context.stats.loginsStarted > 0);
        assert.ok(
          !(attemptId in snap.context.logins),
          "the attempt finished on b is dropped on a too (sessions.login on the bus)",
        );
      }
    });
  } finally {
    await a.stop();
    await b.stop();
    await setup.end();
  }
});
