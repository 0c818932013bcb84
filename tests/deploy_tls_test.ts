/**
 * Finding 7, for real: the runtime reaches PostgreSQL over TLS with
 * `sslmode=verify-full&sslrootcert=…` and Redis over `rediss://` with REDIS_CA_FILE, as the
 * least-privilege ACL user of the shipped deploy/redis/users.acl.template, with
 * certificates made by the shipped deploy/tls/generate.sh. Every connection of the runtime
 * is encrypted, no command it sent was refused by the ACL, and a server whose certificate
 * does not chain to the configured CA is refused.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import postgres from "postgres";
import { loadConfig } from "../concerns/config.ts";
import { startRuntime } from "../runtime.ts";
import { pgConnectArgs } from "../store/pg_tls.ts";
import { closeRedis, createRedisClient } from "../store/redis.ts";
import { freePort, startPostgres, startRedis } from "./harness/mod.ts";
import { ROOT } from "./support/instance.ts";
import { TEST_ADMIN_TOKEN } from "./support/auth.ts";

const KEY = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

async function sh(args: string[], env: Record<string, string> = {}): Promise<string> {
  const out = await new Deno.Command(args[0], { args: args.slice(1), env, cwd: ROOT }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return text.trim();
}

/** A CA and a certificate for localhost / 127.0.0.1, by the shipped script. */
async function certificates(ownerUid: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "rs-tls-" });
  await Deno.chmod(dir, 0o755);
  await sh(["sh", "deploy/tls/generate.sh", dir, "localhost,127.0.0.1"], {
    OWNER_UID: ownerUid,
  });
  return dir;
}

