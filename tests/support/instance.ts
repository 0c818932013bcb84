/**
 * Runs `main.ts` as a separate process, the way `deno task run` does, for tests that
 * need real signals, exit codes or several instances at once.
 * @module
 */

/** Repository root. */
export const ROOT: string = new URL("../..", import.meta.url).pathname;

/** A running instance process. */
export interface InstanceProcess {
  /** The child process. */
  child: Deno.ChildProcess;
  /** The URL it printed. */
  url: string;
  /** Everything it wrote to stderr so far. */
  stderr(): string;
  /** Sends a signal and waits for the exit status. */
  stop(signal?: Deno.Signal): Promise<Deno.CommandStatus>;
}

/** Starts `main.ts` with `env` and `args`; resolves once it printed the URL it serves. */
export async function launchInstance(
  env: Record<string, string>,
  args: string[] = [],
): Promise<InstanceProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "main.ts", ...args],
    cwd: ROOT,
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let err = "";
  const errDone = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) err += chunk;
  })();
  let out = "";
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const deadline = Date.now() + 60_000;
  while (!/serving (http:\/\/\S+)/.test(out)) {
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      await child.status;
      throw new Error(`no URL printed; stderr:\n${err}`);
    }
    const { value, done } = await reader.read();
    if (done) {
      await child.status;
      await errDone;
      throw new Error(`exited before serving; stderr:\n${err}`);
    }
    out += value;
  }
  const outDone = (async () => {
    while (!(await reader.read()).done) { /* drain so the child never blocks on a full pipe */ }
  })();
  let status: Promise<Deno.CommandStatus> | null = null;
  return {
    child,
    url: /serving (http:\/\/\S+)/.exec(out)![1],
    stderr: () => err,
    stop(signal: Deno.Signal = "SIGTERM") {
      status ??= (async () => {
        try {
          child.kill(signal);
        } catch { /* already gone */ }
        const s = await child.status;
        await Promise.all([outDone, errDone]);
        return s;
      })();
      return status;
    },
  };
}

/** Polls `check` every 50 ms until it returns true; rejects after `ms`. */
export async function until(
  check: () => boolean | Promise<boolean>,
  options: { ms?: number; what?: string } = {},
): Promise<void> {
  const deadline = Date.now() + (options.ms ?? 10_000);
  while (true) {
    try {
      if (await check()) return;
    } catch { /* not yet */ }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${options.what ?? "a condition"}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** GETs a URL and parses JSON. */
export async function getJson<T = Record<string, unknown>>(url: string): Promise<T> {
  const res = await fetch(url);
  return await res.json() as T;
}
