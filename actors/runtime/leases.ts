/**
 * Cluster-singleton leases on Redis: one holder per role at a time, each holder with a
 * fencing token larger than every token issued before it for that role.
 *
 * Guarantees (each operation is one Lua script of store/redis_leases.ts, so atomic on the
 * Redis master):
 * - acquire: compare-and-create. Only when the lease key is absent is a new token issued
 *   and the lease stored as `{holder, token}` with a TTL.
 * - renew / release: compare-and-set. The TTL is reset (or the key deleted) only when the
 *   stored holder *and* token are the caller's.
 * - fencing: an operation carrying a token is accepted only while that token is the newest
 *   issued for the role and its lease is still held; {@linkcode LeaseManager.fencedSet}
 *   checks and writes in the same script.
 *
 * Tokens are `max(previous + 1, Redis TIME in ms)`: they still only grow when the
 * fence counter is lost (a Redis restart without persistence, a failover to a replica
 * that missed the last INCR), as long as the Redis servers' clocks do not step back.
 *
 * Renewals: one instance's held leases renew together. When one lease's renewal timer fires
 * (its chart emits `renewDue`), the manager sends `RENEW_NOW` to its other campaigns, and
 * those waiting for their own timers renew at once; every renewal asked for in one microtask
 * run goes out as one script call (per role on a Redis Cluster, where each role has its own
 * slot), so a holder of several roles makes one call and one wake-up per renewal period.
 *
 * The per-(role, instance) statechart is machines/lease.ts; this module supplies its
 * effects. A Redis failure in an effect becomes a transition of that machine, never an
 * exception out of the actor.
 * @module
 */
import { type Actor, createActor, fromPromise, type InspectionEvent } from "xstate";
import { z } from "zod";
import { describeError, RuntimeError } from "../../lib/errors.ts";
import { type Logger, silentLogger } from "../../lib/log.ts";
import type { MessageBus } from "../../store/bus.ts";
import { isCluster, type Keyspace, type RedisClient } from "../../store/redis.ts";
import { createLeaseStore, type FenceStatus, leaseTag } from "../../store/redis_leases.ts";
import {
  type LeaseAcquireInput,
  type LeaseAcquireOutput,
  type LeaseLostReason,
  leaseMachine,
  type LeaseReleaseInput,
  type LeaseReleaseOutput,
  type LeaseRenewInput,
  type LeaseRenewOutput,
  leaseValidityMs,
} from "../../machines/lease.ts";

/** A role and a fencing token: what a fenced operation must carry. */
export interface LeaseFence {
  /** Role name. */
  role: string;
  /** Token the operation was issued under. */
  token: number;
}

/** The current holder of a role as stored in Redis. */
export interface LeaseHolderInfo {
  /** Instance id of the holder. */
  instance: string;
  /** Its fencing token. */
  token: number;
  /** Time its lease has left. */
  ttlMs: number;
}

/** Options of {@linkcode LeaseManager.campaign}. */
export interface CampaignOptions {
  /** Lease time to live (default 5000 ms): a dead holder is replaced within about this. */
  ttlMs?: number;
  /** Pause between renewals (default ttl / 3). */
  renewMs?: number;
  /** Pause between acquisition attempts while standing by (default ttl / 3). */
  retryMs?: number;
  /** How long before expiry a holder stops considering itself holding (default ttl / 5). */
  safetyMarginMs?: number;
  /** Called when the role is acquired; start acting with this token. */
  onAcquired?(token: number): void;
  /** Called when the role is lost; stop acting at once. */
  onLost?(reason: LeaseLostReason, why: string): void;
}

/** A running campaign for one role. */
export interface LeaseCampaign {
  /** Role name. */
  readonly role: string;
  /** The running lease actor (machines/lease.ts with Redis effects). */
  readonly actor: Actor<typeof leaseMachine>;
  /** True while this instance holds the role and its lease is safely within ttl - margin. */
  held(): boolean;
  /** The token while held, else null. */
  token(): number | null;
  /** `{role, token}` while held (for fenced operations), else null. */
  fence(): LeaseFence | null;
  /** Stops acting, releases the lease and ends the campaign; never throws. */
  resign(): Promise<void>;
  /** Ends the campaign without releasing (a held lease then expires by its TTL). */
  stop(): void;
}

