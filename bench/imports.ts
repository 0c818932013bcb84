/**
 * `deno task bench imports`: what importing each lazily loaded package costs in resident
 * memory (docs/scaling.md). Each repetition is a fresh `deno run` child that reads its own
 * VmRSS (`/proc/self/status`), imports the package (or nothing: the baseline, the same
 * child and the same two reads), runs a full GC, and reads VmRSS again; the figure is the
 * median growth over `BENCH_REPS` children (default 5). The baseline's own RSS at its first
 * read is reported too (the `deno` binary and runtime before any project code).
 *
 * ```sh
 * deno task bench imports
 * ```
 * @module
 */
import { type Figure, median, progress, round } from "./_util.ts";

/** The packages the runtime loads on first use instead of at start. */
const PACKAGES: Record<string, () => Promise<unknown>> = {
  none: () => Promise.resolve(),
  "@simplewebauthn/server": () => import("@simplewebauthn/server"),
  nodemailer: () => import("nodemailer"),
  "@viz-js/viz": () => import("@viz-js/viz"),
};

function rssKb(): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(Deno.readTextFileSync("/proc/self/status"));
  if (!m) throw new Error("no VmRSS in /proc/self/status");
  return Number(m[1]);
}

/** The child: prints {before, after} in kB. */
async function child(name: string): Promise<void> {
  const load = PACKAGES[name];
  if (!load) throw new Error(`unknown package ${name}`);
  const gc = (globalThis as { gc?: () => void }).gc!;
  gc();
  const before = rssKb();
  await load();
  gc();
  console.log(JSON.stringify({ before, after: rssKb() }));
}

async function measure(name: string): Promise<{ before: number; after: number }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--v8-flags=--expose-gc", import.meta.filename!, "--child", name],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`the ${name} child exited with code ${out.code}`);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

/** The suite. */
export async function run(): Promise<Figure[]> {
  const reps = Number(Deno.env.get("BENCH_REPS") ?? 5);
  const growth: Record<string, number[]> = {};
  const bare: number[] = [];
  for (let i = 0; i < reps; i++) {
    for (const name of Object.keys(PACKAGES)) {
      const { before, after } = await measure(name);
      (growth[name] ??= []).push((after - before) / 1024);
      if (name === "none") bare.push(before / 1024);
    }
    progress(`imports: repetition ${i + 1}/${reps}`);
  }
  const baseline = { name: "import_nothing_rss_mb", value: round(median(growth.none), 1) };
  return [
    {
      suite: "imports",
      name: "bare_child_rss_mb",
      unit: "MB",
      value: round(median(bare), 1),
      better: "lower",
      baseline: null,
    },
    ...Object.keys(PACKAGES).filter((n) => n !== "none").map((name): Figure => ({
      suite: "imports",
      name: `import_${name.replace(/^@/, "").replace(/[^a-z0-9]+/g, "_")}_rss_mb`,
      unit: "MB",
      value: round(median(growth[name]), 1),
      better: "lower",
      baseline,
    })),
  ];
}

if (import.meta.main && Deno.args[0] === "--child") await child(Deno.args[1]);
