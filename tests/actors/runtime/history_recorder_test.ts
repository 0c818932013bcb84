/**
 * The history recorder's flush timer (actors/runtime/history.ts): past `batchSize` a write is
 * asked for at once, and a timer already armed for that stays armed (no re-arming per
 * record), while a longer one is replaced by it.
 */
import assert from "node:assert/strict";
import { createHistoryRecorder } from "../../../actors/runtime/history.ts";
import type { HistoryRecord } from "../../../store/redis_history.ts";
import { until } from "../../support/instance.ts";

function message(n: number) {
  return {
    id: `m${n}`,
    kind: "request",
    from: { instance: "i2", actor: "runtime" },
    to: { actor: "echo" },
    event: { type: "t.echo" },
    corr: `c${n}`,
    sentAt: 1,
  };
}

Deno.test("past batchSize records are written at once, also those arriving while a write is in flight", async () => {
  const batches: number[] = [];
  const gates: (() => void)[] = [];
  const recorder = createHistoryRecorder({
    instanceId: "i1",
    // Only the immediate flush can write anything within this test.
    flushMs: 60_000,
    batchSize: 256,
    append: (records: readonly HistoryRecord[]) => {
      batches.push(records.length);
      return new Promise<void>((resolve) => gates.push(resolve));
    },
  });
  try {
    for (let n = 0; n < 300; n++) recorder.message(message(n));
    await until(() => Promise.resolve(gates.length === 1), { what: "the first batch written" });
    // While it is in flight, every record asks for a write at once again.
    for (let n = 300; n < 600; n++) recorder.message(message(n));
    gates.shift()!();
    await until(() => {
      gates.shift()?.();
      return Promise.resolve(recorder.stats().written === 600);
    }, { what: "every record written" });
    assert.deepEqual(batches, [256, 256, 88]);
    assert.equal(recorder.stats().dropped, 0);
  } finally {
    for (const open of gates) open();
    await recorder.close();
  }
});

Deno.test("a record under batchSize waits for the flush delay, and close() writes it", async () => {
  const batches: number[] = [];
  const recorder = createHistoryRecorder({
    instanceId: "i1",
    flushMs: 60_000,
    append: (records: readonly HistoryRecord[]) => {
      batches.push(records.length);
      return Promise.resolve();
    },
  });
  recorder.message(message(1));
  recorder.message(message(2));
  assert.deepEqual(batches, []);
  await recorder.close();
  assert.deepEqual(batches, [2]);
});
