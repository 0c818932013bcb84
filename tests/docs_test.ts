/**
 * The commands in README.md and docs/*.md work as written: every fenced `sh` block whose
 * first line is `# doc-test` runs in bash (set -euo pipefail) against a real instance.
 * Blocks see RS_URL (the instance), DATABASE_URL, REDIS_URL, RS_ADMIN_TOKEN and a
 * scratch directory in DOC_TMP; a block fails the test when it exits non-zero.
 */
import assert from "node:assert/strict";
import { startPostgres, startRedis } from "./harness/mod.ts";
import { launchInstance, ROOT } from "./support/instance.ts";

interface Block {
  file: string;
  line: number;
  title: string;
  script: string;
}

async function docBlocks(): Promise<Block[]> {
  const files = ["README.md"];
  for await (const e of Deno.readDir(`${ROOT}/docs`)) {
    if (e.isFile && e.name.endsWith(".md")) files.push(`docs/${e.name}`);
  }
  const blocks: Block[] = [];
  for (const file of files.sort()) {
    const lines = (await Deno.readTextFile(`${ROOT}/${file}`)).split("\n");
    for (let i = 0; i < lines.length; i++) {
      if (!/^```(sh|bash)\s*$/.test(lines[i])) continue;
      const first = lines[i + 1] ?? "";
      const end = lines.indexOf("```", i + 1);
      if (first.startsWith("# doc-test")) {
        blocks.push({
          file,
          line: i + 1,
          title: first.replace(/^# doc-test:?\s*/, "") || `${file}:${i + 1}`,
          script: lines.slice(i + 1, end).join("\n"),
        });
      }
      i = end;
    }
  }
  return blocks;
}

Deno.test("documented commands work as written", async (t) => {
  const blocks = await docBlocks();
  assert.ok(blocks.length >= 2, "the docs carry runnable examples");
  await using pg = await startPostgres();
  await using redis = await startRedis();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-docs-" });
  const env = {
    DATABASE_URL: await pg.createDatabase(),
    REDIS_URL: redis.url,
    RS_SECRET_KEY: btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32)))),
    RS_ADMIN_TOKEN: "doc-test-admin-token-0123456789-abcdef",
    RS_DATA_DIR: dataDir,
    RS_PORT: "0",
    LOG_LEVEL: "warn",
  };
  const node = await launchInstance(env);
  try {
    for (const block of blocks) {
      await t.step(`${block.file}:${block.line} ${block.title}`, async () => {
        const out = await new Deno.Command("bash", {
          args: ["-c", `set -euo pipefail\n${block.script}`],
          cwd: ROOT,
          env: { ...env, RS_URL: node.url, DOC_TMP: dataDir, NO_COLOR: "1" },
          stdout: "piped",
          stderr: "piped",
        }).output();
        const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
        assert.equal(out.code, 0, `exit ${out.code}:\n${text.slice(-3000)}`);
      });
    }
  } finally {
    await node.stop("SIGTERM");
    await Deno.remove(dataDir, { recursive: true });
  }
});
