/**
 * The backup concern: the scheduler and the backup service (actors/backup) with the
 * `/backups` routes (api/backup.ts).
 * @module
 */
import { createBackupParts } from "../actors/backup/mod.ts";
import type { BackupService } from "../actors/backup/service.ts";
import type { BackupSettings } from "../actors/backup/settings.ts";
import type { RuntimeServices } from "../actors/runtime/types.ts";
import { addBackupRoutes } from "../api/backup.ts";
import type { Concern } from "./types.ts";

/** Builds the backup concern from the runtime's services and its settings. */
export function createBackupConcern(
  services: RuntimeServices,
  settings: BackupSettings,
): Concern<BackupService> {
  const parts = createBackupParts(services, settings);
  const service = parts.api;
  return {
    actors: parts.actors,
    api: service,
    health: parts.health,
    stop: parts.stop,
    routes(app) {
      addBackupRoutes(app, {
        list: (options) => service.list(options),
        get: (id) => service.get(id),
        availability: service.availability,
        request: parts.request,
      });
    },
  };
}