/** Options of {@linkcode LeaseManager.fencedSet}. */
export interface FencedSetOptions {
  /** Target key, built with the keyspace and holding the role's hash tag (`leaseTag(role)`). */
  key: string;
  /** Value to store. */
  value: string;
  /** Optional expiry of the written key. */
  pxMs?: number;
}

/** Leases of one instance: campaigns, holder lookup and fencing checks. */
export interface LeaseManager {
  /** This instance's id. */
  readonly instanceId: string;
  /** Starts campaigning for `role`; one campaign per role per manager. */
  campaign(role: string, options?: CampaignOptions): LeaseCampaign;
  /** The current holder of `role`, or null when nobody holds it. */
  holder(role: string): Promise<LeaseHolderInfo | null>;
  /** True only when `token` is the token of the lease currently held for `role`; REDIS_UNAVAILABLE when Redis cannot say. */
  checkToken(role: string, token: number): Promise<boolean>;
  /** Runs `fn` only when the fence's token is current; LEASE_STALE_TOKEN / LEASE_NOT_HELD otherwise. */
  fenced<T>(fence: LeaseFence, fn: (fence: LeaseFence) => T | Promise<T>): Promise<T>;
  /** Writes `key` only when the fence's token is current, checked in the same script. */
  fencedSet(fence: LeaseFence, options: FencedSetOptions): Promise<void>;
  /**
   * Tells every standby campaign to try now (an instance left the cluster: it may have held
   * a lease); one whose holder's lease still runs tries again right at its end.
   */
  wake(): void;
  /** Resigns every campaign (releasing held leases); the Redis client stays open. */
  close(): Promise<void>;
}

/** Dependencies of {@linkcode createLeaseManager}. */
export interface LeaseManagerDeps {
  /** Redis command connection. */
  redis: RedisClient;
  /** Key namer; leases live at `lease:{<role>}` and `lease:{<role>}:fence` (one slot per role). */
  keyspace: Keyspace;
  /** This instance's id (must be unique in the cluster). */
  instanceId: string;
  /** Logger. */
  log?: Logger;
  /** Clock of the lease measurements; monotonic by default so wall-clock steps do no harm. */
  now?: () => number;
  /** XState inspection hook, so lease actors show up in /actors and the console. */
  inspect?: (event: InspectionEvent) => void;
  /**
   * Carries release notices (channel `leases`): a standby waits for the holder's TTL to run
   * out, and a notice wakes it when the holder released early (a graceful shutdown).
   */
  bus?: MessageBus;
  /**
   * With {@linkcode LeaseManager.wake} wired to membership departures (and `bus` for
   * releases), standbys poll a held lease only every `standbyTtls` TTLs (a backstop) instead
   * of at each seen TTL's end; absent: at each TTL's end.
   */
  standbyTtls?: number;
}

/** The bus channel of lease release notices. */
export const LEASES_CHANNEL = "leases";

const RoleName = z.string().regex(
  /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/,
  "letters, digits, '.', '_' or '-', at most 100",
);

const CampaignTimings = z.object({
  ttlMs: z.number().int().min(30).max(3_600_000),
  renewMs: z.number().int().positive().optional(),
  retryMs: z.number().int().positive().optional(),
  safetyMarginMs: z.number().int().nonnegative().optional(),
});

