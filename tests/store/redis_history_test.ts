/**
 * The recorded history against a real redis-server: one sealed entry per batch (split past
 * the byte cap) stamped with the server clock, each record in its place, forged entries
 * refused, both bounds (size in records and age), keyframes found through their index, and the
 * recorder batching the inspector's transitions and the transport's messages; then two
 * instances, where a message from one crashes an actor on the other and both the message and
 * the transitions it caused are in the history, with no event payload, each instance's
 * start-up keyframe is there, and a range longer than a page reads says it was cut.
 */
import assert from "node:assert/strict";
import { createHistoryRecorder } from "../../actors/runtime/history.ts";
import { closeRedis, createKeyspace, createRedisClient } from "../../store/redis.ts";
import {
  createHistoryWriter,
  historyLength,
  type HistoryRecord,
  readHistory,
  readKeyframes,
} from "../../store/redis_history.ts";
import type { ActorView } from "../../actors/runtime/inspector.ts";
import { startPostgres, startRedis } from "../harness/mod.ts";
import { launchInstance, until } from "../support/instance.ts";
import { ADMIN_HEADERS, TEST_ADMIN_TOKEN } from "../support/auth.ts";
import { authFor, testAuth } from "../support/message_auth.ts";
import { type ConsoleNode, fragileSpec, startConsoleNode, TEST_KEY } from "../console/support.ts";

