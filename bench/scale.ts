/**
 * Scale suite (`deno task bench scale [--sizes 3,6,12,24] [--idle-s 20] [--settle-s 30]`): N runtime
 * instances as separate processes on one PostgreSQL and one Redis, every concern on, and per N:
 *
 * | figure | how |
 * | --- | --- |
 * | `join_seen_s` | the N-th instance starts after N−1 settled; from its own first heartbeat (its log) to the last of the others logging it joined |
 * | `detect_s` | the coordinator is killed with SIGKILL; until every survivor logged it left |
 * | `lease_handover_s` | same kill; until a survivor logged it became the coordinator |
 * | `broadcast_p99_ms` | `diag.note` broadcasts from this process; until every instance's `/actors/stream` shows it (p99 over the broadcasts of the slowest receiver) |
 * | `sync_p99_ms` | `PATCH /state/scale/<n>` on one instance; until every instance's `/state/stream` shows it |
 * | `idle_redis_cmds_per_s` | Redis `total_commands_processed` over an idle window, per instance (as Redis counts them: a script is its `EVALSHA` plus every command it runs) |
 * | `idle_rss_mb`, `idle_cpu_pct` | /proc of each instance over the same window, median over instances |
 *
 * The idle window starts `--settle-s` (30) seconds after the last join: for some 30 s after its
 * start an instance still spends 2–3× its steady CPU (V8 compiling the periodic paths, the first
 * metric and snapshot rounds, start-up garbage), which is start-up, not idling.
 *
 * Each row prints one JSON line per figure with `"n"` added (baseline null: nothing raw
 * compares), then a `<figure>_slope_per_instance` line per figure (least squares over the
 * sizes), then the summary figures `detect_s`, `lease_handover_s`, `broadcast_p99_ms`,
 * `idle_redis_cmds_per_s`, `idle_rss_mb`, `idle_cpu_pct` with the largest N's value as `value`
 * and the smallest N's as `baseline`.
 *
 * The instances are full instances (`deno run main.ts`, every concern) with a PostgreSQL pool
 * of 2 connections each so 24 fit under PostgreSQL's default connection limit.
 *
 * Redis Cluster: `--redis-cluster host:port,...` (or RS_BENCH_REDIS_CLUSTER, the masters of a
 * running cluster) is handed to the instances as REDIS_CLUSTER_NODES, for the Redis Cluster
 * deployment, and the idle command count sums INFO over those nodes; this process's own
 * broadcasts go through a cluster client (sharded pub/sub, as the instances' buses). Without
 * it the suite runs on one throw-away Redis.
 * @module
 */
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
import { createRedisTransport } from "../actors/runtime/transport.ts";
import { createMessageAuth } from "../lib/message_auth.ts";
import { createRedisBus } from "../store/bus.ts";
import { closeRedis, createKeyspace, createRedisClient } from "../store/redis.ts";
import { startPostgres, startRedis } from "../tests/harness/mod.ts";
import {
  ADMIN_HEADERS,
  TEST_ADMIN_TOKEN,
  TEST_STATE_WRITE_TOKEN,
  WRITER_HEADERS,
} from "../tests/support/auth.ts";
import { type InstanceProcess, launchInstance } from "../tests/support/instance.ts";
import { type Figure, median, percentile, progress, round } from "./_util.ts";

const SUITE = "scale";
const BROADCASTS = 40;
const SYNC_WRITES = 40;

/** One row's figures. */
interface Row {
  n: number;
  join_seen_s: number;
  detect_s: number;
  lease_handover_s: number;
  broadcast_p99_ms: number;
  sync_p99_ms: number;
  idle_redis_cmds_per_s: number;
  idle_rss_mb: number;
  idle_cpu_pct: number;
}

const UNITS: Record<Exclude<keyof Row, "n">, string> = {
  join_seen_s: "s",
  detect_s: "s",
  lease_handover_s: "s",
  broadcast_p99_ms: "ms",
  sync_p99_ms: "ms",
  idle_redis_cmds_per_s: "cmds/s",
  idle_rss_mb: "MB",
  idle_cpu_pct: "%",
};

/** The summary figures the issue names, in its order. */
const SUMMARY = [
  "detect_s",
  "lease_handover_s",
  "broadcast_p99_ms",
  "idle_redis_cmds_per_s",
  "idle_rss_mb",
  "idle_cpu_pct",
] as const;

interface LogRecord {
  ts: string;
  msg: string;
  joined?: string[];
  left?: string[];
}

