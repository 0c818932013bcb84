/**
 * Read-through caches whose entries are invalidated on every instance at once.
 *
 * `get(key)` answers from memory while the entry is younger than `ttlMs`, else loads it
 * (concurrent misses share one load). `invalidate(key)` drops the entry here and sends the
 * invalidation with the sync node's next batch, so it reaches the other instances in order
 * with the state changes around it, and is repaired like them when pub/sub loses it. When
 * the node cannot be sure it saw every invalidation (the Redis link came back, a lost
 * batch was given up), it clears every cache: a miss costs a load, a stale hit costs
 * correctness. The TTL bounds staleness even if all of that failed.
 *
 * A load that was running when its key was invalidated is returned to its caller but not
 * cached: it may have read the value from before the change.
 * @module
 */

/** Options of a cache. */
export interface CacheOptions<T> {
  /** Loads a missing entry (e.g. from PostgreSQL). */
  load: (key: string) => Promise<T>;
  /** Entry lifetime (ms, default 30 s): the bound on staleness if an invalidation is lost. */
  ttlMs?: number;
  /** Entries kept (default 10,000); the least recently used go first. */
  maxEntries?: number;
}

/** Counters of a cache. */
export interface CacheStats {
  /** Answers from memory. */
  hits: number;
  /** Loads. */
  misses: number;
  /** Entries dropped by invalidations (local and remote). */
  invalidations: number;
  /** Entries now. */
  size: number;
}

/** A cache invalidated across instances. */
export interface InvalidatingCache<T> {
  /** Its name (the same on every instance). */
  readonly name: string;
  /** The entry for `key`, from memory or loaded. */
  get(key: string): Promise<T>;
  /** The cached entry without loading, or undefined. */
  peek(key: string): T | undefined;
  /** Drops `key` here and on every other instance. */
  invalidate(key: string): void;
  /** Drops every entry here and on every other instance. */
  invalidateAll(): void;
  /** Counters. */
  stats(): CacheStats;
}

/** The node-side handle of a cache: local drops, without broadcasting. */
export interface LocalCache<T> extends InvalidatingCache<T> {
  /** Drops `key` (or everything for `*`) here only: a remote invalidation arrived. */
  drop(key: string): void;
  /** Drops everything here only. */
  clear(): void;
}

/** Creates a cache; `broadcast` sends an invalidation to the other instances. */
export function createInvalidatingCache<T>(
  name: string,
  options: CacheOptions<T> & { now: () => number; broadcast: (key: string) => void },
): LocalCache<T> {
  const ttlMs = options.ttlMs ?? 30_000;
  const maxEntries = options.maxEntries ?? 10_000;
  const slots = new Map<string, { value: T; at: number }>();
  const loads = new Map<string, { promise: Promise<T>; stale: boolean }>();
  const stats = { hits: 0, misses: 0, invalidations: 0 };

  function drop(key: string): void {
    if (key === "*") return clear();
    if (slots.delete(key)) stats.invalidations++;
    const load = loads.get(key);
    if (load) load.stale = true;
  }

  function clear(): void {
    stats.invalidations += slots.size;
    slots.clear();
    for (const load of loads.values()) load.stale = true;
  }

  return {
    name,
    get(key) {
      const slot = slots.get(key);
      if (slot && options.now() - slot.at < ttlMs) {
        stats.hits++;
        // Re-insert: Map order is the recency order the eviction below relies on.
        slots.delete(key);
        slots.set(key, slot);
        return Promise.resolve(slot.value);
      }
      const running = loads.get(key);
      if (running) return running.promise;
      stats.misses++;
      const entry = { promise: null as unknown as Promise<T>, stale: false };
      entry.promise = options.load(key).then((value) => {
        if (!entry.stale) {
          slots.set(key, { value, at: options.now() });
          if (slots.size > maxEntries) slots.delete(slots.keys().next().value!);
        }
        return value;
      }).finally(() => {
        if (loads.get(key) === entry) loads.delete(key);
      });
      loads.set(key, entry);
      return entry.promise;
    },
    peek(key) {
      const slot = slots.get(key);
      return slot && options.now() - slot.at < ttlMs ? slot.value : undefined;
    },
    invalidate(key) {
      drop(key);
      options.broadcast(key);
    },
    invalidateAll() {
      clear();
      options.broadcast("*");
    },
    drop,
    clear,
    stats: () => ({ ...stats, size: slots.size }),
  };
}
