import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { parseTargetTime, runBackupCli } from "../../cli/backup.ts";
import { isRuntimeError } from "../../lib/errors.ts";
import { startPostgres } from "../harness/mod.ts";
import { fingerprint, seedApp, tempDir, TEST_KEY } from "./_helpers.ts";

const CLI = fileURLToPath(new URL("../../cli/mod.ts", import.meta.url));

async function cli(args: string[], env: Record<string, string>) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runBackupCli(args, {
    env,
    out: (l) => out.push(l),
    err: (l) => err.push(l),
  });
  return { code, out: out.join("\n"), err: err.join("\n") };
}

Deno.test("recovery targets parse to exact instants", () => {
  const cases: [string, string][] = [
    ["2025-01-15 14:30:05", "2025-01-15T14:30:05.000Z"],
    ["2025-01-15T14:30:05Z", "2025-01-15T14:30:05.000Z"],
    ["2025-01-15 14:30:05+02", "2025-01-15T12:30:05.000Z"],
    ["2025-01-15 14:30:05.25-05:30", "2025-01-15T20:00:05.250Z"],
    ["2025-01-15 14:30:05.123456 UTC", "2025-01-15T14:30:05.123Z"],
  ];
  for (const [text, iso] of cases) assert.equal(parseTargetTime(text).toISOString(), iso, text);
  for (const bad of ["yesterday", "2025-02-30 00:00:00", "2025-01-15 25:00:00", "2025-01-15"]) {
    assert.throws(() => parseTargetTime(bad), (e) => isRuntimeError(e, "VALIDATION_FAILED"), bad);
  }
});

Deno.test("deno task cli backup", async (t) => {
  await using pg = await startPostgres({ name: "bk-cli" });
  const url = await pg.createDatabase("app");
  await seedApp(pg, "app", 200);
  const dir = await tempDir("rs-bk-cli-");
  const env = {
    DATABASE_URL: url,
    RS_DATA_DIR: dir,
    BACKUP_DIR: `${dir}/backups`,
    BACKUP_ENCRYPTION_KEY: TEST_KEY,
    BACKUP_SCRATCH_DIR: `${dir}/scratch`,
    PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
  };
  let name = "";
  try {
    await t.step("bad usage exits 2 with the usage text", async () => {
      for (
        const args of [
          [],
          ["frobnicate"],
          ["create", "--type", "weekly"],
          ["restore"],
          ["restore", "x", "--to", "2025-01-01 00:00:00", "--target-dir", "/tmp/x"],
          ["verify"],
          ["create", "--type", "full", "--incremental"],
          ["create", "--incremental"],
        ]
      ) {
        const r = await cli(args, env);
        assert.equal(r.code, 2, args.join(" "));
        assert.match(r.err, /usage: deno task cli backup/);
      }
    });

    await t.step("a database without runtime tables is not migrated without --yes", async () => {
      const r = await cli(["create", "--json"], env);
      assert.equal(r.code, 1);
      assert.match(
        r.err,
        /^error VALIDATION_FAILED: Refusing: database app at .* no runtime tables/,
      );
      assert.match(r.err, /--yes/);
      assert.equal(
        await pg.psql("SELECT to_regclass('schema_migrations') IS NULL", { database: "app" }),
        "t",
      );
      // Commands that can work from the storage alone go on without touching it.
      const listed = await cli(["list", "--storage"], env);
      assert.equal(listed.code, 0, listed.err);
      assert.match(listed.err, /not using the database: database app .*--yes/);
      assert.equal(
        await pg.psql("SELECT to_regclass('schema_migrations') IS NULL", { database: "app" }),
        "t",
      );
    });

    await t.step("create takes and verifies a full backup", async () => {
      const r = await cli(["create", "--json", "--yes"], env);
      assert.match(r.err, /applying \d+ pending runtime migration\(s\) to database app at /);
      assert.equal(r.code, 0, r.err);
      const body = JSON.parse(r.out);
      name = body.result.name;
      assert.equal(body.verification.ok, true);
      assert.equal(body.verification.mode, "restore");
    });

    await t.step("list shows the history and the storage", async () => {
      const history = await cli(["list"], env);
      assert.equal(history.code, 0, history.err);
      assert.match(history.out, new RegExp(`${name}\\s+full\\s+completed`));
      const storage = await cli(["list", "--storage"], env);
      assert.match(storage.out, new RegExp(`${name}\\s+full .* verified`));
    });

    await t.step("verify and restore by id into a new database", async () => {
      assert.equal((await cli(["verify", name, "--checksums-only"], env)).code, 0);
      const r = await cli(["restore", "1", "--database", "app_copy"], env);
      assert.equal(r.code, 0, r.err);
      assert.match(r.out, /restored .* into database app_copy/);
      assert.equal(await fingerprint(pg, "app_copy"), await fingerprint(pg, "app"));
    });

    await t.step("failures exit 1 with the error code", async () => {
      const r = await cli(["restore", name, "--database", "app_copy"], env);
      assert.equal(r.code, 1);
      assert.match(r.err, /^error RESTORE_TARGET_EXISTS: /);
      const wrong = await cli(["verify", name], {
        ...env,
        BACKUP_ENCRYPTION_KEY: "some-other-passphrase-123",
      });
      assert.equal(wrong.code, 1);
      assert.match(wrong.out, /BACKUP_KEY_MISMATCH/);
    });

    await t.step("prune --dry-run and key", async () => {
      const r = await cli(["prune", "--dry-run", "--json"], env);
      assert.equal(r.code, 0, r.err);
      assert.equal(JSON.parse(r.out).dryRun, true);
      assert.equal((await cli(["key"], env)).out, TEST_KEY);
    });

    await t.step("the task entry point runs it in its own process", async () => {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-all", CLI, "backup", "list", "--json"],
        env,
        clearEnv: true,
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      assert.equal(JSON.parse(new TextDecoder().decode(out.stdout))[0].name, name);
    });
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
