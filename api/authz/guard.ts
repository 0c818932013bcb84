/**
 * The guard every declared route runs first (api/authz/declare.ts puts it there), before
 * its body is read or its schemas are checked:
 *
 * 1. state-changing methods: a request from a foreign origin (its `Origin`, or a browser's
 *    `Sec-Fetch-Site`) is refused with 403 ORIGIN_NOT_ALLOWED; one that relies on the
 *    session cookie must say where it comes from;
 * 2. the caller: resolved by the app's {@linkcode Authorizer} and compared with the route's
 *    access rule: 401 without a valid credential, 403 FORBIDDEN for the wrong one,
 *    403 REAUTH_REQUIRED where a fresh re-authentication is missing; pages send a person
 *    without a session to `/login` instead;
 * 3. the body: a declared JSON body must come as `application/json` (a form as
 *    `application/x-www-form-urlencoded`), else 415 UNSUPPORTED_MEDIA_TYPE; it is read up
 *    to the route's `maxBody` bytes;
 * 4. event streams: a slot per client address and of the instance (api/authz/streams.ts),
 *    else 429 STREAMS_PER_CLIENT_EXCEEDED or 503 STREAMS_EXHAUSTED.
 *
 * The principal is then available to the handler as `c.get("principal")`.
 * @module
 */
import type { MiddlewareHandler } from "hono";
import type { Context } from "hono";
import { bodyLimit } from "hono/body-limit";
import type { RouteConfig } from "@hono/zod-openapi";
import { renderForbiddenPage } from "../../console/login.ts";
import { roleAtLeast, type Scope } from "../../lib/access.ts";
import { RuntimeError } from "../../lib/errors.ts";
import type { Authorizer, Principal } from "./authorizer.ts";
import { isInternal } from "./authorizer.ts";
import { releasingBody, type StreamLimiter } from "./streams.ts";
import type { Access, RouteKind } from "./types.ts";

declare module "hono" {
  interface ContextVariableMap {
    /** The app's authorizer (api/app.ts sets it on every request). */
    authorizer: Authorizer;
    /** The caller, once the route's guard let it through. */
    principal: Principal;
    /** Caps on open event streams (api/app.ts sets it when the app has one). */
    streamLimiter: StreamLimiter | undefined;
  }
}

/** Headers of the page an account without the role sees. */
const PAGE_HEADERS = {
  "content-type": "text/html; charset=utf-8",
  "cache-control": "no-store",
  "x-content-type-options": "nosniff",
  "content-security-policy": "default-src 'none'; style-src 'self'; form-action 'self'; " +
    "frame-ancestors 'none'",
};

/** Methods that change state: the origin check applies. */
const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

/** Default largest body of a route that declares one. */
const DEFAULT_MAX_BODY = 64 * 1024;

/** What the guard of one route knows. */
export interface GuardOptions {
  /** The access rule. */
  access: Access;
  /** What the route answers with. */
  kind: RouteKind;
  /** Largest body read, in bytes. */
  maxBody?: number;
  /** The declared request (its body's media types matter here). */
  request?: RouteConfig["request"];
}

/** The app's authorizer; a route outside an app made by api/app.ts fails closed. */
export function authorizerOf(c: Context): Authorizer {
  const authz = c.get("authorizer");
  if (!authz) {
    throw new RuntimeError("INTERNAL", "No authorizer: routes must be served by createApp");
  }
  return authz;
}

/** The media type of a Content-Type header (no parameters), lower case. */
function mediaType(header: string | undefined): string | null {
  if (header === undefined) return null;
  return header.split(";", 1)[0].trim().toLowerCase();
}

function hasBody(c: Context): boolean {
  const length = c.req.header("content-length");
  if (length !== undefined) return length.trim() !== "0";
  return c.req.raw.body !== null;
}

