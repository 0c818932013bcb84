/**
 * Throw-away PostgreSQL 15 servers for integration tests: primaries copied from an
 * initdb template (made once, shared by later test processes), and streaming replicas
 * made with pg_basebackup.
 *
 * Each server is a direct child of the test process (so its pid is the postmaster's),
 * runs as the `postgres` OS user when the tests run as root, listens on 127.0.0.1 on a
 * free port, and is stopped by pid. Node-specific settings (port, socket dir,
 * cluster_name, `settings`) are passed on the command line because pg_basebackup and
 * pg_rewind copy the configuration files.
 *
 * @example
 * ```ts
 * await using pg = await startPostgres();
 * const url = await pg.createDatabase();
 * ```
 * @module
 */
import { baseDir, HARNESS_ROOT, serverDir } from "./_base.ts";
import {
  AS_POSTGRES,
  chownPostgres,
  cwdOf,
  describeProcesses,
  HarnessError,
  isAlive,
  PG_BIN,
  processesIn,
  type ProcInfo,
  randomHex,
  run,
  runOk,
  signalPid,
  sleep,
} from "./_process.ts";
import { ManagedServer, POLL_MS } from "./_server.ts";
import { freePort } from "./ports.ts";

/** A running (or stopped) throw-away PostgreSQL server. */
export interface PgServer extends AsyncDisposable {
  /** cluster_name, and the application_name a replica streams under. */
  readonly name: string;
  /** TCP port on 127.0.0.1. */
  readonly port: number;
  /** The data directory (owned by the `postgres` OS user when running as root). */
  readonly dataDir: string;
  /** The unix socket directory. */
  readonly socketDir: string;
  /** `postgres://postgres@127.0.0.1:PORT/postgres`. */
  readonly url: string;
  /** Postmaster pid of the current run (changes after a restart). */
  readonly pid: number;
  /** True while the postmaster the harness started runs (not one pg_ctl started). */
  readonly running: boolean;
  /** URL of another database on this server. */
  urlFor(database: string): string;
  /** Creates a database (random safe name if omitted) and returns its URL. */
  createDatabase(name?: string): Promise<string>;
  /** Runs SQL with `psql -X -q -At`; returns stdout trimmed; throws with stderr on failure. */
  psql(sql: string, opts?: { database?: string }): Promise<string>;
  /** Fast shutdown (SIGINT), waiting for the exit; idempotent. */
  stop(): Promise<void>;
  /** Sends `signal` (default SIGKILL); for a fatal signal waits until postmaster and children are gone. */
  kill(signal?: Deno.Signal): Promise<void>;
  /**
   * (Re)starts on the same data dir and port; waits until it accepts connections. Waits
   * first for every process of an earlier run to be gone (naming them after 15 s).
   */
  start(): Promise<void>;
  /**
   * The live processes running in the data directory: the postmaster and its children,
   * whoever started them (the harness, or pg_ctl for a rejoin).
   */
  processes(): { pid: number; comm: string; state: string; ppid: number }[];
  /** Stops the server and removes its directories. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** Options of {@linkcode startPostgres}. */
export interface StartPostgresOptions {
  /** cluster_name (default `pgN`). */
  name?: string;
  /** Extra per-node settings, passed as `-c key=value` on the command line. */
  settings?: Record<string, string | number>;
}

/** Options of {@linkcode startReplica}. */
export interface StartReplicaOptions extends StartPostgresOptions {
  /** Physical replication slot on the primary (created when missing). */
  slot?: string;
}

/** Node-independent settings every server (and every copy of its config) gets. */
const COMMON_CONF = `
# --- rootstream test harness ---
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
wal_log_hints = on                # pg_rewind needs it
wal_keep_size = 256MB
fsync = off                       # test-only speed-up
full_page_writes = on             # pg_rewind needs it
shared_buffers = 32MB
wal_receiver_status_interval = 1s
wal_retrieve_retry_interval = 500ms
log_min_messages = warning
log_line_prefix = '%m [%p] '
`;

const PSQL_ENV = {
  PGCONNECT_TIMEOUT: "5",
  PGOPTIONS: "-c client_min_messages=warning",
};

let counter = 0;
let templatePromise: Promise<string> | undefined;

/** Starts a fresh PostgreSQL 15 primary on a free port and waits until it accepts connections. */
export async function startPostgres(opts: StartPostgresOptions = {}): Promise<PgServer> {
  const name = checkName(opts.name ?? `pg${++counter}`);
  const settings = settingsArgs(opts.settings);
  const template = await templateDir();
  const dir = await serverDir(`pg-${name}`);
  const server = new PgNode(dir, { port: await freePort(), name, settings });
  try {
    await chownPostgres(dir);
    await Deno.mkdir(server.socketDir, { mode: 0o700 });
    await chownPostgres(server.socketDir);
    // -a keeps the postgres ownership and the 0700 mode initdb gave the data directory.
    await runOk(["cp", "-a", template, server.dataDir]);
    await server.launchNew();
    return server;
  } catch (err) {
    await server[Symbol.asyncDispose]();
    throw err;
  }
}

/**
 * Starts a streaming replica of `primary`: pg_basebackup -R into a new data directory,
 * then waits until it is in recovery and its WAL receiver is streaming.
 */
export async function startReplica(
  primary: PgServer,
  opts: StartReplicaOptions = {},
): Promise<PgServer> {
  const name = checkName(opts.name ?? `pg${++counter}`);
  const settings = settingsArgs(opts.settings);
  const dir = await serverDir(`pg-${name}`);
  const server = new PgNode(dir, { port: await freePort(), name, settings });
  try {
    await chownPostgres(dir);
    await Deno.mkdir(server.socketDir, { mode: 0o700 });
    await chownPostgres(server.socketDir);
    const slotArgs: string[] = [];
    if (opts.slot !== undefined) {
      const slot = checkIdentifier(opts.slot, "slot");
      const exists = await primary.psql(
        `select count(*) from pg_replication_slots where slot_name = '${slot}'`,
      );
      slotArgs.push(...(exists === "0" ? ["-C"] : []), "-S", slot);
    }
    await runOk([
      ...AS_POSTGRES,
      `${PG_BIN}/pg_basebackup`,
      "-h",
      "127.0.0.1",
      "-p",
      String(primary.port),
      "-U",
      "postgres",
      "-D",
      server.dataDir,
      "-R",
      "-X",
      "stream",
      "-c",
      "fast",
      "--no-sync",
      ...slotArgs,
    ], { cwd: dir, env: PSQL_ENV });
    await server.launchNew();
    await server.waitFor(
      "select pg_is_in_recovery() and exists " +
        "(select 1 from pg_stat_wal_receiver where status = 'streaming')",
    );
    return server;
  } catch (err) {
    await server[Symbol.asyncDispose]();
    throw err;
  }
}

class PgNode extends ManagedServer implements PgServer {
  readonly name: string;
  readonly dataDir: string;
  readonly socketDir: string;
  protected readonly label: string;
  protected readonly stopSignal: Deno.Signal = "SIGINT";
  protected readonly bindError =
    /could not bind IPv4 address|could not create any TCP\/IP sockets|Address already in use/;
  readonly #settings: string[];

