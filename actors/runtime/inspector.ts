/**
 * Live view of every state machine actor in the runtime, fed by XState's inspection API.
 *
 * Pass `inspector.inspect` as the `inspect` option of the root actor; the inspector keeps
 * each machine actor's latest state value and a context summary, a bounded log of recent
 * transitions, and notifies subscribers (the SSE stream, the membership heartbeat).
 * Subscribers that throw are isolated: they never break the actors being inspected.
 * @module
 */
import type { AnyActorRef, InspectionEvent } from "xstate";

/** What /actors shows for one actor. */
export interface ActorView {
  /** Actor id (registry id for supervised children). */
  id: string;
  /** Ids from the root down, joined with `/`. */
  path: string;
  /** Machine id (the chart name when it is one of machines/mod.ts). */
  machine: string | null;
  /** active, done, error or stopped. */
  status: string;
  /** Current state value. */
  state: unknown;
  /** Small summary of the context. */
  summary: Record<string, unknown>;
  /** When this view last changed (ms). */
  updatedAt: number;
}

/** One transition, for timelines. */
export interface TransitionRecord {
  /** Monotonic sequence number within this instance. */
  seq: number;
  /** Actor path. */
  path: string;
  /** Event type that caused it. */
  event: string;
  /** State value after it. */
  state: unknown;
  /** When (ms). */
  at: number;
  /** Delivery metadata of the transport message that caused it, when one did. */
  origin?: {
    id: string;
    from: { instance: string; actor: string };
    kind: string;
    sentAt: number;
  };
  /**
   * Set when the transition is a routine step of a periodic cycle: a timer (`xstate.after.*`, or
   * an event standing in for one such as the lease's `RENEW_NOW`) or a child's completion (`xstate.done.actor.*`) that only moved between states the chart
   * tags {@linkcode ROUTINE_TAG} (heartbeat waiting ⇄ beating, lease renewing ⇄ waiting…); a
   * timer whose delay is named `…Timeout` (work cut short) is never routine.
   * Only marked when the unmarked steps alone still end in the actor's current state: the step
   * returns to the state of the last unmarked step, or is a timer leaving it (the work it starts
   * returns there). Kept in the local log; the recorded history (Redis) leaves these out
   * (docs/console.md).
   */
  routine?: true;
}

/**
 * Chart tag of a state whose entries and exits by timer or completion are routine: a periodic
 * cycle that changes nothing a reviewer looks for. Errors, messages, user events and any step
 * into or out of an untagged state are never routine.
 */
export const ROUTINE_TAG = "routine";

/**
 * A state's `meta.timerCues`: events that stand in for its own timer, sent by the chart's effect
 * layer (the lease's `RENEW_NOW`: another held lease's renewal timer fired; renew with it). A
 * step such an event causes from that state is judged like the timer's.
 */
interface ActiveNode {
  id: string;
  tags?: readonly string[];
  meta?: { timerCues?: readonly string[] };
}

/** A timer fired (`xstate.after.*`), or an event a state left (`before`) declares a timer cue. */
function isTimer(eventType: string, before: readonly ActiveNode[] | undefined): boolean {
  return eventType.startsWith("xstate.after.") ||
    (before?.some((n) => n.meta?.timerCues?.includes(eventType)) ?? false);
}

/**
 * Whether a step from `before` to `after` (active state nodes) by `eventType` is routine: a
 * timer or a child's completion, and every state node entered or left tagged routine.
 */
function isRoutine(
  eventType: string,
  before: readonly ActiveNode[] | undefined,
  after: readonly ActiveNode[] | undefined,
): boolean {
  if (isTimer(eventType, before)) {
    // A timer that cuts work short (a delay named `…Timeout`, e.g. the lease's `opTimeout`)
    // is a failure, never routine.
    if (/^xstate\.after\.[^.]*Timeout\./.test(eventType)) return false;
  } else if (!eventType.startsWith("xstate.done.actor.")) return false;
  if (!before || !after) return false;
  const a = new Set(after.map((n) => n.id));
  const b = new Set(before.map((n) => n.id));
  const changed = [...before.filter((n) => !a.has(n.id)), ...after.filter((n) => !b.has(n.id))];
  return changed.length > 0 && changed.every((n) => n.tags?.includes(ROUTINE_TAG) ?? false);
}

/** Options of {@linkcode createInspector}. */
export interface InspectorOptions {
  /** Clock. */
  now?: () => number;
  /** Summariser per actor id (from the registry); falls back to context.reason. */
  summarize?: (id: string, snapshot: unknown) => Record<string, unknown> | undefined;
  /** Transitions kept. */
  maxTransitions?: number;
  /**
   * How long the view of an actor that stopped (or finished, or failed) stays listed (ms,
   * default 60 s): every login attempt is an actor, and a view kept forever is a leak any
   * anonymous client can grow.
   */
  retentionMs?: number;
  /** Views of stopped actors kept at most, oldest dropped first (default 1000). */
  maxStopped?: number;
}

/** The live view. */
export interface Inspector {
  /** Feed for XState's `inspect` option. */
  inspect(event: InspectionEvent): void;
  /** Every machine actor currently known, in creation order. */
  list(): ActorView[];
  /** One actor by path or id. */
  get(idOrPath: string): ActorView | undefined;
  /** Recent transitions, oldest first. */
  transitions(): TransitionRecord[];
  /** Called after each change; returns the unsubscribe function. */
  subscribe(fn: (view: ActorView, transition: TransitionRecord | null) => void): () => void;
}

