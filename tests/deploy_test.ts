/**
 * deploy/ cannot be run here (no Docker engine), so this checks what can be checked:
 * the files parse, every referenced file exists, every service is health-checked, the
 * runtime gets only settings the code reads, the image pins the Deno CI uses, and the
 * hardening of finding 7 (TLS everywhere, HSTS, nginx overwriting X-Forwarded-For, Redis ACL
 * users, protected mode, Sentinels with auth, no password on a command line, no fail-point).
 * tests/deploy_tls_test.ts runs the runtime against real TLS servers with the same
 * certificate script and ACL rules.
 */
import assert from "node:assert/strict";
import { parse } from "yaml";

const DEPLOY = new URL("../deploy/", import.meta.url);
const ROOT = new URL("../", import.meta.url);

interface Service {
  image?: string;
  restart?: string;
  command?: unknown;
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
      "certs",
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
      // The one-shot certificate generator runs to completion instead; who needs it waits.
      if (name === "certs") {
        assert.equal(svc.restart, "no");
        continue;
      }
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
    for (
      const f of [
        "postgres/init-primary.sh",
        "postgres/replica-entrypoint.sh",
        "redis/entrypoint.sh",
        "redis/sentinel-entrypoint.sh",
        "tls/generate.sh",
      ]
    ) {
      const shell = f.startsWith("postgres/") ? "bash" : "sh";
      const out = await new Deno.Command(shell, {
        args: ["-n", new URL(f, DEPLOY).pathname],
        stderr: "piped",
      }).output();
      assert.equal(out.code, 0, `${f}: ${new TextDecoder().decode(out.stderr)}`);
    }
  });

  const runtimeEnvs = ["runtime-1", "runtime-2", "runtime-3"].map((id) =>
    services[id].environment ?? {}
  );
  const read = (f: string) => Deno.readTextFile(new URL(f, DEPLOY));

  await t.step("TLS at the edge with HSTS; plain http only redirects", async () => {
    const nginx = await read("nginx/nginx.conf");
    assert.match(nginx, /listen 443 ssl;/);
    assert.match(nginx, /ssl_certificate \/certs\/nginx\.crt;/);
    assert.match(nginx, /ssl_protocols TLSv1\.2 TLSv1\.3;/);
    const hsts = /add_header Strict-Transport-Security "max-age=(\d+)[^"]*" always;/.exec(nginx);
    assert.ok(hsts && Number(hsts[1]) >= 31_536_000, "HSTS for at least a year");
    const plain = /server \{\s*listen 80;([\s\S]*?)\n {2}\}/.exec(nginx)?.[1] ?? "";
    assert.ok(plain, "the port-80 server block");
    assert.doesNotMatch(plain, /proxy_pass/, "port 80 forwards nothing");
    assert.match(plain, /return 301 https:/);
    assert.deepEqual(services.lb.healthcheck?.test, [
      "CMD",
      "curl",
      "-fsS",
      "--cacert",
      "/certs/ca.crt",
      "https://localhost/health",
    ]);
  });

  await t.step(
    "nginx overwrites X-Forwarded-For; the runtimes trust exactly that hop",
    async () => {
      const nginx = await read("nginx/nginx.conf");
      assert.doesNotMatch(nginx, /\$proxy_add_x_forwarded_for/, "never append to the client's");
      const proxied = nginx.match(/proxy_pass /g)?.length ?? 0;
      const overwritten = nginx.match(/proxy_set_header X-Forwarded-For \$remote_addr;/g)?.length;
      assert.equal(overwritten, proxied, "every proxied location sets it");
      assert.equal(nginx.match(/proxy_set_header X-Geo-Location "";/g)?.length, proxied);
      for (const env of runtimeEnvs) {
        assert.equal(env.RS_TRUSTED_PROXY_HOPS, "1");
        assert.equal(env.RS_TRUST_PROXY, undefined, "the removed setting");
      }
    },
  );

  await t.step("the runtimes reach PostgreSQL and Redis over verified TLS", () => {
    for (const env of runtimeEnvs) {
      const urls = [
        env.DATABASE_URL,
        ...env.DATABASE_NODES.split(",").map((n) => n.slice(n.indexOf("=") + 1)),
      ];
      for (const url of urls) {
        // Compose substitutes ${...} later: give the URL parser a placeholder password.
        const params = new URL(url.replace(/\$\{[^}]*\}/g, "secret")).searchParams;
        assert.equal(params.get("sslmode"), "verify-full", url);
        assert.equal(params.get("sslrootcert"), "/certs/ca.crt", url);
      }
      assert.match(env.REDIS_URL, /^rediss:\/\/rootstream:/, "TLS as the runtime's ACL user");
      assert.equal(env.REDIS_CA_FILE, "/certs/ca.crt");
      assert.ok(env.REDIS_SENTINEL_PASSWORD, "Sentinels need a password");
      assert.equal(env.RS_ENV, "production");
      for (const key of ["FAILOVER_FAILPOINT", "RS_TEST_FAILPOINTS"]) {
        assert.equal(env[key], undefined, `${key} has no place in production`);
      }
    }
    for (const name of ["runtime-1", "pg-primary", "pg-replica-1", "redis-master", "lb"]) {
      assert.ok(services[name].volumes?.includes("certs:/certs:ro"), `${name} mounts the certs`);
    }
    for (const name of ["runtime-1", "pg-primary", "pg-replica-1", "redis-master"]) {
      assert.deepEqual(services[name].depends_on?.certs, {
        condition: "service_completed_successfully",
      });
    }
    assert.match(
      JSON.stringify(services.certs.entrypoint),
      /generate\.sh \/certs nginx,.* postgres,pg-primary,pg-replica-1,pg-replica-2.* redis,redis-master,redis-replica.* sentinel,redis-sentinel-1,redis-sentinel-2,redis-sentinel-3/,
    );
  });

  await t.step("PostgreSQL accepts network clients over TLS only", async () => {
    const conf = await read("postgres/postgresql.conf");
    assert.match(conf, /^ssl = on$/m);
    assert.match(conf, /^ssl_cert_file = '\/certs\/postgres\.crt'$/m);
    const hba = (await read("postgres/pg_hba.conf")).split("\n")
      .filter((l) => l.trim() && !l.startsWith("#")).map((l) => l.trim().split(/\s+/));
    for (const [type, , , address] of hba) {
      if (type === "host") assert.equal(address, "127.0.0.1/32", "plain TCP only from inside");
    }
    assert.ok(hba.some(([type, , , , method]) => type === "hostnossl" && method === "reject"));
    const replica = await read("postgres/replica-entrypoint.sh");
    assert.match(replica, /PGSSLMODE=verify-full PGSSLROOTCERT=\/certs\/ca\.crt/);
  });

  await t.step("Redis: TLS only, protected mode, ACL users, default user off", async () => {
    const conf = await read("redis/redis.conf");
    assert.match(conf, /^port 0$/m, "no plain port");
    assert.match(conf, /^tls-port 6379$/m);
    assert.match(conf, /^tls-replication yes$/m);
    assert.match(conf, /^protected-mode yes$/m);
    assert.doesNotMatch(conf, /protected-mode no|requirepass/);
    assert.match(conf, /^aclfile \/run\/redis\/users\.acl$/m);
    const acl = (await read("redis/users.acl.template")).split("\n")
      .filter((l) => l.startsWith("user "));
    const user = (name: string) => acl.find((l) => l.startsWith(`user ${name} `)) ?? "";
    assert.equal(user("default"), "user default off");
    assert.match(user("rootstream"), / #__RUNTIME_SHA256__ resetkeys ~rs:\* resetchannels &rs:\* /);
    assert.match(user("rootstream"), / -@admin -@dangerous /);
    assert.match(user("sentinel"), / -@all /);
    assert.match(user("replica"), / -@all \+psync \+replconf \+ping$/);
    assert.ok(acl.every((l) => !/ >/.test(l)), "no password in clear: SHA-256 only");
  });

  await t.step("Sentinels: TLS, a password, and their own user on the data nodes", async () => {
    const conf = await read("redis/sentinel.conf.template");
    assert.match(conf, /^port 0$/m);
    assert.match(conf, /^tls-port 26379$/m);
    assert.match(conf, /^tls-replication yes$/m);
    assert.match(conf, /^sentinel auth-user rootstream sentinel$/m);
    const entry = await read("redis/sentinel-entrypoint.sh");
    assert.match(entry, /printf 'requirepass "%s"\\n' "\$REDIS_SENTINEL_PASSWORD"/);
    assert.match(entry, /printf 'sentinel auth-pass rootstream "%s"\\n'/);
  });

  await t.step("no password on any command line", async () => {
    for (const [name, svc] of Object.entries(services)) {
      for (const argv of [svc.command, svc.entrypoint]) {
        assert.doesNotMatch(JSON.stringify(argv ?? ""), /PASSWORD|requirepass|masterauth/i, name);
      }
    }
    for (const f of ["redis/entrypoint.sh", "redis/sentinel-entrypoint.sh"]) {
      const script = await read(f);
      // Passwords only through printf, a shell builtin; the environment is cleared after.
      for (const line of script.split("\n").filter((l) => /\$REDIS_\w*PASSWORD/.test(l))) {
        assert.match(line, /printf|hash "\$|: "\$\{/, `${f}: ${line.trim()}`);
      }
      assert.match(script, /^unset REDIS_/m, `${f} drops the passwords before exec`);
    }
  });

  await t.step("the README's .env names every secret the compose requires", async () => {
    const compose = await read("compose.yaml");
    const readme = await read("README.md");
    const required = new Set([...compose.matchAll(/\$\{(\w+):\?/g)].map((m) => m[1]));
    for (const name of required) assert.match(readme, new RegExp(`^${name}=`, "m"), name);
  });
});
