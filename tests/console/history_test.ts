/**
 * Time travel's pure part (console/history.ts): the states at a moment come from each actor's
 * last recorded transition at or before it, on top of its instance's newest keyframe; the
 * range's messages become sequence arrows with the state they caused; moments parse from
 * epoch ms or ISO dates; a truncated range says so.
 */
import assert from "node:assert/strict";
import {
  instancesAt,
  parseMoment,
  parseSeq,
  type Recorded,
  relativeTo,
  renderReport,
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

  await t2.step("one event inside a millisecond (one recorder batch): by entry and index", () => {
    // b's failover went promoting → primary within one flush: one stream entry, two records;
    // a's entry came next in the same millisecond.
    const batch: Recorded[] = [
      { ...t(300, "b", "supervisor/failover", "promoting"), entryId: "300-0.0" },
      { ...t(300, "b", "supervisor/failover", "primary"), entryId: "300-0.1" },
      { ...t(300, "a", "supervisor", "degraded"), entryId: "300-1.0" },
    ];
    const states = (seq: readonly [number, number] | null) =>
      instancesAt([...batch].reverse(), batch, { from: 0, at: 300, seq })
        .map((i) => `${i.member.id}:${i.actors.map((a) => a.state).join()}`);
    assert.deepEqual(states([0, 0]), ["b:promoting"]);
    assert.deepEqual(states([0, 1]), ["b:primary"]);
    assert.deepEqual(states([1, 0]), ["a:degraded", "b:primary"]);
    assert.deepEqual(states(null), ["a:degraded", "b:primary"], "without seq: the millisecond");
    assert.equal(relativeTo(batch[1], { from: 0, at: 300, seq: [0, 0] }), 1);
    assert.equal(relativeTo(batch[2], { from: 0, at: 300, seq: [0, 1] }), 1);
    assert.equal(relativeTo(batch[0], { from: 0, at: 300, seq: [0, 1] }), -1);
    assert.equal(relativeTo(batch[0], { from: 0, at: 301 }), -1);
    // An entry written before batching (`<ms>-<n>`) is its own first record.
    assert.equal(relativeTo({ entryId: "300-1" }, { from: 0, at: 300, seq: [1, 0] }), 0);
  });

  await t2.step(
    "a keyframe gives the actors that did not move since; older moves no longer count",
    () => {
      const keyframe = (
        serverAt: number,
        instance: string,
        actors: [string, unknown][],
      ): Recorded => ({
        k: "keyframe",
        entryId: `${serverAt}-0.0`,
        serverAt,
        instance,
        at: serverAt,
        actors: actors.map(([path, state]) => ({ path, machine: path, state })),
      });
      const recorded: Recorded[] = [
        t(100, "b", "supervisor/sync", "old"),
        keyframe(1000, "b", [["supervisor", "healthy"], ["supervisor/leases", "holding"]]),
        keyframe(1000, "a", [["supervisor", "healthy"]]),
        t(2000, "b", "supervisor", "degraded"),
        keyframe(3000, "b", [["supervisor", "healthy"], ["supervisor/leases", "standby"]]),
      ];
      // Only the newest records up to the moment are read (here: none of b's keyframe or
      // before); the keyframes come from the index.
      const newest = [recorded[3]];
      const states = (at: number, kf: Recorded[]) =>
        instancesAt(newest.filter((r) => r.serverAt <= at), [], { from: 0, at }, kf)
          .map((i) => [i.member.id, i.actors.map((a) => `${a.path}=${a.state}`).join(" ")]);
      assert.deepEqual(states(2500, [recorded[1], recorded[2]]), [
        ["a", "supervisor=healthy"],
        // leases has not moved since the keyframe at 1000: it is there, in the keyframe's state;
        // sync stopped before that keyframe: its move at 100 no longer counts.
        ["b", "supervisor=degraded supervisor/leases=holding"],
      ]);
      // A keyframe after the moment is not used; a newer one at or before it wins over moves
      // before it.
      assert.deepEqual(states(3500, [recorded[4], recorded[2]])[1], [
        "b",
        "supervisor=healthy supervisor/leases=standby",
      ]);
      assert.deepEqual(states(500, [recorded[4], recorded[1]]), []);
      // Keyframes among the records read count too.
      const fromRecords = instancesAt([...recorded].reverse(), recorded, { from: 0, at: 2500 });
      assert.deepEqual(fromRecords.map((i) => i.actors.length), [1, 2]);
      // A keyframe is neither a transition nor a message on the timeline.
      assert.deepEqual(fromRecords.flatMap((i) => i.transitions.map((v) => v.state)), [
        "old",
        "degraded",
      ]);
    },
  );

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
      moment: { from: 100, at: 150, seq: [2, 0] },
      prev: null,
      next: { at: 150, seq: [2, 1] },
      keep: {},
    });
    assert.match(
      one,
      /<a rel="next" data-step="next" href="\/\?from=100&amp;at=150&amp;seq=2.1">/,
    );
    assert.deepEqual(parseSeq("3"), [3, 0]);
    assert.deepEqual(parseSeq("3.12"), [3, 12]);
    assert.equal(parseSeq("-1"), null);
    assert.equal(parseSeq("1e3"), null);
    assert.equal(parseSeq("1."), null);
    assert.equal(parseSeq(undefined), null);
    assert.match(html, /<span class="muted">next event ▶<\/span>/);
    assert.match(html, /href="\/console\/export\?from=100&amp;to=150"/);
  });

  await t2.step("a range cut to its newest events says so, on the page and in the report", () => {
    const control = (truncated: number | null) =>
      renderTimeControl({
        moment: { from: 100, at: 150 },
        prev: null,
        next: null,
        keep: {},
        truncated,
      });
    assert.match(
      control(5000),
      /data-truncated="5000"><strong>Range truncated<\/strong>: showing the last 5,000 events/,
    );
    assert.doesNotMatch(control(null), /truncated/i);
    const report = (truncated: number | null) =>
      renderReport({
        moment: { from: 100, at: 150 },
        truncated,
        css: "",
        matrix: "",
        charts: [],
        timeline: "",
        messages: "",
        generatedAt: 200,
        instance: "a",
      });
    assert.match(report(5000), /Range truncated<\/strong>: showing the last 5,000 events/);
    assert.doesNotMatch(report(null), /Range truncated/);
  });
});
