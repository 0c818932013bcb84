/**
 * PostgreSQL runs archive_command (and its servers) as its own OS user, which may not be
 * able to enter the directory the project was cloned into (`mktemp -d` and /root are 0700).
 * These tests put the pieces in such a root-only directory on purpose and check that the
 * archiver is installed out of it, and that whatever still points into it fails within
 * seconds with a sentence naming the directory — not after BACKUP_WAL_TIMEOUT_S.
 *
 * Root only: as another user the servers run as that user, who can enter its own
 * directories, so there is no foreign user to be locked out.
 */
import assert from "node:assert/strict";
import {
  ARCHIVE_SCRIPT_SOURCE,
  archiveCommand,
  explainArchiveCommand,
  installArchiver,
} from "../../actors/backup/archiver.ts";
import { scratchDir } from "../../actors/backup/context.ts";
import { switchAndAwaitArchive } from "../../actors/backup/wal.ts";
import { runBackupCli } from "../../cli/backup.ts";
import { isRuntimeError, RuntimeError } from "../../lib/errors.ts";
import { accessProblem, lookupAccount, type OsAccount } from "../../lib/os_access.ts";
import { createPgTools } from "../../store/pg_tools.ts";
import { startPostgres } from "../harness/mod.ts";
import { pool, tempDir, testService } from "./_helpers.ts";

const ROOT = Deno.uid() === 0;
const tools = createPgTools();

async function postgresAccount(): Promise<OsAccount> {
  const account = await lookupAccount("postgres");
  assert.ok(account, "these tests need the postgres OS user (the harness runs servers as it)");
  return account;
}

/** A directory only root may enter, like a fresh `mktemp -d` or /root. */
async function rootOnlyDir(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "rs-root-only-" });
  await Deno.chmod(dir, 0o700);
  return dir;
}

/**
 * Settles `work` or, after `ms`, aborts it through `abort` and fails with `reason`: the
 * wait a test may not exceed, and what it means when it does.
 */
async function within<T>(
  ms: number,
  reason: string,
  abort: AbortController,
  work: Promise<T>,
): Promise<PromiseSettledResult<T>> {
  let timer: number | undefined;
  const timeout = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), ms);
  });
  const settled = work.then(
    (value): PromiseSettledResult<T> => ({ status: "fulfilled", value }),
    (reason): PromiseSettledResult<T> => ({ status: "rejected", reason }),
  );
  const first = await Promise.race([settled, timeout]);
  clearTimeout(timer);
  if (first === "timeout") {
    abort.abort();
    await settled;
    assert.fail(reason);
  }
  return first;
}

function rejection(result: PromiseSettledResult<unknown>): RuntimeError {
  assert.equal(result.status, "rejected", "expected a failure, got success");
  const err = (result as PromiseRejectedResult).reason;
  assert.ok(err instanceof RuntimeError, String(err));
  return err;
}

