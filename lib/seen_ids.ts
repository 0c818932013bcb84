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
 * @module
 */

/** The ids a receiver has seen. */
export interface SeenIds {
  /** Whether `id` was added and is still remembered. */
  has(id: string): boolean;
  /** Remembers `id`. */
  add(id: string): void;
  /** Ids held now (both generations). */
  readonly size: number;
}

/** Creates an empty set of seen ids. */
export function createSeenIds(
  options: { keepMs: number; max: number; now?: () => number },
): SeenIds {
  const now = options.now ?? Date.now;
  let current = new Set<string>();
  let previous = new Set<string>();
  let currentSince = now();
  return {
    has: (id) => current.has(id) || previous.has(id),
    add(id) {
      if (current.size >= options.max || now() - currentSince >= options.keepMs) {
        previous = current;
        current = new Set();
        currentSince = now();
      }
      current.add(id);
    },
    get size() {
      return current.size + previous.size;
    },
  };
}
