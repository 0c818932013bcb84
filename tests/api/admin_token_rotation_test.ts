/**
 * Rotating RS_ADMIN_TOKEN without downtime (docs/security.md): during the rollout an instance
 * accepts the new token and RS_ADMIN_TOKEN_PREVIOUS; once that is removed, only the new one.
 */
import assert from "node:assert/strict";
import { Hono } from "hono";
import { loadAccessSettings } from "../../api/authz/settings.ts";
import { testAuthorizer } from "../support/auth.ts";

const OLD = "old-admin-token-0123456789-abcdefghijkl";
const NEW = "new-admin-token-0123456789-abcdefghijkl";

/** The kind of caller each token is, for an instance with these settings. */
async function kinds(env: Record<string, string>): Promise<Record<string, string>> {
  const settings = loadAccessSettings(env, { publicUrl: null });
  const authz = testAuthorizer({ settings });
  const app = new Hono();
  app.get("/who", async (c) => c.text((await authz.principal(c)).kind));
  const out: Record<string, string> = {};
  for (const [name, token] of [["old", OLD], ["new", NEW]]) {
    const res = await app.request("/who", { headers: { authorization: `Bearer ${token}` } });
    out[name] = await res.text();
  }
  return out;
}

Deno.test("admin token rotation: the previous token is accepted until it is removed", async () => {
  assert.deepEqual(await kinds({ RS_ADMIN_TOKEN: OLD }), { old: "admin_token", new: "anonymous" });
  assert.deepEqual(await kinds({ RS_ADMIN_TOKEN: NEW, RS_ADMIN_TOKEN_PREVIOUS: OLD }), {
    old: "admin_token",
    new: "admin_token",
  });
  assert.deepEqual(await kinds({ RS_ADMIN_TOKEN: NEW }), { old: "anonymous", new: "admin_token" });
  assert.throws(
    () => loadAccessSettings({ RS_ADMIN_TOKEN_PREVIOUS: "short" }, { publicUrl: null }),
    /RS_ADMIN_TOKEN_PREVIOUS must be at least 32 characters/,
  );
});
