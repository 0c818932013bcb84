/**
 * The sync node of one instance: cross-instance entity state over Redis with the event
 * log and snapshots in PostgreSQL behind it. This chart is the one owner of the node's
 * lifecycle; the data plane (actors/sync/) holds entities, batches and queues and only
 * reports what it observes, through the effects each state invokes.
 *
 * starting → running (parallel regions) ⇄ retrying:
 * - `replication`: catching_up (latest snapshots + later deltas) → caught_up. Only while
 *   caught up are received batches and peers' announcements checked for gaps
 *   (`detectGaps`); a gap moves `live` to `repairing`, which fetches the missing batches
 *   from PostgreSQL or a peer; what is still missing is retried after `repairRetryMs`.
 * - `link`: up ⇄ down, decided here from what the data plane reports: while up it reports
 *   only failed publishes (→ down), while down only successful ones (→ up). Coming back up,
 *   or a resubscription nobody's publish noticed, resynchronises: caches are cleared and
 *   every peer is asked to announce its sequences.
 * - `heads`: the node announces how far it got per origin when its own sequence moved (at
 *   most once per `headsMs`: a peer that lost an origin's *last* batch notices within
 *   `headsMs`), else every `keepAliveMs` (a backstop for an announcement lost too). Once
 *   caught up (or after `keepAliveMs` at the latest) it greets its peers with an
 *   announcement that asks every peer to announce at once, so a joining node learns every
 *   peer's heads without waiting; a peer's request is answered within `answerMs` of the
 *   previous announcement. Whether a peer is alive is cluster membership's, not read from
 *   how recently it announced, so an idle cluster is quiet.
 * - `snapshots`: standby ⇄ active as the `sync-snapshots` lease says. Only the holder
 *   writes periodic snapshot rounds, fenced by its token, and only once caught up.
 *
 * Time comes only from the XState clock (delays) and from effect outputs and events
 * stamped with the injected clock; the context is plain data.
 *
 * The per-delta hot path (apply, batch, publish, store) does not go through this chart: it
 * runs in the data plane at tens of thousands of updates per second.
 * @module
 */
import { assign, fromCallback, fromPromise, setup, type SnapshotFrom, stateIn } from "xstate";

