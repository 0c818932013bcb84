/**
 * `deno task cli <group> <command> …`: the runtime's admin commands. Each group lives in its
 * own module (cli/backup.ts, …) and returns an exit code: 0 done, 1 failed, 2 bad usage.
 *
 * @example
 * ```sh
 * deno task cli backup create --type full
 * deno task cli backup restore --to "2025-01-15 14:30:00+00" --target-dir /var/lib/pg-restored
 * printf '%s' "$PASSWORD" | deno task cli users create-admin --username root --email root@example.com --password-stdin
 * deno task cli tokens create --name prometheus --scope metrics:read
 * ```
 * @module
 */
import { runAccessCli } from "./access.ts";
import { runBackupCli } from "./backup.ts";
import { runGrafanaCli } from "./grafana.ts";

/** Command groups: what each is for and how to run it. */
export const GROUPS: Record<string, { about: string; run(args: string[]): Promise<number> }> = {
  backup: {
    about: "take, list, verify, restore (incl. point-in-time) and prune database backups",
    run: (args) => runBackupCli(args),
  },
  users: {
    about: "create the first admin, give accounts roles (user, operator, admin), list them",
    run: (args) => runAccessCli("users", args),
  },
  tokens: {
    about: "make, list and revoke scoped machine tokens (Prometheus, probes, state writers)",
    run: (args) => runAccessCli("tokens", args),
  },
  grafana: {
    about: "write (or check) deploy/grafana/: the dashboards as Grafana provisioning",
    run: (args) => runGrafanaCli(args),
  },
};

/** Runs the CLI; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const [group, ...rest] = args;
  const entry = group ? GROUPS[group] : undefined;
  if (!entry) {
    console.error(
      `${group ? `Unknown command group: ${group}\n\n` : ""}usage: deno task cli <group> ...\n\n` +
        Object.entries(GROUPS).map(([name, g]) => `  ${name.padEnd(10)} ${g.about}`).join("\n"),
    );
    return 2;
  }
  return await entry.run(rest);
}

if (import.meta.main) Deno.exit(await main(Deno.args));
