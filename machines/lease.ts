/**
 * The lease statechart of one (role, instance): campaigns for a cluster-singleton role,
 * keeps the lease renewed while holding it, and demotes itself before anyone else could
 * take the role over.
 *
 * Safety rule: a holder measures its lease from the moment it *sent* its last successful
 * acquire / renew (`lastRenewedAt`), which is never later than the moment Redis started
 * the lease's TTL. It considers itself holding only until `lastRenewedAt + ttl -
 * safetyMargin`; another instance can only acquire after `ttl` has passed on Redis, so the
 * margin covers timer lateness and clock-rate drift. Every timestamp comes from effect
 * outputs (the injected `now()` of the effects), every wait from XState delays.
 *
 * Renewals of one instance's leases line up: a holder whose renewal timer fires emits
 * `renewDue`, and the manager answers with `RENEW_NOW` to the instance's other lease charts,
 * which renew at once from `held.waiting` (early is always safe: validity counts from the
 * send). Their renewals go out together (one Redis script for all of them) and their timers
 * restart together. A renewal made at `RENEW_NOW` emits nothing, so this cannot loop.
 *
 * Effects (`acquireLease`, `renewLease`, `releaseLease`) are placeholders here; the real
 * ones live in actors/runtime/leases.ts.
 * @module
 */
import { assign, emit, fromPromise, setup } from "xstate";

/** Who holds a lease, as read from Redis. */
export interface LeaseHolder {
  /** Instance id of the holder. */
  instance: string;
  /** Fencing token of its lease. */
  token: number;
}

/** Input of the `acquireLease` effect. */
export interface LeaseAcquireInput {
  /** Role name. */
  role: string;
  /** This instance's id. */
  instanceId: string;
  /** Lease time to live. */
  ttlMs: number;
}

/** Output of the `acquireLease` effect; `sentAt` / `receivedAt` come from the injected clock. */
export type LeaseAcquireOutput =
  | { acquired: true; token: number; sentAt: number; receivedAt: number }
  | {
    acquired: false;
    /** The current holder, or null when the stored lease could not be read. */
    holder: LeaseHolder | null;
    /** Time the current lease has left, when known. */
    holderTtlMs: number | null;
    sentAt: number;
    receivedAt: number;
  };

/** Input of the `renewLease` effect. */
export interface LeaseRenewInput {
  /** Role name. */
  role: string;
  /** This instance's id. */
  instanceId: string;
  /** The token the lease must still carry. */
  token: number;
  /** New time to live. */
  ttlMs: number;
}

/** Output of the `renewLease` effect; `holder` is who Redis says holds it when not renewed. */
export interface LeaseRenewOutput {
  /** True when the lease was still ours and its TTL was reset. */
  renewed: boolean;
  /** The holder found when not renewed (null: the lease had expired). */
  holder: LeaseHolder | null;
  /** Injected-clock time just before the request was sent. */
  sentAt: number;
  /** Injected-clock time when the answer arrived. */
  receivedAt: number;
}

/** Input of the `releaseLease` effect; a null token releases any lease this instance holds. */
export interface LeaseReleaseInput {
  /** Role name. */
  role: string;
  /** This instance's id. */
  instanceId: string;
  /** Token to release, or null for "whatever this instance holds". */
  token: number | null;
}

/** Output of the `releaseLease` effect. */
export interface LeaseReleaseOutput {
  /** True when a lease of ours was deleted. */
  released: boolean;
}

/** Input of {@linkcode leaseMachine}; delays default from `ttlMs`. */
export interface LeaseMachineInput {
  /** Role name, e.g. `backup-scheduler`. */
  role: string;
  /** This instance's id. */
  instanceId: string;
  /** Lease time to live in Redis. */
  ttlMs: number;
  /** Pause between renewals while holding (default ttl / 3). */
  renewMs?: number;
  /** Pause between acquisition attempts while standby (default ttl / 3). */
  retryMs?: number;
  /** Pause before retrying a renewal that failed (default renew / 4). */
  renewRetryMs?: number;
  /** How long before the lease's expiry a holder stops acting (default ttl / 5). */
  safetyMarginMs?: number;
  /** How long one Redis call may take before it counts as failed (default renew / 2). */
  opTimeoutMs?: number;
  /**
   * While another instance holds the lease, wait at least this long between attempts (not
   * only until its TTL runs out) — for managers that send WAKE when the holder departs the
   * cluster or releases the lease. Absent: wake at each seen TTL's end.
   */
  standbyMs?: number;
}

/** Why a holder stopped holding. */
export type LeaseLostReason = "taken" | "expired" | "resigned";

