/**
 * Cluster membership of one instance: it heartbeats into the shared registry and learns
 * which instances joined or left as *changes* since its cursor in the registry's change
 * stream, from the same round trip — a full list only on join or after a gap — so a
 * heartbeat costs the same whatever the number of instances.
 *
 * joining → member ⇄ isolated → left. While a member, two regions run side by side:
 * `beat` heartbeats every `heartbeatMs`; `view` reads the changes at once when a change
 * notice arrives (`CHANGED`, from the `changeFeed` actor), so a departure is known across
 * the cluster as soon as one instance reaped it, not one heartbeat later. An answer older
 * than the list already held (a slower call overtaken) is ignored. A heartbeat that fails
 * `isolateAfter` times in a row makes the instance `isolated` (it cannot see the cluster,
 * so it must not act as if it could); the next successful heartbeat brings it back. Peers
 * that stop heartbeating are reaped after the registry's dead-after window.
 * @module
 */
import { assign, fromCallback, fromPromise, setup } from "xstate";

/** What a heartbeat or a change read answers: the live list at a change-stream cursor. */
export interface MembershipAnswer {
  /** Live instance ids, sorted. */
  members: string[];
  /** Change-stream id the list is current to. */
  cursor: string;
}

/** Input of the heartbeat and change-read actors: the list held and its cursor. */
export interface MembershipQuery {
  instanceId: string;
  /** The list held (the base a delta applies to). */
  members: string[];
  /** Its cursor; null asks for a full read. */
  cursor: string | null;
}

/** Input of the cluster node. */
export interface ClusterNodeInput {
  /** This instance's id. */
  instanceId: string;
  /** Time between heartbeats (ms). */
  heartbeatMs?: number;
  /** Consecutive failed heartbeats before the node calls itself isolated. */
  isolateAfter?: number;
}

/** Context of the cluster node. */
export interface ClusterNodeContext {
  instanceId: string;
  heartbeatMs: number;
  isolateAfter: number;
  /** Live instance ids, this one included, sorted. */
  members: string[];
  /** Change-stream cursor of `members` (null before the first answer). */
  cursor: string | null;
  /** A change notice arrived that no read has answered yet. */
  noticed: boolean;
  /** Consecutive heartbeat failures. */
  failures: number;
  /** Last heartbeat error. */
  lastError: string | null;
  /** Why the node is in its state. */
  reason: string;
}

/** Events of the cluster node. */
export type ClusterNodeEvent = { type: "LEAVE" } | { type: "CHANGED" };

function errorText(error: unknown): string {
  return String((error as Error)?.message ?? error);
}

function diff(before: string[], after: string[]): { joined: string[]; left: string[] } {
  const a = new Set(before);
  const b = new Set(after);
  return { joined: after.filter((m) => !a.has(m)), left: before.filter((m) => !b.has(m)) };
}

/** Stream ids `ms-seq` in order; true when `a` is not older than `b`. */
export function cursorNotOlder(a: string, b: string | null): boolean {
  if (b === null) return true;
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return am > bm || (am === bm && (as ?? 0) >= (bs ?? 0));
}

function answerOf(event: unknown): MembershipAnswer {
  return (event as { output: MembershipAnswer }).output;
}

