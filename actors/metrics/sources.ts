/**
 * The collector's sources. Each reads one kind of fact and returns points stamped with the
 * cycle's time; a source keeps what it needs to turn counters into rates (the previous
 * reading) and exposes its raw counters for Prometheus.
 *
 * | source | scope | reads |
 * | --- | --- | --- |
 * | `system` | host | /proc/stat (CPU), Deno.systemMemoryInfo(), statfs of /proc/mounts, /proc/net/dev |
 * | `streams` | cluster | live streams and their open session (PostgreSQL) |
 * | `database` | cluster | pg_stat_activity, pg_database_size, pg_stat_replication, timed queries |
 * | `cache` | cluster | Redis INFO stats and commandstats (store/redis_stats.ts) |
 *
 * Cluster-scoped sources read shared servers, so one instance of a cluster collects them
 * (see collector.ts); host-scoped ones run on every instance.
 * @module
 */
import type { RedisClient } from "../../store/redis.ts";
import { statfsSync } from "node:fs";
import type { MetricPoint } from "../../lib/line_protocol.ts";
import type { Sql } from "../../store/types.ts";
import {
  connectionStats,
  databaseSize,
  liveStreamStats,
  ping,
  replicationLag,
} from "../../store/database_stats.ts";
import { readRedisStats, type RedisStats } from "../../store/redis_stats.ts";
import type { PromFamily } from "./prometheus.ts";
import type { QueryTimer } from "./query_timer.ts";

/** A source of metrics. */
export interface Source {
  /** Name (in collection reports). */
  readonly name: string;
  /** `host`: every instance collects it; `cluster`: one instance of the cluster does. */
  readonly scope: "host" | "cluster";
  /** Reads the source; `at` is the cycle's time (ms, injected clock). */
  collect(at: number): Promise<MetricPoint[]>;
  /** Raw counters for /metrics, as of the last collection. */
  counters?(): PromFamily[];
}

// ---------------------------------------------------------------------------------------
// system
// ---------------------------------------------------------------------------------------

/** Options of {@linkcode systemSource}. */
export interface SystemSourceOptions {
  /** Host tag (default Deno.hostname()). */
  host?: string;
  /** Reads a /proc file (tests substitute fixtures). */
  readTextFile?: (path: string) => string;
  /** Memory figures (default Deno.systemMemoryInfo()). */
  memory?: () => { total: number; available: number };
  /** File-system figures of a mount point. */
  statfs?: (path: string) => { bsize: number; blocks: number; bfree: number; bavail: number };
  /** File-system types reported. */
  fsTypes?: readonly string[];
  /** Interfaces left out (default: lo). */
  skipInterfaces?: readonly string[];
}

const DEFAULT_FS_TYPES = ["ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "vfat", "overlay"];
const MAX_MOUNTS = 16;
const MAX_INTERFACES = 32;

interface CpuTimes {
  busy: number;
  total: number;
}

/** Parses the aggregate `cpu` line of /proc/stat. */
export function parseCpu(stat: string): CpuTimes | null {
  const line = stat.split("\n").find((l) => l.startsWith("cpu "));
  if (!line) return null;
  const v = line.trim().split(/\s+/).slice(1, 9).map(Number);
  if (v.length < 4 || v.some((n) => !Number.isFinite(n))) return null;
  const idle = v[3] + (v[4] ?? 0);
  const total = v.reduce((a, b) => a + b, 0);
  return { busy: total - idle, total };
}

/** Parses /proc/net/dev into received / sent byte counters per interface. */
export function parseNetDev(text: string): Map<string, { rx: number; tx: number }> {
  const out = new Map<string, { rx: number; tx: number }>();
  for (const line of text.split("\n").slice(2)) {
    const i = line.indexOf(":");
    if (i < 0) continue;
    const name = line.slice(0, i).trim();
    const cols = line.slice(i + 1).trim().split(/\s+/).map(Number);
    if (name && Number.isFinite(cols[0]) && Number.isFinite(cols[8])) {
      out.set(name, { rx: cols[0], tx: cols[8] });
    }
  }
  return out;
}

/** Mount points of real file systems in /proc/mounts, one per device. */
export function parseMounts(text: string, fsTypes: readonly string[]): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const line of text.split("\n")) {
    const [device, mount, type] = line.split(" ");
    if (!mount || !fsTypes.includes(type) || seen.has(device)) continue;
    seen.add(device);
    // /proc/mounts writes spaces and other specials as octal escapes.
    out.push(mount.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8))));
  }
  return out.slice(0, MAX_MOUNTS);
}