Deno.test({
  name: "which directory keeps the postgres user out is named",
  ignore: !ROOT,
  fn: async (t) => {
    const pg = await postgresAccount();
    const root = (await lookupAccount(0))!;
    const locked = await rootOnlyDir();
    try {
      await Deno.mkdir(`${locked}/scripts`, { mode: 0o755 });
      await Deno.chmod(`${locked}/scripts`, 0o755);
      const file = `${locked}/scripts/archive_wal.ts`;
      await Deno.writeTextFile(file, "// x\n");
      await Deno.chmod(file, 0o644);

      await t.step("a file below a 0700 directory: that directory is the obstacle", async () => {
        assert.equal(
          await accessProblem(pg, file, { need: "read" }),
          `the OS user postgres cannot read ${file}: it cannot enter ${locked} ` +
            "(mode 0700, owner root)",
        );
        assert.equal(await accessProblem(root, file, { need: "read" }), null);
      });

      await t.step("once the directory is open, the file's own mode decides", async () => {
        await Deno.chmod(locked, 0o755);
        assert.equal(await accessProblem(pg, file, { need: "read" }), null);
        assert.equal(
          await accessProblem(pg, file, { need: "execute" }),
          `the OS user postgres cannot run ${file} (mode 0644, owner root)`,
        );
        await Deno.chmod(file, 0o600);
        assert.equal(
          await accessProblem(pg, file, { need: "read" }),
          `the OS user postgres cannot read ${file} (mode 0600, owner root)`,
        );
        assert.equal(
          await accessProblem(pg, `${locked}/scripts`, { need: "write" }),
          `the OS user postgres cannot write to ${locked}/scripts (mode 0755, owner root)`,
        );
        await Deno.chown(`${locked}/scripts`, pg.uid, pg.gid);
        assert.equal(await accessProblem(pg, `${locked}/scripts`, { need: "write" }), null);
        await Deno.chmod(locked, 0o700);
      });

      await t.step("a symlink inside a 0700 directory is blocked there too", async () => {
        const link = `${locked}/deno`;
        await Deno.symlink(Deno.execPath(), link);
        assert.equal(await accessProblem(pg, Deno.execPath(), { need: "execute" }), null);
        assert.match(
          (await accessProblem(pg, link, { need: "execute" })) ?? "",
          new RegExp(`cannot run ${link}: it cannot enter ${locked} \\(mode 0700`),
        );
      });

      await t.step("a path still to be created: the directories above it decide", async () => {
        assert.equal(
          await accessProblem(pg, `${locked}/new/wal`, { need: "write", creatable: true }),
          `the OS user postgres cannot write to ${locked}/new/wal: it cannot enter ${locked} ` +
            "(mode 0700, owner root)",
        );
      });

      await t.step("a missing path says so", async () => {
        assert.equal(
          await accessProblem(pg, `${locked}/nope`, { need: "read" }),
          `${locked}/nope does not exist`,
        );
      });
    } finally {
      await Deno.remove(locked, { recursive: true });
    }
  },
});

