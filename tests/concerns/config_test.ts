/**
 * The one configuration (concerns/config.ts): the core settings and every concern's own are
 * parsed together into `Config.concerns.<name>`, and one CONFIG_INVALID names every bad
 * variable, whichever part it belongs to.
 */
import assert from "node:assert/strict";
import { CONCERN_CONFIG, loadConfig } from "../../concerns/config.ts";
import { isRuntimeError } from "../../lib/errors.ts";

function errorOf(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected an error");
}

Deno.test("one configuration", async (t) => {
  await t.step("every concern's settings are parsed, with their defaults", () => {
    const c = loadConfig({ env: { RS_DATA_DIR: "/srv/rs" }, args: [] });
    assert.deepEqual(Object.keys(c.concerns).sort(), Object.keys(CONCERN_CONFIG).sort());
    assert.equal(c.concerns.sessions.ttlMs, 43_200_000);
    assert.equal(c.concerns.sync.headsMs, 1000);
    assert.equal(c.concerns.metrics.intervalMs, 10_000);
    assert.deepEqual(c.concerns.failover.nodes, []);
    assert.equal(c.concerns.backup.schedules.full, "0 2 * * *");
    assert.deepEqual(c.concerns.backup.storage, { kind: "local", dir: "/srv/rs/backups" });
  });

  await t.step("the variables given reach each concern", () => {
    const c = loadConfig({
      env: {
        SESSION_MAX_PER_USER: "3",
        RS_SYNC_HEADS_MS: "250",
        METRICS_INTERVAL_MS: "500",
        DATABASE_NODES: "pg1=postgres://u:p@db1/app",
        BACKUP_SCHEDULE_FULL: "off",
        RS_ADMIN_TOKEN: "an-admin-token-of-some-length-0123456789",
      },
      args: [],
    });
    assert.equal(c.concerns.sessions.maxPerUser, 3);
    assert.equal(c.concerns.sync.headsMs, 250);
    assert.equal(c.concerns.metrics.intervalMs, 500);
    assert.deepEqual(c.concerns.failover.nodes.map((n) => n.name), ["pg1"]);
    assert.equal(c.concerns.backup.schedules.full, null);
    assert.equal(c.concerns.access.adminToken, "an-admin-token-of-some-length-0123456789");
  });

  await t.step("one error names every bad variable, core and concerns alike", () => {
    const err = errorOf(() =>
      loadConfig({
        env: {
          RS_PORT: "http",
          SESSION_TTL_S: "1",
          RS_SYNC_HEADS_MS: "soon",
          METRICS_INTERVAL_MS: "10s",
          FAILOVER_CONFIRMATIONS: "0",
          BACKUP_SCHEDULE_FULL: "at two",
        },
        args: [],
      })
    );
    assert.ok(isRuntimeError(err, "CONFIG_INVALID"), String(err));
    for (
      const name of [
        "RS_PORT",
        "SESSION_TTL_S",
        "RS_SYNC_HEADS_MS",
        "METRICS_INTERVAL_MS",
        "FAILOVER_CONFIRMATIONS",
        "BACKUP_SCHEDULE_FULL",
      ]
    ) {
      assert.match(err.message, new RegExp(`\\b${name}\\b`), `${name} is named`);
    }
    assert.equal((err.details as { problems: string[] }).problems.length, 6);
  });

  await t.step("a secret in a bad value is not echoed", () => {
    const err = errorOf(() => loadConfig({ env: { BACKUP_ENCRYPTION_KEY: "tooshort" }, args: [] }));
    assert.match(err.message, /BACKUP_ENCRYPTION_KEY/);
    assert.ok(!err.message.includes("tooshort"));
  });
});