  constructor(dir: string, opts: { port: number; name: string; settings: string[] }) {
    super(dir, { port: opts.port, logName: "server.log" });
    this.name = opts.name;
    this.label = `PostgreSQL ${opts.name}`;
    this.dataDir = `${dir}/data`;
    this.socketDir = `${dir}/sock`;
    this.#settings = opts.settings;
  }

  get url(): string {
    return this.urlFor("postgres");
  }

  urlFor(database: string): string {
    return `postgres://postgres@127.0.0.1:${this.port}/${encodeURIComponent(database)}`;
  }

  async createDatabase(name?: string): Promise<string> {
    const db = checkIdentifier(name ?? `db_${randomHex(6)}`, "database");
    await this.psql(`create database "${db}"`);
    return this.urlFor(db);
  }

  async psql(sql: string, opts: { database?: string } = {}): Promise<string> {
    const result = await run([
      `${PG_BIN}/psql`,
      "-X",
      "-q",
      "-At",
      "-v",
      "ON_ERROR_STOP=1",
      "-h",
      "127.0.0.1",
      "-p",
      String(this.port),
      "-U",
      "postgres",
      "-d",
      opts.database ?? "postgres",
      "-f",
      "-",
    ], { stdin: sql, env: PSQL_ENV });
    if (result.code !== 0) {
      throw new HarnessError(
        "COMMAND_FAILED",
        `Query failed on ${this.label}: ${
          result.stderr.trim() || `psql exited with code ${result.code}`
        }`,
      );
    }
    return result.stdout.trim();
  }

  /** First start: a taken port moves the server to a fresh one. */
  launchNew(): Promise<void> {
    return this.exclusive(() => this.launch({ retryPort: true }));
  }

