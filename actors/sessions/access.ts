/**
 * Who may do what, managed: account roles and machine tokens, each change recorded in the
 * event store for the audit trail (aggregate `user` / `machine_token`, with who did it).
 * The sessions concern's service (admin routes) and the CLI (`deno task cli users|tokens`)
 * both go through here, so the rules hold whichever door is used:
 *
 * - the first admin is made by the CLI (`users create-admin`), never by default;
 * - the last active admin cannot be demoted (nobody could make another one but the CLI);
 * - a machine token is shown once, stored as its SHA-256, revocable, and names its scopes.
 * @module
 */
import { type Role, type Scope } from "../../lib/access.ts";
import { RuntimeError } from "../../lib/errors.ts";
import { type Logger, silentLogger } from "../../lib/log.ts";
import type { PasswordOptions } from "../../lib/password.ts";
import type { EventStore } from "../../store/event_store.ts";
import {
  createMachineTokenStore,
  type MachineToken,
  type MachineTokenStore,
} from "../../store/machine_tokens.ts";
import type { Sql } from "../../store/types.ts";
import {
  countActiveWithRole,
  createUser,
  type CreateUserInput,
  getUserById,
  listUsers,
  setRole,
  type User,
} from "../../store/users.ts";

/** Who made a change: an admin's user id, or null (the CLI, i.e. shell access to a host). */
export type Actor = number | null;

/** The access-management service. */
export interface AccessService {
  /** Creates an account with the `admin` role (the CLI's `users create-admin`). */
  createAdmin(input: CreateUserInput): Promise<User>;
  /** Gives a user a role; CONFLICT when it would demote the last active admin. */
  setRole(userId: number, role: Role, by: Actor): Promise<{ before: Role; user: User }>;
  /** Accounts, optionally of one role. */
  listUsers(options?: { role?: Role; limit?: number }): Promise<User[]>;
  /** Makes a machine token; returns it (shown once) and its record. */
  createToken(
    input: { name: string; scopes: string[]; expiresAt?: Date | null },
    by: Actor,
  ): Promise<{ token: string; record: MachineToken }>;
  /** Live machine tokens (all with `includeRevoked`). */
  listTokens(options?: { includeRevoked?: boolean }): Promise<MachineToken[]>;
  /** Revokes a machine token; MACHINE_TOKEN_NOT_FOUND when no live token has this id. */
  revokeToken(id: string, by: Actor): Promise<void>;
  /** The live machine token this is, or null. */
  verifyToken(token: string): Promise<{ id: string; name: string; scopes: Scope[] } | null>;
}

/** What {@linkcode createAccessService} needs. */
export interface AccessServiceDeps {
  /** Database pool. */
  sql: Sql;
  /** Where changes are recorded. */
  events: EventStore;
  /** Clock (ms). */
  now: () => number;
  /** Log. */
  log?: Logger;
  /** scrypt cost of new password hashes (tests use `{ ln: 10 }`). */
  hashing?: PasswordOptions;
  /** The machine token store (default: one on `sql`). */
  tokens?: MachineTokenStore;
}

/** Creates the access-management service. */
export function createAccessService(deps: AccessServiceDeps): AccessService {
  const { sql, events, now } = deps;
  const log = deps.log ?? silentLogger;
  const tokens = deps.tokens ?? createMachineTokenStore(sql, { now, log });

  /** Appends one audit event, re-reading the version if another writer moved on. */
  async function audit(
    aggregate: { type: string; id: string },
    event: { type: string; data: Record<string, unknown>; userId: Actor },
  ): Promise<void> {
    for (let attempt = 0;; attempt++) {
      const version = await events.currentVersion(aggregate);
      try {
        await events.append(aggregate, [{
          type: event.type,
          data: { ...event.data, by: event.userId ?? "cli", at: new Date(now()).toISOString() },
          userId: event.userId,
        }], { expectedVersion: version });
        return;
      } catch (err) {
        if ((err as RuntimeError).code !== "EVENT_VERSION_CONFLICT" || attempt >= 4) throw err;
      }
    }
  }

  return {
    async createAdmin(input) {
      const user = await createUser(sql, input, { hashing: deps.hashing, role: "admin" });
      await audit({ type: "user", id: String(user.id) }, {
        type: "UserRoleChanged",
        data: { from: null, to: "admin" },
        userId: null,
      });
      log.info("admin account created", { user: user.id, username: user.username });
      return user;
    },
    async setRole(userId, role, by) {
      const current = await getUserById(sql, userId);
      if (!current) {
        throw new RuntimeError("USER_NOT_FOUND", `Cannot change role: no user has id ${userId}`);
      }
      if (current.role === "admin" && role !== "admin" && current.isActive) {
        // Counted before the change: an admin demoting themselves or another must leave one.
        if (await countActiveWithRole(sql, "admin") <= 1) {
          throw new RuntimeError(
            "CONFLICT",
            "Cannot change role: this is the last active admin; make another admin first",
          );
        }
      }
      const result = await setRole(sql, userId, role);
      if (result.before !== role) {
        await audit({ type: "user", id: String(userId) }, {
          type: "UserRoleChanged",
          data: { from: result.before, to: role },
          userId: by,
        });
        log.info("role changed", { user: userId, from: result.before, to: role, by: by ?? "cli" });
      }
      return result;
    },
    listUsers: (options) => listUsers(sql, options),
    async createToken(input, by) {
      const made = await tokens.create({ ...input, createdBy: by });
      await audit({ type: "machine_token", id: made.record.id }, {
        type: "MachineTokenCreated",
        data: { name: made.record.name, scopes: made.record.scopes },
        userId: by,
      });
      log.info("machine token created", {
        token: made.record.id,
        name: made.record.name,
        scopes: made.record.scopes.join(","),
      });
      return made;
    },
    listTokens: (options) => tokens.list(options),
    async revokeToken(id, by) {
      if (!await tokens.revoke(id)) {
        throw new RuntimeError("MACHINE_TOKEN_NOT_FOUND", `No live machine token has id ${id}`);
      }
      await audit({ type: "machine_token", id }, {
        type: "MachineTokenRevoked",
        data: {},
        userId: by,
      });
      log.info("machine token revoked", { token: id });
    },
    async verifyToken(token) {
      const record = await tokens.verify(token);
      return record ? { id: record.id, name: record.name, scopes: record.scopes } : null;
    },
  };
}
