/**
 * Who is calling: the one place a request's credential becomes a {@linkcode Principal}.
 *
 * A request presents at most one credential, looked at in this order:
 *
 * 1. an in-process request of the review console, carrying the principal of the person
 *    viewing it ({@linkcode internalEnv}: an object only this process can make);
 * 2. `X-RS-Peer`: another instance of the cluster (api/authz/peer.ts);
 * 3. `Authorization: Bearer <token>`: the admin token (RS_ADMIN_TOKEN), the static
 *    state-write token (RS_STATE_WRITE_TOKEN), a machine token (`rsm_…`), or a session
 *    token, in that order;
 * 4. the session cookie (`__Host-rs_session`, or `rs_session` in local development).
 *
 * A credential that is presented but not valid leaves the caller anonymous with the reason
 * (`failure`), which a route that needs a caller answers with (401). Nothing here decides
 * what the caller may do: api/authz/guard.ts compares the principal with the route's
 * declaration. Static tokens are compared in constant time (SHA-256 digests).
 * @module
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { Context } from "hono";
import { getCookie } from "hono/cookie";
import type { Role, Scope } from "../../lib/access.ts";
import { RuntimeError } from "../../lib/errors.ts";
import type { AuthContext, RequestContext } from "../../actors/sessions/mod.ts";
import type { SessionAuthority } from "../../store/sessions.ts";
import { requestContext } from "../client.ts";
import { PEER_HEADER, type PeerSigner } from "./peer.ts";
import type { AccessSettings } from "./settings.ts";

/** A caller. */
export type Principal =
  | {
    kind: "anonymous";
    /** Why a presented credential was refused, or null when none was presented. */
    failure: RuntimeError | null;
  }
  | {
    kind: "session";
    /** The validated session and its token. */
    auth: AuthContext;
    /** Whether it came as the cookie (then state-changing requests get the origin check). */
    viaCookie: boolean;
    /** The session's authority from PostgreSQL, read once per principal when needed. */
    authority?: Promise<SessionAuthority | null>;
  }
  | { kind: "admin_token" }
  | {
    kind: "machine";
    /** The token's id, or null for RS_STATE_WRITE_TOKEN. */
    id: string | null;
    /** Its name. */
    name: string;
    /** What it allows. */
    scopes: readonly Scope[];
  }
  | {
    kind: "peer";
    /** The instance that signed the request. */
    instance: string;
  };

/** What the authorizer needs from the sessions concern (concerns/mod.ts passes it). */
export interface AuthBackend {
  /** Validates a session token; throws the 401 that fits. */
  authenticate(token: string, ctx: RequestContext): Promise<AuthContext>;
  /** The session's role and last re-authentication, from PostgreSQL (null: not live). */
  authority(token: string): Promise<SessionAuthority | null>;
  /** The live machine token this is, or null. */
  verifyMachineToken(
    token: string,
  ): Promise<{ id: string; name: string; scopes: readonly Scope[] } | null>;
}

/** The session cookie's name and whether it is `Secure`. */
export interface CookiePolicy {
  /** `__Host-rs_session` (Secure) or `rs_session` (local development over http). */
  name: string;
  /** Whether the cookie is sent over https only. */
  secure: boolean;
}

/** Decides who is calling, for the guard of every route. */
export interface Authorizer {
  /** The caller of `c`, resolved once per request. */
  principal(c: Context): Promise<Principal>;
  /** A session principal's authority, read once per principal. */
  authority(p: Extract<Principal, { kind: "session" }>): Promise<SessionAuthority | null>;
  /** Whether a state-changing request may proceed, by its Origin (or Sec-Fetch-Site). */
  originAllowed(c: Context): boolean;
  /** Whether the request carries the session cookie and no other credential. */
  usesCookie(c: Context): boolean;
  /** The session cookie. */
  readonly cookie: CookiePolicy;
  /** How recent a re-authentication must be (ms). */
  readonly reauthWindowMs: number;
  /** Peer signatures, or null (no secret key). */
  readonly peer: PeerSigner | null;
  /** Clock (ms). */
  now(): number;
}

