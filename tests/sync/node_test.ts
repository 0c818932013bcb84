/**
 * Sync nodes in one process against a real PostgreSQL and Redis: propagation, platform
 * events, counters, conflicts, loss and repair (from PostgreSQL and from the origin),
 * snapshots and catch-up, cache invalidation across instances.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import type { Json } from "../../lib/crdt.ts";
import { isRuntimeError } from "../../lib/errors.ts";
import { migrate } from "../../store/migrations.ts";
import { latestCheckpoint } from "../../store/sync.ts";
import type { Sql } from "../../store/types.ts";
import { startPostgres } from "../harness/mod.ts";
import {
  redisClusterTarget,
  type RedisTarget,
  singleRedisTarget,
} from "../support/redis_target.ts";
import { startTestNode, type TestNode, type TestNodeOptions, until } from "./support.ts";

Deno.test("sync nodes on PostgreSQL and Redis", async (t) => {
  await using redis = await singleRedisTarget();
  await syncSuite(t, redis);
});

Deno.test("sync nodes on PostgreSQL and a Redis Cluster", async (t) => {
  await using redis = await redisClusterTarget();
  await syncSuite(t, redis);
});

/** The sync node's behaviours on `redis` (single Redis or a cluster). */
async function syncSuite(t: Deno.TestContext, redis: RedisTarget): Promise<void> {
  await using pg = await startPostgres();
  const sql = postgres(await pg.createDatabase(), { max: 8, onnotice: () => {} }) as Sql;
  await migrate(sql);
  const opts = { redis, prefix: "rssync:", sql };
  const nodes: TestNode[] = [];
  const start = async (name: string, extra: Partial<TestNodeOptions> = {}) => {
    const n = await startTestNode(name, { ...opts, ...extra });
    nodes.push(n);
    return n;
  };

  try {
    const a = await start("node-a");
    const b = await start("node-b");
    const A = a.node, B = b.node;

    await t.step("a delta on one instance reaches the other and its subscribers", async () => {
      const seen: { channel: string; data: Json; local: boolean }[] = [];
      const off = B.subscribe("stream.*", (channel, data, info) => {
        seen.push({ channel, data, local: info.local });
      });
      A.applyDelta("stream", 1, { title: "Speedrun", viewers: 5 });
      assert.equal(A.getSnapshot("stream", 1)?.state.title, "Speedrun", "read-your-writes");
      await until(() => B.getSnapshot("stream", 1)?.state.viewers === 5, "propagation");
      assert.deepEqual(B.getSnapshot("stream", 1)?.state, { title: "Speedrun", viewers: 5 });
      assert.deepEqual(seen, [{
        channel: "stream.changed",
        data: { type: "stream", id: "1", changes: { title: "Speedrun", viewers: 5 } },
        local: false,
      }]);
      off();
    });

    await t.step("a bad delta is refused whole, with the field named", () => {
      assert.throws(
        () => A.applyDelta("stream", 1, { title: "ok", viewers: "many" }),
        (e) => isRuntimeError(e, "VALIDATION_FAILED") && /viewers is a counter/.test(e.message),
      );
      assert.equal(A.getSnapshot("stream", 1)?.state.title, "Speedrun", "nothing applied");
      assert.throws(
        () => A.applyDelta("Stream!", 1, { a: 1 }),
        (e) => isRuntimeError(e, "VALIDATION_FAILED"),
      );
      assert.throws(() => A.publish("viewer.joined", { streamId: "x" }), /streamId/);
    });

    await t.step("platform events: delivered everywhere, viewer counts add up", async () => {
      const events: string[] = [];
      const off = B.subscribe("viewer.*", (channel, data) => {
        events.push(`${channel}:${(data as { userId: number }).userId}`);
      });
      A.publish("stream.started", {
        streamId: 2,
        userId: 9,
        bitrate: 6000,
        resolution: "1920x1080",
      });
      // Joins counted on both instances at once: a last-writer-wins field would lose some.
      for (let i = 0; i < 20; i++) {
        (i % 2 ? A : B).publish("viewer.joined", { streamId: 2, userId: 100 + i });
      }
      A.publish("viewer.left", { streamId: 2, userId: 100 });
      await until(
        () =>
          A.getSnapshot("stream", 2)?.state.viewers === 19 &&
          B.getSnapshot("stream", 2)?.state.viewers === 19,
        "viewer counts to converge",
      );
      const s = B.getSnapshot("stream", 2)!.state;
      assert.equal(s.live, true);
      assert.equal(s.resolution, "1920x1080");
      assert.ok((s.peakViewers as number) >= 10, `peak ${s.peakViewers}`);
      // B's own ten joins (delivered locally) and A's ten joins and one leave.
      await until(() => events.length === 21, "events on B");
      assert.ok(events.includes("viewer.left:100"));
      assert.equal(new Set(events).size, 21, "each exactly once");
      off();
    });

    await t.step(
      "concurrent writes of an unmergeable field: recorded once, same winner",
      async () => {
        // Cut both off from each other so the two writes are truly concurrent.
        a.loss.all = b.loss.all = true;
        A.applyDelta("user", 7, { email: "a@example.com", bio: "from a" });
        B.applyDelta("user", 7, { email: "b@example.com" });
        await A.flush({ persisted: true });
        await B.flush({ persisted: true });
        a.loss.all = b.loss.all = false;
        await until(
          () =>
            A.digest("user") === B.digest("user") &&
            B.getSnapshot("user", 7)?.state.bio !== undefined,
          "the user to converge after the partition",
        );
        const winner = A.getSnapshot("user", 7)!.state.email;
        assert.equal(B.getSnapshot("user", 7)!.state.email, winner);
        await until(async () => {
          await A.flush({ persisted: true });
          await B.flush({ persisted: true });
          const rows =
            await sql`SELECT count(*)::int AS n FROM sync_conflicts WHERE entity_id = '7'`;
          return rows[0].n >= 1;
        }, "the conflict row");
        const rows = await sql<{ field: string; status: string; winner: { value: string } }[]>`
        SELECT field, status, winner FROM sync_conflicts WHERE entity_type = 'user' AND entity_id = '7'`;
        assert.equal(rows.length, 1, "both instances noticed it; it is recorded once");
        assert.equal(rows[0].field, "email");
        assert.equal(rows[0].status, "open");
        assert.equal(rows[0].winner.value, winner);
      },
    );

    await t.step(
      "a lost batch is noticed by the next one and repaired from PostgreSQL",
      async () => {
        const before = B.stats();
        b.loss.nextBatches = 1;
        A.applyDelta("stream", 3, { title: "lost?" });
        await A.flush({ persisted: true });
        await until(() => b.loss.nextBatches === 0, "the drop");
        A.applyDelta("stream", 3, { fps: 60 });
        await until(() => B.getSnapshot("stream", 3)?.state.title === "lost?", "the repair");
        assert.ok(B.stats().gaps > before.gaps);
        assert.ok(B.stats().repaired > before.repaired);
      },
    );

    await t.step("losing the last batch is noticed through the heads announcement", async () => {
      b.loss.nextBatches = 1;
      A.applyDelta("stream", 4, { title: "tail" });
      await A.flush({ persisted: true });
      await until(() => B.getSnapshot("stream", 4)?.state.title === "tail", "tail repair");
    });

    await t.step("a batch not stored yet is fetched from the origin (request/reply)", async () => {
      // Block the origin's inserts (reads still work) so PostgreSQL cannot answer.
      const lock = await sql.reserve();
      await lock`BEGIN`;
      await lock`LOCK TABLE event_log IN EXCLUSIVE MODE`;
      try {
        const before = B.stats().repaired;
        b.loss.nextBatches = 1;
        A.applyDelta("stream", 5, { title: "only in A's memory" });
        await A.flush();
        A.applyDelta("stream", 5, { fps: 30 });
        await until(
          () => B.getSnapshot("stream", 5)?.state.title === "only in A's memory",
          "repair from the origin",
        );
        assert.ok(B.stats().repaired > before);
        assert.ok(A.stats().persistBacklog > 0, "it really was not stored yet");
      } finally {
        await lock`ROLLBACK`;
        lock.release();
      }
      await A.flush({ persisted: true });
    });

    await t.step(
      "a batch the origin no longer holds: the affected entities are resynced",
      async () => {
        const d = await start("node-d", { node: { ringBytes: 1 } });
        const lock = await sql.reserve();
        await lock`BEGIN`;
        await lock`LOCK TABLE event_log IN EXCLUSIVE MODE`;
        try {
          const before = B.stats().resynced;
          b.loss.nextBatches = 1;
          d.node.applyDelta("stream", 7, { title: "resync me", viewers: 4 });
          await d.node.flush();
          d.node.applyDelta("stream", 8, { title: "next" });
          await until(
            () => B.getSnapshot("stream", 7)?.state.title === "resync me",
            "the entity resync",
          );
          assert.equal(B.getSnapshot("stream", 7)?.state.viewers, 4);
          assert.ok(B.stats().resynced > before);
        } finally {
          await lock`ROLLBACK`;
          lock.release();
        }
        await d.node.flush({ persisted: true });
      },
    );

    await t.step(
      "batches nobody has are given up, and fetched after all if the origin speaks again",
      async () => {
        const e = await start("node-e");
        const lock = await sql.reserve();
        await lock`BEGIN`;
        await lock`LOCK TABLE event_log IN EXCLUSIVE MODE`;
        const cache = B.cache<string>("gone", { load: () => Promise.resolve("fresh") });
        await cache.get("k");
        try {
          // node-e freezes: no more announcements, no answers to requests, batches unstored;
          // and its next batch reaches nobody.
          e.freeze();
          for (const n of nodes) if (n !== e) n.loss.nextBatches = 1;
          e.node.applyDelta("stream", 10, { title: "unseen" });
          await e.node.flush();
          e.node.applyDelta("stream", 11, { title: "seen" });
          await until(() => B.getSnapshot("stream", 11) !== null, "the second batch");
          await until(() => B.stats().lost >= 1, "giving up", 8000);
          assert.equal(B.getSnapshot("stream", 10), null);
          assert.equal(B.stats().missing, 0, "given up, not missing");
          assert.equal(cache.peek("k"), undefined, "caches are cleared: invalidations may be lost");
        } finally {
          await lock`ROLLBACK`;
          lock.release();
        }
        // It was only frozen: its batches reach the database and it announces itself again.
        await e.node.flush({ persisted: true });
        await e.node.announce();
        await until(() => B.getSnapshot("stream", 10)?.state.title === "unseen", "the late repair");
      },
    );

    await t.step("caches are invalidated on every instance", async () => {
      let version = 1;
      const loads = { a: 0, b: 0 };
      const ca = A.cache<number>("things", { load: () => (loads.a++, Promise.resolve(version)) });
      const cb = B.cache<number>("things", { load: () => (loads.b++, Promise.resolve(version)) });
      assert.equal(await cb.get("x"), 1);
      assert.equal(await cb.get("x"), 1);
      assert.equal(loads.b, 1, "the second read is a cache hit");
      version = 2;
      ca.invalidate("x");
      await until(() => cb.peek("x") === undefined, "the invalidation on B");
      assert.equal(await cb.get("x"), 2);
      // Lost invalidations are repaired like any batch.
      b.loss.nextBatches = 1;
      version = 3;
      A.invalidate("things", "x");
      await A.flush({ persisted: true });
      A.applyDelta("stream", 6, { title: "next batch" });
      await until(() => cb.peek("x") === undefined, "the repaired invalidation");
      assert.equal(await cb.get("x"), 3);
    });

    await t.step("snapshots: compressed, and a new instance catches up from them", async () => {
      // Whoever holds the snapshot role writes a round; force one now.
      await until(() => A.stats().snapshotter || B.stats().snapshotter, "a snapshot holder");
      const holder = A.stats().snapshotter ? A : B;
      const round = await holder.snapshot();
      assert.ok(round.round !== null && round.entities >= 5, JSON.stringify(round));
      const rows = await sql<{ encoding: string; raw: number; stored: number }[]>`
        SELECT encoding, (state ->> 'rawBytes')::int AS raw, octet_length(compressed) AS stored
        FROM snapshots WHERE aggregate_type = 'sync:stream' AND aggregate_id = '2'`;
      assert.equal(rows.length, 1, "one (the latest) snapshot per entity");
      assert.equal(rows[0].encoding, "gzip");
      assert.ok(rows[0].stored < rows[0].raw, `${rows[0].stored} < ${rows[0].raw}`);
      const checkpoint = await latestCheckpoint(sql);
      assert.ok(checkpoint && checkpoint.vv[A.origin] >= 1);

      // Changes after the snapshot are only in the event log.
      A.applyDelta("stream", 2, { title: "after the snapshot" });
      B.publish("viewer.joined", { streamId: 2, userId: 500 });
      await A.flush({ persisted: true });
      await B.flush({ persisted: true });
      const c = await start("node-c");
      const C = c.node;
      await until(() => C.digest() === A.digest() && A.digest() === B.digest(), "C to match");
      assert.equal(C.getSnapshot("stream", 2)?.state.title, "after the snapshot");
      assert.equal(C.getSnapshot("stream", 2)?.state.viewers, 20);
      const caught = c.actor.getSnapshot().context.reason as string;
      assert.match(caught, /caught up from \d+ snapshots and \d+ batches/);
      const [, snaps, batches] = /from (\d+) snapshots and (\d+) batches/.exec(caught)!;
      assert.ok(Number(snaps) >= 5, caught);
      const total =
        await sql`SELECT count(*)::int AS n FROM event_log WHERE aggregate_type = 'sync.batch'`;
      assert.ok(Number(batches) < total[0].n, `replayed ${batches} of ${total[0].n} batches`);
      // And PostgreSQL alone rebuilds the same entity.
      assert.deepEqual((await C.rebuild("stream", 2))?.state, A.getSnapshot("stream", 2)?.state);
    });
  } finally {
    for (const n of nodes.reverse()) await n.close();
    await sql.end();
  }
}
