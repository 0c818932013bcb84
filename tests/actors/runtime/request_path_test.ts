/**
 * The request path over Redis (actors/runtime/transport.ts): a request is one PUBLISH on the
 * receiver's channel `rt.request.<instance>` and one reply back, with no inbox entry; when
 * nobody listens on that channel it waits in the receiver's inbox instead. On the channel,
 * every protection of the inbox holds: the seal (bound to the channel), de-duplication of
 * message ids, the age limit, and the handler's schema before the handler.
 */
import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { z } from "zod";
import { createRedisTransport } from "../../../actors/runtime/transport.ts";
import type { ActorSpec, RemoteEvent } from "../../../actors/runtime/types.ts";
import { RuntimeError } from "../../../lib/errors.ts";
import type { MessageAuth } from "../../../lib/message_auth.ts";
import { createRedisBus } from "../../../store/bus.ts";
import {
  closeRedis,
  createKeyspace,
  createRedisClient,
  type RedisSettings,
} from "../../../store/redis.ts";
import { startRedis } from "../../harness/mod.ts";
import { until } from "../../support/instance.ts";
import { testAuth } from "../../support/message_auth.ts";

const PREFIX = "rs-reqpath:";
const ks = createKeyspace(PREFIX);

function settings(url: string): RedisSettings {
  return {
    url,
    sentinels: [],
    sentinelMaster: "mymaster",
    sentinelPassword: null,
    keyPrefix: PREFIX,
  };
}

/** An echo actor: `t.echo` answers its `n`; counts the calls its handler got. */
function echoSpec(calls: number[]): ActorSpec {
  return {
    id: "echo",
    create: () => {
      throw new Error("not started in these tests");
    },
    requests: {
      "t.echo": {
        schema: z.object({ type: z.literal("t.echo"), n: z.number() }) as z.ZodType<RemoteEvent>,
        handle: (event: RemoteEvent) => {
          const n = (event as unknown as { n: number }).n;
          calls.push(n);
          return Promise.resolve({ n });
        },
      },
    },
  } as unknown as ActorSpec;
}

/** One instance: its own Redis connection, bus and transport. */
async function instance(
  url: string,
  id: string,
  auth: MessageAuth,
  calls: number[] = [],
  maxMessageBytes?: number,
  maxSeenIds?: number,
) {
  const client = createRedisClient(settings(url), { name: id });
  await client.connect();
  const bus = createRedisBus(client, { keyspace: ks, auth });
  const spec = echoSpec(calls);
  const transport = createRedisTransport(client, {
    keyspace: ks,
    auth,
    bus,
    instanceId: id,
    actors: { spec: (a) => (a === "echo" ? spec : undefined), ref: () => undefined },
    requestTimeoutMs: 5000,
    maxMessageBytes,
    maxSeenIds,
  });
  return {
    transport,
    bus,
    calls,
    async close() {
      await transport.close();
      await bus.close();
      await closeRedis(client);
    },
  };
}

function envelope(
  to: string,
  event: Record<string, unknown>,
  extra: { id?: string; sentAt?: number; corr?: string } = {},
): string {
  return JSON.stringify({
    v: 1,
    kind: "request",
    id: extra.id ?? crypto.randomUUID(),
    from: { instance: "probe", actor: "runtime" },
    to: { instance: to, actor: "echo" },
    event,
    corr: extra.corr ?? crypto.randomUUID(),
    sentAt: extra.sentAt ?? Date.now(),
  });
}

function code(err: unknown): string {
  return err instanceof RuntimeError ? err.code : String(err);
}

Deno.test("a request is one publish each way: answered, no inbox entry, schema checked", async () => {
  await using redis = await startRedis();
  const auth = testAuth();
  const raw = new Redis(redis.url);
  const a = await instance(redis.url, "rq-a", auth);
  const b = await instance(redis.url, "rq-b", auth);
  try {
    await a.transport.start();
    await b.transport.start();
    const to = { instance: "rq-b", actor: "echo" };
    const got = await Promise.all(
      [1, 2, 3].map((n) => a.transport.request<{ n: number }>(to, { type: "t.echo", n })),
    );
    assert.deepEqual(got, [{ n: 1 }, { n: 2 }, { n: 3 }]);
    assert.deepEqual(b.calls.toSorted(), [1, 2, 3]);
    assert.equal(a.transport.stats().requests, 3);
    assert.equal(a.transport.stats().requests_via_inbox, 0);
    assert.equal(b.transport.stats().delivered, 3);
    assert.equal(await raw.xlen(ks.key("inbox", "rq-b")), 0, "nothing went through the inbox");
    // The handler's schema runs before the handler, on this path too.
    const invalid = await a.transport.request(to, { type: "t.echo", n: "x" }).catch(code);
    assert.equal(invalid, "MESSAGE_INVALID");
    const unknown = await a.transport.request({ instance: "rq-b", actor: "ghost" }, {
      type: "t.echo",
      n: 1,
    }).catch(code);
    assert.equal(unknown, "ACTOR_NOT_FOUND");
    assert.deepEqual(b.calls.toSorted(), [1, 2, 3]);
    // Counted once the refusal's reply is out, which may be after the caller got it.
    await until(() => {
      const s = b.transport.stats();
      return Promise.resolve(s.dropped_invalid_event === 1 && s.dropped_unknown_actor === 1);
    }, { what: "the invalid and the unknown-actor request counted" });
  } finally {
    await a.close();
    await b.close();
    raw.disconnect();
  }
});

