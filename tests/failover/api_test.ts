/**
 * The replication routes and the failover settings, without servers: the admin bearer
 * token (401 when missing, wrong or not configured), the unavailable answer of embedded
 * mode, and settings errors that name the variable.
 */
import assert from "node:assert/strict";
import { loadFailoverSettings } from "../../actors/failover/settings.ts";
import { addFailoverRoutes, type FailoverRouteDeps } from "../../api/failover.ts";
import { isRuntimeError } from "../../lib/errors.ts";
import { ADMIN_HEADERS, TEST_ADMIN_TOKEN, testApp } from "../support/auth.ts";

const TOKEN = TEST_ADMIN_TOKEN;

function app(deps: Partial<FailoverRouteDeps>, options: { adminToken?: string | null } = {}) {
  const calls: { target: string | null }[] = [];
  const adminToken = options.adminToken === undefined ? TOKEN : options.adminToken;
  const a = testApp({ settings: { adminToken } });
  addFailoverRoutes(a, {
    unavailable: null,
    status: () => Promise.resolve({ available: true }),
    canary: () => Promise.resolve({ id: 1, node: "pg1" }),
    switchover: (o) => {
      calls.push({ target: o.target });
      return Promise.resolve(
        o.target === "pg9"
          ? { ok: false, why: "pg9 is not a node of this cluster", primary: null }
          : { ok: true, why: "switched", primary: { node: o.target ?? "pg2", epoch: 3 } },
      );
    },
    ...deps,
  });
  return { app: a, calls };
}

function post(path: string, headers: Record<string, string> = {}, body?: string) {
  const type: Record<string, string> = body === undefined
    ? {}
    : { "content-type": "application/json" };
  return new Request(`http://x${path}`, { method: "POST", headers: { ...type, ...headers }, body });
}

Deno.test("replication routes", async (t) => {
  await t.step("without RS_ADMIN_TOKEN no bearer token is the admin token (401)", async () => {
    const { app: a, calls } = app({}, { adminToken: null });
    for (const path of ["/failover/switchover", "/replication/canary"]) {
      const res = await a.request(post(path, { authorization: `Bearer ${TOKEN}` }));
      assert.equal(res.status, 401);
      assert.equal((await res.json()).error.code, "UNAUTHORIZED");
    }
    assert.equal(calls.length, 0);
  });

  await t.step("GET /replication is for operators: 401 without a credential", async () => {
    const { app: a } = app({});
    const res = await a.request("http://x/replication");
    assert.equal(res.status, 401);
    await res.body?.cancel();
  });

  await t.step("a missing or wrong token is 401, the right one goes through", async () => {
    const { app: a, calls } = app({});
    const attempts: Record<string, string>[] = [
      {},
      { authorization: "Bearer wrong" },
      { authorization: TOKEN },
    ];
    for (const headers of attempts) {
      const res = await a.request(post("/failover/switchover", headers));
      assert.equal(res.status, 401);
      await res.body?.cancel();
    }
    assert.equal(calls.length, 0);
    const ok = await a.request(
      post("/failover/switchover", { authorization: `Bearer ${TOKEN}` }, '{"target":"pg3"}'),
    );
    assert.equal(ok.status, 200);
    const body = await ok.json();
    assert.equal(body.ok, true);
    assert.deepEqual(body.primary, { node: "pg3", epoch: 3 });
    assert.deepEqual(calls, [{ target: "pg3" }]);
  });

  await t.step("a refused switchover is 409 with the reason; a bad body is 400", async () => {
    const { app: a } = app({});
    const refused = await a.request(
      post("/failover/switchover", { authorization: `Bearer ${TOKEN}` }, '{"target":"pg9"}'),
    );
    assert.equal(refused.status, 409);
    assert.equal((await refused.json()).error.message, "pg9 is not a node of this cluster");
    for (const body of ["not json", '{"target":"no spaces please"}', '{"other":1}']) {
      const res = await a.request(
        post("/failover/switchover", { authorization: `Bearer ${TOKEN}` }, body),
      );
      assert.equal(res.status, 400, body);
      assert.equal((await res.json()).error.code, "VALIDATION_FAILED");
    }
  });

  await t.step("a canary takes an optional note; a bad one is 400 and writes nothing", async () => {
    const notes: (string | null)[] = [];
    const { app: a } = app({
      canary: (o) => {
        notes.push(o?.note ?? null);
        return Promise.resolve({ id: notes.length, node: "pg1" });
      },
    });
    const auth = { authorization: `Bearer ${TOKEN}` };
    assert.equal((await a.request(post("/replication/canary", auth))).status, 200);
    const noted = await a.request(post("/replication/canary", auth, '{"note":"check 7"}'));
    assert.equal(noted.status, 200);
    assert.deepEqual(await noted.json(), { id: 2, node: "pg1" });
    for (const body of [`{"note":"${"x".repeat(201)}"}`, '{"note":1}', '{"other":1}']) {
      const res = await a.request(post("/replication/canary", auth, body));
      assert.equal(res.status, 400, body);
      assert.equal((await res.json()).error.code, "VALIDATION_FAILED");
    }
    assert.deepEqual(notes, [null, "check 7"]);
  });

  await t.step("embedded mode says replication is unavailable", async () => {
    const { app: a } = app({ unavailable: "replication needs PostgreSQL servers" });
    const res = await a.request("http://x/replication", { headers: ADMIN_HEADERS });
    assert.equal(res.status, 503);
    const body = await res.json();
    assert.equal(body.error.code, "REPLICATION_UNAVAILABLE");
    assert.equal(body.error.message, "replication needs PostgreSQL servers");
  });
});

