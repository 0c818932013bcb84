/**
 * `GET /history`: the cluster's recorded transitions and messages between two Redis server
 * times (store/redis_history.ts), oldest first, for the console's time control and for
 * postmortems. Operators only; 503 without Redis (nothing is recorded then).
 * @module
 */
import { type OpenAPIHono, z } from "@hono/zod-openapi";
import { declareRoute, jsonResponse, serve } from "../authz/mod.ts";
import type { HistoryEntry, ReadHistoryOptions } from "../../store/redis_history.ts";

/** What the history route needs. */
export interface HistoryDeps {
  /** Reads the recorded history, or null when nothing is recorded (no Redis). */
  read: ((options: ReadHistoryOptions) => Promise<HistoryEntry[]>) | null;
}

/** Entries one request returns at most. */
export const HISTORY_LIMIT = 5000;

/** The history route's declaration. */
export const HISTORY_ROUTES = {
  history: declareRoute({
    method: "get",
    path: "/history",
    tags: ["cluster"],
    summary: "Recorded transitions and messages of every instance, by Redis server time",
    access: { caller: "operator", scope: "cluster:read" },
    request: {
      query: z.object({
        from: z.coerce.number().int().min(0).optional(),
        to: z.coerce.number().int().min(0).optional(),
        limit: z.coerce.number().int().min(1).max(HISTORY_LIMIT).optional(),
        order: z.enum(["asc", "desc"]).optional(),
      }),
    },
    responses: {
      200: jsonResponse(
        z.object({ entries: z.array(z.looseObject({ entryId: z.string(), k: z.string() })) }),
        "Entries, oldest first",
      ),
      503: jsonResponse(z.looseObject({}), "No Redis: nothing is recorded"),
    },
  }),
};

/** Adds `GET /history`. */
export function addHistoryRoutes(app: OpenAPIHono, deps: HistoryDeps): void {
  serve(app, HISTORY_ROUTES.history, async (c) => {
    if (!deps.read) {
      return c.json({
        error: {
          code: "UNAVAILABLE",
          message: "history is recorded in Redis; this instance runs without it",
        },
      }, 503);
    }
    const q = c.req.valid("query");
    const entries = await deps.read({
      from: q.from,
      to: q.to,
      limit: q.limit ?? 1000,
      newestFirst: q.order === "desc",
    });
    return c.json({ entries }, 200);
  });
}
