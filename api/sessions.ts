/**
 * Routes of the sessions concern, authentication and sessions: registration, password + MFA
 * login, re-authentication, TOTP enrolment and unenrolment, backup codes, logout, refresh,
 * the caller's account and sessions.
 *
 * A session token is accepted as `Authorization: Bearer <token>` or as the session cookie
 * (`__Host-rs_session`: HttpOnly, Secure, Path=/, no Domain, SameSite=Strict; `rs_session`
 * without Secure in local development over http, see api/authz/settings.ts). Login sets the
 * cookie and also returns the token in the body for non-browser clients. The client may bind
 * its session to a device with `X-Device-Fingerprint`; a token then works only with the
 * same header.
 *
 * Changing authentication factors (enrolling, confirming or disabling MFA, new backup
 * codes) needs a re-authentication (`POST /auth/reauth`) within RS_REAUTH_WINDOW_S: a
 * stolen session alone cannot take the account over (403 REAUTH_REQUIRED).
 *
 * Every body is JSON (`application/json`, else 415), parsed with zod, at most 16 KiB; errors
 * are JSON `{ error: { code, message } }` with the catalogue's status, plus `Retry-After`
 * when rate limited or locked. Responses carrying tokens or secrets are
 * `Cache-Control: no-store`.
 * @module
 */
import { type OpenAPIHono, z } from "@hono/zod-openapi";
import type { Context } from "hono";
import { deleteCookie, setCookie } from "hono/cookie";
import type { AuthContext, LoginResult, SessionService } from "../actors/sessions/mod.ts";
import { ROLES } from "../lib/access.ts";
import type { Session } from "../store/sessions.ts";
import type { Passkey } from "../store/webauthn.ts";
import { authorizerOf, declareRoute, jsonBody, jsonResponse, serve } from "./authz/mod.ts";
import type { Principal } from "./authz/mod.ts";
import { requestContext } from "./client.ts";

