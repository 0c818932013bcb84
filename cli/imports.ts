/**
 * The import check of `deno task check`: reads the module graph of every TypeScript file
 * in the repository from `deno info --json` and refuses any import cycle and any import
 * that crosses a layer the wrong way (docs/architecture.md states the rules; {@linkcode
 * RULES} is their code). Type-only imports (`import type`) are told apart from value
 * imports, because some layers may see another layer's types but never run its code.
 *
 * ```sh
 * deno run --allow-read --allow-run cli/imports.ts [--root <dir>]
 * ```
 *
 * Exit codes: 0 clean, 1 violations (one line each on stderr), 2 the graph could not be read.
 * @module
 */
import { parseArgs } from "node:util";

/** One import of one module by another, both as paths relative to the root. */
export interface ImportEdge {
  /** Importing module, e.g. `api/sync.ts`. */
  from: string;
  /** Imported module: a relative path, or `npm:<name>` / `node:<name>` for packages. */
  to: string;
  /** `type` when only types are imported (`import type`), else `code`. */
  kind: "code" | "type";
}

/** A layer rule: which imports a folder may make. */
export interface ImportRule {
  /** The sentence printed with each violation. */
  rule: string;
  /** True when the rule applies to imports made by this module. */
  applies(from: string): boolean;
  /** True when this import breaks the rule. */
  breaks(edge: ImportEdge): boolean;
}

/** True when `path` lies in one of the folders (given with their trailing slash). */
function inside(path: string, ...folders: string[]): boolean {
  return folders.some((f) => path.startsWith(f));
}

/** A local module (not a package). */
function local(to: string): boolean {
  return !to.startsWith("npm:") && !to.startsWith("node:");
}

/** The package name of an `npm:` specifier (`npm:xstate@^5` → `xstate`, scopes kept). */
function npmName(to: string): string {
  const rest = to.slice("npm:".length);
  const at = rest.indexOf("@", rest.startsWith("@") ? 1 : 0);
  return (at < 0 ? rest : rest.slice(0, at)).split("/").slice(0, rest.startsWith("@") ? 2 : 1)
    .join("/");
}

/** Modules that may import anything (they exercise or demonstrate the rest). */
const FREE = ["tests/", "bench/", "examples/"];

/** The database and Redis drivers: whoever imports one as a value can open connections. */
const DRIVERS = ["postgres", "ioredis", "@electric-sql/pglite", "@electric-sql/pglite-socket"];

/** The layer rules, in the order docs/architecture.md lists them. */
export const RULES: readonly ImportRule[] = [
  {
    rule: "machines/ imports only xstate and other machines/ files (machines are pure)",
    applies: (from) => inside(from, "machines/"),
    breaks: (e) =>
      local(e.to) ? !inside(e.to, "machines/") : !(e.to.startsWith("npm:") && npmName(e.to) ===
          "xstate"),
  },
  {
    rule: "lib/ imports only lib/ (and packages): it is the bottom layer",
    applies: (from) => inside(from, "lib/"),
    breaks: (e) => local(e.to) && !inside(e.to, "lib/"),
  },
  {
    rule: "store/ imports only lib/ and store/: data access knows nothing of actors, routes " +
      "or composition",
    applies: (from) => inside(from, "store/"),
    breaks: (e) => local(e.to) && !inside(e.to, "lib/", "store/"),
  },
  {
    rule: "actors/ imports only machines/, store/, lib/ and actors/: effects never see " +
      "routes or the composition root",
    applies: (from) => inside(from, "actors/"),
    breaks: (e) => local(e.to) && !inside(e.to, "machines/", "store/", "lib/", "actors/"),
  },
  {
    rule: "api/ and console/ import values only from lib/, api/ and console/; from actors/, " +
      "store/ and machines/ only types (routes depend on service types, not on effects)",
    applies: (from) => inside(from, "api/", "console/"),
    breaks: (e) =>
      local(e.to) && !inside(e.to, "lib/", "api/", "console/") &&
      !(e.kind === "type" && inside(e.to, "actors/", "store/", "machines/")),
  },
  {
    rule: "only concerns/ (and tests) import api/: concerns/ is the one place that joins " +
      "actors and routes",
    applies: (from) => !inside(from, "api/", "concerns/", "console/", ...FREE),
    breaks: (e) => inside(e.to, "api/"),
  },
  {
    rule: "nothing below the entry points imports them (main.ts, mod.ts, runtime.ts) or cli/",
    applies: (from) => inside(from, "machines/", "lib/", "store/", "actors/", "api/", "console/"),
    breaks: (e) =>
      ["main.ts", "mod.ts", "runtime.ts"].includes(e.to) || inside(e.to, "cli/", "concerns/"),
  },
  {
    rule: "only store/ imports the database and Redis drivers (postgres, ioredis, PGlite) as " +
      "values: connections are opened in store/; elsewhere only their types",
    applies: (from) => !inside(from, "store/", ...FREE),
    breaks: (e) => e.kind === "code" && e.to.startsWith("npm:") && DRIVERS.includes(npmName(e.to)),
  },
];

