/**
 * Conflict-free replicated entity state: version vectors, per-field registers with a
 * merge strategy each, and PN counters. Pure functions over plain JSON, so the same state
 * can be sent over Redis, stored as a snapshot and compared in tests.
 *
 * An entity's state is a join-semilattice: {@linkcode mergeEntityStates} is commutative,
 * associative and idempotent, and {@linkcode applyEntityDelta} is the same join with a
 * one-origin state. So replicas that applied the same deltas, in any order and any number
 * of times, hold identical state — that is what lets the sync node apply a delta the moment
 * it arrives and repair losses later.
 *
 * Field strategies (per entity type, see `EntityStrategy`):
 *
 * | strategy | merge | example |
 * | --- | --- | --- |
 * | `lww` | last writer wins by (HLC, origin) | a stream's title |
 * | `counter` | PN counter: per-origin increments and decrements, summed | viewer counts |
 * | `max` | the largest number wins | peak viewers |
 * | `sticky` | `true` wins over anything, then LWW | a session's `revoked` flag |
 * | `manual` | LWW, but concurrent different values are reported as a conflict | a user's email |
 *
 * Concurrency is decided with version vectors: every delta carries the vector of the
 * entity its writer had seen (`x`); a local register whose dot that vector does not cover
 * was written concurrently.
 * @module
 */

/** A JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A version vector: origin → highest dot (per-entity write counter) seen from it. */
export type VersionVector = Record<string, number>;

/** How two version vectors relate. */
export type Causality = "equal" | "before" | "after" | "concurrent";

/** How a field merges. */
export type FieldStrategy = "lww" | "counter" | "max" | "sticky" | "manual";

/** The merge strategy of an entity type: per-field strategies and the default. */
export interface EntityStrategy {
  /** Strategy of named fields. */
  fields?: Record<string, FieldStrategy>;
  /** Strategy of every other field (default `lww`). */
  fallback?: "lww" | "manual";
}

/** A register: a field's value with the stamp of the write that set it. */
export interface Register {
  /** The value. */
  v: Json;
  /** HLC wall time of the write. */
  w: number;
  /** HLC logical part of the write. */
  l: number;
  /** Origin (writer incarnation) of the write. */
  o: string;
  /** The writer's dot: its per-entity write counter at that write. */
  d: number;
}

/** A PN counter: per-origin totals of increments (`p`) and decrements (`n`). */
export interface PnCounter {
  /** Increments by origin. */
  p: Record<string, number>;
  /** Decrements by origin. */
  n: Record<string, number>;
}

/** The replicated state of one entity. */
export interface EntityState {
  /** Writes seen, per origin. */
  vv: VersionVector;
  /** Registers by field. */
  f: Record<string, Register>;
  /** Counters by field. */
  c: Record<string, PnCounter>;
}

/** One origin's (possibly coalesced) change to one entity. */
export interface EntityDelta {
  /** Origin of the change. */
  o: string;
  /** The origin's dot for this change (its entity version vector entry after it). */
  d: number;
  /** The entity's version vector as the writer had seen it before this change. */
  x: VersionVector;
  /** Field writes: field → [value, HLC wall, HLC logical]. */
  f?: Record<string, [Json, number, number]>;
  /** Counter totals of the origin: field → [increments, decrements]. */
  c?: Record<string, [number, number]>;
}

/** Two concurrent writes of one field. */
export interface FieldConflict {
  /** The field. */
  field: string;
  /** Its strategy. */
  strategy: FieldStrategy;
  /** The write this replica held. */
  local: Register;
  /** The write that arrived. */
  remote: Register;
  /** The write the strategy kept (for `manual`, provisionally). */
  winner: Register;
}

/** What applying or merging changed. */
export interface MergeResult {
  /** Fields whose visible value changed. */
  changed: string[];
  /** Concurrent writes of `manual` fields with different values (unmergeable). */
  conflicts: FieldConflict[];
  /** Concurrent writes of any field (resolved by its strategy or reported). */
  concurrent: number;
}

/**
 * `record[key]` when `record` has it as its own property, else undefined: never an inherited
 * one, so field and origin names like `constructor` or `toString` are data like any other.
 */
