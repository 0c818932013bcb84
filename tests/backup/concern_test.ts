import assert from "node:assert/strict";
import { loadConfig } from "../../concerns/config.ts";
import { startRuntime } from "../../runtime.ts";
import { createBackupConcern } from "../../concerns/backup.ts";
import { startPostgres } from "../harness/mod.ts";
import { ADMIN_HEADERS, TEST_ADMIN_TOKEN, testApp } from "../support/auth.ts";
import { silentLogger } from "../../lib/log.ts";
import type { RuntimeServices } from "../../actors/runtime/types.ts";
import { until } from "../support/instance.ts";
import { migratedPool, seedApp, tempDir, TEST_KEY } from "./_helpers.ts";

const TOKEN = TEST_ADMIN_TOKEN;
const KEY = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));

Deno.test("backup concern in a runtime: POST /backups runs the scheduler", async (t) => {
  await using pg = await startPostgres({ name: "bk-concern" });
  const url = await pg.createDatabase("app");
  await seedApp(pg, "app", 200);
  const dataDir = await tempDir("rs-bk-concern-");
  const env = {
    BACKUP_DIR: `${dataDir}/backups`,
    BACKUP_ENCRYPTION_KEY: TEST_KEY,
    BACKUP_VERIFY: "checksums",
    BACKUP_SCHEDULE_FULL: "off",
    RS_ADMIN_TOKEN: TOKEN,
  };
  const config = loadConfig({
    env: { DATABASE_URL: url, RS_SECRET_KEY: KEY, RS_DATA_DIR: dataDir, RS_PORT: "0", ...env },
    args: [],
  });
  const rt = await startRuntime(config, {
    serve: false,
    concerns: { backup: (services, c) => createBackupConcern(services, c.concerns.backup) },
  });
  try {
    await t.step("the lone instance holds the scheduler and queues the request", async () => {
      const res = await rt.app.request("/backups", {
        method: "POST",
        headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
        body: JSON.stringify({ type: "full" }),
      });
      assert.equal(res.status, 202, await res.clone().text());
      assert.equal((await res.json()).scheduler, config.instanceId);
    });

    await t.step("the backup completes, is verified, and shows in GET /backups", async () => {
      let last: unknown = null;
      const backup = await until(async () => {
        const body = await (await rt.app.request("/backups", { headers: ADMIN_HEADERS })).json();
        const b = last = body.backups[0];
        return b && b.status === "completed" && b.verifiedAt ? b : null;
      }, {
        what: "the manual backup completed and verified in GET /backups",
        ms: 60_000,
        state: () => last,
      });
      assert.equal(backup.type, "full");
      assert.equal(backup.trigger, "manual");
      const one = await (await rt.app.request(`/backups/${backup.id}`, { headers: ADMIN_HEADERS }))
        .json();
      assert.equal(one.backup.metadata.database, "app");
      const actor = rt.inspector.list().find((a) => a.id === "backup");
      assert.equal((actor?.summary as { stats: { completed: number } }).stats.completed, 1);
    });

    await t.step(
      "POST /backups takes incremental base backups; the second has a parent",
      async () => {
        const post = (body: unknown) =>
          rt.app.request("/backups", {
            method: "POST",
            headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
            body: JSON.stringify(body),
          });
        const refused = await post({ type: "full", incremental: true });
        assert.equal(refused.status, 400, "incremental applies to base backups only");
        const names: string[] = [];
        const ids: number[] = [];
        const scheduler = () =>
          rt.inspector.list().find((a) => a.id === "backup")?.summary as {
            job: unknown;
            queue: string[];
            stats: { completed: number };
          };
        // The chart is done with a job once it drops it (after retention): the history row says
        // completed and verified a moment before, and a request of the same type made in between
        // is refused as still running.
        const idle = () => scheduler().job === null && scheduler().queue.length === 0;
        for (let i = 0; i < 2; i++) {
          const res = await post({ type: "base", incremental: true });
          assert.equal(res.status, 202, await res.clone().text());
          assert.equal((await res.json()).incremental, true);
          let last: unknown = null;
          const done = await until(async () => {
            const body = await (await rt.app.request("/backups?type=base", {
              headers: ADMIN_HEADERS,
            })).json();
            const b = last = body.backups.find((r: { name: string }) => !names.includes(r.name));
            return b && b.status === "completed" && b.verifiedAt ? b : null;
          }, {
            what: `incremental base backup ${i + 1} completed and verified`,
            ms: 120_000,
            state: () => last,
          });
          const one = await (await rt.app.request(`/backups/${done.id}`, {
            headers: ADMIN_HEADERS,
          })).json();
          // A plain base backup has no `parent` key: its presence says the request's flag
          // reached the service.
          assert.equal(one.backup.metadata.parent, i === 0 ? null : names[0]);
          // The history row links it to its parent (migration 008), as WAL backups to their base.
          assert.equal(one.backup.parentId, i === 0 ? null : ids[0]);
          names.push(done.name);
          ids.push(done.id);
          await until(idle, { what: "the scheduler done with the job", state: () => scheduler() });
        }
        // Asked again while one is queued or running: not queued twice, and the answer says so.
        const completed = scheduler().stats.completed;
        const before = { ...scheduler().stats };
        const first = await post({ type: "base", incremental: true });
        assert.equal(first.status, 202, await first.clone().text());
        const again = await post({ type: "base", incremental: true });
        if (again.status === 202) {
          // Only truthful when the first one was already over (a tiny database on a fast run).
          const after = scheduler().stats as Record<string, number>;
          assert.ok(
            Object.entries(before).some(([k, v]) => (after[k] ?? 0) > (v as number)),
            `a second request was queued while the first still ran: ${await again.text()}`,
          );
        } else {
          assert.equal(again.status, 409, await again.clone().text());
          assert.match(JSON.stringify(await again.json()), /already queued or running/);
        }
        await until(() => scheduler().stats.completed > completed && idle(), {
          what: "the queued base backup done",
          state: () => scheduler(),
        });
      },
    );

    await t.step("/health reports the backup concern", async () => {
      const health = await rt.health();
      assert.equal(health.checks.backup.ok, true);
      assert.equal(health.checks.backup.available, true);
    });
  } finally {
    await rt.stop();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("scheduled base backups are incremental with BACKUP_SCHEDULE_BASE_INCREMENTAL", async () => {
  await using pg = await startPostgres({ name: "bk-concern-sched" });
  const url = await pg.createDatabase("app");
  await seedApp(pg, "app", 200);
  const dataDir = await tempDir("rs-bk-concern-sched-");
  const config = loadConfig({
    env: {
      DATABASE_URL: url,
      RS_SECRET_KEY: KEY,
      RS_DATA_DIR: dataDir,
      RS_PORT: "0",
      BACKUP_DIR: `${dataDir}/backups`,
      BACKUP_ENCRYPTION_KEY: TEST_KEY,
      BACKUP_VERIFY: "off",
      BACKUP_SCHEDULE_FULL: "off",
      BACKUP_SCHEDULE_BASE: "* * * * * *",
      BACKUP_SCHEDULE_BASE_INCREMENTAL: "true",
      RS_ADMIN_TOKEN: TOKEN,
    },
    args: [],
  });
  const rt = await startRuntime(config, {
    serve: false,
    concerns: { backup: (services, c) => createBackupConcern(services, c.concerns.backup) },
  });
  try {
    let last: unknown = null;
    const two = await until(async () => {
      const body = await (await rt.app.request("/backups?type=base", { headers: ADMIN_HEADERS }))
        .json();
      const done = body.backups.filter((b: { status: string }) => b.status === "completed");
      last = done;
      return done.length >= 2 ? done : null;
    }, { what: "two scheduled base backups completed", ms: 120_000, state: () => last });
    // Newest first: the second names the first as its parent.
    const [second, first] = [two.at(-2), two.at(-1)];
    assert.equal(first.trigger, "schedule");
    assert.equal(second.trigger, "schedule");
    const detail = async (id: string) =>
      (await (await rt.app.request(`/backups/${id}`, { headers: ADMIN_HEADERS })).json()).backup;
    assert.equal((await detail(first.id)).metadata.parent, null);
    assert.equal((await detail(second.id)).metadata.parent, first.name);
    assert.equal((await detail(second.id)).parentId, first.id);
  } finally {
    await rt.stop();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("backup concern in embedded mode says backups are unavailable", async () => {
  // The concern only looks at the database mode; a real pool stands in for PGlite's.
  await using pg = await startPostgres({ name: "bk-embedded" });
  const sql = await migratedPool(await pg.createDatabase("app"));
  const dataDir = await tempDir("rs-bk-embedded-");
  const config = loadConfig({ env: { RS_DATA_DIR: dataDir, RS_ADMIN_TOKEN: TOKEN }, args: [] });
  const services = {
    config,
    instanceId: "embedded-1",
    log: silentLogger,
    db: { mode: "embedded", sql },
    leases: null,
    secretKey: new Uint8Array(32),
    now: Date.now,
  } as unknown as RuntimeServices;
  const concern = createBackupConcern(services, config.concerns.backup);
  const app = testApp();
  concern.routes!(app, { signal: new AbortController().signal, peer: null });
  try {
    assert.deepEqual(concern.actors, [], "no scheduler runs");
    const list = await (await app.request("/backups", { headers: ADMIN_HEADERS })).json();
    assert.equal(list.available, false);
    assert.match(list.unavailableReason, /PGlite/);
    const res = await app.request("/backups", {
      method: "POST",
      headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
      body: JSON.stringify({ type: "full" }),
    });
    assert.equal(res.status, 503);
    assert.equal((await res.json()).error.code, "BACKUP_UNAVAILABLE");
    const health = await concern.health!();
    assert.equal(health.available, false);
    assert.match(String(health.reason), /DATABASE_URL/);
  } finally {
    await concern.stop!();
    await sql.end();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});
