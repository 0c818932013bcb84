/**
 * The sync node: the typed module API other code uses (`publish`, `subscribe`,
 * `getSnapshot`, `applyDelta`, caches) over the data plane, and the statechart that drives
 * its lifecycle (`logic`: machines/sync_node.ts with the effects of effects.ts).
 *
 * Where things live:
 * - lifecycle (open, catching up, caught up / repairing, link up / down and resyncs,
 *   announcements, the snapshot role and rounds): the chart's states and context;
 * - the replica (entities, digest, subscribers): entities.ts;
 * - the hot path (writes, batches, publishing, receiving): hot_path.ts;
 * - storing batches and conflicts: persist.ts;
 * - announcements: heads.ts; repairs: repair.ts; snapshots and catch-up: snapshots.ts;
 * - the data they share: state.ts.
 *
 * A new or restarted instance loads the latest snapshot of every entity and replays only
 * the batches after the latest checkpoint (store/sync.ts). One instance at a time (the
 * `sync-snapshots` lease) writes snapshot rounds.
 * @module
 */
import { entityKey } from "../../lib/crdt_batch.ts";
import { CACHE_RE } from "../../lib/crdt_batch.ts";
import type { Json } from "../../lib/crdt.ts";
import { parseChannelPattern } from "../../lib/channel_pattern.ts";
import { RuntimeError } from "../../lib/errors.ts";
import { syncNodeFacts, type SyncSnapshotOutput } from "../../machines/sync_node.ts";
import { createInvalidatingCache, type InvalidatingCache, type LocalCache } from "./cache.ts";
import type { CacheOptions } from "./cache.ts";
import { createSyncNodeLogic, leavePubSub, resignRole, type SyncNodeLogic } from "./effects.ts";
import { announce } from "./heads.ts";
import { digest, entityViews, view } from "./entities.ts";
import { applyLocalDelta, dropCached, publishEvent, queueInvalidation, seal } from "./hot_path.ts";
import { drainStore, waitPersisted } from "./persist.ts";
import type { DeltaInput } from "./platform.ts";
import { serveFetch } from "./repair.ts";
import { rebuild, writeRound } from "./snapshots.ts";
import { createSyncDeps, type Subscription } from "./state.ts";
import type { EntityView, SyncCallback, SyncNodeOptions, SyncStats } from "./types.ts";
import type { FetchReply, FetchRequest } from "./wire.ts";

export type {
  DeliveryInfo,
  EntityView,
  SyncCallback,
  SyncNodeOptions,
  SyncStats,
} from "./types.ts";
export type { SyncNodeLogic } from "./effects.ts";

/** The sync node. */
export interface SyncNode {
  /** This instance's id. */
  readonly instanceId: string;
  /** This incarnation's origin id. */
  readonly origin: string;
  /** The statechart that drives this node's lifecycle, with its effects (run it once). */
  readonly logic: SyncNodeLogic;
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
  /** Counters, and the chart's facts (caught up, link up, snapshot role). */
  stats(): SyncStats;
  /** Announces this node's sequences now (`want`: ask every peer to announce too). */
  announce(want?: boolean): Promise<void>;
  /**
   * Writes a snapshot round now if the chart says this node has caught up and holds the
   * snapshot role (the chart writes one every `snapshotMs` by itself).
   */
  snapshot(): Promise<SyncSnapshotOutput>;
  /** Answers a peer's `sync.fetch`. */
  serveFetch(request: FetchRequest): FetchReply;
  /**
   * Stops, after the chart stopped: seals and stores what is pending (bounded wait),
   * leaves pub/sub, resigns the snapshot role.
   */
  close(): Promise<void>;
}

