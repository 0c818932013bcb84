/**
 * The chaos soak: a throw-away cluster (PostgreSQL primary + 2 synchronous replicas, Redis
 * master + replica + 3 Sentinels, 3 runtime instances), a workload through the HTTP API
 * (canary writes, state PATCHes and reads, logins and session revocations), and a fault
 * scheduler that, from a seed it prints, injects faults at random moments. Every request is
 * recorded (start, end, answer); afterwards the history is checked for anomalies.
 *
 * `deno task soak [--minutes N] [--seed S]` prints the figures as bench-style JSON lines on
 * stdout (progress on stderr). tests/soak/soak_test.ts runs a short form.
 * @module
 */
import { parseArgs } from "node:util";
import { ADMIN_HEADERS, TEST_ADMIN_TOKEN, TEST_STATE_WRITE_TOKEN } from "../support/auth.ts";
import { until } from "../support/instance.ts";
import {
  type PgCluster,
  randomKey,
  replication,
  startInstances,
  startPgCluster,
  startSentinels,
} from "../support/pg_cluster.ts";

/** Kinds of fault the scheduler injects. */
export type FaultKind =
  | "pg_kill_primary"
  | "pg_restart_old_primary"
  | "runtime_pause"
  | "runtime_kill_restart"
  | "redis_kill_master"
  | "redis_restart";

/** One request of the workload, as the client saw it. */
export interface Op {
  kind: "canary" | "patch" | "read" | "login" | "revoke" | "check_revoked";
  instance: string;
  /** ms since the soak started, when sent / when answered. */
  start: number;
  end: number;
  status: number;
  ok: boolean;
  // deno-lint-ignore no-explicit-any
  body: any;
  /** What was asked (the PATCH value, the revoked session...). */
  // deno-lint-ignore no-explicit-any
  arg?: any;
}

/** One injected fault. */
export interface Fault {
  kind: FaultKind;
  target: string;
  at: number;
  /** ms until every instance was healthy and a write was acknowledged again; null: never. */
  recoveredAfter: number | null;
}

/** Options of {@linkcode runSoak}. */
export interface SoakOptions {
  /** How long faults are injected, in seconds. */
  seconds: number;
  /** Seed of the fault scheduler. */
  seed: number;
  /** Progress lines. */
  log?: (line: string) => void;
  /** How long recovery after a fault may take before it is an anomaly (default 90 s). */
  recoveryLimitS?: number;
}

/** What a soak found. */
export interface SoakResult {
  seed: number;
  faults: Fault[];
  ops: Op[];
  /** Anomalies per checker (each a list of sentences). */
  anomalies: Record<string, string[]>;
  /** Figures as bench-style JSON objects. */
  figures: Record<string, unknown>[];
}

const IDS = ["node-a", "node-b", "node-c"];
const PASSWORD = "correct horse battery staple";

/** A small seeded PRNG (mulberry32). */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function median(xs: number[]): number {
  if (!xs.length) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)];
}

/** Longest stretch (ms) of `[from, to]` without any of `times`. */
function longestGap(times: number[], from: number, to: number): number {
  const s = [from, ...times.filter((t) => t >= from && t <= to).sort((a, b) => a - b), to];
  let gap = 0;
  for (let i = 1; i < s.length; i++) gap = Math.max(gap, s[i] - s[i - 1]);
  return gap;
}

