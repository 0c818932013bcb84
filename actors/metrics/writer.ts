/**
 * The time-series writer: points become escaped line protocol (lib/line_protocol.ts),
 * wait in a bounded buffer and go out in batches through npm:@influxdata/influxdb-client
 * to `/api/v2/write` (InfluxDB 2.x / 3.x, and VictoriaMetrics unchanged).
 *
 * What it guarantees:
 * - `write()` never blocks and never throws: it formats, queues and returns.
 * - Memory is bounded: at most `maxBufferedPoints` queued points (and `maxBufferedBytes`),
 *   plus `concurrency` batches in flight. When the buffer is full the oldest points are
 *   dropped and counted (`dropped.buffer_full`): fresh metrics matter more than stale ones.
 * - Every accepted point ends in exactly one counter: `written` (the server answered 2xx
 *   for its batch), or a `dropped` reason: `buffer_full`, `rejected` (4xx: the server will
 *   never take it), `retry_exhausted` (retried for `maxRetryTimeMs`), `invalid` (could not
 *   be formatted) or `closed` (still queued when `close()` gave up). So
 *   `accepted = written + dropped + buffered + inflight` at any moment.
 * - Failed batches are retried with exponential backoff and full jitter (respecting
 *   `Retry-After`); while the server fails, only the failing batches are retried, so an
 *   outage costs one request per backoff, not a stampede.
 *
 * The client's own batching, retry buffer and `close()` are not used: under Deno it loads
 * its browser build, whose `close()` may resolve before full batches are written and which
 * never gzips. Each batch is one `writeRecord()` + `flush()` (maxRetries 0), whose promise
 * settles with that batch's HTTP outcome. The buffer holds line protocol already encoded
 * as UTF-8 (one chunk per `write()`, with the offset of every line), not one string per
 * point: hundreds of thousands of small retained strings cost more in garbage collection
 * than the HTTP requests. The batch's bytes, gzip when enabled, and the per-request
 * timeout are applied in the transport's request decorator, the hook the client provides
 * for changing a request before it is sent.
 * @module
 */
import { HttpError, InfluxDB, setLogger, type WriteApi } from "@influxdata/influxdb-client";
import { gzipSync } from "node:zlib";
import { redactUrl } from "../../lib/config.ts";
import { describeError } from "../../lib/errors.ts";
import { formatPoint, type MetricPoint } from "../../lib/line_protocol.ts";
import { type Logger, silentLogger } from "../../lib/log.ts";

/** Why points were dropped. */
export type DropReason = "buffer_full" | "rejected" | "retry_exhausted" | "invalid" | "closed";

/** `idle`, `writing` (requests in flight), `retrying` (the server is failing), `closed`. */
export type WriterState = "idle" | "writing" | "retrying" | "closed";

/** Counters and gauges of a writer. */
export interface WriterStats {
  /** State now. */
  state: WriterState;
  /** Points handed to `write()` / `writeLines()`. */
  accepted: number;
  /** Points the server confirmed (2xx). */
  written: number;
  /** Points waiting in the buffer. */
  buffered: number;
  /** Bytes of line protocol waiting in the buffer. */
  bufferedBytes: number;
  /** Points in batches being sent or retried. */
  inflight: number;
  /** Dropped points by reason. */
  dropped: Record<DropReason, number>;
  /** All dropped points. */
  droppedTotal: number;
  /** HTTP requests sent. */
  requests: number;
  /** Requests that failed. */
  failedRequests: number;
  /** Retries scheduled. */
  retries: number;
  /** Bytes of line protocol confirmed (before compression). */
  bytesWritten: number;
  /** The last failure, or null after a success. */
  lastError: string | null;
  /** Injected-clock time of the last confirmed batch. */
  lastSuccessAt: number | null;
}

