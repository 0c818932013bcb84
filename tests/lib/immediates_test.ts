import assert from "node:assert/strict";
import { guardImmediates, type ImmediateHost } from "../../lib/immediates.ts";

/**
 * A host with Deno 2.5's flaw made certain: `clearImmediate` never stops a queued callback
 * (under Deno it fails only when an I/O callback of the turn in which the immediate is due
 * clears it), and the test decides when the queue runs.
 */
function leakyHost() {
  const queue: (() => void)[] = [];
  const host: ImmediateHost = {
    setImmediate(cb, ...args) {
      queue.push(() => cb(...args));
      return { id: queue.length };
    },
    clearImmediate() {},
  };
  const run = () => queue.splice(0).forEach((f) => f());
  return { host, run };
}

Deno.test("a cleared immediate never runs", () => {
  const { host, run } = leakyHost();
  guardImmediates(host);
  guardImmediates(host); // idempotent: one wrapper, not two
  const ran: unknown[] = [];
  const stale = host.setImmediate(() => ran.push("cleared one"));
  host.setImmediate((a, b) => ran.push([a, b]), 1, "x");
  host.clearImmediate(stale);
  host.clearImmediate(undefined); // as Node's: nothing to clear, no error
  run();
  assert.deepEqual(ran, [[1, "x"]]);
});

Deno.test("the global immediates are guarded and still work", async () => {
  guardImmediates();
  const g = globalThis as unknown as ImmediateHost;
  const ran: string[] = [];
  const stale = g.setImmediate(() => ran.push("cleared one"));
  g.clearImmediate(stale);
  await new Promise((resolve) => g.setImmediate(resolve));
  assert.deepEqual(ran, []);
});