/** Input of the sync node. */
export interface SyncNodeInput {
  /** This instance's id. */
  instanceId: string;
  /** Least time between two announcements after this node's sequence moved (ms, default 1000). */
  headsMs?: number;
  /** Announcement period while nothing moved (ms, default 10000). */
  keepAliveMs?: number;
  /** Period of snapshot rounds while holding the snapshot role (ms, default 10000). */
  snapshotMs?: number;
  /** Pause before retrying a repair that left gaps (ms, default 250). */
  repairRetryMs?: number;
  /** Pause before retrying a failed start or catch-up (ms, default 1000). */
  retryMs?: number;
  /** Least time between two announcements when a peer asks for one (ms, default 100). */
  answerMs?: number;
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

/** Input of `announce`. */
export interface SyncAnnounceInput {
  /** Ask every peer to announce at once (after a resubscription). */
  want: boolean;
}

/** What `announce` returns. */
export interface SyncAnnounceOutput {
  /** When the announcement was made (injected clock, ms). */
  at: number;
}

/** Input of `snapshot`. */
export interface SyncSnapshotInput {
  /** Fencing token of the snapshot role, or null when not held. */
  token: number | null;
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

/** Input of `watchLink`: which publish outcomes matter in the current link state. */
export interface SyncLinkWatchInput {
  /** `loss`: report failed publishes (link up); `recovery`: successful ones (link down). */
  report: "loss" | "recovery";
}

/** Context of the sync node: plain data, serialisable. */
export interface SyncNodeContext {
  instanceId: string;
  headsMs: number;
  keepAliveMs: number;
  snapshotMs: number;
  repairRetryMs: number;
  retryMs: number;
  answerMs: number;
  /** This incarnation's origin id once open. */
  origin: string | null;
  /** Fencing token of the snapshot role while held, else null. */
  roleToken: number | null;
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
  /** When the last announcement was made (injected clock, ms), or null before the first. */
  lastAnnounceAt: number | null;
  /** How long a due announcement (a peer's request, or this node's moved sequence) waits (ms). */
  announceDelayMs: number;
  /** Last error seen. */
  lastError: string | null;
  /** Why the node is where it is. */
  reason: string;
}

/**
 * Events of the sync node, each a fact an invoked effect observed: `detectGaps` sends
 * `sync.gap`; `watchLink` sends `sync.link_lost`, `sync.link_back` and
 * `sync.resubscribed`; `watchRole` sends `sync.role`; `watchRequests` sends
 * `sync.heads_wanted`; `watchSequence` sends `sync.heads_moved`.
 */
export type SyncNodeEvent =
  | { type: "sync.gap"; missing: number }
  | { type: "sync.link_lost"; reason: string }
  | { type: "sync.link_back" }
  | { type: "sync.resubscribed" }
  | { type: "sync.role"; token: number | null }
  | { type: "sync.heads_wanted"; at: number }
  | { type: "sync.heads_moved"; at: number };

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

const syncNodeSetup = setup({
  types: {
    context: {} as SyncNodeContext,
    input: {} as SyncNodeInput,
    events: {} as SyncNodeEvent,
  },
  actors: {
    /** Registers this incarnation as an origin (PostgreSQL), joins pub/sub; returns its id. */
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
    announce: fromPromise<SyncAnnounceOutput, SyncAnnounceInput>(() => Promise.resolve({ at: 0 })),
    /** Writes a snapshot round (dirty entities and a checkpoint) fenced by the token. */
    snapshot: fromPromise<SyncSnapshotOutput, SyncSnapshotInput>(() =>
      Promise.resolve({ round: null, entities: 0 })
    ),
    /** While caught up: reports `sync.gap` when batches or announcements reveal missing batches. */
    detectGaps: fromCallback<SyncNodeEvent>(() => () => {}),
    /** Reports the publish outcomes that matter in the current link state, and resubscriptions. */
    watchLink: fromCallback<SyncNodeEvent, SyncLinkWatchInput>(() => () => {}),
    /** The snapshot-role campaign: reports `sync.role` (now, and on every change). */
    watchRole: fromCallback<SyncNodeEvent>(() => () => {}),
    /** Reports `sync.heads_wanted` when a peer asks every node to announce. */
    watchRequests: fromCallback<SyncNodeEvent>(() => () => {}),
    /**
     * Reports `sync.heads_moved` when this node sealed a batch its last announcement does not
     * show (at once if one is pending when invoked).
     */
    watchSequence: fromCallback<SyncNodeEvent>(() => () => {}),
  },
  actions: {
    /** Lets the node answer `stats()` from this chart (the one place its phase lives). */
    attach: () => {},
    /** Clears every cache: invalidations may have been missed. */
    clearCaches: () => {},
    /** Logs that the link went down (effects: the logger). */
    logLinkLost: (_, _params: { reason: string }) => {},
    /** Logs that the link is back. */
    logLinkBack: () => {},
    recordOrigin: assign((_, p: { origin: string }) => ({
      origin: p.origin,
      failures: 0,
      reason: `registered origin ${p.origin}; catching up`,
    })),
    recordStartFailure: assign(({ context }, p: { error: string }) => ({
      failures: context.failures + 1,
      lastError: p.error,
      reason: `cannot start: ${p.error}`,
    })),
    recordCatchUp: assign((_, p: SyncCatchUpOutput) => ({
      failures: 0,
      missing: p.missing,
      reason: p.missing > 0
        ? `caught up from ${p.entities} snapshots and ${p.batches} batches; ` +
          `${p.missing} batches missing`
        : `live: caught up from ${p.entities} snapshots and ${p.batches} batches`,
    })),
    recordCatchUpFailure: assign(({ context }, p: { error: string }) => ({
      failures: context.failures + 1,
      lastError: p.error,
      reason: `catch-up failed: ${p.error}`,
    })),
    recordGap: assign((_, p: { missing: number }) => ({
      missing: p.missing,
      reason: `repairing because ${p.missing} batches are missing`,
    })),
    recordRepair: assign(({ context }, p: SyncRepairOutput) => ({
      repaired: context.repaired + p.repaired,
      lost: context.lost + p.lost,
      missing: p.remaining,
      reason: p.remaining > 0
        ? `${p.remaining} batches still missing; retrying`
        : p.lost
        ? `live: repaired ${p.repaired} batches, ${p.lost} lost for good`
        : `live: repaired ${p.repaired} batches`,
    })),
    recordRepairFailure: assign((_, p: { error: string }) => ({
      lastError: p.error,
      reason: `repair failed: ${p.error}`,
    })),
    recordLinkLost: assign((_, p: { reason: string }) => ({
      lastError: p.reason,
      reason: `pub/sub link down: ${p.reason}`,
    })),
    recordLinkBack: assign({ reason: "pub/sub link back; resynchronising with peers" }),
    recordAnnounced: assign((_, p: SyncAnnounceOutput) => ({ lastAnnounceAt: p.at })),
    /** A due announcement waits until `gapMs` after the previous one. */
    scheduleAnnounce: assign(({ context }, p: { at: number; gapMs: number }) => ({
      announceDelayMs: Math.max(0, p.gapMs - (p.at - (context.lastAnnounceAt ?? p.at))),
    })),
    /** A failed announcement is tried again after `headsMs`. */
    scheduleRetry: assign(({ context }) => ({ announceDelayMs: context.headsMs })),
    recordRole: assign((_, p: { token: number | null }) => ({ roleToken: p.token })),
    recordSnapshot: assign(({ context }, p: SyncSnapshotOutput) => ({
      snapshotRounds: context.snapshotRounds + (p.round === null ? 0 : 1),
    })),
    recordSnapshotFailure: assign((_, p: { error: string }) => ({
      lastError: `snapshot failed: ${p.error}`,
    })),
  },
  guards: {
    /** Batches are still missing. */
    gapsLeft: (_, params: { missing: number }) => params.missing > 0,
    /** The event says this node holds the snapshot role. */
    roleHeld: ({ event }) => event.type === "sync.role" && event.token !== null,
    /** The event says this node lost the snapshot role. */
    roleLost: ({ event }) => event.type === "sync.role" && event.token === null,
    /**
     * The previous announcement is at least `gapMs` before `at`: announce now (a peer's request
     * after `answerMs`, a moved sequence after `headsMs`).
     */
    gapPassed: ({ context }, p: { at: number; gapMs: number }) =>
      context.lastAnnounceAt === null || p.at - context.lastAnnounceAt >= p.gapMs,
    /** The replication region has caught up (snapshots must cover caught-up state only). */
    caughtUp: stateIn({ running: { replication: "caught_up" } }),
  },
  delays: {
    keepAlive: ({ context }) => context.keepAliveMs,
    snapshot: ({ context }) => context.snapshotMs,
    repairRetry: ({ context }) => context.repairRetryMs,
    retry: ({ context }) => context.retryMs,
    announceDue: ({ context }) => context.announceDelayMs,
  },
});

/** The type every state config of this chart satisfies (checked against `setup()`). */
type StateConfig = NonNullable<
  Parameters<typeof syncNodeSetup.createMachine>[0]["states"]
>[string];

/** Registers the origin and joins pub/sub; a failure is retried after `retryMs`. */
const startingState = {
  invoke: {
    src: "open",
    input: ({ context }) => ({ instanceId: context.instanceId }),
    onDone: {
      target: "running",
      actions: { type: "recordOrigin", params: ({ event }) => event.output },
    },
    onError: {
      target: "retrying",
      actions: {
        type: "recordStartFailure",
        params: ({ event }) => ({ error: message(event.error) }),
      },
    },
  },
} satisfies StateConfig;

const retryingState = {
  after: { retry: "starting" },
} satisfies StateConfig;

/** catching_up → caught_up (live ⇄ repairing); gaps are looked for only once caught up. */
const replicationRegion = {
  initial: "catching_up",
  states: {
    catching_up: {
      invoke: {
        src: "catchUp",
        input: ({ context }) => ({ origin: context.origin }),
        onDone: [
          {
            guard: { type: "gapsLeft", params: ({ event }) => event.output },
            target: "caught_up.repairing",
            actions: { type: "recordCatchUp", params: ({ event }) => event.output },
          },
          {
            target: "caught_up.live",
            actions: { type: "recordCatchUp", params: ({ event }) => event.output },
          },
        ],
        onError: {
          target: "catch_up_retry",
          actions: {
            type: "recordCatchUpFailure",
            params: ({ event }) => ({ error: message(event.error) }),
          },
        },
      },
    },
    catch_up_retry: {
      after: { retry: "catching_up" },
    },
    caught_up: {
      invoke: { src: "detectGaps" },
      initial: "live",
      states: {
        live: {
          on: {
            "sync.gap": {
              target: "repairing",
              actions: { type: "recordGap", params: ({ event }) => ({ missing: event.missing }) },
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
                  params: ({ event }) => ({ missing: event.output.remaining }),
                },
                target: "repair_wait",
                actions: { type: "recordRepair", params: ({ event }) => event.output },
              },
              {
                target: "live",
                actions: { type: "recordRepair", params: ({ event }) => event.output },
              },
            ],
            onError: {
              target: "repair_wait",
              actions: {
                type: "recordRepairFailure",
                params: ({ event }) => ({ error: message(event.error) }),
              },
            },
          },
        },
        repair_wait: {
          after: { repairRetry: "repairing" },
        },
      },
    },
  },
} satisfies StateConfig;

