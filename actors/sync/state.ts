/**
 * What every part of the sync node's data plane works on: the services and settings
 * (`SyncDeps`), the data itself (`SyncData`: entities, pending and recent batches, queues,
 * sequences, counters) and the slots through which the chart's effects listen
 * (`SyncWatch`). The functions in entities.ts, hot_path.ts, persist.ts, heads.ts,
 * repair.ts and snapshots.ts take `(deps, input)`.
 *
 * No lifecycle lives here: whether the node is open, caught up, linked or holding the
 * snapshot role is its chart's (machines/sync_node.ts). The data plane learns it only
 * through the effects the chart invokes: a watch slot is filled while the state that
 * wants those observations is active, and empty otherwise.
 * @module
 */
import type { AnyActorRef } from "xstate";
import type { EntityState, EntityStrategy } from "../../lib/crdt.ts";
import type { BatchEntry } from "../../lib/crdt_batch.ts";
import type { ChannelPattern } from "../../lib/channel_pattern.ts";
import { createHybridClock, type HybridClock } from "../../lib/hlc.ts";
import { type Logger, silentLogger } from "../../lib/log.ts";
import type { MessageBus } from "../../store/bus.ts";
import type { ConflictInput } from "../../store/sync.ts";
import type { Sql } from "../../store/types.ts";
import type { LeaseCampaign, LeaseManager } from "../runtime/leases.ts";
import type { LiveMembers, Transport } from "../runtime/types.ts";
import type { LocalCache } from "./cache.ts";
import type { Heads } from "./wire.ts";
import { PLATFORM_STRATEGIES } from "./platform.ts";
import { createSequenceTracker, type SequenceTracker } from "./sequences.ts";
import { originLiveMs } from "./settings.ts";
import type { SyncCallback, SyncCounters, SyncNodeOptions } from "./types.ts";

/** An entity held here. */
export interface Entity {
  type: string;
  id: string;
  key: string;
  state: EntityState;
  /** SHA-256 of `key=values` as of the last digest (0 before), its share of the digest. */
  hash: bigint;
}

/** A subscriber of a channel pattern. */
export interface Subscription {
  pattern: ChannelPattern;
  callback: SyncCallback;
}

/** What a peer announced last. */
export interface PeerHeads {
  /** Its current origin. */
  origin: string;
  /** When the announcement arrived (ms). */
  at: number;
  /** Contiguous sequence number it applied, per origin. */
  contig: Record<string, number>;
}

/** A FIFO of recent batch JSON by (origin, seq), bounded in bytes. */
export interface BatchRing {
  /** Keeps a batch (once), dropping the oldest beyond the byte bound. */
  add(origin: string, seq: number, json: string): void;
  /** The batch's JSON, if still held. */
  get(origin: string, seq: number): string | undefined;
  /** Bytes held. */
  bytes(): number;
}

/** Reports link observations to the chart (filled by its `watchLink` effect). */
export interface LinkWatch {
  /** A publish went through. */
  published(): void;
  /** A publish failed. */
  failed(reason: string): void;
  /** The bus resubscribed after its connection was down. */
  resubscribed(): void;
}

/**
 * Where the chart's effects listen. Each slot is filled by the effect a state invokes and
 * emptied when that state is left, so what the data plane reports, and whether it looks
 * for gaps at all, follows the chart.
 */
export interface SyncWatch {
  /** While caught up (`detectGaps`): gaps are looked for, and reported with the count missing. */
  gaps: ((missing: number) => void) | null;
  /** `watchLink`: publish outcomes and resubscriptions. */
  link: LinkWatch | null;
  /** `watchRole`: the snapshot role's token, or null when lost. */
  role: ((token: number | null) => void) | null;
  /** `watchRequests`: a peer asked every node to announce (at, ms). */
  requests: ((at: number) => void) | null;
  /** `watchSequence`: this node sealed a batch its last announcement does not show (at, ms). */
  moved: ((at: number) => void) | null;
}

