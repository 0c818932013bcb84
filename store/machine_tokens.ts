/**
 * Machine tokens: scoped, revocable bearer tokens of programs (a Prometheus scrape, a
 * readiness probe, a game server writing state), created and revoked by admins.
 *
 * A token is `rsm_` and 32 random bytes in base64url (the prefix lets secret scanners and
 * the request path tell it from a session token). Only its SHA-256 is stored: there is
 * nothing to guess in 256 random bits, so no slow hash is needed, and the digest is looked
 * up by its unique index. The token is returned once, by {@linkcode MachineTokenStore.create}.
 *
 * `last_used_at` is written at most once per `touchEveryMs` per token and process, so a
 * scrape every few seconds costs one indexed read, not a write.
 * @module
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import { isScope, type Scope, SCOPE_NAMES } from "../lib/access.ts";
import { RuntimeError } from "../lib/errors.ts";
import { type Logger, silentLogger } from "../lib/log.ts";
import { rethrowDatabaseError } from "./pg_errors.ts";
import { randomToken } from "./secure_random.ts";
import type { Sql } from "./types.ts";
import { idSchema, parseInput } from "./validate.ts";

/** A machine token as listed (never the token or its hash). */
export interface MachineToken {
  /** Random UUID. */
  id: string;
  /** Who or what uses it, e.g. `prometheus`. */
  name: string;
  /** What it allows. */
  scopes: Scope[];
  /** The admin who made it, or null (made with the CLI). */
  createdBy: number | null;
  /** When it was made. */
  createdAt: Date;
  /** When it stops being accepted, or null (until revoked). */
  expiresAt: Date | null;
  /** When it was last accepted (at most a minute behind), or null. */
  lastUsedAt: Date | null;
  /** When it was revoked, or null. */
  revokedAt: Date | null;
}

/** Input of {@linkcode MachineTokenStore.create}. */
export interface CreateMachineTokenInput {
  /** 1-64 characters of letters, digits, `_ . : @ -`. */
  name: string;
  /** One or more known scopes. */
  scopes: string[];
  /** The admin making it, or null (CLI). */
  createdBy?: number | null;
  /** Expiry, or null/absent (until revoked). */
  expiresAt?: Date | null;
}

/** The machine token store returned by {@linkcode createMachineTokenStore}. */
export interface MachineTokenStore {
  /** Makes a token; returns it (shown once) and its record. */
  create(input: CreateMachineTokenInput): Promise<{ token: string; record: MachineToken }>;
  /** Tokens, newest first; revoked ones only with `includeRevoked`. */
  list(options?: { includeRevoked?: boolean }): Promise<MachineToken[]>;
  /** Revokes a token by id; false when there is no live token with that id. */
  revoke(id: string): Promise<boolean>;
  /** The live token this is, or null (unknown, revoked, expired); records the use. */
  verify(token: string): Promise<MachineToken | null>;
}

/** Options of {@linkcode createMachineTokenStore}. */
export interface MachineTokenStoreOptions {
  /** Clock in ms. */
  now: () => number;
  /** Least time between two `last_used_at` writes of one token (default 60 s). */
  touchEveryMs?: number;
  /** Log. */
  log?: Logger;
}

/** What a machine token looks like; anything else is not one. */
export const MACHINE_TOKEN_RE = /^rsm_[A-Za-z0-9_-]{43}$/;

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const createSchema = z.object({
  name: z.string({ error: "must be a string" }).regex(
    /^[A-Za-z0-9_.:@-]{1,64}$/,
    'must be 1-64 characters of letters, digits, "_", ".", ":", "@" or "-"',
  ),
  scopes: z.array(
    z.string().refine(isScope, `must be one of ${SCOPE_NAMES.join(", ")}`),
    { error: "must be a list of scopes" },
  ).min(1, "must name at least one scope").max(32, "must name at most 32 scopes"),
  createdBy: idSchema.nullable().optional(),
  expiresAt: z.date({ error: "must be a date" }).nullable().optional(),
});

interface Row {
  id: string;
  name: string;
  scopes: string[];
  created_by: string | null;
  created_at: Date;
  expires_at: Date | null;
  last_used_at: Date | null;
  revoked_at: Date | null;
}

const COLUMNS = [
  "id",
  "name",
  "scopes",
  "created_by",
  "created_at",
  "expires_at",
  "last_used_at",
  "revoked_at",
];

