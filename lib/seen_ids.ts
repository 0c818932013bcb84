/**
 * Message ids seen recently, for de-duplication, in two generations: the ids go into the
 * current set; once it holds `max` ids or is `keepMs` old it becomes the previous set and the
 * one before is dropped whole. Every id is remembered for at least `keepMs` or until `max`
 * later ids were added, whichever comes first; at most 2 × `max` ids are held.
 *
 * Replaces a Map of id → expiry trimmed from its oldest end on every add: past the size bound
 * each add deleted the oldest entry, and iterating a Map from its start walks over the deleted
 * slots until the table is rebuilt, so the trim grew with the deletions (the largest self time
 * on the receiving instance's message path in a sustained run, docs/scaling.md); below it, each
 * add still made an iterator. Here an add is a `Set.add` and a comparison.
 *
 * What the count bound forgets is not left open to replays: ids of the form
 * `<sender prefix>.<base-36 counter>` (actors/runtime/transport.ts: a random prefix per
 * process and a counter that only grows) leave, when their generation is dropped, the highest
 * counter of each sender as a floor; `forgotten(id)` says an id is at or below its sender's
 * floor, i.e. may have been delivered already (the anti-replay window of IPsec and DTLS, with
 * the generations as the window). A floor is kept `keepMs` after it last rose: a replay later
 * than that is also older than the receiver's age limit (keepMs is twice it).
 * @module
 */

/** The ids a receiver has seen. */
export interface SeenIds {
  /** Whether `id` was added and is still remembered. */
  has(id: string): boolean;
  /** Remembers `id`. */
  add(id: string): void;
  /**
   * Whether `id` (`<prefix>.<counter>`) is at or below the highest counter of its sender among
   * the ids forgotten: it may have been seen. False for ids of another form.
   */
  forgotten(id: string): boolean;
  /** Senders with a floor now. */
  readonly floors: number;
  /** Ids held now (both generations). */
  readonly size: number;
}

/** An id's sender prefix and counter, or null for an id of another form. */
function split(id: string): { prefix: string; counter: number } | null {
  const dot = id.lastIndexOf(".");
  if (dot <= 0 || dot === id.length - 1 || id.length - dot > 12) return null;
  const counter = parseInt(id.slice(dot + 1), 36);
  return Number.isSafeInteger(counter) ? { prefix: id.slice(0, dot), counter } : null;
}

/** Creates an empty set of seen ids. */
export function createSeenIds(
  options: { keepMs: number; max: number; now?: () => number },
): SeenIds {
  const now = options.now ?? Date.now;
  let current = new Set<string>();
  let previous = new Set<string>();
  /** The highest counter per sender prefix in each generation. */
  let currentTop = new Map<string, number>();
  let previousTop = new Map<string, number>();
  /** Per sender: the highest counter forgotten, and when it last rose. */
  const floors = new Map<string, { counter: number; at: number }>();
  let currentSince = now();

  function rotate(t: number): void {
    for (const [prefix, counter] of previousTop) {
      const f = floors.get(prefix);
      if (!f) floors.set(prefix, { counter, at: t });
      else if (counter > f.counter) {
        f.counter = counter;
        f.at = t;
      }
    }
    for (const [prefix, f] of floors) if (t - f.at >= options.keepMs) floors.delete(prefix);
    previous = current;
    previousTop = currentTop;
    current = new Set();
    currentTop = new Map();
    currentSince = t;
  }

  return {
    has: (id) => current.has(id) || previous.has(id),
    add(id) {
      if (current.size >= options.max || now() - currentSince >= options.keepMs) rotate(now());
      current.add(id);
      const parts = split(id);
      if (parts) {
        const top = currentTop.get(parts.prefix);
        if (top === undefined || parts.counter > top) currentTop.set(parts.prefix, parts.counter);
      }
    },
    forgotten(id) {
      if (floors.size === 0) return false;
      const parts = split(id);
      if (!parts) return false;
      const f = floors.get(parts.prefix);
      return f !== undefined && parts.counter <= f.counter;
    },
    get size() {
      return current.size + previous.size;
    },
    get floors() {
      return floors.size;
    },
  };
}
