/**
 * Inspection routes: `GET /actors` (this instance's actors, JSON), `GET /actors/stream`
 * (server-sent events of every change, for the review console), `GET /cluster` (live
 * instances with their roles and actors' states).
 * @module
 */
import type { Hono } from "hono";
import { streamSSE } from "hono/streaming";
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

/** Adds the inspection routes. */
export function addClusterRoutes(app: Hono, deps: ClusterRouteDeps): void {
  const bufferSize = deps.sseBuffer ?? 256;

  app.get("/actors", (c) =>
    c.json({
      instance: deps.instanceId,
      supervisor: deps.supervisor(),
      transport: deps.transportStats?.() ?? null,
      actors: deps.inspector.list(),
      transitions: deps.inspector.transitions().slice(-100),
    }));

  app.get(
    "/actors/stream",
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

  app.get("/cluster", async (c) => {
    const members = deps.members ? await deps.members() : [deps.self()];
    return c.json({
      instance: deps.instanceId,
      mode: deps.members ? "redis" : "single-instance",
      members,
    });
  });
}