/** Whether the principal may read what operators read (a machine token: with `scope`). */
async function isOperator(
  authz: Authorizer,
  p: Principal,
  method: string,
  scope: Scope | undefined,
): Promise<boolean | "stale"> {
  switch (p.kind) {
    case "admin_token":
      return true;
    case "peer":
      // Another instance of the cluster reads on an operator's behalf: never writes.
      return method === "GET" || method === "HEAD";
    case "machine":
      return scope !== undefined && p.scopes.includes(scope);
    case "session": {
      const authority = await authz.authority(p);
      if (!authority) return "stale";
      return roleAtLeast(authority.role, "operator");
    }
    default:
      return false;
  }
}

function fresh(authz: Authorizer, reauthenticatedAt: Date | null): boolean {
  return reauthenticatedAt !== null &&
    authz.now() - reauthenticatedAt.getTime() <= authz.reauthWindowMs;
}

function reauthRequired(authz: Authorizer, what: string): RuntimeError {
  const s = Math.round(authz.reauthWindowMs / 1000);
  return new RuntimeError(
    "REAUTH_REQUIRED",
    `${what} needs a re-authentication within the last ${s} s: POST /auth/reauth with your ` +
      "password (and a TOTP code when MFA is on), then retry",
    { details: { reauthenticate: "POST /auth/reauth", windowS: s } },
  );
}

function unauthorized(p: Principal): RuntimeError {
  if (p.kind === "anonymous" && p.failure) return p.failure;
  return new RuntimeError(
    "UNAUTHORIZED",
    "Authentication required: send a Bearer token or the session cookie",
  );
}

function forbidden(message: string): RuntimeError {
  return new RuntimeError("FORBIDDEN", message);
}

/**
 * Checks `p` against `access`; throws the 401 or 403 that fits. Returns normally when the
 * caller may go on.
 */
export async function authorize(
  authz: Authorizer,
  p: Principal,
  access: Access,
  method: string,
): Promise<void> {
  const what = "This route";
  switch (access.caller) {
    case "anonymous":
      return;
    case "user": {
      if (p.kind === "anonymous") throw unauthorized(p);
      if (p.kind !== "session") {
        throw forbidden(`${what} is for a signed-in person: use a session, not a token`);
      }
      if (access.stepUp) {
        const authority = await authz.authority(p);
        if (!authority) throw new RuntimeError("SESSION_INVALID", "The session is not valid");
        if (!fresh(authz, authority.reauthenticatedAt)) throw reauthRequired(authz, what);
      }
      return;
    }
    case "operator": {
      if (p.kind === "anonymous") throw unauthorized(p);
      const ok = await isOperator(authz, p, method, access.scope);
      if (ok === "stale") throw new RuntimeError("SESSION_INVALID", "The session is not valid");
      if (!ok) {
        throw forbidden(
          `${what} is for operators: an operator or admin session, the admin token` +
            (access.scope ? `, or a machine token with the scope ${access.scope}` : ""),
        );
      }
      return;
    }
    case "admin": {
      if (p.kind === "anonymous") throw unauthorized(p);
      if (p.kind === "admin_token") return;
      if (p.kind !== "session") {
        throw forbidden(`${what} is for admins: an admin session or the admin token`);
      }
      const authority = await authz.authority(p);
      if (!authority) throw new RuntimeError("SESSION_INVALID", "The session is not valid");
      if (authority.role !== "admin") {
        throw forbidden(`${what} is for admins: an admin session or the admin token`);
      }
      if (!fresh(authz, authority.reauthenticatedAt)) throw reauthRequired(authz, what);
      return;
    }
    case "machine": {
      if (p.kind === "anonymous") throw unauthorized(p);
      if (p.kind !== "machine" || !access.scope || !p.scopes.includes(access.scope)) {
        throw forbidden(`${what} needs a machine token with the scope ${access.scope}`);
      }
      return;
    }
  }
}

