/**
 * The collector actor's effects: `collect` reads every source in parallel (each within a
 * timeout, so one hung server cannot stall the cycle) and `record` queues the points for
 * the writer and keeps the latest collection for `GET /metrics`.
 *
 * Cluster-scoped sources (streams, database, cache) read servers every instance shares;
 * only the instance holding the `coordinator` lease collects them, so a cluster writes
 * each stream's viewers once per interval. Without Redis (one instance), when nobody holds
 * the lease yet, or when Redis cannot say, this instance collects them: a duplicate
 * point is better than a gap an alert would read as "no data".
 * @module
 */
import { fromPromise } from "xstate";
import { z } from "zod";
import { describeError } from "../../lib/errors.ts";
import type { MetricPoint } from "../../lib/line_protocol.ts";
import type { Logger } from "../../lib/log.ts";
import {
  type CollectorContext,
  type CollectOutput,
  metricsCollectorMachine,
  type SourceChanges,
  type SourceReport,
} from "../../machines/metrics_collector.ts";
import type { ActorSpec, RemoteEvent } from "../runtime/types.ts";
import type { Source } from "./sources.ts";

/** The latest collection, as `GET /metrics` and /health read it. */
export interface LatestCollection {
  /** The last recorded cycle, or null before the first. */
  output: CollectOutput | null;
  /** Wall-clock ms (injected clock) when it was recorded. */
  recordedAt: number | null;
  /** Cycles recorded since start. */
  cycles: number;
  /** Collections still running (an actor stopped mid-cycle leaves its queries running). */
  running: Set<Promise<unknown>>;
}

/** Options of {@linkcode collectOnce}. */
export interface CollectOptions {
  /** The sources. */
  sources: readonly Source[];
  /** Injected clock. */
  now: () => number;
  /** Whether this instance collects cluster-scoped sources now. */
  clusterCollector: () => Promise<boolean>;
  /** Longest a source may take (ms). */
  sourceTimeoutMs: number;
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: number | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} gave no answer within ${ms} ms`)), ms);
  });
  promise.catch(() => {}); // abandoned on timeout: must not surface later
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Reads every source once; never rejects (a failing source is reported, not thrown). */
export async function collectOnce(options: CollectOptions): Promise<CollectOutput> {
  const started = performance.now();
  const at = options.now();
  let cluster = true;
  try {
    cluster = await withTimeout(options.clusterCollector(), options.sourceTimeoutMs, "lease check");
  } catch {
    cluster = true;
  }
  const sources: Record<string, SourceReport> = {};
  const results = await Promise.all(options.sources.map(async (source) => {
    if (source.scope === "cluster" && !cluster) {
      sources[source.name] = {
        points: 0,
        ms: 0,
        error: null,
        skipped: "the coordinator instance collects cluster metrics",
      };
      return [];
    }
    const t0 = performance.now();
    try {
      const points = await withTimeout(
        source.collect(at),
        options.sourceTimeoutMs,
        `source ${source.name}`,
      );
      sources[source.name] = {
        points: points.length,
        ms: Math.round(performance.now() - t0),
        error: null,
      };
      return points;
    } catch (err) {
      sources[source.name] = {
        points: 0,
        ms: Math.round(performance.now() - t0),
        error: describeError(err),
      };
      return [];
    }
  }));
  return { at, durationMs: performance.now() - started, points: results.flat(), sources };
}

const noticeSchema = z.object({
  type: z.literal("metrics.alert"),
  rule: z.string().min(1).max(64),
  status: z.enum(["firing", "resolved"]),
  value: z.number().nullable(),
  instance: z.string().min(1).max(128),
  at: z.number(),
}) as unknown as z.ZodType<RemoteEvent>;

/** Options of {@linkcode collectorSpec}. */
export interface CollectorSpecOptions extends CollectOptions {
  /** Collection interval (ms). */
  intervalMs: number;
  /** Wait before the first collection (ms). */
  firstDelayMs?: number;
  /** Receives each cycle's points (the writer's `write`); must not block. */
  write: ((points: readonly MetricPoint[]) => void) | null;
  /** Where the latest collection is kept. */
  latest: LatestCollection;
  /** Logger. */
  log: Logger;
}

/** The registry entry of the collector actor (`metrics`). */
export function collectorSpec(options: CollectorSpecOptions): ActorSpec {
  const { log, latest } = options;
  const logic = metricsCollectorMachine.provide({
    actors: {
      collect: fromPromise(() => {
        const cycle = collectOnce(options);
        latest.running.add(cycle);
        cycle.finally(() => latest.running.delete(cycle));
        return cycle;
      }),
    },
    actions: {
      record: (_, output: CollectOutput) => {
        latest.output = output;
        latest.recordedAt = options.now();
        latest.cycles++;
        if (options.write && output.points.length) {
          options.write(output.points as MetricPoint[]);
        }
      },
      reportSources: (_, changes: SourceChanges) => {
        for (const [source, error] of Object.entries(changes.failed)) {
          log.warn("metrics source failed", { source, error });
        }
        for (const source of changes.recovered) log.info("metrics source recovered", { source });
      },
    },
  });
  return {
    id: "metrics",
    chart: "metrics_collector",
    create: () => logic,
    input: () => ({ intervalMs: options.intervalMs, firstDelayMs: options.firstDelayMs }),
    accepts: { "metrics.alert": noticeSchema },
    summarize: (snapshot) => {
      const ctx = (snapshot as unknown as { context: CollectorContext }).context;
      return {
        cycles: ctx.cycles,
        lastPoints: ctx.lastPoints,
        failures: ctx.failures,
        sourceErrors: ctx.sourceErrors,
        alertNotices: ctx.notices.slice(-5),
        reason: ctx.reason,
      };
    },
  };
}
