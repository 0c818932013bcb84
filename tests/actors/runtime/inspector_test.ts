import assert from "node:assert/strict";
import { assign, createActor, createMachine, fromPromise, setup, stopChild } from "xstate";
import { createInspector } from "../../../actors/runtime/inspector.ts";
import { leaseMachine } from "../../../machines/lease.ts";
import { until } from "../../support/instance.ts";

// A parent that holds login attempts as children by id, like the session supervisor does
// (machines/session_supervisor.ts): spawned as `login:<uuid>`, stopped when they end.
const attempt = createMachine({
  id: "login",
  initial: "checking",
  states: { checking: { on: { DONE: "done" } }, done: { type: "final" } },
});
const parent = setup({
  types: {} as {
    context: { ids: string[] };
    events: { type: "START"; id: string } | { type: "END"; id: string };
  },
  actors: { attempt },
}).createMachine({
  id: "sessions",
  context: { ids: [] },
  on: {
    START: {
      actions: assign(({ context, event, spawn }) => {
        spawn("attempt", { id: event.id });
        return { ids: [...context.ids, event.id] };
      }),
    },
    END: { actions: stopChild(({ event }) => event.id) },
  },
});

function paths(list: { path: string }[]): string[] {
  return list.map((v) => v.path).filter((p) => p.includes("login:"));
}

Deno.test("inspector: views of stopped actors go after the retention", async (t) => {
  let clock = 1_000_000;
  const inspector = createInspector({ now: () => clock, retentionMs: 60_000, maxStopped: 100 });
  const root = createActor(parent, { id: "sessions", inspect: (ev) => inspector.inspect(ev) })
    .start();
  const a = `login:${crypto.randomUUID()}`;
  const b = `login:${crypto.randomUUID()}`;

  await t.step("a running login attempt is listed", () => {
    root.send({ type: "START", id: a });
    root.send({ type: "START", id: b });
    assert.deepEqual(paths(inspector.list()), [`sessions/${a}`, `sessions/${b}`]);
  });

  await t.step("a stopped attempt stays listed within the retention, as stopped", () => {
    root.send({ type: "END", id: a });
    clock += 59_000;
    assert.equal(inspector.get(`sessions/${a}`)?.status, "stopped");
    assert.deepEqual(paths(inspector.list()), [`sessions/${a}`, `sessions/${b}`]);
  });

  await t.step("after the retention the stopped attempt is gone; the running one stays", () => {
    clock += 2_000;
    assert.deepEqual(paths(inspector.list()), [`sessions/${b}`]);
    assert.equal(inspector.get(`sessions/${a}`), undefined);
    assert.ok(inspector.list().some((v) => v.path === "sessions"), "the parent stays");
  });

  await t.step("a running actor is kept however long it runs", () => {
    clock += 24 * 3600_000;
    assert.deepEqual(paths(inspector.list()), [`sessions/${b}`]);
  });
  root.stop();
});

Deno.test("inspector: at most maxStopped views of stopped actors are kept", () => {
  let clock = 0;
  const inspector = createInspector({ now: () => clock, retentionMs: 60_000, maxStopped: 10 });
  const root = createActor(parent, { id: "sessions", inspect: (ev) => inspector.inspect(ev) })
    .start();
  const ids = Array.from({ length: 50 }, () => `login:${crypto.randomUUID()}`);
  for (const id of ids) {
    root.send({ type: "START", id });
    clock += 1;
    root.send({ type: "END", id });
  }
  // A storm of attempts within the retention: only the newest 10 stopped views remain.
  assert.deepEqual(paths(inspector.list()), ids.slice(-10).map((id) => `sessions/${id}`));
  root.stop();
});

