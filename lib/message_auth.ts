/**
 * Message authentication for everything the runtime believes from Redis.
 *
 * Redis is shared by every instance and reachable by whoever holds its password, so it is
 * not trusted: every control record written there (transport envelopes, requests and replies,
 * broadcasts, sync batches and announcements, session-cache entries, pending login
 * attempts, membership info with the member's URL, the published primary, the
 * coordinator's status and the recorded history) is *sealed* with an HMAC-SHA256 and *opened* before anything in it
 * is believed.
 *
 * - One key per purpose, derived with HKDF-SHA256 from `RS_SECRET_KEY` (the purpose string
 *   is the HKDF `info`), so a MAC made for one kind of record never verifies as another.
 * - The MAC also covers a *binding*: what the record is for, which the reader knows
 *   independently of the record (the inbox's instance, the pub/sub channel, the cache
 *   key's token hash, the member id, the Redis key). A genuine record copied to another
 *   key, channel or inbox does not verify.
 * - Canonical bytes: the MAC covers the body's exact UTF-8 bytes as the writer serialised
 *   them, and a reader verifies those bytes before it parses them; nothing is ever
 *   re-serialised to be checked, so there is exactly one byte string per record.
 * - Verification compares with `timingSafeEqual`.
 * - Rotation: records are sealed with the current key; `RS_SECRET_KEY_PREVIOUS` (optional)
 *   is accepted when opening, and {@linkcode Opened.previous} tells the reader, so a
 *   long-lived record can be re-sealed with the current key.
 *
 * Sealed form: `rs1.<43 characters of base64url MAC>.<body>`.
 * @module
 */
import { hkdfSync } from "node:crypto";
import { hmacBase64url, type HmacKey, hmacKey, sameText } from "./hmac_sha256.ts";
import { type Logger, silentLogger } from "./log.ts";

/** The kinds of record sealed, each with its own derived key. */
export const MESSAGE_PURPOSES = [
  "transport.envelope",
  "transport.reply",
  "transport.request",
  "transport.broadcast",
  "sync.batch",
  "bus.message",
  "session.cache",
  "login.attempt",
  "membership.info",
  "failover.record",
  "history.record",
] as const;

/** One kind of sealed record. */
export type MessagePurpose = typeof MESSAGE_PURPOSES[number];

/** A record that verified. */
export interface Opened {
  /** The body, exactly as the writer serialised it. */
  body: string;
  /** True when it verified with the previous key only (re-seal long-lived records). */
  previous: boolean;
}

/** Counters of {@linkcode MessageAuth}. */
export interface MessageAuthStats {
  /** Records sealed. */
  sealed: number;
  /** Records that verified. */
  opened: number;
  /** Records that verified with the previous key. */
  openedWithPrevious: number;
  /** Records refused (no MAC, a wrong MAC, a wrong binding), by purpose. */
  forged: Partial<Record<MessagePurpose, number>>;
  /** All refused records. */
  forgedTotal: number;
  /** Whether a previous key is configured (a rotation is under way). */
  rotating: boolean;
}

/** Seals and opens records with keys derived from the secret key. */
export interface MessageAuth {
  /** `body` sealed for `purpose`, bound to `binding`. */
  seal(purpose: MessagePurpose, binding: string, body: string): string;
  /** The body of a record that verifies for `purpose` and `binding`, or null. */
  open(purpose: MessagePurpose, binding: string, sealed: string): Opened | null;
  /**
   * Counts a refused record and logs it once per (purpose, claimed sender) — an attacker
   * writing many records fills the counter, not the log.
   */
  refused(purpose: MessagePurpose, sender: string, detail?: Record<string, unknown>): void;
  /** Counters, for /health. */
  stats(): MessageAuthStats;
}

const PREFIX = "rs1.";
/** Length of a base64url SHA-256 MAC. */
const MAC_CHARS = 43;
const HEADER = PREFIX.length + MAC_CHARS + 1;
const SALT = "rootstream/message-auth/v1";
/** Distinct (purpose, sender) pairs logged before further ones are only counted. */
const MAX_LOGGED_SENDERS = 1000;

/** A purpose's HMAC key, its pad blocks compressed once (lib/hmac_sha256.ts). */
type PaddedKey = HmacKey;

/** The key of one purpose, derived from a 32-byte secret. */
function derive(secret: Uint8Array, purpose: MessagePurpose): PaddedKey {
  return hmacKey(new Uint8Array(hkdfSync("sha256", secret, SALT, `rootstream ${purpose}`, 32)));
}

