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
import { installArchiver } from "../../actors/backup/archiver.ts";
import { openBackupService } from "../../actors/backup/service.ts";
import { loadBackupSettings } from "../../actors/backup/settings.ts";
import { silentLogger } from "../../lib/log.ts";
import { totpCodeAt, totpStep } from "../../lib/totp.ts";
import { createPgTools } from "../../store/pg_tools.ts";
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
  | "redis_restart"
  | "archive_fail"
  | "backup_disk_full";

/** One request of the workload, as the client saw it. */
export interface Op {
  kind:
    | "canary"
    | "patch"
    | "read"
    | "login"
    | "mfa_login"
    | "mfa_verify"
    | "revoke"
    | "check_revoked"
    | "backup";
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
  /** Stops injecting faults early; the history is still checked and everything cleaned up. */
  signal?: AbortSignal;
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
const BACKUP_KEY = "soak-backup-passphrase-0123456789";
/** Full backups the retention keeps (older ones are deleted by design, not lost). */
const BACKUPS_KEPT = 12;
/** Size of the backup filesystem (a tmpfs) that the disk-full fault fills. */
const BACKUP_FS_MB = 48;

/** The soak's scratch directories; `backups` is a tmpfs of its own when mounting works. */
interface SoakDirs extends AsyncDisposable {
  root: string;
  backups: string;
  /** False where a tmpfs cannot be mounted (not root): then no disk-full fault. */
  ownFilesystem: boolean;
  /** Fills the backup filesystem (a file that takes every free byte); returns its size. */
  fill(): Promise<number>;
  /** Frees it again. */
  unfill(): Promise<void>;
}

async function soakDirs(log: (line: string) => void): Promise<SoakDirs> {
  const root = await Deno.makeTempDir({ prefix: "rs-soak-" });
  // Server programs run as postgres: it must reach the scratch, archive and backup dirs.
  await Deno.chmod(root, 0o755);
  const backups = `${root}/backups`;
  await Deno.mkdir(backups);
  const mount = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", `size=${BACKUP_FS_MB}m,mode=0777`, "soak-backups", backups],
    stdout: "null",
    stderr: "piped",
  }).output().catch((err) => ({ success: false, stderr: new TextEncoder().encode(String(err)) }));
  const ownFilesystem = mount.success;
  if (!ownFilesystem) {
    log(
      `no tmpfs for the backups (${
        new TextDecoder().decode(mount.stderr).trim()
      }): the disk-full fault is off`,
    );
  }
  const filler = `${backups}/.soak-filler`;
  return {
    root,
    backups,
    ownFilesystem,
    async fill() {
      const file = await Deno.open(filler, { write: true, create: true, append: true });
      let size = 0;
      try {
        for (const chunk of [1 << 20, 4096, 512]) {
          const buf = new Uint8Array(chunk);
          while (true) {
            try {
              size += await file.write(buf);
            } catch {
              break; // ENOSPC: on to smaller pieces, then full
            }
          }
        }
      } finally {
        file.close();
      }
      return size;
    },
    async unfill() {
      await Deno.remove(filler).catch(() => {});
    },
    async [Symbol.asyncDispose]() {
      await Deno.remove(filler).catch(() => {});
      if (ownFilesystem) {
        await new Deno.Command("umount", { args: ["-l", backups], stderr: "null" }).output()
          .catch(() => {});
      }
      await Deno.remove(root, { recursive: true }).catch(() => {});
    },
  };
}

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

  // WAL archiving through the project's archiver (installed where the postgres user reaches
  // it), and the backup storage on a small filesystem of its own that a fault can fill.
  await using dirs = await soakDirs(log);
  const tools = createPgTools();
  const archiver = await installArchiver(tools, {
    archiveDir: `${dirs.root}/wal-archive`,
    scriptDir: `${dirs.root}/archiver`,
  });
  await using cluster = await startPgCluster({
    settings: { archive_mode: "on", archive_command: archiver.command },
  });
  await using sentinel = await startSentinels({ downAfterMs: 2000 });
  const backupEnv = {
    BACKUP_DIR: dirs.backups,
    BACKUP_SCRATCH_DIR: `${dirs.root}/scratch`,
    BACKUP_ENCRYPTION_KEY: BACKUP_KEY,
    BACKUP_WAL_ARCHIVE_DIR: archiver.archiveDir,
    // Backups are asked for by the workload (POST /backups), checksummed when stored, and
    // test-restored by the checker at the end; none is scheduled or retried behind its back.
    BACKUP_SCHEDULE_FULL: "off",
    BACKUP_VERIFY: "checksums",
    BACKUP_RETRY_MAX: "0",
    BACKUP_RETENTION_FULL_COUNT: String(BACKUPS_KEPT),
    BACKUP_RETENTION_FULL_DAYS: "0",
  };
  await Deno.mkdir(backupEnv.BACKUP_SCRATCH_DIR, { recursive: true });
  await using instances = await startInstances(IDS, {
    ...backupEnv,
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

  const anomalies: Record<string, string[]> = {
    lost_acknowledged_writes: [],
    stale_primary_writes: [],
    revoked_session_accepted: [],
    state_divergence: [],
    not_recovered: [],
    actors_given_up: [],
    mfa_bypassed: [],
    backup_not_restorable: [],
    backup_partial_left: [],
    instance_exited: [],
  };
  /**
   * Starts an instance again as a process supervisor (systemd, Kubernetes) would: an instance
   * that exits during start-up (e.g. its DATABASE_URL is a replica now and Redis, failing
   * over, named no primary in time) is started again a second later, for up to 60 s; each
   * such exit is counted (`instance_start_failures`) and its reason logged. Returns the tries.
   */
  const startFailures: string[] = [];
  async function relaunch(id: string): Promise<number> {
    const deadline = now() + 60_000;
    for (let tries = 1;; tries++) {
      try {
        await instances.launch(id);
        watch(id);
        return tries;
      } catch (err) {
        const lines = String(err).split("\n");
        const why = lines.find((l) => l.includes("start-up failed")) ??
          lines.find((l) => /error/i.test(l)) ?? String(err).slice(0, 200);
        startFailures.push(`${id}: ${why}`);
        log(`${id} exited during start-up (try ${tries}): ${why}`);
        if (now() > deadline) throw err;
        await sleep(1000);
      }
    }
  }
  /** Processes the soak itself stops; any other exit of an instance is an anomaly. */
  const stopping = new Set<Deno.ChildProcess>();
  const watch = (id: string) => {
    const p = instances.byId[id];
    p.child.status.then((status) => {
      if (stopping.has(p.child)) return;
      const tail = p.stderr().split("\n").slice(-6).join("\n");
      const line = `${id} (pid ${p.child.pid}) exited by itself at ${Math.round(now())} ms: ` +
        `code ${status.code}, signal ${status.signal}; last lines:\n${tail}`;
      log(line);
      anomalies.instance_exited.push(line);
      // Started again, so the rest of the soak still meets three instances.
      if (instances.byId[id] === p) {
        stopping.add(p.child);
        relaunch(id).catch((err) => log(`${id} restart: ${err}`));
      }
    });
  };
  IDS.forEach(watch);

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
          "x-forwarded-for": init.ip ?? "198.51.100.7",
          "user-agent": "soak/1.0",
          "x-device-fingerprint": "soak",
        };
        // An empty body is not JSON: a route whose body is optional refuses one labelled so.
        if (init.body !== undefined) headers["content-type"] = "application/json";
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

  // One password-only user and one TOTP user per session loop, registered (and enrolled)
  // before anything fails: registrations are rate limited per address, and hashing a
  // password takes a while on a busy machine.
  const register = async (i: number, username: string, ip: string) => {
    const r = await request("login", IDS[i], "POST", "/auth/register", {
      body: { username, email: `${username}@example.com`, password: PASSWORD },
      token: null,
      ip,
      timeoutMs: 60_000,
    });
    if (!r.ok) throw new Error(`registering ${username}: ${r.status} ${JSON.stringify(r.body)}`);
    registered.push(r);
  };
  await Promise.all(IDS.map((_, i) => register(i, `soak${i}`, `198.51.100.${10 + i}`)));
  /** A TOTP user: its secret and the last time step it used (a step is accepted once). */
  interface MfaUser {
    username: string;
    secret: string;
    lastStep: number;
  }
  const mfaUsers: MfaUser[] = await Promise.all(IDS.map(async (id, i) => {
    const username = `soakmfa${i}`;
    const ip = `198.51.100.${20 + i}`;
    await register(i, username, ip);
    const step = async (what: string, path: string, body: unknown, token: string | null) => {
      const r = await request("login", id, "POST", path, { body, token, ip, timeoutMs: 60_000 });
      if (!r.ok) throw new Error(`${what} for ${username}: ${r.status} ${JSON.stringify(r.body)}`);
      return r.body;
    };
    const { token } = await step("login", "/auth/login", {
      login: username,
      password: PASSWORD,
    }, null);
    await step("re-authentication", "/auth/reauth", { password: PASSWORD }, token);
    const { secret } = await step("enrolment", "/auth/mfa/enroll", undefined, token);
    const at = totpStep(Date.now());
    await step("confirmation", "/auth/mfa/confirm", { code: totpCodeAt(secret, at) }, token);
    return { username, secret, lastStep: at };
  }));
  log(`users registered, ${mfaUsers.length} with TOTP, after ${Math.round(now())} ms`);

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
  /** Revokes a session on another instance, then presents its token to every instance. */
  async function revokeAndCheck(i: number, token: string, sessionId: string, ip: string) {
    const other = IDS[(i + 1) % IDS.length];
    const revoke = await request("revoke", other, "DELETE", `/sessions/${sessionId}`, {
      token,
      ip,
      arg: token,
    });
    if (revoke.ok) {
      for (const check of IDS) {
        await request("check_revoked", check, "GET", "/auth/me", { token, ip, arg: revoke.end });
      }
    }
    return revoke.ok;
  }
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
      await pause(300, !(await revokeAndCheck(i, token, sessionId, nextIp())));
    }
  });
  // Logins with a second factor: password, then the TOTP code of a step not used before
  // (the server accepts the steps around now, each once), then the same revocation checks.
  const mfaSessions = mfaUsers.map(async (user, i) => {
    const id = IDS[i];
    let n = 0;
    const nextIp = () => `10.${i + 11}.${(++n >> 8) & 255}.${n & 255}`;
    while (running) {
      const current = totpStep(Date.now());
      if (user.lastStep + 1 > current + 1) {
        await sleep(500); // both usable steps spent: the next one opens with the clock
        continue;
      }
      const ip = nextIp();
      const login = await request("mfa_login", id, "POST", "/auth/login", {
        body: { login: user.username, password: PASSWORD },
        token: null,
        ip,
        arg: user.username,
      });
      const challenge = login.ok ? login.body?.challenge : null;
      if (!challenge) {
        await pause(300, true);
        continue;
      }
      // The step is picked when the code is sent, so it is inside the server's window.
      const step = Math.max(user.lastStep + 1, totpStep(Date.now()));
      user.lastStep = step; // spent whatever the answer: a lost answer may have used it
      const verify = await request("mfa_verify", id, "POST", "/auth/mfa/verify", {
        body: { challenge, code: totpCodeAt(user.secret, step), method: "totp" },
        token: null,
        ip,
        arg: user.username,
      });
      const token = verify.ok ? verify.body?.token : null;
      const sessionId = verify.ok ? verify.body?.session?.id : null;
      if (!token || !sessionId) {
        await pause(300, true);
        continue;
      }
      await pause(300, !(await revokeAndCheck(i, token, sessionId, nextIp())));
    }
  });
  // Full backups asked for every 20-40 s through any instance (forwarded to the scheduler).
  const backups = (async () => {
    const draw = prng(options.seed ^ 0x5eed); // its own stream: the faults' stays replayable
    let k = 0;
    while (running) {
      const due = now() + 20_000 + Math.floor(draw() * 20_000);
      while (running && now() < due) await sleep(250);
      if (!running) break;
      await request("backup", IDS[k++ % IDS.length], "POST", "/backups", {
        body: { type: "full" },
      });
    }
  })();

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
  /** The backup history as an instance serves it, newest first. */
  // deno-lint-ignore no-explicit-any
  async function backupHistory(): Promise<any[] | null> {
    for (const u of live()) {
      const res = await fetch(`${u}/backups?type=full&limit=1000`, {
        headers: ADMIN_HEADERS,
        signal: AbortSignal.timeout(5000),
      }).catch(() => null);
      const body = res ? await res.json().catch(() => null) : null;
      if (res?.ok && Array.isArray(body?.backups)) return body.backups;
    }
    return null;
  }
  /** pg_stat_archiver on a node. */
  async function archiverStats(node: string) {
    const out = await cluster.psql(
      node,
      `select failed_count || '|' || coalesce(last_failed_wal, '') || '|' ||
              coalesce(last_archived_wal, '') from pg_stat_archiver`,
    );
    const [failed, lastFailed, lastArchived] = out.trim().split("|");
    return { failed: Number(failed), lastFailed, lastArchived };
  }
  const archiveMode = (await Deno.stat(archiver.archiveDir)).mode! & 0o7777;
  /** After a failed archive_command: the node and the WAL file that failed. */
  let archiveBacklog: { node: string; wal: string } | null = null;
  /** Extra condition of recovery for the fault just injected (beside health and writes). */
  let recoveredToo: (() => Promise<boolean>) | null = null;

  async function inject(kind: FaultKind): Promise<string | null> {
    switch (kind) {
      case "archive_fail": {
        const node = await primaryNode();
        if (!node || downPg === node) return null;
        const before = await archiverStats(node);
        const ms = 1000 + Math.floor(random() * 4000);
        // The postgres user can no longer write into the archive: archive_command fails.
        await Deno.chmod(archiver.archiveDir, 0o500);
        let failures = 0;
        try {
          await cluster.psql(node, "select pg_switch_wal()");
          await until(async () => (await archiverStats(node)).failed > before.failed, {
            ms: 30_000,
            what: `archive_command failing on ${node}`,
          });
          await sleep(ms);
          failures = (await archiverStats(node)).failed - before.failed;
        } finally {
          await Deno.chmod(archiver.archiveDir, archiveMode);
        }
        archiveBacklog = { node, wal: (await archiverStats(node)).lastFailed };
        // After three failed tries the archiver waits up to a minute unless a new segment
        // wakes it: a switch is what the next busy minute would do anyway.
        await cluster.psql(node, "select pg_switch_wal()");
        const backlog = archiveBacklog;
        recoveredToo = async () => {
          if (downPg === backlog.node) return true; // that node is gone: nothing to catch up
          const s = await archiverStats(backlog.node).catch(() => null);
          if (s && s.lastArchived < backlog.wal) {
            await cluster.psql(backlog.node, "select pg_switch_wal()").catch(() => {});
          }
          return s !== null && s.lastArchived >= backlog.wal;
        };
        return `${node} for ${ms} ms (${failures} failed runs, ${backlog.wal} waiting)`;
      }
      case "backup_disk_full": {
        if (!dirs.ownFilesystem) return null;
        const history = await backupHistory();
        if (!history) return null;
        const lastId = Math.max(0, ...history.map((b) => Number(b.id)));
        const bytes = await dirs.fill();
        let outcome = "not asked";
        try {
          // A backup meets the full disk: it must end (failed), not hang or leave a torso.
          const ask = await request(
            "backup",
            IDS[Math.floor(random() * IDS.length)],
            "POST",
            "/backups",
            {
              body: { type: "full" },
            },
          );
          if (ask.ok) {
            outcome = "still running after 60 s";
            await until(async () => {
              const b = (await backupHistory())?.filter((b) => Number(b.id) > lastId).at(-1);
              if (!b || b.status === "in_progress") return false;
              outcome = `${b.status}${b.error ? `: ${String(b.error).slice(0, 80)}` : ""}`;
              return true;
            }, { ms: 60_000, what: "the backup on a full disk to end" }).catch(() => {});
          }
          await sleep(500 + Math.floor(random() * 2500));
        } finally {
          await dirs.unfill();
        }
        return `${Math.round(bytes / 1024)} KiB filled; backup ${outcome}`;
      }
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
        stopping.add(instances.byId[id].child);
        await instances.stop(id, "SIGKILL");
        await sleep(500 + Math.floor(random() * 1500));
        const tries = await relaunch(id);
        return tries > 1 ? `${id} (started on try ${tries})` : id;
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
    "archive_fail",
    "backup_disk_full",
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
  /** Fisher-Yates with the fault PRNG. */
  const shuffle = <T>(xs: T[]): T[] => {
    for (let i = xs.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [xs[i], xs[j]] = [xs[j], xs[i]];
    }
    return xs;
  };
  let deck: FaultKind[] = [];
  while (now() < faultsEnd && !options.signal?.aborted) {
    await sleep(500 + Math.floor(random() * 2000));
    if (options.signal?.aborted) break;
    // A node or Redis left down comes back first, so later faults meet a whole cluster.
    // Otherwise the next of a shuffled deck of the injecting kinds, so a short run still
    // meets every kind; one that cannot be injected now goes back under the deck.
    const injecting = () =>
      kinds.filter((k) => !k.endsWith("_restart_old_primary") && k !== "redis_restart");
    if (!deck.length) deck = shuffle(injecting());
    const kind = downPg && random() < 0.7
      ? "pg_restart_old_primary"
      : downRedis && random() < 0.7
      ? "redis_restart"
      : deck.shift()!;
    const at = now();
    recoveredToo = null;
    const target = await inject(kind).catch((err) => {
      log(`fault ${kind} could not be injected: ${err}`);
      return null;
    });
    if (target === null) {
      if (kind !== "pg_restart_old_primary" && kind !== "redis_restart") {
        deck.push(kind);
        // Only that kind left (a primary kill waits for every replica to stream): the other
        // kinds are dealt again meanwhile, so one node that never rejoined does not end the
        // schedule (seed 20261207 injected nothing for its last 409 s).
        if (deck.every((k) => k === kind)) {
          deck.unshift(...shuffle(injecting().filter((k) => k !== kind)));
        }
      }
      continue;
    }
    const fault: Fault = { kind, target, at, recoveredAfter: null };
    faults.push(fault);
    log(`${Math.round(at / 1000)} s: ${kind} ${target}`);
    const recovered = await until(async () => {
      const acked = ops.some((o) => o.kind === "canary" && o.ok && o.start > at);
      return acked && (await healthy()) && (recoveredToo === null || await recoveredToo());
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
        .catch(async () => {
          // Say what each instance saw and what the rejoin printed, so the anomaly explains
          // itself (SOAK_LOGS keeps the instances' whole logs too).
          await dumpLogs(`not-rejoined-${faults.length}`);
          const views = await Promise.all(
            live().map((u) =>
              replication(u).catch((err): Awaited<ReturnType<typeof replication>> => ({
                error: String(err),
              }))
            ),
          );
          const seen = views.map((v) => ({
            primary: v.primary?.node ?? v.primary ?? null,
            why: v.why ?? v.error ?? null,
            decision: v.decision?.why ?? null,
            nodes: (v.nodes ?? []).map((n: { name: string; role: string; state: string }) =>
              `${n.name}: ${n.role}/${n.state}`
            ),
          }));
          const dataDir = cluster.nodes[target].dataDir;
          const rejoinLog = await Deno.readTextFile(
            `${dataDir.replace(/\/[^/]*$/, "")}/${target}-rejoin.log`,
          ).catch(() => "(none)");
          anomalies.not_recovered.push(
            `${target} did not rejoin; seen by each instance: ${JSON.stringify(seen)}; ` +
              `its rejoin log ends: ${rejoinLog.trim().split("\n").slice(-6).join(" / ")}`,
          );
        });
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
  await Promise.all([...canaries, ...patches, ...sessions, ...mfaSessions, backups]);
  const workloadEnd = now();
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
  // A login of a TOTP user never yields a session before its code was accepted.
  for (const o of ops) {
    if (o.kind === "mfa_login" && o.ok && (o.body?.token || o.body?.status !== "mfa_required")) {
      anomalies.mfa_bypassed.push(
        `${o.instance} answered ${o.arg}'s password at ${Math.round(o.start)} ms with ${
          JSON.stringify(o.body).slice(0, 120)
        }`,
      );
    }
  }
  // Every acknowledged backup (completed in the history, not deleted by retention) restores:
  // the verify path of the CLI, in restore mode (checksums, decrypt, test-restore).
  // One more backup: taking the backup lock marks runs of killed instances as interrupted,
  // so the history has no stale in_progress row when it is read.
  await request("backup", live().length ? IDS.find((id) => url(id))! : IDS[0], "POST", "/backups", {
    body: { type: "full" },
  });
  const history = await until(async () => {
    const h = await backupHistory();
    return h && !h.some((b) => b.status === "in_progress") ? h : null;
  }, { ms: 120_000, what: "no backup running" }).catch(() => null) ?? await backupHistory() ?? [];
  const acknowledgedBackups = history.filter((b) => b.status === "completed" && !b.deletedAt);
  // A backup that failed (a full disk, a killed instance) leaves nothing behind: every folder
  // in the storage is a finished backup (its manifest is written last) or one still running.
  const unfinished = new Set(history.filter((b) => b.status === "in_progress").map((b) => b.name));
  for await (const entry of Deno.readDir(dirs.backups)) {
    if (!entry.isDirectory || unfinished.has(entry.name)) continue;
    const manifest = await Deno.stat(`${dirs.backups}/${entry.name}/manifest.json`).then(
      () => true,
      () => false,
    );
    if (!manifest) {
      const files = [];
      for await (const f of Deno.readDir(`${dirs.backups}/${entry.name}`)) files.push(f.name);
      anomalies.backup_partial_left.push(
        `${entry.name} has no manifest (files: ${files.join(", ") || "none"}); history: ${
          history.find((b) => b.name === entry.name)?.status ?? "none"
        }`,
      );
    }
  }
  const verifier = openBackupService({
    settings: loadBackupSettings(backupEnv, { dataDir: dirs.root }),
    databaseUrl: null,
    sql: null,
    secretKey: null,
    instanceId: "soak-checker",
    log: silentLogger,
    now: Date.now,
  });
  let backupsVerified = 0;
  try {
    for (const b of acknowledgedBackups) {
      const result = await verifier.verify(b.name, { mode: "restore" }).catch((err) => ({
        ok: false,
        error: { code: "THROWN", message: String(err) },
      }));
      if (result.ok) backupsVerified++;
      else {
        anomalies.backup_not_restorable.push(
          `${b.name} (completed ${b.completedAt}): ${result.error?.code}: ${result.error?.message}`,
        );
      }
    }
  } finally {
    verifier.close();
  }
  log(`backups: ${acknowledgedBackups.length} acknowledged, ${backupsVerified} restored`);
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
  // A loop, not Math.min(...ops): a 30-minute history (330,000 requests) overflows the stack
  // as call arguments.
  const start = ops.reduce((m, o) => Math.min(m, o.start), ops.length ? Infinity : 0);
  // Unavailability is measured while the workload ran: the checks that follow (convergence
  // reads, test-restores of every backup) send requests too, but no canary write or login, and
  // their minutes are not an outage.
  const end = workloadEnd;
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
    fig(
      "mfa_logins_acknowledged",
      acked.filter((o) => o.kind === "mfa_verify").length,
      "logins",
      "higher",
    ),
    fig(
      "revocations_checked",
      ops.filter((o) => o.kind === "check_revoked").length,
      "requests",
      "higher",
    ),
    fig("instance_start_failures", startFailures.length, "exits", "lower"),
    fig("backups_acknowledged", acknowledgedBackups.length, "backups", "higher"),
    fig("backups_restored", backupsVerified, "backups", "higher"),
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
  for (const p of Object.values(instances.byId)) stopping.add(p.child);
  if (total) {
    await dumpLogs("end");
    const dir = Deno.env.get("SOAK_LOGS");
    if (dir) {
      await Deno.writeTextFile(
        `${dir}/${options.seed}-history.json`,
        JSON.stringify({
          faults,
          ops: ops.map((o) => ({ ...o, body: JSON.stringify(o.body).slice(0, 200) })),
        }),
      );
    }
  }
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
        `${w.body.node} (epoch ${w.body.epoch}) acknowledged canary ${w.body.id} through ${w.instance} sent at ${
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
    options: {
      minutes: { type: "string", default: "3" },
      seed: { type: "string" },
      "min-faults": { type: "string", default: "0" },
    },
  });
  const seed = values.seed ? Number(values.seed) : Math.floor(Math.random() * 2 ** 31);
  const minFaults = Number(values["min-faults"]);
  // Ctrl-C (or SIGTERM) ends the faults early; the history is still checked and the servers
  // stopped. A second one leaves at once (the servers may then be left running).
  const stop = new AbortController();
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(sig, () => {
      if (stop.signal.aborted) Deno.exit(130);
      console.error(`[soak] ${sig}: no more faults; checking the history and cleaning up`);
      stop.abort();
    });
  }
  const result = await runSoak({
    seconds: Number(values.minutes) * 60,
    seed,
    signal: stop.signal,
  });
  for (const f of result.figures) console.log(JSON.stringify(f));
  for (const [k, list] of Object.entries(result.anomalies)) {
    for (const a of list) console.error(`[soak] anomaly ${k}: ${a}`);
  }
  const anomalous = Object.values(result.anomalies).some((a) => a.length);
  const tooFew = result.faults.length < minFaults;
  if (tooFew) console.error(`[soak] only ${result.faults.length} faults, ${minFaults} asked for`);
  console.error(
    `[soak] seed ${seed}: ${anomalous || tooFew ? "FAILED" : "ok"} ` +
      `(deno task soak --minutes ${values.minutes} --seed ${seed} runs it again)`,
  );
  Deno.exit(anomalous || tooFew ? 1 : 0);
}
