/**
 * Messages between runtime instances, addressed to actors.
 *
 * | path | carried by | guarantee |
 * | --- | --- | --- |
 * | `send(to, event)` | the receiver's inbox, a Redis Stream read through a consumer group | **at-least-once**: an entry is acknowledged only after it was handed to the running actor; entries of a receiver that dies are redelivered when it comes back with the same instance id (same `meta.id`, so receivers can de-duplicate) |
 * | `broadcast(actor, event)` | Redis pub/sub | **at-most-once**, to the instances subscribed at that moment |
 * | `request(to, event)` | request: Redis pub/sub on the receiver's channel `rt.request.<instance>`, or its inbox when nobody listens there; reply: pub/sub on `rt.reply.<instance>` | **at-most-once**: resolves with the reply or rejects with REQUEST_TIMEOUT; the request is handled at most once per incarnation of the receiver (a timed-out request may still have been handled) |
 *
 * A request is one PUBLISH each way, like a raw pub/sub echo: no stream entry to append, read,
 * acknowledge and delete. A reply was never more than at-most-once, so a request lost on the
 * way (its receiver's subscriber reconnecting at that moment) ends the same way as a lost
 * reply: REQUEST_TIMEOUT. When the PUBLISH reached no subscriber (the receiver restarting,
 * or running a version without the request channel) the request goes to the receiver's inbox
 * instead, as every request did before, and waits there for it within the timeout. Requests
 * are not ordered with sends: a request may overtake a send made before it to the same actor.
 * Requests to one instance made in one microtask run (and the replies to one requester) go as
 * one sealed batch on `rt.requests.<instance>` (`rt.replies.<instance>`), each envelope in it
 * checked alone; a batch nobody hears there is sent again one by one on the single channel.
 *
 * Authenticity: on Redis every envelope is sealed (lib/message_auth.ts) with an HMAC keyed from
 * the cluster's secret key and bound to the receiving instance (inbox entries) or the channel
 * (requests, broadcasts, replies: store/bus.ts), and opened before anything in it is
 * believed. A message without a valid MAC — written by someone with raw Redis access,
 * altered, or copied into another instance's inbox or channel — is dropped and counted
 * (inbox entries: `dropped_forged`; channel messages: the bus's `forged`; both in the message
 * auth's refusals by purpose), and logged once per claimed sender. Replays of genuine messages
 * are bounded: a message id is delivered once per incarnation of the receiver (`dropped_replayed`), and requests and broadcasts older than
 * `maxMessageAgeMs` (or dated that far ahead) are refused (`dropped_stale`); sends keep
 * at-least-once redelivery across restarts, so they have no age limit.
 *
 * Every message is parsed against the envelope schema and the receiving actor's own event
 * schema before it reaches the actor. Malformed, oversized, unknown-actor and unknown-event
 * messages are counted (`stats()`), logged and dropped — acknowledged, so a poisoned entry
 * is never redelivered forever — and never crash the receiver.
 * @module
 */
import { Buffer } from "node:buffer";
import type { ReceivedMessage } from "./history.ts";
import type { AnyActorRef } from "xstate";
import { RuntimeError } from "../../lib/errors.ts";
import { type Logger, silentLogger } from "../../lib/log.ts";
import { claimedSender, type MessageAuth } from "../../lib/message_auth.ts";
import type { MessageBus } from "../../store/bus.ts";
import { duplicateRedis, type Keyspace, type RedisClient } from "../../store/redis.ts";
import { createSeenIds } from "../../lib/seen_ids.ts";
import { checkEnvelope, type Envelope, type InboundEnvelope, isEvent } from "./envelope.ts";
import { createInboxReader, createInboxWriter, type InboxEntry } from "../../store/redis_inbox.ts";
import type {
  ActorAddress,
  ActorSpec,
  DeliveryMeta,
  RemoteEvent,
  RequestHandler,
  Transport,
} from "./types.ts";

/** Largest accepted message, in bytes of JSON (default). */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024;
/** Requests and broadcasts older than this are refused (default; RS_MESSAGE_MAX_AGE_S). */
export const DEFAULT_MAX_MESSAGE_AGE_MS = 300_000;
/** Message ids remembered for de-duplication: at least the latest this many (twice as many held at most). */
const MAX_SEEN_IDS = 200_000;

type Inbound = InboundEnvelope;

/** How the transport finds local actors. */
export interface LocalActors {
  /** The registry entry of an actor id, if this instance has one. */
  spec(id: string): ActorSpec | undefined;
  /** The running actor, or undefined while it is restarting / stopped. */
  ref(id: string): AnyActorRef | undefined;
}

