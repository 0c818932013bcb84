/**
 * Routes of the sessions concern, authentication and sessions: registration, password + MFA login, TOTP
 * enrolment and unenrolment, backup codes, logout, refresh, and the caller's sessions.
 *
 * A session token is accepted as `Authorization: Bearer <token>` or as the
 * `rs_session` cookie (HttpOnly, Secure, SameSite=Strict: scripts cannot read it and
 * other sites cannot make the browser send it). Login sets the cookie and also returns
 * the token in the body for non-browser clients. The client may bind its session to a
 * device with `X-Device-Fingerprint`; a token then works only with the same header.
 *
 * Every body is parsed with zod (at most 16 KiB); errors are JSON `{ error: { code,
 * message } }` with the catalogue's status, plus `Retry-After` when rate limited or locked.
 * Responses carrying tokens or secrets are `Cache-Control: no-store`.
 * @module
 */
import { isIP } from "node:net";
import type { Context, Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { deleteCookie, getCookie, setCookie } from "hono/cookie";
import { z } from "zod";
import type {
  AuthContext,
  LoginResult,
  RequestContext,
  SessionService,
} from "../actors/sessions/mod.ts";
import { RuntimeError } from "../lib/errors.ts";
import { type Logger, silentLogger } from "../lib/log.ts";
import type { Session } from "../store/sessions.ts";
import { errorResponse } from "./app.ts";

/** What {@linkcode addSessionRoutes} needs. */
export interface SessionRoutesDeps {
  /** The sessions concern (actors/sessions). */
  sessions: SessionService;
  /** Name of the session cookie; `rs_session`. */
  cookieName?: string;
  /**
   * Trust `X-Forwarded-For` / `X-Geo-Location` from a reverse proxy (only behind one that
   * overwrites them); otherwise the socket's address is used and no location is recorded.
   */
  trustProxy?: boolean;
  /** Log. */
  log?: Logger;
}

const MAX_BODY = 16 * 1024;

const registerBody = z.object({
  username: z.string().max(64),
  email: z.string().max(254),
  password: z.string().max(1024),
  displayName: z.string().max(200).nullable().optional(),
});
const loginBody = z.object({
  login: z.string().min(1).max(254),
  password: z.string().min(1).max(1024),
  remember: z.boolean().optional(),
});
const codeBody = z.object({ code: z.string().min(1).max(64) });
const verifyBody = z.object({
  challenge: z.string().min(1).max(200),
  code: z.string().min(1).max(64),
  method: z.enum(["totp", "backup_code"]).optional(),
});
const disableBody = codeBody.extend({ method: z.enum(["totp", "backup_code"]).optional() });
const uuidParam = z.string().regex(
  /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i,
);

async function body<T>(c: Context, schema: z.ZodType<T>): Promise<T> {
  let raw: unknown;
  try {
    raw = await c.req.json();
  } catch {
    throw new RuntimeError("VALIDATION_FAILED", "Invalid request: the body must be JSON");
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const field = issue.path.join(".") || "body";
    throw new RuntimeError("VALIDATION_FAILED", `Invalid request: ${field}: ${issue.message}`, {
      details: { field },
    });
  }
  return parsed.data;
}

function clientIp(c: Context, trustProxy: boolean): string | null {
  if (trustProxy) {
    const forwarded = c.req.header("x-forwarded-for")?.split(",")[0]?.trim();
    if (forwarded && isIP(forwarded)) return forwarded;
  }
  const info = c.env as { remoteAddr?: { hostname?: string } } | undefined;
  const host = info?.remoteAddr?.hostname;
  return host && isIP(host) ? host : null;
}

function requestContext(c: Context, trustProxy: boolean): RequestContext {
  const fingerprint = c.req.header("x-device-fingerprint")?.trim();
  return {
    fingerprint: fingerprint ? fingerprint.slice(0, 255) : null,
    ipAddress: clientIp(c, trustProxy),
    userAgent: c.req.header("user-agent") ?? null,
    geoLocation: trustProxy ? c.req.header("x-geo-location") ?? null : null,
  };
}

function bearer(c: Context, cookieName: string): string | null {
  const header = c.req.header("authorization");
  if (header) {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    return m ? m[1] : "";
  }
  return getCookie(c, cookieName) ?? null;
}

function sessionView(s: Session, currentId: string | null) {
  return {
    id: s.id,
    current: s.id === currentId,
    createdAt: s.createdAt.toISOString(),
    expiresAt: s.expiresAt.toISOString(),
    lastActivityAt: s.lastActivityAt?.toISOString() ?? null,
    ipAddress: s.ipAddress,
    userAgent: s.userAgent,
    geoLocation: s.geoLocation,
    isRemembered: s.isRemembered,
    deviceBound: s.deviceFingerprint !== null,
  };
}

/** Adds the /auth and /sessions routes to `app`. */
export function addSessionRoutes(app: Hono, deps: SessionRoutesDeps): void {
  const { sessions } = deps;
  const cookieName = deps.cookieName ?? "rs_session";
  const trustProxy = deps.trustProxy ?? false;
  const log = deps.log ?? silentLogger;

  type Handler = (c: Context) => Promise<Response>;
  // Errors become the shared JSON shape; rate limits and locks also say when to retry.
  function handle(fn: Handler): Handler {
    return async (c) => {
      try {
        return await fn(c);
      } catch (err) {
        const res = errorResponse(err, log);
        const retry = err instanceof RuntimeError ? err.details?.retryAfterMs : undefined;
        if (typeof retry === "number") {
          res.headers.set("retry-after", String(Math.max(1, Math.ceil(retry / 1000))));
        }
        if (err instanceof RuntimeError && err.status === 401) {
          res.headers.set("www-authenticate", 'Bearer realm="rootstream"');
        }
        res.headers.set("cache-control", "no-store");
        return res;
      }
    };
  }

  function authed(fn: (c: Context, auth: AuthContext, ctx: RequestContext) => Promise<Response>) {
    return handle(async (c) => {
      const ctx = requestContext(c, trustProxy);
      const auth = await sessions.authenticate(bearer(c, cookieName), ctx);
      return await fn(c, auth, ctx);
    });
  }

  function loggedIn(c: Context, result: LoginResult): Response {
    if (result.status === "authenticated") {
      const maxAge = Math.max(
        0,
        Math.floor((Date.parse(result.session.expiresAt) - sessions.now()) / 1000),
      );
      setCookie(c, cookieName, result.token, {
        path: "/",
        httpOnly: true,
        secure: true,
        sameSite: "Strict",
        maxAge,
      });
    }
    return c.json(result);
  }

  const limit = bodyLimit({
    maxSize: MAX_BODY,
    onError: () =>
      errorResponse(
        new RuntimeError(
          "VALIDATION_FAILED",
          `Invalid request: the body exceeds ${MAX_BODY} bytes`,
        ),
        log,
      ),
  });
  for (const path of ["/auth/*", "/sessions", "/sessions/*"]) {
    app.use(path, limit);
    app.use(path, async (c, next) => {
      await next();
      c.header("cache-control", "no-store");
    });
  }

  app.post(
    "/auth/register",
    handle(async (c) => {
      const input = await body(c, registerBody);
      const user = await sessions.register(input, requestContext(c, trustProxy));
      return c.json({
        user: {
          id: user.id,
          username: user.username,
          email: user.email,
          displayName: user.displayName,
          createdAt: user.createdAt.toISOString(),
        },
      }, 201);
    }),
  );

  app.post(
    "/auth/login",
    handle(async (c) => {
      const input = await body(c, loginBody);
      return loggedIn(c, await sessions.login(input, requestContext(c, trustProxy)));
    }),
  );

  app.post(
    "/auth/mfa/verify",
    handle(async (c) => {
      const input = await body(c, verifyBody);
      return loggedIn(c, await sessions.verifyMfa(input, requestContext(c, trustProxy)));
    }),
  );

  app.get(
    "/auth/mfa",
    authed(async (c, auth) => {
      const status = await sessions.mfa.status(auth.session.userId);
      return c.json({
        enrolled: status.enrolled,
        enabled: status.enabled,
        backupCodesRemaining: status.backupCodesRemaining,
        confirmedAt: status.confirmedAt?.toISOString() ?? null,
      });
    }),
  );

  app.post(
    "/auth/mfa/enroll",
    authed(async (c, auth) => c.json(await sessions.enrollMfa(auth))),
  );

  app.post(
    "/auth/mfa/confirm",
    authed(async (c, auth, ctx) => {
      const { code } = await body(c, codeBody);
      const { backupCodes } = await sessions.confirmMfa(auth, code, ctx);
      return c.json({ enabled: true, backupCodes });
    }),
  );

  app.post(
    "/auth/mfa/backup-codes",
    authed(async (c, auth, ctx) => {
      const { code } = await body(c, codeBody);
      return c.json(await sessions.regenerateBackupCodes(auth, code, ctx));
    }),
  );

  app.delete(
    "/auth/mfa",
    authed(async (c, auth, ctx) => {
      const input = await body(c, disableBody);
      await sessions.disableMfa(auth, input, ctx);
      return c.json({ enabled: false });
    }),
  );

  app.post(
    "/auth/logout",
    authed(async (c, auth) => {
      await sessions.logout(auth);
      deleteCookie(c, cookieName, { path: "/", secure: true, httpOnly: true, sameSite: "Strict" });
      return c.json({ loggedOut: true });
    }),
  );

  app.post(
    "/sessions/refresh",
    authed(async (c, auth) => {
      const s = await sessions.refresh(auth);
      if (getCookie(c, cookieName) === auth.token) {
        setCookie(c, cookieName, auth.token, {
          path: "/",
          httpOnly: true,
          secure: true,
          sameSite: "Strict",
          maxAge: Math.max(0, Math.floor((s.expiresAt.getTime() - sessions.now()) / 1000)),
        });
      }
      return c.json({ session: sessionView(s, auth.session.id) });
    }),
  );

  app.get(
    "/sessions",
    authed(async (c, auth) => {
      const list = await sessions.listSessions(auth);
      return c.json({ sessions: list.map((s) => sessionView(s, auth.session.id)) });
    }),
  );

  app.delete(
    "/sessions/:id",
    authed(async (c, auth) => {
      const id = uuidParam.safeParse(c.req.param("id"));
      if (!id.success) {
        throw new RuntimeError("VALIDATION_FAILED", "Invalid session id: expected a UUID");
      }
      await sessions.revokeSession(auth, id.data.toLowerCase());
      if (id.data.toLowerCase() === auth.session.id) {
        deleteCookie(c, cookieName, {
          path: "/",
          secure: true,
          httpOnly: true,
          sameSite: "Strict",
        });
      }
      return c.json({ revoked: true });
    }),
  );
}
