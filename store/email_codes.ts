/**
 * E-mail codes in PostgreSQL: which accounts have the factor on (and at which address), and
 * the codes sent, kept as keyed digests (HMAC-SHA-256 under a key derived from the runtime's
 * secret: six digits are a million guesses, a plain hash would give them away), each bound
 * to its subject (`login:<attempt id>`, `enable:<session id>`), valid until its expiry.
 *
 * {@linkcode EmailCodeStore.consume} runs inside the caller's transaction (the lockout's,
 * store/mfa.ts `checkFactor`): it compares in constant time and deletes the code it accepts,
 * so a code serves once.
 * @module
 */
import { Buffer } from "node:buffer";
import { timingSafeEqual } from "node:crypto";
import type { Tx } from "./mfa.ts";
import { guarded } from "./pg_errors.ts";
import type { Sql } from "./types.ts";

/** The store returned by {@linkcode createEmailCodeStore}. */
export interface EmailCodeStore {
  /**
   * The address codes go to when the factor is on, else null. Inside a check, pass its `tx`:
   * a query on the pool from a transaction holding the user's row lock would wait for a
   * connection that the checks queued on that lock hold (the pool wedges).
   */
  address(userId: number, tx?: Tx): Promise<string | null>;
  /** Turns the factor on for `address` (proved by a code). */
  enable(userId: number, address: string, at: number): Promise<void>;
  /** Turns the factor off; false when it was off. */
  disable(userId: number): Promise<boolean>;
  /** Keeps the digest of a code sent for `subject` (replacing an earlier one). */
  save(
    subject: string,
    code: { userId: number; address: string; digest: Uint8Array; expiresAt: number; at: number },
  ): Promise<void>;
  /**
   * Checks a digest against the subject's live code in `tx`: `accepted` (and the code is
   * deleted), `invalid`, or `missing` (none sent, expired, or another user's).
   */
  consume(
    tx: Tx,
    subject: string,
    input: { userId: number; digest: Uint8Array; at: number },
  ): Promise<{ outcome: "accepted" | "invalid" | "missing"; address: string | null }>;
  /** Deletes expired codes; returns how many. */
  cleanup(at: number): Promise<number>;
}

/** Creates the e-mail code store on `sql`. */
export function createEmailCodeStore(sql: Sql): EmailCodeStore {
  return {
    address: (userId, tx) =>
      guarded("read the e-mail factor", async () => {
        const rows = await (tx ?? sql)<{ address: string }[]>`
          SELECT address FROM user_email_mfa WHERE user_id = ${userId}`;
        return rows[0]?.address ?? null;
      }),
    enable: (userId, address, at) =>
      guarded("turn e-mail codes on", async () => {
        await sql`
          INSERT INTO user_email_mfa (user_id, address, confirmed_at)
          VALUES (${userId}, ${address}, ${new Date(at)})
          ON CONFLICT (user_id) DO UPDATE SET address = EXCLUDED.address,
            confirmed_at = EXCLUDED.confirmed_at`;
      }),
    disable: (userId) =>
      guarded("turn e-mail codes off", async () => {
        const r = await sql`DELETE FROM user_email_mfa WHERE user_id = ${userId}`;
        return r.count > 0;
      }),
    save: (subject, c) =>
      guarded("save an e-mail code", async () => {
        await sql`
          INSERT INTO email_codes (subject, user_id, address, code_hash, expires_at, created_at)
          VALUES (${subject}, ${c.userId}, ${c.address}, ${c.digest}, ${new Date(c.expiresAt)},
            ${new Date(c.at)})
          ON CONFLICT (subject) DO UPDATE SET user_id = EXCLUDED.user_id,
            address = EXCLUDED.address, code_hash = EXCLUDED.code_hash,
            expires_at = EXCLUDED.expires_at, created_at = EXCLUDED.created_at`;
      }),
    consume: (tx, subject, input) =>
      guarded("check an e-mail code", async () => {
        const rows = await tx<{ code_hash: Uint8Array; address: string }[]>`
          SELECT code_hash, address FROM email_codes
          WHERE subject = ${subject} AND user_id = ${input.userId}
            AND expires_at > ${new Date(input.at)}
          FOR UPDATE`;
        if (!rows.length) return { outcome: "missing", address: null };
        const stored = Buffer.from(rows[0].code_hash);
        const given = Buffer.from(input.digest);
        const ok = stored.length === given.length && timingSafeEqual(stored, given);
        if (!ok) return { outcome: "invalid", address: rows[0].address };
        await tx`DELETE FROM email_codes WHERE subject = ${subject}`;
        return { outcome: "accepted", address: rows[0].address };
      }),
    cleanup: (at) =>
      guarded("clean up e-mail codes", async () => {
        const r = await sql`DELETE FROM email_codes WHERE expires_at <= ${new Date(at)}`;
        return r.count;
      }),
  };
}
