/**
 * Shared pieces of the benchmark suites: the figure format of DESIGN.md, percentiles,
 * medians, progress output.
 * @module
 */

/** One benchmark figure, printed as one JSON line. */
export interface Figure {
  /** Suite name (runtime, session, sync, backup, failover, metrics). */
  suite: string;
  /** Figure name, e.g. `message_rtt_p99_ms`. */
  name: string;
  /** Unit, e.g. `ms`, `ops/s`. */
  unit: string;
  /** The median over the run's repetitions. */
  value: number;
  /** Whether higher or lower is better. */
  better: "higher" | "lower";
  /** The same figure for the raw underlying operation, measured in the same run. */
  baseline: { name: string; value: number } | null;
}

/** The q-quantile (0..1) of samples, nearest-rank. */
export function percentile(samples: number[], q: number): number {
  if (!samples.length) return NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank];
}

/** The median of values. */
export function median(values: number[]): number {
  return percentile(values, 0.5);
}

/** Rounds for display without losing meaningful precision. */
export function round(value: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

/** Writes a progress line to stderr (stdout carries only figures). */
export function progress(message: string): void {
  Deno.stderr.writeSync(new TextEncoder().encode(`[bench] ${message}\n`));
}
