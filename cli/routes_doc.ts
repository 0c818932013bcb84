/**
 * Writes the route table of docs/security.md (between `<!-- routes:begin -->` and
 * `<!-- routes:end -->`) from the routes' declarations (concerns/routes.ts), through the
 * same OpenAPI document `/openapi.json` serves, so the table cannot drift from what the
 * guard enforces. `--check` exits 1 when the committed table is stale (part of
 * `deno task check`).
 * @module
 */
import { routeTableMarkdown } from "../concerns/routes.ts";
import { formatMarkdown } from "./_markdown.ts";

const BEGIN = "<!-- routes:begin -->";
const END = "<!-- routes:end -->";

/** docs/security.md with the route table between its markers replaced by the current one. */
export function withRouteTable(markdown: string): string {
  const start = markdown.indexOf(BEGIN);
  const end = markdown.indexOf(END);
  if (start < 0 || end < start) {
    throw new Error(`docs/security.md needs the markers ${BEGIN} and ${END}`);
  }
  const table = routeTableMarkdown();
  return `${markdown.slice(0, start + BEGIN.length)}\n\n${table}\n\n${markdown.slice(end)}`;
}

/** Writes (or with `--check` verifies) the route table; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const path = new URL("../docs/security.md", import.meta.url);
  const current = await Deno.readTextFile(path);
  const text = await formatMarkdown(withRouteTable(current));
  if (args.includes("--check")) {
    if (current.trim() !== text.trim()) {
      console.error(
        "docs/security.md's route table is stale: run deno run -A cli/routes_doc.ts",
      );
      return 1;
    }
    return 0;
  }
  await Deno.writeTextFile(path, text);
  return 0;
}

if (import.meta.main) Deno.exitCode = await main(Deno.args);
