/**
 * TOTP (RFC 6238) on top of npm:otpauth, with the comparisons done here in constant time.
 *
 * otpauth computes the HOTP values (RFC 4226 dynamic truncation over HMAC); this module
 * decides which time steps are acceptable and compares the typed code against every one
 * of them with `crypto.timingSafeEqual`, without stopping at the first match, so the
 * response time does not tell an attacker which step (or how many digits) matched.
 *
 * The caller gets the matched *step* back, not a boolean: replay protection needs it
 * (store/mfa.ts accepts a step only if it is newer than the last accepted one).
 * @module
 */
import { timingSafeEqual } from "node:crypto";
import { HOTP, Secret, TOTP } from "otpauth";
import { renderSVG } from "uqr";

/** Hash algorithms RFC 6238 allows. */
export type TotpAlgorithm = "SHA1" | "SHA256" | "SHA512";

/** Parameters of a TOTP generator. */
export interface TotpParams {
  /** HMAC algorithm; SHA1 is what authenticator apps implement. */
  algorithm?: TotpAlgorithm;
  /** Code length; 6 by default. */
  digits?: number;
  /** Time step in seconds; 30 by default. */
  period?: number;
}

/** The settings every enrolment uses: SHA1, 6 digits, 30 s steps, ±1 step accepted. */
export const TOTP_DEFAULTS: Readonly<Required<TotpParams> & { window: number }> = Object
  .freeze({
    algorithm: "SHA1",
    digits: 6,
    period: 30,
    window: 1,
  });

/** Bytes of a generated secret: 160 bits, the HMAC-SHA1 block-friendly size RFC 4226 recommends. */
const SECRET_BYTES = 20;

/** A fresh random secret, base32 without padding (what otpauth:// URIs and apps expect). */
export function generateTotpSecret(): string {
  return new Secret({ size: SECRET_BYTES }).base32;
}

/** The time step (counter) that `timestampMs` falls in. */
export function totpStep(timestampMs: number, period: number = TOTP_DEFAULTS.period): number {
  return Math.floor(timestampMs / 1000 / period);
}

function secretOf(secret: string | Uint8Array): Secret {
  if (typeof secret === "string") return Secret.fromBase32(secret.replace(/\s+/g, ""));
  return new Secret({ buffer: secret.slice().buffer });
}

/** The code for time step `step` (a base32 string or raw bytes as the secret). */
export function totpCodeAt(
  secret: string | Uint8Array,
  step: number,
  params: TotpParams = {},
): string {
  return HOTP.generate({
    secret: secretOf(secret),
    algorithm: params.algorithm ?? TOTP_DEFAULTS.algorithm,
    digits: params.digits ?? TOTP_DEFAULTS.digits,
    counter: step,
  });
}

/** The code valid at `timestampMs`. */
export function totpCode(
  secret: string | Uint8Array,
  timestampMs: number,
  params: TotpParams = {},
): string {
  return totpCodeAt(secret, totpStep(timestampMs, params.period), params);
}

/** Options of {@linkcode matchTotp}. */
export interface MatchTotpOptions extends TotpParams {
  /** The verifier's clock in ms. */
  now: number;
  /** Steps accepted either side of the current one; 1 by default. */
  window?: number;
}

const encoder = new TextEncoder();

/**
 * The step whose code equals `code` within ±`window` steps of `now`, or null. Every
 * candidate is generated and compared in constant time; no early exit.
 */
export function matchTotp(
  secret: string | Uint8Array,
  code: string,
  options: MatchTotpOptions,
): number | null {
  const digits = options.digits ?? TOTP_DEFAULTS.digits;
  const window = options.window ?? TOTP_DEFAULTS.window;
  // The shape check reveals only the length rule, which is public.
  if (typeof code !== "string" || code.length !== digits || !/^\d+$/.test(code)) return null;
  const typed = encoder.encode(code);
  const current = totpStep(options.now, options.period);
  const s = secretOf(secret);
  let matched: number | null = null;
  for (let delta = -window; delta <= window; delta++) {
    const step = current + delta;
    if (step < 0) continue;
    const candidate = encoder.encode(HOTP.generate({
      secret: s,
      algorithm: options.algorithm ?? TOTP_DEFAULTS.algorithm,
      digits,
      counter: step,
    }));
    // Lengths are equal (both `digits` long), as timingSafeEqual requires.
    if (timingSafeEqual(candidate, typed) && matched === null) matched = step;
  }
  return matched;
}

/** What {@linkcode totpUri} needs. */
export interface TotpUriInput {
  /** Base32 secret. */
  secret: string;
  /** Service name shown by the authenticator app, e.g. "RootStream". */
  issuer: string;
  /** The account, e.g. the username or email. */
  account: string;
}

/** The `otpauth://totp/...` URI an authenticator app imports (Key Uri Format). */
export function totpUri(input: TotpUriInput, params: TotpParams = {}): string {
  return new TOTP({
    issuer: input.issuer,
    label: input.account,
    algorithm: params.algorithm ?? TOTP_DEFAULTS.algorithm,
    digits: params.digits ?? TOTP_DEFAULTS.digits,
    period: params.period ?? TOTP_DEFAULTS.period,
    secret: Secret.fromBase32(input.secret),
  }).toString();
}

/** An SVG QR code of `text` (medium error correction, 4-module quiet zone). */
export function qrSvg(text: string): string {
  return renderSVG(text, { ecc: "M", border: 4, pixelSize: 6 });
}
