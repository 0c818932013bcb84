/**
 * Settings of access control (the HTTP app's authorisation, api/authz): the admin token,
 * the static state-write token, the origins browsers may send cookie requests from, and how
 * recent a re-authentication must be. Parsed with zod as part of the one configuration
 * (concerns/config.ts); a wrong value stops start-up (exit 2) naming the variable.
 * @module
 */
import { z } from "zod";
import { type ConcernConfig, type CoreConfig, intIn, type SettingDoc } from "../../lib/config.ts";
import { parseSettings, pickSettings } from "../../lib/settings.ts";

/** The validated access-control settings. */
export interface AccessSettings {
  /** RS_ADMIN_TOKEN: the break-glass bearer token of admin actions, or null (none). */
  adminToken: string | null;
  /**
   * RS_ADMIN_TOKEN_PREVIOUS: the admin token being rotated out, still accepted until every
   * instance and every client has the new one (docs/security.md), or null.
   */
  adminTokenPrevious?: string | null;
  /**
   * RS_STATE_WRITE_TOKEN: a static machine token with the scopes `state:read` and
   * `state:write` (for deployments that predate machine tokens), or null.
   */
  stateWriteToken: string | null;
  /**
   * Origins (`scheme://host[:port]`) a browser may send state-changing cookie requests from;
   * empty: the request's own host (its `Host` header) is the one allowed origin.
   */
  allowedOrigins: string[];
  /** How recent a re-authentication must be for step-up routes and admin sessions (ms). */
  reauthWindowMs: number;
  /**
   * Whether the session cookie is `__Host-rs_session` with `Secure` (every browser origin is
   * https) or, for local development over plain http, `rs_session` without `Secure`.
   */
  secureCookie: boolean;
}

/** The variables of access control, documented. */
export const ACCESS_SETTINGS: readonly SettingDoc[] = [
  {
    env: "RS_ADMIN_TOKEN",
    default: "(none)",
    description: "Bearer token (32+ characters, e.g. `openssl rand -base64 32`) accepted for " +
      "admin actions and operator views, for automation and break-glass access; " +
      "people use an admin session with recent re-authentication instead",
  },
  {
    env: "RS_ADMIN_TOKEN_PREVIOUS",
    default: "(none)",
    description: "The admin token being rotated out: accepted like RS_ADMIN_TOKEN until it " +
      "is removed, so the token changes without downtime (docs/security.md)",
  },
  {
    env: "RS_STATE_WRITE_TOKEN",
    default: "(none)",
    description: "A static machine token with the scopes state:read and state:write (PATCH " +
      "/state, conflicts); prefer a machine token from `deno task cli tokens create`",
  },
  {
    env: "RS_ALLOWED_ORIGINS",
    default: "(the origin of RS_PUBLIC_URL, else the request's own host)",
    description: "Comma-separated origins (https://host[:port]) browsers reach the runtime " +
      "at; state-changing requests that carry the session cookie must come from one of them. " +
      "All https: the cookie is __Host-rs_session (Secure); an http one (local development): " +
      "rs_session without Secure",
  },
  {
    env: "RS_REAUTH_WINDOW_S",
    default: "300",
    description: "How recent a re-authentication (POST /auth/reauth) must be to change MFA " +
      "or, in an admin session, to take admin actions",
  },
];

const ORIGIN_RE =
  /^https?:\/\/[A-Za-z0-9.-]+(:\d{1,5})?$|^https?:\/\/\[[0-9A-Fa-f:.]+\](:\d{1,5})?$/;

const schema = z.object({
  RS_ADMIN_TOKEN: z.string().min(32, { message: "at least 32 characters" }).max(512, {
    message: "at most 512 characters",
  }).optional(),
  RS_ADMIN_TOKEN_PREVIOUS: z.string().min(32, { message: "at least 32 characters" }).max(512, {
    message: "at most 512 characters",
  }).optional(),
  RS_STATE_WRITE_TOKEN: z.string().min(16, { message: "at least 16 characters" }).max(256, {
    message: "at most 256 characters",
  }).optional(),
  RS_ALLOWED_ORIGINS: z.string().refine(
    (s) => s.split(",").every((o) => ORIGIN_RE.test(o.trim())),
    { message: "a comma-separated list of origins like https://rootstream.example.com" },
  ).optional(),
  RS_REAUTH_WINDOW_S: intIn(30, 3600, "seconds").default(300),
});

/** An origin in its canonical form (lower-case scheme and host, default port dropped). */
export function canonicalOrigin(origin: string): string | null {
  try {
    const u = new URL(origin);
    if (u.protocol !== "http:" && u.protocol !== "https:") return null;
    return u.origin;
  } catch {
    return null;
  }
}

/** Reads and validates the access settings; CONFIG_INVALID names every bad variable. */
export function loadAccessSettings(
  env: Record<string, string | undefined>,
  core: Pick<CoreConfig, "publicUrl">,
): AccessSettings {
  const c = parseSettings(schema, pickSettings(env, ACCESS_SETTINGS.map((s) => s.env)));
  const allowedOrigins = (c.RS_ALLOWED_ORIGINS ?? "").split(",").map((o) => o.trim())
    .filter(Boolean).map((o) => canonicalOrigin(o)!);
  // Browsers reach the runtime at the allowed origins, else at its public URL; with neither
  // known (plain `deno task run`) it is local development over http.
  const browserOrigins = allowedOrigins.length
    ? allowedOrigins
    : core.publicUrl
    ? [canonicalOrigin(core.publicUrl)!]
    : [];
  return {
    adminToken: c.RS_ADMIN_TOKEN ?? null,
    adminTokenPrevious: c.RS_ADMIN_TOKEN_PREVIOUS ?? null,
    stateWriteToken: c.RS_STATE_WRITE_TOKEN ?? null,
    allowedOrigins,
    reauthWindowMs: c.RS_REAUTH_WINDOW_S * 1000,
    secureCookie: browserOrigins.length > 0 &&
      browserOrigins.every((o) => o.startsWith("https:")),
  };
}

/** Access control's part of the one configuration. */
export const ACCESS_CONFIG: ConcernConfig<AccessSettings> = {
  title: "Access control",
  intro: "Read by the HTTP app (api/authz); docs/security.md explains roles, tokens and " +
    "the route table.",
  variables: ACCESS_SETTINGS,
  parse: (env, core) => loadAccessSettings(env, core),
};
