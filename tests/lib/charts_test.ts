import assert from "node:assert/strict";
import { join } from "node:path";
import { and, assign, createActor, fromPromise, not, setup, stateIn } from "xstate";
import { activeStatePaths, renderSvg, toDot, toMermaid } from "../../lib/charts.ts";
import { generateCharts } from "../../cli/charts.ts";

/**
 * A media player that uses every statechart feature the charts must draw: nested compound
 * states, a parallel state, final states, numeric and named delays, `always` with a
 * combined guard, invoke with onDone/onError, guarded and self transitions, a compound
 * `onDone`, the `*` and `xstate.error.actor.*` wildcards, shallow and deep history.
 */
const player = setup({
  types: { context: {} as { retries: number }, events: {} as { type: string } },
  guards: {
    canPlay: () => true,
    hasRetries: () => true,
    isLive: () => false,
    isBuffered: () => false,
  },
  actions: { logError: () => {}, notify: () => {}, track: () => {} },
  actors: { loadManifest: fromPromise(() => new Promise<string>(() => {})) },
  delays: { RETRY_DELAY: 2500, jitter: () => 10 },
}).createMachine({
  id: "player",
  context: { retries: 0 },
  initial: "idle",
  on: { RESET: { target: ".idle", actions: "track" } },
  states: {
    idle: {
      on: { PLAY: { guard: "canPlay", target: "loading" }, PING: { actions: "notify" } },
    },
    loading: {
      entry: "track",
      invoke: {
        src: "loadManifest",
        onDone: { target: "playing" },
        onError: [
          { guard: "hasRetries", target: "retrying" },
          { target: "failed", actions: "logError" },
        ],
      },
      on: { LOADED: "playing" },
    },
    retrying: { after: { RETRY_DELAY: "loading", jitter: "loading", 30000: "failed" } },
    playing: {
      type: "parallel",
      on: {
        STOP: "ending",
        SEEK: { target: "playing", reenter: true },
        "xstate.error.actor.*": { target: "failed", actions: "logError" },
      },
      states: {
        video: {
          initial: "buffering",
          states: {
            buffering: {
              always: { guard: and(["isBuffered", not("isLive")]), target: "rendering" },
              on: { BUFFERED: "rendering" },
            },
            rendering: {
              on: { TICK: { target: "rendering", reenter: true }, STALL: "buffering" },
            },
            hist: { type: "history", history: "deep" },
          },
        },
        audio: {
          initial: "muted",
          states: {
            muted: {
              on: {
                UNMUTE: {
                  target: "audible",
                  guard: stateIn({ playing: { video: "rendering" } }),
                },
              },
            },
            audible: { on: { MUTE: "muted", "*": { actions: assign({ retries: 0 }) } } },
            last: { type: "history", target: "muted" },
          },
        },
      },
    },
    ending: {
      initial: "flushing",
      states: { flushing: { after: { 500: "flushed" } }, flushed: { type: "final" } },
      onDone: "stopped",
    },
    stopped: { type: "final" },
    failed: { type: "final", entry: "logError" },
  },
});

/** Every state's key path, walked from the machine definition. */
function statePaths(): string[] {
  const out: string[] = [];
  const walk = (node: { path: string[]; states: Record<string, unknown> }) => {
    if (node.path.length) out.push(node.path.join("."));
    for (const child of Object.values(node.states)) walk(child as typeof node);
  };
  walk(player.root as unknown as { path: string[]; states: Record<string, unknown> });
  return out;
}

/** The `<g>` of every state in an SVG: path, classes, and the fill/stroke it is drawn with. */
function svgStates(svg: string): Map<string, { classes: string[]; fill: string; width: string }> {
  const out = new Map<string, { classes: string[]; fill: string; width: string }>();
  const re =
    /<g id="state-([^"]*)" class="([^"]*)" data-state="\1">\n<title>[^<]*<\/title>\n<(?:path|polygon|ellipse) fill="([^"]*)" stroke="[^"]*"(?: stroke-width="([^"]*)")?/g;
  for (const m of svg.matchAll(re)) {
    out.set(m[1], { classes: m[2].split(" "), fill: m[3], width: m[4] ?? "1" });
  }
  return out;
}

