/**
 * Multi-factor authentication: TOTP enrolment and verification, one-time backup codes,
 * the per-user lockout and the attempts log.
 *
 * Guarantees:
 * - **Enabled only after confirmation.** Enrolment stores a sealed secret with
 *   `is_enabled = false`; a valid code flips it (and issues the backup codes).
 * - **No code is accepted twice, across instances.** Every check runs in one transaction
 *   holding the user's `user_mfa` row lock (`SELECT … FOR UPDATE`). A TOTP code is
 *   accepted only for a time step greater than `last_used_step`, which the same
 *   transaction then advances (RFC 6238 section 5.2); a backup code is removed from the
 *   array by the UPDATE that accepts it. Two instances checking the same code at once
 *   queue on the row lock, and the second sees the first one's step or array.
 * - **Lockout.** `maxFailures` (5) failed checks within `lockWindowMs` (15 min) since the
 *   user's last success, of any method (TOTP, backup codes, and through
 *   {@linkcode MfaStore.checkFactor} passkeys and e-mail codes, all under the user's row lock)
 *   lock MFA for that user: checks are refused unchecked (logged as
 *   `locked`, not counted) until the oldest of those failures leaves the window. Counted
 *   under the same row lock, so parallel guesses cannot overshoot the limit.
 * - **Everything is logged.** Every check, accepted or not, is a row in mfa_attempts with
 *   its purpose, outcome and IP address.
 * - **Secrets are sealed** (lib/secret_box.ts, AES-256-GCM, bound to the user id), and
 *   comparisons are constant-time (`crypto.timingSafeEqual`).
 *
 * Backup codes are hashed with scrypt under one random salt per user, so a typed code costs
 * one scrypt (not one per stored code) and is then compared in constant time against each
 * of the ten digests. They carry 50 random bits, so the slow hash is a second line of
 * defence for a leaked table, not the only one.
 *
 * Verification returns a typed result ({@linkcode MfaCheck}); only misuse and outages throw.
 * @module
 */
import { Buffer } from "node:buffer";
import { randomBytes, randomInt, scrypt, type ScryptOptions, timingSafeEqual } from "node:crypto";
import { isIP } from "node:net";
import { promisify } from "node:util";
import type postgres from "postgres";
import { z } from "zod";
import { RuntimeError } from "../lib/errors.ts";
import { createSecretBox, type SecretBox } from "../lib/secret_box.ts";
import { generateTotpSecret, matchTotp, qrSvg, TOTP_DEFAULTS, totpUri } from "../lib/totp.ts";
import { rethrowDatabaseError } from "./pg_errors.ts";
import type { Sql } from "./types.ts";

const scryptAsync = promisify(scrypt) as (
  password: string | Uint8Array,
  salt: Uint8Array,
  keylen: number,
  options: ScryptOptions,
) => Promise<Uint8Array>;

/** MFA state of a user. */
export interface MfaStatus {
  /** A TOTP secret exists (maybe unconfirmed). */
  enrolled: boolean;
  /** Confirmed and in force: logins need a code. */
  enabled: boolean;
  /** Unused backup codes left. */
  backupCodesRemaining: number;
  /** When the enrolment was confirmed. */
  confirmedAt: Date | null;
  /** When a code was last accepted. */
  lastUsedAt: Date | null;
}

/** What enrolment returns: the secret three ways (text, URI, QR). Shown once. */
export interface Enrollment {
  /** Base32 secret, for typing into an app by hand. */
  secret: string;
  /** `otpauth://totp/...` URI. */
  uri: string;
  /** The URI as an SVG QR code. */
  qrSvg: string;
}

/** Which kind of code. */
export type MfaMethod = "totp" | "backup_code";

/** Every method the attempts log and the lockout know: the TOTP row's two, passkeys, e-mail codes. */
export type FactorMethod = MfaMethod | "webauthn" | "email";

/** What a factor check of {@linkcode MfaStore.checkFactor} decided. */
export type FactorOutcome = "accepted" | "invalid" | "replayed" | "not_enrolled";

/** What a code was checked for. */
export type MfaPurpose = "login" | "confirm" | "disable" | "backup_codes" | "reauth";

/** Why a code was refused. */
export type MfaRefusal = "invalid" | "replayed" | "locked" | "not_enrolled";

