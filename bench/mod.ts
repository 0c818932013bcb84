/**
 * `deno task bench [suite...]`: runs the benchmark suites and prints one JSON object per
 * figure on stdout, nothing else (progress goes to stderr). Each suite is `bench/<name>.ts`
 * exporting `run(): Promise<Figure[]>`.
 * @module
 */
import type { Figure } from "./_util.ts";

/** Suites in the order they run when none is named. */
export const SUITES = [
  "runtime",
  "session",
  "sync",
  "backup",
  "failover",
  "metrics",
  "scale",
  "imports",
] as const;

async function exists(path: URL): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Runs the named suites (all available ones by default); returns the exit code. Arguments
 * from the first `--flag` on are the suites' options (`deno task bench scale --sizes 3,6`).
 */
export async function main(argv: string[]): Promise<number> {
  const firstFlag = argv.findIndex((a) => a.startsWith("--"));
  const args = firstFlag < 0 ? argv : argv.slice(0, firstFlag);
  const flags = firstFlag < 0 ? [] : argv.slice(firstFlag);
  const unknown = args.filter((a) => !(SUITES as readonly string[]).includes(a));
  if (unknown.length) {
    console.error(`Unknown suite(s): ${unknown.join(", ")}. Suites: ${SUITES.join(", ")}`);
    return 2;
  }
  const wanted = args.length ? args : [...SUITES];
  let failed = 0;
  for (const suite of wanted) {
    const file = new URL(`./${suite}.ts`, import.meta.url);
    if (!(await exists(file))) {
      console.error(`[bench] suite ${suite} is not implemented yet; skipped`);
      if (args.length) failed++;
      continue;
    }
    const mod = await import(file.href) as { run(flags: string[]): Promise<Figure[]> };
    try {
      for (const figure of await mod.run(flags)) console.log(JSON.stringify(figure));
    } catch (err) {
      failed++;
      console.error(`[bench] suite ${suite} failed: ${err instanceof Error ? err.stack : err}`);
    }
  }
  return failed ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
