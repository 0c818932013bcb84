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
 *   asynchronous (`?wait=persisted`: answer once it is stored in PostgreSQL). Only when
 *   RS_STATE_WRITE_TOKEN is set, with `Authorization: Bearer <token>`; otherwise 403.
 * - `GET /state/conflicts`, `POST /state/conflicts/:id/resolve` — unmergeable conflicts
 *   and their manual resolution; same token.
 * @module
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { Context, Hono, MiddlewareHandler } from "hono";
import { bodyLimit } from "hono/body-limit";
import { streamSSE } from "hono/streaming";
import { pumpEvents } from "./sse.ts";
import { z } from "zod";
import type { Json } from "../lib/crdt.ts";
import { parseChannelPattern } from "../lib/channel_pattern.ts";
import { ENTITY_ID_RE, ENTITY_TYPE_RE, FIELD_RE } from "../lib/crdt_batch.ts";
import { RuntimeError } from "../lib/errors.ts";
import { type Logger, silentLogger } from "../lib/log.ts";
import { errorResponse } from "./app.ts";
import type { DeliveryInfo, SyncNode } from "../actors/sync/node.ts";
import type { ConflictStore } from "../store/sync.ts";

/** What the sync routes need. */
export interface SyncRouteDeps {
  /** The sync node. */
  node: SyncNode;
  /** The conflict table (store/sync.ts `conflictStore`). */
  conflicts: ConflictStore;
  /** Bearer token that allows writes, or null: writes over HTTP are disabled. */
  writeToken: string | null;
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

const typeParam = z.string().regex(ENTITY_TYPE_RE);
const idParam = z.string().regex(ENTITY_ID_RE);
const deltaBody = z.record(z.string().regex(FIELD_RE), z.unknown() as z.ZodType<Json>)
  .refine((d) => Object.keys(d).length >= 1 && Object.keys(d).length <= 64, {
    message: "must name 1 to 64 fields",
  });
const resolveBody = z.object({ value: z.unknown() as z.ZodType<Json> }).refine(
  (b) => b.value !== undefined,
  { message: "value is required" },
);
/** Largest write body read: a delta is at most 64 fields and 8 KB of JSON anyway. */
const MAX_BODY = 64 * 1024;
const conflictQuery = z.object({
  status: z.enum(["open", "resolved", "all"]).optional(),
  limit: z.string().regex(/^\d{1,4}$/).transform(Number).optional(),
});

/** True when `given` equals `expected`, compared in constant time. */
export function tokenMatches(given: string, expected: string): boolean {
  // Comparing SHA-256 digests gives equal-length inputs: the time says nothing either.
  const a = createHash("sha256").update(given).digest();
  const b = createHash("sha256").update(expected).digest();
  return timingSafeEqual(a, b);
}

function requireWriter(c: Context, token: string | null): void {
  if (token === null) {
    throw new RuntimeError(
      "STATE_WRITE_DISABLED",
      "State writes over HTTP are disabled on this instance: set RS_STATE_WRITE_TOKEN to enable them",
    );
  }
  const header = c.req.header("authorization") ?? "";
  const m = /^Bearer (.+)$/.exec(header);
  if (!m || !tokenMatches(m[1], token)) {
    throw new RuntimeError("UNAUTHORIZED", "Cannot change state: a valid bearer token is required");
  }
}

function parseEntity(c: Context): { type: string; id: string } {
  const type = typeParam.safeParse(c.req.param("type"));
  const id = idParam.safeParse(c.req.param("id"));
  if (!type.success) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      "Invalid entity type: expected 1-32 lower-case letters, digits or _",
    );
  }
  if (!id.success) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      "Invalid entity id: expected 1-128 letters, digits or _ . : @ -",
    );
  }
  return { type: type.data, id: id.data };
}

async function jsonBody(c: Context): Promise<unknown> {
  try {
    return await c.req.json();
  } catch {
    throw new RuntimeError("VALIDATION_FAILED", "Invalid body: expected a JSON object");
  }
}

/** Adds the `/state` routes. */
export function addSyncRoutes(app: Hono, deps: SyncRouteDeps): void {
  const bufferSize = deps.sseBuffer ?? 256;
  const now = deps.now ?? Date.now;
  const log = deps.log ?? silentLogger;
  const node = deps.node;
  const maxStreams = deps.maxStreams ?? 1000;
  // Every open stream is a subscription each state change is matched against, so their
  // number is what bounds the work a crowd of anonymous clients can cause.
  let openStreams = 0;
  // The caller is checked before the body is read: only a token holder can make us read one.
  const writer: MiddlewareHandler = async (c, next) => {
    requireWriter(c, deps.writeToken);
    await next();
  };
  const limit = bodyLimit({
    maxSize: MAX_BODY,
    onError: () =>
      errorResponse(
        new RuntimeError("VALIDATION_FAILED", `Invalid body: it exceeds ${MAX_BODY} bytes`),
        log,
      ),
  });

  app.get("/state", (c) => {
    c.header("cache-control", "no-store");
    return c.json({ instance: node.instanceId, sync: node.stats(), digest: node.digest() });
  });

  app.get("/state/stream", (c) => {
    const pattern = c.req.query("pattern") ?? "*";
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

  app.get("/state/conflicts", writer, async (c) => {
    const q = conflictQuery.safeParse(c.req.query());
    if (!q.success) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        "Invalid query: status is open, resolved or all; limit is 1-1000",
      );
    }
    const conflicts = await deps.conflicts.list({ status: q.data.status, limit: q.data.limit });
    return c.json({ conflicts });
  });

  app.post("/state/conflicts/:id/resolve", writer, limit, async (c) => {
    const id = Number(c.req.param("id"));
    if (!Number.isSafeInteger(id) || id < 1) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        "Invalid conflict id: expected a positive integer",
      );
    }
    const body = resolveBody.safeParse(await jsonBody(c));
    if (!body.success) {
      throw new RuntimeError("VALIDATION_FAILED", 'Invalid body: expected {"value": <JSON>}');
    }
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

  app.get("/state/:type/:id", async (c) => {
    const { type, id } = parseEntity(c);
    const entity = c.req.query("source") === "db"
      ? await node.rebuild(type, id)
      : node.getSnapshot(type, id);
    if (!entity) throw new RuntimeError("STATE_NOT_FOUND", `No state for ${type} ${id}`);
    c.header("cache-control", "no-store");
    return c.json({ entity });
  });

  app.patch("/state/:type/:id", writer, limit, async (c) => {
    const { type, id } = parseEntity(c);
    const body = deltaBody.safeParse(await jsonBody(c));
    if (!body.success) {
      const issue = body.error.issues[0];
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Invalid delta: ${issue?.path.join(".") || "body"} ${issue?.message ?? "is invalid"}`,
      );
    }
    const entity = node.applyDelta(type, id, body.data);
    // Replication is asynchronous; `?wait=persisted` answers once the delta is stored.
    if (c.req.query("wait") === "persisted") await node.flush({ persisted: true });
    return c.json({ entity });
  });
}
