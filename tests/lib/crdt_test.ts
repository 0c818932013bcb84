import assert from "node:assert/strict";
import fc from "fast-check";
import {
  applyEntityDelta,
  canonicalJson,
  compareVersions,
  emptyEntity,
  type EntityDelta,
  type EntityState,
  type EntityStrategy,
  entityValues,
  mergeEntityStates,
  mergeVersions,
  registerBeats,
} from "../../lib/crdt.ts";

const STRATEGY: EntityStrategy = {
  fields: { viewers: "counter", peak: "max", revoked: "sticky", email: "manual" },
};

/**
 * Deltas as real origins produce them: each origin's dots increase by one per delta, its
 * HLC stamps increase, counters only grow, and the view `x` is what it had seen of others.
 */
function deltasArb(): fc.Arbitrary<EntityDelta[]> {
  const op = fc.record({
    origin: fc.constantFrom("a~1", "b~1", "c~1"),
    field: fc.constantFrom("title", "viewers", "peak", "revoked", "email"),
    value: fc.integer({ min: -3, max: 9 }),
    dt: fc.integer({ min: 0, max: 3 }),
    sees: fc.boolean(),
  });
  return fc.array(op, { minLength: 1, maxLength: 25 }).map((ops) => {
    const dot: Record<string, number> = {};
    const wall: Record<string, number> = {};
    const totals: Record<string, [number, number]> = {};
    const seen: EntityDelta[] = [];
    const out: EntityDelta[] = [];
    for (const o of ops) {
      dot[o.origin] = (dot[o.origin] ?? 0) + 1;
      wall[o.origin] = (wall[o.origin] ?? 1000) + o.dt;
      // What the writer had seen: its own earlier deltas, plus others' if `sees`.
      const x: Record<string, number> = {};
      for (const d of seen) {
        if (d.o === o.origin || o.sees) x[d.o] = Math.max(x[d.o] ?? 0, d.d);
      }
      const delta: EntityDelta = { o: o.origin, d: dot[o.origin], x };
      if (o.field === "viewers") {
        const t = totals[o.origin] ?? [0, 0];
        totals[o.origin] = o.value >= 0 ? [t[0] + o.value, t[1]] : [t[0], t[1] - o.value];
        delta.c = { viewers: [...totals[o.origin]] as [number, number] };
      } else {
        const v = o.field === "revoked" ? o.value > 4 : o.field === "title" ? `t${o.value}` : o
          .value;
        delta.f = { [o.field]: [v, wall[o.origin], dot[o.origin]] };
      }
      seen.push(delta);
      out.push(delta);
    }
    return out;
  });
}

function replay(deltas: EntityDelta[]): EntityState {
  const s = emptyEntity();
  for (const d of deltas) applyEntityDelta(s, d, STRATEGY);
  return s;
}

/** Canonical text of a state's meaning (values, vector, and each register's stamp). */
function canon(s: EntityState): string {
  return canonicalJson({ values: entityValues(s), vv: s.vv, f: s.f, c: s.c });
}

Deno.test("version vectors", async (t) => {
  await t.step("compare tells before, after, equal and concurrent apart", () => {
    assert.equal(compareVersions({ a: 1 }, { a: 1 }), "equal");
    assert.equal(compareVersions({ a: 1 }, { a: 2 }), "before");
    assert.equal(compareVersions({ a: 2, b: 1 }, { a: 2 }), "after");
    assert.equal(compareVersions({ a: 2 }, { b: 1 }), "concurrent");
    assert.equal(compareVersions({}, { a: 0 }), "equal");
  });
  await t.step("merge is the pointwise maximum", () => {
    assert.deepEqual(mergeVersions({ a: 3, b: 1 }, { b: 4, c: 2 }), { a: 3, b: 4, c: 2 });
  });
});

