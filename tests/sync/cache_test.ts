import assert from "node:assert/strict";
import { createInvalidatingCache } from "../../actors/sync/cache.ts";

function harness(ttlMs = 1000) {
  let now = 0;
  let value = "v1";
  let loads = 0;
  let release: (() => void) | null = null;
  let gate = false;
  const sent: string[] = [];
  const cache = createInvalidatingCache<string>("things", {
    ttlMs,
    maxEntries: 3,
    now: () => now,
    broadcast: (key) => sent.push(key),
    load: async () => {
      loads++;
      const v = value;
      if (gate) await new Promise<void>((r) => release = r);
      return v;
    },
  });
  return {
    cache,
    sent,
    set: (v: string) => value = v,
    tick: (ms: number) => now += ms,
    loads: () => loads,
    hold: () => gate = true,
    release: () => {
      gate = false;
      release?.();
    },
  };
}

Deno.test("invalidating cache", async (t) => {
  await t.step("reads through once, then from memory until the TTL", async () => {
    const h = harness();
    assert.equal(await h.cache.get("k"), "v1");
    h.set("v2");
    assert.equal(await h.cache.get("k"), "v1");
    assert.equal(h.loads(), 1);
    h.tick(1000);
    assert.equal(await h.cache.get("k"), "v2", "expired entries are reloaded");
  });

  await t.step("invalidate drops here and tells the other instances", async () => {
    const h = harness();
    await h.cache.get("k");
    h.set("v2");
    h.cache.invalidate("k");
    assert.deepEqual(h.sent, ["k"]);
    assert.equal(await h.cache.get("k"), "v2");
    h.cache.invalidateAll();
    assert.deepEqual(h.sent, ["k", "*"]);
    assert.equal(h.cache.peek("k"), undefined);
  });

  await t.step("a load racing an invalidation is returned but not cached", async () => {
    const h = harness();
    h.hold();
    const pending = h.cache.get("k");
    h.set("v2");
    h.cache.drop("k"); // a remote invalidation arrives while the old value is loading
    h.release();
    assert.equal(await pending, "v1");
    assert.equal(h.cache.peek("k"), undefined, "the possibly stale value was not kept");
    assert.equal(await h.cache.get("k"), "v2");
  });

  await t.step("concurrent misses share one load; the least recently used go first", async () => {
    const h = harness();
    const [a, b] = await Promise.all([h.cache.get("a"), h.cache.get("a")]);
    assert.equal(a, b);
    assert.equal(h.loads(), 1);
    await h.cache.get("b");
    await h.cache.get("c");
    await h.cache.get("a"); // a is now the most recent
    await h.cache.get("d"); // evicts b
    assert.equal(h.cache.peek("b"), undefined);
    assert.equal(h.cache.peek("a"), "v1");
    assert.equal(h.cache.stats().size, 3);
  });
});
