/**
 * Query-time percentiles without pg_stat_statements: the queries the runtime runs are
 * timed where they run (`timed()`), and each collection turns the durations of the last
 * interval into p50 / p95 / p99 per query type. At most `reservoir` durations are kept per
 * type and interval (reservoir sampling), so a burst of queries costs bounded memory.
 * @module
 */

/** Percentiles of one query type over one interval (milliseconds). */
export interface QueryTimeWindow {
  /** Query type, e.g. `streams`. */
  queryType: string;
  /** Queries timed in the interval. */
  count: number;
  /** Median (ms). */
  p50: number;
  /** 95th percentile (ms). */
  p95: number;
  /** 99th percentile (ms). */
  p99: number;
  /** Slowest (ms). */
  max: number;
}

/** Totals of one query type since start (for the Prometheus summary). */
export interface QueryTimeTotals {
  /** Query type. */
  queryType: string;
  /** Queries timed. */
  count: number;
  /** Sum of their durations (ms). */
  sumMs: number;
}

/** Times queries by type. */
export interface QueryTimer {
  /** Runs `fn`, recording how long it took (also when it fails). */
  timed<T>(queryType: string, fn: () => Promise<T>): Promise<T>;
  /** Records one duration. */
  record(queryType: string, ms: number): void;
  /** Percentiles of the interval since the last call, per type; starts a new interval. */
  rotate(): QueryTimeWindow[];
  /** The last interval's percentiles (what `rotate()` returned). */
  last(): QueryTimeWindow[];
  /** Totals since start. */
  totals(): QueryTimeTotals[];
}

/** Nearest-rank percentile of sorted values. */
export function nearestRank(sorted: readonly number[], q: number): number {
  if (!sorted.length) return NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank];
}

/** Creates a query timer. */
export function createQueryTimer(
  options: { reservoir?: number; random?: () => number; clock?: () => number } = {},
): QueryTimer {
  const size = options.reservoir ?? 1024;
  const random = options.random ?? Math.random;
  const clock = options.clock ?? (() => performance.now());
  const windows = new Map<string, { seen: number; samples: number[]; max: number }>();
  const totals = new Map<string, { count: number; sumMs: number }>();
  let previous: QueryTimeWindow[] = [];

  function record(queryType: string, ms: number): void {
    let w = windows.get(queryType);
    if (!w) windows.set(queryType, w = { seen: 0, samples: [], max: 0 });
    w.seen++;
    w.max = Math.max(w.max, ms);
    if (w.samples.length < size) w.samples.push(ms);
    else {
      const i = Math.floor(random() * w.seen);
      if (i < size) w.samples[i] = ms;
    }
    let t = totals.get(queryType);
    if (!t) totals.set(queryType, t = { count: 0, sumMs: 0 });
    t.count++;
    t.sumMs += ms;
  }

  return {
    async timed(queryType, fn) {
      const started = clock();
      try {
        return await fn();
      } finally {
        record(queryType, clock() - started);
      }
    },
    record,
    rotate() {
      const out: QueryTimeWindow[] = [];
      for (const [queryType, w] of [...windows].sort(([a], [b]) => a.localeCompare(b))) {
        const sorted = [...w.samples].sort((a, b) => a - b);
        out.push({
          queryType,
          count: w.seen,
          p50: nearestRank(sorted, 0.5),
          p95: nearestRank(sorted, 0.95),
          p99: nearestRank(sorted, 0.99),
          max: w.max,
        });
      }
      windows.clear();
      previous = out;
      return out;
    },
    last: () => previous,
    totals: () =>
      [...totals].map(([queryType, t]) => ({ queryType, ...t })).sort((a, b) =>
        a.queryType.localeCompare(b.queryType)
      ),
  };
}
