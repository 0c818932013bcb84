/**
 * Signing in to the review console with a browser, without JavaScript: `GET /login` shows
 * the form, `POST /login` checks the password (and `POST /login/mfa` the second factor when
 * the account has one), sets the session cookie and sends the person back to where they
 * were going; `POST /logout` ends the session. The same login as `POST /auth/login` (its
 * rate limits, its statechart); only the answers are pages.
 *
 * The forms are state-changing requests from this site: the guard refuses them from a
 * foreign origin (no logging a victim in to an attacker's account).
 * @module
 */
import { type OpenAPIHono, z } from "@hono/zod-openapi";
import type { Context } from "hono";
import type { LoginResult, SessionService } from "../actors/sessions/mod.ts";
import { RuntimeError } from "../lib/errors.ts";
import { renderLoginPage, renderMfaPage } from "../console/login.ts";
import { declareRoute, formBody, principalOf, serve } from "./authz/mod.ts";
import { requestContext } from "./client.ts";
import { clearSessionCookie, setSessionCookie } from "./sessions.ts";

/** What the login pages need. */
export interface LoginPageDeps {
  /** The sessions concern. */
  sessions: SessionService;
  /** Proxies in front that append to X-Forwarded-For (api/client.ts); 0: the socket's address. */
  trustedProxyHops?: number;
}

/** Headers of every page: no caching, nothing foreign, forms only to this site. */
export const PAGE_HEADERS: Record<string, string> = {
  "content-type": "text/html; charset=utf-8",
  "cache-control": "no-store",
  "x-content-type-options": "nosniff",
  "referrer-policy": "same-origin",
  // script-src / connect-src 'self': the passkey button (console/passkey.js) and its fetches.
  "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; " +
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; " +
    "frame-ancestors 'none'",
};

/** A local path to go to after signing in; anything else (another site) becomes `/`. */
export function safeNext(next: string | undefined | null): string {
  if (!next || next.length > 1024 || !next.startsWith("/") || next.startsWith("//")) return "/";
  // Backslashes and control characters can turn a path into another site in some browsers.
  for (const ch of next) if (ch === "\\" || ch.charCodeAt(0) < 32) return "/";
  return next;
}

const html = { "text/html": { schema: z.string() } };

/** The login pages' declarations. */
export const LOGIN_ROUTES = {
  form: declareRoute({
    method: "get",
    path: "/login",
    tags: ["console"],
    summary: "The console's sign-in form",
    access: { caller: "anonymous" },
    kind: "page",
    request: { query: z.object({ next: z.string().max(1024).optional() }) },
    responses: { 200: { description: "The form", content: html } },
  }),
  login: declareRoute({
    method: "post",
    path: "/login",
    tags: ["console"],
    summary: "Signs in from the form: 303 to `next`, or the second factor's form",
    access: { caller: "anonymous" },
    kind: "page",
    maxBody: 8 * 1024,
    request: {
      body: formBody(z.object({
        login: z.string().max(254),
        password: z.string().max(1024),
        next: z.string().max(1024).optional(),
      })),
    },
    responses: {
      200: { description: "The second factor's form", content: html },
      303: { description: "Signed in: to `next`" },
      401: { description: "The form again, saying why", content: html },
      429: { description: "Too many attempts: the form again, with Retry-After", content: html },
      503: { description: "Busy or unavailable: the form again, with Retry-After", content: html },
    },
  }),
  mfa: declareRoute({
    method: "post",
    path: "/login/mfa",
    tags: ["console"],
    summary: "The second factor from the form: 303 to `next`",
    access: { caller: "anonymous" },
    kind: "page",
    maxBody: 8 * 1024,
    request: {
      body: formBody(z.object({
        challenge: z.string().max(200),
        code: z.string().max(64),
        method: z.enum(["totp", "backup_code", "email"]).optional(),
        next: z.string().max(1024).optional(),
      })),
    },
    responses: {
      303: { description: "Signed in: to `next`" },
      401: { description: "The form again, saying why", content: html },
      429: { description: "Too many attempts: the form again, with Retry-After", content: html },
      503: { description: "Busy or unavailable: the form again, with Retry-After", content: html },
    },
  }),
  mfaEmail: declareRoute({
    method: "post",
    path: "/login/mfa/email",
    tags: ["console"],
    summary: "Sends the e-mail code of a login attempt; the second factor's form again",
    access: { caller: "anonymous" },
    kind: "page",
    maxBody: 8 * 1024,
    request: {
      body: formBody(z.object({
        challenge: z.string().max(200),
        next: z.string().max(1024).optional(),
      })),
    },
    responses: {
      200: { description: "The form, saying where the code went", content: html },
      401: { description: "The form again, saying why", content: html },
      429: { description: "Too many codes: the form again, with Retry-After", content: html },
      503: { description: "Busy or unavailable: the form again, with Retry-After", content: html },
    },
  }),
  logout: declareRoute({
    method: "post",
    path: "/logout",
    tags: ["console"],
    summary: "Signs out (ends the session if there is one) and goes to the form",
    access: { caller: "anonymous" },
    kind: "page",
    responses: { 303: { description: "To /login" } },
  }),
};