/** The JSON log records of an instance so far. */
function records(node: InstanceProcess): LogRecord[] {
  const out: LogRecord[] = [];
  for (const line of node.stderr().split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      out.push(JSON.parse(line));
    } catch { /* a partial last line */ }
  }
  return out;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `check` every 10 ms until it answers a value, at most `ms`. */
async function poll<T>(what: string, check: () => T | null | undefined, ms = 60_000): Promise<T> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const v = check();
    if (v !== null && v !== undefined) return v;
    await sleep(10);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Calls per command from `INFO commandstats`. */
function commandStats(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split("\n")) {
    const m = /^cmdstat_([^:]+):calls=(\d+)/.exec(line);
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}

/** utime + stime of a process (clock ticks) and its resident set (bytes). */
async function procStat(pid: number): Promise<{ ticks: number; rss: number }> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]);
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const rss = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) * 1024;
  return { ticks, rss };
}

/**
 * An SSE reader that calls `onEvent(data)` for each event until closed; a stream the server
 * ends (or that fails) is opened again.
 */
function openEvents(
  url: string,
  onEvent: (data: string) => void,
): { close(): Promise<void> } {
  const ac = new AbortController();
  const done = (async () => {
    while (!ac.signal.aborted) {
      try {
        const res = await fetch(url, { headers: ADMIN_HEADERS, signal: ac.signal });
        if (!res.body) continue;
        let buf = "";
        for await (const chunk of res.body.pipeThrough(new TextDecoderStream())) {
          buf += chunk;
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            const data = block.split("\n").filter((l) => l.startsWith("data:"))
              .map((l) => l.slice(5).trimStart()).join("\n");
            if (data) onEvent(data);
          }
        }
      } catch { /* aborted, or the connection broke: open again unless closed */ }
      if (!ac.signal.aborted) await sleep(100);
    }
  })();
  return {
    async close() {
      ac.abort();
      // A body read the abort does not reach must not hold the bench up.
      await Promise.race([done, sleep(2000)]);
    },
  };
}

/** Least-squares slope of y against x. */
function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  if (n < 2) return 0;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0, den = 0;
  for (let i = 0; i < n; i++) {
    num += (xs[i] - mx) * (ys[i] - my);
    den += (xs[i] - mx) ** 2;
  }
  return den ? num / den : 0;
}

/** Options of the suite (from `deno task bench scale --sizes ...`). */
export interface ScaleOptions {
  sizes: number[];
  idleS: number;
  settleS: number;
  clusterNodes: string | null;
}

function options(args: string[]): ScaleOptions {
  const { values } = parseArgs({
    args,
    options: {
      sizes: { type: "string" },
      "idle-s": { type: "string" },
      "settle-s": { type: "string" },
      "redis-cluster": { type: "string" },
    },
    strict: true,
  });
  const sizes = (values.sizes ?? Deno.env.get("RS_BENCH_SIZES") ?? "3,6,12,24").split(",")
    .map((s) => Number(s.trim()));
  if (sizes.some((n) => !Number.isInteger(n) || n < 2 || n > 64)) {
    throw new Error("--sizes: comma-separated instance counts, each 2 to 64");
  }
  const idleS = Number(values["idle-s"] ?? 20);
  if (!(idleS >= 5 && idleS <= 600)) throw new Error("--idle-s: 5 to 600 seconds");
  const settleS = Number(values["settle-s"] ?? 30);
  if (!(settleS >= 0 && settleS <= 600)) throw new Error("--settle-s: 0 to 600 seconds");
  return {
    sizes,
    idleS,
    settleS,
    clusterNodes: values["redis-cluster"] ?? Deno.env.get("RS_BENCH_REDIS_CLUSTER") ?? null,
  };
}