  /** Polls `sql` until it returns `t` (or the server dies / 30 s pass). */
  async waitFor(sql: string, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = "";
    while (Date.now() < deadline) {
      if (!this.running) {
        throw new HarnessError("SERVER_START_FAILED", `${this.label} exited while waiting: ${sql}`);
      }
      try {
        if ((last = await this.psql(sql)) === "t") return;
      } catch (err) {
        last = String(err);
      }
      await sleep(POLL_MS);
    }
    throw new HarnessError(
      "SERVER_START_FAILED",
      `Timed out on ${this.label} after ${timeoutMs} ms waiting for: ${sql} (last answer: ${last})`,
    );
  }

  protected argv(port: number): string[] {
    return [
      ...AS_POSTGRES,
      `${PG_BIN}/postgres`,
      "-D",
      this.dataDir,
      "-p",
      String(port),
      "-c",
      "listen_addresses=127.0.0.1",
      "-c",
      `unix_socket_directories=${this.socketDir}`,
      "-c",
      `cluster_name=${this.name}`,
      ...this.#settings,
    ];
  }

  /** Ready when postmaster.pid names this pid and says `ready` (primary) or `standby` (hot standby). */
  protected async isReady(pid: number): Promise<boolean> {
    let lines: string[];
    try {
      lines = (await Deno.readTextFile(`${this.dataDir}/postmaster.pid`)).split("\n");
    } catch {
      return false;
    }
    const status = lines[7]?.trim();
    return Number(lines[0]) === pid && (status === "ready" || status === "standby");
  }

  processes(): (ProcInfo & { pid: number })[] {
    let dataDir: string;
    try {
      dataDir = Deno.realPathSync(this.dataDir);
    } catch {
      return []; // no data directory (yet): nothing can run in it
    }
    return processesIn(dataDir);
  }

  /**
   * Waits until nothing of an earlier run is left: no process in the data directory
   * (postmaster and children, started by the harness or by pg_ctl; a postmaster killed
   * with SIGKILL leaves its children running for a moment), then drops the lock files
   * that run left behind — only those provably stale, see {@linkcode dropStaleLock}.
   */
  protected override async beforeLaunch(): Promise<void> {
    await this.waitLeftovers({
      onTimeout: (left) =>
        new HarnessError(
          "SERVER_START_FAILED",
          `Cannot start ${this.label}: ${describeProcesses(left)} still run in ` +
            `${this.dataDir} after ${LEFTOVER_WAIT_MS} ms; a server of an earlier run (the ` +
            "harness's or one pg_ctl started) must be gone first",
        ),
    });
    const dataDir = await Deno.realPath(this.dataDir);
    await dropStaleLock(`${this.dataDir}/postmaster.pid`, dataDir);
    await dropStaleLock(`${this.socketDir}/.s.PGSQL.${this.port}.lock`, dataDir);
  }

  /**
   * After the postmaster of this run has exited: its children (they notice within
   * moments; SIGKILLed after a grace), including any it forked after kill() looked.
   */
  protected override async afterExit(): Promise<void> {
    await this.waitLeftovers({
      killAfterMs: LEFTOVER_GRACE_MS,
      onTimeout: (left) =>
        new HarnessError(
          "SERVER_STOP_FAILED",
          `Cannot stop ${this.label}: ${describeProcesses(left)} still run in ` +
            `${this.dataDir} ${LEFTOVER_WAIT_MS} ms after its postmaster exited, even after ` +
            "SIGKILL",
        ),
    });
  }

  private async waitLeftovers(options: {
    killAfterMs?: number;
    onTimeout: (left: (ProcInfo & { pid: number })[]) => Error;
  }): Promise<void> {
    const started = Date.now();
    let killed = false;
    for (let left = this.processes(); left.length; left = this.processes()) {
      const waited = Date.now() - started;
      if (waited > LEFTOVER_WAIT_MS) throw options.onTimeout(left);
      if (options.killAfterMs !== undefined && waited > options.killAfterMs && !killed) {
        for (const p of left) signalPid(p.pid, "SIGKILL");
        killed = true;
      }
      await sleep(POLL_MS);
    }
  }
}

/** How long leftovers of an earlier run may take to go before start() or stop() gives up. */
const LEFTOVER_WAIT_MS = 15_000;

/** How long orphaned children of a stopped or killed postmaster get before SIGKILL. */
const LEFTOVER_GRACE_MS = 5_000;

/**
 * Removes the lock file at `path` (postmaster.pid, or a socket's `.lock`) when it is
 * provably stale: the pid it names is gone, a zombie, or runs somewhere other than
 * `dataDir`. PostgreSQL itself only asks kill(pid, 0), which succeeds for a zombie — and a
 * postmaster started by pg_ctl and killed stays one for good where init does not reap
 * orphans (as in some containers), so it would refuse to start forever. A lock whose
 * process cannot be looked at is left to PostgreSQL.
 */
async function dropStaleLock(path: string, dataDir: string): Promise<void> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    return; // no lock
  }
  const pid = Number(text.split("\n")[0].trim());
  if (Number.isInteger(pid) && pid > 0 && isAlive(pid)) {
    const cwd = cwdOf(pid);
    if (cwd === null || cwd === dataDir) return; // not provably someone else's
  }
  await Deno.remove(path).catch(() => {});
}

