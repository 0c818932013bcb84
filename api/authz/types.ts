/**
 * The words of a route's access rule (api/authz/declare.ts declares routes with them, the
 * guard enforces them).
 * @module
 */
import type { Scope } from "../../lib/access.ts";

/**
 * Who may call a route, least privileged first:
 *
 * - `anonymous`: anyone (public data, login, probes);
 * - `user`: a signed-in person, any role (their own account and sessions);
 * - `operator`: an operator or admin session, the admin token, a peer instance of the
 *   console (GET only), or a machine token with the route's `scope`;
 * - `admin`: an admin session that re-authenticated within RS_REAUTH_WINDOW_S, or the
 *   admin token;
 * - `machine`: a machine token with the route's `scope` (programs, not people).
 */
export type Caller = "anonymous" | "user" | "operator" | "admin" | "machine";

/** Every caller kind, least privileged first. */
export const CALLERS: readonly Caller[] = ["anonymous", "user", "operator", "admin", "machine"];

/** A route's access rule. */
export interface Access {
  /** The least privileged caller allowed. */
  caller: Caller;
  /** `operator`: a machine token with this scope may call too; `machine`: required. */
  scope?: Scope;
  /** A session must have re-authenticated within RS_REAUTH_WINDOW_S (POST /auth/reauth). */
  stepUp?: boolean;
  /** An `anonymous` route that shows more to an operator (or a token with this scope). */
  details?: { scope: Scope };
}

/** What a route answers with, for the guard: JSON errors, or a login redirect (pages). */
export type RouteKind = "json" | "page" | "events" | "text" | "asset";
