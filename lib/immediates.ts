/**
 * A cleared immediate must not run. Under Deno 2.5 it can: an immediate cleared by an I/O
 * callback of the same event-loop turn in which its own turn came still fires (measured: 256
 * of 20,000 immediates cleared from a `Deno.stat` completion ran anyway). postgres.js relies
 * on `clearImmediate`: a short message arms an immediate to flush its write buffer, a message
 * of 1 KB or more flushes at once and clears it; the stale immediate then writes `null` to the
 * socket, and the TypeError it throws from a timer ended the process ("May not write null
 * values to stream", seen at start-up under load in about one launch in four).
 *
 * {@linkcode guardImmediates} wraps the global `setImmediate` / `clearImmediate` (the ones
 * npm packages call; `node:timers`' own exports are not changed) so that the callback of a
 * cleared immediate is skipped. main.ts installs it before anything is opened.
 * @module
 */

/** The two functions {@linkcode guardImmediates} wraps. */
export interface ImmediateHost {
  setImmediate(cb: (...args: unknown[]) => void, ...args: unknown[]): object;
  clearImmediate(handle: object | null | undefined): void;
}

const guarded = new WeakSet<object>();

/**
 * Makes `clearImmediate` final on `host` (default: the global ones npm packages call): the
 * callback of a cleared immediate is skipped even when the host runs it. Idempotent.
 */
export function guardImmediates(
  host: ImmediateHost = globalThis as unknown as ImmediateHost,
): void {
  if (guarded.has(host)) return;
  guarded.add(host);
  const cleared = new WeakSet<object>();
  const set = host.setImmediate;
  const clear = host.clearImmediate;
  host.setImmediate = function setImmediate(cb, ...args) {
    const handle: object = set.call(host, (...a: unknown[]) => {
      if (!cleared.has(handle)) cb(...a);
    }, ...args);
    return handle;
  };
  host.clearImmediate = function clearImmediate(handle) {
    if (handle !== null && typeof handle === "object") cleared.add(handle);
    clear.call(host, handle);
  };
}