/** CPU, memory, disk and network of this host. */
export function systemSource(options: SystemSourceOptions = {}): Source {
  const host = options.host ?? Deno.hostname();
  const read = options.readTextFile ?? Deno.readTextFileSync;
  const memory = options.memory ?? (() => Deno.systemMemoryInfo());
  const statfs = options.statfs ?? ((path: string) => statfsSync(path));
  const fsTypes = options.fsTypes ?? DEFAULT_FS_TYPES;
  const skip = new Set(options.skipInterfaces ?? ["lo"]);
  let lastCpu: CpuTimes | null = null;
  let lastNet: { at: number; counters: Map<string, { rx: number; tx: number }> } | null = null;
  let netCounters = new Map<string, { rx: number; tx: number }>();
  try {
    // A baseline now, so the first collection already has a CPU share.
    lastCpu = parseCpu(read("/proc/stat"));
  } catch {
    // not Linux: the CPU share is left out
  }

  return {
    name: "system",
    scope: "host",
    collect(at) {
      const points: MetricPoint[] = [];
      const tags = { host };
      try {
        const cpu = parseCpu(read("/proc/stat"));
        if (cpu && lastCpu && cpu.total > lastCpu.total) {
          const share = (cpu.busy - lastCpu.busy) / (cpu.total - lastCpu.total);
          points.push({
            measurement: "system_cpu_usage",
            tags,
            fields: { percent: Math.min(100, Math.max(0, share * 100)) },
            time: at,
          });
        }
        if (cpu) lastCpu = cpu;
      } catch {
        // no /proc/stat
      }
      const mem = memory();
      if (mem.total > 0) {
        const used = mem.total - mem.available;
        points.push({
          measurement: "system_memory_usage",
          tags,
          fields: { bytes: used, percent: (used / mem.total) * 100 },
          time: at,
        });
      }
      let mounts: string[] = [];
      try {
        mounts = parseMounts(read("/proc/mounts"), fsTypes);
      } catch {
        mounts = ["/"];
      }
      for (const mount of mounts) {
        try {
          const fs = statfs(mount);
          const used = (fs.blocks - fs.bfree) * fs.bsize;
          const usable = used + fs.bavail * fs.bsize;
          points.push({
            measurement: "system_disk_usage",
            tags: { host, mount },
            fields: { bytes: used, percent: usable > 0 ? (used / usable) * 100 : 0 },
            time: at,
          });
        } catch {
          // unmounted meanwhile, or not permitted
        }
      }
      try {
        const counters = parseNetDev(read("/proc/net/dev"));
        for (const name of [...counters.keys()]) if (skip.has(name)) counters.delete(name);
        netCounters = new Map([...counters].slice(0, MAX_INTERFACES));
        if (lastNet && at > lastNet.at) {
          const seconds = (at - lastNet.at) / 1000;
          for (const [name, c] of netCounters) {
            const before = lastNet.counters.get(name);
            // A counter that went backwards was reset (interface re-created): skip once.
            if (!before || c.rx < before.rx || c.tx < before.tx) continue;
            points.push({
              measurement: "system_network_rx",
              tags: { host, interface: name },
              fields: { bytes_per_s: (c.rx - before.rx) / seconds },
              time: at,
            });
            points.push({
              measurement: "system_network_tx",
              tags: { host, interface: name },
              fields: { bytes_per_s: (c.tx - before.tx) / seconds },
              time: at,
            });
          }
        }
        lastNet = { at, counters: netCounters };
      } catch {
        // no /proc/net/dev
      }
      return Promise.resolve(points);
    },
    counters() {
      const rx: PromFamily = {
        name: "rootstream_system_network_receive_bytes_total",
        help: "Bytes received on a network interface",
        type: "counter",
        samples: [],
      };
      const tx: PromFamily = {
        name: "rootstream_system_network_transmit_bytes_total",
        help: "Bytes sent on a network interface",
        type: "counter",
        samples: [],
      };
      for (const [name, c] of netCounters) {
        rx.samples.push({ name: rx.name, labels: { host, interface: name }, value: c.rx });
        tx.samples.push({ name: tx.name, labels: { host, interface: name }, value: c.tx });
      }
      return [rx, tx];
    },
  };
}

