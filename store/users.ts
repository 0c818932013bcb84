/**
 * Data access for user accounts: creation with a real password hash, case-insensitive
 * lookups, credential checks, profile and account-state updates.
 *
 * Public getters return {@linkcode User}, which has no password hash; only the internal
 * credential check reads `password_hash`. Every input is validated with zod here, at the
 * module boundary, and every query is a parameterised postgres.js tagged template.
 * @module
 */
import type postgres from "postgres";
import { z } from "zod";
import { type Role, ROLES } from "../lib/access.ts";
import { RuntimeError } from "../lib/errors.ts";
import {
  hashPassword,
  needsRehash,
  type PasswordOptions,
  verifyPassword,
} from "../lib/password.ts";
import { isCheckViolation, isUniqueViolation, rethrowDatabaseError } from "./pg_errors.ts";
import type { Sql } from "./types.ts";
import { idSchema, parseInput } from "./validate.ts";

export type { Role } from "../lib/access.ts";

/** A user account as the rest of the runtime sees it (never the password hash). */
export interface User {
  /** Database id. */
  id: number;
  /** Login name, case preserved; unique case-insensitively. */
  username: string;
  /** Email address, case preserved; unique case-insensitively. */
  email: string;
  /** Free-text name shown to others, or null. */
  displayName: string | null;
  /** http(s) URL of the avatar image, or null. */
  avatarUrl: string | null;
  /** Whether the email address was confirmed. */
  isVerified: boolean;
  /** Inactive accounts cannot log in. */
  isActive: boolean;
  /** What the account may do beyond its own data. */
  role: Role;
  /** When the user last logged in, or null if never. */
  lastLoginAt: Date | null;
  /** When the account was created. */
  createdAt: Date;
  /** When the row last changed. */
  updatedAt: Date;
}

/** Input of {@linkcode createUser}. */
export interface CreateUserInput {
  /** 3–32 characters of letters, digits, `_`, `.`, `-`. */
  username: string;
  /** A valid email address, at most 254 characters. */
  email: string;
  /** 8–1024 characters; only its scrypt hash is stored. */
  password: string;
  /** Up to 100 characters of any text. */
  displayName?: string | null;
}

/** Options of the functions that hash or verify passwords. */
export interface UserPasswordOptions {
  /** scrypt cost for new hashes (tests pass `{ ln: 10 }` for speed). */
  hashing?: PasswordOptions;
}

/** Options of {@linkcode createUser}. */
export interface CreateUserOptions extends UserPasswordOptions {
  /** The new account's role (default `user`; registration never passes another). */
  role?: Role;
}

/** Login name (username or email) and password given to {@linkcode verifyCredentials}. */
export interface Credentials {
  /** Username or email address, matched case-insensitively. */
  login: string;
  /** The password as typed. */
  password: string;
}

/** Changes accepted by {@linkcode updateProfile}; `null` clears a field, absent keeps it. */
export interface ProfileChanges {
  /** New display name (≤ 100 characters) or null. */
  displayName?: string | null;
  /** New avatar URL (http or https, ≤ 2048 characters) or null. */
  avatarUrl?: string | null;
}

// Works with both the pool and a transaction.
// deno-lint-ignore ban-types
type Queryable = postgres.ISql<{}>;

interface UserRow {
  id: string;
  username: string;
  email: string;
  display_name: string | null;
  avatar_url: string | null;
  is_verified: boolean;
  is_active: boolean;
  role: Role;
  last_login_at: Date | null;
  created_at: Date;
  updated_at: Date;
}

interface AuthRow extends UserRow {
  password_hash: string;
}

/** Columns of the public User; password_hash is deliberately absent. */
const USER_COLUMNS = [
  "id",
  "username",
  "email",
  "display_name",
  "avatar_url",
  "is_verified",
  "is_active",
  "role",
  "last_login_at",
  "created_at",
  "updated_at",
];

