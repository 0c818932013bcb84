import assert from "node:assert/strict";
import postgres from "postgres";
import { isRuntimeError } from "../../lib/errors.ts";
import { startPostgres } from "../harness/mod.ts";
import { migrate } from "../../store/migrations.ts";
import {
  type AggregateRef,
  createEventStore,
  type Reducer,
  type StoredEvent,
} from "../../store/event_store.ts";
import { createUser } from "../../store/users.ts";

const INJECTIONS = [
  "'; DROP TABLE users; --",
  "Robert'); DELETE FROM streams;--",
  "\\' OR 1=1 --",
  "'); DELETE FROM event_log; --",
];

function rejectsWith(code: string, pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(isRuntimeError(err), `expected a RuntimeError, got ${err}`);
    assert.equal(err.code, code, err.message);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

/** A counter aggregate: sums `data.n` and remembers the event types in order. */
interface Counter {
  total: number;
  types: string[];
}
const counter: Reducer<Counter, { n: number }> = {
  initial: { total: 0, types: [] },
  apply(state, event) {
    return { total: state.total + event.data.n, types: [...state.types, event.type] };
  },
};

function replay(events: StoredEvent<{ n: number }>[]): Counter {
  return events.reduce(counter.apply, structuredClone(counter.initial));
}

let seq = 0;
function aggregate(type = "Counter"): AggregateRef {
  return { type, id: `agg-${++seq}` };
}

Deno.test("event store", async (t) => {
  await using pg = await startPostgres();
  const sql = postgres(await pg.createDatabase(), { max: 4, onnotice: () => {} });
  try {
    await migrate(sql);
    const store = createEventStore(sql, { snapshotEvery: 5 });
    const user = await createUser(sql, {
      username: "auditor",
      email: "auditor@example.com",
      password: "auditor-password",
    }, { hashing: { ln: 10 } });

    await t.step("append numbers events from expectedVersion and reads them in order", async () => {
      const agg = aggregate();
      assert.equal(await store.currentVersion(agg), 0);
      const first = await store.append(agg, [
        { type: "Added", data: { n: 1 } },
        { type: "Added", data: { n: 2 }, metadata: { requestId: "r-1" } },
      ], { expectedVersion: 0 });
      assert.deepEqual(first.map((e) => e.version), [1, 2]);
      assert.equal(first[1].aggregateType, "Counter");
      assert.equal(first[1].aggregateId, agg.id);
      assert.deepEqual(first[1].metadata, { requestId: "r-1" });
      assert.deepEqual(first[0].metadata, {});
      assert.ok(first[0].createdAt instanceof Date);

      const second = await store.append(agg, [{ type: "Removed", data: { n: -1 } }], {
        expectedVersion: 2,
      });
      assert.deepEqual(second.map((e) => e.version), [3]);
      assert.equal(await store.currentVersion(agg), 3);

      const all = await store.readEvents<{ n: number }>(agg);
      assert.deepEqual(all.map((e) => [e.version, e.type, e.data.n]), [
        [1, "Added", 1],
        [2, "Added", 2],
        [3, "Removed", -1],
      ]);
      assert.deepEqual(
        (await store.readEvents(agg, { afterVersion: 1 })).map((e) => e.version),
        [2, 3],
      );
      assert.deepEqual(
        (await store.readEvents(agg, { afterVersion: 1, limit: 1 })).map((e) => e.version),
        [2],
      );
      assert.deepEqual(await store.readEvents(aggregate()), []);
    });

    await t.step("numeric and string ids name the same aggregate", async () => {
      const id = 900_000 + ++seq;
      await store.append({ type: "Stream", id }, [{ type: "Created", data: {} }], {
        expectedVersion: 0,
      });
      assert.equal(await store.currentVersion({ type: "Stream", id: String(id) }), 1);
      const [event] = await store.readEvents({ type: "Stream", id: String(id) });
      assert.equal(event.aggregateId, String(id));
      // Same id, different type: a different aggregate.
      assert.equal(await store.currentVersion({ type: "User", id }), 0);
    });

    await t.step("a stale expectedVersion is a conflict and writes nothing", async () => {
      const agg = aggregate();
      await store.append(agg, [{ type: "Added", data: { n: 1 } }], { expectedVersion: 0 });
      for (const expectedVersion of [0, 2, 7]) {
        await assert.rejects(
          store.append(agg, [
            { type: "Added", data: { n: 10 } },
            { type: "Added", data: { n: 20 } },
          ], { expectedVersion }),
          rejectsWith("EVENT_VERSION_CONFLICT", /expected version \d+ but it is at version 1/),
        );
      }
      const events = await store.readEvents(agg);
      assert.deepEqual(events.map((e) => e.version), [1]);
    });

    await t.step("of two concurrent appends at one version exactly one wins", async () => {
      for (let round = 0; round < 10; round++) {
        const agg = aggregate();
        await store.append(agg, [{ type: "Added", data: { n: 1 } }], { expectedVersion: 0 });
        const results = await Promise.allSettled([
          store.append(agg, [{ type: "A", data: { n: 100 } }], { expectedVersion: 1 }),
          store.append(agg, [
            { type: "B", data: { n: 200 } },
            { type: "B", data: { n: 300 } },
          ], { expectedVersion: 1 }),
        ]);
        const won = results.filter((r) => r.status === "fulfilled");
        const lost = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
        assert.equal(won.length, 1, `round ${round}: ${results.map((r) => r.status)}`);
        assert.equal(lost.length, 1);
        assert.ok(isRuntimeError(lost[0].reason, "EVENT_VERSION_CONFLICT"), String(lost[0].reason));

        // Nothing lost or duplicated: the winner's events, exactly once, right after v1.
        const events = await store.readEvents(agg);
        const winner = (won[0] as PromiseFulfilledResult<StoredEvent[]>).value;
        assert.deepEqual(events.slice(1).map((e) => e.id), winner.map((e) => e.id));
        assert.deepEqual(
          events.map((e) => e.version),
          Array.from({ length: events.length }, (_, i) => i + 1),
        );
        assert.equal(new Set(events.slice(1).map((e) => e.type)).size, 1);
      }
    });

    await t.step("many concurrent writers with retry lose nothing", async () => {
      const agg = aggregate();
      const writer = async (n: number) => {
        for (;;) {
          const version = await store.currentVersion(agg);
          try {
            return await store.append(agg, [{ type: "Added", data: { n } }], {
              expectedVersion: version,
            });
          } catch (err) {
            if (!isRuntimeError(err, "EVENT_VERSION_CONFLICT")) throw err;
          }
        }
      };
      await Promise.all(Array.from({ length: 12 }, (_, i) => writer(i + 1)));
      const events = await store.readEvents<{ n: number }>(agg);
      assert.equal(events.length, 12);
      assert.deepEqual(
        events.map((e) => e.data.n).sort((a, b) => a - b),
        Array.from({ length: 12 }, (_, i) => i + 1),
      );
    });

    await t.step("a snapshot is taken each time the version crosses snapshotEvery", async () => {
      const agg = aggregate();
      for (let v = 0; v < 12; v++) {
        await store.append(agg, [{ type: "Added", data: { n: v + 1 } }], {
          expectedVersion: v,
          reducer: counter,
        });
      }
      const versions = async () =>
        (await sql<{ version: number }[]>`
          SELECT version FROM snapshots
          WHERE aggregate_type = ${agg.type} AND aggregate_id = ${String(agg.id)}
          ORDER BY version`).map((r) => r.version);
      assert.deepEqual(await versions(), [5, 10]);
      // A batch that jumps over a multiple (12 -> 16 crosses 15) snapshots its end state.
      await store.append(agg, [10, 20, 30, 40].map((n) => ({ type: "Added", data: { n } })), {
        expectedVersion: 12,
        reducer: counter,
      });
      assert.deepEqual(await versions(), [5, 10, 16]);
      // Without a reducer no snapshot is taken.
      await store.append(agg, [1, 2, 3, 4, 5].map((n) => ({ type: "Added", data: { n } })), {
        expectedVersion: 16,
      });
      assert.deepEqual(await versions(), [5, 10, 16]);

      const latest = await store.latestSnapshot<Counter>(agg);
      assert.equal(latest?.version, 16);
      assert.equal(latest?.state.total, 78 + 100);
      assert.equal(latest?.state.types.length, 16);
    });

    await t.step("load = latest snapshot + later events = full replay", async () => {
      const agg = aggregate();
      let version = 0;
      for (let batch = 1; batch <= 7; batch++) {
        const events = Array.from({ length: batch }, (_, i) => ({
          type: i % 2 ? "Added" : "Bumped",
          data: { n: batch * 10 + i },
        }));
        await store.append(agg, events, { expectedVersion: version, reducer: counter });
        version += batch;
      }
      // The last batch (21 -> 28) crossed 25, so there is a snapshot at 28; two more
      // events without a reducer leave history after it.
      await store.append(agg, [{ type: "Added", data: { n: 1 } }, {
        type: "Bumped",
        data: { n: 2 },
      }], { expectedVersion: 28 });
      const loaded = await store.load(agg, counter);
      assert.equal(loaded.version, 30);
      assert.equal(loaded.snapshotVersion, 28);
      const full = replay(await store.readEvents<{ n: number }>(agg));
      assert.deepEqual(loaded.state, full);

      // Proof that load starts from the snapshot: a doctored snapshot shows through.
      const snap = await store.latestSnapshot<Counter>(agg);
      assert.ok(snap);
      await store.saveSnapshot(agg, {
        version: snap.version,
        state: { ...snap.state, total: snap.state.total + 1_000_000 },
      });
      assert.equal((await store.load(agg, counter)).state.total, full.total + 1_000_000);

      // No snapshot: a plain replay from the reducer's initial state.
      const fresh = aggregate();
      await store.append(fresh, [{ type: "Added", data: { n: 7 } }], { expectedVersion: 0 });
      assert.deepEqual(await store.load(fresh, counter), {
        state: { total: 7, types: ["Added"] },
        version: 1,
        snapshotVersion: null,
      });
      assert.deepEqual(counter.initial, { total: 0, types: [] });
      assert.deepEqual(await store.load(aggregate(), counter), {
        state: counter.initial,
        version: 0,
        snapshotVersion: null,
      });
    });

    await t.step("snapshots cannot run ahead of the log", async () => {
      const agg = aggregate();
      await store.append(agg, [{ type: "Added", data: { n: 1 } }], { expectedVersion: 0 });
      await assert.rejects(
        store.saveSnapshot(agg, { version: 2, state: { total: 1 } }),
        rejectsWith("VALIDATION_FAILED", /version/),
      );
      const saved = await store.saveSnapshot(agg, { version: 1, state: { total: 1 } });
      assert.equal(saved.version, 1);
      assert.equal(await store.latestSnapshot(aggregate()), null);
    });

    await t.step("a reducer that throws during a snapshot fails the append whole", async () => {
      const agg = aggregate();
      const broken: Reducer<Counter> = {
        initial: { total: 0, types: [] },
        apply() {
          throw new Error("reducer bug");
        },
      };
      await store.append(agg, [1, 2, 3, 4].map((n) => ({ type: "Added", data: { n } })), {
        expectedVersion: 0,
        reducer: broken,
      });
      await assert.rejects(
        store.append(agg, [{ type: "Added", data: { n: 5 } }], {
          expectedVersion: 4,
          reducer: broken,
        }),
        /reducer bug/,
      );
      assert.equal(await store.currentVersion(agg), 4);
      assert.equal(await store.latestSnapshot(agg), null);
    });

    await t.step("SQL-injection strings in event data are stored verbatim", async () => {
      const agg: AggregateRef = { type: INJECTIONS[0], id: INJECTIONS[1] };
      const data = {
        text: INJECTIONS,
        nested: { [INJECTIONS[2]]: INJECTIONS[3] },
        unicode: "\u{1F3AE} caf\u00e9 \u2028 line",
        quote: "'\"`$$",
      };
      const [stored] = await store.append(agg, [{
        type: INJECTIONS[3],
        data,
        metadata: { note: INJECTIONS[2] },
      }], { expectedVersion: 0 });
      const [read] = await store.readEvents(agg);
      assert.deepEqual(read.data, data);
      assert.deepEqual(stored.data, data);
      assert.equal(read.type, INJECTIONS[3]);
      assert.equal(read.aggregateType, INJECTIONS[0]);
      assert.equal(read.aggregateId, INJECTIONS[1]);
      assert.deepEqual(read.metadata, { note: INJECTIONS[2] });
      const [tables] = await sql<{ users: string | null; log: string | null }[]>`
        SELECT to_regclass('users')::text AS users, to_regclass('event_log')::text AS log`;
      assert.deepEqual(tables, { users: "users", log: "event_log" });
      assert.ok((await sql`SELECT 1 FROM event_log`).length > 1);
    });

    await t.step("any JSON value is a valid payload", async () => {
      const agg = aggregate();
      const payloads = [null, 0, "text", [1, "two", { three: 3 }], { deep: { deeper: [true] } }];
      await store.append(agg, payloads.map((data) => ({ type: "Any", data })), {
        expectedVersion: 0,
      });
      assert.deepEqual((await store.readEvents(agg)).map((e) => e.data), payloads);
    });

    await t.step("the audit view lists a user's events newest first", async () => {
      const a = aggregate("Stream");
      const b = aggregate("Session");
      await store.append(a, [{ type: "Started", data: {}, userId: user.id }], {
        expectedVersion: 0,
      });
      await store.append(b, [{ type: "LoggedIn", data: {}, userId: user.id }], {
        expectedVersion: 0,
      });
      await store.append(b, [{ type: "Anonymous", data: {} }], { expectedVersion: 1 });
      const trail = await store.readEventsByUser(user.id);
      assert.deepEqual(trail.map((e) => e.type), ["LoggedIn", "Started"]);
      assert.ok(trail.every((e) => e.userId === user.id));
      assert.equal((await store.readEventsByUser(user.id, { limit: 1 })).length, 1);
      assert.deepEqual(await store.readEventsByUser(999_999), []);
      await assert.rejects(
        store.append(aggregate(), [{ type: "Ghost", data: {}, userId: 999_999 }], {
          expectedVersion: 0,
        }),
        rejectsWith("USER_NOT_FOUND"),
      );
    });

    await t.step("invalid input is VALIDATION_FAILED and writes nothing", async () => {
      const agg = aggregate();
      const cyclic: Record<string, unknown> = {};
      cyclic.self = cyclic;
      const cases: [() => Promise<unknown>, RegExp][] = [
        [() => store.append(agg, [], { expectedVersion: 0 }), /events/],
        [() => store.append(agg, [{ type: "", data: {} }], { expectedVersion: 0 }), /type/],
        [() => store.append(agg, [{ type: "X", data: undefined }], { expectedVersion: 0 }), /data/],
        [() => store.append(agg, [{ type: "X", data: 1n }], { expectedVersion: 0 }), /data/],
        [() => store.append(agg, [{ type: "X", data: cyclic }], { expectedVersion: 0 }), /data/],
        [
          () => store.append(agg, [{ type: "X", data: "nul\u0000" }], { expectedVersion: 0 }),
          /NUL/,
        ],
        [() => store.append(agg, [{ type: "X", data: {} }], { expectedVersion: -1 }), /expected/],
        [() => store.append(agg, [{ type: "X", data: {} }], {} as never), /expectedVersion/],
        [
          () =>
            store.append({ type: "", id: "x" }, [{ type: "X", data: {} }], { expectedVersion: 0 }),
          /aggregate/,
        ],
        [
          () =>
            store.append({ type: "T", id: 1.5 }, [{ type: "X", data: {} }], { expectedVersion: 0 }),
          /aggregate/,
        ],
        [
          () =>
            store.append(agg, [{ type: "X", data: {} }], {
              expectedVersion: 0,
              reducer: {} as never,
            }),
          /reducer/,
        ],
        [() => store.readEvents(agg, { limit: 0 }), /limit/],
        [() => store.saveSnapshot(agg, { version: 0, state: {} }), /version/],
        [() => store.readEventsByUser(0), /userId/],
      ];
      for (const [call, pattern] of cases) {
        await assert.rejects(call(), rejectsWith("VALIDATION_FAILED", pattern));
      }
      assert.equal(await store.currentVersion(agg), 0);
      assert.throws(
        () => createEventStore(sql, { snapshotEvery: 0 }),
        rejectsWith("VALIDATION_FAILED"),
      );
    });
  } finally {
    await sql.end();
  }
});
