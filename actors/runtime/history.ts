/**
 * Records this instance's actor transitions and the cross-instance messages it receives
 * into the cluster's history (store/redis_history.ts), off the hot path: `transition` and
 * `message` only push a small object into a buffer; a timer hands the buffer to the writer
 * every `flushMs` (or sooner once `batchSize` records wait), which seals it as one stream
 * entry (one MAC, one `XADD`). When Redis is slow or down the buffer is bounded: the oldest
 * records are dropped and counted, the actors never wait.
 *
 * Keyframes: `keyframe()` records every running actor's state in one record (at start, then
 * every `keyframes.everyMs`), so the states at a past moment do not depend on an actor having
 * moved recently: routine periodic steps are not recorded, and a reader keeps only so many
 * records.
 *
 * What is recorded is what a reviewer needs and nothing secret: actor path, event type,
 * state value after it, the message id that caused it; for messages origin, target, event
 * type, kind and correlation id, never the event's payload (which may hold a code).
 * @module
 */
import type { Logger } from "../../lib/log.ts";
import { silentLogger } from "../../lib/log.ts";
import type { HistoryRecord } from "../../store/redis_history.ts";
import type { ActorView } from "./inspector.ts";
import type { TransitionRecord } from "./inspector.ts";

/**
 * What the transport tells the recorder about a message it received: the checked envelope
 * itself (actors/runtime/envelope.ts), of which the recorder keeps what the record needs (never
 * the event's payload).
 */
export interface ReceivedMessage {
  /** Message id. */
  readonly id: string;
  /** send, broadcast or request. */
  readonly kind: string;
  /** Sender. */
  readonly from: { readonly instance: string; readonly actor: string };
  /** Target actor on this instance. */
  readonly to: { readonly actor: string };
  /** The event; only its type is recorded. */
  readonly event: { readonly type: string };
  /** Correlation id of a request. */
  readonly corr?: string;
  /** Sender's clock at send time (ms). */
  readonly sentAt: number;
}

/** The recorder one instance runs. */
export interface HistoryRecorder {
  /** Records a transition the inspector saw (of an actor running `machine`). */
  transition(t: TransitionRecord, machine?: string | null): void;
  /**
   * Records a message the transport received for a local actor (at `at`, default now); its
   * `from` is kept as given until the batch is written (it must not change).
   */
  message(m: ReceivedMessage, at?: number): void;
  /**
   * Records a keyframe (every running actor's state) now and (re)starts the periodic ones;
   * nothing without the `keyframes` option.
   */
  keyframe(): void;
  /** Writes what is buffered now. */
  flush(): Promise<void>;
  /** Counters: recorded, written, dropped (buffer full), failed batches. */
  stats(): { recorded: number; written: number; dropped: number; failedBatches: number };
  /** Flushes and stops the timer. */
  close(): Promise<void>;
}

/** Options of {@linkcode createHistoryRecorder}. */
export interface HistoryRecorderOptions {
  /** This instance's id. */
  instanceId: string;
  /** Writes one batch (store/redis_history.ts `createHistoryWriter(...).append`). */
  append(records: readonly HistoryRecord[]): Promise<void>;
  /**
   * Longest a record waits before its batch is written (ms, default 10; nothing when empty).
   * Short, so that the stream's order (the server clock at write) follows cause and effect
   * across instances: a coordinator's `promoting` is written before the followers it makes
   * re-point record their `switching`. Batches still form while a write is in flight, and
   * routine periodic steps are not recorded, so an idle instance writes next to nothing.
   */
  flushMs?: number;
  /** Records that trigger a write at once (default 256). */
  batchSize?: number;
  /** Records buffered at most while writes fail or lag (default 20 000). */
  maxBuffered?: number;
  /** Clock (ms). */
  now?: () => number;
  /** Log for failed batches (once per run of failures). */
  log?: Logger;
  /** Keyframes: the actors to record, and how often (ms). */
  keyframes?: { everyMs: number; actors: () => readonly ActorView[] };
}

