/**
 * `deno task cluster`: the production topology as local processes on one machine, no
 * Docker — PostgreSQL primary + streaming replica, Redis master + replica + 3 Sentinels,
 * VictoriaMetrics (when installed), and 3 runtime instances on consecutive ports. Prints
 * their URLs; Ctrl-C (or SIGTERM) stops everything, runtimes first.
 *
 * Hardened like deploy/compose.yaml (docs/security.md, "Deployment hardening"): a local CA
 * and certificate from deploy/tls/generate.sh; PostgreSQL with TLS, reached with
 * sslmode=verify-full; Redis and the Sentinels TLS-only, the data nodes with the ACL users of
 * deploy/redis/users.acl.template (the runtimes as `rootstream`), the Sentinels with a
 * password; passwords in config files (0600), never on a command line.
 *
 * Flags: `--base-port N` (first runtime port, default 8081; the other services use
 * ports above it), `--dir PATH` (default: a new temporary directory; PostgreSQL runs as
 * the `postgres` user when started by root, so the path must be traversable by it: a
 * --dir below a directory it cannot enter, such as a checkout in /root, is refused at
 * once with the directory named).
 * @module
 */
import { parseArgs } from "node:util";
import { z } from "zod";
import { accessProblem, lookupAccount } from "../lib/os_access.ts";
import { createDatabase, withServer } from "../store/backup_server.ts";
import { childEnvironment, createPgTools, type PgServerProcess } from "../store/pg_tools.ts";

const encoder = new TextEncoder();

function say(line: string): void {
  Deno.stderr.writeSync(encoder.encode(`[cluster] ${line}\n`));
}

/** A process of the topology, stopped in reverse start order. */
interface Member {
  name: string;
  stop(): Promise<void>;
}

async function commandExists(name: string): Promise<boolean> {
  try {
    const out = await new Deno.Command("sh", {
      args: ["-c", `command -v ${name}`],
      stdout: "null",
      stderr: "null",
    }).output();
    return out.success;
  } catch {
    return false;
  }
}

/** Pipes a child's output to stderr with a name prefix, line by line. */
function prefixOutput(name: string, stream: ReadableStream<Uint8Array>): Promise<void> {
  return (async () => {
    let buf = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        Deno.stderr.writeSync(encoder.encode(`${name.padEnd(11)}| ${buf.slice(0, i)}\n`));
        buf = buf.slice(i + 1);
      }
    }
  })().catch(() => {});
}

/** Spawns a long-running process whose output is prefixed; stop = signal + wait. */
function spawn(
  name: string,
  cmd: string,
  args: string[],
  options: { env?: Record<string, string>; cwd?: string; stopSignal?: Deno.Signal } = {},
): { child: Deno.ChildProcess; member: Member } {
  const child = new Deno.Command(cmd, {
    args,
    // Servers get the allow-list only (store/pg_tools.ts); a runtime is given its settings.
    clearEnv: true,
    env: options.env ?? childEnvironment(),
    cwd: options.cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const out = Promise.all([prefixOutput(name, child.stdout), prefixOutput(name, child.stderr)]);
  let stopping: Promise<void> | null = null;
  return {
    child,
    member: {
      name,
      stop() {
        stopping ??= (async () => {
          try {
            child.kill(options.stopSignal ?? "SIGTERM");
          } catch { /* already gone */ }
          const timer = setTimeout(() => {
            try {
              child.kill("SIGKILL");
            } catch { /* gone */ }
          }, 15_000);
          await child.status;
          clearTimeout(timer);
          await out;
        })();
        return stopping;
      },
    },
  };
}

async function waitFor(what: string, check: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** TLS material and passwords of the local topology. */
interface Secrets {
  certs: string;
  passwords: { runtime: string; sentinelNode: string; replica: string; sentinel: string };
}

/** redis-cli over TLS as `user`; the password travels in REDISCLI_AUTH, not in argv. */
async function redisCli(
  secrets: Secrets,
  auth: { user?: string; password: string },
  port: number,
  ...args: string[]
): Promise<string> {
  const out = await new Deno.Command("redis-cli", {
    args: [
      "--tls",
      "--cacert",
      `${secrets.certs}/ca.crt`,
      "-h",
      "127.0.0.1",
      "-p",
      String(port),
      ...(auth.user ? ["--user", auth.user] : []),
      ...args,
    ],
    env: { REDISCLI_AUTH: auth.password },
    stdout: "piped",
    stderr: "null",
  }).output();
  return new TextDecoder().decode(out.stdout).trim();
}

function randomPassword(): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(16)),
    (b) => b.toString(16).padStart(2, "0"),
  )
    .join("");
}

