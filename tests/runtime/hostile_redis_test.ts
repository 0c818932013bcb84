/**
 * A hostile writer with raw access to Redis (finding 3 of the security review): it forges
 * every kind of record the runtime reads back — a session-cache entry, transport envelopes
 * (a switchover and a backup request to every inbox), a sync batch, a member with a URL
 * the console would fetch — and alters or re-addresses genuine ones. None may be
 * believed; each is refused and counted where /health shows it. Controls seal the same
 * records with the cluster's key, so each assertion could fail.
 *
 * Also: rotating RS_SECRET_KEY with RS_SECRET_KEY_PREVIOUS — instances on either side of
 * the rollout keep talking, and the long-lived published primary is re-sealed.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { Redis } from "ioredis";
import { concernApi } from "../../concerns/mod.ts";
import { loadConfig } from "../../concerns/config.ts";
import { type Runtime, startRuntime } from "../../runtime.ts";
import type { MessageAuth } from "../../lib/message_auth.ts";
import { createKeyspace } from "../../store/redis.ts";
import { injectRaw } from "../../store/redis_inbox.ts";
import {
  createFailoverStore,
  primaryKey,
  type PublishedRecord,
} from "../../store/redis_failover.ts";
import { memberInfoKey, membersKey } from "../../store/redis_membership.ts";
import { createLoginAttemptStore } from "../../store/redis_sessions.ts";
import { createUser } from "../../store/users.ts";
import { startPostgres, startRedis } from "../harness/mod.ts";
import { ADMIN_HEADERS, TEST_ADMIN_TOKEN, WRITER_HEADERS } from "../support/auth.ts";
import { until } from "../support/instance.ts";
import { authFor, randomKeyBase64 } from "../support/message_auth.ts";

const PREFIX = "rshostile:";
const ks = createKeyspace(PREFIX);

function sha256Hex(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

/** A token of the shape the runtime issues (43 base64url characters). */
function newToken(): string {
  return btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))))
    .replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

async function startOne(
  env: Record<string, string>,
  id: string,
): Promise<Runtime> {
  const dataDir = await Deno.makeTempDir({ prefix: "rs-hostile-" });
  const config = loadConfig({
    env: {
      RS_PORT: "0",
      RS_DATA_DIR: dataDir,
      RS_INSTANCE_ID: id,
      RS_KEY_PREFIX: PREFIX,
      RS_ADMIN_TOKEN: TEST_ADMIN_TOKEN,
      RS_STATE_WRITE_TOKEN: WRITER_HEADERS.authorization.slice("Bearer ".length),
      RS_LEASE_TTL_MS: "1000",
      BACKUP_SCHEDULE_FULL: "off",
      LOG_LEVEL: "error",
      ...env,
    },
    args: [],
  });
  return await startRuntime(config);
}

async function health(rt: Runtime): Promise<{ refused: number; byKind: Record<string, number> }> {
  const res = await fetch(`${rt.url}/health`, { headers: ADMIN_HEADERS });
  const body = await res.json();
  const a = body.checks.redis.authentication;
  return { refused: a.refused, byKind: a.refusedByKind };
}

/** Resolves with every message published on `channel` (raw, as Redis carries it). */
async function listen(
  url: string,
  channel: string,
): Promise<{ messages: string[]; close(): void }> {
  const sub = new Redis(url);
  const messages: string[] = [];
  sub.on("message", (_c: string, m: string) => messages.push(m));
  await sub.subscribe(channel);
  return { messages, close: () => sub.disconnect() };
}

function envelope(
  to: { instance: string; actor: string },
  event: Record<string, unknown>,
  extra: { kind?: string; corr?: string; from?: string } = {},
): string {
  return JSON.stringify({
    v: 1,
    kind: extra.kind ?? "request",
    id: crypto.randomUUID(),
    from: { instance: extra.from ?? "attacker", actor: "runtime" },
    to,
    event,
    corr: extra.corr ?? crypto.randomUUID(),
    sentAt: Date.now(),
  });
}

