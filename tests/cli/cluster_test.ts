/**
 * `deno task cluster` brings up the local topology (PostgreSQL primary + replica, Redis
 * + replica + 3 Sentinels, VictoriaMetrics when installed, 3 runtimes), prints the
 * URLs, and stops everything on Ctrl-C.
 */
import assert from "node:assert/strict";
import { getJson, ROOT, until } from "../support/instance.ts";
import { TEST_ADMIN_TOKEN } from "../support/auth.ts";

function portFree(port: number): boolean {
  try {
    Deno.listen({ hostname: "127.0.0.1", port }).close();
    return true;
  } catch {
    return false;
  }
}

/** A base port whose whole block (runtimes, PG, Redis, Sentinels, metrics) is free. */
function freeBlock(): number {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20000 + Math.floor(Math.random() * 35000);
    const used = [0, 1, 2, 10, 11, 20, 21, 30, 31, 32, 40].map((d) => base + d);
    if (used.every(portFree)) return base;
  }
  throw new Error("no free port block");
}

Deno.test("deno task cluster: three instances up, everything stopped on Ctrl-C", async () => {
  const base = freeBlock();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "cli/cluster.ts", "--base-port", String(base)],
    cwd: ROOT,
    env: {
      NO_COLOR: "1",
      RUST_BACKTRACE: "0",
      LOG_LEVEL: "warn",
      RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
    },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let out = "";
  let err = "";
  const outDone = (async () => {
    for await (const c of child.stdout.pipeThrough(new TextDecoderStream())) out += c;
  })();
  const errDone = (async () => {
    for await (const c of child.stderr.pipeThrough(new TextDecoderStream())) err += c;
  })();
  try {
    await until(() => out.includes("Press Ctrl-C"), { ms: 120_000, what: `the cluster\n${err}` });
    const urls = [...out.matchAll(/node-\d\s+(http:\/\/\S+)/g)].map((m) => m[1]);
    assert.equal(urls.length, 3);
    assert.deepEqual(urls, [0, 1, 2].map((i) => `http://127.0.0.1:${base + i}`));
    await until(async () => {
      const body = await getJson<{ members: { id: string }[] }>(`${urls[0]}/cluster`);
      return body.members.length === 3;
    }, { what: "three members" });
    const health = await getJson<{ status: string; mode: { bus: string } }>(`${urls[2]}/health`);
    assert.equal(health.mode.bus, "redis");
    assert.match(err, /Sentinels :\d+, :\d+, :\d+ \(TLS, ACL users\)/);
  } finally {
    child.kill("SIGINT");
    const status = await child.status;
    await Promise.all([outDone, errDone]);
    assert.equal(status.code, 0, err.slice(-2000));
  }
  assert.match(err, /stopping pg-primary/);
  for (const d of [0, 1, 2, 10, 20, 30]) {
    assert.ok(portFree(base + d), `port ${base + d} is released`);
  }
});

Deno.test({
  name: "deno task cluster: a --dir PostgreSQL's user cannot enter is refused at once",
  // As another user PostgreSQL runs as that user, who can enter its own directories.
  ignore: Deno.uid() !== 0,
  fn: async () => {
    const locked = await Deno.makeTempDir({ prefix: "rs-cluster-locked-" });
    await Deno.chmod(locked, 0o700);
    try {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-all", "cli/cluster.ts", "--dir", `${locked}/c`],
        cwd: ROOT,
        env: { NO_COLOR: "1", RUST_BACKTRACE: "0" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const err = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 1, err);
      assert.match(
        err,
        new RegExp(
          `Cannot run PostgreSQL in ${locked}/c: .*it cannot enter ${locked} \\(mode 0700`,
        ),
      );
      assert.doesNotMatch(err, /PostgreSQL primary :/);
    } finally {
      await Deno.remove(locked, { recursive: true });
    }
  },
});
