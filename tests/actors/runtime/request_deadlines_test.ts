import assert from "node:assert/strict";
import { z } from "zod";
import { createLocalTransport } from "../../../actors/runtime/transport.ts";
import type { ActorSpec, RemoteEvent } from "../../../actors/runtime/types.ts";
import { RuntimeError } from "../../../lib/errors.ts";
import { createLocalBus } from "../../../store/bus.ts";

// Request timeouts share one timer (a deadline queue per timeout length): these tests pin what
// each request still sees — its own timeout, whatever the others' lengths and order.

/** A transport whose `t.wait` requests are answered only when the test opens their gate. */
function setup() {
  const gates = new Map<number, () => void>();
  const spec: ActorSpec = {
    id: "waiter",
    create: () => {
      throw new Error("not started in these tests");
    },
    requests: {
      "t.wait": {
        schema: z.object({ type: z.literal("t.wait"), n: z.number() }) as z.ZodType<RemoteEvent>,
        handle: (event: RemoteEvent) => {
          const n = (event as unknown as { n: number }).n;
          return new Promise((resolve) => gates.set(n, () => resolve({ n })));
        },
      },
    },
  } as unknown as ActorSpec;
  const transport = createLocalTransport({
    instanceId: "i1",
    actors: { spec: (id) => (id === "waiter" ? spec : undefined), ref: () => undefined },
    bus: createLocalBus(),
  });
  const to = { instance: "i1", actor: "waiter" };
  const ask = (n: number, timeoutMs: number) =>
    transport.request<{ n: number }>(to, { type: "t.wait", n }, { timeoutMs });
  return { transport, gates, ask };
}

function outcome<T>(p: Promise<T>): Promise<T | string> {
  return p.then((v) => v, (err) => err instanceof RuntimeError ? err.code : String(err));
}

Deno.test("a short timeout made after a long one expires first; the long one still gets its reply", async () => {
  const { transport, gates, ask } = setup();
  await transport.start();
  try {
    const long = outcome(ask(1, 60_000));
    const short = outcome(ask(2, 20));
    assert.equal(await short, "REQUEST_TIMEOUT");
    assert.equal(transport.stats().pending_requests, 1);
    gates.get(1)!();
    assert.deepEqual(await long, { n: 1 });
    assert.equal(transport.stats().timeouts, 1);
    gates.get(2)!(); // its late reply finds nobody waiting
  } finally {
    await transport.close();
  }
});

Deno.test("among requests of one timeout length, answered ones resolve and only the others time out", async () => {
  const { transport, gates, ask } = setup();
  await transport.start();
  try {
    const all = Array.from({ length: 10 }, (_, n) => outcome(ask(n, 30)));
    for (let n = 0; n < 10; n += 2) gates.get(n)!();
    const got = await Promise.all(all);
    assert.deepEqual(
      got,
      Array.from({ length: 10 }, (_, n) => n % 2 ? "REQUEST_TIMEOUT" : { n }),
    );
    assert.equal(transport.stats().timeouts, 5);
    assert.equal(transport.stats().pending_requests, 0);
    for (let n = 1; n < 10; n += 2) gates.get(n)!();
  } finally {
    await transport.close();
  }
});

Deno.test("once every request is answered no timer is left behind, even without close()", async () => {
  // The op sanitizer fails this test if the shared deadline timer outlives the last request.
  const { transport, gates, ask } = setup();
  await transport.start();
  const first = ask(1, 60_000);
  const second = ask(2, 30_000);
  gates.get(2)!();
  gates.get(1)!();
  assert.deepEqual(await Promise.all([first, second]), [{ n: 1 }, { n: 2 }]);
  assert.equal(transport.stats().pending_requests, 0);
});

Deno.test("close() rejects waiting requests and clears the deadline timer", async () => {
  const { transport, ask } = setup();
  await transport.start();
  const waiting = outcome(ask(1, 60_000));
  await transport.close();
  assert.equal(await waiting, "CLUSTER_UNAVAILABLE");
});
