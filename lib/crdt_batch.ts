/**
 * The wire and storage format of sync batches: what one origin sealed in one tick —
 * entity deltas, platform events and cache invalidations — numbered by the origin's
 * sequence. The same JSON travels over Redis pub/sub, is stored in `event_log`, and is
 * returned by peers that repair a gap, so one schema validates it everywhere.
 * @module
 */
import { z } from "zod";
import type { EntityDelta, Json, VersionVector } from "./crdt.ts";

/** One entry of a batch: a delta of one entity, and/or events and invalidations. */
export interface BatchEntry {
  /** Entity key `type:id`, when the entry changes an entity. */
  k?: string;
  /** The origin's dot for this entity change. */
  d?: number;
  /** The entity's version vector as the writer had seen it. */
  x?: VersionVector;
  /** Field writes: field → [value, HLC wall, HLC logical]. */
  f?: Record<string, [Json, number, number]>;
  /** Counter totals of the origin: field → [increments, decrements]. */
  c?: Record<string, [number, number]>;
  /** Events for subscribers: [channel, data]. */
  e?: [string, Json][];
  /** Cache invalidations: [cache name, key or `*`]. */
  i?: [string, string][];
}

/** A sealed batch. */
export interface Batch {
  /** Format version. */
  v: 1;
  /** Origin (process incarnation) that sealed it. */
  o: string;
  /** Instance id of the origin, for requests to it. */
  n: string;
  /** The origin's sequence number of this batch, from 1. */
  s: number;
  /** Entries. */
  e: BatchEntry[];
  /** Entity keys the batch touches (lets PostgreSQL find an entity's deltas). */
  k: string[];
}

/** Entity types: lower-case identifiers. */
export const ENTITY_TYPE_RE: RegExp = /^[a-z][a-z0-9_]{0,31}$/;
/** Entity ids: numbers, UUIDs, slugs. */
export const ENTITY_ID_RE: RegExp = /^[A-Za-z0-9_.:@-]{1,128}$/;
/** Field names (never `__proto__`: an object key that would change the prototype, not be data). */
export const FIELD_RE: RegExp = /^(?!__proto__$)[A-Za-z_][A-Za-z0-9_]{0,63}$/;
/** Channels: dot-separated lower-case segments, e.g. `stream.started`. */
export const CHANNEL_RE: RegExp = /^[a-z0-9_-]+(\.[a-z0-9_-]+)+$/;
/** Cache names. */
export const CACHE_RE: RegExp = /^[a-z][a-z0-9_.-]{0,63}$/;
/** Origin ids: `<instance>~<random>`. */
export const ORIGIN_RE: RegExp = /^[\w.:-]{1,128}~[a-z0-9]{1,32}$/;

const count = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const origin = z.string().regex(ORIGIN_RE);
const json = z.unknown() as z.ZodType<Json>;
const vector = z.record(origin, count);
const key = z.string().max(170).refine((k) => parseEntityKey(k) !== null, "bad entity key");

/** Schema of one batch entry. */
export const batchEntrySchema: z.ZodType<BatchEntry> = z.object({
  k: key.optional(),
  d: count.min(1).optional(),
  x: vector.optional(),
  f: z.record(z.string().regex(FIELD_RE), z.tuple([json, count, count])).optional(),
  c: z.record(z.string().regex(FIELD_RE), z.tuple([count, count])).optional(),
  e: z.array(z.tuple([z.string().max(128).regex(CHANNEL_RE), json])).max(64).optional(),
  i: z.array(z.tuple([z.string().regex(CACHE_RE), z.string().min(1).max(256)])).max(256)
    .optional(),
}).refine((e) => !(e.f || e.c) || (e.k !== undefined && e.d !== undefined && e.x !== undefined), {
  message: "an entity change needs k, d and x",
});

/** Schema of a batch. */
export const batchSchema: z.ZodType<Batch> = z.object({
  v: z.literal(1),
  o: origin,
  n: z.string().min(1).max(128).regex(/^[\w.:-]+$/),
  s: count.min(1),
  e: z.array(batchEntrySchema).max(5000),
  k: z.array(key).max(5000),
});

/** `type:id` for an entity. */
export function entityKey(type: string, id: string): string {
  return `${type}:${id}`;
}

/** Splits `type:id`; null when it is not a valid key. */
export function parseEntityKey(key: string): { type: string; id: string } | null {
  const at = key.indexOf(":");
  if (at < 1) return null;
  const type = key.slice(0, at), id = key.slice(at + 1);
  return ENTITY_TYPE_RE.test(type) && ENTITY_ID_RE.test(id) ? { type, id } : null;
}

/** The entity delta carried by an entry of a batch from `origin`, or null if none. */
export function entryDelta(entry: BatchEntry, origin: string): EntityDelta | null {
  if (!entry.k || entry.d === undefined) return null;
  return { o: origin, d: entry.d, x: entry.x ?? {}, f: entry.f, c: entry.c };
}
