import assert from "node:assert/strict";
import { createSeenIds } from "../../lib/seen_ids.ts";

Deno.test("seen ids: each is kept for keepMs at least, then forgotten", () => {
  let t = 0;
  const seen = createSeenIds({ keepMs: 1000, max: 100, now: () => t });
  seen.add("a");
  t = 999;
  seen.add("b");
  assert.ok(seen.has("a") && seen.has("b"));
  t = 1000; // the first generation is 1000 ms old: "a" and "b" move to the previous one
  seen.add("c");
  assert.ok(seen.has("a") && seen.has("b") && seen.has("c"));
  t = 1999;
  seen.add("d");
  assert.ok(seen.has("a"), "kept until the generation after it is dropped");
  t = 2000; // "a" (added at 0) and "b" (999) were kept ≥ 1000 ms; now forgotten
  seen.add("e");
  assert.ok(!seen.has("a") && !seen.has("b"));
  assert.ok(seen.has("c") && seen.has("d") && seen.has("e"));
  assert.ok(!seen.has("never"));
});

Deno.test("seen ids: each is kept until max later ids were added, and at most 2 × max held", () => {
  const seen = createSeenIds({ keepMs: 1e12, max: 4, now: () => 0 });
  for (let i = 0; i < 100; i++) {
    seen.add(`id${i}`);
    for (let j = Math.max(0, i - 4); j <= i; j++) assert.ok(seen.has(`id${j}`), `id${j} at ${i}`);
    assert.ok(seen.size <= 8);
  }
  assert.ok(!seen.has("id0"));
});
