/**
 * Model-based walks of a statechart: @xstate/graph explores the reachable states of the
 * REAL machine (the definition from machines/, provided with scripted effects and run on a
 * SimulatedClock), and every path it finds is driven again, step by step, with invariants
 * checked after each step.
 *
 * The walk is over *moves* of the machine's environment, not over the machine's own
 * events: `send` (an external event), `settle` (a running effect answers with a named,
 * scripted outcome; an effect that never answers is modelled by not settling it) and
 * `tick` (the simulated clock moves to the next pending timer). Effects are a scripted
 * actor logic that answers synchronously when told to, so one move is one synchronous step
 * of the real actor and a path replays deterministically.
 *
 * A state of the walk is the model's abstraction of (snapshot, world) plus the running
 * effects and the pending timers relative to now; @xstate/graph's `getAdjacencyMap` explores
 * it breadth first (to a depth bound), `getShortestPaths` gives a shortest path to every
 * state, and each (state, move) pair becomes one path: shortest path + that move. Each path
 * is then replayed from scratch on a fresh actor; a broken invariant reports the path as a
 * JSON list of moves that {@linkcode replay} runs again.
 * @module
 */
import {
  type ActorLogic,
  type AnyActorLogic,
  type AnyActorRef,
  createActor,
  type EventObject,
  SimulatedClock,
  type Snapshot,
} from "xstate";
import { getAdjacencyMap } from "@xstate/graph";

/** One move of the environment. */
export type Move =
  | { type: "send"; event: EventObject & Record<string, unknown> }
  | { type: "settle"; src: string; outcome: string }
  | { type: "tick"; ms: number };

/** A running effect (an invoked or spawned scripted actor). */
export interface Call {
  /** Effect name (the `src` the machine invokes). */
  src: string;
  /** Its input. */
  input: unknown;
  /** Simulated time it started. */
  startedAt: number;
  /** Start order, for determinism. */
  seq: number;
  /** The running actor. */
  ref: AnyActorRef;
}

/** What an outcome answers: an output, or an error. */
export type Answer = { output: unknown } | { error: unknown };

/** What a model sees of one run. */
export interface Run<W> {
  /** The simulated clock of this run. */
  clock: SimulatedClock;
  /** The model's world (fake servers, monitors for invariants), rebuilt for every replay. */
  world: W;
  /** A scripted effect logic for `src` (answers only when a `settle` move says so). */
  effect(src: string): AnyActorLogic;
}

/** A step as the invariants see it. */
export interface StepView<W> {
  /** Snapshot after the move. */
  // deno-lint-ignore no-explicit-any
  snapshot: any;
  /** Snapshot before the move. */
  // deno-lint-ignore no-explicit-any
  prev: any;
  /** The move (null for the initial snapshot). */
  move: Move | null;
  /** Simulated time after the move. */
  now: number;
  /** The world after the move. */
  world: W;
  /** Events the actor emitted during the move. */
  emitted: EventObject[];
}

/** A chart's model: how to build the real machine with scripted effects, its moves and invariants. */
export interface ChartModel<W> {
  /** Chart name (as in machines/mod.ts). */
  name: string;
  /** Longest path explored. */
  maxDepth: number;
  /** A fresh world. */
  world(): W;
  /** The real machine, provided with `run.effect(src)` for its effects, and its input. */
  build(run: Run<W>): { logic: AnyActorLogic; input?: unknown };
  /** External events worth sending in this snapshot. */
  // deno-lint-ignore no-explicit-any
  events(snapshot: any, world: W): (EventObject & Record<string, unknown>)[];
  /** Outcomes per effect: each computes its answer when chosen (it may change the world). */
  effects: Record<string, Record<string, (call: Call, run: Run<W>) => Answer>>;
  /** Outcomes worth trying for this call (default: all of them). */
  outcomes?(call: Call, world: W): string[];
  /** The abstraction of a state: what must differ for two states to be explored apart. */
  // deno-lint-ignore no-explicit-any
  key(snapshot: any, world: W, now: number): unknown;
  /** Invariants: each returns null, or a sentence saying what broke. */
  invariants: Record<string, (step: StepView<W>) => string | null>;
  /** Emitted events to record (default: every one). */
  observe?: boolean;
}

