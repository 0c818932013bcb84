/**
 * The sessions concern's long-lived statechart: a scheduled cleanup loop, a degraded mode
 * while PostgreSQL or Redis fails, and the login-attempt actors it holds by id.
 *
 * - `running` → every `cleanupInterval` → `cleaning` (effect `cleanup`: expired and
 *   long-revoked sessions, old MFA attempts) → `running`.
 * - A failed cleanup, or a `DEPENDENCY_FAILED` report from the request path (validation
 *   fell back from Redis to PostgreSQL, a query failed), moves to `degraded`; after a
 *   backoff (`probeDelay`, doubling up to `probeMaxMs`) `probing` runs the `probe` effect
 *   and returns to `running` when it succeeds. Reports are news only in `running`: the
 *   request path may report every failure it sees, the chart decides what they change.
 * - `LOGIN.START` spawns one `login` actor (machines/login.ts) with id and system id
 *   `login:<attemptId>`, up to `maxLogins` at once; the actor is stopped and forgotten when
 *   it reaches a final state (including its own timeouts) or crashes, or when another
 *   instance reports the attempt finished (`LOGIN.FORGET`). Each attempt's lifecycle
 *   (deadline, failures, writes) lives in its own actor's context.
 * - The `feed` actor (invoked for the machine's whole life) holds the bus subscriptions:
 *   revocations (`SESSIONS.REVOKED`) and attempts finished elsewhere (`LOGIN.FORGET`). The
 *   HTTP layer sends `LOGIN.START` to this actor directly, found through the runtime.
 *
 * Every state change sets `reason`, one sentence saying why. The context is data only.
 * @module
 */
import { assign, enqueueActions, fromCallback, fromPromise, setup } from "xstate";
import { type LoginInput, loginMachine, type LoginOutput } from "./login.ts";

/** Input of the session supervisor. */
export interface SessionSupervisorInput {
  /** Time between cleanups in ms; 60 s. */
  cleanupIntervalMs?: number;
  /** First probe delay when degraded, ms; 1 s. */
  probeBaseMs?: number;
  /** Longest probe delay, ms; 30 s. */
  probeMaxMs?: number;
  /** Login attempts held at once; 10,000. */
  maxLogins?: number;
}

/** What one cleanup removed. */
export interface CleanupReport {
  /** Sessions deleted. */
  sessions: number;
  /** MFA attempts deleted. */
  attempts: number;
}

/** Counters of the supervisor. */
export interface SessionSupervisorStats {
  cleanups: number;
  sessionsRemoved: number;
  attemptsRemoved: number;
  loginsStarted: number;
  loginsResumed: number;
  loginsRefused: number;
  loginsCrashed: number;
  /** Finished attempts by outcome. */
  loginsFinished: Record<string, number>;
  revocationsSeen: number;
  dependencyFailures: number;
  /** Journal entries (events, challenge records) finished attempts could not write. */
  journalFailures: number;
}

/** Context of the session supervisor. */
export interface SessionSupervisorContext {
  cleanupIntervalMs: number;
  probeBaseMs: number;
  probeMaxMs: number;
  maxLogins: number;
  /** Attempts held, by attempt id. */
  logins: Record<string, { resumed: boolean }>;
  /** Consecutive failures (cleanup, probe, reported) since the last success. */
  failures: number;
  lastError: string | null;
  stats: SessionSupervisorStats;
  /** Why the supervisor is in its current state, one sentence. */
  reason: string;
}

/** Events of the session supervisor. */
export type SessionSupervisorEvent =
  | { type: "LOGIN.START"; attemptId: string; input: LoginInput }
  | { type: "LOGIN.FORGET"; attemptId: string }
  | { type: "SESSIONS.REVOKED"; count: number }
  | { type: "CLEANUP_NOW" }
  | { type: "DEPENDENCY_FAILED"; what: string; error: string }
  | { type: "STOP" }
  | { type: `xstate.done.actor.${string}`; output?: unknown; actorId?: string }
  | { type: `xstate.error.actor.${string}`; error?: unknown; actorId?: string };

/** The actor / system id of a login attempt's actor. */
export function loginActorId(attemptId: string): string {
  return `login:${attemptId}`;
}

function actorIdOf(event: { type: string; actorId?: string }): string {
  return event.actorId ?? event.type.replace(/^xstate\.(done|error)\.actor\./, "");
}