Deno.test({
  name: "install-archiver: the script leaves the checkout for a directory postgres owns",
  ignore: !ROOT,
  fn: async (t) => {
    const pg = await postgresAccount();
    const dir = await tempDir("rs-archiver-");
    const locked = await rootOnlyDir();
    try {
      await t.step(
        "installed, owned by postgres, and proven by running it as postgres",
        async () => {
          const install = await installArchiver(tools, {
            archiveDir: `${dir}/wal`,
            scriptDir: `${dir}/archiver`,
          });
          assert.equal(install.user, "postgres");
          assert.equal(install.probed, true);
          assert.equal(install.script, `${dir}/archiver/archive_wal.ts`);
          assert.equal(install.command, archiveCommand(install));
          assert.match(install.command, / %f < %p$/);
          const script = await Deno.stat(install.script);
          assert.equal(script.uid, pg.uid);
          assert.equal(script.mode! & 0o777, 0o644);
          assert.deepEqual(
            await Deno.readFile(install.script),
            await Deno.readFile(ARCHIVE_SCRIPT_SOURCE),
          );
          const archive = await Deno.stat(install.archiveDir);
          assert.equal(archive.uid, pg.uid);
          assert.equal(archive.mode! & 0o777, 0o750);
          // The probe left nothing in the archive.
          assert.deepEqual([...Deno.readDirSync(install.archiveDir)], []);
        },
      );

      await t.step("into a root-only directory: refused at once, nothing left behind", async () => {
        await assert.rejects(
          installArchiver(tools, {
            archiveDir: `${locked}/wal`,
            scriptDir: `${locked}/archiver`,
          }),
          (err) =>
            isRuntimeError(err, "WAL_ARCHIVE_FAILED") &&
            err.message.includes(`it cannot enter ${locked} (mode 0700, owner root)`) &&
            /^Cannot install the WAL archiver: /.test(err.message),
        );
        assert.deepEqual([...Deno.readDirSync(locked)], []);
      });

      await t.step("a path the shell would have to quote is refused", async () => {
        await assert.rejects(
          installArchiver(tools, { archiveDir: `${dir}/my wal`, scriptDir: `${dir}/archiver` }),
          (err) => isRuntimeError(err, "VALIDATION_FAILED") && /absolute path/.test(err.message),
        );
      });

      await t.step("the CLI prints the archive_command line, or the obstacle", async () => {
        const out: string[] = [];
        const err: string[] = [];
        const env = { RS_DATA_DIR: dir, BACKUP_WAL_ARCHIVE_DIR: `${dir}/wal2` };
        const io = { env, out: (l: string) => out.push(l), err: (l: string) => err.push(l) };
        assert.equal(await runBackupCli(["install-archiver"], io), 0, err.join("\n"));
        const text = out.join("\n");
        assert.match(text, /checked by running it as postgres/);
        assert.ok(
          text.includes(
            `archive_command = '${
              archiveCommand({
                deno: Deno.execPath(),
                script: `${dir}/archiver/archive_wal.ts`,
                archiveDir: `${dir}/wal2`,
              })
            }'`,
          ),
          text,
        );
        out.length = 0;
        assert.equal(
          await runBackupCli(["install-archiver", "--archive-dir", `${locked}/wal`], io),
          1,
        );
        assert.match(err.join("\n"), /cannot enter .*\(mode 0700, owner root\)/);
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(locked, { recursive: true });
    }
  },
});

Deno.test({
  name: "a scratch directory PostgreSQL cannot enter is refused before any server starts",
  ignore: !ROOT,
  fn: async () => {
    const dir = await tempDir("rs-scratch-");
    const locked = await rootOnlyDir();
    const service = testService({
      url: null,
      sql: null,
      dir,
      env: { BACKUP_SCRATCH_DIR: `${locked}/scratch` },
    });
    try {
      await assert.rejects(
        scratchDir(service.context, "verify"),
        (err) =>
          isRuntimeError(err, "BACKUP_UNAVAILABLE") &&
          err.message.startsWith(`Cannot stage in ${locked}/scratch`) &&
          err.message.includes(`it cannot enter ${locked} (mode 0700, owner root)`),
      );
      assert.deepEqual([...Deno.readDirSync(`${locked}/scratch`)], []);
    } finally {
      service.close();
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(locked, { recursive: true });
    }
  },
});

Deno.test({
  name: "a WAL archive PostgreSQL cannot run fails within seconds and says what to change",
  ignore: !ROOT,
  fn: async (t) => {
    const pgUser = await postgresAccount();
    const dir = await tempDir("rs-archiving-");
    const locked = await rootOnlyDir();
    const good = await installArchiver(tools, {
      archiveDir: `${dir}/wal`,
      scriptDir: `${dir}/archiver`,
    });
    const explain = (command: string) => explainArchiveCommand(command, pgUser);
    // Far beyond any test's patience: a wait that ends early proves the early failure.
    const timeoutMs = 600_000;
    /** Starts a server archiving with `command` and runs one WAL wait against it. */
    const archiveWith = async (name: string, command: string, reason: string) => {
      await using pg = await startPostgres({
        name,
        settings: { archive_mode: "on", archive_command: command },
      });
      const sql = pool(pg.url);
      try {
        const abort = new AbortController();
        return rejection(
          await within(
            60_000,
            reason,
            abort,
            switchAndAwaitArchive(sql, {
              dir: good.archiveDir,
              timeoutMs,
              now: Date.now,
              explain,
              signal: abort.signal,
            }),
          ),
        );
      } finally {
        await sql.end();
      }
    };
    try {
      await t.step("the script in a root-only checkout: deno cannot read it", async () => {
        // The checkout in a root-only directory, as a fresh clone into `mktemp -d` has it.
        const script = `${locked}/rs/scripts/archive_wal.ts`;
        await Deno.mkdir(`${locked}/rs/scripts`, { recursive: true, mode: 0o755 });
        await Deno.copyFile(ARCHIVE_SCRIPT_SOURCE, script);
        const err = await archiveWith(
          "bk-archive-script",
          archiveCommand({ ...good, script }),
          "the WAL wait did not stop when archive_command kept failing: it would have waited " +
            "the whole BACKUP_WAL_TIMEOUT_S",
        );
        assert.equal(err.code, "WAL_ARCHIVE_FAILED");
        assert.match(err.message, /archive_command failed \d+ times for [0-9A-F]{24}/);
        assert.ok(
          err.message.includes(
            `the OS user postgres cannot read ${script}: it cannot enter ${locked} ` +
              "(mode 0700, owner root)",
          ),
          err.message,
        );
        assert.match(err.message, /deno task cli backup install-archiver/);
      });

      await t.step("a deno PostgreSQL cannot even start: the archiver stops", async () => {
        // Like deno installed under /root/.deno/bin: exit code 126, and PostgreSQL stops
        // its archiver instead of counting a failure.
        const deno = `${locked}/bin/deno`;
        await Deno.mkdir(`${locked}/bin`, { mode: 0o755 });
        await Deno.symlink(Deno.execPath(), deno);
        const err = await archiveWith(
          "bk-archive-deno",
          archiveCommand({ ...good, deno }),
          "the WAL wait did not notice the archiver stopping: it would have waited the whole " +
            "BACKUP_WAL_TIMEOUT_S",
        );
        assert.equal(err.code, "WAL_ARCHIVE_FAILED");
        assert.match(err.message, /the archiver process stopped/);
        assert.ok(
          err.message.includes(
            `the OS user postgres cannot run ${deno}: it cannot enter ${locked} ` +
              "(mode 0700, owner root)",
          ),
          err.message,
        );
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(locked, { recursive: true });
    }
  },
});

Deno.test("archive_mode off is reported at once, before any WAL switch", async () => {
  await using pg = await startPostgres({ name: "bk-archive-off" });
  const sql = pool(pg.url);
  try {
    const segment = () => pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    const before = await segment();
    await assert.rejects(
      switchAndAwaitArchive(sql, { dir: "/nonexistent", timeoutMs: 600_000, now: Date.now }),
      (err) =>
        isRuntimeError(err, "WAL_ARCHIVE_FAILED") && /archive_mode is off/.test(err.message) &&
        /install-archiver/.test(err.message),
    );
    assert.equal(await segment(), before);
  } finally {
    await sql.end();
  }
});

Deno.test({
  name: "deno test's DENO_COVERAGE_DIR (inside the checkout) does not reach archive_command",
  ignore: !ROOT,
  fn: async () => {
    const dir = await tempDir("rs-archiving-env-");
    const locked = await rootOnlyDir();
    // What `deno test --coverage` does: every deno started below would write coverage
    // into the (root-only) checkout, and fail there as the postgres user.
    const saved = Deno.env.get("DENO_COVERAGE_DIR");
    Deno.env.set("DENO_COVERAGE_DIR", `${locked}/.coverage`);
    try {
      const good = await installArchiver(tools, {
        archiveDir: `${dir}/wal`,
        scriptDir: `${dir}/archiver`,
      });
      assert.equal(good.probed, true);
      await using pg = await startPostgres({
        name: "bk-archive-env",
        settings: { archive_mode: "on", archive_command: good.command },
      });
      const sql = pool(pg.url);
      try {
        const abort = new AbortController();
        const result = await within(
          60_000,
          "a working archive_command did not archive a segment",
          abort,
          switchAndAwaitArchive(sql, {
            dir: good.archiveDir,
            timeoutMs: 600_000,
            now: Date.now,
            signal: abort.signal,
          }),
        );
        assert.equal(result.status, "fulfilled", String((result as PromiseRejectedResult).reason));
        const { segment } = (result as PromiseFulfilledResult<{ segment: string }>).value;
        assert.equal(
          await pg.psql("SELECT failed_count || ' ' || last_archived_wal FROM pg_stat_archiver"),
          `0 ${segment}`,
        );
      } finally {
        await sql.end();
      }
    } finally {
      if (saved === undefined) Deno.env.delete("DENO_COVERAGE_DIR");
      else Deno.env.set("DENO_COVERAGE_DIR", saved);
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(locked, { recursive: true });
    }
  },
});