Deno.test("inspector: timer and completion steps between routine-tagged states are marked routine", async () => {
  // waiting ⇄ working twice (routine), then a third round ends in `done` (not tagged), and a
  // failed round (error event) is never routine even between tagged states.
  const cycle = setup({
    actors: {
      work: fromPromise<number, { round: number }>(({ input }) => {
        if (input.round === 2) return Promise.reject(new Error("round 2 fails"));
        return Promise.resolve(input.round);
      }),
    },
    delays: { tick: 1 },
  }).createMachine({
    id: "cycle",
    context: { round: 0 },
    initial: "waiting",
    states: {
      waiting: { tags: ["routine"], after: { tick: "working" } },
      working: {
        tags: ["routine"],
        entry: assign({ round: ({ context }) => context.round + 1 }),
        invoke: {
          src: "work",
          input: ({ context }) => ({ round: context.round }),
          onDone: [
            { guard: ({ event }) => event.output >= 4, target: "done" },
            { target: "waiting" },
          ],
          onError: "waiting",
        },
      },
      done: {},
    },
  });
  const inspector = createInspector({});
  const actor = createActor(cycle, { id: "c", inspect: (ev) => inspector.inspect(ev) }).start();
  try {
    await until(() => actor.getSnapshot().value === "done", { what: "the cycle to end" });
    const steps = inspector.transitions().filter((t) => t.path === "c")
      .map((t) => [t.event.replace(/\.cycle\..*$/, ""), t.state, t.routine ?? false]);
    assert.deepEqual(steps, [
      ["xstate.init", "waiting", false],
      ["xstate.after.tick", "working", true],
      ["xstate.done.actor.0", "waiting", true],
      ["xstate.after.tick", "working", true],
      ["xstate.error.actor.0", "waiting", false],
      ["xstate.after.tick", "working", true],
      ["xstate.done.actor.0", "waiting", true],
      ["xstate.after.tick", "working", true],
      ["xstate.done.actor.0", "done", false],
    ]);
  } finally {
    actor.stop();
  }
});

/**
 * One round of a routine cycle started by `event` instead of the timer: waiting → working →
 * waiting, both states tagged routine. The inspector's steps of the actor, with their marks.
 */
async function roundBy(event: string, timerCue = false): Promise<unknown[][]> {
  const cycle = setup({
    actors: { work: fromPromise(() => Promise.resolve(1)) },
    delays: { tick: 60_000 },
  }).createMachine({
    id: "cycle",
    initial: "waiting",
    states: {
      waiting: {
        tags: ["routine"],
        after: { tick: "working" },
        on: { [event]: "working" },
        ...(timerCue && { meta: { timerCues: [event] } }),
      },
      working: { tags: ["routine"], invoke: { src: "work", onDone: "waiting" } },
    },
  });
  const inspector = createInspector({});
  const actor = createActor(cycle, { id: "n", inspect: (ev) => inspector.inspect(ev) }).start();
  try {
    actor.send({ type: event });
    await until(
      () => inspector.transitions().filter((t) => t.path === "n").length === 3,
      { what: "the round to end" },
    );
    return inspector.transitions().filter((t) => t.path === "n")
      .map((t) => [t.event.replace(/\.cycle\..*$/, ""), t.state, t.routine ?? false]);
  } finally {
    actor.stop();
  }
}

Deno.test("inspector: a routine-tagged step is recorded when skipping it would leave the timeline behind", async () => {
  // NOW (a user event) moves waiting → working: recorded. The completion working → waiting is a
  // done event between routine states, but the unmarked steps end in `working`, so it is kept.
  assert.deepEqual(await roundBy("NOW"), [
    ["xstate.init", "waiting", false],
    ["NOW", "working", false],
    ["xstate.done.actor.0", "waiting", false],
  ]);
});

Deno.test("inspector: the lease's RENEW_NOW (another lease's renewal timer) is routine like a timer", async () => {
  // RENEW_NOW stands in for the timer: both its step and the completion back are routine, so
  // lined-up lease renewals are not written to the history stream.
  assert.deepEqual(
    leaseMachine.getStateNodeById("lease.held.waiting").meta,
    { timerCues: ["RENEW_NOW"] },
    "the lease chart declares RENEW_NOW as its waiting state's timer cue",
  );
  assert.deepEqual(await roundBy("RENEW_NOW", true), [
    ["xstate.init", "waiting", false],
    ["RENEW_NOW", "working", true],
    ["xstate.done.actor.0", "waiting", true],
  ]);
});
