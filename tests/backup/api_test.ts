import assert from "node:assert/strict";
import { addBackupRoutes, type BackupRoutesDeps } from "../../api/backup.ts";
import type { BackupRecord } from "../../store/backup_history.ts";
import { ADMIN_HEADERS, TEST_ADMIN_TOKEN, testApp } from "../support/auth.ts";

const TOKEN = TEST_ADMIN_TOKEN;

function record(id: number): BackupRecord {
  return {
    id,
    name: `20250115T02000${id}Z-full-00000${id}`,
    type: "full",
    path: `file:///backups/20250115T02000${id}Z-full-00000${id}/`,
    backupSize: 1000,
    compressedSize: 400,
    encryptionMethod: "aes-256-cbc+hmac-sha256",
    status: "completed",
    startedAt: new Date("2025-01-15T02:00:00Z"),
    completedAt: new Date("2025-01-15T02:01:00Z"),
    errorMessage: null,
    metadata: { tables: 3 },
    parentId: null,
    trigger: "schedule",
    instanceId: "host-a",
    verifiedAt: new Date("2025-01-15T02:02:00Z"),
    verification: { ok: true },
    deletedAt: null,
  };
}

function app(overrides: Partial<BackupRoutesDeps> = {}) {
  const calls: { list: unknown[]; request: string[] } = { list: [], request: [] };
  const deps: BackupRoutesDeps = {
    list: (options) => {
      calls.list.push(options);
      return Promise.resolve([record(2), record(1)]);
    },
    get: (id) => Promise.resolve(id === "1" ? record(1) : null),
    availability: { ok: true, reason: null },
    request: (type, options) => {
      calls.request.push(options?.incremental ? `${type} incremental` : type);
      return Promise.resolve({ instance: "host-b" });
    },
    ...overrides,
  };
  const hono = testApp();
  addBackupRoutes(hono, deps);
  return { hono, calls };
}

function post(body: unknown, auth?: string) {
  return new Request("http://x/backups", {
    method: "POST",
    headers: { "content-type": "application/json", ...(auth ? { authorization: auth } : {}) },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

Deno.test("backup routes", async (t) => {
  await t.step("GET /backups lists the history with filters", async () => {
    const { hono, calls } = app();
    const res = await hono.request("/backups?type=full&limit=5", { headers: ADMIN_HEADERS });
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.equal(body.available, true);
    assert.deepEqual(body.backups.map((b: { id: number }) => b.id), [2, 1]);
    assert.equal(body.backups[0].verifiedAt, "2025-01-15T02:02:00.000Z");
    assert.equal(body.backups[0].metadata, undefined, "details only on GET /backups/:id");
    assert.deepEqual(calls.list, [{ type: "full", limit: 5, includeDeleted: false }]);
    assert.equal(
      (await hono.request("/backups?type=weekly", { headers: ADMIN_HEADERS })).status,
      400,
    );
  });

  await t.step("GET /backups/:id shows one backup with its details, or 404", async () => {
    const { hono } = app();
    const res = await hono.request("/backups/1", { headers: ADMIN_HEADERS });
    assert.equal(res.status, 200);
    assert.deepEqual((await res.json()).backup.metadata, { tables: 3 });
    const missing = await hono.request("/backups/99", { headers: ADMIN_HEADERS });
    assert.equal(missing.status, 404);
    assert.equal((await missing.json()).error.code, "BACKUP_NOT_FOUND");
    assert.equal((await hono.request("/backups/abc", { headers: ADMIN_HEADERS })).status, 400);
  });

  await t.step("the history is for operators: anonymous callers get 401", async () => {
    const { hono, calls } = app();
    for (const path of ["/backups", "/backups/1"]) {
      const res = await hono.request(path);
      assert.equal(res.status, 401, path);
      assert.equal((await res.json()).error.code, "UNAUTHORIZED");
    }
    assert.deepEqual(calls.list, []);
  });

  await t.step("POST /backups needs the bearer token", async () => {
    const { hono, calls } = app();
    for (const auth of [undefined, "Bearer wrong", `Basic ${TOKEN}`, `Bearer ${TOKEN}x`]) {
      const res = await hono.request(post({ type: "full" }, auth));
      assert.equal(res.status, 401, String(auth));
    }
    assert.deepEqual(calls.request, []);
    const ok = await hono.request(post({ type: "base" }, `Bearer ${TOKEN}`));
    assert.equal(ok.status, 202);
    assert.deepEqual(await ok.json(), {
      status: "queued",
      type: "base",
      incremental: false,
      scheduler: "host-b",
    });
    assert.deepEqual(calls.request, ["base"]);
  });

  await t.step("POST /backups passes incremental on for base backups only", async () => {
    const { hono, calls } = app();
    const auth = `Bearer ${TOKEN}`;
    const ok = await hono.request(post({ type: "base", incremental: true }, auth));
    assert.equal(ok.status, 202);
    assert.equal((await ok.json()).incremental, true);
    for (
      const body of [{ type: "full", incremental: true }, { type: "base", incremental: "yes" }]
    ) {
      const res = await hono.request(post(body, auth));
      assert.equal(res.status, 400, JSON.stringify(body));
      assert.match((await res.json()).error.message, /incremental/);
    }
    assert.deepEqual(calls.request, ["base incremental"]);
  });

  await t.step("POST /backups validates the body after authorisation", async () => {
    const { hono } = app();
    assert.equal((await hono.request(post({ type: "weekly" }))).status, 401);
    assert.equal((await hono.request(post({ type: "weekly" }, `Bearer ${TOKEN}`))).status, 400);
    assert.equal((await hono.request(post("{not json", `Bearer ${TOKEN}`))).status, 400);
  });

  await t.step("POST /backups says why backups are unavailable (embedded mode)", async () => {
    const { hono } = app({ availability: { ok: false, reason: "backups need a server" } });
    const res = await hono.request(post({ type: "full" }, `Bearer ${TOKEN}`));
    assert.equal(res.status, 503);
    assert.equal((await res.json()).error.code, "BACKUP_UNAVAILABLE");
  });
});
