/**
 * Routes of the sync concern, the state of the sync node (docs/sync.md):
 *
 * - `GET /state` — this instance's sync facts and a digest of all entity values (equal
 *   digests on two instances mean equal state).
 * - `GET /state/stream?pattern=stream.*` — server-sent events of published events and
 *   entity changes whose channel matches the pattern. Each client has a bounded buffer:
 *   a client that cannot keep up loses the oldest events and receives a `missed` event
 *   saying how many, so it refetches; it never slows the node down. At most `maxStreams`
 *   streams at once (RATE_LIMITED beyond).
 * - `GET /state/:type/:id` — an entity's current state on this instance
 *   (`?source=db`: rebuilt from PostgreSQL, latest snapshot plus later deltas).
 * - `PATCH /state/:type/:id` — applies a delta (validated) here at once; replication is
 *   asynchronous (`?wait=persisted`: answer once it is stored in PostgreSQL). Programs only:
 *   a machine token with `state:write` (or RS_STATE_WRITE_TOKEN).
 * - `GET /state/conflicts`, `POST /state/conflicts/:id/resolve` — unmergeable conflicts
 *   and their manual resolution, by an operator (or a token with `state:write`).
 *
 * Every read is for operators (or a machine token with `state:read`): entity state is not
 * public data.
 * @module
 */
import { type OpenAPIHono, z } from "@hono/zod-openapi";
import { streamSSE } from "hono/streaming";
import { declareRoute, jsonBody, jsonResponse, serve } from "./authz/mod.ts";
import { pumpEvents } from "./sse.ts";
import type { Json } from "../lib/crdt.ts";
import { parseChannelPattern } from "../lib/channel_pattern.ts";
import { ENTITY_ID_RE, ENTITY_TYPE_RE, FIELD_RE } from "../lib/crdt_batch.ts";
import { RuntimeError } from "../lib/errors.ts";
import { type Logger, silentLogger } from "../lib/log.ts";
import type { DeliveryInfo, SyncNode } from "../actors/sync/node.ts";
import type { ConflictStore } from "../store/sync.ts";

/** What the sync routes need. */
export interface SyncRouteDeps {
  /** The sync node. */
  node: SyncNode;
  /** The conflict table (store/sync.ts `conflictStore`). */
  conflicts: ConflictStore;
  /** Events buffered per event-stream client before it is told it missed some (default 256). */
  sseBuffer?: number;
  /** Event streams served at once; more are refused with RATE_LIMITED (default 1000). */
  maxStreams?: number;
  /** Aborted on shutdown: open event streams end so the server can stop. */
  signal?: AbortSignal;
  /** Clock for resolutions. */
  now?: () => number;
  /** Logger. */
  log?: Logger;
}

const typeParam = z.string().max(32).regex(ENTITY_TYPE_RE, "1-32 lower-case letters, digits or _");
const idParam = z.string().max(128).regex(ENTITY_ID_RE, "1-128 letters, digits or _ . : @ -");
const deltaBody = z.record(z.string().regex(FIELD_RE), z.unknown() as z.ZodType<Json>)
  .refine((d) => Object.keys(d).length >= 1 && Object.keys(d).length <= 64, {
    message: "must name 1 to 64 fields",
  }).openapi({ description: 'Field → new value (or an operation like {"inc": 1})' });
const resolveBody = z.object({ value: z.unknown() as z.ZodType<Json> }).refine(
  (b) => b.value !== undefined,
  { message: "value is required" },
);
/** Largest write body read: a delta is at most 64 fields and 8 KB of JSON anyway. */
const MAX_BODY = 64 * 1024;
const conflictQuery = z.object({
  status: z.enum(["open", "resolved", "all"]).optional(),
  limit: z.string().regex(/^\d{1,4}$/).transform(Number).optional()
    .openapi({ type: "string", description: "1-1000" }),
});
const entityParams = z.object({ type: typeParam, id: idParam });