/** The end of a replay. */
export interface Replayed<W> {
  // deno-lint-ignore no-explicit-any
  snapshot: any;
  world: W;
  now: number;
  /** Running effects, oldest first. */
  calls: Call[];
  /** Pending timers, due in ms from now, sorted. */
  timers: number[];
  /** First broken invariant, with the step (1-based; 0: the initial snapshot) it broke at. */
  violation: { step: number; invariant: string; message: string } | null;
  /** Steps driven. */
  steps: number;
}

const SETTLE = "model.settle";

/** Replays `moves` on a fresh actor of the model's real machine, checking invariants after each. */
export function replay<W>(model: ChartModel<W>, moves: readonly Move[]): Replayed<W> {
  const clock = new SimulatedClock();
  const world = model.world();
  const calls: Call[] = [];
  let seq = 0;
  const run: Run<W> = {
    clock,
    world,
    effect(src: string): AnyActorLogic {
      const logic: ActorLogic<
        Snapshot<unknown> & { input: unknown },
        EventObject & { answer?: Answer },
        unknown
      > = {
        transition(snapshot, event) {
          if (event.type !== SETTLE || snapshot.status !== "active" || !event.answer) {
            return snapshot;
          }
          return "error" in event.answer
            ? { ...snapshot, status: "error", error: event.answer.error }
            : { ...snapshot, status: "done", output: event.answer.output };
        },
        getInitialSnapshot(_scope, input) {
          return { status: "active", output: undefined, error: undefined, input };
        },
        start(snapshot, scope) {
          calls.push({
            src,
            input: snapshot.input,
            startedAt: clock.now(),
            seq: seq++,
            ref: scope.self,
          });
        },
        getPersistedSnapshot: (snapshot) => snapshot,
      };
      return logic as unknown as AnyActorLogic;
    },
  };
  const { logic, input } = model.build(run);
  const actor = createActor(logic, { clock, input });
  const emitted: EventObject[] = [];
  if (model.observe !== false) actor.on("*", (e) => emitted.push(e));
  actor.start();

  function live(): Call[] {
    for (let i = calls.length - 1; i >= 0; i--) {
      // A stopped actor (its state was left) keeps an "active" snapshot; XState's
      // processing status says it no longer runs.
      const ref = calls[i].ref as unknown as { _processingStatus: number };
      const status = calls[i].ref.getSnapshot().status;
      if (status !== "active" || ref._processingStatus !== 1) calls.splice(i, 1);
    }
    return calls;
  }
  let prev = actor.getSnapshot();
  let violation: Replayed<W>["violation"] = null;
  function check(step: number, move: Move | null): void {
    const snapshot = actor.getSnapshot();
    const view: StepView<W> = {
      snapshot,
      prev,
      move,
      now: clock.now(),
      world,
      emitted: emitted.splice(0),
    };
    for (const [name, invariant] of Object.entries(model.invariants)) {
      const broken = invariant(view);
      if (broken !== null) {
        violation = { step, invariant: name, message: broken };
        return;
      }
    }
    prev = snapshot;
  }
  check(0, null);
  let steps = 0;
  for (const move of moves) {
    if (violation) break;
    steps++;
    if (move.type === "send") {
      actor.send(move.event);
    } else if (move.type === "tick") {
      clock.increment(move.ms);
    } else {
      const call = live().find((c) => c.src === move.src);
      if (!call) throw new Error(`replay: no running ${move.src} to settle (step ${steps})`);
      const answer = model.effects[move.src][move.outcome](call, run);
      call.ref.send({ type: SETTLE, answer });
    }
    check(steps, move);
  }
  const now = clock.now();
  const timers = [
    ...(clock as unknown as { timeouts: Map<number, { start: number; timeout: number }> })
      .timeouts.values(),
  ]
    .map((t) => t.start + t.timeout - now)
    .sort((a, b) => a - b);
  const result: Replayed<W> = {
    snapshot: actor.getSnapshot(),
    world,
    now,
    calls: [...live()],
    timers,
    violation,
    steps,
  };
  actor.stop();
  return result;
}

