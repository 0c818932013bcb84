import assert from "node:assert/strict";
import postgres from "postgres";
import { isRuntimeError } from "../../lib/errors.ts";
import { startPostgres } from "../harness/mod.ts";
import { migrate } from "../../store/migrations.ts";
import { createEventStore } from "../../store/event_store.ts";
import { createStream, startStream } from "../../store/streams.ts";
import type { Sql } from "../../store/types.ts";
import {
  activate,
  createUser,
  deactivate,
  deleteUser,
  getUserByEmail,
  getUserById,
  getUserByUsername,
  markVerified,
  recordLogin,
  updateProfile,
  verifyCredentials,
} from "../../store/users.ts";

// Fast scrypt for tests; production uses the default ln=15.
const HASHING = { hashing: { ln: 10 } };

const INJECTIONS = [
  "'; DROP TABLE users; --",
  "Robert'); DELETE FROM streams;--",
  "\\' OR 1=1 --",
  '" OR ""="',
  "$1; SELECT pg_sleep(10)",
];

function rejectsWith(code: string, pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(isRuntimeError(err), `expected a RuntimeError, got ${err}`);
    assert.equal(err.code, code, err.message);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

async function tablesExist(sql: Sql): Promise<boolean> {
  const [row] = await sql<{ users: string | null; streams: string | null }[]>`
    SELECT to_regclass('users')::text AS users, to_regclass('streams')::text AS streams`;
  return row.users !== null && row.streams !== null;
}

let counter = 0;
function unique(prefix: string): string {
  return `${prefix}${++counter}`;
}

Deno.test("users store", async (t) => {
  await using pg = await startPostgres();
  const sql = postgres(await pg.createDatabase(), { max: 4, onnotice: () => {} });
  try {
    await migrate(sql);

    await t.step("create, then load by id, username and email", async () => {
      const user = await createUser(sql, {
        username: "Alice_01",
        email: "Alice@Example.com",
        password: "s3cret-passphrase",
        displayName: "Alice",
      }, HASHING);
      assert.equal(typeof user.id, "number");
      assert.equal(user.username, "Alice_01");
      assert.equal(user.email, "Alice@Example.com");
      assert.equal(user.displayName, "Alice");
      assert.equal(user.isActive, true);
      assert.equal(user.isVerified, false);
      assert.equal(user.lastLoginAt, null);
      assert.ok(user.createdAt instanceof Date);

      assert.deepEqual(await getUserById(sql, user.id), user);
      assert.deepEqual(await getUserByUsername(sql, "alice_01"), user);
      assert.deepEqual(await getUserByUsername(sql, "ALICE_01"), user);
      assert.deepEqual(await getUserByEmail(sql, "alice@example.COM"), user);
      assert.equal(await getUserById(sql, 999_999), null);
      assert.equal(await getUserByUsername(sql, "nobody"), null);
      assert.equal(await getUserByEmail(sql, "nobody@example.com"), null);
    });

    await t.step("public getters never expose the password hash", async () => {
      const user = await createUser(sql, {
        username: "hashcheck",
        email: "hashcheck@example.com",
        password: "plain-text-never-stored",
      }, HASHING);
      for (const loaded of [user, await getUserById(sql, user.id)]) {
        assert.ok(loaded);
        const keys = Object.keys(loaded).map((k) => k.toLowerCase());
        assert.ok(!keys.some((k) => k.includes("password")), `keys: ${keys}`);
      }
      const [row] = await sql<{ password_hash: string }[]>`
        SELECT password_hash FROM users WHERE id = ${user.id}`;
      assert.match(row.password_hash, /^\$scrypt\$ln=10,r=8,p=1\$/);
      assert.ok(!row.password_hash.includes("plain-text-never-stored"));
    });

    await t.step("a duplicate username, in any case, is USER_EXISTS", async () => {
      await createUser(sql, {
        username: "Duplicate",
        email: "dup1@example.com",
        password: "password-one",
      }, HASHING);
      await assert.rejects(
        createUser(sql, {
          username: "dUPLICATE",
          email: "dup2@example.com",
          password: "password-two",
        }, HASHING),
        rejectsWith("USER_EXISTS", /the username is taken/),
      );
      assert.equal(await getUserByEmail(sql, "dup2@example.com"), null);
    });

    await t.step("a duplicate email, in any case, is USER_EXISTS", async () => {
      await createUser(sql, {
        username: "mailowner",
        email: "Shared@Example.com",
        password: "password-one",
      }, HASHING);
      await assert.rejects(
        createUser(sql, {
          username: "mailthief",
          email: "shared@EXAMPLE.com",
          password: "password-two",
        }, HASHING),
        rejectsWith("USER_EXISTS", /the email is already registered/),
      );
      assert.equal(await getUserByUsername(sql, "mailthief"), null);
    });

    await t.step("invalid input is VALIDATION_FAILED naming the field", async () => {
      const base = { username: "valid_name", email: "valid@example.com", password: "long-enough" };
      const cases: [Record<string, unknown>, string][] = [
        [{ ...base, username: "ab" }, "username"],
        [{ ...base, username: "x".repeat(33) }, "username"],
        [{ ...base, username: "has space" }, "username"],
        [{ ...base, username: "semi;colon" }, "username"],
        [{ ...base, username: INJECTIONS[0] }, "username"],
        [{ ...base, username: 42 }, "username"],
        [{ ...base, email: "not-an-email" }, "email"],
        [{ ...base, email: "a@b" }, "email"],
        [{ ...base, email: `${"x".repeat(250)}@example.com` }, "email"],
        [{ ...base, password: "short" }, "password"],
        [{ ...base, password: "p".repeat(1025) }, "password"],
        [{ ...base, password: undefined }, "password"],
        [{ ...base, displayName: "d".repeat(101) }, "displayName"],
        [{ ...base, displayName: "nul\u0000byte" }, "displayName"],
      ];
      for (const [input, field] of cases) {
        await assert.rejects(
          createUser(sql, input as never, HASHING),
          (err: unknown) => {
            assert.ok(isRuntimeError(err, "VALIDATION_FAILED"), String(err));
            assert.equal(err.details?.field, field, err.message);
            assert.match(err.message, new RegExp(`^Cannot create user: ${field} `));
            return true;
          },
        );
      }
      assert.equal(await getUserByUsername(sql, "valid_name"), null);
      // 100 characters is the limit, counted as characters, not UTF-16 units.
      const emoji = await createUser(sql, {
        ...base,
        displayName: "\u{1F3AE}".repeat(100),
      }, HASHING);
      assert.equal([...(emoji.displayName ?? "")].length, 100);
    });

    await t.step("SQL-injection strings are stored and read back verbatim", async () => {
      for (const [i, text] of INJECTIONS.entries()) {
        const user = await createUser(sql, {
          username: `inject_${i}`,
          email: `inject${i}@example.com`,
          password: "password-123",
          displayName: text,
        }, HASHING);
        assert.equal(user.displayName, text);
        assert.equal((await getUserById(sql, user.id))?.displayName, text);
        const updated = await updateProfile(sql, user.id, { displayName: text + " again" });
        assert.equal(updated.displayName, text + " again");
        // Lookups with hostile strings find nothing rather than everything.
        assert.equal(await getUserByUsername(sql, text), null);
        assert.equal(await getUserByEmail(sql, text), null);
        assert.equal(await verifyCredentials(sql, { login: text, password: text }, HASHING), null);
      }
      assert.ok(await tablesExist(sql));
      const [{ count }] = await sql<{ count: number }[]>`SELECT count(*)::int AS count FROM users`;
      assert.ok(count >= INJECTIONS.length);
    });

    await t.step(
      "verifyCredentials accepts username or email with the right password",
      async () => {
        const user = await createUser(sql, {
          username: "Bob.Builder",
          email: "bob@example.com",
          password: "can-we-fix-it",
        }, HASHING);
        const byName = await verifyCredentials(
          sql,
          { login: "bob.builder", password: "can-we-fix-it" },
          HASHING,
        );
        assert.equal(byName?.id, user.id);
        const byEmail = await verifyCredentials(
          sql,
          { login: "BOB@example.com", password: "can-we-fix-it" },
          HASHING,
        );
        assert.equal(byEmail?.id, user.id);
        assert.ok(byEmail && !Object.keys(byEmail).some((k) => /password/i.test(k)));
      },
    );

    await t.step("wrong password, unknown login and inactive users are refused", async () => {
      const user = await createUser(sql, {
        username: "carol",
        email: "carol@example.com",
        password: "carol-password",
      }, HASHING);
      const login = (l: string, p: string) =>
        verifyCredentials(sql, { login: l, password: p }, HASHING);
      assert.equal(await login("carol", "wrong-password"), null);
      assert.equal(await login("carol", ""), null);
      assert.equal(await login("nobody-here", "carol-password"), null);
      assert.equal(await login("nobody@example.com", "carol-password"), null);
      assert.equal(await login("", ""), null);
      assert.equal(await login("carol", "x".repeat(5000)), null);

      const deactivated = await deactivate(sql, user.id);
      assert.equal(deactivated.isActive, false);
      assert.equal(await login("carol", "carol-password"), null);
      const reactivated = await activate(sql, user.id);
      assert.equal(reactivated.isActive, true);
      assert.equal((await login("carol", "carol-password"))?.id, user.id);

      await assert.rejects(
        verifyCredentials(sql, { login: 5, password: "x" } as never, HASHING),
        rejectsWith("VALIDATION_FAILED", /login/),
      );
    });

    await t.step("an unknown login costs a password hash, like a wrong password", async () => {
      // Without the dummy hash an unknown login answers in about a millisecond while a
      // wrong password costs a full scrypt; the ratio below would then be near 0.
      const options = { hashing: { ln: 13 } };
      await createUser(sql, {
        username: "timing",
        email: "timing@example.com",
        password: "timing-password",
      }, options);
      const once = async (login: string) => {
        const start = performance.now();
        await verifyCredentials(sql, { login, password: "not-the-password" }, options);
        return performance.now() - start;
      };
      await once("nobody-at-all"); // warm-up: builds the cached dummy hash
      // Interleaved, and the fastest of each: a busy machine only ever adds time, and it adds
      // it to both sides alike, so the comparison is about the work done, not the load.
      const known: number[] = [];
      const unknown: number[] = [];
      for (let i = 0; i < 7; i++) {
        known.push(await once("timing"));
        unknown.push(await once("nobody-at-all"));
      }
      const k = Math.min(...known);
      const u = Math.min(...unknown);
      assert.ok(u > k * 0.4, `unknown ${u} ms vs known ${k} ms`);
    });

    await t.step("an outdated hash is upgraded on a successful login", async () => {
      const user = await createUser(sql, {
        username: "upgrade_me",
        email: "upgrade@example.com",
        password: "upgrade-password",
      }, HASHING);
      const stronger = { hashing: { ln: 11 } };
      assert.equal(
        (await verifyCredentials(
          sql,
          { login: "upgrade_me", password: "upgrade-password" },
          stronger,
        ))?.id,
        user.id,
      );
      const [row] = await sql<{ password_hash: string }[]>`
        SELECT password_hash FROM users WHERE id = ${user.id}`;
      assert.match(row.password_hash, /^\$scrypt\$ln=11,/);
      assert.equal(
        (await verifyCredentials(
          sql,
          { login: "upgrade_me", password: "upgrade-password" },
          stronger,
        ))?.id,
        user.id,
      );
    });

    await t.step("profile, verification and login time updates", async () => {
      const user = await createUser(sql, {
        username: "dave",
        email: "dave@example.com",
        password: "dave-password",
        displayName: "Dave",
      }, HASHING);
      const avatar = await updateProfile(sql, user.id, {
        avatarUrl: "https://cdn.example.com/a.png",
      });
      assert.equal(avatar.avatarUrl, "https://cdn.example.com/a.png");
      assert.equal(avatar.displayName, "Dave", "absent fields are kept");
      assert.ok(avatar.updatedAt >= user.updatedAt);
      const cleared = await updateProfile(sql, user.id, { displayName: null });
      assert.equal(cleared.displayName, null);
      assert.equal(cleared.avatarUrl, "https://cdn.example.com/a.png");
      await assert.rejects(
        updateProfile(sql, user.id, { avatarUrl: "javascript:alert(1)" }),
        rejectsWith("VALIDATION_FAILED", /avatarUrl/),
      );
      await assert.rejects(
        updateProfile(sql, 999_999, { displayName: "x" }),
        rejectsWith("USER_NOT_FOUND"),
      );

      assert.equal((await markVerified(sql, user.id)).isVerified, true);
      const at = new Date("2030-01-02T03:04:05.000Z");
      assert.deepEqual((await recordLogin(sql, user.id, { at })).lastLoginAt, at);
      const now = await recordLogin(sql, user.id);
      assert.ok(now.lastLoginAt instanceof Date && now.lastLoginAt < at);
      await assert.rejects(markVerified(sql, 999_999), rejectsWith("USER_NOT_FOUND"));
      await assert.rejects(getUserById(sql, -1), rejectsWith("VALIDATION_FAILED", /id/));
    });

    await t.step("every table with updated_at keeps it current through a trigger", async () => {
      const missing = await sql<{ table_name: string }[]>`
        SELECT c.table_name FROM information_schema.columns c
        WHERE c.table_schema = 'public' AND c.column_name = 'updated_at'
          AND NOT EXISTS (
            SELECT 1 FROM pg_trigger tg
            JOIN pg_proc p ON p.oid = tg.tgfoid
            WHERE tg.tgrelid = format('%I.%I', c.table_schema, c.table_name)::regclass
              AND p.proname = 'set_updated_at' AND NOT tg.tgisinternal
          )`;
      assert.deepEqual(missing.map((r) => r.table_name), []);
      const user = await createUser(sql, {
        username: "touched",
        email: "touched@example.com",
        password: "touched-password",
      }, HASHING);
      await updateProfile(sql, user.id, { displayName: "Touched" });
      // Compared in SQL: microsecond precision, unlike a JS Date.
      const [row] = await sql<{ moved: boolean }[]>`
        SELECT updated_at > created_at AS moved FROM users WHERE id = ${user.id}`;
      assert.equal(row.moved, true);
    });

    await t.step("deactivating a user deletes their login sessions", async () => {
      const user = await createUser(sql, {
        username: "erin",
        email: "erin@example.com",
        password: "erin-password",
      }, HASHING);
      await sql`
        INSERT INTO sessions (user_id, token_hash, expires_at)
        VALUES (${user.id}, sha256('erin-token'), now() + interval '1 hour')`;
      await deactivate(sql, user.id);
      const [{ count }] = await sql<{ count: number }[]>`
        SELECT count(*)::int AS count FROM sessions WHERE user_id = ${user.id}`;
      assert.equal(count, 0);
    });

    await t.step("deleting a user cascades to owned rows and keeps the audit trail", async () => {
      const owner = await createUser(sql, {
        username: unique("owner"),
        email: `${unique("owner")}@example.com`,
        password: "owner-password",
      }, HASHING);
      const other = await createUser(sql, {
        username: unique("other"),
        email: `${unique("other")}@example.com`,
        password: "other-password",
      }, HASHING);
      const { stream } = await createStream(sql, { userId: owner.id, name: "Owner stream" });
      const { session } = await startStream(sql, stream.id);
      const { stream: otherStream } = await createStream(sql, {
        userId: other.id,
        name: "Other stream",
      });
      await sql`
        INSERT INTO sessions (user_id, token_hash, expires_at)
        VALUES (${owner.id}, sha256(${"owner-token"}::bytea), now() + interval '1 hour')`;
      await sql`
        INSERT INTO recordings (stream_id, stream_session_id, file_path)
        VALUES (${stream.id}, ${session!.id}, '/rec/1.mp4')`;
      await sql`
        INSERT INTO usage_logs (user_id, stream_id, event_type, bytes_transferred)
        VALUES (${owner.id}, ${stream.id}, 'bandwidth', 1000),
               (${other.id}, ${otherStream.id}, 'bandwidth', 2000)`;
      await sql`INSERT INTO billing_accounts (user_id, plan) VALUES (${owner.id}, 'pro')`;
      const events = createEventStore(sql);
      await events.append({ type: "Stream", id: stream.id }, [
        { type: "StreamStarted", data: { by: owner.username }, userId: owner.id },
      ], { expectedVersion: 0 });
      await events.saveSnapshot({ type: "Stream", id: stream.id }, {
        version: 1,
        state: { live: true },
      });

      assert.equal(await deleteUser(sql, owner.id), true);
      assert.equal(await deleteUser(sql, owner.id), false);

      const count = async (query: Promise<{ n: number }[]>) => (await query)[0].n;
      assert.equal(
        await count(sql`SELECT count(*)::int AS n FROM users WHERE id = ${owner.id}`),
        0,
      );
      assert.equal(
        await count(sql`SELECT count(*)::int AS n FROM streams WHERE user_id = ${owner.id}`),
        0,
      );
      assert.equal(
        await count(
          sql`SELECT count(*)::int AS n FROM stream_sessions WHERE stream_id = ${stream.id}`,
        ),
        0,
      );
      assert.equal(
        await count(sql`SELECT count(*)::int AS n FROM sessions WHERE user_id = ${owner.id}`),
        0,
      );
      assert.equal(
        await count(sql`SELECT count(*)::int AS n FROM recordings WHERE stream_id = ${stream.id}`),
        0,
      );
      assert.equal(
        await count(sql`SELECT count(*)::int AS n FROM usage_logs WHERE user_id = ${owner.id}`),
        0,
      );
      assert.equal(
        await count(
          sql`SELECT count(*)::int AS n FROM billing_accounts WHERE user_id = ${owner.id}`,
        ),
        0,
      );
      // The audit trail survives, detached from the deleted account; snapshots of the
      // aggregate are not owned by the user and stay too.
      const trail = await events.readEvents({ type: "Stream", id: stream.id });
      assert.equal(trail.length, 1);
      assert.equal(trail[0].userId, null);
      assert.deepEqual(trail[0].data, { by: owner.username });
      assert.ok(await events.latestSnapshot({ type: "Stream", id: stream.id }));
      // Nothing of the other user was touched.
      assert.ok(await getUserById(sql, other.id));
      assert.equal(
        await count(sql`SELECT count(*)::int AS n FROM usage_logs WHERE user_id = ${other.id}`),
        1,
      );
    });

    await t.step("deleting a stream keeps its usage history with stream_id cleared", async () => {
      const user = await createUser(sql, {
        username: unique("usage"),
        email: `${unique("usage")}@example.com`,
        password: "usage-password",
      }, HASHING);
      const { stream } = await createStream(sql, { userId: user.id, name: "Billed stream" });
      await sql`
        INSERT INTO usage_logs (user_id, stream_id, event_type, bytes_transferred)
        VALUES (${user.id}, ${stream.id}, 'bandwidth', 4096)`;
      await sql`DELETE FROM streams WHERE id = ${stream.id}`;
      const rows = await sql<{ stream_id: string | null; bytes_transferred: string }[]>`
        SELECT stream_id, bytes_transferred FROM usage_logs WHERE user_id = ${user.id}`;
      assert.equal(rows.length, 1);
      assert.equal(rows[0].stream_id, null);
      assert.equal(Number(rows[0].bytes_transferred), 4096);
    });
  } finally {
    await sql.end();
  }
});
