/**
 * The sync concern: the sync node and its stream cache (actors/sync) with the `/state`
 * routes (api/sync.ts).
 * @module
 */
import { createSyncParts, type SyncService } from "../actors/sync/mod.ts";
import type { SyncNodeOptions } from "../actors/sync/node.ts";
import type { SyncSettings } from "../actors/sync/settings.ts";
import type { RuntimeServices } from "../actors/runtime/types.ts";
import { addSyncRoutes } from "../api/sync.ts";
import { conflictStore } from "../store/sync.ts";
import type { Concern } from "./types.ts";

/** Options of {@linkcode createSyncConcern} (tests). */
export interface SyncConcernOptions {
  /** Overrides options of the node. */
  node?: Partial<SyncNodeOptions>;
}

/** Builds the sync concern from the runtime's services and its settings. */
export function createSyncConcern(
  services: RuntimeServices,
  settings: SyncSettings,
  options: SyncConcernOptions = {},
): Concern<SyncService> {
  const parts = createSyncParts(services, settings, options.node);
  // Event streams must end for the HTTP server to stop: they follow the runtime's shutdown
  // signal, and this concern's own stop.
  const shutdown = new AbortController();
  return {
    ...parts,
    routes(app, context) {
      addSyncRoutes(app, {
        node: parts.api.node,
        conflicts: conflictStore(services.db.sql),
        sseBuffer: settings.sseBuffer,
        signal: AbortSignal.any([shutdown.signal, context.signal]),
        now: services.now,
        log: services.log.child("http"),
      });
    },
    async stop() {
      shutdown.abort();
      await parts.stop?.();
    },
  };
}
