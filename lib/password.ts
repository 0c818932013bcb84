/**
 * Password hashing with scrypt (node:crypto), stored as a PHC-like string:
 * `$scrypt$ln=15,r=8,p=1$<salt base64>$<hash base64>` (base64 without padding).
 *
 * The parameters travel inside the string so they can be raised later: old hashes keep
 * verifying, and {@linkcode needsRehash} tells the login path to upgrade them.
 * @module
 */
import { randomBytes, scrypt, type ScryptOptions, timingSafeEqual } from "node:crypto";
import { promisify } from "node:util";
import { Buffer } from "node:buffer";

const scryptAsync = promisify(scrypt) as (
  password: string | Uint8Array,
  salt: Uint8Array,
  keylen: number,
  options: ScryptOptions,
) => Promise<Uint8Array>;

/** scrypt cost parameters; `ln` is log2 of N. */
export interface PasswordOptions {
  /** log2 of the CPU/memory cost N; 15 (≈160 ms here) by default, tests may use 10. */
  ln?: number;
  /** Block size r; 8 by default. */
  r?: number;
  /** Parallelisation p; 1 by default. */
  p?: number;
}

/** Default cost: ln=15, r=8, p=1 (32 MiB, about 160 ms on a 2-core host). */
export const DEFAULT_PASSWORD_OPTIONS: Readonly<Required<PasswordOptions>> = Object.freeze({
  ln: 15,
  r: 8,
  p: 1,
});

const SALT_BYTES = 16;
const KEY_BYTES = 32;
// Bounds on parameters read from a stored string: a corrupted or hostile row must not
// make verification allocate gigabytes or spin for minutes.
const MAX_LN = 20;
const MAX_R = 32;
const MAX_P = 16;
const MAX_MEMORY = 512 * 1024 * 1024;
const MIN_STORED_KEY = 16;
const MAX_STORED_KEY = 64;
// scrypt pre-hashes with PBKDF2, so length costs little, but an unbounded input is
// still a free CPU sink for anyone who can reach the login form.
const MAX_PASSWORD_LENGTH = 4096;

const PHC_RE =
  /^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]+={0,2})\$([A-Za-z0-9+/]+={0,2})$/;

interface ParsedHash {
  ln: number;
  r: number;
  p: number;
  salt: Uint8Array;
  hash: Uint8Array;
}

function resolveOptions(options: PasswordOptions): Required<PasswordOptions> {
  const ln = options.ln ?? DEFAULT_PASSWORD_OPTIONS.ln;
  const r = options.r ?? DEFAULT_PASSWORD_OPTIONS.r;
  const p = options.p ?? DEFAULT_PASSWORD_OPTIONS.p;
  if (!validParams(ln, r, p)) {
    throw new RangeError(
      `Invalid scrypt parameters: ln=${ln}, r=${r}, p=${p} (ln 1–${MAX_LN}, r 1–${MAX_R}, p 1–${MAX_P})`,
    );
  }
  return { ln, r, p };
}

function validParams(ln: number, r: number, p: number): boolean {
  return Number.isInteger(ln) && ln >= 1 && ln <= MAX_LN &&
    Number.isInteger(r) && r >= 1 && r <= MAX_R &&
    Number.isInteger(p) && p >= 1 && p <= MAX_P &&
    memoryFor(ln, r) <= MAX_MEMORY;
}

function memoryFor(ln: number, r: number): number {
  return 128 * 2 ** ln * r;
}

// NIST SP 800-63B asks for Unicode normalisation so the same password typed on two
// keyboards (composed vs decomposed accents) verifies.
function normalize(password: string): string {
  return password.normalize("NFKC");
}

function toB64(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("base64").replace(/=+$/, "");
}

function parse(stored: string): ParsedHash | null {
  const m = PHC_RE.exec(stored);
  if (!m) return null;
  const ln = Number(m[1]);
  const r = Number(m[2]);
  const p = Number(m[3]);
  if (!validParams(ln, r, p)) return null;
  const salt = new Uint8Array(Buffer.from(m[4], "base64"));
  const hash = new Uint8Array(Buffer.from(m[5], "base64"));
  if (salt.length < 8 || hash.length < MIN_STORED_KEY || hash.length > MAX_STORED_KEY) {
    return null;
  }
  return { ln, r, p, salt, hash };
}

function derive(
  password: string,
  salt: Uint8Array,
  keyLength: number,
  params: { ln: number; r: number; p: number },
): Promise<Uint8Array> {
  return scryptAsync(normalize(password), salt, keyLength, {
    N: 2 ** params.ln,
    r: params.r,
    p: params.p,
    // Node's default maxmem (32 MiB) is exactly ln=15/r=8; leave headroom for higher costs.
    maxmem: memoryFor(params.ln, params.r) * 2,
  });
}

/** Hashes a password with a fresh 16-byte salt; returns the PHC-like string to store. */
export async function hashPassword(
  password: string,
  options: PasswordOptions = {},
): Promise<string> {
  if (typeof password !== "string") throw new TypeError("Password must be a string");
  if (password.length > MAX_PASSWORD_LENGTH) {
    throw new RangeError(`Password is longer than ${MAX_PASSWORD_LENGTH} characters`);
  }
  const params = resolveOptions(options);
  const salt = new Uint8Array(randomBytes(SALT_BYTES));
  const hash = await derive(password, salt, KEY_BYTES, params);
  return `$scrypt$ln=${params.ln},r=${params.r},p=${params.p}$${toB64(salt)}$${toB64(hash)}`;
}

/**
 * True when `password` matches `stored`. Never throws for bad input: a malformed or
 * unsupported stored string, or a non-string password, simply does not match.
 */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  if (typeof password !== "string" || typeof stored !== "string") return false;
  if (password.length > MAX_PASSWORD_LENGTH) return false;
  const parsed = parse(stored);
  if (!parsed) return false;
  let candidate: Uint8Array;
  try {
    candidate = await derive(password, parsed.salt, parsed.hash.length, parsed);
  } catch {
    return false;
  }
  // Constant-time comparison so response time does not reveal how many bytes matched.
  return timingSafeEqual(candidate, parsed.hash);
}

/**
 * True when `stored` should be replaced by a fresh hash: it is malformed, or its cost
 * is below the current parameters (the default, or `options`).
 */
export function needsRehash(stored: string, options: PasswordOptions = {}): boolean {
  if (typeof stored !== "string") return true;
  const parsed = parse(stored);
  if (!parsed) return true;
  const want = resolveOptions(options);
  return parsed.ln < want.ln || parsed.r < want.r || parsed.p < want.p ||
    parsed.hash.length < KEY_BYTES || parsed.salt.length < SALT_BYTES;
}