/**
 * HMAC-SHA256 of the binding and body, base64url (the same bytes as createHmac, which
 * tests/lib/message_auth_test.ts checks). Computed by lib/hmac_sha256.ts over the key's
 * precomputed pad states: node:crypto's per-call cost was the largest cost of a message on
 * the hot path.
 */
function mac(key: PaddedKey, binding: string, body: string): string {
  // The binding is length-prefixed so no (binding, body) pair can be re-cut as another.
  return hmacBase64url(key, `${binding.length}:${binding}\n${body}`);
}

/** Constant-time comparison of the presented MAC with the expected one. */
function check(presented: string, key: PaddedKey, binding: string, body: string): boolean {
  return sameText(presented, mac(key, binding, body));
}

/**
 * The sealer of this process: `key` seals and opens, `previous` (during a rotation) only
 * opens.
 */
export function createMessageAuth(
  key: Uint8Array,
  options: { previous?: Uint8Array | null; log?: Logger } = {},
): MessageAuth {
  if (key.length !== 32) throw new TypeError("the message key must be 32 bytes");
  const previous = options.previous ?? null;
  if (previous && previous.length !== 32) throw new TypeError("the previous key must be 32 bytes");
  const log = options.log ?? silentLogger;
  const current = new Map<MessagePurpose, PaddedKey>();
  const old = new Map<MessagePurpose, PaddedKey>();
  for (const p of MESSAGE_PURPOSES) {
    current.set(p, derive(key, p));
    if (previous) old.set(p, derive(previous, p));
  }
  const stats = {
    sealed: 0,
    opened: 0,
    openedWithPrevious: 0,
    forged: {} as Partial<Record<MessagePurpose, number>>,
    forgedTotal: 0,
  };
  const logged = new Set<string>();
  let loggedOverflow = false;

  return {
    seal(purpose, binding, body) {
      stats.sealed++;
      return PREFIX + mac(current.get(purpose)!, binding, body) + "." + body;
    },
    open(purpose, binding, sealed) {
      if (sealed.length < HEADER || !sealed.startsWith(PREFIX) || sealed[HEADER - 1] !== ".") {
        return null;
      }
      const presented = sealed.slice(PREFIX.length, HEADER - 1);
      if (presented.length !== MAC_CHARS) return null;
      const body = sealed.slice(HEADER);
      if (check(presented, current.get(purpose)!, binding, body)) {
        stats.opened++;
        return { body, previous: false };
      }
      const oldKey = old.get(purpose);
      if (oldKey && check(presented, oldKey, binding, body)) {
        stats.opened++;
        stats.openedWithPrevious++;
        return { body, previous: true };
      }
      return null;
    },
    refused(purpose, sender, detail = {}) {
      stats.forged[purpose] = (stats.forged[purpose] ?? 0) + 1;
      stats.forgedTotal++;
      const who = `${purpose}\u0000${sender}`;
      if (logged.has(who)) return;
      if (logged.size >= MAX_LOGGED_SENDERS) {
        if (!loggedOverflow) {
          loggedOverflow = true;
          log.warn("refused unauthenticated records from too many senders; counting only", {
            purpose,
          });
        }
        return;
      }
      logged.add(who);
      log.warn(
        "refused a record from Redis without a valid MAC (forged, altered or sealed with " +
          "another RS_SECRET_KEY); further ones from this sender are only counted",
        { purpose, sender, ...detail },
      );
    },
    stats: () => ({
      ...stats,
      forged: { ...stats.forged },
      rotating: previous !== null,
    }),
  };
}

/**
 * The sender a refused record claims to come from, for the log: a short instance id found
 * in its JSON (`from.instance`, `n`, `id`, `by`), else `unknown`. Bounded work: records over
 * 64 KiB are not parsed.
 */
export function claimedSender(raw: string): string {
  const start = raw.startsWith(PREFIX) ? Math.min(raw.length, HEADER) : 0;
  if (raw.length - start > 64 * 1024) return "unknown";
  try {
    const v = JSON.parse(raw.slice(start)) as Record<string, unknown> | null;
    const from = v?.from as Record<string, unknown> | undefined;
    const candidate = from?.instance ?? v?.n ?? v?.by ?? v?.id ?? v?.origin;
    return typeof candidate === "string" ? candidate.slice(0, 128) : "unknown";
  } catch {
    return "unknown";
  }
}