/** Creates a recorder; call `close()` on shutdown. */
export function createHistoryRecorder(options: HistoryRecorderOptions): HistoryRecorder {
  const flushMs = options.flushMs ?? 10;
  const batchSize = options.batchSize ?? 256;
  const maxBuffered = options.maxBuffered ?? 20_000;
  const now = options.now ?? Date.now;
  const log = options.log ?? silentLogger;
  const instance = options.instanceId;
  const buffer: HistoryRecord[] = [];
  let timer: number | null = null;
  /** The delay `timer` was armed with. */
  let timerMs = 0;
  let keyframeTimer: number | null = null;
  let writing: Promise<void> | null = null;
  let closed = false;
  let failing = false;
  const counters = { recorded: 0, written: 0, dropped: 0, failedBatches: 0 };

  function push(record: HistoryRecord): void {
    if (closed) return;
    counters.recorded++;
    buffer.push(record);
    if (buffer.length > maxBuffered) {
      const excess = buffer.length - maxBuffered;
      buffer.splice(0, excess);
      counters.dropped += excess;
    }
    if (buffer.length >= batchSize) schedule(0);
    else schedule(flushMs);
  }

  /**
   * Arms the flush timer. A timer already armed for at most `ms` stays: past `batchSize` (a
   * write in flight while messages keep arriving) every record asks for an immediate flush,
   * and re-arming a timer per record was a clearTimeout and a setTimeout per message on the
   * message path.
   */
  function schedule(ms: number): void {
    if (timer !== null && timerMs <= ms) return;
    if (timer !== null) clearTimeout(timer);
    timerMs = ms;
    timer = setTimeout(() => {
      timer = null;
      void flush();
    }, ms);
  }

  async function writeOnce(): Promise<void> {
    while (buffer.length) {
      const batch = buffer.slice(0, batchSize);
      try {
        await options.append(batch);
        buffer.splice(0, batch.length);
        counters.written += batch.length;
        if (failing) log.info("history recording resumed");
        failing = false;
      } catch (err) {
        counters.failedBatches++;
        if (!failing) {
          log.warn("history batch not written; keeping it for the next attempt", {
            error: err instanceof Error ? err.message : String(err),
            buffered: buffer.length,
          });
        }
        failing = true;
        if (!closed) schedule(Math.max(flushMs, 1000));
        return;
      }
    }
  }

  function flush(): Promise<void> {
    writing ??= writeOnce().finally(() => writing = null);
    return writing;
  }

  function keyframe(): void {
    const source = options.keyframes;
    if (!source || closed) return;
    if (keyframeTimer !== null) clearTimeout(keyframeTimer);
    keyframeTimer = setTimeout(keyframe, source.everyMs);
    Deno.unrefTimer(keyframeTimer);
    push({
      k: "keyframe",
      instance,
      at: now(),
      actors: source.actors()
        .filter((v) => v.status === "active")
        .map((v) => ({ path: v.path, ...(v.machine && { machine: v.machine }), state: v.state })),
    });
  }

  return {
    keyframe,
    transition(t, machine) {
      push({
        k: "transition",
        instance,
        at: t.at,
        seq: t.seq,
        path: t.path,
        event: t.event,
        state: t.state,
        ...(t.origin && { cause: t.origin.id }),
        ...(machine && { machine }),
      });
    },
    message(m, at = now()) {
      // One object literal of one shape per message: no copy of the message, no conditional
      // spread (an undefined `corr` is left out by JSON.stringify when the batch is written);
      // `from` is the checked envelope's own (a fresh {instance, actor} from the envelope check).
      push({
        k: "message",
        instance,
        at,
        id: m.id,
        kind: m.kind,
        from: m.from,
        to: { instance, actor: m.to.actor },
        event: m.event.type,
        corr: m.corr || undefined,
        sentAt: m.sentAt,
      });
    },
    flush,
    stats: () => ({ ...counters }),
    async close() {
      if (keyframeTimer !== null) clearTimeout(keyframeTimer);
      keyframeTimer = null;
      if (timer !== null) clearTimeout(timer);
      timer = null;
      await writing;
      await flush();
      closed = true;
      if (timer !== null) clearTimeout(timer);
      timer = null;
    },
  };
}
