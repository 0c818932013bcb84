/**
 * Login sessions: creation, validation through a Redis cache in front of PostgreSQL,
 * sliding refresh, revocation that takes effect on every instance at once, a per-user
 * concurrent-session limit, activity tracking and the cleanup of dead rows.
 *
 * Tokens are 32 random bytes (base64url, 43 characters) shown to the client once; the
 * database and the cache only ever see their SHA-256, so neither a leaked table nor a
 * Redis dump yields a usable token.
 *
 * Validation cache. `keyspace.key("session", sha256hex(token))` holds a small JSON copy
 * of what validation needs, with a TTL of at most the session's remaining lifetime (and
 * at most `cacheTtlMs`). A cache miss reads PostgreSQL and fills the key with `SET NX`.
 * Revocation writes a *tombstone* over the key (an unconditional SET) rather than
 * deleting it: a delete would let an instance that read the row just before the
 * revocation committed write the stale "valid" copy back; `SET NX` cannot overwrite the
 * tombstone, so a revoked token is refused on every instance from the moment the
 * revocation returns. Refresh rewrites the entry only if it is not a tombstone (one
 * Lua call). The revocation is also published on the bus (`sessions.revoked`): without
 * Redis the cache is a per-process map, which the message (and the local revoke itself)
 * invalidates; with Redis, subscribers use it to react (the sessions actor counts it).
 *
 * Concurrent-session limit: creating a session for a user who already has
 * `maxSessionsPerUser` live sessions revokes the oldest ones (by creation time, reason
 * `evicted`) in the same transaction, under a row lock on the user, so concurrent
 * logins cannot exceed the limit at any moment. That transaction is one call of the SQL
 * function `create_session_limited` (migration 002): a lock followed by a fresh snapshot
 * cannot be one client statement, and the four-statement transaction costs the client
 * about three times the work per login. The evicted sessions are revoked like any other
 * (tombstones, bus message) and returned by `create`.
 *
 * Authenticity of the cache: anyone who can write to Redis could write a "valid" entry under
 * the SHA-256 of a token of their choosing and so mint a session. Every entry is therefore
 * sealed (lib/message_auth.ts, purpose `session.cache`) with an HMAC keyed from the cluster's
 * secret key and bound to its token hash; an entry that does not open (no MAC, a wrong one,
 * or a genuine entry copied under another token's key) is refused — counted and logged once
 * — and validation reads PostgreSQL as on a miss, then replaces the entry (unless it is a
 * tombstone). A tombstone is not sealed: writing one can only refuse a token (denial of
 * service, which Redis write access allows anyway), never accept one.
 *
 * Every time comes from the injected `now()`; nothing here reads the wall clock.
 * @module
 */
import { Buffer } from "node:buffer";
import { createHash, timingSafeEqual } from "node:crypto";
import { isIP } from "node:net";
import { z } from "zod";
import type { Role } from "../lib/access.ts";
import { isRuntimeError, RuntimeError } from "../lib/errors.ts";
import { type Logger, silentLogger } from "../lib/log.ts";
import { claimedSender, type MessageAuth } from "../lib/message_auth.ts";
import type { MessageBus } from "./bus.ts";
import type { EventStore } from "./event_store.ts";
import { rethrowDatabaseError } from "./pg_errors.ts";
import type { Keyspace, RedisClient } from "./redis.ts";
import { randomToken } from "./secure_random.ts";
import type { Sql } from "./types.ts";

/** A session row as the runtime sees it (never the token or its hash). */
export interface Session {
  /** Random UUID; safe to show to its owner. */
  id: string;
  /** Owner. */
  userId: number;
  /** When it stops being accepted (slides forward on refresh). */
  expiresAt: Date;
  /** When it was created. */
  createdAt: Date;
  /** When the row last changed. */
  updatedAt: Date;
  /** Device fingerprint the session is bound to, or null (not bound). */
  deviceFingerprint: string | null;
  /** Client address at creation. */
  ipAddress: string | null;
  /** Coarse location at creation (as given by the edge), or null. */
  geoLocation: string | null;
  /** User agent at creation. */
  userAgent: string | null;
  /** "Remember me": the longer lifetime applies. */
  isRemembered: boolean;
  /** Last recorded use (throttled). */
  lastActivityAt: Date | null;
  /** When it was revoked, or null. */
  revokedAt: Date | null;
  /** Why: logout, revoked, revoked_all, evicted, mfa_changed, admin. */
  revokedReason: RevokeReason | null;
  /** Times the token was presented with another device fingerprint. */
  deviceMismatches: number;
}

/** Why a session was revoked. */
export type RevokeReason =
  | "logout"
  | "revoked"
  | "revoked_all"
  | "evicted"
  | "mfa_changed"
  | "admin";

/** Where a request comes from; every field optional. */
export interface DeviceInfo {
  /** Client-supplied device fingerprint (1–255 characters). */
  fingerprint?: string | null;
  /** Client IP address (v4 or v6). */
  ipAddress?: string | null;
  /** User-Agent header (truncated to 1024 characters). */
  userAgent?: string | null;
  /** Coarse location, e.g. "DE/Berlin" (truncated to 100 characters). */
  geoLocation?: string | null;
}

