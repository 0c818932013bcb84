import assert from "node:assert/strict";
import { Redis } from "ioredis";
import {
  applyDelta,
  CHANGE_LOG_MAX,
  createMemberStore,
  encodeStreamId,
  type MemberDelta,
  membersKey,
  membersLogKey,
  VERSION_MEMBER,
} from "../../store/redis_membership.ts";
import { closeRedis, createKeyspace, createRedisClient } from "../../store/redis.ts";
import { startRedis } from "../harness/mod.ts";
import { until } from "../support/instance.ts";
import { testAuth } from "../support/message_auth.ts";

Deno.test("membership as a change stream on a real Redis", async (t) => {
  await using redis = await startRedis();
  const client = createRedisClient({
    url: redis.url,
    sentinels: [],
    sentinelMaster: "mymaster",
    sentinelPassword: null,
    keyPrefix: "rs-mt:",
  }, { name: "membership-test" });
  await client.connect();
  const raw = new Redis(redis.url);
  const ks = createKeyspace("rs-mt:");
  const auth = testAuth();
  const store = createMemberStore(client, ks, { deadAfterMs: 60_000, auth });
  const info = (id: string) => JSON.stringify({ id, url: `http://${id}` });
  /** A node's view, kept the way the cluster-node chart keeps it. */
  function viewer() {
    let members: string[] = [];
    let cursor: string | null = null;
    return {
      take(d: MemberDelta) {
        members = applyDelta(cursor === null ? [] : members, d);
        cursor = d.cursor;
        return members;
      },
      get cursor() {
        return cursor;
      },
    };
  }

  /** XRANGE calls this Redis ran so far. */
  async function xranges(): Promise<number> {
    const stats = await raw.info("commandstats");
    return Number(/cmdstat_xrange:calls=(\d+)/.exec(stats)?.[1] ?? 0);
  }
  /** Two members joined and caught up, each at the stream's newest entry. */
  async function pair() {
    await raw.flushall();
    const a = viewer(), b = viewer();
    a.take(await store.heartbeat("a", info("a"), null));
    b.take(await store.heartbeat("b", info("b"), null));
    a.take(await store.heartbeat("a", null, a.cursor));
    return { a, b };
  }

  try {
    await t.step("a join is a full read; later beats return only the changes", async () => {
      const a = viewer();
      const first = await store.heartbeat("a", info("a"), null);
      assert.equal(first.mode, "full");
      assert.equal(first.rejoined, true);
      assert.equal(first.wrote, true);
      assert.deepEqual(a.take(first), ["a"]);
      const b = viewer();
      assert.deepEqual(b.take(await store.heartbeat("b", info("b"), null)), ["a", "b"]);
      const next = await store.heartbeat("a", null, a.cursor);
      assert.equal(next.mode, "delta");
      assert.deepEqual(next.changes, [{ op: "join", id: "b" }]);
      assert.equal(next.wrote, false);
      assert.deepEqual(a.take(next), ["a", "b"]);
      const quiet = await store.heartbeat("a", null, a.cursor);
      assert.deepEqual(quiet.changes, [], "nothing new");
      assert.deepEqual(await store.infos(["a", "b"]), [info("a"), info("b")]);
    });

    await t.step("a departure (remove) reaches the others as a change", async () => {
      const a = viewer();
      a.take(await store.heartbeat("a", null, null));
      await store.remove("b");
      const d = await store.changes(a.cursor);
      assert.deepEqual(d.changes, [{ op: "leave", id: "b" }]);
      assert.deepEqual(a.take(d), ["a"]);
      assert.deepEqual(await store.infos(["b"]), [null]);
    });

    await t.step("a silent member is reaped by anyone's heartbeat and reported", async () => {
      const a = viewer();
      a.take(await store.heartbeat("a", null, null));
      // "ghost" last beat 2 minutes ago by the server's clock (the window is 60 s).
      const [sec] = await raw.time();
      await raw.zadd(membersKey(ks), Number(sec) * 1000 - 120_000, "ghost");
      const beat = await store.heartbeat("a", null, a.cursor);
      assert.equal(beat.wrote, true, "the reaper announces what it appended");
      assert.deepEqual(beat.changes, [{ op: "leave", id: "ghost" }]);
      assert.equal(await raw.zscore(membersKey(ks), "ghost"), null);
      assert.deepEqual(a.take(beat), ["a"]);
    });

    await t.step("a trimmed or lost cursor is a gap: the answer is a full read", async () => {
      const a = viewer();
      a.take(await store.heartbeat("a", null, null));
      const stale = a.cursor!;
      await raw.xtrim(membersLogKey(ks), "MAXLEN", 0);
      await store.heartbeat("c", info("c"), null);
      const d = await store.heartbeat("a", null, stale);
      assert.equal(d.mode, "full", JSON.stringify({ stale, d }));
      assert.deepEqual(a.take(d), ["a", "c"]);
      // Redis lost everything: the next beat re-adds the member and says so.
      await raw.flushall();
      const again = await store.heartbeat("a", null, a.cursor);
      assert.equal(again.rejoined, true);
      assert.equal(again.mode, "full", JSON.stringify(again));
      assert.equal(again.mode, "full");
      assert.deepEqual(a.take(again), ["a"]);
    });

    await t.step("one heartbeat costs the same commands at 3 and at 300 members", async () => {
      async function commandsPerBeat(n: number): Promise<number> {
        await raw.flushall();
        const views = Array.from({ length: n }, (_, i) => ({ id: `m${i}`, v: viewer() }));
        for (const m of views) m.v.take(await store.heartbeat(m.id, info(m.id), null));
        for (const m of views) m.v.take(await store.heartbeat(m.id, null, m.v.cursor));
        await raw.config("RESETSTAT");
        for (const m of views) m.v.take(await store.heartbeat(m.id, null, m.v.cursor));
        const stats = await raw.info("stats");
        const total = Number(/total_commands_processed:(\d+)/.exec(stats)![1]);
        // Minus the INFO itself.
        return (total - 1) / n;
      }
      const small = await commandsPerBeat(3);
      const large = await commandsPerBeat(300);
      assert.equal(small, large, `${small} vs ${large} commands per heartbeat`);
      // EVALSHA + TIME + ZADD + ZRANGEBYSCORE (the reap, which also reads the version).
      assert.ok(small <= 4, `${small} commands per heartbeat`);
    });

    await t.step("an idle heartbeat reads no XRANGE, and still sees every change", async () => {
      const { a, b } = await pair();
      const before = await xranges();
      for (let i = 0; i < 20; i++) {
        const d = await store.heartbeat(i % 2 ? "a" : "b", null, (i % 2 ? a : b).cursor);
        assert.deepEqual([d.mode, d.changes, d.wrote], ["delta", [], false]);
        (i % 2 ? a : b).take(d);
      }
      assert.equal(await xranges() - before, 0, "idle beats ran XRANGE");
      // The sentinel holds minus the newest entry's id, encoded exactly.
      assert.equal(
        Number(await raw.zscore(membersKey(ks), VERSION_MEMBER)),
        -encodeStreamId(a.cursor!)!,
      );

      // A join, a reap and a remove are each seen by the next heartbeat of another member.
      await store.heartbeat("c", info("c"), null);
      let d = await store.heartbeat("a", null, a.cursor);
      assert.deepEqual([d.mode, d.changes], ["delta", [{ op: "join", id: "c" }]]);
      assert.deepEqual(a.take(d), ["a", "b", "c"]);
      const [sec] = await raw.time();
      await raw.zadd(membersKey(ks), Number(sec) * 1000 - 120_000, "c");
      d = await store.heartbeat("b", null, b.cursor);
      assert.deepEqual([d.mode, d.changes, d.wrote], ["delta", [
        { op: "join", id: "c" },
        { op: "leave", id: "c" },
      ], true]);
      assert.deepEqual(b.take(d), ["a", "b"]);
      d = await store.heartbeat("a", null, a.cursor);
      assert.deepEqual([d.mode, d.changes], ["delta", [{ op: "leave", id: "c" }]]);
      a.take(d);
      await store.remove("b");
      d = await store.heartbeat("a", null, a.cursor);
      assert.deepEqual([d.mode, d.changes], ["delta", [{ op: "leave", id: "b" }]]);
      assert.deepEqual(a.take(d), ["a"]);
      // Caught up again: idle.
      const caught = await xranges();
      assert.deepEqual((await store.heartbeat("a", null, a.cursor)).changes, []);
      assert.equal(await xranges(), caught);
    });

    await t.step("a trimmed cursor or a lost stream is still a full read", async () => {
      let { a } = await pair();
      await raw.xtrim(membersLogKey(ks), "MAXLEN", 0);
      await store.heartbeat("c", info("c"), null);
      let d = await store.heartbeat("a", null, a.cursor);
      assert.equal(d.mode, "full");
      assert.deepEqual(a.take(d), ["a", "b", "c"]);
      ({ a } = await pair());
      await raw.del(membersLogKey(ks));
      // A new stream's ids restart from the server's clock: in the cursor's own millisecond its
      // first entry would reuse the cursor's id (main reads that as "nothing after the cursor"
      // too), so this waits for the next millisecond.
      const cursorMs = Number(a.cursor!.split("-")[0]);
      await until(async () => {
        const [sec, us] = await raw.time();
        return Number(sec) * 1000 + Math.floor(Number(us) / 1000) > cursorMs;
      }, { what: "the Redis clock past the cursor's millisecond", everyMs: 1 });
      // Nothing changed in the set: an empty delta is still right.
      assert.deepEqual((await store.heartbeat("a", null, a.cursor)).changes, []);
      await store.remove("b");
      d = await store.heartbeat("a", null, a.cursor);
      assert.equal(d.mode, "full");
      assert.deepEqual(a.take(d), ["a"]);
    });

    await t.step("without the sentinel a heartbeat reads the stream, then sets it", async () => {
      const { a } = await pair();
      await raw.zrem(membersKey(ks), VERSION_MEMBER);
      await store.heartbeat("c", info("c"), null);
      // An append that did not set the sentinel (as an older version's would).
      await raw.zrem(membersKey(ks), VERSION_MEMBER);
      const before = await xranges();
      const d = await store.heartbeat("a", null, a.cursor);
      assert.deepEqual([d.mode, d.changes], ["delta", [{ op: "join", id: "c" }]]);
      a.take(d);
      assert.equal(await xranges() - before, 1, "read the stream");
      assert.notEqual(await raw.zscore(membersKey(ks), VERSION_MEMBER), null, "set again");
      assert.deepEqual((await store.heartbeat("a", null, a.cursor)).changes, []);
      assert.equal(await xranges() - before, 1, "idle again");
    });

    await t.step("an older version's departure of the sentinel is no change", async () => {
      const { a } = await pair();
      // What an older version's reap does with the sentinel: a dead member to it.
      await raw.zrem(membersKey(ks), VERSION_MEMBER);
      await raw.xadd(membersLogKey(ks), "*", "l", VERSION_MEMBER);
      const before = await xranges();
      let d = await store.heartbeat("a", null, a.cursor);
      assert.deepEqual([d.mode, d.changes], ["delta", []]);
      assert.deepEqual(a.take(d), ["a", "b"]);
      // Not set again while an older version would remove it at its next beat.
      assert.equal(await raw.zscore(membersKey(ks), VERSION_MEMBER), null);
      assert.deepEqual((await store.heartbeat("a", null, a.cursor)).changes, []);
      assert.equal(await xranges() - before, 2);
      // A full read does not list it either, even with a forged live score.
      const [sec] = await raw.time();
      await raw.zadd(membersKey(ks), Number(sec) * 1000, VERSION_MEMBER);
      d = await store.heartbeat("a", null, null);
      assert.equal(d.mode, "full");
      assert.deepEqual(a.take(d), ["a", "b"]);
      assert.deepEqual((await store.live()).map((m) => m.id).sort(), ["a", "b"]);
      await assert.rejects(store.heartbeat(VERSION_MEMBER, null, null), /reserved/);
    });

    await t.step(
      "an older version's remove is read after its notice (the upgrade window)",
      async () => {
        const { a } = await pair();
        // An older version's REMOVE appends without setting the sentinel.
        await raw.zrem(membersKey(ks), "b");
        await raw.xadd(membersLogKey(ks), "*", "l", "b");
        // The heartbeat trusts the stale sentinel (docs/scaling.md, "Rolling upgrade") ...
        assert.deepEqual((await store.heartbeat("a", null, a.cursor)).changes, []);
        // ... and the change read its notice triggers always reads the stream.
        const d = await store.changes(a.cursor);
        assert.deepEqual(d.changes, [{ op: "leave", id: "b" }]);
        assert.deepEqual(a.take(d), ["a"]);
      },
    );

    await t.step("stream ids encode exactly, or not at all", () => {
      assert.equal(encodeStreamId("1765100000000-5"), 1765100000000 * 1024 + 5);
      assert.equal(encodeStreamId("1765100000000-1023"), 1765100000000 * 1024 + 1023);
      assert.equal(encodeStreamId("1765100000000-1024"), null);
      assert.equal(encodeStreamId(`${2 ** 43}-0`), null);
      assert.equal(encodeStreamId(""), null);
    });

    await t.step("the change stream stays capped", async () => {
      await raw.flushall();
      const a = viewer();
      a.take(await store.heartbeat("a", null, null));
      for (let i = 0; i < CHANGE_LOG_MAX + 300; i++) {
        await store.heartbeat(`x${i}`, null, null);
        await store.remove(`x${i}`);
      }
      const len = await raw.xlen(membersLogKey(ks));
      assert.ok(len < CHANGE_LOG_MAX * 1.5, `${len} entries`);
      const d = await store.heartbeat("a", null, a.cursor);
      assert.equal(d.mode, "full", "a cursor trimmed away is read as a gap");
      assert.deepEqual(a.take(d), ["a"]);
    });
  } finally {
    raw.disconnect();
    await closeRedis(client);
  }
});