const MAX_LOGIN_LENGTH = 254;
const MAX_PASSWORD_LENGTH = 1024;

// Postgres text cannot hold U+0000; refusing it here gives a 400 instead of a 500.
const noNul = (s: string) => !s.includes("\u0000");

const usernameSchema = z
  .string({ error: "must be a string" })
  .regex(
    /^[A-Za-z0-9_.-]{3,32}$/,
    'must be 3–32 characters of letters, digits, "_", "." or "-"',
  );
const emailSchema = z
  .string({ error: "must be a string" })
  .max(MAX_LOGIN_LENGTH, `must be at most ${MAX_LOGIN_LENGTH} characters`)
  .pipe(z.email("must be a valid email address"));
const passwordSchema = z
  .string({ error: "must be a string" })
  .min(8, "must be at least 8 characters")
  .max(MAX_PASSWORD_LENGTH, `must be at most ${MAX_PASSWORD_LENGTH} characters`);
const displayNameSchema = z
  .string({ error: "must be a string or null" })
  // Counted in code points, as Postgres' char_length does.
  .refine((s) => [...s].length <= 100, "must be at most 100 characters")
  .refine(noNul, "must not contain NUL characters")
  .nullable();
const avatarUrlSchema = z
  .string({ error: "must be a string or null" })
  .max(2048, "must be at most 2048 characters")
  .refine(isHttpUrl, "must be an http or https URL")
  .nullable();

const roleSchema = z.enum(ROLES, { error: "must be user, operator or admin" });

const createUserSchema = z.object({
  username: usernameSchema,
  email: emailSchema,
  password: passwordSchema,
  displayName: displayNameSchema.optional(),
});
const credentialsSchema = z.object({
  login: z.string({ error: "must be a string" }),
  password: z.string({ error: "must be a string" }),
});
const profileSchema = z.object({
  displayName: displayNameSchema.optional(),
  avatarUrl: avatarUrlSchema.optional(),
});

function isHttpUrl(value: string): boolean {
  try {
    const url = new URL(value);
    return url.protocol === "http:" || url.protocol === "https:";
  } catch {
    return false;
  }
}

