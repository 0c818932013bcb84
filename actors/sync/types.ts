/**
 * Public types of the sync node: entities as the API shows them, deliveries, counters and
 * the node's options (actors/sync/node.ts re-exports them).
 * @module
 */
import type { EntityStrategy, Json, VersionVector } from "../../lib/crdt.ts";
import type { Logger } from "../../lib/log.ts";
import type { MessageBus } from "../../store/bus.ts";
import type { Sql } from "../../store/types.ts";
import type { LeaseManager } from "../runtime/leases.ts";
import type { LiveMembers, Transport } from "../runtime/types.ts";

/** An entity as the API shows it. */
export interface EntityView {
  /** Entity type, e.g. `stream`. */
  type: string;
  /** Entity id. */
  id: string;
  /** Field values (counters as numbers). */
  state: Record<string, Json>;
  /** Version vector: writes seen per origin. */
  version: VersionVector;
  /** Time of the newest field write (ISO), or null. */
  updatedAt: string | null;
}

/** How a message reached a subscriber. */
export interface DeliveryInfo {
  /** `event` (published) or `change` (an entity's values changed here). */
  kind: "event" | "change";
  /** Origin that caused it. */
  origin: string;
  /** Its instance. */
  instance: string;
  /** True when it was caused on this instance. */
  local: boolean;
  /** True when it arrived through a repair (late). */
  repaired: boolean;
}

/** Receives published events and entity changes for a pattern. */
export type SyncCallback = (channel: string, data: Json, info: DeliveryInfo) => void;

/** Counters of the data plane. */
export interface SyncCounters {
  published: number;
  publishFailures: number;
  received: number;
  rejected: number;
  duplicates: number;
  gaps: number;
  repaired: number;
  resynced: number;
  lost: number;
  concurrent: number;
  conflicts: number;
  callbackErrors: number;
}

/** Counters and facts of a node (`caughtUp`, `linkUp`, `snapshotter` come from its chart). */
export interface SyncStats extends SyncCounters {
  origin: string;
  caughtUp: boolean;
  linkUp: boolean;
  snapshotter: boolean;
  entities: number;
  seq: number;
  persistedSeq: number;
  persistBacklog: number;
  missing: number;
  subscribers: number;
  clockSkewed: number;
  ringBytes: number;
}

/** Options of `createSyncNode`. */
export interface SyncNodeOptions {
  /** This instance's id. */
  instanceId: string;
  /** PostgreSQL. */
  sql: Sql;
  /** Pub/sub between instances. */
  bus: MessageBus;
  /** Request/reply between instances (repairs). */
  transport: Transport;
  /** Leases (the snapshot role); null: this instance always holds it (single instance). */
  leases?: LeaseManager | null;
  /** Lease time of the snapshot role (ms). */
  leaseTtlMs?: number;
  /** Logger. */
  log?: Logger;
  /** Physical clock (ms) for the hybrid logical clock and timers' bookkeeping. */
  now?: () => number;
  /** Merge strategies per entity type (default: the platform's). */
  strategies?: Record<string, EntityStrategy>;
  /** Entries per batch at most (default 200). */
  batchEntries?: number;
  /** Bytes of JSON per batch at most, one entry excepted (default 32,000). */
  batchBytes?: number;
  /** Bytes of recent batches kept to answer peers' repairs (default 32 MB). */
  ringBytes?: number;
  /** How long a batch of a gone origin may stay missing before it is given up (ms). */
  giveUpMs?: number;
  /** Timeout of a `sync.fetch` request (ms). */
  peerTimeoutMs?: number;
  /**
   * The live instances as cluster membership knows them: an origin is live while its
   * instance is (and runs no newer origin).
   */
  members?: LiveMembers | null;
  /**
   * An origin not heard from (batches, announcements) for this long counts as gone even if
   * its instance is live (ms; a few keep-alives).
   */
  originLiveMs?: number;
  /** Origin id to use (tests); default `<instanceId>~<random>`. */
  origin?: string;
}
