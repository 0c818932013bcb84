/**
 * The failover concern: replication monitoring, failover and switchover (actors/failover)
 * with `GET /replication`, `POST /failover/switchover` and `POST /replication/canary`
 * (api/failover.ts).
 * @module
 */
import { createFailoverParts, type FailoverApi } from "../actors/failover/mod.ts";
import type { FailoverSettings } from "../actors/failover/settings.ts";
import type { RuntimeServices } from "../actors/runtime/types.ts";
import { addFailoverRoutes } from "../api/failover.ts";
import type { Concern } from "./types.ts";

/** Builds the failover concern from the runtime's services and its settings. */
export async function createFailoverConcern(
  services: RuntimeServices,
  settings: FailoverSettings,
): Promise<Concern<FailoverApi>> {
  const parts = await createFailoverParts(services, settings);
  const { api } = parts;
  return {
    ...parts,
    routes(app) {
      addFailoverRoutes(app, {
        unavailable: api.unavailable,
        status: api.status,
        canary: api.canary,
        switchover: api.switchover,
      });
    },
  };
}
