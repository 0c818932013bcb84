/**
 * The sync node's engine: the typed module API other code uses (`publish`, `subscribe`,
 * `getSnapshot`, `applyDelta`, caches) and the effects the statechart
 * (machines/sync_node.ts) invokes (`open`, `catchUp`, `repair`, `announce`, `snapshot`).
 *
 * Data path of a write on instance A:
 * 1. `applyDelta` validates, stamps every field with A's hybrid logical clock, applies it
 *    to A's replica at once (read-your-writes) and adds it to the pending batch, where
 *    writes to one entity in one tick coalesce.
 * 2. At the end of the tick (a microtask) the batch is sealed with A's next sequence
 *    number, published on Redis pub/sub (at-most-once), kept in a ring of recent batches,
 *    and queued for PostgreSQL (`event_log`, written in groups).
 * 3. Instance B applies the batch the moment it arrives (the entity state is a CRDT, so
 *    order does not matter) and notices from the sequence number if any batch is missing.
 *    Missing batches, and batches another instance announces that B lacks, are fetched
 *    from PostgreSQL, else from the origin or a peer (`sync.fetch`), else, for an origin
 *    that is gone and that nobody can provide, given up after `giveUpMs` (and caches are
 *    cleared, since invalidations may have been in them).
 *
 * A new or restarted instance loads the latest snapshot of every entity and replays only
 * the batches after the latest checkpoint (store/sync.ts). One instance at a time (the
 * `sync-snapshots` lease) writes snapshot rounds.
 * @module
 */
import { createHash } from "node:crypto";
import {
  applyEntityDelta,
  canonicalJson,
  counterValue,
  emptyEntity,
  type EntityDelta,
  type EntityState,
  type EntityStrategy,
  entityValues,
  fieldStrategy,
  type Json,
  mergeEntityStates,
  type MergeResult,
  newestStamp,
  type VersionVector,
} from "../../lib/crdt.ts";
import {
  type Batch,
  type BatchEntry,
  batchSchema,
  CACHE_RE,
  CHANNEL_RE,
  ENTITY_ID_RE,
  ENTITY_TYPE_RE,
  entityKey,
  entryDelta,
  FIELD_RE,
  parseEntityKey,
} from "../../lib/crdt_batch.ts";
import { type ChannelPattern, parseChannelPattern } from "../../lib/channel_pattern.ts";
import { describeError, RuntimeError } from "../../lib/errors.ts";
import { createHybridClock, type HybridClock } from "../../lib/hlc.ts";
import { type Logger, silentLogger } from "../../lib/log.ts";
import type { MessageBus } from "../../store/bus.ts";
import {
  appendBatches,
  type ConflictInput,
  encodeEntityState,
  latestCheckpoint,
  listOrigins,
  loadEntitySnapshots,
  readBatches,
  readBatchesAfter,
  rebuildEntity,
  recordConflicts,
  registerOrigin,
  type SnapshotInput,
  writeSnapshotRound,
} from "../../store/sync.ts";
import type { Sql } from "../../store/types.ts";
import type {
  SyncCatchUpOutput,
  SyncNodeEvent,
  SyncRepairOutput,
  SyncSnapshotOutput,
} from "../../machines/sync_node.ts";
import type { LeaseCampaign, LeaseManager } from "../runtime/leases.ts";
import type { Transport } from "../runtime/types.ts";
import { createInvalidatingCache, type InvalidatingCache, type LocalCache } from "./cache.ts";
import type { CacheOptions } from "./cache.ts";
import {
  type CounterOp,
  type DeltaInput,
  isPlatformEvent,
  PLATFORM_EVENTS,
  PLATFORM_STRATEGIES,
  platformChange,
} from "./platform.ts";
import { createSequenceTracker } from "./sequences.ts";
import {
  BATCH_CHANNEL,
  type FetchReply,
  fetchReplySchema,
  type FetchRequest,
  type Heads,
  HEADS_CHANNEL,
  headsSchema,
  SYNC_ACTOR,
} from "./wire.ts";

/** An entity as the API shows it. */
export interface EntityView {
  /** Entity type, e.g. `stream`. */
  type: string;
  /** Entity id. */
  id: string;
  /** Field values (counters as numbers). */
  state: Record<string, Json>;
  /** Version vector: writes seen per origin. */
  version: VersionVector;
  /** Time of the newest field write (ISO), or null. */
  updatedAt: string | null;
}

/** How a message reached a subscriber. */
export interface DeliveryInfo {
  /** `event` (published) or `change` (an entity's values changed here). */
  kind: "event" | "change";
  /** Origin that caused it. */
  origin: string;
  /** Its instance. */
  instance: string;
  /** True when it was caused on this instance. */
  local: boolean;
  /** True when it arrived through a repair (late). */
  repaired: boolean;
}

/** Receives published events and entity changes for a pattern. */
export type SyncCallback = (channel: string, data: Json, info: DeliveryInfo) => void;

/** Counters and facts of a node. */
export interface SyncStats {
  origin: string;
  caughtUp: boolean;
  linkUp: boolean;
  snapshotter: boolean;
  entities: number;
  seq: number;
  persistedSeq: number;
  persistBacklog: number;
  missing: number;
  published: number;
  publishFailures: number;
  received: number;
  rejected: number;
  duplicates: number;
  gaps: number;
  repaired: number;
  resynced: number;
  lost: number;
  concurrent: number;
  conflicts: number;
  subscribers: number;
  callbackErrors: number;
  clockSkewed: number;
  ringBytes: number;
}

/** Options of {@linkcode createSyncNode}. */
export interface SyncNodeOptions {
  /** This instance's id. */
  instanceId: string;
  /** PostgreSQL. */
  sql: Sql;
  /** Pub/sub between instances. */
  bus: MessageBus;
  /** Request/reply between instances (repairs). */
  transport: Transport;
  /** Leases (the snapshot role); null: this instance always holds it (single instance). */
  leases?: LeaseManager | null;
  /** Lease time of the snapshot role (ms). */
  leaseTtlMs?: number;
  /** Logger. */
  log?: Logger;
  /** Physical clock (ms) for the hybrid logical clock and timers' bookkeeping. */
  now?: () => number;
  /** Merge strategies per entity type (default: the platform's). */
  strategies?: Record<string, EntityStrategy>;
  /** Entries per batch at most (default 200). */
  batchEntries?: number;
  /** Bytes of JSON per batch at most, one entry excepted (default 32,000). */
  batchBytes?: number;
  /** Bytes of recent batches kept to answer peers' repairs (default 32 MB). */
  ringBytes?: number;
  /** How long a batch of a gone origin may stay missing before it is given up (ms). */
  giveUpMs?: number;
  /** Timeout of a `sync.fetch` request (ms). */
  peerTimeoutMs?: number;
  /** An origin not heard from for this long counts as gone (ms). */
  originLiveMs?: number;
  /** Origin id to use (tests); default `<instanceId>~<random>`. */
  origin?: string;
}

