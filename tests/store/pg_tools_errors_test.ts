/**
 * store/pg_tools.ts when a PostgreSQL program cannot do its job: a typed error or result
 * that says what is wrong (and what to change), never a hang or a silent success.
 */
import assert from "node:assert/strict";
import { isRuntimeError, type RuntimeError } from "../../lib/errors.ts";
import {
  connectionEnv,
  createPgTools,
  pgCtlStart,
  pgCtlStop,
  pgRewind,
} from "../../store/pg_tools.ts";

const tools = createPgTools();
const asRoot = Deno.uid() === 0;

function expectCode(fn: () => unknown, code: string): RuntimeError {
  try {
    fn();
  } catch (err) {
    assert.ok(isRuntimeError(err), `a RuntimeError, got ${err}`);
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail("it should have thrown");
}

async function rejected(promise: Promise<unknown>): Promise<RuntimeError> {
  const err = await promise.then(() => null, (e) => e);
  assert.ok(isRuntimeError(err), `a RuntimeError, got ${err}`);
  return err;
}

/** A directory the server user may use (the tests may run as root). */
async function serverDir(prefix: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix });
  await Deno.chmod(dir, 0o755);
  return dir;
}

Deno.test("pg_tools refuses bad input before running anything", async (t) => {
  await t.step("database URLs that cannot be used are named as such", () => {
    const garbage = expectCode(() => connectionEnv({ url: "not a url" }), "VALIDATION_FAILED");
    assert.match(garbage.message, /cannot be parsed/);
    const mysql = expectCode(
      () => connectionEnv({ url: "mysql://root@db/app" }),
      "VALIDATION_FAILED",
    );
    assert.match(mysql.message, /postgres:\/\//);
  });

  await t.step("setting names are checked, not passed to a shell", async () => {
    expectCode(
      () => pgCtlStart(tools, "/nonexistent", { logFile: "/dev/null", settings: { "a;b": "1" } }),
      "VALIDATION_FAILED",
    );
    const setting = await rejected(
      tools.startServer("/nonexistent", { settings: { "x y": "1" } }),
    );
    assert.equal(setting.code, "VALIDATION_FAILED");
  });
});

Deno.test({
  name: "server programs as root need the server OS user, whichever tool runner asks",
  ignore: !asRoot,
  fn: async () => {
    const dir = await serverDir("rs-pgtools-user-");
    try {
      // A runner for the usual user first: its lookup must not answer for another user.
      await tools.chownToServerUser(dir);
      const nobody = createPgTools({ serverUser: "rs-no-such-user" });
      const err = await rejected(nobody.chownToServerUser(dir));
      assert.equal(err.code, "PG_TOOL_FAILED");
      assert.match(err.message, /no OS user rs-no-such-user/);
      assert.match(err.message, /HINT: create it/);
      // And the usual user still works after the failed lookup.
      await tools.chownToServerUser(dir);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("programs on a directory that holds no cluster say so", async (t) => {
  const dir = await serverDir("rs-pgtools-empty-");
  try {
    await tools.prepareDir(`${dir}/data`);

    await t.step("postgres exits during start-up, with the reason from its log", async () => {
      const err = await rejected(tools.startServer(`${dir}/data`, {
        tcp: false,
        socketDir: dir,
        logPath: `${dir}/server.log`,
      }));
      assert.equal(err.code, "PG_TOOL_FAILED");
      assert.match(err.message, /exited during start-up/);
      assert.match(err.message, /PG_VERSION|not a database cluster|No such file/i);
    });

    await t.step("pg_ctl stop and pg_rewind fail with their own words", async () => {
      const stop = await pgCtlStop(tools, `${dir}/data`, { timeoutS: 5 });
      assert.equal(stop.success, false);
      assert.match(stop.stderr, /not a database cluster|PID file|not running/i);
      const rewind = await pgRewind(tools, {
        dataDir: `${dir}/data`,
        source: { url: "postgres://postgres@127.0.0.1:1/postgres" },
        timeoutMs: 30_000,
      });
      assert.equal(rewind.success, false);
      assert.equal(rewind.noRewindNeeded, false);
      assert.ok(rewind.stderr.trim().length > 0, "pg_rewind says why");
    });

    await t.step("pg_controldata on it is PG_TOOL_FAILED quoting stderr", async () => {
      const err = await rejected(tools.controlData(`${dir}/data`));
      assert.equal(err.code, "PG_TOOL_FAILED");
      assert.match(err.message, /pg_controldata/);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