/** Options of both transports. */
export interface TransportOptions {
  /** This instance's id. */
  instanceId: string;
  /** Resolves local actors. */
  actors: LocalActors;
  /** Pub/sub for broadcasts and replies. */
  bus: MessageBus;
  /** Logger. */
  log?: Logger;
  /** Wall clock. */
  now?: () => number;
  /** Largest accepted message (bytes of JSON). */
  maxMessageBytes?: number;
  /** Default request timeout. */
  requestTimeoutMs?: number;
  /** Requests and broadcasts older than this (or dated this far ahead) are refused. */
  maxMessageAgeMs?: number;
  /** Message ids kept for de-duplication before the count bound forgets them (200,000). */
  maxSeenIds?: number;
  /**
   * Told of each message for a local actor, with the time it arrived (the history recorder;
   * it must not block, and must not change the message).
   */
  onReceived?: (message: ReceivedMessage, at: number) => void;
}

type Counters = Record<
  | "sent"
  | "broadcasts"
  | "requests"
  | "requests_via_inbox"
  | "delivered"
  | "redelivered"
  | "replies"
  | "timeouts"
  | "dropped_malformed"
  | "dropped_oversized"
  | "dropped_unknown_actor"
  | "dropped_unknown_event"
  | "dropped_invalid_event"
  | "dropped_forged"
  | "dropped_replayed"
  | "dropped_stale"
  | "deferred",
  number
>;

function newCounters(): Counters {
  return {
    sent: 0,
    broadcasts: 0,
    requests: 0,
    requests_via_inbox: 0,
    delivered: 0,
    redelivered: 0,
    replies: 0,
    timeouts: 0,
    dropped_malformed: 0,
    dropped_oversized: 0,
    dropped_unknown_actor: 0,
    dropped_unknown_event: 0,
    dropped_invalid_event: 0,
    dropped_forged: 0,
    dropped_replayed: 0,
    dropped_stale: 0,
    deferred: 0,
  };
}

/**
 * This process's id prefix: 16 random bytes, base64url (22 characters), drawn once.
 */
const ID_PREFIX = Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString("base64url");
let idCount = 0;

/**
 * A message (or correlation) id unique across processes and restarts: this process's random
 * prefix and a counter, instead of a `crypto.randomUUID()` per id (three per request and its
 * reply, each a call into the runtime, on the message path). Ids need to be unique, not
 * unguessable: nothing is believed from Redis without its MAC, so a forger who can predict an
 * id still cannot make a message or a reply that opens; de-duplication and reply matching
 * only need no two messages to share one.
 */
function messageId(): string {
  return `${ID_PREFIX}.${(++idCount).toString(36)}`;
}

/** A request waiting for its reply. */
interface Waiter {
  corr: string;
  to: ActorAddress;
  timeoutMs: number;
  /** Deadline, on the monotonic clock (performance.now()). */
  at: number;
  resolve(v: unknown): void;
  reject(e: unknown): void;
}

/** Told the subscribers a published envelope reached, or why it was not published. */
type Done = (reached: number, err: unknown) => void;

/** Result of handing an inbound message to a local actor. */
type Outcome = "delivered" | "dropped" | "deferred";