/** Creates a sync node; its chart (`logic`) drives its lifecycle. */
export function createSyncNode(options: SyncNodeOptions): SyncNode {
  const deps = createSyncDeps(options);
  const d = deps.data;
  const facts = () => syncNodeFacts(deps.chart?.getSnapshot() ?? null);

  return {
    instanceId: deps.instanceId,
    origin: deps.origin,
    logic: createSyncNodeLogic(deps),
    publish: (channel, data) => publishEvent(deps, { channel, data }),
    subscribe(pattern, callback) {
      const sub: Subscription = { pattern: parseChannelPattern(pattern), callback };
      d.subscriptions.add(sub);
      d.matchCache.clear();
      return () => {
        d.subscriptions.delete(sub);
        d.matchCache.clear();
      };
    },
    getSnapshot(type, id) {
      const e = d.entities.get(entityKey(type, String(id)));
      return e ? view(e) : null;
    },
    applyDelta(type, id, delta) {
      const action = `apply delta to ${type} ${id}`;
      return view(applyLocalDelta(deps, { type, id, delta, action }).entity);
    },
    cache<T>(name: string, cacheOptions: CacheOptions<T>) {
      if (!CACHE_RE.test(name)) {
        throw new RuntimeError("VALIDATION_FAILED", `Invalid cache name ${JSON.stringify(name)}`);
      }
      const existing = d.caches.get(name);
      if (existing) return existing as InvalidatingCache<T>;
      const created = createInvalidatingCache<T>(name, {
        ...cacheOptions,
        now: deps.now,
        broadcast: (key) => queueInvalidation(deps, { cache: name, key }),
      });
      d.caches.set(name, created as LocalCache<unknown>);
      return created;
    },
    findCache<T>(name: string) {
      return d.caches.get(name) as InvalidatingCache<T> | undefined;
    },
    invalidate(cache, key) {
      if (!CACHE_RE.test(cache) || !key || key.length > 256) {
        throw new RuntimeError("VALIDATION_FAILED", `Invalid cache invalidation ${cache}/${key}`);
      }
      dropCached(deps, { cache, key });
      queueInvalidation(deps, { cache, key });
    },
    async flush(opts = {}) {
      seal(deps);
      const target = d.outbox.lastSeq;
      await Promise.all(d.outbox.inflight);
      d.outbox.inflight = [];
      if (!opts.persisted) return;
      await waitPersisted(deps, { seq: target, timeoutMs: opts.timeoutMs ?? 10_000 });
    },
    entities: (type) => entityViews(deps, type),
    digest: (type) => digest(deps, type),
    rebuild: (type, id) => rebuild(deps, { type, id }),
    stats() {
      const f = facts();
      return {
        ...d.counters,
        origin: deps.origin,
        caughtUp: f.caughtUp,
        linkUp: f.linkUp,
        snapshotter: f.roleToken !== null,
        entities: d.entities.size,
        seq: d.outbox.lastSeq,
        persistedSeq: d.store.persistedSeq,
        persistBacklog: d.store.queue.length,
        missing: d.tracker.totalMissing(),
        subscribers: d.subscriptions.size,
        clockSkewed: deps.clock.skewed(),
        ringBytes: d.ring.bytes(),
      };
    },
    async announce(want = false) {
      await announce(deps, { want });
    },
    snapshot() {
      const f = facts();
      // A round must cover caught-up state only: its checkpoint tells new nodes to skip
      // every batch it claims.
      if (!f.caughtUp) {
        return Promise.resolve({ round: null, entities: 0, skipped: "not caught up" });
      }
      return writeRound(deps, { token: f.roleToken });
    },
    serveFetch: (request) => serveFetch(deps, request),
    async close() {
      const r = d.resources;
      if (r.status === "closed") return;
      seal(deps);
      r.status = "closed";
      await Promise.all(d.outbox.inflight);
      await leavePubSub(deps);
      await drainStore(deps, { timeoutMs: 5000 });
      await resignRole(deps);
      deps.watch.gaps =
        deps.watch.link =
        deps.watch.role =
        deps.watch.requests =
        deps.watch.moved =
          null;
    },
  };
}
