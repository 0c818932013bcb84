/**
 * The short chaos soak (see tests/soak/soak.ts): a real cluster, the workload through the
 * HTTP API, faults at random seeded moments, and the history checked afterwards. The seed
 * is printed (and taken from SOAK_SEED when set) so a failure can be run again with
 * `deno task soak --seed S`.
 */
import assert from "node:assert/strict";
import { runSoak } from "./soak.ts";

// Opt-in (SOAK_SECONDS=N): .ci/run runs the short soak as a step of its own after the suite
// (`deno task soak --minutes 3 --min-faults 20`), not beside the suite's own load.
const enabled = Deno.env.get("SOAK_SECONDS") !== undefined;

Deno.test({
  name: "chaos soak (short): faults at random moments, no anomaly in the history",
  ignore: !enabled,
  fn: soak,
});

async function soak(): Promise<void> {
  const seed = Number(Deno.env.get("SOAK_SEED") ?? "") || Math.floor(Math.random() * 2 ** 31);
  const seconds = Number(Deno.env.get("SOAK_SECONDS") ?? "") || 30;
  console.log(`soak seed ${seed}, faults for ${seconds} s`);
  const result = await runSoak({ seconds, seed, log: (l) => console.log(`[soak] ${l}`) });
  for (const f of result.figures) console.log(JSON.stringify(f));
  assert.ok(result.faults.length >= 3, `only ${result.faults.length} faults were injected`);
  assert.ok(
    result.ops.some((o) => o.kind === "canary" && o.ok),
    "the workload got writes acknowledged",
  );
  assert.deepEqual(
    Object.fromEntries(Object.entries(result.anomalies).filter(([, list]) => list.length)),
    {},
    `anomalies with seed ${seed}`,
  );
}
