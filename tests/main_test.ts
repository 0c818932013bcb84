/**
 * `deno task run` as a user runs it: a separate process, real signals, real exit codes.
 */
import assert from "node:assert/strict";
import { freePort, startPostgres, startRedis } from "./harness/mod.ts";
import { launchInstance as launch, ROOT, RUN_ARGS } from "./support/instance.ts";
import { ADMIN_HEADERS, TEST_ADMIN_TOKEN } from "./support/auth.ts";

const KEY = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));

async function runToExit(env: Record<string, string>, args: string[] = []) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "main.ts", ...args],
    cwd: ROOT,
    env: { ...env, RUST_BACKTRACE: "0" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stderr: new TextDecoder().decode(out.stderr),
  };
}

Deno.test("main: `deno task run` keeps PGlite's WebAssembly in V8's baseline tier", async () => {
  // Optimising PostgreSQL's hot functions costs over 1 GB of compiler memory after start
  // (docs/scaling.md, "Embedded mode: memory and start time"); tests launch the same way.
  const config = JSON.parse(await Deno.readTextFile(`${ROOT}/deno.json`));
  assert.equal(config.tasks.run, `deno ${RUN_ARGS.join(" ")}`);
  assert.ok(RUN_ARGS.includes("--v8-flags=--liftoff-only"));
  // The container image starts the instance the same way.
  const dockerfile = await Deno.readTextFile(`${ROOT}/deploy/Dockerfile`);
  const cmd = /^CMD (\[.*\])$/m.exec(dockerfile)?.[1];
  assert.deepEqual(cmd && JSON.parse(cmd), ["deno", ...RUN_ARGS]);
});

Deno.test("main: invalid configuration stops start-up naming the variable", async () => {
  const res = await runToExit({ RS_PORT: "eighty", LOG_FORMAT: "xml" });
  assert.equal(res.code, 2);
  assert.match(res.stderr, /RS_PORT \(--port\) must be an integer/);
  assert.match(res.stderr, /LOG_FORMAT must be text or json, got "xml"/);
  const flag = await runToExit({}, ["--port=-5"]);
  assert.equal(flag.code, 2);
  assert.match(flag.stderr, /RS_PORT \(--port\) must be an integer/);
});