async function sha256Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", encoder.encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The shipped ACL rules with this topology's password hashes (comments dropped). */
async function aclFile(secrets: Secrets): Promise<string> {
  const template = await Deno.readTextFile(
    new URL("../deploy/redis/users.acl.template", import.meta.url),
  );
  const p = secrets.passwords;
  return template.split("\n").filter((l) => l && !l.startsWith("#")).join("\n")
    .replace("__RUNTIME_SHA256__", await sha256Hex(p.runtime))
    .replace("__SENTINEL_SHA256__", await sha256Hex(p.sentinelNode))
    .replace("__REPLICA_SHA256__", await sha256Hex(p.replica)) + "\n";
}

/** A local CA and a certificate for 127.0.0.1 / localhost, by the shipped script. */
async function makeCertificates(dir: string, ownerUid: number | null): Promise<string> {
  const certs = `${dir}/certs`;
  const out = await new Deno.Command("sh", {
    args: [
      new URL("../deploy/tls/generate.sh", import.meta.url).pathname,
      certs,
      "localhost,127.0.0.1",
    ],
    env: ownerUid === null ? {} : { OWNER_UID: String(ownerUid) },
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`generating certificates failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return certs;
}

const flags = z.object({
  "base-port": z.string().regex(/^\d+$/, "must be a port number").transform(Number)
    .refine((n) => n >= 1024 && n <= 65000, "must be between 1024 and 65000").default(8081),
  dir: z.string().min(1).optional(),
});

/** Starts the topology and runs until a signal; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  let opts: z.infer<typeof flags>;
  try {
    const { values } = parseArgs({
      args: argv,
      options: { "base-port": { type: "string" }, dir: { type: "string" } },
      strict: true,
    });
    const parsed = flags.safeParse(values);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      console.error(`Invalid --${String(issue.path[0])}: ${issue.message}`);
      return 2;
    }
    opts = parsed.data;
  } catch (err) {
    console.error(`Invalid command line: ${err instanceof Error ? err.message : err}`);
    return 2;
  }
  for (const bin of ["redis-server", "redis-sentinel", "redis-cli"]) {
    if (!(await commandExists(bin))) {
      console.error(`${bin} is not installed. HINT: apt-get install redis-server redis-sentinel`);
      return 1;
    }
  }
  const base = opts["base-port"];
  const ports = {
    runtimes: [base, base + 1, base + 2],
    pgPrimary: base + 10,
    pgReplica: base + 11,
    redisMaster: base + 20,
    redisReplica: base + 21,
    sentinels: [base + 30, base + 31, base + 32],
    victoria: base + 40,
  };
  let dir: string;
  if (opts.dir) {
    dir = opts.dir.startsWith("/") ? opts.dir : `${Deno.cwd()}/${opts.dir.replace(/^\.\//, "")}`;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.mkdir(dir, { recursive: true });
  } else {
    dir = await Deno.makeTempDir({ prefix: "rootstream-cluster-" });
  }
  // The postgres user must be able to reach its data directories below this one.
  await Deno.chmod(dir, 0o755);
  say(`working directory ${dir}`);
  const pg = createPgTools();
  if (pg.dropsPrivileges) {
    const account = await lookupAccount(pg.serverUser);
    const problem = account ? await accessProblem(account, dir, { need: "enter" }) : null;
    if (problem) {
      console.error(
        `Cannot run PostgreSQL in ${dir}: ${problem}. HINT: PostgreSQL runs as the OS user ` +
          `${pg.serverUser}; pass a --dir it can reach (or none: a new directory under /tmp)`,
      );
      if (!opts.dir) await Deno.remove(dir, { recursive: true }).catch(() => {});
      return 1;
    }
  }

  if (!(await commandExists("openssl"))) {
    console.error("openssl is not installed. HINT: apt-get install openssl");
    if (!opts.dir) await Deno.remove(dir, { recursive: true }).catch(() => {});
    return 1;
  }
  const serverAccount = pg.dropsPrivileges ? await lookupAccount(pg.serverUser) : null;
  const secrets: Secrets = {
    // PostgreSQL (as its OS user) must own its key; Redis runs as this user (root then).
    certs: await makeCertificates(dir, serverAccount?.uid ?? null),
    passwords: {
      runtime: randomPassword(),
      sentinelNode: randomPassword(),
      replica: randomPassword(),
      sentinel: randomPassword(),
    },
  };
  const tls = {
    cert: `${secrets.certs}/localhost.crt`,
    key: `${secrets.certs}/localhost.key`,
    ca: `${secrets.certs}/ca.crt`,
  };

  const members: Member[] = [];
  const stopAll = async () => {
    for (const m of members.reverse()) {
      say(`stopping ${m.name}`);
      await m.stop().catch((err) => say(`${m.name}: ${err}`));
    }
  };
  const { promise: interrupted, resolve: interrupt } = Promise.withResolvers<string>();
  const onSignal = (sig: string) => () => interrupt(sig);
  const sigint = onSignal("SIGINT");
  const sigterm = onSignal("SIGTERM");
  Deno.addSignalListener("SIGINT", sigint);
  Deno.addSignalListener("SIGTERM", sigterm);

  try {
    // PostgreSQL primary + replica (per-node settings on the command line).
    const primaryDir = `${dir}/pg-primary/data`;
    await pg.prepareDir(`${dir}/pg-primary`);
    await pg.initdb(primaryDir);
    const replication = {
      wal_level: "replica",
      max_wal_senders: 10,
      max_replication_slots: 10,
      hot_standby: "on",
      wal_log_hints: "on",
      wal_keep_size: "256MB",
      listen_addresses: "127.0.0.1",
      ssl: "on",
      ssl_cert_file: tls.cert,
      ssl_key_file: tls.key,
    };
    const primary: PgServerProcess = await pg.startServer(primaryDir, {
      port: ports.pgPrimary,
      settings: { ...replication, cluster_name: "pg1" },
    });
    members.push({ name: "pg-primary", stop: () => primary.stop() });
    await withServer(
      primary.url(),
      { applicationName: "rootstream-cluster" },
      (sql) => createDatabase(sql, "rootstream"),
    );
    const replicaDir = `${dir}/pg-replica/data`;
    await pg.prepareDir(`${dir}/pg-replica`);
    await pg.runOk("pg_basebackup", ["-D", replicaDir, "-R", "-X", "stream", "-c", "fast"], {
      connection: { url: primary.url() },
      asServerUser: true,
    });
    const replica = await pg.startServer(replicaDir, {
      port: ports.pgReplica,
      settings: { ...replication, cluster_name: "pg2" },
      readyTimeoutMs: 60_000,
    });
    members.push({ name: "pg-replica", stop: () => replica.stop() });
    say(`PostgreSQL primary :${ports.pgPrimary}, replica :${ports.pgReplica}`);

    // Redis master + replica + 3 Sentinels, TLS only. The data nodes get the shipped ACL
    // users and a config file with masterauth (0600); the Sentinels one with their passwords.
    const acl = `${dir}/users.acl`;
    await Deno.writeTextFile(acl, await aclFile(secrets), { mode: 0o600 });
    const tlsArgs = [
      "--tls-cert-file",
      tls.cert,
      "--tls-key-file",
      tls.key,
      "--tls-ca-cert-file",
      tls.ca,
      "--tls-auth-clients",
      "no",
      "--tls-replication",
      "yes",
    ];
    const redisArgs = (port: number, name: string) => [
      `${dir}/${name}/node.conf`,
      "--port",
      "0",
      "--tls-port",
      String(port),
      ...tlsArgs,
      "--bind",
      "127.0.0.1",
      "--protected-mode",
      "yes",
      "--aclfile",
      acl,
      "--masteruser",
      "replica",
      "--save",
      "",
      "--appendonly",
      "no",
      "--dir",
      `${dir}/${name}`,
      "--repl-diskless-sync-delay",
      "0",
    ];
    for (const name of ["redis-master", "redis-replica"]) {
      await Deno.mkdir(`${dir}/${name}`, { recursive: true });
      const replicaOf = name === "redis-replica"
        ? `replicaof 127.0.0.1 ${ports.redisMaster}\n`
        : "";
      await Deno.writeTextFile(
        `${dir}/${name}/node.conf`,
        `masterauth "${secrets.passwords.replica}"\n${replicaOf}`,
        { mode: 0o600 },
      );
    }
    members.push(
      spawn("redis", "redis-server", redisArgs(ports.redisMaster, "redis-master")).member,
    );
    members.push(
      spawn("redis-repl", "redis-server", redisArgs(ports.redisReplica, "redis-replica")).member,
    );
    const asSentinelUser = { user: "sentinel", password: secrets.passwords.sentinelNode };
    await waitFor(
      "redis",
      async () =>
        (await redisCli(secrets, asSentinelUser, ports.redisReplica, "INFO", "replication"))
          .includes("master_link_status:up"),
    );
    for (const [i, port] of ports.sentinels.entries()) {
      const conf = `${dir}/sentinel-${i + 1}.conf`;
      await Deno.writeTextFile(
        conf,
        [
          "port 0",
          `tls-port ${port}`,
          `tls-cert-file ${tls.cert}`,
          `tls-key-file ${tls.key}`,
          `tls-ca-cert-file ${tls.ca}`,
          "tls-auth-clients no",
          "tls-replication yes",
          "bind 127.0.0.1",
          `dir ${dir}`,
          `requirepass "${secrets.passwords.sentinel}"`,
          `sentinel sentinel-pass "${secrets.passwords.sentinel}"`,
          `sentinel monitor rootstream 127.0.0.1 ${ports.redisMaster} 2`,
          "sentinel auth-user rootstream sentinel",
          `sentinel auth-pass rootstream "${secrets.passwords.sentinelNode}"`,
          "sentinel down-after-milliseconds rootstream 2000",
          "sentinel failover-timeout rootstream 10000",
          "",
        ].join("\n"),
        { mode: 0o600 },
      );
      members.push(spawn(`sentinel-${i + 1}`, "redis-sentinel", [conf]).member);
    }
    await waitFor("sentinels to see each other", async () => {
      const out = await redisCli(
        secrets,
        { password: secrets.passwords.sentinel },
        ports.sentinels[0],
        "SENTINEL",
        "MASTER",
        "rootstream",
      );
      const lines = out.split("\n");
      const field = (k: string) => Number(lines[lines.indexOf(k) + 1]);
      return field("num-other-sentinels") >= 2 && field("num-slaves") >= 1;
    });
    say(
      `Redis master :${ports.redisMaster}, replica :${ports.redisReplica}, Sentinels :${
        ports.sentinels.join(", :")
      } (TLS, ACL users)`,
    );

    // VictoriaMetrics (accepts the InfluxDB v2 write API), when installed.
    let influxUrl: string | null = null;
    if (await commandExists("victoria-metrics")) {
      members.push(
        spawn("victoria", "victoria-metrics", [
          `-httpListenAddr=127.0.0.1:${ports.victoria}`,
          `-storageDataPath=${dir}/victoria`,
          "-loggerLevel=WARN",
        ]).member,
      );
      influxUrl = `http://127.0.0.1:${ports.victoria}`;
      await waitFor("VictoriaMetrics", async () => (await fetch(`${influxUrl}/health`)).ok);
      say(`VictoriaMetrics ${influxUrl}`);
    } else {
      say(
        "victoria-metrics is not installed: metrics go nowhere (apt-get install victoria-metrics)",
      );
    }

    // Three runtime instances sharing one secret key, and one admin token (the operator
    // views need a credential; RS_ADMIN_TOKEN from the environment wins).
    const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
    const adminToken = Deno.env.get("RS_ADMIN_TOKEN") ||
      btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
    const sentinels = ports.sentinels.map((p) => `127.0.0.1:${p}`).join(",");
    const pgUrl = (port: number) =>
      `postgres://postgres@localhost:${port}/rootstream?sslmode=verify-full&sslrootcert=${tls.ca}`;
    const urls: string[] = [];
    for (const [i, port] of ports.runtimes.entries()) {
      const id = `node-${i + 1}`;
      const env: Record<string, string> = {
        ...Deno.env.toObject(),
        DATABASE_URL: pgUrl(ports.pgPrimary),
        DATABASE_NODES: `pg1=${pgUrl(ports.pgPrimary)},pg2=${pgUrl(ports.pgReplica)}`,
        REDIS_SENTINELS: sentinels,
        REDIS_SENTINEL_MASTER: "rootstream",
        // With Sentinels the URL carries the data nodes' user and password, and rediss:
        // TLS to the data nodes and the Sentinels alike.
        REDIS_URL:
          `rediss://rootstream:${secrets.passwords.runtime}@127.0.0.1:${ports.redisMaster}`,
        REDIS_CA_FILE: tls.ca,
        REDIS_SENTINEL_PASSWORD: secrets.passwords.sentinel,
        RS_SECRET_KEY: key,
        RS_ADMIN_TOKEN: adminToken,
        RS_INSTANCE_ID: id,
        RS_PORT: String(port),
        RS_DATA_DIR: `${dir}/${id}`,
      };
      if (influxUrl) {
        Object.assign(env, {
          INFLUX_URL: influxUrl,
          INFLUX_TOKEN: "local",
          INFLUX_ORG: "rootstream",
          INFLUX_BUCKET: "metrics",
        });
      }
      const { member } = spawn(id, Deno.execPath(), ["run", "--allow-all", "main.ts"], {
        env,
        cwd: new URL("..", import.meta.url).pathname,
      });
      members.push(member);
      urls.push(`http://127.0.0.1:${port}`);
    }
    await Promise.all(
      urls.map((u) =>
        waitFor(`${u}/health`, async () => (await fetch(`${u}/health`)).status === 200, 120_000)
      ),
    );
    console.log("RootStream cluster is up:");
    for (const [i, u] of urls.entries()) console.log(`  node-${i + 1}  ${u}  (console: ${u}/)`);
    console.log(`Admin token (operator views, admin actions): ${adminToken}`);
    console.log(
      "Sign in to the console with an admin account: printf '%s' \"$PASSWORD\" | " +
        `DATABASE_URL='${pgUrl(ports.pgPrimary)}' deno task cli users create-admin ` +
        "--username admin --email admin@example.com --password-stdin",
    );
    console.log("Press Ctrl-C to stop everything.");
    const sig = await interrupted;
    say(`received ${sig}`);
    return 0;
  } catch (err) {
    say(`failed: ${err instanceof Error ? err.message : err}`);
    return 1;
  } finally {
    Deno.removeSignalListener("SIGINT", sigint);
    Deno.removeSignalListener("SIGTERM", sigterm);
    await stopAll();
    if (!opts.dir) await Deno.remove(dir, { recursive: true }).catch(() => {});
    say("stopped");
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
