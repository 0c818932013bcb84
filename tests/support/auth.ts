/**
 * Credentials for tests: the admin token the test instances are configured with, headers
 * that carry it, and an app (api/app.ts) with an authorizer that knows only the static
 * tokens (routes tested without the sessions concern).
 * @module
 */
import type { OpenAPIHono } from "@hono/zod-openapi";
import { createApp } from "../../api/app.ts";
import {
  type AccessSettings,
  type AuthBackend,
  type Authorizer,
  createAuthorizer,
} from "../../api/authz/mod.ts";

/** RS_ADMIN_TOKEN of test instances (32+ characters). */
export const TEST_ADMIN_TOKEN = "test-admin-token-0123456789-abcdefghij";

/** RS_STATE_WRITE_TOKEN of test instances. */
export const TEST_STATE_WRITE_TOKEN = "test-state-write-token-0123456789";

/** `Authorization` with the admin token (operator views and admin actions). */
export const ADMIN_HEADERS: Readonly<Record<string, string>> = {
  authorization: `Bearer ${TEST_ADMIN_TOKEN}`,
};

/** `Authorization` with the state-write token (PATCH /state, conflicts). */
export const WRITER_HEADERS: Readonly<Record<string, string>> = {
  authorization: `Bearer ${TEST_STATE_WRITE_TOKEN}`,
};

/** Access settings of tests: both static tokens, local-development cookie. */
export function testAccessSettings(overrides: Partial<AccessSettings> = {}): AccessSettings {
  return {
    adminToken: TEST_ADMIN_TOKEN,
    stateWriteToken: TEST_STATE_WRITE_TOKEN,
    allowedOrigins: [],
    reauthWindowMs: 300_000,
    secureCookie: false,
    ...overrides,
  };
}

/** Options of {@linkcode testAuthorizer} and {@linkcode testApp}. */
export interface TestAuthOptions {
  /** Sessions and machine tokens (default: none, static tokens only). */
  backend?: AuthBackend | null;
  /** Overrides of {@linkcode testAccessSettings}. */
  settings?: Partial<AccessSettings>;
  /** Trusted proxy hops (api/client.ts). */
  trustedProxyHops?: number;
  /** Clock (ms). */
  now?: () => number;
}

/** An authorizer with the test tokens (and sessions through `backend`, when given). */
export function testAuthorizer(options: TestAuthOptions = {}): Authorizer {
  return createAuthorizer({
    backend: options.backend ?? null,
    settings: testAccessSettings(options.settings),
    trustedProxyHops: options.trustedProxyHops,
    now: options.now,
  });
}

/** An app with the test authorizer, for routes tested on their own. */
export function testApp(options: TestAuthOptions = {}): OpenAPIHono {
  return createApp({ authorizer: testAuthorizer(options) });
}
