/**
 * The one module that runs PostgreSQL's programs (pg_dump, pg_restore, pg_basebackup,
 * initdb, postgres, pg_ctl, pg_verifybackup, pg_controldata, pg_rewind, psql, …) and the
 * few standard tools the backup pipeline streams through (zstd, tar).
 *
 * Every run returns a typed {@linkcode ToolResult} with the exit code and the captured
 * stderr (bounded, so a chatty program cannot fill memory); `runOk` turns a failure into
 * `PG_TOOL_FAILED` with that stderr in the sentence. Streaming programs are spawned as a
 * {@linkcode ToolProcess}: stdin / stdout streams plus a `finished` promise that never
 * rejects.
 *
 * Server-side programs (initdb, postgres, pg_ctl, pg_rewind, pg_resetwal) refuse to run as
 * root; when this process is root they run as the server's OS user (`postgres` by
 * default) through `setpriv`, which execs, so the pid we hold is the program's pid.
 * Connection details travel in the environment (PGHOST, PGPASSWORD, …), never in argv,
 * so passwords do not show in `ps`.
 *
 * @example
 * ```ts
 * const tools = createPgTools();
 * const dump = tools.spawn("pg_dump", ["-Fc", "-Z0"], { connection: { url } });
 * await dump.stdout!.pipeTo(file.writable);
 * const result = await dump.finished; // { code, stderr, ... }
 * ```
 * @module
 */
import { RuntimeError } from "../lib/errors.ts";
import { type Logger, silentLogger } from "../lib/log.ts";

/** The PostgreSQL programs this module runs. */
export type PgProgram =
  | "pg_dump"
  | "pg_restore"
  | "pg_basebackup"
  | "pg_ctl"
  | "psql"
  | "initdb"
  | "postgres"
  | "pg_verifybackup"
  | "pg_controldata"
  | "pg_rewind"
  | "pg_waldump"
  | "pg_isready"
  | "pg_archivecleanup"
  | "pg_resetwal";

/** Programs that must not run as root (they write or serve a data directory). */
const SERVER_PROGRAMS: ReadonlySet<string> = new Set([
  "initdb",
  "postgres",
  "pg_ctl",
  "pg_rewind",
  "pg_resetwal",
]);

/** Default location of the PostgreSQL 15 binaries (Debian / Ubuntu packages). */
export const DEFAULT_PG_BIN_DIR = "/usr/lib/postgresql/15/bin";

/** How much stderr a process keeps (the head and the tail of longer output). */
const STDERR_LIMIT = 64 * 1024;

/** How long a graceful server stop may take before SIGKILL. */
const STOP_TIMEOUT_MS = 30_000;

/** Where a program connects: a postgres:// URL and optionally another database. */
export interface PgConnection {
  /** postgres://user:password@host:port/database?sslmode=… */
  url: string;
  /** Database to use instead of the URL's. */
  database?: string;
}

/** What a finished program did. */
export interface ToolResult {
  /** Program name (e.g. `pg_dump`, `zstd`). */
  program: string;
  /** Exit code (128 + n when killed by signal n). */
  code: number;
  /** The signal that killed it, if any. */
  signal: Deno.Signal | null;
  /** True on exit code 0. */
  success: boolean;
  /** Captured stdout (empty for streamed output). */
  stdout: string;
  /** Captured stderr, at most ~64 KiB (head and tail of longer output). */
  stderr: string;
  /** Wall time from spawn to exit. */
  durationMs: number;
}

/** A running program with streamed stdin / stdout. */
export interface ToolProcess {
  /** Program name. */
  readonly program: string;
  /** Its pid. */
  readonly pid: number;
  /** Its stdin when spawned with `stdin: "piped"`. */
  readonly stdin: WritableStream<Uint8Array> | null;
  /** Its stdout when spawned with `stdout: "piped"`. */
  readonly stdout: ReadableStream<Uint8Array> | null;
  /** Resolves once it exited and its stderr was read; never rejects. */
  readonly finished: Promise<ToolResult>;
  /** Sends a signal (default SIGTERM); ignores a process that is gone. */
  kill(signal?: Deno.Signal): void;
}

/** PATH of a child when this process has none (or the caller asked for a bare environment). */
const DEFAULT_CHILD_PATH = "/usr/local/bin:/usr/bin:/bin";

/** Variables a child inherits from this process; everything else (secrets) stays here. */
const INHERITED_VARIABLES: ReadonlySet<string> = new Set([
  "PATH",
  "LANG",
  "LANGUAGE",
  "LC_ALL",
  "LC_CTYPE",
  "LC_COLLATE",
  "LC_NUMERIC",
  "LC_TIME",
  "TZ",
  "TMPDIR",
  "LD_LIBRARY_PATH",
]);

