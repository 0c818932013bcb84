/**
 * The cluster's recorded history on Redis: one stream, `history`, shared by every instance.
 * Each entry is one flush of one instance's recorder: a JSON array of records (actor
 * transitions, cross-instance messages, keyframes), sealed with lib/message_auth.ts (purpose
 * `history.record`, bound to the stream's key) in field `r` — one seal and one `XADD` per
 * flush, not per record. A flush larger than {@linkcode ENTRY_MAX_BYTES} is split into
 * several entries. The entry id's millisecond part is the Redis server's clock when the entry
 * was added: one clock for the whole cluster, which is what lets a reviewer put the instances'
 * events in one order; a record's place is its entry's id and its index in the entry
 * (`<ms>-<n>.<i>`). Entries written before batching (one record, a JSON object) still read,
 * as `<ms>-<n>.0`.
 *
 * Keyframes (every actor's state on one instance, at its start and periodically) are records
 * like the others; each entry holding one is also indexed in the sorted set `history:keyframes`
 * (score: server ms, member: entry id), so the states at a moment can start from each
 * instance's newest keyframe without scanning the stream. The index only points: what it
 * points at is read from the stream and opened like any entry.
 *
 * Bounded two ways: every append trims the stream near `maxEntries` *records* (`MAXLEN ~`,
 * converted to entries with this writer's running mean of records per entry), and each writer
 * trims entries older than `maxAgeMs` by the server clock (`XTRIM MINID`, computed from the id
 * the server just gave a batch's last entry; the keyframe index likewise) at most once per
 * {@linkcode AGE_TRIM_EVERY_MS} of server time, so a stream holds entries at most that much past
 * the age bound and batches written milliseconds apart do not each pay a trim. The size bound
 * is approximate (`~`: whole radix-tree nodes of 100 entries; and each writer converts with its
 * own mean, so a cluster mixing busy and idle instances keeps roughly, not exactly, that many).
 * @module
 */
import { z } from "zod";
import type { MessageAuth } from "../lib/message_auth.ts";
import type { Keyspace, RedisClient } from "./redis.ts";

/** One actor in a keyframe. */
export const keyframeActorSchema = z.object({
  path: z.string().max(1000),
  machine: z.string().max(200).optional(),
  state: z.unknown(),
});

/** A transition, message or keyframe as recorded (instance clock in `at`). */
export const historyRecordSchema = z.discriminatedUnion("k", [
  z.object({
    k: z.literal("transition"),
    instance: z.string().max(128),
    at: z.number(),
    seq: z.number(),
    path: z.string().max(1000),
    event: z.string().max(500),
    state: z.unknown(),
    /** Id of the message that caused it, when one did. */
    cause: z.string().max(200).optional(),
    /** The actor's machine (its chart's name). */
    machine: z.string().max(200).optional(),
  }),
  z.object({
    k: z.literal("message"),
    instance: z.string().max(128),
    at: z.number(),
    id: z.string().max(200),
    kind: z.string().max(20),
    from: z.object({ instance: z.string().max(128), actor: z.string().max(500) }),
    to: z.object({ instance: z.string().max(128), actor: z.string().max(500) }),
    event: z.string().max(500),
    corr: z.string().max(200).optional(),
    sentAt: z.number(),
  }),
  z.object({
    /** Every running actor of the instance and its state, at `at`. */
    k: z.literal("keyframe"),
    instance: z.string().max(128),
    at: z.number(),
    actors: z.array(keyframeActorSchema).max(10_000),
  }),
]);

/** One recorded transition, message or keyframe. */
export type HistoryRecord = z.infer<typeof historyRecordSchema>;

/** A record read back, with the server clock it was stored at. */
export type HistoryEntry = HistoryRecord & {
  /**
   * The record's place in the cluster-wide order: `<server ms>-<n>.<i>`, its stream entry's id
   * and its index in that entry.
   */
  entryId: string;
  /** Redis server clock when it was stored (ms). */
  serverAt: number;
};

/** Bounds of the stream. */
export interface HistoryBounds {
  /** Records kept at most (approximately). */
  maxEntries: number;
  /** Entries older than this by the server clock are trimmed (ms). */
  maxAgeMs: number;
}

/** A writer trims by age at most this often (server clock, ms). */
export const AGE_TRIM_EVERY_MS = 10_000;

/** An entry's sealed body holds at most about this many bytes of records (one record may exceed it). */
export const ENTRY_MAX_BYTES = 16 * 1024;

/** Keyframe entries the index keeps at most (besides the age bound). */
export const KEYFRAMES_KEPT = 10_000;

function historyKey(keyspace: Keyspace): string {
  return keyspace.key("history");
}