export function own<T>(record: Record<string, T> | undefined, key: string): T | undefined {
  return record !== undefined && Object.hasOwn(record, key) ? record[key] : undefined;
}

/** Compares two version vectors. */
export function compareVersions(a: VersionVector, b: VersionVector): Causality {
  let less = false;
  let more = false;
  for (const k in a) {
    const x = a[k], y = own(b, k) ?? 0;
    if (x < y) less = true;
    else if (x > y) more = true;
  }
  for (const k in b) {
    if (Object.hasOwn(a, k)) continue;
    if (b[k] > 0) less = true;
  }
  return less && more ? "concurrent" : less ? "before" : more ? "after" : "equal";
}

/** The pointwise maximum of two version vectors (a new object). */
export function mergeVersions(a: VersionVector, b: VersionVector): VersionVector {
  const out: VersionVector = { ...a };
  for (const k in b) if ((own(out, k) ?? 0) < b[k]) out[k] = b[k];
  return out;
}

/** The strategy of one field of an entity type. */
export function fieldStrategy(strategy: EntityStrategy | undefined, field: string): FieldStrategy {
  return own(strategy?.fields, field) ?? strategy?.fallback ?? "lww";
}

/** JSON with object keys sorted, so equal values have equal text. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== "object") return JSON.stringify(value) ?? "null";
  if (Array.isArray(value)) return "[" + value.map(canonicalJson).join(",") + "]";
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj).filter((k) => obj[k] !== undefined).sort();
  return "{" + keys.map((k) => JSON.stringify(k) + ":" + canonicalJson(obj[k])).join(",") + "}";
}

function sameValue(a: Json, b: Json): boolean {
  if (a === b) return true;
  if (a === null || b === null || typeof a !== "object" || typeof b !== "object") return false;
  return canonicalJson(a) === canonicalJson(b);
}

function stampOrder(a: Register, b: Register): number {
  if (a.w !== b.w) return a.w - b.w;
  if (a.l !== b.l) return a.l - b.l;
  if (a.o !== b.o) return a.o < b.o ? -1 : 1;
  if (a.d !== b.d) return a.d - b.d;
  // Only a broken writer reuses a stamp for two values; still pick the same one everywhere.
  const x = canonicalJson(a.v), y = canonicalJson(b.v);
  return x === y ? 0 : x < y ? -1 : 1;
}

/** True when register `a` wins over `b` under `strategy` (a total order per strategy). */
export function registerBeats(a: Register, b: Register, strategy: FieldStrategy): boolean {
  if (strategy === "sticky") {
    const ra = a.v === true ? 1 : 0, rb = b.v === true ? 1 : 0;
    if (ra !== rb) return ra > rb;
  } else if (strategy === "max") {
    const na = typeof a.v === "number" ? a.v : -Infinity;
    const nb = typeof b.v === "number" ? b.v : -Infinity;
    if (na !== nb) return na > nb;
  }
  return stampOrder(a, b) > 0;
}

/** A new, empty entity state. */
export function emptyEntity(): EntityState {
  return { vv: {}, f: {}, c: {} };
}

/** A deep copy of an entity state. */
export function cloneEntity(state: EntityState): EntityState {
  return structuredClone(state);
}

/** The value of a PN counter. */
export function counterValue(counter: PnCounter): number {
  let sum = 0;
  for (const k in counter.p) sum += counter.p[k];
  for (const k in counter.n) sum -= counter.n[k];
  return sum;
}

/** The newest register stamp of an entity as `{wall, logical}`, or null without registers. */
export function newestStamp(state: EntityState): { wall: number; logical: number } | null {
  let best: Register | null = null;
  for (const k in state.f) {
    const r = state.f[k];
    if (!best || r.w > best.w || (r.w === best.w && r.l > best.l)) best = r;
  }
  return best ? { wall: best.w, logical: best.l } : null;
}

/** The visible values of an entity: registers' values and counters' sums. */
export function entityValues(state: EntityState): Record<string, Json> {
  const out: Record<string, Json> = {};
  for (const k in state.f) out[k] = state.f[k].v;
  for (const k in state.c) out[k] = counterValue(state.c[k]);
  return out;
}