Deno.test("main: a bad concern setting exits 2 naming it, before anything is opened", async () => {
  // A bad BACKUP_* value used to surface in the backup concern's factory, after the key
  // was generated and the database opened (exit 1). Now it is part of the one configuration.
  const dataDir = await Deno.makeTempDir({ prefix: "rs-main-badcfg-" });
  try {
    const res = await runToExit({ RS_DATA_DIR: dataDir, BACKUP_SCHEDULE_FULL: "at two" });
    assert.equal(res.code, 2, res.stderr);
    assert.match(res.stderr, /BACKUP_SCHEDULE_FULL must be a cron expression.*, got "at two"/);
    const written = [...Deno.readDirSync(dataDir)].map((e) => e.name);
    assert.deepEqual(written, [], "no key generated and no embedded database opened");
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("main: fail-points need the test-only flag and are refused in production (finding 7)", async (t) => {
  const dataDir = await Deno.makeTempDir({ prefix: "rs-main-failpoint-" });
  try {
    await t.step("FAILOVER_FAILPOINT without RS_TEST_FAILPOINTS=1 does not start", async () => {
      const res = await runToExit({
        RS_DATA_DIR: dataDir,
        FAILOVER_FAILPOINT: "exit-after-promote",
      });
      assert.equal(res.code, 2, res.stderr);
      assert.match(res.stderr, /FAILOVER_FAILPOINT is a test-only fault injection/);
    });
    for (const name of ["RS_ENV", "NODE_ENV"]) {
      await t.step(`RS_TEST_FAILPOINTS=1 with ${name}=production does not start`, async () => {
        const res = await runToExit({
          RS_DATA_DIR: dataDir,
          [name]: "production",
          RS_TEST_FAILPOINTS: "1",
          FAILOVER_FAILPOINT: "exit-after-promote",
        });
        assert.equal(res.code, 2, res.stderr);
        assert.match(
          res.stderr,
          new RegExp(`RS_TEST_FAILPOINTS=1 is refused with ${name}=production`),
        );
      });
    }
    const written = [...Deno.readDirSync(dataDir)].map((e) => e.name);
    assert.deepEqual(written, [], "nothing opened before the refusal");
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("main: an unreachable database is retried, then start-up fails clearly", async () => {
  const port = await freePort();
  const res = await runToExit({
    DATABASE_URL: `postgres://postgres:pw@127.0.0.1:${port}/rootstream`,
    DATABASE_CONNECT_TIMEOUT_S: "2",
    RS_SECRET_KEY: KEY,
  });
  assert.equal(res.code, 1);
  assert.match(res.stderr, /database unreachable, retrying/);
  assert.match(res.stderr, /start-up failed: Cannot reach the database at .* after \d+ attempts/);
  assert.match(res.stderr, /DATABASE_CONNECT_FAILED/);
});

Deno.test({
  name: "main: with no environment it starts embedded and says what is unavailable",
  fn: async () => {
    const dataDir = await Deno.makeTempDir({ prefix: "rs-main-embedded-" });
    const inst = await launch({
      RS_DATA_DIR: dataDir,
      RS_PORT: "0",
      PATH: Deno.env.get("PATH")!,
      RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
    });
    try {
      // A probe sees the status only; the details are for operators.
      const probe = await (await fetch(`${inst.url}/health`)).json();
      assert.deepEqual(probe, { status: "ok" });
      const res = await fetch(`${inst.url}/health`, { headers: ADMIN_HEADERS });
      const body = await res.json();
      assert.equal(res.status, 200);
      assert.deepEqual(body.mode, { database: "embedded", bus: "in-process" });
      assert.ok(body.unavailable.failover && body.unavailable.cluster);
      const firstLines = inst.stderr().split("\n").slice(0, 2).join("\n");
      assert.match(firstLines, /mode: embedded PostgreSQL \(PGlite\).*unavailable in this mode/);
      assert.match(firstLines, /mode: in-process message bus/);
      const secret = await Deno.stat(`${dataDir}/secret.key`);
      assert.equal(secret.mode! & 0o077, 0, "the generated key is private to its owner");
    } finally {
      const status = await inst.stop("SIGTERM");
      assert.equal(status.code, 0, inst.stderr());
      assert.match(inst.stderr(), /received SIGTERM, shutting down/);
      await Deno.remove(dataDir, { recursive: true });
    }
  },
});

Deno.test("main: with DATABASE_URL and REDIS_URL it uses those servers, stops on SIGINT", async () => {
  await using pg = await startPostgres();
  await using redis = await startRedis();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-main-server-" });
  const inst = await launch({
    DATABASE_URL: await pg.createDatabase(),
    REDIS_URL: redis.url,
    RS_SECRET_KEY: KEY,
    RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
    RS_DATA_DIR: dataDir,
  }, ["--port", "0", "--instance-id", "it-1"]);
  try {
    const body = await (await fetch(`${inst.url}/health`, { headers: ADMIN_HEADERS })).json();
    assert.equal(body.status, "ok");
    assert.equal(body.instance, "it-1");
    assert.deepEqual(body.mode, { database: "postgres", bus: "redis" });
    // The instance is really connected to these servers.
    const clients = await redis.cli("CLIENT", "LIST");
    assert.match(clients, /name=rs-it-1/);
    const apps = await pg.psql(
      "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rootstream-it-1'",
    );
    assert.ok(Number(apps) >= 1);
  } finally {
    const status = await inst.stop("SIGINT");
    assert.equal(status.code, 0, inst.stderr());
    assert.match(inst.stderr(), /received SIGINT/);
    await Deno.remove(dataDir, { recursive: true });
  }
});
