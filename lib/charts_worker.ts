/**
 * Graphviz (WASM) in a worker thread: a render takes from tens of milliseconds to seconds on
 * a busy host, and on the main thread it would stop every request meanwhile (the liveness
 * probe included). lib/charts.ts sends `{ id, dot }` and gets `{ id, svg }` or
 * `{ id, error }` back.
 * @module
 */
import { parentPort } from "node:worker_threads";
import { instance } from "@viz-js/viz";

const viz = instance();

parentPort?.on("message", async (msg: { id: number; dot: string }) => {
  try {
    const result = (await viz).render(msg.dot, { format: "svg" });
    if (result.status === "success") parentPort!.postMessage({ id: msg.id, svg: result.output });
    else {
      parentPort!.postMessage({
        id: msg.id,
        error: result.errors.map((e) => e.message).join("; "),
      });
    }
  } catch (err) {
    parentPort!.postMessage({
      id: msg.id,
      error: err instanceof Error ? err.message : String(err),
    });
  }
});
