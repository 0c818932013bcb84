import assert from "node:assert/strict";
import fc from "fast-check";
import { compareHlc, createHybridClock, type HlcTimestamp } from "../../lib/hlc.ts";

Deno.test("hybrid logical clock", async (t) => {
  await t.step("follows the physical clock and orders events inside one millisecond", () => {
    let pt = 1000;
    const clock = createHybridClock({ physical: () => pt });
    assert.deepEqual(clock.now(), { wall: 1000, logical: 0 });
    assert.deepEqual(clock.now(), { wall: 1000, logical: 1 });
    pt = 1005;
    assert.deepEqual(clock.now(), { wall: 1005, logical: 0 });
  });

  await t.step("never goes backwards when the physical clock does", () => {
    let pt = 5000;
    const clock = createHybridClock({ physical: () => pt });
    const a = clock.now();
    pt = 4000; // NTP stepped the clock back
    const b = clock.now();
    assert.ok(compareHlc(b, a) > 0);
    assert.equal(b.wall, 5000);
  });

  await t.step("a write after receiving a remote stamp is ordered after it", () => {
    const clock = createHybridClock({ physical: () => 1000 });
    const remote = { wall: 1500, logical: 7 }; // a peer whose clock runs 500 ms ahead
    clock.receive(remote);
    const local = clock.now();
    assert.ok(compareHlc(local, remote) > 0, JSON.stringify(local));
  });

  await t.step("a remote stamp beyond the drift bound is not adopted, and is counted", () => {
    const clock = createHybridClock({ physical: () => 1000, maxDriftMs: 100 });
    const after = clock.receive({ wall: 1_000_000, logical: 0 });
    assert.equal(after.wall, 1100);
    assert.equal(clock.skewed(), 1);
  });

  await t.step("property: issued stamps strictly increase whatever the clocks do", () => {
    const step = fc.oneof(
      fc.record({ kind: fc.constant("tick" as const), dt: fc.integer({ min: -50, max: 50 }) }),
      fc.record({
        kind: fc.constant("recv" as const),
        wall: fc.integer({ min: 0, max: 3000 }),
        logical: fc.integer({ min: 0, max: 20 }),
      }),
    );
    fc.assert(
      fc.property(fc.array(step, { maxLength: 200 }), (steps) => {
        let pt = 1000;
        const clock = createHybridClock({ physical: () => pt, maxDriftMs: 10_000 });
        let last: HlcTimestamp = { wall: -1, logical: 0 };
        for (const s of steps) {
          let next: HlcTimestamp;
          if (s.kind === "tick") {
            pt = Math.max(0, pt + s.dt);
            next = clock.now();
          } else {
            next = clock.receive({ wall: s.wall, logical: s.logical });
            // Causality: the clock is past what it received.
            assert.ok(compareHlc(next, { wall: s.wall, logical: s.logical }) > 0);
          }
          assert.ok(compareHlc(next, last) > 0);
          last = next;
        }
      }),
      { numRuns: 200 },
    );
  });
});