/** Options of {@linkcode createInfluxWriter}. */
export interface InfluxWriterOptions {
  /** Base URL (e.g. http://influxdb:8086). */
  url: string;
  /** API token, or null. */
  token?: string | null;
  /** Organisation. */
  org: string;
  /** Bucket. */
  bucket: string;
  /** Points per request (default 5000). */
  batchSize?: number;
  /** Largest request body before compression (default 4 MiB). */
  maxBatchBytes?: number;
  /** Points the buffer holds before the oldest are dropped (default 100 000). */
  maxBufferedPoints?: number;
  /** Bytes the buffer holds before the oldest are dropped (default 64 MiB). */
  maxBufferedBytes?: number;
  /** A partial batch waits at most this long (default 1000 ms). */
  flushIntervalMs?: number;
  /** Requests in flight while the server is healthy (default 2). */
  concurrency?: number;
  /** Timeout of one request (default 10 000 ms). */
  timeoutMs?: number;
  /** First retry delay (default 500 ms); doubles per attempt up to `maxRetryDelayMs`. */
  minRetryDelayMs?: number;
  /** Longest retry delay (default 30 000 ms). */
  maxRetryDelayMs?: number;
  /** A batch failing for this long is dropped (default 300 000 ms). */
  maxRetryTimeMs?: number;
  /** Gzip bodies at least this large (default: never). */
  gzipThresholdBytes?: number | null;
  /** Logger. */
  log?: Logger;
  /** Clock for `lastSuccessAt` and retry deadlines. */
  now?: () => number;
  /** Random source for jitter (tests pin it). */
  random?: () => number;
}

/** A running writer. */
export interface MetricsWriter {
  /** Where it writes (no token). */
  readonly describe: string;
  /** Formats and queues points; never blocks or throws. */
  write(points: readonly MetricPoint[]): void;
  /** Queues lines that are already line protocol (one point each; a line with a newline is invalid). */
  writeLines(lines: readonly string[]): void;
  /**
   * Sends everything queued now and resolves once each of those points is written or
   * dropped, or after `timeoutMs` (default 30 000); never rejects. Check the stats.
   */
  flush(options?: { timeoutMs?: number }): Promise<WriterStats>;
  /** A copy of the counters. */
  stats(): WriterStats;
  /**
   * Stops accepting points, flushes for up to `timeoutMs` (default 5000), then aborts
   * what is left and counts it as dropped (`closed`). Idempotent.
   */
  close(options?: { timeoutMs?: number }): Promise<WriterStats>;
}

/** Encoded lines from one `write()`: line i is `bytes[i ? ends[i - 1] : 0, ends[i])`. */
interface Chunk {
  bytes: Uint8Array<ArrayBuffer>;
  ends: Uint32Array;
  /** First line not yet sent or dropped. */
  head: number;
}

interface Batch {
  /** The request body (lines separated and ended by `\n`). */
  body: Uint8Array<ArrayBuffer>;
  /** Points in it. */
  points: number;
  /** Sequence number of its first point. */
  firstSeq: number;
  attempts: number;
  firstFailureAt: number | null;
  retryTimer: number | null;
  request: Promise<void> | null;
  abort: AbortController | null;
}

interface FlushWaiter {
  target: number;
  resolve(): void;
}

/** True when an error may succeed later: network errors, timeouts, 408, 425, 429, 5xx. */
export function retryable(err: unknown): boolean {
  if (err instanceof HttpError) {
    const s = err.statusCode;
    return s === 408 || s === 425 || s === 429 || s >= 500;
  }
  return true;
}

function retryAfterMs(err: unknown): number {
  if (!(err instanceof HttpError)) return 0;
  const raw = err.headers?.["retry-after"];
  const value = Array.isArray(raw) ? raw[0] : raw;
  // RFC 9110: seconds (the client would read it as milliseconds).
  return value && /^\d+$/.test(value) ? Number(value) * 1000 : 0;
}

/**
 * Backoff before retry `attempt` (1-based): full jitter over an exponentially growing cap,
 * never less than the server's Retry-After.
 */
