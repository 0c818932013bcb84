/**
 * Cluster membership of one instance: it heartbeats into the shared registry and learns
 * which instances are alive from the same round trip.
 *
 * joining → member ⇄ isolated → left. A heartbeat that fails `isolateAfter` times in a row
 * makes the instance `isolated` (it cannot see the cluster, so it must not act as if it
 * could); the next successful heartbeat brings it back. Peers that stop heartbeating drop
 * out of the live list after the registry's dead-after window.
 * @module
 */
import { assign, fromPromise, setup } from "xstate";

/** One live instance as the registry reports it. */
export interface MemberView {
  /** Instance id. */
  id: string;
  /** Milliseconds since its last heartbeat, by the registry's clock. */
  ageMs: number;
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
  /** Consecutive heartbeat failures. */
  failures: number;
  /** Last heartbeat error. */
  lastError: string | null;
  /** Why the node is in its state. */
  reason: string;
}

/** Events of the cluster node. */
export type ClusterNodeEvent = { type: "LEAVE" };

function errorText(error: unknown): string {
  return String((error as Error)?.message ?? error);
}

/** The change a heartbeat's answer makes to the member list. */
function membershipChange(
  { context, event }: { context: ClusterNodeContext; event: unknown },
): { joined: string[]; left: string[] } {
  return diff(
    context.members,
    (event as { output: MemberView[] }).output.map((m) => m.id).sort(),
  );
}

function diff(before: string[], after: string[]): { joined: string[]; left: string[] } {
  const a = new Set(before);
  const b = new Set(after);
  return {
    joined: after.filter((m) => !a.has(m)),
    left: before.filter((m) => !b.has(m)),
  };
}

/** The cluster-node statechart. */
export const clusterNodeMachine = setup({
  types: {
    context: {} as ClusterNodeContext,
    input: {} as ClusterNodeInput,
    events: {} as ClusterNodeEvent,
  },
  actors: {
    /** Writes this instance's heartbeat and returns the live members. */
    heartbeat: fromPromise<MemberView[], { instanceId: string }>(() => Promise.resolve([])),
    /** Removes this instance from the registry. */
    deregister: fromPromise<void, { instanceId: string }>(() => Promise.resolve()),
  },
  actions: {
    /** Told with the ids that appeared and disappeared since the last heartbeat. */
    membershipChanged: (_, _params: { joined: string[]; left: string[] }) => {},
    /** Keeps the live list a heartbeat returned. */
    recordMembers: assign({
      members: ({ event }) =>
        (event as unknown as { output: MemberView[] }).output.map((m) => m.id).sort(),
      failures: 0,
      lastError: null,
    }),
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
  },
}).createMachine({
  id: "cluster_node",
  context: ({ input }) => ({
    instanceId: input.instanceId,
    heartbeatMs: input.heartbeatMs ?? 500,
    isolateAfter: input.isolateAfter ?? 3,
    members: [],
    failures: 0,
    lastError: null,
    reason: "joining the cluster",
  }),
  initial: "joining",
  states: {
    joining: {
      invoke: {
        src: "heartbeat",
        input: ({ context }) => ({ instanceId: context.instanceId }),
        onDone: {
          target: "member",
          actions: [
            {
              type: "membershipChanged",
              params: ({ context, event }) =>
                diff(context.members, event.output.map((m) => m.id).sort()),
            },
            assign({
              members: ({ event }) => event.output.map((m) => m.id).sort(),
              failures: 0,
              reason: ({ event }) => `joined; ${event.output.length} live instances`,
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
      initial: "waiting",
      states: {
        waiting: { after: { heartbeat: "beating" } },
        beating: {
          invoke: {
            src: "heartbeat",
            input: ({ context }) => ({ instanceId: context.instanceId }),
            onDone: {
              target: "waiting",
              actions: [{ type: "membershipChanged", params: membershipChange }, "recordMembers"],
            },
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
      on: { LEAVE: "leaving" },
    },
    isolated: {
      initial: "waiting",
      states: {
        waiting: { after: { heartbeat: "probing" } },
        probing: {
          invoke: {
            src: "heartbeat",
            input: ({ context }) => ({ instanceId: context.instanceId }),
            onDone: {
              target: "#cluster_node.member",
              actions: [
                { type: "membershipChanged", params: membershipChange },
                "recordMembers",
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
