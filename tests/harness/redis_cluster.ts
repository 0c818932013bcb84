/**
 * A throw-away Redis Cluster for integration tests: 3 masters + 3 replicas, each a
 * redis-server of {@linkcode startRedis} (free ports, loopback, no persistence) with
 * `--cluster-enabled yes`, joined with `redis-cli --cluster create --cluster-replicas 1`.
 *
 * The node timeout is short (2 s) so a master killed with SIGKILL is replaced by its
 * replica within a few seconds; `cluster-require-full-coverage no` keeps the other shards
 * serving meanwhile, as docs/redis-cluster.md recommends.
 *
 * @example
 * ```ts
 * await using cluster = await startRedisCluster();
 * const master = await cluster.masterOf("rs:inbox:a");
 * await master.kill("SIGKILL");
 * await cluster.waitHealthy({ exclude: [master] });
 * ```
 * @module
 */
import { HarnessError, run, sleep } from "./_process.ts";
import { freePort } from "./ports.ts";
import { type RedisServer, startRedis } from "./redis.ts";

/** How long the cluster may take to form or to heal. */
const HEAL_TIMEOUT_MS = 60_000;

/** cluster-node-timeout: how long a master may be unreachable before it is failed over. */
export const CLUSTER_NODE_TIMEOUT_MS = 2000;

/** A running throw-away Redis Cluster. */
export interface RedisClusterServer extends AsyncDisposable {
  /** Every node (masters and replicas at creation; roles change with failovers). */
  readonly nodes: readonly RedisServer[];
  /** `host:port,...` of every node: the value of REDIS_CLUSTER_NODES. */
  readonly seeds: string;
  /** The nodes as ioredis startup nodes. */
  readonly startupNodes: { host: string; port: number }[];
  /** The node currently serving `key`'s slot as master (asked of a running node). */
  masterOf(key: string): Promise<RedisServer>;
  /**
   * Waits until every running node says `cluster_state:ok`, no running node is flagged
   * failing, the masters cover every slot and each has an online replica. `exclude`: nodes
   * known to be down (killed), whose failure flags are expected and which may leave a
   * master without a replica.
   */
  waitHealthy(options?: { exclude?: readonly RedisServer[] }): Promise<void>;
  /**
   * Waits until every replica has applied what its master had written when this was called
   * (Redis replication is asynchronous: only then does killing a master lose nothing).
   */
  waitReplicated(): Promise<void>;
  /**
   * Moves the slot of `key` (and its keys) to another master, as a resharding does
   * (SETSLOT IMPORTING / MIGRATING, MIGRATE, SETSLOT NODE); returns the new owner.
   */
  moveSlotOf(key: string): Promise<RedisServer>;
  /** Stops every node and removes their directories. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** One line of CLUSTER NODES. */
interface NodeLine {
  port: number;
  flags: string[];
  slots: [number, number][];
}

function parseNodes(text: string): NodeLine[] {
  return text.split("\n").filter((l) => l.trim()).map((line) => {
    const parts = line.trim().split(" ");
    const port = Number(parts[1].split("@")[0].split(":").at(-1));
    const slots: [number, number][] = [];
    for (const s of parts.slice(8)) {
      if (s.startsWith("[")) continue; // a slot being migrated / imported
      const [a, b] = s.split("-").map(Number);
      slots.push([a, b ?? a]);
    }
    return { port, flags: parts[2].split(","), slots };
  });
}

function fieldOf(info: string, name: string): string | null {
  for (const line of info.split("\n")) {
    if (line.startsWith(name + ":")) return line.slice(name.length + 1).trim();
  }
  return null;
}

/** Starts six cluster-enabled redis-servers and joins them as 3 masters + 3 replicas. */
export async function startRedisCluster(): Promise<RedisClusterServer> {
  const nodes: RedisServer[] = [];
  try {
    for (let i = 0; i < 6; i++) {
      nodes.push(
        await startRedis({
          args: [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            String(await freePort()),
            "--cluster-node-timeout",
            String(CLUSTER_NODE_TIMEOUT_MS),
            "--cluster-require-full-coverage",
            "no",
            "--cluster-replica-validity-factor",
            "0",
          ],
        }),
      );
    }
    const created = await run([
      "redis-cli",
      "--cluster",
      "create",
      ...nodes.map((n) => `127.0.0.1:${n.port}`),
      "--cluster-replicas",
      "1",
      "--cluster-yes",
    ]);
    if (created.code !== 0 || !created.stdout.includes("[OK] All 16384 slots covered")) {
      throw new HarnessError(
        "COMMAND_FAILED",
        `redis-cli --cluster create failed: ${(created.stderr || created.stdout).trim()}`,
      );
    }
    const cluster = new ClusterOfNodes(nodes);
    await cluster.waitHealthy();
    return cluster;
  } catch (err) {
    for (const node of nodes) await node[Symbol.asyncDispose]();
    throw err;
  }
}

class ClusterOfNodes implements RedisClusterServer {
  readonly nodes: readonly RedisServer[];
  constructor(nodes: RedisServer[]) {
    this.nodes = nodes;
  }

  get seeds(): string {
    return this.nodes.map((n) => `127.0.0.1:${n.port}`).join(",");
  }

  get startupNodes(): { host: string; port: number }[] {
    return this.nodes.map((n) => ({ host: "127.0.0.1", port: n.port }));
  }

  /** CLUSTER NODES as seen by the first running node that answers. */
  async #view(exclude: readonly RedisServer[] = []): Promise<NodeLine[]> {
    let last: unknown = null;
    for (const node of this.nodes) {
      if (exclude.includes(node)) continue;
      try {
        return parseNodes(await node.cli("cluster", "nodes"));
      } catch (err) {
        last = err;
      }
    }
    throw new HarnessError("COMMAND_FAILED", `no cluster node answers CLUSTER NODES: ${last}`);
  }