/** Result of a code check. */
export type MfaCheck =
  | { ok: true; method: FactorMethod; backupCodesRemaining: number }
  | {
    ok: false;
    reason: MfaRefusal;
    /** Counted failures in the window, this one included. */
    failures: number;
    /** The configured limit. */
    maxFailures: number;
    /** MFA is locked for the user now (this failure may have locked it). */
    locked: boolean;
    /** When locked: ms until checks are accepted again. */
    retryAfterMs: number;
  };

/** Lock state of a user. */
export interface MfaLockState {
  /** Checks are refused. */
  locked: boolean;
  /** Counted failures in the window since the last success. */
  failures: number;
  /** ms until unlocked (0 when not locked). */
  retryAfterMs: number;
}

/** One logged check. */
export interface MfaAttempt {
  /** Row id. */
  id: number;
  /** totp, backup_code, webauthn or email. */
  method: FactorMethod;
  /** What it was for. */
  purpose: MfaPurpose | "reset";
  /** Accepted (or an operator reset). */
  success: boolean;
  /** accepted, invalid, replayed, locked, reset. */
  outcome: "accepted" | "invalid" | "replayed" | "locked" | "reset";
  /** Caller's address. */
  ipAddress: string | null;
  /** When (injected clock). */
  attemptedAt: Date;
}

/** Options of {@linkcode createMfaStore}. */
export interface MfaStoreOptions {
  /** The runtime's 32-byte secret key (RS_SECRET_KEY); or pass `box`. */
  secretKey?: Uint8Array;
  /** A ready secret box (takes precedence over `secretKey`). */
  box?: SecretBox;
  /** Clock in ms; required (time is injected). */
  now: () => number;
  /** Issuer shown by authenticator apps; "RootStream". */
  issuer?: string;
  /** Failures that lock; 5. */
  maxFailures?: number;
  /** Window the failures are counted in; 15 min. */
  lockWindowMs?: number;
  /** TOTP steps accepted either side of now; 1. */
  window?: number;
  /** Backup codes issued; 10. */
  backupCodeCount?: number;
  /** scrypt cost of backup-code digests (log2 N); 14. Tests use 10. */
  backupCodeCost?: number;
  /** Attempts older than this are deleted by the cleanup; 90 days. */
  attemptRetentionMs?: number;
}

/** The MFA store returned by {@linkcode createMfaStore}. */
export interface MfaStore {
  /** MFA state of a user. */
  status(userId: number): Promise<MfaStatus>;
  /** Starts (or restarts) TOTP enrolment; MFA_ALREADY_ENABLED when MFA is on. */
  beginEnrollment(userId: number, options: { account: string }): Promise<Enrollment>;
  /** Confirms enrolment with a valid code; on success returns the backup codes (once). */
  confirmEnrollment(
    userId: number,
    code: string,
    options?: { ipAddress?: string | null },
  ): Promise<MfaCheck & { backupCodes?: string[] }>;
  /** Checks a TOTP code for `purpose` (default login). */
  verifyTotp(
    userId: number,
    code: string,
    options?: { ipAddress?: string | null; purpose?: MfaPurpose },
  ): Promise<MfaCheck>;
  /** Checks and consumes a backup code. */
  verifyBackupCode(
    userId: number,
    code: string,
    options?: { ipAddress?: string | null; purpose?: MfaPurpose },
  ): Promise<MfaCheck>;
  /** Replaces the backup codes after a fresh TOTP code; returns the new ones on success. */
  regenerateBackupCodes(
    userId: number,
    code: string,
    options?: { ipAddress?: string | null },
  ): Promise<MfaCheck & { backupCodes?: string[] }>;
  /** Turns MFA off after a fresh TOTP or backup code. */
  disable(
    userId: number,
    code: string,
    options?: { ipAddress?: string | null; method?: MfaMethod },
  ): Promise<MfaCheck>;
  /**
   * A check of another factor (passkey, e-mail code) under the same lockout and attempts
   * log as TOTP: in one transaction holding the user's row lock, refused unchecked while
   * locked, else `verify` decides (and does its own reads and writes in `tx`, never on the
   * pool: holding the lock while waiting for a pool connection that the checks queued on the
   * lock hold wedges the pool), and the outcome is logged and counted.
   */
  checkFactor(
    userId: number,
    input: { method: "webauthn" | "email"; purpose: MfaPurpose; ipAddress?: string | null },
    verify: (tx: Tx, at: number) => Promise<FactorOutcome>,
  ): Promise<MfaCheck>;
  /** Current lock state of a user. */
  lockState(userId: number): Promise<MfaLockState>;
  /** Lifts a lock (an operator action, logged as a `reset` attempt). */
  resetLock(userId: number): Promise<void>;
  /** A user's logged checks, newest first. */
  listAttempts(userId: number, options?: { limit?: number }): Promise<MfaAttempt[]>;
  /** Deletes attempts older than the retention; returns how many. */
  cleanupAttempts(): Promise<number>;
}