Deno.test("a request nobody listens for waits in the receiver's inbox and is answered once it starts", async () => {
  await using redis = await startRedis();
  const auth = testAuth();
  const raw = new Redis(redis.url);
  const a = await instance(redis.url, "rq-a", auth);
  const b = await instance(redis.url, "rq-b", auth);
  try {
    await a.transport.start();
    const reply = a.transport.request<{ n: number }>(
      { instance: "rq-b", actor: "echo" },
      { type: "t.echo", n: 7 },
    );
    await until(() => Promise.resolve(a.transport.stats().requests_via_inbox === 1), {
      what: "the request to fall back to the inbox",
    });
    assert.equal(await raw.xlen(ks.key("inbox", "rq-b")), 1);
    await b.transport.start();
    assert.deepEqual(await reply, { n: 7 });
    assert.deepEqual(b.calls, [7]);
  } finally {
    await a.close();
    await b.close();
    raw.disconnect();
  }
});

Deno.test("on the request channel, forged, replayed and stale requests are refused", async () => {
  await using redis = await startRedis();
  const auth = testAuth();
  const raw = new Redis(redis.url);
  const replies = new Redis(redis.url);
  const answered: string[] = [];
  replies.on("message", (_c: string, m: string) => answered.push(m));
  await replies.subscribe(ks.channel("rt.reply.probe"));
  const b = await instance(redis.url, "rq-b", auth);
  const channel = "rt.request.rq-b";
  const publish = (message: string) => raw.publish(ks.channel(channel), message);
  try {
    await b.transport.start();
    // Unsealed, and sealed for another purpose, another channel, another instance's inbox.
    const forged = [
      envelope("rq-b", { type: "t.echo", n: 1 }),
      auth.seal("transport.envelope", "rq-b", envelope("rq-b", { type: "t.echo", n: 2 })),
      auth.seal("transport.request", "rt.request.rq-c", envelope("rq-b", { type: "t.echo", n: 3 })),
      auth.seal("transport.reply", channel, envelope("rq-b", { type: "t.echo", n: 4 })),
    ];
    for (const m of forged) assert.equal(await publish(m), 1, "rq-b listens on its channel");
    await until(() => Promise.resolve(b.bus.stats().forged === forged.length), {
      what: "every forged request refused by the bus",
    });
    assert.equal(auth.stats().forged["transport.request"], forged.length);
    // Control: sealed for this channel, it is handled; published again, it is refused.
    const corr = crypto.randomUUID();
    const genuine = auth.seal(
      "transport.request",
      channel,
      envelope("rq-b", {
        type: "t.echo",
        n: 5,
      }, { corr }),
    );
    await publish(genuine);
    await publish(genuine);
    await until(() => Promise.resolve(b.transport.stats().dropped_replayed === 1), {
      what: "the replayed copy refused",
    });
    // Genuine but dated past the age limit (default 300 s).
    await publish(auth.seal(
      "transport.request",
      channel,
      envelope("rq-b", { type: "t.echo", n: 6 }, { sentAt: Date.now() - 400_000 }),
    ));
    await until(() => Promise.resolve(b.transport.stats().dropped_stale === 1), {
      what: "the stale request refused",
    });
    // A reply sealed for the request channel is not a request.
    await publish(auth.seal(
      "transport.request",
      channel,
      JSON.stringify({ v: 1, kind: "reply", id: "r1", corr: "c1", sentAt: Date.now(), ok: true }),
    ));
    await until(() => Promise.resolve(b.transport.stats().dropped_malformed === 1), {
      what: "the reply on the request channel dropped",
    });
    await until(() => Promise.resolve(answered.some((m) => m.includes(corr))), {
      what: "the reply to the genuine request",
    });
    assert.deepEqual(b.calls, [5], "only the genuine request reached the handler, once");
    assert.equal(answered.length, 1);
  } finally {
    await b.close();
    raw.disconnect();
    replies.disconnect();
  }
});

