/**
 * The concerns this runtime runs, in start order. Each entry builds its actors, routes
 * and shutdown from the runtime's services (see `Concern` in actors/runtime/types.ts).
 * @module
 */
import type { ConcernFactory } from "./runtime/types.ts";
import { createBackupConcern } from "./backup/mod.ts";
import { createFailoverConcern } from "./failover/mod.ts";
import { createMetricsConcern } from "./metrics/mod.ts";
import { createSessionsConcern } from "./sessions/mod.ts";
import { createSyncConcern } from "./sync/mod.ts";

/** Concern factories by name, in start order. */
export const CONCERNS: Record<string, ConcernFactory> = {
  // First: the others may reach the sync node (getSyncNode) from their factories.
  sync: createSyncConcern,
  sessions: createSessionsConcern,
  failover: createFailoverConcern,
  metrics: createMetricsConcern,
  backup: createBackupConcern,
};
