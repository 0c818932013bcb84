/**
 * Data access of the sync node: origins, delta batches in `event_log`, compressed
 * snapshot rounds with their checkpoint in `snapshots`, entity rebuilds, and the conflicts
 * table (migrations/005_sync.sql describes the layout).
 *
 * Guarantees:
 * - `appendBatches` is idempotent: a batch already stored (a retry after an ambiguous
 *   failure) is skipped, never duplicated; `persisted_seq` only grows.
 * - A snapshot round is one transaction under an advisory lock: its entity snapshots, its
 *   checkpoint and the pruning of older snapshots commit together, and a round from a
 *   holder whose fencing token is older than the last round's is refused, so a paused
 *   former holder can never overwrite a newer holder's snapshots.
 * - Checkpoint invariant (kept by the node, relied on here): the latest snapshot of every
 *   entity reflects every batch the latest checkpoint's version vector covers. So an
 *   entity is its latest snapshot plus the batches after the checkpoint.
 * @module
 */
import { Buffer } from "node:buffer";
import { gunzipSync, gzipSync } from "node:zlib";
import { RuntimeError } from "../lib/errors.ts";
import {
  applyEntityDelta,
  emptyEntity,
  type EntityState,
  type EntityStrategy,
  type Json,
  mergeEntityStates,
} from "../lib/crdt.ts";
import { type Batch, batchSchema, entityKey, entryDelta } from "../lib/crdt_batch.ts";
import { rethrowDatabaseError } from "./pg_errors.ts";
import type { Sql } from "./types.ts";

/** `event_log.aggregate_type` of delta batches. */
export const BATCH_AGGREGATE = "sync.batch";
/** `snapshots.aggregate_type` of checkpoints. */
export const CHECKPOINT_AGGREGATE = "sync.checkpoint";
/** Advisory-lock key serialising snapshot rounds ("rssyncsn"). */
export const SNAPSHOT_LOCK_KEY = 0x727373796e63736en;
const CHECKPOINT_ID = "cluster";
const SNAPSHOT_FORMAT = "crdt-v1";

/** `snapshots.aggregate_type` of an entity type's snapshots. */
export function snapshotAggregate(type: string): string {
  return `sync:${type}`;
}

/** An origin (process incarnation) as registered. */
export interface OriginRow {
  /** Origin id. */
  origin: string;
  /** Its instance. */
  instanceId: string;
  /** Every batch up to this sequence number is stored. */
  persistedSeq: number;
}

/** A stored batch. */
export interface StoredBatch {
  /** Origin. */
  origin: string;
  /** Sequence number. */
  seq: number;
  /** The batch (validated). */
  batch: Batch;
}

/** The latest checkpoint. */
export interface Checkpoint {
  /** Snapshot round. */
  round: number;
  /** Per-origin sequence numbers every latest entity snapshot covers. */
  vv: Record<string, number>;
  /** Fencing token of the holder that wrote it (0 without leases). */
  token: number;
  /** Instance that wrote it. */
  by: string;
}

/** An entity's latest snapshot. */
export interface EntitySnapshot {
  /** Entity type. */
  type: string;
  /** Entity id. */
  id: string;
  /** Round it was written in. */
  round: number;
  /** The CRDT state. */
  state: EntityState;
}

/** An entity to write in a snapshot round. */
export interface SnapshotInput {
  /** Entity type. */
  type: string;
  /** Entity id. */
  id: string;
  /** gzip of the state's JSON ({@linkcode encodeEntityState}). */
  compressed: Uint8Array;
  /** Size of the uncompressed JSON. */
  rawBytes: number;
}

/** An unmergeable conflict to record. */
export interface ConflictInput {
  /** Entity type. */
  entityType: string;
  /** Entity id. */
  entityId: string;
  /** Field. */
  field: string;
  /** Deterministic key (entity, field, sorted dots): recorded once cluster-wide. */
  key: string;
  /** The competing writes. */
  candidates: Json;
  /** The write kept provisionally. */
  winner: Json;
  /** Instance that noticed it. */
  detectedBy: string;
  /** When (the node's clock). */
  detectedAt: Date;
}

/** A recorded conflict. */
export interface ConflictRow {
  /** Row id. */
  id: number;
  /** Entity type. */
  entityType: string;
  /** Entity id. */
  entityId: string;
  /** Field. */
  field: string;
  /** Competing writes. */
  candidates: Json;
  /** Write kept provisionally. */
  winner: Json;
  /** Instance that noticed it. */
  detectedBy: string;
  /** When. */
  detectedAt: Date;
  /** `open` or `resolved`. */
  status: "open" | "resolved";
  /** When resolved. */
  resolvedAt: Date | null;
  /** Who resolved it. */
  resolvedBy: string | null;
  /** The value chosen. */
  resolution: Json | null;
}

