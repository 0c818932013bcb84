/**
 * Three runtime instances as separate processes on one Redis and one PostgreSQL: the
 * runtime suite of tests/support/cluster_suite.ts (also run against a Redis Cluster by
 * tests/runtime/redis_cluster_test.ts).
 */
import { runClusterSuite } from "./support/cluster_suite.ts";
import { singleRedisTarget } from "./support/redis_target.ts";

Deno.test("cluster of three processes", async (t) => {
  await using redis = await singleRedisTarget();
  await runClusterSuite(t, redis);
});