Deno.test("entity CRDT", async (t) => {
  await t.step("last writer wins by HLC, origin breaking ties", () => {
    const s = emptyEntity();
    applyEntityDelta(s, { o: "a~1", d: 1, x: {}, f: { title: ["old", 100, 0] } });
    applyEntityDelta(s, { o: "b~1", d: 1, x: {}, f: { title: ["new", 200, 0] } });
    applyEntityDelta(s, { o: "a~1", d: 2, x: { a: 1 }, f: { title: ["late", 150, 0] } });
    assert.equal(entityValues(s).title, "new");
    const tie = { v: 1, w: 5, l: 0, d: 1 };
    assert.ok(registerBeats({ ...tie, o: "b~1" }, { ...tie, o: "a~1" }, "lww"));
  });

  await t.step("viewer counts add up concurrent increments instead of losing them", () => {
    const s = emptyEntity();
    // Two instances each saw 10 viewers and each counted one more join.
    applyEntityDelta(s, { o: "a~1", d: 1, x: {}, c: { viewers: [11, 0] } }, STRATEGY);
    applyEntityDelta(s, { o: "b~1", d: 1, x: {}, c: { viewers: [1, 0] } }, STRATEGY);
    applyEntityDelta(s, { o: "b~1", d: 2, x: { "b~1": 1 }, c: { viewers: [1, 1] } }, STRATEGY);
    assert.equal(entityValues(s).viewers, 11);
  });

  await t.step("a revocation wins over a concurrent later un-revoke (sticky)", () => {
    const s = emptyEntity();
    applyEntityDelta(s, { o: "a~1", d: 1, x: {}, f: { revoked: [true, 100, 0] } }, STRATEGY);
    applyEntityDelta(s, { o: "b~1", d: 1, x: {}, f: { revoked: [false, 900, 0] } }, STRATEGY);
    assert.equal(entityValues(s).revoked, true);
  });

  await t.step("concurrent different values of a manual field are reported, once per pair", () => {
    const s = emptyEntity();
    applyEntityDelta(s, { o: "a~1", d: 1, x: {}, f: { email: ["a@x", 100, 0] } }, STRATEGY);
    const r = applyEntityDelta(
      s,
      { o: "b~1", d: 1, x: {}, f: { email: ["b@x", 101, 0] } },
      STRATEGY,
    );
    assert.equal(r.conflicts.length, 1);
    assert.equal(r.conflicts[0].winner.v, "b@x");
    // A write that had seen the other one is a successor, not a conflict.
    const later = applyEntityDelta(s, {
      o: "a~1",
      d: 2,
      x: { "a~1": 1, "b~1": 1 },
      f: { email: ["c@x", 102, 0] },
    }, STRATEGY);
    assert.equal(later.conflicts.length, 0);
    // Applying the same delta again reports nothing new.
    const again = applyEntityDelta(s, { o: "b~1", d: 1, x: {}, f: { email: ["b@x", 101, 0] } });
    assert.equal(again.conflicts.length, 0);
  });

  await t.step("property: any order, with duplicates, converges to one state", () => {
    fc.assert(
      fc.property(
        deltasArb().chain((ds) =>
          fc.tuple(
            fc.constant(ds),
            fc.shuffledSubarray(ds, { minLength: ds.length, maxLength: ds.length }),
            fc.array(fc.integer({ min: 0, max: ds.length - 1 }), { maxLength: 5 }),
          )
        ),
        ([ordered, shuffled, dupes]) => {
          const a = replay(ordered);
          const b = replay([...shuffled, ...dupes.map((i) => ordered[i])]);
          assert.equal(canon(b), canon(a));
        },
      ),
      { numRuns: 300 },
    );
  });

  await t.step("property: state merge is commutative, associative and idempotent", () => {
    fc.assert(
      fc.property(
        deltasArb(),
        fc.array(fc.integer({ min: 0, max: 2 }), { minLength: 25, maxLength: 25 }),
        (ds, owner) => {
          // Spread the deltas over three replicas (some may overlap via duplicates).
          const parts: EntityDelta[][] = [[], [], []];
          ds.forEach((d, i) => parts[owner[i]].push(d));
          const [x, y, z] = parts.map(replay);
          const m = (p: EntityState, q: EntityState) => mergeEntityStates(p, q, STRATEGY).state;
          assert.equal(canon(m(x, y)), canon(m(y, x)));
          assert.equal(canon(m(m(x, y), z)), canon(m(x, m(y, z))));
          assert.equal(canon(m(x, x)), canon(x));
          // And merging the replicas equals applying every delta in one place.
          assert.equal(canon(m(m(x, y), z)), canon(replay(ds)));
        },
      ),
      { numRuns: 300 },
    );
  });

  await t.step("property: the counter equals the sum of all increments and decrements", () => {
    fc.assert(
      fc.property(deltasArb(), (ds) => {
        const s = replay(ds);
        const last: Record<string, [number, number]> = {};
        for (const d of ds) if (d.c?.viewers) last[d.o] = d.c.viewers;
        const expected = Object.values(last).reduce((n, [p, q]) => n + p - q, 0);
        assert.equal(entityValues(s).viewers ?? 0, expected);
      }),
      { numRuns: 200 },
    );
  });
});

Deno.test("crdt: field and origin names of Object.prototype members are own data (finding 8)", () => {
  const state = emptyEntity();
  const result = applyEntityDelta(state, {
    o: "toString",
    d: 1,
    x: {},
    f: Object.fromEntries([["constructor", [1, 1, 0]], ["toString", ["x", 1, 0]]]),
    c: Object.fromEntries([["valueOf", [2, 0]]]),
  }, { fields: Object.fromEntries([["valueOf", "counter" as const]]) });
  assert.deepEqual(result.changed.sort(), ["constructor", "toString", "valueOf"]);
  assert.deepEqual(entityValues(state), { constructor: 1, toString: "x", valueOf: 2 });
  const merged = mergeEntityStates(emptyEntity(), state);
  assert.deepEqual(entityValues(merged.state), { constructor: 1, toString: "x", valueOf: 2 });
  assert.equal(compareVersions({ toString: 1 }, {}), "after");
  assert.deepEqual(mergeVersions({}, { constructor: 3 }), { constructor: 3 });
});