export function backoffMs(
  attempt: number,
  options: { minMs: number; maxMs: number; random: () => number; retryAfterMs?: number },
): number {
  const cap = Math.min(options.maxMs, options.minMs * 2 ** Math.max(0, attempt - 1));
  const jittered = Math.max(options.minMs / 2, Math.round(options.random() * cap));
  return Math.max(jittered, options.retryAfterMs ?? 0);
}

/** Creates a writer; nothing is sent until points are written. */
export function createInfluxWriter(options: InfluxWriterOptions): MetricsWriter {
  const log = options.log ?? silentLogger;
  const now = options.now ?? Date.now;
  const random = options.random ?? Math.random;
  const batchSize = options.batchSize ?? 5000;
  const maxBatchBytes = options.maxBatchBytes ?? 4 * 1024 * 1024;
  const maxPoints = options.maxBufferedPoints ?? 100_000;
  const maxBytes = options.maxBufferedBytes ?? 64 * 1024 * 1024;
  const flushIntervalMs = options.flushIntervalMs ?? 1000;
  const concurrency = Math.max(1, options.concurrency ?? 2);
  const timeoutMs = options.timeoutMs ?? 10_000;
  const minRetry = options.minRetryDelayMs ?? 500;
  const maxRetry = options.maxRetryDelayMs ?? 30_000;
  const maxRetryTime = options.maxRetryTimeMs ?? 300_000;
  const gzipAt = options.gzipThresholdBytes ?? null;
  const describe = `${redactUrl(options.url)} org ${options.org} bucket ${options.bucket}`;

  // The client logs through a global logger; route it into ours (quietly: we log ourselves).
  setLogger({
    error: (msg: string, err?: unknown) =>
      log.debug(`influxdb-client: ${msg}`, err ? { error: describeError(err) } : undefined),
    warn: (msg: string, err?: unknown) =>
      log.debug(`influxdb-client: ${msg}`, err ? { error: describeError(err) } : undefined),
  });
  const influx = new InfluxDB({
    url: options.url,
    token: options.token ?? undefined,
    timeout: timeoutMs,
  });
  const api: WriteApi = influx.getWriteApi(options.org, options.bucket, "ms", {
    // Never batch, time or retry on its own: each flush() sends exactly one of our batches.
    batchSize: batchSize + 1,
    maxBatchBytes: Number.MAX_SAFE_INTEGER,
    flushInterval: 0,
    maxRetries: 0,
    maxBufferLines: 1,
    gzipThreshold: undefined,
  });
  // Set synchronously around each flush(): the decorator runs inside that call.
  let current: { body: Uint8Array<ArrayBuffer>; signal: AbortSignal } | null = null;
  const transport = (influx as unknown as {
    transport: {
      requestDecorator: (req: RequestInit & { headers: Record<string, string> }) => void;
    };
  }).transport;
  transport.requestDecorator = (request) => {
    if (!current) return;
    request.signal = current.signal;
    if (gzipAt !== null && current.body.length >= gzipAt) {
      request.body = new Uint8Array(gzipSync(current.body));
      request.headers["content-encoding"] = "gzip";
    } else {
      request.body = current.body;
    }
  };
  const encoder = new TextEncoder();

  let chunks: Chunk[] = [];
  let queuedPoints = 0;
  let queuedBytes = 0;
  /** Sequence number of the oldest queued point: points before it left the queue. */
  let taken = 0;
  const inflight = new Set<Batch>();
  const waiters: FlushWaiter[] = [];
  let healthy = true;
  let closing = false;
  let closed = false;
  let flushTimer: number | null = null;
  let lastFailureLogged = 0;
  const s = {
    accepted: 0,
    written: 0,
    requests: 0,
    failedRequests: 0,
    retries: 0,
    bytesWritten: 0,
    lastError: null as string | null,
    lastSuccessAt: null as number | null,
    dropped: { buffer_full: 0, rejected: 0, retry_exhausted: 0, invalid: 0, closed: 0 } as Record<
      DropReason,
      number
    >,
  };

  const queued = () => queuedPoints;
  const inflightPoints = () => {
    let n = 0;
    for (const b of inflight) n += b.points;
    return n;
  };

  function stats(): WriterStats {
    const droppedTotal = Object.values(s.dropped).reduce((a, b) => a + b, 0);
    return {
      state: closed ? "closed" : !healthy ? "retrying" : inflight.size ? "writing" : "idle",
      accepted: s.accepted,
      written: s.written,
      buffered: queuedPoints,
      bufferedBytes: queuedBytes,
      inflight: inflightPoints(),
      dropped: { ...s.dropped },
      droppedTotal,
      requests: s.requests,
      failedRequests: s.failedRequests,
      retries: s.retries,
      bytesWritten: s.bytesWritten,
      lastError: s.lastError,
      lastSuccessAt: s.lastSuccessAt,
    };
  }

  const lineStart = (c: Chunk, i: number) => (i === 0 ? 0 : c.ends[i - 1]);

  /** Removes up to `n` of the oldest queued points, counted under `reason`. */
  function dropOldest(reason: DropReason, n: number): void {
    while (n > 0 && chunks.length) {
      const c = chunks[0];
      const k = Math.min(n, c.ends.length - c.head);
      queuedBytes -= c.ends[c.head + k - 1] - lineStart(c, c.head);
      c.head += k;
      queuedPoints -= k;
      taken += k;
      s.dropped[reason] += k;
      n -= k;
      if (c.head === c.ends.length) chunks.shift();
    }
    // A big chunk mostly dropped would pin its whole buffer: keep only its live part.
    const c = chunks[0];
    if (c && c.head > c.ends.length / 2 && c.bytes.length > 64 * 1024) {
      const from = lineStart(c, c.head);
      const ends = c.ends.slice(c.head);
      for (let i = 0; i < ends.length; i++) ends[i] -= from;
      chunks[0] = { bytes: c.bytes.slice(from, c.ends[c.ends.length - 1]), ends, head: 0 };
    }
  }

  /**
   * Queues `text`, which holds `count` lines each ended by `\n`; `ends` are the lines' end
   * offsets in UTF-16 units, which are the byte offsets when the text is ASCII.
   */
  function enqueue(text: string, count: number, ends: Uint32Array): void {
    s.accepted += count;
    if (!count) return;
    const bytes = encoder.encode(text);
    if (bytes.length !== text.length) {
      // Not ASCII: find the line ends in the bytes. Escaped lines never contain a newline,
      // so every 0x0A ends exactly one line.
      let pos = 0;
      for (let i = 0; i < count; i++) ends[i] = pos = bytes.indexOf(10, pos) + 1;
    }
    chunks.push({ bytes, ends, head: 0 });
    queuedPoints += count;
    queuedBytes += bytes.length;
    if (queuedPoints > maxPoints) dropOldest("buffer_full", queuedPoints - maxPoints);
    while (queuedBytes > maxBytes && queuedPoints > 0) {
      // Drop whole chunks' worth at a time, oldest first.
      const c = chunks[0];
      dropOldest("buffer_full", Math.max(1, Math.ceil((c.ends.length - c.head) / 2)));
    }
    settle();
    pump();
  }

  function takeBatch(): Batch {
    const pieces: Uint8Array<ArrayBuffer>[] = [];
    let points = 0;
    let size = 0;
    const firstSeq = taken;
    while (chunks.length && points < batchSize) {
      const c = chunks[0];
      const start = lineStart(c, c.head);
      let k = Math.min(batchSize - points, c.ends.length - c.head);
      // Stay under maxBatchBytes (a single oversized line still goes, alone).
      while (k > 1 && size + c.ends[c.head + k - 1] - start > maxBatchBytes) k = Math.ceil(k / 2);
      if (points && size + c.ends[c.head + k - 1] - start > maxBatchBytes) break;
      const end = c.ends[c.head + k - 1];
      pieces.push(c.bytes.subarray(start, end));
      size += end - start;
      points += k;
      c.head += k;
      if (c.head === c.ends.length) chunks.shift();
    }
    let body = pieces[0];
    if (pieces.length > 1) {
      body = new Uint8Array(size);
      let at = 0;
      for (const p of pieces) {
        body.set(p, at);
        at += p.length;
      }
    }
    taken += points;
    queuedPoints -= points;
    queuedBytes -= size;
    return {
      body,
      points,
      firstSeq,
      attempts: 0,
      firstFailureAt: null,
      retryTimer: null,
      request: null,
      abort: null,
    };
  }

  /** Requests that may start now: `concurrency` while healthy, one probe while failing. */
  function slots(): number {
    if (healthy) return concurrency - inflight.size;
    return inflight.size === 0 ? 1 : 0;
  }

  function startBatch(): void {
    const batch = takeBatch();
    inflight.add(batch);
    send(batch);
  }

  /** Starts full batches (any batch while a flush or close waits) as slots allow. */
  function pump(): void {
    if (closed) return;
    const urgent = waiters.length > 0 || closing;
    while (queued() > 0 && slots() > 0 && (queued() >= batchSize || urgent)) startBatch();
    if (queued() > 0 && flushTimer === null) {
      flushTimer = setTimeout(() => {
        flushTimer = null;
        // The interval passed: a partial batch goes out if a slot is free.
        if (!closed && queued() > 0 && slots() > 0) startBatch();
        pump();
      }, flushIntervalMs);
    }
  }

  function send(batch: Batch): void {
    batch.attempts++;
    s.requests++;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), timeoutMs);
    batch.abort = abort;
    current = { body: batch.body, signal: abort.signal };
    let request: Promise<void>;
    try {
      // A one-character placeholder: the decorator replaces the body with the batch's bytes.
      api.writeRecord("-");
      request = api.flush();
    } catch (err) {
      request = Promise.reject(err);
    } finally {
      current = null;
    }
    batch.request = request.then(
      () => succeeded(batch),
      (err) =>
        failed(
          batch,
          abort.signal.aborted && !closed ? new Error(`no answer within ${timeoutMs} ms`) : err,
        ),
    ).finally(() => {
      clearTimeout(timer);
      batch.request = null;
      batch.abort = null;
    });
  }

  function succeeded(batch: Batch): void {
    if (!inflight.has(batch)) return;
    inflight.delete(batch);
    s.written += batch.points;
    s.bytesWritten += batch.body.length;
    s.lastSuccessAt = now();
    if (!healthy) log.info("time-series writes recovered", { target: describe });
    healthy = true;
    s.lastError = null;
    settle();
    pump();
  }

  function failed(batch: Batch, err: unknown): void {
    if (!inflight.has(batch) || closed) return;
    s.failedRequests++;
    const status = err instanceof HttpError ? err.statusCode : null;
    const detail = err instanceof HttpError
      ? `HTTP ${err.statusCode}: ${(err.body ?? err.message).slice(0, 300)}`
      : describeError(err);
    s.lastError = detail;
    if (!retryable(err)) {
      inflight.delete(batch);
      s.dropped.rejected += batch.points;
      log.warn("time-series server rejected a batch; dropped", {
        points: batch.points,
        status,
        error: detail,
      });
      settle();
      pump();
      return;
    }
    healthy = false;
    const t = now();
    batch.firstFailureAt ??= t;
    if (t - batch.firstFailureAt >= maxRetryTime) {
      inflight.delete(batch);
      s.dropped.retry_exhausted += batch.points;
      log.warn("gave up on a batch after retrying", {
        points: batch.points,
        forMs: t - batch.firstFailureAt,
        error: detail,
      });
      settle();
      pump();
      return;
    }
    const delay = backoffMs(batch.attempts, {
      minMs: minRetry,
      maxMs: maxRetry,
      random,
      retryAfterMs: retryAfterMs(err),
    });
    s.retries++;
    // One warning per outage minute, not per request.
    if (t - lastFailureLogged >= 60_000) {
      lastFailureLogged = t;
      log.warn("time-series write failed; retrying with backoff", {
        target: describe,
        retryInMs: delay,
        buffered: queued(),
        error: detail,
      });
    }
    batch.retryTimer = setTimeout(() => {
      batch.retryTimer = null;
      if (!closed && inflight.has(batch)) send(batch);
    }, delay);
  }

  /** Resolves the flush waiters whose points have all settled. */
  function settle(): void {
    if (!waiters.length) return;
    let oldestInflight = Infinity;
    for (const b of inflight) oldestInflight = Math.min(oldestInflight, b.firstSeq);
    const settledBefore = Math.min(taken, oldestInflight);
    for (let i = waiters.length - 1; i >= 0; i--) {
      if (waiters[i].target <= settledBefore) {
        waiters[i].resolve();
        waiters.splice(i, 1);
      }
    }
  }

  function waitSettled(timeoutMs: number): Promise<void> {
    if (closed) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        const i = waiters.indexOf(waiter);
        if (i >= 0) waiters.splice(i, 1);
        resolve();
      }, timeoutMs);
      const waiter: FlushWaiter = {
        target: taken + queued(),
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      };
      waiters.push(waiter);
      settle();
      pump();
    });
  }

  return {
    describe,
    write(points) {
      if (closing || closed) {
        s.accepted += points.length;
        s.dropped.closed += points.length;
        return;
      }
      // More points than the buffer holds: the oldest would be dropped anyway; skip them now.
      const from = Math.max(0, points.length - maxPoints);
      if (from) {
        s.accepted += from;
        s.dropped.buffer_full += from;
      }
      let text = "";
      let count = 0;
      let invalid = 0;
      const ends = new Uint32Array(points.length - from);
      for (let i = from; i < points.length; i++) {
        const line = formatPoint(points[i]);
        if (line === null) invalid++;
        else {
          text += line + "\n";
          ends[count++] = text.length;
        }
      }
      if (invalid) {
        s.accepted += invalid;
        s.dropped.invalid += invalid;
      }
      enqueue(text, count, count === ends.length ? ends : ends.slice(0, count));
    },
    writeLines(lines) {
      if (closing || closed) {
        s.accepted += lines.length;
        s.dropped.closed += lines.length;
        return;
      }
      let text = "";
      let count = 0;
      const ends = new Uint32Array(lines.length);
      for (const line of lines) {
        // One point per line: a line that could split into several is refused.
        if (line === "" || line.includes("\n") || line.includes("\r")) {
          s.accepted++;
          s.dropped.invalid++;
          continue;
        }
        text += line + "\n";
        ends[count++] = text.length;
      }
      enqueue(text, count, count === ends.length ? ends : ends.slice(0, count));
    },
    async flush(opts = {}) {
      await waitSettled(opts.timeoutMs ?? 30_000);
      return stats();
    },
    stats,
    async close(opts = {}) {
      if (closed) return stats();
      closing = true;
      await waitSettled(opts.timeoutMs ?? 5000);
      closed = true;
      if (flushTimer !== null) clearTimeout(flushTimer);
      flushTimer = null;
      const pending: Promise<void>[] = [];
      for (const batch of inflight) {
        if (batch.retryTimer !== null) clearTimeout(batch.retryTimer);
        batch.abort?.abort();
        if (batch.request) pending.push(batch.request);
      }
      await Promise.allSettled(pending);
      for (const batch of inflight) s.dropped.closed += batch.points;
      inflight.clear();
      const left = queuedPoints;
      s.dropped.closed += left;
      taken += left;
      chunks = [];
      queuedPoints = 0;
      queuedBytes = 0;
      for (const w of waiters.splice(0)) w.resolve();
      api.dispose();
      const final = stats();
      if (final.dropped.closed) {
        log.warn("closed the time-series writer with points unwritten", {
          dropped: final.dropped.closed,
        });
      }
      return final;
    },
  };
}