/** up ⇄ down, decided from publish outcomes; back up (or resubscribed) resynchronises. */
const linkRegion = {
  initial: "up",
  states: {
    up: {
      invoke: { src: "watchLink", input: { report: "loss" } },
      initial: "steady",
      on: {
        "sync.link_lost": {
          target: "down",
          actions: [
            { type: "recordLinkLost", params: ({ event }) => ({ reason: event.reason }) },
            { type: "logLinkLost", params: ({ event }) => ({ reason: event.reason }) },
          ],
        },
        // The bus resubscribed after an outage nobody's publish noticed: messages published
        // meanwhile are lost to this node, so resynchronise all the same.
        "sync.resubscribed": ".resyncing",
      },
      states: {
        steady: {},
        resyncing: {
          entry: "clearCaches",
          invoke: {
            src: "announce",
            input: { want: true },
            onDone: {
              target: "steady",
              actions: { type: "recordAnnounced", params: ({ event }) => event.output },
            },
            onError: "steady",
          },
        },
      },
    },
    down: {
      invoke: { src: "watchLink", input: { report: "recovery" } },
      on: {
        "sync.link_back": {
          target: "up.resyncing",
          actions: ["recordLinkBack", "logLinkBack"],
        },
        "sync.resubscribed": {
          target: "up.resyncing",
          actions: ["recordLinkBack", "logLinkBack"],
        },
      },
    },
  },
} satisfies StateConfig;

