/**
 * Routes of the failover concern: `GET /replication` (every node's role, state, LSNs, lag and health,
 * the published primary and its epoch, the coordinator, alerts and the failover history),
 * `POST /failover/switchover` (planned, zero-loss switch to a replica) and
 * `POST /replication/canary` (writes one row through this instance's pool and says which
 * node took it). `/replication` is for operators (or `replication:read`); the two POSTs are
 * admin actions: an admin session that re-authenticated recently, or the admin token.
 * @module
 */
import { type OpenAPIHono, z } from "@hono/zod-openapi";
import type { SwitchoverResult } from "../actors/failover/mod.ts";
import { RuntimeError } from "../lib/errors.ts";
import { describePrincipal } from "./authz/authorizer.ts";
import { declareRoute, jsonBody, jsonResponse, serve } from "./authz/mod.ts";

/** What the routes need from the failover concern. */
export interface FailoverRouteDeps {
  /** Why replication is unavailable here (embedded mode), or null when it is available. */
  unavailable: string | null;
  /** The replication status as JSON. */
  status(): Promise<Record<string, unknown>>;
  /** Runs a switchover (to `target`, or the best replica) and waits for the decision. */
  switchover?(options: { target: string | null; requestedBy: string }): Promise<SwitchoverResult>;
  /** Writes a canary row (with an optional note) through this instance's pool. */
  canary(options?: { note: string | null }): Promise<Record<string, unknown>>;
}

const canaryBody = z.object({
  note: z.string().max(200, "at most 200 characters").nullable().optional(),
}).strict();

const switchoverBody = z.object({
  target: z.string().regex(/^[A-Za-z0-9_.-]{1,63}$/, "a node name").nullable().optional(),
}).strict();

const unavailable = jsonResponse(
  z.looseObject({}),
  "Replication is not available here (REPLICATION_UNAVAILABLE)",
);

/** The failover routes' declarations. */
export const FAILOVER_ROUTES = {
  replication: declareRoute({
    method: "get",
    path: "/replication",
    tags: ["failover"],
    summary: "Every node's role, state, LSNs, lag, the primary, coordinator and history",
    access: { caller: "operator", scope: "replication:read" },
    responses: {
      200: jsonResponse(z.looseObject({}), "The replication status"),
      503: unavailable,
    },
  }),
  switchover: declareRoute({
    method: "post",
    path: "/failover/switchover",
    tags: ["failover"],
    summary: "Planned, zero-loss switch of the primary to a replica",
    access: { caller: "admin" },
    maxBody: 4 * 1024,
    request: {
      body: jsonBody(switchoverBody, {
        required: false,
        description: "The target node, or none for the best replica",
      }),
    },
    responses: {
      200: jsonResponse(z.looseObject({ ok: z.boolean() }), "The switchover happened"),
      409: jsonResponse(z.looseObject({}), "Refused (FAILOVER_REFUSED, FAILOVER_IN_PROGRESS)"),
      503: unavailable,
    },
  }),
  canary: declareRoute({
    method: "post",
    path: "/replication/canary",
    tags: ["failover"],
    summary: "Writes a canary row through this instance's pool and says which node took it",
    access: { caller: "admin" },
    maxBody: 4 * 1024,
    request: {
      body: jsonBody(canaryBody, {
        required: false,
        description: "A note stored with the row (to find it on a node later), or none",
      }),
    },
    responses: {
      200: jsonResponse(z.looseObject({}), "Where the row was written"),
      503: unavailable,
    },
  }),
};

/** Adds `GET /replication`, `POST /failover/switchover` and `POST /replication/canary`. */
export function addFailoverRoutes(app: OpenAPIHono, deps: FailoverRouteDeps): void {
  function available(): void {
    if (deps.unavailable) throw new RuntimeError("REPLICATION_UNAVAILABLE", deps.unavailable);
  }

  serve(app, FAILOVER_ROUTES.replication, async (c) => {
    available();
    c.header("cache-control", "no-store");
    return c.json(await deps.status());
  });

  serve(app, FAILOVER_ROUTES.switchover, async (c) => {
    available();
    if (!deps.switchover) {
      throw new RuntimeError(
        "REPLICATION_UNAVAILABLE",
        "Switchover needs DATABASE_NODES (every PostgreSQL node of the cluster)",
      );
    }
    const body = c.req.valid("json");
    const started = performance.now();
    const result = await deps.switchover({
      target: body.target ?? null,
      requestedBy: `api (${describePrincipal(c.get("principal"))})`,
    });
    if (!result.ok) throw new RuntimeError("FAILOVER_REFUSED", result.why);
    return c.json({ ...result, ms: Math.round(performance.now() - started) });
  });

  serve(app, FAILOVER_ROUTES.canary, async (c) => {
    available();
    const body = c.req.valid("json");
    return c.json(await deps.canary({ note: body.note ?? null }));
  });
}
