import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { isRuntimeError } from "../../lib/errors.ts";
import {
  type BackupStorage,
  createLocalStorage,
  createS3Storage,
} from "../../actors/backup/storage.ts";
import { startPostgres } from "../harness/mod.ts";
import { fingerprint, migratedPool, seedApp, tempDir, testService } from "./_helpers.ts";

const S3RVER = fileURLToPath(new URL("./_s3rver.ts", import.meta.url));

/** s3rver (an S3-compatible server) as its own process on a free port. */
async function startS3rver(dir: string): Promise<AsyncDisposable & { endpoint: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", S3RVER, dir, "0"],
    stdout: "piped",
    stderr: "null",
    stdin: "null",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  // A hung start is killed, which ends stdout and the read below.
  let hung = false;
  const killer = setTimeout(() => {
    hung = true;
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, 30_000);
  try {
    while (!/listening (\d+)/.test(text)) {
      const { value, done } = await reader.read();
      if (done) {
        await child.status;
        throw new Error(
          `s3rver did not start${hung ? " within 30 s" : ""} (no "listening <port>" line): ${text}`,
        );
      }
      text += value;
    }
  } finally {
    clearTimeout(killer);
  }
  const port = Number(/listening (\d+)/.exec(text)![1]);
  return {
    endpoint: `http://127.0.0.1:${port}`,
    async [Symbol.asyncDispose]() {
      child.kill("SIGTERM");
      await reader.cancel().catch(() => {});
      await child.status;
    },
  };
}

function sha(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

async function readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** The storage contract, run against each backend. */
async function contract(t: Deno.TestContext, storage: BackupStorage): Promise<void> {
  const big = new Uint8Array(randomBytes(9 * 1024 * 1024 + 123));

  await t.step(`${storage.kind}: a multi-part stream comes back byte for byte`, async () => {
    const chunks = [big.subarray(0, 1000), big.subarray(1000, 6_000_000), big.subarray(6_000_000)];
    const { size } = await storage.put("b1/data.bin", ReadableStream.from(chunks));
    assert.equal(size, big.length);
    assert.equal((await storage.stat("b1/data.bin"))?.size, big.length);
    assert.equal(sha(await readAll(await storage.get("b1/data.bin"))), sha(big));
  });

  await t.step(`${storage.kind}: texts, listing and idempotent deletes`, async () => {
    await storage.putText("b1/manifest.json", '{"a":1}');
    await storage.putText("b2/manifest.json", '{"b":2}');
    assert.equal(await storage.getText("b1/manifest.json"), '{"a":1}');
    assert.deepEqual((await storage.list("b1/")).map((o) => o.key), [
      "b1/data.bin",
      "b1/manifest.json",
    ]);
    assert.deepEqual((await storage.list("")).map((o) => o.key), [
      "b1/data.bin",
      "b1/manifest.json",
      "b2/manifest.json",
    ]);
    await storage.delete("b2/manifest.json");
    await storage.delete("b2/manifest.json");
    assert.equal(await storage.stat("b2/manifest.json"), null);
    await assert.rejects(
      storage.get("b2/manifest.json"),
      (e) => isRuntimeError(e, "BACKUP_NOT_FOUND"),
    );
  });

  await t.step(`${storage.kind}: a failing stream leaves no object behind`, async () => {
    let n = 0;
    const failing = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (n++ < 7) controller.enqueue(big.subarray(0, 1024 * 1024));
        else controller.error(new Error("pg_dump died"));
      },
    });
    await assert.rejects(
      storage.put("b3/data.bin", failing),
      (e) => isRuntimeError(e, "STORAGE_FAILED"),
    );
    assert.equal(await storage.stat("b3/data.bin"), null);
    assert.deepEqual((await storage.list("b3/")).map((o) => o.key), []);
  });

  await t.step(`${storage.kind}: keys cannot escape the root`, async () => {
    await assert.rejects(
      storage.putText("../evil", "x"),
      (e) => isRuntimeError(e, "VALIDATION_FAILED"),
    );
    await assert.rejects(
      storage.get("a/../../etc/passwd"),
      (e) => isRuntimeError(e, "VALIDATION_FAILED"),
    );
  });
}

Deno.test("backup storage: local directory", async (t) => {
  const dir = await tempDir("rs-bk-local-");
  const storage = createLocalStorage(`${dir}/store`);
  try {
    await contract(t, storage);
    // Regression (the chaos soak's backup_partial_left): a backup that failed on a full disk
    // left its empty folder, which the storage listing shows as an unfinished backup.
    await t.step("local: a failed or aborted write leaves no folder behind", async () => {
      const folders = async () => {
        const names = [];
        for await (const e of Deno.readDir(`${dir}/store`)) if (e.isDirectory) names.push(e.name);
        return names.sort();
      };
      const before = await folders();
      const staged = await storage.stage!("failed-1/dump.pgc.zst.enc");
      await Deno.writeTextFile(staged.path, "part of a dump");
      await staged.abort();
      await storage.delete("failed-1/dump.pgc.zst.enc"); // what a failed backup does next
      const failing = new ReadableStream<Uint8Array>({
        pull(controller) {
          controller.error(new Error("No space left on device"));
        },
      });
      await assert.rejects(
        storage.put("failed-2/dump.pgc.zst.enc", failing),
        (e) => isRuntimeError(e, "STORAGE_FAILED"),
      );
      assert.deepEqual(await folders(), before);
    });
  } finally {
    storage.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("backup storage: S3 (s3rver in its own process)", async (t) => {
  const dir = await tempDir("rs-bk-s3-");
  await using s3 = await startS3rver(`${dir}/s3`);
  const s3env = {
    BACKUP_STORAGE: "s3",
    BACKUP_S3_BUCKET: "rs-backups",
    BACKUP_S3_PREFIX: "cluster-a/",
    BACKUP_S3_ENDPOINT: s3.endpoint,
    BACKUP_S3_ACCESS_KEY_ID: "S3RVER",
    BACKUP_S3_SECRET_ACCESS_KEY: "S3RVER",
  };
  const storage = createS3Storage({
    bucket: "rs-backups",
    prefix: "contract/",
    endpoint: s3.endpoint,
    accessKeyId: "S3RVER",
    secretAccessKey: "S3RVER",
    partSize: 5 * 1024 * 1024,
  });
  try {
    await contract(t, storage);

    await t.step("s3: a full backup round-trips through the bucket", async () => {
      await using pg = await startPostgres({ name: "bk-s3" });
      const url = await pg.createDatabase("app");
      await seedApp(pg, "app", 300);
      const sql = await migratedPool(url);
      const service = testService({ url, sql, dir, env: s3env });
      try {
        const result = await service.create("full");
        assert.match((await service.get(result.name!))!.path, /^s3:\/\/rs-backups\/cluster-a\//);
        const verified = await service.verify(result.name!, { mode: "checksums" });
        assert.equal(verified.ok, true, verified.error?.message);
        await service.restoreLogical(result.name!, { database: "app_copy", url: pg.url });
        assert.equal(await fingerprint(pg, "app_copy"), await fingerprint(pg, "app"));
        const catalog = await service.catalog();
        assert.deepEqual(catalog.entries.map((e) => e.manifest.name), [result.name]);
      } finally {
        service.close();
        await sql.end();
      }
    });
  } finally {
    storage.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