/**
 * The environment of every program this module starts (pg_dump, pg_basebackup, tar, zstd,
 * a `postgres` on restored data and the archive commands it runs): an allow-list of this
 * process's variables (PATH, locale, TZ, TMPDIR, libpq's PG*) plus `extra`. Never the
 * runtime's secrets (RS_SECRET_KEY, RS_ADMIN_TOKEN, BACKUP_ENCRYPTION_KEY, INFLUX_TOKEN,
 * REDIS_URL, DATABASE_URL, …): a child that logs, crashes with a core dump or runs an
 * operator's archive command cannot leak what it never had.
 */
export function childEnvironment(
  extra: Record<string, string> = {},
  parent: Record<string, string> = Deno.env.toObject(),
): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries(parent)) {
    if (INHERITED_VARIABLES.has(name) || /^PG[A-Z0-9_]+$/.test(name)) env[name] = value;
  }
  env.PATH ??= DEFAULT_CHILD_PATH;
  return { ...env, ...extra };
}

/** Options of {@linkcode PgTools.run} and {@linkcode PgTools.spawn}. */
export interface ToolOptions {
  /** Connection the program uses (as PG* environment variables). */
  connection?: PgConnection;
  /** Extra environment variables. */
  env?: Record<string, string>;
  /**
   * Not even the allow-listed variables of this process ({@linkcode childEnvironment}): only
   * a default PATH, `env` and the connection's variables, as a program PostgreSQL runs
   * would see it.
   */
  clearEnv?: boolean;
  /** Working directory (default: the system temp dir). */
  cwd?: string;
  /** Run as the server's OS user when root (default: only for server programs). */
  asServerUser?: boolean;
  /** Aborting kills the program (SIGTERM). */
  signal?: AbortSignal;
  /** Text fed to stdin (run only). */
  stdinText?: string;
  /** Stream modes (spawn only); default stdin null, stdout piped. */
  stdin?: "piped" | "null";
  /** Stream modes (spawn only). */
  stdout?: "piped" | "null";
}

/** A PostgreSQL server started by {@linkcode PgTools.startServer}. */
export interface PgServerProcess extends AsyncDisposable {
  /** Postmaster pid. */
  readonly pid: number;
  /** TCP port on 127.0.0.1. */
  readonly port: number;
  /** Data directory. */
  readonly dataDir: string;
  /** The log file its output goes to. */
  readonly logPath: string;
  /** Directory of its unix socket. */
  readonly socketDir: string;
  /** A URL for `database` (default postgres) as the superuser (libpq form; `?host=` for the socket). */
  url(database?: string): string;
  /** The log's lines written by this run. */
  log(): Promise<string>;
  /** Fast shutdown (SIGINT), waiting for the exit (SIGKILL after 30 s); idempotent. */
  stop(): Promise<void>;
}

/** Options of {@linkcode PgTools.startServer}. */
export interface StartServerOptions {
  /** Port (default: a free one); also names the unix socket. */
  port?: number;
  /** Listen on 127.0.0.1 (default true); false: only the unix socket in `socketDir`. */
  tcp?: boolean;
  /**
   * Replace the data directory's pg_hba.conf with `local all all trust` for this run
   * (restored clusters have someone else's rules). Pair it with `tcp: false` and a private
   * `socketDir`, so only this machine's root and server user can connect.
   */
  trustLocalSocket?: boolean;
  /** `-c name=value` settings; they override the data directory's configuration files. */
  settings?: Record<string, string | number | boolean>;
  /** Log file (default `<dataDir>/../<basename>.log`). */
  logPath?: string;
  /** Unix socket directory (default: the log file's directory). */
  socketDir?: string;
  /** How long to wait for `ready` (accepting connections as a primary); default 10 min. */
  readyTimeoutMs?: number;
  /** Also count a hot standby accepting read-only connections as ready (replicas). */
  acceptStandby?: boolean;
  /** Superuser name for {@linkcode PgServerProcess.url} (default postgres). */
  superuser?: string;
}

/** The WAL range a base backup covers, from pg_basebackup's verbose output. */
export interface BaseBackupWal {
  /** LSN where the backup's WAL starts (its checkpoint's redo point). */
  startLsn: string;
  /** Timeline of the start point. */
  timeline: number;
  /** LSN where the backup ends (consistency is reached there). */
  endLsn: string;
}