/** The sync node. */
export interface SyncNode {
  /** This instance's id. */
  readonly instanceId: string;
  /** This incarnation's origin id. */
  readonly origin: string;
  /**
   * Publishes an event to subscribers on every instance. Platform events (see
   * actors/sync/platform.ts) are validated and also change their entity.
   */
  publish(channel: string, data: Json): void;
  /** Subscribes to events and entity changes whose channel matches `pattern` (`*`, `?` globs). */
  subscribe(pattern: string, callback: SyncCallback): () => void;
  /** The entity's current state on this instance, or null. */
  getSnapshot(type: string, id: string | number): EntityView | null;
  /** Applies a delta here at once and replicates it; returns the new state. */
  applyDelta(type: string, id: string | number, delta: DeltaInput): EntityView;
  /** Creates (or returns) a cache invalidated on every instance. */
  cache<T>(name: string, options: CacheOptions<T>): InvalidatingCache<T>;
  /** An existing cache by name. */
  findCache<T>(name: string): InvalidatingCache<T> | undefined;
  /** Drops `key` (or `*`) of a cache on every instance, whether or not it exists here. */
  invalidate(cache: string, key: string): void;
  /** Seals pending writes now; resolves once published (and stored, with `persisted`). */
  flush(options?: { persisted?: boolean; timeoutMs?: number }): Promise<void>;
  /** Every entity here (optionally of one type), sorted by key. */
  entities(type?: string): EntityView[];
  /**
   * SHA-256 of the sum of every entity's SHA-256 (`key=values`): equal on instances holding
   * equal state; each call hashes only the entities changed since the previous one.
   */
  digest(type?: string): string;
  /** The entity rebuilt from PostgreSQL alone (latest snapshot + later deltas). */
  rebuild(type: string, id: string | number): Promise<EntityView | null>;
  /** Counters. */
  stats(): SyncStats;
  /** Listens to the node's events for its statechart (gaps, link changes, role). */
  onSignal(listener: (event: SyncNodeEvent) => void): () => void;
  /** Statechart effect: registers the origin and subscribes to pub/sub. */
  open(): Promise<{ origin: string }>;
  /** Statechart effect: loads snapshots and later batches. */
  catchUp(): Promise<SyncCatchUpOutput>;
  /** Statechart effect: fetches missing batches. */
  repair(): Promise<SyncRepairOutput>;
  /** Statechart effect: announces this node's sequences (`want`: ask peers to answer). */
  announce(want?: boolean): Promise<void>;
  /** Statechart effect: writes a snapshot round if this node holds the role. */
  snapshot(): Promise<SyncSnapshotOutput>;
  /** Statechart action after the link came back: clear caches, ask peers to announce. */
  resync(): void;
  /** Answers a peer's `sync.fetch`. */
  serveFetch(request: FetchRequest): FetchReply;
  /** Stops: seals and stores what is pending (bounded wait), leaves pub/sub, resigns. */
  close(): Promise<void>;
}

interface Entity {
  type: string;
  id: string;
  key: string;
  state: EntityState;
  /** SHA-256 of `key=values` as of the last digest (0 before), its share of the digest. */
  hash: bigint;
}

interface Subscription {
  pattern: ChannelPattern;
  callback: SyncCallback;
}

const REPLY_BUDGET = 48_000;
const MAX_DELTA_BYTES = 8192;
const MAX_EVENT_BYTES = 8192;
const PERSIST_GROUP = 200;
const HASH_MASK = (1n << 256n) - 1n;

function randomSuffix(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return Array.from(bytes, (b) => (b % 36).toString(36)).join("");
}

function jsonBytes(value: unknown): number {
  try {
    return JSON.stringify(value)?.length ?? 0;
  } catch {
    return Infinity;
  }
}

/** A FIFO of recent batch JSON by (origin, seq), bounded in bytes. */
function createRing(maxBytes: number) {
  const byOrigin = new Map<string, Map<number, string>>();
  let order: [string, number, number][] = [];
  let head = 0;
  let bytes = 0;
  return {
    add(origin: string, seq: number, json: string): void {
      let m = byOrigin.get(origin);
      if (!m) byOrigin.set(origin, m = new Map());
      if (m.has(seq)) return;
      m.set(seq, json);
      order.push([origin, seq, json.length]);
      bytes += json.length;
      while (bytes > maxBytes && head < order.length) {
        const [o, s, n] = order[head++];
        byOrigin.get(o)?.delete(s);
        bytes -= n;
      }
      if (head > 4096 && head * 2 > order.length) {
        order = order.slice(head);
        head = 0;
      }
    },
    get: (origin: string, seq: number) => byOrigin.get(origin)?.get(seq),
    bytes: () => bytes,
  };
}

