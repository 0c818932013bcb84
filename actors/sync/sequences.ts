/**
 * Per-origin sequence bookkeeping of the sync node: which batches of each origin were
 * applied, which are known to exist but missing (gaps), and since when.
 *
 * Redis pub/sub is at-most-once, so every batch an origin seals carries the next number
 * of its sequence. A batch beyond `contiguous + 1`, or a peer's announcement of a higher
 * number, reveals missing batches; the node then fetches exactly those.
 * @module
 */

/** Progress of one origin. */
interface Progress {
  /** Every seq up to this one was applied (or covered by a checkpoint, or given up). */
  contig: number;
  /** Applied seqs above `contig`. */
  above: Set<number>;
  /** Highest seq known to exist (received or announced). */
  high: number;
  /** When the oldest current gap was first noticed (ms), or null without gaps. */
  missingSince: number | null;
  /** Missing seqs given up for now (their origin seems gone); not reported as missing. */
  shelved: Set<number>;
}

/** What {@linkcode SequenceTracker.record} found. */
export type RecordOutcome = "duplicate" | "applied" | "gap";

/** Bookkeeping of applied and missing seqs per origin. */
export interface SequenceTracker {
  /** Records a received batch; `gap` when it revealed missing seqs before it. */
  record(origin: string, seq: number, now: number): RecordOutcome;
  /** True when this seq was applied already (or is covered). */
  seen(origin: string, seq: number): boolean;
  /** Someone says `origin` reached `seq`; true when that revealed missing seqs. */
  announce(origin: string, seq: number, now: number): boolean;
  /** Marks every seq up to `seq` as applied (a checkpoint covers them). */
  cover(origin: string, seq: number): void;
  /** Marks seqs as covered otherwise (their entities were resynced); they count as applied. */
  skip(origin: string, seqs: number[]): void;
  /**
   * Gives up on missing seqs for now: nobody can provide them. They stop counting as
   * missing but do not count as applied (the contiguous seq stays below them).
   */
  shelve(origin: string, seqs: number[]): void;
  /** The origin showed signs of life: its shelved seqs are missing again; true if any. */
  wake(origin: string): boolean;
  /** Highest seq with every earlier one applied. */
  contiguous(origin: string): number;
  /** Highest seq known to exist. */
  high(origin: string): number;
  /** Missing seqs per origin, at most `limit` per origin, ascending. */
  missing(limit?: number): Map<string, number[]>;
  /** Number of missing seqs over all origins. */
  totalMissing(): number;
  /** When the oldest gap of `origin` was noticed, or null. */
  missingSince(origin: string): number | null;
  /** Contiguous seq of every origin. */
  vector(): Record<string, number>;
  /** Every origin known. */
  origins(): string[];
}

/** Creates an empty tracker. */
export function createSequenceTracker(): SequenceTracker {
  const table = new Map<string, Progress>();

  function get(origin: string): Progress {
    let p = table.get(origin);
    if (!p) {
      table.set(
        origin,
        p = { contig: 0, above: new Set(), high: 0, missingSince: null, shelved: new Set() },
      );
    }
    return p;
  }

  function advance(p: Progress): void {
    while (p.above.has(p.contig + 1)) {
      p.above.delete(p.contig + 1);
      p.contig++;
    }
    if (p.high < p.contig) p.high = p.contig;
    if (p.contig >= p.high) p.missingSince = null;
  }

  function gapCount(p: Progress): number {
    return p.high - p.contig - p.above.size - p.shelved.size;
  }

  return {
    record(origin, seq, now) {
      const p = get(origin);
      if (seq <= p.contig || p.above.has(seq)) return "duplicate";
      p.shelved.delete(seq);
      const revealed = seq > p.high + 1;
      if (seq > p.high) p.high = seq;
      if (seq === p.contig + 1) {
        p.contig = seq;
        advance(p);
      } else {
        p.above.add(seq);
      }
      if (revealed) {
        p.missingSince ??= now;
        return "gap";
      }
      if (gapCount(p) === 0) p.missingSince = null;
      return "applied";
    },
    seen(origin, seq) {
      const p = table.get(origin);
      return !!p && (seq <= p.contig || p.above.has(seq));
    },
    announce(origin, seq, now) {
      const p = get(origin);
      if (seq <= p.high) return false;
      p.high = seq;
      p.missingSince ??= now;
      return true;
    },
    cover(origin, seq) {
      const p = get(origin);
      if (seq <= p.contig) return;
      p.contig = seq;
      for (const s of p.above) if (s <= seq) p.above.delete(s);
      for (const s of p.shelved) if (s <= seq) p.shelved.delete(s);
      advance(p);
    },
    skip(origin, seqs) {
      const p = get(origin);
      for (const s of seqs) {
        p.shelved.delete(s);
        if (s > p.contig) p.above.add(s);
      }
      advance(p);
    },
    shelve(origin, seqs) {
      const p = get(origin);
      for (const s of seqs) if (s > p.contig && !p.above.has(s)) p.shelved.add(s);
      if (gapCount(p) <= 0) p.missingSince = null;
    },
    wake(origin) {
      const p = table.get(origin);
      if (!p || !p.shelved.size) return false;
      p.shelved.clear();
      return true;
    },
    contiguous: (origin) => table.get(origin)?.contig ?? 0,
    high: (origin) => table.get(origin)?.high ?? 0,
    missing(limit = 1000) {
      const out = new Map<string, number[]>();
      for (const [origin, p] of table) {
        if (gapCount(p) <= 0) continue;
        const seqs: number[] = [];
        for (let s = p.contig + 1; s <= p.high && seqs.length < limit; s++) {
          if (!p.above.has(s) && !p.shelved.has(s)) seqs.push(s);
        }
        if (seqs.length) out.set(origin, seqs);
      }
      return out;
    },
    totalMissing() {
      let n = 0;
      for (const p of table.values()) n += Math.max(0, gapCount(p));
      return n;
    },
    missingSince: (origin) => table.get(origin)?.missingSince ?? null,
    vector() {
      const out: Record<string, number> = {};
      for (const [origin, p] of table) out[origin] = p.contig;
      return out;
    },
    origins: () => [...table.keys()],
  };
}
