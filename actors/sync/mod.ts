/**
 * The sync concern: the sync node (actors/sync/node.ts) driven by its statechart
 * (machines/sync_node.ts), the `streams` cache invalidated on every instance, and the
 * `/state` routes (api/state.ts).
 *
 * Other concerns reach the node with {@linkcode getSyncNode} (from their own factory,
 * which runs after this one) to publish events, follow entities and create caches:
 *
 * ```ts
 * const sync = getSyncNode(services);
 * const sessions = sync?.node.cache("sessions", { load: (id) => findSession(sql, id) });
 * // after revoking: sessions?.invalidate(id) — or publish("session.revoked", {...}),
 * // which also invalidates `sessions` on every instance.
 * ```
 * @module
 */
import { z } from "zod";
import { RuntimeError } from "../../lib/errors.ts";
import { addStateRoutes } from "../../api/state.ts";
import type { SyncNodeContext } from "../../machines/sync_node.ts";
import type { MessageBus } from "../../store/bus.ts";
import { getStreamById, onStreamChange, type Stream } from "../../store/streams.ts";
import type { ActorSpec, Concern, ConcernFactory, RuntimeServices } from "../runtime/types.ts";
import type { InvalidatingCache } from "./cache.ts";
import { createSyncNode, type SyncNode, type SyncNodeOptions } from "./node.ts";
import { type FetchRequest, fetchRequestSchema, SYNC_ACTOR } from "./wire.ts";

/** Settings of the sync concern. */
export interface SyncSettings {
  /** Bearer token that enables `PATCH /state/...`; null disables HTTP writes. */
  writeToken: string | null;
  /** Period of sequence announcements (ms). */
  headsMs: number;
  /** Period of snapshot rounds (ms). */
  snapshotMs: number;
  /** Pause before retrying an incomplete repair (ms). */
  repairRetryMs: number;
  /** How long a batch of a gone origin may stay missing before it is given up (ms). */
  giveUpMs: number;
  /** Events buffered per event-stream client. */
  sseBuffer: number;
}

/** The sync service of one runtime: the node and the stream cache. */
export interface SyncService {
  /** The node (publish, subscribe, getSnapshot, applyDelta, caches). */
  node: SyncNode;
  /** Streams by id (as a string), read through and invalidated on every instance. */
  streams: InvalidatingCache<Stream | null>;
}

/** The environment variables of the sync concern, with their defaults. */
export const SYNC_SETTINGS = [
  {
    env: "RS_STATE_WRITE_TOKEN",
    default: "(unset: PATCH /state is disabled)",
    description: "Bearer token (16+ characters) that allows PATCH /state/:type/:id",
  },
  { env: "RS_SYNC_HEADS_MS", default: "1000", description: "Sync sequence announcement period" },
  { env: "RS_SYNC_SNAPSHOT_MS", default: "10000", description: "Sync snapshot round period" },
  { env: "RS_SYNC_REPAIR_RETRY_MS", default: "250", description: "Pause between repair attempts" },
  {
    env: "RS_SYNC_GIVE_UP_MS",
    default: "30000",
    description: "How long batches of a gone origin may stay missing before they are given up",
  },
] as const;

function ms(min: number, max: number, fallback: number) {
  return z.string().regex(/^\d+$/, { message: "an integer (milliseconds)" }).transform(Number)
    .refine((n) => n >= min && n <= max, { message: `between ${min} and ${max}` })
    .optional().transform((n) => n ?? fallback);
}

const envSchema = z.object({
  RS_STATE_WRITE_TOKEN: z.string().min(16, { message: "at least 16 characters" }).max(256)
    .optional(),
  RS_SYNC_HEADS_MS: ms(50, 60_000, 1000),
  RS_SYNC_SNAPSHOT_MS: ms(100, 3_600_000, 10_000),
  RS_SYNC_REPAIR_RETRY_MS: ms(10, 60_000, 250),
  RS_SYNC_GIVE_UP_MS: ms(500, 3_600_000, 30_000),
});

/** Reads and validates the sync settings from environment variables. */
export function readSyncSettings(env: Record<string, string | undefined>): SyncSettings {
  const raw = Object.fromEntries(
    SYNC_SETTINGS.map((s) => [s.env, env[s.env] === "" ? undefined : env[s.env]]),
  );
  const parsed = envSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new RuntimeError(
      "CONFIG_INVALID",
      `${String(issue.path[0])} must be ${issue.message.replace(/^Invalid input: /, "")}`,
    );
  }
  const d = parsed.data;
  return {
    writeToken: d.RS_STATE_WRITE_TOKEN ?? null,
    headsMs: d.RS_SYNC_HEADS_MS,
    snapshotMs: d.RS_SYNC_SNAPSHOT_MS,
    repairRetryMs: d.RS_SYNC_REPAIR_RETRY_MS,
    giveUpMs: d.RS_SYNC_GIVE_UP_MS,
    sseBuffer: 256,
  };
}

