/**
 * The replica: entities (CRDT states) with their views and digest, merges and the conflicts
 * they reveal, and delivery to subscribers. Used by every path that changes an entity:
 * local writes and received batches (hot_path.ts), repairs and catch-up.
 * @module
 */
import { createHash } from "node:crypto";
import {
  canonicalJson,
  counterValue,
  emptyEntity,
  type EntityState,
  entityValues,
  type Json,
  mergeEntityStates,
  type MergeResult,
  newestStamp,
  own,
} from "../../lib/crdt.ts";
import { ENTITY_ID_RE, ENTITY_TYPE_RE, entityKey } from "../../lib/crdt_batch.ts";
import { describeError, RuntimeError } from "../../lib/errors.ts";
import { kickPersist } from "./persist.ts";
import type { Entity, Subscription, SyncDeps } from "./state.ts";
import type { DeliveryInfo, EntityView } from "./types.ts";

const HASH_MASK = (1n << 256n) - 1n;

/** The entity of `type`/`id`, created empty when new. */
export function entityFor(deps: SyncDeps, key: { type: string; id: string }): Entity {
  const d = deps.data;
  const k = entityKey(key.type, key.id);
  let e = d.entities.get(k);
  if (!e) {
    d.entities.set(k, e = { type: key.type, id: key.id, key: k, state: emptyEntity(), hash: 0n });
    d.digestStale.add(e);
  }
  return e;
}

/** An entity as the API shows it. */
export function view(e: Omit<Entity, "hash">): EntityView {
  let newest = 0;
  for (const f in e.state.f) if (e.state.f[f].w > newest) newest = e.state.f[f].w;
  const values = entityValues(e.state);
  const state: Record<string, Json> = {};
  for (const k of Object.keys(values).sort()) state[k] = values[k];
  return {
    type: e.type,
    id: e.id,
    state,
    version: { ...e.state.vv },
    updatedAt: newest ? new Date(newest).toISOString() : null,
  };
}

/** Every entity here (optionally of one type), sorted by key. */
export function entityViews(deps: SyncDeps, type?: string): EntityView[] {
  return [...deps.data.entities.values()]
    .filter((e) => !type || e.type === type)
    .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
    .map(view);
}

/**
 * SHA-256 of the sum of every entity's SHA-256 (`key=values`). The sum is order-free, so
 * only entities changed since the previous call are hashed again: GET /state asks for this
 * and anyone may call it, so its cost must not grow with the whole state.
 */
export function digest(deps: SyncDeps, type?: string): string {
  const d = deps.data;
  for (const e of d.digestStale) {
    const text = `${e.key}=${canonicalJson(entityValues(e.state))}`;
    const hash = BigInt(`0x${createHash("sha256").update(text).digest("hex")}`);
    const sum = d.digestSums.get(e.type) ?? 0n;
    d.digestSums.set(e.type, (sum - e.hash + hash) & HASH_MASK);
    e.hash = hash;
  }
  d.digestStale.clear();
  let sum = 0n;
  if (type) sum = d.digestSums.get(type) ?? 0n;
  else for (const s of d.digestSums.values()) sum = (sum + s) & HASH_MASK;
  return createHash("sha256").update(sum.toString(16).padStart(64, "0")).digest("hex");
}

// ---- subscribers ---------------------------------------------------------------------

function matching(deps: SyncDeps, channel: string): Subscription[] {
  const d = deps.data;
  let list = d.matchCache.get(channel);
  if (!list) {
    list = [...d.subscriptions].filter((s) => s.pattern.matches(channel));
    if (d.matchCache.size > 10_000) d.matchCache.clear();
    d.matchCache.set(channel, list);
  }
  return list;
}

/** Calls every subscriber whose pattern matches `channel`, each guarded. */
export function deliver(deps: SyncDeps, channel: string, data: Json, info: DeliveryInfo): void {
  for (const sub of matching(deps, channel)) {
    try {
      sub.callback(channel, data, info);
    } catch (err) {
      deps.data.counters.callbackErrors++;
      deps.log.error("sync subscriber failed", { channel, error: describeError(err) });
    }
  }
}

/** Tells subscribers of `<type>.changed` which fields of an entity changed. */
export function notifyChange(
  deps: SyncDeps,
  e: Entity,
  changed: string[],
  info: DeliveryInfo,
): void {
  if (!changed.length) return;
  const channel = `${e.type}.changed`;
  if (!matching(deps, channel).length) return;
  const changes: Record<string, Json> = {};
  for (const f of changed) {
    const counter = own(e.state.c, f);
    changes[f] = counter ? counterValue(counter) : own(e.state.f, f)?.v ?? null;
  }
  deliver(deps, channel, { type: e.type, id: e.id, changes }, info);
}

// ---- merge results and conflicts -----------------------------------------------------

/** Books a merge result: counters, digest and snapshot bookkeeping, conflicts to record. */
export function noteResult(deps: SyncDeps, e: Entity, result: MergeResult): void {
  const d = deps.data;
  d.counters.concurrent += result.concurrent;
  d.digestStale.add(e);
  if (result.changed.length) d.dirty.add(e.key);
  for (const c of result.conflicts) {
    const dots = [`${c.local.o}@${c.local.d}`, `${c.remote.o}@${c.remote.d}`].sort();
    const candidate = (r: typeof c.local) => ({
      value: r.v,
      origin: r.o,
      dot: r.d,
      hlc: [r.w, r.l],
    });
    d.store.conflicts.push({
      entityType: e.type,
      entityId: e.id,
      field: c.field,
      key: `${e.key}/${c.field}/${dots.join(",")}`,
      candidates: [candidate(c.local), candidate(c.remote)],
      winner: candidate(c.winner),
      detectedBy: deps.instanceId,
      detectedAt: new Date(deps.now()),
    });
    d.counters.conflicts++;
    deps.log.warn("unmergeable concurrent writes recorded for manual resolution", {
      entity: e.key,
      field: c.field,
      kept: c.winner.o,
    });
  }
  if (result.conflicts.length) kickPersist(deps);
}

/** Merges a whole entity state in (snapshots, resyncs); `notify` tells subscribers. */
export function mergeState(
  deps: SyncDeps,
  input: { type: string; id: string; state: EntityState; notify: boolean },
): void {
  // Writes made here after this must order after what the state holds.
  const stamp = newestStamp(input.state);
  if (stamp) deps.clock.receive(stamp);
  const e = entityFor(deps, { type: input.type, id: input.id });
  const merged = mergeEntityStates(e.state, input.state, deps.strategies[input.type]);
  e.state = merged.state;
  noteResult(deps, e, merged);
  if (input.notify) {
    notifyChange(deps, e, merged.changed, {
      kind: "change",
      origin: "resync",
      instance: deps.instanceId,
      local: false,
      repaired: true,
    });
  }
}

/** Checks an entity type and id; returns the id as a string. */
export function checkEntityId(
  type: string,
  id: string | number,
  options: { action: string },
): string {
  if (!ENTITY_TYPE_RE.test(type)) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Cannot ${options.action}: entity type must be 1-32 lower-case letters, digits or _`,
    );
  }
  const sid = String(id);
  if (!ENTITY_ID_RE.test(sid)) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Cannot ${options.action}: entity id must be 1-128 letters, digits or _ . : @ -`,
    );
  }
  return sid;
}