/** Options of {@linkcode createAuthorizer}. */
export interface AuthorizerOptions {
  /** The sessions concern, or null when it does not run (only static tokens then). */
  backend: AuthBackend | null;
  /** Access-control settings. */
  settings: AccessSettings;
  /** Peer signatures (shared secret key), or null. */
  peer?: PeerSigner | null;
  /** Proxies in front that append to X-Forwarded-For (api/client.ts); 0: the socket's address. */
  trustedProxyHops?: number;
  /** Clock (ms). */
  now?: () => number;
}

/** The session cookie for these settings. */
export function cookiePolicy(settings: Pick<AccessSettings, "secureCookie">): CookiePolicy {
  return settings.secureCookie
    ? { name: "__Host-rs_session", secure: true }
    : { name: "rs_session", secure: false };
}

const PRINCIPAL_ENV = Symbol("rootstream.principal");

/** Whether a request is one this process made itself (`app.request` with {@linkcode internalEnv}). */
export function isInternal(c: Context): boolean {
  return (c.env as Record<symbol, Principal> | undefined)?.[PRINCIPAL_ENV] !== undefined;
}
const RESOLVED = Symbol("rootstream.resolved");

/**
 * The `env` of an in-process request (`app.request(path, init, internalEnv(p))`) made on
 * behalf of `principal`: the route sees that principal, and no outside request can carry
 * it (a symbol-keyed object exists only in this process).
 */
export function internalEnv(principal: Principal): Record<symbol, Principal> {
  return { [PRINCIPAL_ENV]: principal };
}

function digest(text: string): Uint8Array {
  return new Uint8Array(createHash("sha256").update(text, "utf8").digest());
}

function sameSecret(given: string, expected: string | null): boolean {
  if (expected === null) return false;
  return timingSafeEqual(digest(given), digest(expected));
}

/** The bearer token of an `Authorization` header, or null when it is not a bearer header. */
function bearerToken(header: string): string | null {
  const trimmed = header.trim();
  if (trimmed.length > 4096 || trimmed.slice(0, 7).toLowerCase() !== "bearer ") return null;
  const token = trimmed.slice(7).trim();
  return token && !/\s/.test(token) ? token : null;
}

