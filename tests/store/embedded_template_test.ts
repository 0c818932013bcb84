import assert from "node:assert/strict";
import { PGlite } from "@electric-sql/pglite";
import { createLogger } from "../../lib/log.ts";
import { openDatabase } from "../../store/database.ts";
import { embeddedTemplate, PGLITE_VERSION, templatePath } from "../../store/embedded_template.ts";
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
  name: "embedded template: made once, new data directories start from it, untrusted or " +
    "corrupt ones are replaced; the embedded settings are in effect",
  // PGlite's wasm runtime keeps internal async work alive past close().
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    const root = await Deno.makeTempDir({ prefix: "rs-embedded-template-" });
    const cacheDir = `${root}/cache`;
    const path = templatePath(cacheDir);
    const lines: string[] = [];
    const log = createLogger("test", { level: "debug", sink: (l) => lines.push(l) });
    try {
      await t.step("the first new directory makes the template", async () => {
        const db = await openDatabase({ dataDir: `${root}/a`, cacheDir, log });
        try {
          assert.equal(((await Deno.stat(path)).mode ?? 0) & 0o777, 0o600);
          assert.ok(lines.some((l) => /started .*from=template/.test(l)), lines.join("\n"));
          // PGlite's default is 128MB: the embedded setting reaches the pool's session.
          const [row] = await db.sql<{ shared_buffers: string }[]>`SHOW shared_buffers`;
          assert.equal(row.shared_buffers, "16MB");
        } finally {
          await db.close();
        }
      });

      await t.step("a second new directory loads it without initdb and migrates", async () => {
        const { pglite, made } = countingPGlite();
        const tar = await embeddedTemplate(pglite, { cacheDir, log });
        assert.ok(tar && tar.size > 1_000_000);
        assert.equal(made(), 0);
        const db = await openDatabase({ dataDir: `${root}/b`, cacheDir, log });
        try {
          const report = await migrate(db.sql);
          assert.ok(report.applied.includes("001_initial_schema"));
        } finally {
          await db.close();
        }
      });

      await t.step("a template others may write is not used, and is replaced", async () => {
        await Deno.chmod(path, 0o666);
        const { pglite, made } = countingPGlite();
        assert.ok(await embeddedTemplate(pglite, { cacheDir, log }));
        assert.equal(made(), 1);
        assert.equal(((await Deno.stat(path)).mode ?? 0) & 0o777, 0o600);
        assert.ok(lines.some((l) => /ignoring the embedded database template/.test(l)));
      });

      await t.step("a corrupt template is replaced", async () => {
        await Deno.writeFile(path, new TextEncoder().encode("not a gzip"), { mode: 0o600 });
        const { pglite, made } = countingPGlite();
        assert.ok(await embeddedTemplate(pglite, { cacheDir, log }));
        assert.equal(made(), 1);
        const again = countingPGlite();
        assert.ok(await embeddedTemplate(again.pglite, { cacheDir, log }));
        assert.equal(again.made(), 0);
      });
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
});