function pageResponse(c: Context, body: string, status: 200 | 401 | 429 | 503): Response {
  for (const [k, v] of Object.entries(PAGE_HEADERS)) c.header(k, v);
  return c.body(body, status);
}

function redirect(c: Context, to: string): Response {
  c.header("cache-control", "no-store");
  return c.redirect(to, 303);
}

/** The status and sentence a failed sign-in shows on the form. */
/** How a page answers a refused sign-in: its status and sentence, plus the error's code and
 * `Retry-After` as headers, so a script or a probe reads the same code a JSON client gets. */
function refusal(
  c: Context,
  err: unknown,
): { status: 401 | 429 | 503; message: string } {
  if (!(err instanceof RuntimeError) || err.status >= 500 && err.status !== 503) throw err;
  c.header("x-error-code", err.code);
  const retry = err.details?.retryAfterMs;
  if (typeof retry === "number") {
    c.header("retry-after", String(Math.max(1, Math.ceil(retry / 1000))));
  }
  if (err.status === 429) return { status: 429, message: err.message };
  if (err.status === 503) return { status: 503, message: err.message };
  if (err.code === "INVALID_CREDENTIALS") {
    return { status: 401, message: "Wrong username or password." };
  }
  return { status: 401, message: err.message };
}

/** Adds the login pages. */
export function addLoginPages(app: OpenAPIHono, deps: LoginPageDeps): void {
  const { sessions } = deps;
  const trustedProxyHops = deps.trustedProxyHops ?? 0;

  function signedIn(c: Context, result: LoginResult, next: string): Response {
    if (result.status !== "authenticated") {
      return pageResponse(
        c,
        renderMfaPage({ next, challenge: result.challenge, methods: result.methods }),
        200,
      );
    }
    setSessionCookie(c, result.token, {
      expiresAt: Date.parse(result.session.expiresAt),
      now: sessions.now(),
    });
    return redirect(c, next);
  }

  serve(app, LOGIN_ROUTES.form, (c) => {
    const next = safeNext(c.req.valid("query").next);
    return pageResponse(c, renderLoginPage({ next }), 200);
  });

  serve(app, LOGIN_ROUTES.login, async (c) => {
    const input = c.req.valid("form");
    const next = safeNext(input.next);
    try {
      const result = await sessions.login(
        { login: input.login, password: input.password },
        requestContext(c, trustedProxyHops),
      );
      return signedIn(c, result, next);
    } catch (err) {
      const { status, message } = refusal(c, err);
      return pageResponse(c, renderLoginPage({ next, login: input.login, error: message }), status);
    }
  });

  serve(app, LOGIN_ROUTES.mfa, async (c) => {
    const input = c.req.valid("form");
    const next = safeNext(input.next);
    try {
      const result = await sessions.verifyMfa({
        challenge: input.challenge,
        code: input.code,
        method: input.method ?? "totp",
      }, requestContext(c, trustedProxyHops));
      return signedIn(c, result, next);
    } catch (err) {
      const { status, message } = refusal(c, err);
      // A challenge that ended (expired, too many codes) cannot take another code.
      const over = err instanceof RuntimeError &&
        (err.code === "LOGIN_EXPIRED" || err.code === "MFA_LOCKED" ||
          (err.details as { attemptsLeft?: number } | undefined)?.attemptsLeft === 0);
      return pageResponse(
        c,
        over
          ? renderLoginPage({ next, error: message })
          : renderMfaPage({ next, challenge: input.challenge, error: message }),
        status,
      );
    }
  });

  serve(app, LOGIN_ROUTES.mfaEmail, async (c) => {
    const input = c.req.valid("form");
    const next = safeNext(input.next);
    try {
      const sent = await sessions.sendLoginCode(input.challenge);
      return pageResponse(
        c,
        renderMfaPage({
          next,
          challenge: input.challenge,
          notice: `A code was sent to ${sent.sentTo}; it is valid for 10 minutes.`,
        }),
        200,
      );
    } catch (err) {
      const { status, message } = refusal(c, err);
      return pageResponse(
        c,
        err instanceof RuntimeError && err.code === "LOGIN_EXPIRED"
          ? renderLoginPage({ next, error: message })
          : renderMfaPage({ next, challenge: input.challenge, error: message }),
        status,
      );
    }
  });

  serve(app, LOGIN_ROUTES.logout, async (c) => {
    const p = await principalOf(c);
    if (p.kind === "session") await sessions.logout(p.auth);
    clearSessionCookie(c);
    return redirect(c, "/login");
  });
}
