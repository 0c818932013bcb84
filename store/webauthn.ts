/**
 * Passkeys (WebAuthn credentials) and their ceremony challenges in PostgreSQL.
 *
 * Guarantees:
 * - **A challenge serves once.** It is kept under its subject (`login:<attempt id>`,
 *   `register:<session id>`); {@linkcode WebAuthnStore.takeChallenge} deletes it and returns
 *   it in one statement, so whatever the check decides, the same challenge is never
 *   accepted again, and a challenge of another attempt never matches this one's subject.
 * - **Sign counters only go up.** {@linkcode WebAuthnStore.advanceCounter} writes the new
 *   counter only when it is greater than the stored one (or both are 0: authenticators
 *   without a counter), in the caller's transaction holding the credential's row lock;
 *   false means a cloned authenticator.
 * - **Names are the owner's.** Listing and removal are always by user id.
 * @module
 */
import { RuntimeError } from "../lib/errors.ts";
import type { Tx } from "./mfa.ts";
import { guarded } from "./pg_errors.ts";
import type { Sql } from "./types.ts";

/** A passkey as listed to its owner. */
export interface Passkey {
  /** Row id (what removal takes). */
  id: number;
  /** The owner's name for it. */
  name: string;
  /** Base64url credential id. */
  credentialId: string;
  /** Signature counter last seen. */
  signCount: number;
  /** Transports the authenticator reported. */
  transports: string[];
  /** singleDevice or multiDevice (synced). */
  deviceType: string;
  /** Backed up (synced) at registration. */
  backedUp: boolean;
  /** Registered at. */
  createdAt: Date;
  /** Last accepted assertion. */
  lastUsedAt: Date | null;
}

/** A stored credential with its public key, for verification. */
export interface StoredCredential extends Passkey {
  /** Owner. */
  userId: number;
  /** COSE public key. */
  publicKey: Uint8Array;
}

/** A new passkey, as verified registration reports it. */
export interface NewPasskey {
  /** Base64url credential id. */
  credentialId: string;
  /** COSE public key. */
  publicKey: Uint8Array;
  /** Counter at registration. */
  signCount: number;
  /** Transports reported. */
  transports: string[];
  /** The owner's name for it (1–64 characters). */
  name: string;
  /** singleDevice or multiDevice. */
  deviceType: string;
  /** Backed up. */
  backedUp: boolean;
}

/** The store returned by {@linkcode createWebAuthnStore}. */
export interface WebAuthnStore {
  /** A user's passkeys, oldest first. */
  list(userId: number): Promise<Passkey[]>;
  /** How many passkeys a user has (inside a check, in its `tx`: see EmailCodeStore.address). */
  count(userId: number, tx?: Tx): Promise<number>;
  /** Adds a passkey; WEBAUTHN_CREDENTIAL_EXISTS when its id is registered already. */
  add(userId: number, passkey: NewPasskey, at: number): Promise<Passkey>;
  /** Removes one of the user's passkeys; false when it is not theirs (or gone). */
  remove(userId: number, id: number): Promise<boolean>;
  /** Keeps a challenge for a subject until `expiresAt` (replacing an earlier one). */
  saveChallenge(
    subject: string,
    challenge: { value: string; userId: number | null; expiresAt: number },
  ): Promise<void>;
  /** Takes (deletes and returns) the live challenge of a subject, or null. */
  takeChallenge(
    subject: string,
    at: number,
    tx?: Tx,
  ): Promise<{ value: string; userId: number | null } | null>;
  /** The owner of the credential with this (base64url) id, or null. */
  ownerOf(credentialId: string): Promise<number | null>;
  /** The credential with this id, row-locked in `tx`, or null. */
  lockCredential(tx: Tx, credentialId: string): Promise<StoredCredential | null>;
  /** Writes a greater counter and the use time; false when `count` does not go up (a clone). */
  advanceCounter(tx: Tx, id: number, count: number, at: number): Promise<boolean>;
  /** Deletes expired challenges; returns how many. */
  cleanup(at: number): Promise<number>;
}

interface Row {
  id: string;
  user_id: string;
  name: string;
  credential_id: Uint8Array;
  public_key: Uint8Array;
  sign_count: string;
  transports: string[];
  device_type: string;
  backed_up: boolean;
  created_at: Date;
  last_used_at: Date | null;
}

function toBase64Url(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replaceAll("+", "-").replaceAll("/", "_").replaceAll("=", "");
}

