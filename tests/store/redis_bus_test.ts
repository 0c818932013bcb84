import assert from "node:assert/strict";
import { createLocalBus, createRedisBus, type MessageBus } from "../../store/bus.ts";
import {
  closeRedis,
  createKeyspace,
  createRedisClient,
  pingRedis,
  type RedisSettings,
} from "../../store/redis.ts";
import { startRedis } from "../harness/mod.ts";
import { redisClusterTarget } from "../support/redis_target.ts";
import { until } from "../support/instance.ts";
import { testAuth } from "../support/message_auth.ts";

function settings(url: string, prefix = "rs-test:"): RedisSettings {
  return {
    url,
    sentinels: [],
    sentinelMaster: "mymaster",
    sentinelPassword: null,
    keyPrefix: prefix,
  };
}

/** Subscribes to `channel`; once subscribed, `message()` waits for the first message on it. */
async function nextMessage(bus: MessageBus, channel: string) {
  const got: string[] = [];
  const unsubscribe = await bus.subscribe(channel, (msg) => got.push(msg));
  return {
    async message(): Promise<string> {
      const first = await until(() => got[0], { what: `a message on ${channel}` });
      await unsubscribe();
      return first;
    },
  };
}

Deno.test("keyspace builds namespaced names and refuses bad parts", () => {
  const ks = createKeyspace("rs:");
  assert.equal(ks.key("session", "abc"), "rs:session:abc");
  assert.equal(ks.key("stream", 12, "viewers"), "rs:stream:12:viewers");
  assert.equal(ks.channel("cluster", "node-1"), "rs:ch:cluster:node-1");
  assert.throws(() => ks.key(), /at least one part/);
  assert.throws(() => ks.key("a", ""), /Invalid Redis key part/);
  assert.throws(() => ks.key("a b"), /Invalid Redis key part/);
  assert.throws(() => ks.key("a\r\nFLUSHALL"), /Invalid Redis key part/);
});

Deno.test("in-process bus delivers asynchronously and survives a throwing handler", async () => {
  const bus = createLocalBus();
  const got: string[] = [];
  await bus.subscribe("c", () => {
    throw new Error("boom");
  });
  const off = await bus.subscribe("c", (m) => got.push(m));
  const published = bus.publish("c", "one");
  assert.deepEqual(got, [], "delivery is not synchronous");
  await published;
  await new Promise((r) => setTimeout(r, 0));
  assert.deepEqual(got, ["one"]);
  assert.equal(bus.stats().handlerErrors, 1);
  await off();
  await bus.publish("c", "two");
  await new Promise((r) => setTimeout(r, 0));
  assert.deepEqual(got, ["one"]);
  await bus.close();
});

Deno.test("redis client and bus against a real redis-server", async (t) => {
  await using redis = await startRedis();
  const a = createRedisClient(settings(redis.url), { name: "test-a" });
  const b = createRedisClient(settings(redis.url), { name: "test-b" });
  await a.connect();
  await b.connect();
  const auth = testAuth();
  const busA = createRedisBus(a, { keyspace: createKeyspace("rs-test:"), auth });
  const busB = createRedisBus(b, { keyspace: createKeyspace("rs-test:"), auth });
  try {
    await t.step("health probe answers PONG", async () => {
      const h = await pingRedis(a);
      assert.equal(h.ok, true);
    });

    await t.step("a message published on one connection reaches the other", async () => {
      // Subscribed before publishing: pub/sub keeps nothing for late subscribers.
      const received = await nextMessage(busB, "greetings");
      await busA.publish("greetings", "hello");
      assert.equal(await received.message(), "hello");
      // The wire name carries the namespace prefix.
      const channels = await redis.cli("PUBSUB", "CHANNELS", "*");
      assert.doesNotMatch(channels, /^greetings$/m);
    });

    await t.step("per-publisher order is kept", async () => {
      const got: string[] = [];
      const off = await busB.subscribe("ordered", (m) => got.push(m));
      for (let i = 0; i < 200; i++) await busA.publish("ordered", String(i));
      await until(() => got.length === 200, {
        what: "200 messages on busB",
        state: () => `${got.length} received`,
      });
      assert.deepEqual(got, Array.from({ length: 200 }, (_, i) => String(i)));
      await off();
    });

    await t.step(
      "publishes of one tick go out together, in order, each with its count",
      async () => {
        const got: string[] = [];
        const off = await busB.subscribe("burst", (m) => got.push(m));
        // Made in one synchronous run: written as one pipeline.
        const counts = await Promise.all([
          ...Array.from({ length: 50 }, (_, i) => busA.publish("burst", String(i))),
          busA.publish("nobody-listens", "lost"),
        ]);
        assert.deepEqual(counts, [...Array(50).fill(1), 0]);
        await until(() => got.length === 50, { what: "the burst on busB" });
        assert.deepEqual(got, Array.from({ length: 50 }, (_, i) => String(i)));
        // A bad channel name rejects its own publish only.
        const [bad, good] = await Promise.allSettled([
          busA.publish("bad name", "x"),
          busA.publish("burst", "after"),
        ]);
        assert.equal(bad.status, "rejected");
        assert.deepEqual(good, { status: "fulfilled", value: 1 });
        await off();
      },
    );

    await t.step("a throwing handler is counted and others still receive", async () => {
      const got: string[] = [];
      const off1 = await busB.subscribe("poison", () => {
        throw new Error("handler bug");
      });
      const off2 = await busB.subscribe("poison", (m) => got.push(m));
      await busA.publish("poison", "x");
      await until(() => got.length === 1, { what: "the message on the healthy subscription" });
      assert.ok(busB.stats().handlerErrors >= 1);
      await off1();
      await off2();
    });

    await t.step("after redis restarts, every subscription is restored", async () => {
      const got: string[] = [];
      const off = await busB.subscribe("durable-sub", (m) => got.push(m));
      let resubscribed = 0;
      busB.onResubscribed(() => resubscribed++);
      await redis.kill("SIGKILL");
      await redis.start();
      await until(() => resubscribed > 0, { what: "busB resubscribing", ms: 20_000 });
      await until(async () => (await pingRedis(a)).ok, {
        what: "client a reconnected",
        ms: 20_000,
      });
      await busA.publish("durable-sub", "after-restart");
      await until(() => got.includes("after-restart"), {
        what: "the message published after the restart",
      });
      assert.equal(busB.stats().resubscribes, 1);
      await off();
    });
  } finally {
    await busA.close();
    await busB.close();
    await closeRedis(a);
    await closeRedis(b);
  }
});