function pathOf(ref: AnyActorRef): string {
  const ids: string[] = [];
  let cur: AnyActorRef | undefined = ref;
  while (cur) {
    ids.unshift(cur.id);
    cur = (cur as unknown as { _parent?: AnyActorRef })._parent;
  }
  return ids.join("/");
}

/** The transport's delivery metadata carried by an event (`event.origin`), if valid. */
function originOf(event: unknown): TransitionRecord["origin"] {
  const o = (event as { origin?: unknown } | undefined)?.origin as
    | Record<string, unknown>
    | undefined;
  const from = o?.from as Record<string, unknown> | undefined;
  if (
    typeof o?.id !== "string" || typeof o.kind !== "string" || typeof o.sentAt !== "number" ||
    typeof from?.instance !== "string" || typeof from.actor !== "string"
  ) return undefined;
  return {
    id: o.id,
    from: { instance: from.instance, actor: from.actor },
    kind: o.kind,
    sentAt: o.sentAt,
  };
}

function defaultSummary(snapshot: unknown): Record<string, unknown> {
  const ctx = (snapshot as { context?: Record<string, unknown> }).context;
  if (!ctx || typeof ctx !== "object") return {};
  const out: Record<string, unknown> = {};
  if (typeof ctx.reason === "string") out.reason = ctx.reason;
  return out;
}

/** Creates an inspector. */
export function createInspector(options: InspectorOptions = {}): Inspector {
  const now = options.now ?? Date.now;
  const max = options.maxTransitions ?? 500;
  const retentionMs = options.retentionMs ?? 60_000;
  const maxStopped = options.maxStopped ?? 1000;
  const views = new Map<string, ActorView>();
  // Paths of views that are no longer active, by when they ended, oldest first.
  const ended = new Map<string, number>();
  const bySession = new Map<string, string>();
  // Active state nodes of each live actor (XState's snapshot `_nodes`), to tell routine steps.
  const activeNodes = new Map<string, readonly ActiveNode[]>();
  // State value (JSON) after the last transition of each live actor that was NOT marked routine:
  // a step is marked routine only if the unmarked steps alone still end where the actor is,
  // i.e. it returns to that state, or it is a timer leaving it (its work's completion returns).
  const lastUnmarked = new Map<string, string>();
  const log: TransitionRecord[] = [];
  const listeners = new Set<(view: ActorView, t: TransitionRecord | null) => void>();
  let seq = 0;

  function emit(view: ActorView, t: TransitionRecord | null): void {
    for (const fn of [...listeners]) {
      try {
        fn(view, t);
      } catch {
        // An observer's bug must not reach the actor system.
      }
    }
  }

  /** Drops the views of actors that ended more than `retentionMs` ago, or beyond the cap. */
  function prune(): void {
    const cutoff = now() - retentionMs;
    for (const [path, at] of ended) {
      if (at > cutoff && ended.size <= maxStopped) break;
      ended.delete(path);
      views.delete(path);
    }
  }

  function summarize(id: string, snapshot: unknown): Record<string, unknown> {
    try {
      return options.summarize?.(id, snapshot) ?? defaultSummary(snapshot);
    } catch {
      return { summaryError: true };
    }
  }

  return {
    inspect(ev) {
      if (ev.type !== "@xstate.snapshot") return;
      const snap = ev.snapshot as {
        value?: unknown;
        status?: string;
        machine?: { id?: string };
        _nodes?: readonly ActiveNode[];
      };
      if (!snap || !("value" in snap)) return; // only machines have states to draw
      const ref = ev.actorRef as AnyActorRef;
      const path = bySession.get(ref.sessionId) ?? pathOf(ref);
      bySession.set(ref.sessionId, path);
      const at = now();
      const view: ActorView = {
        id: ref.id,
        path,
        machine: snap.machine?.id ?? null,
        status: snap.status ?? "active",
        state: snap.value,
        summary: summarize(ref.id, snap),
        updatedAt: at,
      };
      const before = views.get(path);
      const nodesBefore = activeNodes.get(path);
      if (view.status === "active" && snap._nodes) activeNodes.set(path, snap._nodes);
      else activeNodes.delete(path);
      const stateBefore = before ? JSON.stringify(before.state) : undefined;
      const stateAfter = JSON.stringify(view.state);
      views.set(path, view);
      ended.delete(path);
      if (view.status !== "active") ended.set(path, at);
      prune();
      let t: TransitionRecord | null = null;
      const eventType = ev.event?.type ?? "";
      // State changes, plus failures and completions of children (they change no state
      // value of the parent, yet they are what a reviewer wants on the timeline).
      if (
        !before || stateBefore !== stateAfter ||
        eventType.startsWith("xstate.error.") || eventType.startsWith("xstate.done.")
      ) {
        const origin = originOf(ev.event);
        const recorded = lastUnmarked.get(path);
        const routine = !origin && isRoutine(eventType, nodesBefore, snap._nodes) &&
          (recorded === stateAfter ||
            (isTimer(eventType, nodesBefore) && recorded === stateBefore));
        if (!routine) lastUnmarked.set(path, stateAfter);
        t = {
          seq: ++seq,
          path,
          event: eventType,
          state: view.state,
          at,
          ...(origin && { origin }),
          ...(routine && { routine: true }),
        };
        log.push(t);
        if (log.length > max) log.splice(0, log.length - max);
      }
      if (view.status !== "active") {
        bySession.delete(ref.sessionId);
        lastUnmarked.delete(path);
      }
      emit(view, t);
    },
    list() {
      prune();
      return [...views.values()];
    },
    get(key) {
      prune();
      return views.get(key) ?? [...views.values()].find((v) => v.id === key);
    },
    transitions: () => [...log],
    subscribe(fn) {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
  };
}
