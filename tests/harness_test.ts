import assert from "node:assert/strict";
import { HARNESS_ROOT, sweepLeftovers } from "./harness/_base.ts";
import { AS_POSTGRES, childrenOf, isAlive, PG_BIN, runOk } from "./harness/_process.ts";
import { freePort, HarnessError, startPostgres, startRedis, startReplica } from "./harness/mod.ts";

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

async function eventually(what: string, check: () => Promise<boolean>, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

Deno.test("freePort hands out distinct bindable ports", async () => {
  const ports = await Promise.all(Array.from({ length: 20 }, () => freePort()));
  assert.equal(new Set(ports).size, ports.length);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: ports[0] });
  listener.close();
});

Deno.test("two PostgreSQL servers run at once and both answer queries", async (t) => {
  const [a, b] = await Promise.all([startPostgres(), startPostgres({ name: "second" })]);
  await using pgA = a;
  await using pgB = b;

  await t.step("they listen on different ports as different clusters", async () => {
    assert.notEqual(pgA.port, pgB.port);
    assert.notEqual(pgA.pid, pgB.pid);
    assert.equal(await pgB.psql("show cluster_name"), "second");
    assert.equal(await pgA.psql("show cluster_name"), pgA.name);
    assert.equal(pgA.url, `postgres://postgres@127.0.0.1:${pgA.port}/postgres`);
  });

  await t.step("each keeps its own data", async () => {
    await pgA.psql("create table t(v text); insert into t values ('from a')");
    await pgB.psql("create table t(v text); insert into t values ('from b')");
    assert.equal(await pgA.psql("select v from t"), "from a");
    assert.equal(await pgB.psql("select v from t"), "from b");
  });

  await t.step("createDatabase returns a URL of a new, usable database", async () => {
    const url = await pgA.createDatabase();
    const db = new URL(url).pathname.slice(1);
    assert.match(db, /^db_[0-9a-f]+$/);
    assert.equal(await pgA.psql("select current_database()", { database: db }), db);
    assert.equal(await pgA.createDatabase("named_db"), pgA.urlFor("named_db"));
  });

  await t.step("psql reports SQL errors with the server's message", async () => {
    await assert.rejects(pgA.psql("select * from missing_table"), (err: unknown) => {
      assert.ok(err instanceof HarnessError);
      assert.equal(err.code, "COMMAND_FAILED");
      assert.match(err.message, /relation "missing_table" does not exist/);
      return true;
    });
  });

  await t.step("replication settings are in place", async () => {
    assert.equal(await pgA.psql("show wal_level"), "replica");
    assert.equal(await pgA.psql("show fsync"), "off");
    assert.equal(await pgA.psql("show listen_addresses"), "127.0.0.1");
  });
});

Deno.test("a replica streams rows inserted on the primary", async (t) => {
  await using primary = await startPostgres({ name: "primary" });
  await primary.psql(
    "create table t(id int primary key, note text); insert into t values (1, 'seed')",
  );
  await using replica = await startReplica(primary, { name: "replica", slot: "replica_slot" });

  await t.step("the replica is a streaming hot standby of the primary", async () => {
    assert.ok(await exists(`${replica.dataDir}/standby.signal`));
    assert.equal(await replica.psql("select pg_is_in_recovery()"), "t");
    assert.equal(await replica.psql("select status from pg_stat_wal_receiver"), "streaming");
    assert.equal(
      await primary.psql("select application_name || ' ' || state from pg_stat_replication"),
      "replica streaming",
    );
    assert.equal(
      await primary.psql(
        "select active from pg_replication_slots where slot_name = 'replica_slot'",
      ),
      "t",
    );
    assert.equal(await replica.psql("select note from t where id = 1"), "seed");
  });

  await t.step("a new row on the primary appears on the replica", async () => {
    await primary.psql("insert into t values (2, 'after backup')");
    await eventually("row 2 on the replica", async () => {
      return (await replica.psql("select count(*) from t where id = 2")) === "1";
    });
  });

  await t.step("the replica refuses writes", async () => {
    await assert.rejects(replica.psql("insert into t values (3, 'x')"), /read-only transaction/);
  });
});

