/**
 * `GET /history`: the cluster's recorded transitions, messages and keyframes between two Redis
 * server times (store/redis_history.ts), oldest first (or newest first), for the console's
 * time control and for postmortems; `?keyframes=1`: each instance's newest keyframe at or
 * before `to` instead. Operators only; 503 without Redis (nothing is recorded then).
 * @module
 */
import { type OpenAPIHono, z } from "@hono/zod-openapi";
import { declareRoute, jsonResponse, serve } from "../authz/mod.ts";
import type { HistoryEntry, ReadHistoryOptions } from "../../store/redis_history.ts";

/** What the history route needs. */
export interface HistoryDeps {
  /** Reads the recorded history, or null when nothing is recorded (no Redis). */
  read: ((options: ReadHistoryOptions) => Promise<HistoryEntry[]>) | null;
  /** Each instance's newest keyframe at or before `to`, or null without Redis. */
  keyframes: ((options: { to?: number }) => Promise<HistoryEntry[]>) | null;
}

/** Records one request returns at most. */
export const HISTORY_LIMIT = 5000;

/** The history route's declaration. */
export const HISTORY_ROUTES = {
  history: declareRoute({
    method: "get",
    path: "/history",
    tags: ["cluster"],
    summary: "Recorded transitions, messages and keyframes of every instance, by Redis server time",
    access: { caller: "operator", scope: "cluster:read" },
    request: {
      query: z.object({
        from: z.coerce.number().int().min(0).optional(),
        to: z.coerce.number().int().min(0).optional(),
        limit: z.coerce.number().int().min(1).max(HISTORY_LIMIT).optional(),
        order: z.enum(["asc", "desc"]).optional(),
        /** 1: each instance's newest keyframe at or before `to` (from, limit, order unused). */
        keyframes: z.enum(["0", "1"]).optional(),
      }),
    },
    responses: {
      200: jsonResponse(
        z.object({ entries: z.array(z.looseObject({ entryId: z.string(), k: z.string() })) }),
        "Records (`entryId` `<server ms>-<n>.<i>`), oldest first unless order=desc",
      ),
      503: jsonResponse(z.looseObject({}), "No Redis: nothing is recorded"),
    },
  }),
};

/** Adds `GET /history`. */
export function addHistoryRoutes(app: OpenAPIHono, deps: HistoryDeps): void {
  serve(app, HISTORY_ROUTES.history, async (c) => {
    if (!deps.read || !deps.keyframes) {
      return c.json({
        error: {
          code: "UNAVAILABLE",
          message: "history is recorded in Redis; this instance runs without it",
        },
      }, 503);
    }
    const q = c.req.valid("query");
    if (q.keyframes === "1") return c.json({ entries: await deps.keyframes({ to: q.to }) }, 200);
    const entries = await deps.read({
      from: q.from,
      to: q.to,
      limit: q.limit ?? 1000,
      newestFirst: q.order === "desc",
    });
    return c.json({ entries }, 200);
  });
}
