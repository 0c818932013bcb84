/**
 * The runtime supervisor: spawns the concern actors from a registry and supervises them
 * like an OTP `one_for_one` supervisor.
 *
 * - A child that fails (its machine throws, an invoked effect crashes it) is restarted
 *   alone, after an exponential backoff (base · 2^(n-1), capped).
 * - Restart intensity is per child: more than `maxRestarts` failures within `withinMs`
 *   and that child is given up (status `failed`) instead of looping; the supervisor is
 *   then `degraded` until an operator sends RETRY. Per child, so one flapping actor does
 *   not stop a healthy neighbour that fails once from being restarted.
 * - A child that reaches a final state has exited normally and is not restarted
 *   (OTP `transient`).
 * - STOP stops the children in reverse start order, then the supervisor is `stopped`.
 *
 * The failure window uses only delayed events on XState's clock, so tests drive it with a
 * SimulatedClock.
 * @module
 */
import { type AnyActorLogic, type AnyActorRef, assign, enqueueActions, setup } from "xstate";

/** One child to supervise: its id, the logic to run, and its input. */
export interface ChildSpec {
  /** Actor id, unique within the supervisor. */
  id: string;
  /** Logic with real effects (`machine.provide(...)`). */
  logic: AnyActorLogic;
  /** Input given to each incarnation. */
  input?: unknown;
}

/** Status of one supervised child. */
export interface ChildStatus {
  /** running, restarting (backoff pending), failed (given up), exited (final state), stopped. */
  status: "running" | "restarting" | "failed" | "exited" | "stopped";
  /** Restarts since start. */
  restarts: number;
  /** Failures inside the current intensity window. */
  recentFailures: number;
  /** Incarnation number (1 for the first start). */
  generation: number;
  /** The last failure, as a sentence. */
  lastError: string | null;
}

/** Input of the supervisor. */
export interface SupervisorInput {
  /** Children in start order. */
  children: ChildSpec[];
  /** K: failures tolerated within the window (default 5). */
  maxRestarts?: number;
  /** T: the intensity window in ms (default 60 s). */
  withinMs?: number;
  /** First restart delay in ms (default 100). */
  backoffBaseMs?: number;
  /** Longest restart delay in ms (default 10 s). */
  backoffMaxMs?: number;
}

/** Context of the supervisor. */
export interface SupervisorContext {
  specs: ChildSpec[];
  order: string[];
  children: Record<string, ChildStatus>;
  maxRestarts: number;
  withinMs: number;
  backoffBaseMs: number;
  backoffMaxMs: number;
  /**
   * Per child, how many times an operator retried it: a failure's window event carries the
   * count it was raised under, so failures from before a RETRY (whose count was reset) can
   * no longer be forgotten in place of failures that came after it.
   */
  epochs: Record<string, number>;
  /** Why the supervisor is in its current state, one sentence. */
  reason: string;
}

/** Events the supervisor handles. */
export type SupervisorEvent =
  | { type: "RESTART"; id: string }
  | { type: "WINDOW_EXPIRED"; id: string; epoch?: number }
  | { type: "RETRY"; id: string }
  | { type: "STOP" }
  | { type: `xstate.error.actor.${string}`; error: unknown; actorId?: string }
  | { type: `xstate.done.actor.${string}`; output?: unknown; actorId?: string };

function childId(event: { type: string; actorId?: string }): string {
  return event.actorId ?? event.type.replace(/^xstate\.(error|done)\.actor\./, "");
}

function describe(error: unknown): string {
  if (error instanceof Error) return error.message;
  try {
    return JSON.stringify(error);
  } catch {
    return String(error);
  }
}

/**
 * Spawn options for a child whose id is only known at run time (the registry is data,
 * not part of the machine's static types).
 */
function spawnOptions(id: string, input: unknown): { id: undefined; input: unknown } {
  return { id, input } as unknown as { id: undefined; input: unknown };
}

/** The running child actors of a supervisor snapshot, by id. */
export function supervisedChildren(
  snapshot: { children: unknown },
): Record<string, AnyActorRef | undefined> {
  return snapshot.children as Record<string, AnyActorRef | undefined>;
}

/**
 * Stops the actors a failed child had spawned or invoked. XState stops a failing actor but
 * leaves its own children running (see the TODO in xstate's `_stopProcedure`), so their
 * timers, sockets and callbacks would leak with every crash; the supervisor reaps them.
 */