Deno.test("deploy: PostgreSQL and Redis over verified TLS, Redis as a least-privilege user", async (t) => {
  const pgUid = Deno.uid() === 0 ? await sh(["id", "-u", "postgres"]) : String(Deno.uid());
  const certs = await certificates(pgUid);
  const stranger = await certificates(pgUid);
  const passwords = { runtime: crypto.randomUUID(), ops: crypto.randomUUID() };
  try {
    await using pg = await startPostgres({
      settings: {
        ssl: "on",
        ssl_cert_file: `${certs}/localhost.crt`,
        ssl_key_file: `${certs}/localhost.key`,
      },
    });
    const plainUrl = new URL(await pg.createDatabase());
    const database = plainUrl.pathname.slice(1);
    const tlsUrl = new URL(plainUrl);
    tlsUrl.hostname = "localhost";
    tlsUrl.search = `?sslmode=verify-full&sslrootcert=${certs}/ca.crt`;

    // The shipped rules; only `default` may PING here (the harness's readiness probe), and
    // an `ops` user of this test reads CLIENT LIST and ACL LOG.
    const template = await Deno.readTextFile(`${ROOT}/deploy/redis/users.acl.template`);
    // Redis ACL files allow no comments: the entrypoint drops them, and so does this.
    const acl = template.split("\n").filter((l) => l && !l.startsWith("#")).join("\n")
      .replace(/^user default off$/m, "user default on nopass -@all +ping")
      .replace("__RUNTIME_SHA256__", sha256(passwords.runtime))
      .replace("__SENTINEL_SHA256__", sha256(crypto.randomUUID()))
      .replace("__REPLICA_SHA256__", sha256(crypto.randomUUID())) +
      `\nuser ops on #${sha256(passwords.ops)} ~* &* +@all\n`;
    assert.doesNotMatch(acl, /__[A-Z]+_SHA256__/, "every placeholder replaced");
    const aclFile = `${certs}/users.acl`;
    await Deno.writeTextFile(aclFile, acl);
    const tlsPort = await freePort();
    await using _redis = await startRedis({
      args: [
        "--tls-port",
        String(tlsPort),
        "--tls-cert-file",
        `${certs}/localhost.crt`,
        "--tls-key-file",
        `${certs}/localhost.key`,
        "--tls-ca-cert-file",
        `${certs}/ca.crt`,
        "--tls-auth-clients",
        "no",
        "--aclfile",
        aclFile,
        "--protected-mode",
        "yes",
      ],
    });

    const dataDir = await Deno.makeTempDir({ prefix: "rs-tls-data-" });
    const runtime = await startRuntime(loadConfig({
      env: {
        DATABASE_URL: tlsUrl.toString(),
        REDIS_URL: `rediss://rootstream:${passwords.runtime}@localhost:${tlsPort}/0`,
        REDIS_CA_FILE: `${certs}/ca.crt`,
        RS_SECRET_KEY: KEY,
        RS_PORT: "0",
        RS_DATA_DIR: dataDir,
        RS_INSTANCE_ID: "tls-1",
        RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
      },
      args: [],
    }));
    const ops = createRedisClient({
      url: `rediss://ops:${passwords.ops}@localhost:${tlsPort}`,
      sentinels: [],
      sentinelMaster: "m",
      sentinelPassword: null,
      keyPrefix: "rs:",
      caFile: `${certs}/ca.crt`,
    }, { name: "tls-test-ops" });
    const superuser = postgres(plainUrl.toString(), { max: 1, onnotice: () => {} });
    try {
      await t.step("a server whose certificate is not from the CA is refused", async () => {
        const wrongCa = new URL(tlsUrl);
        wrongCa.searchParams.set("sslrootcert", `${stranger}/ca.crt`);
        const args = pgConnectArgs(wrongCa.toString());
        const sql = postgres(args.url, { ...args.options, max: 1, connect_timeout: 5 });
        try {
          await assert.rejects(sql`SELECT 1`);
        } finally {
          await sql.end({ timeout: 0 });
        }
        assert.throws(
          () => pgConnectArgs(`${plainUrl}?sslmode=require&sslrootcert=${certs}/ca.crt`),
          /sslrootcert needs sslmode=verify-full/,
        );
        const client = createRedisClient({
          url: `rediss://rootstream:${passwords.runtime}@localhost:${tlsPort}`,
          sentinels: [],
          sentinelMaster: "m",
          sentinelPassword: null,
          keyPrefix: "rs:",
          caFile: `${stranger}/ca.crt`,
        }, {
          name: "tls-test-stranger",
          // A refused handshake never closes the socket under Deno: ioredis's destroy timer
          // ends it, short, and long before this test ends.
          overrides: { retryStrategy: () => null, disconnectTimeout: 10 },
        });
        client.on("error", () => {});
        try {
          // The same server, user and password work with the right CA (below): only the
          // certificate differs.
          await assert.rejects(client.connect());
          assert.notEqual(client.status, "ready");
        } finally {
          client.disconnect();
        }
      });

      await t.step(
        "the runtime works: register and log in through Redis and PostgreSQL",
        async () => {
          const password = "correct horse battery staple";
          const json = { "content-type": "application/json" };
          const reg = await fetch(`${runtime.url}/auth/register`, {
            method: "POST",
            headers: json,
            body: JSON.stringify({ username: "tls", email: "tls@example.com", password }),
          });
          assert.equal(reg.status, 201, await reg.clone().text());
          await reg.body?.cancel();
          const login = await fetch(`${runtime.url}/auth/login`, {
            method: "POST",
            headers: json,
            body: JSON.stringify({ login: "tls", password }),
          });
          assert.equal(login.status, 200, await login.clone().text());
          await login.body?.cancel();
          const health = await fetch(`${runtime.url}/health`);
          assert.equal(health.status, 200);
          await health.body?.cancel();
        },
      );

      await t.step("every database connection of the runtime is TLS", async () => {
        const rows = await superuser<{ ssl: boolean; application_name: string }[]>`
          SELECT s.ssl, a.application_name
          FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
          WHERE a.datname = ${database} AND a.backend_type = 'client backend'
            AND a.pid <> pg_backend_pid()`;
        assert.ok(rows.length >= 1, "the runtime holds connections");
        assert.deepEqual(rows.filter((r) => !r.ssl), [], "no plain connection");
      });

      await t.step("every Redis connection of the runtime is TLS, as user rootstream", async () => {
        await ops.connect();
        const list = String(await ops.call("CLIENT", "LIST")).trim().split("\n");
        const runtimeClients = list.filter((line) => / user=rootstream /.test(line));
        assert.ok(runtimeClients.length >= 2, list.join("\n"));
        for (const line of runtimeClients) {
          assert.match(line, new RegExp(` laddr=127\\.0\\.0\\.1:${tlsPort} `), line);
        }
        // Nothing the runtime sent was refused by its ACL.
        const denied = (await ops.call("ACL", "LOG")) as unknown[];
        assert.deepEqual(denied, [], "no ACL denial");
        // ... and the rules do confine it.
        const probe = createRedisClient({
          url: `rediss://rootstream:${passwords.runtime}@localhost:${tlsPort}`,
          sentinels: [],
          sentinelMaster: "m",
          sentinelPassword: null,
          keyPrefix: "rs:",
          caFile: `${certs}/ca.crt`,
        }, { name: "tls-test-probe", overrides: { retryStrategy: () => null } });
        try {
          await probe.connect();
          await assert.rejects(probe.call("FLUSHALL"), /NOPERM/);
          await assert.rejects(probe.call("CONFIG", "SET", "dir", "/tmp"), /NOPERM/);
          await assert.rejects(probe.call("SET", "other:key", "x"), /NOPERM/);
          assert.equal(await probe.call("SET", "rs:probe", "x"), "OK");
        } finally {
          await closeRedis(probe);
        }
      });
    } finally {
      await closeRedis(ops).catch(() => {});
      await superuser.end();
      await runtime.stop();
      await Deno.remove(dataDir, { recursive: true });
    }
  } finally {
    await Deno.remove(certs, { recursive: true });
    await Deno.remove(stranger, { recursive: true });
  }
});