/** Runs the soak; the cluster is gone when it returns. */
export async function runSoak(options: SoakOptions): Promise<SoakResult> {
  const log = options.log ?? ((line: string) => console.error(`[soak] ${line}`));
  const random = prng(options.seed);
  const t0 = performance.now();
  const now = () => performance.now() - t0;
  log(`seed ${options.seed}; faults for ${options.seconds} s`);

  await using cluster = await startPgCluster();
  await using sentinel = await startSentinels({ downAfterMs: 2000 });
  await using instances = await startInstances(IDS, {
    DATABASE_URL: cluster.url("pg1"),
    DATABASE_NODES: cluster.databaseNodes,
    DATABASE_CONNECT_TIMEOUT_S: "10",
    REDIS_SENTINELS: sentinel.sentinels,
    REDIS_SENTINEL_MASTER: sentinel.name,
    RS_SECRET_KEY: randomKey(),
    RS_KEY_PREFIX: "rssoak:",
    // Tolerant detection: the soak runs beside other work on a busy machine, where an event
    // loop or a PostgreSQL backend can stall for a second or two without anything failing.
    RS_HEARTBEAT_MS: "1000",
    RS_DEAD_AFTER_MS: "6000",
    RS_LEASE_TTL_MS: "6000",
    FAILOVER_PROBE_INTERVAL_MS: "500",
    FAILOVER_PROBE_TIMEOUT_MS: "3000",
    FAILOVER_CONFIRMATIONS: "3",
    FAILOVER_MONITOR_INTERVAL_MS: "1000",
    FAILOVER_SYNC_MODE: "on",
    RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
    RS_STATE_WRITE_TOKEN: TEST_STATE_WRITE_TOKEN,
    // Each simulated user has its own address (X-Forwarded-For), as behind one proxy hop.
    RS_TRUSTED_PROXY_HOPS: "1",
    LOG_LEVEL: "info",
  });
  const url = (id: string): string | null => instances.byId[id]?.url ?? null;
  const live = () => IDS.map(url).filter((u): u is string => u !== null);

  await until(async () => {
    const v = await replication(live()[0]).catch(() => null);
    return v?.primary?.epoch >= 1 && v?.sync?.standbys?.names?.length === 2;
  }, { ms: 60_000, what: "the cluster bootstrapped with two synchronous standbys" });
  log(`cluster up after ${Math.round(now())} ms`);

  const ops: Op[] = [];
  const registered: Op[] = [];
  async function request(
    kind: Op["kind"],
    instance: string,
    method: string,
    path: string,
    init: {
      body?: unknown;
      token?: string | null;
      arg?: unknown;
      ip?: string;
      timeoutMs?: number;
    } = {},
  ): Promise<Op> {
    const base = url(instance);
    const start = now();
    let op: Op;
    if (!base) {
      op = { kind, instance, start, end: start, status: 0, ok: false, body: "instance down" };
    } else {
      try {
        const headers: Record<string, string> = {
          "content-type": "application/json",
          "x-forwarded-for": init.ip ?? "198.51.100.7",
          "user-agent": "soak/1.0",
          "x-device-fingerprint": "soak",
        };
        // undefined: the admin token; null: anonymous (register, login).
        const token = init.token === undefined ? TEST_ADMIN_TOKEN : init.token;
        if (token !== null) headers.authorization = `Bearer ${token}`;
        const res = await fetch(`${base}${path}`, {
          method,
          headers,
          body: init.body === undefined ? undefined : JSON.stringify(init.body),
          signal: AbortSignal.timeout(init.timeoutMs ?? 5000),
        });
        const text = await res.text();
        let body: unknown = text;
        try {
          body = JSON.parse(text);
        } catch { /* not JSON */ }
        op = { kind, instance, start, end: now(), status: res.status, ok: res.ok, body };
      } catch (err) {
        op = { kind, instance, start, end: now(), status: 0, ok: false, body: String(err) };
      }
    }
    if (init.arg !== undefined) op.arg = init.arg;
    ops.push(op);
    return op;
  }

  // One user per session loop, registered before anything fails (registrations are rate
  // limited per address, and hashing a password takes a while on a busy machine).
  for (const [i, id] of IDS.entries()) {
    const username = `soak${i}`;
    const r = await request("login", id, "POST", "/auth/register", {
      body: { username, email: `${username}@example.com`, password: PASSWORD },
      token: null,
      ip: `198.51.100.${10 + i}`,
      timeoutMs: 60_000,
    });
    if (!r.ok) throw new Error(`registering ${username}: ${r.status} ${JSON.stringify(r.body)}`);
    registered.push(r);
  }

  // --- workload ---------------------------------------------------------------------------
  let running = true;
  const pause = async (ms: number, failed: boolean) => await sleep(failed ? ms + 100 : ms);
  const canaries = IDS.map(async (id) => {
    while (running) {
      const op = await request("canary", id, "POST", "/replication/canary");
      await pause(20, !op.ok);
    }
  });
  const patches = IDS.map(async (id, i) => {
    let seq = 0;
    const reader = IDS[(i + 1) % IDS.length];
    while (running) {
      seq++;
      const op = await request("patch", id, "PATCH", `/state/soak/${id}`, {
        body: { seq, by: id },
        token: TEST_STATE_WRITE_TOKEN,
        arg: seq,
      });
      await request("read", reader, "GET", `/state/soak/${id}`);
      await pause(50, !op.ok);
    }
  });
  const sessions = IDS.map(async (id, i) => {
    const username = `soak${i}`;
    // Logins are limited per (address, account): each login comes from a new address.
    let n = 0;
    const nextIp = () => `10.${i + 1}.${(++n >> 8) & 255}.${n & 255}`;
    while (running) {
      const login = await request("login", id, "POST", "/auth/login", {
        body: { login: username, password: PASSWORD },
        token: null,
        ip: nextIp(),
      });
      const token = login.ok ? login.body?.token : null;
      const sessionId = login.ok ? login.body?.session?.id : null;
      if (!token || !sessionId) {
        await pause(300, true);
        continue;
      }
      const other = IDS[(i + 1) % IDS.length];
      const ip = nextIp();
      const revoke = await request("revoke", other, "DELETE", `/sessions/${sessionId}`, {
        token,
        ip,
        arg: token,
      });
      if (revoke.ok) {
        for (const check of IDS) {
          await request("check_revoked", check, "GET", "/auth/me", {
            token,
            ip,
            arg: revoke.end,
          });
        }
      }
      await pause(300, !revoke.ok);
    }
  });

  // --- faults -----------------------------------------------------------------------------
  const faults: Fault[] = [];
  let downPg: string | null = null;
  let downRedis: "master" | "replica" | null = null;
  const faultsEnd = now() + options.seconds * 1000;

  /** The primary of the newest epoch any instance follows. */
  async function primaryNode(): Promise<string | null> {
    let best: { node: string; epoch: number } | null = null;
    for (const u of live()) {
      const v = await replication(u).catch(() => null);
      if (v?.primary?.node && (!best || v.primary.epoch > best.epoch)) best = v.primary;
    }
    return best?.node ?? null;
  }
  async function allStreaming(): Promise<boolean> {
    const u = live()[0];
    if (!u) return false;
    const v = await replication(u).catch(() => null);
    const replicas = (v?.nodes ?? []).filter((n: { role: string }) => n.role === "replica");
    return replicas.length === 2 &&
      replicas.every((n: { state: string }) => n.state === "streaming");
  }
  let lastHealth: Record<string, unknown> = {};
  async function healthy(): Promise<boolean> {
    lastHealth = {};
    for (const id of IDS) {
      const u = url(id);
      if (!u) {
        lastHealth[id] = "not running";
        continue;
      }
      const res = await fetch(`${u}/health`, {
        headers: ADMIN_HEADERS,
        signal: AbortSignal.timeout(2000),
      }).catch((err) => String(err));
      const body = res instanceof Response ? await res.json().catch(() => null) : res;
      lastHealth[id] = body?.status === "ok" ? "ok" : body;
    }
    return Object.values(lastHealth).every((h) => h === "ok");
  }
  async function inject(kind: FaultKind): Promise<string | null> {
    switch (kind) {
      case "pg_kill_primary": {
        if (downPg || !(await allStreaming())) return null;
        const node = await primaryNode();
        if (!node) return null;
        await cluster.kill(node);
        downPg = node;
        return node;
      }
      case "pg_restart_old_primary": {
        if (!downPg) return null;
        const node = downPg;
        await cluster.nodes[node].start();
        downPg = null;
        return node;
      }
      case "runtime_pause": {
        const id = IDS[Math.floor(random() * IDS.length)];
        const p = instances.byId[id];
        if (!p) return null;
        const ms = 500 + Math.floor(random() * 4500);
        Deno.kill(p.child.pid, "SIGSTOP");
        await sleep(ms);
        Deno.kill(p.child.pid, "SIGCONT");
        return `${id} for ${ms} ms`;
      }
      case "runtime_kill_restart": {
        const id = IDS[Math.floor(random() * IDS.length)];
        if (!instances.byId[id]) return null;
        await instances.stop(id, "SIGKILL");
        await sleep(500 + Math.floor(random() * 1500));
        await instances.launch(id);
        return id;
      }
      case "redis_kill_master": {
        if (downRedis) return null;
        const port = await sentinel.masterPort();
        const which = port === sentinel.master.port ? "master" : "replica";
        await sentinel[which].kill("SIGKILL");
        downRedis = which;
        return `${which} (port ${port})`;
      }
      case "redis_restart": {
        if (!downRedis) return null;
        const which = downRedis;
        await sentinel[which].start();
        downRedis = null;
        return which;
      }
    }
  }

  const kinds: FaultKind[] = [
    "pg_kill_primary",
    "pg_restart_old_primary",
    "runtime_pause",
    "runtime_kill_restart",
    "redis_kill_master",
    "redis_restart",
  ];
  const recoveryLimit = (options.recoveryLimitS ?? 90) * 1000;
  /** With SOAK_LOGS=<dir>, every instance's stderr so far goes there (for a diagnosis). */
  async function dumpLogs(label: string): Promise<void> {
    const dir = Deno.env.get("SOAK_LOGS");
    if (!dir) return;
    await Deno.mkdir(dir, { recursive: true });
    for (const [id, text] of Object.entries(instances.logs())) {
      await Deno.writeTextFile(`${dir}/${options.seed}-${label}-${id}.log`, text);
    }
  }
  const anomalies: Record<string, string[]> = {
    lost_acknowledged_writes: [],
    stale_primary_writes: [],
    revoked_session_accepted: [],
    state_divergence: [],
    not_recovered: [],
    actors_given_up: [],
  };
  while (now() < faultsEnd) {
    await sleep(1000 + Math.floor(random() * 3000));
    // A node or Redis left down comes back first, so later faults meet a whole cluster.
    const kind = downPg && random() < 0.7
      ? "pg_restart_old_primary"
      : downRedis && random() < 0.7
      ? "redis_restart"
      : kinds[Math.floor(random() * kinds.length)];
    const at = now();
    const target = await inject(kind).catch((err) => {
      log(`fault ${kind} could not be injected: ${err}`);
      return null;
    });
    if (target === null) continue;
    const fault: Fault = { kind, target, at, recoveredAfter: null };
    faults.push(fault);
    log(`${Math.round(at / 1000)} s: ${kind} ${target}`);
    const recovered = await until(async () => {
      const acked = ops.some((o) => o.kind === "canary" && o.ok && o.start > at);
      return acked && (await healthy());
    }, { ms: recoveryLimit, what: `recovery after ${kind} ${target}` }).then(
      () => true,
      () => false,
    );
    if (recovered) fault.recoveredAfter = now() - at;
    else {
      await dumpLogs(`not-recovered-${faults.length}`);
      anomalies.not_recovered.push(
        `${kind} ${target} at ${Math.round(at)} ms; health: ${JSON.stringify(lastHealth)}`,
      );
    }
    if (kind === "pg_restart_old_primary") {
      await until(allStreaming, { ms: recoveryLimit, what: "the old primary streaming again" })
        .catch(() => anomalies.not_recovered.push(`${target} did not rejoin`));
    }
  }
  // Leave the cluster whole, then stop the workload.
  // (Set inside inject(); TypeScript cannot see that.)
  const redisLeftDown = downRedis as "master" | "replica" | null;
  const pgLeftDown = downPg as string | null;
  if (redisLeftDown) await sentinel[redisLeftDown].start();
  if (pgLeftDown) await cluster.nodes[pgLeftDown].start();
  const lastFault = faults.at(-1)?.at ?? now();
  await until(healthy, { ms: recoveryLimit, what: "every instance healthy after the last fault" })
    .catch(() => anomalies.not_recovered.push("not every instance healthy after the last fault"));
  const healthyAfterLast = now() - lastFault;
  running = false;
  await Promise.all([...canaries, ...patches, ...sessions]);
  log(`workload stopped: ${ops.length} requests`);
  const failures: Record<string, number> = {};
  for (const o of ops) {
    if (o.ok) continue;
    const what = `${o.kind} ${o.status} ${
      typeof o.body === "object" ? o.body?.error?.code ?? "" : String(o.body).slice(0, 60)
    }`;
    failures[what] = (failures[what] ?? 0) + 1;
  }
  log(`failed requests by kind, status and code: ${JSON.stringify(failures)}`);

  // --- checks -----------------------------------------------------------------------------
  await check(cluster, live(), ops, anomalies, request);
  const actors = await Promise.all(
    live().map(async (u) => {
      const res = await fetch(`${u}/actors`, { headers: ADMIN_HEADERS }).catch(() => null);
      return res ? await res.text() : "";
    }),
  );
  for (const [i, text] of actors.entries()) {
    if (/"status":"failed"/.test(text)) {
      anomalies.actors_given_up.push(`${IDS[i]}: ${text.slice(0, 300)}`);
    }
  }

  // --- figures ----------------------------------------------------------------------------
  const acked = ops.filter((o) => o.ok);
  const start = ops.length ? Math.min(...ops.map((o) => o.start)) : 0;
  const end = ops.length ? Math.max(...ops.map((o) => o.end)) : 0;
  const gap = (kind: Op["kind"]) =>
    longestGap(acked.filter((o) => o.kind === kind).map((o) => o.end), start, end) / 1000;
  const total = Object.values(anomalies).reduce((n, a) => n + a.length, 0);
  const fig = (name: string, value: number, unit: string, better: string) => ({
    suite: "soak",
    name,
    unit,
    value: Math.round(value * 1000) / 1000,
    better,
    baseline: null,
  });
  const figures = [
    { ...fig("seed", options.seed, "seed", "none") },
    fig("faults_injected", faults.length, "faults", "higher"),
    fig("requests_acknowledged", acked.length, "requests", "higher"),
    fig("requests_failed", ops.length - acked.length, "requests", "lower"),
    fig("anomalies", total, "anomalies", "lower"),
    ...Object.entries(anomalies).map(([k, v]) =>
      fig(`anomalies_${k}`, v.length, "anomalies", "lower")
    ),
    fig("max_write_unavailable_s", gap("canary"), "s", "lower"),
    fig("max_login_unavailable_s", gap("login"), "s", "lower"),
    fig("max_state_read_unavailable_s", gap("read"), "s", "lower"),
    fig("healthy_after_last_fault_s", healthyAfterLast / 1000, "s", "lower"),
    ...kinds.flatMap((k) => {
      const of = faults.filter((f) => f.kind === k);
      const rec = of.map((f) => f.recoveredAfter).filter((x): x is number => x !== null);
      return [
        fig(`faults_${k}`, of.length, "faults", "none"),
        fig(`recovery_${k}_median_s`, median(rec) / 1000, "s", "lower"),
        fig(`recovery_${k}_max_s`, (rec.length ? Math.max(...rec) : 0) / 1000, "s", "lower"),
      ];
    }),
  ];
  return { seed: options.seed, faults, ops, anomalies, figures };
}

