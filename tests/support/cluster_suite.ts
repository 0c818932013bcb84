/**
 * The runtime suite, run against a single Redis (tests/cluster_test.ts) and a Redis Cluster
 * (tests/runtime/redis_cluster_test.ts). Three runtime instances as separate processes on
 * one Redis deployment and one PostgreSQL:
 * membership, addressed send, broadcast, request/reply, at-least-once delivery across a
 * receiver restart, and poisoned messages. The test process joins as a fourth transport
 * participant ("tester") using the same library the instances use.
 */
import assert from "node:assert/strict";
import { createLeaseManager } from "../../actors/runtime/leases.ts";
import { createRedisTransport } from "../../actors/runtime/transport.ts";
import { injectRaw } from "../../store/redis_inbox.ts";
import { isRuntimeError } from "../../lib/errors.ts";
import { createRedisBus } from "../../store/bus.ts";
import {
  closeRedis,
  createKeyspace,
  createRedisClient,
  type Keyspace,
  type RedisClient,
} from "../../store/redis.ts";
import type { RedisTarget } from "./redis_target.ts";
import { startPostgres } from "../harness/mod.ts";
import { getJson, type InstanceProcess, launchInstance, until } from "./instance.ts";
import { TEST_ADMIN_TOKEN } from "./auth.ts";
import { authFor } from "./message_auth.ts";

const KEY = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
const PREFIX = "rsct:";
const LEASE_TTL_MS = 1500;

interface Member {
  id: string;
  url: string;
  actors: { id: string; state: unknown }[];
}

/** What the suite hands to the steps a caller adds (`more`). */
export interface SuiteContext {
  /** The running instances by id (the coordinator killed by the suite is gone). */
  nodes: Record<string, InstanceProcess>;
  /** The environment of instance `id`. */
  env: (id: string) => Record<string, string>;
  /** The test's own transport participant. */
  tester: ReturnType<typeof createRedisTransport>;
  /** The test's lease manager (reads holders, runs fenced calls). */
  leases: ReturnType<typeof createLeaseManager>;
  /** The test's command connection. */
  client: RedisClient;
  /** The suite's keyspace. */
  keyspace: Keyspace;
  /** The suite's message auth. */
  auth: ReturnType<typeof authFor>;
  /** The diagnostics actor's notes on `instance`. */
  notesOf(instance: string): Promise<{ received: number; notes: { id: string; text: string }[] }>;
}

/** Options of {@linkcode runClusterSuite}. */
export interface ClusterSuiteOptions {
  /** Steps run after the suite's, on the same instances. */
  more?: (t: Deno.TestContext, ctx: SuiteContext) => Promise<void>;
}

/**
 * Runs the three-process runtime suite against `redis`: membership, addressed send,
 * broadcast, request/reply, poisoned messages, at-least-once across a receiver restart,
 * coordinator handover with fencing.
 */
