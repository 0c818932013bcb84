/**
 * Sync suite: state propagation between two processes, each running a sync node (the
 * real statechart and effects) on one Redis and one PostgreSQL, next to raw ioredis
 * publish → receive between the same two processes, measured in the same run.
 *
 * - Latency at 10,000 updates/s: this process applies deltas at that rate (each to its own
 *   entity, stamped with the shared system clock); the peer (tests/fixtures/
 *   sync_bench_peer.ts) records, for every change its subscribers see, now − stamp. The
 *   raw baseline publishes one stamped message per update at the same rate with plain
 *   ioredis and the peer records the same difference on receipt. Figures
 *   propagation_p50_ms / propagation_p99_ms (baseline redis_publish_receive_p50_ms / _p99_ms).
 * - Sustained throughput: this process applies updates as fast as it can, in chunks
 *   (batched per tick by the node), to distinct entities so no update is coalesced away;
 *   the clock stops when the peer has applied every update *and* every batch is stored in
 *   PostgreSQL. Figure updates_per_s (baseline redis_publish_per_s: raw messages published
 *   and received per second).
 * @module
 */
import postgres from "postgres";
import { Redis } from "ioredis";
import { migrate } from "../store/migrations.ts";
import type { Sql } from "../store/types.ts";
import { startPostgres, startRedis } from "../tests/harness/mod.ts";
import { ROOT } from "../tests/support/instance.ts";
import { startBenchSyncNode } from "../tests/fixtures/sync_bench_node.ts";
import { type Figure, median, percentile, progress, round } from "./_util.ts";
import { createMessageAuth } from "../lib/message_auth.ts";

const REPS = 5;
const RATE = 10_000;
const LATENCY_UPDATES = 20_000;
const VOLUME = 150_000;
const CHUNK = 2_000;
const PREFIX = "rsbenchsync:";

const epoch = () => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Calls `send(i)` for i = 0..n-1 at `rate` per second, catching up after late timers. */
async function paced(n: number, rate: number, send: (i: number) => void): Promise<void> {
  const t0 = performance.now();
  let sent = 0;
  while (sent < n) {
    const due = Math.min(n, Math.floor(((performance.now() - t0) * rate) / 1000));
    while (sent < due) send(sent++);
    await sleep(1);
  }
}

/** A line-oriented conversation with the peer process. */
function peerChannel(child: Deno.ChildProcess) {
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const writer = child.stdin.getWriter();
  let buf = "";
  return {
    async line(): Promise<string> {
      for (;;) {
        const nl = buf.indexOf("\n");
        if (nl >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          return line;
        }
        const { value, done } = await reader.read();
        if (done) throw new Error("the bench peer exited");
        buf += value;
      }
    },
    async send(cmd: string): Promise<void> {
      await writer.write(new TextEncoder().encode(cmd + "\n"));
    },
    async close(): Promise<void> {
      await writer.close().catch(() => {});
      await reader.cancel().catch(() => {});
    },
  };
}