Deno.test("a SIGKILLed PostgreSQL restarts on the same data dir and port", async (t) => {
  await using pg = await startPostgres();
  await pg.psql("create table t(v int); insert into t values (42)");
  const { port, dataDir } = pg;
  const oldPid = pg.pid;
  const oldChildren = childrenOf(oldPid);
  assert.ok(oldChildren.length > 0, "a postmaster has auxiliary processes");

  await t.step("kill() returns once the postmaster and its children are gone", async () => {
    await pg.kill();
    assert.equal(isAlive(oldPid), false);
    for (const child of oldChildren) assert.equal(isAlive(child.pid, child.startTime), false);
    assert.deepEqual(pg.processes(), [], "nothing runs in the data directory");
    await assert.rejects(pg.psql("select 1"));
    assert.ok(await exists(`${dataDir}/postmaster.pid`), "the crash leaves its lock file behind");
  });

  await t.step("start() recovers the committed data", async () => {
    await pg.start();
    assert.notEqual(pg.pid, oldPid);
    assert.equal(pg.port, port);
    assert.equal(await pg.psql("select v from t"), "42");
  });

  await t.step("stop() then start() works and stop() is idempotent", async () => {
    await pg.stop();
    await pg.stop();
    await assert.rejects(pg.psql("select 1"));
    await pg.start();
    assert.equal(await pg.psql("select v from t"), "42");
  });

  await t.step("start() fails fast with the log tail when the port is taken", async () => {
    await pg.stop();
    const squatter = Deno.listen({ hostname: "127.0.0.1", port });
    try {
      const began = Date.now();
      await assert.rejects(pg.start(), (err: unknown) => {
        assert.ok(err instanceof HarnessError);
        assert.equal(err.code, "SERVER_START_FAILED");
        assert.match(err.message, /could not bind|Address already in use/);
        return true;
      });
      assert.ok(Date.now() - began < 10_000);
    } finally {
      squatter.close();
    }
    await pg.start();
    assert.equal(await pg.psql("select v from t"), "42");
  });

  await t.step("a SIGSTOPped server is still stopped by dispose", async () => {
    await pg.kill("SIGSTOP");
    assert.ok(isAlive(pg.pid));
  });
});

Deno.test("start() is not fooled by lock files of a postmaster it did not start", async (t) => {
  await using pg = await startPostgres();
  await pg.psql("create table t(v int); insert into t values (7)");
  const lock = `${pg.socketDir}/.s.PGSQL.${pg.port}.lock`;
  const lockPid = async () => Number((await Deno.readTextFile(lock)).split("\n")[0]);

  await t.step("a postmaster pg_ctl started, then SIGKILLed", async () => {
    await pg.stop();
    // What the failover manager does to rejoin a node: pg_ctl starts the postmaster and
    // exits, so the postmaster's parent becomes init. An init that does not reap orphans
    // (as in some containers) keeps it a zombie for good once killed, and PostgreSQL's
    // kill(pid, 0) takes a zombie for a live postmaster holding the socket's lock.
    await runOk([
      ...AS_POSTGRES,
      `${PG_BIN}/pg_ctl`,
      "-D",
      pg.dataDir,
      "-l",
      `${pg.dataDir}/../pg_ctl.log`,
      "-w",
      "-o",
      `-p ${pg.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=${pg.socketDir}`,
      "start",
    ]);
    const foreign = await lockPid();
    assert.ok(pg.processes().some((p) => p.pid === foreign), "pg_ctl's postmaster runs there");
    Deno.kill(foreign, "SIGKILL");
    await eventually(
      "the killed postmaster and its children to leave the data directory",
      () => Promise.resolve(pg.processes().length === 0),
    );
    assert.equal(await lockPid(), foreign, "the crash leaves the socket's lock behind");
    await pg.start();
    assert.notEqual(pg.pid, foreign);
    assert.equal(await pg.psql("select v from t"), "7");
  });

  await t.step("a lock naming a live process that is no postmaster of this directory", async () => {
    await pg.kill();
    // A pid reused by an unrelated process of PostgreSQL's own OS user (PostgreSQL ignores
    // one it may not signal), which kill(pid, 0) finds alive.
    const [cmd, ...args] = [...AS_POSTGRES, "sleep", "60"];
    const squatter = new Deno.Command(cmd, { args, cwd: "/tmp", stdout: "null", stderr: "null" })
      .spawn();
    try {
      await Deno.writeTextFile(lock, `${squatter.pid}\n${pg.dataDir}\n`);
      await pg.start();
      assert.equal(await pg.psql("select v from t"), "7");
      assert.equal(await lockPid(), pg.pid, "the live postmaster holds the lock again");
    } finally {
      squatter.kill("SIGKILL");
      await squatter.status;
    }
  });
});

