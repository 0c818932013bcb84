/**
 * The event store: an append-only, per-aggregate versioned event log with optimistic
 * concurrency, snapshots, state loading through a reducer, and a per-user audit view.
 *
 * Guarantees:
 * - An append writes all of its events or none, numbered `expectedVersion + 1 ...`.
 * - An append whose `expectedVersion` is not the aggregate's current version fails with
 *   EVENT_VERSION_CONFLICT and writes nothing. The check is made in the transaction and
 *   the unique index (aggregate_type, aggregate_id, version) is the final guard, so of two
 *   concurrent appends at the same version exactly one commits.
 * - `load` from the latest snapshot plus later events equals a replay of every event,
 *   provided the reducer is deterministic and its state is plain JSON (snapshots are
 *   stored as JSONB).
 * @module
 */
import type postgres from "postgres";
import { z } from "zod";
import { RuntimeError } from "../lib/errors.ts";
import { pgCode } from "../lib/db_errors.ts";
import { isForeignKeyViolation, isUniqueViolation, rethrowDatabaseError } from "./pg_errors.ts";
import type { Sql } from "./types.ts";
import { parseInput } from "./validate.ts";

/** Names an aggregate: its type (`"Stream"`) and id (numeric ids are stored as text). */
export interface AggregateRef {
  /** Aggregate type, 1–100 characters. */
  type: string;
  /** Aggregate id, 1–200 characters, or a non-negative integer. */
  id: string | number;
}

/** An event to append. */
export interface NewEvent<D = unknown> {
  /** Event type such as `"StreamStarted"`, 1–100 characters. */
  type: string;
  /** Event payload; any JSON value. */
  data: D;
  /** The user who caused the event, for the audit trail. */
  userId?: number | null;
  /** Extra context (request id, host, ...); a JSON object. */
  metadata?: Record<string, unknown>;
}

/** An event as stored. */
export interface StoredEvent<D = unknown> {
  /** Global, increasing id of the row. */
  id: number;
  /** Aggregate type. */
  aggregateType: string;
  /** Aggregate id (always text). */
  aggregateId: string;
  /** Position in the aggregate's history, from 1. */
  version: number;
  /** Event type. */
  type: string;
  /** Event payload as read back from JSONB. */
  data: D;
  /** Extra context. */
  metadata: Record<string, unknown>;
  /** The user who caused it; null if none or the account was deleted. */
  userId: number | null;
  /** When it was stored. */
  createdAt: Date;
}

/** A saved state of an aggregate at a version. */
export interface Snapshot<S = unknown> {
  /** Aggregate type. */
  aggregateType: string;
  /** Aggregate id (always text). */
  aggregateId: string;
  /** The version whose state this is. */
  version: number;
  /** The state, as read back from JSONB. */
  state: S;
  /** When it was saved. */
  createdAt: Date;
}

/** Folds events into state; `apply` must be pure and the state plain JSON. */
export interface Reducer<S, D = unknown> {
  /** State before the first event (cloned before use, never mutated). */
  initial: S;
  /** The state after `event`. */
  apply(state: S, event: StoredEvent<D>): S;
}

/** Options of {@linkcode EventStore.append}. */
export interface AppendOptions<S = unknown> {
  /** The version the caller last saw (0 for a new aggregate). */
  expectedVersion: number;
  /** When given, a snapshot is saved whenever the new version crosses a multiple of `snapshotEvery`. */
  // deno-lint-ignore no-explicit-any
  reducer?: Reducer<S, any>;
}

/** Result of {@linkcode EventStore.load}. */
export interface LoadResult<S> {
  /** State after the last event. */
  state: S;
  /** Version of the last event (0 for an aggregate without events). */
  version: number;
  /** Version of the snapshot the load started from, or null if it replayed from the start. */
  snapshotVersion: number | null;
}

