/**
 * The sync node of one instance: cross-instance entity state over Redis with the event
 * log and snapshots in PostgreSQL behind it.
 *
 * starting → running (parallel regions) ⇄ retrying:
 * - `replication`: catching_up (latest snapshots + later deltas) → live ⇄ repairing. A gap
 *   in an origin's sequence (a lost pub/sub message, or a peer announcing batches this
 *   node lacks) moves it to repairing, which fetches the missing batches from PostgreSQL
 *   or a peer; what is still missing is retried after `repairRetryMs`.
 * - `link`: up ⇄ down, the Redis pub/sub link as the bus reports it; coming back up
 *   resynchronises (caches cleared, peers asked to announce their sequences).
 * - `heads`: every `headsMs` the node announces how far it got per origin, so a peer
 *   that lost the *last* message of an origin notices too.
 * - `snapshots`: standby ⇄ active. Only the holder of the snapshot role writes periodic
 *   compressed snapshots, and only once caught up.
 *
 * The per-delta hot path (apply, batch, publish) does not go through this chart: it
 * runs in the node's effects at tens of thousands of updates per second; the chart owns
 * the lifecycle and the recovery decisions.
 * @module
 */
import { assign, fromCallback, fromPromise, setup } from "xstate";

/** Input of the sync node. */
export interface SyncNodeInput {
  /** This instance's id. */
  instanceId: string;
  /** Period of sequence announcements (ms, default 1000). */
  headsMs?: number;
  /** Period of snapshot rounds while holding the snapshot role (ms, default 10000). */
  snapshotMs?: number;
  /** Pause before retrying a repair that left gaps (ms, default 250). */
  repairRetryMs?: number;
  /** Pause before retrying a failed start or catch-up (ms, default 1000). */
  retryMs?: number;
}

/** What `open` returns. */
export interface SyncOpenOutput {
  /** This incarnation's origin id. */
  origin: string;
}

/** What `catchUp` returns. */
export interface SyncCatchUpOutput {
  /** Entities loaded from snapshots. */
  entities: number;
  /** Batches replayed after the checkpoint. */
  batches: number;
  /** Round of the checkpoint started from, or null without one. */
  checkpoint: number | null;
  /** Batches known to be missing afterwards. */
  missing: number;
}

/** What `repair` returns. */
export interface SyncRepairOutput {
  /** Missing batches obtained (from PostgreSQL or peers). */
  repaired: number;
  /** Missing batches nobody has any more, given up. */
  lost: number;
  /** Still missing. */
  remaining: number;
}

/** What `snapshot` returns. */
export interface SyncSnapshotOutput {
  /** Round written, or null when nothing was written. */
  round: number | null;
  /** Entities written. */
  entities: number;
  /** Why nothing was written, if so. */
  skipped?: string;
}

/** Context of the sync node. */
export interface SyncNodeContext {
  instanceId: string;
  headsMs: number;
  snapshotMs: number;
  repairRetryMs: number;
  retryMs: number;
  /** This incarnation's origin id once open. */
  origin: string | null;
  /** Whether catch-up finished at least once. */
  caughtUp: boolean;
  /** Holds the snapshot role. */
  snapshotter: boolean;
  /** Batches repaired so far. */
  repaired: number;
  /** Batches given up as lost. */
  lost: number;
  /** Missing batches as of the last report. */
  missing: number;
  /** Snapshot rounds written. */
  snapshotRounds: number;
  /** Consecutive failures of start / catch-up. */
  failures: number;
  /** Last error seen. */
  lastError: string | null;
  /** Why the node is where it is. */
  reason: string;
}