/** Whether `p` may see the details an `anonymous` route keeps for operators. */
export async function seesDetails(
  authz: Authorizer,
  p: Principal,
  scope: Scope,
  method = "GET",
): Promise<boolean> {
  try {
    await authorize(authz, p, { caller: "operator", scope }, method);
    return true;
  } catch (err) {
    if (err instanceof RuntimeError && (err.status === 401 || err.status === 403)) return false;
    throw err;
  }
}

/** A page's answer to a person without a session: the login form, then back here. */
function toLogin(c: Context): Response {
  const url = new URL(c.req.url);
  const next = encodeURIComponent(url.pathname + url.search);
  return new Response(null, {
    status: 303,
    headers: { location: `/login?next=${next}`, "cache-control": "no-store" },
  });
}

/** The guard middleware of one declared route. */
export function guard(options: GuardOptions): MiddlewareHandler {
  const { access, kind } = options;
  const content = options.request?.body?.content ?? {};
  const accepted = Object.keys(content).map((t) => t.toLowerCase());
  const limit = accepted.length
    ? bodyLimit({
      maxSize: options.maxBody ?? DEFAULT_MAX_BODY,
      onError: () => {
        throw new RuntimeError(
          "VALIDATION_FAILED",
          `Invalid request: the body exceeds ${options.maxBody ?? DEFAULT_MAX_BODY} bytes`,
        );
      },
    })
    : null;

  return async (c, next) => {
    const authz = authorizerOf(c);
    const method = c.req.method;
    if (UNSAFE.has(method) && !authz.originAllowed(c)) {
      throw new RuntimeError(
        "ORIGIN_NOT_ALLOWED",
        "Refused: a state-changing request with the session cookie must come from this " +
          "site (its Origin is not allowed, or the browser did not say where it comes from)",
      );
    }
    // Anonymous routes resolve the caller only if their handler asks (principalOf).
    if (access.caller !== "anonymous") {
      const p = await authz.principal(c);
      try {
        await authorize(authz, p, access, method);
      } catch (err) {
        if (kind === "page" && err instanceof RuntimeError && err.status === 401) {
          return toLogin(c);
        }
        if (kind === "page" && err instanceof RuntimeError && p.kind === "session") {
          const authority = await authz.authority(p);
          if (authority && err.code === "FORBIDDEN") {
            return new Response(
              renderForbiddenPage({ username: authority.username, role: authority.role }),
              { status: 403, headers: PAGE_HEADERS },
            );
          }
        }
        throw err;
      }
      c.set("principal", p);
    }
    if (accepted.length && hasBody(c)) {
      const type = mediaType(c.req.header("content-type"));
      const json = type === "application/json";
      const form = type === "application/x-www-form-urlencoded";
      const ok = (json && accepted.includes("application/json")) ||
        (form && accepted.includes("application/x-www-form-urlencoded"));
      if (!ok) {
        throw new RuntimeError(
          "UNSUPPORTED_MEDIA_TYPE",
          `Unsupported media type ${JSON.stringify(type ?? "(none)")}: the body must be ` +
            accepted.join(" or "),
        );
      }
    }
    // An event stream holds a slot of its client's and of the instance's until it ends
    // (in-process reads of the console are bounded by the console itself).
    const streams = kind === "events" && !isInternal(c) ? c.get("streamLimiter") : undefined;
    if (streams) {
      const release = streams.acquire(c);
      try {
        await next();
      } catch (err) {
        release();
        throw err;
      }
      // A refusal (its body read or not) holds nothing open.
      if (!c.res.ok) release();
      else c.res = releasingBody(c.res, release);
      return;
    }
    if (limit) return await limit(c, next);
    await next();
  };
}

/**
 * The caller of a request on any route: the one the guard checked, or (anonymous routes)
 * resolved now.
 */
export async function principalOf(c: Context): Promise<Principal> {
  const checked = c.get("principal");
  if (checked) return checked;
  const p = await authorizerOf(c).principal(c);
  c.set("principal", p);
  return p;
}
