/**
 * `deno task charts`: draws every machine listed in `machines/mod.ts` to
 * `docs/charts/<name>.svg` and `docs/charts/<name>.mmd`, and removes the chart files of
 * machines no longer listed. Progress goes to stderr, one line per chart.
 *
 * `--check` writes nothing; it exits 1 listing every chart file that is missing, differs
 * from what would be generated, or belongs to no machine, and 0 when all are current.
 * `--out <dir>` and `--machines <module>` point it elsewhere (tests use a temp dir and
 * their own machines). Exit 2 means bad arguments or a machines module that cannot load.
 *
 * `--diff <git ref>` compares the machines at that ref with the working tree: for every
 * machine that changed it writes `<out>/<name>.diff.svg` (added states and transitions green,
 * removed ones red, dashed and struck through, changed guards/actions orange with what they
 * were) and `<out>/summary.md`, a markdown summary for a pull-request comment, which it also
 * prints to stdout. `<out>` defaults to `.rootstream/chart-diff/` under the working directory.
 *
 * @example
 * ```sh
 * deno task charts                                   # regenerate docs/charts/
 * deno run --allow-read cli/charts.ts --check         # CI: fail on stale charts
 * deno task charts --diff main > comment.md           # what this branch did to the charts
 * ```
 * @module
 */
import { parseArgs } from "node:util";
import { dirname, isAbsolute, join, relative, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { z } from "zod";
import type { AnyStateMachine } from "xstate";
import { diffCharts, diffMarkdown, renderSvg, toMermaid } from "../lib/charts.ts";

/** What `generateCharts` needs. */
export interface ChartsOptions {
  /** Machines by chart name; each becomes `<name>.svg` and `<name>.mmd`. */
  machines: Record<string, AnyStateMachine>;
  /** Directory the charts live in. */
  outDir: string;
  /** Compare only; write and remove nothing. */
  check?: boolean;
  /** Receives one progress line per chart (default: stderr). */
  log?: (line: string) => void;
}

/** A chart file that does not match what would be generated. */
export interface StaleChart {
  /** The file, as displayed (relative to the working directory when inside it). */
  path: string;
  /** missing: not there; differs: other content; orphaned: no machine of that name. */
  problem: "missing" | "differs" | "orphaned";
}

/** What a run did (or, with `check`, would do). */
export interface ChartsReport {
  /** Files written. */
  written: string[];
  /** Files already current. */
  unchanged: string[];
  /** Chart files of machines no longer listed, removed. */
  removed: string[];
  /** Check mode: files out of date. */
  stale: StaleChart[];
}

const CHART_NAME = /^[A-Za-z0-9][A-Za-z0-9_-]*$/;
const CHART_FILE = /^(.+)\.(svg|mmd)$/;

const machineSchema = z.custom<AnyStateMachine>(
  (value) =>
    !!value && typeof value === "object" && "root" in value && "id" in value &&
    typeof (value as { transition?: unknown }).transition === "function",
  { message: "expected an XState machine" },
);
const machinesSchema = z.record(
  z.string().regex(CHART_NAME, "chart names are letters, digits, - and _"),
  machineSchema,
);

/** Shows a path relative to the working directory when it lies inside it. */
function display(path: string): string {
  const rel = relative(Deno.cwd(), path);
  return rel && !rel.startsWith("..") && !isAbsolute(rel) ? rel : path;
}

async function readOrNull(path: string): Promise<string | null> {
  try {
    return await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
}

async function listChartFiles(dir: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (entry.isFile && CHART_FILE.test(entry.name)) names.push(entry.name);
    }
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return [];
    throw err;
  }
  return names.sort();
}

function stderrLine(line: string): void {
  console.error(line);
}