function toUser(row: UserRow): User {
  return {
    id: Number(row.id),
    username: row.username,
    email: row.email,
    displayName: row.display_name,
    avatarUrl: row.avatar_url,
    isVerified: row.is_verified,
    isActive: row.is_active,
    role: row.role,
    lastLoginAt: row.last_login_at,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

function mapWriteError(err: unknown, action: string): never {
  if (isUniqueViolation(err, "users_username_lower_key")) {
    throw new RuntimeError("USER_EXISTS", `Cannot ${action}: the username is taken`, {
      cause: err,
      details: { field: "username" },
    });
  }
  if (isUniqueViolation(err, "users_email_lower_key")) {
    throw new RuntimeError("USER_EXISTS", `Cannot ${action}: the email is already registered`, {
      cause: err,
      details: { field: "email" },
    });
  }
  if (isCheckViolation(err)) {
    const constraint = (err as { constraint_name?: string }).constraint_name;
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Cannot ${action}: the database refused the value (${constraint ?? "check constraint"})`,
      { cause: err, details: { constraint } },
    );
  }
  rethrowDatabaseError(err, action);
}

function notFound(action: string, id: number): RuntimeError {
  return new RuntimeError("USER_NOT_FOUND", `Cannot ${action}: no user has id ${id}`, {
    details: { id },
  });
}

/** Creates an account with a scrypt hash of the password; USER_EXISTS on a duplicate. */
export async function createUser(
  sql: Sql,
  input: CreateUserInput,
  options: CreateUserOptions = {},
): Promise<User> {
  const action = "create user";
  const data = parseInput(createUserSchema, input, { action: action, name: "input" });
  const role = parseInput(roleSchema, options.role ?? "user", { action, name: "role" });
  const passwordHash = await hashPassword(data.password, options.hashing);
  try {
    const rows = await sql<UserRow[]>`
      INSERT INTO users (username, email, password_hash, display_name, role)
      VALUES (${data.username}, ${data.email}, ${passwordHash}, ${data.displayName ?? null},
              ${role})
      RETURNING ${sql(USER_COLUMNS)}`;
    return toUser(rows[0]);
  } catch (err) {
    mapWriteError(err, action);
  }
}

/** The user with this id, or null. */
export async function getUserById(sql: Sql, id: number): Promise<User | null> {
  const action = "load user";
  const userId = parseInput(idSchema, id, { action: action, name: "id" });
  try {
    const rows = await sql<UserRow[]>`
      SELECT ${sql(USER_COLUMNS)} FROM users WHERE id = ${userId}`;
    return rows.length ? toUser(rows[0]) : null;
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/** The user with this username (case-insensitive), or null. */
export async function getUserByUsername(sql: Sql, username: string): Promise<User | null> {
  const action = "load user";
  const name = parseInput(z.string({ error: "must be a string" }), username, {
    action: action,
    name: "username",
  });
  try {
    const rows = await sql<UserRow[]>`
      SELECT ${sql(USER_COLUMNS)} FROM users WHERE lower(username) = lower(${name})`;
    return rows.length ? toUser(rows[0]) : null;
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/** The user with this email address (case-insensitive), or null. */
export async function getUserByEmail(sql: Sql, email: string): Promise<User | null> {
  const action = "load user";
  const address = parseInput(z.string({ error: "must be a string" }), email, {
    action: action,
    name: "email",
  });
  try {
    const rows = await sql<UserRow[]>`
      SELECT ${sql(USER_COLUMNS)} FROM users WHERE lower(email) = lower(${address})`;
    return rows.length ? toUser(rows[0]) : null;
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

// Internal: the only read of password_hash. A username cannot contain "@", so the
// login's shape says which unique index to use and at most one row can match.
async function fetchAuthRow(sql: Queryable, login: string): Promise<AuthRow | null> {
  const rows = login.includes("@")
    ? await sql<AuthRow[]>`
        SELECT ${sql(USER_COLUMNS)}, password_hash FROM users
        WHERE lower(email) = lower(${login})`
    : await sql<AuthRow[]>`
        SELECT ${sql(USER_COLUMNS)}, password_hash FROM users
        WHERE lower(username) = lower(${login})`;
  return rows[0] ?? null;
}

const dummyHashes = new Map<string, Promise<string>>();

// A hash with the current cost, verified against when the login names nobody, so an
// unknown login takes as long as a wrong password and does not reveal which accounts exist.
function dummyHash(options: PasswordOptions = {}): Promise<string> {
  const key = JSON.stringify([options.ln, options.r, options.p]);
  let hash = dummyHashes.get(key);
  if (!hash) {
    hash = hashPassword(crypto.randomUUID(), options);
    dummyHashes.set(key, hash);
  }
  return hash;
}

/**
 * The active user whose username or email is `login` and whose password is `password`,
 * or null (unknown login, wrong password, inactive account: the caller cannot tell which,
 * and neither can a timer). An outdated hash is upgraded to the current cost on success.
 */
export async function verifyCredentials(
  sql: Sql,
  credentials: Credentials,
  options: UserPasswordOptions = {},
): Promise<User | null> {
  const action = "verify credentials";
  const { login, password } = parseInput(credentialsSchema, credentials, {
    action: action,
    name: "credentials",
  });
  const plausible = login.length > 0 && login.length <= MAX_LOGIN_LENGTH &&
    password.length <= MAX_PASSWORD_LENGTH;
  let row: AuthRow | null = null;
  try {
    row = plausible ? await fetchAuthRow(sql, login) : null;
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
  if (!row) {
    await verifyPassword(password.slice(0, MAX_PASSWORD_LENGTH), await dummyHash(options.hashing));
    return null;
  }
  const ok = await verifyPassword(password, row.password_hash);
  // Checked after the hash so an inactive account costs the same time as any other.
  if (!ok || !row.is_active) return null;
  if (needsRehash(row.password_hash, options.hashing)) {
    const upgraded = await hashPassword(password, options.hashing);
    try {
      // Compare-and-set: a password change that raced this login wins.
      await sql`
        UPDATE users SET password_hash = ${upgraded}
        WHERE id = ${row.id} AND password_hash = ${row.password_hash}`;
    } catch (err) {
      rethrowDatabaseError(err, action);
    }
  }
  return toUser(row);
}

/**
 * True when `password` is the password of the active user `id` (re-authentication: the
 * caller already knows who it is). Costs one scrypt whatever the outcome.
 */
export async function checkPassword(
  sql: Sql,
  id: number,
  password: string,
  options: UserPasswordOptions = {},
): Promise<boolean> {
  const action = "check password";
  const userId = parseInput(idSchema, id, { action: action, name: "id" });
  const given = parseInput(z.string({ error: "must be a string" }), password, {
    action,
    name: "password",
  });
  let row: { password_hash: string; is_active: boolean } | undefined;
  try {
    [row] = await sql<{ password_hash: string; is_active: boolean }[]>`
      SELECT password_hash, is_active FROM users WHERE id = ${userId}`;
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
  if (!row || given.length > MAX_PASSWORD_LENGTH) {
    await verifyPassword(given.slice(0, MAX_PASSWORD_LENGTH), await dummyHash(options.hashing));
    return false;
  }
  const ok = await verifyPassword(given, row.password_hash);
  return ok && row.is_active;
}

/** Changes display name and/or avatar URL; returns the updated user. */
export async function updateProfile(
  sql: Sql,
  id: number,
  changes: ProfileChanges,
): Promise<User> {
  const action = "update profile";
  const userId = parseInput(idSchema, id, { action: action, name: "id" });
  const data = parseInput(profileSchema, changes, { action: action, name: "changes" });
  const set: Record<string, string | null> = {};
  if (data.displayName !== undefined) set.display_name = data.displayName;
  if (data.avatarUrl !== undefined) set.avatar_url = data.avatarUrl;
  const columns = Object.keys(set);
  if (!columns.length) {
    const user = await getUserById(sql, userId);
    if (!user) throw notFound(action, userId);
    return user;
  }
  try {
    const rows = await sql<UserRow[]>`
      UPDATE users SET ${sql(set, columns)} WHERE id = ${userId}
      RETURNING ${sql(USER_COLUMNS)}`;
    if (!rows.length) throw notFound(action, userId);
    return toUser(rows[0]);
  } catch (err) {
    mapWriteError(err, action);
  }
}

async function setFlag(
  sql: Queryable,
  id: number,
  action: string,
  flag: "is_verified" | "is_active",
  value: boolean,
): Promise<User> {
  const rows = await sql<UserRow[]>`
    UPDATE users SET ${sql({ [flag]: value }, flag)} WHERE id = ${id}
    RETURNING ${sql(USER_COLUMNS)}`;
  if (!rows.length) throw notFound(action, id);
  return toUser(rows[0]);
}

/** Marks the user's email as verified; returns the updated user. */
export async function markVerified(sql: Sql, id: number): Promise<User> {
  const action = "mark user verified";
  const userId = parseInput(idSchema, id, { action: action, name: "id" });
  try {
    return await setFlag(sql, userId, action, "is_verified", true);
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/** Re-enables a deactivated account; returns the updated user. */
export async function activate(sql: Sql, id: number): Promise<User> {
  const action = "activate user";
  const userId = parseInput(idSchema, id, { action: action, name: "id" });
  try {
    return await setFlag(sql, userId, action, "is_active", true);
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/**
 * Disables an account and deletes its login sessions in the same transaction, so a
 * deactivated user is logged out everywhere rather than only refused at the next login.
 */
export async function deactivate(sql: Sql, id: number): Promise<User> {
  const action = "deactivate user";
  const userId = parseInput(idSchema, id, { action: action, name: "id" });
  try {
    return await sql.begin(async (tx) => {
      const user = await setFlag(tx, userId, action, "is_active", false);
      await tx`DELETE FROM sessions WHERE user_id = ${userId}`;
      return user;
    });
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/** Records a successful login at `options.at` (default: the database clock). */
export async function recordLogin(
  sql: Sql,
  id: number,
  options: { at?: Date } = {},
): Promise<User> {
  const action = "record login";
  const userId = parseInput(idSchema, id, { action: action, name: "id" });
  const at = parseInput(z.date().optional(), options.at, { action: action, name: "at" });
  try {
    const rows = await sql<UserRow[]>`
      UPDATE users SET last_login_at = COALESCE(${at ?? null}::timestamptz, now())
      WHERE id = ${userId}
      RETURNING ${sql(USER_COLUMNS)}`;
    if (!rows.length) throw notFound(action, userId);
    return toUser(rows[0]);
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/**
 * Deletes an account; its sessions, streams, stream sessions, recordings, usage and
 * billing rows go with it, while its audit events stay with user_id set to null.
 * Returns false when there was no such user.
 */
export async function deleteUser(sql: Sql, id: number): Promise<boolean> {
  const action = "delete user";
  const userId = parseInput(idSchema, id, { action: action, name: "id" });
  try {
    const result = await sql`DELETE FROM users WHERE id = ${userId}`;
    return result.count > 0;
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/**
 * Gives the user `role`; returns the user as it was before and after. Role changes take
 * effect at the next request: privileged routes read the role from PostgreSQL every time.
 */
export async function setRole(
  sql: Sql,
  id: number,
  role: Role,
): Promise<{ before: Role; user: User }> {
  const action = "change role";
  const userId = parseInput(idSchema, id, { action: action, name: "id" });
  const next = parseInput(roleSchema, role, { action: action, name: "role" });
  try {
    // The old value comes from the same statement, so the audit record cannot race.
    const rows = await sql<(UserRow & { before: Role })[]>`
      UPDATE users u SET role = ${next}
      FROM (SELECT id, role AS before FROM users WHERE id = ${userId} FOR UPDATE) old
      WHERE u.id = old.id
      RETURNING ${sql(USER_COLUMNS.map((c) => `u.${c}`))}, old.before`;
    if (!rows.length) throw notFound(action, userId);
    const { before, ...row } = rows[0];
    return { before, user: toUser(row as UserRow) };
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/** How many active accounts have `role` (the CLI refuses to demote the last admin). */
export async function countActiveWithRole(sql: Sql, role: Role): Promise<number> {
  const action = "count users";
  const r = parseInput(roleSchema, role, { action: action, name: "role" });
  try {
    const [row] = await sql<{ n: number }[]>`
      SELECT count(*)::int AS n FROM users WHERE role = ${r} AND is_active`;
    return row.n;
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/** Accounts, by id; with `role`, only those that have it (at most `limit`, default 100). */
export async function listUsers(
  sql: Sql,
  options: { role?: Role; limit?: number } = {},
): Promise<User[]> {
  const action = "list users";
  const role = options.role === undefined
    ? null
    : parseInput(roleSchema, options.role, { action, name: "role" });
  const limit = parseInput(
    z.number().int().min(1).max(1000),
    options.limit ?? 100,
    { action, name: "limit" },
  );
  try {
    const rows = await sql<UserRow[]>`
      SELECT ${sql(USER_COLUMNS)} FROM users
      WHERE ${role}::text IS NULL OR role = ${role}
      ORDER BY id LIMIT ${limit}`;
    return rows.map(toUser);
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}
