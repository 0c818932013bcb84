/**
 * Contracts between the runtime core (supervisor, transport, membership, leases) and the
 * concern actors plugged into it.
 * @module
 */
import type { AnyActorLogic, AnyActorRef, Snapshot } from "xstate";
import type { z } from "zod";
import type { CoreConfig } from "../../lib/config.ts";
import type { Logger } from "../../lib/log.ts";
import type { MessageAuth } from "../../lib/message_auth.ts";
import type { MessageBus } from "../../store/bus.ts";
import type { Database } from "../../store/database.ts";
import type { Keyspace, RedisClient } from "../../store/redis.ts";
import type { LeaseManager } from "./leases.ts";

/** Where an actor lives: an instance id and the actor's id on it. */
export interface ActorAddress {
  /** Instance id (RS_INSTANCE_ID). */
  instance: string;
  /** Actor id in that instance's registry, e.g. `sessions`. */
  actor: string;
}

/** An event sent between instances: a `type` plus JSON fields. */
export interface RemoteEvent {
  /** Event type, e.g. `session.revoked`. */
  type: string;
  [field: string]: unknown;
}

/** Metadata of a delivered remote event. */
export interface DeliveryMeta {
  /** Message id (unique per message; repeated on redelivery). */
  id: string;
  /** Sender address. */
  from: ActorAddress;
  /** `send` (addressed), `broadcast` or `request`. */
  kind: "send" | "broadcast" | "request";
  /** Sender's wall-clock ms at send time. */
  sentAt: number;
  /** Correlation id shared by a request and its reply. */
  correlationId?: string;
}

/** A request handler: answers a request addressed to an actor. */
export interface RequestHandler {
  /** Validates the request event. */
  schema: z.ZodType<RemoteEvent>;
  /** Produces the reply (JSON-serialisable); a thrown RuntimeError becomes an error reply. */
  handle(
    event: RemoteEvent,
    ctx: { ref: AnyActorRef | undefined; meta: DeliveryMeta },
  ): Promise<unknown>;
}

/** Messaging between instances; each path states its delivery guarantee. */
export interface Transport {
  /** This instance's id. */
  readonly instanceId: string;
  /**
   * Sends an event to one actor on one instance. At-least-once: the message waits in the
   * receiver's inbox until it has been delivered and acknowledged, across receiver restarts
   * (with the same instance id); a redelivery carries the same `meta.id`.
   */
  send(to: ActorAddress, event: RemoteEvent, options?: { from?: string }): Promise<string>;
  /** Sends an event to one actor id on every live instance, this one included. At-most-once. */
  broadcast(actor: string, event: RemoteEvent, options?: { from?: string }): Promise<void>;
  /**
   * Sends a request and waits for the reply. At-most-once: the request goes over pub/sub to the
   * receiver (its inbox when nobody listens there), the reply over pub/sub; no reply within
   * `timeoutMs` rejects with REQUEST_TIMEOUT. Not ordered after earlier sends to the same actor.
   */
  request<T = unknown>(
    to: ActorAddress,
    event: RemoteEvent,
    options?: { timeoutMs?: number; from?: string },
  ): Promise<T>;
  /**
   * Counters (sent, delivered, dropped by reason, redelivered, timeouts, ...) and the levels
   * named in TRANSPORT_LEVELS (requests waiting for a reply, messages deferred now).
   */
  stats(): Record<string, number>;
  /** Stops receiving; in-flight requests reject. */
  close(): Promise<void>;
}

/** The keys of Transport.stats() that are current levels, not monotonic counters. */
export const TRANSPORT_LEVELS: readonly string[] = ["pending_requests", "deferred_messages"];

/** Who is alive in the cluster now (membership's view), or null before its first answer. */
export interface LiveMembers {
  live(): ReadonlySet<string> | null;
}

/** What every actor factory can use. */
export interface RuntimeServices {
  /** Validated core config (a concern's own settings reach its factory as an argument). */
  config: CoreConfig;
  /** This instance's id. */
  instanceId: string;
  /** Logger for the actor (already named). */
  log: Logger;
  /** Database pool. */
  db: Database;
  /** Redis command connection, or null in single-instance mode. */
  redis: RedisClient | null;
  /** Namespaced key builder. */
  keyspace: Keyspace;
  /** Pub/sub bus. */
  bus: MessageBus;
  /** Messaging between instances. */
  transport: Transport;
  /** Leases for cluster-singleton roles, or null without Redis (a single instance holds all). */
  leases: LeaseManager | null;
  /**
   * The live instances as cluster membership last learnt them (null before its first
   * heartbeat answered); absent without Redis.
   */
  members?: LiveMembers;
  /** The 32-byte key that encrypts secrets at rest (RS_SECRET_KEY). */
  secretKey: Uint8Array;
  /** Seals and opens every record kept in Redis (keys derived from the secret key). */
  messageAuth: MessageAuth;
  /** Wall clock, injectable. */
  now: () => number;
  /** This instance's running actors by registry id, as the runtime supervisor knows them. */
  actors: { ref(id: string): AnyActorRef | undefined };
}

/** One fact of /health: `ok: false` makes the instance degraded. */
export interface HealthFact {
  /** Whether this part is healthy. */
  ok: boolean;
  [key: string]: unknown;
}

/**
 * What a concern's effect entry (actors/<concern>/mod.ts) builds from the runtime's services
 * and its settings: its actors, the service its routes and embedders use, its /health facts
 * and its stop. concerns/<concern>.ts adds the routes to make it a concern.
 */
export interface ConcernParts<Api = unknown> {
  /** Registry entries, started in order after the runtime's own actors. */
  actors: ActorSpec[];
  /** The concern's typed service (routes, embedders through mod.ts, other concerns). */
  api: Api;
  /** Facts for /health (`ok: false` makes the instance degraded). */
  health?(): Promise<HealthFact>;
  /** Called on shutdown after the actors stopped. */
  stop?(): Promise<void>;
}

/** One entry of the actor registry: how to build, feed, summarise and reach an actor. */
export interface ActorSpec {
  /** Actor id, unique per instance (also its address on the cluster). */
  id: string;
  /** Name of its machine in machines/mod.ts (for charts); defaults to `id`. */
  chart?: string;
  /** Builds the actor logic with real effects: `machine.provide({...})`. */
  create(services: RuntimeServices): AnyActorLogic;
  /** Input of the actor. */
  input?(services: RuntimeServices): unknown;
  /** A small JSON summary of its context for /actors (no secrets). */
  summarize?(snapshot: Snapshot<unknown>): Record<string, unknown>;
  /** Event types other instances may send to it, with their schemas. */
  accepts?: Record<string, z.ZodType<RemoteEvent>>;
  /** Request types it answers. */
  requests?: Record<string, RequestHandler>;
}