/** Runs the suite. */
export async function run(): Promise<Figure[]> {
  progress("sync: starting PostgreSQL, Redis and the peer process");
  await using pg = await startPostgres({ name: "bench-sync" });
  await using redis = await startRedis();
  const dbUrl = await pg.createDatabase();
  const sql = postgres(dbUrl, { max: 8, onnotice: () => {} }) as Sql;
  await migrate(sql);

  // One cluster key for both sides: batches and envelopes are sealed as in production.
  const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
  const auth = createMessageAuth(Uint8Array.from(atob(key), (c) => c.charCodeAt(0)));
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      "tests/fixtures/sync_bench_peer.ts",
      redis.url,
      dbUrl,
      PREFIX,
      key,
    ],
    cwd: ROOT,
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const peer = peerChannel(child);

  const { node, close: closeNode } = await startBenchSyncNode({
    redisUrl: redis.url,
    prefix: PREFIX,
    auth,
    sql,
    instanceId: "bench-a",
  });
  const rawPub = new Redis(redis.url);

  try {
    if ((await peer.line()) !== "ready") throw new Error("the bench peer did not start");
    while (!node.stats().caughtUp) await sleep(20);

    const latency = async () => {
      await peer.send("reset");
      await peer.line();
      await paced(LATENCY_UPDATES, RATE, (i) => {
        node.applyDelta("latency", `e${i % 1000}`, { t: epoch() });
      });
      await sleep(300);
      await paced(LATENCY_UPDATES, RATE, () => {
        rawPub.publish(`${PREFIX}raw.latency`, String(epoch()));
      });
      await sleep(300);
      await peer.send("samples");
      return JSON.parse(await peer.line()) as { sync: number[]; raw: number[] };
    };

    const volume = async (offset: number) => {
      await peer.send("reset");
      await peer.line();
      await peer.send(`expect ${VOLUME} 0`);
      const t0 = epoch();
      for (let i = 0; i < VOLUME; i += CHUNK) {
        for (let j = i; j < Math.min(VOLUME, i + CHUNK); j++) {
          node.applyDelta("volume", `e${j % 20_000}`, { v: offset + j });
        }
        // One tick per chunk: the node seals the chunk into batches and I/O proceeds.
        await sleep(0);
      }
      const [done] = await Promise.all([
        peer.line(),
        node.flush({ persisted: true, timeoutMs: 120_000 }),
      ]);
      const applied = Number(done.split(" ")[1]);
      const end = Math.max(applied, epoch());
      const rate = VOLUME / ((end - t0) / 1000);
      const lagMs = Math.max(0, epoch() - applied);

      await peer.send("reset");
      await peer.line();
      await peer.send(`expect 0 ${VOLUME}`);
      const r0 = epoch();
      for (let i = 0; i < VOLUME; i += CHUNK) {
        const sends: Promise<unknown>[] = [];
        for (let j = i; j < Math.min(VOLUME, i + CHUNK); j++) {
          sends.push(rawPub.publish(`${PREFIX}raw.volume`, String(j)));
        }
        await Promise.all(sends);
      }
      const rawDone = Number((await peer.line()).split(" ")[1]);
      const rawRate = VOLUME / ((rawDone - r0) / 1000);
      return { rate, rawRate, lagMs };
    };

    progress("sync: warming up");
    await paced(3000, RATE, (i) => node.applyDelta("latency", `w${i % 100}`, { t: epoch() }));
    await sleep(300);

    const p50: number[] = [], p99: number[] = [], rawP50: number[] = [], rawP99: number[] = [];
    const rates: number[] = [], rawRates: number[] = [];
    for (let rep = 0; rep < REPS; rep++) {
      const s = await latency();
      if (s.sync.length < LATENCY_UPDATES * 0.99) {
        throw new Error(`the peer saw ${s.sync.length} of ${LATENCY_UPDATES} changes`);
      }
      p50.push(percentile(s.sync, 0.5));
      p99.push(percentile(s.sync, 0.99));
      rawP50.push(percentile(s.raw, 0.5));
      rawP99.push(percentile(s.raw, 0.99));
      const v = await volume(rep * VOLUME);
      rates.push(v.rate);
      rawRates.push(v.rawRate);
      progress(
        `sync rep ${rep + 1}/${REPS}: at ${RATE}/s p50 ${round(p50[rep])} ms p99 ` +
          `${round(p99[rep])} ms (raw ${round(rawP50[rep])} / ${round(rawP99[rep])}); ` +
          `${Math.round(v.rate)} updates/s replicated and stored (storage trailed the peer ` +
          `by ${Math.round(v.lagMs)} ms; raw ${Math.round(v.rawRate)} msg/s)`,
      );
    }
    const stats = node.stats();
    progress(
      `sync: ${stats.seq} batches sealed, ${stats.publishFailures} publish failures, ` +
        `${stats.persistBacklog} not yet stored`,
    );
    return [
      {
        suite: "sync",
        name: "propagation_p50_ms",
        unit: "ms",
        value: round(median(p50)),
        better: "lower",
        baseline: { name: "redis_publish_receive_p50_ms", value: round(median(rawP50)) },
      },
      {
        suite: "sync",
        name: "propagation_p99_ms",
        unit: "ms",
        value: round(median(p99)),
        better: "lower",
        baseline: { name: "redis_publish_receive_p99_ms", value: round(median(rawP99)) },
      },
      {
        suite: "sync",
        name: "updates_per_s",
        unit: "updates/s",
        value: Math.round(median(rates)),
        better: "higher",
        baseline: { name: "redis_publish_per_s", value: Math.round(median(rawRates)) },
      },
    ];
  } finally {
    await peer.send("quit").catch(() => {});
    await child.status;
    await peer.close();
    rawPub.disconnect();
    await closeNode();
    await sql.end();
  }
}