/** Runs the suite. */
export async function run(args: string[] = []): Promise<Figure[]> {
  const opts = options(args);
  progress(`scale: sizes ${opts.sizes.join(",")}; starting PostgreSQL and Redis`);
  await using pg = await startPostgres({ name: "bench-scale" });
  await using redis = await startRedis();
  const dbUrl = await pg.createDatabase();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-bench-scale-" });
  const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
  // Redis commands are read with INFO from every server the instances use (summed).
  const admin = opts.clusterNodes
    ? opts.clusterNodes.split(",").map((hp) => {
      const [host, port] = hp.trim().split(":");
      return new Redis({ host, port: Number(port) });
    })
    : [new Redis(redis.url)];
  const rows: Row[] = [];
  try {
    for (const n of opts.sizes) {
      const redisUrl = opts.clusterNodes
        ? `redis://${opts.clusterNodes.split(",")[0].trim()}`
        : redis.url;
      rows.push(await measure(n, { redisUrl, dbUrl, dataDir, key, admin, opts }));
      const r = rows.at(-1)!;
      progress(`scale n=${n}: ${JSON.stringify(r)}  (load ${Deno.loadavg().join(" ")})`);
    }
  } finally {
    for (const a of admin) a.disconnect();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
  const figures: Figure[] = [];
  const names = Object.keys(UNITS) as (keyof typeof UNITS)[];
  for (const r of rows) {
    for (const name of names) {
      figures.push({
        suite: SUITE,
        name: `${name}_n${r.n}`,
        unit: UNITS[name],
        value: round(r[name]),
        better: "lower",
        baseline: null,
        n: r.n,
      } as Figure);
    }
  }
  const xs = rows.map((r) => r.n);
  for (const name of names) {
    figures.push({
      suite: SUITE,
      name: `${name}_slope_per_instance`,
      unit: `${UNITS[name]}/instance`,
      value: round(slope(xs, rows.map((r) => r[name])), 4),
      better: "lower",
      baseline: null,
    });
  }
  const first = rows[0], last = rows.at(-1)!;
  for (const name of SUMMARY) {
    figures.push({
      suite: SUITE,
      name,
      unit: UNITS[name],
      value: round(last[name]),
      better: "lower",
      baseline: { name: `${name}_n${first.n}`, value: round(first[name]) },
    });
  }
  return figures;
}

async function measure(
  n: number,
  ctx: {
    redisUrl: string;
    dbUrl: string;
    dataDir: string;
    key: string;
    admin: Redis[];
    opts: ScaleOptions;
  },
): Promise<Row> {
  const prefix = `rsscale${n}:`;
  const env = (id: string): Record<string, string> => ({
    DATABASE_URL: ctx.dbUrl,
    DATABASE_POOL_SIZE: "2",
    ...(ctx.opts.clusterNodes
      ? { REDIS_CLUSTER_NODES: ctx.opts.clusterNodes }
      : { REDIS_URL: ctx.redisUrl }),
    RS_SECRET_KEY: ctx.key,
    RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
    RS_STATE_WRITE_TOKEN: TEST_STATE_WRITE_TOKEN,
    RS_DATA_DIR: ctx.dataDir,
    RS_KEY_PREFIX: prefix,
    RS_INSTANCE_ID: id,
    RS_PORT: "0",
    LOG_LEVEL: "info",
    LOG_FORMAT: "json",
  });
  const ids = Array.from({ length: n }, (_, i) => `s${n}-${String(i).padStart(2, "0")}`);
  const nodes = new Map<string, InstanceProcess>();
  const seesAll = (id: string, members: string[]) => {
    const set = new Set<string>();
    for (const r of records(nodes.get(id)!)) {
      if (r.msg !== "membership changed") continue;
      for (const j of r.joined ?? []) set.add(j);
      for (const l of r.left ?? []) set.delete(l);
    }
    return members.every((m) => set.has(m));
  };
  try {
    // N−1 instances, four at a time (a 2-core machine starting 24 Deno processes at once
    // measures its scheduler, not the runtime).
    const early = ids.slice(0, -1);
    for (let i = 0; i < early.length; i += 4) {
      const batch = early.slice(i, i + 4);
      const started = await Promise.all(batch.map((id) => launchInstance(env(id))));
      batch.forEach((id, k) => nodes.set(id, started[k]));
    }
    await poll(
      `${early.length} instances to see each other`,
      () => early.every((id) => seesAll(id, early)) || null,
      180_000,
    );

    // Join: the last instance; from its own first heartbeat to the last peer noticing it.
    const lastId = ids.at(-1)!;
    nodes.set(lastId, await launchInstance(env(lastId)));
    await poll(`everyone to see ${lastId}`, () => ids.every((id) => seesAll(id, ids)) || null);
    const joinedAt = Date.parse(
      records(nodes.get(lastId)!).find((r) => r.msg === "membership changed")!.ts,
    );
    const seenAt = Math.max(...early.map((id) =>
      Date.parse(
        records(nodes.get(id)!).find((r) =>
          r.msg === "membership changed" && r.joined?.includes(lastId)
        )!.ts,
      )
    ));
    const joinSeen = (seenAt - joinedAt) / 1000;

    // Idle: let start-up work finish, then one window.
    await sleep(ctx.opts.settleS * 1000);
    const info = async () => {
      let total = 0;
      for (const a of ctx.admin) {
        total += Number(/total_commands_processed:(\d+)/.exec(await a.info("stats"))![1]);
      }
      return total;
    };
    const allStats = async () => {
      const out: Record<string, number> = {};
      for (const a of ctx.admin) {
        for (const [k, v] of Object.entries(commandStats(await a.info("commandstats")))) {
          out[k] = (out[k] ?? 0) + v;
        }
      }
      return out;
    };
    const pids = ids.map((id) => nodes.get(id)!.child.pid);
    const before = await Promise.all(pids.map(procStat));
    const stats0 = await allStats();
    const c0 = await info();
    const t0 = performance.now();
    await sleep(ctx.opts.idleS * 1000);
    const c1 = await info();
    const stats1 = await allStats();
    const elapsed = (performance.now() - t0) / 1000;
    const after = await Promise.all(pids.map(procStat));
    // The INFO calls between the two counts are this bench's own.
    const idleCmds = (c1 - c0 - (2 * ctx.admin.length - 1)) / elapsed / n;
    // Per-command breakdown on stderr (a script's inner commands are counted here too).
    const perCommand = Object.entries(stats1)
      .map(([cmd, calls]) => [cmd, round((calls - (stats0[cmd] ?? 0)) / elapsed / n, 2)] as const)
      .filter(([, rate]) => rate > 0)
      .sort((a, b) => b[1] - a[1]);
    progress(
      `scale n=${n}: idle commands/s per instance by command: ${JSON.stringify(perCommand)}`,
    );
    const tick = 100; // USER_HZ on Linux
    const cpu = after.map((a, i) => (a.ticks - before[i].ticks) / tick / elapsed * 100);
    const rss = after.map((a) => a.rss / 1e6);

    // Broadcast to all, through this process's own transport.
    progress(`scale n=${n}: broadcasts`);
    const broadcastP99 = await broadcasts(ids, nodes, ctx, prefix);
    progress(`scale n=${n}: sync writes`);
    const syncP99 = await syncWrites(ids, nodes, n);
    progress(`scale n=${n}: kill -9 of the coordinator`);

    // kill -9 of the coordinator: detection by every survivor, and the lease's handover.
    const leaderOf = (id: string) =>
      records(nodes.get(id)!).filter((r) => r.msg === "became the cluster coordinator").length;
    const coordinator = ids.find((id) => leaderOf(id) > 0)!;
    const survivors = ids.filter((id) => id !== coordinator);
    const leadsBefore = new Map(survivors.map((id) => [id, leaderOf(id)]));
    const leftSeen = (id: string) =>
      records(nodes.get(id)!).some((r) =>
        r.msg === "membership changed" && r.left?.includes(coordinator)
      );
    const killedAt = Date.now();
    nodes.get(coordinator)!.child.kill("SIGKILL");
    await nodes.get(coordinator)!.child.status;
    nodes.delete(coordinator);
    await poll(`every survivor to drop ${coordinator}`, () => survivors.every(leftSeen) || null);
    const detectedAt = Math.max(...survivors.map((id) =>
      Date.parse(
        records(nodes.get(id)!).find((r) =>
          r.msg === "membership changed" && r.left?.includes(coordinator)
        )!.ts,
      )
    ));
    const newLeader = await poll(
      "a new coordinator",
      () => survivors.find((id) => leaderOf(id) > leadsBefore.get(id)!),
    );
    const leadAt = Date.parse(
      records(nodes.get(newLeader)!).filter((r) => r.msg === "became the cluster coordinator")
        .at(-1)!.ts,
    );
    return {
      n,
      join_seen_s: joinSeen,
      detect_s: (detectedAt - killedAt) / 1000,
      lease_handover_s: (leadAt - killedAt) / 1000,
      broadcast_p99_ms: broadcastP99,
      sync_p99_ms: syncP99,
      idle_redis_cmds_per_s: idleCmds,
      idle_rss_mb: median(rss),
      idle_cpu_pct: median(cpu),
    };
  } finally {
    await Promise.all([...nodes.values()].map((node) => node.stop("SIGTERM").catch(() => {})));
  }
}

/** p99 over `BROADCASTS` broadcasts of the time until every instance has it. */
async function broadcasts(
  ids: string[],
  nodes: Map<string, InstanceProcess>,
  ctx: { redisUrl: string; key: string; opts: { clusterNodes: string | null } },
  prefix: string,
): Promise<number> {
  const keyspace = createKeyspace(prefix);
  const auth = createMessageAuth(Uint8Array.from(atob(ctx.key), (c) => c.charCodeAt(0)));
  // On a Redis Cluster this process is a cluster client too: the instances' buses use sharded
  // pub/sub, which a classic PUBLISH on one node would not reach.
  const clusterNodes = ctx.opts.clusterNodes?.split(",").map((hp) => {
    const [host, port] = hp.trim().split(":");
    return { host, port: Number(port) };
  });
  const client = createRedisClient({
    url: clusterNodes ? null : ctx.redisUrl,
    sentinels: [],
    sentinelMaster: "mymaster",
    sentinelPassword: null,
    clusterNodes,
    keyPrefix: prefix,
  }, { name: "bench-scale" });
  await client.connect();
  const bus = createRedisBus(client, { keyspace, auth });
  const transport = createRedisTransport(client, {
    keyspace,
    auth,
    bus,
    instanceId: "bench-scale",
    actors: { spec: () => undefined, ref: () => undefined },
  });
  await transport.start();
  const received = new Map<string, number>(ids.map((id) => [id, -1]));
  const streams = ids.map((id) =>
    openEvents(`${nodes.get(id)!.url}/actors/stream`, (data) => {
      const item = JSON.parse(data) as {
        view?: { id: string; summary?: { received?: number } };
        actors?: { id: string; summary?: { received?: number } }[];
      };
      const views = item.view ? [item.view] : item.actors ?? [];
      for (const v of views) {
        if (v.id === "diagnostics" && typeof v.summary?.received === "number") {
          received.set(id, Math.max(received.get(id)!, v.summary.received));
        }
      }
    })
  );
  try {
    await poll(
      "every actor stream's hello",
      () => ids.every((id) => received.get(id)! >= 0) || null,
    );
    const samples: number[] = [];
    for (let i = 0; i < BROADCASTS; i++) {
      const base = new Map(received);
      const t0 = performance.now();
      await transport.broadcast("diagnostics", { type: "diag.note", text: `scale ${i}` });
      await poll(
        "every instance to get the broadcast",
        () => ids.every((id) => received.get(id)! > base.get(id)!) || null,
        10_000,
      ).catch(() => {
        // Counted as a 10 s sample (an event stream lost it, or a receiver was starved).
        const late = ids.filter((id) => !(received.get(id)! > base.get(id)!));
        progress(`scale: broadcast ${i} not seen within 10 s by ${late.join(",")}`);
      });
      samples.push(performance.now() - t0);
      await sleep(20);
    }
    return percentile(samples, 0.99);
  } finally {
    await Promise.all(streams.map((s) => s.close()));
    await transport.close();
    await bus.close();
    await closeRedis(client);
  }
}

/** p99 over `SYNC_WRITES` PATCHes on one instance of the time until every instance streams it. */
async function syncWrites(
  ids: string[],
  nodes: Map<string, InstanceProcess>,
  n: number,
): Promise<number> {
  const seen = new Map<string, Set<string>>(ids.map((id) => [id, new Set()]));
  const streams = ids.map((id) =>
    openEvents(`${nodes.get(id)!.url}/state/stream?pattern=*`, (data) => {
      const m = /scale-mark-(\d+)/.exec(data);
      if (m) seen.get(id)!.add(m[1]);
    })
  );
  const writer = nodes.get(ids[0])!.url;
  try {
    await sleep(500); // the streams' subscriptions
    const samples: number[] = [];
    for (let i = 0; i < SYNC_WRITES; i++) {
      const t0 = performance.now();
      const res = await fetch(`${writer}/state/stream/scale${n}`, {
        method: "PATCH",
        headers: { ...WRITER_HEADERS, "content-type": "application/json" },
        body: JSON.stringify({ title: `scale-mark-${i}` }),
      });
      await res.body?.cancel();
      if (!res.ok) throw new Error(`PATCH answered ${res.status}`);
      await poll(
        "every instance to stream the change",
        () => ids.every((id) => seen.get(id)!.has(String(i))) || null,
        10_000,
      ).catch(() => {
        const late = ids.filter((id) => !seen.get(id)!.has(String(i)));
        progress(`scale: sync write ${i} not streamed within 10 s by ${late.join(",")}`);
      });
      samples.push(performance.now() - t0);
      await sleep(20);
    }
    return percentile(samples, 0.99);
  } finally {
    await Promise.all(streams.map((s) => s.close()));
  }
}