const services = new WeakMap<MessageBus, SyncService>();

/** The sync service of the runtime these services belong to (undefined before it started). */
export function getSyncNode(runtime: { bus: MessageBus }): SyncService | undefined {
  return services.get(runtime.bus);
}

/** The registry entry of the sync actor: the statechart with the node's effects. */
export function syncActorSpec(node: SyncNode, settings: Partial<SyncSettings> = {}): ActorSpec {
  return {
    id: SYNC_ACTOR,
    chart: "sync_node",
    create: () => node.logic,
    input: () => ({
      instanceId: node.instanceId,
      headsMs: settings.headsMs,
      snapshotMs: settings.snapshotMs,
      repairRetryMs: settings.repairRetryMs,
    }),
    summarize: (snapshot) => {
      const ctx = (snapshot as unknown as { context: SyncNodeContext }).context;
      const s = node.stats();
      return {
        origin: ctx.origin,
        entities: s.entities,
        seq: s.seq,
        missing: s.missing,
        repaired: ctx.repaired,
        lost: ctx.lost,
        snapshotter: ctx.roleToken !== null,
        snapshotRounds: ctx.snapshotRounds,
        reason: ctx.reason,
      };
    },
    requests: {
      "sync.fetch": {
        schema: fetchRequestSchema,
        handle: (event) => Promise.resolve(node.serveFetch(event as FetchRequest)),
      },
    },
  };
}

/**
 * A concern factory with explicit settings (tests, embedders); `node` overrides options of
 * the node. {@linkcode createSyncConcern} reads the settings from the environment.
 */
export function createSyncConcernWith(
  settings: Partial<SyncSettings>,
  node: Partial<SyncNodeOptions> = {},
): ConcernFactory {
  return (runtime: RuntimeServices): Concern => {
    const sync = createSyncNode({
      instanceId: runtime.instanceId,
      sql: runtime.db.sql,
      bus: runtime.bus,
      transport: runtime.transport,
      leases: runtime.leases,
      leaseTtlMs: runtime.config.cluster.leaseTtlMs,
      log: runtime.log,
      now: runtime.now,
      giveUpMs: settings.giveUpMs,
      originLiveMs: Math.max(3 * (settings.headsMs ?? 1000), 2000),
      ...node,
    });
    const streams = sync.cache<Stream | null>("streams", {
      load: (id) => getStreamById(runtime.db.sql, Number(id)),
    });
    const offStreams = onStreamChange(runtime.db.sql, (c) => streams.invalidate(String(c.id)));
    services.set(runtime.bus, { node: sync, streams });

    // Event streams must end for the HTTP server to stop: they follow the runtime's
    // shutdown signal, and this concern's own stop.
    const shutdown = new AbortController();

    return {
      actors: [syncActorSpec(sync, settings)],
      routes(app, context) {
        addStateRoutes(app, {
          node: sync,
          sql: runtime.db.sql,
          writeToken: settings.writeToken ?? null,
          sseBuffer: settings.sseBuffer,
          signal: context ? AbortSignal.any([shutdown.signal, context.signal]) : shutdown.signal,
          now: runtime.now,
          log: runtime.log.child("http"),
        });
      },
      health() {
        const s = sync.stats();
        return Promise.resolve({
          // Catching up after a start is normal, not degraded; a lost Redis link or a
          // database that does not take the batches is.
          ok: s.linkUp && s.persistBacklog < 10_000,
          origin: s.origin,
          caughtUp: s.caughtUp,
          linkUp: s.linkUp,
          entities: s.entities,
          missing: s.missing,
          persistBacklog: s.persistBacklog,
          snapshotter: s.snapshotter,
        });
      },
      async stop() {
        shutdown.abort();
        offStreams();
        await sync.close();
        services.delete(runtime.bus);
      },
    };
  };
}

/** The sync concern with settings from the environment (actors/concerns.ts). */
export function createSyncConcern(runtime: RuntimeServices): Concern {
  const settings = readSyncSettings(Deno.env.toObject());
  return createSyncConcernWith(settings)(runtime) as Concern;
}