/** The moves available at the end of a replay. */
export function movesAt<W>(model: ChartModel<W>, at: Replayed<W>): Move[] {
  if (at.violation || at.snapshot.status !== "active") return [];
  const moves: Move[] = [];
  for (const event of model.events(at.snapshot, at.world)) moves.push({ type: "send", event });
  const seen = new Set<string>();
  for (const call of at.calls) {
    if (seen.has(call.src) || !(call.src in model.effects)) continue;
    seen.add(call.src);
    const names = model.outcomes?.(call, at.world) ?? Object.keys(model.effects[call.src]);
    for (const outcome of names) moves.push({ type: "settle", src: call.src, outcome });
  }
  if (at.timers.length > 0) moves.push({ type: "tick", ms: Math.max(0, at.timers[0]) });
  return moves;
}

function keyOf<W>(model: ChartModel<W>, at: Replayed<W>): string {
  return JSON.stringify([
    at.snapshot.status,
    at.snapshot.value,
    model.key(at.snapshot, at.world, at.now),
    at.calls.map((c) => c.src),
    at.timers,
    at.violation?.invariant ?? null,
  ]);
}

/** A state of the walk as @xstate/graph sees it. */
type WalkState = Snapshot<unknown> & {
  path: Move[];
  key: string;
  moves: Move[];
  violation: Replayed<unknown>["violation"];
};

/** Figures of one chart's walk. */
export interface WalkReport {
  chart: string;
  /** Distinct states reached (of the abstraction) within the depth bound. */
  states: number;
  /** Paths driven: one per (state, move) pair, plus the empty one. */
  paths: number;
  /** Steps driven over all paths. */
  steps: number;
  /** Longest path. */
  longest: number;
  /** The depth bound. */
  maxDepth: number;
  /** Broken invariants, each with its replayable path. */
  violations: { invariant: string; message: string; step: number; path: Move[] }[];
}

/**
 * Explores the chart with @xstate/graph's `getAdjacencyMap` (breadth first, so the path
 * that first reaches a state is a shortest one) and drives the real machine along that
 * path + each available move, from scratch, checking the invariants at every step: one
 * driven path per (state, move) pair. A state whose path broke an invariant is not
 * explored further; each break is reported once with its replayable path.
 */
export function walkChart<W>(model: ChartModel<W>): WalkReport {
  const report: WalkReport = {
    chart: model.name,
    states: 0,
    paths: 0,
    steps: 0,
    longest: 0,
    maxDepth: model.maxDepth,
    violations: [],
  };
  const broken = new Set<string>();
  function at(path: Move[]): WalkState {
    const end = replay(model, path);
    report.paths++;
    report.steps += end.steps;
    report.longest = Math.max(report.longest, end.steps);
    if (end.violation) {
      const prefix = path.slice(0, end.violation.step);
      const id = end.violation.invariant + JSON.stringify(prefix);
      if (!broken.has(id)) {
        broken.add(id);
        report.violations.push({ ...end.violation, path: prefix });
      }
    }
    return {
      status: "active",
      output: undefined,
      error: undefined,
      path,
      key: keyOf(model, end),
      moves: path.length >= model.maxDepth ? [] : movesAt(model, end),
      violation: end.violation,
    };
  }
  const logic: ActorLogic<WalkState, Move, unknown> = {
    transition: (state, move) => at([...state.path, move]),
    getInitialSnapshot: () => at([]),
    getPersistedSnapshot: (s) => s,
  };
  // deno-lint-ignore no-explicit-any
  const adjacency = getAdjacencyMap(logic as any, {
    events: ((s: WalkState) => s.moves) as never,
    serializeState: ((s: WalkState) => s.key) as never,
    serializeEvent: (m: Move) => JSON.stringify(m) as never,
  });
  report.states = Object.keys(adjacency).length;
  return report;
}

/** One line per chart for the test's output. */
export function describeReport(r: WalkReport): string {
  const head = `${r.chart}: ${r.states} states, ${r.paths} paths, ${r.steps} steps ` +
    `(longest ${r.longest}, depth bound ${r.maxDepth}), ${r.violations.length} invariant(s) broken`;
  return [
    head,
    ...r.violations.slice(0, 3).map((v) =>
      `  ${v.invariant} broke at step ${v.step}: ${v.message}\n  replay: ${JSON.stringify(v.path)}`
    ),
    ...(r.violations.length > 3 ? [`  ... and ${r.violations.length - 3} more`] : []),
  ].join("\n");
}