/** Every import cycle among local modules, each as the list of modules around it. */
export function findCycles(edges: readonly ImportEdge[]): string[][] {
  const next = new Map<string, string[]>();
  for (const e of edges) {
    if (!local(e.to)) continue;
    const list = next.get(e.from) ?? [];
    if (!list.includes(e.to)) list.push(e.to);
    next.set(e.from, list);
  }
  for (const list of next.values()) list.sort();
  // Tarjan's strongly connected components: a component of more than one module, or a
  // module importing itself, is a cycle.
  let index = 0;
  const indices = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[][] = [];
  function visit(v: string): void {
    indices.set(v, index);
    low.set(v, index);
    index++;
    stack.push(v);
    onStack.add(v);
    for (const w of next.get(v) ?? []) {
      if (!indices.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, indices.get(w)!));
      }
    }
    if (low.get(v) === indices.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1 || (next.get(v) ?? []).includes(v)) cycles.push(component.sort());
    }
  }
  for (const v of [...next.keys()].sort()) if (!indices.has(v)) visit(v);
  return cycles;
}

/** Every violation of `rules` and every cycle in `edges`, one sentence each. */
export function checkImports(
  edges: readonly ImportEdge[],
  rules: readonly ImportRule[] = RULES,
): string[] {
  const out: string[] = [];
  for (const e of edges) {
    // One sentence per import: the first rule it breaks.
    const r = rules.find((r) => r.applies(e.from) && r.breaks(e));
    if (r) {
      out.push(`${e.from} imports ${e.kind === "type" ? "types from " : ""}${e.to}: ${r.rule}`);
    }
  }
  for (const cycle of findCycles(edges)) {
    out.push(`import cycle: ${cycle.join(" → ")} (no circular imports, types included)`);
  }
  return out;
}

/** The shape of `deno info --json` this module reads. */
interface DenoInfo {
  modules: {
    specifier: string;
    dependencies?: {
      specifier: string;
      code?: { specifier?: string };
      type?: { specifier?: string };
    }[];
  }[];
}

/** The TypeScript files under `root`, relative, skipping hidden folders and node_modules. */
async function sourceFiles(root: string, dir = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(`${root}/${dir}`)) {
    const path = `${dir}${entry.name}`;
    if (entry.name.startsWith(".") || entry.name === "node_modules") continue;
    if (entry.isDirectory) out.push(...await sourceFiles(root, `${path}/`));
    else if (entry.isFile && /\.(ts|tsx|mts)$/.test(entry.name)) out.push(path);
  }
  return out.sort();
}

/**
 * The import graph of every TypeScript file under `root`, from one `deno info --json` run on
 * a module that imports them all (so files no entry point reaches are checked too).
 */
export async function readImportGraph(root: string): Promise<ImportEdge[]> {
  const base = new URL(`file://${root.replace(/\/*$/, "/")}`);
  const files = await sourceFiles(root);
  const entry = files.map((f) => `import ${JSON.stringify(new URL(f, base).href)};`).join("\n");
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", `data:application/typescript,${encodeURIComponent(entry)}`],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`deno info failed: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  const info = JSON.parse(new TextDecoder().decode(out.stdout)) as DenoInfo;
  function name(specifier: string): string | null {
    if (specifier.startsWith(base.href)) {
      return decodeURIComponent(specifier.slice(base.href.length));
    }
    if (specifier.startsWith("npm:") || specifier.startsWith("node:")) return specifier;
    return null; // data: root, remote or outside the root: not ours to judge
  }
  const edges: ImportEdge[] = [];
  for (const m of info.modules) {
    const from = name(m.specifier);
    if (!from || !local(from)) continue;
    for (const d of m.dependencies ?? []) {
      const target = d.code?.specifier ?? d.type?.specifier;
      const to = target ? name(target) : null;
      if (to) edges.push({ from, to, kind: d.code?.specifier ? "code" : "type" });
    }
  }
  return edges;
}

/** Runs the check on `--root` (default: this repository); returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { root: { type: "string" } } });
  const root = values.root ?? new URL("..", import.meta.url).pathname;
  let edges: ImportEdge[];
  try {
    edges = await readImportGraph(root.replace(/\/+$/, ""));
  } catch (err) {
    console.error(`cannot read the import graph: ${err instanceof Error ? err.message : err}`);
    return 2;
  }
  const problems = checkImports(edges);
  for (const p of problems) console.error(p);
  if (problems.length) {
    console.error(`${problems.length} import rule violations (docs/architecture.md)`);
    return 1;
  }
  return 0;
}

if (import.meta.main) Deno.exitCode = await main(Deno.args);
