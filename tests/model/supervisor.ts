/**
 * Model of the `supervisor` chart: two scripted children that may crash or exit at any
 * moment, an operator who may RETRY either or STOP everything.
 *
 * Invariants: a crash is answered with a restart only while the child's failures inside
 * the intensity window (since the operator last retried it) are at most `maxRestarts`, and
 * with giving up only once they exceed it; a restart happens only for a child waiting for
 * one; nothing runs after STOP.
 * @module
 */
import { supervisorMachine } from "../../machines/supervisor.ts";
import type { ChartModel } from "./_walk.ts";

const MAX_RESTARTS = 1;
const WITHIN = 1000;
const IDS = ["a", "b"] as const;

/** The supervisor model's world: each child's failure times since the operator's last RETRY. */
export interface SupervisorWorld {
  failures: Record<string, number[]>;
}

function inWindow(times: number[], now: number): number {
  return times.filter((t) => t > now - WITHIN).length;
}

/** The supervisor chart's model. */
export const supervisorModel: ChartModel<SupervisorWorld> = {
  name: "supervisor",
  maxDepth: 11,
  world: () => ({ failures: { a: [], b: [] } }),
  build(run) {
    return {
      logic: supervisorMachine,
      input: {
        children: IDS.map((id) => ({ id, logic: run.effect(id) })),
        maxRestarts: MAX_RESTARTS,
        withinMs: WITHIN,
        backoffBaseMs: 100,
        backoffMaxMs: 400,
      },
    };
  },
  events(snapshot) {
    if (!snapshot.matches("supervising")) return [];
    const c = snapshot.context.children;
    return [
      ...IDS.filter((id) => c[id].status === "failed" || c[id].status === "exited")
        .map((id) => ({ type: "RETRY", id })),
      { type: "STOP" },
    ];
  },
  effects: Object.fromEntries(IDS.map((id) => [id, {
    crash: (_call, run) => {
      run.world.failures[id].push(run.clock.now());
      return { error: new Error(`${id} crashed`) };
    },
    exit: () => ({ output: "done" }),
  }])),
  key(snapshot, w, now) {
    const c = snapshot.context.children;
    return IDS.map((id) => [
      c[id].status,
      c[id].recentFailures,
      Math.min(c[id].generation, 6),
      w.failures[id].filter((t) => t > now - WITHIN).map((t) => now - t),
    ]);
  },
  invariants: {
    "a child is restarted only within its intensity, given up only past it": (
      { snapshot, prev, move, now, world },
    ) => {
      if (move?.type === "send" && move.event.type === "RETRY") {
        world.failures[move.event.id as string] = [];
        return null;
      }
      if (move?.type !== "settle" || move.outcome !== "crash") return null;
      const id = move.src;
      const status = snapshot.context.children[id].status;
      const n = inWindow(world.failures[id], now);
      if (status === "restarting" && n > MAX_RESTARTS) {
        return `${id} failed ${n} times within ${WITHIN} ms (limit ${MAX_RESTARTS}) and is restarted anyway`;
      }
      if (status === "failed" && n <= MAX_RESTARTS) {
        return `${id} was given up after ${n} failure(s) within ${WITHIN} ms (limit ${MAX_RESTARTS})`;
      }
      if (status !== "restarting" && status !== "failed") {
        return `${id} crashed and is ${status} (was ${prev.context.children[id].status})`;
      }
      return null;
    },
    "only a child waiting for its restart is restarted": ({ snapshot, prev, move }) => {
      for (const id of IDS) {
        const before = prev.context.children[id];
        const after = snapshot.context.children[id];
        if (after.generation === before.generation) continue;
        const retried = move?.type === "send" && move.event.type === "RETRY" &&
          move.event.id === id;
        if (!retried && before.status !== "restarting") {
          return `${id} started again from ${before.status} without an operator's RETRY`;
        }
      }
      return null;
    },
    "nothing runs after STOP": ({ snapshot }) => {
      if (snapshot.status !== "done") return null;
      const running = Object.values(snapshot.children ?? {}).length;
      return running === 0 ? null : `${running} child actor(s) still running after STOP`;
    },
  },
};