function reapOrphans(self: AnyActorRef, id: string): void {
  const failed = supervisedChildren(self.getSnapshot())[id];
  if (!failed) return;
  const stack = Object.values(supervisedChildren(failed.getSnapshot()) ?? {});
  while (stack.length) {
    const orphan = stack.pop();
    if (!orphan) continue;
    stack.push(...Object.values(supervisedChildren(orphan.getSnapshot() ?? {}) ?? {}));
    // `stop()` refuses non-root actors; `_stop` is the internal stop XState itself uses.
    (orphan as unknown as { _stop(): void })._stop();
  }
}

/** Restart delay for the n-th recent failure. */
export function backoffDelay(
  n: number,
  options: { baseMs: number; maxMs: number },
): number {
  return Math.min(options.baseMs * 2 ** Math.max(0, n - 1), options.maxMs);
}

/** The supervisor statechart. */
export const supervisorMachine = setup({
  types: {
    context: {} as SupervisorContext,
    input: {} as SupervisorInput,
    events: {} as SupervisorEvent,
  },
  guards: {
    /** This failure exceeds the child's restart intensity. */
    intensityExceeded: ({ context, event }) => {
      const id = childId(event as { type: string; actorId?: string });
      const child = context.children[id];
      return !!child && child.recentFailures + 1 > context.maxRestarts;
    },
    /** Some child was given up. */
    anyFailed: ({ context }) => Object.values(context.children).some((c) => c.status === "failed"),
    /** No child is given up. */
    noneFailed: ({ context }) =>
      !Object.values(context.children).some((c) => c.status === "failed"),
    /** The event names a known, supervised child. */
    knownChild: ({ context, event }) => {
      const id = childId(event as { type: string; actorId?: string });
      return id in context.children;
    },
  },
  actions: {
    /** Spawns every child in registry order. */
    spawnAll: enqueueActions(({ context, enqueue }) => {
      for (const spec of context.specs) {
        enqueue.spawnChild(spec.logic, spawnOptions(spec.id, spec.input));
      }
    }),
    /** Counts the failure, forgets it after the window, and schedules a restart. */
    scheduleRestart: enqueueActions(({ context, event, enqueue }) => {
      const e = event as { type: string; actorId?: string; error?: unknown };
      const id = childId(e);
      const child = context.children[id];
      const n = child.recentFailures + 1;
      const delay = backoffDelay(n, { baseMs: context.backoffBaseMs, maxMs: context.backoffMaxMs });
      enqueue.assign({
        children: {
          ...context.children,
          [id]: { ...child, status: "restarting", recentFailures: n, lastError: describe(e.error) },
        },
        reason: `restarting ${id} in ${delay} ms because it failed: ${describe(e.error)}`,
      });
      // The failed incarnation stays in `children` until removed; drop it so the id is free.
      enqueue(({ self }) => reapOrphans(self, id));
      enqueue.stopChild(id);
      enqueue.raise({ type: "WINDOW_EXPIRED", id, epoch: context.epochs[id] ?? 0 }, {
        delay: context.withinMs,
      });
      enqueue.raise({ type: "RESTART", id }, { delay, id: `restart.${id}` });
    }),
    /** Marks the child given up: too many failures inside the window. */
    giveUp: enqueueActions(({ context, event, enqueue }) => {
      const e = event as { type: string; actorId?: string; error?: unknown };
      const id = childId(e);
      const child = context.children[id];
      enqueue.assign({
        children: {
          ...context.children,
          [id]: {
            ...child,
            status: "failed",
            recentFailures: child.recentFailures + 1,
            lastError: describe(e.error),
          },
        },
        reason: `gave up ${id} because it failed ${child.recentFailures + 1} times within ` +
          `${context.withinMs} ms (limit ${context.maxRestarts}): ${describe(e.error)}`,
      });
      enqueue(({ self }) => reapOrphans(self, id));
      enqueue.stopChild(id);
      enqueue.raise({ type: "WINDOW_EXPIRED", id, epoch: context.epochs[id] ?? 0 }, {
        delay: context.withinMs,
      });
    }),
    /** Starts a new incarnation of a child waiting for its restart. */
    restartChild: enqueueActions(({ context, event, enqueue }) => {
      const id = (event as { id: string }).id;
      const child = context.children[id];
      const spec = context.specs.find((s) => s.id === id);
      if (!child || !spec || child.status !== "restarting") return;
      enqueue.spawnChild(spec.logic, spawnOptions(id, spec.input));
      enqueue.assign({
        children: {
          ...context.children,
          [id]: {
            ...child,
            status: "running",
            restarts: child.restarts + 1,
            generation: child.generation + 1,
          },
        },
        reason: `restarted ${id} (restart ${child.restarts + 1})`,
      });
    }),
    /** An operator asked to try a given-up child again. */
    retryChild: enqueueActions(({ context, event, enqueue }) => {
      const id = (event as { id: string }).id;
      const child = context.children[id];
      const spec = context.specs.find((s) => s.id === id);
      if (!child || !spec || (child.status !== "failed" && child.status !== "exited")) return;
      enqueue.spawnChild(spec.logic, spawnOptions(id, spec.input));
      enqueue.assign({
        children: {
          ...context.children,
          [id]: {
            ...child,
            status: "running",
            recentFailures: 0,
            restarts: child.restarts + 1,
            generation: child.generation + 1,
          },
        },
        epochs: { ...context.epochs, [id]: (context.epochs[id] ?? 0) + 1 },
        reason: `retried ${id} on operator request`,
      });
    }),
    /** A failure left the intensity window. */
    forgetFailure: assign({
      children: ({ context, event }) => {
        const { id, epoch } = event as { id: string; epoch?: number };
        const child = context.children[id];
        // A failure from before the operator's last RETRY was already forgotten by it.
        if (!child || (epoch ?? 0) !== (context.epochs[id] ?? 0)) return context.children;
        return {
          ...context.children,
          [id]: { ...child, recentFailures: Math.max(0, child.recentFailures - 1) },
        };
      },
    }),
    /** A child reached its final state. */
    markExited: enqueueActions(({ context, event, enqueue }) => {
      const id = childId(event as { type: string; actorId?: string });
      enqueue.stopChild(id);
      enqueue.assign({
        children: { ...context.children, [id]: { ...context.children[id], status: "exited" } },
        reason: `${id} exited normally`,
      });
    }),
    /** Stops the children in reverse start order and cancels pending restarts. */
    stopAll: enqueueActions(({ context, enqueue }) => {
      for (const id of [...context.order].reverse()) {
        enqueue.cancel(`restart.${id}`);
        enqueue.stopChild(id);
      }
      const children: Record<string, ChildStatus> = {};
      for (const [id, c] of Object.entries(context.children)) {
        children[id] = { ...c, status: c.status === "running" ? "stopped" : c.status };
      }
      enqueue.assign({ children, reason: "stopped on request" });
    }),
  },
}).createMachine({
  id: "supervisor",
  context: ({ input }) => ({
    specs: input.children,
    order: input.children.map((c) => c.id),
    children: Object.fromEntries(
      input.children.map((c) => [c.id, {
        status: "running" as const,
        restarts: 0,
        recentFailures: 0,
        generation: 1,
        lastError: null,
      }]),
    ),
    maxRestarts: input.maxRestarts ?? 5,
    withinMs: input.withinMs ?? 60_000,
    backoffBaseMs: input.backoffBaseMs ?? 100,
    backoffMaxMs: input.backoffMaxMs ?? 10_000,
    epochs: Object.fromEntries(input.children.map((c) => [c.id, 0])),
    reason: `started ${input.children.length} children`,
  }),
  initial: "supervising",
  states: {
    supervising: {
      entry: "spawnAll",
      initial: "healthy",
      states: {
        healthy: {
          always: { guard: "anyFailed", target: "degraded" },
        },
        degraded: {
          always: { guard: "noneFailed", target: "healthy" },
        },
      },
      on: {
        "xstate.error.actor.*": [
          { guard: "intensityExceeded", actions: "giveUp", target: ".degraded" },
          { guard: "knownChild", actions: "scheduleRestart" },
        ],
        "xstate.done.actor.*": { guard: "knownChild", actions: "markExited" },
        RESTART: { actions: "restartChild" },
        RETRY: { actions: "retryChild", target: ".healthy" },
        WINDOW_EXPIRED: { actions: "forgetFailure" },
        STOP: { target: "stopped", actions: "stopAll" },
      },
    },
    stopped: { type: "final" },
  },
});
