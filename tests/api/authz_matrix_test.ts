/**
 * The authorisation matrix (issue 14, 6c): every declared route (concerns/routes.ts) called
 * as every kind of caller — anonymous, a user, an operator, an admin with and without a
 * recent re-authentication, a wrong token, an expired session, the admin token, a machine
 * token with the route's scope and one with another — against one running instance, and
 * each answer compared with what the route's declaration says: 401, 403 (FORBIDDEN or
 * REAUTH_REQUIRED), a page's redirect to /login, or let through.
 *
 * The expected outcome is worked out here from the declaration's access rule, not by the
 * guard's code, so the two can disagree. The app must serve exactly the declared routes,
 * and its /openapi.json must describe exactly them.
 */
import assert from "node:assert/strict";
import { concernApi } from "../../concerns/mod.ts";
import { loadConfig } from "../../concerns/config.ts";
import { ROUTE_DECLARATIONS } from "../../concerns/routes.ts";
import { undeclaredRoutes } from "../../api/app.ts";
import type { Access, DeclaredRoute } from "../../api/authz/mod.ts";
import { documentOf } from "../../api/openapi.ts";
import { type Scope, SCOPE_NAMES } from "../../lib/access.ts";
import { type Runtime, startRuntime } from "../../runtime.ts";
import { createSessionStore } from "../../store/sessions.ts";
import { createKeyspace } from "../../store/redis.ts";
import { createUser } from "../../store/users.ts";
import { startPostgres } from "../harness/mod.ts";
import { TEST_ADMIN_TOKEN } from "../support/auth.ts";

/** Who calls. */
type Caller =
  | "anonymous"
  | "user"
  | "operator"
  | "admin"
  | "admin_fresh"
  | "wrong_token"
  | "expired_session"
  | "admin_token"
  | "machine_scoped"
  | "machine_other";

const CALLERS: Caller[] = [
  "anonymous",
  "user",
  "operator",
  "admin",
  "admin_fresh",
  "wrong_token",
  "expired_session",
  "admin_token",
  "machine_scoped",
  "machine_other",
];

/** What a route should answer a caller, by its declaration. */
type Outcome = "allowed" | "401" | "403" | "reauth" | "login";

/** The specification of docs/security.md, applied to one rule and one caller. */
function expected(access: Access, caller: Caller, kind: string, method: string): Outcome {
  const noCredential = caller === "anonymous" || caller === "wrong_token" ||
    caller === "expired_session";
  const session = ["user", "operator", "admin", "admin_fresh"].includes(caller);
  const unauthenticated: Outcome = kind === "page" ? "login" : "401";
  switch (access.caller) {
    case "anonymous":
      return "allowed";
    case "user":
      if (noCredential) return unauthenticated;
      if (!session) return "403";
      return access.stepUp && caller !== "admin_fresh" ? "reauth" : "allowed";
    case "operator":
      if (noCredential) return unauthenticated;
      if (caller === "user") return "403";
      if (session || caller === "admin_token") return "allowed";
      if (caller === "machine_scoped" && access.scope) return "allowed";
      return "403";
    case "admin":
      if (noCredential) return unauthenticated;
      if (caller === "admin_fresh" || caller === "admin_token") return "allowed";
      if (caller === "admin") return "reauth";
      return "403";
    case "machine":
      if (noCredential) return unauthenticated;
      return caller === "machine_scoped" ? "allowed" : "403";
  }
  throw new Error(`unknown caller kind ${access.caller} (${method})`);
}

/** Codes that mean the guard refused (the handler's own 401/403 have other codes). */
const REFUSALS = new Set([
  "UNAUTHORIZED",
  "FORBIDDEN",
  "REAUTH_REQUIRED",
  "SESSION_INVALID",
  "SESSION_EXPIRED",
  "SESSION_REVOKED",
  "ORIGIN_NOT_ALLOWED",
]);

/** A concrete path for a declared one: each parameter gets a well-formed value. */
function concretePath(path: string, ids: { user: number }): string {
  const values: Record<string, string> = {
    "/backups/{id}": "/backups/1",
    "/streams/{id}": "/streams/1",
    "/sessions/{id}": `/sessions/${crypto.randomUUID()}`,
    "/auth/passkeys/{id}": "/auth/passkeys/1",
    "/admin/tokens/{id}": `/admin/tokens/${crypto.randomUUID()}`,
    "/admin/users/{id}/role": `/admin/users/${ids.user}/role`,
    "/charts/{file}": "/charts/supervisor.mmd",
    "/dashboards/{name}": "/dashboards/streams",
    "/state/{type}/{id}": "/state/stream/1",
    "/state/conflicts/{id}/resolve": "/state/conflicts/1/resolve",
  };
  const concrete = values[path] ?? path;
  assert.ok(!concrete.includes("{"), `a value for the parameters of ${path}`);
  return concrete;
}

/** A body that reaches the handler but changes nothing: it fails the schema (400). */
function bodyOf(route: DeclaredRoute): { type: string; text: string } | null {
  const content = (route.request?.body?.content ?? {}) as Record<string, unknown>;
  if ("application/json" in content) return { type: "application/json", text: "{}" };
  if ("application/x-www-form-urlencoded" in content) {
    return { type: "application/x-www-form-urlencoded", text: "" };
  }
  return null;
}

