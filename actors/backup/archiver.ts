/**
 * PostgreSQL's archive_command, set up so that the server's OS user never needs to read the
 * runtime's checkout: scripts/archive_wal.ts is copied into a directory that user owns, the
 * WAL archive directory is created for it, and both are proven by running the script's
 * `--check` as that user before the archive_command line is handed out.
 *
 * When archiving fails anyway, {@linkcode explainArchiveCommand} reads the configured
 * command and names what that user cannot reach (`the OS user postgres cannot read
 * /root/rs/scripts/archive_wal.ts: it cannot enter /root (mode 0700, owner root)`), so a WAL
 * backup can say what to change instead of waiting for its timeout.
 * @module
 */
import { RuntimeError } from "../../lib/errors.ts";
import { accessProblem, lookupAccount, type OsAccount } from "../../lib/os_access.ts";
import { type PgTools, stderrSummary } from "../../store/pg_tools.ts";

/** The archive script in this checkout (the installer copies it; PostgreSQL never reads it here). */
export const ARCHIVE_SCRIPT_SOURCE: URL = new URL("../../scripts/archive_wal.ts", import.meta.url);

/** File name of the installed script. */
export const ARCHIVE_SCRIPT_NAME = "archive_wal.ts";

/** Paths an archive_command may contain without quoting (it goes through /bin/sh). */
const SAFE_PATH = /^\/[A-Za-z0-9_./+-]*$/;

/** The pieces of an archive_command that runs archive_wal.ts. */
export interface ArchiverPaths {
  /** The deno binary PostgreSQL runs. */
  deno: string;
  /** The installed archive_wal.ts. */
  script: string;
  /** The WAL archive directory. */
  archiveDir: string;
}

/** What {@linkcode installArchiver} did. */
export interface ArchiverInstall extends ArchiverPaths {
  /** The archive_command line for postgresql.conf. */
  command: string;
  /** The OS user it was installed for (and proven as, when `probed`). */
  user: string;
  /** True when the script's --check ran as that user and succeeded. */
  probed: boolean;
}

/** What {@linkcode checkArchiver} found. */
export interface ArchiverCheck {
  /** One sentence per thing the user cannot do; empty when the archiver can work. */
  problems: string[];
  /** True when the script's --check ran as that user (root, or this process is that user). */
  probed: boolean;
}

function safePath(path: string, what: string): string {
  const clean = path.replace(/\/+$/, "") || "/";
  if (!SAFE_PATH.test(clean) || clean.split("/").includes("..")) {
    throw new RuntimeError(
      "VALIDATION_FAILED",
      `Cannot use ${JSON.stringify(path)} as ${what} in archive_command: use an absolute path ` +
        "of letters, digits and . _ / + -",
    );
  }
  return clean;
}

function denoArgs(paths: ArchiverPaths): string[] {
  // --no-config: no deno.json or lockfile near the script is looked for or written.
  return [
    "run",
    "--no-prompt",
    "--no-config",
    `--allow-read=${paths.archiveDir}`,
    `--allow-write=${paths.archiveDir}`,
    paths.script,
  ];
}

/** The archive_command line running `script` with `deno` into `archiveDir` (WAL on stdin). */
export function archiveCommand(paths: ArchiverPaths): string {
  const clean = {
    deno: safePath(paths.deno, "the deno binary"),
    script: safePath(paths.script, "the archive script"),
    archiveDir: safePath(paths.archiveDir, "the archive directory"),
  };
  return [clean.deno, ...denoArgs(clean), clean.archiveDir, "%f", "<", "%p"].join(" ");
}

/** The OS account PostgreSQL runs as in production (`PG_OS_USER`); CONFIG_INVALID if unknown. */
export async function serverUserAccount(tools: PgTools): Promise<OsAccount> {
  const account = await lookupAccount(tools.serverUser);
  if (!account) {
    throw new RuntimeError(
      "CONFIG_INVALID",
      `There is no OS user ${tools.serverUser} (PG_OS_USER) on this host: set PG_OS_USER to ` +
        "the user PostgreSQL runs as",
    );
  }
  return account;
}