/** Renders every machine's charts into `outDir` (or, with `check`, compares against it). */
export async function generateCharts(options: ChartsOptions): Promise<ChartsReport> {
  const log = options.log ?? stderrLine;
  const report: ChartsReport = { written: [], unchanged: [], removed: [], stale: [] };
  const names = Object.keys(options.machines).sort();
  for (const name of names) {
    const started = performance.now();
    const files = [
      { ext: "svg", text: await renderSvg(options.machines[name]) },
      { ext: "mmd", text: toMermaid(options.machines[name]) },
    ];
    const ms = (performance.now() - started).toFixed(1);
    const states: string[] = [];
    for (const { ext, text } of files) {
      const path = join(options.outDir, `${name}.${ext}`);
      const current = await readOrNull(path);
      if (current === text) {
        report.unchanged.push(display(path));
        states.push(`${ext} current`);
      } else if (options.check) {
        const problem = current === null ? "missing" : "differs";
        report.stale.push({ path: display(path), problem });
        states.push(`${ext} ${problem === "missing" ? "missing" : "stale"}`);
      } else {
        await Deno.mkdir(options.outDir, { recursive: true });
        await Deno.writeTextFile(path, text);
        report.written.push(display(path));
        states.push(`${ext} written`);
      }
    }
    log(`chart ${name}: ${states.join(", ")} (rendered in ${ms} ms)`);
  }
  const listed = new Set(names);
  for (const file of await listChartFiles(options.outDir)) {
    const base = file.match(CHART_FILE)![1];
    if (listed.has(base)) continue;
    const path = join(options.outDir, file);
    if (options.check) {
      report.stale.push({ path: display(path), problem: "orphaned" });
    } else {
      await Deno.remove(path);
      report.removed.push(display(path));
      log(`chart ${base}: removed ${display(path)}, no machine of that name is listed`);
    }
  }
  return report;
}

function staleLine(stale: StaleChart): string {
  const what = stale.problem === "missing"
    ? "is missing"
    : stale.problem === "differs"
    ? "is stale"
    : "belongs to no machine";
  return `${stale.path} ${what}: run deno task charts`;
}

const USAGE =
  "Usage: deno task charts [--check | --diff <git ref>] [--out <dir>] [--machines <module>]";

const argsSchema = z.object({
  check: z.boolean().optional(),
  help: z.boolean().optional(),
  out: z.string().min(1).optional(),
  machines: z.string().min(1).optional(),
  diff: z.string().min(1).refine((ref) => !ref.startsWith("-"), "a git ref, not an option")
    .optional(),
});

/** Runs git in `cwd`; resolves to its stdout, or throws with its stderr. */
async function git(cwd: string, args: string[]): Promise<Uint8Array> {
  const out = await new Deno.Command("git", { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim();
    throw new Error(`git ${args[0]} failed: ${err || `exit ${out.code}`}`);
  }
  return out.stdout;
}

/**
 * Copies the machines module's folder as it was at `ref` into a temporary directory and
 * loads it there (machines import only xstate and each other, so the folder is enough).
 * A ref where the module does not exist yet has no machines.
 */
async function machinesAtRef(
  modulePath: string,
  ref: string,
  tmp: string,
): Promise<Record<string, AnyStateMachine>> {
  const moduleFile = fileURLToPath(modulePath);
  const cwd = dirname(moduleFile);
  const top = new TextDecoder().decode(await git(cwd, ["rev-parse", "--show-toplevel"])).trim();
  await git(cwd, ["rev-parse", "--verify", "--quiet", "--end-of-options", `${ref}^{commit}`])
    .catch(() => {
      throw new Error(`${ref} names no commit`);
    });
  const rel = relative(top, moduleFile);
  const folder = dirname(rel);
  const listed = new TextDecoder().decode(
    await git(top, ["ls-tree", "-r", "-z", "--name-only", "--end-of-options", ref, "--", folder]),
  ).split("\0").filter(Boolean);
  if (!listed.includes(rel)) return {};
  for (const file of listed) {
    const text = await git(top, ["show", `${ref}:${file}`]);
    await Deno.mkdir(dirname(join(tmp, file)), { recursive: true });
    await Deno.writeFile(join(tmp, file), text);
  }
  return await loadMachines(pathToFileURL(join(tmp, rel)).href);
}

/** `--diff`: writes a diff SVG per changed machine and summary.md; prints the summary. */
async function writeDiffs(
  ref: string,
  before: Record<string, AnyStateMachine>,
  after: Record<string, AnyStateMachine>,
  outDir: string,
): Promise<void> {
  await Deno.mkdir(outDir, { recursive: true });
  for await (const entry of Deno.readDir(outDir)) {
    if (entry.isFile && (entry.name.endsWith(".diff.svg") || entry.name === "summary.md")) {
      await Deno.remove(join(outDir, entry.name));
    }
  }
  const names = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort();
  const sections: string[] = [];
  for (const name of names) {
    const result = await diffCharts(before[name] ?? null, after[name] ?? null, {
      subtitle: `changes since ${ref}`,
    });
    if (!result) {
      console.error(`chart ${name}: unchanged since ${ref}`);
      continue;
    }
    const file = `${name}.diff.svg`;
    await Deno.writeTextFile(join(outDir, file), result.svg);
    const what = !before[name] ? "new machine" : !after[name] ? "machine removed" : "changed";
    console.error(`chart ${name}: ${what}, ${display(join(outDir, file))} written`);
    sections.push(diffMarkdown(name, result.diff, file));
  }
  const summary = [
    `## Statechart changes since \`${ref}\``,
    "",
    sections.length
      ? `${sections.length} of ${names.length} machine(s) changed.`
      : `No machine changed (${names.length} compared).`,
    "",
    ...sections,
  ].join("\n").trimEnd() + "\n";
  await Deno.writeTextFile(join(outDir, "summary.md"), summary);
  console.log(summary);
}

async function loadMachines(specifier: string): Promise<Record<string, AnyStateMachine>> {
  const mod = await import(specifier);
  const parsed = machinesSchema.safeParse(mod.MACHINES);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue?.path.length ? ` at ${issue.path.join(".")}` : "";
    throw new Error(`MACHINES is not a record of machines${where}: ${issue?.message}`);
  }
  return parsed.data;
}