/** The event store returned by {@linkcode createEventStore}. */
export interface EventStore {
  /** Appends events at `expectedVersion + 1 ...`; EVENT_VERSION_CONFLICT if the aggregate moved on. */
  append<D = unknown, S = unknown>(
    aggregate: AggregateRef,
    events: readonly NewEvent<D>[],
    options: AppendOptions<S>,
  ): Promise<StoredEvent<D>[]>;
  /** Events of an aggregate in version order, after `afterVersion` (default 0), at most `limit`. */
  readEvents<D = unknown>(
    aggregate: AggregateRef,
    options?: { afterVersion?: number; limit?: number },
  ): Promise<StoredEvent<D>[]>;
  /** The aggregate's latest version, 0 if it has no events. */
  currentVersion(aggregate: AggregateRef): Promise<number>;
  /** Saves (or replaces) the state at an existing version. */
  saveSnapshot<S>(
    aggregate: AggregateRef,
    snapshot: { version: number; state: S },
  ): Promise<Snapshot<S>>;
  /** The snapshot with the highest version, or null. */
  latestSnapshot<S = unknown>(aggregate: AggregateRef): Promise<Snapshot<S> | null>;
  /** Current state: the latest snapshot (or `reducer.initial`) plus every later event. */
  // deno-lint-ignore no-explicit-any
  load<S>(aggregate: AggregateRef, reducer: Reducer<S, any>): Promise<LoadResult<S>>;
  /** Events caused by a user across all aggregates, newest first (`limit` 1–1000, default 100). */
  readEventsByUser<D = unknown>(
    userId: number,
    options?: { limit?: number },
  ): Promise<StoredEvent<D>[]>;
}

/** Options of {@linkcode createEventStore}. */
export interface EventStoreOptions {
  /** Auto-snapshot interval in events, for appends given a reducer; 100 by default. */
  snapshotEvery?: number;
}

// deno-lint-ignore ban-types
type Queryable = postgres.ISql<{}>;

interface Ref {
  type: string;
  id: string;
}

interface EventRow {
  id: string;
  aggregate_type: string;
  aggregate_id: string;
  version: number;
  event_type: string;
  event_data: unknown;
  metadata: Record<string, unknown>;
  user_id: string | null;
  created_at: Date;
}

interface SnapshotRow {
  aggregate_type: string;
  aggregate_id: string;
  version: number;
  state: unknown;
  created_at: Date;
}

const MAX_EVENTS_PER_APPEND = 1000;
const LOAD_PAGE = 1000;
const MAX_VERSION = 2_147_483_647;

const noNul = (s: string) => !s.includes("\u0000");

const aggregateSchema = z.object({
  type: z.string({ error: "must be a string" }).min(1, "must not be empty")
    .max(100, "must be at most 100 characters").refine(noNul, "must not contain NUL characters"),
  id: z.union([
    z.string().min(1, "must not be empty").max(200, "must be at most 200 characters")
      .refine(noNul, "must not contain NUL characters"),
    z.number().int("must be an integer").min(0, "must not be negative")
      .max(Number.MAX_SAFE_INTEGER, "is too large"),
  ], { error: "must be a string or an integer" }),
});
const userIdSchema = z.number({ error: "must be a number" }).int("must be an integer")
  .positive("must be positive").max(Number.MAX_SAFE_INTEGER, "is too large");
const eventSchema = z.object({
  type: z.string({ error: "must be a string" }).min(1, "must not be empty")
    .max(100, "must be at most 100 characters").refine(noNul, "must not contain NUL characters"),
  data: z.unknown().refine((d) => d !== undefined, "is required"),
  userId: userIdSchema.nullable().optional(),
  metadata: z.record(z.string(), z.unknown(), { error: "must be an object" }).optional(),
});
const eventsSchema = z.array(eventSchema, { error: "must be an array" })
  .min(1, "must contain at least one event")
  .max(MAX_EVENTS_PER_APPEND, `must contain at most ${MAX_EVENTS_PER_APPEND} events`);
const versionSchema = z.number({ error: "must be a number" }).int("must be an integer")
  .min(0, "must not be negative").max(MAX_VERSION, "is too large");
const readSchema = z.object({
  afterVersion: versionSchema.optional(),
  limit: z.number({ error: "must be a number" }).int("must be an integer")
    .min(1, "must be at least 1").optional(),
});
const userReadSchema = z.object({
  limit: z.number({ error: "must be a number" }).int("must be an integer")
    .min(1, "must be at least 1").max(1000, "must be at most 1000").optional(),
});

function parseRef(aggregate: AggregateRef, action: string): Ref {
  const ref = parseInput(aggregateSchema, aggregate, {
    action: action,
    name: "aggregate",
    prefixPath: true,
  });
  return { type: ref.type, id: String(ref.id) };
}