/**
 * Whether `account` can run `deno`, read the script and write into the archive directory:
 * first from the paths' modes (naming the first obstacle), then — when this process may
 * act as that user — by running the script's `--check` as it, which also catches ACLs and
 * noexec mounts.
 */
export async function checkArchiver(
  tools: PgTools,
  paths: ArchiverPaths,
  account: OsAccount,
): Promise<ArchiverCheck> {
  const problems = (await Promise.all([
    accessProblem(account, paths.deno, { need: "execute" }),
    accessProblem(account, paths.script, { need: "read" }),
    accessProblem(account, paths.archiveDir, { need: "write" }),
  ])).filter((p): p is string => p !== null);
  // The probe proves something only when it runs as that very user.
  const asServerUser = Deno.uid() === 0 && account.name === tools.serverUser;
  if (problems.length || (!asServerUser && Deno.uid() !== account.uid)) {
    return { problems, probed: false };
  }
  // PostgreSQL gives archive_command its own environment, not ours: no DENO_* of this
  // process (deno test's DENO_COVERAGE_DIR would point into the checkout), that user's HOME.
  const probe = await tools.runTool(paths.deno, [...denoArgs(paths), "--check", paths.archiveDir], {
    asServerUser,
    clearEnv: true,
    env: { HOME: account.home },
    signal: AbortSignal.timeout(60_000),
  });
  if (!probe.success) {
    problems.push(
      `running ${paths.script} --check as the OS user ${account.name} failed: ${
        stderrSummary(probe.stderr) || `exit code ${probe.code}`
      }`,
    );
  }
  return { problems, probed: true };
}

/** Options of {@linkcode installArchiver}. */
export interface InstallArchiverOptions {
  /** The WAL archive directory (created for the server user when missing). */
  archiveDir: string;
  /** Where archive_wal.ts is copied (created, owned by the server user). */
  scriptDir: string;
  /** The deno binary PostgreSQL will run (default: this one). */
  deno?: string;
}

/**
 * Copies scripts/archive_wal.ts into `scriptDir` (owned by the server's OS user, mode 0644
 * in a 0755 directory), creates `archiveDir` for that user (0750) when missing, proves the
 * result as that user and returns the archive_command line; WAL_ARCHIVE_FAILED with every
 * obstacle named when that user could not archive with it.
 */
export async function installArchiver(
  tools: PgTools,
  options: InstallArchiverOptions,
): Promise<ArchiverInstall> {
  const paths: ArchiverPaths = {
    deno: safePath(options.deno ?? Deno.execPath(), "the deno binary"),
    script: `${safePath(options.scriptDir, "the script directory")}/${ARCHIVE_SCRIPT_NAME}`,
    archiveDir: safePath(options.archiveDir, "the archive directory"),
  };
  const command = archiveCommand(paths);
  const account = await serverUserAccount(tools);
  const root = Deno.uid() === 0;
  const scriptDir = paths.script.slice(0, paths.script.lastIndexOf("/"));
  const fail = (found: string[]) => {
    const problems = [...new Set(found)];
    return new RuntimeError(
      "WAL_ARCHIVE_FAILED",
      `Cannot install the WAL archiver: ${problems.join("; ")}. HINT: PostgreSQL runs ` +
        `archive_command as the OS user ${account.name}, which must be able to enter every ` +
        "directory above deno, the script and the archive: choose directories it can reach " +
        "(such as /var/lib/rootstream/archiver and /var/lib/rootstream/wal)" +
        (root ? "" : `, and run this as root so they are created for ${account.name}`),
      { details: { command, problems } },
    );
  };
  // Before anything is written: can that user get to where the pieces will be?
  const early = (await Promise.all([
    accessProblem(account, paths.deno, { need: "execute" }),
    accessProblem(account, scriptDir, { need: "enter", creatable: true }),
    accessProblem(account, paths.archiveDir, { need: "write", creatable: true }),
  ])).filter((p): p is string => p !== null);
  if (early.length) throw fail(early);

  const created = (await Promise.all([
    firstMissing(scriptDir),
    firstMissing(paths.archiveDir),
  ])).filter((p): p is string => p !== null);
  const chown = (path: string) => root ? Deno.chown(path, account.uid, account.gid) : undefined;
  const archiveExisted = await exists(paths.archiveDir);
  try {
    const scriptDirExisted = await exists(scriptDir);
    await makeDirs(scriptDir, 0o755);
    // An existing directory (say /usr/local/lib) keeps its owner; only ours goes to the user.
    if (!scriptDirExisted) await chown(scriptDir);
    const tmp = `${paths.script}.tmp-${Deno.pid}`;
    try {
      await Deno.writeFile(tmp, await Deno.readFile(ARCHIVE_SCRIPT_SOURCE), { mode: 0o644 });
      await Deno.chmod(tmp, 0o644);
      await chown(tmp);
      await Deno.rename(tmp, paths.script);
    } finally {
      await Deno.remove(tmp).catch(() => {});
    }
    // An existing archive keeps its owner and mode; the check below says if they do not fit.
    if (!archiveExisted) {
      await makeDirs(paths.archiveDir, 0o750);
      await chown(paths.archiveDir);
    }
    const check = await checkArchiver(tools, paths, account);
    if (check.problems.length) throw fail(check.problems);
    return { ...paths, command, user: account.name, probed: check.probed };
  } catch (err) {
    // Leave nothing behind that was not there before.
    for (const dir of created) await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw err;
  }
}

