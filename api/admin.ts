/**
 * Admin routes of the sessions concern: account roles and machine tokens. Every one is an
 * admin action: an admin session that re-authenticated within RS_REAUTH_WINDOW_S, or the
 * admin token. The same rules hold in the CLI (`deno task cli users|tokens`), which goes
 * through the same service (actors/sessions/access.ts); every change is in the audit trail.
 *
 * - `GET /admin/users?role=operator` — accounts (id, username, role, active);
 * - `PUT /admin/users/{id}/role` `{"role": "operator"}` — takes effect at the next request;
 *   the last active admin cannot be demoted (409);
 * - `GET /admin/tokens`, `POST /admin/tokens` `{"name", "scopes", "expiresInS"?}` (the token
 *   is in the answer, once), `DELETE /admin/tokens/{id}`.
 * @module
 */
import { type OpenAPIHono, z } from "@hono/zod-openapi";
import type { Context } from "hono";
import type { AccessService } from "../actors/sessions/access.ts";
import { ROLES, SCOPE_NAMES } from "../lib/access.ts";
import type { MachineToken } from "../store/machine_tokens.ts";
import type { User } from "../store/users.ts";
import { declareRoute, jsonBody, jsonResponse, type Principal, serve } from "./authz/mod.ts";

/** What the admin routes need. */
export interface AdminRouteDeps {
  /** Roles and machine tokens. */
  access: AccessService;
  /** Clock (ms), for token expiry. */
  now: () => number;
}

const Role = z.enum(ROLES as ["user", "operator", "admin"]);
const ScopeName = z.enum(SCOPE_NAMES as [string, ...string[]]);

const AccountView = z.object({
  id: z.number(),
  username: z.string(),
  role: Role,
  isActive: z.boolean(),
  lastLoginAt: z.string().nullable(),
}).openapi("Account");

const TokenView = z.object({
  id: z.string(),
  name: z.string(),
  scopes: z.array(z.string()),
  createdBy: z.number().nullable(),
  createdAt: z.string(),
  expiresAt: z.string().nullable(),
  lastUsedAt: z.string().nullable(),
  revokedAt: z.string().nullable(),
}).openapi("MachineToken");

const admin = { caller: "admin" } as const;

/** The admin routes' declarations. */
export const ADMIN_ROUTES = {
  users: declareRoute({
    method: "get",
    path: "/admin/users",
    tags: ["admin"],
    summary: "Accounts and their roles",
    access: admin,
    request: {
      query: z.object({
        role: Role.optional(),
        limit: z.string().regex(/^\d{1,4}$/).transform(Number)
          .refine((n) => n >= 1 && n <= 1000, "1-1000").optional()
          .openapi({ type: "string", description: "1-1000 (default 100)" }),
      }),
    },
    responses: { 200: jsonResponse(z.object({ users: z.array(AccountView) }), "Accounts") },
  }),
  setRole: declareRoute({
    method: "put",
    path: "/admin/users/{id}/role",
    tags: ["admin"],
    summary: "Gives an account a role (takes effect at its next request)",
    access: admin,
    maxBody: 1024,
    request: {
      params: z.object({ id: z.string().regex(/^[1-9]\d{0,15}$/, "a user id") }),
      body: jsonBody(z.object({ role: Role }).strict()),
    },
    responses: {
      200: jsonResponse(z.object({ user: AccountView, before: Role }), "Changed"),
      404: jsonResponse(z.looseObject({}), "No such account (USER_NOT_FOUND)"),
      409: jsonResponse(z.looseObject({}), "The last active admin (CONFLICT)"),
    },
  }),
  tokens: declareRoute({
    method: "get",
    path: "/admin/tokens",
    tags: ["admin"],
    summary: "Machine tokens (live ones; all with revoked=true)",
    access: admin,
    request: { query: z.object({ revoked: z.enum(["true", "false"]).optional() }) },
    responses: { 200: jsonResponse(z.object({ tokens: z.array(TokenView) }), "Tokens") },
  }),
  createToken: declareRoute({
    method: "post",
    path: "/admin/tokens",
    tags: ["admin"],
    summary: "Makes a scoped machine token; the answer carries it, once",
    access: admin,
    maxBody: 4 * 1024,
    request: {
      body: jsonBody(
        z.object({
          name: z.string().regex(/^[A-Za-z0-9_.:@-]{1,64}$/, "1-64 of letters, digits, _ . : @ -"),
          scopes: z.array(ScopeName).min(1).max(32),
          expiresInS: z.number().int().min(60).max(10 * 365 * 86_400).optional(),
        }).strict(),
      ),
    },
    responses: {
      201: jsonResponse(z.object({ token: z.string(), record: TokenView }), "Made"),
    },
  }),
  revokeToken: declareRoute({
    method: "delete",
    path: "/admin/tokens/{id}",
    tags: ["admin"],
    summary: "Revokes a machine token",
    access: admin,
    invalid: "Invalid token id: expected a UUID",
    request: {
      params: z.object({
        id: z.string().regex(
          /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/,
          "expected a UUID",
        ),
      }),
    },
    responses: {
      200: jsonResponse(z.object({ revoked: z.literal(true) }), "Revoked"),
      404: jsonResponse(z.looseObject({}), "No live token (MACHINE_TOKEN_NOT_FOUND)"),
    },
  }),
};

