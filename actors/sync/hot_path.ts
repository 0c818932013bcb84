/**
 * The sync node's hot path, tens of thousands of updates per second, outside the chart:
 *
 * 1. `applyLocalDelta` validates a delta, stamps every field with this node's hybrid
 *    logical clock, applies it to the replica at once (read-your-writes) and adds it to the
 *    outbox, where writes to one entity in one tick coalesce.
 * 2. At the end of the tick (a microtask) `seal` numbers the outbox's batches with this
 *    origin's next sequence numbers, publishes them on Redis pub/sub (at-most-once), keeps
 *    them in the ring of recent batches and queues them for PostgreSQL (persist.ts).
 * 3. `ingest` applies a batch from another origin the moment it arrives (the entity state
 *    is a CRDT, so order does not matter) and records its sequence number; a gap it
 *    reveals is reported to the chart only while the chart watches for gaps.
 *
 * Entities, merges and subscribers' callbacks are entities.ts'.
 * @module
 */
import type { z } from "zod";
import {
  applyEntityDelta,
  counterValue,
  type EntityDelta,
  entityValues,
  fieldStrategy,
  type Json,
  own,
} from "../../lib/crdt.ts";
import {
  type Batch,
  type BatchEntry,
  batchSchema,
  CHANNEL_RE,
  entityKey,
  entryDelta,
  FIELD_RE,
  parseEntityKey,
} from "../../lib/crdt_batch.ts";
import { describeError, RuntimeError } from "../../lib/errors.ts";
import { checkEntityId, deliver, entityFor, noteResult, notifyChange } from "./entities.ts";
import { kickPersist } from "./persist.ts";
import {
  type CounterOp,
  type DeltaInput,
  isPlatformEvent,
  PLATFORM_EVENTS,
  platformChange,
} from "./platform.ts";
import { type Entity, jsonBytes, type SyncDeps } from "./state.ts";
import type { DeliveryInfo } from "./types.ts";
import { BATCH_CHANNEL } from "./wire.ts";

const MAX_DELTA_BYTES = 8192;
const MAX_EVENT_BYTES = 8192;

/** Where a batch came from. */
export type BatchSource = "live" | "repair" | "catchup";

// ---- local writes --------------------------------------------------------------------

function counterAmount(field: string, op: unknown, current: number, action: string): number {
  const bad = () =>
    new RuntimeError(
      "VALIDATION_FAILED",
      `Cannot ${action}: ${field} is a counter; expected an integer or {"inc": n} / {"dec": n}`,
    );
  if (typeof op === "number") {
    if (!Number.isSafeInteger(op)) throw bad();
    return op - current;
  }
  if (op && typeof op === "object" && !Array.isArray(op)) {
    const o = op as Record<string, unknown>;
    const keys = Object.keys(o);
    if (keys.length !== 1) throw bad();
    const n = o[keys[0]];
    if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 0) throw bad();
    if (keys[0] === "inc") return n;
    if (keys[0] === "dec") return -n;
  }
  throw bad();
}

function pendingFor(deps: SyncDeps, e: Entity): BatchEntry {
  const outbox = deps.data.outbox;
  const origin = deps.origin;
  let entry = outbox.byKey.get(e.key);
  const vv = e.state.vv;
  if (!entry) {
    const d = (vv[origin] ?? 0) + 1;
    entry = { k: e.key, d, x: { ...vv } };
    outbox.byKey.set(e.key, entry);
    outbox.entries.push(entry);
  } else {
    // Coalesced: the view is the latest one the writer had, minus its own pending dot.
    entry.x = { ...vv, [origin]: entry.d! - 1 };
  }
  return entry;
}

function queueSeal(deps: SyncDeps): void {
  const outbox = deps.data.outbox;
  if (outbox.sealQueued || deps.data.resources.status === "closed") return;
  outbox.sealQueued = true;
  queueMicrotask(() => seal(deps));
}

/** A local write: the entity, its delta, and what the write is called in errors. */
export interface LocalWrite {
  type: string;
  id: string | number;
  delta: DeltaInput;
  /** e.g. `apply delta to stream 1`. */
  action: string;
}

