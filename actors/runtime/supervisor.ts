/**
 * Runs the supervisor statechart over the actor registry with real effects.
 *
 * `startSupervisor` builds each registry entry's logic (`spec.create(services)`), starts
 * the root actor with the inspector attached, and keeps the process safe: an error that
 * escapes an actor is logged, never thrown into the event loop.
 * @module
 */
import { type ActorOptions, type AnyActorRef, createActor } from "xstate";
import { type Logger, silentLogger } from "../../lib/log.ts";
import {
  type ChildStatus,
  supervisedChildren,
  supervisorMachine,
} from "../../machines/supervisor.ts";
import type { Inspector } from "./inspector.ts";
import type { ActorSpec, RuntimeServices } from "./types.ts";

/** A running supervisor. */
export interface Supervisor {
  /** The root actor. */
  readonly actor: ReturnType<typeof createActor<typeof supervisorMachine>>;
  /** The registry entry of an actor id. */
  spec(id: string): ActorSpec | undefined;
  /** The running actor with that id (undefined while restarting or stopped). */
  ref(id: string): AnyActorRef | undefined;
  /** Children's statuses. */
  children(): Record<string, ChildStatus>;
  /** `healthy`, `degraded` or `stopped`, with the reason. */
  state(): { state: "healthy" | "degraded" | "stopped"; reason: string };
  /** Stops every child in reverse start order. */
  stop(): void;
}

/** Options of {@linkcode startSupervisor}. */
export interface SupervisorOptions {
  /** Registry entries, in start order. */
  specs: ActorSpec[];
  /** Services handed to each actor factory (their `log` is renamed per actor). */
  services: RuntimeServices;
  /** Live inspection. */
  inspector?: Inspector;
  /** Restart intensity: failures tolerated within `withinMs`. */
  maxRestarts?: number;
  /** Restart intensity window. */
  withinMs?: number;
  /** Clock for delays (SimulatedClock in tests). */
  clock?: ActorOptions<typeof supervisorMachine>["clock"];
  /** Logger. */
  log?: Logger;
}

/** Starts the supervisor and its children. */
export function startSupervisor(options: SupervisorOptions): Supervisor {
  const log = options.log ?? silentLogger;
  const specs = new Map(options.specs.map((s) => [s.id, s]));
  if (specs.size !== options.specs.length) {
    throw new Error("Actor ids in the registry must be unique");
  }
  const children = options.specs.map((spec) => {
    const services = { ...options.services, log: options.services.log.child(spec.id) };
    return { id: spec.id, logic: spec.create(services), input: spec.input?.(services) };
  });
  const actor = createActor(supervisorMachine, {
    id: "supervisor",
    input: {
      children,
      maxRestarts: options.maxRestarts,
      withinMs: options.withinMs,
    },
    // An explicit `clock: undefined` would replace XState's default clock.
    ...(options.clock ? { clock: options.clock } : {}),
    inspect: options.inspector
      ? (ev) => {
        try {
          options.inspector!.inspect(ev);
        } catch (err) {
          log.error("inspector failed", { error: String(err) });
        }
      }
      : undefined,
  });
  let lastReason = "";
  actor.subscribe({
    next: (snap) => {
      if (snap.context.reason !== lastReason) {
        lastReason = snap.context.reason;
        const degraded = typeof snap.value === "object" &&
          (snap.value as { supervising?: string }).supervising === "degraded";
        (degraded ? log.warn : log.info)(`supervisor: ${lastReason}`);
      }
    },
    // The root has no parent: without this observer XState would rethrow into the loop.
    error: (err) => log.error("supervisor failed", { error: String(err) }),
  });
  actor.start();
  return {
    actor,
    spec: (id) => specs.get(id),
    ref: (id) => {
      const ref = supervisedChildren(actor.getSnapshot())[id];
      return ref && ref.getSnapshot()?.status === "active" ? ref : undefined;
    },
    children: () => actor.getSnapshot().context.children,
    state() {
      const snap = actor.getSnapshot();
      if (snap.status !== "active") return { state: "stopped", reason: snap.context.reason };
      const sub = (snap.value as { supervising?: string }).supervising;
      return { state: sub === "degraded" ? "degraded" : "healthy", reason: snap.context.reason };
    },
    stop() {
      if (actor.getSnapshot().status === "active") actor.send({ type: "STOP" });
    },
  };
}
