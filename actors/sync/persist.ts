/**
 * The store loop: sealed batches and recorded conflicts go to PostgreSQL in groups
 * (`event_log`, `sync_conflicts`), in order, retried with backoff while the database is
 * unavailable. Storing an origin's batches also registers the origin, so batches sealed
 * before the chart's `open` are stored like any other.
 * @module
 */
import { describeError, RuntimeError } from "../../lib/errors.ts";
import { appendBatches, recordConflicts } from "../../store/sync.ts";
import type { SyncDeps } from "./state.ts";

const PERSIST_GROUP = 200;
const CONFLICT_GROUP = 500;

/** Starts the store loop unless it runs or there is nothing to store. */
export function kickPersist(deps: SyncDeps): void {
  const store = deps.data.store;
  if (store.running) return;
  if (!store.queue.length && !store.conflicts.length) return;
  store.running = storeLoop(deps).finally(() => {
    store.running = null;
    const more = store.queue.length || store.conflicts.length;
    if (more && deps.data.resources.status === "open") kickPersist(deps);
  });
}

async function storeLoop(deps: SyncDeps): Promise<void> {
  const store = deps.data.store;
  let failures = 0;
  while (store.queue.length || store.conflicts.length) {
    try {
      if (store.queue.length) {
        const group = store.queue.slice(0, PERSIST_GROUP);
        await appendBatches(deps.sql, {
          origin: deps.origin,
          instanceId: deps.instanceId,
          startedAt: new Date(deps.startedAt),
          batches: group,
        });
        store.queue.splice(0, group.length);
        store.persistedSeq = group[group.length - 1].seq;
        const ready = store.waiters.filter((w) => w.seq <= store.persistedSeq);
        store.waiters = store.waiters.filter((w) => w.seq > store.persistedSeq);
        for (const w of ready) w.resolve();
      }
      if (store.conflicts.length) {
        const group = store.conflicts.slice(0, CONFLICT_GROUP);
        await recordConflicts(deps.sql, group);
        store.conflicts.splice(0, group.length);
      }
      failures = 0;
    } catch (err) {
      failures++;
      if (failures === 1 || failures % 20 === 0) {
        deps.log.warn("cannot store sync batches; retrying", {
          error: describeError(err),
          backlog: store.queue.length,
        });
      }
      // Closing: a database that is down must not keep the loop (and shutdown) going.
      if (deps.data.resources.status === "closed" && failures >= 3) return;
      await new Promise((r) => setTimeout(r, Math.min(100 * 2 ** Math.min(failures, 6), 5000)));
    }
  }
}

/** Resolves once every batch up to `seq` is stored; rejects after `timeoutMs`. */
export async function waitPersisted(
  deps: SyncDeps,
  input: { seq: number; timeoutMs: number },
): Promise<void> {
  const store = deps.data.store;
  if (store.persistedSeq >= input.seq) return;
  const done = new Promise<void>((resolve) => store.waiters.push({ seq: input.seq, resolve }));
  kickPersist(deps);
  let timer: number | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new RuntimeError(
            "SYNC_UNAVAILABLE",
            `Sync batches were not stored within ${input.timeoutMs} ms`,
          ),
        ),
      input.timeoutMs,
    );
  });
  try {
    await Promise.race([done, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Stores what is still queued, waiting at most `timeoutMs` (a database that is down must
 * not hold up shutdown for ever); then releases every `flush` caller.
 */
export async function drainStore(deps: SyncDeps, input: { timeoutMs: number }): Promise<void> {
  const store = deps.data.store;
  if (store.queue.length || store.conflicts.length) {
    const loop = store.running ?? storeLoop(deps);
    let timer: number | undefined;
    await Promise.race([loop, new Promise((r) => timer = setTimeout(r, input.timeoutMs))]);
    clearTimeout(timer);
    if (store.queue.length) {
      deps.log.warn("stopping with sync batches not stored", { batches: store.queue.length });
    }
  } else {
    await store.running;
  }
  for (const w of store.waiters) w.resolve();
  store.waiters = [];
}