/** Input of {@linkcode SessionStore.create}. */
export interface CreateSessionInput extends DeviceInfo {
  /** Owner. */
  userId: number;
  /** "Remember me". */
  remember?: boolean;
}

/** What validation returns for an accepted token. */
export interface ValidSession {
  /** Session id. */
  id: string;
  /** Owner. */
  userId: number;
  /** Creation time. */
  createdAt: Date;
  /** Current expiry. */
  expiresAt: Date;
  /** "Remember me". */
  isRemembered: boolean;
}

/** Why a token was refused. */
export type SessionRefusal = "unknown" | "expired" | "revoked" | "device_mismatch";

/** Result of {@linkcode SessionStore.validate}: a typed outcome, never an exception for a bad token. */
export type SessionCheck =
  | { ok: true; session: ValidSession }
  | { ok: false; reason: SessionRefusal; sessionId: string | null; userId: number | null };

/** A revocation as published on the bus (`sessions.revoked`). */
export interface RevocationMessage {
  /** Revoked sessions: id and token-hash hex (the cache key part, not the token). */
  sessions: { id: string; h: string }[];
  /** Owner. */
  userId: number;
  /** Why. */
  reason: RevokeReason;
  /** Instance that revoked them. */
  origin: string;
}

/** Options of {@linkcode createSessionStore}. */
export interface SessionStoreOptions {
  /** Redis command connection; null or absent: a per-process cache stands in. */
  redis?: RedisClient | null;
  /** Seals and opens the Redis cache's entries; required with `redis`. */
  auth?: MessageAuth | null;
  /** Key namer (all Redis keys go through it). */
  keyspace: Keyspace;
  /** Bus revocations are published on; absent: not published. */
  bus?: MessageBus | null;
  /** Event store device mismatches are recorded in (aggregate `session`). */
  eventStore?: EventStore | null;
  /** Clock in ms; required (time is injected). */
  now: () => number;
  /** Id of this instance (in bus messages). */
  instanceId?: string;
  /** Log for degraded paths. */
  log?: Logger;
  /** Sliding lifetime of a normal session; 12 h. */
  ttlMs?: number;
  /** Sliding lifetime of a remembered session; 30 days. */
  rememberTtlMs?: number;
  /** Absolute cap from creation for a normal session; 7 days. */
  maxLifetimeMs?: number;
  /** Absolute cap from creation for a remembered session; 90 days. */
  rememberMaxLifetimeMs?: number;
  /** Live sessions per user; the oldest are evicted beyond it. 10. */
  maxSessionsPerUser?: number;
  /** Minimum interval between last_activity_at writes per session and instance; 60 s. */
  activityThrottleMs?: number;
  /** Longest TTL of a cache entry (and of a tombstone); 5 min. */
  cacheTtlMs?: number;
  /** Revoked rows are deleted this long after revocation; 7 days. */
  revokedRetentionMs?: number;
  /** Entries of the per-process cache (no-Redis mode); 10,000. */
  localCacheSize?: number;
  /** Called when Redis fails (validation then falls back to PostgreSQL). */
  onDependencyError?: (what: "redis" | "database", err: unknown) => void;
}

/**
 * What a session may do, read from PostgreSQL (never from the cache, which an attacker
 * with Redis access could write): its owner's role and the last re-authentication.
 */
export interface SessionAuthority {
  /** The session. */
  sessionId: string;
  /** Its owner. */
  userId: number;
  /** The owner's username. */
  username: string;
  /** The owner's role now. */
  role: Role;
  /** When the owner last re-authenticated in this session, or null. */
  reauthenticatedAt: Date | null;
}

/** The session store returned by {@linkcode createSessionStore}. */
export interface SessionStore {
  /** `redis` or `local`: where validation is cached. */
  readonly cacheKind: "redis" | "local";
  /** Creates a session; returns it and its token (shown once). Evicts beyond the limit. */
  create(
    input: CreateSessionInput,
  ): Promise<{ session: Session; token: string; evicted: string[] }>;
  /** The session with this id, or null. */
  getById(id: string): Promise<Session | null>;
  /** The session whose token this is (any state), or null. */
  getByToken(token: string): Promise<Session | null>;
  /** Checks a token: known, not revoked, not expired, same device. Cached. */
  validate(token: string, device?: DeviceInfo): Promise<SessionCheck>;
  /**
   * The authority of a live session, by its token, from PostgreSQL; null when the token is
   * unknown there, revoked, expired or its owner deactivated.
   */
  authority(token: string): Promise<SessionAuthority | null>;
  /** Records that the session's owner re-authenticated at `at`; false when it is not live. */
  markReauthenticated(id: string, at: Date): Promise<boolean>;
  /** Slides the expiry of a live session forward; null when it is not live. */
  refresh(id: string): Promise<Session | null>;
  /** Revokes one session (only if owned by `options.userId` when given); false if not live. */
  revoke(id: string, options?: { userId?: number; reason?: RevokeReason }): Promise<boolean>;
  /** Revokes every live session of a user (but `exceptId`); returns their ids. */
  revokeAllForUser(
    userId: number,
    options?: { exceptId?: string; reason?: RevokeReason },
  ): Promise<string[]>;
  /** Live sessions of a user, newest first. */
  listForUser(userId: number): Promise<Session[]>;
  /** Deletes expired sessions and revoked ones past retention; returns how many. */
  cleanupExpired(options?: { batchSize?: number; maxBatches?: number }): Promise<number>;
  /** Applies a revocation published by another instance (per-process cache). */
  applyRevocation(message: RevocationMessage): void;
  /** Subscribes to `sessions.revoked`; `listener` sees every valid message. Returns the unsubscribe. */
  subscribeRevocations(
    listener?: (message: RevocationMessage) => void,
  ): Promise<() => Promise<void>>;
}