/** The sync node's data: not lifecycle, so not in the chart. */
export interface SyncData {
  /** Every entity here, by `type:id` key. */
  entities: Map<string, Entity>;
  /** Entities changed since the last digest: only they are hashed again. */
  digestStale: Set<Entity>;
  /** Per entity type, the sum of its entities' hashes modulo 2^256. */
  digestSums: Map<string, bigint>;
  subscriptions: Set<Subscription>;
  /** Subscriptions matching a channel, cached until subscriptions change. */
  matchCache: Map<string, Subscription[]>;
  caches: Map<string, LocalCache<unknown>>;
  /** Applied and missing sequence numbers per origin. */
  tracker: SequenceTracker;
  /** Recent batches (own and others') to answer peers' repairs. */
  ring: BatchRing;
  /** Entity keys of this origin's batches, for resyncs after the ring dropped them. */
  ownKeys: Map<number, string[]>;
  /** Instance of each origin. */
  originInstance: Map<string, string>;
  /** When each origin was last heard of (heads or batches). */
  originHeard: Map<string, number>;
  /** Peers' announcements, by instance. */
  peers: Map<string, PeerHeads>;
  /** This node's last sealed sequence number as of its last announcement. */
  announcedSeq: number;
  /**
   * Each peer's last announcement as received (text, by instance) and its validated parse (by
   * that text): at idle a peer repeats it byte for byte (every keep-alive), and a repeat is not
   * parsed and validated again (heads.ts). One entry per peer.
   */
  headsRaw: Map<string, string>;
  headsParsed: Map<string, Heads>;
  counters: SyncCounters;
  /** When a rejected message was last logged (ms): one line per 5 s at most. */
  rejectedLoggedAt: number;
  /** The outbox: writes of this tick waiting to be sealed into batches. */
  outbox: {
    /** Last sequence number sealed. */
    lastSeq: number;
    entries: BatchEntry[];
    /** Pending entry per entity key: writes in one tick coalesce. */
    byKey: Map<string, BatchEntry>;
    /** The pending entry collecting cache invalidations. */
    invalidations: BatchEntry | null;
    /** A seal is queued as a microtask. */
    sealQueued: boolean;
    /** Publishes not yet answered. */
    inflight: Promise<void>[];
  };
  /** Sealed batches and conflicts on their way to PostgreSQL. */
  store: {
    /** Every batch up to this one is stored. */
    persistedSeq: number;
    queue: { seq: number; json: string }[];
    conflicts: ConflictInput[];
    /** The running store loop, or null. */
    running: Promise<void> | null;
    /** `flush({persisted})` callers waiting for a sequence number. */
    waiters: { seq: number; resolve: () => void }[];
  };
  /** Entities changed since the last snapshot round under `dirtyToken`. */
  dirty: Set<string>;
  /** Token of the last round written here (its first round under a new token is full). */
  dirtyToken: number | null;
  /**
   * The node's resources: pub/sub subscriptions, the lease campaign and the batch pipeline.
   * `closed` once `close()` released them (it runs after the chart stopped: nothing here is
   * started again, and writes are no longer sealed).
   */
  resources: {
    status: "open" | "closed";
    /** The subscriptions being made or made, or null. */
    subscribed: Promise<void> | null;
    unsubscribers: (() => Promise<void>)[];
    offResubscribed: (() => void) | null;
    campaign: LeaseCampaign | null;
  };
}

/** The services, settings and data of one sync node. */
export interface SyncDeps {
  instanceId: string;
  /** This incarnation's origin id. */
  origin: string;
  /** When this incarnation started (ms). */
  startedAt: number;
  sql: Sql;
  bus: MessageBus;
  transport: Transport;
  leases: LeaseManager | null;
  leaseTtlMs: number | undefined;
  log: Logger;
  now: () => number;
  /** Hybrid logical clock stamping this node's writes. */
  clock: HybridClock;
  strategies: Record<string, EntityStrategy>;
  batchEntries: number;
  batchBytes: number;
  giveUpMs: number;
  peerTimeoutMs: number;
  originLiveMs: number;
  /**
   * The live instances as cluster membership knows them (null: not known yet); an origin
   * counts as live while its instance is and it was heard from within `originLiveMs`.
   */
  members: LiveMembers | null;
  /** Prefix of this origin's batch JSON: its own batches coming back are skipped unparsed. */
  selfPrefix: string;
  data: SyncData;
  watch: SyncWatch;
  /** The chart driving this node (set by its `attach` action), read for stats only. */
  chart: AnyActorRef | null;
}