Deno.test("redis-server starts, answers, is killed and restarts", async (t) => {
  await using redis = await startRedis();

  await t.step("cli talks to it", async () => {
    assert.equal(redis.url, `redis://127.0.0.1:${redis.port}`);
    assert.equal(await redis.cli("ping"), "PONG");
    assert.equal(await redis.cli("set", "k", "v"), "OK");
    assert.equal(await redis.cli("get", "k"), "v");
    assert.equal(await redis.cli("config", "get", "save"), "save\n");
  });

  await t.step("cli throws on an error reply", async () => {
    await assert.rejects(redis.cli("no-such-command"), /unknown command/);
  });

  await t.step("kill() then start() gives a fresh server on the same port", async () => {
    const { pid, port } = redis;
    await redis.kill();
    assert.equal(isAlive(pid), false);
    await assert.rejects(redis.cli("ping"));
    await redis.start();
    assert.notEqual(redis.pid, pid);
    assert.equal(redis.port, port);
    assert.equal(await redis.cli("ping"), "PONG");
    assert.equal(await redis.cli("get", "k"), "", "nothing is persisted");
  });

  await t.step("extra args reach the server", async () => {
    await using replica = await startRedis({
      args: ["--replicaof", "127.0.0.1", String(redis.port)],
    });
    await redis.cli("set", "shared", "yes");
    await eventually("replication of key 'shared'", async () => {
      return (await replica.cli("get", "shared")) === "yes";
    });
  });
});

Deno.test("dispose stops the processes and removes the directories", async () => {
  let dirs: string[];
  let pids: { pid: number; startTime?: string }[];
  {
    await using pg = await startPostgres();
    await using replica = await startReplica(pg);
    await using redis = await startRedis();
    dirs = [pg.dataDir, pg.socketDir, replica.dataDir, redis.dir];
    // The servers and whatever children they have now (a child may also end on its own,
    // e.g. a finished walsender: only the servers themselves must be running).
    pids = [pg, replica, redis].flatMap((s) => [{ pid: s.pid }, ...childrenOf(s.pid)]);
    for (const dir of dirs) assert.ok(await exists(dir), dir);
    for (const s of [pg, replica, redis]) assert.ok(isAlive(s.pid), `pid ${s.pid} runs`);
  }
  for (const dir of dirs) assert.equal(await exists(dir), false, dir);
  for (const p of pids) assert.equal(isAlive(p.pid, p.startTime), false, `pid ${p.pid}`);
});

Deno.test("leftovers of a dead test process are killed and removed", async () => {
  // A finished process's pid stands in for a test process that died.
  const dead = new Deno.Command("true").spawn();
  await dead.status;
  const port = await freePort();
  const leftover = `${HARNESS_ROOT}/${dead.pid}-deadbeef`;
  await Deno.mkdir(`${leftover}/redis-x`, { recursive: true });
  await Deno.writeTextFile(`${leftover}/owner`, `${dead.pid} 1\n`);
  const orphan = new Deno.Command("redis-server", {
    args: ["--port", String(port), "--bind", "127.0.0.1", "--save", ""],
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    await Deno.writeTextFile(`${leftover}/redis-x/server.pid`, `${orphan.pid}\n`);
    await sweepLeftovers();
    assert.equal(await exists(leftover), false);
    assert.equal((await orphan.status).signal, "SIGKILL");
  } finally {
    try {
      orphan.kill("SIGKILL");
    } catch {
      // already gone
    }
    await orphan.status;
    await Deno.remove(leftover, { recursive: true }).catch(() => {});
  }
});

Deno.test("servers a test process forgot to dispose die when it exits", async () => {
  const script = `
    import { startPostgres, startRedis } from ${
    JSON.stringify(import.meta.resolve("./harness/mod.ts"))
  };
    const [pg, redis] = await Promise.all([startPostgres(), startRedis()]);
    console.log(JSON.stringify({ pids: [pg.pid, redis.pid], dir: pg.dataDir }));
  `;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), 30_000);
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", script],
    stdout: "piped",
    stderr: "piped",
    signal: abort.signal,
  }).output().finally(() => clearTimeout(timer));
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, stderr);
  const { pids, dir } = JSON.parse(new TextDecoder().decode(out.stdout));
  await eventually("the forgotten servers to die", () => {
    return Promise.resolve(pids.every((pid: number) => !isAlive(pid)));
  });
  assert.equal(await exists(dir), false);
});
