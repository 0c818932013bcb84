/**
 * Data access for streams: creation with a one-time stream key, lookups (by id, by key,
 * live directory), going live and off the air, viewer counts and encoder statistics.
 *
 * The stream key is a bearer secret for the ingest server. It is returned once, by
 * {@linkcode createStream} and {@linkcode resetStreamKey}; the database keeps only its
 * SHA-256 and a short display prefix, so a leaked table or backup cannot hijack a stream.
 * Going live and off the air change the stream and its stream session in one transaction.
 * @module
 */
import { z } from "zod";
import { RuntimeError } from "../lib/errors.ts";
import { isCheckViolation, isForeignKeyViolation, rethrowDatabaseError } from "./pg_errors.ts";
import { randomToken, sha256 } from "./secure_random.ts";
import {
  closeOpenSession,
  insertStreamSession,
  type Queryable,
  type StreamSession,
} from "./stream_sessions.ts";
import type { Sql } from "./types.ts";
import { idSchema, parseInput } from "./validate.ts";

/** A committed stream change, as {@linkcode onStreamChange} reports it. */
export interface StreamChange {
  /** Stream id. */
  id: number;
  /** What changed. */
  kind: "started" | "stopped" | "viewers" | "stats" | "key";
}

const changeListeners = new WeakMap<Sql, Set<(change: StreamChange) => void>>();

/**
 * Listens to stream changes committed through the pool `sql` (the sync node invalidates
 * the `streams` cache on every instance with it); returns the unsubscribe.
 */
export function onStreamChange(sql: Sql, listener: (change: StreamChange) => void): () => void {
  let set = changeListeners.get(sql);
  if (!set) changeListeners.set(sql, set = new Set());
  set.add(listener);
  return () => set.delete(listener);
}

function changed(sql: Sql, id: number, kind: StreamChange["kind"]): void {
  for (const fn of changeListeners.get(sql) ?? []) {
    try {
      fn({ id, kind });
    } catch { /* a listener's failure must not fail the committed write */ }
  }
}

/** A stream as the rest of the runtime sees it (never the key or its hash). */
export interface Stream {
  /** Database id. */
  id: number;
  /** Owner's user id. */
  userId: number;
  /** Title shown in the directory. */
  name: string;
  /** Longer text, or null. */
  description: string | null;
  /** First characters of the current key, so the owner can recognise it. */
  streamKeyPrefix: string;
  /** Whether the stream appears in the public live directory. */
  isPublic: boolean;
  /** Whether it is broadcasting now. */
  isLive: boolean;
  /** Concurrent viewers now (0 when off the air). */
  viewerCount: number;
  /** Encoder bitrate in kbit/s, or null if unknown. */
  bitrateKbps: number | null;
  /** Frames per second, or null if unknown. */
  fps: number | null;
  /** Resolution such as `1920x1080`, or null if unknown. */
  resolution: string | null;
  /** Video codec name such as `h264`, or null if unknown. */
  codec: string | null;
  /** When the current or last broadcast started. */
  startedAt: Date | null;
  /** When the last broadcast ended; null while live or never broadcast. */
  endedAt: Date | null;
  /** When the stream was created. */
  createdAt: Date;
  /** When the row last changed. */
  updatedAt: Date;
}

/** Input of {@linkcode createStream}. */
export interface CreateStreamInput {
  /** Owner's user id. */
  userId: number;
  /** 1–200 characters, not only whitespace. */
  name: string;
  /** Up to 5000 characters, or null. */
  description?: string | null;
  /** Listed in the public directory when live; true by default. */
  isPublic?: boolean;
}

/** A stream together with its plain key, which is shown to the owner this once. */
export interface StreamWithKey {
  /** The stream. */
  stream: Stream;
  /** The bearer key for the encoder (`live_` + 43 base64url characters). */
  streamKey: string;
}

/** Result of {@linkcode startStream} and {@linkcode stopStream}. */
export interface StreamTransition {
  /** The stream after the change. */
  stream: Stream;
  /** The session opened (start) or closed (stop); null if stop found none open. */
  session: StreamSession | null;
}

/** Encoder statistics accepted by {@linkcode updateStreamStats}; absent keys are kept. */
export interface StreamStats {
  /** Bitrate in kbit/s, 0–1,000,000. */
  bitrateKbps?: number | null;
  /** Frames per second, 0–1000. */
  fps?: number | null;
  /** `WIDTHxHEIGHT`, e.g. `1920x1080`. */
  resolution?: string | null;
  /** Codec name, 1–32 characters of letters, digits, `.`, `_`, `-`. */
  codec?: string | null;
}