Deno.test("a hostile Redis writer forges every kind of record and none is believed", async (t) => {
  await using pg = await startPostgres();
  await using redis = await startRedis();
  const dbUrl = await pg.createDatabase();
  const KEY = randomKeyBase64();
  const auth: MessageAuth = authFor(KEY);
  const env = { DATABASE_URL: dbUrl, REDIS_URL: redis.url, RS_SECRET_KEY: KEY };
  const raw = new Redis(redis.url);
  const runtimes: Runtime[] = [];
  try {
    const a = await startOne(env, "rt-a");
    runtimes.push(a);
    const b = await startOne(env, "rt-b");
    runtimes.push(b);
    const sql = a.db.sql;
    const sessions = concernApi(a.concerns, "sessions")!;

    await t.step("a forged session-cache entry does not log anyone in", async () => {
      const victim = await createUser(sql, {
        username: "victim",
        email: "victim@example.com",
        password: "victim password 1",
      }, { role: "admin", hashing: { ln: 4 } });
      const genuine = await sessions.sessions.create({ userId: victim.id });
      const me = (token: string) =>
        fetch(`${a.url}/auth/me`, { headers: { authorization: `Bearer ${token}` } });
      const ok = await me(genuine.token);
      assert.equal(ok.status, 200, "the genuine session is accepted");
      await ok.body?.cancel();

      // What validation needs, copied from the victim's entry (readable to this attacker).
      const entry = JSON.stringify({
        i: genuine.session.id,
        u: victim.id,
        e: Date.now() + 3_600_000,
        c: Date.now(),
        f: null,
        r: false,
      });
      const before = (await health(a)).byKind["session.cache"] ?? 0;
      // 1. Unsealed, under the hash of the attacker's own token.
      const mine = newToken();
      await raw.set(ks.key("session", sha256Hex(mine)), entry, "PX", 60_000);
      const forged = await me(mine);
      assert.equal(forged.status, 401, "a forged cache entry is not a session");
      await forged.body?.cancel();
      assert.equal((await sessions.sessions.validate(mine)).ok, false);
      // 2. The victim's genuine sealed entry copied under another token's key.
      const copied = await raw.get(ks.key("session", sha256Hex(genuine.token)));
      assert.ok(copied?.startsWith("rs1."), "cache entries are sealed");
      const other = newToken();
      await raw.set(ks.key("session", sha256Hex(other)), copied!, "PX", 60_000);
      const moved = await me(other);
      assert.equal(moved.status, 401, "a genuine entry is good for its own token only");
      await moved.body?.cancel();
      assert.equal((await sessions.sessions.validate(other)).ok, false);
      // 3. The victim's own key, altered: refused, then refilled from PostgreSQL.
      await raw.set(ks.key("session", sha256Hex(genuine.token)), entry, "PX", 60_000);
      const refilled = await me(genuine.token);
      assert.equal(refilled.status, 200, "the owner still gets in (PostgreSQL decides)");
      await refilled.body?.cancel();
      const after = (await health(a)).byKind["session.cache"] ?? 0;
      assert.ok(after >= before + 3, `refusals counted in /health: ${before} -> ${after}`);
      const metrics = await (await fetch(`${a.url}/metrics`, { headers: ADMIN_HEADERS })).text();
      assert.match(
        metrics,
        /^rootstream_redis_records_refused_total\{kind="session\.cache"\} [1-9]/m,
      );
      // Control: the same entry sealed with the cluster's key *is* believed by the cache —
      // the MAC is what refuses the forgeries above. (The HTTP layer reads a session's
      // authority from PostgreSQL besides, a second line this test does not rely on.)
      const sealedHere = newToken();
      await raw.set(
        ks.key("session", sha256Hex(sealedHere)),
        auth.seal("session.cache", sha256Hex(sealedHere), entry),
        "PX",
        60_000,
      );
      assert.equal((await sessions.sessions.validate(sealedHere)).ok, true, "control");
    });

    await t.step("forged switchover and backup requests are not acted on", async () => {
      const replies = await listen(redis.url, ks.channel("rt.reply.attacker"));
      try {
        const before = a.transport.stats().dropped_forged + b.transport.stats().dropped_forged;
        const forgedCorr: string[] = [];
        for (const instance of ["rt-a", "rt-b"]) {
          for (
            const [actor, event] of [
              ["failover", { type: "failover.switchover", target: null, requestedBy: "attacker" }],
              ["backup", { type: "backup.request", backupType: "full" }],
            ] as const
          ) {
            const corr = crypto.randomUUID();
            forgedCorr.push(corr);
            await injectRaw(raw, {
              keyspace: ks,
              instance,
              raw: envelope({ instance, actor }, event, { corr }),
            });
          }
        }
        await until(
          () =>
            Promise.resolve(
              a.transport.stats().dropped_forged + b.transport.stats().dropped_forged >=
                before + 4,
            ),
          { what: "both instances to refuse the four forged requests" },
        );
        // Control: a request sealed with the cluster's key is handled, and its reply comes
        // back on the same channel the forged ones would have been answered on.
        const corr = crypto.randomUUID();
        await injectRaw(raw, {
          keyspace: ks,
          instance: "rt-a",
          raw: auth.seal(
            "transport.envelope",
            "rt-a",
            envelope({ instance: "rt-a", actor: "diagnostics" }, { type: "diag.ping" }, { corr }),
          ),
        });
        await until(() => Promise.resolve(replies.messages.some((m) => m.includes(corr))), {
          what: "the reply to the sealed control request",
        });
        for (const c of forgedCorr) {
          assert.ok(!replies.messages.some((m) => m.includes(c)), "no forged request answered");
        }
        assert.ok((await health(a)).byKind["transport.envelope"]! >= 2);
      } finally {
        replies.close();
      }
    });

    await t.step("an altered or re-addressed genuine envelope is dropped and counted", async () => {
      const replies = await listen(redis.url, ks.channel("rt.reply.attacker"));
      try {
        const before = a.transport.stats().dropped_forged;
        // A genuine request to rt-b, bit-flipped, into rt-b's inbox.
        const corrFlip = crypto.randomUUID();
        const toB = auth.seal(
          "transport.envelope",
          "rt-b",
          envelope({ instance: "rt-b", actor: "diagnostics" }, { type: "diag.ping" }, {
            corr: corrFlip,
          }),
        );
        const i = toB.indexOf("diag.ping");
        const flipped = toB.slice(0, i) + "diag.pinh" + toB.slice(i + 9);
        const bBefore = b.transport.stats().dropped_forged;
        await injectRaw(raw, { keyspace: ks, instance: "rt-b", raw: flipped });
        // The same genuine envelope for rt-b replayed into rt-a's inbox.
        const corrMoved = crypto.randomUUID();
        const genuineForB = auth.seal(
          "transport.envelope",
          "rt-b",
          envelope({ instance: "rt-a", actor: "diagnostics" }, { type: "diag.ping" }, {
            corr: corrMoved,
          }),
        );
        await injectRaw(raw, { keyspace: ks, instance: "rt-a", raw: genuineForB });
        await until(
          () =>
            Promise.resolve(
              a.transport.stats().dropped_forged >= before + 1 &&
                b.transport.stats().dropped_forged >= bBefore + 1,
            ),
          { what: "the altered envelope on rt-b and the re-addressed one on rt-a refused" },
        );
        // A genuine request replayed to its own target: handled once, the copy refused.
        const corrOnce = crypto.randomUUID();
        const once = auth.seal(
          "transport.envelope",
          "rt-a",
          envelope({ instance: "rt-a", actor: "diagnostics" }, { type: "diag.ping" }, {
            corr: corrOnce,
          }),
        );
        const replayedBefore = a.transport.stats().dropped_replayed;
        await injectRaw(raw, { keyspace: ks, instance: "rt-a", raw: once });
        await injectRaw(raw, { keyspace: ks, instance: "rt-a", raw: once });
        await until(() => Promise.resolve(a.transport.stats().dropped_replayed > replayedBefore), {
          what: "the replayed copy refused",
        });
        // The reply goes out on its own (after the handler's promise), so it may trail the
        // refusal of the copy: wait for it, then check it came once.
        await until(() => Promise.resolve(replies.messages.some((m) => m.includes(corrOnce))), {
          what: "the reply to the genuine request",
        });
        assert.equal(replies.messages.filter((m) => m.includes(corrOnce)).length, 1);
        assert.ok(!replies.messages.some((m) => m.includes(corrFlip) || m.includes(corrMoved)));
      } finally {
        replies.close();
      }
    });

    await t.step("a forged sync batch does not change state", async () => {
      const origin = "attacker~abc123";
      const batch = (id: string, value: string) =>
        JSON.stringify({
          v: 1,
          o: origin,
          n: "attacker",
          s: 1,
          e: [{ k: `note:${id}`, d: 1, x: {}, f: { title: [value, Date.now(), 0] } }],
          k: [`note:${id}`],
        });
      const state = async (id: string) => {
        const res = await fetch(`${a.url}/state/note/${id}`, { headers: ADMIN_HEADERS });
        return res.status === 200 ? (await res.json()) : (await res.body?.cancel(), null);
      };
      const before = (await health(a)).byKind["sync.batch"] ?? 0;
      await raw.publish(ks.channel("sync.batches"), batch("h1", "forged"));
      await until(
        async () => ((await health(a)).byKind["sync.batch"] ?? 0) > before,
        { what: "rt-a to refuse the forged batch" },
      );
      // A genuine write after it: once rt-a has it, the forged one was handled before.
      const res = await fetch(`${b.url}/state/note/h2`, {
        method: "PATCH",
        headers: { ...WRITER_HEADERS, "content-type": "application/json" },
        body: JSON.stringify({ title: "genuine" }),
      });
      assert.equal(res.status, 200, await res.text());
      await until(async () => JSON.stringify(await state("h2")).includes("genuine"), {
        what: "the genuine write on rt-b to reach rt-a",
      });
      assert.ok(!JSON.stringify(await state("h1")).includes("forged"), "the forgery was ignored");
      // Control: the same batch sealed with the cluster's key is applied.
      await raw.publish(
        ks.channel("sync.batches"),
        auth.seal("sync.batch", "sync.batches", batch("h3", "sealed")),
      );
      await until(async () => JSON.stringify(await state("h3")).includes("sealed"), {
        what: "control: the sealed batch applied on rt-a",
      });
    });

    await t.step("a forged member is not listed and its URL never fetched", async () => {
      let hits = 0;
      const trap = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, () => {
        hits++;
        return new Response("{}");
      });
      try {
        const trapUrl = `http://127.0.0.1:${trap.addr.port}`;
        const info = (id: string) =>
          JSON.stringify({ id, url: trapUrl, version: "x", startedAt: 0, roles: [], actors: [] });
        const [sec] = await raw.time();
        const now = Number(sec) * 1000;
        // Unsealed; and rt-b's genuine info copied under another id.
        await raw.zadd(membersKey(ks), now + 60_000, "evil");
        await raw.set(memberInfoKey(ks, "evil"), info("evil"), "PX", 60_000);
        await raw.zadd(membersKey(ks), now + 60_000, "copy");
        await raw.set(memberInfoKey(ks, "copy"), (await raw.get(memberInfoKey(ks, "rt-b")))!);
        const cluster = await (await fetch(`${a.url}/cluster`, { headers: ADMIN_HEADERS }))
          .json();
        const ids = (cluster.members as { id: string }[]).map((m) => m.id);
        assert.ok(
          ids.includes("rt-b") && !ids.includes("evil") && !ids.includes("copy"),
          ids.join(),
        );
        for (const path of ["/", "/console/fragments/instances", "/console/fragments/panels"]) {
          const page = await fetch(`${a.url}${path}`, { headers: ADMIN_HEADERS });
          assert.equal(page.status, 200, path);
          await page.text();
        }
        assert.equal(hits, 0, "the console fetched no forged member's URL");
        assert.ok(((await health(a)).byKind["membership.info"] ?? 0) >= 2);
        // Control: the same info sealed with the cluster's key is listed.
        await raw.set(
          memberInfoKey(ks, "evil"),
          auth.seal("membership.info", "evil", info("evil")),
          "PX",
          60_000,
        );
        const again = await (await fetch(`${a.url}/cluster`, { headers: ADMIN_HEADERS })).json();
        assert.ok((again.members as { id: string }[]).some((m) => m.id === "evil"), "control");
      } finally {
        await raw.zrem(membersKey(ks), "evil", "copy");
        await raw.del(memberInfoKey(ks, "evil"), memberInfoKey(ks, "copy"));
        await trap.shutdown();
      }
    });

    await t.step("a forged login attempt reads as none", async () => {
      const attempts = createLoginAttemptStore(raw, ks, auth);
      const id = crypto.randomUUID();
      const record = JSON.stringify({ attemptId: id, userId: 1, mfaFailures: 0 });
      await raw.set(ks.key("login", "attempt", id), record, "PX", 60_000);
      assert.equal(await attempts.load(id), null, "unsealed: no attempt");
      await attempts.save(id, record, 60_000);
      assert.equal(await attempts.load(id), record, "control: sealed is read");
      const other = crypto.randomUUID();
      await raw.set(
        ks.key("login", "attempt", other),
        (await raw.get(ks.key("login", "attempt", id)))!,
      );
      assert.equal(await attempts.load(other), null, "a genuine record under another attempt id");
    });

    await t.step("a forged published primary is not believed", async () => {
      const store = createFailoverStore(raw, ks, auth);
      const record = {
        node: "evil",
        epoch: 99,
        readOnlyNode: null,
        token: null,
        by: "attacker",
        at: 0,
        kind: "failover",
        why: "forged",
      } satisfies PublishedRecord;
      await raw.set(primaryKey(ks), JSON.stringify(record));
      assert.equal(await store.readPrimary(2000), null);
      await store.writePrimary(record);
      assert.equal((await store.readPrimary(2000))?.node, "evil", "control: sealed is read");
      await raw.del(primaryKey(ks));
    });
  } finally {
    for (const rt of runtimes.reverse()) await rt.stop();
    raw.disconnect();
  }
});