Deno.test("bus on a Redis Cluster: sharded pub/sub, back after a failover and a resharding", async (t) => {
  await using redis = await redisClusterTarget();
  const cluster = redis.cluster!;
  const ks = createKeyspace("rs-test:");
  const a = createRedisClient(redis.settings("rs-test:"), { name: "test-a" });
  const b = createRedisClient(redis.settings("rs-test:"), { name: "test-b" });
  await a.connect();
  await b.connect();
  const auth = testAuth();
  const busA = createRedisBus(a, { keyspace: ks, auth });
  const busB = createRedisBus(b, { keyspace: ks, auth });
  let resubscribed = 0;
  busB.onResubscribed(() => resubscribed++);
  /** Publishes on busA until busB's handler got one (pub/sub keeps nothing meanwhile). */
  async function delivered(channel: string, got: string[], what: string) {
    let n = 0;
    await until(async () => {
      await busA.publish(channel, `${what} ${n++}`);
      return got.some((m) => m.startsWith(what));
    }, { what: `a message on ${channel} ${what}`, ms: 30_000, state: () => got });
  }
  try {
    await t.step("messages cross over sharded pub/sub, on the channel's shard only", async () => {
      const received = await nextMessage(busB, "greetings");
      await busA.publish("greetings", "hello");
      assert.equal(await received.message(), "hello");
      const got: string[] = [];
      const off = await busB.subscribe("sharded", (m) => got.push(m));
      const owner = await cluster.masterOf(ks.channel("sharded"));
      assert.equal(
        await owner.cli("PUBSUB", "SHARDNUMSUB", ks.channel("sharded")),
        `${ks.channel("sharded")}\n1`,
        "subscribed on the shard that owns the channel's slot",
      );
      for (const node of cluster.nodes) {
        assert.equal(await node.cli("PUBSUB", "CHANNELS", "*"), "", "no cluster-wide channel");
      }
      for (let i = 0; i < 50; i++) await busA.publish("sharded", String(i));
      await until(() => got.length === 50, { what: "50 messages", state: () => got.length });
      assert.deepEqual(got, Array.from({ length: 50 }, (_, i) => String(i)), "in order");
      await off();
    });

    await t.step(
      "the channel's master killed: subscribed again on the promoted replica",
      async () => {
        const got: string[] = [];
        const off = await busB.subscribe("durable", (m) => got.push(m));
        const master = await cluster.masterOf(ks.channel("durable"));
        const before = resubscribed;
        await master.kill("SIGKILL");
        await cluster.waitHealthy({ exclude: [master] });
        await until(() => resubscribed > before, { what: "busB resubscribing", ms: 30_000 });
        await delivered("durable", got, "after failover");
        const owner = await cluster.masterOf(ks.channel("durable"));
        assert.notEqual(owner.port, master.port);
        assert.equal(
          await owner.cli("PUBSUB", "SHARDNUMSUB", ks.channel("durable")),
          `${ks.channel("durable")}\n1`,
        );
        await master.start();
        await cluster.waitHealthy();
        await off();
      },
    );

    await t.step("the channel's slot moved to another master: followed there", async () => {
      const got: string[] = [];
      const off = await busB.subscribe("moving", (m) => got.push(m));
      const key = ks.key("moving", "k");
      await a.set(key, "v");
      const from = await cluster.masterOf(ks.channel("moving"));
      const to = await cluster.moveSlotOf(ks.channel("moving"));
      assert.notEqual(to.port, from.port);
      await delivered("moving", got, "after resharding");
      assert.equal(
        await to.cli("PUBSUB", "SHARDNUMSUB", ks.channel("moving")),
        `${ks.channel("moving")}\n1`,
      );
      // Commands follow the slot too (MOVED handled by the client).
      const moved = await cluster.moveSlotOf(key);
      assert.equal(await a.get(key), "v");
      assert.equal(await a.set(key, "w"), "OK");
      assert.equal(await moved.cli("GET", key), "w");
      await off();
    });
  } finally {
    await busA.close();
    await busB.close();
    await closeRedis(a);
    await closeRedis(b);
  }
});

Deno.test("a handler that re-subscribes while handling a message: the new handler gets only later ones", async () => {
  // One handler is called without copying the set per message; a handler added during that
  // call must still not receive the message being delivered.
  const bus = createLocalBus();
  const got: string[] = [];
  let offFirst: (() => Promise<void>) | null = null;
  offFirst = await bus.subscribe("c", (m) => {
    got.push(`first:${m}`);
    void offFirst!();
    void bus.subscribe("c", (m2) => void got.push(`second:${m2}`));
  });
  await bus.publish("c", "1");
  await until(() => Promise.resolve(got.length >= 1), { what: "the first message handled" });
  await bus.publish("c", "2");
  await until(() => Promise.resolve(got.length >= 2), { what: "the second message handled" });
  assert.deepEqual(got, ["first:1", "second:2"]);
  await bus.close();
});