/** The history checkers. */
async function check(
  cluster: PgCluster,
  urls: string[],
  ops: Op[],
  anomalies: Record<string, string[]>,
  request: (
    kind: Op["kind"],
    instance: string,
    method: string,
    path: string,
  ) => Promise<Op>,
): Promise<void> {
  // 1. Every acknowledged canary write is on the primary at the end.
  const v = await replication(urls[0]);
  const primary: string = v.primary.node;
  const writes = ops.filter((o) => o.kind === "canary" && o.ok);
  const ids = writes.map((o) => Number(o.body.id));
  const present = new Set<number>();
  for (let i = 0; i < ids.length; i += 5000) {
    const chunk = ids.slice(i, i + 5000);
    const out = await cluster.psql(
      primary,
      `select id from replication_canary where id = any('{${chunk.join(",")}}'::bigint[])`,
    );
    for (const line of out.split("\n")) if (line) present.add(Number(line));
  }
  for (const w of writes) {
    if (!present.has(Number(w.body.id))) {
      anomalies.lost_acknowledged_writes.push(
        `canary ${w.body.id} acknowledged by ${w.body.node} (epoch ${w.body.epoch}) through ${w.instance} at ${
          Math.round(w.end)
        } ms is missing on ${primary}`,
      );
    }
  }
  // 2. Never two writable primaries as clients saw them: no write acknowledged by an older
  // epoch's primary that started after a newer epoch's write was acknowledged.
  const byEnd = [...writes].sort((a, b) => a.end - b.end);
  for (const w of writes) {
    const newer = byEnd.find((x) => x.end < w.start && x.body.epoch > w.body.epoch);
    if (newer) {
      anomalies.stale_primary_writes.push(
        `${w.body.node} (epoch ${w.body.epoch}) acknowledged canary ${w.body.id} sent at ${
          Math.round(w.start)
        } ms, after ${newer.body.node} (epoch ${newer.body.epoch}) acknowledged one at ${
          Math.round(newer.end)
        } ms`,
      );
    }
  }
  // 3. A revoked session is never accepted after its revocation was acknowledged.
  for (const o of ops) {
    if (o.kind === "check_revoked" && o.ok && o.start > (o.arg as number)) {
      anomalies.revoked_session_accepted.push(
        `${o.instance} accepted a session at ${Math.round(o.start)} ms revoked at ${
          Math.round(o.arg)
        } ms`,
      );
    }
  }
  // 4. Every state entity identical on every instance and equal to the last acknowledged
  // write (or a later write whose answer was lost).
  for (const id of IDS) {
    const patches = ops.filter((o) => o.kind === "patch" && o.instance === id);
    const lastAcked = patches.filter((o) => o.ok).at(-1);
    if (!lastAcked) continue;
    const allowed = new Set(
      patches.filter((o) => o.arg >= lastAcked.arg && (o.ok || o.status === 0 || o.status >= 500))
        .map((o) => o.arg as number),
    );
    let seen: unknown[] = [];
    const agreed = await until(async () => {
      seen = await Promise.all(IDS.map(async (inst) => {
        const r = await request("read", inst, "GET", `/state/soak/${id}`);
        return r.ok ? r.body?.entity?.state?.seq : `status ${r.status}`;
      }));
      return seen.every((s) => s === seen[0]) && allowed.has(seen[0] as number);
    }, { ms: 30_000, what: `state soak/${id} converging` }).then(() => true, () => false);
    if (!agreed) {
      anomalies.state_divergence.push(
        `soak/${id}: instances have ${JSON.stringify(seen)}, acknowledged up to ${lastAcked.arg}`,
      );
    }
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { minutes: { type: "string", default: "3" }, seed: { type: "string" } },
  });
  const seed = values.seed ? Number(values.seed) : Math.floor(Math.random() * 2 ** 31);
  const result = await runSoak({ seconds: Number(values.minutes) * 60, seed });
  for (const f of result.figures) console.log(JSON.stringify(f));
  for (const [k, list] of Object.entries(result.anomalies)) {
    for (const a of list) console.error(`[soak] anomaly ${k}: ${a}`);
  }
  Deno.exit(Object.values(result.anomalies).some((a) => a.length) ? 1 : 0);
}
