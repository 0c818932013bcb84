/**
 * Settings of the sessions concern (session lifetimes, the per-user limit, MFA lockout and
 * how many proxies' X-Forwarded-For entries to trust), parsed with zod as part of the one configuration
 * (concerns/config.ts). A wrong value stops start-up (exit 2) naming the variable.
 * @module
 */
import { z } from "zod";
import { type ConcernConfig, intIn, type SettingDoc } from "../../lib/config.ts";
import { parseSettings, pickSettings } from "../../lib/settings.ts";

/** The validated sessions settings. */
export interface SessionsSettings {
  /** Session lifetime, extended on use (ms). */
  ttlMs: number;
  /** Lifetime of a "remember me" session (ms). */
  rememberTtlMs: number;
  /** Concurrent sessions per user; a new login evicts the oldest beyond it. */
  maxPerUser: number;
  /** Wrong MFA codes within the window that lock MFA for the user. */
  mfaMaxFailures: number;
  /** MFA failure window and lock duration (ms). */
  mfaLockWindowMs: number;
  /**
   * Reverse proxies in front of the runtime that append to X-Forwarded-For: the client's
   * address is that many entries from the right (api/client.ts); 0: the socket's address.
   */
  trustedProxyHops: number;
  /** Passkeys: the relying party (docs/mfa.md). */
  webauthn: {
    /** RP id: the site's domain (no scheme, no port). */
    rpId: string;
    /** Name browsers show. */
    rpName: string;
    /** Origins a ceremony may come from (scheme://host[:port]). */
    origins: string[];
  };
  /**
   * E-mail codes: the SMTP server codes are sent through, or null (the factor is off). `ca`:
   * PEM certificates (SMTP_CA_FILE) trusted for the server's TLS certificate, or null.
   */
  smtp: { url: string; from: string; ca: string | null } | null;
}

/** The variables of the sessions concern, documented. */
export const SESSIONS_SETTINGS: readonly SettingDoc[] = [
  {
    env: "SESSION_TTL_S",
    default: "43200",
    description: "Session lifetime, extended on use (sliding expiry)",
  },
  {
    env: "SESSION_REMEMBER_TTL_S",
    default: "2592000",
    description: 'Session lifetime with "remember me"',
  },
  {
    env: "SESSION_MAX_PER_USER",
    default: "10",
    description: "Concurrent sessions per user; a new login evicts the oldest beyond it",
  },
  {
    env: "MFA_MAX_FAILURES",
    default: "5",
    description: "Wrong MFA codes within MFA_LOCK_WINDOW_S that lock MFA for the user",
  },
  {
    env: "MFA_LOCK_WINDOW_S",
    default: "900",
    description: "MFA failure window and lock duration",
  },
  {
    env: "RS_TRUSTED_PROXY_HOPS",
    default: "0",
    description:
      "Reverse proxies in front that append to X-Forwarded-For (the shipped nginx: 1); the client's address is that many entries from the right, X-Geo-Location is believed; 0 uses the socket's address",
  },
  {
    env: "WEBAUTHN_RP_ID",
    default: "localhost",
    description:
      "Passkeys: the relying party id, the site's domain as browsers see it (no scheme, no port); a passkey works only under it",
  },
  {
    env: "WEBAUTHN_RP_NAME",
    default: "RootStream",
    description: "Passkeys: the site's name shown by browsers and authenticators",
  },
  {
    env: "WEBAUTHN_ORIGIN",
    default: "http://localhost:8080",
    description:
      "Passkeys: the origin(s) a ceremony may come from, comma-separated (https://console.example.com); any other origin is refused",
  },
  {
    env: "SMTP_URL",
    default: "(none: no code can be sent)",
    description:
      "E-mail codes: the SMTP server, smtp://user:pass@host:587 (STARTTLS when offered; required when the URL has credentials) or smtps://host:465",
  },
  {
    env: "SMTP_CA_FILE",
    default: "(none: the system's trusted CAs)",
    description:
      "E-mail codes: a PEM file of CA certificates the SMTP server's TLS certificate (STARTTLS or smtps://) is verified against, for a private or self-signed CA; verification stays on",
  },
  {
    env: "SMTP_FROM",
    default: "RootStream <no-reply@localhost>",
    description: "E-mail codes: the From address of the messages",
  },
  {
    env: "RS_TRUST_PROXY",
    default: "(removed)",
    description:
      "Replaced by RS_TRUSTED_PROXY_HOPS; set, it stops start-up with a sentence saying what to set instead",
  },
];

