/**
 * The recorded history against a real redis-server: sealed entries stamped with the server
 * clock, forged ones refused, both bounds (size and age), and the recorder batching the
 * inspector's transitions and the transport's messages; then two instances, where a
 * message from one crashes an actor on the other and both the message and the transitions
 * it caused are in the history, with no event payload.
 */
import assert from "node:assert/strict";
import { createHistoryRecorder } from "../../actors/runtime/history.ts";
import { closeRedis, createKeyspace, createRedisClient } from "../../store/redis.ts";
import {
  createHistoryWriter,
  historyLength,
  type HistoryRecord,
  readHistory,
} from "../../store/redis_history.ts";
import { startPostgres, startRedis } from "../harness/mod.ts";
import { until } from "../support/instance.ts";
import { ADMIN_HEADERS } from "../support/auth.ts";
import { testAuth } from "../support/message_auth.ts";
import { type ConsoleNode, fragileSpec, startConsoleNode } from "../console/support.ts";

function transition(n: number, instance = "node-a"): HistoryRecord {
  return {
    k: "transition",
    instance,
    at: 1000 + n,
    seq: n,
    path: "supervisor/x",
    event: `E${n}`,
    state: { s: n },
  };
}

Deno.test("recorded history in a redis stream", async (t) => {
  await using server = await startRedis();
  const redis = createRedisClient({
    url: server.url,
    sentinels: [],
    sentinelMaster: "mymaster",
    sentinelPassword: null,
    keyPrefix: "rs-test:",
  }, { name: "history-test" });
  await redis.connect();
  const keyspace = createKeyspace("rs-hist:");
  const auth = testAuth();
  try {
    await t.step("entries are sealed, stamped with the server clock, read in order", async () => {
      const writer = createHistoryWriter(redis, keyspace, auth, {
        maxEntries: 100_000,
        maxAgeMs: 86_400_000,
      });
      const [seconds] = await redis.time();
      await writer.append([transition(1), transition(2)]);
      const entries = await readHistory(redis, keyspace, auth, { limit: 10 });
      assert.deepEqual(entries.map((e) => e.k === "transition" && e.event), ["E1", "E2"]);
      assert.ok(entries[0].serverAt >= Number(seconds) * 1000, "server clock, not ours");
      const second = entries[1];
      assert.deepEqual(second.k === "transition" && second.state, { s: 2 });
      // Stored sealed: the raw field is the MAC'd form, not bare JSON.
      const raw = await redis.xrange(keyspace.key("history"), "-", "+");
      assert.match(raw[0][1][1], /^rs1\.[A-Za-z0-9_-]{43}\.\{/);
    });

    await t.step("a record written without the key is refused and counted", async () => {
      const before = auth.stats().forgedTotal;
      await redis.xadd(keyspace.key("history"), "*", "r", JSON.stringify(transition(99)));
      const other = testAuth(); // another cluster's key
      await redis.xadd(
        keyspace.key("history"),
        "*",
        "r",
        other.seal("history.record", keyspace.key("history"), JSON.stringify(transition(98))),
      );
      const entries = await readHistory(redis, keyspace, auth, { limit: 100 });
      assert.ok(entries.every((e) => e.k === "transition" && e.seq < 98));
      assert.equal(auth.stats().forgedTotal, before + 2);
    });

    await t.step("the stream is bounded by size (approximately) and by server age", async () => {
      await redis.del(keyspace.key("history"));
      const small = createHistoryWriter(redis, keyspace, auth, {
        maxEntries: 200,
        maxAgeMs: 86_400_000,
      });
      for (let b = 0; b < 10; b++) {
        await small.append(Array.from({ length: 100 }, (_, i) => transition(b * 100 + i)));
      }
      const len = await historyLength(redis, keyspace);
      assert.ok(len >= 200 && len <= 300, `${len} entries kept of 1000 (~200)`);
      const entries = await readHistory(redis, keyspace, auth, { limit: 1000 });
      const newest = entries[entries.length - 1];
      assert.equal(newest.k === "transition" && newest.seq, 999);

      // Age: entries older than maxAgeMs by the server clock go when the next batch lands.
      const last = entries.at(-1)!.serverAt;
      await until(async () => Number((await redis.time())[0]) * 1000 > last + 1000, {
        what: "the server clock to move on",
      });
      const young = createHistoryWriter(redis, keyspace, auth, { maxEntries: 200, maxAgeMs: 500 });
      await young.append([transition(5000)]);
      const left = await readHistory(redis, keyspace, auth, { limit: 1000 });
      assert.deepEqual(left.map((e) => e.k === "transition" && e.seq), [5000]);
      // A writer trims by age at most once per AGE_TRIM_EVERY_MS: a batch a second later does
      // not pay a trim, so the entry past the age bound is still there until the next one.
      const kept = left[0].serverAt;
      await until(async () => Number((await redis.time())[0]) * 1000 > kept + 1000, {
        what: "the server clock to move on",
      });
      await young.append([transition(5001)]);
      const both = await readHistory(redis, keyspace, auth, { limit: 1000 });
      assert.deepEqual(both.map((e) => e.k === "transition" && e.seq), [5000, 5001]);
    });

    await t.step("the recorder batches records and writes them off the caller's path", async () => {
      await redis.del(keyspace.key("history"));
      const writer = createHistoryWriter(redis, keyspace, auth, {
        maxEntries: 100_000,
        maxAgeMs: 86_400_000,
      });
      const batches: number[] = [];
      const recorder = createHistoryRecorder({
        instanceId: "node-a",
        append: async (records) => {
          batches.push(records.length);
          await writer.append(records);
        },
        flushMs: 50,
        batchSize: 64,
      });
      for (let i = 1; i <= 150; i++) {
        recorder.transition({ seq: i, path: "p", event: `E${i}`, state: "s", at: i });
      }
      recorder.message({
        id: "m-1",
        kind: "send",
        from: { instance: "node-b", actor: "runtime" },
        to: "fragile",
        event: "crash",
        sentAt: 5,
      });
      assert.deepEqual(batches, [], "recording never waits for Redis");
      await recorder.close();
      assert.ok(batches.length >= 3 && batches.every((n) => n <= 64), `batches ${batches}`);
      const entries = await readHistory(redis, keyspace, auth, { limit: 1000 });
      assert.equal(entries.length, 151);
      const msg = entries.find((e) => e.k === "message")!;
      assert.deepEqual(
        msg.k === "message" && [msg.from, msg.to, msg.event, msg.id],
        [
          { instance: "node-b", actor: "runtime" },
          { instance: "node-a", actor: "fragile" },
          "crash",
          "m-1",
        ],
      );
      assert.deepEqual(recorder.stats(), {
        recorded: 151,
        written: 151,
        dropped: 0,
        failedBatches: 0,
      });
    });

    await t.step("while writes fail the buffer is bounded and nothing throws", async () => {
      let fail = true;
      const recorder = createHistoryRecorder({
        instanceId: "node-a",
        append: () => fail ? Promise.reject(new Error("redis down")) : Promise.resolve(),
        flushMs: 10,
        batchSize: 10,
        maxBuffered: 50,
      });
      for (let i = 0; i < 80; i++) {
        recorder.transition({ seq: i, path: "p", event: "E", state: 1, at: i });
      }
      await recorder.flush();
      assert.equal(recorder.stats().dropped, 30);
      assert.ok(recorder.stats().failedBatches >= 1);
      fail = false;
      await recorder.close();
      assert.equal(recorder.stats().written, 50);
    });
  } finally {
    await closeRedis(redis);
  }
});

Deno.test("two instances record a message and the transitions it caused", async () => {
  await using pg = await startPostgres();
  await using server = await startRedis();
  const databaseUrl = await pg.createDatabase();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-history-" });
  const nodes: ConsoleNode[] = [];
  try {
    const common = { databaseUrl, dataDir, redisUrl: server.url, concerns: {} };
    nodes.push(await startConsoleNode("node-a", common));
    nodes.push(
      await startConsoleNode("node-b", {
        ...common,
        env: { RS_MAX_RESTARTS: "0" },
        actors: [fragileSpec],
      }),
    );
    const [a] = nodes;
    await until(async () => {
      const body = await (await fetch(`${a.url}/cluster`, { headers: ADMIN_HEADERS })).json();
      return body.members.length === 2;
    }, { what: "both instances in /cluster" });
    await a.rt.transport.send({ instance: "node-b", actor: "fragile" }, {
      type: "crash",
      code: "123456",
    } as never);
    // Read back through node-a's GET /history: the cluster-wide record, not node-b's memory.
    const entries = await until(async () => {
      const res = await fetch(`${a.url}/history?limit=5000`, { headers: ADMIN_HEADERS });
      const body = await res.json() as { entries: Record<string, unknown>[] };
      const degraded = body.entries.some((e) =>
        e.instance === "node-b" && e.path === "supervisor" &&
        JSON.stringify(e.state).includes("degraded")
      );
      return degraded && body.entries;
    }, { what: "node-b's supervisor giving up, in the history" });
    const message = entries.find((e) => e.k === "message" && e.event === "crash");
    assert.ok(message, "the message is recorded");
    assert.deepEqual(message.from, { instance: "node-a", actor: "runtime" });
    assert.deepEqual(message.to, { instance: "node-b", actor: "fragile" });
    assert.ok(!JSON.stringify(entries).includes("123456"), "no event payload is recorded");
    const serverTimes = entries.map((e) => e.serverAt as number);
    assert.deepEqual(serverTimes, [...serverTimes].sort((x, y) => x - y), "in server order");
    assert.ok(entries.some((e) => e.instance === "node-a" && e.k === "transition"));
  } finally {
    for (const node of nodes.reverse()) await node.stop();
    await Deno.remove(dataDir, { recursive: true });
  }
});
