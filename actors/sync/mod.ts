/**
 * The sync concern's effects: the sync node (actors/sync/node.ts) driven by its statechart
 * (machines/sync_node.ts) and the `streams` cache invalidated on every instance.
 * concerns/sync.ts adds the `/state` routes (api/sync.ts).
 *
 * A concern that needs the node gets the {@linkcode SyncService} as a typed argument of its
 * factory (concerns/mod.ts builds sync first and passes it on) to publish events, follow
 * entities and create caches:
 *
 * ```ts
 * const sessions = sync.node.cache("sessions", { load: (id) => findSession(sql, id) });
 * // after revoking: sessions.invalidate(id) — or publish("session.revoked", {...}),
 * // which also invalidates `sessions` on every instance.
 * ```
 * @module
 */
import type { SyncNodeContext } from "../../machines/sync_node.ts";
import { getStreamById, onStreamChange, type Stream } from "../../store/streams.ts";
import type { ActorSpec, ConcernParts, RuntimeServices } from "../runtime/types.ts";
import type { InvalidatingCache } from "./cache.ts";
import { createSyncNode, type SyncNode, type SyncNodeOptions } from "./node.ts";
import { originLiveMs, type SyncSettings } from "./settings.ts";
import { type FetchRequest, fetchRequestSchema, SYNC_ACTOR } from "./wire.ts";

export type { SyncSettings } from "./settings.ts";

/** The sync service of one runtime: the node and the stream cache. */
export interface SyncService {
  /** The node (publish, subscribe, getSnapshot, applyDelta, caches). */
  node: SyncNode;
  /** Streams by id (as a string), read through and invalidated on every instance. */
  streams: InvalidatingCache<Stream | null>;
}

/** The registry entry of the sync actor: the statechart with the node's effects. */
export function syncActorSpec(node: SyncNode, settings: Partial<SyncSettings> = {}): ActorSpec {
  return {
    id: SYNC_ACTOR,
    chart: "sync_node",
    create: () => node.logic,
    input: () => ({
      instanceId: node.instanceId,
      headsMs: settings.headsMs,
      keepAliveMs: settings.keepAliveMs,
      snapshotMs: settings.snapshotMs,
      repairRetryMs: settings.repairRetryMs,
    }),
    summarize: (snapshot) => {
      const ctx = (snapshot as unknown as { context: SyncNodeContext }).context;
      const s = node.stats();
      return {
        origin: ctx.origin,
        entities: s.entities,
        seq: s.seq,
        missing: s.missing,
        repaired: ctx.repaired,
        lost: ctx.lost,
        snapshotter: ctx.roleToken !== null,
        snapshotRounds: ctx.snapshotRounds,
        reason: ctx.reason,
      };
    },
    requests: {
      "sync.fetch": {
        schema: fetchRequestSchema,
        handle: (event) => Promise.resolve(node.serveFetch(event as FetchRequest)),
      },
    },
  };
}

/**
 * The sync concern's node, stream cache and actor from the runtime's services and the sync
 * settings; `node` overrides options of the node (tests).
 */
export function createSyncParts(
  runtime: RuntimeServices,
  settings: SyncSettings,
  node: Partial<SyncNodeOptions> = {},
): ConcernParts<SyncService> {
  const sync = createSyncNode({
    instanceId: runtime.instanceId,
    sql: runtime.db.sql,
    bus: runtime.bus,
    transport: runtime.transport,
    leases: runtime.leases,
    leaseTtlMs: runtime.config.cluster.leaseTtlMs,
    log: runtime.log,
    now: runtime.now,
    giveUpMs: settings.giveUpMs,
    // Whether a peer is alive is membership's; an origin silent for three keep-alives is
    // gone too (its instance heartbeats, its sync node does not).
    members: runtime.members ?? null,
    originLiveMs: originLiveMs(settings),
    ...node,
  });
  const streams = sync.cache<Stream | null>("streams", {
    load: (id) => getStreamById(runtime.db.sql, Number(id)),
  });
  const offStreams = onStreamChange(runtime.db.sql, (c) => streams.invalidate(String(c.id)));

  return {
    api: { node: sync, streams },
    actors: [syncActorSpec(sync, settings)],
    health() {
      const s = sync.stats();
      return Promise.resolve({
        // Catching up after a start is normal, not degraded; a lost Redis link or a
        // database that does not take the batches is.
        ok: s.linkUp && s.persistBacklog < 10_000,
        origin: s.origin,
        caughtUp: s.caughtUp,
        linkUp: s.linkUp,
        entities: s.entities,
        missing: s.missing,
        persistBacklog: s.persistBacklog,
        snapshotter: s.snapshotter,
      });
    },
    async stop() {
      offStreams();
      await sync.close();
    },
  };
}