/** A transaction of the pool (what {@linkcode MfaStore.checkFactor} hands its check). */
// deno-lint-ignore ban-types
export type Tx = postgres.TransactionSql<{}>;

interface MfaRow {
  id: string;
  user_id: string;
  secret: string;
  is_enabled: boolean;
  backup_codes: string[];
  backup_codes_salt: Uint8Array | null;
  backup_codes_params: string | null;
  last_used_step: string | null;
  confirmed_at: Date | null;
  last_used_at: Date | null;
}

interface AttemptRow {
  id: string;
  method: FactorMethod;
  purpose: MfaPurpose | "reset";
  success: boolean;
  outcome: MfaAttempt["outcome"];
  ip_address: string | null;
  attempted_at: Date;
}

const MINUTE = 60_000;
// Crockford base32 without i, l, o, u: nothing to confuse when typing from paper.
const BACKUP_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz";
const BACKUP_LENGTH = 10;

const userIdSchema = z.number({ error: "must be a number" }).int("must be an integer")
  .positive("must be positive").max(Number.MAX_SAFE_INTEGER, "is too large");

function parseUserId(userId: unknown, action: string): number {
  const r = userIdSchema.safeParse(userId);
  if (!r.success) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Cannot ${action}: userId ${r.error.issues[0].message}`,
      { details: { field: "userId" } },
    );
  }
  return r.data;
}

function parseIp(ip: string | null | undefined): string | null {
  return typeof ip === "string" && isIP(ip) !== 0 ? ip : null;
}

/** A code as typed: strings only, at most 64 characters (anything longer is not a code). */
function cleanCode(code: unknown): string {
  return typeof code === "string" ? code.slice(0, 64) : "";
}

/** A backup code normalised: lower case, separators dropped, Crockford look-alikes mapped. */
function normalizeBackupCode(code: string): string {
  return code.toLowerCase().replace(/[\s-]/g, "").replace(/[il]/g, "1").replace(/o/g, "0");
}

function newBackupCode(): string {
  let s = "";
  for (let i = 0; i < BACKUP_LENGTH; i++) s += BACKUP_ALPHABET[randomInt(BACKUP_ALPHABET.length)];
  return `${s.slice(0, 5)}-${s.slice(5)}`;
}

function parseParams(text: string | null): { ln: number; r: number; p: number } | null {
  const m = /^ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})$/.exec(text ?? "");
  if (!m) return null;
  const [ln, r, p] = [Number(m[1]), Number(m[2]), Number(m[3])];
  // Bounds, so a corrupted row cannot make a check allocate gigabytes.
  if (ln < 1 || ln > 20 || r < 1 || r > 32 || p < 1 || p > 16) return null;
  return { ln, r, p };
}

async function digestBackupCode(
  normalized: string,
  salt: Uint8Array,
  params: { ln: number; r: number; p: number },
): Promise<Buffer> {
  const out = await scryptAsync(normalized, salt, 32, {
    N: 2 ** params.ln,
    r: params.r,
    p: params.p,
    maxmem: 256 * 2 ** params.ln * params.r,
  });
  return Buffer.from(out);
}

function toAttempt(row: AttemptRow): MfaAttempt {
  return {
    id: Number(row.id),
    method: row.method,
    purpose: row.purpose,
    success: row.success,
    outcome: row.outcome,
    ipAddress: row.ip_address,
    attemptedAt: row.attempted_at,
  };
}

/** Creates the MFA store on `sql`, sealing secrets with the runtime's key. */
export function createMfaStore(sql: Sql, options: MfaStoreOptions): MfaStore {
  const now = options.now;
  const maybeBox = options.box ??
    (options.secretKey ? createSecretBox(options.secretKey) : null);
  if (!maybeBox) throw new RuntimeError("CONFIG_INVALID", "The MFA store needs the secret key");
  const box: SecretBox = maybeBox;
  const issuer = options.issuer ?? "RootStream";
  const maxFailures = options.maxFailures ?? 5;
  const lockWindowMs = options.lockWindowMs ?? 15 * MINUTE;
  const window = options.window ?? TOTP_DEFAULTS.window;
  const backupCodeCount = options.backupCodeCount ?? 10;
  const backupParams = { ln: options.backupCodeCost ?? 14, r: 8, p: 1 };
  const attemptRetentionMs = options.attemptRetentionMs ?? 90 * 24 * 60 * MINUTE;
  if (!Number.isInteger(maxFailures) || maxFailures < 1) {
    throw new RuntimeError("CONFIG_INVALID", `maxFailures must be a positive integer`);
  }

  const context = (userId: number | string) => `user_mfa:${userId}`;

  async function lockStateOn(tx: Tx | Sql, userId: number, at: number): Promise<MfaLockState> {
    const since = new Date(at - lockWindowMs);
    const rows = await tx<{ attempted_at: Date }[]>`
      SELECT attempted_at FROM mfa_attempts
      WHERE user_id = ${userId} AND outcome IN ('invalid', 'replayed')
        AND attempted_at > ${since}
        AND attempted_at > COALESCE((
          SELECT max(attempted_at) FROM mfa_attempts WHERE user_id = ${userId} AND success
        ), '-infinity'::timestamptz)
      ORDER BY attempted_at DESC
      LIMIT ${maxFailures}`;
    const failures = rows.length;
    if (failures < maxFailures) return { locked: false, failures, retryAfterMs: 0 };
    // Unlocks when the oldest of the newest `maxFailures` failures leaves the window.
    const oldest = rows[rows.length - 1].attempted_at.getTime();
    return { locked: true, failures, retryAfterMs: Math.max(1, oldest + lockWindowMs - at) };
  }

  async function logAttempt(
    tx: Tx | Sql,
    userId: number,
    a: {
      method: FactorMethod;
      purpose: MfaPurpose | "reset";
      outcome: MfaAttempt["outcome"];
      ip: string | null;
      at: number;
    },
  ): Promise<void> {
    await tx`
      INSERT INTO mfa_attempts (user_id, method, purpose, success, outcome, ip_address, attempted_at)
      VALUES (${userId}, ${a.method}, ${a.purpose}, ${
      a.outcome === "accepted" || a.outcome === "reset"
    }, ${a.outcome}, ${a.ip}::inet, ${new Date(a.at)})`;
  }

  /**
   * The one code check: lock the row, refuse if locked, verify, log, and on success run
   * `onAccept` in the same transaction (advance the step, consume the code, enable, ...).
   */
  async function check<T extends object>(
    userId: number,
    input: {
      method: MfaMethod;
      purpose: MfaPurpose;
      code: string;
      ip: string | null;
      /** confirm: the row must exist and not be enabled; others: enabled. */
      wantEnabled: boolean;
    },
    onAccept: (tx: Tx, row: MfaRow, step: number | null, at: number) => Promise<T>,
  ): Promise<MfaCheck & Partial<T>> {
    const action = "check MFA code";
    try {
      return await sql.begin(async (tx) => {
        const at = now();
        // Same lock order as checkFactor (the user's row, then user_mfa): one lockout count
        // for TOTP, backup codes, passkeys and e-mail codes.
        await tx`SELECT id FROM users WHERE id = ${userId} FOR NO KEY UPDATE`;
        const [row] = await tx<MfaRow[]>`
          SELECT id, user_id, secret, is_enabled, backup_codes, backup_codes_salt,
                 backup_codes_params, last_used_step, confirmed_at, last_used_at
          FROM user_mfa WHERE user_id = ${userId} AND method = 'totp'
          FOR UPDATE`;
        if (!row || row.is_enabled !== input.wantEnabled) {
          return {
            ok: false as const,
            reason: "not_enrolled" as const,
            failures: 0,
            maxFailures,
            locked: false,
            retryAfterMs: 0,
          } as MfaCheck & Partial<T>;
        }
        const lock = await lockStateOn(tx, userId, at);
        if (lock.locked) {
          await logAttempt(tx, userId, { ...input, outcome: "locked", at });
          return {
            ok: false as const,
            reason: "locked" as const,
            failures: lock.failures,
            maxFailures,
            locked: true,
            retryAfterMs: lock.retryAfterMs,
          } as MfaCheck & Partial<T>;
        }
        let outcome: "accepted" | "invalid" | "replayed";
        let step: number | null = null;
        let remaining = row.backup_codes.length;
        if (input.method === "totp") {
          const secret = box.openText(row.secret, { context: context(userId) });
          if (!row.secret.startsWith(`v1.${box.keyId}.`)) {
            // Sealed with RS_SECRET_KEY_PREVIOUS (a rotation): re-sealed with the current key
            // under the row lock, so the previous key can be retired once users came back.
            await tx`
              UPDATE user_mfa SET secret = ${box.seal(secret, { context: context(userId) })}
              WHERE id = ${row.id}`;
          }
          step = matchTotp(secret, input.code, { now: at, window });
          const last = row.last_used_step === null ? null : Number(row.last_used_step);
          outcome = step === null
            ? "invalid"
            : last !== null && step <= last
            ? "replayed"
            : "accepted";
        } else {
          const params = parseParams(row.backup_codes_params);
          const normalized = normalizeBackupCode(input.code);
          let matched: string | null = null;
          if (params && row.backup_codes_salt && /^[0-9a-z]{10}$/.test(normalized)) {
            const digest = await digestBackupCode(normalized, row.backup_codes_salt, params);
            for (const stored of row.backup_codes) {
              const candidate = Buffer.from(stored, "hex");
              // Every stored digest is compared; no early exit.
              if (
                candidate.length === digest.length && timingSafeEqual(candidate, digest) &&
                matched === null
              ) matched = stored;
            }
          }
          outcome = matched === null ? "invalid" : "accepted";
          if (matched !== null) {
            // Under the row lock; the `?` condition makes the consumption self-evidently
            // single-use even if this ever runs without it.
            const updated = await tx<{ n: number }[]>`
              UPDATE user_mfa SET backup_codes = backup_codes - ${matched}::text,
                last_used_at = ${new Date(at)}
              WHERE id = ${row.id} AND backup_codes ? ${matched}::text
              RETURNING jsonb_array_length(backup_codes) AS n`;
            if (!updated.length) outcome = "invalid";
            else remaining = updated[0].n;
          }
        }
        await logAttempt(tx, userId, { ...input, outcome, at });
        if (outcome !== "accepted") {
          const after = await lockStateOn(tx, userId, at);
          return {
            ok: false as const,
            reason: outcome,
            failures: after.failures,
            maxFailures,
            locked: after.locked,
            retryAfterMs: after.retryAfterMs,
          } as MfaCheck & Partial<T>;
        }
        if (step !== null) {
          await tx`
            UPDATE user_mfa SET last_used_step = ${step}, last_used_at = ${new Date(at)}
            WHERE id = ${row.id}
              AND (last_used_step IS NULL OR last_used_step < ${step})`;
        }
        const extra = await onAccept(tx, row, step, at);
        return {
          ok: true as const,
          method: input.method,
          backupCodesRemaining: remaining,
          ...extra,
        } as MfaCheck & Partial<T>;
      }) as MfaCheck & Partial<T>;
    } catch (err) {
      rethrowDatabaseError(err, action);
    }
  }

  async function issueBackupCodes(
    tx: Tx,
    rowId: string,
  ): Promise<{ backupCodes: string[]; backupCodesRemaining: number }> {
    const codes = Array.from({ length: backupCodeCount }, newBackupCode);
    const salt = new Uint8Array(randomBytes(16));
    const digests = await Promise.all(
      codes.map((c) => digestBackupCode(normalizeBackupCode(c), salt, backupParams)),
    );
    await tx`
      UPDATE user_mfa SET
        backup_codes = ${tx.json(digests.map((d) => d.toString("hex")))}::jsonb,
        backup_codes_salt = ${salt},
        backup_codes_params = ${`ln=${backupParams.ln},r=${backupParams.r},p=${backupParams.p}`}
      WHERE id = ${rowId}`;
    return { backupCodes: codes, backupCodesRemaining: codes.length };
  }

  async function status(userId: number): Promise<MfaStatus> {
    const id = parseUserId(userId, "read MFA status");
    try {
      const [row] = await sql<MfaRow[]>`
        SELECT is_enabled, backup_codes, confirmed_at, last_used_at
        FROM user_mfa WHERE user_id = ${id} AND method = 'totp'`;
      return {
        enrolled: !!row,
        enabled: row?.is_enabled ?? false,
        backupCodesRemaining: row?.is_enabled ? row.backup_codes.length : 0,
        confirmedAt: row?.confirmed_at ?? null,
        lastUsedAt: row?.last_used_at ?? null,
      };
    } catch (err) {
      rethrowDatabaseError(err, "read MFA status");
    }
  }

  async function beginEnrollment(
    userId: number,
    enrolOptions: { account: string },
  ): Promise<Enrollment> {
    const action = "begin MFA enrolment";
    const id = parseUserId(userId, action);
    const account = typeof enrolOptions?.account === "string" && enrolOptions.account !== ""
      ? enrolOptions.account.slice(0, 254)
      : String(id);
    const secret = generateTotpSecret();
    const sealed = box.seal(secret, { context: context(id) });
    let rows: { id: string }[];
    try {
      // Replaces a pending (unconfirmed) enrolment; never an enabled one.
      rows = await sql<{ id: string }[]>`
        INSERT INTO user_mfa (user_id, method, secret, is_enabled, created_at)
        VALUES (${id}, 'totp', ${sealed}, false, ${new Date(now())})
        ON CONFLICT (user_id, method) DO UPDATE SET
          secret = EXCLUDED.secret, created_at = EXCLUDED.created_at,
          backup_codes = '[]'::jsonb, backup_codes_salt = NULL, backup_codes_params = NULL,
          last_used_step = NULL, confirmed_at = NULL
        WHERE user_mfa.is_enabled = false
        RETURNING id`;
    } catch (err) {
      if ((err as { code?: string }).code === "23503") {
        throw new RuntimeError("USER_NOT_FOUND", `Cannot ${action}: no user has id ${id}`);
      }
      rethrowDatabaseError(err, action);
    }
    if (!rows.length) {
      throw new RuntimeError(
        "MFA_ALREADY_ENABLED",
        `Cannot ${action}: MFA is already enabled; disable it first with a current code`,
      );
    }
    const uri = totpUri({ secret, issuer, account });
    return { secret, uri, qrSvg: qrSvg(uri) };
  }

  function confirmEnrollment(
    userId: number,
    code: string,
    o: { ipAddress?: string | null } = {},
  ) {
    const id = parseUserId(userId, "confirm MFA enrolment");
    return check(id, {
      method: "totp",
      purpose: "confirm",
      code: cleanCode(code),
      ip: parseIp(o.ipAddress),
      wantEnabled: false,
    }, async (tx, row, _step, at) => {
      await tx`
        UPDATE user_mfa SET is_enabled = true, confirmed_at = ${new Date(at)}
        WHERE id = ${row.id}`;
      return await issueBackupCodes(tx, row.id);
    });
  }

  function verifyTotp(
    userId: number,
    code: string,
    o: { ipAddress?: string | null; purpose?: MfaPurpose } = {},
  ): Promise<MfaCheck> {
    const id = parseUserId(userId, "verify TOTP code");
    return check(id, {
      method: "totp",
      purpose: o.purpose ?? "login",
      code: cleanCode(code),
      ip: parseIp(o.ipAddress),
      wantEnabled: true,
    }, () => Promise.resolve({}));
  }

  function verifyBackupCode(
    userId: number,
    code: string,
    o: { ipAddress?: string | null; purpose?: MfaPurpose } = {},
  ): Promise<MfaCheck> {
    const id = parseUserId(userId, "verify backup code");
    return check(id, {
      method: "backup_code",
      purpose: o.purpose ?? "login",
      code: cleanCode(code),
      ip: parseIp(o.ipAddress),
      wantEnabled: true,
    }, () => Promise.resolve({}));
  }

  function regenerateBackupCodes(
    userId: number,
    code: string,
    o: { ipAddress?: string | null } = {},
  ) {
    const id = parseUserId(userId, "regenerate backup codes");
    return check(id, {
      method: "totp",
      purpose: "backup_codes",
      code: cleanCode(code),
      ip: parseIp(o.ipAddress),
      wantEnabled: true,
    }, (tx, row) => issueBackupCodes(tx, row.id));
  }

  function disable(
    userId: number,
    code: string,
    o: { ipAddress?: string | null; method?: MfaMethod } = {},
  ): Promise<MfaCheck> {
    const id = parseUserId(userId, "disable MFA");
    return check(id, {
      method: o.method ?? "totp",
      purpose: "disable",
      code: cleanCode(code),
      ip: parseIp(o.ipAddress),
      wantEnabled: true,
    }, async (tx, row) => {
      await tx`DELETE FROM user_mfa WHERE id = ${row.id}`;
      return { backupCodesRemaining: 0 };
    });
  }

  async function checkFactor(
    userId: number,
    input: { method: "webauthn" | "email"; purpose: MfaPurpose; ipAddress?: string | null },
    verify: (tx: Tx, at: number) => Promise<FactorOutcome>,
  ): Promise<MfaCheck> {
    const id = parseUserId(userId, "check a second factor");
    const ip = parseIp(input.ipAddress);
    const refused = (reason: MfaRefusal, lock: MfaLockState): MfaCheck => ({
      ok: false,
      reason,
      failures: lock.failures,
      maxFailures,
      locked: lock.locked,
      retryAfterMs: lock.retryAfterMs,
    });
    try {
      return await sql.begin(async (tx) => {
        const at = now();
        // The user's row serialises the checks of every method (there may be no user_mfa
        // row), so parallel guesses across methods cannot overshoot the lockout. NO KEY: rows
        // referencing the user (sessions, attempts) can still be written meanwhile.
        const [user] = await tx`SELECT id FROM users WHERE id = ${id} FOR NO KEY UPDATE`;
        if (!user) return refused("not_enrolled", { locked: false, failures: 0, retryAfterMs: 0 });
        const lock = await lockStateOn(tx, id, at);
        const log = (outcome: MfaAttempt["outcome"]) =>
          logAttempt(tx, id, { method: input.method, purpose: input.purpose, outcome, ip, at });
        if (lock.locked) {
          await log("locked");
          return refused("locked", lock);
        }
        const outcome = await verify(tx, at);
        if (outcome === "not_enrolled") return refused("not_enrolled", lock);
        await log(outcome);
        if (outcome !== "accepted") return refused(outcome, await lockStateOn(tx, id, at));
        return { ok: true as const, method: input.method, backupCodesRemaining: 0 };
      }) as MfaCheck;
    } catch (err) {
      rethrowDatabaseError(err, "check a second factor");
    }
  }

  async function lockState(userId: number): Promise<MfaLockState> {
    const id = parseUserId(userId, "read MFA lock state");
    try {
      return await lockStateOn(sql, id, now());
    } catch (err) {
      rethrowDatabaseError(err, "read MFA lock state");
    }
  }

  async function resetLock(userId: number): Promise<void> {
    const id = parseUserId(userId, "reset MFA lock");
    try {
      await logAttempt(sql, id, {
        method: "totp",
        purpose: "reset",
        outcome: "reset",
        ip: null,
        at: now(),
      });
    } catch (err) {
      rethrowDatabaseError(err, "reset MFA lock");
    }
  }

  async function listAttempts(
    userId: number,
    o: { limit?: number } = {},
  ): Promise<MfaAttempt[]> {
    const id = parseUserId(userId, "list MFA attempts");
    const limit = Math.min(Math.max(Math.trunc(o.limit ?? 100), 1), 1000);
    try {
      const rows = await sql<AttemptRow[]>`
        SELECT id, method, purpose, success, outcome, ip_address, attempted_at
        FROM mfa_attempts WHERE user_id = ${id}
        ORDER BY attempted_at DESC, id DESC
        LIMIT ${limit}`;
      return rows.map(toAttempt);
    } catch (err) {
      rethrowDatabaseError(err, "list MFA attempts");
    }
  }

  async function cleanupAttempts(): Promise<number> {
    const before = new Date(now() - attemptRetentionMs);
    try {
      const result = await sql`DELETE FROM mfa_attempts WHERE attempted_at < ${before}`;
      return result.count;
    } catch (err) {
      rethrowDatabaseError(err, "clean up MFA attempts");
    }
  }

  return {
    status,
    beginEnrollment,
    confirmEnrollment,
    verifyTotp,
    verifyBackupCode,
    regenerateBackupCodes,
    disable,
    checkFactor,
    lockState,
    resetLock,
    listAttempts,
    cleanupAttempts,
  };
}
