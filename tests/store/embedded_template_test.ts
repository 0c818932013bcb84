import assert from "node:assert/strict";
import { PGlite } from "@electric-sql/pglite";
import { createLogger } from "../../lib/log.ts";
import { openDatabase } from "../../store/database.ts";
import { PGLITE_VERSION, seedFromTemplate, templateDir } from "../../store/embedded_template.ts";
import { migrate } from "../../store/migrations.ts";

/** The real PGlite, counting the instances made (each one a full initdb). */
function countingPGlite(): { pglite: typeof PGlite; made: () => number } {
  let made = 0;
  const pglite = {
    create: (options?: Parameters<typeof PGlite.create>[0]) => {
      made++;
      return PGlite.create(options);
    },
  } as unknown as typeof PGlite;
  return { pglite, made: () => made };
}

Deno.test("embedded template: the PGlite version in its name is the one deno.json pins", async () => {
  const config = JSON.parse(await Deno.readTextFile(new URL("../../deno.json", import.meta.url)));
  assert.equal(
    config.imports["@electric-sql/pglite"],
    `npm:@electric-sql/pglite@${PGLITE_VERSION}`,
  );
});

Deno.test({
  name: "embedded template: made once, new data directories start from a copy, untrusted or " +
    "incomplete ones are made again; the embedded settings are in effect",
  // PGlite's wasm runtime keeps internal async work alive past close().
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    const root = await Deno.makeTempDir({ prefix: "rs-embedded-template-" });
    const cacheDir = `${root}/cache`;
    const dir = templateDir(cacheDir);
    const lines: string[] = [];
    const log = createLogger("test", { level: "debug", sink: (l) => lines.push(l) });
    const modeOf = async (path: string) => ((await Deno.stat(path)).mode ?? 0) & 0o777;
    try {
      await t.step("the first new directory makes the template", async () => {
        const db = await openDatabase({ dataDir: `${root}/a`, cacheDir, log });
        try {
          assert.equal(await modeOf(dir), 0o700);
          assert.ok(lines.some((l) => /made the embedded database template/.test(l)));
          assert.ok(lines.some((l) => /started .*from=template/.test(l)), lines.join("\n"));
          // PGlite's default is 128MB: the embedded setting reaches the pool's session.
          const [row] = await db.sql<{ shared_buffers: string }[]>`SHOW shared_buffers`;
          assert.equal(row.shared_buffers, "16MB");
        } finally {
          await db.close();
        }
      });

      await t.step("a second new directory is a copy, no initdb, and migrates", async () => {
        const { pglite, made } = countingPGlite();
        assert.ok(await seedFromTemplate(pglite, { cacheDir, pgdata: `${root}/b/pgdata`, log }));
        assert.equal(made(), 0);
        const db = await openDatabase({ dataDir: `${root}/b`, cacheDir, log });
        try {
          const report = await migrate(db.sql);
          assert.ok(report.applied.includes("001_initial_schema"));
        } finally {
          await db.close();
        }
      });

      await t.step("a template others may write is not used, and is made again", async () => {
        await Deno.chmod(dir, 0o777);
        const { pglite, made } = countingPGlite();
        assert.ok(await seedFromTemplate(pglite, { cacheDir, pgdata: `${root}/c/pgdata`, log }));
        assert.equal(made(), 1);
        assert.equal(await modeOf(dir), 0o700);
        assert.ok(lines.some((l) => /replacing the embedded database template/.test(l)));
      });

      await t.step("an incomplete template is made again", async () => {
        await Deno.remove(`${dir}/global/pg_control`);
        const { pglite, made } = countingPGlite();
        assert.ok(await seedFromTemplate(pglite, { cacheDir, pgdata: `${root}/d/pgdata`, log }));
        assert.equal(made(), 1);
        await Deno.stat(`${dir}/global/pg_control`);
        await Deno.stat(`${root}/d/pgdata/global/pg_control`);
      });
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
});
