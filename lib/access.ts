/**
 * The vocabulary of authorisation, shared by the routes (api/authz), the sessions concern
 * and the CLI: account roles, least privileged first, and the scopes a machine token can
 * carry. docs/security.md explains them; every route's declaration names one of each.
 * @module
 */

/**
 * What an account may do beyond its own data: `operator` reads the runtime's internals,
 * `admin` also acts on them.
 */
export type Role = "user" | "operator" | "admin";

/** Every role, least privileged first. */
export const ROLES: readonly Role[] = ["user", "operator", "admin"];

/** True when `role` is `min` or above. */
export function roleAtLeast(role: Role, min: Role): boolean {
  return ROLES.indexOf(role) >= ROLES.indexOf(min);
}

/** Every scope a machine token can carry, with what it allows. */
export const SCOPES = {
  "health:read": "GET /health with its details (checks, actors, versions)",
  "metrics:read": "GET /metrics (Prometheus), /dashboards and /alerts",
  "cluster:read": "GET /actors and its event stream, /cluster and /charts",
  "replication:read": "GET /replication",
  "backups:read": "GET /backups and /backups/{id}",
  "state:read": "GET /state, its event stream, entities and open conflicts",
  "state:write": "PATCH /state/{type}/{id} and resolving conflicts",
} as const;

/** A machine token's scope. */
export type Scope = keyof typeof SCOPES;

/** Every scope name, sorted. */
export const SCOPE_NAMES: readonly Scope[] = (Object.keys(SCOPES) as Scope[]).sort();

/** True when `name` is a known scope. */
export function isScope(name: string): name is Scope {
  return Object.hasOwn(SCOPES, name);
}