/** Runs the command with `args`; resolves to the exit code (0 ok, 1 stale, 2 usage/load). */
export async function main(args: string[]): Promise<number> {
  let flags: z.infer<typeof argsSchema>;
  try {
    const { values } = parseArgs({
      args,
      options: {
        check: { type: "boolean" },
        help: { type: "boolean", short: "h" },
        out: { type: "string" },
        machines: { type: "string" },
        diff: { type: "string" },
      },
      strict: true,
      allowPositionals: false,
    });
    flags = argsSchema.parse(values);
  } catch (err) {
    console.error(`Invalid arguments: ${err instanceof Error ? err.message : String(err)}`);
    console.error(USAGE);
    return 2;
  }
  if (flags.help) {
    console.error(USAGE);
    return 0;
  }
  if (flags.check && flags.diff) {
    console.error("Invalid arguments: --check and --diff do not go together");
    console.error(USAGE);
    return 2;
  }
  const outDir = flags.out
    ? resolve(flags.out)
    : fileURLToPath(new URL("../docs/charts/", import.meta.url));
  const modulePath = flags.machines
    ? pathToFileURL(resolve(flags.machines)).href
    : new URL("../machines/mod.ts", import.meta.url).href;
  let machines: Record<string, AnyStateMachine>;
  try {
    machines = await loadMachines(modulePath);
  } catch (err) {
    console.error(
      `Cannot load machines from ${display(fileURLToPath(modulePath))}: ${
        err instanceof Error ? err.message : String(err)
      }`,
    );
    return 2;
  }
  if (flags.diff) {
    const tmp = await Deno.makeTempDir({ prefix: "chart_diff_" });
    try {
      let before: Record<string, AnyStateMachine>;
      try {
        before = await machinesAtRef(modulePath, flags.diff, tmp);
      } catch (err) {
        console.error(
          `Cannot load machines at ${flags.diff}: ${err instanceof Error ? err.message : err}`,
        );
        return 2;
      }
      await writeDiffs(
        flags.diff,
        before,
        machines,
        resolve(flags.out ?? ".rootstream/chart-diff"),
      );
      return 0;
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  }
  const report = await generateCharts({ machines, outDir, check: flags.check });
  if (report.stale.length) {
    for (const stale of report.stale) console.error(staleLine(stale));
    console.error(`${report.stale.length} chart file(s) out of date`);
    return 1;
  }
  if (!Object.keys(machines).length) console.error("No machines listed; no charts to draw");
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
