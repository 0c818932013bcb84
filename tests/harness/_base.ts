/**
 * Private: the per-process base directory of the harness, the sweep of leftovers from
 * test processes that died, and the last-resort `unload` kill of undisposed servers.
 *
 * Layout: `HARNESS_ROOT/<deno pid>-<random>/` holds an `owner` file (pid and start time
 * of the owning process) and one sub-directory per server, each with a `server.pid`
 * file naming the server's process. `HARNESS_ROOT/template-<key>/` is the shared initdb
 * template (never removed automatically; delete it to reclaim ~40 MB).
 * @module
 */
import { isAlive, procInfo, randomHex, signalPid, waitGone } from "./_process.ts";

const TMP_ROOT = "/tmp/rs-harness";
const SHM_ROOT = "/dev/shm/rs-harness";

/**
 * Parent of every harness base directory: `RS_HARNESS_DIR` if set, else /dev/shm when it
 * is a tmpfs of at least 2 GiB (3-5x faster server start-up than disk when the machine
 * is busy), else /tmp.
 */
export const HARNESS_ROOT: string = harnessRoot();

function harnessRoot(): string {
  try {
    const fromEnv = Deno.env.get("RS_HARNESS_DIR");
    if (fromEnv) return fromEnv;
  } catch {
    // no --allow-env
  }
  try {
    const shm = Deno.readTextFileSync("/proc/mounts").split("\n")
      .map((line) => line.split(" "))
      .find((fields) => fields[1] === "/dev/shm" && fields[2] === "tmpfs");
    const sizeKiB = Number(/(?:^|,)size=(\d+)k(?:,|$)/.exec(shm?.[3] ?? "")?.[1] ?? 0);
    if (sizeKiB >= 2 * 1024 * 1024) return SHM_ROOT;
  } catch {
    // not Linux, or /proc unreadable
  }
  return TMP_ROOT;
}

/** A running server the unload listener must kill if the test never disposed it. */
export interface Tracked {
  /** Synchronously SIGKILLs the server's process if it still runs. */
  emergencyKill(): void;
}

const live = new Set<Tracked>();
let basePromise: Promise<string> | undefined;
let baseDirPath: string | undefined;

/** Registers a server for the unload kill. */
export function track(server: Tracked): void {
  live.add(server);
}

/** Unregisters a server once it is disposed. */
export function untrack(server: Tracked): void {
  live.delete(server);
}

/** This process's base directory, created (after sweeping leftovers) on first use. */
export function baseDir(): Promise<string> {
  basePromise ??= createBaseDir().catch((err) => {
    basePromise = undefined;
    throw err;
  });
  return basePromise;
}

/** Creates a fresh, uniquely named server directory under the base directory. */
export async function serverDir(prefix: string): Promise<string> {
  const dir = `${await baseDir()}/${prefix}-${randomHex(3)}`;
  await Deno.mkdir(dir, { mode: 0o755 });
  return dir;
}

async function createBaseDir(): Promise<string> {
  await Deno.mkdir(HARNESS_ROOT, { recursive: true });
  // Shared by root and ordinary users, like /tmp; only the owner can chmod it.
  await Deno.chmod(HARNESS_ROOT, 0o1777).catch(() => {});
  await sweepLeftovers();
  const dir = `${HARNESS_ROOT}/${Deno.pid}-${randomHex(4)}`;
  await Deno.mkdir(dir);
  // The postgres OS user must be able to traverse it, whatever the umask.
  await Deno.chmod(dir, 0o755);
  await Deno.writeTextFile(`${dir}/owner`, `${Deno.pid} ${procInfo(Deno.pid)?.startTime ?? ""}\n`);
  baseDirPath = dir;
  globalThis.addEventListener("unload", onUnload);
  return dir;
}

function onUnload(): void {
  for (const server of live) server.emergencyKill();
  live.clear();
  if (baseDirPath) {
    try {
      Deno.removeSync(baseDirPath, { recursive: true });
    } catch {
      // a later sweep removes it
    }
  }
}

/** Kills the servers of base directories whose owning process is gone, then removes them. */
export async function sweepLeftovers(): Promise<void> {
  for (const root of new Set([HARNESS_ROOT, TMP_ROOT, SHM_ROOT])) await sweepRoot(root);
}

async function sweepRoot(root: string): Promise<void> {
  for (const entry of readDirSafe(root)) {
    if (!entry.isDirectory) continue;
    const dir = `${root}/${entry.name}`;
    // An unfinished shared template (see postgres.ts) of a process that died.
    const unfinished = /^template-[0-9a-f]+\.tmp-(\d+)-/.exec(entry.name);
    if (unfinished && !isAlive(Number(unfinished[1]))) {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      continue;
    }
    const match = /^(\d+)-[0-9a-f]+$/.exec(entry.name);
    if (!match || ownerAlive(dir, Number(match[1]))) continue;
    const victims: { pid: number; startTime: string }[] = [];
    for (const sub of readDirSafe(dir)) {
      if (!sub.isDirectory) continue;
      for (
        const pidFile of [`${dir}/${sub.name}/server.pid`, `${dir}/${sub.name}/data/postmaster.pid`]
      ) {
        const pid = Number(readTextSafe(pidFile)?.split("\n")[0]);
        const info = pid > 0 ? procInfo(pid) : undefined;
        if (info && /^(postgres|redis-server)$/.test(info.comm) && isAlive(pid)) {
          signalPid(pid, "SIGKILL");
          victims.push({ pid, startTime: info.startTime });
        }
      }
    }
    await waitGone(victims, 2000);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

function ownerAlive(dir: string, pidFromName: number): boolean {
  const owner = readTextSafe(`${dir}/owner`);
  if (owner === undefined) return isAlive(pidFromName);
  const [pid, startTime] = owner.trim().split(" ");
  return isAlive(Number(pid), startTime || undefined);
}

function readDirSafe(dir: string): Deno.DirEntry[] {
  try {
    return Array.from(Deno.readDirSync(dir));
  } catch {
    return [];
  }
}

function readTextSafe(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return undefined;
  }
}