function attemptOf(event: { type: string; actorId?: string }): string | null {
  const id = actorIdOf(event);
  return id.startsWith("login:") ? id.slice("login:".length) : null;
}

function describe(error: unknown): string {
  if (error instanceof Error) return error.message;
  return typeof error === "string" ? error : JSON.stringify(error) ?? String(error);
}

/** Delay before the next probe after `failures` consecutive failures. */
export function probeDelay(failures: number, options: { baseMs: number; maxMs: number }): number {
  return Math.min(options.baseMs * 2 ** Math.max(0, failures - 1), options.maxMs);
}

const supervisor = setup({
  types: {
    context: {} as SessionSupervisorContext,
    input: {} as SessionSupervisorInput,
    events: {} as SessionSupervisorEvent,
  },
  actors: {
    /** One login attempt. */
    login: loginMachine,
    /** Deletes expired sessions and old MFA attempts. */
    cleanup: fromPromise<CleanupReport>(() => Promise.resolve({ sessions: 0, attempts: 0 })),
    /** Checks that PostgreSQL (and Redis, when configured) answer. */
    probe: fromPromise<void>(() => Promise.resolve()),
    /** Bus subscriptions (revocations, attempts finished elsewhere); sends events back. */
    feed: fromCallback(() => () => {}),
  },
  guards: {
    /** Room for another login attempt, and not already held. */
    canStartLogin: ({ context, event }) => {
      const e = event as { attemptId: string };
      return !(e.attemptId in context.logins) &&
        Object.keys(context.logins).length < context.maxLogins;
    },
    /** The event is about a login attempt this supervisor holds. */
    isHeldLogin: ({ context, event }) => {
      const attempt = attemptOf(event as { type: string; actorId?: string });
      return attempt !== null && attempt in context.logins;
    },
  },
  actions: {
    /** Spawns the login actor for an attempt. */
    startLogin: enqueueActions(({ context, event, enqueue }) => {
      const e = event as { attemptId: string; input: LoginInput };
      const id = loginActorId(e.attemptId);
      enqueue.spawnChild("login", { id, systemId: id, input: e.input });
      const resumed = e.input.resume !== undefined;
      enqueue.assign({
        logins: { ...context.logins, [e.attemptId]: { resumed } },
        stats: {
          ...context.stats,
          loginsStarted: context.stats.loginsStarted + (resumed ? 0 : 1),
          loginsResumed: context.stats.loginsResumed + (resumed ? 1 : 0),
        },
      });
    }),
    /** Counts a login refused for lack of room. */
    refuseLogin: assign(({ context }) => ({
      stats: { ...context.stats, loginsRefused: context.stats.loginsRefused + 1 },
    })),
    /** Stops and forgets a login actor that finished, crashed, or finished elsewhere. */
    dropLogin: enqueueActions(({ context, event, enqueue }) => {
      const e = event as { type: string; actorId?: string; attemptId?: string; output?: unknown };
      const attempt = e.type === "LOGIN.FORGET" ? e.attemptId! : attemptOf(e);
      if (attempt === null || !(attempt in context.logins)) return;
      enqueue.stopChild(loginActorId(attempt));
      const logins = { ...context.logins };
      delete logins[attempt];
      const stats = { ...context.stats };
      if (e.type.startsWith("xstate.done.actor.")) {
        const output = e.output as LoginOutput | undefined;
        const outcome = output?.outcome ?? "failed";
        stats.loginsFinished = {
          ...stats.loginsFinished,
          [outcome]: (stats.loginsFinished[outcome] ?? 0) + 1,
        };
        stats.journalFailures += output?.journalFailures ?? 0;
      } else if (e.type.startsWith("xstate.error.actor.")) {
        stats.loginsCrashed += 1;
      }
      enqueue.assign({ logins, stats });
    }),
    /** Counts revocations seen on the bus. */
    countRevocations: assign(({ context, event }) => ({
      stats: {
        ...context.stats,
        revocationsSeen: context.stats.revocationsSeen + (event as { count: number }).count,
      },
    })),
    /** Records a finished cleanup. */
    cleaned: assign(({ context, event }) => {
      const r = (event as unknown as { output: CleanupReport }).output;
      return {
        failures: 0,
        lastError: null,
        stats: {
          ...context.stats,
          cleanups: context.stats.cleanups + 1,
          sessionsRemoved: context.stats.sessionsRemoved + r.sessions,
          attemptsRemoved: context.stats.attemptsRemoved + r.attempts,
        },
        reason: `cleanup removed ${r.sessions} sessions and ${r.attempts} MFA attempts`,
      };
    }),
    /** Records a failure (cleanup, probe, or reported by the request path). */
    failed: assign(({ context, event }) => {
      const e = event as { type: string; error?: unknown; what?: string };
      const error = e.type === "DEPENDENCY_FAILED"
        ? `${e.what}: ${describe(e.error)}`
        : describe(e.error);
      const failures = context.failures + 1;
      return {
        failures,
        lastError: error,
        stats: { ...context.stats, dependencyFailures: context.stats.dependencyFailures + 1 },
        reason: `degraded because ${error}; probing again in ${
          probeDelay(failures, { baseMs: context.probeBaseMs, maxMs: context.probeMaxMs })
        } ms`,
      };
    }),
    /** Notes the recovery. */
    recovered: assign(({ context }) => ({
      failures: 0,
      lastError: null,
      reason: `recovered after ${context.failures} failed checks`,
    })),
    /** Notes the stop. */
    stopping: assign({ reason: "stopped on request" }),
  },
  delays: {
    /** Time between cleanups. */
    cleanupInterval: ({ context }) => context.cleanupIntervalMs,
    /** Backoff before the next probe. */
    probeDelay: ({ context }) =>
      probeDelay(context.failures, { baseMs: context.probeBaseMs, maxMs: context.probeMaxMs }),
  },
});