/** Bus channel of revocations. */
export const REVOCATION_CHANNEL = "sessions.revoked";

const TOMBSTONE = "!revoked";
/** What the Redis cache answers for an entry whose MAC does not verify (never stored). */
const FORGED = "\u0000forged";
const TOKEN_RE = /^[A-Za-z0-9_-]{43}$/;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

// Rewrites a cache entry unless it is a tombstone (refresh must not resurrect a revoked
// session whose tombstone landed first).
const UPDATE_UNLESS_TOMBSTONE = `
local v = redis.call('GET', KEYS[1])
if v == ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1`;

interface CacheEntry {
  /** id */
  i: string;
  /** user id */
  u: number;
  /** expires at (ms) */
  e: number;
  /** created at (ms) */
  c: number;
  /** sha-256 hex of the bound fingerprint, or null */
  f: string | null;
  /** remembered */
  r: boolean;
}

interface SessionRow {
  id: string;
  user_id: string;
  expires_at: Date;
  created_at: Date;
  updated_at: Date;
  device_fingerprint: string | null;
  ip_address: string | null;
  geo_location: string | null;
  user_agent: string | null;
  is_remembered: boolean;
  last_activity_at: Date | null;
  revoked_at: Date | null;
  revoked_reason: RevokeReason | null;
  device_mismatches: number;
  token_hash?: Uint8Array;
}

const SESSION_COLUMNS = [
  "id",
  "user_id",
  "expires_at",
  "created_at",
  "updated_at",
  "device_fingerprint",
  "ip_address",
  "geo_location",
  "user_agent",
  "is_remembered",
  "last_activity_at",
  "revoked_at",
  "revoked_reason",
  "device_mismatches",
];

function noNul(s: string): boolean {
  return !s.includes("\u0000");
}

const userIdSchema = z.number({ error: "must be a number" }).int("must be an integer")
  .positive("must be positive").max(Number.MAX_SAFE_INTEGER, "is too large");
const deviceSchema = z.object({
  fingerprint: z.string({ error: "must be a string" }).min(1, "must not be empty")
    .max(255, "must be at most 255 characters").refine(noNul, "must not contain NUL")
    .nullable().optional(),
  ipAddress: z.string({ error: "must be a string" }).refine(
    (s) => isIP(s) !== 0,
    "must be an IPv4 or IPv6 address",
  ).nullable().optional(),
  // Headers are not ours to reject; long ones are cut, empty ones dropped.
  userAgent: z.string({ error: "must be a string" }).nullable().optional(),
  geoLocation: z.string({ error: "must be a string" }).nullable().optional(),
});
const createSchema = deviceSchema.extend({
  userId: userIdSchema,
  remember: z.boolean({ error: "must be a boolean" }).optional(),
});
const revocationSchema = z.object({
  sessions: z.array(z.object({
    id: z.string().regex(UUID_RE),
    h: z.string().regex(/^[0-9a-f]{64}$/),
  })).max(10_000),
  userId: userIdSchema,
  reason: z.enum(["logout", "revoked", "revoked_all", "evicted", "mfa_changed", "admin"]),
  origin: z.string().max(200),
});

/** Parses `input` or throws VALIDATION_FAILED naming the first offending field. */
function parseInput<T>(schema: z.ZodType<T>, input: unknown, action: string, name: string): T {
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const field = issue.path.length ? issue.path.join(".") : name;
  throw new RuntimeError("VALIDATION_FAILED", `Cannot ${action}: ${field} ${issue.message}`, {
    details: { field },
  });
}

