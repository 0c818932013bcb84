/**
 * `deno task cli grafana write`: writes the Grafana provisioning of the runtime's dashboards
 * (actors/metrics/grafana.ts) to deploy/grafana/; `deno task cli grafana check` writes nothing
 * and exits 1 naming each file that is missing or differs (tests/metrics/grafana_test.ts runs
 * the same comparison).
 *
 * @example
 * ```sh
 * deno task cli grafana write
 * ```
 * @module
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { DASHBOARDS } from "../actors/metrics/dashboards.ts";
import { grafanaFiles } from "../actors/metrics/grafana.ts";

/** deploy/grafana/ of this checkout. */
export const GRAFANA_DIR: string = fileURLToPath(new URL("../deploy/grafana/", import.meta.url));

/** Files under `dir` that are missing or differ from what would be written. */
export async function staleGrafanaFiles(dir = GRAFANA_DIR): Promise<string[]> {
  const stale: string[] = [];
  for (const [path, text] of grafanaFiles(DASHBOARDS)) {
    const current = await Deno.readTextFile(join(dir, path)).catch(() => null);
    if (current !== text) stale.push(path);
  }
  return stale;
}

/** Runs `grafana write|check`; returns the exit code. */
export async function runGrafanaCli(args: string[], dir = GRAFANA_DIR): Promise<number> {
  const [command] = args;
  if (command === "check") {
    const stale = await staleGrafanaFiles(dir);
    for (const path of stale) console.error(`stale: deploy/grafana/${path}`);
    return stale.length ? 1 : 0;
  }
  if (command === "write") {
    for (const [path, text] of grafanaFiles(DASHBOARDS)) {
      await Deno.mkdir(dirname(join(dir, path)), { recursive: true });
      await Deno.writeTextFile(join(dir, path), text);
    }
    console.error(`wrote the Grafana provisioning to ${dir}`);
    return 0;
  }
  console.error("usage: deno task cli grafana write|check");
  return 2;
}