Deno.test("authorisation matrix: every declared route as every caller", async (t) => {
  await using pg = await startPostgres();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-authz-matrix-" });
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
    const sessions = concernApi(rt.concerns, "sessions")!;
    const sql = rt.db.sql;

    await t.step("the app serves exactly the declared routes, and describes them", async () => {
      assert.deepEqual(undeclaredRoutes(app), []);
      const key = (r: { method: string; path: string }) => `${r.method.toUpperCase()} ${r.path}`;
      const served = app.openAPIRegistry.definitions
        .flatMap((d) => d.type === "route" ? [key(d.route)] : []).sort();
      assert.deepEqual(served, ROUTE_DECLARATIONS.map(key).sort());
      const res = await app.request("/openapi.json");
      assert.equal(res.status, 200);
      const doc = await res.json();
      assert.equal(doc.openapi, "3.1.0");
      assert.deepEqual(doc.paths, documentOf(ROUTE_DECLARATIONS, "x").paths);
      for (const [path, ops] of Object.entries(doc.paths as Record<string, object>)) {
        for (const [method, op] of Object.entries(ops as Record<string, Record<string, unknown>>)) {
          assert.ok(op["x-rootstream-access"], `${method} ${path} says who may call it`);
          assert.ok(Array.isArray(op.security), `${method} ${path} lists its credentials`);
        }
      }
    });

    // The callers' credentials.
    const accounts: Record<string, number> = {};
    for (const role of ["user", "operator", "admin"] as const) {
      const user = await createUser(sql, {
        username: `matrix-${role}`,
        email: `${role}@example.com`,
        password: "matrix password 1",
      }, { role, hashing: { ln: 10 } });
      accounts[role] = user.id;
    }
    const session = async (userId: number, fresh = false) => {
      const { session, token } = await sessions.sessions.create({ userId });
      if (fresh) await sessions.sessions.markReauthenticated(session.id, new Date());
      return token;
    };
    // A session whose lifetime ended: made by a store whose clock is a day behind.
    const past = createSessionStore(sql, {
      keyspace: createKeyspace("matrix:"),
      now: () => Date.now() - 86_400_000,
    });
    const expired = (await past.create({ userId: accounts.user })).token;
    const machine = new Map<Scope, string>();
    for (const scope of SCOPE_NAMES) {
      machine.set(
        scope,
        (await sessions.access.createToken({ name: scope, scopes: [scope] }, null)).token,
      );
    }

    /** The bearer token of a caller for a route (sessions are fresh: a route may end one). */
    const credential = async (caller: Caller, route: DeclaredRoute): Promise<string | null> => {
      const scope = route["x-rootstream-access"].scope;
      switch (caller) {
        case "anonymous":
          return null;
        case "user":
        case "operator":
        case "admin":
          return await session(accounts[caller]);
        case "admin_fresh":
          return await session(accounts.admin, true);
        case "wrong_token":
          return "A".repeat(43);
        case "expired_session":
          return expired;
        case "admin_token":
          return TEST_ADMIN_TOKEN;
        case "machine_scoped":
          return machine.get(scope ?? "health:read")!;
        case "machine_other":
          return machine.get(SCOPE_NAMES.find((s) => s !== scope)!)!;
      }
    };

    let cells = 0;
    for (const route of ROUTE_DECLARATIONS) {
      const access = route["x-rootstream-access"];
      const kind = route["x-rootstream-kind"];
      const method = route.method.toUpperCase();
      await t.step(`${method} ${route.path}`, async () => {
        const mismatches: string[] = [];
        for (const caller of CALLERS) {
          const want = expected(access, caller, kind, method);
          const token = await credential(caller, route);
          const body = bodyOf(route);
          const headers: Record<string, string> = {};
          if (token) headers.authorization = `Bearer ${token}`;
          if (body) headers["content-type"] = body.type;
          const res = await app.request(concretePath(route.path, { user: accounts.user }), {
            method,
            headers,
            body: body?.text,
            redirect: "manual",
          });
          let code: string | null = null;
          if (res.headers.get("content-type")?.startsWith("application/json")) {
            code = (await res.json())?.error?.code ?? null;
          } else {
            await res.body?.cancel();
          }
          const refused = (res.status === 401 || res.status === 403) && code !== null &&
            REFUSALS.has(code);
          const got: Outcome = res.status === 303 &&
              res.headers.get("location")?.startsWith("/login")
            ? "login"
            : refused && code === "REAUTH_REQUIRED"
            ? "reauth"
            : refused && res.status === 401
            ? "401"
            : refused || (kind === "page" && res.status === 403)
            ? "403"
            : "allowed";
          // A page that lets the caller through may itself redirect (sign-out: to /login).
          const ok = got === want || (want === "allowed" && kind === "page" && got === "login" &&
            access.caller === "anonymous");
          if (!ok) mismatches.push(`${caller}: expected ${want}, got ${res.status} ${code ?? ""}`);
          cells++;
        }
        assert.deepEqual(mismatches, [], `${method} ${route.path} (${JSON.stringify(access)})`);
      });
    }

    await t.step("every cell was checked", () => {
      assert.equal(cells, ROUTE_DECLARATIONS.length * CALLERS.length);
      console.log(
        `authorisation matrix: ${ROUTE_DECLARATIONS.length} routes x ${CALLERS.length} callers`,
      );
    });
  } finally {
    await rt?.stop();
    await Deno.remove(dataDir, { recursive: true });
  }
});
