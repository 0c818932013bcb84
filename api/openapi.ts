/**
 * The API's description: `GET /openapi.json` (OpenAPI 3.1), generated from the declarations
 * of the routes this app serves (api/authz/declare.ts), and the route table of
 * docs/security.md, generated from the same declarations (cli/routes_doc.ts). Each
 * operation carries its access rule in `x-rootstream-access` and the credentials it accepts
 * in `security`; the fuzzer (tests) generates requests for every operation from it.
 * @module
 */
import { OpenAPIHono, z } from "@hono/zod-openapi";
import { SCOPES } from "../lib/access.ts";
import { type Access, type DeclaredRoute, declareRoute, jsonResponse, serve } from "./authz/mod.ts";

/** The document's info block. */
const INFO = {
  title: "RootStream Runtime",
  description: "The data plane runtime's HTTP API. Every operation says who may call it in " +
    "`x-rootstream-access` (caller: anonymous, user, operator, admin or machine; scope; " +
    "stepUp) and which credentials it accepts in `security`. docs/security.md explains them.",
};

/** The credentials the API knows. */
const SECURITY_SCHEMES = {
  sessionCookie: {
    type: "apiKey",
    in: "cookie",
    name: "__Host-rs_session",
    description: "The session cookie set by POST /auth/login or POST /login (`rs_session` " +
      "in local development over http). State-changing requests must come from an allowed " +
      "origin.",
  },
  bearer: {
    type: "http",
    scheme: "bearer",
    description: "A session token (the `token` of POST /auth/login)",
  },
  adminToken: {
    type: "http",
    scheme: "bearer",
    description: "RS_ADMIN_TOKEN: admin actions and operator views",
  },
  machineToken: {
    type: "http",
    scheme: "bearer",
    description: "A machine token (`rsm_…`, made by an admin) with the scope the operation " +
      `names. Scopes: ${Object.entries(SCOPES).map(([s, d]) => `${s} (${d})`).join("; ")}`,
  },
} as const;

/** The declaration of `GET /openapi.json`. */
export const OPENAPI_ROUTES = {
  document: declareRoute({
    method: "get",
    path: "/openapi.json",
    tags: ["meta"],
    summary: "This API's description (OpenAPI 3.1)",
    access: { caller: "anonymous" },
    responses: { 200: jsonResponse(z.looseObject({ openapi: z.string() }), "The document") },
  }),
};

/** An OpenAPI 3.1 document of the routes declared on `app`. */
export function openApiDocument(app: OpenAPIHono, version: string): Record<string, unknown> {
  const registry = app.openAPIRegistry;
  const known = new Set(
    registry.definitions.flatMap((d) =>
      d.type === "component" && d.componentType === "securitySchemes" ? [d.name] : []
    ),
  );
  for (const [name, scheme] of Object.entries(SECURITY_SCHEMES)) {
    if (!known.has(name)) registry.registerComponent("securitySchemes", name, scheme);
  }
  return app.getOpenAPI31Document({
    openapi: "3.1.0",
    info: { ...INFO, version },
  }) as unknown as Record<string, unknown>;
}

/** The document of a list of declarations (no running app needed: docs, tests). */
export function documentOf(
  routes: readonly DeclaredRoute[],
  version: string,
): Record<string, unknown> {
  const app = new OpenAPIHono();
  for (const route of routes) {
    const { middleware: _middleware, ...config } = route as DeclaredRoute & {
      middleware?: unknown;
    };
    app.openAPIRegistry.registerPath(config as DeclaredRoute);
  }
  return openApiDocument(app, version);
}

/** Adds `GET /openapi.json`: the document of every route `app` serves, made once. */
export function addOpenApiRoute(app: OpenAPIHono, options: { version: string }): void {
  let document: string | null = null;
  serve(app, OPENAPI_ROUTES.document, (c) => {
    document ??= JSON.stringify(openApiDocument(app, options.version));
    c.header("content-type", "application/json; charset=utf-8");
    c.header("cache-control", "no-cache");
    return c.body(document);
  });
}

/** One row of the route table. */
export interface RouteRow {
  /** HTTP method, upper case. */
  method: string;
  /** OpenAPI path. */
  path: string;
  /** The access rule. */
  access: Access;
  /** What it does. */
  summary: string;
}

/** The rows of the route table of a document, sorted by path and method. */
export function routeRows(document: Record<string, unknown>): RouteRow[] {
  const rows: RouteRow[] = [];
  const paths = document.paths as Record<string, Record<string, Record<string, unknown>>>;
  for (const [path, ops] of Object.entries(paths)) {
    for (const [method, op] of Object.entries(ops)) {
      rows.push({
        method: method.toUpperCase(),
        path,
        access: op["x-rootstream-access"] as Access,
        summary: String(op.summary ?? ""),
      });
    }
  }
  const order = ["GET", "POST", "PUT", "PATCH", "DELETE"];
  return rows.sort((a, b) =>
    a.path.localeCompare(b.path) || order.indexOf(a.method) - order.indexOf(b.method)
  );
}

/** Who may call, in words, for the route table. */
export function describeAccess(a: Access): string {
  switch (a.caller) {
    case "anonymous":
      return a.details ? `anyone (details: operator or \`${a.details.scope}\`)` : "anyone";
    case "user":
      return a.stepUp ? "signed-in user, re-authenticated" : "signed-in user";
    case "operator":
      return a.scope ? `operator, or token \`${a.scope}\`` : "operator";
    case "admin":
      return "admin (re-authenticated) or admin token";
    case "machine":
      return `token \`${a.scope}\``;
  }
}

/** The route table as Markdown. */
export function routeTable(document: Record<string, unknown>): string {
  const lines = ["| method | path | who may call | what it does |", "| --- | --- | --- | --- |"];
  for (const r of routeRows(document)) {
    lines.push(
      `| ${r.method} | \`${r.path}\` | ${describeAccess(r.access)} | ${
        r.summary.replaceAll("|", "\\|")
      } |`,
    );
  }
  return lines.join("\n");
}
