/**
 * Chart diffs on a fixture change (tests/fixtures/chart_diff/before.ts → after.ts): what the
 * diff lists, how the SVG marks it, and `deno task charts --diff <ref>` against a real git
 * ref in a throw-away repository.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { diffCharts, diffMarkdown } from "../../lib/charts.ts";
import { MACHINES as BEFORE } from "../fixtures/chart_diff/before.ts";
import { MACHINES as AFTER } from "../fixtures/chart_diff/after.ts";

const CONFIG = new URL("../../deno.json", import.meta.url).pathname;
const CLI = new URL("../../cli/charts.ts", import.meta.url).pathname;
const FIXTURES = new URL("../fixtures/chart_diff/", import.meta.url).pathname;

/** The `<g>` element of a state or transition whose `<title>` is `title`. */
function group(svg: string, title: string): string {
  const at = svg.indexOf(`<title>${title}</title>`);
  assert.ok(at > 0, `${title} is drawn`);
  const start = svg.lastIndexOf("<g ", at);
  return svg.slice(start, svg.indexOf("</g>", at));
}

Deno.test("chart diffs", async (t) => {
  await t.step("lists added, removed and changed states and transitions", async () => {
    const result = await diffCharts(BEFORE.door, AFTER.door);
    assert.ok(result);
    const { diff } = result;
    assert.deepEqual(diff.addedStates, ["ajar", "alarm"]);
    assert.deepEqual(diff.removedStates, ["locked"]);
    assert.deepEqual(diff.changedStates, [{ path: "open", notes: ["removed: entry / lightOn"] }]);
    assert.deepEqual(
      diff.addedTransitions.map((e) => `${e.source} ${e.event} ${e.target}`),
      ["open PUSH ajar", "ajar CLOSE closed", "ajar after 30000ms alarm"],
    );
    assert.deepEqual(
      diff.removedTransitions.map((e) => `${e.source} ${e.event} ${e.target}`),
      ["closed LOCK locked", "locked UNLOCK closed"],
    );
    assert.equal(diff.changedTransitions.length, 1);
    assert.equal(diff.changedTransitions[0].before.guard, "unlocked");
    assert.equal(diff.changedTransitions[0].after.guard, "authorised");
    assert.deepEqual(diff.changedTransitions[0].after.actions, ["chime", "log"]);
  });

  await t.step("the svg marks them: green added, red struck through, orange changed", async () => {
    const { svg } = (await diffCharts(BEFORE.door, AFTER.door))!;
    assert.match(group(svg, "ajar"), /class="node state atomic diff-added"/);
    const locked = group(svg, "locked");
    assert.match(locked, /diff-removed/);
    assert.match(locked, /<text text-decoration="line-through"[^>]*>locked<\/text>/);
    assert.match(group(svg, "open"), /diff-changed/);
    assert.match(group(svg, "closed&#45;&gt;locked"), /diff-removed[\s\S]*line-through/);
    const open = group(svg, "closed&#45;&gt;open");
    assert.match(open, /diff-changed/);
    assert.match(open, /was \[unlocked\]; was \/ chime/);
    // An unchanged state carries no mark.
    assert.doesNotMatch(group(svg, "closed"), /diff-/);
  });

  await t.step("an unchanged machine has no diff; a new one is all added", async () => {
    assert.equal(await diffCharts(BEFORE.lamp, AFTER.lamp), null);
    const fresh = (await diffCharts(null, AFTER.lamp))!;
    assert.deepEqual(fresh.diff.addedStates, ["off", "on"]);
    const gone = (await diffCharts(BEFORE.lamp, null))!;
    assert.deepEqual(gone.diff.removedStates, ["off", "on"]);
  });

  await t.step("the markdown summary says what changed, struck through where removed", async () => {
    const { diff } = (await diffCharts(BEFORE.door, AFTER.door))!;
    const md = diffMarkdown("door", diff, "door.diff.svg");
    assert.match(md, /^### `door`/);
    assert.match(md, /States: \+2 −1 ~1; transitions: \+3 −2 ~1/);
    assert.match(md, /\*\*1 state removed:\*\* ~~`locked`~~/);
    assert.match(md, /guard `unlocked` → `authorised`; actions `chime` → `chime, log`/);
  });
});

async function run(cmd: string, args: string[], cwd: string) {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test("deno task charts --diff against a git ref", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "chart_diff_test_" });
  const gitArgs = ["-c", "user.name=test", "-c", "user.email=test@example.invalid"];
  try {
    await Deno.mkdir(join(dir, "machines"));
    await Deno.copyFile(join(FIXTURES, "before.ts"), join(dir, "machines", "mod.ts"));
    assert.equal((await run("git", ["init", "-q", "-b", "main"], dir)).code, 0);
    await run("git", [...gitArgs, "add", "."], dir);
    assert.equal((await run("git", [...gitArgs, "commit", "-q", "-m", "before"], dir)).code, 0);
    await Deno.copyFile(join(FIXTURES, "after.ts"), join(dir, "machines", "mod.ts"));
    const cli = (args: string[]) =>
      run(Deno.execPath(), [
        "run",
        "--config",
        CONFIG,
        "--allow-read",
        "--allow-write",
        "--allow-run=git",
        CLI,
        "--machines",
        "machines/mod.ts",
        ...args,
      ], dir);

    await t.step("writes an svg per changed machine and a markdown summary", async () => {
      const out = await cli(["--diff", "main", "--out", "diff"]);
      assert.equal(out.code, 0, out.stderr);
      assert.match(out.stdout, /^## Statechart changes since `main`/);
      assert.match(out.stdout, /1 of 2 machine\(s\) changed/);
      assert.match(out.stdout, /### `door`/);
      assert.doesNotMatch(out.stdout, /### `lamp`/);
      assert.match(out.stderr, /chart lamp: unchanged since main/);
      const files = [];
      for await (const e of Deno.readDir(join(dir, "diff"))) files.push(e.name);
      assert.deepEqual(files.sort(), ["door.diff.svg", "summary.md"]);
      assert.equal(
        await Deno.readTextFile(join(dir, "diff", "summary.md")),
        out.stdout.trimEnd() + "\n",
      );
      const svg = await Deno.readTextFile(join(dir, "diff", "door.diff.svg"));
      assert.match(svg, /diff-removed/);
      assert.match(svg, /changes since main/);
    });

    await t.step("the committed state compared with itself has no changes", async () => {
      await run("git", [...gitArgs, "commit", "-q", "-am", "after"], dir);
      const out = await cli(["--diff", "HEAD", "--out", "diff"]);
      assert.equal(out.code, 0, out.stderr);
      assert.match(out.stdout, /No machine changed \(2 compared\)/);
      const files = [];
      for await (const e of Deno.readDir(join(dir, "diff"))) files.push(e.name);
      assert.deepEqual(files, ["summary.md"], "diff pictures of an earlier run are removed");
    });

    await t.step("a ref naming no commit, or --check with --diff, exit 2", async () => {
      const bad = await cli(["--diff", "no-such-branch"]);
      assert.equal(bad.code, 2);
      assert.match(
        bad.stderr,
        /Cannot load machines at no-such-branch: no-such-branch names no commit/,
      );
      const both = await cli(["--diff", "main", "--check"]);
      assert.equal(both.code, 2);
      assert.match(both.stderr, /--check and --diff do not go together/);
      const option = await cli(["--diff", "--help"]);
      assert.equal(option.code, 2);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