function toRecord(row: Row): MachineToken {
  return {
    id: row.id,
    name: row.name,
    // A scope this release does not know (a newer one wrote it) grants nothing here.
    scopes: row.scopes.filter(isScope),
    createdBy: row.created_by === null ? null : Number(row.created_by),
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    lastUsedAt: row.last_used_at,
    revokedAt: row.revoked_at,
  };
}

function digest(token: string): Uint8Array {
  return new Uint8Array(createHash("sha256").update(token, "utf8").digest());
}

/** Creates the machine token store on `sql`. */
export function createMachineTokenStore(
  sql: Sql,
  options: MachineTokenStoreOptions,
): MachineTokenStore {
  const { now } = options;
  const log = options.log ?? silentLogger;
  const touchEveryMs = options.touchEveryMs ?? 60_000;
  // Per-process throttle of last_used_at writes: token id → last write (ms).
  const touched = new Map<string, number>();

  async function create(
    input: CreateMachineTokenInput,
  ): Promise<{ token: string; record: MachineToken }> {
    const action = "create machine token";
    const data = parseInput(createSchema, input, { action, name: "input" });
    const scopes = [...new Set(data.scopes)].sort();
    const at = new Date(now());
    if (data.expiresAt && data.expiresAt.getTime() <= at.getTime()) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Cannot ${action}: expiresAt must be in the future`,
        { details: { field: "expiresAt" } },
      );
    }
    const token = `rsm_${randomToken(32)}`;
    try {
      const rows = await sql<Row[]>`
        INSERT INTO machine_tokens (name, scopes, token_hash, created_by, created_at, expires_at)
        VALUES (${data.name}, ${scopes}::text[], ${digest(token)}, ${data.createdBy ?? null},
                ${at}, ${data.expiresAt ?? null})
        RETURNING ${sql(COLUMNS)}`;
      return { token, record: toRecord(rows[0]) };
    } catch (err) {
      rethrowDatabaseError(err, action);
    }
  }

  async function list(listOptions: { includeRevoked?: boolean } = {}): Promise<MachineToken[]> {
    const all = listOptions.includeRevoked === true;
    try {
      const rows = await sql<Row[]>`
        SELECT ${sql(COLUMNS)} FROM machine_tokens
        WHERE ${all} OR revoked_at IS NULL
        ORDER BY created_at DESC, id DESC`;
      return rows.map(toRecord);
    } catch (err) {
      rethrowDatabaseError(err, "list machine tokens");
    }
  }

  async function revoke(id: string): Promise<boolean> {
    if (typeof id !== "string" || !UUID_RE.test(id)) return false;
    try {
      const result = await sql`
        UPDATE machine_tokens SET revoked_at = ${new Date(now())}
        WHERE id = ${id} AND revoked_at IS NULL`;
      touched.delete(id.toLowerCase());
      return result.count > 0;
    } catch (err) {
      rethrowDatabaseError(err, "revoke machine token");
    }
  }

  async function verify(token: string): Promise<MachineToken | null> {
    if (typeof token !== "string" || !MACHINE_TOKEN_RE.test(token)) return null;
    const at = now();
    let row: Row | undefined;
    try {
      [row] = await sql<Row[]>`
        SELECT ${sql(COLUMNS)} FROM machine_tokens
        WHERE token_hash = ${digest(token)} AND revoked_at IS NULL
          AND (expires_at IS NULL OR expires_at > ${new Date(at)})`;
    } catch (err) {
      rethrowDatabaseError(err, "check machine token");
    }
    if (!row) return null;
    const last = touched.get(row.id);
    if (last === undefined || at - last >= touchEveryMs) {
      touched.set(row.id, at);
      if (touched.size > 10_000) touched.clear();
      try {
        await sql`
          UPDATE machine_tokens SET last_used_at = ${new Date(at)}
          WHERE id = ${row.id} AND (last_used_at IS NULL OR last_used_at < ${new Date(at)})`;
        row.last_used_at = new Date(at);
      } catch (err) {
        // The request is answered either way; the record is a convenience.
        log.warn("cannot record a machine token's use", {
          token: row.id,
          error: err instanceof Error ? err.message : String(err),
        });
      }
    }
    return toRecord(row);
  }

  return { create, list, revoke, verify };
}