/**
 * The initdb template, made at most once per process (concurrent callers share the
 * promise) and shared with later test processes: it lives at
 * `HARNESS_ROOT/template-<key>/data`, where the key hashes everything that shapes it
 * (initdb arguments, appended config, the postgres binary, the OS user), and it is
 * published with an atomic rename so a reader never sees a half-made one.
 */
function templateDir(): Promise<string> {
  templatePromise ??= sharedTemplate().catch((err) => {
    templatePromise = undefined;
    throw err;
  });
  return templatePromise;
}

const INITDB_ARGS = [
  "-A",
  "trust",
  "-U",
  "postgres",
  "-E",
  "UTF8",
  "--locale=C",
  "--no-sync",
  "--no-instructions",
];

const HBA_REPLICATION = "host    replication     all             127.0.0.1/32            trust\n";

async function sharedTemplate(): Promise<string> {
  await baseDir(); // creates HARNESS_ROOT and sweeps unfinished templates of dead processes
  const binary = await Deno.stat(`${PG_BIN}/postgres`);
  const fingerprint = JSON.stringify([
    INITDB_ARGS,
    COMMON_CONF,
    HBA_REPLICATION,
    binary.size,
    binary.mtime?.getTime(),
    Deno.uid(),
  ]);
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(fingerprint));
  const key = Array.from(new Uint8Array(digest).slice(0, 8), (b) => b.toString(16).padStart(2, "0"))
    .join("");
  const final = `${HARNESS_ROOT}/template-${key}`;
  if (await isFile(`${final}/ready`)) return `${final}/data`;

  const tmp = `${final}.tmp-${Deno.pid}-${randomHex(4)}`;
  try {
    await Deno.mkdir(tmp, { mode: 0o755 });
    await chownPostgres(tmp);
    const data = `${tmp}/data`;
    await runOk([...AS_POSTGRES, `${PG_BIN}/initdb`, "-D", data, ...INITDB_ARGS], { cwd: tmp });
    await Deno.writeTextFile(`${data}/postgresql.conf`, COMMON_CONF, { append: true });
    const hba = await Deno.readTextFile(`${data}/pg_hba.conf`);
    if (!/^host\s+replication\s+all\s+127\.0\.0\.1\/32\s+trust/m.test(hba)) {
      await Deno.writeTextFile(`${data}/pg_hba.conf`, HBA_REPLICATION, { append: true });
    }
    await Deno.writeTextFile(`${tmp}/ready`, `${new Date().toISOString()}\n`);
    await Deno.rename(tmp, final);
  } catch (err) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    // Another process published the same template first: use theirs.
    if (!(await isFile(`${final}/ready`))) throw err;
  }
  return `${final}/data`;
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

function settingsArgs(settings: Record<string, string | number> = {}): string[] {
  return Object.entries(settings).flatMap(([key, value]) => {
    if (!/^[a-z_][a-z0-9_.]*$/i.test(key)) {
      throw new HarnessError("INVALID_ARGUMENT", `Invalid PostgreSQL setting name: ${key}`);
    }
    return ["-c", `${key}=${value}`];
  });
}

function checkName(name: string): string {
  if (!/^[A-Za-z0-9_.-]{1,40}$/.test(name)) {
    throw new HarnessError("INVALID_ARGUMENT", `Invalid server name: ${JSON.stringify(name)}`);
  }
  return name;
}

function checkIdentifier(name: string, what: string): string {
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(name)) {
    throw new HarnessError(
      "INVALID_ARGUMENT",
      `Invalid ${what} name: ${JSON.stringify(name)} (use lowercase letters, digits and _)`,
    );
  }
  return name;
}
