/**
 * The inbox writer's replica acknowledgement (REDIS_WAIT_REPLICAS): a send succeeds only once
 * that many replicas hold the message, and says so when they do not.
 */
import assert from "node:assert/strict";
import { isRuntimeError } from "../../lib/errors.ts";
import { closeRedis, createKeyspace, createRedisClient } from "../../store/redis.ts";
import { createInboxWriter } from "../../store/redis_inbox.ts";
import { startRedis } from "../harness/mod.ts";
import { redisClusterTarget } from "../support/redis_target.ts";
import { until } from "../support/instance.ts";

function client(url: string) {
  return createRedisClient({
    url,
    sentinels: [],
    sentinelMaster: "mymaster",
    sentinelPassword: null,
    keyPrefix: "inb:",
  }, { name: "inbox-test" });
}

Deno.test("inbox appends wait for replicas when asked", async (t) => {
  await using primary = await startRedis();
  const redis = client(primary.url);
  await redis.connect();
  const keyspace = createKeyspace("inb:");
  try {
    await t.step("without a replica, a send that needs one fails and says why", async () => {
      const writer = createInboxWriter(redis, keyspace, { maxLen: 100, replicas: 1, waitMs: 200 });
      const err = await writer.append("alone", "m1").then(() => null, (e) => e);
      assert.ok(isRuntimeError(err, "REDIS_UNAVAILABLE"), String(err));
      assert.match(err.message, /reached 0 of 1 replicas within 200 ms .*may or may not be/);
      // Not lost either: the master took it (at-least-once may still deliver it).
      assert.equal(await redis.xlen(keyspace.key("inbox", "alone")), 1);
    });

    await t.step("with a replica, the message is on it when the send returns", async () => {
      await using replica = await startRedis({
        args: ["--replicaof", "127.0.0.1", String(primary.port)],
      });
      // Online as the master sees it (the replica says "link up" a little earlier, before
      // the master counts it for WAIT).
      await until(
        async () => /^slave0:.*state=online/m.test(await primary.cli("info", "replication")),
        { what: "the replica online at the master", ms: 20_000 },
      );
      // A generous wait: a busy machine may delay the replica's answer, not its arrival.
      const writer = createInboxWriter(redis, keyspace, {
        maxLen: 100,
        replicas: 1,
        waitMs: 10_000,
      });
      for (let i = 0; i < 5; i++) {
        await writer.append("paired", `m${i}`);
        assert.equal(Number(await replica.cli("xlen", keyspace.key("inbox", "paired"))), i + 1);
      }
      // Without the option nothing waits (the default, unchanged hot path).
      const plain = createInboxWriter(redis, keyspace, { maxLen: 100 });
      await plain.append("paired", "fast");
      assert.equal(await redis.xlen(keyspace.key("inbox", "paired")), 6);
    });
  } finally {
    await closeRedis(redis);
  }
});

Deno.test("on a Redis Cluster an append that waits for replicas follows its slot", async () => {
  await using target = await redisClusterTarget();
  const keyspace = createKeyspace("inb:");
  // No periodic slot-map refresh: after the move the client still sends to the old owner,
  // which answers MOVED to the XADD (WAIT answers anyway: ioredis does not redirect that mix).
  const redis = createRedisClient(target.settings("inb:"), {
    name: "inbox-cluster-test",
    clusterOverrides: { slotsRefreshInterval: 0 },
  });
  await redis.connect();
  try {
    const writer = createInboxWriter(redis, keyspace, { maxLen: 100, replicas: 1, waitMs: 10_000 });
    const key = keyspace.key("inbox", "mover");
    await writer.append("mover", "before");
    const owner = await target.cluster!.moveSlotOf(key);
    await writer.append("mover", "after");
    assert.equal(Number(await owner.cli("xlen", key)), 2, "both on the slot's new owner");
  } finally {
    await closeRedis(redis);
  }
});
