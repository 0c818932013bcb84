/**
 * Topologies for the failover tests and bench: a PostgreSQL 15 primary with streaming
 * replicas (slots named like the failover manager names them), runtime instances pointed
 * at all of them, continuous writers going through the instances, and Redis Sentinel.
 *
 * Nodes the failover manager restarts with pg_ctl (rejoin, switchover) no longer belong
 * to the harness process; `dispose` stops whatever postmaster runs in each data directory.
 * @module
 */
import { type PgServer, startPostgres, startRedis, startReplica } from "../harness/mod.ts";
import type { RedisServer } from "../harness/mod.ts";
import { freePort } from "../harness/ports.ts";
import { type InstanceProcess, launchInstance, until } from "./instance.ts";
import { ADMIN_HEADERS } from "./auth.ts";
import { isProcessStartedAt } from "../../lib/process.ts";

/** A primary and its replicas, all on one database. */
export interface PgCluster extends AsyncDisposable {
  /** Nodes by name; the first is the initial primary. */
  readonly nodes: Record<string, PgServer>;
  /** Names in priority order. */
  readonly names: string[];
  /** The application database. */
  readonly database: string;
  /** URL of a node's application database. */
  url(name: string): string;
  /** `pg1=postgres://…,pg2=…` for DATABASE_NODES. */
  readonly databaseNodes: string;
  /** psql on a node's application database. */
  psql(name: string, sql: string): Promise<string>;
  /** SIGKILLs whatever postmaster runs a node (harness- or pg_ctl-started) and its children. */
  kill(name: string): Promise<void>;
  /** SIGSTOPs (or SIGCONTs) a node's postmaster and all its children. */
  pause(name: string, paused: boolean): void;
}

/** The postmaster pid in a data directory's postmaster.pid, if that process runs. */
export function postmasterPid(dataDir: string): number | null {
  try {
    const lines = Deno.readTextFileSync(`${dataDir}/postmaster.pid`).split("\n");
    const pid = Number(lines[0]);
    if (!pid) return null;
    // A postmaster killed with SIGKILL leaves the file behind and its pid may since belong to
    // another test's server (pid_max 32,768): signalling it would stop that one.
    return isProcessStartedAt(pid, Number(lines[2]) * 1000) ? pid : null;
  } catch {
    return null;
  }
}

/** Sends `sig` to `pid`, ignoring "no such process". */
function signal(pid: number, sig: Deno.Signal): void {
  try {
    Deno.kill(pid, sig);
  } catch { /* gone */ }
}

/**
 * Waits until nothing runs in `server`'s data directory any more (the postmaster and every
 * child, including any forked after the signal went out); throws, naming them, after `ms`.
 */
async function waitGone(server: PgServer, what: string, ms = 15_000): Promise<void> {
  await until(() => server.processes().length === 0, {
    what,
    ms,
    everyMs: 10,
    state: () =>
      `still running in ${server.dataDir}: ${
        server.processes().map((p) => `pid ${p.pid} (${p.comm}, state ${p.state})`).join(", ")
      }`,
  });
}