Deno.test("close() waits for the request handlers still running, and their replies go out", async () => {
  // Running handlers are counted (no promise kept per request): close must still wait for
  // every one, answered or failed, before the bus under it goes.
  await using redis = await startRedis();
  const auth = testAuth();
  const client = createRedisClient(settings(redis.url), { name: "rq-slow" });
  await client.connect();
  const bus = createRedisBus(client, { keyspace: ks, auth });
  const gates: (() => void)[] = [];
  const spec = {
    id: "slow",
    create: () => {
      throw new Error("not started in these tests");
    },
    requests: {
      "t.slow": {
        schema: z.object({ type: z.literal("t.slow"), fail: z.boolean() }) as z.ZodType<
          RemoteEvent
        >,
        handle: (event: RemoteEvent) => {
          const fail = (event as unknown as { fail: boolean }).fail;
          return new Promise((resolve, reject) =>
            gates.push(() =>
              fail ? reject(new RuntimeError("CONFLICT", "no")) : resolve({ done: true })
            )
          );
        },
      },
    },
  } as unknown as ActorSpec;
  const b = createRedisTransport(client, {
    keyspace: ks,
    auth,
    bus,
    instanceId: "rq-slow",
    actors: { spec: (a) => (a === "slow" ? spec : undefined), ref: () => undefined },
  });
  const a = await instance(redis.url, "rq-a2", auth);
  const raw = new Redis(redis.url);
  let bClosed = false;
  try {
    await a.transport.start();
    await b.start();
    const to = { instance: "rq-slow", actor: "slow" };
    const ok = a.transport.request(to, { type: "t.slow", fail: false });
    const failed = a.transport.request(to, { type: "t.slow", fail: true }).catch(code);
    await until(() => Promise.resolve(gates.length === 2), { what: "both handlers running" });
    const order: string[] = [];
    const closing = b.close();
    bClosed = true;
    const closed = closing.then(() => order.push("closed"));
    // Let close() run as far as it can (past unsubscribing, then a pause longer than the rest
    // of close takes): it must stop at the running handlers. A pause can only let a broken
    // close pass unnoticed, never fail a correct one.
    await until(async () => {
      const [, n] = await raw.pubsub("NUMSUB", ks.channel("rt.request.rq-slow")) as [
        string,
        number,
      ];
      return Number(n) === 0;
    }, { what: "the request channel unsubscribed by close()" });
    await new Promise((r) => setTimeout(r, 100));
    order.push("released");
    for (const open of gates) open();
    await closed;
    assert.deepEqual(order, ["released", "closed"]);
    assert.deepEqual(await ok, { done: true });
    assert.equal(await failed, "CONFLICT");
  } finally {
    if (!bClosed) await b.close();
    await bus.close();
    await closeRedis(client);
    await a.close();
    raw.disconnect();
  }
});

Deno.test("requests made together go as one sealed batch and their replies as one; each is answered", async () => {
  await using redis = await startRedis();
  const auth = testAuth();
  const watch = new Redis(redis.url);
  const seen: string[] = [];
  const channelPrefix = ks.channel("x").slice(0, -1);
  watch.on("message", (c: string) => seen.push(c.slice(channelPrefix.length)));
  await watch.subscribe(
    ks.channel("rt.request.rq-b"),
    ks.channel("rt.requests.rq-b"),
    ks.channel("rt.reply.rq-a"),
    ks.channel("rt.replies.rq-a"),
  );
  const a = await instance(redis.url, "rq-a", auth);
  const b = await instance(redis.url, "rq-b", auth);
  try {
    await a.transport.start();
    await b.transport.start();
    const to = { instance: "rq-b", actor: "echo" };
    const got = await Promise.all(
      [1, 2, 3, 4].map((n) => a.transport.request<{ n: number }>(to, { type: "t.echo", n })),
    );
    assert.deepEqual(got, [{ n: 1 }, { n: 2 }, { n: 3 }, { n: 4 }]);
    assert.deepEqual(b.calls, [1, 2, 3, 4], "handled in the order they were made");
    await until(() => Promise.resolve(seen.length === 2), { what: "both publishes seen" });
    assert.deepEqual(seen, ["rt.requests.rq-b", "rt.replies.rq-a"]);
    // A lone request still goes alone, on the single channel.
    assert.deepEqual(await a.transport.request(to, { type: "t.echo", n: 5 }), { n: 5 });
    await until(() => Promise.resolve(seen.length === 4), { what: "the lone publishes seen" });
    assert.deepEqual(seen.slice(2), ["rt.request.rq-b", "rt.reply.rq-a"]);
  } finally {
    await a.close();
    await b.close();
    watch.disconnect();
  }
});

