/**
 * One bounded server-sent-event pump for every event stream the runtime serves.
 *
 * Each client gets its own queue of `bufferSize` items: the producer's callback only
 * queues, so a slow reader never makes the node wait; when the queue overflows it is
 * emptied and the client gets a `missed` event with the count (and whatever the caller
 * adds to re-sync). Idle streams get a `ping` every 15 s. The stream ends when the client
 * goes away or `signal` aborts (shutdown).
 * @module
 */
import type { SSEStreamingApi } from "hono/streaming";

/** One event as written to the wire. */
export interface SseEvent {
  /** Event name. */
  event: string;
  /** JSON text. */
  data: string;
  /** Optional event id. */
  id?: string;
}

/** Options of {@linkcode pumpEvents}. */
export interface PumpOptions<T> {
  /** Starts the feed; returns its unsubscribe. Called before `hello` is written. */
  subscribe(push: (item: T) => void): () => void;
  /** The first event (the current state, so the client starts complete). */
  hello(): SseEvent;
  /** Data of the `missed` event for `count` dropped items. */
  missed(count: number): string;
  /** An item as an event. */
  render(item: T): SseEvent;
  /** Items buffered per client. */
  bufferSize: number;
  /** Ends the stream (shutdown). */
  signal?: AbortSignal;
}

/** Pumps a feed into an SSE stream until the client leaves or `signal` aborts. */
export async function pumpEvents<T>(stream: SSEStreamingApi, options: PumpOptions<T>) {
  const queue: T[] = [];
  let missed = 0;
  let wake: (() => void) | null = null;
  let closed = false;
  const off = options.subscribe((item) => {
    if (queue.length >= options.bufferSize) {
      missed += queue.length;
      queue.length = 0;
    }
    queue.push(item);
    wake?.();
  });
  const close = () => {
    closed = true;
    off();
    wake?.();
  };
  stream.onAbort(close);
  options.signal?.addEventListener("abort", close, { once: true });
  if (options.signal?.aborted) close();
  try {
    await stream.writeSSE(options.hello());
    while (!closed) {
      if (!queue.length) {
        const tick = new Promise<void>((r) => wake = r);
        const keepAlive = setTimeout(() => wake?.(), 15_000);
        await tick;
        clearTimeout(keepAlive);
        wake = null;
        if (!queue.length && !closed) await stream.writeSSE({ event: "ping", data: "{}" });
        continue;
      }
      if (missed) {
        await stream.writeSSE({ event: "missed", data: options.missed(missed) });
        missed = 0;
      }
      await stream.writeSSE(options.render(queue.shift()!));
    }
  } finally {
    off();
    options.signal?.removeEventListener("abort", close);
  }
}