/**
 * Announcements: a greeting once caught up (asking every peer to announce), then one when
 * this node's sequence moved (at most every `headsMs`), an answer when a peer asks, and a
 * keep-alive after `keepAliveMs` without any.
 */
const headsRegion = {
  initial: "joining",
  states: {
    joining: {
      always: { guard: "caughtUp", target: "greeting" },
      // A catch-up that takes long (or keeps failing): greet all the same.
      after: { keepAlive: "greeting" },
    },
    greeting: {
      invoke: {
        src: "announce",
        input: { want: true },
        onDone: {
          target: "waiting",
          actions: { type: "recordAnnounced", params: ({ event }) => event.output },
        },
        onError: { target: "due", actions: "scheduleRetry" },
      },
    },
    waiting: {
      tags: ["routine"],
      invoke: [{ src: "watchRequests" }, { src: "watchSequence" }],
      after: { keepAlive: "announcing" },
      on: {
        "sync.heads_wanted": [
          {
            guard: {
              type: "gapPassed",
              params: ({ context, event }) => ({ at: event.at, gapMs: context.answerMs }),
            },
            target: "announcing",
          },
          {
            target: "due",
            actions: {
              type: "scheduleAnnounce",
              params: ({ context, event }) => ({ at: event.at, gapMs: context.answerMs }),
            },
          },
        ],
        "sync.heads_moved": [
          {
            guard: {
              type: "gapPassed",
              params: ({ context, event }) => ({ at: event.at, gapMs: context.headsMs }),
            },
            target: "announcing",
          },
          {
            target: "due",
            actions: {
              type: "scheduleAnnounce",
              params: ({ context, event }) => ({ at: event.at, gapMs: context.headsMs }),
            },
          },
        ],
      },
    },
    // What moves or is asked for meanwhile rides along: the announcement reads the node's
    // sequences when it is made.
    due: {
      tags: ["routine"],
      after: { announceDue: "announcing" },
    },
    announcing: {
      tags: ["routine"],
      invoke: {
        src: "announce",
        input: { want: false },
        onDone: {
          target: "waiting",
          actions: { type: "recordAnnounced", params: ({ event }) => event.output },
        },
        onError: { target: "due", actions: "scheduleRetry" },
      },
    },
  },
} satisfies StateConfig;