function transition(n: number, instance = "node-a", state: unknown = { s: n }): HistoryRecord {
  return {
    k: "transition",
    instance,
    at: 1000 + n,
    seq: n,
    path: "supervisor/x",
    event: `E${n}`,
    state,
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
    await t.step(
      "one sealed entry per batch, stamped with the server clock, read in order",
      async () => {
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
        // One stream entry holds the batch, sealed once: the raw field is the MAC'd form of a
        // JSON array, not bare JSON; each record's place is the entry's id and its index.
        const raw = await redis.xrange(keyspace.key("history"), "-", "+");
        assert.equal(raw.length, 1);
        assert.match(raw[0][1][1], /^rs1\.[A-Za-z0-9_-]{43}\.\[\{/);
        assert.deepEqual(entries.map((e) => e.entryId), [`${raw[0][0]}.0`, `${raw[0][0]}.1`]);
        // Newest first: the entries backwards and the records in each backwards.
        await writer.append([transition(3), transition(4), transition(5)]);
        const newest = await readHistory(redis, keyspace, auth, { limit: 4, newestFirst: true });
        assert.deepEqual(newest.map((e) => e.k === "transition" && e.seq), [5, 4, 3, 2]);
      },
    );

    await t.step("a batch past the byte cap is split into entries, order kept", async () => {
      await redis.del(keyspace.key("history"));
      const writer = createHistoryWriter(redis, keyspace, auth, {
        maxEntries: 100_000,
        maxAgeMs: 86_400_000,
      }, { maxEntryBytes: 1024 });
      const big = transition(0, "node-a", "x".repeat(3000));
      await writer.append([...Array.from({ length: 30 }, (_, i) => transition(i + 1)), big]);
      const len = await historyLength(redis, keyspace);
      // ~120 bytes a record: 8 a kilobyte, so 4 entries, and the oversized record alone.
      assert.ok(len >= 4 && len <= 6, `${len} entries`);
      const entries = await readHistory(redis, keyspace, auth, { limit: 100 });
      assert.deepEqual(
        entries.map((e) => e.k === "transition" && e.seq),
        [...Array.from({ length: 30 }, (_, i) => i + 1), 0],
      );
      // A legacy entry (one record, before batching) reads as its own first record.
      const id = await redis.xadd(
        keyspace.key("history"),
        "*",
        "r",
        auth.seal("history.record", keyspace.key("history"), JSON.stringify(transition(77))),
      );
      const last = (await readHistory(redis, keyspace, auth, { limit: 1, newestFirst: true }))[0];
      assert.deepEqual([last.entryId, last.k === "transition" && last.seq], [`${id}.0`, 77]);
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

    await t.step(
      "the stream is bounded by size (approximately, in records) and by server age",
      async () => {
        await redis.del(keyspace.key("history"));
        const small = createHistoryWriter(redis, keyspace, auth, {
          maxEntries: 2000,
          maxAgeMs: 86_400_000,
        });
        // 10 records per entry: about 200 entries kept (MAXLEN ~ trims whole nodes of 100).
        for (let b = 0; b < 600; b++) {
          await small.append(Array.from({ length: 10 }, (_, i) => transition(b * 10 + i)));
        }
        const entries = await readHistory(redis, keyspace, auth, { limit: 100_000 });
        assert.ok(
          entries.length >= 2000 && entries.length <= 3100,
          `${entries.length} records kept of 6000 (~2000)`,
        );
        const newest = entries[entries.length - 1];
        assert.equal(newest.k === "transition" && newest.seq, 5999);

        // Age: entries older than maxAgeMs by the server clock go when the next batch lands.
        const last = entries.at(-1)!.serverAt;
        await until(async () => Number((await redis.time())[0]) * 1000 > last + 1000, {
          what: "the server clock to move on",
        });
        const young = createHistoryWriter(redis, keyspace, auth, {
          maxEntries: 2000,
          maxAgeMs: 500,
        });
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
      },
    );

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
        to: { actor: "fragile" },
        event: { type: "crash" },
        sentAt: 5,
      });
      assert.deepEqual(batches, [], "recording never waits for Redis");
      await recorder.close();
      assert.ok(batches.length >= 3 && batches.every((n) => n <= 64), `batches ${batches}`);
      const entries = await readHistory(redis, keyspace, auth, { limit: 1000 });
      assert.equal(entries.length, 151);
      assert.equal(await historyLength(redis, keyspace), batches.length, "one entry per batch");
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

    await t.step(
      "keyframes: recorded at once and periodically, found through the index",
      async () => {
        await redis.del(keyspace.key("history"), keyspace.key("history:keyframes"));
        const writer = createHistoryWriter(redis, keyspace, auth, {
          maxEntries: 100_000,
          maxAgeMs: 86_400_000,
        });
        const view = (path: string, state: unknown, status = "active"): ActorView => ({
          id: path,
          path,
          machine: path === "supervisor" ? "supervisor" : null,
          status,
          state,
          summary: {},
          updatedAt: 0,
        });
        let actors = [view("supervisor", "healthy"), view("gone", "x", "stopped")];
        const recorder = (instanceId: string) =>
          createHistoryRecorder({
            instanceId,
            append: (records) => writer.append(records),
            flushMs: 1,
            keyframes: { everyMs: 20, actors: () => actors },
          });
        const a = recorder("node-a");
        const b = recorder("node-b");
        a.keyframe();
        b.keyframe();
        await a.flush();
        await b.flush();
        const first = await readKeyframes(redis, keyspace, auth, { windowMs: 60_000 });
        assert.deepEqual(
          first.map((k) => k.k === "keyframe" && [k.instance, k.actors]).sort(),
          [
            ["node-a", [{ path: "supervisor", machine: "supervisor", state: "healthy" }]],
            ["node-b", [{ path: "supervisor", machine: "supervisor", state: "healthy" }]],
          ],
          "the running actors, stopped ones left out",
        );
        // Periodic ones follow without being asked; each instance's newest is the answer.
        actors = [view("supervisor", "degraded")];
        const newer = await until(async () => {
          const now = await readKeyframes(redis, keyspace, auth, { windowMs: 60_000 });
          return now.length === 2 &&
            now.every((k) => k.k === "keyframe" && k.actors[0].state === "degraded") && now;
        }, { what: "a periodic keyframe of each instance" });
        await a.close();
        await b.close();
        // At or before a moment: the newest keyframe then, not the newest of all.
        const at = Math.min(...newer.map((k) => k.serverAt)) - 1;
        const newest = Math.max(...newer.map((k) => k.serverAt));
        const before = await readKeyframes(redis, keyspace, auth, { to: at, windowMs: 60_000 });
        assert.ok(before.length >= 1 && before.every((k) => k.serverAt <= at));
        const first0 = first.find((k) => k.instance === "node-a")!;
        const thenA = await readKeyframes(redis, keyspace, auth, {
          to: first0.serverAt,
          windowMs: 60_000,
        });
        assert.deepEqual(
          thenA.find((k) => k.instance === "node-a")?.entryId,
          first0.entryId,
        );
        // Only the window before the moment is opened: an instance silent for longer than it
        // (node-a and node-b stopped; node-c alone writes) was not alive then.
        await until(async () => Number((await redis.time())[0]) * 1000 > newest + 1500, {
          what: "the server clock to pass the window",
        });
        const c = recorder("node-c");
        c.keyframe();
        await c.flush();
        await c.close();
        const recent = await readKeyframes(redis, keyspace, auth, { windowMs: 1000 });
        assert.deepEqual(recent.map((k) => k.instance), ["node-c"]);
        const wide = await readKeyframes(redis, keyspace, auth, { windowMs: 60_000 });
        assert.deepEqual(wide.map((k) => k.instance).sort(), ["node-a", "node-b", "node-c"]);
        // The keyframes are records of the stream like the others.
        const all = await readHistory(redis, keyspace, auth, { limit: 1000 });
        assert.ok(all.some((r) => r.entryId === first0.entryId && r.k === "keyframe"));
        // The index is trimmed by age with the stream.
        const last = Math.max(...all.map((r) => r.serverAt));
        await until(async () => Number((await redis.time())[0]) * 1000 > last + 1000, {
          what: "the server clock to move on",
        });
        const young = createHistoryWriter(redis, keyspace, auth, {
          maxEntries: 2000,
          maxAgeMs: 500,
        });
        await young.append([transition(1)]);
        assert.equal(await redis.zcard(keyspace.key("history:keyframes")), 0);
        assert.deepEqual(await readKeyframes(redis, keyspace, auth, { windowMs: 60_000 }), []);
      },
    );

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

    // Each instance recorded a keyframe at start: every actor, moved or not.
    const keyframes = await (await fetch(`${a.url}/history?keyframes=1`, {
      headers: ADMIN_HEADERS,
    })).json() as { entries: { instance: string; actors: { path: string }[] }[] };
    assert.deepEqual(keyframes.entries.map((k) => k.instance).sort(), ["node-a", "node-b"]);
    for (const k of keyframes.entries) {
      assert.ok(k.actors.some((x) => x.path === "supervisor"), JSON.stringify(k));
    }
  } finally {
    for (const node of nodes.reverse()) await node.stop();
    await Deno.remove(dataDir, { recursive: true });
  }
});

// The instance runs as its own process: the test reads nothing large from Redis itself (a reply
// of hundreds of KB makes ioredis's parser start a module-wide buffer-shrinking interval that
// outlives the test by a second or two, node_modules/redis-parser/lib/parser.js).
Deno.test("a range longer than one read is cut at its oldest end, and the page and report say so", async () => {
  await using pg = await startPostgres();
  await using server = await startRedis();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-history-" });
  const node = await launchInstance({
    DATABASE_URL: await pg.createDatabase(),
    REDIS_URL: server.url,
    RS_SECRET_KEY: TEST_KEY,
    RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
    RS_DATA_DIR: dataDir,
    RS_KEY_PREFIX: "rscut:",
    RS_INSTANCE_ID: "node-a",
    RS_PORT: "0",
    LOG_LEVEL: "warn",
  });
  const redis = createRedisClient({
    url: server.url,
    sentinels: [],
    sentinelMaster: "mymaster",
    sentinelPassword: null,
    keyPrefix: "rs-test:",
  }, { name: "history-cut-test" });
  await redis.connect();
  try {
    const keyspace = createKeyspace("rscut:");
    const writer = createHistoryWriter(redis, keyspace, authFor(TEST_KEY), {
      maxEntries: 100_000,
      maxAgeMs: 86_400_000,
    });
    const [s0] = await redis.time();
    const from = Number(s0) * 1000 - 1;
    await writer.append(Array.from({ length: 5100 }, (_, i) => transition(i, "node-c", `s${i}`)));
    const [s1, us1] = await redis.time();
    const at = Number(s1) * 1000 + Math.ceil(Number(us1) / 1000) + 1000;
    const get = async (path: string) =>
      await (await fetch(`${node.url}${path}`, { headers: ADMIN_HEADERS })).text();
    const page = await get(`/?from=${from}&at=${at}&instance=node-c&actor=supervisor/x`);
    assert.match(
      page,
      /data-truncated="5000"><strong>Range truncated<\/strong>: showing the last 5,000 events/,
    );
    assert.match(page, />s5099</, "node-c's actor in its last state");
    const report = await get(`/console/export?from=${from}&to=${at}`);
    assert.match(report, /Range truncated<\/strong>: showing the last 5,000 events/);
    // The events nearest the moment are the ones kept: the report's timeline (its newest 500
    // rows) holds s5000, which a range cut at its newest end (s0…s4999) would not.
    assert.match(report, />s5000</);
    // A range that fits is not marked.
    const fits = await get(`/?from=${from - 60_000}&at=${from}`);
    assert.match(fits, /data-time-control/);
    assert.doesNotMatch(fits, /Range truncated/);
  } finally {
    await closeRedis(redis);
    await node.stop();
    await Deno.remove(dataDir, { recursive: true });
  }
});