/** Compresses an entity state for a snapshot. */
export function encodeEntityState(
  state: EntityState,
): { compressed: Uint8Array; rawBytes: number } {
  const raw = new TextEncoder().encode(JSON.stringify(state));
  return { compressed: gzipSync(raw), rawBytes: raw.length };
}

/** Decompresses a snapshot's state. */
export function decodeEntityState(compressed: Uint8Array): EntityState {
  return JSON.parse(new TextDecoder().decode(gunzipSync(compressed))) as EntityState;
}

function parseBatch(data: unknown, origin: string, seq: number): Batch {
  const parsed = batchSchema.safeParse(data);
  if (!parsed.success || parsed.data.o !== origin || parsed.data.s !== seq) {
    throw new RuntimeError(
      "INTERNAL",
      `Stored sync batch ${origin}#${seq} is unreadable: ${
        parsed.success ? "origin or sequence mismatch" : parsed.error.issues[0]?.message
      }`,
    );
  }
  return parsed.data;
}

/** Registers an origin (idempotent). */
export async function registerOrigin(
  sql: Sql,
  origin: { origin: string; instanceId: string; startedAt: Date },
): Promise<void> {
  try {
    await sql`
      INSERT INTO sync_origins (origin, instance_id, started_at)
      VALUES (${origin.origin}, ${origin.instanceId}, ${origin.startedAt})
      ON CONFLICT (origin) DO NOTHING`;
  } catch (err) {
    rethrowDatabaseError(err, "register sync origin");
  }
}

/** Every registered origin with its persisted sequence number. */
export async function listOrigins(sql: Sql): Promise<OriginRow[]> {
  try {
    const rows = await sql<{ origin: string; instance_id: string; persisted_seq: number }[]>`
      SELECT origin, instance_id, persisted_seq FROM sync_origins ORDER BY origin`;
    return rows.map((r) => ({
      origin: r.origin,
      instanceId: r.instance_id,
      persistedSeq: r.persisted_seq,
    }));
  } catch (err) {
    rethrowDatabaseError(err, "list sync origins");
  }
}

/** Sealed batches of one origin to store (`json` is the batch's JSON text, as published). */
export interface AppendBatchesInput {
  /** The origin that sealed them. */
  origin: string;
  /** Its instance (registers the origin if it is not yet). */
  instanceId: string;
  /** When the origin started (registers the origin if it is not yet). */
  startedAt: Date;
  /** The batches. */
  batches: readonly { seq: number; json: string }[];
}

/**
 * Stores sealed batches of one origin and raises the origin's persisted sequence number,
 * registering the origin if needed, in one transaction: batches sealed before the origin
 * was registered are stored, and counted, like any others.
 */
export async function appendBatches(sql: Sql, input: AppendBatchesInput): Promise<void> {
  const { origin, batches } = input;
  if (!batches.length) return;
  // The JSON texts are spliced into one JSON array parameter (not into the SQL), so the
  // driver does not serialise them a second time.
  const param = "[" + batches.map((b) => `{"s":${b.seq},"b":${b.json}}`).join(",") + "]";
  let high = 0;
  for (const b of batches) if (b.seq > high) high = b.seq;
  try {
    await sql.begin(async (tx) => {
      await tx`
        INSERT INTO event_log (aggregate_type, aggregate_id, version, event_type, event_data)
        SELECT ${BATCH_AGGREGATE}, ${origin}, (e ->> 's')::integer, 'sync.batch', e -> 'b'
        FROM jsonb_array_elements(${param}::text::jsonb) AS e
        ON CONFLICT (aggregate_type, aggregate_id, version) DO NOTHING`;
      await tx`
        INSERT INTO sync_origins (origin, instance_id, started_at, persisted_seq, persisted_at)
        VALUES (${origin}, ${input.instanceId}, ${input.startedAt}, ${high}, now())
        ON CONFLICT (origin) DO UPDATE
        SET persisted_seq = GREATEST(sync_origins.persisted_seq, EXCLUDED.persisted_seq),
            persisted_at = now()`;
    });
  } catch (err) {
    rethrowDatabaseError(err, "store sync batches");
  }
}