// ---------------------------------------------------------------------------------------
// streams
// ---------------------------------------------------------------------------------------

/** Viewers, bitrate, fps, resolution, duration and bytes of every live stream. */
export function streamsSource(
  sql: Sql,
  options: { timer: QueryTimer; limit?: number },
): Source {
  const limit = options.limit ?? 10_000;
  return {
    name: "streams",
    scope: "cluster",
    async collect(at) {
      const streams = await options.timer.timed("streams", () => liveStreamStats(sql, limit));
      const points: MetricPoint[] = [];
      for (const s of streams) {
        const stream_id = String(s.id);
        points.push({
          measurement: "stream_viewers",
          tags: { stream_id, user_id: String(s.userId) },
          fields: { count: s.viewers },
          time: at,
        });
        if (s.bitrateKbps !== null) {
          points.push({
            measurement: "stream_bitrate",
            tags: { stream_id },
            fields: { kbps: s.bitrateKbps },
            time: at,
          });
        }
        if (s.fps !== null) {
          points.push({
            measurement: "stream_fps",
            tags: { stream_id },
            fields: { fps: s.fps },
            time: at,
          });
        }
        const m = s.resolution ? /^(\d+)x(\d+)$/.exec(s.resolution) : null;
        if (m) {
          points.push({
            measurement: "stream_resolution",
            tags: { stream_id },
            fields: { pixels: Number(m[1]) * Number(m[2]) },
            time: at,
          });
        }
        if (s.startedAt) {
          points.push({
            measurement: "stream_duration",
            tags: { stream_id },
            fields: { seconds: Math.max(0, (at - s.startedAt.getTime()) / 1000) },
            time: at,
          });
        }
        points.push({
          measurement: "stream_bytes_transferred",
          tags: { stream_id },
          fields: { bytes: s.bytesTransferred },
          time: at,
        });
      }
      return points;
    },
  };
}

// ---------------------------------------------------------------------------------------
// database
// ---------------------------------------------------------------------------------------