/** Serving, and cleaning up on schedule. */
const runningState = supervisor.createStateConfig({
  after: { cleanupInterval: "cleaning" },
  on: {
    CLEANUP_NOW: "cleaning",
    DEPENDENCY_FAILED: { target: "degraded", actions: "failed" },
  },
});

/** One cleanup round. */
const cleaningState = supervisor.createStateConfig({
  invoke: {
    src: "cleanup",
    onDone: { target: "running", actions: "cleaned" },
    onError: { target: "degraded", actions: "failed" },
  },
});

/** A dependency failed: wait out the backoff before probing. */
const degradedState = supervisor.createStateConfig({
  after: { probeDelay: "probing" },
  on: { CLEANUP_NOW: "cleaning" },
});

/** Checking whether PostgreSQL (and Redis) answer again. */
const probingState = supervisor.createStateConfig({
  invoke: {
    src: "probe",
    onDone: { target: "running", actions: "recovered" },
    onError: { target: "degraded", actions: "failed" },
  },
});

/** The session supervisor statechart (placeholder effects; see actors/sessions/). */
export const sessionSupervisorMachine = supervisor.createMachine({
  id: "session_supervisor",
  context: ({ input }) => ({
    cleanupIntervalMs: input.cleanupIntervalMs ?? 60_000,
    probeBaseMs: input.probeBaseMs ?? 1_000,
    probeMaxMs: input.probeMaxMs ?? 30_000,
    maxLogins: input.maxLogins ?? 10_000,
    logins: {},
    failures: 0,
    lastError: null,
    stats: {
      cleanups: 0,
      sessionsRemoved: 0,
      attemptsRemoved: 0,
      loginsStarted: 0,
      loginsResumed: 0,
      loginsRefused: 0,
      loginsCrashed: 0,
      loginsFinished: {},
      revocationsSeen: 0,
      dependencyFailures: 0,
      journalFailures: 0,
    },
    reason: "started",
  }),
  invoke: { id: "feed", src: "feed" },
  initial: "running",
  // Login attempts are held whatever the maintenance state: a degraded store fails the
  // attempts' own effects, which end them with a reason.
  on: {
    "LOGIN.START": [
      { guard: "canStartLogin", actions: "startLogin" },
      { actions: "refuseLogin" },
    ],
    "LOGIN.FORGET": { actions: "dropLogin" },
    "SESSIONS.REVOKED": { actions: "countRevocations" },
    "xstate.done.actor.*": { guard: "isHeldLogin", actions: "dropLogin" },
    "xstate.error.actor.*": { guard: "isHeldLogin", actions: "dropLogin" },
    STOP: { target: ".stopped", actions: "stopping" },
  },
  states: {
    running: runningState,
    cleaning: cleaningState,
    degraded: degradedState,
    probing: probingState,
    stopped: { type: "final" },
  },
});
