/**
 * Shared by the generated-docs scripts (cli/config_doc.ts, cli/routes_doc.ts).
 * @module
 */

/** Formats Markdown the way `deno fmt` (with this project's settings) would. */
export async function formatMarkdown(text: string): Promise<string> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["fmt", "--ext=md", "-"],
    cwd: new URL("..", import.meta.url).pathname,
    stdin: "piped",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const out = await child.output();
  return out.success ? new TextDecoder().decode(out.stdout) : text;
}
