/**
 * The cluster's recorded history on Redis: one stream, `history`, shared by every instance.
 * Each entry is one actor transition or one cross-instance message, sealed with
 * lib/message_auth.ts (purpose `history.record`, bound to the stream's key) in field `r`.
 * The entry id's millisecond part is the Redis server's clock when the entry was added: one
 * clock for the whole cluster, which is what lets a reviewer put the instances' events in
 * one order.
 *
 * Bounded two ways: every append trims the stream near `maxEntries` (`MAXLEN ~`), and each
 * writer trims entries older than `maxAgeMs` by the server clock (`XTRIM MINID`, computed
 * from the id the server just gave a batch's last entry) at most once per
 * {@linkcode AGE_TRIM_EVERY_MS} of server time, so a stream holds entries at most that much past
 * the age bound and batches written milliseconds apart do not each pay a trim. The size bound
 * is approximate (`~`: whole radix-tree nodes of 100 entries), so the stream may hold up to a
 * node more.
 * @module
 */
import { z } from "zod";
import type { MessageAuth } from "../lib/message_auth.ts";
import type { Keyspace, RedisClient } from "./redis.ts";

/** A transition or message as recorded (instance clock in `at`). */
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
]);

/** One recorded transition or message. */
export type HistoryRecord = z.infer<typeof historyRecordSchema>;

/** A record read back, with the server clock it was stored at. */
export type HistoryEntry = HistoryRecord & {
  /** Stream entry id (`<server ms>-<seq>`): the cluster-wide order. */
  entryId: string;
  /** Redis server clock when it was stored (ms). */
  serverAt: number;
};

/** Bounds of the stream. */
export interface HistoryBounds {
  /** Entries kept at most (approximately). */
  maxEntries: number;
  /** Entries older than this by the server clock are trimmed (ms). */
  maxAgeMs: number;
}

/** A writer trims by age at most this often (server clock, ms). */
export const AGE_TRIM_EVERY_MS = 10_000;

function historyKey(keyspace: Keyspace): string {
  return keyspace.key("history");
}

/** Appends batches of records to the history stream, sealed, in one round trip each. */
export function createHistoryWriter(
  redis: RedisClient,
  keyspace: Keyspace,
  auth: MessageAuth,
  bounds: HistoryBounds,
): { append(records: readonly HistoryRecord[]): Promise<void> } {
  const key = historyKey(keyspace);
  let trimmedAt = -Infinity;
  return {
    async append(records) {
      if (!records.length) return;
      const pipe = redis.pipeline();
      for (const record of records) {
        const sealed = auth.seal("history.record", key, JSON.stringify(record));
        pipe.xadd(key, "MAXLEN", "~", bounds.maxEntries, "*", "r", sealed);
      }
      const res = await pipe.exec();
      const err = res?.find(([e]) => e)?.[0];
      if (err) throw err;
      const lastId = String(res?.[res.length - 1]?.[1] ?? "");
      const serverMs = Number(lastId.split("-")[0]);
      if (
        Number.isFinite(serverMs) && serverMs > bounds.maxAgeMs &&
        serverMs - trimmedAt >= AGE_TRIM_EVERY_MS
      ) {
        trimmedAt = serverMs;
        await redis.xtrim(key, "MINID", String(serverMs - bounds.maxAgeMs));
      }
    },
  };
}

/** Options of {@linkcode readHistory}. */
export interface ReadHistoryOptions {
  /** From this server time (ms, inclusive). */
  from?: number;
  /** Up to this server time (ms, inclusive). */
  to?: number;
  /** Entries at most. */
  limit: number;
  /** The newest `limit` entries up to `to`, newest first (the states at a moment). */
  newestFirst?: boolean;
}

/**
 * Records between two server times, oldest first (or newest first with `newestFirst`). A record that does not verify (written
 * by someone without the key) is counted by `auth.refused` and left out.
 */
export async function readHistory(
  redis: RedisClient,
  keyspace: Keyspace,
  auth: MessageAuth,
  options: ReadHistoryOptions,
): Promise<HistoryEntry[]> {
  const key = historyKey(keyspace);
  const start = options.from === undefined ? "-" : String(Math.max(0, Math.floor(options.from)));
  const end = options.to === undefined ? "+" : String(Math.max(0, Math.floor(options.to)));
  const raw = options.newestFirst
    ? await redis.xrevrange(key, end, start, "COUNT", options.limit)
    : await redis.xrange(key, start, end, "COUNT", options.limit);
  const out: HistoryEntry[] = [];
  for (const [entryId, fields] of raw) {
    const i = fields.indexOf("r");
    const sealed = i >= 0 ? fields[i + 1] : undefined;
    const opened = sealed ? auth.open("history.record", key, sealed) : null;
    if (!opened) {
      auth.refused("history.record", "unknown", { entryId });
      continue;
    }
    let parsed;
    try {
      parsed = historyRecordSchema.safeParse(JSON.parse(opened.body));
    } catch {
      parsed = null;
    }
    if (!parsed?.success) continue;
    out.push({ ...parsed.data, entryId, serverAt: Number(entryId.split("-")[0]) });
  }
  return out;
}

/** Entries in the stream now (for the volume figures in docs). */
export async function historyLength(redis: RedisClient, keyspace: Keyspace): Promise<number> {
  return await redis.xlen(historyKey(keyspace));
}
