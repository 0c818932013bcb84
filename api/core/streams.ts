/**
 * Public, read-only stream directory routes: the live list and one stream's public view.
 * Owner actions (create, start, stop, key reset) need authentication and arrive with
 * the sessions work.
 * @module
 */
import type { Hono } from "hono";
import { z } from "zod";
import { RuntimeError } from "../../lib/errors.ts";
import type { Stream } from "../../store/streams.ts";

/** What the stream directory reads (store/streams.ts over the runtime's pool). */
export interface StreamRouteDeps {
  /** Live public streams, most viewers first. */
  listLive(options: { limit: number }): Promise<Stream[]>;
  /** One stream by id, or null. */
  get(id: number): Promise<Stream | null>;
}

/** The fields anyone may see; the key prefix and owner-only data stay private. */
function publicView(s: Stream) {
  return {
    id: s.id,
    userId: s.userId,
    name: s.name,
    description: s.description,
    isLive: s.isLive,
    viewerCount: s.viewerCount,
    bitrateKbps: s.bitrateKbps,
    fps: s.fps,
    resolution: s.resolution,
    codec: s.codec,
    startedAt: s.startedAt,
    endedAt: s.endedAt,
  };
}

const idParam = z.string().regex(/^[1-9]\d{0,17}$/);
const listQuery = z.object({
  limit: z.string().regex(/^\d{1,3}$/).transform(Number).refine((n) => n >= 1 && n <= 100)
    .optional(),
});

/** Adds `GET /streams` (live, public, most viewers first) and `GET /streams/:id`. */
export function addStreamRoutes(app: Hono, deps: StreamRouteDeps): void {
  app.get("/streams", async (c) => {
    const q = listQuery.safeParse(c.req.query());
    if (!q.success) {
      throw new RuntimeError("VALIDATION_FAILED", "Invalid query: limit must be 1-100");
    }
    const streams = await deps.listLive({ limit: q.data.limit ?? 50 });
    return c.json({ streams: streams.map(publicView) });
  });
  app.get("/streams/:id", async (c) => {
    const id = idParam.safeParse(c.req.param("id"));
    if (!id.success) {
      throw new RuntimeError("VALIDATION_FAILED", "Invalid stream id: expected a positive integer");
    }
    const stream = await deps.get(Number(id.data));
    if (!stream || !stream.isPublic) {
      throw new RuntimeError("STREAM_NOT_FOUND", `Stream ${id.data} does not exist`);
    }
    return c.json({ stream: publicView(stream) });
  });
}