function keyframesKey(keyspace: Keyspace): string {
  return keyspace.key("history:keyframes");
}

/** Records grouped into entry bodies of at most `maxBytes` (a longer record alone). */
function entryBodies(
  records: readonly HistoryRecord[],
  maxBytes: number,
): { body: string; count: number; keyframe: boolean }[] {
  const out: { body: string; count: number; keyframe: boolean }[] = [];
  let parts: string[] = [];
  let bytes = 2;
  let keyframe = false;
  const close = () => {
    if (!parts.length) return;
    out.push({ body: `[${parts.join(",")}]`, count: parts.length, keyframe });
    parts = [];
    bytes = 2;
    keyframe = false;
  };
  for (const record of records) {
    const json = JSON.stringify(record);
    if (parts.length && bytes + json.length + 1 > maxBytes) close();
    parts.push(json);
    bytes += json.length + 1;
    keyframe ||= record.k === "keyframe";
  }
  close();
  return out;
}

/** Appends batches of records to the history stream: one sealed entry per batch (split past {@linkcode ENTRY_MAX_BYTES}), in one round trip. */
export function createHistoryWriter(
  redis: RedisClient,
  keyspace: Keyspace,
  auth: MessageAuth,
  bounds: HistoryBounds,
  options: { maxEntryBytes?: number } = {},
): { append(records: readonly HistoryRecord[]): Promise<void> } {
  const key = historyKey(keyspace);
  const index = keyframesKey(keyspace);
  const maxBytes = options.maxEntryBytes ?? ENTRY_MAX_BYTES;
  let trimmedAt = -Infinity;
  // Running mean of records per entry: the size bound is in records, MAXLEN in entries.
  let perEntry = 1;
  return {
    async append(records) {
      if (!records.length) return;
      const entries = entryBodies(records, maxBytes);
      const maxLen = Math.max(1, Math.ceil(bounds.maxEntries / perEntry));
      const pipe = redis.pipeline();
      for (const entry of entries) {
        const sealed = auth.seal("history.record", key, entry.body);
        pipe.xadd(key, "MAXLEN", "~", maxLen, "*", "r", sealed);
      }
      const res = await pipe.exec();
      const err = res?.find(([e]) => e)?.[0];
      if (err) throw err;
      for (const entry of entries) perEntry += (entry.count - perEntry) / 16;
      const ids = (res ?? []).map(([, id]) => String(id));
      const keyframeIds = ids.filter((_, i) => entries[i].keyframe);
      const lastId = ids[ids.length - 1] ?? "";
      const serverMs = Number(lastId.split("-")[0]);
      const ageTrim = Number.isFinite(serverMs) && serverMs > bounds.maxAgeMs &&
        serverMs - trimmedAt >= AGE_TRIM_EVERY_MS;
      if (ageTrim) trimmedAt = serverMs;
      // The stream and its index are two keys (two slots in a Redis Cluster): two commands.
      const work: Promise<unknown>[] = [];
      if (ageTrim) work.push(redis.xtrim(key, "MINID", String(serverMs - bounds.maxAgeMs)));
      if (keyframeIds.length || ageTrim) {
        const idx = redis.pipeline();
        for (const id of keyframeIds) idx.zadd(index, Number(id.split("-")[0]), id);
        if (keyframeIds.length) idx.zremrangebyrank(index, 0, -(KEYFRAMES_KEPT + 1));
        if (ageTrim) idx.zremrangebyscore(index, "-inf", `(${serverMs - bounds.maxAgeMs}`);
        work.push(
          idx.exec().then((done) => {
            const failed = done?.find(([e]) => e)?.[0];
            if (failed) throw failed;
          }),
        );
      }
      await Promise.all(work);
    },
  };
}

/** Options of {@linkcode readHistory}. */
export interface ReadHistoryOptions {
  /** From this server time (ms, inclusive). */
  from?: number;
  /** Up to this server time (ms, inclusive). */
  to?: number;
  /** Records at most. */
  limit: number;
  /** The newest `limit` records up to `to`, newest first (the states at a moment). */
  newestFirst?: boolean;
}

/** Entries a read asks Redis for at once (each holds one record or more). */
const READ_PAGE = 256;

/** Opens one stream entry: its records with their places, oldest first; [] when it does not verify. */
function openEntry(
  key: string,
  auth: MessageAuth,
  entryId: string,
  fields: string[],
): HistoryEntry[] {
  const i = fields.indexOf("r");
  const sealed = i >= 0 ? fields[i + 1] : undefined;
  const opened = sealed ? auth.open("history.record", key, sealed) : null;
  if (!opened) {
    auth.refused("history.record", "unknown", { entryId });
    return [];
  }
  let body: unknown;
  try {
    body = JSON.parse(opened.body);
  } catch {
    return [];
  }
  const serverAt = Number(entryId.split("-")[0]);
  // Written before batching: one record per entry.
  const list = Array.isArray(body) ? body : [body];
  const out: HistoryEntry[] = [];
  list.forEach((item, n) => {
    const parsed = historyRecordSchema.safeParse(item);
    if (parsed.success) out.push({ ...parsed.data, entryId: `${entryId}.${n}`, serverAt });
  });
  return out;
}

