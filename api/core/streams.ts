/**
 * Public, read-only stream directory routes: the live list and one stream's public view.
 * Open to anyone: they show only what a stream's owner made public.
 * @module
 */
import { type OpenAPIHono, z } from "@hono/zod-openapi";
import { RuntimeError } from "../../lib/errors.ts";
import type { Stream } from "../../store/streams.ts";
import { declareRoute, jsonResponse, serve } from "../authz/mod.ts";

/** What the stream directory reads (store/streams.ts over the runtime's pool). */
export interface StreamRouteDeps {
  /** Live public streams, most viewers first. */
  listLive(options: { limit: number }): Promise<Stream[]>;
  /** One stream by id, or null. */
  get(id: number): Promise<Stream | null>;
}

const PublicStream = z.object({
  id: z.number(),
  userId: z.number(),
  name: z.string(),
  description: z.string().nullable(),
  isLive: z.boolean(),
  viewerCount: z.number(),
  bitrateKbps: z.number().nullable(),
  fps: z.number().nullable(),
  resolution: z.string().nullable(),
  codec: z.string().nullable(),
  startedAt: z.string().nullable(),
  endedAt: z.string().nullable(),
}).openapi("PublicStream");

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

/** The stream directory's declarations. */
export const STREAM_ROUTES = {
  list: declareRoute({
    method: "get",
    path: "/streams",
    tags: ["streams"],
    summary: "Live public streams, most viewers first",
    access: { caller: "anonymous" },
    invalid: "Invalid query: limit must be 1-100",
    request: {
      query: z.object({
        limit: z.string().regex(/^\d{1,3}$/).transform(Number).refine((n) => n >= 1 && n <= 100)
          .optional().openapi({ type: "string", description: "1-100 (default 50)" }),
      }),
    },
    responses: {
      200: jsonResponse(z.object({ streams: z.array(PublicStream) }), "The live streams"),
    },
  }),
  get: declareRoute({
    method: "get",
    path: "/streams/{id}",
    tags: ["streams"],
    summary: "One public stream",
    access: { caller: "anonymous" },
    invalid: "Invalid stream id: expected a positive integer",
    request: { params: z.object({ id: z.string().regex(/^[1-9]\d{0,17}$/) }) },
    responses: {
      200: jsonResponse(z.object({ stream: PublicStream }), "The stream"),
    },
  }),
};

/** Adds `GET /streams` (live, public, most viewers first) and `GET /streams/:id`. */
export function addStreamRoutes(app: OpenAPIHono, deps: StreamRouteDeps): void {
  serve(app, STREAM_ROUTES.list, async (c) => {
    const q = c.req.valid("query");
    const streams = await deps.listLive({ limit: q.limit ?? 50 });
    return c.json({ streams: streams.map(publicView) });
  });
  serve(app, STREAM_ROUTES.get, async (c) => {
    const { id } = c.req.valid("param");
    const stream = await deps.get(Number(id));
    if (!stream || !stream.isPublic) {
      throw new RuntimeError("STREAM_NOT_FOUND", `Stream ${id} does not exist`);
    }
    return c.json({ stream: publicView(stream) });
  });
}