/** Hex SHA-256 of a UTF-8 string. */
function sha256Hex(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

/** Header text as stored: NULs removed, cut to `max` code points, empty → null. */
function headerText(value: string | null | undefined, max: number): string | null {
  if (value === null || value === undefined) return null;
  const clean = [...value.replaceAll("\u0000", "")].slice(0, max).join("").trim();
  return clean === "" ? null : clean;
}

/** Constant-time equality of two digests. */
function sameDigest(stored: Uint8Array, presented: Uint8Array): boolean {
  return stored.length === presented.length && timingSafeEqual(stored, presented);
}

function toSession(row: SessionRow): Session {
  return {
    id: row.id,
    userId: Number(row.user_id),
    expiresAt: row.expires_at,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    deviceFingerprint: row.device_fingerprint,
    ipAddress: row.ip_address,
    geoLocation: row.geo_location,
    userAgent: row.user_agent,
    isRemembered: row.is_remembered,
    lastActivityAt: row.last_activity_at,
    revokedAt: row.revoked_at,
    revokedReason: row.revoked_reason,
    deviceMismatches: row.device_mismatches,
  };
}

function toEntry(row: SessionRow): CacheEntry {
  return {
    i: row.id,
    u: Number(row.user_id),
    e: row.expires_at.getTime(),
    c: row.created_at.getTime(),
    f: row.device_fingerprint === null ? null : sha256Hex(row.device_fingerprint),
    r: row.is_remembered,
  };
}

function parseEntry(text: string): CacheEntry | null {
  try {
    const v = JSON.parse(text) as CacheEntry;
    return typeof v?.i === "string" && typeof v.u === "number" && typeof v.e === "number"
      ? v
      : null;
  } catch {
    return null;
  }
}

/** The validation cache: Redis, or a bounded per-process map standing in for it. */
interface Cache {
  kind: "redis" | "local";
  get(hash: string): Promise<string | null>;
  /** Writes only if absent (a miss fill must not overwrite a tombstone). */
  fill(hash: string, value: string, ttlMs: number): Promise<void>;
  /** Writes unconditionally (a brand-new session's key cannot exist). */
  put(hash: string, value: string, ttlMs: number): Promise<void>;
  /** Writes unless the key holds a tombstone. */
  update(hash: string, value: string, ttlMs: number): Promise<void>;
  /** Overwrites with tombstones. */
  tombstone(hashes: string[], ttlMs: number): Promise<void>;
  /** Local only: marks revoked without I/O (bus messages). */
  markRevoked(hash: string, ttlMs: number): void;
}

function createRedisCache(redis: RedisClient, keyspace: Keyspace, auth: MessageAuth): Cache {
  // keyspace.key("session", hash), with the constant part built (and checked) once: this
  // is the validation hot path, and a hex digest needs no per-call check.
  const prefix = keyspace.key("session", "x").slice(0, -1);
  const key = (hash: string) => prefix + hash;
  // Bound to the token hash: an entry is good for the key it was written under only.
  const seal = (hash: string, value: string) => auth.seal("session.cache", hash, value);
  return {
    kind: "redis",
    async get(hash) {
      const raw = await redis.get(key(hash));
      if (raw === null || raw === TOMBSTONE) return raw;
      const opened = auth.open("session.cache", hash, raw);
      if (opened) return opened.body;
      auth.refused("session.cache", claimedSender(raw), { key: `session:${hash.slice(0, 12)}…` });
      return FORGED;
    },
    async fill(hash, value, ttlMs) {
      await redis.set(key(hash), seal(hash, value), "PX", ttlMs, "NX");
    },
    async put(hash, value, ttlMs) {
      await redis.set(key(hash), seal(hash, value), "PX", ttlMs);
    },
    async update(hash, value, ttlMs) {
      await redis.eval(
        UPDATE_UNLESS_TOMBSTONE,
        1,
        key(hash),
        seal(hash, value),
        String(ttlMs),
        TOMBSTONE,
      );
    },
    async tombstone(hashes, ttlMs) {
      if (!hashes.length) return;
      // One SET per key, all sent at once (ioredis writes them without waiting for each
      // answer): the hashes' keys lie in different slots of a Redis Cluster, where one
      // pipeline may only touch one slot.
      const results = await Promise.allSettled(
        hashes.map((h) => redis.set(key(h), TOMBSTONE, "PX", ttlMs)),
      );
      const failed = results.find((r) => r.status === "rejected");
      if (failed) throw failed.reason;
    },
    markRevoked() {
      // Redis is shared: the revoking instance already wrote the tombstone.
    },
  };
}

function createLocalCache(now: () => number, capacity: number): Cache {
  const map = new Map<string, { value: string; until: number }>();
  function set(hash: string, value: string, ttlMs: number): void {
    map.delete(hash);
    map.set(hash, { value, until: now() + ttlMs });
    // Insertion order is age order: drop the oldest beyond capacity.
    while (map.size > capacity) map.delete(map.keys().next().value!);
  }
  function read(hash: string): string | null {
    const hit = map.get(hash);
    if (!hit) return null;
    if (hit.until <= now()) {
      map.delete(hash);
      return null;
    }
    return hit.value;
  }
  return {
    kind: "local",
    get: (hash) => Promise.resolve(read(hash)),
    fill(hash, value, ttlMs) {
      if (read(hash) === null) set(hash, value, ttlMs);
      return Promise.resolve();
    },
    put(hash, value, ttlMs) {
      set(hash, value, ttlMs);
      return Promise.resolve();
    },
    update(hash, value, ttlMs) {
      if (read(hash) !== TOMBSTONE) set(hash, value, ttlMs);
      return Promise.resolve();
    },
    tombstone(hashes, ttlMs) {
      for (const h of hashes) set(h, TOMBSTONE, ttlMs);
      return Promise.resolve();
    },
    markRevoked(hash, ttlMs) {
      set(hash, TOMBSTONE, ttlMs);
    },
  };
}

/** Appends one event to an aggregate, re-reading the version on a concurrent append. */
async function appendEvent(
  store: EventStore,
  aggregate: { type: string; id: string },
  event: { type: string; data: unknown; userId?: number | null },
): Promise<void> {
  for (let attempt = 0;; attempt++) {
    const version = await store.currentVersion(aggregate);
    try {
      await store.append(aggregate, [event], { expectedVersion: version });
      return;
    } catch (err) {
      if (!isRuntimeError(err, "EVENT_VERSION_CONFLICT") || attempt >= 4) throw err;
    }
  }
}

/** Creates the session store on `sql` with the cache, bus and clock in `options`. */
export function createSessionStore(sql: Sql, options: SessionStoreOptions): SessionStore {
  const now = options.now;
  const log = options.log ?? silentLogger;
  const keyspace = options.keyspace;
  const bus = options.bus ?? null;
  const instanceId = options.instanceId ?? "local";
  const ttlMs = options.ttlMs ?? 12 * HOUR;
  const rememberTtlMs = options.rememberTtlMs ?? 30 * DAY;
  const maxLifetimeMs = options.maxLifetimeMs ?? 7 * DAY;
  const rememberMaxLifetimeMs = options.rememberMaxLifetimeMs ?? 90 * DAY;
  const maxSessions = options.maxSessionsPerUser ?? 10;
  const activityThrottleMs = options.activityThrottleMs ?? 60_000;
  const cacheTtlMs = options.cacheTtlMs ?? 5 * 60_000;
  const revokedRetentionMs = options.revokedRetentionMs ?? 7 * DAY;
  for (
    const [name, v] of Object.entries({
      ttlMs,
      rememberTtlMs,
      maxLifetimeMs,
      rememberMaxLifetimeMs,
      maxSessions,
      cacheTtlMs,
    })
  ) {
    if (!Number.isFinite(v) || v < 1) {
      throw new RuntimeError("CONFIG_INVALID", `Session option ${name} must be positive: ${v}`);
    }
  }
  if (options.redis && !options.auth) {
    throw new TypeError("createSessionStore: a Redis cache needs `auth` to seal its entries");
  }
  const cache = options.redis
    ? createRedisCache(options.redis, keyspace, options.auth!)
    : createLocalCache(now, options.localCacheSize ?? 10_000);
  const onDependencyError = options.onDependencyError ?? (() => {});
  // Memos of two pure functions on the validation hot path (bounded; they hold digests
  // only, never a session's state, so nothing here needs invalidating): the digest of a
  // presented fingerprint, and the bytes of a stored digest's hex.
  const fingerprintDigests = new Map<string, Buffer>();
  const storedDigests = new Map<string, Buffer>();
  function memo(map: Map<string, Buffer>, key: string, make: () => Buffer): Buffer {
    let value = map.get(key);
    if (!value) {
      value = make();
      if (map.size >= 10_000) map.clear();
      map.set(key, value);
    }
    return value;
  }
  function fingerprintDigest(fingerprint: string): Buffer {
    return memo(
      fingerprintDigests,
      fingerprint,
      () => createHash("sha256").update(fingerprint, "utf8").digest(),
    );
  }
  function storedDigest(hex: string): Buffer {
    return memo(storedDigests, hex, () => Buffer.from(hex, "hex"));
  }
  // Per-process throttle of last_activity_at writes: session id → last write (ms).
  const lastActivityWrite = new Map<string, number>();

  function lifetime(remembered: boolean): { sliding: number; absolute: number } {
    return remembered
      ? { sliding: rememberTtlMs, absolute: rememberMaxLifetimeMs }
      : { sliding: ttlMs, absolute: maxLifetimeMs };
  }

  function entryTtl(expiresAtMs: number): number {
    return Math.max(1, Math.min(cacheTtlMs, expiresAtMs - now()));
  }

  async function safely(what: string, fn: () => Promise<void>): Promise<boolean> {
    try {
      await fn();
      return true;
    } catch (err) {
      log.warn(`session cache: ${what} failed`, {
        error: err instanceof Error ? err.message : String(err),
      });
      onDependencyError("redis", err);
      return false;
    }
  }

  async function afterRevoke(
    rows: { id: string; token_hash: Uint8Array; user_id: string }[],
    reason: RevokeReason,
  ): Promise<void> {
    if (!rows.length) return;
    const hashes = rows.map((r) => Buffer.from(r.token_hash).toString("hex"));
    for (const r of rows) lastActivityWrite.delete(r.id);
    const byUser = new Map<number, { id: string; h: string }[]>();
    rows.forEach((r, i) => {
      const list = byUser.get(Number(r.user_id)) ?? [];
      list.push({ id: r.id, h: hashes[i] });
      byUser.set(Number(r.user_id), list);
    });
    async function publish(userId: number, sessions: { id: string; h: string }[]) {
      const message: RevocationMessage = { sessions, userId, reason, origin: instanceId };
      try {
        await bus!.publish(REVOCATION_CHANNEL, JSON.stringify(message));
      } catch (err) {
        log.warn("cannot publish a session revocation", {
          error: err instanceof Error ? err.message : String(err),
        });
        onDependencyError("redis", err);
      }
    }
    // Independent: the tombstones make the revocation effective in the shared cache, the
    // messages invalidate per-process caches; both are in flight together.
    await Promise.all([
      safely("tombstone", () => cache.tombstone(hashes, cacheTtlMs)),
      ...(bus ? [...byUser].map(([userId, sessions]) => publish(userId, sessions)) : []),
    ]);
  }

  async function create(
    input: CreateSessionInput,
  ): Promise<{ session: Session; token: string; evicted: string[] }> {
    const action = "create session";
    const data = parseInput(createSchema, input, action, "input");
    const token = randomToken(32);
    const hash = createHash("sha256").update(token, "utf8").digest();
    const remembered = data.remember ?? false;
    const at = now();
    const createdAt = new Date(at);
    const expiresAt = new Date(at + lifetime(remembered).sliding);
    const fingerprint = data.fingerprint ?? null;
    const ip = data.ipAddress ?? null;
    const geo = headerText(data.geoLocation, 100);
    const agent = headerText(data.userAgent, 1024);
    let inserted: (SessionRow & { evicted: { id: string; h: string }[] }) | undefined;
    try {
      // One statement: create_session_limited (migration 002) locks the user's row, evicts
      // beyond the limit with a fresh snapshot, and inserts, in one transaction.
      const rows = await sql<(SessionRow & { evicted: { id: string; h: string }[] })[]>`
        SELECT * FROM create_session_limited(
          ${data.userId}::bigint, ${hash}, ${expiresAt}, ${createdAt}, ${fingerprint}::text,
          ${ip}::inet, ${geo}::text, ${agent}::text, ${remembered}, ${maxSessions}::integer
        )`;
      inserted = rows[0];
    } catch (err) {
      rethrowDatabaseError(err, action);
    }
    if (!inserted) {
      throw new RuntimeError(
        "USER_NOT_FOUND",
        `Cannot ${action}: no active user has id ${data.userId}`,
      );
    }
    const row = inserted;
    const evicted = row.evicted.map((e) => ({
      id: e.id,
      token_hash: Buffer.from(e.h, "hex"),
      user_id: String(data.userId),
    }));
    lastActivityWrite.set(row.id, at);
    // Both Redis writes in flight at once (ioredis pipelines them on the connection).
    await Promise.all([
      safely("fill", () =>
        cache.put(
          hash.toString("hex"),
          JSON.stringify(toEntry(row)),
          entryTtl(row.expires_at.getTime()),
        )),
      afterRevoke(evicted, "evicted"),
    ]);
    return { session: toSession(row), token, evicted: evicted.map((e) => e.id) };
  }

  async function getById(id: string): Promise<Session | null> {
    if (typeof id !== "string" || !UUID_RE.test(id)) return null;
    try {
      const rows = await sql<SessionRow[]>`
        SELECT ${sql(SESSION_COLUMNS)} FROM sessions WHERE id = ${id}`;
      return rows.length ? toSession(rows[0]) : null;
    } catch (err) {
      rethrowDatabaseError(err, "load session");
    }
  }

  async function rowByHash(hash: Buffer): Promise<SessionRow | null> {
    const rows = await sql<SessionRow[]>`
      SELECT ${sql(SESSION_COLUMNS)} FROM sessions WHERE token_hash = ${hash}`;
    return rows[0] ?? null;
  }

  async function getByToken(token: string): Promise<Session | null> {
    if (typeof token !== "string" || !TOKEN_RE.test(token)) return null;
    try {
      const row = await rowByHash(createHash("sha256").update(token, "utf8").digest());
      return row ? toSession(row) : null;
    } catch (err) {
      rethrowDatabaseError(err, "load session");
    }
  }

  async function recordMismatch(entry: CacheEntry, device: DeviceInfo): Promise<void> {
    const at = new Date(now());
    try {
      await sql`
        UPDATE sessions
        SET device_mismatches = device_mismatches + 1, last_mismatch_at = ${at}
        WHERE id = ${entry.i}`;
      if (options.eventStore) {
        await appendEvent(options.eventStore, { type: "session", id: entry.i }, {
          type: "SessionDeviceMismatch",
          userId: entry.u,
          data: {
            at: at.toISOString(),
            ipAddress: device.ipAddress ?? null,
            userAgent: headerText(device.userAgent, 200),
            // A prefix of the presented fingerprint's hash: enough to tell devices apart
            // in an investigation, useless for forging one.
            presentedFingerprint: device.fingerprint
              ? sha256Hex(device.fingerprint).slice(0, 16)
              : null,
          },
        });
      }
    } catch (err) {
      // Refusing the token does not depend on the record; a lost record is logged loudly.
      log.error("cannot record a device mismatch", {
        session: entry.i,
        error: err instanceof Error ? err.message : String(err),
      });
    }
    log.warn("session token presented from another device; refused", {
      session: entry.i,
      user: entry.u,
      ip: device.ipAddress ?? null,
    });
  }

  /** True when this instance should write last_activity_at for the session now. */
  function activityDue(entry: CacheEntry, at: number): boolean {
    const last = lastActivityWrite.get(entry.i);
    return last === undefined || at - last >= activityThrottleMs;
  }

  async function touch(entry: CacheEntry, at: number): Promise<void> {
    lastActivityWrite.set(entry.i, at);
    if (lastActivityWrite.size > 100_000) lastActivityWrite.clear();
    try {
      const when = new Date(at);
      await sql`
        UPDATE sessions SET last_activity_at = ${when}
        WHERE id = ${entry.i} AND revoked_at IS NULL
          AND (last_activity_at IS NULL OR last_activity_at < ${when})`;
    } catch (err) {
      log.warn("cannot record session activity", {
        session: entry.i,
        error: err instanceof Error ? err.message : String(err),
      });
    }
  }

  async function validate(token: string, device: DeviceInfo = {}): Promise<SessionCheck> {
    if (typeof token !== "string" || !TOKEN_RE.test(token)) {
      return { ok: false, reason: "unknown", sessionId: null, userId: null };
    }
    const hex = createHash("sha256").update(token, "utf8").digest("hex");
    let cached: string | null = null;
    let cacheOk = true;
    try {
      cached = await cache.get(hex);
    } catch (err) {
      cacheOk = false;
      log.warn("session cache unavailable; validating against PostgreSQL", {
        error: err instanceof Error ? err.message : String(err),
      });
      onDependencyError("redis", err);
    }
    if (cached === TOMBSTONE) {
      return { ok: false, reason: "revoked", sessionId: null, userId: null };
    }
    const forged = cached === FORGED;
    let entry = cached === null || forged ? null : parseEntry(cached);
    if (!entry) {
      let row: SessionRow | null;
      try {
        row = await rowByHash(Buffer.from(hex, "hex"));
      } catch (err) {
        onDependencyError("database", err);
        rethrowDatabaseError(err, "validate session");
      }
      if (!row) return { ok: false, reason: "unknown", sessionId: null, userId: null };
      if (row.revoked_at !== null) {
        if (cacheOk) await safely("tombstone", () => cache.tombstone([hex], cacheTtlMs));
        return { ok: false, reason: "revoked", sessionId: row.id, userId: Number(row.user_id) };
      }
      entry = toEntry(row);
      const remaining = entry.e - now();
      if (cacheOk && remaining > 0) {
        const value = JSON.stringify(entry);
        // A refused entry is replaced (unless a tombstone landed meanwhile); SET NX would
        // leave it there and send every validation of this token to PostgreSQL.
        await safely(
          "fill",
          () =>
            forged
              ? cache.update(hex, value, entryTtl(entry!.e))
              : cache.fill(hex, value, entryTtl(entry!.e)),
        );
      }
    }
    const at = now();
    if (entry.e <= at) return { ok: false, reason: "expired", sessionId: entry.i, userId: entry.u };
    if (entry.f !== null) {
      const presented = typeof device.fingerprint === "string" ? device.fingerprint : "";
      if (!sameDigest(storedDigest(entry.f), fingerprintDigest(presented))) {
        await recordMismatch(entry, device);
        return { ok: false, reason: "device_mismatch", sessionId: entry.i, userId: entry.u };
      }
    }
    if (activityDue(entry, at)) await touch(entry, at);
    return {
      ok: true,
      session: {
        id: entry.i,
        userId: entry.u,
        createdAt: new Date(entry.c),
        expiresAt: new Date(entry.e),
        isRemembered: entry.r,
      },
    };
  }

  async function authority(token: string): Promise<SessionAuthority | null> {
    if (typeof token !== "string" || !TOKEN_RE.test(token)) return null;
    const hash = createHash("sha256").update(token, "utf8").digest();
    const at = new Date(now());
    try {
      const rows = await sql<
        {
          id: string;
          user_id: string;
          username: string;
          role: SessionAuthority["role"];
          reauthenticated_at: Date | null;
        }[]
      >`
        SELECT s.id, s.user_id, u.username, u.role, s.reauthenticated_at
        FROM sessions s JOIN users u ON u.id = s.user_id
        WHERE s.token_hash = ${hash} AND s.revoked_at IS NULL AND s.expires_at > ${at}
          AND u.is_active`;
      const row = rows[0];
      return row
        ? {
          sessionId: row.id,
          userId: Number(row.user_id),
          username: row.username,
          role: row.role,
          reauthenticatedAt: row.reauthenticated_at,
        }
        : null;
    } catch (err) {
      onDependencyError("database", err);
      rethrowDatabaseError(err, "check session authority");
    }
  }

  async function markReauthenticated(id: string, at: Date): Promise<boolean> {
    if (typeof id !== "string" || !UUID_RE.test(id)) return false;
    try {
      const result = await sql`
        UPDATE sessions SET reauthenticated_at = ${at}
        WHERE id = ${id} AND revoked_at IS NULL AND expires_at > ${at}`;
      return result.count > 0;
    } catch (err) {
      rethrowDatabaseError(err, "record re-authentication");
    }
  }

  async function refresh(id: string): Promise<Session | null> {
    if (typeof id !== "string" || !UUID_RE.test(id)) return null;
    const at = new Date(now());
    let row: SessionRow | undefined;
    try {
      // Sliding expiry, capped by the absolute lifetime from creation; never shortened.
      const rows = await sql<SessionRow[]>`
        UPDATE sessions SET
          expires_at = GREATEST(expires_at, LEAST(
            ${at}::timestamptz + CASE WHEN is_remembered
              THEN ${rememberTtlMs}::float8 * interval '1 millisecond'
              ELSE ${ttlMs}::float8 * interval '1 millisecond' END,
            created_at + CASE WHEN is_remembered
              THEN ${rememberMaxLifetimeMs}::float8 * interval '1 millisecond'
              ELSE ${maxLifetimeMs}::float8 * interval '1 millisecond' END)),
          last_activity_at = ${at}
        WHERE id = ${id} AND revoked_at IS NULL AND expires_at > ${at}
        RETURNING ${sql(SESSION_COLUMNS)}, token_hash`;
      row = rows[0];
    } catch (err) {
      rethrowDatabaseError(err, "refresh session");
    }
    if (!row) return null;
    lastActivityWrite.set(row.id, at.getTime());
    const hex = Buffer.from(row.token_hash!).toString("hex");
    const entry = toEntry(row);
    await safely("update", () => cache.update(hex, JSON.stringify(entry), entryTtl(entry.e)));
    return toSession(row);
  }

  async function revoke(
    id: string,
    revokeOptions: { userId?: number; reason?: RevokeReason } = {},
  ): Promise<boolean> {
    if (typeof id !== "string" || !UUID_RE.test(id)) return false;
    const reason = revokeOptions.reason ?? "revoked";
    const owner = revokeOptions.userId ?? null;
    const at = new Date(now());
    let rows: { id: string; token_hash: Uint8Array; user_id: string }[];
    try {
      rows = await sql<{ id: string; token_hash: Uint8Array; user_id: string }[]>`
        UPDATE sessions SET revoked_at = ${at}, revoked_reason = ${reason}
        WHERE id = ${id} AND revoked_at IS NULL
          AND (${owner}::bigint IS NULL OR user_id = ${owner}::bigint)
        RETURNING id, token_hash, user_id`;
    } catch (err) {
      rethrowDatabaseError(err, "revoke session");
    }
    await afterRevoke(rows, reason);
    return rows.length > 0;
  }

  async function revokeAllForUser(
    userId: number,
    revokeOptions: { exceptId?: string; reason?: RevokeReason } = {},
  ): Promise<string[]> {
    const action = "revoke sessions";
    const uid = parseInput(userIdSchema, userId, action, "userId");
    const reason = revokeOptions.reason ?? "revoked_all";
    const except = revokeOptions.exceptId && UUID_RE.test(revokeOptions.exceptId)
      ? revokeOptions.exceptId
      : null;
    const at = new Date(now());
    let rows: { id: string; token_hash: Uint8Array; user_id: string }[];
    try {
      rows = await sql<{ id: string; token_hash: Uint8Array; user_id: string }[]>`
        UPDATE sessions SET revoked_at = ${at}, revoked_reason = ${reason}
        WHERE user_id = ${uid} AND revoked_at IS NULL
          AND (${except}::uuid IS NULL OR id <> ${except}::uuid)
        RETURNING id, token_hash, user_id`;
    } catch (err) {
      rethrowDatabaseError(err, action);
    }
    await afterRevoke(rows, reason);
    return rows.map((r) => r.id);
  }

  async function listForUser(userId: number): Promise<Session[]> {
    const action = "list sessions";
    const uid = parseInput(userIdSchema, userId, action, "userId");
    const at = new Date(now());
    try {
      const rows = await sql<SessionRow[]>`
        SELECT ${sql(SESSION_COLUMNS)} FROM sessions
        WHERE user_id = ${uid} AND revoked_at IS NULL AND expires_at > ${at}
        ORDER BY created_at DESC, id DESC`;
      return rows.map(toSession);
    } catch (err) {
      rethrowDatabaseError(err, action);
    }
  }

  async function cleanupExpired(
    cleanupOptions: { batchSize?: number; maxBatches?: number } = {},
  ): Promise<number> {
    const batch = cleanupOptions.batchSize ?? 1000;
    const maxBatches = cleanupOptions.maxBatches ?? 100;
    const at = new Date(now());
    const revokedBefore = new Date(now() - revokedRetentionMs);
    let total = 0;
    try {
      // In batches, so a large backlog never holds locks on many rows at once.
      for (let i = 0; i < maxBatches; i++) {
        const result = await sql`
          DELETE FROM sessions WHERE id IN (
            SELECT id FROM sessions WHERE expires_at <= ${at}
            UNION
            SELECT id FROM sessions WHERE revoked_at <= ${revokedBefore}
            LIMIT ${batch}
          )`;
        total += result.count;
        if (result.count < batch) break;
      }
    } catch (err) {
      rethrowDatabaseError(err, "clean up sessions");
    }
    // Entries of sessions that can no longer be written to are dead weight.
    const cutoff = now() - activityThrottleMs;
    for (const [id, t] of lastActivityWrite) if (t < cutoff) lastActivityWrite.delete(id);
    return total;
  }

  function applyRevocation(message: RevocationMessage): void {
    for (const s of message.sessions) {
      lastActivityWrite.delete(s.id);
      cache.markRevoked(s.h, cacheTtlMs);
    }
  }

  async function subscribeRevocations(
    listener?: (message: RevocationMessage) => void,
  ): Promise<() => Promise<void>> {
    if (!bus) return () => Promise.resolve();
    return await bus.subscribe(REVOCATION_CHANNEL, (text) => {
      let parsed: RevocationMessage;
      try {
        parsed = revocationSchema.parse(JSON.parse(text)) as RevocationMessage;
      } catch {
        log.warn("ignored an invalid session revocation message", { bytes: text.length });
        return;
      }
      applyRevocation(parsed);
      listener?.(parsed);
    });
  }

  return {
    cacheKind: cache.kind,
    create,
    getById,
    getByToken,
    validate,
    authority,
    markReauthenticated,
    refresh,
    revoke,
    revokeAllForUser,
    listForUser,
    cleanupExpired,
    applyRevocation,
    subscribeRevocations,
  };
}
