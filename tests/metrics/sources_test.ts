import assert from "node:assert/strict";
import postgres from "postgres";
import { Redis } from "ioredis";
import type { MetricPoint } from "../../lib/line_protocol.ts";
import { migrate } from "../../store/migrations.ts";
import { addBytesTransferred, getOpenSession } from "../../store/stream_sessions.ts";
import {
  createStream,
  startStream,
  updateStreamStats,
  updateViewerCount,
} from "../../store/streams.ts";
import type { Sql } from "../../store/types.ts";
import { createUser } from "../../store/users.ts";
import { parseCommandStats, parseInfo } from "../../store/redis_stats.ts";
import { collectOnce } from "../../actors/metrics/collector.ts";
import { createQueryTimer } from "../../actors/metrics/query_timer.ts";
import {
  cacheSource,
  databaseSource,
  parseCpu,
  parseMounts,
  parseNetDev,
  type Source,
  streamsSource,
  systemSource,
} from "../../actors/metrics/sources.ts";
import { startPostgres, startRedis, startReplica } from "../harness/mod.ts";
import { until } from "../support/instance.ts";

function find(points: MetricPoint[], measurement: string, tags: Record<string, string> = {}) {
  return points.filter((p) =>
    p.measurement === measurement &&
    Object.entries(tags).every(([k, v]) => String(p.tags?.[k]) === v)
  );
}

Deno.test("system source", async (t) => {
  await t.step("parses /proc fixtures", () => {
    assert.deepEqual(parseCpu("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n"), {
      busy: 150,
      total: 1000,
    });
    const net = parseNetDev(
      "Inter-|   Receive\n face |bytes\n    lo: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0\n" +
        "  eth0: 1000 5 0 0 0 0 0 0 2000 7 0 0 0 0 0 0\n",
    );
    assert.deepEqual(net.get("eth0"), { rx: 1000, tx: 2000 });
    assert.deepEqual(
      parseMounts(
        "/dev/sda1 / ext4 rw 0 0\nproc /proc proc rw 0 0\n/dev/sda1 /again ext4 rw 0 0\n" +
          "/dev/sdb /mnt/my\\040disk xfs rw 0 0\n",
        ["ext4", "xfs"],
      ),
      ["/", "/mnt/my disk"],
    );
  });

  await t.step("reports CPU share and network rates from two readings", async () => {
    const files: Record<string, string> = {
      "/proc/stat": "cpu  100 0 0 900 0 0 0 0\n",
      "/proc/mounts": "/dev/sda1 / ext4 rw 0 0\n",
      "/proc/net/dev": "h\nh\n  eth0: 1000 0 0 0 0 0 0 0 5000 0 0 0 0 0 0 0\n",
    };
    const source = systemSource({
      host: "h1",
      readTextFile: (p) => files[p],
      memory: () => ({ total: 1000, available: 250 }),
      statfs: () => ({ bsize: 4096, blocks: 100, bfree: 40, bavail: 20 }),
    });
    const first = await source.collect(10_000);
    assert.deepEqual(find(first, "system_memory_usage")[0].fields, { bytes: 750, percent: 75 });
    assert.deepEqual(find(first, "system_disk_usage", { mount: "/" })[0].fields, {
      bytes: 60 * 4096,
      percent: 75,
    });
    assert.equal(find(first, "system_network_rx").length, 0, "a rate needs two readings");
    files["/proc/stat"] = "cpu  400 0 0 1600 0 0 0 0\n"; // 300 busy of 1000
    files["/proc/net/dev"] = "h\nh\n  eth0: 3000 0 0 0 0 0 0 0 5500 0 0 0 0 0 0 0\n";
    const second = await source.collect(12_000);
    assert.equal(find(second, "system_cpu_usage")[0].fields.percent, 30);
    assert.equal(
      find(second, "system_network_rx", { interface: "eth0" })[0].fields.bytes_per_s,
      1000,
    );
    assert.equal(
      find(second, "system_network_tx", { interface: "eth0" })[0].fields.bytes_per_s,
      250,
    );
    const counters = source.counters!();
    assert.equal(counters[0].samples[0].value, 3000);
  });

  await t.step("reads this Linux host", async () => {
    const source = systemSource();
    await new Promise((r) => setTimeout(r, 50));
    const points = await source.collect(Date.now());
    const cpu = find(points, "system_cpu_usage")[0];
    assert.ok(cpu && cpu.fields.percent! >= 0 && cpu.fields.percent! <= 100);
    const mem = find(points, "system_memory_usage")[0];
    assert.ok(mem.fields.bytes! > 0 && mem.fields.percent! < 100);
    assert.ok(find(points, "system_disk_usage").length >= 1);
    assert.equal(mem.tags?.host, Deno.hostname());
  });
});

