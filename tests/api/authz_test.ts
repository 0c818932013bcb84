/**
 * Authorisation in a running instance, as regression tests of issue 14's findings:
 *
 * - finding 2: the runtime's internals are no longer readable anonymously (and `/health`
 *   tells a probe its status only);
 * - finding 4: changing authentication factors needs a recent re-authentication, and an
 *   old one does not count;
 * - finding 8 (CSRF): a cookie request from another site is refused, and a JSON body must
 *   come as `application/json`;
 *
 * plus roles and machine tokens through the admin routes, peer signatures and the
 * access-control settings.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { loadConfig } from "../../concerns/config.ts";
import { concernApi } from "../../concerns/mod.ts";
import {
  type AuthBackend,
  authorize,
  createAuthorizer,
  createPeerSigner,
  loadAccessSettings,
  type Principal,
} from "../../api/authz/mod.ts";
import { isRuntimeError } from "../../lib/errors.ts";
import { totpCode } from "../../lib/totp.ts";
import { type Runtime, startRuntime } from "../../runtime.ts";
import { createUser } from "../../store/users.ts";
import { startPostgres } from "../harness/mod.ts";
import { ADMIN_HEADERS, TEST_ADMIN_TOKEN, testAccessSettings } from "../support/auth.ts";

const PASSWORD = "a password of some length";
const SITE = "http://rs.test";

interface Reply {
  status: number;
  // deno-lint-ignore no-explicit-any
  body: any;
  headers: Headers;
}

Deno.test("authorisation in a running instance", async (t) => {
  await using pg = await startPostgres();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-authz-" });
  const config = loadConfig({
    env: {
      DATABASE_URL: await pg.createDatabase(),
      RS_SECRET_KEY: btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32)))),
      RS_DATA_DIR: dataDir,
      RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
      BACKUP_SCHEDULE_FULL: "off",
      LOG_LEVEL: "error",
    },
    args: [],
  });
  let rt: Runtime | null = null;
  try {
    rt = await startRuntime(config, { serve: false });
    const app = rt.app;
    const sql = rt.db.sql;
    const sessions = concernApi(rt.concerns, "sessions")!;

    /** A request as a browser or a program would send it to http://rs.test. */
    const call = async (
      method: string,
      path: string,
      opts: { headers?: Record<string, string>; body?: string; json?: unknown } = {},
    ): Promise<Reply> => {
      const headers: Record<string, string> = { host: "rs.test", ...opts.headers };
      let body = opts.body;
      if (opts.json !== undefined) {
        headers["content-type"] ??= "application/json";
        body = JSON.stringify(opts.json);
      }
      const res = await app.request(`${SITE}${path}`, {
        method,
        headers,
        body,
        redirect: "manual",
      });
      const text = await res.text();
      let parsed: unknown = text;
      try {
        parsed = JSON.parse(text);
      } catch { /* not JSON */ }
      return { status: res.status, body: parsed, headers: res.headers };
    };

    const login = async (username: string): Promise<string> => {
      const r = await call("POST", "/auth/login", {
        json: { login: username, password: PASSWORD },
      });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      return r.body.token;
    };

    for (
      const [name, role] of [
        ["ann", "user"],
        ["bob", "user"],
        ["ops", "operator"],
        ["root", "admin"],
      ] as const
    ) {
      await createUser(sql, {
        username: name,
        email: `${name}@example.com`,
        password: PASSWORD,
      }, { role, hashing: { ln: 10 } });
    }

    await t.step("finding 2: the internals are not readable anonymously", async () => {
      for (
        const path of [
          "/replication",
          "/cluster",
          "/actors",
          "/actors/stream",
          "/backups",
          "/backups/1",
          "/metrics",
          "/dashboards",
          "/dashboards/streams",
          "/alerts",
          "/charts/supervisor.svg",
          "/state",
          "/state/stream",
          "/state/stream/1",
          "/state/conflicts",
          "/console/fragments/instances",
          "/console/fragments/panels",
          "/console/events",
        ]
      ) {
        const r = await call("GET", path);
        assert.equal(r.status, 401, `${path}: ${JSON.stringify(r.body)}`);
        assert.equal(r.body.error.code, "UNAUTHORIZED", path);
        assert.equal(r.headers.get("www-authenticate"), 'Bearer realm="rootstream"', path);
      }
      const page = await call("GET", "/");
      assert.equal(page.status, 303);
      assert.equal(page.headers.get("location"), "/login?next=%2F");
      // A probe learns the status and nothing else; an operator gets the details.
      const probe = await call("GET", "/health");
      assert.deepEqual(probe.body, { status: "ok" });
      const details = await call("GET", "/health", { headers: ADMIN_HEADERS });
      assert.equal(details.body.status, "ok");
      assert.ok(details.body.checks.database.ok);
      assert.equal((await call("GET", "/health/live")).status, 200);
      // A user's session is not an operator's.
      const ann = await login("ann");
      const asUser = await call("GET", "/replication", {
        headers: { authorization: `Bearer ${ann}` },
      });
      assert.equal(asUser.status, 403);
      assert.equal(asUser.body.error.code, "FORBIDDEN");
      const ops = await login("ops");
      const asOperator = await call("GET", "/actors", {
        headers: { authorization: `Bearer ${ops}` },
      });
      assert.equal(asOperator.status, 200);
    });

    let annSecret = "";
    await t.step("finding 4: factors change only after a recent re-authentication", async () => {
      const token = await login("ann");
      const auth = { authorization: `Bearer ${token}` };
      for (
        const [method, path, json] of [
          ["POST", "/auth/mfa/enroll", undefined],
          ["POST", "/auth/mfa/confirm", { code: "123456" }],
          ["POST", "/auth/mfa/backup-codes", { code: "123456" }],
          ["DELETE", "/auth/mfa", { code: "123456" }],
        ] as const
      ) {
        const r = await call(method, path, { headers: auth, json });
        assert.equal(r.status, 403, `${method} ${path}`);
        assert.equal(r.body.error.code, "REAUTH_REQUIRED", `${method} ${path}`);
      }
      const wrong = await call("POST", "/auth/reauth", {
        headers: auth,
        json: { password: "not it" },
      });
      assert.equal(wrong.status, 403);
      assert.equal(wrong.body.error.details.reason, "invalid_password");
      assert.equal(
        (await call("POST", "/auth/reauth", { headers: auth, json: { password: PASSWORD } }))
          .status,
        200,
      );
      const enroll = await call("POST", "/auth/mfa/enroll", { headers: auth });
      assert.equal(enroll.status, 200, JSON.stringify(enroll.body));
      const confirm = await call("POST", "/auth/mfa/confirm", {
        headers: auth,
        json: { code: totpCode(enroll.body.secret, Date.now()) },
      });
      assert.equal(confirm.status, 200, JSON.stringify(confirm.body));
      annSecret = enroll.body.secret;
      // The re-authentication belongs to the session, not the account: another has none.
      const me = await call("GET", "/auth/me", { headers: auth });
      assert.ok(me.body.session.reauthenticatedAt);
      const other = await sessions.sessions.create({ userId: me.body.user.id });
      const refused = await call("POST", "/auth/mfa/backup-codes", {
        headers: { authorization: `Bearer ${other.token}` },
        json: { code: "123456" },
      });
      assert.equal(refused.body.error.code, "REAUTH_REQUIRED");
    });

    await t.step("finding 8: a cookie request from another site is refused", async () => {
      const token = await login("ops");
      const cookie = { cookie: `rs_session=${token}` };
      const foreign = await call("POST", "/sessions/refresh", {
        headers: { ...cookie, origin: "https://evil.example" },
      });
      assert.equal(foreign.status, 403);
      assert.equal(foreign.body.error.code, "ORIGIN_NOT_ALLOWED");
      const sandboxed = await call("POST", "/sessions/refresh", {
        headers: { ...cookie, origin: "null", "sec-fetch-site": "cross-site" },
      });
      assert.equal(sandboxed.body.error.code, "ORIGIN_NOT_ALLOWED");
      const unsaid = await call("POST", "/sessions/refresh", { headers: cookie });
      assert.equal(unsaid.body.error.code, "ORIGIN_NOT_ALLOWED", "a cookie needs an origin");
      // The refused requests did nothing: the session still works, from this site.
      const same = await call("POST", "/sessions/refresh", {
        headers: { ...cookie, origin: SITE },
      });
      assert.equal(same.status, 200, JSON.stringify(same.body));
      const fetchSite = await call("POST", "/sessions/refresh", {
        headers: { ...cookie, "sec-fetch-site": "same-origin" },
      });
      assert.equal(fetchSite.status, 200);
      // A program with a bearer token sends no Origin and is not a browser's victim.
      const bearer = await call("POST", "/sessions/refresh", {
        headers: { authorization: `Bearer ${token}` },
      });
      assert.equal(bearer.status, 200);
      // Logging a victim in to an attacker's account (login CSRF) is refused too.
      const form = await call("POST", "/login", {
        headers: {
          origin: "https://evil.example",
          "content-type": "application/x-www-form-urlencoded",
        },
        body: new URLSearchParams({ login: "ops", password: PASSWORD }).toString(),
      });
      assert.equal(form.status, 403);
      assert.equal(form.body.error.code, "ORIGIN_NOT_ALLOWED");
    });

    await t.step("finding 8: a JSON body must say it is JSON", async () => {
      const body = JSON.stringify({ login: "ops", password: PASSWORD });
      for (
        const type of ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
      ) {
        const r = await call("POST", "/auth/login", { headers: { "content-type": type }, body });
        assert.equal(r.status, 415, type);
        assert.equal(r.body.error.code, "UNSUPPORTED_MEDIA_TYPE", type);
      }
      const none = await call("POST", "/auth/login", { body });
      assert.equal(none.status, 415, "no content type");
      const ok = await call("POST", "/auth/login", {
        headers: { "content-type": "application/json; charset=utf-8" },
        body,
      });
      assert.equal(ok.status, 200);
    });

    await t.step("the console's sign-in form sets the cookie and goes back", async () => {
      const r = await call("POST", "/login", {
        headers: { origin: SITE, "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ login: "ops", password: PASSWORD, next: "/?x=1" }).toString(),
      });
      assert.equal(r.status, 303);
      assert.equal(r.headers.get("location"), "/?x=1");
      const cookie = r.headers.get("set-cookie")!;
      assert.match(cookie, /^rs_session=[A-Za-z0-9_-]{43}; /);
      assert.match(cookie, /HttpOnly/);
      assert.match(cookie, /SameSite=Strict/);
      const page = await call("GET", "/", { headers: { cookie: cookie.split(";")[0] } });
      assert.equal(page.status, 200);
      assert.match(page.body, /Signed in as <strong>ops<\/strong> \(operator\)/);
      // Another site is never where `next` sends anyone.
      const away = await call("POST", "/login", {
        headers: { origin: SITE, "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ login: "ops", password: PASSWORD, next: "//evil.example" })
          .toString(),
      });
      assert.equal(away.headers.get("location"), "/");
      const wrong = await call("POST", "/login", {
        headers: { origin: SITE, "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ login: "ops", password: "no" }).toString(),
      });
      assert.equal(wrong.status, 401);
      assert.match(wrong.body, /Wrong username or password/);
      assert.equal(wrong.headers.get("set-cookie"), null);
    });

    await t.step("the sign-in form asks for the second factor when there is one", async () => {
      const form = { origin: SITE, "content-type": "application/x-www-form-urlencoded" };
      const first = await call("POST", "/login", {
        headers: form,
        body: new URLSearchParams({ login: "ann", password: PASSWORD, next: "/" }).toString(),
      });
      assert.equal(first.status, 200);
      assert.equal(first.headers.get("set-cookie"), null, "no session before the code");
      const challenge = /name="challenge" value="([^"]+)"/.exec(first.body)?.[1];
      assert.ok(challenge, "the code form carries the challenge");
      const wrong = await call("POST", "/login/mfa", {
        headers: form,
        body: new URLSearchParams({ challenge, code: "000000", next: "/" }).toString(),
      });
      assert.equal(wrong.status, 401);
      assert.match(wrong.body, /The code is invalid/);
      // The next step's code: the one that confirmed enrolment is never accepted again.
      const ok = await call("POST", "/login/mfa", {
        headers: form,
        body: new URLSearchParams({
          challenge,
          code: totpCode(annSecret, Date.now() + 30_000),
          next: "/",
        }).toString(),
      });
      assert.equal(ok.status, 303, ok.body);
      assert.match(ok.headers.get("set-cookie") ?? "", /^rs_session=/);
      // ann is a user: the console turns her away, with a page that says why.
      const page = await call("GET", "/", {
        headers: { cookie: ok.headers.get("set-cookie")!.split(";")[0] },
      });
      assert.equal(page.status, 403);
      assert.match(page.body, /role <strong>user<\/strong>/);
    });

    await t.step("an admin session acts only after re-authenticating", async () => {
      const root = await login("root");
      const auth = { authorization: `Bearer ${root}` };
      const stale = await call("GET", "/admin/users", { headers: auth });
      assert.equal(stale.status, 403);
      assert.equal(stale.body.error.code, "REAUTH_REQUIRED");
      await call("POST", "/auth/reauth", { headers: auth, json: { password: PASSWORD } });
      const users = await call("GET", "/admin/users?role=user", { headers: auth });
      assert.equal(users.status, 200);
      const bob = users.body.users.find((u: { username: string }) => u.username === "bob");
      const bobToken = await login("bob");
      const bobAuth = { authorization: `Bearer ${bobToken}` };
      assert.equal((await call("GET", "/cluster", { headers: bobAuth })).status, 403);
      const promote = await call("PUT", `/admin/users/${bob.id}/role`, {
        headers: auth,
        json: { role: "operator" },
      });
      assert.equal(promote.status, 200, JSON.stringify(promote.body));
      assert.deepEqual([promote.body.before, promote.body.user.role], ["user", "operator"]);
      // Effective at the next request of bob's existing session.
      assert.equal((await call("GET", "/cluster", { headers: bobAuth })).status, 200);
      const me = await call("GET", "/auth/me", { headers: auth });
      const demoteSelf = await call("PUT", `/admin/users/${me.body.user.id}/role`, {
        headers: auth,
        json: { role: "user" },
      });
      assert.equal(demoteSelf.status, 409, "the last admin stays");
      const events = await sessions.events.readEvents<{ from: string; to: string; by: number }>({
        type: "user",
        id: String(bob.id),
      });
      assert.deepEqual(events.map((e) => [e.type, e.data.from, e.data.to, e.data.by]), [
        ["UserRoleChanged", "user", "operator", me.body.user.id],
      ]);
    });

    await t.step("machine tokens: scoped, shown once, stored hashed, revocable", async () => {
      const made = await call("POST", "/admin/tokens", {
        headers: ADMIN_HEADERS,
        json: { name: "prometheus", scopes: ["metrics:read"] },
      });
      assert.equal(made.status, 201, JSON.stringify(made.body));
      const token: string = made.body.token;
      assert.match(token, /^rsm_[A-Za-z0-9_-]{43}$/);
      const bearer = { authorization: `Bearer ${token}` };
      assert.equal((await call("GET", "/metrics", { headers: bearer })).status, 200);
      const other = await call("GET", "/actors", { headers: bearer });
      assert.equal(other.status, 403, "only its scope");
      const admin = await call("GET", "/admin/tokens", { headers: bearer });
      assert.equal(admin.status, 403, "no admin actions");
      // Only the SHA-256 is kept, and no listing shows the token.
      const rows = await sql<{ token_hash: Uint8Array }[]>`
        SELECT token_hash FROM machine_tokens WHERE id = ${made.body.record.id}`;
      assert.deepEqual(
        Buffer.from(rows[0].token_hash).toString("hex"),
        createHash("sha256").update(token).digest("hex"),
      );
      const list = await call("GET", "/admin/tokens", { headers: ADMIN_HEADERS });
      assert.ok(!JSON.stringify(list.body).includes(token));
      const record = list.body.tokens.find((r: { id: string }) => r.id === made.body.record.id);
      assert.ok(record.lastUsedAt, "its last use is recorded");
      const revoked = await call("DELETE", `/admin/tokens/${made.body.record.id}`, {
        headers: ADMIN_HEADERS,
      });
      assert.equal(revoked.status, 200);
      const after = await call("GET", "/metrics", { headers: bearer });
      assert.equal(after.status, 401);
      assert.match(after.body.error.message, /unknown, revoked or expired/);
      const again = await call("DELETE", `/admin/tokens/${made.body.record.id}`, {
        headers: ADMIN_HEADERS,
      });
      assert.equal(again.status, 404);
    });
  } finally {
    await rt?.stop();
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("a re-authentication counts for RS_REAUTH_WINDOW_S, no longer", async () => {
  let now = Date.UTC(2030, 0, 1);
  const reauthenticatedAt = new Date(now);
  const backend: AuthBackend = {
    authenticate: () => Promise.reject(new Error("not used")),
    authority: () =>
      Promise.resolve({
        sessionId: "s",
        userId: 1,
        username: "root",
        role: "admin",
        reauthenticatedAt,
      }),
    verifyMachineToken: () => Promise.resolve(null),
  };
  const authz = createAuthorizer({
    backend,
    settings: testAccessSettings({ reauthWindowMs: 300_000 }),
    now: () => now,
  });
  const session = (): Principal => ({
    kind: "session",
    viaCookie: false,
    auth: {
      token: "t",
      session: {
        id: "s",
        userId: 1,
        createdAt: new Date(0),
        expiresAt: new Date(now + 1),
        isRemembered: false,
      },
    },
  });
  const outcome = (access: Parameters<typeof authorize>[2]) =>
    authorize(authz, session(), access, "POST").then(
      () => "allowed",
      (e) => isRuntimeError(e) ? e.code : String(e),
    );
  now += 300_000;
  assert.equal(await outcome({ caller: "admin" }), "allowed", "at the window's end");
  assert.equal(await outcome({ caller: "user", stepUp: true }), "allowed");
  now += 1;
  assert.equal(await outcome({ caller: "admin" }), "REAUTH_REQUIRED", "one ms later");
  assert.equal(await outcome({ caller: "user", stepUp: true }), "REAUTH_REQUIRED");
  assert.equal(await outcome({ caller: "operator" }), "allowed", "reading needs no step-up");
});

Deno.test("peer signatures hold for one GET of one path on one instance, for a minute", () => {
  let now = 1_000_000;
  const key = crypto.getRandomValues(new Uint8Array(32));
  const a = createPeerSigner(key, { instanceId: "node-a", now: () => now });
  const b = createPeerSigner(key, { instanceId: "node-b", now: () => now });
  const c = createPeerSigner(key, { instanceId: "node-c", now: () => now });
  const stranger = createPeerSigner(crypto.getRandomValues(new Uint8Array(32)), {
    instanceId: "node-a",
    now: () => now,
  });
  const header = a.sign("GET", "/actors?x=1", "node-b");
  assert.equal(b.verify(header, "GET", "/actors?x=1"), "node-a");
  assert.equal(b.verify(header, "GET", "/actors"), null, "another path");
  assert.equal(b.verify(header, "POST", "/actors?x=1"), null, "another method");
  assert.equal(c.verify(header, "GET", "/actors?x=1"), null, "another instance");
  assert.equal(b.verify(stranger.sign("GET", "/actors", "node-b"), "GET", "/actors"), null);
  assert.equal(
    b.verify(header.replace(/.$/, (ch) => ch === "A" ? "B" : "A"), "GET", "/actors?x=1"),
    null,
  );
  assert.equal(b.verify("v1:node-a", "GET", "/actors"), null);
  // Every other spelling of the last character is refused, including those that decode to the
  // same bytes (base64url's last character has two unused bits).
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  for (const ch of alphabet) {
    if (ch === header.at(-1)) continue;
    assert.equal(b.verify(header.slice(0, -1) + ch, "GET", "/actors?x=1"), null, `last char ${ch}`);
  }
  now += 60_000;
  assert.equal(b.verify(header, "GET", "/actors?x=1"), null, "expired");
});

Deno.test("peer signatures during a key rotation: the previous key is accepted", () => {
  const now = () => 1_000_000;
  const oldKey = crypto.getRandomValues(new Uint8Array(32));
  const newKey = crypto.getRandomValues(new Uint8Array(32));
  const notYet = createPeerSigner(oldKey, { instanceId: "node-a", now, previous: newKey });
  const rolled = createPeerSigner(newKey, { instanceId: "node-b", now, previous: oldKey });
  const done = createPeerSigner(newKey, { instanceId: "node-c", now });
  assert.equal(rolled.verify(notYet.sign("GET", "/actors", "node-b"), "GET", "/actors"), "node-a");
  assert.equal(notYet.verify(rolled.sign("GET", "/actors", "node-a"), "GET", "/actors"), "node-b");
  assert.equal(done.verify(notYet.sign("GET", "/actors", "node-c"), "GET", "/actors"), null);
});

Deno.test("access settings: tokens, origins and the cookie they imply", () => {
  const settings = (env: Record<string, string>, publicUrl: string | null = null) =>
    loadAccessSettings(env, { publicUrl });
  assert.equal(settings({}).secureCookie, false, "plain `deno task run`: local development");
  assert.equal(settings({}, "http://10.0.0.5:8080").secureCookie, false);
  assert.equal(settings({}, "https://rs.example.com").secureCookie, true);
  const both = settings({ RS_ALLOWED_ORIGINS: "https://a.example, https://B.example:443" });
  assert.deepEqual(both.allowedOrigins, ["https://a.example", "https://b.example"]);
  assert.equal(both.secureCookie, true);
  assert.equal(
    settings({ RS_ALLOWED_ORIGINS: "https://a.example,http://localhost:8080" }).secureCookie,
    false,
    "one http origin: the cookie cannot be Secure",
  );
  assert.equal(settings({}).reauthWindowMs, 300_000);
  for (
    const [env, message] of [
      [{ RS_ADMIN_TOKEN: "short" }, /RS_ADMIN_TOKEN must be at least 32 characters, got <hidden>/],
      [{ RS_ALLOWED_ORIGINS: "evil.example" }, /RS_ALLOWED_ORIGINS must be a comma-separated/],
      [{ RS_REAUTH_WINDOW_S: "5" }, /RS_REAUTH_WINDOW_S must be an integer between 30 and 3600/],
    ] as const
  ) {
    assert.throws(() => settings(env as Record<string, string>), message);
  }
  assert.equal(settings({ RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN }).adminToken, TEST_ADMIN_TOKEN);
});