/** Stored batches of `origin` among `seqs` (ascending). */
export async function readBatches(
  sql: Sql,
  origin: string,
  seqs: readonly number[],
): Promise<StoredBatch[]> {
  if (!seqs.length) return [];
  const lo = Math.min(...seqs), hi = Math.max(...seqs);
  const wanted = new Set(seqs);
  try {
    const rows = await sql<{ version: number; event_data: unknown }[]>`
      SELECT version, event_data FROM event_log
      WHERE aggregate_type = ${BATCH_AGGREGATE} AND aggregate_id = ${origin}
        AND version BETWEEN ${lo} AND ${hi}
      ORDER BY version`;
    return rows.filter((r) => wanted.has(r.version)).map((r) => ({
      origin,
      seq: r.version,
      batch: parseBatch(r.event_data, origin, r.version),
    }));
  } catch (err) {
    rethrowDatabaseError(err, "read sync batches");
  }
}

/**
 * Every stored batch not covered by `vv` (per origin, ascending), in pages of
 * `pageSize`: what a node replays after loading the snapshots of a checkpoint.
 */
export async function* readBatchesAfter(
  sql: Sql,
  vv: Record<string, number>,
  options: { pageSize?: number; key?: string } = {},
): AsyncGenerator<StoredBatch[]> {
  const vvJson = JSON.stringify(vv);
  const key = options.key ?? null;
  try {
    const cursor = sql<{ origin: string; version: number; event_data: unknown }[]>`
      SELECT o.origin, e.version, e.event_data
      FROM sync_origins o
      CROSS JOIN LATERAL (
        SELECT version, event_data FROM event_log
        WHERE aggregate_type = ${BATCH_AGGREGATE} AND aggregate_id = o.origin
          AND version > COALESCE((${vvJson}::text::jsonb ->> o.origin)::integer, 0)
          AND (${key}::text IS NULL OR event_data -> 'k' ? ${key}::text)
        ORDER BY version
      ) e
      ORDER BY o.origin, e.version`.cursor(options.pageSize ?? 500);
    for await (const rows of cursor) {
      yield rows.map((r) => ({
        origin: r.origin,
        seq: r.version,
        batch: parseBatch(r.event_data, r.origin, r.version),
      }));
    }
  } catch (err) {
    rethrowDatabaseError(err, "read sync batches");
  }
}

/** The latest checkpoint, or null before the first snapshot round. */
export async function latestCheckpoint(sql: Sql): Promise<Checkpoint | null> {
  try {
    const rows = await sql<{ version: number; state: Omit<Checkpoint, "round"> }[]>`
      SELECT version, state FROM snapshots
      WHERE aggregate_type = ${CHECKPOINT_AGGREGATE} AND aggregate_id = ${CHECKPOINT_ID}
      ORDER BY version DESC LIMIT 1`;
    if (!rows.length) return null;
    const s = rows[0].state;
    return { round: rows[0].version, vv: s.vv ?? {}, token: s.token ?? 0, by: s.by ?? "" };
  } catch (err) {
    rethrowDatabaseError(err, "read sync checkpoint");
  }
}

interface SnapshotRow {
  aggregate_type: string;
  aggregate_id: string;
  version: number;
  compressed: Uint8Array | null;
}

function toEntitySnapshot(row: SnapshotRow): EntitySnapshot | null {
  if (!row.compressed) return null;
  return {
    type: row.aggregate_type.slice("sync:".length),
    id: row.aggregate_id,
    round: row.version,
    state: decodeEntityState(row.compressed),
  };
}

/** The latest snapshot of every entity, in pages. */
export async function* loadEntitySnapshots(
  sql: Sql,
  options: { pageSize?: number } = {},
): AsyncGenerator<EntitySnapshot[]> {
  try {
    const cursor = sql<SnapshotRow[]>`
      SELECT DISTINCT ON (aggregate_type, aggregate_id)
        aggregate_type, aggregate_id, version, compressed
      FROM snapshots
      WHERE aggregate_type LIKE 'sync:%' AND encoding = 'gzip'
      ORDER BY aggregate_type, aggregate_id, version DESC`.cursor(options.pageSize ?? 500);
    for await (const rows of cursor) {
      yield rows.map(toEntitySnapshot).filter((s): s is EntitySnapshot => s !== null);
    }
  } catch (err) {
    rethrowDatabaseError(err, "load sync snapshots");
  }
}

/** The latest snapshot of one entity, or null. */
export async function latestEntitySnapshot(
  sql: Sql,
  type: string,
  id: string,
): Promise<EntitySnapshot | null> {
  try {
    const rows = await sql<SnapshotRow[]>`
      SELECT aggregate_type, aggregate_id, version, compressed FROM snapshots
      WHERE aggregate_type = ${snapshotAggregate(type)} AND aggregate_id = ${id}
        AND encoding = 'gzip'
      ORDER BY version DESC LIMIT 1`;
    return rows.length ? toEntitySnapshot(rows[0]) : null;
  } catch (err) {
    rethrowDatabaseError(err, "load sync snapshot");
  }
}