/** Creates the authorizer of an HTTP app. */
export function createAuthorizer(options: AuthorizerOptions): Authorizer {
  const { backend, settings } = options;
  const now = options.now ?? Date.now;
  const trustedProxyHops = options.trustedProxyHops ?? 0;
  const cookie = cookiePolicy(settings);
  const peer = options.peer ?? null;

  async function session(
    token: string,
    c: Context,
    viaCookie: boolean,
  ): Promise<Principal> {
    if (!backend) {
      return {
        kind: "anonymous",
        failure: new RuntimeError("UNAUTHORIZED", "Sessions are not served by this instance"),
      };
    }
    try {
      const auth = await backend.authenticate(token, requestContext(c, trustedProxyHops));
      return { kind: "session", auth, viaCookie };
    } catch (err) {
      if (err instanceof RuntimeError && err.status === 401) {
        return { kind: "anonymous", failure: err };
      }
      throw err;
    }
  }

  async function resolve(c: Context): Promise<Principal> {
    const internal = (c.env as Record<symbol, Principal> | undefined)?.[PRINCIPAL_ENV];
    if (internal) return internal;
    const signed = c.req.header(PEER_HEADER);
    if (signed !== undefined) {
      const url = new URL(c.req.url);
      const from = peer?.verify(signed, c.req.method, url.pathname + url.search) ?? null;
      return from ? { kind: "peer", instance: from } : {
        kind: "anonymous",
        failure: new RuntimeError(
          "UNAUTHORIZED",
          "The peer signature is not valid here (wrong key, path, instance or expired)",
        ),
      };
    }
    const header = c.req.header("authorization");
    if (header !== undefined) {
      const token = bearerToken(header);
      if (!token) {
        return {
          kind: "anonymous",
          failure: new RuntimeError(
            "UNAUTHORIZED",
            "The Authorization header must be `Bearer <token>`",
          ),
        };
      }
      // Both static tokens are compared every time, so which one (if any) matched is not
      // told by the time taken.
      // During a rotation the previous admin token is accepted too (docs/security.md).
      const isCurrentAdmin = sameSecret(token, settings.adminToken);
      const isPreviousAdmin = sameSecret(token, settings.adminTokenPrevious ?? null);
      const isAdmin = isCurrentAdmin || isPreviousAdmin;
      const isWriter = sameSecret(token, settings.stateWriteToken);
      if (isAdmin) return { kind: "admin_token" };
      if (isWriter) {
        // What it always allowed: writes and the conflicts queue (reads were open then).
        return {
          kind: "machine",
          id: null,
          name: "RS_STATE_WRITE_TOKEN",
          scopes: ["state:read", "state:write"],
        };
      }
      if (token.startsWith("rsm_")) {
        const machine = backend ? await backend.verifyMachineToken(token) : null;
        return machine
          ? { kind: "machine", id: machine.id, name: machine.name, scopes: machine.scopes }
          : {
            kind: "anonymous",
            failure: new RuntimeError(
              "UNAUTHORIZED",
              "The machine token is unknown, revoked or expired",
            ),
          };
      }
      return await session(token, c, false);
    }
    const fromCookie = getCookie(c, cookie.name);
    if (fromCookie) return await session(fromCookie, c, true);
    return { kind: "anonymous", failure: null };
  }

  function principal(c: Context): Promise<Principal> {
    const store = c as unknown as Record<symbol, Promise<Principal> | undefined>;
    store[RESOLVED] ??= resolve(c);
    return store[RESOLVED]!;
  }

  function authority(p: Extract<Principal, { kind: "session" }>) {
    if (!backend) return Promise.resolve(null);
    p.authority ??= backend.authority(p.auth.token);
    return p.authority;
  }

  function usesCookie(c: Context): boolean {
    return c.req.header("authorization") === undefined &&
      c.req.header(PEER_HEADER) === undefined && getCookie(c, cookie.name) !== undefined;
  }

  function originAllowed(c: Context): boolean {
    const origin = c.req.header("origin");
    if (origin === undefined || origin === "null") {
      // No usable Origin (older browsers on same-origin requests; a page whose referrer
      // policy is no-referrer sends "null"; programs): a browser says where the request
      // comes from in Sec-Fetch-Site, which no script can set. A program that sends the
      // cookie but neither header is refused when it relies on the cookie.
      const site = c.req.header("sec-fetch-site");
      if (site !== undefined) return site === "same-origin" || site === "none";
      return origin === undefined && !usesCookie(c);
    }
    if (origin.length > 512) return false;
    let canonical: string;
    try {
      canonical = new URL(origin).origin;
    } catch {
      return false;
    }
    if (settings.allowedOrigins.length) return settings.allowedOrigins.includes(canonical);
    // No list configured: the request's own host is the one allowed origin. A browser sets
    // Host to the server it talks to, so a page elsewhere cannot make them match.
    const host = c.req.header("host");
    return host !== undefined && new URL(canonical).host === host.toLowerCase();
  }

  return {
    principal,
    authority,
    originAllowed,
    usesCookie,
    cookie,
    reauthWindowMs: settings.reauthWindowMs,
    peer,
    now,
  };
}

/** The role of a principal for display and the matrix of docs/security.md. */
export function describePrincipal(p: Principal, role?: Role | null): string {
  switch (p.kind) {
    case "anonymous":
      return "anonymous";
    case "session":
      return `session of user ${p.auth.session.userId}${role ? ` (${role})` : ""}`;
    case "admin_token":
      return "the admin token";
    case "machine":
      return `machine token ${p.name}`;
    case "peer":
      return `instance ${p.instance}`;
  }
}
