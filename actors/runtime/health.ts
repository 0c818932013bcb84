/**
 * The live health check of an instance: the database (critical), Redis, migrations, the
 * supervisor and each concern's own facts, folded into one report for `GET /health`.
 * @module
 */
import type { CoreConfig } from "../../lib/config.ts";
import { driverFaultCounts } from "../../lib/db_errors.ts";
import type { MessageBus } from "../../store/bus.ts";
import type { Database } from "../../store/database.ts";
import type { MigrationReport } from "../../store/migrations.ts";
import { describeRedis, pingRedis, type RedisClient } from "../../store/redis.ts";
import type { Supervisor } from "./supervisor.ts";
import type { HealthFact } from "./types.ts";
import type { MessageAuth } from "../../lib/message_auth.ts";

/** What `/health` reports. */
export interface HealthReport {
  /** ok: all checks pass; degraded: serving, something non-critical is down; unavailable: not serving. */
  status: "ok" | "degraded" | "unavailable";
  instance: string;
  version: string;
  uptimeS: number;
  mode: { database: "postgres" | "embedded"; bus: "redis" | "in-process" };
  /** Features this mode cannot offer, with the reason. */
  unavailable: Record<string, string>;
  checks: Record<string, HealthFact>;
}

/** What the health check looks at. */
export interface HealthInputs {
  /** Core configuration (instance id, Redis target). */
  config: CoreConfig;
  /** Release version. */
  version: string;
  /** The database pool. */
  db: Database;
  /** The Redis command connection, or null in single-instance mode. */
  redis: RedisClient | null;
  /** The message bus. */
  bus: MessageBus;
  /** Migrations applied at start-up. */
  migrations: MigrationReport;
  /** Features this mode cannot offer, with the reason. */
  unavailable: Record<string, string>;
  /** `performance.now()` at start-up. */
  startedAt: number;
  /** The root supervisor (bound once it started). */
  supervisor: () => Supervisor;
  /** Each concern's health facts, by concern name. */
  concerns: readonly (readonly [string, () => Promise<HealthFact>])[];
  /** Seals records in Redis: its counters of refused (forged) records are reported. */
  messageAuth?: MessageAuth;
}

function authFacts(auth: MessageAuth) {
  const s = auth.stats();
  return { refused: s.forgedTotal, refusedByKind: s.forged, rotating: s.rotating };
}

/**
 * Runs the live checks. The database is critical (unavailable → 503); Redis is not
 * (degraded → 200): an instance without Redis still serves what it can from PostgreSQL.
 */
export async function checkHealth(h: HealthInputs): Promise<HealthReport> {
  const { config, db, redis, bus, migrations } = h;
  const sup = h.supervisor().state();
  const [dbCheck, redisCheck, concernChecks] = await Promise.all([
    db.ping(2000),
    redis ? pingRedis(redis, 1000) : Promise.resolve(null),
    Promise.all(
      h.concerns.map(async ([name, health]) => {
        try {
          return [name, await health()] as const;
        } catch (err) {
          return [name, {
            ok: false,
            error: err instanceof Error ? err.message : String(err),
          }] as const;
        }
      }),
    ),
  ]);
  const checks: HealthReport["checks"] = {
    database: {
      ...dbCheck,
      mode: db.mode,
      target: db.describe,
      // Faults of the database driver this process survived, and the pool renewals they
      // (or any lost connection) caused: not failures of the check, evidence for operators.
      renewals: db.renewals,
      driverFaults: driverFaultCounts(),
    },
    redis: redisCheck
      ? {
        ...redisCheck,
        target: describeRedis(config.redis),
        // Records read from Redis whose MAC did not verify: evidence of a hostile writer (or
        // an instance with another RS_SECRET_KEY), not a failure of this instance.
        ...(h.messageAuth ? { authentication: authFacts(h.messageAuth) } : {}),
      }
      : { ok: true, mode: "in-process", note: "single instance, no Redis configured" },
    migrations: {
      ok: migrations.unknown.length === 0,
      applied: migrations.total,
      latest: migrations.latest,
      unknown: migrations.unknown,
    },
    actors: { ok: sup.state === "healthy", state: sup.state, reason: sup.reason },
    ...Object.fromEntries(concernChecks),
  };
  const concernsOk = concernChecks.every(([, c]) => c.ok);
  const status = !dbCheck.ok
    ? "unavailable"
    : (redisCheck && !redisCheck.ok) || migrations.unknown.length || sup.state !== "healthy" ||
        !concernsOk
    ? "degraded"
    : "ok";
  return {
    status,
    instance: config.instanceId,
    version: h.version,
    uptimeS: Math.round((performance.now() - h.startedAt) / 1000),
    mode: { database: db.mode, bus: bus.kind },
    unavailable: h.unavailable,
    checks,
  };
}
