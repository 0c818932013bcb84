import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { archiveWal } from "../../scripts/archive_wal.ts";

const SCRIPT = fileURLToPath(new URL("../../scripts/archive_wal.ts", import.meta.url));
const SEGMENT = "000000010000000000000007";

async function runScript(dir: string, args: string[], stdin: Uint8Array) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", `--allow-read=${dir}`, `--allow-write=${dir}`, "--no-prompt", SCRIPT, ...args],
    stdin: "piped",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(stdin);
  await writer.close();
  const out = await child.output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("archive_wal.ts (the archive_command)", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "rs-archive-" });
  const data = new Uint8Array(64 * 1024).map((_, i) => i % 251);
  try {
    await t.step("archives a segment from stdin with least privilege, atomically", async () => {
      const r = await runScript(dir, [dir, SEGMENT], data);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(await Deno.readFile(`${dir}/${SEGMENT}`), data);
      assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), [SEGMENT]);
    });

    await t.step("archiving the same content again succeeds (PostgreSQL retries)", async () => {
      assert.equal((await runScript(dir, [dir, SEGMENT], data)).code, 0);
      assert.match(await archiveWal(dir, SEGMENT, data), /already archived/);
    });

    await t.step("different content under an archived name is refused", async () => {
      const other = data.slice();
      other[10] ^= 1;
      const r = await runScript(dir, [dir, SEGMENT], other);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /refusing to overwrite/);
      assert.deepEqual(await Deno.readFile(`${dir}/${SEGMENT}`), data);
    });

    await t.step("--check proves the directory takes files and leaves nothing", async () => {
      const ok = await runScript(dir, ["--check", dir], new Uint8Array());
      assert.equal(ok.code, 0, ok.stderr);
      assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), [SEGMENT]);
      const missing = await runScript(dir, ["--check", `${dir}/absent`], new Uint8Array());
      assert.equal(missing.code, 1);
      assert.match(missing.stderr, /^archive_wal: /);
    });

    await t.step("names that are not WAL files are refused", async () => {
      await assert.rejects(archiveWal(dir, "../../etc/passwd", data), /not a WAL file name/);
      assert.match(await archiveWal(dir, "00000002.history", data), /archived/);
      assert.match(
        await archiveWal(dir, "000000010000000000000002.00000028.backup", data),
        /archived/,
      );
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
