/**
 * `deno task cli users …` and `deno task cli tokens …`: accounts' roles and machine tokens
 * from a shell on a host (whoever can run this can read DATABASE_URL anyway). The first
 * admin is made here; there is no default account. Every change goes through the same
 * service as the admin routes (actors/sessions/access.ts) and is recorded in the audit
 * trail as made by `cli`.
 *
 * With the embedded database (no DATABASE_URL), stop the instance first: only one process
 * can open it.
 *
 * @example
 * ```sh
 * printf '%s' "$PASSWORD" | deno task cli users create-admin --username root --email root@example.com --password-stdin
 * deno task cli users set-role alice operator
 * deno task cli tokens create --name prometheus --scope metrics:read
 * ```
 * @module
 */
import { parseArgs } from "node:util";
import { createAccessService } from "../actors/sessions/access.ts";
import { loadConfig } from "../concerns/config.ts";
import { isScope, type Role, ROLES, SCOPE_NAMES, SCOPES } from "../lib/access.ts";
import { describeError, RuntimeError } from "../lib/errors.ts";
import { createLogger } from "../lib/log.ts";
import { openDatabase } from "../store/database.ts";
import { createEventStore } from "../store/event_store.ts";
import { migrate } from "../store/migrations.ts";
import { getUserByEmail, getUserById, getUserByUsername, type User } from "../store/users.ts";

/** Where the CLI reads and writes (tests inject these). */
export interface AccessCliDeps {
  /** Environment variables (default: the process's). */
  env?: Record<string, string | undefined>;
  /** Standard output lines. */
  out?: (line: string) => void;
  /** Standard error lines. */
  err?: (line: string) => void;
  /** Standard input (default: the process's), for `--password-stdin`. */
  stdin?: ReadableStream<Uint8Array>;
}

const USERS_USAGE = `usage: deno task cli users <command> [options]

commands:
  create-admin --username <name> --email <address> --password-stdin [--display-name <text>]
                       create an account with the admin role (the password is read from
                       standard input, never from the command line)
  set-role <username|email|id> <${ROLES.join("|")}>
                       give an account a role (the last active admin cannot be demoted)
  list [--role <role>] the accounts and their roles

options: --json for machine-readable output`;

const TOKENS_USAGE = `usage: deno task cli tokens <command> [options]

commands:
  create --name <name> --scope <scope> [--scope <scope> ...] [--expires-in-days <n>]
                       make a machine token; it is printed once, only its SHA-256 is kept
  list [--all]         the live tokens (--all: revoked ones too), with their last use
  revoke <id>          revoke a token at once

scopes:
${Object.entries(SCOPES).map(([s, d]) => `  ${s.padEnd(18)} ${d}`).join("\n")}

options: --json for machine-readable output`;

