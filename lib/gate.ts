/**
 * A counting semaphore with a bounded queue: at most `limit` tasks run at once, at most
 * `queue` wait, and one more is refused at once with 503 SERVER_BUSY (and a Retry-After)
 * instead of waiting, so a storm of requests costs a bounded amount of memory.
 * @module
 */
import { RuntimeError } from "./errors.ts";

/** Options of {@linkcode createGate}. */
export interface GateOptions {
  /** Tasks running at once. */
  limit: number;
  /** Tasks waiting for a slot; beyond it {@linkcode Gate.run} throws SERVER_BUSY. */
  queue: number;
  /** What the refusal names ("Password checks"). */
  what: string;
  /** Retry-After of the refusal (ms, default 1000). */
  retryAfterMs?: number;
}

/** A semaphore with a bounded queue. */
export interface Gate {
  /** Runs `task` once a slot is free; throws SERVER_BUSY when the queue is full. */
  run<T>(task: () => Promise<T>): Promise<T>;
  /** Tasks running and waiting now. */
  stats(): { running: number; waiting: number; refused: number };
}

/** Creates a gate. */
export function createGate(options: GateOptions): Gate {
  let running = 0;
  let refused = 0;
  const waiting: (() => void)[] = [];

  function release(): void {
    const next = waiting.shift();
    if (next) next(); // the slot passes to the next task directly
    else running--;
  }

  return {
    async run(task) {
      if (running >= options.limit) {
        if (waiting.length >= options.queue) {
          refused++;
          const retryAfterMs = options.retryAfterMs ?? 1000;
          throw new RuntimeError(
            "SERVER_BUSY",
            `${options.what} are busy (${options.limit} running, ${waiting.length} waiting): ` +
              `try again in ${Math.ceil(retryAfterMs / 1000)} s`,
            { details: { retryAfterMs } },
          );
        }
        await new Promise<void>((resolve) => waiting.push(resolve));
      } else {
        running++;
      }
      try {
        return await task();
      } finally {
        release();
      }
    },
    stats: () => ({ running, waiting: waiting.length, refused }),
  };
}
