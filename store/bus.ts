/**
 * The message bus between runtime instances, behind one contract with two backends.
 *
 * Guarantees (both backends): **at-most-once, fan-out** delivery of a published message
 * to every subscription of its channel that exists when it is published; per-publisher
 * order is kept; nothing is stored for a subscriber that is offline. Layers that need
 * more (at-least-once, gap detection) build it on top with sequence numbers and acks.
 *
 * - {@linkcode createRedisBus}: Redis pub/sub on a dedicated subscriber connection. After
 *   a reconnect (Redis restart, Sentinel switch) every channel is subscribed again before
 *   `resubscribed` listeners run, so no subscription is silently lost. On a Redis Cluster
 *   it uses sharded pub/sub (SPUBLISH / SSUBSCRIBE): a channel lives on the shard owning
 *   its slot, so a message crosses one shard instead of the whole cluster bus, and after a
 *   failover or resharding ioredis subscribes each channel again on its slot's new master
 *   (then `resubscribed` listeners run, as after a reconnect).
 * - {@linkcode createLocalBus}: in-process, for a single instance without Redis.
 *
 * A handler that throws is logged and counted; it never breaks delivery to others.
 *
 * On Redis every message is sealed (lib/message_auth.ts) with an HMAC bound to its channel,
 * and opened before any handler sees it: a message published by anyone without the
 * cluster's secret key, altered on the way, or replayed onto another channel is dropped,
 * counted (`forged`) and logged once per claimed sender. Handlers only ever get the body.
 * @module
 */
import { type Logger, silentLogger } from "../lib/log.ts";
import { claimedSender, type MessageAuth, type MessagePurpose } from "../lib/message_auth.ts";
import { duplicateRedis, isCluster, type Keyspace, type RedisClient } from "./redis.ts";

/** Receives one message. */
export type MessageHandler = (message: string, channel: string) => void;

/** Counters every bus keeps. */
export interface BusStats {
  /** Messages published by this instance. */
  published: number;
  /** Messages handed to handlers. */
  delivered: number;
  /** Handler invocations that threw. */
  handlerErrors: number;
  /** Times the subscriber connection came back and resubscribed. */
  resubscribes: number;
  /** Messages dropped because their MAC did not verify (Redis only). */
  forged: number;
}

/** The contract both backends implement. */
export interface MessageBus {
  /** `redis` or `in-process`. */
  readonly kind: "redis" | "in-process";
  /**
   * Publishes to a logical channel name (namespaced by the bus). At-most-once. Resolves with
   * the number of subscriptions the message reached (Redis: the subscribers the server
   * counted, on a cluster those of the channel's shard; 0 means nobody listened).
   */
  publish(channel: string, message: string): Promise<number>;
  /** Subscribes; resolves once the subscription is active. Returns the unsubscribe. */
  subscribe(channel: string, handler: MessageHandler): Promise<() => Promise<void>>;
  /** Registers a callback run after the bus resubscribed following a reconnect. */
  onResubscribed(callback: () => void): () => void;
  /** Counters. */
  stats(): BusStats;
  /** Drops all subscriptions and closes connections the bus owns. */
  close(): Promise<void>;
}

function newStats(): BusStats {
  return { published: 0, delivered: 0, handlerErrors: 0, resubscribes: 0, forged: 0 };
}

function deliver(
  handlers: Set<MessageHandler> | undefined,
  message: string,
  channel: string,
  stats: BusStats,
  log: Logger,
): void {
  if (!handlers?.size) return;
  // One handler (a transport's request or reply channel): called without copying the set into
  // an array per message. Several: a copy, so a handler that (un)subscribes does not change
  // which handlers this message reaches.
  if (handlers.size === 1) {
    const [only] = handlers;
    return callHandler(only, message, channel, stats, log);
  }
  for (const handler of [...handlers]) callHandler(handler, message, channel, stats, log);
}

function callHandler(
  handler: MessageHandler,
  message: string,
  channel: string,
  stats: BusStats,
  log: Logger,
): void {
  try {
    stats.delivered++;
    handler(message, channel);
  } catch (err) {
    stats.handlerErrors++;
    log.error("message handler failed", {
      channel,
      error: err instanceof Error ? err.message : String(err),
    });
  }
}