/** Events of the sync node (sent by its `link` and `role` effects). */
export type SyncNodeEvent =
  | { type: "sync.gap"; missing: number }
  | { type: "sync.link_down"; reason: string }
  | { type: "sync.link_up" }
  | { type: "sync.role"; held: boolean };

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The sync-node statechart. */
export const syncNodeMachine = setup({
  types: {
    context: {} as SyncNodeContext,
    input: {} as SyncNodeInput,
    events: {} as SyncNodeEvent,
  },
  actors: {
    /** Registers this incarnation as an origin (PostgreSQL); returns its id. */
    open: fromPromise<SyncOpenOutput, { instanceId: string }>(() =>
      Promise.resolve({ origin: "origin" })
    ),
    /** Loads the latest snapshots and replays later deltas. */
    catchUp: fromPromise<SyncCatchUpOutput, { origin: string | null }>(() =>
      Promise.resolve({ entities: 0, batches: 0, checkpoint: null, missing: 0 })
    ),
    /** Fetches missing batches. */
    repair: fromPromise<SyncRepairOutput, { origin: string | null }>(() =>
      Promise.resolve({ repaired: 0, lost: 0, remaining: 0 })
    ),
    /** Announces this node's sequences to its peers. */
    announce: fromPromise<void, { origin: string | null }>(() => Promise.resolve()),
    /** Writes a snapshot round (dirty entities and a checkpoint). */
    snapshot: fromPromise<SyncSnapshotOutput, { origin: string | null }>(() =>
      Promise.resolve({ round: null, entities: 0 })
    ),
    /** The pub/sub link: receives batches and reports gaps and link changes. */
    link: fromCallback<SyncNodeEvent, { origin: string | null }>(() => () => {}),
    /** The snapshot-role campaign: reports `sync.role`. */
    role: fromCallback<SyncNodeEvent, { origin: string | null }>(() => () => {}),
  },
  actions: {
    /** After the link came back: clear caches that may have missed invalidations, ask peers to announce. */
    resync: () => {},
  },
  guards: {
    gapsLeft: (_, params: { missing: number }) => params.missing > 0,
    roleHeld: ({ event }) => event.type === "sync.role" && event.held,
    roleLost: ({ event }) => event.type === "sync.role" && !event.held,
    caughtUp: ({ context }) => context.caughtUp,
  },
  delays: {
    heads: ({ context }) => context.headsMs,
    snapshot: ({ context }) => context.snapshotMs,
    repairRetry: ({ context }) => context.repairRetryMs,
    retry: ({ context }) => context.retryMs,
  },
}).createMachine({
  id: "sync_node",
  context: ({ input }) => ({
    instanceId: input.instanceId,
    headsMs: input.headsMs ?? 1000,
    snapshotMs: input.snapshotMs ?? 10_000,
    repairRetryMs: input.repairRetryMs ?? 250,
    retryMs: input.retryMs ?? 1000,
    origin: null,
    caughtUp: false,
    snapshotter: false,
    repaired: 0,
    lost: 0,
    missing: 0,
    snapshotRounds: 0,
    failures: 0,
    lastError: null,
    reason: "starting",
  }),
  initial: "starting",
  states: {
    starting: {
      invoke: {
        src: "open",
        input: ({ context }) => ({ instanceId: context.instanceId }),
        onDone: {
          target: "running",
          actions: assign({
            origin: ({ event }) => event.output.origin,
            failures: 0,
            reason: ({ event }) => `registered origin ${event.output.origin}; catching up`,
          }),
        },
        onError: {
          target: "retrying",
          actions: assign({
            failures: ({ context }) => context.failures + 1,
            lastError: ({ event }) => message(event.error),
            reason: ({ event }) => `cannot start: ${message(event.error)}`,
          }),
        },
      },
    },
    retrying: {
      after: { retry: "starting" },
    },
    running: {
      type: "parallel",
      invoke: [
        { id: "link", src: "link", input: ({ context }) => ({ origin: context.origin }) },
        { id: "role", src: "role", input: ({ context }) => ({ origin: context.origin }) },
      ],
      states: {
        replication: {
          initial: "catching_up",
          states: {
            catching_up: {
              invoke: {
                src: "catchUp",
                input: ({ context }) => ({ origin: context.origin }),
                onDone: [
                  {
                    guard: { type: "gapsLeft", params: ({ event }) => event.output },
                    target: "repairing",
                    actions: assign({
                      caughtUp: true,
                      failures: 0,
                      missing: ({ event }) => event.output.missing,
                      reason: ({ event }) =>
                        `caught up from ${event.output.entities} snapshots and ` +
                        `${event.output.batches} batches; ${event.output.missing} batches missing`,
                    }),
                  },
                  {
                    target: "live",
                    actions: assign({
                      caughtUp: true,
                      failures: 0,
                      missing: 0,
                      reason: ({ event }) =>
                        `live: caught up from ${event.output.entities} snapshots and ` +
                        `${event.output.batches} batches`,
                    }),
                  },
                ],
                onError: {
                  target: "catch_up_retry",
                  actions: assign({
                    failures: ({ context }) => context.failures + 1,
                    lastError: ({ event }) => message(event.error),
                    reason: ({ event }) => `catch-up failed: ${message(event.error)}`,
                  }),
                },
              },
            },
            catch_up_retry: {
              after: { retry: "catching_up" },
            },
            live: {
              on: {
                "sync.gap": {
                  target: "repairing",
                  actions: assign({
                    missing: ({ event }) => event.missing,
                    reason: ({ event }) => `repairing because ${event.missing} batches are missing`,
                  }),
                },
              },
            },
            repairing: {
              invoke: {
                src: "repair",
                input: ({ context }) => ({ origin: context.origin }),
                onDone: [
                  {
                    guard: {
                      type: "gapsLeft",
                      params: ({ event }) => ({
                        missing: event.output.remaining,
                      }),
                    },
                    target: "repair_wait",
                    actions: assign({
                      repaired: ({ context, event }) => context.repaired + event.output.repaired,
                      lost: ({ context, event }) => context.lost + event.output.lost,
                      missing: ({ event }) => event.output.remaining,
                      reason: ({ event }) =>
                        `${event.output.remaining} batches still missing; retrying`,
                    }),
                  },
                  {
                    target: "live",
                    actions: assign({
                      repaired: ({ context, event }) => context.repaired + event.output.repaired,
                      lost: ({ context, event }) => context.lost + event.output.lost,
                      missing: 0,
                      reason: ({ event }) =>
                        event.output.lost
                          ? `live: repaired ${event.output.repaired} batches, ` +
                            `${event.output.lost} lost for good`
                          : `live: repaired ${event.output.repaired} batches`,
                    }),
                  },
                ],
                onError: {
                  target: "repair_wait",
                  actions: assign({
                    lastError: ({ event }) => message(event.error),
                    reason: ({ event }) => `repair failed: ${message(event.error)}`,
                  }),
                },
              },
            },
            repair_wait: {
              after: { repairRetry: "repairing" },
            },
          },
        },
        link: {
          initial: "up",
          states: {
            up: {
              on: {
                // The bus resubscribed after an outage nobody's publish noticed: resync too.
                "sync.link_up": { actions: "resync" },
                "sync.link_down": {
                  target: "down",
                  actions: assign({
                    lastError: ({ event }) => event.reason,
                    reason: ({ event }) => `pub/sub link down: ${event.reason}`,
                  }),
                },
              },
            },
            down: {
              on: {
                "sync.link_up": {
                  target: "up",
                  actions: [
                    "resync",
                    assign({ reason: "pub/sub link back; resynchronising with peers" }),
                  ],
                },
              },
            },
          },
        },
        heads: {
          initial: "waiting",
          states: {
            waiting: {
              after: { heads: "announcing" },
            },
            announcing: {
              invoke: {
                src: "announce",
                input: ({ context }) => ({ origin: context.origin }),
                onDone: "waiting",
                onError: "waiting",
              },
            },
          },
        },
        snapshots: {
          initial: "standby",
          states: {
            standby: {
              on: {
                "sync.role": {
                  guard: "roleHeld",
                  target: "active",
                  actions: assign({ snapshotter: true }),
                },
              },
            },
            active: {
              initial: "waiting",
              on: {
                "sync.role": {
                  guard: "roleLost",
                  target: "standby",
                  actions: assign({ snapshotter: false }),
                },
              },
              states: {
                waiting: {
                  after: {
                    snapshot: [
                      { guard: "caughtUp", target: "writing" },
                      { target: "waiting", reenter: true },
                    ],
                  },
                },
                writing: {
                  invoke: {
                    src: "snapshot",
                    input: ({ context }) => ({ origin: context.origin }),
                    onDone: {
                      target: "waiting",
                      actions: assign({
                        snapshotRounds: ({ context, event }) =>
                          context.snapshotRounds + (event.output.round === null ? 0 : 1),
                      }),
                    },
                    onError: {
                      target: "waiting",
                      actions: assign({
                        lastError: ({ event }) => `snapshot failed: ${message(event.error)}`,
                      }),
                    },
                  },
                },
              },
            },
          },
        },
      },
    },
  },
});
