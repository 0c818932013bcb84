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

Deno.test("seen ids: a sender's ids forgotten by the count bound leave its counter as a floor", () => {
  let t = 0;
  const seen = createSeenIds({ keepMs: 1000, max: 2, now: () => t });
  for (const id of ["A.1", "B.5", "A.2", "uuid-form", "A.3", "B.6"]) seen.add(id);
  // Generations: [A.1, B.5] dropped, [A.2, uuid-form] previous, [A.3, B.6] current.
  assert.ok(!seen.has("A.1") && !seen.has("B.5"));
  assert.ok(seen.forgotten("A.1"), "A's floor is 1");
  assert.ok(seen.forgotten("B.5") && seen.forgotten("B.4"), "B's floor is 5");
  assert.ok(!seen.forgotten("A.2") && !seen.forgotten("A.4") && !seen.forgotten("B.7"));
  assert.ok(!seen.forgotten("C.1"), "a sender never forgotten has no floor");
  assert.ok(!seen.forgotten("no-counter") && !seen.forgotten("x.") && !seen.forgotten(".5"));
  assert.equal(seen.floors, 2);
  seen.add("A.4"); // [A.2, uuid-form] dropped: A's floor rises to 2
  assert.ok(seen.forgotten("A.2") && !seen.forgotten("A.3"));
  assert.ok(!seen.forgotten("uuid-form"), "ids of another form get no floor");
  seen.add("A.5");
  t = 1000;
  seen.add("C.1"); // [A.3, B.6] dropped at 1000: floors A 3, B 6, both risen at 1000
  assert.ok(seen.forgotten("B.6") && seen.forgotten("A.3"));
  // A floor that has not risen for keepMs is dropped: a replay that late is past the age limit.
  t = 2000;
  seen.add("C.2"); // [A.4, A.5] dropped: A's floor rises at 2000; B's is 1000 ms old: gone
  assert.equal(seen.floors, 1);
  assert.ok(seen.forgotten("A.5") && !seen.forgotten("B.6"));
});