/** Starts a primary and `replicas` streaming replicas (slots rs_<name>) on one database. */
export async function startPgCluster(
  options: { names?: string[]; settings?: Record<string, string | number> } = {},
): Promise<PgCluster> {
  const names = options.names ?? ["pg1", "pg2", "pg3"];
  const nodes: Record<string, PgServer> = {};
  const stopAll = async () => {
    for (const server of Object.values(nodes).reverse()) {
      // A postmaster started by pg_ctl (rejoin) is not the harness's child: stop it first,
      // while its data directory (which dispose removes) still says which process it is.
      const pid = postmasterPid(server.dataDir);
      if (pid && !(pid === server.pid && server.running)) {
        for (const p of server.processes()) signal(p.pid, "SIGCONT"); // a paused node
        signal(pid, "SIGINT");
        await waitGone(server, `${server.name} (started by pg_ctl) to stop`).catch(
          (err) => console.error(`cluster teardown: ${err.message}`),
        );
      }
      await server[Symbol.asyncDispose]().catch(() => {});
    }
  };
  try {
    nodes[names[0]] = await startPostgres({ name: names[0], settings: options.settings });
    const database = "rsfailover";
    await nodes[names[0]].psql(`CREATE DATABASE ${database}`);
    const replicas = await Promise.all(
      names.slice(1).map((name) =>
        startReplica(nodes[names[0]], { name, slot: `rs_${name}`, settings: options.settings })
      ),
    );
    names.slice(1).forEach((name, i) => nodes[name] = replicas[i]);
    const url = (name: string) => nodes[name].urlFor(database);
    return {
      nodes,
      names,
      database,
      url,
      databaseNodes: names.map((n) => `${n}=${url(n)}`).join(","),
      psql: (name, sql) => nodes[name].psql(sql, { database }),
      async kill(name) {
        const server = nodes[name];
        const pid = postmasterPid(server.dataDir);
        if (pid && pid === server.pid && server.running) {
          await server.kill("SIGKILL");
        } else if (pid) {
          signal(pid, "SIGKILL"); // started by pg_ctl: not the harness's child
          // Children of a paused node must run to notice that their postmaster died.
          for (const p of server.processes()) signal(p.pid, "SIGCONT");
        }
        // Either way, "killed" means nothing of it runs any more: a restart must not meet a
        // backend still attached to the old shared memory.
        await waitGone(server, `${name}'s postmaster and backends to die after SIGKILL`);
      },
      pause(name, paused) {
        const procs = nodes[name].processes();
        if (!procs.length) throw new Error(`${name} is not running`);
        for (const p of procs) signal(p.pid, paused ? "SIGSTOP" : "SIGCONT");
      },
      [Symbol.asyncDispose]: stopAll,
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

/** A random 32-byte key, base64, for RS_SECRET_KEY. */
export function randomKey(): string {
  return btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
}

/** Runtime instances of one cluster. */
export interface Instances extends AsyncDisposable {
  /** Instances by id. */
  readonly byId: Record<string, InstanceProcess>;
  /** Starts (or restarts) one instance with the common env plus `extra`. */
  launch(id: string, extra?: Record<string, string>): Promise<InstanceProcess>;
  /** Stops one instance (SIGKILL or SIGTERM). */
  stop(id: string, signal?: Deno.Signal): Promise<void>;
  /** stderr of every instance started so far (stopped ones included), by id and run. */
  logs(): Record<string, string>;
}

/** Starts instances `ids` with `env` (plus RS_INSTANCE_ID, RS_PORT=0, a temp data dir). */
export async function startInstances(
  ids: string[],
  env: Record<string, string>,
): Promise<Instances> {
  const dataDir = await Deno.makeTempDir({ prefix: "rs-failover-" });
  const byId: Record<string, InstanceProcess> = {};
  const all: [string, InstanceProcess][] = [];
  async function launch(id: string, extra: Record<string, string> = {}) {
    byId[id] = await launchInstance({
      RS_DATA_DIR: dataDir,
      RS_PORT: "0",
      RS_INSTANCE_ID: id,
      ...env,
      ...extra,
    });
    all.push([id, byId[id]]);
    return byId[id];
  }
  const instances: Instances = {
    byId,
    launch,
    logs: () => Object.fromEntries(all.map(([id, p], i) => [`${i}-${id}`, p.stderr()])),
    async stop(id, signal = "SIGTERM") {
      await byId[id]?.stop(signal);
      delete byId[id];
    },
    async [Symbol.asyncDispose]() {
      await Promise.all(Object.values(byId).map((p) => p.stop("SIGKILL")));
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    },
  };
  try {
    await Promise.all(ids.map((id) => launch(id)));
  } catch (err) {
    await instances[Symbol.asyncDispose]();
    throw err;
  }
  return instances;
}

/** One canary write through an instance. */
export interface CanaryWrite {
  /** Canary id. */
  id: number;
  /** Node that took it. */
  node: string;
  /** Epoch the instance's pool was on. */
  epoch: number;
  /** Instance it went through. */
  instance: string;
  /** performance.now() when the request was sent / answered. */
  sentAt: number;
  /** performance.now() when the answer came. */
  doneAt: number;
}

/** Writers that keep writing canaries through instances until stopped. */
export interface Writers {
  /** Acknowledged writes so far. */
  readonly acked: CanaryWrite[];
  /** Failed requests so far. */
  readonly failed: { instance: string; status: number; error: string; at: number }[];
  /** Stops writing and waits for the requests in flight. */
  stop(): Promise<void>;
}

/** When the writer sent the request that wrote a canary row, from the row's note (or null). */
export function sentAtOfNote(note: string | null): number | null {
  const m = /^\S+ sent (\d+(?:\.\d+)?)$/.exec(note ?? "");
  return m ? Number(m[1]) : null;
}

/** Starts one writer per URL: sequential POST /replication/canary, `pauseMs` apart. */
export function startWriters(
  urls: Record<string, string>,
  options: { token: string; pauseMs?: number; timeoutMs?: number },
): Writers {
  const acked: CanaryWrite[] = [];
  const failed: Writers["failed"] = [];
  let running = true;
  const loops = Object.entries(urls).map(async ([instance, url]) => {
    while (running) {
      const sentAt = performance.now();
      try {
        const res = await fetch(`${url}/replication/canary`, {
          method: "POST",
          headers: { authorization: `Bearer ${options.token}`, "content-type": "application/json" },
          // The row carries when it was sent: a node's rows show which requests reached it
          // (acknowledged or not), see sentAtOfNote.
          body: JSON.stringify({ note: `${instance} sent ${sentAt.toFixed(3)}` }),
          signal: AbortSignal.timeout(options.timeoutMs ?? 20_000),
        });
        const body = await res.json();
        if (res.ok) acked.push({ ...body, instance, sentAt, doneAt: performance.now() });
        else failed.push({ instance, status: res.status, error: body?.error?.message, at: sentAt });
      } catch (err) {
        failed.push({ instance, status: 0, error: String(err), at: sentAt });
        await new Promise((r) => setTimeout(r, 50));
      }
      await new Promise((r) => setTimeout(r, options.pauseMs ?? 10));
    }
  });
  return {
    acked,
    failed,
    async stop() {
      running = false;
      await Promise.all(loops);
    },
  };
}

/** GET /replication of an instance (loosely typed: tests read many fields). */
// deno-lint-ignore no-explicit-any
export async function replication(url: string): Promise<Record<string, any>> {
  const res = await fetch(`${url}/replication`, { headers: ADMIN_HEADERS });
  return await res.json();
}

/** Waits until every instance follows `node` with an epoch above `afterEpoch`. */
export async function untilAllFollow(
  urls: string[],
  options: { node?: string; afterEpoch?: number; ms?: number },
): Promise<void> {
  let last: unknown[] = [];
  try {
    await until(async () => {
      const views = await Promise.all(urls.map(replication));
      last = views.map((v) => ({ primary: v.primary, pool: v.pool, why: v.why ?? v.state }));
      return views.every((v) =>
        (options.node === undefined || v.primary?.node === options.node) &&
        (v.primary?.epoch ?? 0) > (options.afterEpoch ?? 0) &&
        v.pool?.epoch === v.primary?.epoch && v.pool?.node === v.primary?.node
      );
    }, {
      ms: options.ms ?? 40_000,
      what: `every instance following ${options.node ?? "a primary"}`,
    });
  } catch (err) {
    // Say what each instance believed, so a rare miss can be diagnosed from the CI log.
    throw new Error(`${(err as Error).message}; last views: ${JSON.stringify(last)}`);
  }
}

// ---------------------------------------------------------------------------------------
// Redis Sentinel
// ---------------------------------------------------------------------------------------

/** A Redis master, a replica and three Sentinels. */
export interface SentinelSetup extends AsyncDisposable {
  /** The data nodes. */
  readonly master: RedisServer;
  /** The replica. */
  readonly replica: RedisServer;
  /** Sentinel ports. */
  readonly sentinelPorts: number[];
  /** `127.0.0.1:p1,127.0.0.1:p2,…` for REDIS_SENTINELS. */
  readonly sentinels: string;
  /** The master name. */
  readonly name: string;
  /** Asks a Sentinel for the master's port. */
  masterPort(): Promise<number>;
}

async function cli(port: number, ...args: string[]): Promise<string> {
  const out = await new Deno.Command("redis-cli", {
    args: ["-h", "127.0.0.1", "-p", String(port), ...args],
    stdout: "piped",
    stderr: "null",
  }).output();
  return new TextDecoder().decode(out.stdout).trim();
}

/**
 * Master + replica + 3 Sentinels (down-after-milliseconds ≥ 2000: lower values abort
 * failovers on a busy machine), each Sentinel with its own writable config file; waits
 * until every Sentinel sees the replica and the two other Sentinels.
 */
export async function startSentinels(
  options: { downAfterMs?: number; name?: string } = {},
): Promise<SentinelSetup> {
  const name = options.name ?? "rsmaster";
  const master = await startRedis();
  const replica = await startRedis({ args: ["--replicaof", "127.0.0.1", String(master.port)] });
  const dir = await Deno.makeTempDir({ prefix: "rs-sentinel-" });
  const children: Deno.ChildProcess[] = [];
  const ports: number[] = [];
  const dispose = async () => {
    for (const child of children) {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
      await child.status;
    }
    await replica[Symbol.asyncDispose]();
    await master[Symbol.asyncDispose]();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  try {
    for (let i = 0; i < 3; i++) {
      const port = await freePort();
      ports.push(port);
      const conf = `${dir}/sentinel-${port}.conf`;
      await Deno.writeTextFile(
        conf,
        [
          `port ${port}`,
          "bind 127.0.0.1",
          "protected-mode no",
          "daemonize no",
          `dir ${dir}`,
          `logfile ${dir}/sentinel-${port}.log`,
          "sentinel resolve-hostnames no",
          `sentinel monitor ${name} 127.0.0.1 ${master.port} 2`,
          `sentinel down-after-milliseconds ${name} ${options.downAfterMs ?? 2000}`,
          `sentinel failover-timeout ${name} 5000`,
          `sentinel parallel-syncs ${name} 1`,
          "",
        ].join("\n"),
      );
      // redis-server in sentinel mode is the redis-sentinel binary (no extra package).
      const child = new Deno.Command("redis-server", {
        args: [conf, "--sentinel"],
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn();
      children.push(child);
    }
    for (const port of ports) {
      await until(async () => (await cli(port, "ping")) === "PONG", { what: "sentinel up" });
    }
    await until(async () => {
      for (const port of ports) {
        const info = (await cli(port, "sentinel", "master", name)).split("\n");
        const field = (k: string) => info[info.indexOf(k) + 1];
        if (field("num-other-sentinels") !== "2" || field("num-slaves") !== "1") return false;
      }
      return true;
    }, { ms: 30_000, what: "sentinels discovering each other and the replica" });
    return {
      master,
      replica,
      sentinelPorts: ports,
      sentinels: ports.map((p) => `127.0.0.1:${p}`).join(","),
      name,
      async masterPort() {
        return Number(
          (await cli(ports[0], "sentinel", "get-master-addr-by-name", name)).split("\n")[1],
        );
      },
      [Symbol.asyncDispose]: dispose,
    };
  } catch (err) {
    await dispose();
    throw err;
  }
}