/** Creates the lease manager of one instance. */
export function createLeaseManager(deps: LeaseManagerDeps): LeaseManager {
  const { redis, keyspace, instanceId } = deps;
  const log = deps.log ?? silentLogger;
  const now = deps.now ?? (() => performance.now());
  const campaigns = new Map<string, LeaseCampaign>();
  const store = createLeaseStore(redis, keyspace);

  function unavailable(action: string, role: string, err: unknown): RuntimeError {
    if (err instanceof RuntimeError) return err;
    return new RuntimeError(
      "REDIS_UNAVAILABLE",
      `Cannot ${action} the lease of role ${role}: ${describeError(err)}`,
      { cause: err },
    );
  }

  function checkRole(role: string): void {
    const parsed = RoleName.safeParse(role);
    if (!parsed.success) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Invalid lease role ${JSON.stringify(role)}: ${parsed.error.issues[0]?.message}`,
      );
    }
  }

  async function acquire(input: LeaseAcquireInput): Promise<LeaseAcquireOutput> {
    const sentAt = now();
    try {
      const reply = await store.acquire(input.role, input.instanceId, input.ttlMs);
      return { ...reply, sentAt, receivedAt: now() };
    } catch (err) {
      throw unavailable("acquire", input.role, err);
    }
  }

  /** A renewal waiting for the end of the microtask run it was asked for in. */
  interface QueuedRenewal {
    input: LeaseRenewInput;
    resolve(output: LeaseRenewOutput): void;
    reject(err: RuntimeError): void;
  }
  let queued: QueuedRenewal[] = [];

  /** Renews with every other renewal asked for in the same microtask run (one script call). */
  function renew(input: LeaseRenewInput): Promise<LeaseRenewOutput> {
    return new Promise((resolve, reject) => {
      if (queued.length === 0) queueMicrotask(sendRenewals);
      queued.push({ input, resolve, reject });
    });
  }

  function sendRenewals(): void {
    const batch = queued;
    queued = [];
    // One script per holder and TTL; on a Redis Cluster its keys must share a slot, and each
    // role has its own (`{role}`), so one script per role there.
    const perSlot = isCluster(redis);
    const groups = new Map<string, QueuedRenewal[]>();
    for (const r of batch) {
      const key = JSON.stringify([r.input.instanceId, r.input.ttlMs, perSlot ? r.input.role : ""]);
      const group = groups.get(key);
      if (group) group.push(r);
      else groups.set(key, [r]);
    }
    // Measured from before the send (machines/lease.ts: a holder counts from when it sent).
    const sentAt = now();
    for (const group of groups.values()) void sendRenewal(group, sentAt);
  }

  async function sendRenewal(group: QueuedRenewal[], sentAt: number): Promise<void> {
    const { instanceId: holder, ttlMs } = group[0].input;
    try {
      const leases = group.map(({ input }) => ({ role: input.role, token: input.token }));
      const replies = await store.renewMany(holder, ttlMs, leases);
      const receivedAt = now();
      group.forEach((r, i) => r.resolve({ ...replies[i], sentAt, receivedAt }));
    } catch (err) {
      for (const r of group) r.reject(unavailable("renew", r.input.role, err));
    }
  }

  async function release(input: LeaseReleaseInput): Promise<LeaseReleaseOutput> {
    let released: boolean;
    try {
      released = await store.release(input.role, input.instanceId, input.token ?? null);
    } catch (err) {
      throw unavailable("release", input.role, err);
    }
    if (released && deps.bus) {
      await deps.bus.publish(LEASES_CHANNEL, JSON.stringify({ role: input.role, by: instanceId }))
        .catch((err) => log.debug("lease release notice not sent", { error: describeError(err) }));
    }
    return { released };
  }

  /** Wakes this instance's standby campaign of a role another instance released. */
  function onNotice(raw: string): void {
    let notice: { role?: unknown; by?: unknown };
    try {
      notice = JSON.parse(raw);
    } catch {
      return;
    }
    if (typeof notice?.role !== "string" || notice.by === instanceId) return;
    const c = campaigns.get(notice.role);
    if (c && c.actor.getSnapshot().status === "active") c.actor.send({ type: "WAKE" });
  }
  let unsubscribe: Promise<(() => Promise<void>) | null> | null = null;
  function listen(): void {
    if (!deps.bus || unsubscribe) return;
    unsubscribe = deps.bus.subscribe(LEASES_CHANNEL, onNotice).catch((err) => {
      log.warn("lease release notices unavailable; standbys wait for TTLs", {
        error: describeError(err),
      });
      return null;
    });
  }

  const logic = leaseMachine.provide({
    actors: {
      acquireLease: fromPromise<LeaseAcquireOutput, LeaseAcquireInput>(({ input }) =>
        acquire(input)
      ),
      renewLease: fromPromise<LeaseRenewOutput, LeaseRenewInput>(({ input }) => renew(input)),
      releaseLease: fromPromise<LeaseReleaseOutput, LeaseReleaseInput>(({ input }) =>
        release(input)
      ),
    },
  });

  /** Runs a user callback; its exceptions are logged, never thrown into the actor. */
  function callback(role: string, name: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      log.error("lease callback threw", { role, callback: name, error: describeError(err) });
    }
  }

  function campaign(role: string, options: CampaignOptions = {}): LeaseCampaign {
    checkRole(role);
    if (campaigns.has(role)) {
      throw new RuntimeError(
        "CONFLICT",
        `Cannot campaign for role ${role}: instance ${instanceId} already campaigns for it`,
      );
    }
    const timings = CampaignTimings.safeParse({
      ttlMs: options.ttlMs ?? 5000,
      renewMs: options.renewMs,
      retryMs: options.retryMs,
      safetyMarginMs: options.safetyMarginMs,
    });
    if (!timings.success) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Invalid lease timings for role ${role}: ${z.prettifyError(timings.error)}`,
      );
    }
    const actor = createActor(logic, {
      id: `lease:${role}`,
      input: {
        role,
        instanceId,
        ...timings.data,
        ...(deps.standbyTtls
          ? { standbyMs: Math.round(deps.standbyTtls * timings.data.ttlMs) }
          : {}),
      },
      ...(deps.inspect ? { inspect: deps.inspect } : {}),
    });
    const ctx = actor.getSnapshot().context;
    if (ctx.renewMs >= leaseValidityMs(ctx)) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Invalid lease timings for role ${role}: renewMs ${ctx.renewMs} must be below ` +
          `ttlMs - safetyMarginMs (${leaseValidityMs(ctx)})`,
      );
    }

    let lastFailure = "";
    actor.on("acquired", (e) => {
      lastFailure = "";
      log.info("lease acquired", { role, instance: instanceId, token: e.token });
      callback(role, "onAcquired", () => options.onAcquired?.(e.token));
    });
    actor.on("lost", (e) => {
      log.warn("lease lost", {
        role,
        instance: instanceId,
        token: e.token,
        reason: e.reason,
        why: e.why,
      });
      callback(role, "onLost", () => options.onLost?.(e.reason, e.why));
    });
    // This lease renews on its own timer: the instance's other held leases renew with it. Sent
    // synchronously, so their renewals are asked for in this microtask run and share its call;
    // a renewal at RENEW_NOW emits no renewDue, so this does not loop.
    actor.on("renewDue", () => {
      for (const other of campaigns.values()) {
        if (other !== handle && other.actor.getSnapshot().status === "active") {
          other.actor.send({ type: "RENEW_NOW" });
        }
      }
    });
    actor.on("failed", (e) => {
      // One warning per streak of identical failures; an outage would otherwise log every retry.
      const level = e.error === lastFailure ? "debug" : "warn";
      lastFailure = e.error;
      log[level]("lease operation failed", { role, op: e.op, error: e.error });
    });
    // An error observer keeps an unexpected actor error from becoming an unhandled exception.
    actor.subscribe({
      error: (err) => log.error("lease actor failed", { role, error: describeError(err) }),
    });

    function held(): boolean {
      const snap = actor.getSnapshot();
      if (snap.status !== "active" || !snap.matches("held")) return false;
      const { lastRenewedAt } = snap.context;
      // Belt and braces: even if the deadline timer fires late, stop claiming the role.
      return lastRenewedAt !== null && now() < lastRenewedAt + leaseValidityMs(snap.context);
    }

    function token(): number | null {
      return held() ? actor.getSnapshot().context.token : null;
    }

    function stop(): void {
      actor.stop();
      if (campaigns.get(role) === handle) campaigns.delete(role);
    }

    async function resign(): Promise<void> {
      if (actor.getSnapshot().status === "active") {
        const finished = new Promise<void>((resolve) => {
          actor.subscribe({ complete: resolve, error: () => resolve() });
        });
        actor.send({ type: "RESIGN" });
        await finished;
      }
      stop();
    }

    const handle: LeaseCampaign = {
      role,
      actor,
      held,
      token,
      fence: () => {
        const t = token();
        return t === null ? null : { role, token: t };
      },
      resign,
      stop,
    };
    campaigns.set(role, handle);
    listen();
    actor.start();
    return handle;
  }

  async function holder(role: string): Promise<LeaseHolderInfo | null> {
    checkRole(role);
    let reply: Awaited<ReturnType<typeof store.holder>>;
    try {
      reply = await store.holder(role);
    } catch (err) {
      throw unavailable("read", role, err);
    }
    return reply.lease ? { ...reply.lease, ttlMs: reply.ttlMs } : null;
  }

  async function fenceStatus(
    fence: LeaseFence,
    target?: FencedSetOptions,
  ): Promise<{ status: FenceStatus; newest: number }> {
    checkRole(fence.role);
    if (!Number.isSafeInteger(fence.token) || fence.token <= 0) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Invalid fencing token for role ${fence.role}: ${fence.token}`,
      );
    }
    try {
      return await store.fence(fence.role, fence.token, target);
    } catch (err) {
      throw unavailable("check", fence.role, err);
    }
  }

  function refusal(fence: LeaseFence, status: FenceStatus, newest: number): RuntimeError | null {
    const what = `Refused fenced operation for role ${fence.role}`;
    const details = { role: fence.role, token: fence.token, newest };
    switch (status) {
      case "current":
        return null;
      case "stale":
        return new RuntimeError(
          "LEASE_STALE_TOKEN",
          `${what}: token ${fence.token} is older than the newest token ${newest}`,
          { details },
        );
      case "not_held":
        return new RuntimeError(
          "LEASE_NOT_HELD",
          `${what}: the lease with token ${fence.token} is no longer held`,
          { details },
        );
      default:
        return new RuntimeError(
          "LEASE_STALE_TOKEN",
          `${what}: token ${fence.token} was never issued here (newest is ${newest})`,
          { details },
        );
    }
  }

  async function checkToken(role: string, token: number): Promise<boolean> {
    if (!Number.isSafeInteger(token) || token <= 0) return false;
    return (await fenceStatus({ role, token })).status === "current";
  }

  async function fenced<T>(
    fence: LeaseFence,
    fn: (fence: LeaseFence) => T | Promise<T>,
  ): Promise<T> {
    const { status, newest } = await fenceStatus(fence);
    const refused = refusal(fence, status, newest);
    if (refused) throw refused;
    return await fn(fence);
  }

  async function fencedSet(fence: LeaseFence, options: FencedSetOptions): Promise<void> {
    if (!options.key.startsWith(keyspace.prefix)) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Refused fenced write for role ${fence.role}: key ${options.key} is outside the keyspace`,
      );
    }
    // The lease, its fence counter and the target are read and written in one script: on a
    // Redis Cluster they must share a slot, so the target carries the role's hash tag. The
    // rule holds on every deployment, so a key that would break on a cluster breaks at once.
    if (!options.key.includes(leaseTag(fence.role))) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Refused fenced write for role ${fence.role}: key ${options.key} lacks the role's hash ` +
          `tag ${leaseTag(fence.role)} (build it with keyspace.key(..., leaseTag(role), ...))`,
      );
    }
    if (options.pxMs !== undefined && (!Number.isSafeInteger(options.pxMs) || options.pxMs <= 0)) {
      throw new RuntimeError(
        "VALIDATION_FAILED",
        `Refused fenced write for role ${fence.role}: pxMs must be a positive integer`,
      );
    }
    const { status, newest } = await fenceStatus(fence, options);
    const refused = refusal(fence, status, newest);
    if (refused) throw refused;
  }

  async function close(): Promise<void> {
    await Promise.all([...campaigns.values()].map((c) => c.resign()));
    const off = await unsubscribe;
    unsubscribe = null;
    await off?.().catch(() => {});
  }

  function wake(): void {
    for (const c of campaigns.values()) {
      if (c.actor.getSnapshot().status === "active") c.actor.send({ type: "WAKE" });
    }
  }

  return { instanceId, campaign, holder, checkToken, fenced, fencedSet, wake, close };
}