/** The part both transports share: parsing, validation, delivery, requests and replies. */
function createCore(options: TransportOptions) {
  const log = options.log ?? silentLogger;
  const now = options.now ?? Date.now;
  const maxBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  const counters = newCounters();
  const pending = new Map<string, Waiter>();
  /**
   * Request deadlines, one queue per timeout length: within a queue, deadlines come in the
   * order requests were made, so one timer (for the earliest head) serves every request
   * instead of a setTimeout and a clearTimeout per request (a few µs each, measured on the
   * message path).
   */
  const deadlines = new Map<number, { waiters: Waiter[]; head: number }>();
  let expiryTimer: number | undefined;
  let expiryAt = Infinity;
  const replyChannel = (instance: string) => `rt.reply.${instance}`;
  const requestChannel = (instance: string) => `rt.request.${instance}`;
  /** Where several requests (replies) to one instance made in one microtask run go as one. */
  const requestBatchChannel = (instance: string) => `rt.requests.${instance}`;
  const replyBatchChannel = (instance: string) => `rt.replies.${instance}`;
  /**
   * Envelopes for one instance made in one run of the event loop's microtasks, published as
   * one message holding a JSON array of them: one seal, one open and one PUBLISH for the
   * batch instead of one each per envelope (the MACs and the client's per-command work were
   * most of a message's CPU in both processes, docs/scaling.md). Each envelope in it is
   * checked as a lone one is (size of the whole, the envelope check, id de-duplication, age,
   * the handler's schema). A lone envelope goes as before, on the single channel; a batch
   * that reaches nobody (a receiver of an earlier version listens only there) is sent again
   * envelope by envelope on the single channel.
   */
  function createBatcher(single: (i: string) => string, batch: (i: string) => string) {
    interface Open {
      jsons: string[];
      /** Told, per envelope, the subscribers it reached (or the error). */
      done: Done[];
      bytes: number;
    }
    const open = new Map<string, Open>();
    /** Calls one envelope's `done`; one that throws does not keep the others from theirs. */
    function tell(d: Done, n: number, err: unknown): void {
      try {
        d(n, err);
      } catch (e) {
        log.error("publish callback failed", { error: e instanceof Error ? e.message : String(e) });
      }
    }
    function flush(instance: string, b: Open): void {
      const { jsons, done } = b;
      const each = (i: number) => (p: Promise<number>): void =>
        void p.then((n) => tell(done[i], n, null), (err) => tell(done[i], 0, err));
      if (jsons.length === 1) return each(0)(options.bus.publish(single(instance), jsons[0]));
      options.bus.publish(batch(instance), `[${jsons.join(",")}]`).then(
        (n) => {
          if (n > 0) { for (const d of done) tell(d, n, null); }
          else {
            for (let i = 0; i < jsons.length; i++) {
              each(i)(options.bus.publish(single(instance), jsons[i]));
            }
          }
        },
        (err) => {
          for (const d of done) tell(d, 0, err);
        },
      );
    }
    /**
     * Publishes `json` to `instance`; `done` is told the subscribers it reached, or the error.
     * A callback rather than a promise per envelope: the batch's one promise settles them all.
     */
    return function publish(instance: string, json: string, done: Done): void {
      let b = open.get(instance);
      // A batch stays within the receiver's size limit: past it, a new one starts.
      if (b && b.bytes + json.length + 1 > maxBytes) b = undefined;
      if (!b) {
        const started: Open = { jsons: [], done: [], bytes: 2 };
        // Two microtask hops, as before: envelopes made by continuations of one another in
        // the same microtask run still join the batch.
        new Promise<void>((r) => queueMicrotask(r)).then(() => {
          if (open.get(instance) === started) open.delete(instance);
          flush(instance, started);
        });
        open.set(instance, b = started);
      }
      b.jsons.push(json);
      b.done.push(done);
      b.bytes += json.length + 1;
    };
  }
  const publishReply = createBatcher(replyChannel, replyBatchChannel);
  const publishRequest = createBatcher(requestChannel, requestBatchChannel);
  /** Request handlers running now, and who waits for none to run (`drain`). */
  let running = 0;
  const idleWaiters: (() => void)[] = [];
  const maxAgeMs = options.maxMessageAgeMs ?? DEFAULT_MAX_MESSAGE_AGE_MS;
  /**
   * Ids of messages delivered: each kept at least 2 × the age limit or MAX_SEEN_IDS later ids;
   * past that, its sender's counter floor still refuses it (lib/seen_ids.ts).
   */
  const seen = createSeenIds({
    keepMs: maxAgeMs * 2,
    max: options.maxSeenIds ?? MAX_SEEN_IDS,
    now,
  });
  /** Senders already logged for a replayed or stale message (counted after that). */
  const loggedReplays = new Set<string>();

  /** Counts a genuine but replayed or out-of-date message, logging the first per sender. */
  function refuseReplay(
    reason: "dropped_replayed" | "dropped_stale",
    detail: Record<string, unknown> & { from: string },
  ): Outcome {
    counters[reason]++;
    const key = `${reason}:${detail.from}`;
    if (!loggedReplays.has(key) && loggedReplays.size < 1000) {
      loggedReplays.add(key);
      log.warn("message dropped; further ones from this sender are only counted", {
        reason: reason.replace("dropped_", ""),
        ...detail,
      });
    }
    return "dropped";
  }

  function drop(reason: keyof Counters, detail: Record<string, unknown>): Outcome {
    counters[reason]++;
    log.warn("message dropped", { reason: reason.replace("dropped_", ""), ...detail });
    return "dropped";
  }

  /** Parses raw JSON within the size limit, or counts why not (undefined). */
  function parseJson(raw: string): unknown {
    if (raw.length > maxBytes) {
      drop("dropped_oversized", { bytes: raw.length, limit: maxBytes });
      return undefined;
    }
    try {
      return JSON.parse(raw);
    } catch {
      drop("dropped_malformed", { error: "not JSON" });
      return undefined;
    }
  }

  /** Parses raw JSON into an envelope, or counts why not. */
  function parse(raw: string): Envelope | null {
    const json = parseJson(raw);
    if (json === undefined) return null;
    // The one check of the envelope, at the edge; the actor's schema checks the event.
    const env = checkEnvelope(json);
    if (typeof env === "string") {
      drop("dropped_malformed", { error: env });
      return null;
    }
    return env;
  }

  /**
   * Parses a batch (a JSON array of envelopes) into its envelopes: the size limit holds for the
   * whole, each envelope is checked on its own and a bad one is counted and left out.
   */
  function parseBatch(raw: string): Envelope[] {
    const json = parseJson(raw);
    if (json === undefined) return [];
    if (!Array.isArray(json)) {
      drop("dropped_malformed", { error: "a batch is an array of envelopes" });
      return [];
    }
    const out: Envelope[] = [];
    for (const item of json) {
      const env = checkEnvelope(item);
      if (typeof env === "string") drop("dropped_malformed", { error: env });
      else out.push(env);
    }
    return out;
  }

  function replyNotSent(err: unknown): void {
    log.warn("reply not sent", { error: err instanceof Error ? err.message : String(err) });
  }

  /**
   * Sends a reply. It counts in `running` until it left (or failed), so `drain` (on close)
   * waits for it; `then` runs after that.
   */
  function sendReply(
    to: string,
    corr: string,
    body: { ok: boolean; result?: unknown; error?: { code: string; message: string } },
    then?: () => void,
  ): void {
    // undefined `result` / `error` are left out by JSON.stringify.
    const reply = {
      v: 1,
      kind: "reply",
      id: messageId(),
      corr,
      sentAt: now(),
      ok: body.ok,
      result: body.result,
      error: body.error,
    };
    counters.replies++;
    let json: string;
    try {
      json = JSON.stringify(reply);
    } catch (err) {
      // A result JSON cannot hold (a cycle, a BigInt): the requester is told the handler failed.
      log.error("request handler failed", { error: `its result is not JSON: ${err}` });
      if (body.ok) {
        sendReply(to, corr, {
          ok: false,
          error: { code: "INTERNAL", message: "The request handler failed" },
        }, then);
      } else then?.();
      return;
    }
    running++;
    publishReply(to, json, (_n, err) => {
      if (err) replyNotSent(err);
      idle();
      then?.();
    });
  }

  /** One handler or reply fewer running; wakes `drain` when none is left. */
  function idle(): void {
    if (--running === 0) { for (const wake of idleWaiters.splice(0)) wake(); }
  }

  /** What the log says of a dropped message (built only when one is dropped). */
  function detailOf(env: Inbound): Record<string, unknown> & { from: string } {
    return { id: env.id, actor: env.to.actor, type: env.event.type, from: env.from.instance };
  }

  /**
   * Runs a request's handler and sends its reply. Counted in `running` (until the reply left)
   * rather than kept as a promise in a set; callbacks on the handler's promise instead of an
   * async function awaiting it and the reply's publish (each await a promise and a microtask
   * turn on the message path).
   */
  function answer(
    handler: RequestHandler,
    event: RemoteEvent,
    env: Inbound,
    meta: DeliveryMeta,
  ): void {
    running++;
    const to = env.from.instance;
    const corr = env.corr!;
    const failed = (err: unknown) => {
      const code = err instanceof RuntimeError ? err.code : "INTERNAL";
      const message = err instanceof RuntimeError ? err.message : "The request handler failed";
      if (!(err instanceof RuntimeError)) {
        log.error("request handler failed", { ...detailOf(env), error: String(err) });
      }
      sendReply(to, corr, { ok: false, error: { code, message } }, idle);
    };
    let result: Promise<unknown>;
    try {
      result = handler.handle(event, { ref: options.actors.ref(env.to.actor), meta });
    } catch (err) {
      return failed(err);
    }
    Promise.resolve(result).then(
      (value) => sendReply(to, corr, { ok: true, result: value }, idle),
      failed,
    );
  }

  /**
   * Validates an inbound message against the target actor and hands it over. Synchronous: a
   * refusal's reply is sent on its own (counted in `running`, so close waits for it).
   */
  function deliver(env: Inbound, redelivery = false): Outcome {
    const spec = options.actors.spec(env.to.actor);
    // One clock read per message: the age check and the recorded time of arrival.
    const at = now();
    if (env.kind !== "send" && Math.abs(at - env.sentAt) > maxAgeMs) {
      return refuseReplay("dropped_stale", { ...detailOf(env), sentAt: env.sentAt });
    }
    // A request or broadcast whose id the count bound forgot is refused too (its sender's
    // counter floor, lib/seen_ids.ts); a send may wait in the inbox for long, and is only
    // refused once seen.
    if (seen.has(env.id) || (env.kind !== "send" && seen.forgotten(env.id))) {
      return refuseReplay("dropped_replayed", detailOf(env));
    }
    if (!spec) {
      if (env.kind === "request" && env.corr) {
        sendReply(env.from.instance, env.corr, {
          ok: false,
          error: {
            code: "ACTOR_NOT_FOUND",
            message: `No actor ${env.to.actor} on ${options.instanceId}`,
          },
        });
      }
      return drop("dropped_unknown_actor", detailOf(env));
    }
    const meta: DeliveryMeta = {
      id: env.id,
      from: env.from,
      kind: env.kind,
      sentAt: env.sentAt,
      correlationId: env.corr,
    };
    // The checked envelope itself (the recorder keeps the fields it needs, not the payload).
    options.onReceived?.(env, at);
    if (env.kind === "request") {
      const handler = spec.requests?.[env.event.type];
      if (!handler) return drop("dropped_unknown_event", detailOf(env));
      const parsed = handler.schema.safeParse(env.event);
      if (!parsed.success) {
        sendReply(env.from.instance, env.corr!, {
          ok: false,
          error: { code: "MESSAGE_INVALID", message: parsed.error.issues[0]?.message ?? "invalid" },
        });
        return drop("dropped_invalid_event", detailOf(env));
      }
      // The handler runs on its own: a slow request must not hold up the inbox.
      answer(handler, parsed.data, env, meta);
      seen.add(env.id);
      counters.delivered++;
      if (redelivery) counters.redelivered++;
      return "delivered";
    }
    const schema = spec.accepts?.[env.event.type];
    if (!schema) return drop("dropped_unknown_event", detailOf(env));
    const parsed = schema.safeParse(env.event);
    if (!parsed.success) return drop("dropped_invalid_event", detailOf(env));
    const ref = options.actors.ref(env.to.actor);
    if (!ref) {
      // The actor is restarting: keep the message (not acknowledged) for a later attempt.
      counters.deferred++;
      return "deferred";
    }
    ref.send({ ...parsed.data, origin: meta });
    seen.add(env.id);
    counters.delivered++;
    if (redelivery) counters.redelivered++;
    return "delivered";
  }

  function envelope(
    kind: "send" | "broadcast" | "request",
    to: { instance: string; actor: string },
    event: RemoteEvent,
    extra: { from?: string; corr?: string } = {},
  ): { env: Inbound; json: string } {
    if (!isEvent(event)) {
      throw new RuntimeError("MESSAGE_INVALID", "Cannot send: the event needs a string `type`");
    }
    const env: Inbound = {
      v: 1,
      kind,
      id: messageId(),
      from: { instance: options.instanceId, actor: extra.from ?? "runtime" },
      to,
      event,
      corr: extra.corr,
      sentAt: now(),
    };
    const json = JSON.stringify(env);
    if (json.length > maxBytes) {
      throw new RuntimeError(
        "MESSAGE_INVALID",
        `Cannot send: the message is ${json.length} bytes, over the ${maxBytes}-byte limit`,
      );
    }
    return { env, json };
  }

  /** Registers a pending request and returns its promise. */
  function awaitReply<T>(corr: string, to: ActorAddress, timeoutMs: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const waiter: Waiter = {
        corr,
        to,
        timeoutMs,
        at: performance.now() + timeoutMs,
        resolve: resolve as (v: unknown) => void,
        reject,
      };
      pending.set(corr, waiter);
      let queue = deadlines.get(timeoutMs);
      if (!queue) deadlines.set(timeoutMs, queue = { waiters: [], head: 0 });
      queue.waiters.push(waiter);
      if (waiter.at < expiryAt) armExpiry(waiter.at);
    });
  }

  function armExpiry(at: number): void {
    clearTimeout(expiryTimer);
    expiryAt = at;
    expiryTimer = setTimeout(expire, Math.max(0, Math.ceil(at - performance.now())));
  }

  function disarmExpiry(): void {
    clearTimeout(expiryTimer);
    expiryTimer = undefined;
    expiryAt = Infinity;
  }

  /** Times out every request past its deadline, then waits for the next live one. */
  function expire(): void {
    expiryTimer = undefined;
    expiryAt = Infinity;
    const t = performance.now();
    let next = Infinity;
    for (const [length, queue] of deadlines) {
      const { waiters } = queue;
      while (queue.head < waiters.length) {
        const w = waiters[queue.head];
        // Settled requests are no longer in `pending` (or a newer one took the id).
        if (pending.get(w.corr) !== w) {
          queue.head++;
          continue;
        }
        if (w.at > t + 0.5) break;
        queue.head++;
        pending.delete(w.corr);
        counters.timeouts++;
        w.reject(
          new RuntimeError(
            "REQUEST_TIMEOUT",
            `No reply from ${w.to.actor}@${w.to.instance} within ${w.timeoutMs} ms`,
          ),
        );
      }
      if (queue.head === waiters.length) deadlines.delete(length);
      else {
        if (queue.head > 1024) {
          waiters.splice(0, queue.head);
          queue.head = 0;
        }
        next = Math.min(next, waiters[queue.head].at);
      }
    }
    if (next < Infinity) armExpiry(next);
  }

  /** Removes a settled request; the expiry timer goes once nothing waits. */
  function settle(corr: string): Waiter | undefined {
    const waiter = pending.get(corr);
    if (!waiter) return undefined;
    pending.delete(corr);
    if (!pending.size) {
      deadlines.clear();
      disarmExpiry();
      return waiter;
    }
    // Replies come back mostly in the order the requests were made: step the deadline queue's
    // head past the settled ones now, instead of keeping every settled waiter (and its
    // promise's resolvers) until the expiry timer passes its deadline — seconds of requests
    // held, each copied by the young-generation GC and promoted to the old one.
    const queue = deadlines.get(waiter.timeoutMs);
    if (queue) {
      const { waiters } = queue;
      while (queue.head < waiters.length) {
        const w = waiters[queue.head];
        if (pending.get(w.corr) === w) break;
        queue.head++;
      }
      if (queue.head === waiters.length) {
        waiters.length = 0;
        queue.head = 0;
      } else if (queue.head > 1024) {
        waiters.splice(0, queue.head);
        queue.head = 0;
      }
    }
    return waiter;
  }

  function onReply(raw: string): void {
    const env = parse(raw);
    if (env) takeReply(env);
  }

  function onReplies(raw: string): void {
    for (const env of parseBatch(raw)) takeReply(env);
  }

  function takeReply(env: Envelope): void {
    if (env.kind !== "reply") return;
    const waiter = settle(env.corr);
    if (!waiter) return; // late reply after a timeout: nothing waits for it
    if (env.ok) waiter.resolve(env.result);
    else {
      const code = (env.error?.code ?? "INTERNAL") as ConstructorParameters<typeof RuntimeError>[0];
      waiter.reject(new RuntimeError(code, env.error?.message ?? "The request failed"));
    }
  }

  /** Waits for request handlers still running (on close). */
  async function drain(): Promise<void> {
    if (running) await new Promise<void>((resolve) => idleWaiters.push(resolve));
  }

  function failPending(): void {
    for (const [corr, w] of pending) {
      w.reject(new RuntimeError("CLUSTER_UNAVAILABLE", "The transport was closed"));
      pending.delete(corr);
    }
    deadlines.clear();
    disarmExpiry();
  }

  return {
    log,
    now,
    counters,
    parse,
    deliver,
    envelope,
    awaitReply,
    onReply,
    onReplies,
    parseBatch,
    publishRequest,
    failPending,
    /** Requests waiting for their reply now. */
    pendingRequests: () => pending.size,
    drain,
    replyChannel,
    requestChannel,
    replyBatchChannel,
    requestBatchChannel,
    requestTimeoutMs: options.requestTimeoutMs ?? 5000,
  };
}