/** What {@linkcode addSessionRoutes} needs. */
export interface SessionRoutesDeps {
  /** The sessions concern (actors/sessions). */
  sessions: SessionService;
  /**
   * Reverse proxies in front, each appending to `X-Forwarded-For` (api/client.ts): the
   * client is that many entries from the right, and `X-Geo-Location` is believed; 0: the
   * socket's address is used and no location is recorded.
   */
  trustedProxyHops?: number;
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
const method = z.enum(["totp", "backup_code"]);
const verifyBody = z.object({
  challenge: z.string().min(1).max(200),
  // A passkey's answer is its JSON (PublicKeyCredential.toJSON()), a few KiB at most.
  code: z.string().min(1).max(8192),
  method: z.enum(["totp", "backup_code", "webauthn", "email"]).optional(),
});
const challengeBody = z.object({ challenge: z.string().min(1).max(200) });
const passkeyBody = z.object({
  name: z.string().min(1).max(64),
  response: z.looseObject({}),
});
const PasskeyView = z.object({
  id: z.number(),
  name: z.string(),
  credentialId: z.string(),
  signCount: z.number(),
  deviceType: z.string(),
  backedUp: z.boolean(),
  createdAt: z.string(),
  lastUsedAt: z.string().nullable(),
}).openapi("Passkey");
const CodeSent = z.object({ sentTo: z.string(), expiresAt: z.string() });
const disableBody = codeBody.extend({ method: method.optional() });
const reauthBody = z.object({
  password: z.string().min(1).max(1024),
  // A passkey's answer is its JSON text.
  code: z.string().min(1).max(8192).optional(),
  method: z.enum(["totp", "backup_code", "webauthn", "email"]).optional(),
});
const uuid = z.string().regex(
  /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/,
  "expected a UUID",
);

const LoginAnswer = z.union([
  z.object({
    status: z.literal("authenticated"),
    token: z.string(),
    userId: z.number(),
    session: z.object({ id: z.string(), expiresAt: z.string() }),
    backupCodesRemaining: z.number().nullable(),
  }),
  z.object({
    status: z.literal("mfa_required"),
    challenge: z.string(),
    expiresAt: z.string(),
    methods: z.array(z.string()),
  }),
]).openapi("LoginAnswer");

const SessionView = z.object({
  id: z.string(),
  current: z.boolean(),
  createdAt: z.string(),
  expiresAt: z.string(),
  lastActivityAt: z.string().nullable(),
  ipAddress: z.string().nullable(),
  userAgent: z.string().nullable(),
  geoLocation: z.string().nullable(),
  isRemembered: z.boolean(),
  deviceBound: z.boolean(),
}).openapi("Session");

const UserView = z.object({
  id: z.number(),
  username: z.string(),
  email: z.string(),
  displayName: z.string().nullable(),
  role: z.enum(ROLES as ["user", "operator", "admin"]),
  createdAt: z.string(),
}).openapi("User");

const BackupCodes = z.object({ backupCodes: z.array(z.string()) });

const anyone = { caller: "anonymous" } as const;
const signedIn = { caller: "user" } as const;
const steppedUp = { caller: "user", stepUp: true } as const;

/** The sessions routes' declarations. */
export const SESSION_ROUTES = {
  register: declareRoute({
    method: "post",
    path: "/auth/register",
    tags: ["auth"],
    summary: "Creates an account (role user)",
    access: anyone,
    maxBody: MAX_BODY,
    request: { body: jsonBody(registerBody) },
    responses: {
      201: jsonResponse(z.object({ user: UserView.omit({ role: true }) }), "Created"),
      409: jsonResponse(z.looseObject({}), "Taken (USER_EXISTS)"),
      429: jsonResponse(z.looseObject({}), "Too many registrations (RATE_LIMITED)"),
    },
  }),
  login: declareRoute({
    method: "post",
    path: "/auth/login",
    tags: ["auth"],
    summary: "Password step of a login; sets the session cookie when no second factor is due",
    access: anyone,
    maxBody: MAX_BODY,
    request: { body: jsonBody(loginBody) },
    responses: {
      200: jsonResponse(LoginAnswer, "Authenticated, or a second factor is required"),
      401: jsonResponse(z.looseObject({}), "Wrong login or password (INVALID_CREDENTIALS)"),
      429: jsonResponse(z.looseObject({}), "Too many attempts (RATE_LIMITED, MFA_LOCKED)"),
    },
  }),
  verifyMfa: declareRoute({
    method: "post",
    path: "/auth/mfa/verify",
    tags: ["auth"],
    summary: "Second-factor step of a login",
    access: anyone,
    maxBody: MAX_BODY,
    request: { body: jsonBody(verifyBody) },
    responses: {
      200: jsonResponse(LoginAnswer, "Authenticated"),
      401: jsonResponse(z.looseObject({}), "Wrong code or expired challenge"),
      429: jsonResponse(z.looseObject({}), "Locked (MFA_LOCKED)"),
    },
  }),
  reauth: declareRoute({
    method: "post",
    path: "/auth/reauth",
    tags: ["auth"],
    summary: "Re-authentication: the password (and a code when MFA is on) again, for step-up",
    access: signedIn,
    maxBody: MAX_BODY,
    request: { body: jsonBody(reauthBody) },
    responses: {
      200: jsonResponse(z.object({ reauthenticatedAt: z.string() }), "Recorded on the session"),
      403: jsonResponse(z.looseObject({}), "Wrong password or code (REAUTH_FAILED)"),
      429: jsonResponse(z.looseObject({}), "Too many attempts (RATE_LIMITED, MFA_LOCKED)"),
    },
  }),
  reauthChallenge: declareRoute({
    method: "post",
    path: "/auth/reauth/challenge",
    tags: ["auth"],
    summary: "A passkey's options, or an e-mail code sent, for POST /auth/reauth",
    access: signedIn,
    maxBody: MAX_BODY,
    request: { body: jsonBody(z.object({ method: z.enum(["webauthn", "email"]) })) },
    responses: {
      200: jsonResponse(
        z.union([z.object({ options: z.looseObject({}) }), CodeSent]),
        "Options for navigator.credentials.get, or where the code went",
      ),
      409: jsonResponse(z.looseObject({}), "The account has no such factor (MFA_NOT_ENROLLED)"),
      429: jsonResponse(z.looseObject({}), "Too many codes sent (RATE_LIMITED)"),
    },
  }),
  me: declareRoute({
    method: "get",
    path: "/auth/me",
    tags: ["auth"],
    summary: "The caller's account, role and session",
    access: signedIn,
    responses: {
      200: jsonResponse(
        z.object({
          user: UserView,
          session: z.object({ id: z.string(), reauthenticatedAt: z.string().nullable() }),
        }),
        "The account",
      ),
    },
  }),
  mfaStatus: declareRoute({
    method: "get",
    path: "/auth/mfa",
    tags: ["auth"],
    summary: "The caller's MFA state",
    access: signedIn,
    responses: {
      200: jsonResponse(
        z.object({
          enrolled: z.boolean(),
          enabled: z.boolean(),
          backupCodesRemaining: z.number(),
          confirmedAt: z.string().nullable(),
          /** Passkeys registered. */
          passkeys: z.number(),
          /** E-mail codes on. */
          emailCodes: z.boolean(),
        }),
        "The MFA state (TOTP's, and how many passkeys, and whether e-mail codes are on)",
      ),
    },
  }),
  enroll: declareRoute({
    method: "post",
    path: "/auth/mfa/enroll",
    tags: ["auth"],
    summary: "Starts TOTP enrolment (needs a recent re-authentication)",
    access: steppedUp,
    responses: {
      200: jsonResponse(
        z.object({ secret: z.string(), uri: z.string(), qrSvg: z.string() }),
        "The secret, its otpauth:// URI and a QR code",
      ),
    },
  }),
  confirm: declareRoute({
    method: "post",
    path: "/auth/mfa/confirm",
    tags: ["auth"],
    summary: "Confirms enrolment with a code; revokes the other sessions (step-up)",
    access: steppedUp,
    maxBody: MAX_BODY,
    request: { body: jsonBody(codeBody) },
    responses: {
      200: jsonResponse(BackupCodes.extend({ enabled: z.literal(true) }), "Enabled"),
    },
  }),
  backupCodes: declareRoute({
    method: "post",
    path: "/auth/mfa/backup-codes",
    tags: ["auth"],
    summary: "New backup codes after a fresh TOTP code (step-up)",
    access: steppedUp,
    maxBody: MAX_BODY,
    request: { body: jsonBody(codeBody) },
    responses: { 200: jsonResponse(BackupCodes, "The new codes (shown once)") },
  }),
  disableMfa: declareRoute({
    method: "delete",
    path: "/auth/mfa",
    tags: ["auth"],
    summary: "Turns MFA off after a fresh code; revokes the other sessions (step-up)",
    access: steppedUp,
    maxBody: MAX_BODY,
    request: { body: jsonBody(disableBody) },
    responses: { 200: jsonResponse(z.object({ enabled: z.literal(false) }), "Disabled") },
  }),
  passkeyLogin: declareRoute({
    method: "post",
    path: "/auth/passkey/options",
    tags: ["auth"],
    summary:
      "Starts a passkey login: its challenge token and the options for navigator.credentials.get",
    access: anyone,
    responses: {
      200: jsonResponse(
        z.object({ challenge: z.string(), expiresAt: z.string(), options: z.looseObject({}) }),
        "Answer with POST /auth/mfa/verify, method webauthn",
      ),
      429: jsonResponse(z.looseObject({}), "Too many attempts (RATE_LIMITED)"),
    },
  }),
  mfaPasskeyOptions: declareRoute({
    method: "post",
    path: "/auth/mfa/passkey/options",
    tags: ["auth"],
    summary: "Options for a passkey as the second factor of a login attempt",
    access: anyone,
    maxBody: MAX_BODY,
    request: { body: jsonBody(challengeBody) },
    responses: {
      200: jsonResponse(z.object({ options: z.looseObject({}) }), "For navigator.credentials.get"),
      401: jsonResponse(z.looseObject({}), "Expired challenge (LOGIN_EXPIRED)"),
    },
  }),
  mfaEmailSend: declareRoute({
    method: "post",
    path: "/auth/mfa/email/send",
    tags: ["auth"],
    summary: "Sends a six-digit code by e-mail for a login attempt (rate-limited)",
    access: anyone,
    maxBody: MAX_BODY,
    request: { body: jsonBody(challengeBody) },
    responses: {
      200: jsonResponse(CodeSent, "Sent; answer with POST /auth/mfa/verify, method email"),
      401: jsonResponse(z.looseObject({}), "Expired challenge (LOGIN_EXPIRED)"),
      409: jsonResponse(z.looseObject({}), "E-mail codes are off (MFA_NOT_ENROLLED)"),
      429: jsonResponse(z.looseObject({}), "Too many codes sent (RATE_LIMITED)"),
      502: jsonResponse(z.looseObject({}), "The SMTP server refused (EMAIL_SEND_FAILED)"),
    },
  }),
  passkeys: declareRoute({
    method: "get",
    path: "/auth/passkeys",
    tags: ["auth"],
    summary: "The caller's passkeys",
    access: signedIn,
    responses: { 200: jsonResponse(z.object({ passkeys: z.array(PasskeyView) }), "Passkeys") },
  }),
  passkeyRegisterOptions: declareRoute({
    method: "post",
    path: "/auth/passkeys/options",
    tags: ["auth"],
    summary: "Options for navigator.credentials.create, bound to the session (step-up)",
    access: steppedUp,
    responses: { 200: jsonResponse(z.object({ options: z.looseObject({}) }), "Options") },
  }),
  passkeyRegister: declareRoute({
    method: "post",
    path: "/auth/passkeys",
    tags: ["auth"],
    summary: "Registers a passkey from its creation response, under a name (step-up)",
    access: steppedUp,
    maxBody: MAX_BODY,
    request: { body: jsonBody(passkeyBody) },
    responses: {
      201: jsonResponse(z.object({ passkey: PasskeyView }), "Registered"),
      401: jsonResponse(z.looseObject({}), "Did not verify (WEBAUTHN_REFUSED)"),
      409: jsonResponse(z.looseObject({}), "Registered already (WEBAUTHN_CREDENTIAL_EXISTS)"),
    },
  }),
  passkeyRemove: declareRoute({
    method: "delete",
    path: "/auth/passkeys/{id}",
    tags: ["auth"],
    summary: "Removes one of the caller's passkeys (step-up)",
    access: steppedUp,
    invalid: "Invalid passkey id: expected a positive integer",
    request: { params: z.object({ id: z.coerce.number().int().positive().max(2 ** 53) }) },
    responses: {
      200: jsonResponse(z.object({ removed: z.literal(true) }), "Removed"),
      404: jsonResponse(z.looseObject({}), "Not one of the caller's (WEBAUTHN_NOT_FOUND)"),
    },
  }),
  emailEnable: declareRoute({
    method: "post",
    path: "/auth/mfa/email/enable",
    tags: ["auth"],
    summary: "Sends a code to the account's address to turn e-mail codes on (step-up)",
    access: steppedUp,
    responses: { 200: jsonResponse(CodeSent, "Sent; confirm with POST /auth/mfa/email/confirm") },
  }),
  emailConfirm: declareRoute({
    method: "post",
    path: "/auth/mfa/email/confirm",
    tags: ["auth"],
    summary: "Turns e-mail codes on with the code sent (step-up)",
    access: steppedUp,
    maxBody: MAX_BODY,
    request: { body: jsonBody(codeBody) },
    responses: { 200: jsonResponse(z.object({ enabled: z.literal(true) }), "On") },
  }),
  emailDisable: declareRoute({
    method: "delete",
    path: "/auth/mfa/email",
    tags: ["auth"],
    summary: "Turns e-mail codes off (step-up)",
    access: steppedUp,
    responses: { 200: jsonResponse(z.object({ enabled: z.literal(false) }), "Off") },
  }),
  logout: declareRoute({
    method: "post",
    path: "/auth/logout",
    tags: ["auth"],
    summary: "Ends the caller's session and clears the cookie",
    access: signedIn,
    responses: { 200: jsonResponse(z.object({ loggedOut: z.literal(true) }), "Logged out") },
  }),
  refresh: declareRoute({
    method: "post",
    path: "/sessions/refresh",
    tags: ["auth"],
    summary: "Slides the caller's session expiry",
    access: signedIn,
    responses: { 200: jsonResponse(z.object({ session: SessionView }), "Refreshed") },
  }),
  list: declareRoute({
    method: "get",
    path: "/sessions",
    tags: ["auth"],
    summary: "The caller's live sessions, newest first",
    access: signedIn,
    responses: { 200: jsonResponse(z.object({ sessions: z.array(SessionView) }), "Sessions") },
  }),
  revoke: declareRoute({
    method: "delete",
    path: "/sessions/{id}",
    tags: ["auth"],
    summary: "Revokes one of the caller's sessions",
    access: signedIn,
    invalid: "Invalid session id: expected a UUID",
    request: { params: z.object({ id: uuid }) },
    responses: {
      200: jsonResponse(z.object({ revoked: z.literal(true) }), "Revoked"),
      404: jsonResponse(z.looseObject({}), "Not one of the caller's live sessions"),
    },
  }),
};

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

/** The session of a request the guard let through as `user`. */
function authOf(c: Context): AuthContext {
  const p = c.get("principal") as Principal;
  if (p?.kind !== "session") throw new Error("a user route ran without a session principal");
  return p.auth;
}

/** Sets the session cookie (the authorizer's policy) to expire with the session. */
export function setSessionCookie(
  c: Context,
  token: string,
  options: { expiresAt: number; now: number },
): void {
  const policy = authorizerOf(c).cookie;
  setCookie(c, policy.name, token, {
    path: "/",
    httpOnly: true,
    secure: policy.secure,
    sameSite: "Strict",
    maxAge: Math.max(0, Math.floor((options.expiresAt - options.now) / 1000)),
  });
}

/** Clears the session cookie. */
export function clearSessionCookie(c: Context): void {
  const policy = authorizerOf(c).cookie;
  deleteCookie(c, policy.name, {
    path: "/",
    secure: policy.secure,
    httpOnly: true,
    sameSite: "Strict",
  });
}

/** Adds the /auth and /sessions routes to `app`. */
export function addSessionRoutes(app: OpenAPIHono, deps: SessionRoutesDeps): void {
  const { sessions } = deps;
  const trustedProxyHops = deps.trustedProxyHops ?? 0;
  const R = SESSION_ROUTES;

  for (const path of ["/auth/*", "/sessions", "/sessions/*"]) {
    app.use(path, async (c, next) => {
      await next();
      c.header("cache-control", "no-store");
    });
  }

  function loggedIn(c: Context, result: LoginResult): Response {
    if (result.status === "authenticated") {
      setSessionCookie(c, result.token, {
        expiresAt: Date.parse(result.session.expiresAt),
        now: sessions.now(),
      });
    }
    return c.json(result);
  }

  serve(app, R.register, async (c) => {
    const user = await sessions.register(c.req.valid("json"), requestContext(c, trustedProxyHops));
    return c.json({
      user: {
        id: user.id,
        username: user.username,
        email: user.email,
        displayName: user.displayName,
        createdAt: user.createdAt.toISOString(),
      },
    }, 201);
  });

  serve(app, R.login, async (c) => {
    const input = c.req.valid("json");
    return loggedIn(c, await sessions.login(input, requestContext(c, trustedProxyHops)));
  });

  serve(app, R.verifyMfa, async (c) => {
    const input = c.req.valid("json");
    return loggedIn(c, await sessions.verifyMfa(input, requestContext(c, trustedProxyHops)));
  });

  serve(app, R.passkeyLogin, async (c) => {
    return c.json(await sessions.passkeyLogin(requestContext(c, trustedProxyHops)));
  });

  serve(app, R.mfaPasskeyOptions, async (c) => {
    return c.json({ options: await sessions.passkeyOptions(c.req.valid("json").challenge) });
  });

  serve(app, R.mfaEmailSend, async (c) => {
    return c.json(await sessions.sendLoginCode(c.req.valid("json").challenge));
  });

  function passkeyView(p: Passkey) {
    return {
      id: p.id,
      name: p.name,
      credentialId: p.credentialId,
      signCount: p.signCount,
      deviceType: p.deviceType,
      backedUp: p.backedUp,
      createdAt: p.createdAt.toISOString(),
      lastUsedAt: p.lastUsedAt?.toISOString() ?? null,
    };
  }

  serve(app, R.passkeys, async (c) => {
    return c.json({ passkeys: (await sessions.listPasskeys(authOf(c))).map(passkeyView) });
  });

  serve(app, R.passkeyRegisterOptions, async (c) => {
    return c.json({ options: await sessions.passkeyRegistrationOptions(authOf(c)) });
  });

  serve(app, R.passkeyRegister, async (c) => {
    const passkey = await sessions.registerPasskey(authOf(c), c.req.valid("json"));
    return c.json({ passkey: passkeyView(passkey) }, 201);
  });

  serve(app, R.passkeyRemove, async (c) => {
    await sessions.removePasskey(authOf(c), c.req.valid("param").id);
    return c.json({ removed: true as const });
  });

  serve(app, R.emailEnable, async (c) => {
    return c.json(await sessions.startEmailCodes(authOf(c)));
  });

  serve(app, R.emailConfirm, async (c) => {
    await sessions.confirmEmailCodes(
      authOf(c),
      c.req.valid("json").code,
      requestContext(c, trustedProxyHops),
    );
    return c.json({ enabled: true as const });
  });

  serve(app, R.emailDisable, async (c) => {
    await sessions.disableEmailCodes(authOf(c));
    return c.json({ enabled: false as const });
  });

  serve(app, R.reauthChallenge, async (c) => {
    return c.json(await sessions.reauthChallenge(authOf(c), c.req.valid("json").method));
  });

  serve(app, R.reauth, async (c) => {
    const { reauthenticatedAt } = await sessions.reauthenticate(
      authOf(c),
      c.req.valid("json"),
      requestContext(c, trustedProxyHops),
    );
    return c.json({ reauthenticatedAt: reauthenticatedAt.toISOString() });
  });

  serve(app, R.me, async (c) => {
    const auth = authOf(c);
    const { user, authority } = await sessions.me(auth);
    return c.json({
      user: {
        id: user.id,
        username: user.username,
        email: user.email,
        displayName: user.displayName,
        role: user.role,
        createdAt: user.createdAt.toISOString(),
      },
      session: {
        id: auth.session.id,
        reauthenticatedAt: authority.reauthenticatedAt?.toISOString() ?? null,
      },
    });
  });

  serve(app, R.mfaStatus, async (c) => {
    const userId = authOf(c).session.userId;
    const [status, passkeys, emailAddress] = await Promise.all([
      sessions.mfa.status(userId),
      sessions.factors.passkeys.count(userId),
      sessions.factors.emailCodes.address(userId),
    ]);
    return c.json({
      enrolled: status.enrolled,
      enabled: status.enabled,
      backupCodesRemaining: status.backupCodesRemaining,
      confirmedAt: status.confirmedAt?.toISOString() ?? null,
      passkeys,
      emailCodes: emailAddress !== null,
    });
  });

  serve(app, R.enroll, async (c) => c.json(await sessions.enrollMfa(authOf(c))));

  serve(app, R.confirm, async (c) => {
    const { code } = c.req.valid("json");
    const ctx = requestContext(c, trustedProxyHops);
    const { backupCodes } = await sessions.confirmMfa(authOf(c), code, ctx);
    return c.json({ enabled: true, backupCodes });
  });

  serve(app, R.backupCodes, async (c) => {
    const { code } = c.req.valid("json");
    const ctx = requestContext(c, trustedProxyHops);
    return c.json(await sessions.regenerateBackupCodes(authOf(c), code, ctx));
  });

  serve(app, R.disableMfa, async (c) => {
    await sessions.disableMfa(authOf(c), c.req.valid("json"), requestContext(c, trustedProxyHops));
    return c.json({ enabled: false });
  });

  serve(app, R.logout, async (c) => {
    await sessions.logout(authOf(c));
    clearSessionCookie(c);
    return c.json({ loggedOut: true });
  });

  serve(app, R.refresh, async (c) => {
    const auth = authOf(c);
    const s = await sessions.refresh(auth);
    const p = c.get("principal") as Principal;
    if (p.kind === "session" && p.viaCookie) {
      setSessionCookie(c, auth.token, { expiresAt: s.expiresAt.getTime(), now: sessions.now() });
    }
    return c.json({ session: sessionView(s, auth.session.id) });
  });

  serve(app, R.list, async (c) => {
    const auth = authOf(c);
    const list = await sessions.listSessions(auth);
    return c.json({ sessions: list.map((s) => sessionView(s, auth.session.id)) });
  });

  serve(app, R.revoke, async (c) => {
    const auth = authOf(c);
    const id = c.req.valid("param").id.toLowerCase();
    await sessions.revokeSession(auth, id);
    if (id === auth.session.id) clearSessionCookie(c);
    return c.json({ revoked: true });
  });
}