/** standby ⇄ active as the lease says; the holder writes a round every `snapshotMs`. */
const snapshotsRegion = {
  invoke: { src: "watchRole" },
  initial: "standby",
  states: {
    standby: {
      on: {
        "sync.role": {
          guard: "roleHeld",
          target: "active",
          actions: { type: "recordRole", params: ({ event }) => ({ token: event.token }) },
        },
      },
    },
    active: {
      initial: "waiting",
      on: {
        "sync.role": [
          {
            guard: "roleLost",
            target: "standby",
            actions: { type: "recordRole", params: { token: null } },
          },
          // Acquired again under a new token without a loss in between.
          { actions: { type: "recordRole", params: ({ event }) => ({ token: event.token }) } },
        ],
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
            input: ({ context }) => ({ token: context.roleToken }),
            onDone: {
              target: "waiting",
              actions: { type: "recordSnapshot", params: ({ event }) => event.output },
            },
            onError: {
              target: "waiting",
              actions: {
                type: "recordSnapshotFailure",
                params: ({ event }) => ({ error: message(event.error) }),
              },
            },
          },
        },
      },
    },
  },
} satisfies StateConfig;

const runningState = {
  type: "parallel",
  states: {
    replication: replicationRegion,
    link: linkRegion,
    heads: headsRegion,
    snapshots: snapshotsRegion,
  },
} satisfies StateConfig;

/** The sync-node statechart. */
export const syncNodeMachine = syncNodeSetup.createMachine({
  id: "sync_node",
  context: ({ input }) => ({
    instanceId: input.instanceId,
    headsMs: input.headsMs ?? 1000,
    keepAliveMs: input.keepAliveMs ?? 10_000,
    snapshotMs: input.snapshotMs ?? 10_000,
    repairRetryMs: input.repairRetryMs ?? 250,
    retryMs: input.retryMs ?? 1000,
    answerMs: input.answerMs ?? 100,
    origin: null,
    roleToken: null,
    repaired: 0,
    lost: 0,
    missing: 0,
    snapshotRounds: 0,
    failures: 0,
    lastAnnounceAt: null,
    announceDelayMs: 0,
    lastError: null,
    reason: "starting",
  }),
  entry: "attach",
  initial: "starting",
  states: {
    starting: startingState,
    retrying: retryingState,
    running: runningState,
  },
});

/** A snapshot of the sync-node chart. */
export type SyncNodeSnapshot = SnapshotFrom<typeof syncNodeMachine>;

/** What the chart says about the node, for its stats and health. */
export interface SyncNodeFacts {
  /** The origin is registered and the node runs (or ran, when the chart stopped). */
  open: boolean;
  /** The replication region caught up. */
  caughtUp: boolean;
  /** The link region is not `down`. */
  linkUp: boolean;
  /** Fencing token of the snapshot role while held, else null. */
  roleToken: number | null;
}

/** Reads the node's phase from a snapshot of its chart (null: no chart ever ran). */
export function syncNodeFacts(s: SyncNodeSnapshot | null): SyncNodeFacts {
  if (!s) return { open: false, caughtUp: false, linkUp: true, roleToken: null };
  return {
    open: s.matches("running"),
    caughtUp: s.matches({ running: { replication: "caught_up" } }),
    linkUp: !s.matches({ running: { link: "down" } }),
    roleToken: s.context.roleToken,
  };
}