/** Creates a sync node; the statechart's effects drive its lifecycle. */
export function createSyncNode(options: SyncNodeOptions): SyncNode {
  const log = options.log ?? silentLogger;
  const now = options.now ?? Date.now;
  const sql = options.sql;
  const bus = options.bus;
  const instanceId = options.instanceId;
  const origin = options.origin ?? `${instanceId}~${randomSuffix()}`;
  const strategies = options.strategies ?? PLATFORM_STRATEGIES;
  const batchEntries = options.batchEntries ?? 200;
  const batchBytes = options.batchBytes ?? 32_000;
  const giveUpMs = options.giveUpMs ?? 30_000;
  const peerTimeoutMs = options.peerTimeoutMs ?? 1000;
  const originLiveMs = options.originLiveMs ?? 5000;
  const clock: HybridClock = createHybridClock({ physical: now });
  const tracker = createSequenceTracker();
  const ring = createRing(options.ringBytes ?? 32 * 1024 * 1024);
  const selfPrefix = `{"v":1,"o":${JSON.stringify(origin)},`;

  const entities = new Map<string, Entity>();
  const dirty = new Set<string>();
  /** Entities changed since the last digest: only they are hashed again. */
  const digestStale = new Set<Entity>();
  /** Per entity type, the sum of its entities' hashes modulo 2^256. */
  const digestSums = new Map<string, bigint>();
  const subscriptions = new Set<Subscription>();
  const matchCache = new Map<string, Subscription[]>();
  const caches = new Map<string, LocalCache<unknown>>();
  const signalListeners = new Set<(e: SyncNodeEvent) => void>();
  /** Instance of each origin. */
  const originInstance = new Map<string, string>();
  /** When each origin was last heard of (heads or batches). */
  const originHeard = new Map<string, number>();
  /** Peers' announcements, by instance. */
  const peers = new Map<string, { origin: string; at: number; contig: Record<string, number> }>();
  /** Entity keys of this origin's batches, for resyncs after the ring dropped them. */
  const ownKeys = new Map<number, string[]>();

  const stats = {
    published: 0,
    publishFailures: 0,
    received: 0,
    rejected: 0,
    duplicates: 0,
    gaps: 0,
    repaired: 0,
    resynced: 0,
    lost: 0,
    concurrent: 0,
    conflicts: 0,
    callbackErrors: 0,
  };

  let lastSeq = 0;
  let persistedSeq = 0;
  let opened = false;
  let caughtUp = false;
  let closed = false;
  let linkUp = true;
  let pendingEntries: BatchEntry[] = [];
  let pendingByKey = new Map<string, BatchEntry>();
  let pendingInvalidations: BatchEntry | null = null;
  let sealScheduled = false;
  let inflightPublishes: Promise<void>[] = [];
  const persistQueue: { seq: number; json: string }[] = [];
  let persisting: Promise<void> | null = null;
  let persistWaiters: { seq: number; resolve: () => void }[] = [];
  const conflictQueue: ConflictInput[] = [];
  let unsubscribers: (() => Promise<void>)[] = [];
  let offResubscribed: (() => void) | null = null;
  let lastAnnounceAt = 0;
  let announceTimer: number | undefined;
  let rejectedLoggedAt = 0;

  // The snapshot role: one writer of snapshot rounds per cluster.
  let roleToken: number | null = options.leases ? null : 0;
  let lastRoundToken: number | null = null;
  let campaign: LeaseCampaign | null = null;

  function signal(event: SyncNodeEvent): void {
    for (const fn of [...signalListeners]) {
      try {
        fn(event);
      } catch (err) {
        log.error("sync signal listener failed", { error: describeError(err) });
      }
    }
  }

  function strategyOf(type: string): EntityStrategy | undefined {
    return strategies[type];
  }

  function getEntity(type: string, id: string): Entity {
    const key = entityKey(type, id);
    let e = entities.get(key);
    if (!e) {
      entities.set(key, e = { type, id, key, state: emptyEntity(), hash: 0n });
      digestStale.add(e);
    }
    return e;
  }

  function view(e: Omit<Entity, "hash">): EntityView {
    let newest = 0;
    for (const f in e.state.f) if (e.state.f[f].w > newest) newest = e.state.f[f].w;
    const values = entityValues(e.state);
    const state: Record<string, Json> = {};
    for (const k of Object.keys(values).sort()) state[k] = values[k];
    return {
      type: e.type,
      id: e.id,
      state,
      version: { ...e.state.vv },
      updatedAt: newest ? new Date(newest).toISOString() : null,
    };
  }

  // ---- subscriptions -----------------------------------------------------------------

  function matching(channel: string): Subscription[] {
    let list = matchCache.get(channel);
    if (!list) {
      list = [...subscriptions].filter((s) => s.pattern.matches(channel));
      if (matchCache.size > 10_000) matchCache.clear();
      matchCache.set(channel, list);
    }
    return list;
  }

  function deliver(channel: string, data: Json, info: DeliveryInfo): void {
    for (const sub of matching(channel)) {
      try {
        sub.callback(channel, data, info);
      } catch (err) {
        stats.callbackErrors++;
        log.error("sync subscriber failed", { channel, error: describeError(err) });
      }
    }
  }

  function notifyChange(e: Entity, changed: string[], info: DeliveryInfo): void {
    if (!changed.length) return;
    const channel = `${e.type}.changed`;
    if (!matching(channel).length) return;
    const changes: Record<string, Json> = {};
    for (const f of changed) {
      changes[f] = e.state.c[f] ? counterValue(e.state.c[f]) : e.state.f[f]?.v ?? null;
    }
    deliver(channel, { type: e.type, id: e.id, changes }, info);
  }

  // ---- conflicts ---------------------------------------------------------------------

  function noteResult(e: Entity, result: MergeResult): void {
    stats.concurrent += result.concurrent;
    digestStale.add(e);
    if (result.changed.length) dirty.add(e.key);
    for (const c of result.conflicts) {
      const dots = [`${c.local.o}@${c.local.d}`, `${c.remote.o}@${c.remote.d}`].sort();
      const candidate = (r: typeof c.local) => ({
        value: r.v,
        origin: r.o,
        dot: r.d,
        hlc: [r.w, r.l],
      });
      conflictQueue.push({
        entityType: e.type,
        entityId: e.id,
        field: c.field,
        key: `${e.key}/${c.field}/${dots.join(",")}`,
        candidates: [candidate(c.local), candidate(c.remote)],
        winner: candidate(c.winner),
        detectedBy: instanceId,
        detectedAt: new Date(now()),
      });
      stats.conflicts++;
      log.warn("unmergeable concurrent writes recorded for manual resolution", {
        entity: e.key,
        field: c.field,
        kept: c.winner.o,
      });
    }
    if (result.conflicts.length) kickPersist();
  }

  // ---- local writes ------------------------------------------------------------------

  function checkType(type: string, id: string | number, action: string): string {
    if (!ENTITY_TYPE_RE.test(type)) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Cannot ${action}: entity type must be 1-32 lower-case letters, digits or _`,
      );
    }
    const sid = String(id);
    if (!ENTITY_ID_RE.test(sid)) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Cannot ${action}: entity id must be 1-128 letters, digits or _ . : @ -`,
      );
    }
    return sid;
  }

  function counterAmount(field: string, op: unknown, current: number, action: string): number {
    const bad = () =>
      new RuntimeError(
        "VALIDATION_FAILED",
        `Cannot ${action}: ${field} is a counter; expected an integer or {"inc": n} / {"dec": n}`,
      );
    if (typeof op === "number") {
      if (!Number.isSafeInteger(op)) throw bad();
      return op - current;
    }
    if (op && typeof op === "object" && !Array.isArray(op)) {
      const o = op as Record<string, unknown>;
      const keys = Object.keys(o);
      if (keys.length !== 1) throw bad();
      const n = o[keys[0]];
      if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 0) throw bad();
      if (keys[0] === "inc") return n;
      if (keys[0] === "dec") return -n;
    }
    throw bad();
  }

  function pendingFor(e: Entity): BatchEntry {
    let entry = pendingByKey.get(e.key);
    const vv = e.state.vv;
    if (!entry) {
      const d = (vv[origin] ?? 0) + 1;
      entry = { k: e.key, d, x: { ...vv } };
      pendingByKey.set(e.key, entry);
      pendingEntries.push(entry);
    } else {
      // Coalesced: the view is the latest one the writer had, minus its own pending dot.
      entry.x = { ...vv, [origin]: entry.d! - 1 };
    }
    return entry;
  }

  function scheduleSeal(): void {
    if (sealScheduled || closed) return;
    sealScheduled = true;
    queueMicrotask(seal);
  }

  /** Validates and applies a delta locally; returns the entity and the pending entry. */
  function writeLocal(
    type: string,
    id: string | number,
    delta: DeltaInput,
    action: string,
  ): { entity: Entity; entry: BatchEntry } {
    const sid = checkType(type, id, action);
    // A plain-object check, not a schema copy: this is the hot path, and every field is
    // checked below; HTTP bodies were already parsed with a schema at the boundary.
    const isObject = typeof delta === "object" && delta !== null && !Array.isArray(delta);
    const fields = isObject ? Object.keys(delta) : [];
    if (fields.length < 1 || fields.length > 64) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Cannot ${action}: the delta must be an object of 1 to 64 fields`,
      );
    }
    if (jsonBytes(delta) > MAX_DELTA_BYTES) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Cannot ${action}: the delta is larger than ${MAX_DELTA_BYTES} bytes of JSON`,
      );
    }
    const strategy = strategyOf(type);
    const e = entities.get(entityKey(type, sid));
    const current = e?.state;
    // Validate every field before changing anything: a delta applies whole or not at all.
    const sets: [string, Json][] = [];
    const counts: [string, number][] = [];
    for (const field of fields) {
      if (!FIELD_RE.test(field)) {
        throw new RuntimeError(
          "VALIDATION_FAILED",
          `Cannot ${action}: field name ${JSON.stringify(field)} is invalid`,
        );
      }
      const value = delta[field];
      const kind = fieldStrategy(strategy, field);
      if (value === undefined) {
        throw new RuntimeError("VALIDATION_FAILED", `Cannot ${action}: ${field} has no value`);
      }
      if (kind === "counter") {
        const cur = current?.c[field] ? counterValue(current.c[field]) : 0;
        counts.push([field, counterAmount(field, value as CounterOp, cur, action)]);
      } else if (kind === "max" && (typeof value !== "number" || !Number.isFinite(value))) {
        throw new RuntimeError("VALIDATION_FAILED", `Cannot ${action}: ${field} must be a number`);
      } else if (kind === "sticky" && typeof value !== "boolean") {
        throw new RuntimeError("VALIDATION_FAILED", `Cannot ${action}: ${field} must be a boolean`);
      } else {
        sets.push([field, value as Json]);
      }
    }
    const entity = getEntity(type, sid);
    const entry = pendingFor(entity);
    const local: EntityDelta = { o: origin, d: entry.d!, x: entry.x!, f: {}, c: {} };
    for (const [field, value] of sets) {
      const ts = clock.now();
      const w: [Json, number, number] = [value, ts.wall, ts.logical];
      (entry.f ??= {})[field] = w;
      local.f![field] = w;
    }
    for (const [field, amount] of counts) {
      if (amount === 0 && entity.state.c[field]) continue;
      const counter = entity.state.c[field] ?? { p: {}, n: {} };
      let p = counter.p[origin] ?? 0, n = counter.n[origin] ?? 0;
      if (amount > 0) p += amount;
      else n -= amount;
      (entry.c ??= {})[field] = [p, n];
      local.c![field] = [p, n];
    }
    const result = applyEntityDelta(entity.state, local, strategy);
    noteResult(entity, result);
    notifyChange(entity, result.changed, {
      kind: "change",
      origin,
      instance: instanceId,
      local: true,
      repaired: false,
    });
    scheduleSeal();
    return { entity, entry };
  }

  function queueInvalidation(cache: string, key: string): void {
    if (!pendingInvalidations) {
      pendingInvalidations = { i: [] };
      pendingEntries.push(pendingInvalidations);
    }
    pendingInvalidations.i!.push([cache, key]);
    if (pendingInvalidations.i!.length >= 256) pendingInvalidations = null;
    scheduleSeal();
  }

  function dropCached(cache: string, key: string): void {
    caches.get(cache)?.drop(key);
  }

  // ---- sealing and publishing ----------------------------------------------------------

  function seal(): void {
    sealScheduled = false;
    if (!pendingEntries.length) return;
    const entries = pendingEntries;
    pendingEntries = [];
    pendingByKey = new Map();
    pendingInvalidations = null;
    let parts: string[] = [];
    let keys: string[] = [];
    let size = 0;
    const emit = () => {
      if (!parts.length) return;
      const seq = ++lastSeq;
      const json = `${selfPrefix}"n":${JSON.stringify(instanceId)},"s":${seq},"e":[${
        parts.join(",")
      }],"k":${JSON.stringify(keys)}}`;
      tracker.record(origin, seq, now());
      ring.add(origin, seq, json);
      ownKeys.set(seq, keys);
      if (ownKeys.size > 200_000) ownKeys.delete(ownKeys.keys().next().value!);
      persistQueue.push({ seq, json });
      publishBatch(json);
      parts = [];
      keys = [];
      size = 0;
    };
    for (const entry of entries) {
      const text = JSON.stringify(entry);
      if (parts.length && (parts.length >= batchEntries || size + text.length > batchBytes)) {
        emit();
      }
      parts.push(text);
      size += text.length + 1;
      if (entry.k) keys.push(entry.k);
    }
    emit();
    kickPersist();
  }

  function markLinkDown(reason: string): void {
    if (!linkUp) return;
    linkUp = false;
    log.warn("sync pub/sub link down; writes continue locally and are stored", { reason });
    signal({ type: "sync.link_down", reason });
  }

  function markLinkUp(): void {
    if (linkUp) return;
    linkUp = true;
    log.info("sync pub/sub link back");
    signal({ type: "sync.link_up" });
  }

  function publishBatch(json: string): void {
    const p = bus.publish(BATCH_CHANNEL, json).then(() => {
      stats.published++;
      markLinkUp();
    }, (err) => {
      stats.publishFailures++;
      markLinkDown(describeError(err));
    });
    inflightPublishes.push(p);
    if (inflightPublishes.length > 1000) inflightPublishes = inflightPublishes.slice(-100);
  }

  // ---- persistence -------------------------------------------------------------------

  function kickPersist(): void {
    if (persisting || !opened) return;
    if (!persistQueue.length && !conflictQueue.length) return;
    persisting = persistLoop().finally(() => {
      persisting = null;
      if ((persistQueue.length || conflictQueue.length) && !closed) kickPersist();
    });
  }

  async function persistLoop(): Promise<void> {
    let failures = 0;
    while (persistQueue.length || conflictQueue.length) {
      try {
        if (persistQueue.length) {
          const group = persistQueue.slice(0, PERSIST_GROUP);
          await appendBatches(sql, origin, group);
          persistQueue.splice(0, group.length);
          persistedSeq = group[group.length - 1].seq;
          const ready = persistWaiters.filter((w) => w.seq <= persistedSeq);
          persistWaiters = persistWaiters.filter((w) => w.seq > persistedSeq);
          for (const w of ready) w.resolve();
        }
        if (conflictQueue.length) {
          const group = conflictQueue.slice(0, 500);
          await recordConflicts(sql, group);
          conflictQueue.splice(0, group.length);
        }
        failures = 0;
      } catch (err) {
        failures++;
        if (failures === 1 || failures % 20 === 0) {
          log.warn("cannot store sync batches; retrying", {
            error: describeError(err),
            backlog: persistQueue.length,
          });
        }
        if (closed && failures >= 3) return;
        await new Promise((r) => setTimeout(r, Math.min(100 * 2 ** Math.min(failures, 6), 5000)));
      }
    }
  }

  // ---- receiving ---------------------------------------------------------------------

  type Source = "live" | "repair" | "catchup";

  /** Applies a batch from another origin; false if it was a duplicate. */
  function ingest(batch: Batch, raw: string | null, source: Source): boolean {
    const o = batch.o;
    if (o === origin) return false;
    originInstance.set(o, batch.n);
    if (source === "live") heardFrom(o);
    if (tracker.seen(o, batch.s)) {
      stats.duplicates++;
      return false;
    }
    const info: DeliveryInfo = {
      kind: "change",
      origin: o,
      instance: batch.n,
      local: false,
      repaired: source === "repair",
    };
    let wall = 0, logical = 0;
    for (const entry of batch.e) {
      const delta = entryDelta(entry, o);
      if (delta) {
        const parsed = parseEntityKey(entry.k!)!;
        const e = getEntity(parsed.type, parsed.id);
        const result = applyEntityDelta(e.state, delta, strategyOf(e.type));
        noteResult(e, result);
        if (source !== "catchup") notifyChange(e, result.changed, info);
        if (delta.f) {
          for (const f in delta.f) {
            const [, w, l] = delta.f[f];
            if (w > wall || (w === wall && l > logical)) {
              wall = w;
              logical = l;
            }
          }
        }
      }
      if (entry.i) { for (const [cache, key] of entry.i) dropCached(cache, key); }
      if (entry.e && source !== "catchup") {
        for (const [channel, data] of entry.e) deliver(channel, data, { ...info, kind: "event" });
      }
    }
    if (wall) clock.receive({ wall, logical });
    const outcome = tracker.record(o, batch.s, now());
    if (raw !== null || source === "repair") {
      ring.add(o, batch.s, raw ?? JSON.stringify(batch));
    }
    if (outcome === "gap") {
      stats.gaps++;
      if (caughtUp) signal({ type: "sync.gap", missing: tracker.totalMissing() });
    }
    return true;
  }

  function reject(what: string, detail: string): void {
    stats.rejected++;
    const t = now();
    if (t - rejectedLoggedAt > 5000) {
      rejectedLoggedAt = t;
      log.warn(`rejected a malformed sync ${what}`, { error: detail, rejected: stats.rejected });
    }
  }

  function onBatchMessage(raw: string): void {
    if (raw.startsWith(selfPrefix)) return;
    stats.received++;
    let json: unknown;
    try {
      json = JSON.parse(raw);
    } catch {
      return reject("batch", "not JSON");
    }
    const parsed = batchSchema.safeParse(json);
    if (!parsed.success) return reject("batch", parsed.error.issues[0]?.message ?? "invalid");
    ingest(parsed.data, raw, "live");
  }

  function onHeadsMessage(raw: string): void {
    let json: unknown;
    try {
      json = JSON.parse(raw);
    } catch {
      return reject("announcement", "not JSON");
    }
    const parsed = headsSchema.safeParse(json);
    if (!parsed.success) {
      return reject("announcement", parsed.error.issues[0]?.message ?? "invalid");
    }
    const h = parsed.data;
    if (h.o === origin) return;
    const t = now();
    peers.set(h.n, { origin: h.o, at: t, contig: h.c });
    originInstance.set(h.o, h.n);
    heardFrom(h.o);
    if (h.w) announceSoon();
    if (!caughtUp) return;
    let revealed = tracker.announce(h.o, h.s, t);
    for (const o in h.c) {
      if (o !== origin && tracker.announce(o, h.c[o], t)) revealed = true;
    }
    if (revealed) {
      stats.gaps++;
      signal({ type: "sync.gap", missing: tracker.totalMissing() });
    }
  }

  /** Notes a sign of life of an origin; batches shelved as lost become missing again. */
  function heardFrom(o: string): void {
    originHeard.set(o, now());
    if (caughtUp && tracker.wake(o)) {
      log.info("an origin given up for gone spoke again; fetching its shelved batches", {
        origin: o,
      });
      signal({ type: "sync.gap", missing: tracker.totalMissing() });
    }
  }

  function announceSoon(): void {
    if (announceTimer !== undefined || closed) return;
    const wait = Math.max(0, 100 - (now() - lastAnnounceAt));
    announceTimer = setTimeout(() => {
      announceTimer = undefined;
      announce().catch(() => {});
    }, wait);
  }

  // ---- repair ------------------------------------------------------------------------

  function originLive(o: string): boolean {
    const heard = originHeard.get(o);
    if (heard === undefined || now() - heard > originLiveMs) return false;
    // A newer incarnation on the same instance means this one is gone.
    const inst = originInstance.get(o);
    const peer = inst ? peers.get(inst) : undefined;
    return !peer || peer.origin === o;
  }

  async function fetchFromPeer(
    instance: string,
    o: string,
    seqs: number[],
  ): Promise<void> {
    const reply = await options.transport.request<unknown>(
      { instance, actor: SYNC_ACTOR },
      { type: "sync.fetch", origin: o, seqs: seqs.slice(0, 500) },
      { timeoutMs: peerTimeoutMs, from: SYNC_ACTOR },
    );
    const parsed = fetchReplySchema.safeParse(reply);
    if (!parsed.success) {
      reject("fetch reply", parsed.error.issues[0]?.message ?? "invalid");
      return;
    }
    for (const b of parsed.data.batches) {
      if (b.o === o && ingest(b, null, "repair")) stats.repaired++;
    }
    for (const { k, state } of parsed.data.entities) {
      const key = parseEntityKey(k);
      if (key) mergeState(key.type, key.id, state, true);
    }
    if (parsed.data.resynced.length) {
      tracker.skip(o, parsed.data.resynced);
      stats.resynced += parsed.data.resynced.length;
    }
  }

  function mergeState(type: string, id: string, state: EntityState, notify: boolean): void {
    // Writes made here after this must order after what the state holds.
    const stamp = newestStamp(state);
    if (stamp) clock.receive(stamp);
    const e = getEntity(type, id);
    const merged = mergeEntityStates(e.state, state, strategyOf(type));
    e.state = merged.state;
    noteResult(e, merged);
    if (notify) {
      notifyChange(e, merged.changed, {
        kind: "change",
        origin: "resync",
        instance: instanceId,
        local: false,
        repaired: true,
      });
    }
  }

  async function repair(): Promise<SyncRepairOutput> {
    let repaired = 0;
    let lost = 0;
    const before = stats.repaired + stats.resynced;
    for (const [o, seqs] of tracker.missing(2000)) {
      if (closed) break;
      try {
        for (const stored of await readBatches(sql, o, seqs)) {
          if (ingest(stored.batch, null, "repair")) stats.repaired++;
        }
      } catch (err) {
        log.warn("cannot read missing batches from the database", {
          origin: o,
          error: describeError(err),
        });
      }
      let left = seqs.filter((s) => !tracker.seen(o, s));
      if (!left.length) continue;
      const candidates: string[] = [];
      const home = originInstance.get(o);
      if (home && home !== instanceId && originLive(o)) candidates.push(home);
      const need = left[left.length - 1];
      for (const [inst, p] of peers) {
        if (inst !== instanceId && !candidates.includes(inst) && (p.contig[o] ?? 0) >= need) {
          candidates.push(inst);
        }
      }
      for (const inst of candidates) {
        try {
          await fetchFromPeer(inst, o, left);
        } catch (err) {
          log.debug("peer could not provide missing batches", {
            peer: inst,
            error: describeError(err),
          });
        }
        left = left.filter((s) => !tracker.seen(o, s));
        if (!left.length) break;
      }
      if (!left.length) continue;
      const since = tracker.missingSince(o);
      if (!originLive(o) && since !== null && now() - since >= giveUpMs) {
        // Nobody has them: the origin is gone, they were never stored, no peer holds them.
        // Shelved, not forgotten: if the origin was only frozen and speaks again, they are
        // fetched after all.
        tracker.shelve(o, left);
        lost += left.length;
        stats.lost += left.length;
        for (const c of caches.values()) c.clear();
        log.warn("gave up missing sync batches: the origin is gone and nobody has them", {
          origin: o,
          batches: left.length,
        });
      }
    }
    repaired = stats.repaired + stats.resynced - before;
    return { repaired, lost, remaining: tracker.totalMissing() };
  }

  function serveFetch(request: FetchRequest): FetchReply {
    const reply: FetchReply = { batches: [], entities: [], resynced: [], missing: [] };
    let budget = REPLY_BUDGET;
    const resyncKeys = new Map<number, string[]>();
    for (const s of request.seqs) {
      const json = ring.get(request.origin, s);
      if (json !== undefined) {
        if (json.length > budget && reply.batches.length) {
          reply.missing.push(s);
          continue;
        }
        budget -= json.length;
        reply.batches.push(JSON.parse(json) as Batch);
      } else if (request.origin === origin && ownKeys.has(s)) {
        resyncKeys.set(s, ownKeys.get(s)!);
      } else {
        reply.missing.push(s);
      }
    }
    // The ring no longer holds these own batches: send the current state of the entities
    // they touched instead, which includes their effect.
    const sent = new Set<string>();
    for (const [s, keys] of resyncKeys) {
      let fits = true;
      for (const k of keys) {
        if (sent.has(k)) continue;
        const e = entities.get(k);
        if (!e) continue;
        const size = jsonBytes(e.state);
        if (size > budget) {
          fits = false;
          break;
        }
        budget -= size;
        sent.add(k);
        reply.entities.push({ k, state: e.state });
      }
      if (fits) reply.resynced.push(s);
      else reply.missing.push(s);
    }
    return reply;
  }

  // ---- announcements -----------------------------------------------------------------

  async function announce(want = false): Promise<void> {
    lastAnnounceAt = now();
    const contig: Record<string, number> = {};
    const vector = tracker.vector();
    const recent = now() - 10 * 60_000;
    for (const o in vector) {
      // Origins heard from lately (and this one): a peer may need them for a repair. Long
      // gone ones are in PostgreSQL and need not ride along every second.
      if (vector[o] > 0 && (o === origin || (originHeard.get(o) ?? 0) > recent)) {
        contig[o] = vector[o];
      }
    }
    const heads: Heads = { v: 1, o: origin, n: instanceId, s: lastSeq, c: contig };
    if (want) heads.w = true;
    try {
      await bus.publish(HEADS_CHANNEL, JSON.stringify(heads));
      markLinkUp();
    } catch (err) {
      markLinkDown(describeError(err));
      throw err;
    }
  }

  // ---- snapshots ---------------------------------------------------------------------

  async function snapshot(): Promise<SyncSnapshotOutput> {
    if (!caughtUp) return { round: null, entities: 0, skipped: "not caught up" };
    const token = roleToken;
    if (token === null) return { round: null, entities: 0, skipped: "not the snapshot holder" };
    // The first round under a token writes every entity: the previous holder's dirty
    // set is unknown here, and the checkpoint must hold for all of them.
    const full = lastRoundToken !== token;
    const keys = full ? [...entities.keys()] : [...dirty];
    // The vector is captured before any state is serialised: states only grow, so each
    // snapshot covers at least the batches the checkpoint claims.
    const vv = tracker.vector();
    for (const o of Object.keys(vv)) if (!vv[o]) delete vv[o];
    for (const k of keys) dirty.delete(k);
    const rows: SnapshotInput[] = [];
    try {
      for (let i = 0; i < keys.length; i++) {
        const e = entities.get(keys[i]);
        if (!e) continue;
        const { compressed, rawBytes } = encodeEntityState(e.state);
        rows.push({ type: e.type, id: e.id, compressed, rawBytes });
        if (i % 200 === 199) await new Promise((r) => setTimeout(r, 0));
      }
      const result = await writeSnapshotRound(sql, { token, vv, by: instanceId, entities: rows });
      if ("refused" in result) {
        for (const k of keys) dirty.add(k);
        lastRoundToken = null;
        log.warn("snapshot round refused", { reason: result.refused });
        return { round: null, entities: 0, skipped: result.refused };
      }
      lastRoundToken = token;
      return { round: result.round, entities: rows.length };
    } catch (err) {
      for (const k of keys) dirty.add(k);
      throw err;
    }
  }

  // ---- lifecycle ---------------------------------------------------------------------

  async function open(): Promise<{ origin: string }> {
    if (!opened) {
      await registerOrigin(sql, { origin, instanceId, startedAt: new Date(now()) });
      opened = true;
      kickPersist();
    }
    if (!unsubscribers.length && !closed) {
      const subs = [
        await bus.subscribe(BATCH_CHANNEL, onBatchMessage),
        await bus.subscribe(HEADS_CHANNEL, onHeadsMessage),
      ];
      unsubscribers = subs;
      offResubscribed = bus.onResubscribed(() => {
        // The subscriber connection was down: anything published meanwhile is lost to us.
        linkUp = false;
        markLinkUp();
      });
    }
    if (options.leases && !campaign && !closed) {
      campaign = options.leases.campaign("sync-snapshots", {
        ttlMs: options.leaseTtlMs,
        onAcquired: (token) => {
          roleToken = token;
          log.info("holding the sync snapshot role", { token });
          signal({ type: "sync.role", held: true });
        },
        onLost: (reason) => {
          roleToken = null;
          log.info("lost the sync snapshot role", { reason });
          signal({ type: "sync.role", held: false });
        },
      });
    }
    return { origin };
  }

  async function catchUp(): Promise<SyncCatchUpOutput> {
    const checkpoint = await latestCheckpoint(sql);
    let loaded = 0;
    for await (const page of loadEntitySnapshots(sql)) {
      for (const s of page) {
        const e = entities.get(entityKey(s.type, s.id));
        if (e) mergeState(s.type, s.id, s.state, true);
        else {
          getEntity(s.type, s.id).state = s.state;
          const stamp = newestStamp(s.state);
          if (stamp) clock.receive(stamp);
        }
        loaded++;
      }
    }
    const origins = await listOrigins(sql);
    for (const o of origins) originInstance.set(o.origin, o.instanceId);
    const vv = checkpoint?.vv ?? {};
    for (const o in vv) if (o !== origin) tracker.cover(o, vv[o]);
    let batches = 0;
    for await (const page of readBatchesAfter(sql, vv)) {
      for (const stored of page) if (ingest(stored.batch, null, "catchup")) batches++;
    }
    const t = now();
    for (const o of origins) {
      if (o.origin !== origin) tracker.announce(o.origin, o.persistedSeq, t);
    }
    caughtUp = true;
    return {
      entities: loaded,
      batches,
      checkpoint: checkpoint?.round ?? null,
      missing: tracker.totalMissing(),
    };
  }

  function resync(): void {
    for (const c of caches.values()) c.clear();
    announce(true).catch(() => {});
  }

  async function flush(opts: { persisted?: boolean; timeoutMs?: number } = {}): Promise<void> {
    seal();
    const target = lastSeq;
    await Promise.all(inflightPublishes);
    inflightPublishes = [];
    if (!opts.persisted || persistedSeq >= target) return;
    const done = new Promise<void>((resolve) => persistWaiters.push({ seq: target, resolve }));
    kickPersist();
    let timer: number | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new RuntimeError(
              "SYNC_UNAVAILABLE",
              `Sync batches were not stored within ${opts.timeoutMs ?? 10_000} ms`,
            ),
          ),
        opts.timeoutMs ?? 10_000,
      );
    });
    try {
      await Promise.race([done, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  async function close(): Promise<void> {
    if (closed) return;
    seal();
    closed = true;
    clearTimeout(announceTimer);
    await Promise.all(inflightPublishes);
    offResubscribed?.();
    for (const off of unsubscribers.splice(0)) await off().catch(() => {});
    if (opened && (persistQueue.length || conflictQueue.length)) {
      // Bounded: a database that is down must not hold up shutdown for ever.
      const loop = persisting ?? persistLoop();
      let timer: number | undefined;
      await Promise.race([
        loop,
        new Promise((r) => timer = setTimeout(r, 5000)),
      ]);
      clearTimeout(timer);
      if (persistQueue.length) {
        log.warn("stopping with sync batches not stored", { batches: persistQueue.length });
      }
    } else {
      await persisting;
    }
    for (const w of persistWaiters) w.resolve();
    persistWaiters = [];
    await campaign?.resign();
    campaign = null;
    signalListeners.clear();
  }

  return {
    instanceId,
    origin,
    publish(channel, data) {
      // The length first: the pattern test then never sees more than 128 characters.
      if (channel.length > 128 || !CHANNEL_RE.test(channel)) {
        throw new RuntimeError(
          "VALIDATION_FAILED",
          `Cannot publish on ${
            JSON.stringify(channel)
          }: a channel is dot-separated lower-case segments`,
        );
      }
      if (channel.endsWith(".changed")) {
        throw new RuntimeError(
          "VALIDATION_FAILED",
          `Cannot publish on ${channel}: *.changed channels carry entity changes only`,
        );
      }
      if (jsonBytes(data) > MAX_EVENT_BYTES) {
        throw new RuntimeError(
          "VALIDATION_FAILED",
          `Cannot publish on ${channel}: the data is larger than ${MAX_EVENT_BYTES} bytes of JSON`,
        );
      }
      const info: DeliveryInfo = {
        kind: "event",
        origin,
        instance: instanceId,
        local: true,
        repaired: false,
      };
      if (isPlatformEvent(channel)) {
        const parsed = PLATFORM_EVENTS[channel].safeParse(data);
        if (!parsed.success) {
          const issue = parsed.error.issues[0];
          throw new RuntimeError(
            "VALIDATION_FAILED",
            `Cannot publish ${channel}: ${issue?.path.join(".") || "data"} ${
              issue?.message ?? "is invalid"
            }`,
          );
        }
        const change = platformChange(channel, data, now());
        const { entity, entry } = writeLocal(
          change.type,
          change.id,
          change.delta,
          `publish ${channel}`,
        );
        if (change.derive) {
          writeLocal(change.type, change.id, change.derive(entityValues(entity.state)), "derive");
        }
        (entry.e ??= []).push([channel, data]);
        for (const [cache, key] of change.invalidate) {
          dropCached(cache, key);
          (entry.i ??= []).push([cache, key]);
        }
      } else {
        pendingEntries.push({ e: [[channel, data]] });
        scheduleSeal();
      }
      deliver(channel, data, info);
    },
    subscribe(pattern, callback) {
      const sub: Subscription = { pattern: parseChannelPattern(pattern), callback };
      subscriptions.add(sub);
      matchCache.clear();
      return () => {
        subscriptions.delete(sub);
        matchCache.clear();
      };
    },
    getSnapshot(type, id) {
      const e = entities.get(entityKey(type, String(id)));
      return e ? view(e) : null;
    },
    applyDelta(type, id, delta) {
      return view(writeLocal(type, id, delta, `apply delta to ${type} ${id}`).entity);
    },
    cache<T>(name: string, cacheOptions: CacheOptions<T>) {
      if (!CACHE_RE.test(name)) {
        throw new RuntimeError("VALIDATION_FAILED", `Invalid cache name ${JSON.stringify(name)}`);
      }
      const existing = caches.get(name);
      if (existing) return existing as InvalidatingCache<T>;
      const created = createInvalidatingCache<T>(name, {
        ...cacheOptions,
        now,
        broadcast: (key) => queueInvalidation(name, key),
      });
      caches.set(name, created as LocalCache<unknown>);
      return created;
    },
    findCache<T>(name: string) {
      return caches.get(name) as InvalidatingCache<T> | undefined;
    },
    invalidate(cache, key) {
      if (!CACHE_RE.test(cache) || !key || key.length > 256) {
        throw new RuntimeError("VALIDATION_FAILED", `Invalid cache invalidation ${cache}/${key}`);
      }
      dropCached(cache, key);
      queueInvalidation(cache, key);
    },
    flush,
    entities(type) {
      return [...entities.values()]
        .filter((e) => !type || e.type === type)
        .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
        .map(view);
    },
    digest(type) {
      // GET /state asks for this and anyone may call it: hashing every entity each time
      // made its cost grow with the whole state. The digest is a sum of per-entity hashes
      // (order-free), so only entities changed since the last call are hashed again.
      for (const e of digestStale) {
        const text = `${e.key}=${canonicalJson(entityValues(e.state))}`;
        const hash = BigInt(`0x${createHash("sha256").update(text).digest("hex")}`);
        const sum = digestSums.get(e.type) ?? 0n;
        digestSums.set(e.type, (sum - e.hash + hash) & HASH_MASK);
        e.hash = hash;
      }
      digestStale.clear();
      let sum = 0n;
      if (type) sum = digestSums.get(type) ?? 0n;
      else for (const s of digestSums.values()) sum = (sum + s) & HASH_MASK;
      return createHash("sha256").update(sum.toString(16).padStart(64, "0")).digest("hex");
    },
    async rebuild(type, id) {
      const sid = checkType(type, id, "rebuild entity");
      const built = await rebuildEntity(sql, type, sid, { strategy: strategyOf(type) });
      return built ? view({ type, id: sid, key: entityKey(type, sid), state: built.state }) : null;
    },
    stats: () => ({
      ...stats,
      origin,
      caughtUp,
      linkUp,
      snapshotter: roleToken !== null,
      entities: entities.size,
      seq: lastSeq,
      persistedSeq,
      persistBacklog: persistQueue.length,
      missing: tracker.totalMissing(),
      subscribers: subscriptions.size,
      clockSkewed: clock.skewed(),
      ringBytes: ring.bytes(),
    }),
    onSignal(listener) {
      signalListeners.add(listener);
      if (roleToken !== null) listener({ type: "sync.role", held: true });
      return () => signalListeners.delete(listener);
    },
    open,
    catchUp,
    repair,
    announce,
    snapshot,
    resync,
    serveFetch,
    close,
  };
}