const read = { caller: "operator", scope: "state:read" } as const;
const Entity = z.looseObject({}).openapi("Entity");
const Conflict = z.looseObject({ id: z.number() }).openapi("Conflict");

/** The sync routes' declarations. */
export const SYNC_ROUTES = {
  state: declareRoute({
    method: "get",
    path: "/state",
    tags: ["sync"],
    summary: "This instance's sync facts and a digest of every entity value",
    access: read,
    responses: {
      200: jsonResponse(
        z.object({ instance: z.string(), sync: z.looseObject({}), digest: z.string() }),
        "The facts",
      ),
    },
  }),
  stream: declareRoute({
    method: "get",
    path: "/state/stream",
    tags: ["sync"],
    summary: "Server-sent events of published events and entity changes matching `pattern`",
    access: read,
    kind: "events",
    request: {
      query: z.object({
        pattern: z.string().max(256).optional().openapi({ example: "stream.*" }),
      }),
    },
    responses: {
      200: {
        description: "An event stream",
        content: { "text/event-stream": { schema: z.string() } },
      },
      429: jsonResponse(z.looseObject({}), "Too many event streams (RATE_LIMITED)"),
    },
  }),
  conflicts: declareRoute({
    method: "get",
    path: "/state/conflicts",
    tags: ["sync"],
    summary: "Unmergeable conflicts",
    access: read,
    invalid: "Invalid query: status is open, resolved or all; limit is 1-1000",
    request: { query: conflictQuery },
    responses: {
      200: jsonResponse(z.object({ conflicts: z.array(Conflict) }), "The conflicts"),
    },
  }),
  resolve: declareRoute({
    method: "post",
    path: "/state/conflicts/{id}/resolve",
    tags: ["sync"],
    summary: "Resolves a conflict with the chosen value",
    access: { caller: "operator", scope: "state:write" },
    maxBody: MAX_BODY,
    request: {
      params: z.object({ id: z.string().regex(/^[1-9]\d{0,15}$/, "a positive integer") }),
      body: jsonBody(resolveBody),
    },
    responses: {
      200: jsonResponse(z.object({ conflict: Conflict, entity: Entity }), "Resolved"),
      404: jsonResponse(z.looseObject({}), "No open conflict (SYNC_CONFLICT_NOT_FOUND)"),
    },
  }),
  entity: declareRoute({
    method: "get",
    path: "/state/{type}/{id}",
    tags: ["sync"],
    summary: "An entity's current state here (`source=db`: rebuilt from PostgreSQL)",
    access: read,
    request: {
      params: entityParams,
      query: z.object({ source: z.enum(["memory", "db"]).optional() }),
    },
    responses: {
      200: jsonResponse(z.object({ entity: Entity }), "The entity"),
      404: jsonResponse(z.looseObject({}), "No state (STATE_NOT_FOUND)"),
    },
  }),
  patch: declareRoute({
    method: "patch",
    path: "/state/{type}/{id}",
    tags: ["sync"],
    summary: "Applies a delta here; replicated asynchronously (`wait=persisted`: stored first)",
    access: { caller: "machine", scope: "state:write" },
    maxBody: MAX_BODY,
    request: {
      params: entityParams,
      query: z.object({ wait: z.enum(["persisted"]).optional() }),
      body: jsonBody(deltaBody),
    },
    responses: {
      200: jsonResponse(z.object({ entity: Entity }), "The entity after the delta"),
    },
  }),
};