Deno.test("failover settings", async (t) => {
  await t.step("defaults, and DATABASE_NODES in priority order", () => {
    const s = loadFailoverSettings({
      DATABASE_NODES: "pg1=postgres://u:p@db1:5432/app, pg2=postgres://u:p@db2/app",
    });
    assert.deepEqual(s.nodes.map((n) => [n.name, n.address]), [
      ["pg1", "db1:5432"],
      ["pg2", "db2:5432"],
    ]);
    assert.equal(s.probeIntervalMs, 500);
    assert.equal(s.probeTimeoutMs, 1000);
    assert.equal(s.confirmations, 3);
    assert.equal(s.voteTimeoutMs, 1500);
    assert.equal(s.syncMode, true);
    assert.equal(s.localNodes, null, "FAILOVER_LOCAL_NODES: auto");
    assert.deepEqual(loadFailoverSettings({}).nodes, []);
    const nodes = "pg1=postgres://u@db1/app,pg2=postgres://u@db2/app";
    const local = (v: string) =>
      loadFailoverSettings({ DATABASE_NODES: nodes, FAILOVER_LOCAL_NODES: v }).localNodes;
    assert.equal(local("auto"), null);
    assert.deepEqual(local("none"), []);
    assert.deepEqual(local(" pg2 , pg1,pg2"), ["pg2", "pg1"]);
  });

  await t.step("wrong values stop start-up naming the variable", () => {
    const cases: [Record<string, string>, RegExp][] = [
      [{ FAILOVER_CONFIRMATIONS: "0" }, /FAILOVER_CONFIRMATIONS must be an integer between 1/],
      [{ FAILOVER_SYNC_MODE: "maybe" }, /FAILOVER_SYNC_MODE must be on or off/],
      [
        { DATABASE_NODES: "pg1=mysql://x" },
        /DATABASE_NODES must be a postgres:\/\/ URL for node pg1/,
      ],
      [{ DATABASE_NODES: "pg1=postgres://a/db,pg1=postgres://b/db" }, /unique node names/],
      [
        { DATABASE_NODES: "pg1=postgres://a/db", FAILOVER_LOCAL_NODES: "pg1,pg3" },
        /FAILOVER_LOCAL_NODES: pg3 is not a node of DATABASE_NODES \(pg1\)/,
      ],
      [
        { DATABASE_NODES: "pg1=postgres://a/db", FAILOVER_LOCAL_NODES: "pg1;pg2" },
        /FAILOVER_LOCAL_NODES must be auto, none or node names, comma-separated/,
      ],
    ];
    for (const [env, message] of cases) {
      const err = (() => {
        try {
          loadFailoverSettings(env);
        } catch (e) {
          return e;
        }
      })();
      assert.ok(isRuntimeError(err, "CONFIG_INVALID"), String(err));
      assert.match((err as Error).message, message);
    }
  });
});
