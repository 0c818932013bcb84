/**
 * Test harness: throw-away PostgreSQL 15 clusters (primaries and streaming replicas)
 * and redis-server processes on free ports, several at once, each a direct child of
 * the test process, stopped by pid on dispose and killed on unload if a test forgot.
 *
 * Servers live under `/dev/shm/rs-harness/<deno pid>-<random>/` (or `/tmp/rs-harness`
 * when /dev/shm is missing or small; `RS_HARNESS_DIR` overrides); directories left by
 * test processes that died are swept (their servers killed) on first use.
 *
 * @example
 * ```ts
 * import { startPostgres, startRedis } from "./harness/mod.ts";
 *
 * Deno.test("example", async () => {
 *   await using pg = await startPostgres();
 *   await using redis = await startRedis();
 *   const url = await pg.createDatabase();
 * });
 * ```
 * @module
 */
export { freePort } from "./ports.ts";
export {
  type PgServer,
  startPostgres,
  type StartPostgresOptions,
  startReplica,
  type StartReplicaOptions,
} from "./postgres.ts";
export { type RedisServer, startRedis, type StartRedisOptions } from "./redis.ts";
export { HarnessError, type HarnessErrorCode } from "./_process.ts";
export {
  CLUSTER_NODE_TIMEOUT_MS,
  type RedisClusterServer,
  startRedisCluster,
} from "./redis_cluster.ts";
export {
  type DeliveredMail,
  type SmtpServer,
  type SmtpTlsOptions,
  type SmtpTlsServer,
  startSmtp,
  startSmtpTls,
} from "./smtp.ts";
