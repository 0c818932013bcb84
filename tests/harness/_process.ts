/**
 * Private process helpers of the harness: running commands (optionally as the `postgres`
 * OS user), spawning long-lived servers with their output in a log file, and reading
 * `/proc` to tell live processes from gone or zombie ones.
 * @module
 */

/** Error codes the harness raises. */
export type HarnessErrorCode =
  | "COMMAND_FAILED"
  | "SERVER_START_FAILED"
  | "SERVER_STOP_FAILED"
  | "INVALID_ARGUMENT";

/** A harness failure with a stable code and a human sentence (detail after a colon). */
export class HarnessError extends Error {
  /** Stable, machine-readable code. */
  readonly code: HarnessErrorCode;

  /** Creates an error; `options.cause` keeps the underlying error. */
  constructor(code: HarnessErrorCode, message: string, options: { cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.name = "HarnessError";
    this.code = code;
  }
}

/** True when this process runs as root (PostgreSQL binaries then run as `postgres`). */
export const IS_ROOT: boolean = Deno.uid() === 0;

/** Where the PostgreSQL 15 binaries live. */
export const PG_BIN = "/usr/lib/postgresql/15/bin";

/** argv prefix that runs a program as the `postgres` OS user when we are root (exec, same pid). */
export const AS_POSTGRES: readonly string[] = IS_ROOT
  ? ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
  : [];

/** Signals after which the process is expected to exit, so kill() waits for it. */
export const FATAL_SIGNALS: ReadonlySet<Deno.Signal> = new Set<Deno.Signal>([
  "SIGKILL",
  "SIGTERM",
  "SIGINT",
  "SIGQUIT",
  "SIGABRT",
  "SIGSEGV",
  "SIGBUS",
  "SIGILL",
  "SIGFPE",
]);

/** Outcome of {@linkcode run}. */
export interface RunResult {
  /** Exit code. */
  code: number;
  /** Everything written to stdout. */
  stdout: string;
  /** Everything written to stderr. */
  stderr: string;
}

/** Options of {@linkcode run}. */
export interface RunOptions {
  /** Text fed to stdin (stdin is empty otherwise). */
  stdin?: string;
  /** Working directory (default: the system temp dir, readable by every user). */
  cwd?: string;
  /** Extra environment variables. */
  env?: Record<string, string>;
}

const decoder = new TextDecoder();

/** Runs `argv` to completion and returns its exit code and output; never throws for exit codes. */
export async function run(argv: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const [cmd, ...args] = argv;
  const command = new Deno.Command(cmd, {
    args,
    cwd: options.cwd ?? "/tmp",
    env: options.env,
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  });
  if (options.stdin === undefined) {
    const out = await command.output();
    return {
      code: out.code,
      stdout: decoder.decode(out.stdout),
      stderr: decoder.decode(out.stderr),
    };
  }
  const child = command.spawn();
  const writer = child.stdin.getWriter();
  // A program that exits without reading (e.g. psql failing to connect) breaks the pipe;
  // its exit code and stderr tell the story, so always go on to collect them.
  await writer.write(new TextEncoder().encode(options.stdin)).catch(() => {});
  await writer.close().catch(() => {});
  const out = await child.output();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

/** Runs `argv` and returns its stdout; throws COMMAND_FAILED with stderr on a non-zero exit. */
export async function runOk(argv: readonly string[], options: RunOptions = {}): Promise<string> {
  const result = await run(argv, options);
  if (result.code !== 0) {
    const what = argv.filter((a) => !AS_POSTGRES.includes(a)).slice(0, 3).join(" ");
    throw new HarnessError(
      "COMMAND_FAILED",
      `Command failed: ${what} exited with code ${result.code}: ${
        (result.stderr || result.stdout).trim()
      }`,
    );
  }
  return result.stdout;
}

/**
 * Variables of this process a server must not inherit. `deno test --coverage` sets
 * DENO_COVERAGE_DIR to a directory in the checkout; PostgreSQL hands its environment to
 * archive_command, whose deno would then write coverage there as the `postgres` user —
 * and fail (exit 1, so nothing is archived) when the checkout is closed to that user.
 */
const NOT_FOR_SERVERS: readonly string[] = ["DENO_COVERAGE_DIR"];

/** This process's environment without what servers must not inherit. */
export function serverEnv(): Record<string, string> {
  let env: Record<string, string>;
  try {
    env = Deno.env.toObject();
  } catch {
    return {}; // no --allow-env: nothing to pass on
  }
  for (const name of NOT_FOR_SERVERS) delete env[name];
  return env;
}

/**
 * Spawns a long-lived server whose stdout and stderr are appended to `logPath`, with
 * {@linkcode serverEnv} as its environment.
 *
 * `sh -c 'exec ...'` does the redirection and then replaces itself, so the child's pid
 * is the server's pid and no pipe stays open in this process.
 */
export function spawnLogged(
  argv: readonly string[],
  options: { logPath: string; cwd?: string },
): Deno.ChildProcess {
  return new Deno.Command("/bin/sh", {
    args: ["-c", 'exec "$@" >>"$0" 2>&1 </dev/null', options.logPath, ...argv],
    cwd: options.cwd ?? "/tmp",
    clearEnv: true,
    env: serverEnv(),
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
}

/** Sleeps `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Waits for `child` to exit for at most `ms`; true when it exited. */
export async function exitedWithin(child: Deno.ChildProcess, ms: number): Promise<boolean> {
  let timer: number | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([child.status.then(() => true as const), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Sends `signal` to `pid`, ignoring "no such process". */
export function signalPid(pid: number, signal: Deno.Signal): void {
  try {
    Deno.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** What /proc says about a process. */
export interface ProcInfo {
  /** One-letter state (R, S, D, Z, T, ...). */
  state: string;
  /** Parent pid. */
  ppid: number;
  /** Start time in clock ticks since boot; tells a reused pid apart. */
  startTime: string;
  /** Executable name (comm). */
  comm: string;
}

/** Reads /proc/<pid>/stat; undefined when the process does not exist. */
export function procInfo(pid: number): ProcInfo | undefined {
  let text: string;
  try {
    text = Deno.readTextFileSync(`/proc/${pid}/stat`);
  } catch {
    return undefined;
  }
  const open = text.indexOf("(");
  const close = text.lastIndexOf(")");
  const rest = text.slice(close + 2).split(" ");
  // rest[0] is field 3 (state); field 4 is ppid; field 22 is starttime.
  return {
    comm: text.slice(open + 1, close),
    state: rest[0],
    ppid: Number(rest[1]),
    startTime: rest[19],
  };
}

/** True when `pid` runs and is not a zombie (and, if given, started at `startTime`). */
export function isAlive(pid: number, startTime?: string): boolean {
  const info = procInfo(pid);
  if (!info || info.state === "Z" || info.state === "X") return false;
  return startTime === undefined || info.startTime === startTime;
}

/** The direct children of `pid`, with their start times. */
export function childrenOf(pid: number): { pid: number; startTime: string }[] {
  const found: { pid: number; startTime: string }[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    const info = procInfo(Number(entry.name));
    if (info?.ppid === pid) found.push({ pid: Number(entry.name), startTime: info.startTime });
  }
  return found;
}

/** The working directory of `pid`; null when it is gone, a zombie, or not ours to look at. */
export function cwdOf(pid: number): string | null {
  try {
    return Deno.readLinkSync(`/proc/${pid}/cwd`);
  } catch {
    return null;
  }
}

/**
 * The live (not zombie) processes whose working directory is `dir`, a canonical path.
 * PostgreSQL's postmaster changes into its data directory and its children inherit that,
 * so for a data directory these are its server's processes, whoever started them.
 */
export function processesIn(dir: string): (ProcInfo & { pid: number })[] {
  const found: (ProcInfo & { pid: number })[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    const pid = Number(entry.name);
    if (cwdOf(pid) !== dir) continue;
    const info = procInfo(pid);
    if (info && info.state !== "Z" && info.state !== "X") found.push({ pid, ...info });
  }
  return found;
}

/** `pid 12 (postgres, state S, parent 1), …` for messages. */
export function describeProcesses(procs: readonly (ProcInfo & { pid: number })[]): string {
  return procs.map((p) => `pid ${p.pid} (${p.comm}, state ${p.state}, parent ${p.ppid})`)
    .join(", ");
}

/**
 * Waits until every process in `procs` has exited (or is a zombie); after `graceMs`
 * the stragglers get SIGKILL.
 */
export async function waitGone(
  procs: readonly { pid: number; startTime: string }[],
  graceMs = 5000,
): Promise<void> {
  const deadline = Date.now() + graceMs;
  let killed = false;
  while (procs.some((p) => isAlive(p.pid, p.startTime))) {
    if (!killed && Date.now() > deadline) {
      for (const p of procs) if (isAlive(p.pid, p.startTime)) signalPid(p.pid, "SIGKILL");
      killed = true;
    }
    await sleep(5);
  }
}

/** The last `lines` lines of `path` from byte `fromOffset` on ("" when unreadable). */
export async function logTail(path: string, fromOffset = 0, lines = 15): Promise<string> {
  try {
    const bytes = await Deno.readFile(path);
    const text = decoder.decode(bytes.subarray(Math.min(fromOffset, bytes.length)));
    return text.trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "";
  }
}

/** Size of `path` in bytes (0 when missing). */
export async function fileSize(path: string): Promise<number> {
  try {
    return (await Deno.stat(path)).size;
  } catch {
    return 0;
  }
}

/** A random lowercase hex string of `bytes` bytes. */
export function randomHex(bytes = 4): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(bytes)),
    (b) => b.toString(16).padStart(2, "0"),
  )
    .join("");
}

let postgresIds: { uid: number; gid: number } | undefined;

/** Makes `path` owned by the `postgres` OS user when we are root (no-op otherwise). */
export async function chownPostgres(path: string): Promise<void> {
  if (!IS_ROOT) return;
  if (!postgresIds) {
    const line = (await Deno.readTextFile("/etc/passwd")).split("\n")
      .find((l) => l.startsWith("postgres:"));
    if (!line) {
      throw new HarnessError("COMMAND_FAILED", "Cannot run PostgreSQL as root: no `postgres` user");
    }
    const fields = line.split(":");
    postgresIds = { uid: Number(fields[2]), gid: Number(fields[3]) };
  }
  await Deno.chown(path, postgresIds.uid, postgresIds.gid);
}
