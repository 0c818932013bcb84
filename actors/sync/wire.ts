/**
 * Schemas of the sync node's own messages besides batches (lib/crdt_batch.ts): sequence
 * announcements on pub/sub and the `sync.fetch` request / reply between instances.
 * @module
 */
import { z } from "zod";
import type { EntityState, Json } from "../../lib/crdt.ts";
import { type Batch, batchSchema, FIELD_RE, ORIGIN_RE } from "../../lib/crdt_batch.ts";
import type { RemoteEvent } from "../runtime/types.ts";

/** Pub/sub channel of batches. */
export const BATCH_CHANNEL = "sync.batches";
/** Pub/sub channel of sequence announcements. */
export const HEADS_CHANNEL = "sync.heads";
/** Actor id of the sync node (its address for requests). */
export const SYNC_ACTOR = "sync";

const count = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const origin = z.string().regex(ORIGIN_RE);

/** A sequence announcement: how far the sender got, per origin. */
export interface Heads {
  /** Format version. */
  v: 1;
  /** Sender's origin. */
  o: string;
  /** Sender's instance id. */
  n: string;
  /** Sender's last sealed sequence number. */
  s: number;
  /** Contiguous sequence number the sender applied, per origin. */
  c: Record<string, number>;
  /** Asks every receiver to announce at once (after a reconnect). */
  w?: boolean;
}

/** Schema of {@linkcode Heads}. */
export const headsSchema: z.ZodType<Heads> = z.object({
  v: z.literal(1),
  o: origin,
  n: z.string().min(1).max(128).regex(/^[\w.:-]+$/),
  s: count,
  c: z.record(origin, count).refine((c) => Object.keys(c).length <= 2000, "too many origins"),
  w: z.boolean().optional(),
});

/** The `sync.fetch` request: batches of one origin. */
export interface FetchRequest extends RemoteEvent {
  type: "sync.fetch";
  /** Origin whose batches are wanted. */
  origin: string;
  /** Their sequence numbers. */
  seqs: number[];
}

/** Schema of {@linkcode FetchRequest}. */
export const fetchRequestSchema = z.object({
  type: z.literal("sync.fetch"),
  origin,
  seqs: z.array(count.min(1)).min(1).max(500),
}) as unknown as z.ZodType<RemoteEvent>;

const register = z.object({
  v: z.unknown() as z.ZodType<Json>,
  w: count,
  l: count,
  o: origin,
  d: count,
});
const counter = z.object({ p: z.record(origin, count), n: z.record(origin, count) });

/** Schema of a CRDT entity state from another instance. */
export const entityStateSchema: z.ZodType<EntityState> = z.object({
  vv: z.record(origin, count),
  f: z.record(z.string().regex(FIELD_RE), register),
  c: z.record(z.string().regex(FIELD_RE), counter),
});

/** The reply to `sync.fetch`. */
export interface FetchReply {
  /** Batches found (from the ring of recent batches). */
  batches: Batch[];
  /**
   * For the sender's own batches no longer held: the current state of the entities they
   * touched (a resync of the affected entities), keyed `type:id`.
   */
  entities: { k: string; state: EntityState }[];
  /** Sequence numbers the `entities` stand in for. */
  resynced: number[];
  /** Sequence numbers this instance cannot provide. */
  missing: number[];
}

/** Schema of {@linkcode FetchReply}. */
export const fetchReplySchema: z.ZodType<FetchReply> = z.object({
  batches: z.array(batchSchema).max(500),
  entities: z.array(z.object({ k: z.string().max(170), state: entityStateSchema })).max(5000),
  resynced: z.array(count).max(500),
  missing: z.array(count).max(500),
});
