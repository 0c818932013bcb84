/**
 * Model of the `lease` chart: one instance ("a") campaigning against a fake Redis that
 * another instance ("b") holds at first and may grab whenever the lease is free.
 *
 * Invariants: held only before (sent time of the last successful acquire / renew) + ttl -
 * margin; held only while Redis agrees the lease is ours with our token; fencing tokens
 * announced by `acquired` strictly increase; `renewDue` (which makes the manager send
 * `RENEW_NOW` to the instance's other leases) only when the own timer starts a renewal, never
 * at a `RENEW_NOW` (no loop). `RENEW_NOW` (another lease of the instance renews) is offered in
 * every state.
 * @module
 */
import type { LeaseMachineInput } from "../../machines/lease.ts";
import { leaseMachine } from "../../machines/lease.ts";
import type { Answer, Call, ChartModel, Run } from "./_walk.ts";

const TTL = 300; // renew 100, retry 100, renew retry 25, margin 60, op timeout 50
const MARGIN = 60;

interface Redis {
  holder: string | null;
  token: number;
  expiresAt: number;
}

/** The lease model's world: fake Redis plus what the monitors remember. */
export interface LeaseWorld {
  redis: Redis;
  /** Sent time of a's last successful acquire / renew. */
  lastOkSentAt: number | null;
  /** Highest token ever announced. */
  lastAnnounced: number;
}

function live(redis: Redis, now: number): Redis {
  return redis.holder !== null && redis.expiresAt <= now
    ? { holder: null, token: redis.token, expiresAt: 0 }
    : redis;
}

function grant(w: LeaseWorld, who: string, now: number): number {
  w.redis = { holder: who, token: w.redis.token + 1, expiresAt: now + TTL };
  return w.redis.token;
}

function acquire(race: boolean) {
  return (call: Call, run: Run<LeaseWorld>): Answer => {
    const now = run.clock.now();
    const w = run.world;
    w.redis = live(w.redis, now);
    if (w.redis.holder === null && race) grant(w, "b", now); // b got there first
    if (w.redis.holder === null) {
      const token = grant(w, "a", now);
      w.lastOkSentAt = call.startedAt;
      return { output: { acquired: true, token, sentAt: call.startedAt, receivedAt: now } };
    }
    return {
      output: {
        acquired: false,
        holder: { instance: w.redis.holder, token: w.redis.token },
        holderTtlMs: w.redis.expiresAt - now,
        sentAt: call.startedAt,
        receivedAt: now,
      },
    };
  };
}

function renew(race: boolean) {
  return (call: Call, run: Run<LeaseWorld>): Answer => {
    const now = run.clock.now();
    const w = run.world;
    const input = call.input as { token: number };
    w.redis = live(w.redis, now);
    if (w.redis.holder === null && race) grant(w, "b", now);
    const renewed = w.redis.holder === "a" && w.redis.token === input.token;
    if (renewed) {
      w.redis.expiresAt = now + TTL;
      w.lastOkSentAt = call.startedAt;
    }
    return {
      output: {
        renewed,
        holder: renewed || w.redis.holder === null
          ? null
          : { instance: w.redis.holder, token: w.redis.token },
        sentAt: call.startedAt,
        receivedAt: now,
      },
    };
  };
}

const failure = (): Answer => ({ error: new Error("connect ECONNREFUSED") });

/** The lease chart's model. */
export const leaseModel: ChartModel<LeaseWorld> = {
  name: "lease",
  maxDepth: 30,
  world: () => ({
    redis: { holder: "b", token: 4, expiresAt: 150 },
    lastOkSentAt: null,
    lastAnnounced: 0,
  }),
  build(run) {
    const input: LeaseMachineInput = { role: "backup-scheduler", instanceId: "a", ttlMs: TTL };
    return {
      logic: leaseMachine.provide({
        actors: {
          acquireLease: run.effect("acquireLease"),
          renewLease: run.effect("renewLease"),
          releaseLease: run.effect("releaseLease"),
        },
      }),
      input,
    };
  },
  events: (snapshot) =>
    snapshot.matches("resigning")
      ? [{ type: "RENEW_NOW" }]
      : [{ type: "RESIGN" }, { type: "RENEW_NOW" }],
  effects: {
    acquireLease: { answer: acquire(false), lost_race: acquire(true), error: failure },
    renewLease: { answer: renew(false), taken_after_expiry: renew(true), error: failure },
    releaseLease: {
      answer: (call, run) => {
        const input = call.input as { token: number | null };
        const r = run.world.redis;
        const released = r.holder === "a" && (input.token === null || input.token === r.token);
        if (released) run.world.redis = { holder: null, token: r.token, expiresAt: 0 };
        return { output: { released } };
      },
      error: failure,
    },
  },
  outcomes(call, world) {
    // Racing only matters when the lease is free (or expired) in Redis at that moment.
    const names = Object.keys(leaseModel.effects[call.src]);
    return world.redis.holder === null
      ? names
      : names.filter((n) => n === "answer" || n === "error");
  },
  key(snapshot, w, now) {
    const c = snapshot.context;
    const r = live(w.redis, now);
    const rel = (t: number | null) => (t === null ? null : t - now);
    return [
      c.attempts > 0,
      rel(c.lastRenewedAt),
      rel(c.observedAt),
      c.holderTtlMs,
      c.lostReason,
      c.holder?.instance ?? null,
      r.holder,
      r.holder === "a" && r.token === c.token,
      r.holder ? r.expiresAt - now : null,
      rel(w.lastOkSentAt),
    ];
  },
  invariants: {
    "held only before its deadline minus margin": ({ snapshot, now, world }) => {
      if (!snapshot.matches("held")) return null;
      if (world.lastOkSentAt === null) return `held at ${now} without any successful acquire`;
      const deadline = world.lastOkSentAt + TTL - MARGIN;
      return now < deadline
        ? null
        : `held at ${now}, past ${deadline} (last successful request sent at ${world.lastOkSentAt} + ttl ${TTL} - margin ${MARGIN})`;
    },
    "held only while Redis says it is ours": ({ snapshot, now, world }) => {
      if (!snapshot.matches("held")) return null;
      const r = live(world.redis, now);
      return r.holder === "a" && r.token === snapshot.context.token
        ? null
        : `held with token ${snapshot.context.token} at ${now} while Redis has ${r.holder} (token ${r.token})`;
    },
    "renewDue only when the own timer starts a renewal": ({ snapshot, prev, move, emitted }) => {
      const due = emitted.filter((e) => e.type === "renewDue").length;
      if (due === 0) return null;
      const byTimer = move?.type === "tick" && prev?.matches({ held: "waiting" }) &&
        snapshot.matches({ held: "renewing" });
      return due === 1 && byTimer
        ? null
        : `renewDue x${due} on ${JSON.stringify(move)} from ${JSON.stringify(prev?.value)}`;
    },
    "fencing tokens announced strictly increase": ({ emitted, world }) => {
      for (const e of emitted) {
        if (e.type !== "acquired") continue;
        const token = (e as unknown as { token: number }).token;
        if (token <= world.lastAnnounced) {
          return `announced token ${token} after ${world.lastAnnounced}`;
        }
        world.lastAnnounced = token;
      }
      return null;
    },
  },
};
