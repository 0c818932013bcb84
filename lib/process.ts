/**
 * Whether a pid read from a pid file still names the process that wrote it. A process killed
 * with SIGKILL leaves its pid file behind, and pids are reused (pid_max is 32,768 on many
 * hosts): a live process with that pid may be any other one. Linux /proc only.
 * @module
 */

/** Clock ticks per second of /proc/<pid>/stat's start time (USER_HZ: 100 on Linux). */
const USER_HZ = 100;

/** When `pid` started (epoch ms), or null when it does not run (or is a zombie). */
export function processStartMs(pid: number): number | null {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (fields[0] === "Z" || fields[0] === "X") return null;
    const ticks = Number(fields[19]); // field 22, starttime
    const bootS = Number(/^btime (\d+)$/m.exec(Deno.readTextFileSync("/proc/stat"))?.[1]);
    if (!Number.isFinite(ticks) || !bootS) return null;
    return bootS * 1000 + (ticks * 1000) / USER_HZ;
  } catch {
    return null;
  }
}

/** True when `pid` runs and started within 2 s of `startedAtMs` (epoch ms). */
export function isProcessStartedAt(pid: number, startedAtMs: number): boolean {
  const started = processStartMs(pid);
  return started !== null && Math.abs(started - startedAtMs) <= 2000;
}