function fromBase64Url(text: string): Uint8Array {
  const b64 = text.replaceAll("-", "+").replaceAll("_", "/");
  const raw = atob(b64 + "=".repeat((4 - b64.length % 4) % 4));
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

function toPasskey(r: Row): Passkey {
  return {
    id: Number(r.id),
    name: r.name,
    credentialId: toBase64Url(r.credential_id),
    signCount: Number(r.sign_count),
    transports: r.transports,
    deviceType: r.device_type,
    backedUp: r.backed_up,
    createdAt: r.created_at,
    lastUsedAt: r.last_used_at,
  };
}

/** Creates the passkey store on `sql`. */
export function createWebAuthnStore(sql: Sql): WebAuthnStore {
  return {
    list: (userId) =>
      guarded("list passkeys", async () => {
        const rows = await sql<Row[]>`
          SELECT * FROM webauthn_credentials WHERE user_id = ${userId} ORDER BY id`;
        return rows.map(toPasskey);
      }),
    count: (userId, tx) =>
      guarded("count passkeys", async () => {
        const [r] = await (tx ?? sql)<{ n: number }[]>`
          SELECT count(*)::int AS n FROM webauthn_credentials WHERE user_id = ${userId}`;
        return r.n;
      }),
    add: (userId, p, at) =>
      guarded("add a passkey", async () => {
        const rows = await sql<Row[]>`
          INSERT INTO webauthn_credentials
            (user_id, credential_id, public_key, sign_count, transports, name, device_type,
             backed_up, created_at)
          VALUES (${userId}, ${fromBase64Url(p.credentialId)}, ${p.publicKey}, ${p.signCount},
            ${p.transports}, ${p.name}, ${p.deviceType}, ${p.backedUp}, ${new Date(at)})
          ON CONFLICT (credential_id) DO NOTHING
          RETURNING *`;
        if (!rows.length) {
          throw new RuntimeError(
            "WEBAUTHN_CREDENTIAL_EXISTS",
            "Cannot add the passkey: this authenticator is registered already",
          );
        }
        return toPasskey(rows[0]);
      }),
    remove: (userId, id) =>
      guarded("remove a passkey", async () => {
        const r = await sql`
          DELETE FROM webauthn_credentials WHERE id = ${id} AND user_id = ${userId}`;
        return r.count > 0;
      }),
    saveChallenge: (subject, c) =>
      guarded("save a WebAuthn challenge", async () => {
        await sql`
          INSERT INTO webauthn_challenges (subject, challenge, user_id, expires_at)
          VALUES (${subject}, ${c.value}, ${c.userId}, ${new Date(c.expiresAt)})
          ON CONFLICT (subject) DO UPDATE SET challenge = EXCLUDED.challenge,
            user_id = EXCLUDED.user_id, expires_at = EXCLUDED.expires_at`;
      }),
    takeChallenge: (subject, at, tx) =>
      guarded("take a WebAuthn challenge", async () => {
        const q = tx ?? sql;
        const rows = await q<{ challenge: string; user_id: string | null; expires_at: Date }[]>`
          DELETE FROM webauthn_challenges WHERE subject = ${subject}
          RETURNING challenge, user_id, expires_at`;
        if (!rows.length || rows[0].expires_at.getTime() <= at) return null;
        return {
          value: rows[0].challenge,
          userId: rows[0].user_id === null ? null : Number(rows[0].user_id),
        };
      }),
    ownerOf: (credentialId) =>
      guarded("read a passkey", async () => {
        let raw: Uint8Array;
        try {
          raw = fromBase64Url(credentialId);
        } catch {
          return null;
        }
        const rows = await sql<{ user_id: string }[]>`
          SELECT user_id FROM webauthn_credentials WHERE credential_id = ${raw}`;
        return rows.length ? Number(rows[0].user_id) : null;
      }),
    lockCredential: (tx, credentialId) =>
      guarded("read a passkey", async () => {
        let raw: Uint8Array;
        try {
          raw = fromBase64Url(credentialId);
        } catch {
          return null;
        }
        const rows = await tx<Row[]>`
          SELECT * FROM webauthn_credentials WHERE credential_id = ${raw} FOR UPDATE`;
        if (!rows.length) return null;
        return {
          ...toPasskey(rows[0]),
          userId: Number(rows[0].user_id),
          publicKey: rows[0].public_key,
        };
      }),
    advanceCounter: (tx, id, count, at) =>
      guarded("advance a passkey counter", async () => {
        const r = await tx`
          UPDATE webauthn_credentials SET sign_count = ${count}, last_used_at = ${new Date(at)}
          WHERE id = ${id} AND (sign_count < ${count} OR (sign_count = 0 AND ${count} = 0))`;
        return r.count > 0;
      }),
    cleanup: (at) =>
      guarded("clean up WebAuthn challenges", async () => {
        const r = await sql`DELETE FROM webauthn_challenges WHERE expires_at <= ${new Date(at)}`;
        return r.count;
      }),
  };
}
