/**
 * The real effects of machines/sync_node.ts over the data plane: `open` (register the
 * origin, join pub/sub), `catchUp`, `repair`, `announce`, `snapshot`, and the watchers
 * through which the data plane reports what it observes. Each watcher fills its slot of
 * `deps.watch` while the state that invoked it is active; the chart decides what each
 * observation means.
 * @module
 */
import { fromCallback, fromPromise } from "xstate";
import { describeError } from "../../lib/errors.ts";
import {
  type SyncLinkWatchInput,
  type SyncNodeEvent,
  syncNodeMachine,
  type SyncOpenOutput,
} from "../../machines/sync_node.ts";
import { registerOrigin } from "../../store/sync.ts";
import { announce, onHeadsMessage } from "./heads.ts";
import { onBatchMessage } from "./hot_path.ts";
import { repair } from "./repair.ts";
import { catchUp, writeRound } from "./snapshots.ts";
import type { LinkWatch, SyncDeps, SyncWatch } from "./state.ts";
import { BATCH_CHANNEL, HEADS_CHANNEL } from "./wire.ts";

/** The lease role whose holder writes snapshot rounds. */
export const SNAPSHOT_ROLE = "sync-snapshots";

/** The sync-node logic with real effects (what the actor registry runs). */
export type SyncNodeLogic = typeof syncNodeMachine;

async function subscribeAll(deps: SyncDeps): Promise<void> {
  const r = deps.data.resources;
  try {
    r.unsubscribers.push(
      await deps.bus.subscribe(BATCH_CHANNEL, (raw) => onBatchMessage(deps, raw)),
      await deps.bus.subscribe(HEADS_CHANNEL, (raw) => onHeadsMessage(deps, raw)),
    );
  } catch (err) {
    await unsubscribeAll(deps);
    throw err;
  }
  // The subscriber connection was down: anything published meanwhile is lost to this node.
  r.offResubscribed = deps.bus.onResubscribed(() => deps.watch.link?.resubscribed());
}

async function unsubscribeAll(deps: SyncDeps): Promise<void> {
  const r = deps.data.resources;
  r.offResubscribed?.();
  r.offResubscribed = null;
  for (const off of r.unsubscribers.splice(0)) await off().catch(() => {});
}

/**
 * Registers this incarnation as an origin and subscribes to batches and announcements.
 * Idempotent: a restarted chart opens again, the subscriptions are made once.
 */
export async function open(deps: SyncDeps): Promise<SyncOpenOutput> {
  await registerOrigin(deps.sql, {
    origin: deps.origin,
    instanceId: deps.instanceId,
    startedAt: new Date(deps.startedAt),
  });
  const r = deps.data.resources;
  if (r.status === "open") {
    r.subscribed ??= subscribeAll(deps).catch((err) => {
      r.subscribed = null;
      throw err;
    });
    await r.subscribed;
  }
  return { origin: deps.origin };
}

/** Leaves pub/sub (on close, after the chart stopped). */
export async function leavePubSub(deps: SyncDeps): Promise<void> {
  await deps.data.resources.subscribed?.catch(() => {});
  await unsubscribeAll(deps);
}

/** Ends the snapshot-role campaign, releasing the lease if held (on close). */
export async function resignRole(deps: SyncDeps): Promise<void> {
  const r = deps.data.resources;
  const campaign = r.campaign;
  r.campaign = null;
  await campaign?.resign();
}

/** Fills a watch slot; the returned cleanup empties it if it still holds this watcher. */
function fill<K extends keyof SyncWatch>(
  deps: SyncDeps,
  slot: K,
  watcher: NonNullable<SyncWatch[K]>,
): () => void {
  deps.watch[slot] = watcher;
  return () => {
    if (deps.watch[slot] === watcher) deps.watch[slot] = null;
  };
}

function linkWatch(
  input: SyncLinkWatchInput,
  sendBack: (event: SyncNodeEvent) => void,
): LinkWatch {
  const resubscribed = () => sendBack({ type: "sync.resubscribed" });
  return input.report === "loss"
    ? {
      published() {},
      failed: (reason) => sendBack({ type: "sync.link_lost", reason }),
      resubscribed,
    }
    : { published: () => sendBack({ type: "sync.link_back" }), failed() {}, resubscribed };
}

/** Starts campaigning for the snapshot role once; lease changes go to the `role` slot. */
function campaignOnce(deps: SyncDeps): number | null {
  const r = deps.data.resources;
  if (!deps.leases || r.status === "closed") return null;
  if (!r.campaign) {
    try {
      r.campaign = deps.leases.campaign(SNAPSHOT_ROLE, {
        ttlMs: deps.leaseTtlMs,
        onAcquired: (token) => {
          deps.log.info("holding the sync snapshot role", { token });
          deps.watch.role?.(token);
        },
        onLost: (reason) => {
          deps.log.info("lost the sync snapshot role", { reason });
          deps.watch.role?.(null);
        },
      });
    } catch (err) {
      deps.log.error("cannot campaign for the sync snapshot role", { error: describeError(err) });
      return null;
    }
  }
  return r.campaign.token();
}

/** The sync-node chart with this node's effects. */
export function createSyncNodeLogic(deps: SyncDeps): SyncNodeLogic {
  return syncNodeMachine.provide({
    actors: {
      open: fromPromise(() => open(deps)),
      catchUp: fromPromise(() => catchUp(deps)),
      repair: fromPromise(({ signal }) => repair(deps, { signal })),
      announce: fromPromise(({ input }) => announce(deps, input)),
      snapshot: fromPromise(({ input }) => writeRound(deps, input)),
      detectGaps: fromCallback<SyncNodeEvent>(({ sendBack }) =>
        fill(deps, "gaps", (missing) => sendBack({ type: "sync.gap", missing }))
      ),
      watchLink: fromCallback<SyncNodeEvent, SyncLinkWatchInput>(({ sendBack, input }) =>
        fill(deps, "link", linkWatch(input, sendBack))
      ),
      watchRole: fromCallback<SyncNodeEvent>(({ sendBack }) => {
        // A single instance holds the role for good (token 0).
        if (!deps.leases) {
          sendBack({ type: "sync.role", token: 0 });
          return () => {};
        }
        const empty = fill(deps, "role", (token) => sendBack({ type: "sync.role", token }));
        const token = campaignOnce(deps);
        if (token !== null) sendBack({ type: "sync.role", token });
        return empty;
      }),
      watchRequests: fromCallback<SyncNodeEvent>(({ sendBack }) =>
        fill(deps, "requests", (at) => sendBack({ type: "sync.heads_wanted", at }))
      ),
      watchSequence: fromCallback<SyncNodeEvent>(({ sendBack }) => {
        const moved = (at: number) => sendBack({ type: "sync.heads_moved", at });
        const empty = fill(deps, "moved", moved);
        // Sealed while the announcement was being made (or while it was due): tell at once.
        if (deps.data.outbox.lastSeq > deps.data.announcedSeq) moved(deps.now());
        return empty;
      }),
    },
    actions: {
      attach: ({ self }) => {
        deps.chart = self;
      },
      clearCaches: () => {
        for (const c of deps.data.caches.values()) c.clear();
      },
      logLinkLost: (_, params) => {
        deps.log.warn("sync pub/sub link down; writes continue locally and are stored", params);
      },
      logLinkBack: () => deps.log.info("sync pub/sub link back"),
    },
  });
}