/** True when `x` (a writer's view) does not cover register `r`: the writer had not seen it. */
function unseen(x: VersionVector, r: Register): boolean {
  return (own(x, r.o) ?? 0) < r.d;
}

function mergeRegister(
  state: EntityState,
  field: string,
  incoming: Register,
  view: VersionVector | null,
  strategy: FieldStrategy,
  result: MergeResult,
): void {
  const local = own(state.f, field);
  if (!local) {
    state.f[field] = incoming;
    result.changed.push(field);
    return;
  }
  if (
    local.o === incoming.o && local.d === incoming.d && local.w === incoming.w &&
    local.l === incoming.l
  ) return;
  // Concurrent: neither write had seen the other. `view` is null when the incoming write
  // is already covered by this replica's vector (a duplicate or a repair), so nothing new.
  const concurrent = view !== null && local.o !== incoming.o && unseen(view, local);
  const wins = registerBeats(incoming, local, strategy);
  const winner = wins ? incoming : local;
  if (concurrent) {
    result.concurrent++;
    if (strategy === "manual" && !sameValue(local.v, incoming.v)) {
      result.conflicts.push({ field, strategy, local, remote: incoming, winner });
    }
  }
  if (wins) {
    state.f[field] = incoming;
    if (!sameValue(local.v, incoming.v)) result.changed.push(field);
  }
}

function mergeCounterTotals(
  state: EntityState,
  field: string,
  origin: string,
  p: number,
  n: number,
  result: MergeResult,
): void {
  let counter = own(state.c, field);
  if (!counter) counter = state.c[field] = { p: {}, n: {} };
  let grew = false;
  if ((own(counter.p, origin) ?? 0) < p) {
    counter.p[origin] = p;
    grew = true;
  }
  if ((own(counter.n, origin) ?? 0) < n) {
    counter.n[origin] = n;
    grew = true;
  }
  if (grew && !result.changed.includes(field)) result.changed.push(field);
}

/**
 * Applies one origin's delta to `state` in place (the hot path: no copy). Idempotent and
 * order-independent: the same set of deltas gives the same state in any order.
 */
export function applyEntityDelta(
  state: EntityState,
  delta: EntityDelta,
  strategy?: EntityStrategy,
): MergeResult {
  const result: MergeResult = { changed: [], conflicts: [], concurrent: 0 };
  const view = (own(state.vv, delta.o) ?? 0) >= delta.d ? null : delta.x;
  if (delta.f) {
    for (const field in delta.f) {
      const [v, w, l] = delta.f[field];
      mergeRegister(
        state,
        field,
        { v, w, l, o: delta.o, d: delta.d },
        view,
        fieldStrategy(strategy, field),
        result,
      );
    }
  }
  if (delta.c) {
    for (const field in delta.c) {
      const [p, n] = delta.c[field];
      mergeCounterTotals(state, field, delta.o, p, n, result);
    }
  }
  if ((own(state.vv, delta.o) ?? 0) < delta.d) state.vv[delta.o] = delta.d;
  return result;
}

/**
 * Merges replica state `remote` into a copy of `local` (state-based: snapshots, resync).
 * Commutative, associative and idempotent in the resulting state.
 */
export function mergeEntityStates(
  local: EntityState,
  remote: EntityState,
  strategy?: EntityStrategy,
): { state: EntityState } & MergeResult {
  const state = cloneEntity(local);
  const result: MergeResult = { changed: [], conflicts: [], concurrent: 0 };
  for (const field in remote.f) {
    const incoming = remote.f[field];
    // The remote write is new to `local` only if local's vector does not cover it.
    const view = unseen(local.vv, incoming) ? remote.vv : null;
    mergeRegister(state, field, { ...incoming }, view, fieldStrategy(strategy, field), result);
  }
  for (const field in remote.c) {
    const counter = remote.c[field];
    if (!own(state.c, field)) state.c[field] = { p: {}, n: {} };
    const origins = new Set([...Object.keys(counter.p), ...Object.keys(counter.n)]);
    for (const o of origins) {
      mergeCounterTotals(state, field, o, own(counter.p, o) ?? 0, own(counter.n, o) ?? 0, result);
    }
  }
  state.vv = mergeVersions(state.vv, remote.vv);
  return { state, ...result };
}
