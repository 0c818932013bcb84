/**
 * Time travel's pure part (console/history.ts): the states at a moment come from each actor's
 * last recorded transition at or before it, the range's messages become sequence arrows
 * with the state they caused, and moments parse from epoch ms or ISO dates.
 */
import assert from "node:assert/strict";
import {
  instancesAt,
  parseMoment,
  parseSeq,
  type Recorded,
  relativeTo,
  renderTimeControl,
} from "../../console/history.ts";
import { renderMessages } from "../../console/render.ts";

function t(
  serverAt: number,
  instance: string,
  path: string,
  state: unknown,
  cause?: string,
): Recorded {
  return {
    k: "transition",
    entryId: `${serverAt}-0`,
    serverAt,
    instance,
    at: serverAt,
    seq: serverAt,
    path,
    event: `E${serverAt}`,
    state,
    ...(cause && { cause }),
    machine: path === "supervisor" ? "supervisor" : "failover",
  };
}

const crash: Recorded = {
  k: "message",
  entryId: "150-0",
  serverAt: 150,
  instance: "b",
  id: "m-1",
  kind: "send",
  from: { instance: "a", actor: "runtime" },
  to: { instance: "b", actor: "failover" },
  event: "PROMOTE",
  sentAt: 149,
};

const entries: Recorded[] = [
  t(100, "a", "supervisor", { supervising: "healthy" }),
  t(100, "b", "supervisor", { supervising: "healthy" }),
  t(120, "b", "supervisor/failover", "following"),
  crash,
  t(151, "b", "supervisor/failover", "promoting", "m-1"),
  t(200, "b", "supervisor/failover", "primary"),
];

Deno.test("time travel from recorded entries", async (t2) => {
  const newestFirst = [...entries].reverse();

  await t2.step("each actor is in the state of its last transition at the moment", () => {
    const at = (moment: number) =>
      instancesAt(newestFirst, entries, { from: 0, at: moment })
        .map((i) => [i.member.id, i.actors.map((a) => `${a.path}=${JSON.stringify(a.state)}`)]);
    assert.deepEqual(at(130), [
      ["a", ['supervisor={"supervising":"healthy"}']],
      ["b", ['supervisor={"supervising":"healthy"}', 'supervisor/failover="following"']],
    ]);
    assert.deepEqual(at(151)[1][1], [
      'supervisor={"supervising":"healthy"}',
      'supervisor/failover="promoting"',
    ]);
    assert.deepEqual(at(500)[1][1][1], 'supervisor/failover="primary"');
  });

  await t2.step("one event inside a millisecond (one recorder batch): by stream sequence", () => {
    // b's failover went promoting → primary within one batch, stored in one millisecond.
    const batch: Recorded[] = [
      { ...t(300, "b", "supervisor/failover", "promoting"), entryId: "300-0" },
      { ...t(300, "b", "supervisor/failover", "primary"), entryId: "300-1" },
    ];
    const state = (seq: number | null) =>
      instancesAt([...batch].reverse(), batch, { from: 0, at: 300, seq })[0].actors[0].state;
    assert.equal(state(0), "promoting");
    assert.equal(state(1), "primary");
    assert.equal(state(null), "primary", "without seq: the whole millisecond");
    assert.equal(relativeTo(batch[1], { from: 0, at: 300, seq: 0 }), 1);
    assert.equal(relativeTo(batch[0], { from: 0, at: 301 }), -1);
  });

  await t2.step("the range's message is an arrow with the state it caused", () => {
    const instances = instancesAt(newestFirst, entries, { from: 140, at: 160 });
    const html = renderMessages(instances);
    assert.match(html, /send m-1 from a\/runtime to b\/supervisor\/failover: E151, now promoting/);
    // Before the range starts nothing of it is drawn.
    const before = instancesAt(newestFirst, entries, { from: 0, at: 140 });
    assert.match(renderMessages(before), /No correlated messages/);
  });

  await t2.step("moments are epoch ms or ISO dates; step links keep the filters", () => {
    assert.equal(parseMoment("1700000000000"), 1700000000000);
    assert.equal(parseMoment("2026-12-07T03:12:00Z"), Date.UTC(2026, 11, 7, 3, 12));
    assert.equal(parseMoment("yesterday"), null);
    assert.equal(parseMoment(""), null);
    const html = renderTimeControl({
      moment: { from: 100, at: 150 },
      prev: { at: 120, seq: null },
      next: null,
      keep: { concern: "failover" },
    });
    assert.match(
      html,
      /<a rel="prev" data-step="prev" href="\/\?concern=failover&amp;from=100&amp;at=120">/,
    );
    // A step to one event of a millisecond names it by its stream sequence.
    const one = renderTimeControl({
      moment: { from: 100, at: 150, seq: 2 },
      prev: null,
      next: { at: 150, seq: 3 },
      keep: {},
    });
    assert.match(one, /<a rel="next" data-step="next" href="\/\?from=100&amp;at=150&amp;seq=3">/);
    assert.equal(parseSeq("3"), 3);
    assert.equal(parseSeq("-1"), null);
    assert.equal(parseSeq("1e3"), null);
    assert.equal(parseSeq(undefined), null);
    assert.match(html, /<span class="muted">next event ▶<\/span>/);
    assert.match(html, /href="\/console\/export\?from=100&amp;to=150"/);
  });
});