/**
 * Rebuilds one entity from PostgreSQL alone: its latest snapshot plus every later delta
 * (the batches after the latest checkpoint that touch it). Null if it never existed.
 */
export async function rebuildEntity(
  sql: Sql,
  type: string,
  id: string,
  options: { strategy?: EntityStrategy } = {},
): Promise<{ state: EntityState; snapshotRound: number | null; deltas: number } | null> {
  const checkpoint = await latestCheckpoint(sql);
  const snapshot = await latestEntitySnapshot(sql, type, id);
  let state = snapshot?.state ?? emptyEntity();
  const key = entityKey(type, id);
  let deltas = 0;
  for await (const page of readBatchesAfter(sql, checkpoint?.vv ?? {}, { key })) {
    for (const { batch } of page) {
      for (const entry of batch.e) {
        if (entry.k !== key) continue;
        const delta = entryDelta(entry, batch.o);
        if (!delta) continue;
        applyEntityDelta(state, delta, options.strategy);
        deltas++;
      }
    }
  }
  if (!snapshot && deltas === 0) return null;
  // A fresh copy normalises key order, so the result compares equal to a live replica.
  state = mergeEntityStates(emptyEntity(), state, options.strategy).state;
  return { state, snapshotRound: snapshot?.round ?? null, deltas };
}

/**
 * Writes one snapshot round: entity snapshots, the checkpoint `vv` they cover, pruning of
 * older snapshots of those entities and of old checkpoints. Refused (nothing written) when
 * an earlier round was written under a newer fencing token.
 */
export async function writeSnapshotRound(
  sql: Sql,
  round: {
    token: number;
    vv: Record<string, number>;
    by: string;
    entities: readonly SnapshotInput[];
    keepCheckpoints?: number;
  },
): Promise<{ round: number } | { refused: string }> {
  const keep = round.keepCheckpoints ?? 10;
  try {
    return await sql.begin(async (tx) => {
      await tx`SELECT pg_advisory_xact_lock(${SNAPSHOT_LOCK_KEY.toString()}::bigint)`;
      const last = await tx<{ version: number; state: { token?: number; by?: string } }[]>`
        SELECT version, state FROM snapshots
        WHERE aggregate_type = ${CHECKPOINT_AGGREGATE} AND aggregate_id = ${CHECKPOINT_ID}
        ORDER BY version DESC LIMIT 1`;
      const lastToken = last[0]?.state.token ?? 0;
      if (lastToken > round.token) {
        return {
          refused: `round ${last[0].version} was written by ${last[0].state.by} under the ` +
            `newer token ${lastToken} (ours is ${round.token})`,
        };
      }
      const version = (last[0]?.version ?? 0) + 1;
      const CHUNK = 500;
      for (let i = 0; i < round.entities.length; i += CHUNK) {
        const chunk = round.entities.slice(i, i + CHUNK);
        const param = JSON.stringify(chunk.map((e) => ({
          t: snapshotAggregate(e.type),
          i: e.id,
          c: Buffer.from(e.compressed).toString("base64"),
          n: e.rawBytes,
        })));
        await tx`
          INSERT INTO snapshots (aggregate_type, aggregate_id, version, state, encoding, compressed)
          SELECT e ->> 't', e ->> 'i', ${version},
                 jsonb_build_object('format', ${SNAPSHOT_FORMAT}::text, 'encoding', 'gzip',
                                    'rawBytes', (e ->> 'n')::integer),
                 'gzip', decode(e ->> 'c', 'base64')
          FROM jsonb_array_elements(${param}::text::jsonb) AS e
          ON CONFLICT (aggregate_type, aggregate_id, version) DO UPDATE
            SET state = EXCLUDED.state, encoding = EXCLUDED.encoding,
                compressed = EXCLUDED.compressed, created_at = now()`;
        // Only the newest snapshot of an entity is ever read.
        await tx`
          DELETE FROM snapshots s
          USING jsonb_array_elements(${param}::text::jsonb) AS e
          WHERE s.aggregate_type = e ->> 't' AND s.aggregate_id = e ->> 'i'
            AND s.version < ${version}`;
      }
      const state = {
        vv: round.vv,
        token: round.token,
        by: round.by,
        entities: round.entities.length,
      };
      await tx`
        INSERT INTO snapshots (aggregate_type, aggregate_id, version, state)
        VALUES (${CHECKPOINT_AGGREGATE}, ${CHECKPOINT_ID}, ${version}, ${tx.json(state)})`;
      await tx`
        DELETE FROM snapshots
        WHERE aggregate_type = ${CHECKPOINT_AGGREGATE} AND aggregate_id = ${CHECKPOINT_ID}
          AND version <= ${version - keep}`;
      return { round: version };
    });
  } catch (err) {
    rethrowDatabaseError(err, "write sync snapshot round");
  }
}