/** An in-process bus: delivery on a later microtask, as a network bus would. */
export function createLocalBus(options: { log?: Logger } = {}): MessageBus {
  const log = options.log ?? silentLogger;
  const subs = new Map<string, Set<MessageHandler>>();
  const stats = newStats();
  let closed = false;
  return {
    kind: "in-process",
    publish(channel, message) {
      if (closed) return Promise.resolve(0);
      stats.published++;
      const handlers = subs.get(channel);
      if (handlers?.size) {
        queueMicrotask(() => deliver(handlers, message, channel, stats, log));
      }
      return Promise.resolve(handlers?.size ?? 0);
    },
    subscribe(channel, handler) {
      let set = subs.get(channel);
      if (!set) subs.set(channel, set = new Set());
      set.add(handler);
      return Promise.resolve(() => {
        set!.delete(handler);
        if (set!.size === 0) subs.delete(channel);
        return Promise.resolve();
      });
    },
    onResubscribed: () => () => {},
    stats: () => ({ ...stats }),
    close() {
      closed = true;
      subs.clear();
      return Promise.resolve();
    },
  };
}

/**
 * The key purpose of a channel's messages: the transport's broadcasts, requests and replies
 * and the sync node's batches each have their own; everything else is a bus message.
 */
export function channelPurpose(channel: string): MessagePurpose {
  if (channel === "rt.broadcast") return "transport.broadcast";
  if (channel.startsWith("rt.reply.") || channel.startsWith("rt.replies.")) {
    return "transport.reply";
  }
  if (channel.startsWith("rt.request.") || channel.startsWith("rt.requests.")) {
    return "transport.request";
  }
  if (channel.startsWith("sync.")) return "sync.batch";
  return "bus.message";
}

/**
 * A bus over Redis pub/sub. `publisher` is a shared command connection; the bus opens
 * its own subscriber connection with `publisher.duplicate()` (a subscribed connection
 * cannot run other commands). `auth` seals what is published and opens what arrives.
 * On a cluster client the bus uses sharded pub/sub (see the module doc).
 */