/** The cluster-node statechart. */
export const clusterNodeMachine = setup({
  types: {
    context: {} as ClusterNodeContext,
    input: {} as ClusterNodeInput,
    events: {} as ClusterNodeEvent,
  },
  actors: {
    /** Writes this instance's heartbeat and answers the live list after the changes. */
    heartbeat: fromPromise<MembershipAnswer, MembershipQuery>(({ input }) =>
      Promise.resolve({ members: input.members, cursor: input.cursor ?? "0-0" })
    ),
    /** Reads the changes since the cursor (no heartbeat). */
    readChanges: fromPromise<MembershipAnswer, MembershipQuery>(({ input }) =>
      Promise.resolve({ members: input.members, cursor: input.cursor ?? "0-0" })
    ),
    /** Sends `CHANGED` whenever an instance announces a membership change. */
    changeFeed: fromCallback<ClusterNodeEvent>(() => () => {}),
    /** Removes this instance from the registry. */
    deregister: fromPromise<void, { instanceId: string }>(() => Promise.resolve()),
  },
  actions: {
    /**
     * Told with the ids that appeared and disappeared since the last answer (a restarted
     * chart's first answer lists everyone as joined).
     */
    membershipChanged: (_, _params: { joined: string[]; left: string[] }) => {},
    /** Keeps the list and cursor an answer brought. */
    recordAnswer: assign({
      members: ({ event }) => answerOf(event).members,
      cursor: ({ event }) => answerOf(event).cursor,
    }),
    /** A heartbeat went through. */
    recordBeat: assign({ failures: 0, lastError: null }),
    /** Counts a failed heartbeat. */
    recordFailure: assign({
      failures: ({ context }) => context.failures + 1,
      lastError: ({ event }) => errorText((event as { error?: unknown }).error),
    }),
  },
  delays: {
    heartbeat: ({ context }) => context.heartbeatMs,
  },
  guards: {
    isolating: ({ context }) => context.failures + 1 >= context.isolateAfter,
    /** The answer is not older than the list held. */
    current: ({ context, event }) => cursorNotOlder(answerOf(event).cursor, context.cursor),
    noticed: ({ context }) => context.noticed,
  },
}).createMachine({
  id: "cluster_node",
  context: ({ input }) => ({
    instanceId: input.instanceId,
    heartbeatMs: input.heartbeatMs ?? 1000,
    isolateAfter: input.isolateAfter ?? 3,
    members: [],
    cursor: null,
    noticed: false,
    failures: 0,
    lastError: null,
    reason: "joining the cluster",
  }),
  initial: "joining",
  states: {
    joining: {
      invoke: {
        src: "heartbeat",
        input: ({ context }) => ({
          instanceId: context.instanceId,
          members: context.members,
          cursor: null,
        }),
        onDone: {
          target: "member",
          actions: [
            {
              type: "membershipChanged",
              params: ({ context, event }) => diff(context.members, event.output.members),
            },
            "recordAnswer",
            assign({
              failures: 0,
              reason: ({ event }) => `joined; ${event.output.members.length} live instances`,
            }),
          ],
        },
        onError: {
          target: "retrying",
          actions: assign({
            failures: ({ context }) => context.failures + 1,
            lastError: ({ event }) => String((event.error as Error)?.message ?? event.error),
            reason: ({ event }) =>
              `cannot join: ${String((event.error as Error)?.message ?? event.error)}`,
          }),
        },
      },
    },
    retrying: {
      after: { heartbeat: "joining" },
    },
    member: {
      type: "parallel",
      invoke: { src: "changeFeed" },
      on: {
        LEAVE: "leaving",
        CHANGED: { actions: assign({ noticed: true }) },
      },
      states: {
        beat: {
          initial: "waiting",
          states: {
            waiting: { tags: ["routine"], after: { heartbeat: "beating" } },
            beating: {
              tags: ["routine"],
              invoke: {
                src: "heartbeat",
                input: ({ context }) => ({
                  instanceId: context.instanceId,
                  members: context.members,
                  cursor: context.cursor,
                }),
                onDone: [
                  {
                    guard: "current",
                    target: "waiting",
                    actions: [
                      {
                        type: "membershipChanged",
                        params: ({ context, event }) => diff(context.members, event.output.members),
                      },
                      "recordAnswer",
                      "recordBeat",
                    ],
                  },
                  { target: "waiting", actions: "recordBeat" },
                ],
                onError: [
                  {
                    guard: "isolating",
                    target: "#cluster_node.isolated",
                    actions: [
                      assign({
                        reason: ({ context }) =>
                          `isolated because ${context.failures + 1} heartbeats in a row failed`,
                      }),
                      "recordFailure",
                    ],
                  },
                  { target: "waiting", actions: "recordFailure" },
                ],
              },
            },
          },
        },
        view: {
          initial: "idle",
          states: {
            idle: { always: { guard: "noticed", target: "reading" } },
            reading: {
              entry: assign({ noticed: false }),
              invoke: {
                src: "readChanges",
                input: ({ context }) => ({
                  instanceId: context.instanceId,
                  members: context.members,
                  cursor: context.cursor,
                }),
                onDone: [
                  {
                    guard: "current",
                    target: "idle",
                    actions: [
                      {
                        type: "membershipChanged",
                        params: ({ context, event }) => diff(context.members, event.output.members),
                      },
                      "recordAnswer",
                    ],
                  },
                  { target: "idle" },
                ],
                // The next heartbeat reads the changes anyway.
                onError: { target: "idle" },
              },
            },
          },
        },
      },
    },
    isolated: {
      initial: "waiting",
      states: {
        waiting: { after: { heartbeat: "probing" } },
        probing: {
          invoke: {
            src: "heartbeat",
            input: ({ context }) => ({
              instanceId: context.instanceId,
              members: context.members,
              cursor: null,
            }),
            onDone: {
              target: "#cluster_node.member",
              actions: [
                {
                  type: "membershipChanged",
                  params: ({ context, event }) => diff(context.members, event.output.members),
                },
                "recordAnswer",
                "recordBeat",
                assign({ reason: "rejoined after isolation" }),
              ],
            },
            onError: { target: "waiting", actions: "recordFailure" },
          },
        },
      },
      on: { LEAVE: "leaving" },
    },
    leaving: {
      invoke: {
        src: "deregister",
        input: ({ context }) => ({ instanceId: context.instanceId }),
        onDone: { target: "left", actions: assign({ reason: "left the cluster" }) },
        onError: { target: "left", actions: assign({ reason: "left (deregistration failed)" }) },
      },
    },
    left: { type: "final" },
  },
});
