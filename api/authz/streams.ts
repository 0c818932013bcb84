/**
 * Caps on open event streams (`kind: "events"` routes: `/state/stream`, `/actors/stream`,
 * `/console/events`): each holds a connection, a buffer and a subscription for as long as
 * the client likes, so one client address may hold `maxPerClient` (then 429
 * STREAMS_PER_CLIENT_EXCEEDED) and the instance `maxTotal` (then 503 STREAMS_EXHAUSTED),
 * both with Retry-After. The guard takes a slot before the handler runs and gives it back
 * when the response body ends or the client goes away.
 * @module
 */
import type { Context } from "hono";
import { RuntimeError } from "../../lib/errors.ts";

/** Options of {@linkcode createStreamLimiter}. */
export interface StreamLimiterOptions {
  /** Streams one client address may hold open. */
  maxPerClient: number;
  /** Streams the instance serves at once. */
  maxTotal: number;
  /** The client address of a request (null: unknown, counted as one client). */
  addressOf(c: Context): string | null;
  /** Retry-After of a refusal (ms, default 5000). */
  retryAfterMs?: number;
}

/** Counts open event streams. */
export interface StreamLimiter {
  /** Takes a slot for the request's client, or throws 429 / 503; returns its release. */
  acquire(c: Context): () => void;
  /** Streams open now, in all and per address. */
  stats(): { open: number; clients: number; refused: number };
}

/** Creates a stream limiter. */
export function createStreamLimiter(options: StreamLimiterOptions): StreamLimiter {
  const perClient = new Map<string, number>();
  let open = 0;
  let refused = 0;
  const retryAfterMs = options.retryAfterMs ?? 5000;
  return {
    acquire(c) {
      const address = options.addressOf(c) ?? "unknown";
      const mine = perClient.get(address) ?? 0;
      if (mine >= options.maxPerClient) {
        refused++;
        throw new RuntimeError(
          "STREAMS_PER_CLIENT_EXCEEDED",
          `Too many event streams: this client already holds ${mine} (at most ` +
            `${options.maxPerClient} per client address); close one or retry later`,
          { details: { retryAfterMs, limit: options.maxPerClient } },
        );
      }
      if (open >= options.maxTotal) {
        refused++;
        throw new RuntimeError(
          "STREAMS_EXHAUSTED",
          `This instance serves no more event streams (${open} open, at most ` +
            `${options.maxTotal}); retry later or use another instance`,
          { details: { retryAfterMs, limit: options.maxTotal } },
        );
      }
      perClient.set(address, mine + 1);
      open++;
      let released = false;
      return () => {
        if (released) return;
        released = true;
        open--;
        const n = (perClient.get(address) ?? 1) - 1;
        if (n > 0) perClient.set(address, n);
        else perClient.delete(address);
      };
    },
    stats: () => ({ open, clients: perClient.size, refused }),
  };
}

/** `res` with a body that calls `release` once it ends, fails or is cancelled. */
export function releasingBody(res: Response, release: () => void): Response {
  if (!res.body) {
    release();
    return res;
  }
  const reader = res.body.getReader();
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { value, done } = await reader.read();
        if (done) {
          release();
          controller.close();
        } else {
          controller.enqueue(value);
        }
      } catch (err) {
        release();
        controller.error(err);
      }
    },
    async cancel(reason) {
      release();
      await reader.cancel(reason);
    },
  });
  return new Response(body, {
    status: res.status,
    statusText: res.statusText,
    headers: res.headers,
  });
}