/** Events the lease actor emits (listen with `actor.on(type, ...)`). */
export type LeaseEmitted =
  | { type: "acquired"; role: string; token: number }
  | { type: "lost"; role: string; token: number; reason: LeaseLostReason; why: string }
  | { type: "failed"; role: string; op: "acquire" | "renew" | "release"; error: string }
  /** The renewal timer fired: the instance's other held leases may renew with this one. */
  | { type: "renewDue"; role: string };

/**
 * Events the lease actor accepts. `RENEW_NOW`: another held lease of this instance renews
 * now; one in `held.waiting` renews with it (ignored in every other state).
 */
export type LeaseEvent = { type: "RESIGN" } | { type: "WAKE" } | { type: "RENEW_NOW" };

/** Context of {@linkcode leaseMachine}. */
export interface LeaseContext {
  /** Role name. */
  role: string;
  /** This instance's id. */
  instanceId: string;
  /** Lease time to live. */
  ttlMs: number;
  /** Pause between renewals. */
  renewMs: number;
  /** Pause between acquisition attempts. */
  retryMs: number;
  /** Pause before retrying a failed renewal. */
  renewRetryMs: number;
  /** Margin before expiry at which a holder stops acting. */
  safetyMarginMs: number;
  /** Time limit of one Redis call. */
  opTimeoutMs: number;
  /** Least wait while another instance holds the lease (null: until its TTL's end). */
  standbyMs: number | null;
  /** The last attempt followed a WAKE: the next waits for the seen TTL's end only. */
  woken: boolean;
  /** Our fencing token while held (kept after a loss for the record). */
  token: number | null;
  /** Injected-clock time the last successful acquire / renew was sent. */
  lastRenewedAt: number | null;
  /** Injected-clock time its answer arrived. */
  observedAt: number | null;
  /** The holder last seen in Redis. */
  holder: LeaseHolder | null;
  /** Time the seen holder's lease had left. */
  holderTtlMs: number | null;
  /** Acquisition attempts so far. */
  attempts: number;
  /** Successful renewals so far. */
  renewals: number;
  /** Last effect failure, as a sentence. */
  lastError: string | null;
  /** Why the lease was last lost. */
  lostReason: LeaseLostReason | null;
  /** One sentence saying why the machine is where it is. */
  why: string;
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Milliseconds after `lastRenewedAt` during which a holder may act. */
export function leaseValidityMs(context: Pick<LeaseContext, "ttlMs" | "safetyMarginMs">): number {
  return context.ttlMs - context.safetyMarginMs;
}

/** The lease statechart of one (role, instance). */
export const leaseMachine = setup({
  types: {
    context: {} as LeaseContext,
    input: {} as LeaseMachineInput,
    events: {} as LeaseEvent,
    emitted: {} as LeaseEmitted,
  },
  actors: {
    acquireLease: fromPromise<LeaseAcquireOutput, LeaseAcquireInput>(() =>
      Promise.reject(new Error("acquireLease is not provided"))
    ),
    renewLease: fromPromise<LeaseRenewOutput, LeaseRenewInput>(() =>
      Promise.reject(new Error("renewLease is not provided"))
    ),
    releaseLease: fromPromise<LeaseReleaseOutput, LeaseReleaseInput>(() =>
      Promise.reject(new Error("releaseLease is not provided"))
    ),
  },
  delays: {
    // The first attempt is immediate; while another instance holds the lease, wake up right
    // when its TTL runs out (not every retryMs before that: a standby's polls cost Redis
    // commands at every instance and told nothing new), so a dead holder is replaced within
    // its TTL; with no holder seen, every retryMs.
    // After a WAKE (the holder departed or released), or without WAKEs, exactly then; with
    // WAKEs wired, at least standbyMs apart.
    retryDelay: ({ context }) => {
      if (context.attempts === 0) return 0;
      const left = context.holderTtlMs;
      if (left === null || left < 0) return context.retryMs;
      if (context.woken || context.standbyMs === null) return left + 1;
      return Math.max(left + 1, context.standbyMs);
    },
    renewInterval: ({ context }) => context.renewMs,
    renewRetry: ({ context }) => context.renewRetryMs,
    opTimeout: ({ context }) => context.opTimeoutMs,
    // Counted from when the last successful renewal was *sent*; the state is entered when
    // its answer arrived, so the round trip is subtracted.
    leaseDeadline: ({ context }) =>
      Math.max(
        0,
        (context.lastRenewedAt ?? 0) + leaseValidityMs(context) -
          (context.observedAt ?? context.lastRenewedAt ?? 0),
      ),
  },
  guards: {
    leaseAcquired: (_, output: LeaseAcquireOutput) => output.acquired,
    leaseRenewed: (_, output: LeaseRenewOutput) => output.renewed,
  },
  actions: {
    notifyAcquired: emit(({ context }) => ({
      type: "acquired" as const,
      role: context.role,
      token: context.token ?? 0,
    })),
    notifyLost: emit(({ context }) => ({
      type: "lost" as const,
      role: context.role,
      token: context.token ?? 0,
      reason: context.lostReason ?? "expired",
      why: context.why,
    })),
    notifyRenewDue: emit(({ context }) => ({ type: "renewDue" as const, role: context.role })),
    notifyFailed: emit(({ context }, params: { op: "acquire" | "renew" | "release" }) => ({
      type: "failed" as const,
      role: context.role,
      op: params.op,
      error: context.lastError ?? "unknown error",
    })),
    countAttempt: assign({ attempts: ({ context }) => context.attempts + 1 }),
    recordAcquired: assign((_, output: LeaseAcquireOutput) => {
      if (!output.acquired) return {};
      return {
        token: output.token,
        lastRenewedAt: output.sentAt,
        observedAt: output.receivedAt,
        holder: null,
        holderTtlMs: null,
        lostReason: null,
        lastError: null,
        why: `acquired the lease with token ${output.token}`,
      };
    }),
    recordHolderSeen: assign((_, output: LeaseAcquireOutput) => {
      if (output.acquired) return {};
      const who = output.holder
        ? `${output.holder.instance} (token ${output.holder.token})`
        : "an unreadable value";
      return {
        holder: output.holder,
        holderTtlMs: output.holderTtlMs,
        lastError: null,
        why: `standing by: the lease is held by ${who}` +
          (output.holderTtlMs !== null ? ` for ${output.holderTtlMs} ms more` : ""),
      };
    }),
    recordAcquireError: assign((_, params: { error: unknown }) => ({
      holderTtlMs: null,
      lastError: errorText(params.error),
      why: `standing by: acquiring failed: ${errorText(params.error)}`,
    })),
    recordAcquireTimeout: assign(({ context }) => ({
      holderTtlMs: null,
      lastError: `no answer within ${context.opTimeoutMs} ms`,
      why: `standing by: acquiring got no answer within ${context.opTimeoutMs} ms`,
    })),
    recordRenewed: assign(({ context }, output: LeaseRenewOutput) => ({
      renewals: context.renewals + 1,
      lastRenewedAt: output.sentAt,
      observedAt: output.receivedAt,
      lastError: null,
      why: "renewed the lease",
    })),
    recordTaken: assign(({ context }, output: LeaseRenewOutput) => ({
      holder: output.holder,
      holderTtlMs: null,
      lostReason: output.holder ? "taken" as const : "expired" as const,
      why: output.holder
        ? `lost the lease: renewal found it held by ${output.holder.instance} (token ${output.holder.token})`
        : `lost the lease: it had expired in Redis before renewal (token ${context.token})`,
    })),
    recordRenewError: assign((_, params: { error: unknown }) => ({
      lastError: errorText(params.error),
      why: `still holding: renewal failed, retrying: ${errorText(params.error)}`,
    })),
    recordRenewTimeout: assign(({ context }) => ({
      lastError: `no answer within ${context.opTimeoutMs} ms`,
      why: `still holding: renewal got no answer within ${context.opTimeoutMs} ms, retrying`,
    })),
    recordExpired: assign(({ context }) => ({
      holderTtlMs: null,
      lostReason: "expired" as const,
      why:
        `lost the lease: not renewed within ${
          leaseValidityMs(context)
        } ms (ttl ${context.ttlMs} ms - margin ${context.safetyMarginMs} ms)` +
        (context.lastError ? `; last error: ${context.lastError}` : ""),
    })),
    recordResigned: assign({
      lostReason: "resigned" as const,
      why: "resigning: stopped acting before releasing the lease",
    }),
    recordReleased: assign((_, output: LeaseReleaseOutput) => ({
      why: output.released ? "released the lease" : "resigned (no lease of ours to release)",
    })),
    recordReleaseError: assign((_, params: { error: unknown }) => ({
      lastError: errorText(params.error),
      why: `resigned; releasing failed, the lease expires by itself: ${errorText(params.error)}`,
    })),
    recordReleaseTimeout: assign(({ context }) => ({
      lastError: `no answer within ${context.opTimeoutMs} ms`,
      why: `resigned; releasing got no answer within ${context.opTimeoutMs} ms, ` +
        "the lease expires by itself",
    })),
  },
}).createMachine({
  id: "lease",
  context: ({ input }) => {
    const renewMs = input.renewMs ?? Math.floor(input.ttlMs / 3);
    return {
      role: input.role,
      instanceId: input.instanceId,
      ttlMs: input.ttlMs,
      renewMs,
      retryMs: input.retryMs ?? Math.floor(input.ttlMs / 3),
      // Short enough that a holder gets several renewal attempts before its deadline.
      renewRetryMs: input.renewRetryMs ?? Math.max(1, Math.floor(renewMs / 4)),
      safetyMarginMs: input.safetyMarginMs ?? Math.floor(input.ttlMs / 5),
      opTimeoutMs: input.opTimeoutMs ?? Math.max(1, Math.floor(renewMs / 2)),
      standbyMs: input.standbyMs ?? null,
      woken: false,
      token: null,
      lastRenewedAt: null,
      observedAt: null,
      holder: null,
      holderTtlMs: null,
      attempts: 0,
      renewals: 0,
      lastError: null,
      lostReason: null,
      why: "starting the campaign",
    };
  },
  initial: "standby",
  states: {
    standby: {
      tags: ["routine"],
      after: { retryDelay: { target: "acquiring", actions: assign({ woken: false }) } },
      // WAKE: the holder released the lease or left the cluster; try now, and if its lease
      // still runs, again right at its end.
      on: {
        RESIGN: "resigning",
        WAKE: { target: "acquiring", actions: assign({ woken: true }) },
      },
    },
    acquiring: {
      tags: ["routine"],
      entry: "countAttempt",
      invoke: {
        src: "acquireLease",
        input: ({ context }) => ({
          role: context.role,
          instanceId: context.instanceId,
          ttlMs: context.ttlMs,
        }),
        onDone: [
          {
            guard: { type: "leaseAcquired", params: ({ event }) => event.output },
            target: "held",
            actions: [
              { type: "recordAcquired", params: ({ event }) => event.output },
              "notifyAcquired",
            ],
          },
          {
            target: "standby",
            actions: { type: "recordHolderSeen", params: ({ event }) => event.output },
          },
        ],
        onError: {
          target: "standby",
          actions: [
            { type: "recordAcquireError", params: ({ event }) => ({ error: event.error }) },
            { type: "notifyFailed", params: { op: "acquire" } },
          ],
        },
      },
      after: { opTimeout: { target: "standby", actions: "recordAcquireTimeout" } },
      // The acquire may already be on its way; resigning releases whatever we hold.
      on: { RESIGN: "resigning" },
    },
    held: {
      initial: "waiting",
      after: {
        leaseDeadline: { target: "standby", actions: ["recordExpired", "notifyLost"] },
      },
      on: { RESIGN: { target: "resigning", actions: ["recordResigned", "notifyLost"] } },
      states: {
        waiting: {
          tags: ["routine"],
          // Only the own timer says so: a renewal at RENEW_NOW must not pull the others again.
          after: { renewInterval: { target: "renewing", actions: "notifyRenewDue" } },
          on: { RENEW_NOW: "renewing" },
          // RENEW_NOW stands in for this state's own timer (actors/runtime/inspector.ts judges
          // its steps like the timer's: routine).
          meta: { timerCues: ["RENEW_NOW"] },
        },
        renewing: {
          tags: ["routine"],
          invoke: {
            src: "renewLease",
            input: ({ context }) => ({
              role: context.role,
              instanceId: context.instanceId,
              token: context.token ?? 0,
              ttlMs: context.ttlMs,
            }),
            onDone: [
              {
                guard: { type: "leaseRenewed", params: ({ event }) => event.output },
                // Re-entering `held` restarts its deadline from this renewal.
                target: "#lease.held",
                reenter: true,
                actions: { type: "recordRenewed", params: ({ event }) => event.output },
              },
              {
                target: "#lease.standby",
                actions: [
                  { type: "recordTaken", params: ({ event }) => event.output },
                  "notifyLost",
                ],
              },
            ],
            onError: {
              target: "retrying",
              actions: [
                { type: "recordRenewError", params: ({ event }) => ({ error: event.error }) },
                { type: "notifyFailed", params: { op: "renew" } },
              ],
            },
          },
          after: { opTimeout: { target: "retrying", actions: "recordRenewTimeout" } },
        },
        retrying: {
          after: { renewRetry: "renewing" },
        },
      },
    },
    resigning: {
      invoke: {
        src: "releaseLease",
        input: ({ context }) => ({
          role: context.role,
          instanceId: context.instanceId,
          token: context.lostReason === "resigned" ? context.token : null,
        }),
        onDone: {
          target: "released",
          actions: { type: "recordReleased", params: ({ event }) => event.output },
        },
        onError: {
          target: "released",
          actions: [
            { type: "recordReleaseError", params: ({ event }) => ({ error: event.error }) },
            { type: "notifyFailed", params: { op: "release" } },
          ],
        },
      },
      after: { opTimeout: { target: "released", actions: "recordReleaseTimeout" } },
    },
    released: { type: "final" },
  },
});