interface StreamRow {
  id: string;
  user_id: string;
  name: string;
  description: string | null;
  stream_key_prefix: string;
  is_public: boolean;
  is_live: boolean;
  viewer_count: number;
  bitrate_kbps: number | null;
  fps: number | null;
  resolution: string | null;
  codec: string | null;
  started_at: Date | null;
  ended_at: Date | null;
  created_at: Date;
  updated_at: Date;
}

/** Columns of the public Stream; stream_key_hash is deliberately absent. */
const STREAM_COLUMNS = [
  "id",
  "user_id",
  "name",
  "description",
  "stream_key_prefix",
  "is_public",
  "is_live",
  "viewer_count",
  "bitrate_kbps",
  "fps",
  "resolution",
  "codec",
  "started_at",
  "ended_at",
  "created_at",
  "updated_at",
];

const KEY_PREFIX = "live_";
const KEY_RE = /^live_[A-Za-z0-9_-]{43}$/;
// "live_" plus 7 random characters: enough to tell keys apart, far too little to guess one.
const DISPLAY_PREFIX_LENGTH = 12;

const noNul = (s: string) => !s.includes("\u0000");
const codePoints = (s: string) => [...s].length;

const nameSchema = z
  .string({ error: "must be a string" })
  .refine((s) => s.trim().length > 0, "must not be empty")
  .refine((s) => codePoints(s) <= 200, "must be at most 200 characters")
  .refine(noNul, "must not contain NUL characters");
const descriptionSchema = z
  .string({ error: "must be a string or null" })
  .refine((s) => codePoints(s) <= 5000, "must be at most 5000 characters")
  .refine(noNul, "must not contain NUL characters")
  .nullable();
const createStreamSchema = z.object({
  userId: idSchema,
  name: nameSchema,
  description: descriptionSchema.optional(),
  isPublic: z.boolean({ error: "must be a boolean" }).optional(),
});
const viewersSchema = z.object({
  viewers: z.number({ error: "must be a number" }).int("must be an integer")
    .min(0, "must not be negative").max(2_147_483_647, "is too large"),
});
const statsSchema = z.object({
  bitrateKbps: z.number({ error: "must be a number or null" }).int("must be an integer")
    .min(0, "must not be negative").max(1_000_000, "must be at most 1000000").nullable()
    .optional(),
  fps: z.number({ error: "must be a number or null" }).int("must be an integer")
    .min(0, "must not be negative").max(1000, "must be at most 1000").nullable().optional(),
  resolution: z.string({ error: "must be a string or null" })
    .regex(/^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}$/, 'must look like "1920x1080"').nullable()
    .optional(),
  codec: z.string({ error: "must be a string or null" })
    .regex(/^[A-Za-z0-9._-]{1,32}$/, 'must be 1–32 characters of letters, digits, ".", "_", "-"')
    .nullable().optional(),
});
const listSchema = z.object({
  limit: z.number({ error: "must be a number" }).int("must be an integer")
    .min(1, "must be at least 1").max(100, "must be at most 100").optional(),
});

