import assert from "node:assert/strict";
import { loadConfig } from "../../concerns/config.ts";
import { redactUrl, SETTINGS } from "../../lib/config.ts";
import { isRuntimeError } from "../../lib/errors.ts";

const KEY = btoa(String.fromCharCode(...new Uint8Array(32).fill(7)));

function errorOf(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected an error");
}

Deno.test("config", async (t) => {
  await t.step("defaults describe embedded, single-instance mode", () => {
    const c = loadConfig({ env: {}, args: [], hostname: "host.example", pid: 42 });
    assert.equal(c.http.port, 8080);
    assert.equal(c.http.host, "127.0.0.1");
    assert.equal(c.database.url, null);
    assert.equal(c.redis.url, null);
    assert.deepEqual(c.redis.sentinels, []);
    assert.equal(c.dataDir, "./.rootstream");
    assert.equal(c.instanceId, "host.example-42");
    assert.equal(c.secretKey, null);
  });

  await t.step("embedded mode's template cache: XDG, else ~/.cache, RS_CACHE_DIR, or off", () => {
    const dir = (env: Record<string, string>) =>
      loadConfig({ env, args: [], hostname: "h", pid: 1 }).cacheDir;
    assert.equal(dir({}), null);
    assert.equal(dir({ HOME: "/home/u/" }), "/home/u/.cache/rootstream");
    assert.equal(dir({ HOME: "/home/u", XDG_CACHE_HOME: "/var/c" }), "/var/c/rootstream");
    // The XDG base directory spec ignores a relative path.
    assert.equal(dir({ HOME: "/home/u", XDG_CACHE_HOME: "c" }), "/home/u/.cache/rootstream");
    assert.equal(dir({ HOME: "/home/u", RS_CACHE_DIR: "/srv/cache" }), "/srv/cache");
    assert.equal(dir({ HOME: "/home/u", RS_CACHE_DIR: "off" }), null);
  });

  await t.step("environment is parsed and flags override it", () => {
    const c = loadConfig({
      env: {
        RS_PORT: "9000",
        DATABASE_URL: "postgres://u:p@db:5432/rs",
        REDIS_URL: "redis://:pw@cache:6380/2",
        REDIS_SENTINELS: "s1:26379, s2:26380",
        RS_SECRET_KEY: KEY,
        LOG_LEVEL: "debug",
        DATABASE_POOL_SIZE: "5",
      },
      args: ["--port", "9100", "--instance-id", "node-a"],
    });
    assert.equal(c.http.port, 9100);
    assert.equal(c.instanceId, "node-a");
    assert.equal(c.database.url, "postgres://u:p@db:5432/rs");
    assert.equal(c.database.poolSize, 5);
    assert.deepEqual(c.redis.sentinels, [{ host: "s1", port: 26379 }, { host: "s2", port: 26380 }]);
    assert.equal(c.log.level, "debug");
    assert.equal(c.secretKey?.length, 32);
    assert.equal(c.secretKey?.[0], 7);
  });

  await t.step("empty variables count as unset", () => {
    const c = loadConfig({ env: { DATABASE_URL: "", RS_PORT: "" }, args: [] });
    assert.equal(c.database.url, null);
    assert.equal(c.http.port, 8080);
  });

  await t.step("each wrong value is named with what it expects", () => {
    const err = errorOf(() =>
      loadConfig({
        env: { RS_PORT: "http", LOG_LEVEL: "loud", DATABASE_URL: "mysql://x/y" },
        args: [],
      })
    );
    assert.ok(isRuntimeError(err, "CONFIG_INVALID"));
    assert.match(err.message, /RS_PORT \(--port\) must be an integer .*got "http"/);
    assert.match(err.message, /LOG_LEVEL \(--log-level\) must be one of debug, info, warn, error/);
    assert.match(err.message, /DATABASE_URL \(--database-url\) must be a URL like postgres:\/\//);
  });

  await t.step("REDIS_CLUSTER_NODES selects a Redis Cluster; never with Sentinels", () => {
    const c = loadConfig({
      env: { REDIS_CLUSTER_NODES: "n1:7000, [::1]:7001,n3:7002" },
      args: [],
    });
    assert.deepEqual(c.redis.clusterNodes, [
      { host: "n1", port: 7000 },
      { host: "::1", port: 7001 },
      { host: "n3", port: 7002 },
    ]);
    assert.equal(c.redis.url, null);
    assert.deepEqual(loadConfig({ env: {}, args: [] }).redis.clusterNodes, []);
    assert.match(
      errorOf(() => loadConfig({ env: { REDIS_CLUSTER_NODES: "n1:7000,n2" }, args: [] })).message,
      /REDIS_CLUSTER_NODES must be a comma-separated list of host:port/,
    );
    const both = errorOf(() =>
      loadConfig({ env: { REDIS_CLUSTER_NODES: "n1:7000", REDIS_SENTINELS: "s:26379" }, args: [] })
    );
    assert.ok(isRuntimeError(both, "CONFIG_INVALID"), String(both));
    assert.match(both.message, /REDIS_SENTINELS and REDIS_CLUSTER_NODES are both set/);
  });

  await t.step("out-of-range numbers and bad lists are refused", () => {
    assert.match(
      errorOf(() => loadConfig({ env: { RS_PORT: "70000" }, args: [] })).message,
      /between 0 and 65535/,
    );
    assert.match(
      errorOf(() => loadConfig({ env: { REDIS_SENTINELS: "a:1,b" }, args: [] })).message,
      /REDIS_SENTINELS must be a comma-separated list of host:port/,
    );
    assert.match(
      errorOf(() => loadConfig({ env: { RS_KEY_PREFIX: "has space" }, args: [] })).message,
      /RS_KEY_PREFIX must be/,
    );
  });

  await t.step("a bad secret key is refused without echoing it", () => {
    const err = errorOf(() => loadConfig({ env: { RS_SECRET_KEY: "c2hvcnQta2V5" }, args: [] }));
    assert.match(err.message, /RS_SECRET_KEY must be 32 bytes encoded as base64/);
    assert.ok(!err.message.includes("c2hvcnQta2V5"));
  });

  await t.step("an unknown flag lists the known ones", () => {
    const err = errorOf(() => loadConfig({ env: {}, args: ["--prot", "1"] }));
    assert.ok(isRuntimeError(err, "CONFIG_INVALID"));
    assert.match(err.message, /Unknown option '--prot'.*--port/);
  });

  await t.step("every setting is documented", () => {
    for (const s of SETTINGS) assert.ok(s.description.length > 10, s.env);
  });

  await t.step("redactUrl masks passwords", () => {
    assert.equal(redactUrl("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
    assert.equal(redactUrl("not a url"), "<invalid url>");
  });
});

Deno.test("the README's configuration table lists every setting", async () => {
  const readme = await Deno.readTextFile(new URL("../../README.md", import.meta.url));
  for (const s of SETTINGS) {
    assert.match(readme, new RegExp(`^\\| \`${s.env}\` `, "m"), `${s.env} missing`);
  }
});
