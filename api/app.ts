/**
 * The HTTP surface: one app (`@hono/zod-openapi` over Hono), one `fetch(Request) → Response`
 * entry point.
 *
 * Every route is declared (api/authz/declare.ts): its guard checks the caller, the origin
 * and the body's media type, its zod schemas validate the request, and the same
 * declarations make `/openapi.json`. {@linkcode assertAllDeclared} refuses an app with a
 * route that bypasses them.
 *
 * Errors are JSON `{ error: { code, message } }`; RuntimeError codes map to statuses,
 * an unreachable database to 503, anything unexpected to 500 without internals. A 401 says
 * `WWW-Authenticate: Bearer`, a rate limit or lock says `Retry-After`, and no error is
 * cached.
 * @module
 */
import { OpenAPIHono } from "@hono/zod-openapi";
import { HTTPException } from "hono/http-exception";
import { isConnectionError } from "../lib/db_errors.ts";
import { RuntimeError } from "../lib/errors.ts";
import { type Logger, silentLogger } from "../lib/log.ts";
import type { Authorizer } from "./authz/authorizer.ts";
import type { StreamLimiter } from "./authz/streams.ts";

/** What the app needs. */
export interface AppDeps {
  /** Decides who calls (api/authz/authorizer.ts). */
  authorizer: Authorizer;
  /** Request / error log. */
  log?: Logger;
  /** Caps on open event streams (api/authz/streams.ts); none without it. */
  streams?: StreamLimiter;
}

/** Longest request target (path and query) served, in characters. */
export const MAX_URL_LENGTH = 8 * 1024;
/** Most header bytes (names and values) a request may carry. */
export const MAX_HEADER_BYTES = 16 * 1024;

/** Codes of the HTTP errors Hono and its middleware raise themselves. */
const HTTP_CODES: Record<number, RuntimeError["code"]> = {
  400: "VALIDATION_FAILED",
  401: "UNAUTHORIZED",
  403: "FORBIDDEN",
  404: "NOT_FOUND",
  413: "VALIDATION_FAILED",
  415: "UNSUPPORTED_MEDIA_TYPE",
};

function withHeaders(res: Response, err: RuntimeError): Response {
  const retry = err.details?.retryAfterMs;
  if (typeof retry === "number") {
    res.headers.set("retry-after", String(Math.max(1, Math.ceil(retry / 1000))));
  }
  if (err.status === 401) res.headers.set("www-authenticate", 'Bearer realm="rootstream"');
  res.headers.set("cache-control", "no-store");
  return res;
}

/** Maps any thrown value to a JSON error response. */
export function errorResponse(err: unknown, log: Logger): Response {
  if (err instanceof HTTPException && HTTP_CODES[err.status]) {
    const code = HTTP_CODES[err.status];
    const e = new RuntimeError(code, err.message || `Refused (${err.status})`);
    return withHeaders(Response.json(e.toJSON(), { status: err.status }), e);
  }
  if (err instanceof RuntimeError) {
    if (err.status >= 500) log.warn("request failed", { code: err.code, error: err.message });
    return withHeaders(Response.json(err.toJSON(), { status: err.status }), err);
  }
  if (isConnectionError(err)) {
    const e = new RuntimeError("DATABASE_UNAVAILABLE", "The database is unreachable; try again");
    const res = Response.json(e.toJSON(), { status: 503, headers: { "retry-after": "2" } });
    return withHeaders(res, e);
  }
  log.error("unhandled error in request", {
    error: err instanceof Error ? (err.stack ?? err.message) : String(err),
  });
  return Response.json(
    { error: { code: "INTERNAL", message: "Internal error; it has been logged" } },
    { status: 500, headers: { "cache-control": "no-store" } },
  );
}

/** Where a validation issue was found, as the message names it. */
const TARGETS: Record<string, string> = {
  json: "body",
  form: "form",
  query: "query",
  param: "path",
  header: "header",
  cookie: "cookie",
};

/**
 * Builds the app: the authorizer on every request, VALIDATION_FAILED for a request that
 * fails its schemas (naming the field), JSON errors and a JSON 404. Every route comes from
 * a concern (concerns/mod.ts adds them all, the runtime's own through the `core` concern).
 */
export function createApp(deps: AppDeps): OpenAPIHono {
  const log = deps.log ?? silentLogger;
  const app = new OpenAPIHono({
    defaultHook: (result) => {
      if (result.success) return;
      const issue = result.error.issues[0];
      const where = TARGETS[result.target] ?? result.target;
      const field = issue?.path.length ? issue.path.join(".") : where;
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Invalid request: ${where === field ? field : `${where} ${field}`}: ${
          issue?.message ?? "does not match its schema"
        }`,
        { details: { field } },
      );
    },
  });
  app.use("*", async (c, next) => {
    // Bounded before any route reads them: a query or a header is parsed, matched and
    // logged by code that should not have to think about megabytes.
    const url = c.req.url;
    const target = url.length - (url.indexOf("/", url.indexOf("//") + 2) >>> 0);
    if (target > MAX_URL_LENGTH) {
      throw new RuntimeError(
        "URI_TOO_LONG",
        `Request target too long: ${target} characters, at most ${MAX_URL_LENGTH}`,
      );
    }
    let headerBytes = 0;
    c.req.raw.headers.forEach((value, name) => headerBytes += name.length + value.length + 4);
    if (headerBytes > MAX_HEADER_BYTES) {
      throw new RuntimeError(
        "HEADERS_TOO_LARGE",
        `Request headers too large: ${headerBytes} bytes, at most ${MAX_HEADER_BYTES}`,
      );
    }
    c.set("authorizer", deps.authorizer);
    c.set("streamLimiter", deps.streams);
    await next();
  });
  app.onError((err) => errorResponse(err, log));
  app.notFound((c) => {
    const e = new RuntimeError("NOT_FOUND", `No route for ${c.req.method} ${c.req.path}`);
    return Response.json(e.toJSON(), { status: 404 });
  });
  return app;
}

/** The routes of `app` that have no declaration (method and Hono path), sorted. */
export function undeclaredRoutes(app: OpenAPIHono): string[] {
  const declared = new Set<string>();
  for (const def of app.openAPIRegistry.definitions) {
    if (def.type !== "route") continue;
    declared.add(
      `${def.route.method.toUpperCase()} ${def.route.path.replaceAll(/\{(\w+)\}/g, ":$1")}`,
    );
  }
  const missing = new Set<string>();
  for (const r of app.routes) {
    // Middleware registered with `use` is not a route.
    if (r.method === "ALL") continue;
    const key = `${r.method} ${r.path}`;
    if (!declared.has(key)) missing.add(key);
  }
  return [...missing].sort();
}

/** Throws unless every route of `app` is declared (its caller checked, its schemas known). */
export function assertAllDeclared(app: OpenAPIHono): void {
  const missing = undeclaredRoutes(app);
  if (missing.length) {
    throw new RuntimeError(
      "CONFIG_INVALID",
      `Every route needs a declaration (api/authz/declare.ts); these have none: ${
        missing.join(", ")
      }`,
    );
  }
}