  #byPort(port: number): RedisServer {
    const node = this.nodes.find((n) => n.port === port);
    if (!node) throw new HarnessError("COMMAND_FAILED", `no harness node on port ${port}`);
    return node;
  }

  async masterOf(key: string): Promise<RedisServer> {
    const first = this.nodes.find((n) => n.running) ?? this.nodes[0];
    const slot = Number(await first.cli("cluster", "keyslot", key));
    if (!Number.isInteger(slot)) throw new HarnessError("COMMAND_FAILED", `no slot for ${key}`);
    const owner = (await this.#view()).find((n) =>
      n.flags.includes("master") && !n.flags.includes("fail") &&
      n.slots.some(([a, b]) => slot >= a && slot <= b)
    );
    if (!owner) throw new HarnessError("COMMAND_FAILED", `no master serves slot ${slot}`);
    return this.#byPort(owner.port);
  }

  async waitHealthy(options: { exclude?: readonly RedisServer[] } = {}): Promise<void> {
    const exclude = options.exclude ?? [];
    const deadline = Date.now() + HEAL_TIMEOUT_MS;
    let problem = "";
    while (true) {
      problem = await this.#problem(exclude).catch((err) => String(err));
      if (!problem) return;
      if (Date.now() > deadline) break;
      await sleep(100);
    }
    throw new HarnessError(
      "COMMAND_FAILED",
      `the Redis Cluster did not become healthy within ${HEAL_TIMEOUT_MS} ms: ${problem}`,
    );
  }

  /** What keeps the cluster from being healthy, or "" when nothing does. */
  async #problem(exclude: readonly RedisServer[]): Promise<string> {
    const up = this.nodes.filter((n) => !exclude.includes(n));
    for (const node of up) {
      const state = fieldOf(await node.cli("cluster", "info"), "cluster_state");
      if (state !== "ok") return `node ${node.port} says cluster_state:${state}`;
    }
    const view = await this.#view(exclude);
    const upPorts = new Set(up.map((n) => n.port));
    for (const line of view) {
      if (!upPorts.has(line.port)) continue;
      if (line.flags.some((f) => f === "fail" || f === "fail?")) {
        return `node ${line.port} is flagged ${line.flags.join(",")}`;
      }
    }
    const masters = view.filter((l) => l.flags.includes("master") && upPorts.has(l.port));
    const covered = masters.reduce(
      (n, m) => n + m.slots.reduce((s, [a, b]) => s + b - a + 1, 0),
      0,
    );
    if (covered !== 16384) return `masters cover ${covered} of 16384 slots`;
    for (const m of masters) {
      if (m.slots.length === 0) continue;
      const replicas = await this.#replicasOf(this.#byPort(m.port));
      const online = replicas.filter((r) => r.online && upPorts.has(r.port));
      if (!online.length && exclude.length === 0) return `master ${m.port} has no online replica`;
    }
    return "";
  }

  /** The replicas a master reports, with their state, and its own replication offset. */
  async #replicasOf(master: RedisServer): Promise<{ port: number; online: boolean }[]> {
    const info = await master.cli("info", "replication");
    return info.split("\n").filter((l) => /^slave\d+:/.test(l)).map((l) => ({
      port: Number(/port=(\d+)/.exec(l)?.[1]),
      online: l.includes("state=online"),
    }));
  }

  async waitReplicated(): Promise<void> {
    const view = await this.#view();
    const masters = view.filter((l) =>
      l.flags.includes("master") && !l.flags.includes("fail") && l.slots.length > 0
    );
    for (const m of masters) {
      const master = this.#byPort(m.port);
      const offset = Number(fieldOf(await master.cli("info", "replication"), "master_repl_offset"));
      for (const r of await this.#replicasOf(master)) {
        if (!r.online) continue;
        const replica = this.#byPort(r.port);
        const deadline = Date.now() + HEAL_TIMEOUT_MS;
        while (true) {
          const info = await replica.cli("info", "replication");
          if (Number(fieldOf(info, "slave_repl_offset")) >= offset) break;
          if (Date.now() > deadline) {
            throw new HarnessError(
              "COMMAND_FAILED",
              `replica ${r.port} did not reach offset ${offset} of master ${m.port}`,
            );
          }
          await sleep(20);
        }
      }
    }
  }

  async moveSlotOf(key: string): Promise<RedisServer> {
    const from = await this.masterOf(key);
    const slot = (await from.cli("cluster", "keyslot", key)).trim();
    const masters = (await this.#view()).filter((l) =>
      l.flags.includes("master") && !l.flags.includes("fail") && l.slots.length > 0
    ).map((l) => this.#byPort(l.port));
    const to = masters.find((m) => m !== from)!;
    const fromId = (await from.cli("cluster", "myid")).trim();
    const toId = (await to.cli("cluster", "myid")).trim();
    await to.cli("cluster", "setslot", slot, "importing", fromId);
    await from.cli("cluster", "setslot", slot, "migrating", toId);
    while (true) {
      const keys = (await from.cli("cluster", "getkeysinslot", slot, "100")).split("\n")
        .filter((k) => k);
      if (!keys.length) break;
      await from.cli("migrate", "127.0.0.1", String(to.port), "", "0", "5000", "KEYS", ...keys);
    }
    await to.cli("cluster", "setslot", slot, "node", toId);
    await from.cli("cluster", "setslot", slot, "node", toId);
    for (const m of masters) {
      if (m !== from && m !== to) await m.cli("cluster", "setslot", slot, "node", toId);
    }
    return to;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    for (const node of this.nodes) await node[Symbol.asyncDispose]();
  }
}
