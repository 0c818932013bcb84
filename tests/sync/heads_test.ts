import assert from "node:assert/strict";
import { onHeadsMessage } from "../../actors/sync/heads.ts";
import { createSyncDeps } from "../../actors/sync/state.ts";
import type { Transport } from "../../actors/runtime/types.ts";
import { createLocalBus } from "../../store/bus.ts";
import type { Sql } from "../../store/types.ts";

/** A node's deps with a clock the test moves; no database or transport is touched here. */
function node() {
  const clock = { now: 1000 };
  const deps = createSyncDeps({
    instanceId: "me",
    origin: "me~own1",
    sql: null as unknown as Sql,
    bus: createLocalBus(),
    transport: null as unknown as Transport,
    now: () => clock.now,
  });
  const gaps: number[] = [];
  deps.watch.gaps = (missing) => gaps.push(missing);
  return { deps, clock, gaps };
}

/** A copy of `s` that is a different string object, as each bus delivery is. */
const fresh = (s: string) => (" " + s).slice(1);

const heads = (s: number, c: Record<string, number> = {}) =>
  JSON.stringify({ v: 1, o: "peer~abc1", n: "peer", s, c });

Deno.test("heads announcements", async (t) => {
  await t.step("our own announcement coming back is skipped", () => {
    const { deps, gaps } = node();
    onHeadsMessage(deps, JSON.stringify({ v: 1, o: "me~own1", n: "me", s: 3, c: {} }));
    assert.equal(deps.data.peers.size, 0);
    assert.equal(deps.data.counters.rejected, 0);
    assert.deepEqual(gaps, []);
  });

  await t.step("a repeated announcement is applied again: the peer is heard now", () => {
    const { deps, clock } = node();
    onHeadsMessage(deps, heads(4, { "other~xyz9": 2 }));
    assert.equal(deps.data.peers.get("peer")?.at, 1000);
    clock.now = 2000;
    onHeadsMessage(deps, fresh(heads(4, { "other~xyz9": 2 })));
    assert.equal(deps.data.peers.get("peer")?.at, 2000);
    assert.equal(deps.data.originHeard.get("peer~abc1"), 2000);
    assert.deepEqual(deps.data.peers.get("peer")?.contig, { "other~xyz9": 2 });
    assert.equal(deps.data.headsParsed.size, 1);
  });

  await t.step("a changed announcement replaces the peer's last one and reveals gaps", () => {
    const { deps, gaps } = node();
    onHeadsMessage(deps, heads(5));
    assert.deepEqual(gaps, [5]);
    onHeadsMessage(deps, fresh(heads(5)));
    assert.deepEqual(gaps, [5], "a repeat reveals nothing new");
    onHeadsMessage(deps, heads(7));
    assert.deepEqual(gaps, [5, 7]);
    assert.equal(deps.data.headsParsed.size, 1);
    assert.equal(deps.data.headsRaw.get("peer"), heads(7));
  });

  await t.step("an invalid announcement is refused every time and never kept", () => {
    const { deps } = node();
    const bad = JSON.stringify({ v: 1, o: "no origin", n: "peer", s: 1, c: {} });
    onHeadsMessage(deps, bad);
    onHeadsMessage(deps, fresh(bad));
    assert.equal(deps.data.counters.rejected, 2);
    assert.equal(deps.data.headsParsed.size, 0);
    assert.equal(deps.data.peers.size, 0);
  });
});