function randomSuffix(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return Array.from(bytes, (b) => (b % 36).toString(36)).join("");
}

/** Creates the ring of recent batches. */
export function createRing(maxBytes: number): BatchRing {
  const byOrigin = new Map<string, Map<number, string>>();
  let order: [string, number, number][] = [];
  let head = 0;
  let bytes = 0;
  return {
    add(origin, seq, json) {
      let m = byOrigin.get(origin);
      if (!m) byOrigin.set(origin, m = new Map());
      if (m.has(seq)) return;
      m.set(seq, json);
      order.push([origin, seq, json.length]);
      bytes += json.length;
      while (bytes > maxBytes && head < order.length) {
        const [o, s, n] = order[head++];
        byOrigin.get(o)?.delete(s);
        bytes -= n;
      }
      if (head > 4096 && head * 2 > order.length) {
        order = order.slice(head);
        head = 0;
      }
    },
    get: (origin, seq) => byOrigin.get(origin)?.get(seq),
    bytes: () => bytes,
  };
}

/** Builds the deps of a node from its options, with empty data. */
export function createSyncDeps(options: SyncNodeOptions): SyncDeps {
  const now = options.now ?? Date.now;
  const origin = options.origin ?? `${options.instanceId}~${randomSuffix()}`;
  return {
    instanceId: options.instanceId,
    origin,
    startedAt: now(),
    sql: options.sql,
    bus: options.bus,
    transport: options.transport,
    leases: options.leases ?? null,
    leaseTtlMs: options.leaseTtlMs,
    log: options.log ?? silentLogger,
    now,
    clock: createHybridClock({ physical: now }),
    strategies: options.strategies ?? PLATFORM_STRATEGIES,
    batchEntries: options.batchEntries ?? 200,
    batchBytes: options.batchBytes ?? 32_000,
    giveUpMs: options.giveUpMs ?? 30_000,
    peerTimeoutMs: options.peerTimeoutMs ?? 1000,
    originLiveMs: options.originLiveMs ?? originLiveMs(),
    members: options.members ?? null,
    selfPrefix: `{"v":1,"o":${JSON.stringify(origin)},`,
    data: {
      entities: new Map(),
      digestStale: new Set(),
      digestSums: new Map(),
      subscriptions: new Set(),
      matchCache: new Map(),
      caches: new Map(),
      tracker: createSequenceTracker(),
      ring: createRing(options.ringBytes ?? 32 * 1024 * 1024),
      ownKeys: new Map(),
      originInstance: new Map(),
      originHeard: new Map(),
      peers: new Map(),
      announcedSeq: 0,
      headsRaw: new Map(),
      headsParsed: new Map(),
      counters: {
        published: 0,
        publishFailures: 0,
        received: 0,
        rejected: 0,
        duplicates: 0,
        gaps: 0,
        repaired: 0,
        resynced: 0,
        lost: 0,
        concurrent: 0,
        conflicts: 0,
        callbackErrors: 0,
      },
      rejectedLoggedAt: 0,
      outbox: {
        lastSeq: 0,
        entries: [],
        byKey: new Map(),
        invalidations: null,
        sealQueued: false,
        inflight: [],
      },
      store: { persistedSeq: 0, queue: [], conflicts: [], running: null, waiters: [] },
      dirty: new Set(),
      dirtyToken: null,
      resources: {
        status: "open",
        subscribed: null,
        unsubscribers: [],
        offResubscribed: null,
        campaign: null,
      },
    },
    watch: { gaps: null, link: null, role: null, requests: null, moved: null },
    chart: null,
  };
}

/** Bytes of `value` as JSON (Infinity when it cannot be serialised). */
export function jsonBytes(value: unknown): number {
  try {
    return JSON.stringify(value)?.length ?? 0;
  } catch {
    return Infinity;
  }
}