Deno.test("charts", async (t) => {
  await t.step("activeStatePaths flattens a state value into sorted leaf paths", () => {
    assert.deepEqual(activeStatePaths("idle"), ["idle"]);
    assert.deepEqual(activeStatePaths({ running: { b: "y", a: "x" } }), [
      "running.a.x",
      "running.b.y",
    ]);
    assert.deepEqual(activeStatePaths({ a: { b: { c: "d" } } }), ["a.b.c.d"]);
    assert.deepEqual(activeStatePaths({ running: {} }), ["running"]);
    assert.deepEqual(activeStatePaths(undefined), []);
    assert.deepEqual(activeStatePaths(null), []);
  });

  await t.step("mermaid names every state, transition, guard and delay", () => {
    const mmd = toMermaid(player);
    assert.ok(mmd.includes("stateDiagram-v2\n"));
    for (const path of statePaths()) {
      assert.ok(mmd.includes(` as s_${path.replaceAll(".", "_")}`), `state ${path} missing`);
    }
    const lines = mmd.split("\n").map((l) => l.trim());
    for (
      const expected of [
        "[*] --> s_idle",
        "s_idle --> s_loading : PLAY [canPlay]",
        "s_idle : PING / notify",
        "s_loading : entry / track",
        "s_loading : invoke loadManifest",
        "s_loading --> s_playing : onDone(loadManifest)",
        "s_loading --> s_retrying : onError(loadManifest) [hasRetries]",
        "s_loading --> s_failed : onError(loadManifest) / logError",
        "s_loading --> s_playing : LOADED",
        "s_retrying --> s_loading : after RETRY_DELAY (2500ms)",
        "s_retrying --> s_loading : after jitter",
        "s_retrying --> s_failed : after 30000ms",
        "s_playing --> s_ending : STOP",
        "s_playing --> s_playing : SEEK",
        "s_playing --> s_failed : xstate.error.actor.* / logError",
        "[*] --> s_playing_video_buffering",
        "s_playing_video_buffering --> s_playing_video_rendering : always [isBuffered && !isLive]",
        "s_playing_video_buffering --> s_playing_video_rendering : BUFFERED",
        "s_playing_video_rendering --> s_playing_video_rendering : TICK",
        "s_playing_video_rendering --> s_playing_video_buffering : STALL",
        'state "H*" as s_playing_video_hist',
        "s_playing_video_hist : history (deep)",
        "s_playing_audio_muted --> s_playing_audio_audible : UNMUTE [in(playing.video.rendering)]",
        "s_playing_audio_audible --> s_playing_audio_muted : MUTE",
        "s_playing_audio_audible : *",
        'state "H" as s_playing_audio_last',
        "s_playing_audio_last --> s_playing_audio_muted : default",
        "s_ending_flushing --> s_ending_flushed : after 500ms",
        "s_ending_flushed --> [*]",
        "s_ending --> s_stopped : onDone",
        "s_stopped --> [*]",
        "s_failed : entry / logError",
        "root --> s_idle : RESET / track",
        "--",
      ]
    ) {
      assert.ok(lines.includes(expected), `missing line: ${expected}\n${mmd}`);
    }
  });

  await t.step("dot draws containers as clusters and labels every transition", () => {
    const dot = toDot(player);
    for (const path of statePaths()) assert.ok(dot.includes(`id="state-${path}"`), path);
    for (const cluster of ["playing", "playing.video", "playing.audio", "ending"]) {
      assert.ok(dot.includes(`subgraph "cluster_${cluster}" {`), cluster);
    }
    assert.ok(!dot.includes(`subgraph "cluster_idle"`), "atomic states are nodes");
    for (
      const label of [
        "PLAY [canPlay]",
        "onDone(loadManifest)",
        "onError(loadManifest) [hasRetries]",
        "after RETRY_DELAY (2500ms)",
        "after jitter",
        "after 30000ms",
        "after 500ms",
        "always [isBuffered && !isLive]",
        "xstate.error.actor.* / logError",
        "UNMUTE [in(playing.video.rendering)]",
        "RESET / track",
        "TICK",
        "SEEK",
        "onDone",
      ]
    ) {
      assert.ok(dot.includes(`label="${label}"`), `missing edge ${label}`);
    }
    // Self-transition of an atomic state is a loop on its node.
    assert.ok(dot.includes(`"playing.video.rendering" -> "playing.video.rendering"`));
    // A container's transition to a state outside it is clipped at the cluster border.
    assert.match(
      dot,
      /"playing\/entry" -> "ending\/initial" \[xlabel="STOP", ltail="cluster_playing", lhead="cluster_ending"/,
    );
    // Internal (targetless) transitions are listed inside their state.
    assert.match(dot, /"idle" \[label="idle\\nPING \/ notify\\l"/);
  });

  await t.step(
    "the svg is byte-identical between renders and carries no version banner",
    async () => {
      const first = await renderSvg(player, { active: ["playing.video.rendering"] });
      const second = await renderSvg(player, { active: ["playing.video.rendering"] });
      assert.equal(first, second);
      assert.equal(toMermaid(player), toMermaid(player));
      assert.ok(first.startsWith("<?xml"));
      assert.ok(!/graphviz version/i.test(first), "version banner must be stripped");
      const states = svgStates(first);
      assert.deepEqual([...states.keys()].sort(), statePaths().sort());
    },
  );

  await t.step("only the active states are highlighted, their ancestors outlined", async () => {
    const svg = await renderSvg(player, {
      active: ["playing.video.rendering", "playing.audio.muted"],
    });
    const states = svgStates(svg);
    const active = [...states].filter(([, s]) => s.classes.includes("active")).map(([p]) => p);
    assert.deepEqual(active.sort(), ["playing.audio.muted", "playing.video.rendering"]);
    for (const path of active) {
      assert.equal(states.get(path)!.fill, "#fde68a");
      assert.equal(states.get(path)!.width, "3");
    }
    const outlined = [...states].filter(([, s]) => s.classes.includes("active-ancestor"))
      .map(([p]) => p);
    assert.deepEqual(outlined.sort(), ["playing", "playing.audio", "playing.video"]);
    for (const [path, s] of states) {
      if (active.includes(path)) continue;
      assert.ok(s.fill === "#ffffff" || s.fill === "none", `${path} must not be filled`);
    }
    const plain = svgStates(await renderSvg(player));
    assert.ok([...plain.values()].every((s) => !s.classes.includes("active")));
  });

  await t.step("state ids select the same state; names of no state are ignored", async () => {
    const byPath = await renderSvg(player, { active: ["retrying"] });
    assert.equal(await renderSvg(player, { active: ["player.retrying"] }), byPath);
    assert.equal(await renderSvg(player, { active: ["#player.retrying", "nope.x"] }), byPath);
  });

  await t.step("a running actor's state value highlights where it is", async () => {
    const actor = createActor(player).start();
    try {
      actor.send({ type: "PLAY" });
      actor.send({ type: "LOADED" });
      actor.send({ type: "BUFFERED" });
      const paths = activeStatePaths(actor.getSnapshot().value);
      assert.deepEqual(paths, ["playing.audio.muted", "playing.video.rendering"]);
      const states = svgStates(await renderSvg(player, { active: paths }));
      assert.deepEqual(
        [...states].filter(([, s]) => s.classes.includes("active")).map(([p]) => p).sort(),
        paths,
      );
    } finally {
      actor.stop();
    }
  });
});

const CONFIG = new URL("../../deno.json", import.meta.url).pathname;
const CLI = new URL("../../cli/charts.ts", import.meta.url).pathname;

/** A machines module for the CLI, outside the repository, importing xstate via deno.json. */
function machinesModule(names: string[]): string {
  const machines = names.map((n) =>
    `  ${n}: createMachine({ id: "${n}", initial: "a", states: { a: { on: { GO: "b" } }, ` +
    `b: { after: { 100: "a" } } } }),`
  );
  return `import { createMachine } from "xstate";\nexport const MACHINES = {\n${
    machines.join("\n")
  }\n};\n`;
}

async function runCli(args: string[], cwd: string) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--config", CONFIG, ...args],
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

Deno.test("charts command", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "charts_test_" });
  try {
    await t.step("writes an svg and mmd per machine and removes unlisted charts", async () => {
      const out = join(dir, "gen");
      await Deno.mkdir(out);
      await Deno.writeTextFile(join(out, "retired.svg"), "<svg/>");
      await Deno.writeTextFile(join(out, "README.md"), "kept");
      const lines: string[] = [];
      const report = await generateCharts({
        machines: { player },
        outDir: out,
        log: (l) => lines.push(l),
      });
      assert.deepEqual(await listDir(out), ["README.md", "player.mmd", "player.svg"]);
      assert.equal(await Deno.readTextFile(join(out, "player.mmd")), toMermaid(player));
      assert.equal(await Deno.readTextFile(join(out, "player.svg")), await renderSvg(player));
      assert.equal(report.written.length, 2);
      assert.equal(report.removed.length, 1);
      assert.equal(lines.length, 2, "one line per chart and per removal");
      assert.match(lines[0], /^chart player: svg written, mmd written/);

      const again = await generateCharts({ machines: { player }, outDir: out, log: () => {} });
      assert.deepEqual(again.written, [], "current charts are not rewritten");
      assert.equal(again.unchanged.length, 2);
    });

    await t.step("with no machines it succeeds and writes nothing", async () => {
      const out = join(dir, "none");
      const report = await generateCharts({ machines: {}, outDir: out, log: () => {} });
      assert.deepEqual(report, { written: [], unchanged: [], removed: [], stale: [] });
      await assert.rejects(Deno.stat(out), Deno.errors.NotFound);
    });

    await t.step("--check exits 1 naming missing and stale files, 0 when current", async () => {
      await Deno.writeTextFile(join(dir, "machines.ts"), machinesModule(["door", "lamp"]));
      const flags = ["--out", "charts", "--machines", "machines.ts"];
      const generated = await runCli(["--allow-read", "--allow-write", CLI, ...flags], dir);
      assert.equal(generated.code, 0, generated.stderr);
      assert.deepEqual(await listDir(join(dir, "charts")), [
        "door.mmd",
        "door.svg",
        "lamp.mmd",
        "lamp.svg",
      ]);
      assert.match(generated.stderr, /^chart door: .*\nchart lamp: /m);

      const current = await runCli(["--allow-read", CLI, "--check", ...flags], dir);
      assert.equal(current.code, 0, current.stderr);

      await Deno.remove(join(dir, "charts", "door.svg"));
      await Deno.writeTextFile(join(dir, "charts", "lamp.mmd"), "stateDiagram-v2\n");
      const svgBefore = await Deno.readTextFile(join(dir, "charts", "lamp.svg"));
      // Read-only permissions: check mode must not even try to write.
      const stale = await runCli(["--allow-read", CLI, "--check", ...flags], dir);
      assert.equal(stale.code, 1, stale.stderr);
      assert.match(stale.stderr, /charts\/door\.svg is missing: run deno task charts/);
      assert.match(stale.stderr, /charts\/lamp\.mmd is stale: run deno task charts/);
      assert.doesNotMatch(stale.stderr, /lamp\.svg is|door\.mmd is/);
      assert.equal(await Deno.readTextFile(join(dir, "charts", "lamp.svg")), svgBefore);
      await assert.rejects(Deno.stat(join(dir, "charts", "door.svg")), Deno.errors.NotFound);

      // A machine dropped from the module leaves chart files that check mode reports.
      await Deno.writeTextFile(join(dir, "machines.ts"), machinesModule(["lamp"]));
      const orphaned = await runCli(["--allow-read", CLI, "--check", ...flags], dir);
      assert.equal(orphaned.code, 1);
      assert.match(
        orphaned.stderr,
        /charts\/door\.mmd belongs to no machine: run deno task charts/,
      );
      await runCli(["--allow-read", "--allow-write", CLI, ...flags], dir);
      assert.deepEqual(await listDir(join(dir, "charts")), ["lamp.mmd", "lamp.svg"]);
      const fixed = await runCli(["--allow-read", CLI, "--check", ...flags], dir);
      assert.equal(fixed.code, 0, fixed.stderr);
    });

    await t.step("bad arguments and unloadable modules exit 2", async () => {
      const bad = await runCli(["--allow-read", CLI, "--bogus"], dir);
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /Usage: deno task charts/);
      await Deno.writeTextFile(join(dir, "broken.ts"), "export const MACHINES = { x: 1 };\n");
      const broken = await runCli(["--allow-read", CLI, "--machines", "broken.ts"], dir);
      assert.equal(broken.code, 2);
      assert.match(broken.stderr, /MACHINES is not a record of machines at x/);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
