/**
 * Hybrid logical clocks (Kulkarni et al., "Logical Physical Clocks", 2014).
 *
 * A timestamp is `{ wall, logical }`: `wall` follows the physical clock (milliseconds)
 * and never goes backwards, `logical` orders events inside one millisecond and after a
 * remote timestamp from a clock that runs ahead. So:
 *
 * - every timestamp a clock issues is greater than every timestamp it issued or received
 *   before (causality: a write made after seeing another compares greater);
 * - `wall` stays within `maxDriftMs` of the physical clock: a remote timestamp further in
 *   the future is not adopted beyond that bound (it is counted in `skewed`), so one host
 *   with a wrong clock cannot drag the whole cluster's clocks into the future.
 *
 * The physical clock is injected, so tests drive time.
 * @module
 */

/** A hybrid logical clock timestamp. */
export interface HlcTimestamp {
  /** Physical part: milliseconds since the epoch, never decreasing per clock. */
  wall: number;
  /** Logical part: orders events that share a `wall`. */
  logical: number;
}

/** Options of {@linkcode createHybridClock}. */
export interface HybridClockOptions {
  /** Physical clock in milliseconds (e.g. `Date.now`); injected so tests control time. */
  physical: () => number;
  /** Largest lead over the physical clock a remote timestamp may impose (default 60 s). */
  maxDriftMs?: number;
}

/** A hybrid logical clock. */
export interface HybridClock {
  /** A timestamp for a local event (a write): greater than every earlier one. */
  now(): HlcTimestamp;
  /** Folds in a timestamp received from another clock; returns the clock's new reading. */
  receive(remote: HlcTimestamp): HlcTimestamp;
  /** The last timestamp issued or received, without advancing. */
  peek(): HlcTimestamp;
  /** How many received timestamps were ahead of the physical clock by more than the drift bound. */
  skewed(): number;
}

/** Orders two timestamps: negative when `a` is earlier, 0 when equal, positive when later. */
export function compareHlc(a: HlcTimestamp, b: HlcTimestamp): number {
  return a.wall !== b.wall ? a.wall - b.wall : a.logical - b.logical;
}

/** Creates a clock on an injected physical clock. */
export function createHybridClock(options: HybridClockOptions): HybridClock {
  const physical = options.physical;
  const maxDriftMs = options.maxDriftMs ?? 60_000;
  let wall = 0;
  let logical = 0;
  let skewed = 0;

  return {
    now() {
      const pt = Math.floor(physical());
      if (pt > wall) {
        wall = pt;
        logical = 0;
      } else {
        logical++;
      }
      return { wall, logical };
    },
    receive(remote) {
      const pt = Math.floor(physical());
      let rw = remote.wall;
      let rl = remote.logical;
      if (rw > pt + maxDriftMs) {
        // Adopt at most the drift bound; the remote event still merges by its own stamp.
        skewed++;
        rw = pt + maxDriftMs;
        rl = 0;
      }
      const w = Math.max(wall, rw, pt);
      if (w === wall && w === rw) logical = Math.max(logical, rl) + 1;
      else if (w === wall) logical = logical + 1;
      else if (w === rw) logical = rl + 1;
      else logical = 0;
      wall = w;
      return { wall, logical };
    },
    peek: () => ({ wall, logical }),
    skewed: () => skewed,
  };
}