Deno.test("in a batch, each request is checked on its own; a batch sealed for another channel is refused whole", async () => {
  await using redis = await startRedis();
  const auth = testAuth();
  const raw = new Redis(redis.url);
  // A small size limit, so an oversized batch is a few kB.
  const b = await instance(redis.url, "rq-b", auth, [], 4096);
  const channel = "rt.requests.rq-b";
  const publish = (message: string) => raw.publish(ks.channel(channel), message);
  try {
    await b.transport.start();
    const genuine = envelope("rq-b", { type: "t.echo", n: 1 });
    const batch = (items: string[]) => `[${items.join(",")}]`;
    // Sealed for the single request channel (or unsealed): not a batch for this one.
    await publish(auth.seal("transport.request", "rt.request.rq-b", batch([genuine])));
    await publish(batch([genuine]));
    await until(() => Promise.resolve(b.bus.stats().forged === 2), {
      what: "both refused by the bus",
    });
    assert.deepEqual(b.calls, []);
    await publish(auth.seal(
      "transport.request",
      channel,
      batch([
        genuine,
        genuine, // the same id again
        envelope("rq-b", { type: "t.echo", n: 2 }, { sentAt: Date.now() - 400_000 }),
        JSON.stringify({ v: 1, kind: "nonsense" }),
        envelope("rq-b", { type: "t.echo", n: "x" }),
        envelope("rq-b", { type: "t.echo", n: 3 }),
      ]),
    ));
    await until(() => Promise.resolve(b.transport.stats().delivered === 2), {
      what: "the two genuine requests delivered",
    });
    await until(() => Promise.resolve(b.transport.stats().dropped_invalid_event === 1), {
      what: "the invalid event refused",
    });
    const s = b.transport.stats();
    assert.equal(s.dropped_replayed, 1);
    assert.equal(s.dropped_stale, 1);
    assert.equal(s.dropped_malformed, 1);
    assert.deepEqual(b.calls, [1, 3]);
    // Not an array, and over the size limit as a whole: refused, nothing handled.
    await publish(auth.seal("transport.request", channel, genuine));
    await publish(auth.seal("transport.request", channel, batch(Array(20).fill(genuine))));
    await until(() => {
      const t = b.transport.stats();
      return Promise.resolve(t.dropped_malformed === 2 && t.dropped_oversized === 1);
    }, { what: "the non-array and the oversized batch refused" });
    assert.deepEqual(b.calls, [1, 3]);
  } finally {
    await b.close();
    raw.disconnect();
  }
});

Deno.test("a request whose id the count bound forgot is still refused as a replay", async () => {
  await using redis = await startRedis();
  const auth = testAuth();
  const raw = new Redis(redis.url);
  const calls: number[] = [];
  // Four ids kept per generation: the first requests' ids are forgotten after ten more.
  const b = await instance(redis.url, "rq-f", auth, calls, undefined, 4);
  const channel = "rt.request.rq-f";
  const prefix = "Q2VzdCB1bmUgcHJlZml4ZQ";
  const sealed = (n: number, id: string) =>
    auth.seal("transport.request", channel, envelope("rq-f", { type: "t.echo", n }, { id }));
  try {
    await b.transport.start();
    const first = sealed(1, `${prefix}.1`);
    const uuidForm = sealed(2, crypto.randomUUID());
    await raw.publish(ks.channel(channel), first);
    await raw.publish(ks.channel(channel), uuidForm);
    for (let i = 3; i <= 14; i++) {
      await raw.publish(ks.channel(channel), sealed(i, `${prefix}.${i.toString(36)}`));
    }
    await until(() => Promise.resolve(calls.length === 14), { what: "the 14 requests handled" });
    const s = b.transport.stats();
    assert.equal(s.dropped_replayed, 0);
    // Replayed after its id left the de-duplication sets: its sender's counter floor refuses it.
    await raw.publish(ks.channel(channel), first);
    await until(() => Promise.resolve(b.transport.stats().dropped_replayed === 1), {
      what: "the replay of a forgotten id refused",
    });
    // The same sender's next counter is new: handled.
    await raw.publish(ks.channel(channel), sealed(15, `${prefix}.f`));
    await until(() => Promise.resolve(calls.includes(15)), { what: "the next request handled" });
    assert.equal(calls.filter((n) => n === 1).length, 1, "the first request ran once");
  } finally {
    raw.disconnect();
    await b.close();
  }
});
