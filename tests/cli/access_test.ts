/**
 * `deno task cli users …` and `tokens …` against a real PostgreSQL: no admin exists until
 * one is made here (the password from standard input), roles change with the last admin
 * kept, machine tokens are printed once and work until revoked, every change is audited
 * as made by the CLI, and bad usage is refused before anything is opened.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { createAccessService } from "../../actors/sessions/access.ts";
import { runAccessCli } from "../../cli/access.ts";
import { createEventStore } from "../../store/event_store.ts";
import type { Sql } from "../../store/types.ts";
import { createUser, verifyCredentials } from "../../store/users.ts";
import { startPostgres } from "../harness/mod.ts";

/** Runs one CLI command; `stdin` is what is piped in. */
async function cli(
  env: Record<string, string>,
  group: "users" | "tokens",
  args: string[],
  stdin = "",
): Promise<{ code: number; out: string[]; err: string[] }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runAccessCli(group, args, {
    env,
    out: (l) => out.push(l),
    err: (l) => err.push(l),
    stdin: new Blob([stdin]).stream(),
  });
  return { code, out, err };
}

Deno.test("cli users and tokens", async (t) => {
  await using pg = await startPostgres();
  const dataDir = await Deno.makeTempDir({ prefix: "rs-cli-access-" });
  const env = {
    DATABASE_URL: await pg.createDatabase(),
    RS_DATA_DIR: dataDir,
    LOG_LEVEL: "error",
  };
  const sql = postgres(env.DATABASE_URL, { max: 2, onnotice: () => {} }) as Sql;
  try {
    await t.step("a new database has no admin", async () => {
      const r = await cli(env, "users", ["list", "--role", "admin", "--json"]);
      assert.equal(r.code, 0, r.err.join("\n"));
      assert.deepEqual(JSON.parse(r.out[0]), []);
    });

    await t.step("bad usage is refused before anything is opened", async () => {
      for (
        const [group, args, why] of [
          ["users", ["create-admin", "--username", "root", "--email", "r@example.com"], /stdin/],
          ["users", ["create-admin", "--password-stdin"], /--username and --email/],
          ["users", ["set-role", "alice", "owner"], /Unknown role: owner/],
          ["users", ["delete", "alice"], /Unknown command: delete/],
          ["tokens", ["create", "--name", "x", "--scope", "everything"], /Unknown scope/],
          ["tokens", ["create", "--scope", "metrics:read"], /--name/],
          ["tokens", ["revoke"], /the token's id/],
        ] as const
      ) {
        const r = await cli(env, group, [...args]);
        assert.equal(r.code, 2, args.join(" "));
        assert.match(r.err.join("\n"), why);
      }
    });

    let adminId = 0;
    await t.step("create-admin reads the password from standard input", async () => {
      const short = await cli(env, "users", [
        "create-admin",
        "--username",
        "root",
        "--email",
        "root@example.com",
        "--password-stdin",
      ], "short\n");
      assert.equal(short.code, 1);
      assert.match(short.err.join("\n"), /password must be at least 8 characters/);
      const made = await cli(env, "users", [
        "create-admin",
        "--username",
        "root",
        "--email",
        "root@example.com",
        "--password-stdin",
        "--json",
      ], "the admin password\n");
      assert.equal(made.code, 0, made.err.join("\n"));
      const body = JSON.parse(made.out[0]);
      assert.equal(body.role, "admin");
      adminId = body.id;
      // The trailing newline was the terminal's: the password is what was typed.
      const user = await verifyCredentials(sql, { login: "root", password: "the admin password" });
      assert.equal(user?.role, "admin");
      const listed = await cli(env, "users", ["list", "--role", "admin"]);
      assert.match(listed.out.join("\n"), /root\s+admin\s+active/);
    });

    await t.step("set-role changes a role; the last admin is kept", async () => {
      await createUser(sql, {
        username: "alice",
        email: "alice@example.com",
        password: "alice's password",
      }, { hashing: { ln: 10 } });
      const r = await cli(env, "users", ["set-role", "alice", "operator"]);
      assert.equal(r.code, 0, r.err.join("\n"));
      assert.deepEqual(r.out, ["alice: user -> operator"]);
      const last = await cli(env, "users", ["set-role", "root", "user"]);
      assert.equal(last.code, 1);
      assert.match(last.err.join("\n"), /last active admin/);
      const nobody = await cli(env, "users", ["set-role", "nobody", "operator"]);
      assert.equal(nobody.code, 1);
      assert.match(nobody.err.join("\n"), /No account "nobody"/);
      const events = await createEventStore(sql).readEvents<
        { from: string; to: string; by: unknown }
      >(
        { type: "user", id: String(adminId) },
      );
      assert.deepEqual(events.map((e) => [e.type, e.data.to, e.data.by]), [
        ["UserRoleChanged", "admin", "cli"],
      ]);
    });

    await t.step("a machine token is printed once and works until revoked", async () => {
      const made = await cli(env, "tokens", [
        "create",
        "--name",
        "prometheus",
        "--scope",
        "metrics:read",
        "--scope",
        "health:read",
      ]);
      assert.equal(made.code, 0, made.err.join("\n"));
      const [token] = made.out;
      assert.match(token, /^rsm_[A-Za-z0-9_-]{43}$/);
      assert.match(made.err.join("\n"), /scopes health:read metrics:read\); it is shown once/);
      const access = createAccessService({ sql, events: createEventStore(sql), now: Date.now });
      const seen = await access.verifyToken(token);
      assert.deepEqual(seen?.scopes, ["health:read", "metrics:read"]);
      const list = await cli(env, "tokens", ["list", "--json"]);
      const [record] = JSON.parse(list.out[0]);
      assert.equal(record.name, "prometheus");
      assert.ok(!list.out[0].includes(token), "never listed");
      const revoked = await cli(env, "tokens", ["revoke", record.id]);
      assert.equal(revoked.code, 0, revoked.err.join("\n"));
      assert.equal(await access.verifyToken(token), null);
      const again = await cli(env, "tokens", ["revoke", record.id]);
      assert.equal(again.code, 1);
      assert.match(again.err.join("\n"), /No live machine token/);
    });
  } finally {
    await sql.end();
    await Deno.remove(dataDir, { recursive: true });
  }
});
