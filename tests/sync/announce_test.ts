/**
 * Sequence announcements on a real PostgreSQL and Redis. They are not heartbeats (whether a
 * peer is alive is cluster membership's): an idle cluster publishes only a keep-alive per
 * node every `keepAliveMs`, a write is announced by its origin alone, a batch lost together
 * with its announcement is still repaired (by the next keep-alive), and a joining node
 * learns a peer's batch that is not stored yet from the answers to its greeting.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { migrate } from "../../store/migrations.ts";
import type { Sql } from "../../store/types.ts";
import { startPostgres } from "../harness/mod.ts";
import { singleRedisTarget } from "../support/redis_target.ts";
import { listenHeads, startTestNode, type TestNode, until } from "./support.ts";

const HEADS_MS = 200;

Deno.test("sync announcements: quiet at idle, still repairing", async (t) => {
  await using redis = await singleRedisTarget();
  await using pg = await startPostgres();
  const sql = postgres(await pg.createDatabase(), { max: 8, onnotice: () => {} }) as Sql;
  await migrate(sql);
  const nodes: TestNode[] = [];
  const listeners: Awaited<ReturnType<typeof listenHeads>>[] = [];
  const start = async (name: string, prefix: string, keepAliveMs: number) => {
    const n = await startTestNode(name, {
      redis,
      prefix,
      sql,
      settings: { headsMs: HEADS_MS, keepAliveMs },
    });
    nodes.push(n);
    return n;
  };

  try {
    await t.step("an idle cluster publishes no announcement every headsMs", async () => {
      const prefix = "rsquiet:";
      const heads = await listenHeads({ redis, prefix });
      listeners.push(heads);
      const a = await start("node-a", prefix, 60_000);
      const b = await start("node-b", prefix, 60_000);
      const c = await start("node-c", prefix, 60_000);
      // c's greeting asks every peer to announce: a and b answer.
      await until(() => {
        const greeted = heads.heard.findIndex((h) => h.heads.n === "node-c" && h.heads.w);
        if (greeted < 0) return false;
        const after = new Set(heads.heard.slice(greeted + 1).map((h) => h.heads.n));
        return after.has("node-a") && after.has("node-b");
      }, "c's greeting answered by a and b");
      // Before this change each node announced every headsMs: 3 × 10 in this window.
      await new Promise((r) => setTimeout(r, HEADS_MS));
      const before = heads.heard.length;
      await new Promise((r) => setTimeout(r, 10 * HEADS_MS));
      assert.deepEqual(heads.heard.slice(before), [], "no announcement at idle");

      // A write: its origin announces its new sequence at once; the others, whose applied
      // sequences moved too, do not (per write, one announcement, not one per node).
      a.node.applyDelta("stream", 1, { title: "moved" });
      await a.node.flush();
      const seq = a.node.stats().seq;
      await until(
        () => heads.heard.some((h) => h.heads.n === "node-a" && h.heads.s === seq),
        "a's announcement of its new sequence",
      );
      await until(
        () => b.node.getSnapshot("stream", 1) !== null && c.node.getSnapshot("stream", 1) !== null,
        "the write everywhere",
      );
      await new Promise((r) => setTimeout(r, 3 * HEADS_MS));
      const announcers = heads.heard.slice(before).map((h) => h.heads.n);
      assert.deepEqual(announcers, ["node-a"]);
    });

    await t.step(
      "a joining node learns a peer's batch not stored yet from the answers to its greeting",
      async () => {
        const a = nodes[0];
        // Block the inserts so neither PostgreSQL nor a live delivery can give d the batch.
        const lock = await sql.reserve();
        await lock`BEGIN`;
        await lock`LOCK TABLE event_log IN EXCLUSIVE MODE`;
        try {
          a.node.applyDelta("stream", 2, { title: "before d joined" });
          await a.node.flush();
          const d = await start("node-d", "rsquiet:", 60_000);
          await until(
            () => d.node.getSnapshot("stream", 2)?.state.title === "before d joined",
            "d to fetch it from a",
          );
          assert.ok(d.node.stats().repaired >= 1);
        } finally {
          await lock`ROLLBACK`;
          lock.release();
        }
        await a.node.flush({ persisted: true });
      },
    );

    await t.step(
      "a batch lost with its announcement is repaired after the next keep-alive",
      async () => {
        const prefix = "rskeep:";
        const e = await start("node-e", prefix, 1000);
        const f = await start("node-f", prefix, 1000);
        const heads = await listenHeads({ redis, prefix });
        listeners.push(heads);
        const gaps = f.node.stats().gaps;
        f.loss.all = true;
        e.node.applyDelta("stream", 3, { title: "lost twice" });
        await e.node.flush();
        const seq = e.node.stats().seq;
        await until(
          () => heads.heard.some((h) => h.heads.n === "node-e" && h.heads.s === seq),
          "e's announcement (lost to f)",
        );
        const lostAt = heads.heard.length;
        f.loss.all = false;
        await until(
          () => f.node.getSnapshot("stream", 3)?.state.title === "lost twice",
          "the repair after e's keep-alive",
        );
        assert.ok(f.node.stats().gaps > gaps);
        assert.ok(
          heads.heard.slice(lostAt).some((h) => h.heads.n === "node-e" && h.heads.s === seq),
          "revealed by e's keep-alive",
        );
      },
    );
  } finally {
    for (const n of nodes.reverse()) await n.close();
    for (const l of listeners) await l.close();
    await sql.end();
  }
});