function parseReducer<S>(reducer: unknown, action: string): Reducer<S> {
  const r = reducer as Reducer<S> | null;
  if (!r || typeof r !== "object" || typeof r.apply !== "function" || !("initial" in r)) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Cannot ${action}: reducer must be an object with initial and apply(state, event)`,
      { details: { field: "reducer" } },
    );
  }
  return r;
}

// Values that JSON cannot carry (BigInt, cycles) are refused before they reach the driver.
function checkJson(value: unknown, action: string, field: string): void {
  try {
    JSON.stringify(value);
  } catch (err) {
    throw new RuntimeError("VALIDATION_FAILED", `Cannot ${action}: ${field} is not JSON`, {
      cause: err,
      details: { field },
    });
  }
}

function toEvent<D>(row: EventRow): StoredEvent<D> {
  return {
    id: Number(row.id),
    aggregateType: row.aggregate_type,
    aggregateId: row.aggregate_id,
    version: row.version,
    type: row.event_type,
    data: row.event_data as D,
    metadata: row.metadata,
    userId: row.user_id === null ? null : Number(row.user_id),
    createdAt: row.created_at,
  };
}

function toSnapshot<S>(row: SnapshotRow): Snapshot<S> {
  return {
    aggregateType: row.aggregate_type,
    aggregateId: row.aggregate_id,
    version: row.version,
    state: row.state as S,
    createdAt: row.created_at,
  };
}

function conflict(ref: Ref, expected: number, actual: number | null, cause?: unknown) {
  const now = actual === null ? "another writer appended first" : `it is at version ${actual}`;
  return new RuntimeError(
    "EVENT_VERSION_CONFLICT",
    `Cannot append events to ${ref.type} ${ref.id}: expected version ${expected} but ${now}`,
    { cause, details: { aggregateType: ref.type, aggregateId: ref.id, expectedVersion: expected } },
  );
}

// Maps driver errors on event writes to catalogue errors; returns nothing for others.
function mapEventWriteError(err: unknown, action: string): RuntimeError | undefined {
  if (isForeignKeyViolation(err)) {
    return new RuntimeError("USER_NOT_FOUND", `Cannot ${action}: an event's userId names no user`, {
      cause: err,
      details: { field: "userId" },
    });
  }
  // 22P05: JSONB refuses \u0000 in strings; 22021: text refuses NUL bytes.
  const code = pgCode(err);
  if (code === "22P05" || code === "22021") {
    return new RuntimeError(
      "VALIDATION_FAILED",
      `Cannot ${action}: the data contains characters the database cannot store (NUL)`,
      { cause: err },
    );
  }
  return undefined;
}

function asJson(value: unknown): postgres.JSONValue {
  return value as postgres.JSONValue;
}

async function currentVersionOn(sql: Queryable, ref: Ref): Promise<number> {
  const rows = await sql<{ version: number }[]>`
    SELECT COALESCE(max(version), 0)::integer AS version FROM event_log
    WHERE aggregate_type = ${ref.type} AND aggregate_id = ${ref.id}`;
  return rows[0].version;
}

async function readEventsOn<D>(
  sql: Queryable,
  ref: Ref,
  afterVersion: number,
  limit: number | null,
): Promise<StoredEvent<D>[]> {
  const rows = await sql<EventRow[]>`
    SELECT * FROM event_log
    WHERE aggregate_type = ${ref.type} AND aggregate_id = ${ref.id} AND version > ${afterVersion}
    ORDER BY version
    LIMIT ${limit}`;
  return rows.map((row) => toEvent<D>(row));
}

async function latestSnapshotOn<S>(sql: Queryable, ref: Ref): Promise<Snapshot<S> | null> {
  const rows = await sql<SnapshotRow[]>`
    SELECT aggregate_type, aggregate_id, version, state, created_at FROM snapshots
    WHERE aggregate_type = ${ref.type} AND aggregate_id = ${ref.id}
    ORDER BY version DESC
    LIMIT 1`;
  return rows.length ? toSnapshot<S>(rows[0]) : null;
}

