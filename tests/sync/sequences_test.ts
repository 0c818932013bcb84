import assert from "node:assert/strict";
import fc from "fast-check";
import { createSequenceTracker } from "../../actors/sync/sequences.ts";

Deno.test("sequence tracker", async (t) => {
  await t.step("in-order batches advance, duplicates are recognised", () => {
    const s = createSequenceTracker();
    assert.equal(s.record("a~1", 1, 0), "applied");
    assert.equal(s.record("a~1", 2, 0), "applied");
    assert.equal(s.record("a~1", 2, 0), "duplicate");
    assert.equal(s.contiguous("a~1"), 2);
    assert.equal(s.totalMissing(), 0);
  });

  await t.step("a jump reveals the missing batches, and filling them closes the gap", () => {
    const s = createSequenceTracker();
    s.record("a~1", 1, 0);
    assert.equal(s.record("a~1", 5, 100), "gap");
    assert.deepEqual(s.missing().get("a~1"), [2, 3, 4]);
    assert.equal(s.missingSince("a~1"), 100);
    s.record("a~1", 3, 0);
    s.record("a~1", 2, 0);
    assert.equal(s.contiguous("a~1"), 3);
    s.record("a~1", 4, 0);
    assert.equal(s.contiguous("a~1"), 5);
    assert.equal(s.missingSince("a~1"), null);
  });

  await t.step("an announcement reveals a lost last batch", () => {
    const s = createSequenceTracker();
    s.record("a~1", 1, 0);
    assert.equal(s.announce("a~1", 1, 0), false);
    assert.equal(s.announce("a~1", 3, 0), true);
    assert.deepEqual(s.missing().get("a~1"), [2, 3]);
  });

  await t.step("a checkpoint covers, giving up skips", () => {
    const s = createSequenceTracker();
    s.record("a~1", 9, 0);
    s.cover("a~1", 5);
    assert.deepEqual(s.missing().get("a~1"), [6, 7, 8]);
    s.skip("a~1", [6, 7, 8]);
    assert.equal(s.contiguous("a~1"), 9);
    assert.deepEqual(s.vector(), { "a~1": 9 });
  });

  await t.step("shelved seqs stop counting as missing until their origin speaks again", () => {
    const s = createSequenceTracker();
    s.record("a~1", 1, 0);
    s.record("a~1", 4, 0);
    s.shelve("a~1", [2, 3]);
    assert.equal(s.totalMissing(), 0);
    assert.equal(s.contiguous("a~1"), 1, "shelved is not applied");
    assert.equal(s.wake("a~1"), true);
    assert.deepEqual(s.missing().get("a~1"), [2, 3]);
    assert.equal(s.wake("a~1"), false);
  });

  await t.step("property: missing is exactly what was not delivered", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 60 }),
        fc.func(fc.boolean()),
        fc.boolean(),
        (n, lose, announceTail) => {
          const s = createSequenceTracker();
          const lost: number[] = [];
          for (let i = 1; i <= n; i++) {
            if (i > 1 && lose(i)) lost.push(i);
            else s.record("o~1", i, 0);
          }
          if (announceTail) s.announce("o~1", n, 0);
          // Known missing: lost before the last delivered one, or all lost if announced.
          const lastDelivered = Math.max(
            ...Array.from({ length: n }, (_, k) => k + 1).filter((i) => !lost.includes(i)),
          );
          const expected = lost.filter((i) => announceTail || i < lastDelivered);
          assert.deepEqual(s.missing().get("o~1") ?? [], expected);
          assert.equal(s.totalMissing(), expected.length);
        },
      ),
      { numRuns: 300 },
    );
  });
});