function toStream(row: StreamRow): Stream {
  return {
    id: Number(row.id),
    userId: Number(row.user_id),
    name: row.name,
    description: row.description,
    streamKeyPrefix: row.stream_key_prefix,
    isPublic: row.is_public,
    isLive: row.is_live,
    viewerCount: row.viewer_count,
    bitrateKbps: row.bitrate_kbps,
    fps: row.fps,
    resolution: row.resolution,
    codec: row.codec,
    startedAt: row.started_at,
    endedAt: row.ended_at,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

function newStreamKey(): { key: string; hash: Uint8Array; prefix: string } {
  const key = KEY_PREFIX + randomToken(32);
  return { key, hash: sha256(key), prefix: key.slice(0, DISPLAY_PREFIX_LENGTH) };
}

function streamNotFound(action: string, id: number): RuntimeError {
  return new RuntimeError("STREAM_NOT_FOUND", `Cannot ${action}: no stream has id ${id}`, {
    details: { id },
  });
}

// After a conditional UPDATE matched nothing: say whether the stream is missing or merely
// in the wrong state, so the caller gets 404 vs 409.
async function explainNoMatch(
  sql: Queryable,
  id: number,
  action: string,
  wrongState: string,
): Promise<never> {
  const rows = await sql`SELECT 1 FROM streams WHERE id = ${id}`;
  if (!rows.length) throw streamNotFound(action, id);
  throw new RuntimeError("STREAM_STATE_INVALID", `Cannot ${action}: stream ${id} ${wrongState}`, {
    details: { id },
  });
}

function mapWriteError(err: unknown, action: string): never {
  if (isCheckViolation(err)) {
    const constraint = (err as { constraint_name?: string }).constraint_name;
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Cannot ${action}: the database refused the value (${constraint ?? "check constraint"})`,
      { cause: err, details: { constraint } },
    );
  }
  rethrowDatabaseError(err, action);
}

/** Creates a stream and its key; the plain key is in the result and nowhere else. */
export async function createStream(sql: Sql, input: CreateStreamInput): Promise<StreamWithKey> {
  const action = "create stream";
  const data = parseInput(createStreamSchema, input, { action: action, name: "input" });
  const { key, hash, prefix } = newStreamKey();
  try {
    const rows = await sql<StreamRow[]>`
      INSERT INTO streams (user_id, name, description, stream_key_hash, stream_key_prefix, is_public)
      VALUES (${data.userId}, ${data.name}, ${data.description ?? null}, ${hash}, ${prefix},
              ${data.isPublic ?? true})
      RETURNING ${sql(STREAM_COLUMNS)}`;
    return { stream: toStream(rows[0]), streamKey: key };
  } catch (err) {
    if (isForeignKeyViolation(err)) {
      throw new RuntimeError("USER_NOT_FOUND", `Cannot ${action}: no user has id ${data.userId}`, {
        cause: err,
        details: { userId: data.userId },
      });
    }
    mapWriteError(err, action);
  }
}

/** The stream with this id, or null. */
export async function getStreamById(sql: Sql, id: number): Promise<Stream | null> {
  const action = "load stream";
  const streamId = parseInput(idSchema, id, { action: action, name: "id" });
  try {
    const rows = await sql<StreamRow[]>`
      SELECT ${sql(STREAM_COLUMNS)} FROM streams WHERE id = ${streamId}`;
    return rows.length ? toStream(rows[0]) : null;
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/** The stream whose current key is `key` (the ingest server's check), or null. */
export async function getStreamByKey(sql: Sql, key: string): Promise<Stream | null> {
  const action = "load stream by key";
  const streamKey = parseInput(z.string({ error: "must be a string" }), key, {
    action: action,
    name: "key",
  });
  // A malformed key cannot match; answering without a query keeps junk off the database.
  if (!KEY_RE.test(streamKey)) return null;
  try {
    const rows = await sql<StreamRow[]>`
      SELECT ${sql(STREAM_COLUMNS)} FROM streams WHERE stream_key_hash = ${sha256(streamKey)}`;
    return rows.length ? toStream(rows[0]) : null;
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/** Streams owned by a user, newest first. */
export async function listStreamsForUser(sql: Sql, userId: number): Promise<Stream[]> {
  const action = "list streams";
  const id = parseInput(idSchema, userId, { action: action, name: "userId" });
  try {
    const rows = await sql<StreamRow[]>`
      SELECT ${sql(STREAM_COLUMNS)} FROM streams WHERE user_id = ${id}
      ORDER BY created_at DESC, id DESC`;
    return rows.map(toStream);
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/** Public live streams, most viewers first (`limit` 1–100, default 50). */
export async function listLiveStreams(
  sql: Sql,
  options: { limit?: number } = {},
): Promise<Stream[]> {
  const action = "list live streams";
  const { limit = 50 } = parseInput(listSchema, options, { action: action, name: "options" });
  try {
    const rows = await sql<StreamRow[]>`
      SELECT ${sql(STREAM_COLUMNS)} FROM streams
      WHERE is_live AND is_public
      ORDER BY viewer_count DESC, id
      LIMIT ${limit}`;
    return rows.map(toStream);
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/**
 * Puts a stream on the air and opens its stream session, in one transaction.
 * STREAM_STATE_INVALID if it is already live (of two concurrent starts, one wins).
 */
export async function startStream(sql: Sql, id: number): Promise<StreamTransition> {
  const action = "start stream";
  const streamId = parseInput(idSchema, id, { action: action, name: "id" });
  try {
    const result = await sql.begin(async (tx) => {
      // The NOT is_live condition is re-checked after a concurrent start commits, so
      // exactly one of two racing starts matches the row.
      const rows = await tx<StreamRow[]>`
        UPDATE streams
        SET is_live = true, started_at = now(), ended_at = NULL, viewer_count = 0
        WHERE id = ${streamId} AND NOT is_live
        RETURNING ${tx(STREAM_COLUMNS)}`;
      if (!rows.length) await explainNoMatch(tx, streamId, action, "is already live");
      const session = await insertStreamSession(tx, streamId, { action });
      return { stream: toStream(rows[0]), session };
    });
    changed(sql, streamId, "started");
    return result;
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/**
 * Takes a stream off the air and closes its open session (the database computes the
 * duration), in one transaction. STREAM_STATE_INVALID if it is not live.
 */
export async function stopStream(sql: Sql, id: number): Promise<StreamTransition> {
  const action = "stop stream";
  const streamId = parseInput(idSchema, id, { action: action, name: "id" });
  try {
    const result = await sql.begin(async (tx) => {
      const rows = await tx<StreamRow[]>`
        UPDATE streams
        SET is_live = false, viewer_count = 0, ended_at = GREATEST(now(), started_at)
        WHERE id = ${streamId} AND is_live
        RETURNING ${tx(STREAM_COLUMNS)}`;
      if (!rows.length) await explainNoMatch(tx, streamId, action, "is not live");
      const session = await closeOpenSession(tx, streamId);
      return { stream: toStream(rows[0]), session };
    });
    changed(sql, streamId, "stopped");
    return result;
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/**
 * Sets the live viewer count and raises the open session's peak if it is exceeded.
 * STREAM_STATE_INVALID if the stream is not live.
 */
export async function updateViewerCount(
  sql: Sql,
  id: number,
  options: { viewers: number },
): Promise<Stream> {
  const action = "update viewer count";
  const streamId = parseInput(idSchema, id, { action: action, name: "id" });
  const { viewers } = parseInput(viewersSchema, options, { action: action, name: "options" });
  try {
    // One statement, so the stream's count and the session's peak cannot drift apart.
    const rows = await sql<StreamRow[]>`
      WITH updated AS (
        UPDATE streams SET viewer_count = ${viewers}
        WHERE id = ${streamId} AND is_live
        RETURNING *
      ), peak AS (
        UPDATE stream_sessions SET peak_viewers = GREATEST(peak_viewers, ${viewers})
        WHERE stream_id = ${streamId} AND ended_at IS NULL AND EXISTS (SELECT 1 FROM updated)
      )
      SELECT ${sql(STREAM_COLUMNS)} FROM updated`;
    if (!rows.length) await explainNoMatch(sql, streamId, action, "is not live");
    changed(sql, streamId, "viewers");
    return toStream(rows[0]);
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}

/** Records encoder statistics (bitrate, fps, resolution, codec); returns the stream. */
export async function updateStreamStats(
  sql: Sql,
  id: number,
  stats: StreamStats,
): Promise<Stream> {
  const action = "update stream stats";
  const streamId = parseInput(idSchema, id, { action: action, name: "id" });
  const data = parseInput(statsSchema, stats, { action: action, name: "stats" });
  const set: Record<string, string | number | null> = {};
  if (data.bitrateKbps !== undefined) set.bitrate_kbps = data.bitrateKbps;
  if (data.fps !== undefined) set.fps = data.fps;
  if (data.resolution !== undefined) set.resolution = data.resolution;
  if (data.codec !== undefined) set.codec = data.codec;
  const columns = Object.keys(set);
  if (!columns.length) {
    const stream = await getStreamById(sql, streamId);
    if (!stream) throw streamNotFound(action, streamId);
    return stream;
  }
  try {
    const rows = await sql<StreamRow[]>`
      UPDATE streams SET ${sql(set, columns)} WHERE id = ${streamId}
      RETURNING ${sql(STREAM_COLUMNS)}`;
    if (!rows.length) throw streamNotFound(action, streamId);
    changed(sql, streamId, "stats");
    return toStream(rows[0]);
  } catch (err) {
    mapWriteError(err, action);
  }
}

/**
 * Replaces the stream key; the old key stops working at once and the new one is in the
 * result and nowhere else. A broadcast already running is not cut off.
 */
export async function resetStreamKey(sql: Sql, id: number): Promise<StreamWithKey> {
  const action = "reset stream key";
  const streamId = parseInput(idSchema, id, { action: action, name: "id" });
  const { key, hash, prefix } = newStreamKey();
  try {
    const rows = await sql<StreamRow[]>`
      UPDATE streams SET stream_key_hash = ${hash}, stream_key_prefix = ${prefix}
      WHERE id = ${streamId}
      RETURNING ${sql(STREAM_COLUMNS)}`;
    if (!rows.length) throw streamNotFound(action, streamId);
    changed(sql, streamId, "key");
    return { stream: toStream(rows[0]), streamKey: key };
  } catch (err) {
    rethrowDatabaseError(err, action);
  }
}