function accountView(u: User) {
  return {
    id: u.id,
    username: u.username,
    role: u.role,
    isActive: u.isActive,
    lastLoginAt: u.lastLoginAt?.toISOString() ?? null,
  };
}

function tokenView(t: MachineToken) {
  return {
    id: t.id,
    name: t.name,
    scopes: t.scopes,
    createdBy: t.createdBy,
    createdAt: t.createdAt.toISOString(),
    expiresAt: t.expiresAt?.toISOString() ?? null,
    lastUsedAt: t.lastUsedAt?.toISOString() ?? null,
    revokedAt: t.revokedAt?.toISOString() ?? null,
  };
}

/** The admin who acts: a session's user id, or null for the admin token. */
function actor(c: Context): number | null {
  const p = c.get("principal") as Principal;
  return p.kind === "session" ? p.auth.session.userId : null;
}

/** Adds the admin routes. */
export function addAdminRoutes(app: OpenAPIHono, deps: AdminRouteDeps): void {
  const { access } = deps;
  app.use("/admin/*", async (c, next) => {
    await next();
    c.header("cache-control", "no-store");
  });

  serve(app, ADMIN_ROUTES.users, async (c) => {
    const q = c.req.valid("query");
    const users = await access.listUsers({ role: q.role, limit: q.limit });
    return c.json({ users: users.map(accountView) });
  });

  serve(app, ADMIN_ROUTES.setRole, async (c) => {
    const id = Number(c.req.valid("param").id);
    const { role } = c.req.valid("json");
    const { before, user } = await access.setRole(id, role, actor(c));
    return c.json({ user: accountView(user), before });
  });

  serve(app, ADMIN_ROUTES.tokens, async (c) => {
    const tokens = await access.listTokens({
      includeRevoked: c.req.valid("query").revoked === "true",
    });
    return c.json({ tokens: tokens.map(tokenView) });
  });

  serve(app, ADMIN_ROUTES.createToken, async (c) => {
    const body = c.req.valid("json");
    const made = await access.createToken({
      name: body.name,
      scopes: body.scopes,
      expiresAt: body.expiresInS ? new Date(deps.now() + body.expiresInS * 1000) : null,
    }, actor(c));
    return c.json({ token: made.token, record: tokenView(made.record) }, 201);
  });

  serve(app, ADMIN_ROUTES.revokeToken, async (c) => {
    await access.revokeToken(c.req.valid("param").id.toLowerCase(), actor(c));
    return c.json({ revoked: true });
  });
}
