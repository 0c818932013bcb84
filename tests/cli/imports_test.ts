/**
 * The import check (cli/imports.ts) on small fixture trees: a layer crossed the wrong way
 * and a cycle are refused, a type-only import is told apart from a value import, and a
 * clean tree passes. The graphs come from real `deno info` runs, as in `deno task check`.
 */
import assert from "node:assert/strict";
import { checkImports, readImportGraph } from "../../cli/imports.ts";

const CLI = new URL("../../cli/imports.ts", import.meta.url).pathname;

/** Writes `files` (path → source) under a new temporary directory. */
async function fixture(files: Record<string, string>): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "rs-imports-" });
  for (const [path, text] of Object.entries(files)) {
    await Deno.mkdir(`${root}/${path.replace(/\/[^/]*$/, "")}`, { recursive: true });
    await Deno.writeTextFile(`${root}/${path}`, text);
  }
  return root;
}

async function runCheck(root: string): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "--allow-run", CLI, "--root", root],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

const CLEAN = {
  "lib/clock.ts": "export function now(): number {\n  return 0;\n}\n",
  "machines/door.ts": "export const DOOR = { initial: 'closed' };\n",
  "store/doors.ts": "import { now } from '../lib/clock.ts';\nexport const at = now();\n",
  "actors/door/mod.ts":
    "import { DOOR } from '../../machines/door.ts';\nimport { at } from '../../store/doors.ts';\n" +
    "export interface DoorService {\n  open(): void;\n}\nexport const door = { DOOR, at };\n",
  "api/door.ts":
    "import type { DoorService } from '../actors/door/mod.ts';\nexport function routes(s: DoorService): void {\n  s.open();\n}\n",
  "concerns/door.ts":
    "import { door } from '../actors/door/mod.ts';\nimport { routes } from '../api/door.ts';\nexport const c = { door, routes };\n",
};

Deno.test("import check", async (t) => {
  await t.step("a tree that keeps the layers passes", async () => {
    const root = await fixture(CLEAN);
    try {
      assert.deepEqual(checkImports(await readImportGraph(root)), []);
      const res = await runCheck(root);
      assert.equal(res.code, 0, res.stderr);
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  });

  await t.step(
    "a machine importing an effect, a route importing effect code and a cycle are refused",
    async () => {
      const root = await fixture({
        ...CLEAN,
        "machines/door.ts":
          "import { at } from '../store/doors.ts';\nexport const DOOR = { initial: 'closed', at };\n",
        "api/door.ts":
          "import { door } from '../actors/door/mod.ts';\nexport function routes(): unknown {\n  return door;\n}\n",
        "store/doors.ts":
          "import { now } from '../lib/clock.ts';\nimport { hinges } from './hinges.ts';\nexport const at = now() + hinges;\n",
        "store/hinges.ts":
          "import { at } from './doors.ts';\nexport const hinges = 2;\nexport const twice = at;\n",
      });
      try {
        const res = await runCheck(root);
        assert.equal(res.code, 1, res.stderr);
        assert.match(
          res.stderr,
          /machines\/door\.ts imports store\/doors\.ts: machines\/ imports only xstate/,
        );
        assert.match(
          res.stderr,
          /api\/door\.ts imports actors\/door\/mod\.ts: api\/ and console\/ import values only/,
        );
        assert.match(res.stderr, /import cycle: store\/doors\.ts → store\/hinges\.ts/);
        assert.doesNotMatch(
          res.stderr,
          /concerns\/door\.ts/,
          "concerns/ may import actors/ and api/",
        );
        assert.match(res.stderr, /3 import rule violations/);
      } finally {
        await Deno.remove(root, { recursive: true });
      }
    },
  );

  await t.step("actors/ may not import api/, not even types", async () => {
    const root = await fixture({
      ...CLEAN,
      "actors/door/mod.ts":
        "import type { routes } from '../../api/door.ts';\nexport interface DoorService {\n  open(): void;\n}\nexport type R = typeof routes;\n",
      "api/door.ts": "export function routes(): void {}\n",
      "concerns/door.ts":
        "import { routes } from '../api/door.ts';\nexport const c = { routes };\n",
    });
    try {
      const problems = checkImports(await readImportGraph(root));
      assert.deepEqual(problems, [
        "actors/door/mod.ts imports types from api/door.ts: actors/ imports only machines/, " +
        "store/, lib/ and actors/: effects never see routes or the composition root",
      ]);
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  });

  await t.step("only store/ imports a database or Redis driver as a value", async () => {
    const drivers = "import postgres from 'npm:postgres@^3.4.9';\n" +
      "import type { Redis } from 'npm:ioredis@^5.8.2';\n" +
      "export const open = postgres;\nexport type R = Redis;\n";
    const root = await fixture({
      ...CLEAN,
      "store/pool.ts": drivers,
      "actors/door/pool.ts": drivers,
      "actors/door/redis.ts": "import type { Redis } from 'npm:ioredis@^5.8.2';\n" +
        "export function ping(r: Redis): Promise<string> {\n  return r.ping();\n}\n",
    });
    try {
      const problems = checkImports(await readImportGraph(root));
      assert.deepEqual(problems, [
        "actors/door/pool.ts imports npm:postgres@^3.4.9: only store/ imports the database " +
        "and Redis drivers (postgres, ioredis, PGlite) as values: connections are opened in " +
        "store/; elsewhere only their types",
      ]);
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  });
});