/**
 * Transport over Redis: inbox streams for addressed messages (store/redis_inbox.ts), pub/sub
 * for broadcasts and replies. `redis` is the shared command connection; the inbox reader
 * uses its own blocking connection.
 */
export function createRedisTransport(
  redis: RedisClient,
  options: TransportOptions & {
    keyspace: Keyspace;
    auth: MessageAuth;
    inboxMaxLen?: number;
    /** Replicas an appended message must reach before a send succeeds (0: the master's answer). */
    inboxReplicas?: number;
    /** How long a send waits for those replicas. */
    inboxWaitMs?: number;
  },
): Transport & { start(): Promise<void> } {
  const core = createCore(options);
  const { log, counters } = core;
  const auth = options.auth;
  const maxSealed = (options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES) + 128;
  const reader = duplicateRedis(redis, {
    name: `rs-inbox-${options.instanceId}`,
    enableAutoPipelining: false,
  });
  reader.on("error", () => {});
  const inboxes = createInboxWriter(redis, options.keyspace, {
    maxLen: options.inboxMaxLen ?? 10_000,
    replicas: options.inboxReplicas ?? 0,
    waitMs: options.inboxWaitMs,
    now: options.now,
  });
  const inbox = createInboxReader(redis, reader, options.keyspace, options.instanceId);

  /** A request that came over pub/sub (alone or in a batch), already checked as an envelope. */
  function takeRequest(env: Envelope): void {
    if (env.kind !== "request") {
      counters.dropped_malformed++;
      return;
    }
    try {
      core.deliver(env);
    } catch (err) {
      log.error("delivery failed", { error: err instanceof Error ? err.message : String(err) });
    }
  }
  let running = false;
  let loop: Promise<void> | null = null;
  const unsubscribers: (() => Promise<void>)[] = [];
  /** Entries handed over but deferred (actor restarting), retried by the loop. */
  const deferred = new Map<string, Inbound>();

  /** Hands one entry over; returns true when it may be acknowledged. */
  function handleEntry(entry: InboxEntry, redelivery: boolean): boolean {
    // Trimmed away while pending, or not a message: nothing to deliver.
    if (entry.message === null) return true;
    if (entry.message.length > maxSealed) {
      counters.dropped_oversized++;
      log.warn("message dropped", { reason: "oversized", bytes: entry.message.length });
      return true;
    }
    // Bound to this instance: a genuine entry copied from another inbox does not open.
    const opened = auth.open("transport.envelope", options.instanceId, entry.message);
    if (!opened) {
      counters.dropped_forged++;
      auth.refused("transport.envelope", claimedSender(entry.message), { entry: entry.id });
      return true;
    }
    const env = core.parse(opened.body);
    if (!env) return true; // counted as malformed / oversized by parse
    if (env.kind === "reply" || env.kind === "broadcast") {
      counters.dropped_malformed++;
      return true;
    }
    let outcome: Outcome;
    try {
      outcome = core.deliver(env, redelivery);
    } catch (err) {
      log.error("delivery failed", { error: err instanceof Error ? err.message : String(err) });
      outcome = "deferred";
    }
    if (outcome === "deferred") {
      deferred.set(entry.id, env);
      return false;
    }
    return true;
  }

  function handleBatch(entries: InboxEntry[], redelivery: boolean): void {
    // Every entry is started in the same synchronous run, in stream order: each one's checks
    // and its hand-over (ref.send, or the start of a request handler) run before the next
    // one's, so the order of delivery is the stream's. Awaiting each entry before starting the
    // next instead spread the batch over many microtask turns, and every reply then went out
    // in a socket write of its own (one send(2) per message, counted with strace during the runtime bench).
    const results = entries.map((entry) => handleEntry(entry, redelivery));
    const done: string[] = [];
    for (let i = 0; i < entries.length; i++) if (results[i]) done.push(entries[i].id);
    scheduleAck(done);
  }

  /**
   * Acknowledgements are batched for a few milliseconds: replies and the next read go out
   * first, and many entries share one XACK. An acknowledgement lost to a crash only means
   * a redelivery, which at-least-once allows.
   */
  const ackQueue: string[] = [];
  let ackTimer: number | undefined;
  function flushAcks(): Promise<void> {
    clearTimeout(ackTimer);
    ackTimer = undefined;
    const ids = ackQueue.splice(0);
    return inbox.ack(ids).catch((err) =>
      log.warn("acknowledgement failed", { error: String(err) })
    );
  }
  function scheduleAck(ids: string[]): void {
    if (!ids.length) return;
    ackQueue.push(...ids);
    if (ackQueue.length >= 500) flushAcks();
    else ackTimer ??= setTimeout(flushAcks, 5);
  }

  function retryDeferred(): void {
    const done: string[] = [];
    for (const [entryId, env] of [...deferred]) {
      const outcome = core.deliver(env, true);
      if (outcome === "deferred") continue;
      deferred.delete(entryId);
      done.push(entryId);
    }
    scheduleAck(done);
  }

  async function readLoop(): Promise<void> {
    // First the entries delivered to an earlier incarnation of this instance but never
    // acknowledged (it died or its actor was down): that is the at-least-once part.
    let backlog = true;
    let backoff = 100;
    while (running) {
      try {
        // Connect only a connection nobody is connecting: calling connect() while ioredis
        // waits to reconnect orphans its reconnect timer (a leaked timer that fires after
        // close, seen under load); a "reconnecting" reader queues our read until it is back.
        if (reader.status === "wait" || reader.status === "end") {
          await reader.connect().catch(() => {});
        }
        if (backlog) {
          // (Re)create the group after start-up or an outage (a restarted Redis without
          // persistence has lost it); the steady-state loop below skips this round trip.
          await inbox.ensureGroup();
          const entries = await inbox.readPending(100);
          const fresh = entries.filter((e) => !deferred.has(e.id));
          handleBatch(fresh, true);
          if (fresh.length < 100) backlog = false;
          continue;
        }
        if (deferred.size) retryDeferred();
        // A long block: an idle instance costs one read per 15 s, and a new entry still wakes
        // the read at once (close() ends it by disconnecting the reader).
        handleBatch(await inbox.readNew(100, deferred.size ? 100 : 15_000), false);
        backoff = 100;
      } catch (err) {
        if (!running) return;
        log.warn("inbox read failed; retrying", {
          error: err instanceof Error ? err.message : String(err),
          retryInMs: backoff,
        });
        // After an outage, pending entries may have been left unacknowledged.
        backlog = true;
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 2000);
      }
    }
  }

  return {
    instanceId: options.instanceId,
    async start() {
      if (running) return;
      running = true;
      unsubscribers.push(
        await options.bus.subscribe(core.replyChannel(options.instanceId), core.onReply),
        await options.bus.subscribe(core.replyBatchChannel(options.instanceId), core.onReplies),
        // Requests to this instance (opened by the bus with the channel as binding). A request
        // is started in the subscriber's own synchronous run, like an inbox batch's entries.
        await options.bus.subscribe(core.requestChannel(options.instanceId), (raw) => {
          const env = core.parse(raw);
          if (env) takeRequest(env);
        }),
        await options.bus.subscribe(core.requestBatchChannel(options.instanceId), (raw) => {
          for (const env of core.parseBatch(raw)) takeRequest(env);
        }),
        await options.bus.subscribe("rt.broadcast", (raw) => {
          const env = core.parse(raw);
          if (!env || env.kind !== "broadcast") return;
          try {
            core.deliver(env);
          } catch { /* an actor's send threw: nothing to answer on a broadcast */ }
        }),
      );
      if (reader.status === "wait") await reader.connect().catch(() => {});
      loop = readLoop();
    },
    async send(to, event, opts = {}) {
      const { env, json } = core.envelope("send", to, event, { from: opts.from });
      await inboxes.append(to.instance, auth.seal("transport.envelope", to.instance, json));
      counters.sent++;
      return env.id;
    },
    async broadcast(actor, event, opts = {}) {
      const { json } = core.envelope("broadcast", { instance: "*", actor }, event, {
        from: opts.from,
      });
      counters.broadcasts++;
      await options.bus.publish("rt.broadcast", json);
    },
    async request<T>(
      to: ActorAddress,
      event: RemoteEvent,
      opts: { timeoutMs?: number; from?: string } = {},
    ) {
      const corr = messageId();
      const { json } = core.envelope("request", to, event, { from: opts.from, corr });
      const reply = core.awaitReply<T>(corr, to, opts.timeoutMs ?? core.requestTimeoutMs);
      counters.requests++;
      const unsent = (err: unknown) =>
        core.onReply(JSON.stringify({
          v: 1,
          kind: "reply",
          id: messageId(),
          corr,
          sentAt: core.now(),
          ok: false,
          error: { code: "CLUSTER_UNAVAILABLE", message: `Cannot send the request: ${err}` },
        }));
      // The receiver's request channel: one PUBLISH, no stream entry to read and acknowledge.
      // Nobody listening (the receiver restarting, its subscriber reconnecting, or an
      // instance of an earlier version) falls back to its inbox, which holds the request
      // until the receiver reads it, as every request went before. The reply may come back
      // before the publish's own answer (on a Redis Cluster, over another shard): the caller
      // has it then, without waiting for that answer.
      core.publishRequest(to.instance, json, (reached, err) => {
        if (err) return unsent(err);
        if (reached > 0) return;
        counters.requests_via_inbox++;
        try {
          inboxes.append(to.instance, auth.seal("transport.envelope", to.instance, json))
            .catch(unsent);
        } catch (e) {
          unsent(e);
        }
      });
      return await reply;
    },
    stats: () => ({
      ...counters,
      pending_requests: core.pendingRequests(),
      deferred_messages: deferred.size,
    }),
    async close() {
      running = false;
      for (const off of unsubscribers.splice(0)) await off().catch(() => {});
      reader.disconnect();
      await loop?.catch(() => {});
      await core.drain();
      if (redis.status === "ready") await flushAcks();
      else clearTimeout(ackTimer);
      core.failPending();
    },
  };
}

