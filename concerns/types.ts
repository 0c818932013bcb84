/**
 * What a concern is to the runtime: its parts (actors/runtime/types.ts `ConcernParts`: actors,
 * service, health, stop) plus its HTTP routes. Only concerns/ builds them, because only
 * concerns/ may join actors/ (effects) and api/ (routes).
 * @module
 */
import type { OpenAPIHono } from "@hono/zod-openapi";
import type { ConcernParts, RuntimeServices } from "../actors/runtime/types.ts";
import type { PeerSigner } from "../api/authz/mod.ts";
import type { Config } from "./config.ts";

/** What a concern's routes get besides the app. */
export interface RouteContext {
  /** Aborted on shutdown: open event streams end so the HTTP server can stop. */
  signal: AbortSignal;
  /** Signs requests to other instances (the console's reads), or null. */
  peer: PeerSigner | null;
}

/** A concern plugged into the runtime: its parts (a service is optional here) and its routes. */
export interface Concern<Api = unknown> extends Omit<ConcernParts<Api>, "api"> {
  /** The concern's typed service, if it offers one. */
  api?: Api;
  /**
   * Adds the concern's HTTP routes (the one way routes are registered), each declared
   * (api/authz/declare.ts) and listed in concerns/routes.ts.
   */
  routes?(app: OpenAPIHono, context: RouteContext): void;
}

/**
 * Builds a concern from the runtime's services and the configuration (tests and embedders
 * pass their own to `startRuntime`; the default set is concerns/mod.ts).
 */
export type ConcernFactory = (services: RuntimeServices, config: Config) =>
  | Concern
  | Promise<Concern>;
