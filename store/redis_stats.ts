/**
 * What the metrics concern reads of the Redis server: INFO stats (keyspace hits and
 * misses, commands processed) and INFO commandstats (calls per command), as typed
 * counters. The server's own counters: they only grow until it restarts.
 * @module
 */
import type { RedisClient } from "./redis.ts";

/** The server's counters, as of one reading. */
export interface RedisStats {
  /** keyspace_hits. */
  hits: number;
  /** keyspace_misses. */
  misses: number;
  /** total_commands_processed. */
  commands: number;
  /** Calls per command (lower-case name, from cmdstat_<name>). */
  perCommand: Map<string, number>;
}

/** Parses a Redis INFO answer into `key → value`. */
export function parseInfo(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split(/\r?\n/)) {
    if (!line || line.startsWith("#")) continue;
    const i = line.indexOf(":");
    if (i > 0) out.set(line.slice(0, i), line.slice(i + 1));
  }
  return out;
}

/** Calls per command from INFO commandstats (`cmdstat_get:calls=3,...`). */
export function parseCommandStats(info: Map<string, string>): Map<string, number> {
  const out = new Map<string, number>();
  for (const [key, value] of info) {
    if (!key.startsWith("cmdstat_")) continue;
    const calls = /(?:^|,)calls=(\d+)/.exec(value);
    if (calls) out.set(key.slice("cmdstat_".length), Number(calls[1]));
  }
  return out;
}

/** Reads INFO stats and commandstats (two commands, sent together). */
export async function readRedisStats(redis: RedisClient): Promise<RedisStats> {
  const [stats, commandStats] = await Promise.all([
    redis.info("stats"),
    redis.info("commandstats"),
  ]);
  const info = parseInfo(stats);
  return {
    hits: Number(info.get("keyspace_hits") ?? 0),
    misses: Number(info.get("keyspace_misses") ?? 0),
    commands: Number(info.get("total_commands_processed") ?? 0),
    perCommand: parseCommandStats(parseInfo(commandStats)),
  };
}