const OPTIONS = {
  username: { type: "string" },
  email: { type: "string" },
  "display-name": { type: "string" },
  "password-stdin": { type: "boolean" },
  role: { type: "string" },
  name: { type: "string" },
  scope: { type: "string", multiple: true },
  "expires-in-days": { type: "string" },
  all: { type: "boolean" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

async function readPassword(stdin: ReadableStream<Uint8Array>): Promise<string> {
  let text = "";
  for await (const chunk of stdin.pipeThrough(new TextDecoderStream())) {
    text += chunk;
    if (text.length > 4096) break;
  }
  // One trailing newline is the terminal's, not the password's.
  return text.replace(/\r?\n$/, "");
}

async function findUser(
  sql: Parameters<typeof getUserById>[0],
  ref: string,
): Promise<User> {
  const user = /^\d{1,15}$/.test(ref)
    ? await getUserById(sql, Number(ref))
    : ref.includes("@")
    ? await getUserByEmail(sql, ref)
    : await getUserByUsername(sql, ref);
  if (!user) throw new RuntimeError("USER_NOT_FOUND", `No account ${JSON.stringify(ref)}`);
  return user;
}

/** Runs `users …` (`group` "users") or `tokens …` (`group` "tokens"); returns the exit code. */
export async function runAccessCli(
  group: "users" | "tokens",
  args: string[],
  deps: AccessCliDeps = {},
): Promise<number> {
  const env = deps.env ?? Deno.env.toObject();
  const out = deps.out ?? ((line: string) => console.log(line));
  const err = deps.err ?? ((line: string) => console.error(line));
  const usageText = group === "users" ? USERS_USAGE : TOKENS_USAGE;
  let parsed: ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>;
  try {
    parsed = parseArgs({ args, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (e) {
    err(`${describeError(e)}\n\n${usageText}`);
    return 2;
  }
  const { values: v, positionals } = parsed;
  const [command, ...rest] = positionals;
  if (v.help || !command) {
    (command ? out : err)(usageText);
    return command ? 0 : 2;
  }
  const usage = (message: string) => {
    err(`${message}\n\n${usageText}`);
    return 2;
  };
  const known = group === "users" ? ["create-admin", "set-role", "list"] : [
    "create",
    "list",
    "revoke",
  ];
  if (!known.includes(command)) return usage(`Unknown command: ${command}`);

  // Usage errors first: nothing is opened for a command that cannot run.
  if (group === "users" && command === "create-admin") {
    if (!v.username || !v.email) return usage("create-admin needs --username and --email");
    if (!v["password-stdin"]) {
      return usage("create-admin reads the password from standard input: pass --password-stdin");
    }
  }
  if (group === "users" && command === "set-role") {
    if (rest.length !== 2) return usage("set-role needs an account and a role");
    if (!ROLES.includes(rest[1] as Role)) return usage(`Unknown role: ${rest[1]}`);
  }
  if (v.role !== undefined && !ROLES.includes(v.role as Role)) {
    return usage(`Unknown role: ${v.role}`);
  }
  if (group === "tokens" && command === "create") {
    if (!v.name || !v.scope?.length) return usage("create needs --name and at least one --scope");
    const bad = v.scope.filter((s) => !isScope(s));
    if (bad.length) {
      return usage(`Unknown scope: ${bad.join(", ")} (known: ${SCOPE_NAMES.join(", ")})`);
    }
    if (v["expires-in-days"] !== undefined && !/^\d{1,4}$/.test(v["expires-in-days"])) {
      return usage("--expires-in-days must be a whole number of days (1-9999)");
    }
  }
  if (group === "tokens" && command === "revoke" && rest.length !== 1) {
    return usage("revoke needs the token's id");
  }

  const log = createLogger(`cli.${group}`, {
    level: (env.LOG_LEVEL as "debug" | "info" | "warn" | "error" | undefined) ?? "warn",
    sink: err,
  });
  let db: Awaited<ReturnType<typeof openDatabase>> | null = null;
  try {
    const config = loadConfig({ env, args: [] });
    db = await openDatabase({
      url: config.database.url,
      dataDir: config.dataDir,
      poolSize: 2,
      connectTimeoutS: Math.min(config.database.connectTimeoutS, 10),
      queryTimeoutMs: config.database.queryTimeoutMs,
      applicationName: `rootstream-cli-${group}`,
      log: log.child("db"),
    });
    // Pending migrations, as the runtime applies them at start-up (roles need 006).
    await migrate(db.sql, { log: log.child("migrate") });
    const sql = db.sql;
    const access = createAccessService({
      sql,
      events: createEventStore(sql),
      now: Date.now,
      log: log.child("access"),
    });
    const show = (value: unknown, text: string) => out(v.json ? JSON.stringify(value) : text);

    if (group === "users") {
      if (command === "create-admin") {
        const password = await readPassword(deps.stdin ?? Deno.stdin.readable);
        const user = await access.createAdmin({
          username: v.username!,
          email: v.email!,
          password,
          displayName: v["display-name"] ?? null,
        });
        show(
          { id: user.id, username: user.username, role: user.role },
          `created admin ${user.username} (id ${user.id})`,
        );
      } else if (command === "set-role") {
        const user = await findUser(sql, rest[0]);
        const result = await access.setRole(user.id, rest[1] as Role, null);
        show(
          { id: user.id, username: user.username, before: result.before, role: result.user.role },
          `${user.username}: ${result.before} -> ${result.user.role}`,
        );
      } else {
        const users = await access.listUsers({ role: v.role as Role | undefined, limit: 1000 });
        if (v.json) {
          out(
            JSON.stringify(
              users.map((u) => ({
                id: u.id,
                username: u.username,
                role: u.role,
                active: u.isActive,
              })),
            ),
          );
        } else {
          for (const u of users) {
            out(
              `${String(u.id).padStart(6)}  ${u.username.padEnd(32)} ${u.role.padEnd(8)} ${
                u.isActive ? "active" : "inactive"
              }`,
            );
          }
        }
      }
    } else {
      if (command === "create") {
        const days = v["expires-in-days"] ? Number(v["expires-in-days"]) : null;
        const made = await access.createToken({
          name: v.name!,
          scopes: v.scope!,
          expiresAt: days ? new Date(Date.now() + days * 86_400_000) : null,
        }, null);
        if (v.json) {
          out(
            JSON.stringify({ token: made.token, id: made.record.id, scopes: made.record.scopes }),
          );
        } else {
          err(
            `machine token ${made.record.name} (id ${made.record.id}, scopes ${
              made.record.scopes.join(" ")
            }); it is shown once:`,
          );
          out(made.token);
        }
      } else if (command === "list") {
        const tokens = await access.listTokens({ includeRevoked: v.all === true });
        if (v.json) out(JSON.stringify(tokens));
        else {
          for (const t of tokens) {
            out(
              `${t.id}  ${t.name.padEnd(24)} ${t.scopes.join(",").padEnd(28)} last used ${
                t.lastUsedAt?.toISOString() ?? "never"
              }${t.revokedAt ? `  revoked ${t.revokedAt.toISOString()}` : ""}`,
            );
          }
        }
      } else {
        await access.revokeToken(rest[0].toLowerCase(), null);
        show({ revoked: rest[0] }, `revoked ${rest[0]}`);
      }
    }
    return 0;
  } catch (e) {
    err(`${group} ${command} failed: ${describeError(e)}`);
    return 1;
  } finally {
    await db?.close(5);
  }
}
