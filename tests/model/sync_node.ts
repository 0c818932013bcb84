/**
 * Model of the `sync_node` chart: opening may fail, catch-up and repairs answer or fail,
 * gaps are reported, the link drops and comes back, peers ask for heads, the sequence moves, and the snapshot
 * role comes and goes with fencing tokens.
 *
 * Invariants: a snapshot round runs only under the snapshot role's current token; the
 * node is caught up only after a catch-up answered; a repair runs only once caught up.
 * @module
 */
import { syncNodeMachine } from "../../machines/sync_node.ts";
import type { ChartModel } from "./_walk.ts";

/** The sync node model's world: the role token and whether a catch-up answered. */
export interface SyncWorld {
  role: number | null;
  lastToken: number;
  caughtUp: boolean;
}

const CALLBACKS = ["detectGaps", "watchLink", "watchRole", "watchRequests", "watchSequence"];
const EFFECTS = ["open", "catchUp", "repair", "announce", "snapshot"];

/** The sync node chart's model. */
export const syncNodeModel: ChartModel<SyncWorld> = {
  name: "sync_node",
  maxDepth: 7,
  world: () => ({ role: null, lastToken: 20, caughtUp: false }),
  build(run) {
    return {
      logic: syncNodeMachine.provide({
        actors: Object.fromEntries(
          [...CALLBACKS, ...EFFECTS].map((src) => [src, run.effect(src)]),
        ) as never,
      }),
      input: {
        instanceId: "a",
        headsMs: 300,
        keepAliveMs: 900,
        snapshotMs: 200,
        repairRetryMs: 50,
        retryMs: 100,
        answerMs: 20,
      },
    };
  },
  events(snapshot, world) {
    if (!snapshot.matches("running")) return [];
    const events: ({ type: string } & Record<string, unknown>)[] = [
      { type: "sync.gap", missing: 2 },
      snapshot.matches({ running: { link: "down" } })
        ? { type: "sync.link_back" }
        : { type: "sync.link_lost", reason: "redis: connection lost" },
      { type: "sync.heads_wanted", at: 0 },
      { type: "sync.heads_moved", at: 0 },
    ];
    events.push({ type: "sync.role", token: world.role === null ? world.lastToken + 1 : null });
    return events;
  },
  effects: {
    open: {
      ok: () => ({ output: { origin: "origin-a" } }),
      crash: () => ({ error: new Error("database is down") }),
    },
    catchUp: {
      ok: (_c, run) => {
        run.world.caughtUp = true;
        return { output: { entities: 3, batches: 1, checkpoint: 7, missing: 0 } };
      },
      crash: () => ({ error: new Error("database is down") }),
    },
    repair: {
      repaired: () => ({ output: { repaired: 2, lost: 0, remaining: 0 } }),
      partly: () => ({ output: { repaired: 1, lost: 0, remaining: 1 } }),
      crash: () => ({ error: new Error("database is down") }),
    },
    announce: {
      ok: (_c, run) => ({ output: { at: run.clock.now() } }),
      crash: () => ({ error: new Error("redis: connection lost") }),
    },
    snapshot: {
      ok: () => ({ output: { round: 1, entities: 3 } }),
      fenced: () => ({ output: { round: null, entities: 0, skipped: "fenced" } }),
      crash: () => ({ error: new Error("database is down") }),
    },
  },
  key(snapshot, world) {
    const c = snapshot.context;
    return [c.origin, c.roleToken === null ? null : c.roleToken === world.role, c.missing, world];
  },
  invariants: {
    "track the role": ({ move, world }) => {
      if (move?.type === "send" && move.event.type === "sync.role") {
        world.role = move.event.token as number | null;
        if (world.role !== null) world.lastToken = world.role;
      }
      return null;
    },
    "snapshots only under the current role token": ({ snapshot, world }) => {
      for (const ref of Object.values(snapshot.children ?? {})) {
        // deno-lint-ignore no-explicit-any
        const r = ref as any;
        if (r.src !== "snapshot") continue;
        const token = r.getSnapshot().input.token;
        if (token === null || token !== world.role) {
          return `a snapshot round runs under token ${token} while the role token is ${world.role}`;
        }
      }
      return null;
    },
    "caught up only after a catch-up answered": ({ snapshot, world }) =>
      snapshot.matches({ running: { replication: "caught_up" } }) && !world.caughtUp
        ? "caught up without a catch-up"
        : null,
    "repairs only once caught up": ({ snapshot }) => {
      const repairing = Object.values(snapshot.children ?? {}).some((ref) =>
        // deno-lint-ignore no-explicit-any
        (ref as any).src === "repair"
      );
      return repairing && !snapshot.matches({ running: { replication: "caught_up" } })
        ? `repairing in ${JSON.stringify(snapshot.value)}`
        : null;
    },
  },
};
