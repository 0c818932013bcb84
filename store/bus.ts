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
 *   `resubscribed` listeners run, so no subscription is silently lost.
 * - {@linkcode createLocalBus}: in-process, for a single instance without Redis.
 *
 * A handler that throws is logged and counted; it never breaks delivery to others.
 * @module
 */
import type { Redis } from "ioredis";
import { type Logger, silentLogger } from "../lib/log.ts";
import type { Keyspace } from "./redis.ts";

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
}

/** The contract both backends implement. */
export interface MessageBus {
  /** `redis` or `in-process`. */
  readonly kind: "redis" | "in-process";
  /** Publishes to a logical channel name (namespaced by the bus). At-most-once. */
  publish(channel: string, message: string): Promise<void>;
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
  return { published: 0, delivered: 0, handlerErrors: 0, resubscribes: 0 };
}

function deliver(
  handlers: Set<MessageHandler> | undefined,
  message: string,
  channel: string,
  stats: BusStats,
  log: Logger,
): void {
  if (!handlers) return;
  for (const handler of [...handlers]) {
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
      if (closed) return Promise.resolve();
      stats.published++;
      const handlers = subs.get(channel);
      if (handlers?.size) {
        queueMicrotask(() => deliver(handlers, message, channel, stats, log));
      }
      return Promise.resolve();
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
 * A bus over Redis pub/sub. `publisher` is a shared command connection; the bus opens
 * its own subscriber connection with `publisher.duplicate()` (a subscribed connection
 * cannot run other commands).
 */
export function createRedisBus(
  publisher: Redis,
  options: { keyspace: Keyspace; log?: Logger },
): MessageBus {
  const log = options.log ?? silentLogger;
  const ks = options.keyspace;
  const channelPrefix = ks.channel("x").slice(0, -1);
  // We resubscribe ourselves so the set of channels is owned (and tested) here.
  const subscriber = publisher.duplicate({ autoResubscribe: false, connectionName: "rs-bus" });
  const subs = new Map<string, Set<MessageHandler>>();
  const resubscribed = new Set<() => void>();
  const stats = newStats();
  let everReady = false;
  let closed = false;

  subscriber.on("message", (fullChannel: string, message: string) => {
    const channel = fullChannel.slice(channelPrefix.length);
    deliver(subs.get(channel), message, channel, stats, log);
  });
  subscriber.on("ready", () => {
    if (!everReady) {
      everReady = true;
      return;
    }
    const channels = [...subs.keys()].map((c) => ks.channel(c));
    const done = channels.length ? subscriber.subscribe(...channels) : Promise.resolve(0);
    done.then(() => {
      stats.resubscribes++;
      log.info("bus resubscribed after reconnect", { channels: channels.length });
      for (const cb of [...resubscribed]) {
        try {
          cb();
        } catch (err) {
          log.error("resubscribe listener failed", {
            error: err instanceof Error ? err.message : String(err),
          });
        }
      }
    }, (err: Error) => log.warn("resubscribe failed", { error: err.message }));
  });
  subscriber.on("error", (err: Error) => log.debug("bus subscriber error", { error: err.message }));

  return {
    kind: "redis",
    async publish(channel, message) {
      stats.published++;
      await publisher.publish(ks.channel(channel), message);
    },
    async subscribe(channel, handler) {
      let set = subs.get(channel);
      if (!set) {
        subs.set(channel, set = new Set());
        set.add(handler);
        try {
          if (subscriber.status === "wait") await subscriber.connect();
          await subscriber.subscribe(ks.channel(channel));
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
            await subscriber.unsubscribe(ks.channel(channel)).catch(() => {});
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
