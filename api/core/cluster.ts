/**
 * Inspection routes: `GET /actors` (this instance's actors, JSON), `GET /actors/stream`
 * (server-sent events of every change, for the review console), `GET /cluster` (live
 * instances with their roles and actors' states). Operators only (or `cluster:read`):
 * they show internal addresses and the runtime's state.
 * @module
 */
import { type OpenAPIHono, z } from "@hono/zod-openapi";
import { streamSSE } from "hono/streaming";
import { declareRoute, jsonResponse, serve } from "../authz/mod.ts";
import { pumpEvents } from "../sse.ts";
import type { ActorView, Inspector, TransitionRecord } from "../../actors/runtime/inspector.ts";
import type { LiveMember } from "../../actors/runtime/membership.ts";

/** What the inspection routes read. */
export interface ClusterRouteDeps {
  /** This instance's id. */
  instanceId: string;
  /** Live actor views. */
  inspector: Inspector;
  /** Supervisor state and children statuses. */
  supervisor: () => { state: string; reason: string; children: Record<string, unknown> };
  /** Live members, or null when running without Redis (single instance). */
  members: (() => Promise<LiveMember[]>) | null;
  /** This instance's own member info, for single-instance mode. */
  self: () => LiveMember;
  /** Transport counters (sent, delivered, dropped by reason, …). */
  transportStats?: () => Record<string, number>;
  /** Events buffered per SSE client before it is told it missed some. */
  sseBuffer?: number;
  /** Aborted on shutdown: open event streams end so the server can stop. */
  signal?: AbortSignal;
}

const ActorView = z.looseObject({
  id: z.string(),
  path: z.string(),
  machine: z.string().nullable(),
  status: z.string(),
  state: z.unknown(),
  summary: z.record(z.string(), z.unknown()).optional(),
  updatedAt: z.number(),
}).openapi("ActorView");

const Member = z.looseObject({
  id: z.string(),
  url: z.string(),
  roles: z.array(z.object({ role: z.string(), token: z.number() })),
  heartbeatAgeMs: z.number().nullable(),
}).openapi("Member");

/** The inspection routes' declarations. */
export const CLUSTER_ROUTES = {
  actors: declareRoute({
    method: "get",
    path: "/actors",
    tags: ["cluster"],
    summary: "This instance's actors, supervisor, transport counters and recent transitions",
    access: { caller: "operator", scope: "cluster:read" },
    responses: {
      200: jsonResponse(
        z.looseObject({
          instance: z.string(),
          supervisor: z.looseObject({ state: z.string(), reason: z.string() }),
          transport: z.record(z.string(), z.number()).nullable(),
          actors: z.array(ActorView),
          transitions: z.array(z.looseObject({ seq: z.number(), path: z.string() })),
        }),
        "The actors",
      ),
    },
  }),
  actorStream: declareRoute({
    method: "get",
    path: "/actors/stream",
    tags: ["cluster"],
    summary: "Server-sent events: hello (every actor), then a snapshot per change",
    access: { caller: "operator", scope: "cluster:read" },
    kind: "events",
    responses: {
      200: {
        description: "An event stream",
        content: { "text/event-stream": { schema: z.string() } },
      },
    },
  }),
  cluster: declareRoute({
    method: "get",
    path: "/cluster",
    tags: ["cluster"],
    summary: "Live instances with their URLs, roles and heartbeat age",
    access: { caller: "operator", scope: "cluster:read" },
    responses: {
      200: jsonResponse(
        z.object({ instance: z.string(), mode: z.string(), members: z.array(Member) }),
        "The members",
      ),
    },
  }),
};

/** Adds the inspection routes. */
export function addClusterRoutes(app: OpenAPIHono, deps: ClusterRouteDeps): void {
  const bufferSize = deps.sseBuffer ?? 256;

  serve(app, CLUSTER_ROUTES.actors, (c) =>
    c.json({
      instance: deps.instanceId,
      supervisor: deps.supervisor(),
      transport: deps.transportStats?.() ?? null,
      actors: deps.inspector.list(),
      transitions: deps.inspector.transitions().slice(-100),
    }));

  serve(
    app,
    CLUSTER_ROUTES.actorStream,
    (c) =>
      streamSSE(
        c,
        (stream) =>
          pumpEvents<{ view: ActorView; transition: TransitionRecord | null }>(stream, {
            subscribe: (push) =>
              deps.inspector.subscribe((view, transition) => push({ view, transition })),
            hello: () => ({
              event: "hello",
              data: JSON.stringify({
                instance: deps.instanceId,
                actors: deps.inspector.list(),
                transitions: deps.inspector.transitions().slice(-100),
              }),
            }),
            // A fresh full view lets the client re-sync after the gap.
            missed: (missed) => JSON.stringify({ missed, actors: deps.inspector.list() }),
            render: (item) => ({
              event: "snapshot",
              id: item.transition ? String(item.transition.seq) : undefined,
              data: JSON.stringify(item),
            }),
            bufferSize,
            signal: deps.signal,
          }),
      ),
  );

  serve(app, CLUSTER_ROUTES.cluster, async (c) => {
    const members = deps.members ? await deps.members() : [deps.self()];
    return c.json({
      instance: deps.instanceId,
      mode: deps.members ? "redis" : "single-instance",
      members,
    });
  });
}