/**
 * Records between two server times, oldest first (or newest first with `newestFirst`), at most
 * `limit`. A record that does not verify (written by someone without the key) is counted by
 * `auth.refused` and left out.
 */
export async function readHistory(
  redis: RedisClient,
  keyspace: Keyspace,
  auth: MessageAuth,
  options: ReadHistoryOptions,
): Promise<HistoryEntry[]> {
  const key = historyKey(keyspace);
  let start = options.from === undefined ? "-" : String(Math.max(0, Math.floor(options.from)));
  let end = options.to === undefined ? "+" : String(Math.max(0, Math.floor(options.to)));
  const out: HistoryEntry[] = [];
  while (out.length < options.limit) {
    const count = Math.min(READ_PAGE, options.limit - out.length);
    const raw = options.newestFirst
      ? await redis.xrevrange(key, end, start, "COUNT", count)
      : await redis.xrange(key, start, end, "COUNT", count);
    for (const [entryId, fields] of raw) {
      const records = openEntry(key, auth, entryId, fields);
      out.push(...(options.newestFirst ? records.reverse() : records));
    }
    if (raw.length < count) break;
    // The next page starts after (before) the last entry read: exclusive range.
    const last = raw[raw.length - 1][0];
    if (options.newestFirst) end = `(${last}`;
    else start = `(${last}`;
  }
  return out.slice(0, options.limit);
}

/**
 * Each instance's newest keyframe at or before `to` (server ms; absent: the newest keyframe's
 * time), newest first. Only keyframes of the `windowMs` before `to` are opened (at most
 * `scan`): every instance alive at `to` wrote one within its keyframe interval before it, so a
 * window of two intervals finds each of them with a few index entries per instance, where
 * scanning the index by count opened up to `scan` entries per page view whatever N. An
 * instance silent for longer than the window was not alive then and gets no keyframe.
 */
export async function readKeyframes(
  redis: RedisClient,
  keyspace: Keyspace,
  auth: MessageAuth,
  options: { to?: number; windowMs: number; scan?: number },
): Promise<HistoryEntry[]> {
  const key = historyKey(keyspace);
  const index = keyframesKey(keyspace);
  let to = options.to === undefined ? null : Math.max(0, Math.floor(options.to));
  if (to === null) {
    const newest = await redis.zrevrange(index, 0, 0, "WITHSCORES");
    if (newest.length < 2) return [];
    to = Number(newest[1]);
  }
  const ids = await redis.zrevrangebyscore(
    index,
    to,
    Math.max(0, to - Math.max(0, Math.floor(options.windowMs))),
    "LIMIT",
    0,
    options.scan ?? 1000,
  );
  if (!ids.length) return [];
  const pipe = redis.pipeline();
  for (const id of ids) pipe.xrange(key, id, id, "COUNT", 1);
  const res = await pipe.exec();
  // The index is not sealed: its scores only pick which entries to open. What counts is each
  // opened record's own place (its entry id, stamped by the server): after `to` it is left out,
  // and the newest per instance wins whatever order the index gave.
  const limit = options.to === undefined ? Infinity : to;
  const newest = new Map<string, HistoryEntry>();
  for (const [err, raw] of res ?? []) {
    if (err) throw err;
    for (const [entryId, fields] of raw as [string, string[]][]) {
      for (const record of openEntry(key, auth, entryId, fields)) {
        if (record.k !== "keyframe" || record.serverAt > limit) continue;
        const known = newest.get(record.instance);
        if (!known || laterPlace(record.entryId, known.entryId)) {
          newest.set(record.instance, record);
        }
      }
    }
  }
  return [...newest.values()];
}

/** Whether record place `a` (`<ms>-<n>.<i>`) comes after `b` in the stream. */
function laterPlace(a: string, b: string): boolean {
  const pa = a.split(/[-.]/).map(Number), pb = b.split(/[-.]/).map(Number);
  for (let k = 0; k < 3; k++) if (pa[k] !== pb[k]) return pa[k] > pb[k];
  return false;
}

/** Entries in the stream now (for the volume figures in docs). */
export async function historyLength(redis: RedisClient, keyspace: Keyspace): Promise<number> {
  return await redis.xlen(historyKey(keyspace));
}