/** Programs of one PostgreSQL installation, run with typed results. */
export interface PgTools {
  /** Directory of the PostgreSQL binaries. */
  readonly binDir: string;
  /** The OS user server programs run as when this process is root. */
  readonly serverUser: string;
  /** True when server programs are switched to {@linkcode PgTools.serverUser}. */
  readonly dropsPrivileges: boolean;
  /** Runs a PostgreSQL program to completion; never throws for exit codes. */
  run(program: PgProgram, args: string[], options?: ToolOptions): Promise<ToolResult>;
  /** Like `run`, but a non-zero exit throws PG_TOOL_FAILED quoting stderr. */
  runOk(program: PgProgram, args: string[], options?: ToolOptions): Promise<ToolResult>;
  /** Spawns a PostgreSQL program with streamed stdout (and optionally stdin). */
  spawn(program: PgProgram, args: string[], options?: ToolOptions): ToolProcess;
  /** Spawns another tool (`zstd`, `tar`, …) by name from PATH, with the same guarantees. */
  spawnTool(command: string, args: string[], options?: ToolOptions): ToolProcess;
  /** Runs another tool to completion; never throws for exit codes. */
  runTool(command: string, args: string[], options?: ToolOptions): Promise<ToolResult>;
  /** `<program> --version`, e.g. `pg_dump (PostgreSQL) 15.10`. */
  version(program: PgProgram): Promise<string>;
  /** Creates `path` (and parents) owned by the server user, mode 0700. */
  prepareDir(path: string): Promise<void>;
  /** Gives `path` (recursively) to the server user; no-op unless root. */
  chownToServerUser(path: string): Promise<void>;
  /** initdb a new cluster (trust auth for local connections, UTF8, C locale, no fsync). */
  initdb(dataDir: string, options?: { superuser?: string; signal?: AbortSignal }): Promise<void>;
  /** Starts `postgres` on a data directory as a direct child and waits until it is ready. */
  startServer(dataDir: string, options?: StartServerOptions): Promise<PgServerProcess>;
  /** pg_controldata as a key → value record (e.g. `Database cluster state`). */
  controlData(dataDir: string): Promise<Record<string, string>>;
}

/** Options of {@linkcode createPgTools}. */
export interface PgToolsOptions {
  /** Directory of the PostgreSQL binaries (default /usr/lib/postgresql/15/bin). */
  binDir?: string;
  /** OS user server programs run as when this process is root (default postgres). */
  serverUser?: string;
  /** Debug log of every run. */
  log?: Logger;
}

const decoder = new TextDecoder();

