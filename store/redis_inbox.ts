/**
 * The transport's inbox protocol on Redis: one stream per instance, `inbox:<instance>`,
 * read through the consumer group `runtime` (actors/runtime/transport.ts builds at-least-once
 * delivery on it: an entry is acknowledged, and deleted, only once it was handed over).
 *
 * Each entry has one field, `m`, the message JSON. A stream is capped near `maxLen`
 * entries, and expires a day after its last message so the inbox of an instance that never
 * comes back does not stay forever.
 * @module
 */
import { RuntimeError } from "../lib/errors.ts";
import type { Cluster } from "ioredis";
import { isCluster, type Keyspace, type RedisClient } from "./redis.ts";

/** The consumer group every instance reads its own inbox through. */
export const INBOX_GROUP = "runtime";

/** How long an inbox outlives its last message. */
const INBOX_TTL_MS = 24 * 3600 * 1000;
/** How often one sender pushes a target inbox's expiry back (the hot path is one XADD). */
const EXPIRY_REFRESH_MS = 60_000;
/** How long an append waits for its replicas (`replicas` > 0) by default before it fails. */
export const REPLICA_WAIT_MS = 1000;
/** Cluster replies meaning "not here, not now": the command was not applied. */
const REDIRECT = /^(MOVED|ASK|TRYAGAIN|CLUSTERDOWN) /;
/** How often an append with WAIT is sent again after such a reply. */
const REDIRECT_ATTEMPTS = 5;

/** Re-reads a cluster's slot map after a redirect, then waits a little longer each attempt. */
async function refreshSlots(cluster: Cluster, attempt: number): Promise<void> {
  await new Promise<void>((resolve) => cluster.refreshSlotsCache(() => resolve()));
  await new Promise((resolve) => setTimeout(resolve, 50 * attempt));
}

/** One stream entry: its id and the message, or null when it was trimmed or is not ours. */
export interface InboxEntry {
  /** Stream entry id. */
  id: string;
  /** The message JSON (field `m`), or null. */
  message: string | null;
}

/** Appending to any instance's inbox. */
export interface InboxWriter {
  /** Appends `message` to the inbox of `instance`. */
  append(instance: string, message: string): Promise<void>;
}

/** Reading and acknowledging this instance's own inbox. */
export interface InboxReader {
  /** Creates the consumer group (and the stream) unless it exists. */
  ensureGroup(): Promise<void>;
  /** Entries delivered to this consumer before but not acknowledged (oldest first). */
  readPending(count: number): Promise<InboxEntry[]>;
  /** New entries, waiting up to `blockMs` for the first. */
  readNew(count: number, blockMs: number): Promise<InboxEntry[]>;
  /** Acknowledges and deletes handled entries in one round trip. */
  ack(ids: readonly string[]): Promise<void>;
}

function inboxKey(keyspace: Keyspace, instance: string): string {
  return keyspace.key("inbox", instance);
}

/**
 * Writes to inboxes over `redis`; a stream is capped near `maxLen` entries. With `replicas`
 * > 0 an append succeeds only once that many replicas of the inbox's master hold it (WAIT in
 * the same pipeline, so on the connection and node that took the XADD); otherwise it fails
 * with REDIS_UNAVAILABLE, and the message may or may not be delivered.
 */
