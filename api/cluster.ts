/**
 * Inspection routes: `GET /actors` (this instance's actors, JSON), `GET /actors/stream`
 * (server-sent events of every change, for the review console), `GET /cluster` (live
 * instances with their roles and actors' states).
 * @module
 */
import type { Hono } from "hono";
import { streamSSE } from "hono/streaming";
import type { ActorView, Inspector, TransitionRecord } from "../actors/runtime/inspector.ts";
import type { LiveMember } from "../actors/runtime/membership.ts";

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

  app.get("/actors/stream", (c) => {
    return streamSSE(c, async (stream) => {
      // A bounded queue per client: a slow reader loses events (and is told how many),
      // it never makes the inspector or the actors wait.
      const queue: { view: ActorView; transition: TransitionRecord | null }[] = [];
      let missed = 0;
      let wake: (() => void) | null = null;
      const off = deps.inspector.subscribe((view, transition) => {
        if (queue.length >= bufferSize) {
          missed += queue.length;
          queue.length = 0;
        }
        queue.push({ view, transition });
        wake?.();
      });
      let closed = false;
      const close = () => {
        closed = true;
        off();
        wake?.();
      };
      stream.onAbort(close);
      deps.signal?.addEventListener("abort", close, { once: true });
      if (deps.signal?.aborted) close();
      try {
        await stream.writeSSE({
          event: "hello",
          data: JSON.stringify({
            instance: deps.instanceId,
            actors: deps.inspector.list(),
            transitions: deps.inspector.transitions().slice(-100),
          }),
        });
        while (!closed) {
          if (!queue.length) {
            const tick = new Promise<void>((r) => wake = r);
            const keepAlive = setTimeout(() => wake?.(), 15_000);
            await tick;
            clearTimeout(keepAlive);
            wake = null;
            if (!queue.length && !closed) await stream.writeSSE({ event: "ping", data: "{}" });
            continue;
          }
          if (missed) {
            await stream.writeSSE({
              event: "missed",
              data: JSON.stringify({ missed, actors: deps.inspector.list() }),
            });
            missed = 0;
          }
          const item = queue.shift()!;
          await stream.writeSSE({
            event: "snapshot",
            id: item.transition ? String(item.transition.seq) : undefined,
            data: JSON.stringify(item),
          });
        }
      } finally {
        off();
        deps.signal?.removeEventListener("abort", close);
      }
    });
  });

  app.get("/cluster", async (c) => {
    const members = deps.members ? await deps.members() : [deps.self()];
    return c.json({
      instance: deps.instanceId,
      mode: deps.members ? "redis" : "single-instance",
      members,
    });
  });
}