/** Environment variables that point a libpq program at `connection`. */
export function connectionEnv(connection: PgConnection): Record<string, string> {
  let url: URL;
  try {
    url = new URL(connection.url);
  } catch {
    throw new RuntimeError("VALIDATION_FAILED", "Invalid database URL: it cannot be parsed");
  }
  if (url.protocol !== "postgres:" && url.protocol !== "postgresql:") {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Invalid database URL: expected postgres://, got ${url.protocol}//`,
    );
  }
  const env: Record<string, string> = {};
  const params = url.searchParams;
  const host = params.get("host") ?? decodeURIComponent(url.hostname).replace(/^\[|\]$/g, "");
  if (host) env.PGHOST = host;
  const port = params.get("port") ?? url.port;
  if (port) env.PGPORT = port;
  if (url.username) env.PGUSER = decodeURIComponent(url.username);
  if (url.password) env.PGPASSWORD = decodeURIComponent(url.password);
  const database = connection.database ?? decodeURIComponent(url.pathname.replace(/^\//, ""));
  if (database) env.PGDATABASE = database;
  const mapped: Record<string, string> = {
    sslmode: "PGSSLMODE",
    sslrootcert: "PGSSLROOTCERT",
    sslcert: "PGSSLCERT",
    sslkey: "PGSSLKEY",
    application_name: "PGAPPNAME",
    connect_timeout: "PGCONNECT_TIMEOUT",
    options: "PGOPTIONS",
  };
  for (const [param, variable] of Object.entries(mapped)) {
    const value = params.get(param);
    if (value !== null) env[variable] = value;
  }
  env.PGCONNECT_TIMEOUT ??= "10";
  return env;
}

/**
 * A libpq keyword/value connection string for `connection` without its password (for
 * arguments such as pg_rewind's `--source-server`); pass the connection as `connection` too,
 * so libpq takes the password from PGPASSWORD instead of the command line.
 */
export function conninfoWithoutPassword(connection: PgConnection): string {
  const env = connectionEnv(connection);
  const keys: [string, string][] = [
    ["host", "PGHOST"],
    ["port", "PGPORT"],
    ["user", "PGUSER"],
    ["dbname", "PGDATABASE"],
    ["sslmode", "PGSSLMODE"],
    ["application_name", "PGAPPNAME"],
    ["connect_timeout", "PGCONNECT_TIMEOUT"],
  ];
  return keys.filter(([, v]) => env[v] !== undefined)
    .map(([k, v]) => `${k}='${env[v].replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`)
    .join(" ");
}

/** Keeps the head and the tail of a byte stream, at most `limit` bytes in all. */
class BoundedText {
  #head: Uint8Array[] = [];
  #headBytes = 0;
  #tail: Uint8Array[] = [];
  #tailBytes = 0;
  #dropped = 0;
  readonly #limit: number;

  constructor(limit: number) {
    this.#limit = limit;
  }

  push(chunk: Uint8Array): void {
    const headLimit = this.#limit / 4;
    if (this.#headBytes < headLimit) {
      const take = chunk.subarray(0, headLimit - this.#headBytes);
      this.#head.push(take.slice());
      this.#headBytes += take.length;
      chunk = chunk.subarray(take.length);
      if (!chunk.length) return;
    }
    this.#tail.push(chunk.slice());
    this.#tailBytes += chunk.length;
    const tailLimit = this.#limit - headLimit;
    while (this.#tailBytes > tailLimit) {
      const first = this.#tail[0];
      const excess = this.#tailBytes - tailLimit;
      if (first.length <= excess) {
        this.#tail.shift();
        this.#tailBytes -= first.length;
        this.#dropped += first.length;
      } else {
        this.#tail[0] = first.subarray(excess);
        this.#tailBytes -= excess;
        this.#dropped += excess;
      }
    }
  }

  text(): string {
    const head = decoder.decode(concat(this.#head));
    const tail = decoder.decode(concat(this.#tail));
    return this.#dropped ? `${head}\n[… ${this.#dropped} bytes left out …]\n${tail}` : head + tail;
  }
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let offset = 0;
  for (const c of chunks) {
    out.set(c, offset);
    offset += c.length;
  }
  return out;
}

async function drain(stream: ReadableStream<Uint8Array>, into: BoundedText): Promise<void> {
  try {
    for await (const chunk of stream) into.push(chunk);
  } catch {
    // The pipe closing early leaves what was read; the exit code tells the rest.
  }
}

/** The first line of stderr that says what went wrong, for error sentences. */
export function stderrSummary(stderr: string, maxChars = 600): string {
  const lines = stderr.split("\n").map((l) => l.trim()).filter(Boolean);
  const important = lines.filter((l) => /error|fatal|panic|could not|failed|invalid/i.test(l));
  const chosen = (important.length ? important : lines).slice(-3).join(" | ");
  return chosen.length > maxChars ? chosen.slice(0, maxChars) + "…" : chosen;
}

/** Throws PG_TOOL_FAILED for an unsuccessful result; returns it otherwise. */
export function assertSuccess(result: ToolResult, what?: string): ToolResult {
  if (result.success) return result;
  const how = result.signal ? `was killed by ${result.signal}` : `exited with code ${result.code}`;
  const detail = stderrSummary(result.stderr) || "no error output";
  throw new RuntimeError(
    "PG_TOOL_FAILED",
    `${what ?? result.program} failed: ${result.program} ${how}: ${detail}`,
    { details: { program: result.program, code: result.code } },
  );
}

/** OS user name → its ids, looked up once per process (per user: runners may differ). */
const serverIds = new Map<string, Promise<{ uid: number; gid: number }>>();

async function lookupUser(name: string): Promise<{ uid: number; gid: number }> {
  const line = (await Deno.readTextFile("/etc/passwd")).split("\n")
    .find((l) => l.startsWith(`${name}:`));
  if (!line) {
    throw new RuntimeError(
      "PG_TOOL_FAILED",
      `Cannot run PostgreSQL server programs as root: there is no OS user ${name}. ` +
        "HINT: create it (useradd --system postgres) or run the runtime as that user",
    );
  }
  const fields = line.split(":");
  return { uid: Number(fields[2]), gid: Number(fields[3]) };
}

function freePort(): Promise<number> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return Promise.resolve(port);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function processAlive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return !/^\d+ \(.*\) [ZX]/.test(stat);
  } catch {
    return false;
  }
}

/** Creates the tool runner of one PostgreSQL installation. */
export function createPgTools(options: PgToolsOptions = {}): PgTools {
  const binDir = (options.binDir ?? DEFAULT_PG_BIN_DIR).replace(/\/$/, "");
  const serverUser = options.serverUser ?? "postgres";
  const log = options.log ?? silentLogger;
  const isRoot = Deno.uid() === 0;

  function ids(): Promise<{ uid: number; gid: number }> {
    let found = serverIds.get(serverUser);
    if (!found) {
      found = lookupUser(serverUser).catch((err) => {
        serverIds.delete(serverUser);
        throw err;
      });
      serverIds.set(serverUser, found);
    }
    return found;
  }

  function argvFor(
    path: string,
    args: string[],
    asServerUser: boolean,
  ): { cmd: string; args: string[] } {
    if (asServerUser && isRoot) {
      return {
        cmd: "setpriv",
        args: [
          `--reuid=${serverUser}`,
          `--regid=${serverUser}`,
          "--init-groups",
          "--",
          path,
          ...args,
        ],
      };
    }
    return { cmd: path, args };
  }

  function envFor(opts: ToolOptions): Record<string, string> {
    return {
      ...(opts.clearEnv ? { PATH: DEFAULT_CHILD_PATH } : childEnvironment()),
      ...(opts.connection ? connectionEnv(opts.connection) : {}),
      ...(opts.env ?? {}),
      // Messages in English, so the parsing of pg_basebackup / server logs holds.
      LC_MESSAGES: "C",
    };
  }

  function start(
    name: string,
    path: string,
    args: string[],
    opts: ToolOptions,
    defaultAsServer: boolean,
  ): ToolProcess {
    const asServer = opts.asServerUser ?? defaultAsServer;
    const argv = argvFor(path, args, asServer);
    const started = performance.now();
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(argv.cmd, {
        args: argv.args,
        cwd: opts.cwd ?? "/tmp",
        // Never this process's environment: it holds RS_SECRET_KEY, RS_ADMIN_TOKEN,
        // BACKUP_ENCRYPTION_KEY, INFLUX_TOKEN, which no child needs.
        clearEnv: true,
        env: envFor(opts),
        stdin: opts.stdin ?? "null",
        stdout: opts.stdout ?? "piped",
        stderr: "piped",
        signal: opts.signal,
      }).spawn();
    } catch (err) {
      const missing = err instanceof Deno.errors.NotFound;
      throw new RuntimeError(
        "PG_TOOL_FAILED",
        missing
          ? `Cannot run ${name}: ${argv.cmd} was not found. HINT: install it (PostgreSQL ` +
            `binaries are expected in ${binDir}; set PG_BIN_DIR) or put it on PATH`
          : `Cannot run ${name}: ${err instanceof Error ? err.message : err}`,
        { cause: err },
      );
    }
    log.debug("spawned", { program: name, pid: child.pid, asServerUser: asServer && isRoot });
    const stderr = new BoundedText(STDERR_LIMIT);
    const stderrDone = drain(child.stderr, stderr);
    const finished = (async (): Promise<ToolResult> => {
      const status = await child.status;
      await stderrDone;
      const result: ToolResult = {
        program: name,
        code: status.code,
        signal: status.signal,
        success: status.success,
        stdout: "",
        stderr: stderr.text(),
        durationMs: Math.round(performance.now() - started),
      };
      log.debug("exited", { program: name, code: result.code, ms: result.durationMs });
      return result;
    })();
    return {
      program: name,
      pid: child.pid,
      stdin: (opts.stdin ?? "null") === "piped" ? child.stdin : null,
      stdout: (opts.stdout ?? "piped") === "piped" ? child.stdout : null,
      finished,
      kill(signal: Deno.Signal = "SIGTERM") {
        try {
          child.kill(signal);
        } catch {
          // already gone
        }
      },
    };
  }

  async function complete(proc: ToolProcess, opts: ToolOptions): Promise<ToolResult> {
    const out = new BoundedText(16 * 1024 * 1024);
    const feeding = (async () => {
      if (!proc.stdin) return;
      const writer = proc.stdin.getWriter();
      // A program that exits without reading breaks the pipe; its exit code says why.
      await writer.write(new TextEncoder().encode(opts.stdinText ?? "")).catch(() => {});
      await writer.close().catch(() => {});
    })();
    const reading = proc.stdout ? drain(proc.stdout, out) : Promise.resolve();
    await Promise.all([feeding, reading]);
    const result = await proc.finished;
    return { ...result, stdout: out.text() };
  }

  function runWith(
    name: string,
    path: string,
    args: string[],
    opts: ToolOptions,
    defaultAsServer: boolean,
  ): Promise<ToolResult> {
    const proc = start(name, path, args, {
      ...opts,
      stdin: opts.stdinText === undefined ? "null" : "piped",
      stdout: "piped",
    }, defaultAsServer);
    return complete(proc, opts);
  }

  const tools: PgTools = {
    binDir,
    serverUser,
    dropsPrivileges: isRoot,
    run(program, args, opts = {}) {
      return runWith(program, `${binDir}/${program}`, args, opts, SERVER_PROGRAMS.has(program));
    },
    async runOk(program, args, opts = {}) {
      return assertSuccess(await tools.run(program, args, opts));
    },
    spawn(program, args, opts = {}) {
      return start(program, `${binDir}/${program}`, args, opts, SERVER_PROGRAMS.has(program));
    },
    spawnTool(command, args, opts = {}) {
      return start(command, command, args, opts, false);
    },
    runTool(command, args, opts = {}) {
      return runWith(command, command, args, opts, false);
    },
    async version(program) {
      const result = await tools.runOk(program, ["--version"]);
      return result.stdout.trim();
    },
    async prepareDir(path) {
      await Deno.mkdir(path, { recursive: true, mode: 0o700 });
      await Deno.chmod(path, 0o700);
      await tools.chownToServerUser(path);
    },
    async chownToServerUser(path) {
      if (!isRoot) return;
      const { uid, gid } = await ids();
      const stack = [path];
      while (stack.length) {
        const p = stack.pop()!;
        await Deno.chown(p, uid, gid);
        const info = await Deno.lstat(p);
        if (info.isDirectory) {
          for await (const entry of Deno.readDir(p)) stack.push(`${p}/${entry.name}`);
        }
      }
    },
    async initdb(dataDir, opts = {}) {
      const parent = dataDir.replace(/\/[^/]+\/?$/, "") || "/";
      await tools.prepareDir(parent);
      await tools.runOk("initdb", [
        "-D",
        dataDir,
        "-A",
        "trust",
        "-U",
        opts.superuser ?? "postgres",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
        "--no-instructions",
      ], { cwd: parent, signal: opts.signal });
    },
    startServer(dataDir, opts = {}) {
      return startServer(tools, dataDir, opts);
    },
    async controlData(dataDir) {
      const result = await tools.runOk("pg_controldata", ["-D", dataDir], {
        asServerUser: true,
      });
      const fields: Record<string, string> = {};
      for (const line of result.stdout.split("\n")) {
        const at = line.indexOf(":");
        if (at > 0) fields[line.slice(0, at).trim()] = line.slice(at + 1).trim();
      }
      return fields;
    },
  };
  return tools;
}

/** Starts postgres as a direct child with its output in a log file; waits for `ready`. */
async function startServer(
  tools: PgTools,
  dataDir: string,
  opts: StartServerOptions,
): Promise<PgServerProcess> {
  const dir = dataDir.replace(/\/+$/, "");
  const logPath = opts.logPath ?? `${dir}.log`;
  const socketDir = opts.socketDir ?? logPath.replace(/\/[^/]+$/, "");
  const superuser = opts.superuser ?? "postgres";
  const settings = Object.entries(opts.settings ?? {}).flatMap(([key, value]) => {
    if (!/^[a-z_][a-z0-9_.]*$/i.test(key)) {
      throw new RuntimeError("VALIDATION_FAILED", `Invalid PostgreSQL setting name: ${key}`);
    }
    return ["-c", `${key}=${value}`];
  });
  const tcp = opts.tcp ?? true;
  if (opts.trustLocalSocket) {
    const hba = `${socketDir}/rs_pg_hba.conf`;
    await Deno.writeTextFile(hba, "local all all trust\n", { mode: 0o600 });
    await tools.chownToServerUser(hba);
    settings.push("-c", `hba_file=${hba}`);
  }
  const logStart = await Deno.stat(logPath).then((s) => s.size).catch(() => 0);
  for (let attempt = 1;; attempt++) {
    const port = opts.port ?? await freePort();
    await Deno.remove(`${dir}/postmaster.pid`).catch(() => {});
    const argv = [
      "-D",
      dir,
      "-p",
      String(port),
      "-c",
      `listen_addresses=${tcp ? "127.0.0.1" : ""}`,
      "-c",
      `unix_socket_directories=${socketDir}`,
      ...settings,
    ];
    const serverArgv = tools.dropsPrivileges
      ? [
        "setpriv",
        `--reuid=${tools.serverUser}`,
        `--regid=${tools.serverUser}`,
        "--init-groups",
        "--",
        `${tools.binDir}/postgres`,
        ...argv,
      ]
      : [`${tools.binDir}/postgres`, ...argv];
    // `sh -c 'exec …'` redirects into the log and then becomes the server: the child's pid
    // is the postmaster's and no pipe stays open in this process.
    const child = new Deno.Command("/bin/sh", {
      args: ["-c", 'exec "$@" >>"$0" 2>&1 </dev/null', logPath, ...serverArgv],
      cwd: "/tmp",
      // The server, and every archive_command it runs, sees only the allow-list.
      clearEnv: true,
      env: childEnvironment({ LC_MESSAGES: "C" }),
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    let exited = false;
    const status = child.status.then((s) => {
      exited = true;
      return s;
    });
    const readLog = async () => {
      const bytes = await Deno.readFile(logPath).catch(() => new Uint8Array());
      return decoder.decode(bytes.subarray(Math.min(logStart, bytes.length)));
    };
    const deadline = Date.now() + (opts.readyTimeoutMs ?? 600_000);
    let ready = false;
    while (!exited && Date.now() < deadline) {
      const lines = await Deno.readTextFile(`${dir}/postmaster.pid`).then((t) => t.split("\n"))
        .catch(() => [] as string[]);
      const status = lines[7]?.trim();
      if (
        Number(lines[0]) === child.pid &&
        (status === "ready" || (opts.acceptStandby && status === "standby"))
      ) {
        ready = true;
        break;
      }
      await sleep(20);
    }
    if (!ready) {
      if (!exited) {
        child.kill("SIGKILL");
        await status;
      }
      const text = await readLog();
      if (
        opts.port === undefined && attempt < 5 &&
        /could not bind|Address already in use|could not create any TCP\/IP sockets/.test(text)
      ) {
        continue;
      }
      throw new RuntimeError(
        "PG_TOOL_FAILED",
        exited
          ? `postgres on ${dir} exited during start-up: ${stderrSummary(text) || "see " + logPath}`
          : `postgres on ${dir} was not ready within ${
            Math.round((opts.readyTimeoutMs ?? 600_000) / 1000)
          } s: ${stderrSummary(text) || "see " + logPath}`,
        { details: { logPath } },
      );
    }
    let stopping: Promise<void> | undefined;
    const server: PgServerProcess = {
      pid: child.pid,
      port,
      dataDir: dir,
      logPath,
      socketDir,
      url: (database = "postgres") =>
        tcp
          ? `postgres://${encodeURIComponent(superuser)}@127.0.0.1:${port}/${
            encodeURIComponent(database)
          }`
          : `postgres://${encodeURIComponent(superuser)}@localhost:${port}/${
            encodeURIComponent(database)
          }?host=${encodeURIComponent(socketDir)}`,
      log: readLog,
      stop() {
        stopping ??= (async () => {
          if (exited) return;
          try {
            child.kill("SIGINT");
          } catch {
            // gone
          }
          const timer = setTimeout(() => {
            if (processAlive(child.pid)) child.kill("SIGKILL");
          }, STOP_TIMEOUT_MS);
          await status;
          clearTimeout(timer);
        })();
        return stopping;
      },
      [Symbol.asyncDispose]() {
        return server.stop();
      },
    };
    return server;
  }
}

/** Parses an LSN such as `0/16B3748` into a 64-bit number. */
export function parseLsn(lsn: string): bigint {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(lsn.trim());
  if (!m) throw new RuntimeError("VALIDATION_FAILED", `Invalid LSN: ${JSON.stringify(lsn)}`);
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

/** Formats a 64-bit number as an LSN (`X/X`, upper-case hex). */
export function formatLsn(value: bigint): string {
  return `${(value >> 32n).toString(16).toUpperCase()}/${
    (value & 0xffffffffn).toString(16).toUpperCase()
  }`;
}

/** The WAL segment file name holding `lsn` on `timeline` (segments of `segmentBytes`). */
export function walFileName(
  lsn: string | bigint,
  options: { timeline: number; segmentBytes?: number },
): string {
  const value = typeof lsn === "string" ? parseLsn(lsn) : lsn;
  const segmentBytes = options.segmentBytes ?? 16 * 1024 * 1024;
  const segno = value / BigInt(segmentBytes);
  const perId = 0x100000000n / BigInt(segmentBytes);
  const hex = (n: bigint | number) => n.toString(16).toUpperCase().padStart(8, "0");
  return `${hex(options.timeline)}${hex(segno / perId)}${hex(segno % perId)}`;
}

/** The segment number (within all timelines) of a WAL file name. */
export function walSegmentNumber(fileName: string, segmentBytes = 16 * 1024 * 1024): bigint {
  if (!/^[0-9A-F]{24}$/.test(fileName)) {
    throw new RuntimeError("VALIDATION_FAILED", `Not a WAL segment name: ${fileName}`);
  }
  const perId = 0x100000000n / BigInt(segmentBytes);
  return BigInt(`0x${fileName.slice(8, 16)}`) * perId + BigInt(`0x${fileName.slice(16, 24)}`);
}

/** Reads the WAL range from pg_basebackup's `--verbose` stderr; null when it is not there. */
export function parseBaseBackupWal(stderr: string): BaseBackupWal | null {
  const start = /write-ahead log start point: ([0-9A-F]+\/[0-9A-F]+) on timeline (\d+)/i.exec(
    stderr,
  );
  const end = /write-ahead log end point: ([0-9A-F]+\/[0-9A-F]+)/i.exec(stderr);
  if (!start || !end) return null;
  return { startLsn: start[1], timeline: Number(start[2]), endLsn: end[1] };
}

// ---------------------------------------------------------------------------------------
// Failover: rejoining an old primary, switchover (used by actors/failover/)
// ---------------------------------------------------------------------------------------

/** Options of {@linkcode pgRewind}. */
export interface PgRewindOptions {
  /** Data directory of the cleanly stopped node to rewind. */
  dataDir: string;
  /** The new primary to rewind from (a superuser); credentials travel in the environment. */
  source: PgConnection;
  /** Time limit (default 5 minutes). */
  timeoutMs?: number;
}

/**
 * Runs pg_rewind so `dataDir` follows the source's timeline. `noRewindNeeded` is true when
 * pg_rewind found no divergence (run CHECKPOINT on the source first, or it may say so
 * wrongly right after a promotion).
 */
export async function pgRewind(
  tools: PgTools,
  options: PgRewindOptions,
): Promise<ToolResult & { noRewindNeeded: boolean }> {
  const result = await tools.run("pg_rewind", [
    "-D",
    options.dataDir,
    // Host, port, user, password and database come from the PG* environment.
    "--source-server=application_name=pg_rewind",
    "--no-sync",
  ], {
    connection: options.source,
    signal: AbortSignal.timeout(options.timeoutMs ?? 300_000),
  });
  return { ...result, noRewindNeeded: /no rewind required/i.test(result.stdout + result.stderr) };
}

/** Stops the server of `dataDir` with `pg_ctl stop` (default mode fast) and waits for it. */
export function pgCtlStop(
  tools: PgTools,
  dataDir: string,
  options: { mode?: "smart" | "fast" | "immediate"; timeoutS?: number } = {},
): Promise<ToolResult> {
  const timeoutS = options.timeoutS ?? 60;
  return tools.run("pg_ctl", [
    "stop",
    "-D",
    dataDir,
    "-m",
    options.mode ?? "fast",
    "-w",
    "-t",
    String(timeoutS),
  ], { signal: AbortSignal.timeout((timeoutS + 10) * 1000) });
}

/**
 * Starts the server of `dataDir` with `pg_ctl start`, detached (it outlives this process),
 * and waits until it accepts connections (a hot standby: until it is consistent).
 * `settings` go on the postmaster's command line, where per-node settings belong: pg_rewind
 * and pg_basebackup copy the configuration files.
 */
export function pgCtlStart(
  tools: PgTools,
  dataDir: string,
  options: { logFile: string; settings?: Record<string, string>; timeoutS?: number },
): Promise<ToolResult> {
  const timeoutS = options.timeoutS ?? 60;
  // pg_ctl hands -o to /bin/sh: every word is single-quoted.
  const quote = (word: string) => `'${word.replaceAll("'", `'"'"'`)}'`;
  const opts = Object.entries(options.settings ?? {}).map(([key, value]) => {
    if (!/^[a-z_][a-z0-9_.]*$/i.test(key)) {
      throw new RuntimeError("VALIDATION_FAILED", `Invalid PostgreSQL setting name: ${key}`);
    }
    return `-c ${quote(`${key}=${value}`)}`;
  }).join(" ");
  return tools.run("pg_ctl", [
    "start",
    "-D",
    dataDir,
    "-l",
    options.logFile,
    "-w",
    "-t",
    String(timeoutS),
    ...(opts ? ["-o", opts] : []),
  ], { signal: AbortSignal.timeout((timeoutS + 10) * 1000) });
}