/** Connections, size, replication lag and the query-time percentiles of the last interval. */
export function databaseSource(
  sql: Sql,
  options: { timer: QueryTimer; host: string },
): Source {
  const { timer, host } = options;
  return {
    name: "database",
    scope: "cluster",
    async collect(at) {
      // One query at a time: a metrics cycle should hold at most one pool connection.
      await timer.timed("ping", () => ping(sql));
      const conns = await timer.timed("connections", () => connectionStats(sql));
      const size = await timer.timed("size", () => databaseSize(sql));
      const lags = await timer.timed("replication", () => replicationLag(sql));
      const points: MetricPoint[] = [
        {
          measurement: "database_connections",
          tags: { host },
          fields: {
            count: conns.total,
            active: conns.active,
            idle: conns.idle,
            max: conns.max,
            percent: conns.max > 0 ? (conns.total / conns.max) * 100 : null,
          },
          time: at,
        },
        {
          measurement: "database_size",
          tags: { database: size.name },
          fields: { bytes: size.bytes },
          time: at,
        },
      ];
      for (const lag of lags) {
        points.push({
          measurement: "database_replication_lag",
          tags: { replica: lag.replica },
          fields: { seconds: lag.seconds, bytes: lag.bytes },
          time: at,
        });
      }
      // Percentiles of every query timed since the last cycle (this source's included).
      for (const w of timer.rotate()) {
        points.push({
          measurement: "database_query_time",
          tags: { query_type: w.queryType },
          fields: { p50: w.p50, p95: w.p95, p99: w.p99, max: w.max, count: w.count },
          time: at,
        });
      }
      return points;
    },
    counters() {
      const family: PromFamily = {
        name: "rootstream_database_query_duration_seconds",
        help: "Time of the queries the runtime timed (quantiles over the last interval)",
        type: "summary",
        samples: [],
      };
      const last = new Map(timer.last().map((w) => [w.queryType, w]));
      for (const t of timer.totals()) {
        const w = last.get(t.queryType);
        if (w) {
          for (const [q, v] of [["0.5", w.p50], ["0.95", w.p95], ["0.99", w.p99]] as const) {
            family.samples.push({
              name: family.name,
              labels: { query_type: t.queryType, quantile: q },
              value: v / 1000,
            });
          }
        }
        family.samples.push({
          name: `${family.name}_sum`,
          labels: { query_type: t.queryType },
          value: t.sumMs / 1000,
        });
        family.samples.push({
          name: `${family.name}_count`,
          labels: { query_type: t.queryType },
          value: t.count,
        });
      }
      return [family];
    },
  };
}

// ---------------------------------------------------------------------------------------
// cache
// ---------------------------------------------------------------------------------------

interface CacheReading extends RedisStats {
  at: number;
}

/** Hit rate and operations per second of Redis, from INFO. */
export function cacheSource(redis: RedisClient, options: { maxCommands?: number } = {}): Source {
  const maxCommands = options.maxCommands ?? 50;
  let last: CacheReading | null = null;
  return {
    name: "cache",
    scope: "cluster",
    async collect(at) {
      const reading: CacheReading = { at, ...await readRedisStats(redis) };
      const before = last;
      last = reading;
      // Rates need a previous reading; a restarted server (counters went back) starts over.
      if (!before || reading.at <= before.at || reading.commands < before.commands) return [];
      const seconds = (reading.at - before.at) / 1000;
      const tags = { cache_type: "redis" };
      const points: MetricPoint[] = [];
      const hits = reading.hits - before.hits;
      const misses = reading.misses - before.misses;
      if (hits + misses > 0) {
        points.push({
          measurement: "cache_hit_rate",
          tags,
          fields: { percent: (hits / (hits + misses)) * 100 },
          time: at,
        });
      }
      const ops: [string, number][] = [
        ["hit", hits],
        ["miss", misses],
        ["command", reading.commands - before.commands],
      ];
      const perCommand = [...reading.perCommand]
        .map(([cmd, calls]) => [cmd, calls - (before.perCommand.get(cmd) ?? 0)] as [string, number])
        .filter(([, d]) => d > 0)
        .sort((a, b) => b[1] - a[1])
        .slice(0, maxCommands);
      for (const [operation, count] of [...ops, ...perCommand]) {
        points.push({
          measurement: "cache_operations",
          tags: { cache_type: "redis", operation },
          fields: { per_s: Math.max(0, count) / seconds },
          time: at,
        });
      }
      return points;
    },
    counters() {
      if (!last) return [];
      const labels = (operation: string) => ({ cache_type: "redis", operation });
      return [{
        name: "rootstream_cache_operations_total",
        help: "Cache operations since the Redis server started",
        type: "counter",
        samples: [
          { name: "rootstream_cache_operations_total", labels: labels("hit"), value: last.hits },
          { name: "rootstream_cache_operations_total", labels: labels("miss"), value: last.misses },
          {
            name: "rootstream_cache_operations_total",
            labels: labels("command"),
            value: last.commands,
          },
        ],
      }];
    },
  };
}