export function createRedisBus(
  publisher: RedisClient,
  options: { keyspace: Keyspace; auth: MessageAuth; log?: Logger },
): MessageBus {
  const log = options.log ?? silentLogger;
  const auth = options.auth;
  const ks = options.keyspace;
  const channelPrefix = ks.channel("x").slice(0, -1);
  const sharded = isCluster(publisher);
  // We resubscribe ourselves so the set of channels is owned (and tested) here; on a cluster
  // ioredis's subscriber group does it per shard (it alone knows which master owns a slot).
  const subscriber = duplicateRedis(publisher, {
    name: "rs-bus",
    autoResubscribe: false,
    sharded,
  });
  const subs = new Map<string, Set<MessageHandler>>();
  const resubscribed = new Set<() => void>();
  const stats = newStats();
  let everReady = false;
  let closed = false;

  subscriber.on(sharded ? "smessage" : "message", (fullChannel: string, message: string) => {
    const channel = fullChannel.slice(channelPrefix.length);
    const handlers = subs.get(channel);
    if (!handlers) return;
    const purpose = channelPurpose(channel);
    const opened = auth.open(purpose, channel, message);
    if (!opened) {
      stats.forged++;
      auth.refused(purpose, claimedSender(message), { channel });
      return;
    }
    deliver(handlers, opened.body, channel, stats, log);
  });
  function resubscribedAll(channels: number): void {
    stats.resubscribes++;
    log.info("bus resubscribed after reconnect", { channels });
    for (const cb of [...resubscribed]) {
      try {
        cb();
      } catch (err) {
        log.error("resubscribe listener failed", {
          error: err instanceof Error ? err.message : String(err),
        });
      }
    }
  }
  // Cluster: ioredis resubscribes each shard's channels after the slot map changed (a
  // failover, a resharding) or a shard's subscriber died, then says `subscribersReady`.
  if (sharded) {
    subscriber.on("subscribersReady", () => {
      if (!everReady) {
        everReady = true;
        return;
      }
      if (!closed) resubscribedAll(subs.size);
    });
  }
  subscriber.on("ready", () => {
    if (sharded) return;
    if (!everReady) {
      everReady = true;
      return;
    }
    const channels = [...subs.keys()].map((c) => ks.channel(c));
    const done = channels.length ? subscriber.subscribe(...channels) : Promise.resolve(0);
    done.then(
      () => resubscribedAll(channels.length),
      (err: Error) => log.warn("resubscribe failed", { error: err.message }),
    );
  });
  subscriber.on("error", (err: Error) => log.debug("bus subscriber error", { error: err.message }));

  /** Full channel names by logical name (a few per instance: replies, requests, sync…). */
  const fullNames = new Map<string, string>();
  function fullName(channel: string): string {
    let full = fullNames.get(channel);
    if (full === undefined) {
      if (fullNames.size >= 1024) fullNames.clear();
      fullNames.set(channel, full = ks.channel(channel));
    }
    return full;
  }

  /**
   * Publishes made in one run of the event loop's microtasks, written in one pipeline: a burst
   * of replies (an inbox batch, a socket read of many requests) costs one socket write instead
   * of one each, which was the largest single cost of a message (`write(2)`, profiled in
   * bench/runtime.ts); a lone publish still goes out at the end of the current task. Order is
   * kept: the queue is written in the order of the calls. Not on a cluster, where a pipeline
   * must stay within one slot and each SPUBLISH goes to its channel's shard.
   */
  let queue: { full: string; sealed: string; done(err: Error | null, n: number): void }[] = [];
  function flushQueue(): void {
    const batch = queue;
    queue = [];
    if (batch.length === 1) {
      const one = batch[0];
      publisher.publish(one.full, one.sealed).then((n) => one.done(null, n), (e) => one.done(e, 0));
      return;
    }
    const pipeline = publisher.pipeline();
    for (const p of batch) pipeline.publish(p.full, p.sealed);
    pipeline.exec().then(
      (res) =>
        batch.forEach((p, i) => {
          const [err, n] = res?.[i] ?? [new Error("no reply to PUBLISH"), 0];
          p.done(err, Number(n));
        }),
      (err) => batch.forEach((p) => p.done(err, 0)),
    );
  }

  return {
    kind: "redis",
    publish(channel, message) {
      return new Promise<number>((resolve, reject) => {
        stats.published++;
        const full = fullName(channel); // throws on a bad name: the promise rejects
        const sealed = auth.seal(channelPurpose(channel), channel, message);
        if (sharded) {
          return void publisher.spublish(full, sealed).then(Number).then(resolve, reject);
        }
        if (!queue.length) queueMicrotask(flushQueue);
        queue.push({ full, sealed, done: (err, n) => err ? reject(err) : resolve(n) });
      });
    },
    async subscribe(channel, handler) {
      let set = subs.get(channel);
      if (!set) {
        subs.set(channel, set = new Set());
        set.add(handler);
        try {
          if (subscriber.status === "wait") await subscriber.connect();
          if (sharded) await subscriber.ssubscribe(ks.channel(channel));
          else await subscriber.subscribe(ks.channel(channel));
        } catch (err) {
          set.delete(handler);
          if (set.size === 0) subs.delete(channel);
          throw err;
        }
      } else {
        set.add(handler);
      }
      return async () => {
        set!.delete(handler);
        if (set!.size === 0 && subs.get(channel) === set) {
          subs.delete(channel);
          if (!closed && subscriber.status === "ready") {
            await (sharded
              ? subscriber.sunsubscribe(ks.channel(channel))
              : subscriber.unsubscribe(ks.channel(channel))).catch(() => {});
          }
        }
      };
    },
    onResubscribed(callback) {
      resubscribed.add(callback);
      return () => resubscribed.delete(callback);
    },
    stats: () => ({ ...stats }),
    async close() {
      closed = true;
      subs.clear();
      resubscribed.clear();
      if (subscriber.status === "ready") await subscriber.quit().catch(() => {});
      subscriber.disconnect();
    },
  };
}