/** Transport for a single instance without Redis: everything is local. */
export function createLocalTransport(options: TransportOptions): Transport & {
  start(): Promise<void>;
} {
  const core = createCore(options);
  const { counters } = core;
  let off: (() => Promise<void>) | null = null;

  function local(to: ActorAddress): void {
    if (to.instance !== options.instanceId) {
      throw new RuntimeError(
        "CLUSTER_UNAVAILABLE",
        `Cannot reach instance ${to.instance}: this instance runs without Redis (single instance)`,
      );
    }
  }

  return {
    instanceId: options.instanceId,
    async start() {
      const one = await options.bus.subscribe(core.replyChannel(options.instanceId), core.onReply);
      const many = await options.bus.subscribe(
        core.replyBatchChannel(options.instanceId),
        core.onReplies,
      );
      off = async () => {
        await one();
        await many();
      };
    },
    // Delivery is synchronous; an error (a bad address or event) still rejects the promise.
    send(to, event, opts = {}) {
      try {
        local(to);
        const { env, json } = core.envelope("send", to, event, { from: opts.from });
        counters.sent++;
        const parsed = core.parse(json);
        if (parsed && parsed.kind === "send") core.deliver(parsed);
        return Promise.resolve(env.id);
      } catch (err) {
        return Promise.reject(err);
      }
    },
    broadcast(actor, event, opts = {}) {
      try {
        const { json } = core.envelope("broadcast", { instance: "*", actor }, event, {
          from: opts.from,
        });
        counters.broadcasts++;
        const parsed = core.parse(json);
        if (parsed && parsed.kind === "broadcast") core.deliver(parsed);
        return Promise.resolve();
      } catch (err) {
        return Promise.reject(err);
      }
    },
    async request<T>(
      to: ActorAddress,
      event: RemoteEvent,
      opts: { timeoutMs?: number; from?: string } = {},
    ) {
      local(to);
      const corr = messageId();
      const { json } = core.envelope("request", to, event, { from: opts.from, corr });
      const reply = core.awaitReply<T>(corr, to, opts.timeoutMs ?? core.requestTimeoutMs);
      counters.requests++;
      const parsed = core.parse(json);
      if (parsed && parsed.kind === "request") core.deliver(parsed);
      return await reply;
    },
    stats: () => ({ ...counters, pending_requests: core.pendingRequests() }),
    async close() {
      core.failPending();
      await off?.();
    },
  };
}
