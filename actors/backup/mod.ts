/**
 * The backup concern's effects: the scheduler actor (a cluster singleton), the backup service
 * the /backups routes use (concerns/backup.ts adds api/backup.ts) and a health fact. Settings
 * are BACKUP_* variables, parsed with the rest of the configuration (./settings.ts).
 *
 * In embedded mode (no DATABASE_URL) there is no PostgreSQL server for pg_dump or
 * pg_basebackup to read, so no scheduler runs; /backups and /health say why.
 * @module
 */
import { describeError, RuntimeError } from "../../lib/errors.ts";
import type { ConcernParts, RuntimeServices } from "../runtime/types.ts";
import { EMBEDDED_REASON } from "./context.ts";
import { BACKUP_ACTOR_ID, SCHEDULER_ROLE, schedulerSpec } from "./scheduler.ts";
import { type BackupService, openBackupService } from "./service.ts";
import type { BackupSettings, BackupType } from "./settings.ts";

/** The backup concern's parts: the service (its API) and how to queue a backup anywhere. */
export interface BackupParts extends ConcernParts<BackupService> {
  /** Queues a backup on whichever instance holds the scheduler lease. */
  request(type: BackupType): Promise<{ instance: string }>;
}

/** Builds the backup concern's service and scheduler from the runtime's services and settings. */
export function createBackupParts(
  services: RuntimeServices,
  settings: BackupSettings,
): BackupParts {
  const log = services.log;
  const embedded = services.db.mode === "embedded";
  const service = openBackupService({
    settings,
    // Where the pool points now, not DATABASE_URL: after a failover (or a start on the
    // published primary) pg_dump must read the server that exported the snapshot.
    databaseUrl: embedded ? null : () => services.db.url,
    sql: services.db.sql,
    secretKey: services.secretKey,
    instanceId: services.instanceId,
    log,
    now: services.now,
  });
  const storage = settings.storage.kind === "local"
    ? `local directory ${settings.storage.dir}`
    : `s3://${settings.storage.bucket}/${settings.storage.prefix}`;
  const scheduled = Object.entries(settings.schedules).filter(([, c]) => c)
    .map(([t, c]) => `${t} "${c}"`).join(", ") || "none";
  if (embedded) {
    log.info(`backups unavailable: ${EMBEDDED_REASON}`);
  } else {
    log.info(`backups to ${storage}; schedules (${settings.timezone}): ${scheduled}`);
  }

  async function request(
    type: BackupType,
    options: { incremental?: boolean } = {},
  ): Promise<{ instance: string }> {
    if (options.incremental && type !== "base") {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `incremental applies to base backups only, not to a ${type} backup`,
      );
    }
    let holder = services.instanceId;
    if (services.leases) {
      const found = await services.leases.holder(SCHEDULER_ROLE);
      if (!found) {
        throw new RuntimeError(
          "BACKUP_UNAVAILABLE",
          "No instance holds the backup scheduler lease right now; try again in a few seconds",
        );
      }
      holder = found.instance;
    }
    return await services.transport.request<{ queued: true; instance: string }>(
      { instance: holder, actor: BACKUP_ACTOR_ID },
      {
        type: "backup.request",
        backupType: type,
        ...(options.incremental ? { incremental: true } : {}),
      },
      { timeoutMs: 5000 },
    );
  }

  return {
    actors: embedded ? [] : [
      schedulerSpec({
        service,
        settings,
        leases: services.leases,
        leaseTtlMs: services.config.cluster.leaseTtlMs,
        transport: services.transport,
        instanceId: services.instanceId,
        log,
        now: services.now,
      }),
    ],
    request,
    async health() {
      if (embedded) return { ok: true, available: false, reason: EMBEDDED_REASON };
      try {
        const [last] = await service.list({ limit: 1 });
        return {
          ok: true,
          available: true,
          storage: settings.storage.kind,
          schedules: settings.schedules,
          last: last
            ? { name: last.name, type: last.type, status: last.status, startedAt: last.startedAt }
            : null,
        };
      } catch (err) {
        return { ok: true, available: true, error: describeError(err) };
      }
    },
    stop() {
      service.close();
      return Promise.resolve();
    },
    // Embedders: runtime.concern<BackupService>("backup") creates, verifies and restores.
    api: service,
  };
}