/** Adds the `/state` routes. */
export function addSyncRoutes(app: OpenAPIHono, deps: SyncRouteDeps): void {
  const bufferSize = deps.sseBuffer ?? 256;
  const now = deps.now ?? Date.now;
  const log = deps.log ?? silentLogger;
  const node = deps.node;
  const maxStreams = deps.maxStreams ?? 1000;
  // Every open stream is a subscription each state change is matched against, so their
  // number is what bounds the work a crowd of anonymous clients can cause.
  let openStreams = 0;
  serve(app, SYNC_ROUTES.state, (c) => {
    c.header("cache-control", "no-store");
    return c.json({ instance: node.instanceId, sync: node.stats(), digest: node.digest() });
  });

  serve(app, SYNC_ROUTES.stream, (c) => {
    const pattern = c.req.valid("query").pattern ?? "*";
    parseChannelPattern(pattern); // validates (VALIDATION_FAILED) before the stream opens
    if (openStreams >= maxStreams) {
      throw new RuntimeError(
        "RATE_LIMITED",
        `Cannot open an event stream: this instance already serves ${maxStreams}; ` +
          "try again later or on another instance",
      );
    }
    openStreams++;
    type Item = { channel: string; data: Json; info: DeliveryInfo };
    let seq = 0;
    return streamSSE(c, async (stream) => {
      try {
        await pumpEvents<Item>(stream, {
          subscribe: (push) =>
            node.subscribe(pattern, (channel, data, info) => push({ channel, data, info })),
          hello: () => ({
            event: "hello",
            data: JSON.stringify({ instance: node.instanceId, pattern, buffer: bufferSize }),
          }),
          missed: (missed) =>
            JSON.stringify({
              missed,
              hint: "events were dropped because this client read too slowly; " +
                "refetch the entities you follow with GET /state/:type/:id",
            }),
          render: (item) => ({
            event: item.info.kind,
            id: String(++seq),
            data: JSON.stringify({
              channel: item.channel,
              data: item.data,
              origin: item.info.origin,
              instance: item.info.instance,
              repaired: item.info.repaired,
            }),
          }),
          bufferSize,
          signal: deps.signal,
        });
      } catch (err) {
        log.debug("state event stream ended", { error: String(err) });
      } finally {
        openStreams--;
      }
    });
  });

  serve(app, SYNC_ROUTES.conflicts, async (c) => {
    const q = c.req.valid("query");
    const conflicts = await deps.conflicts.list({ status: q.status, limit: q.limit });
    return c.json({ conflicts });
  });

  serve(app, SYNC_ROUTES.resolve, async (c) => {
    const id = Number(c.req.valid("param").id);
    const body = { data: c.req.valid("json") };
    const resolved = await deps.conflicts.resolve(id, {
      value: body.data.value,
      by: `http@${node.instanceId}`,
      at: new Date(now()),
    });
    if (!resolved) {
      throw new RuntimeError("SYNC_CONFLICT_NOT_FOUND", `No open conflict has id ${id}`);
    }
    // The chosen value becomes a new write that has seen both candidates, so it wins
    // everywhere and ends the conflict.
    const entity = node.applyDelta(resolved.entityType, resolved.entityId, {
      [resolved.field]: body.data.value,
    });
    return c.json({ conflict: resolved, entity });
  });

  serve(app, SYNC_ROUTES.entity, async (c) => {
    const { type, id } = c.req.valid("param");
    const entity = c.req.valid("query").source === "db"
      ? await node.rebuild(type, id)
      : node.getSnapshot(type, id);
    if (!entity) throw new RuntimeError("STATE_NOT_FOUND", `No state for ${type} ${id}`);
    c.header("cache-control", "no-store");
    return c.json({ entity });
  });

  serve(app, SYNC_ROUTES.patch, async (c) => {
    const { type, id } = c.req.valid("param");
    // The schema's record drops a `__proto__` key (it cannot be an object's own data), so
    // look at the parsed body itself: such a delta is refused, never half-applied.
    const raw: unknown = await c.req.json();
    if (typeof raw === "object" && raw !== null && Object.hasOwn(raw, "__proto__")) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        'Invalid request: "__proto__" cannot be a field name',
      );
    }
    const entity = node.applyDelta(type, id, c.req.valid("json"));
    // Replication is asynchronous; `?wait=persisted` answers once the delta is stored.
    if (c.req.valid("query").wait === "persisted") await node.flush({ persisted: true });
    return c.json({ entity });
  });
}
