/**
 * Routes of the failover concern: `GET /replication` (every node's role, state, LSNs, lag and health,
 * the published primary and its epoch, the coordinator, alerts and the failover history),
 * `POST /failover/switchover` (planned, zero-loss switch to a replica) and
 * `POST /replication/canary` (writes one row through this instance's pool and says which
 * node took it). The two POSTs need `Authorization: Bearer <RS_ADMIN_TOKEN>`; without
 * RS_ADMIN_TOKEN they answer 403.
 * @module
 */
import type { Hono } from "hono";
import { z } from "zod";
import type { SwitchoverResult } from "../actors/failover/mod.ts";
import { RuntimeError } from "../lib/errors.ts";

/** What the routes need from the failover concern. */
export interface FailoverRouteDeps {
  /** Why replication is unavailable here (embedded mode), or null when it is available. */
  unavailable: string | null;
  /** The replication status as JSON. */
  status(): Promise<Record<string, unknown>>;
  /** Runs a switchover (to `target`, or the best replica) and waits for the decision. */
  switchover?(options: { target: string | null; requestedBy: string }): Promise<SwitchoverResult>;
  /** Writes a canary row through this instance's pool. */
  canary(): Promise<Record<string, unknown>>;
  /** RS_ADMIN_TOKEN, or null (admin routes answer 403). */
  adminToken: string | null;
}

const switchoverBody = z.object({
  target: z.string().regex(/^[A-Za-z0-9_.-]{1,63}$/, "a node name").nullable().optional(),
}).strict();

async function digest(text: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)));
}

/**
 * Checks `Authorization: Bearer <token>` against the admin token in constant time (both
 * sides are hashed first, so neither the length nor a prefix leaks through timing).
 */
export async function checkAdminToken(header: string | undefined, token: string | null) {
  if (!token) {
    throw new RuntimeError(
      "FORBIDDEN",
      "Admin endpoints are disabled: set RS_ADMIN_TOKEN to enable them",
    );
  }
  const given = /^Bearer\s+(\S+)\s*$/i.exec(header ?? "")?.[1] ?? "";
  const [a, b] = await Promise.all([digest(given), digest(token)]);
  let diff = given ? 0 : 1;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  if (diff !== 0) {
    throw new RuntimeError("UNAUTHORIZED", "A valid admin bearer token is required");
  }
}

/** Adds `GET /replication`, `POST /failover/switchover` and `POST /replication/canary`. */
export function addFailoverRoutes(app: Hono, deps: FailoverRouteDeps): void {
  function available(): void {
    if (deps.unavailable) throw new RuntimeError("REPLICATION_UNAVAILABLE", deps.unavailable);
  }

  app.get("/replication", async (c) => {
    available();
    c.header("cache-control", "no-store");
    return c.json(await deps.status());
  });

  app.post("/failover/switchover", async (c) => {
    await checkAdminToken(c.req.header("authorization"), deps.adminToken);
    available();
    if (!deps.switchover) {
      throw new RuntimeError(
        "REPLICATION_UNAVAILABLE",
        "Switchover needs DATABASE_NODES (every PostgreSQL node of the cluster)",
      );
    }
    let raw: unknown = {};
    const text = await c.req.text();
    if (text.trim()) {
      try {
        raw = JSON.parse(text);
      } catch {
        throw new RuntimeError("VALIDATION_FAILED", 'The body must be JSON: {"target": "pg2"}');
      }
    }
    const body = switchoverBody.safeParse(raw);
    if (!body.success) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Invalid switchover request: ${body.error.issues[0]?.message ?? "bad body"}`,
      );
    }
    const started = performance.now();
    const result = await deps.switchover({
      target: body.data.target ?? null,
      requestedBy: `api (${c.req.header("x-forwarded-for") ?? "direct"})`,
    });
    if (!result.ok) throw new RuntimeError("FAILOVER_REFUSED", result.why);
    return c.json({ ...result, ms: Math.round(performance.now() - started) });
  });

  app.post("/replication/canary", async (c) => {
    await checkAdminToken(c.req.header("authorization"), deps.adminToken);
    available();
    return c.json(await deps.canary());
  });
}