const schema = z.object({
  SESSION_TTL_S: intIn(60, 31_536_000, "seconds").default(43_200),
  SESSION_REMEMBER_TTL_S: intIn(60, 31_536_000, "seconds").default(2_592_000),
  SESSION_MAX_PER_USER: intIn(1, 10_000, "sessions").default(10),
  MFA_MAX_FAILURES: intIn(1, 1000, "failures").default(5),
  MFA_LOCK_WINDOW_S: intIn(10, 86_400, "seconds").default(900),
  RS_TRUSTED_PROXY_HOPS: intIn(0, 10, "proxies").default(0),
  WEBAUTHN_RP_ID: z.string().min(1).max(253).refine(
    (v) => !v.includes("/") && !v.includes(":"),
    "a domain without scheme or port",
  ).default("localhost"),
  WEBAUTHN_RP_NAME: z.string().min(1).max(64).default("RootStream"),
  WEBAUTHN_ORIGIN: z.string().max(2048).refine(
    (v) =>
      v.split(",").every((o) => URL.canParse(o.trim()) && new URL(o.trim()).origin === o.trim()),
    "origins scheme://host[:port], comma-separated",
  ).default("http://localhost:8080"),
  SMTP_URL: z.string().max(2048).refine(
    (v) => URL.canParse(v) && ["smtp:", "smtps:"].includes(new URL(v).protocol),
    "an smtp:// or smtps:// URL",
  ).optional(),
  SMTP_FROM: z.string().min(3).max(254).default("RootStream <no-reply@localhost>"),
  SMTP_CA_FILE: z.string().min(1).max(4096).optional(),
});

/** The PEM text of SMTP_CA_FILE, or a sentence saying why it cannot be used. */
function readCaFile(path: string): { pem: string } | { problem: string } {
  let pem: string;
  try {
    pem = Deno.readTextFileSync(path);
  } catch (err) {
    return { problem: `SMTP_CA_FILE: cannot read ${path}: ${(err as Error).message}` };
  }
  if (!pem.includes("-----BEGIN CERTIFICATE-----")) {
    return {
      problem: `SMTP_CA_FILE: ${path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`,
    };
  }
  return { pem };
}

/** Reads and validates the sessions settings; CONFIG_INVALID names every bad variable. */
export function loadSessionsSettings(env: Record<string, string | undefined>): SessionsSettings {
  const { RS_TRUST_PROXY: legacy, ...rest } = pickSettings(
    env,
    SESSIONS_SETTINGS.map((s) => s.env),
  );
  const problems: string[] = [];
  if (legacy !== undefined && legacy !== "false") {
    // It trusted the LEFTMOST X-Forwarded-For entry, which the client writes: refuse rather
    // than guess, so nobody keeps a spoofable setting by not reading the changelog.
    problems.push(
      `RS_TRUST_PROXY was replaced by RS_TRUSTED_PROXY_HOPS: remove it and set ` +
        `RS_TRUSTED_PROXY_HOPS to the number of reverse proxies in front of the runtime ` +
        `(1 behind the shipped nginx; 0 when clients connect directly)`,
    );
  }
  let ca: string | null = null;
  if (rest.SMTP_CA_FILE !== undefined) {
    if (rest.SMTP_URL === undefined) {
      problems.push("SMTP_CA_FILE is set but SMTP_URL is not: set both, or neither");
    } else {
      const read = readCaFile(rest.SMTP_CA_FILE);
      if ("problem" in read) problems.push(read.problem);
      else ca = read.pem;
    }
  }
  // SMTP_URL may carry a password: its value is never shown (lib/settings.ts).
  const c = parseSettings(schema, rest, { extra: problems });
  return {
    ttlMs: c.SESSION_TTL_S * 1000,
    rememberTtlMs: c.SESSION_REMEMBER_TTL_S * 1000,
    maxPerUser: c.SESSION_MAX_PER_USER,
    mfaMaxFailures: c.MFA_MAX_FAILURES,
    mfaLockWindowMs: c.MFA_LOCK_WINDOW_S * 1000,
    trustedProxyHops: c.RS_TRUSTED_PROXY_HOPS,
    webauthn: {
      rpId: c.WEBAUTHN_RP_ID,
      rpName: c.WEBAUTHN_RP_NAME,
      origins: c.WEBAUTHN_ORIGIN.split(",").map((o) => o.trim()),
    },
    smtp: c.SMTP_URL ? { url: c.SMTP_URL, from: c.SMTP_FROM, ca } : null,
  };
}

/** The sessions concern's part of the one configuration. */
export const SESSIONS_CONFIG: ConcernConfig<SessionsSettings> = {
  title: "Sessions and MFA",
  intro: "Read by the sessions concern (actors/sessions).",
  variables: SESSIONS_SETTINGS,
  parse: (env) => loadSessionsSettings(env),
};
