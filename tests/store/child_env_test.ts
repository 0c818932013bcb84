/**
 * Finding 7: programs the runtime starts (pg_dump, pg_basebackup, tar, zstd, a `postgres`
 * on restored data and the archive commands that server runs) get an allow-listed
 * environment, never the runtime's secrets. A child Deno process with the secrets in its
 * environment spawns through store/pg_tools.ts; what `env` printed and what the started
 * postmaster's /proc/<pid>/environ holds are checked.
 */
import assert from "node:assert/strict";
import { childEnvironment } from "../../store/pg_tools.ts";
import { ROOT } from "../support/instance.ts";

const SECRETS = {
  RS_SECRET_KEY: "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXk=",
  RS_ADMIN_TOKEN: "admin-token-that-must-not-leak-0123456789",
  BACKUP_ENCRYPTION_KEY: "backup-key-that-must-not-leak",
  INFLUX_TOKEN: "influx-token-that-must-not-leak",
  RS_STATE_WRITE_TOKEN: "state-token-that-must-not-leak-0123456",
  DATABASE_URL: "postgres://u:db-password-that-must-not-leak@db/x",
  REDIS_URL: "redis://:redis-password-that-must-not-leak@r:6379",
};

Deno.test("child environment: an allow-list, never the runtime's secrets", async (t) => {
  await t.step("the allow-list keeps PATH, locale, TZ and libpq's PG* only", () => {
    const env = childEnvironment({ LC_MESSAGES: "C" }, {
      ...SECRETS,
      PATH: "/opt/pg/bin:/usr/bin",
      LANG: "C.UTF-8",
      TZ: "UTC",
      PGSSLROOTCERT: "/certs/ca.crt",
      HOME: "/root",
      DENO_COVERAGE_DIR: "/checkout/.coverage",
    });
    assert.deepEqual(env, {
      PATH: "/opt/pg/bin:/usr/bin",
      LANG: "C.UTF-8",
      TZ: "UTC",
      PGSSLROOTCERT: "/certs/ca.crt",
      LC_MESSAGES: "C",
    });
    assert.equal(childEnvironment({}, {}).PATH, "/usr/local/bin:/usr/bin:/bin");
  });

  await t.step("a spawned tool and a started postgres hold none of them", async () => {
    const scratch = await Deno.makeTempDir({ prefix: "rs-child-env-" });
    await Deno.chmod(scratch, 0o755);
    try {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-all", "tests/fixtures/child_env_probe.ts", scratch],
        cwd: ROOT,
        env: { ...SECRETS, PGAPPNAME: "child-env-probe", TZ: "UTC" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, stderr);
      const { tool, server } = JSON.parse(new TextDecoder().decode(out.stdout)) as {
        tool: string;
        server: string;
      };
      for (const [what, env] of [["env via the spawn helper", tool], ["postgres", server]]) {
        assert.match(env, /^PATH=/m, `${what}: PATH kept`);
        for (const [name, value] of Object.entries(SECRETS)) {
          assert.ok(!env.includes(name), `${what}: ${name} must not be inherited`);
          assert.ok(!env.includes(value), `${what}: the value of ${name} must not be inherited`);
        }
      }
      assert.match(tool, /^PGAPPNAME=child-env-probe$/m, "libpq settings are kept");
      assert.match(tool, /^TZ=UTC$/m);
    } finally {
      await Deno.remove(scratch, { recursive: true });
    }
  });
});