async function loadOn<S>(sql: Queryable, ref: Ref, reducer: Reducer<S>): Promise<LoadResult<S>> {
  const snapshot = await latestSnapshotOn<S>(sql, ref);
  // Cloned so a reducer that mutates its state cannot corrupt `initial` for later loads.
  let state = snapshot ? snapshot.state : structuredClone(reducer.initial);
  let version = snapshot ? snapshot.version : 0;
  // Paged so a long history is never held in memory at once.
  for (;;) {
    const page = await readEventsOn(sql, ref, version, LOAD_PAGE);
    for (const event of page) {
      state = reducer.apply(state, event);
      version = event.version;
    }
    if (page.length < LOAD_PAGE) break;
  }
  return { state, version, snapshotVersion: snapshot ? snapshot.version : null };
}

/** Creates an event store on `sql`; `snapshotEvery` (default 100) drives auto-snapshots. */
export function createEventStore(sql: Sql, options: EventStoreOptions = {}): EventStore {
  const snapshotEvery = options.snapshotEvery ?? 100;
  if (!Number.isInteger(snapshotEvery) || snapshotEvery < 1) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Cannot create event store: snapshotEvery must be a positive integer, got ${snapshotEvery}`,
      { details: { field: "snapshotEvery" } },
    );
  }

  async function append<D = unknown, S = unknown>(
    aggregate: AggregateRef,
    events: readonly NewEvent<D>[],
    appendOptions: AppendOptions<S>,
  ): Promise<StoredEvent<D>[]> {
    const action = "append events";
    const ref = parseRef(aggregate, action);
    const list = parseInput(eventsSchema, events, {
      action: action,
      name: "events",
      prefixPath: true,
    });
    const expectedVersion = parseInput(versionSchema, appendOptions?.expectedVersion, {
      action: action,
      name: "expectedVersion",
      prefixPath: true,
    });
    const reducer = appendOptions.reducer === undefined
      ? undefined
      : parseReducer<S>(appendOptions.reducer, action);
    const newVersion = expectedVersion + list.length;
    if (newVersion > MAX_VERSION) {
      throw new RuntimeError("VALIDATION_FAILED", `Cannot ${action}: version would overflow`, {
        details: { field: "events" },
      });
    }
    const rows = list.map((event, i) => {
      checkJson(event.data, action, `events.${i}.data`);
      checkJson(event.metadata ?? {}, action, `events.${i}.metadata`);
      return {
        version: expectedVersion + i + 1,
        event_type: event.type,
        event_data: event.data,
        metadata: event.metadata ?? {},
        user_id: event.userId ?? null,
      };
    });
    try {
      return await sql.begin(async (tx) => {
        const current = await currentVersionOn(tx, ref);
        if (current !== expectedVersion) throw conflict(ref, expectedVersion, current);
        // One statement for the whole batch: the events travel as one JSONB parameter and
        // are unpacked by the server, so nothing is spliced into the SQL text. `->` keeps
        // a JSON null payload as JSON null (jsonb_to_recordset would turn it into SQL NULL).
        const inserted = await tx<EventRow[]>`
          INSERT INTO event_log
            (aggregate_type, aggregate_id, version, event_type, event_data, metadata, user_id)
          SELECT ${ref.type}, ${ref.id}, (e ->> 'version')::integer, e ->> 'event_type',
                 e -> 'event_data', e -> 'metadata', (e ->> 'user_id')::bigint
          FROM jsonb_array_elements(${tx.json(asJson(rows))}::jsonb) AS e
          RETURNING *`;
        const stored = inserted.map((row) => toEvent<D>(row)).sort((a, b) => a.version - b.version);
        if (
          reducer &&
          Math.floor(newVersion / snapshotEvery) > Math.floor(expectedVersion / snapshotEvery)
        ) {
          // Inside the transaction: the snapshot and the events it summarises commit
          // together, and a throwing reducer fails the append loudly instead of leaving
          // events whose state nobody can compute.
          const { state, version } = await loadOn(tx, ref, reducer);
          checkJson(state, action, "reducer state");
          await tx`
            INSERT INTO snapshots (aggregate_type, aggregate_id, version, state)
            VALUES (${ref.type}, ${ref.id}, ${version}, ${tx.json(asJson(state))})
            ON CONFLICT (aggregate_type, aggregate_id, version) DO NOTHING`;
        }
        return stored;
      });
    } catch (err) {
      if (isUniqueViolation(err, "event_log_aggregate_version_key")) {
        throw conflict(ref, expectedVersion, null, err);
      }
      const mapped = mapEventWriteError(err, action);
      if (mapped) throw mapped;
      rethrowDatabaseError(err, action);
    }
  }

  async function readEvents<D = unknown>(
    aggregate: AggregateRef,
    readOptions: { afterVersion?: number; limit?: number } = {},
  ): Promise<StoredEvent<D>[]> {
    const action = "read events";
    const ref = parseRef(aggregate, action);
    const { afterVersion = 0, limit } = parseInput(readSchema, readOptions, {
      action: action,
      name: "options",
      prefixPath: true,
    });
    try {
      return await readEventsOn<D>(sql, ref, afterVersion, limit ?? null);
    } catch (err) {
      rethrowDatabaseError(err, action);
    }
  }

  async function currentVersion(aggregate: AggregateRef): Promise<number> {
    const action = "read current version";
    const ref = parseRef(aggregate, action);
    try {
      return await currentVersionOn(sql, ref);
    } catch (err) {
      rethrowDatabaseError(err, action);
    }
  }

  async function saveSnapshot<S>(
    aggregate: AggregateRef,
    snapshot: { version: number; state: S },
  ): Promise<Snapshot<S>> {
    const action = "save snapshot";
    const ref = parseRef(aggregate, action);
    const version = parseInput(versionSchema.min(1, "must be at least 1"), snapshot?.version, {
      action: action,
      name: "version",
      prefixPath: true,
    });
    checkJson(snapshot.state, action, "state");
    if (snapshot.state === undefined) {
      throw new RuntimeError("VALIDATION_FAILED", `Cannot ${action}: state is required`, {
        details: { field: "state" },
      });
    }
    try {
      return await sql.begin(async (tx) => {
        // A snapshot ahead of the log would make load skip events that do not exist yet
        // and later ones that do; refuse it.
        const current = await currentVersionOn(tx, ref);
        if (version > current) {
          throw new RuntimeError(
            "VALIDATION_FAILED",
            `Cannot ${action}: ${ref.type} ${ref.id} is at version ${current}, not ${version}`,
            { details: { field: "version", currentVersion: current } },
          );
        }
        const rows = await tx<SnapshotRow[]>`
          INSERT INTO snapshots (aggregate_type, aggregate_id, version, state)
          VALUES (${ref.type}, ${ref.id}, ${version}, ${tx.json(asJson(snapshot.state))})
          ON CONFLICT (aggregate_type, aggregate_id, version)
            DO UPDATE SET state = EXCLUDED.state, created_at = now()
          RETURNING aggregate_type, aggregate_id, version, state, created_at`;
        return toSnapshot<S>(rows[0]);
      });
    } catch (err) {
      const mapped = mapEventWriteError(err, action);
      if (mapped) throw mapped;
      rethrowDatabaseError(err, action);
    }
  }

  async function latestSnapshot<S = unknown>(aggregate: AggregateRef): Promise<Snapshot<S> | null> {
    const action = "read latest snapshot";
    const ref = parseRef(aggregate, action);
    try {
      return await latestSnapshotOn<S>(sql, ref);
    } catch (err) {
      rethrowDatabaseError(err, action);
    }
  }

  async function load<S>(aggregate: AggregateRef, reducer: Reducer<S>): Promise<LoadResult<S>> {
    const action = "load aggregate";
    const ref = parseRef(aggregate, action);
    const r = parseReducer<S>(reducer, action);
    try {
      return await loadOn(sql, ref, r);
    } catch (err) {
      rethrowDatabaseError(err, action);
    }
  }

  async function readEventsByUser<D = unknown>(
    userId: number,
    readOptions: { limit?: number } = {},
  ): Promise<StoredEvent<D>[]> {
    const action = "read events by user";
    const id = parseInput(userIdSchema, userId, {
      action: action,
      name: "userId",
      prefixPath: true,
    });
    const { limit = 100 } = parseInput(userReadSchema, readOptions, {
      action: action,
      name: "options",
      prefixPath: true,
    });
    try {
      const rows = await sql<EventRow[]>`
        SELECT * FROM event_log WHERE user_id = ${id}
        ORDER BY created_at DESC, id DESC
        LIMIT ${limit}`;
      return rows.map((row) => toEvent<D>(row));
    } catch (err) {
      rethrowDatabaseError(err, action);
    }
  }

  return {
    append,
    readEvents,
    currentVersion,
    saveSnapshot,
    latestSnapshot,
    load,
    readEventsByUser,
  };
}