/** Records conflicts; one already recorded (same key) is left as it is. */
export async function recordConflicts(
  sql: Sql,
  conflicts: readonly ConflictInput[],
): Promise<void> {
  if (!conflicts.length) return;
  const param = conflicts.map((c) => ({
    t: c.entityType,
    i: c.entityId,
    f: c.field,
    k: c.key,
    c: c.candidates,
    w: c.winner,
    b: c.detectedBy,
    a: c.detectedAt.toISOString(),
  }));
  try {
    await sql`
      INSERT INTO sync_conflicts
        (entity_type, entity_id, field, conflict_key, candidates, winner, detected_by, detected_at)
      SELECT e ->> 't', e ->> 'i', e ->> 'f', e ->> 'k', e -> 'c', e -> 'w', e ->> 'b',
             (e ->> 'a')::timestamptz
      FROM jsonb_array_elements(${sql.json(param)}::jsonb) AS e
      ON CONFLICT (conflict_key) DO NOTHING`;
  } catch (err) {
    rethrowDatabaseError(err, "record sync conflicts");
  }
}

interface ConflictDbRow {
  id: string;
  entity_type: string;
  entity_id: string;
  field: string;
  candidates: Json;
  winner: Json;
  detected_by: string;
  detected_at: Date;
  status: "open" | "resolved";
  resolved_at: Date | null;
  resolved_by: string | null;
  resolution: Json | null;
}

function toConflict(r: ConflictDbRow): ConflictRow {
  return {
    id: Number(r.id),
    entityType: r.entity_type,
    entityId: r.entity_id,
    field: r.field,
    candidates: r.candidates,
    winner: r.winner,
    detectedBy: r.detected_by,
    detectedAt: r.detected_at,
    status: r.status,
    resolvedAt: r.resolved_at,
    resolvedBy: r.resolved_by,
    resolution: r.resolution,
  };
}

/** Conflicts, oldest first; `status` filters (default: open ones), `limit` 1–1000. */
export async function listConflicts(
  sql: Sql,
  options: { status?: "open" | "resolved" | "all"; limit?: number } = {},
): Promise<ConflictRow[]> {
  const status = options.status ?? "open";
  const limit = Math.min(Math.max(options.limit ?? 100, 1), 1000);
  try {
    const rows = await sql<ConflictDbRow[]>`
      SELECT * FROM sync_conflicts
      WHERE ${status}::text = 'all' OR status = ${status}
      ORDER BY detected_at, id LIMIT ${limit}`;
    return rows.map(toConflict);
  } catch (err) {
    rethrowDatabaseError(err, "list sync conflicts");
  }
}

/** Marks an open conflict resolved with the chosen value; null if no such open conflict. */
export async function resolveConflict(
  sql: Sql,
  id: number,
  resolution: { value: Json; by: string; at: Date },
): Promise<ConflictRow | null> {
  try {
    const rows = await sql<ConflictDbRow[]>`
      UPDATE sync_conflicts
      SET status = 'resolved', resolved_at = ${resolution.at}, resolved_by = ${resolution.by},
          resolution = ${sql.json({ value: resolution.value } as never)}
      WHERE id = ${id} AND status = 'open'
      RETURNING *`;
    return rows.length ? toConflict(rows[0]) : null;
  } catch (err) {
    rethrowDatabaseError(err, "resolve sync conflict");
  }
}

/** The conflict table over one pool, as the `/state/conflicts` routes use it. */
export interface ConflictStore {
  /** Conflicts, oldest first (see {@linkcode listConflicts}). */
  list(options?: { status?: "open" | "resolved" | "all"; limit?: number }): Promise<ConflictRow[]>;
  /** Resolves an open conflict (see {@linkcode resolveConflict}); null if none is open. */
  resolve(
    id: number,
    resolution: { value: Json; by: string; at: Date },
  ): Promise<ConflictRow | null>;
}

/** The conflict table of `sql` as a {@linkcode ConflictStore}. */
export function conflictStore(sql: Sql): ConflictStore {
  return {
    list: (options) => listConflicts(sql, options),
    resolve: (id, resolution) => resolveConflict(sql, id, resolution),
  };
}