Deno.test("rotating RS_SECRET_KEY: instances on both sides of the rollout interoperate", async (t) => {
  await using pg = await startPostgres();
  await using redis = await startRedis();
  const dbUrl = await pg.createDatabase();
  const OLD = randomKeyBase64();
  const NEW = randomKeyBase64();
  const raw = new Redis(redis.url);
  const runtimes: Runtime[] = [];
  try {
    const base = { DATABASE_URL: dbUrl, REDIS_URL: redis.url };
    // Step 1 done on `old`, step 2 done on `new` (docs/security.md, "Rotating RS_SECRET_KEY").
    const old = await startOne(
      { ...base, RS_SECRET_KEY: OLD, RS_SECRET_KEY_PREVIOUS: NEW },
      "r-old",
    );
    runtimes.push(old);
    const fresh = await startOne(
      { ...base, RS_SECRET_KEY: NEW, RS_SECRET_KEY_PREVIOUS: OLD },
      "r-new",
    );
    runtimes.push(fresh);

    await t.step("requests both ways, and each lists the other", async () => {
      const pong = await old.transport.request(
        { instance: "r-new", actor: "diagnostics" },
        { type: "diag.ping" },
      );
      assert.ok(pong);
      assert.ok(
        await fresh.transport.request({ instance: "r-old", actor: "diagnostics" }, {
          type: "diag.ping",
        }),
      );
      await until(async () => {
        const c = await (await fetch(`${fresh.url}/cluster`, { headers: ADMIN_HEADERS })).json();
        return (c.members as { id: string }[]).some((m) => m.id === "r-old");
      }, { what: "r-new to list r-old (its info is sealed with the old key)" });
    });

    await t.step("a session cached by one is accepted by the other", async () => {
      const user = await createUser(old.db.sql, {
        username: "rotor",
        email: "rotor@example.com",
        password: "rotor password 1",
      }, { hashing: { ln: 4 } });
      const { token } = await concernApi(old.concerns, "sessions")!.sessions.create({
        userId: user.id,
      });
      for (const rt of [fresh, old]) {
        const res = await fetch(`${rt.url}/auth/me`, {
          headers: { authorization: `Bearer ${token}` },
        });
        assert.equal(res.status, 200);
        await res.body?.cancel();
      }
      const refused = (await fetch(`${fresh.url}/health`, { headers: ADMIN_HEADERS })
        .then((r) => r.json())).checks.redis.authentication.refused;
      assert.equal(refused, 0, "nothing refused during the rollout");
    });

    await t.step("the published primary is re-sealed with the new key when read", async () => {
      const before = authFor(OLD);
      const after = authFor(NEW, OLD);
      const onlyNew = authFor(NEW);
      const record = {
        node: "pg-1",
        epoch: 3,
        readOnlyNode: null,
        token: null,
        by: "r-old",
        at: 1,
        kind: "failover",
        why: "test",
      } satisfies PublishedRecord;
      await createFailoverStore(raw, ks, before).writePrimary(record);
      assert.equal(await createFailoverStore(raw, ks, onlyNew).readPrimary(2000), null);
      assert.equal((await createFailoverStore(raw, ks, after).readPrimary(2000))?.epoch, 3);
      assert.equal(
        (await createFailoverStore(raw, ks, onlyNew).readPrimary(2000))?.epoch,
        3,
        "re-sealed: readable with the new key alone",
      );
      await raw.del(primaryKey(ks));
    });
  } finally {
    for (const rt of runtimes.reverse()) await rt.stop();
    raw.disconnect();
  }
});