/**
 * mkdir -p with explicit modes (whatever the umask): `mode` for `path`, 0755 for the
 * directories created above it, which the server user must be able to enter.
 */
async function makeDirs(path: string, mode: number): Promise<void> {
  const chain: string[] = [];
  for (let p = path; p !== "/" && !(await exists(p)); p = p.slice(0, p.lastIndexOf("/")) || "/") {
    chain.unshift(p);
  }
  for (const dir of chain) {
    await Deno.mkdir(dir);
    await Deno.chmod(dir, dir === path ? mode : 0o755);
  }
}

/** The highest directory of `path` that does not exist yet (what mkdir -p would create), or null. */
async function firstMissing(path: string): Promise<string | null> {
  let missing: string | null = null;
  let p = path;
  while (p !== "/" && !(await exists(p))) {
    missing = p;
    p = p.slice(0, p.lastIndexOf("/")) || "/";
  }
  return missing;
}

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

/** The absolute paths in a shell command line, with what a command needs of each. */
function commandPaths(command: string): { path: string; need: "execute" | "read" | "write" }[] {
  const words = command.split(/\s+/).filter(Boolean);
  const found: { path: string; need: "execute" | "read" | "write" }[] = [];
  for (const [i, raw] of words.entries()) {
    if (/^[<>|&;]/.test(raw)) continue;
    const word = raw.replace(/^--allow-(read|write)=/, "").replace(/^["']|["']$/g, "");
    if (!word.startsWith("/") || word.includes("%")) continue;
    found.push({
      path: word,
      need: i === 0 ? "execute" : /\.[cm]?[jt]s$/.test(word) ? "read" : "write",
    });
  }
  return found;
}

/**
 * Why `account` cannot run a configured archive_command on this host, from the modes of
 * the absolute paths in it (the program: run; scripts: read; directories: write into), or
 * null when nothing local explains it (paths missing here, or all reachable).
 */
export async function explainArchiveCommand(
  command: string,
  account: OsAccount,
): Promise<string | null> {
  const problems: string[] = [];
  const seen = new Set<string>();
  for (const { path, need } of commandPaths(command)) {
    if (seen.has(path)) continue;
    seen.add(path);
    const exists = await Deno.stat(path).then((i) => i, () => null);
    // Only paths that exist here say anything: PostgreSQL may run on another host.
    if (!exists) continue;
    const problem = await accessProblem(account, path, {
      need: exists.isDirectory ? "write" : need,
    });
    if (problem) problems.push(problem);
  }
  return problems.length ? problems.join("; ") : null;
}