export function createInboxWriter(
  redis: RedisClient,
  keyspace: Keyspace,
  options: { maxLen: number; now?: () => number; replicas?: number; waitMs?: number },
): InboxWriter {
  const now = options.now ?? Date.now;
  const replicas = options.replicas ?? 0;
  const waitMs = options.waitMs ?? REPLICA_WAIT_MS;
  async function replicated(instance: string, pexpire: boolean, message: string): Promise<void> {
    const key = inboxKey(keyspace, instance);
    let res: [Error | null, unknown][] | null = null;
    for (let attempt = 1;; attempt++) {
      const pipeline = redis.pipeline().xadd(key, "MAXLEN", "~", options.maxLen, "*", "m", message);
      if (pexpire) pipeline.pexpire(key, INBOX_TTL_MS);
      res = await pipeline.wait(replicas, waitMs).exec();
      const err = res?.find(([e]) => e)?.[0];
      if (!err) break;
      // ioredis follows MOVED / ASK for a pipeline only when every command failed alike;
      // WAIT has no key and answers wherever it runs, so the redirect of the XADD (which was
      // then not applied) comes back here: re-read the slot map and send the lot again.
      if (!isCluster(redis) || attempt >= REDIRECT_ATTEMPTS || !REDIRECT.test(err.message)) {
        throw err;
      }
      await refreshSlots(redis, attempt);
    }
    const acked = Number(res?.at(-1)?.[1]);
    if (acked < replicas) {
      throw new RuntimeError(
        "REDIS_UNAVAILABLE",
        `The message to ${instance} reached ${acked} of ${replicas} replicas within ` +
          `${waitMs} ms (REDIS_WAIT_REPLICAS); it may or may not be delivered`,
      );
    }
  }
  /** When each target inbox's expiry was last pushed back (ms). */
  const expiryRefreshed = new Map<string, number>();
  return {
    async append(instance, message) {
      const key = inboxKey(keyspace, instance);
      const last = expiryRefreshed.get(instance) ?? 0;
      const t = now();
      const refresh = t - last > EXPIRY_REFRESH_MS;
      if (refresh) expiryRefreshed.set(instance, t);
      if (replicas > 0) return await replicated(instance, refresh, message);
      if (refresh) {
        const res = await redis.pipeline()
          .xadd(key, "MAXLEN", "~", options.maxLen, "*", "m", message)
          .pexpire(key, INBOX_TTL_MS)
          .exec();
        const err = res?.find(([e]) => e)?.[0];
        if (err) throw err;
        return;
      }
      await redis.xadd(key, "MAXLEN", "~", options.maxLen, "*", "m", message);
    },
  };
}

function entries(res: unknown): InboxEntry[] {
  const list = (res as [string, [string, string[] | null][]][] | null)?.[0]?.[1] ?? [];
  return list.map(([id, fields]) => {
    const raw = fields ? fields[fields.indexOf("m") + 1] : undefined;
    return { id, message: typeof raw === "string" ? raw : null };
  });
}

/**
 * Reads the inbox of `instance` as consumer `instance` of {@linkcode INBOX_GROUP}: blocking
 * reads on `reader` (a connection of its own), acknowledgements on `redis`.
 */
export function createInboxReader(
  redis: RedisClient,
  reader: RedisClient,
  keyspace: Keyspace,
  instance: string,
): InboxReader {
  const key = inboxKey(keyspace, instance);
  return {
    async ensureGroup() {
      try {
        await reader.xgroup("CREATE", key, INBOX_GROUP, "0", "MKSTREAM");
      } catch (err) {
        if (!String(err).includes("BUSYGROUP")) throw err;
      }
    },
    async readPending(count) {
      return entries(
        await reader.xreadgroup(
          "GROUP",
          INBOX_GROUP,
          instance,
          "COUNT",
          count,
          "STREAMS",
          key,
          "0",
        ),
      );
    },
    async readNew(count, blockMs) {
      return entries(
        await reader.xreadgroup(
          "GROUP",
          INBOX_GROUP,
          instance,
          "COUNT",
          count,
          "BLOCK",
          blockMs,
          "STREAMS",
          key,
          ">",
        ),
      );
    },
    async ack(ids) {
      if (!ids.length) return;
      await redis.pipeline().xack(key, INBOX_GROUP, ...ids).xdel(key, ...ids).exec();
    },
  };
}

/** Appends a raw string to an instance's inbox, bypassing every check (tests and tools). */
export async function injectRaw(
  redis: RedisClient,
  options: { keyspace: Keyspace; instance: string; raw: string },
): Promise<void> {
  await redis.xadd(inboxKey(options.keyspace, options.instance), "*", "m", options.raw);
}
