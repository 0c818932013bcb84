/**
 * Alert webhook delivery: JSON POSTs sent one at a time in order, each retried with
 * jittered exponential backoff on network errors, timeouts, 429 and 5xx. The queue is
 * bounded (the oldest waiting notification is dropped and counted), so a dead receiver
 * costs bounded memory and never holds up an alert actor: `send()` only queues.
 * @module
 */
import { describeError } from "../../lib/errors.ts";
import { type Logger, silentLogger } from "../../lib/log.ts";
import { backoffMs } from "./writer.ts";

/** Options of {@linkcode createWebhook}. */
export interface WebhookOptions {
  /** Receiver URL. */
  url: string;
  /** Timeout of one POST (default 5000 ms). */
  timeoutMs?: number;
  /** Attempts per notification (default 4). */
  maxAttempts?: number;
  /** First retry delay (default 500 ms). */
  minRetryDelayMs?: number;
  /** Longest retry delay (default 10 000 ms). */
  maxRetryDelayMs?: number;
  /** Notifications waiting at most (default 100). */
  maxQueue?: number;
  /** Logger. */
  log?: Logger;
  /** Random source for jitter. */
  random?: () => number;
}

/** Counters of a webhook. */
export interface WebhookStats {
  /** Delivered (2xx). */
  sent: number;
  /** Given up after the last attempt or a 4xx. */
  failed: number;
  /** Dropped from a full queue or on close. */
  dropped: number;
  /** Waiting now. */
  queued: number;
  /** Attempts that failed and were retried. */
  retries: number;
}

/** A webhook sender. */
export interface Webhook {
  /** Queues a JSON payload; never blocks or throws. */
  send(payload: unknown): void;
  /** Counters. */
  stats(): WebhookStats;
  /** Waits up to `timeoutMs` (default 5000) for the queue to drain, then drops the rest. */
  close(options?: { timeoutMs?: number }): Promise<void>;
}

/** Creates a webhook sender for one URL. */
export function createWebhook(options: WebhookOptions): Webhook {
  const log = options.log ?? silentLogger;
  const timeoutMs = options.timeoutMs ?? 5000;
  const maxAttempts = options.maxAttempts ?? 4;
  const maxQueue = options.maxQueue ?? 100;
  const random = options.random ?? Math.random;
  const queue: string[] = [];
  const s = { sent: 0, failed: 0, dropped: 0, retries: 0 };
  let running: Promise<void> | null = null;
  let closed = false;
  let wake: (() => void) | null = null;
  let sleepTimer: number | undefined;
  let current: AbortController | null = null;

  function sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      wake = resolve;
      sleepTimer = setTimeout(resolve, ms);
    }).finally(() => {
      clearTimeout(sleepTimer);
      wake = null;
    });
  }

  /** One POST: true when delivered, false when it must not be retried, throws to retry. */
  async function post(body: string): Promise<boolean> {
    current = new AbortController();
    const timer = setTimeout(() => current?.abort(), timeoutMs);
    try {
      const res = await fetch(options.url, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body,
        signal: current.signal,
      });
      await res.body?.cancel();
      if (res.ok) return true;
      if (res.status === 429 || res.status >= 500) throw new Error(`HTTP ${res.status}`);
      log.warn("alert webhook refused a notification", { status: res.status });
      return false;
    } finally {
      clearTimeout(timer);
      current = null;
    }
  }

  async function drain(): Promise<void> {
    while (queue.length && !closed) {
      const body = queue[0];
      let delivered = false;
      for (let attempt = 1; attempt <= maxAttempts && !closed; attempt++) {
        try {
          delivered = await post(body);
          break;
        } catch (err) {
          if (closed) break;
          if (attempt === maxAttempts) {
            log.warn("alert webhook failed; notification dropped", {
              attempts: attempt,
              error: describeError(err),
            });
            break;
          }
          s.retries++;
          await sleep(backoffMs(attempt, {
            minMs: options.minRetryDelayMs ?? 500,
            maxMs: options.maxRetryDelayMs ?? 10_000,
            random,
          }));
        }
      }
      if (closed) break;
      queue.shift();
      if (delivered) s.sent++;
      else s.failed++;
    }
  }

  function kick(): void {
    running ??= drain().finally(() => {
      running = null;
      if (queue.length && !closed) kick();
    });
  }

  return {
    send(payload) {
      if (closed) {
        s.dropped++;
        return;
      }
      queue.push(JSON.stringify(payload));
      while (queue.length > maxQueue) {
        // The one being delivered (index 0) stays; the oldest waiting one goes.
        queue.splice(running ? 1 : 0, 1);
        s.dropped++;
      }
      kick();
    },
    stats: () => ({ ...s, queued: queue.length }),
    async close(opts = {}) {
      if (closed) return;
      const deadline = Date.now() + (opts.timeoutMs ?? 5000);
      while (queue.length && running && Date.now() < deadline) {
        let tick: number | undefined;
        await Promise.race([running, new Promise((r) => tick = setTimeout(r, 20))]);
        clearTimeout(tick);
      }
      closed = true;
      current?.abort();
      wake?.();
      await running;
      s.dropped += queue.length;
      queue.length = 0;
    },
  };
}
