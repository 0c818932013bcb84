/**
 * What the platform synchronises: the merge strategy of each entity type and the
 * platform events, each with its payload schema and the entity change it implies.
 *
 * | event | payload | entity change |
 * | --- | --- | --- |
 * | `stream.started` | streamId, userId, bitrate?, resolution? | stream: live, userId, bitrate, resolution, startedAt; viewers reset |
 * | `stream.stopped` | streamId, duration?, viewers? | stream: not live, stoppedAt, duration, lastViewers; viewers reset |
 * | `viewer.joined` | streamId, userId, timestamp? | stream: viewers + 1 (counter), peakViewers (max) |
 * | `viewer.left` | streamId, userId, duration? | stream: viewers − 1 (counter) |
 * | `user.updated` | userId, fields | user: the fields |
 * | `session.created` | sessionId, userId | session: userId, revoked false, createdAt |
 * | `session.revoked` | sessionId, userId | session: revoked true (sticky), revokedAt |
 *
 * Stream events also invalidate the `streams` cache entry and session events the
 * `sessions` one, on every instance.
 * @module
 */
import { z } from "zod";
import type { EntityStrategy, Json } from "../../lib/crdt.ts";
import { FIELD_RE } from "../../lib/crdt_batch.ts";

/** Merge strategies of the platform's entity types (other types: last writer wins). */
export const PLATFORM_STRATEGIES: Record<string, EntityStrategy> = {
  // Viewer counts are changed on every instance at once: a counter adds them up where
  // last-writer-wins would drop all but one. The owner of a stream is not mergeable.
  stream: { fields: { viewers: "counter", peakViewers: "max", userId: "manual" } },
  // Two instances changing a user's email at once cannot both be right: an operator decides.
  user: { fields: { email: "manual", username: "manual" } },
  // A revocation must win over a concurrent refresh that still sees the session as valid.
  session: { fields: { revoked: "sticky", userId: "manual" } },
};

/** A counter operation in a delta: set to a value, or add / subtract. */
export type CounterOp = number | { inc: number } | { dec: number };

/** A delta as callers write it: field → value (counters: a number or `{inc}` / `{dec}`). */
export type DeltaInput = Record<string, Json | CounterOp>;

/** The entity change a platform event implies. */
export interface PlatformChange {
  /** Entity type. */
  type: string;
  /** Entity id. */
  id: string;
  /** The delta to apply. */
  delta: DeltaInput;
  /** Fields to set from the entity's values after the delta (e.g. peak from the count). */
  derive?: (values: Record<string, Json>) => DeltaInput;
  /** Caches to invalidate everywhere: [cache, key]. */
  invalidate: [string, string][];
}

const numericId = z.union([
  z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
  z.string().regex(/^[1-9]\d{0,15}$/),
]).transform(String);
const sessionId = z.string().regex(/^[A-Za-z0-9_.:@-]{1,128}$/);
const resolution = z.string().regex(/^[1-9]\d{0,4}x[1-9]\d{0,4}$/);
const nonNegative = z.number().finite().nonnegative();

/** Payload schemas of the platform events. */
export const PLATFORM_EVENTS = {
  "stream.started": z.object({
    streamId: numericId,
    userId: numericId,
    bitrate: nonNegative.optional(),
    resolution: resolution.optional(),
  }),
  "stream.stopped": z.object({
    streamId: numericId,
    duration: nonNegative.optional(),
    viewers: z.number().int().nonnegative().optional(),
  }),
  "viewer.joined": z.object({
    streamId: numericId,
    userId: numericId,
    timestamp: z.union([z.number(), z.string().max(64)]).optional(),
  }),
  "viewer.left": z.object({
    streamId: numericId,
    userId: numericId,
    duration: nonNegative.optional(),
  }),
  "user.updated": z.object({
    userId: numericId,
    fields: z.record(z.string().regex(FIELD_RE), z.unknown() as z.ZodType<Json>)
      .refine((f) => Object.keys(f).length >= 1 && Object.keys(f).length <= 64, {
        message: "must name 1 to 64 fields",
      }),
  }),
  "session.created": z.object({ sessionId, userId: numericId }),
  "session.revoked": z.object({ sessionId, userId: numericId }),
} as const;

/** Names of the platform events. */
export type PlatformEventName = keyof typeof PLATFORM_EVENTS;

/** True for a platform event name. */
export function isPlatformEvent(channel: string): channel is PlatformEventName {
  return Object.hasOwn(PLATFORM_EVENTS, channel);
}

/** The entity change of a validated platform event; `at` is the node's clock (ms). */
export function platformChange(
  channel: PlatformEventName,
  data: unknown,
  at: number,
): PlatformChange {
  const iso = new Date(at).toISOString();
  switch (channel) {
    case "stream.started": {
      const d = PLATFORM_EVENTS[channel].parse(data);
      const delta: DeltaInput = { live: true, userId: d.userId, startedAt: iso, viewers: 0 };
      if (d.bitrate !== undefined) delta.bitrate = d.bitrate;
      if (d.resolution !== undefined) delta.resolution = d.resolution;
      return { type: "stream", id: d.streamId, delta, invalidate: [["streams", d.streamId]] };
    }
    case "stream.stopped": {
      const d = PLATFORM_EVENTS[channel].parse(data);
      const delta: DeltaInput = { live: false, stoppedAt: iso, viewers: 0 };
      if (d.duration !== undefined) delta.duration = d.duration;
      if (d.viewers !== undefined) delta.lastViewers = d.viewers;
      return { type: "stream", id: d.streamId, delta, invalidate: [["streams", d.streamId]] };
    }
    case "viewer.joined": {
      const d = PLATFORM_EVENTS[channel].parse(data);
      return {
        type: "stream",
        id: d.streamId,
        delta: { viewers: { inc: 1 } },
        derive: (v) => ({ peakViewers: typeof v.viewers === "number" ? v.viewers : 0 }),
        invalidate: [],
      };
    }
    case "viewer.left": {
      const d = PLATFORM_EVENTS[channel].parse(data);
      return { type: "stream", id: d.streamId, delta: { viewers: { dec: 1 } }, invalidate: [] };
    }
    case "user.updated": {
      const d = PLATFORM_EVENTS[channel].parse(data);
      return { type: "user", id: d.userId, delta: d.fields, invalidate: [["users", d.userId]] };
    }
    case "session.created": {
      const d = PLATFORM_EVENTS[channel].parse(data);
      return {
        type: "session",
        id: d.sessionId,
        delta: { userId: d.userId, revoked: false, createdAt: iso },
        invalidate: [["sessions", d.sessionId]],
      };
    }
    case "session.revoked": {
      const d = PLATFORM_EVENTS[channel].parse(data);
      return {
        type: "session",
        id: d.sessionId,
        delta: { revoked: true, revokedAt: iso, userId: d.userId },
        invalidate: [["sessions", d.sessionId]],
      };
    }
  }
}