/** Validates and applies a delta locally (whole or not at all); returns the entity and its pending entry. */
export function applyLocalDelta(
  deps: SyncDeps,
  input: LocalWrite,
): { entity: Entity; entry: BatchEntry } {
  const { type, delta, action } = input;
  const sid = checkEntityId(type, input.id, input);
  // A plain-object check, not a schema copy: this is the hot path, and every field is
  // checked below; HTTP bodies were already parsed with a schema at the boundary.
  const isObject = typeof delta === "object" && delta !== null && !Array.isArray(delta);
  const fields = isObject ? Object.keys(delta) : [];
  if (fields.length < 1 || fields.length > 64) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Cannot ${action}: the delta must be an object of 1 to 64 fields`,
    );
  }
  if (jsonBytes(delta) > MAX_DELTA_BYTES) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Cannot ${action}: the delta is larger than ${MAX_DELTA_BYTES} bytes of JSON`,
    );
  }
  const strategy = deps.strategies[type];
  const current = deps.data.entities.get(entityKey(type, sid))?.state;
  // Validate every field before changing anything: a delta applies whole or not at all.
  const sets: [string, Json][] = [];
  const counts: [string, number][] = [];
  for (const field of fields) {
    if (!FIELD_RE.test(field)) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Cannot ${action}: field name ${JSON.stringify(field)} is invalid`,
      );
    }
    const value = delta[field];
    const kind = fieldStrategy(strategy, field);
    if (value === undefined) {
      throw new RuntimeError("VALIDATION_FAILED", `Cannot ${action}: ${field} has no value`);
    }
    if (kind === "counter") {
      const cur = own(current?.c, field);
      counts.push([
        field,
        counterAmount(field, value as CounterOp, cur ? counterValue(cur) : 0, action),
      ]);
    } else if (kind === "max" && (typeof value !== "number" || !Number.isFinite(value))) {
      throw new RuntimeError("VALIDATION_FAILED", `Cannot ${action}: ${field} must be a number`);
    } else if (kind === "sticky" && typeof value !== "boolean") {
      throw new RuntimeError("VALIDATION_FAILED", `Cannot ${action}: ${field} must be a boolean`);
    } else {
      sets.push([field, value as Json]);
    }
  }
  const origin = deps.origin;
  const entity = entityFor(deps, { type, id: sid });
  const entry = pendingFor(deps, entity);
  const local: EntityDelta = { o: origin, d: entry.d!, x: entry.x!, f: {}, c: {} };
  for (const [field, value] of sets) {
    const ts = deps.clock.now();
    const w: [Json, number, number] = [value, ts.wall, ts.logical];
    (entry.f ??= {})[field] = w;
    local.f![field] = w;
  }
  for (const [field, amount] of counts) {
    const existing = own(entity.state.c, field);
    if (amount === 0 && existing) continue;
    const counter = existing ?? { p: {}, n: {} };
    let p = own(counter.p, origin) ?? 0, n = own(counter.n, origin) ?? 0;
    if (amount > 0) p += amount;
    else n -= amount;
    (entry.c ??= {})[field] = [p, n];
    local.c![field] = [p, n];
  }
  const result = applyEntityDelta(entity.state, local, strategy);
  noteResult(deps, entity, result);
  notifyChange(deps, entity, result.changed, {
    kind: "change",
    origin,
    instance: deps.instanceId,
    local: true,
    repaired: false,
  });
  queueSeal(deps);
  return { entity, entry };
}

/** Drops a cache entry here only (a remote invalidation, or a local one before it is sent). */
export function dropCached(deps: SyncDeps, input: { cache: string; key: string }): void {
  deps.data.caches.get(input.cache)?.drop(input.key);
}

/** Adds a cache invalidation to the outbox: it travels with the next batch. */
export function queueInvalidation(deps: SyncDeps, input: { cache: string; key: string }): void {
  const outbox = deps.data.outbox;
  if (!outbox.invalidations) {
    outbox.invalidations = { i: [] };
    outbox.entries.push(outbox.invalidations);
  }
  outbox.invalidations.i!.push([input.cache, input.key]);
  if (outbox.invalidations.i!.length >= 256) outbox.invalidations = null;
  queueSeal(deps);
}

/**
 * Publishes an event to subscribers on every instance. Platform events are validated and
 * also change their entity (and invalidate their caches) in the same batch.
 */
export function publishEvent(deps: SyncDeps, input: { channel: string; data: Json }): void {
  const { channel, data } = input;
  // The length first: the pattern test then never sees more than 128 characters.
  if (channel.length > 128 || !CHANNEL_RE.test(channel)) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Cannot publish on ${
        JSON.stringify(channel)
      }: a channel is dot-separated lower-case segments`,
    );
  }
  if (channel.endsWith(".changed")) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Cannot publish on ${channel}: *.changed channels carry entity changes only`,
    );
  }
  if (jsonBytes(data) > MAX_EVENT_BYTES) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Cannot publish on ${channel}: the data is larger than ${MAX_EVENT_BYTES} bytes of JSON`,
    );
  }
  const info: DeliveryInfo = {
    kind: "event",
    origin: deps.origin,
    instance: deps.instanceId,
    local: true,
    repaired: false,
  };
  if (isPlatformEvent(channel)) {
    const parsed = PLATFORM_EVENTS[channel].safeParse(data);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Cannot publish ${channel}: ${issue?.path.join(".") || "data"} ${
          issue?.message ?? "is invalid"
        }`,
      );
    }
    const change = platformChange(channel, data, deps.now());
    const { entity, entry } = applyLocalDelta(deps, {
      type: change.type,
      id: change.id,
      delta: change.delta,
      action: `publish ${channel}`,
    });
    if (change.derive) {
      applyLocalDelta(deps, {
        type: change.type,
        id: change.id,
        delta: change.derive(entityValues(entity.state)),
        action: "derive",
      });
    }
    (entry.e ??= []).push([channel, data]);
    for (const [cache, key] of change.invalidate) {
      dropCached(deps, { cache, key });
      (entry.i ??= []).push([cache, key]);
    }
  } else {
    deps.data.outbox.entries.push({ e: [[channel, data]] });
    queueSeal(deps);
  }
  deliver(deps, channel, data, info);
}

// ---- sealing and publishing ----------------------------------------------------------

function publishBatch(deps: SyncDeps, json: string): void {
  const d = deps.data;
  const p = deps.bus.publish(BATCH_CHANNEL, json).then(() => {
    d.counters.published++;
    deps.watch.link?.published();
  }, (err) => {
    d.counters.publishFailures++;
    deps.watch.link?.failed(describeError(err));
  });
  d.outbox.inflight.push(p);
  if (d.outbox.inflight.length > 1000) d.outbox.inflight = d.outbox.inflight.slice(-100);
}

/** Seals the outbox into numbered batches: published, kept in the ring, queued for storage. */
export function seal(deps: SyncDeps): void {
  const d = deps.data;
  const outbox = d.outbox;
  outbox.sealQueued = false;
  if (!outbox.entries.length) return;
  const entries = outbox.entries;
  outbox.entries = [];
  outbox.byKey = new Map();
  outbox.invalidations = null;
  const origin = deps.origin;
  const instance = JSON.stringify(deps.instanceId);
  let parts: string[] = [];
  let keys: string[] = [];
  let size = 0;
  const emit = () => {
    if (!parts.length) return;
    const seq = ++outbox.lastSeq;
    const json = `${deps.selfPrefix}"n":${instance},"s":${seq},"e":[${parts.join(",")}],"k":${
      JSON.stringify(keys)
    }}`;
    d.tracker.record(origin, seq, deps.now());
    d.ring.add(origin, seq, json);
    d.ownKeys.set(seq, keys);
    if (d.ownKeys.size > 200_000) d.ownKeys.delete(d.ownKeys.keys().next().value!);
    d.store.queue.push({ seq, json });
    publishBatch(deps, json);
    deps.watch.moved?.(deps.now());
    parts = [];
    keys = [];
    size = 0;
  };
  for (const entry of entries) {
    const text = JSON.stringify(entry);
    if (
      parts.length && (parts.length >= deps.batchEntries || size + text.length > deps.batchBytes)
    ) {
      emit();
    }
    parts.push(text);
    size += text.length + 1;
    if (entry.k) keys.push(entry.k);
  }
  emit();
  kickPersist(deps);
}

// ---- receiving -----------------------------------------------------------------------

/** Counts a malformed message; logs one line per 5 s at most. */
export function rejectMessage(deps: SyncDeps, input: { what: string; detail: string }): void {
  const d = deps.data;
  d.counters.rejected++;
  const t = deps.now();
  if (t - d.rejectedLoggedAt > 5000) {
    d.rejectedLoggedAt = t;
    deps.log.warn(`rejected a malformed sync ${input.what}`, {
      error: input.detail,
      rejected: d.counters.rejected,
    });
  }
}

/**
 * Notes a sign of life of an origin. While the chart watches for gaps, batches shelved as
 * lost become missing again and are reported.
 */
export function heardFrom(deps: SyncDeps, origin: string): void {
  const d = deps.data;
  d.originHeard.set(origin, deps.now());
  const gaps = deps.watch.gaps;
  if (gaps && d.tracker.wake(origin)) {
    deps.log.info("an origin given up for gone spoke again; fetching its shelved batches", {
      origin,
    });
    gaps(d.tracker.totalMissing());
  }
}

/** Applies a batch from another origin; false if it was this origin's or a duplicate. */
export function ingest(
  deps: SyncDeps,
  input: { batch: Batch; raw: string | null; source: BatchSource },
): boolean {
  const { batch, raw, source } = input;
  const d = deps.data;
  const o = batch.o;
  if (o === deps.origin) return false;
  d.originInstance.set(o, batch.n);
  if (source === "live") heardFrom(deps, o);
  if (d.tracker.seen(o, batch.s)) {
    d.counters.duplicates++;
    return false;
  }
  const info: DeliveryInfo = {
    kind: "change",
    origin: o,
    instance: batch.n,
    local: false,
    repaired: source === "repair",
  };
  let wall = 0, logical = 0;
  for (const entry of batch.e) {
    const delta = entryDelta(entry, o);
    if (delta) {
      const e = entityFor(deps, parseEntityKey(entry.k!)!);
      const result = applyEntityDelta(e.state, delta, deps.strategies[e.type]);
      noteResult(deps, e, result);
      if (source !== "catchup") notifyChange(deps, e, result.changed, info);
      if (delta.f) {
        for (const f in delta.f) {
          const [, w, l] = delta.f[f];
          if (w > wall || (w === wall && l > logical)) {
            wall = w;
            logical = l;
          }
        }
      }
    }
    if (entry.i) { for (const [cache, key] of entry.i) dropCached(deps, { cache, key }); }
    if (entry.e && source !== "catchup") {
      for (const [channel, data] of entry.e) {
        deliver(deps, channel, data, { ...info, kind: "event" });
      }
    }
  }
  if (wall) deps.clock.receive({ wall, logical });
  const outcome = d.tracker.record(o, batch.s, deps.now());
  if (raw !== null || source === "repair") {
    d.ring.add(o, batch.s, raw ?? JSON.stringify(batch));
  }
  if (outcome === "gap") {
    d.counters.gaps++;
    deps.watch.gaps?.(d.tracker.totalMissing());
  }
  return true;
}

/** Parses a message from another instance against its schema; null (counted, logged) if bad. */
export function parseMessage<T>(
  deps: SyncDeps,
  input: { raw: string; schema: z.ZodType<T>; what: string },
): T | null {
  let json: unknown;
  try {
    json = JSON.parse(input.raw);
  } catch {
    rejectMessage(deps, { what: input.what, detail: "not JSON" });
    return null;
  }
  const parsed = input.schema.safeParse(json);
  if (!parsed.success) {
    rejectMessage(deps, {
      what: input.what,
      detail: parsed.error.issues[0]?.message ?? "invalid",
    });
    return null;
  }
  return parsed.data;
}

/** Handles a message on the batch channel. */
export function onBatchMessage(deps: SyncDeps, raw: string): void {
  if (raw.startsWith(deps.selfPrefix)) return;
  deps.data.counters.received++;
  const batch = parseMessage(deps, { raw, schema: batchSchema, what: "batch" });
  if (batch) ingest(deps, { batch, raw, source: "live" });
}
