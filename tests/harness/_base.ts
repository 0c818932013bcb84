/**
 * Private: the per-process base directory of the harness, the sweep of leftovers from
 * test processes that died, and the last-resort `unload` kill of undisposed servers.
 *
 * Layout: `/tmp/rs-harness/<deno pid>-<random>/` holds an `owner` file (pid and start
 * time of the owning process) and one sub-directory per server, each with a
 * `server.pid` file naming the server's process.
 * @module
 */
import { isAlive, procInfo, randomHex, signalPid, waitGone } from "./_process.ts";

/** Parent of every harness base directory. */
export const HARNESS_ROOT = "/tmp/rs-harness";

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
  let entries: Deno.DirEntry[];
  try {
    entries = Array.from(Deno.readDirSync(HARNESS_ROOT));
  } catch {
    return;
  }
  for (const entry of entries) {
    const match = /^(\d+)-[0-9a-f]+$/.exec(entry.name);
    if (!entry.isDirectory || !match) continue;
    const dir = `${HARNESS_ROOT}/${entry.name}`;
    if (ownerAlive(dir, Number(match[1]))) continue;
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