Deno.test("database, streams and cache sources on real servers", async (t) => {
  await using pg = await startPostgres();
  await using replica = await startReplica(pg, { name: "replica_a" });
  await using redisServer = await startRedis();
  const sql = postgres(await pg.createDatabase(), { max: 4, onnotice: () => {} }) as Sql;
  const redis = new Redis(redisServer.url, { lazyConnect: true });
  await redis.connect();
  try {
    await migrate(sql);
    const timer = createQueryTimer();

    await t.step("streams: one point per figure of each live stream", async () => {
      const user = await createUser(sql, {
        username: "caster1",
        email: "caster1@example.com",
        password: "long enough password",
      }, { hashing: { ln: 10 } });
      const { stream } = await createStream(sql, { userId: user.id, name: "Live one" });
      await createStream(sql, { userId: user.id, name: "Off the air" });
      const { stream: live } = await startStream(sql, stream.id);
      await updateViewerCount(sql, stream.id, { viewers: 150 });
      await updateStreamStats(sql, stream.id, {
        bitrateKbps: 6000,
        fps: 60,
        resolution: "1920x1080",
      });
      const session = await getOpenSession(sql, stream.id);
      await addBytesTransferred(sql, session!.id, { bytes: 123_456 });

      const at = live.startedAt!.getTime() + 90_000;
      const points = await streamsSource(sql, { timer }).collect(at);
      const id = String(stream.id);
      assert.deepEqual(find(points, "stream_viewers")[0], {
        measurement: "stream_viewers",
        tags: { stream_id: id, user_id: String(user.id) },
        fields: { count: 150 },
        time: at,
      });
      assert.equal(find(points, "stream_bitrate", { stream_id: id })[0].fields.kbps, 6000);
      assert.equal(find(points, "stream_fps")[0].fields.fps, 60);
      assert.equal(find(points, "stream_resolution")[0].fields.pixels, 1920 * 1080);
      assert.equal(find(points, "stream_duration")[0].fields.seconds, 90);
      assert.equal(find(points, "stream_bytes_transferred")[0].fields.bytes, 123_456);
      assert.equal(points.length, 6, "the stream off the air reports nothing");
    });

    await t.step("database: connections, size, replication lag and query percentiles", async () => {
      const points = await databaseSource(sql, { timer, host: `127.0.0.1:${pg.port}` }).collect(
        1000,
      );
      const conns = find(points, "database_connections")[0];
      assert.equal(conns.tags?.host, `127.0.0.1:${pg.port}`);
      assert.ok(conns.fields.count! >= 1);
      assert.ok(conns.fields.max! >= 10);
      assert.ok(find(points, "database_size")[0].fields.bytes! > 1_000_000);
      const lag = find(points, "database_replication_lag", { replica: "replica_a" });
      assert.equal(lag.length, 1, "the streaming replica is reported by its name");
      assert.ok(lag[0].fields.seconds! >= 0);
      const qt = find(points, "database_query_time");
      const types = qt.map((p) => p.tags?.query_type).sort();
      assert.deepEqual(types, ["connections", "ping", "replication", "size", "streams"]);
      const streams = find(qt, "database_query_time", { query_type: "streams" })[0].fields;
      assert.ok(streams.p50! > 0 && streams.p50! <= streams.p95! && streams.p95! <= streams.p99!);
      assert.equal(streams.count, 1);
      const summary = databaseSource(sql, { timer, host: "x" }).counters!()[0];
      assert.ok(summary.samples.some((s) => s.name.endsWith("_count") && s.value >= 1));
    });

    await t.step("database on the standby reports its own lag", async () => {
      const standby = postgres(replica.urlFor("postgres"), { max: 1, onnotice: () => {} }) as Sql;
      try {
        await pg.psql(
          "CREATE TABLE IF NOT EXISTS lag_probe (x int); INSERT INTO lag_probe VALUES (1)",
        );
        const self = await until(async () => {
          const points = await databaseSource(standby, { timer: createQueryTimer(), host: "r" })
            .collect(1);
          const lag = find(points, "database_replication_lag", { replica: "self" });
          return lag.length ? lag : null;
        }, { what: "the standby reporting its own replication lag", ms: 10_000 });
        assert.equal(self.length, 1);
      } finally {
        await standby.end();
      }
    });

    await t.step("cache: hit rate and operations per second from INFO deltas", async () => {
      const source = cacheSource(redis);
      assert.deepEqual(await source.collect(10_000), [], "a rate needs two readings");
      await redis.set("k", "v");
      await redis.get("k");
      await redis.get("k");
      await redis.get("k");
      await redis.get("missing");
      const points = await source.collect(12_000);
      assert.equal(find(points, "cache_hit_rate")[0].fields.percent, 75);
      assert.equal(find(points, "cache_operations", { operation: "hit" })[0].fields.per_s, 1.5);
      assert.equal(find(points, "cache_operations", { operation: "get" })[0].fields.per_s, 2);
      assert.equal(find(points, "cache_operations", { operation: "set" })[0].fields.per_s, 0.5);
      const counters = source.counters!()[0].samples;
      assert.ok(counters.find((s) => s.labels?.operation === "hit")!.value >= 3);
      const info = parseInfo("# Stats\r\nkeyspace_hits:5\r\ncmdstat_get:calls=3,usec=9\r\n");
      assert.equal(info.get("keyspace_hits"), "5");
      assert.deepEqual([...parseCommandStats(info)], [["get", 3]]);
    });

    await t.step("a collection reports each source and survives a failing one", async () => {
      const broken: Source = {
        name: "broken",
        scope: "host",
        collect: () => Promise.reject(new Error("kaput")),
      };
      const hung: Source = { name: "hung", scope: "host", collect: () => new Promise(() => {}) };
      const out = await collectOnce({
        sources: [streamsSource(sql, { timer }), broken, hung, cacheSource(redis)],
        now: () => 5000,
        clusterCollector: () => Promise.resolve(true),
        sourceTimeoutMs: 200,
      });
      assert.equal(out.at, 5000);
      assert.equal(out.sources.streams.error, null);
      assert.equal(out.sources.broken.error, "kaput");
      assert.match(out.sources.hung.error!, /no answer within 200 ms/);
      assert.equal(out.points.length, out.sources.streams.points);

      const skipped = await collectOnce({
        sources: [streamsSource(sql, { timer }), systemSource()],
        now: () => 6000,
        clusterCollector: () => Promise.resolve(false),
        sourceTimeoutMs: 1000,
      });
      assert.match(skipped.sources.streams.skipped!, /coordinator/);
      assert.ok(skipped.sources.system.points > 0);
    });
  } finally {
    redis.disconnect();
    await sql.end();
  }
});
