/**
 * A control probe for liveness checks on a busy test host: a trivial HTTP server in its own
 * process. Probing it at the same moment as an instance tells load (both slow) from a
 * blocked event loop in the instance (only the instance slow).
 * @module
 */

/** A running control server. */
export interface ControlServer {
  /** Its URL (answers `ok` to anything). */
  url: string;
  /** Stops it. */
  stop(): Promise<void>;
}

/** Starts the control server. */
export async function startControl(): Promise<ControlServer> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      "Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: ({ port }) => " +
      "console.log(port) }, () => new Response('ok'));",
    ],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (!out.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the control server exited before listening");
    out += value;
  }
  return {
    url: `http://127.0.0.1:${out.trim()}`,
    async stop() {
      child.kill("SIGTERM");
      await child.status;
      await reader.cancel();
    },
  };
}

/** Milliseconds a GET of `url` takes, body included; throws unless it answers 200. */
export async function timedGet(url: string, timeoutMs = 30_000): Promise<number> {
  const t0 = performance.now();
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  await res.arrayBuffer();
  if (res.status !== 200) throw new Error(`${url} answered ${res.status}`);
  return performance.now() - t0;
}

/**
 * How much longer `url` took than the control, probed at the same moment (ms; negative when
 * it was faster).
 */
export async function excessOver(url: string, control: ControlServer): Promise<number> {
  const [probe, base] = await Promise.all([timedGet(url), timedGet(control.url)]);
  return probe - base;
}
