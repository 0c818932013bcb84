/**
 * `probeNode` (actors/failover/effects.ts) against a real PostgreSQL 15 server reached
 * through a TCP relay this test controls, to reproduce what a crash does to the probe's kept
 * connection: the connection still looks open to the client, the query sent on it meets a
 * closed socket ("connection lost"), and a fresh connection is refused.
 */
import assert from "node:assert/strict";
import { type FailoverDeps, probeNode } from "../../actors/failover/effects.ts";
import { createNodeClient } from "../../actors/failover/nodes.ts";
import { startPostgres } from "../harness/mod.ts";

/**
 * A relay to `port`. `crash()` stops accepting (new connections are refused) and closes
 * each open connection the next time its client sends anything, without an answer: the
 * client learns its connection is gone only by using it, like a backend that died under it.
 */
function relay(port: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let crashed = false;
  const open = new Set<Deno.Conn>();
  const work = new Set<Promise<void>>();
  const track = (p: Promise<void>) => {
    work.add(p);
    p.finally(() => work.delete(p));
  };
  const close = (c: Deno.Conn) => {
    if (open.delete(c)) c.close();
  };
  async function pump(from: Deno.Conn, to: Deno.Conn, upstream: boolean): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    try {
      while (true) {
        const n = await from.read(buf);
        if (n === null || (upstream && crashed)) break;
        let sent = 0;
        while (sent < n) sent += await to.write(buf.subarray(sent, n));
      }
    } catch { /* the other side closed */ }
    close(from);
    close(to);
  }
  track((async () => {
    try {
      for await (const client of listener) {
        const server = await Deno.connect({ hostname: "127.0.0.1", port });
        open.add(client);
        open.add(server);
        track(pump(client, server, true));
        track(pump(server, client, false));
      }
    } catch { /* closed by crash() */ }
  })());
  return {
    url: `postgres://postgres@127.0.0.1:${(listener.addr as Deno.NetAddr).port}/postgres`,
    address: `127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    crash() {
      crashed = true;
      listener.close();
    },
    async [Symbol.asyncDispose]() {
      if (!crashed) this.crash();
      for (const c of [...open]) close(c);
      await Promise.all([...work]);
    },
  };
}

Deno.test("a probe whose kept connection died looks again on a fresh one", async () => {
  await using pg = await startPostgres({ name: "probe1" });
  await using link = relay(pg.port);
  const client = createNodeClient({ name: "px", url: link.url, address: link.address }, {
    applicationName: "probe-test",
  });
  const deps = { nodes: new Map([["px", client]]), now: Date.now } as unknown as FailoverDeps;
  try {
    const before = await probeNode(deps, "px", 5000);
    assert.deepEqual([before.ok, before.error], [true, null], "answered through the relay");
    link.crash();
    // On the kept connection alone this would be "connection lost", which the fast path
    // cannot use; the fresh connection is refused, which it can.
    const after = await probeNode(deps, "px", 5000);
    assert.deepEqual([after.ok, after.refused, after.error], [false, true, "connection refused"]);
  } finally {
    await client.close();
  }
});
