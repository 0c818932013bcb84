/**
 * deploy/ cannot be run here (no Docker engine), so this checks what can be checked:
 * the files parse, every referenced file exists, every service is health-checked, the
 * runtime gets only settings the code reads, and the image pins the Deno CI uses.
 */
import assert from "node:assert/strict";
import { parse } from "yaml";

const DEPLOY = new URL("../deploy/", import.meta.url);
const ROOT = new URL("../", import.meta.url);

interface Service {
  image?: string;
  build?: { context: string; dockerfile: string };
  volumes?: string[];
  depends_on?: Record<string, unknown>;
  environment?: Record<string, string>;
  healthcheck?: { test: unknown };
  entrypoint?: unknown;
}

async function exists(url: URL): Promise<boolean> {
  try {
    await Deno.stat(url);
    return true;
  } catch {
    return false;
  }
}

/** Every file under the given source folders, as text (to check settings are read). */
async function sources(): Promise<string> {
  let text = "";
  for (const dir of ["lib", "store", "actors", "api", "runtime.ts", "main.ts"]) {
    const url = new URL(dir, ROOT);
    const info = await Deno.stat(url);
    if (info.isFile) {
      text += await Deno.readTextFile(url);
      continue;
    }
    const stack = [url.pathname];
    while (stack.length) {
      const d = stack.pop()!;
      for await (const e of Deno.readDir(d)) {
        if (e.isDirectory) stack.push(`${d}/${e.name}`);
        else if (e.name.endsWith(".ts")) text += await Deno.readTextFile(`${d}/${e.name}`);
      }
    }
  }
  return text;
}

Deno.test("deploy/ topology", async (t) => {
  const compose = parse(await Deno.readTextFile(new URL("compose.yaml", DEPLOY)), {
    merge: true,
  }) as { services: Record<string, Service> };
  const services = compose.services;

  await t.step("it has the production topology", () => {
    const names = Object.keys(services).sort();
    assert.deepEqual(names, [
      "influxdb",
      "lb",
      "pg-primary",
      "pg-replica-1",
      "pg-replica-2",
      "redis-master",
      "redis-replica",
      "redis-sentinel-1",
      "redis-sentinel-2",
      "redis-sentinel-3",
      "runtime-1",
      "runtime-2",
      "runtime-3",
    ]);
  });

  await t.step("every service is health-checked and depends only on services that exist", () => {
    for (const [name, svc] of Object.entries(services)) {
      assert.ok(svc.healthcheck?.test, `${name} has no health check`);
      for (const dep of Object.keys(svc.depends_on ?? {})) {
        assert.ok(dep in services, `${name} depends on unknown ${dep}`);
      }
    }
  });

  await t.step("every mounted file and the build context exist", async () => {
    for (const [name, svc] of Object.entries(services)) {
      for (const v of svc.volumes ?? []) {
        const source = v.split(":")[0];
        if (!source.startsWith(".")) continue; // a named volume
        assert.ok(await exists(new URL(source, DEPLOY)), `${name}: ${source} is missing`);
      }
      if (svc.build) {
        const context = new URL(svc.build.context.replace(/\/?$/, "/"), DEPLOY);
        assert.ok(await exists(new URL(svc.build.dockerfile, context)), `${name}: no Dockerfile`);
        assert.ok(await exists(new URL("deno.lock", context)), `${name}: no deno.lock`);
      }
    }
  });

  await t.step("the runtime gets only settings the code reads", async () => {
    const code = await sources();
    for (const id of ["runtime-1", "runtime-2", "runtime-3"]) {
      const env = services[id].environment ?? {};
      assert.ok(env.DATABASE_URL && env.REDIS_SENTINELS && env.RS_SECRET_KEY, `${id} env`);
      for (const key of Object.keys(env)) {
        assert.ok(code.includes(`"${key}"`), `${id}: ${key} is not read anywhere`);
      }
    }
    const ids = ["runtime-1", "runtime-2", "runtime-3"].map((id) =>
      services[id].environment!.RS_INSTANCE_ID
    );
    assert.equal(new Set(ids).size, 3, "instance ids are unique");
  });

  await t.step(
    "Sentinels monitor the master with a safe down-after and no copied myid",
    async () => {
      const conf = await Deno.readTextFile(new URL("redis/sentinel.conf.template", DEPLOY));
      assert.match(conf, /^sentinel monitor rootstream redis-master 6379 2$/m);
      const downAfter = Number(/down-after-milliseconds rootstream (\d+)/.exec(conf)?.[1]);
      assert.ok(downAfter >= 2000);
      assert.doesNotMatch(conf, /^sentinel myid/m);
    },
  );

  await t.step(
    "the Dockerfile uses the official image at CI's Deno version, non-root",
    async () => {
      const docker = await Deno.readTextFile(new URL("Dockerfile", DEPLOY));
      const ci = await Deno.readTextFile(new URL(".ci/run", ROOT));
      const version = /DENO_VERSION=(\S+)/.exec(ci)![1];
      assert.match(
        docker,
        new RegExp(`^FROM denoland/deno:${version.replaceAll(".", "\\.")}$`, "m"),
      );
      assert.match(docker, /deno install --frozen/);
      assert.match(docker, /^USER deno$/m);
    },
  );

  await t.step("the shell scripts parse", async () => {
    for (const f of ["postgres/init-primary.sh", "postgres/replica-entrypoint.sh"]) {
      const out = await new Deno.Command("bash", {
        args: ["-n", new URL(f, DEPLOY).pathname],
        stderr: "piped",
      }).output();
      assert.equal(out.code, 0, `${f}: ${new TextDecoder().decode(out.stderr)}`);
    }
  });
});