export async function runClusterSuite(
  t: Deno.TestContext,
  redis: RedisTarget,
  options: ClusterSuiteOptions = {},
): Promise<void> {
  await using pg = await startPostgres();
  const dbUrl = await pg.createDatabase();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-cluster-" });
  const env = (id: string) => ({
    DATABASE_URL: dbUrl,
    ...redis.env,
    RS_SECRET_KEY: KEY,
    RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
    RS_DATA_DIR: dataDir,
    RS_KEY_PREFIX: PREFIX,
    RS_INSTANCE_ID: id,
    RS_PORT: "0",
    RS_LEASE_TTL_MS: String(LEASE_TTL_MS),
    LOG_LEVEL: "warn",
  });
  const nodes: Record<string, InstanceProcess> = {};
  // Three instances start at once: migrations must still apply exactly once.
  const started = await Promise.all(
    ["node-a", "node-b", "node-c"].map((id) => launchInstance(env(id))),
  );
  ["node-a", "node-b", "node-c"].forEach((id, i) => nodes[id] = started[i]);

  const settings = redis.settings(PREFIX);
  const keyspace = createKeyspace(PREFIX);
  const client = createRedisClient(settings, { name: "tester" });
  await client.connect();
  const auth = authFor(KEY);
  const bus = createRedisBus(client, { keyspace, auth });
  const tester = createRedisTransport(client, {
    keyspace,
    auth,
    bus,
    instanceId: "tester",
    actors: { spec: () => undefined, ref: () => undefined },
    requestTimeoutMs: 3000,
    inboxReplicas: settings.waitReplicas ?? 0,
    inboxWaitMs: settings.waitTimeoutMs,
  });
  await tester.start();
  const leases = createLeaseManager({ redis: client, keyspace, instanceId: "tester" });

  async function notesOf(instance: string) {
    return await tester.request<{ received: number; notes: { id: string; text: string }[] }>(
      { instance, actor: "diagnostics" },
      { type: "diag.notes" },
    );
  }

  try {
    await t.step("every instance sees all three, with their actors' states", async () => {
      await until(async () => {
        const body = await getJson<{ members: Member[] }>(`${nodes["node-a"].url}/cluster`);
        // Info is published with each heartbeat, so wait until it shows every actor.
        return body.members.length === 3 && body.members.every((m) => m.actors.length >= 2);
      }, { what: "three members with their actors" });
      const body = await getJson<{ members: Member[] }>(`${nodes["node-c"].url}/cluster`);
      assert.deepEqual(body.members.map((m) => m.id), ["node-a", "node-b", "node-c"]);
      for (const m of body.members) {
        assert.match(m.url, /^http:\/\/127\.0\.0\.1:\d+$/);
        const actors = Object.fromEntries(m.actors.map((a) => [a.id, a.state]));
        assert.deepEqual(actors.diagnostics, "ready");
        assert.deepEqual(actors.cluster, ({ member: "waiting" }).member ? actors.cluster : null);
        assert.ok(actors.cluster, "the cluster actor is reported");
      }
      const count = Number(
        await pg.psql("SELECT count(*) FROM schema_migrations", {
          database: new URL(dbUrl).pathname.slice(1),
        }),
      );
      const files = [...Deno.readDirSync(new URL("../../migrations", import.meta.url))]
        .filter((f) => f.name.endsWith(".sql")).length;
      assert.equal(count, files);
    });

    await t.step("addressed send reaches exactly the addressed actor", async () => {
      const id = await tester.send({ instance: "node-b", actor: "diagnostics" }, {
        type: "diag.note",
        text: "hello b",
      });
      await until(async () => (await notesOf("node-b")).notes.some((n) => n.id === id), {
        what: "the note on node-b",
      });
      const b = await notesOf("node-b");
      assert.deepEqual(b.notes.find((n) => n.id === id)?.text, "hello b");
      assert.equal((await notesOf("node-a")).received, 0);
      assert.equal((await notesOf("node-c")).received, 0);
    });

    await t.step("broadcast reaches the actor on every instance", async () => {
      await tester.broadcast("diagnostics", { type: "diag.note", text: "to all" });
      for (const id of ["node-a", "node-b", "node-c"]) {
        await until(async () => (await notesOf(id)).notes.some((n) => n.text === "to all"), {
          what: `broadcast on ${id}`,
        });
      }
    });

    await t.step("request/reply answers, and a late reply times out", async () => {
      const pong = await tester.request<{ instance: string }>(
        { instance: "node-c", actor: "diagnostics" },
        { type: "diag.ping" },
      );
      assert.equal(pong.instance, "node-c");
      const slow = await tester.request(
        { instance: "node-c", actor: "diagnostics" },
        { type: "diag.ping", delayMs: 1500 },
        { timeoutMs: 300 },
      ).then(() => null, (e) => e);
      assert.ok(isRuntimeError(slow, "REQUEST_TIMEOUT"), String(slow));
      const unknown = await tester.request(
        { instance: "node-c", actor: "no-such-actor" },
        { type: "diag.ping" },
      ).then(() => null, (e) => e);
      assert.ok(isRuntimeError(unknown, "ACTOR_NOT_FOUND"), String(unknown));
    });

    await t.step("poisoned messages are counted and dropped; the receiver carries on", async () => {
      // Sealed with the cluster's key (so they reach the parser) but malformed.
      const sealed = (raw: string) => auth.seal("transport.envelope", "node-a", raw);
      await injectRaw(client, { keyspace, instance: "node-a", raw: sealed("{not json") });
      await injectRaw(client, {
        keyspace,
        instance: "node-a",
        raw: sealed(JSON.stringify({ v: 1, kind: "send", id: "x", from: {}, to: {}, event: 42 })),
      });
      // Not sealed at all: refused before it is parsed.
      await injectRaw(client, { keyspace, instance: "node-a", raw: "{not json" });
      await injectRaw(client, { keyspace, instance: "node-a", raw: "x".repeat(200_000) });
      await tester.send({ instance: "node-a", actor: "diagnostics" }, {
        type: "diag.unknown-type",
      });
      await tester.send({ instance: "node-a", actor: "diagnostics" }, {
        type: "diag.note",
        text: 42 as unknown as string,
      });
      await tester.send({ instance: "node-a", actor: "ghost" }, { type: "diag.note", text: "?" });
      const after = await tester.send({ instance: "node-a", actor: "diagnostics" }, {
        type: "diag.note",
        text: "still alive",
      });
      await until(async () => (await notesOf("node-a")).notes.some((n) => n.id === after), {
        what: "the note sent after the poisoned messages on node-a",
      });
      const stats = (await getJson<{ transport: Record<string, number> }>(
        `${nodes["node-a"].url}/actors`,
      )).transport;
      assert.equal(stats.dropped_malformed, 2);
      assert.equal(stats.dropped_forged, 1);
      assert.equal(stats.dropped_oversized, 1);
      assert.equal(stats.dropped_unknown_event, 1);
      assert.equal(stats.dropped_invalid_event, 1);
      assert.equal(stats.dropped_unknown_actor, 1);
      const health = await getJson<{ status: string }>(`${nodes["node-a"].url}/health`);
      assert.equal(health.status, "ok");
    });

    await t.step(
      "a receiver killed with messages in flight gets them all after restart",
      async () => {
        // Freeze node-b: Redis keeps handing entries to its blocked inbox read (they are
        // now pending, in flight in a socket nobody reads) and queues the rest.
        nodes["node-b"].child.kill("SIGSTOP");
        const sent: string[] = [];
        for (let i = 0; i < 30; i++) {
          sent.push(
            await tester.send({ instance: "node-b", actor: "diagnostics" }, {
              type: "diag.note",
              text: `inflight ${i}`,
            }),
          );
        }
        const pending = await client.xpending(keyspace.key("inbox", "node-b"), "runtime");
        assert.ok(Number((pending as unknown[])[0]) >= 1, "some entries were in flight");
        await nodes["node-b"].stop("SIGKILL");
        nodes["node-b"] = await launchInstance(env("node-b"));
        await until(async () => {
          const got = new Set((await notesOf("node-b")).notes.map((n) => n.id));
          return sent.every((id) => got.has(id));
        }, { what: "every in-flight message after the restart", ms: 15_000 });
        const stats = (await getJson<{ transport: Record<string, number> }>(
          `${nodes["node-b"].url}/actors`,
        )).transport;
        assert.ok(stats.redelivered >= 1, "the in-flight entries came back as redeliveries");
      },
    );

    await t.step(
      "kill -9 of the coordinator: noticed, role taken with a newer token, stale token refused",
      async () => {
        // Roles are announced with each heartbeat: wait until the view settles.
        let found: Awaited<ReturnType<typeof leases.holder>> = null;
        let announced: string[] = [];
        await until(async () => {
          found = await leases.holder("coordinator");
          const view = await getJson<
            { members: (Member & { roles: { role: string; token: number }[] })[] }
          >(`${nodes["node-a"].url}/cluster`);
          announced = view.members.filter((m) => m.roles.some((r) => r.role === "coordinator"))
            .map((m) => m.id);
          return !!found && announced.length === 1 && announced[0] === found.instance;
        }, { what: "exactly one coordinator, announced by its holder", ms: 10_000 });
        const holder = found!;
        const killedAt = Date.now();
        await nodes[holder.instance].stop("SIGKILL");
        const survivor = Object.keys(nodes).find((id) => id !== holder.instance)!;
        let noticedMs = 0;
        let takenMs = 0;
        let next: Awaited<ReturnType<typeof leases.holder>> = null;
        await until(async () => {
          if (!noticedMs) {
            const body = await getJson<{ members: Member[] }>(`${nodes[survivor].url}/cluster`);
            if (!body.members.some((m) => m.id === holder.instance)) {
              noticedMs = Date.now() - killedAt;
            }
          }
          if (!takenMs) {
            const h = await leases.holder("coordinator");
            if (h && h.instance !== holder.instance) {
              next = h;
              takenMs = Date.now() - killedAt;
            }
          }
          return noticedMs > 0 && takenMs > 0;
        }, {
          what: `${survivor} dropping ${holder.instance} and another instance taking the role`,
          ms: 30_000,
          state: () => ({ noticedMs, takenMs }),
        });
        // How soon is the membership and lease machines' (simulated clock in
        // tests/machines/); polled over HTTP on a busy machine it is only printed here.
        console.log(
          `kill -9 of the coordinator: noticed after ${noticedMs} ms, role moved after ` +
            `${takenMs} ms (lease ttl ${LEASE_TTL_MS} ms)`,
        );
        assert.ok(next!.token > holder.token, "the fencing token increased");
        const stale = await leases.fenced({ role: "coordinator", token: holder.token }, () => "ran")
          .then(() => null, (e) => e);
        assert.ok(isRuntimeError(stale, "LEASE_STALE_TOKEN"), String(stale));
        assert.equal(
          await leases.fenced({ role: "coordinator", token: next!.token }, () => "ran"),
          "ran",
        );
        delete nodes[holder.instance];
      },
    );

    if (options.more) {
      await options.more(t, { nodes, env, tester, leases, client, keyspace, auth, notesOf });
    }
  } finally {
    await leases.close();
    await tester.close();
    await bus.close();
    await closeRedis(client);
    for (const node of Object.values(nodes)) await node.stop("SIGTERM");
    await Deno.remove(dataDir, { recursive: true });
  }
}
