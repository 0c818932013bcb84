/**
 * Whether an OS account — PostgreSQL's `postgres` user, typically — can reach a path,
 * decided from the modes and owners of the path and of every directory above it, with the
 * first obstacle named in one sentence:
 * `postgres cannot read /root/rs/scripts/archive_wal.ts: it cannot enter /root (mode 0700, owner root)`.
 *
 * PostgreSQL runs archive_command, restore_command and its own files as its OS user, not
 * as the runtime's: a checkout, scratch or restore directory below a directory only root
 * may enter (`mktemp -d`, `/root`) makes those fail with nothing but "Permission denied"
 * in the server log. Checking first turns that into an early error that says what to change.
 *
 * Classic Unix permissions only: ACLs, mount options (noexec) and security modules are not
 * read, so callers that can also try the real operation as that user.
 * @module
 */

/** An OS account as the kernel checks it: user id, primary group and supplementary groups. */
export interface OsAccount {
  /** Login name. */
  readonly name: string;
  /** User id. */
  readonly uid: number;
  /** Primary group id. */
  readonly gid: number;
  /** Supplementary group ids (from /etc/group), primary group included. */
  readonly groups: readonly number[];
  /** Home directory. */
  readonly home: string;
}

/** What an account needs to do with a path. */
export type AccessNeed = "read" | "write" | "execute" | "enter";

interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

async function readLines(path: string): Promise<string[]> {
  try {
    return (await Deno.readTextFile(path)).split("\n").filter((l) => l && !l.startsWith("#"));
  } catch {
    return [];
  }
}

async function passwd(): Promise<PasswdEntry[]> {
  return (await readLines("/etc/passwd")).map((line) => {
    const f = line.split(":");
    return { name: f[0], uid: Number(f[2]), gid: Number(f[3]), home: f[5] ?? "/" };
  }).filter((e) => Number.isInteger(e.uid) && Number.isInteger(e.gid));
}

/**
 * The account of a user name or uid from /etc/passwd and /etc/group (the files `setpriv
 * --init-groups` reads through NSS on the machines we run on); null when there is none.
 */
export async function lookupAccount(user: string | number): Promise<OsAccount | null> {
  const entry = (await passwd()).find((e) =>
    typeof user === "number" ? e.uid === user : e.name === user
  );
  if (!entry) return null;
  const groups = new Set<number>([entry.gid]);
  for (const line of await readLines("/etc/group")) {
    const f = line.split(":");
    if ((f[3] ?? "").split(",").includes(entry.name)) groups.add(Number(f[2]));
  }
  return { ...entry, groups: [...groups] };
}

async function ownerName(uid: number): Promise<string> {
  return (await passwd()).find((e) => e.uid === uid)?.name ?? String(uid);
}

async function describe(path: string, info: Deno.FileInfo): Promise<string> {
  const mode = ((info.mode ?? 0) & 0o7777).toString(8).padStart(4, "0");
  return `${path} (mode ${mode}, owner ${await ownerName(info.uid ?? -1)})`;
}

/** The permission bits (r=4, w=2, x=1) that apply to `account` on a file with `info`. */
function bitsFor(account: OsAccount, info: Deno.FileInfo): number {
  const mode = info.mode ?? 0;
  // The kernel picks one class: owner, else group, else others (no fall-through).
  if (info.uid === account.uid) return (mode >> 6) & 7;
  if (info.gid !== null && account.groups.includes(info.gid)) return (mode >> 3) & 7;
  return mode & 7;
}

function allowed(account: OsAccount, info: Deno.FileInfo, bits: number): boolean {
  if (account.uid === 0) {
    // root passes every check except running a file nobody may execute.
    return (bits & 1) === 0 || info.isDirectory || ((info.mode ?? 0) & 0o111) !== 0;
  }
  return (bitsFor(account, info) & bits) === bits;
}

/** `/a/./b/../c` → `/a/c` (the path must be absolute). */
function normalize(path: string): string {
  const out: string[] = [];
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") out.pop();
    else out.push(part);
  }
  return `/${out.join("/")}`;
}

/** The directories above `path`, from `/` down. */
function ancestors(path: string): string[] {
  const parts = path.split("/").filter(Boolean);
  return parts.map((_, i) => `/${parts.slice(0, i).join("/")}`);
}

const VERBS: Record<AccessNeed, string> = {
  read: "read",
  write: "write to",
  execute: "run",
  enter: "enter",
};

/** Options of {@linkcode accessProblem}. */
export interface AccessOptions {
  /** What the account must do with the path. */
  need: AccessNeed;
  /**
   * The path is about to be created for the account: when it is missing, only the
   * directories above it (down to the nearest existing one) must be enterable.
   */
  creatable?: boolean;
}

/**
 * Why `account` cannot do `need` with the absolute `path` (the first directory it cannot
 * enter, or the path's own mode), or null when it can. A missing path gives a sentence
 * saying so (unless `creatable`); a path this process may not inspect gives null (nothing
 * known to report).
 */
export async function accessProblem(
  account: OsAccount,
  path: string,
  options: AccessOptions,
): Promise<string | null> {
  const { need } = options;
  const who = `the OS user ${account.name}`;
  const blocked = async (dirs: Iterable<string>): Promise<string | null> => {
    for (const dir of dirs) {
      const info = await Deno.stat(dir).catch(() => null);
      if (!info) return null;
      if (!allowed(account, info, 1)) {
        return `${who} cannot ${VERBS[need]} ${path}: it cannot enter ${await describe(dir, info)}`;
      }
    }
    return null;
  };
  let real: string;
  try {
    real = await Deno.realPath(path);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) return null;
    if (!options.creatable) return `${path} does not exist`;
    let existing = normalize(path);
    while (existing !== "/" && !(await Deno.lstat(existing).then(() => true, () => false))) {
      existing = existing.slice(0, existing.lastIndexOf("/")) || "/";
    }
    return await blocked([...ancestors(existing), existing]);
  }
  // The kernel walks the path as written (a symlink's own directory must be enterable) and
  // then wherever the links lead: check the directories of both.
  const problem = await blocked(new Set([...ancestors(normalize(path)), ...ancestors(real)]));
  if (problem) return problem;
  const info = await Deno.stat(real).catch(() => null);
  if (!info) return null;
  const bits = need === "read"
    ? (info.isDirectory ? 5 : 4)
    : need === "write"
    ? (info.isDirectory ? 3 : 2)
    : 1;
  if (need === "execute" && !info.isFile) return `${who} cannot run ${path}: it is not a file`;
  if (need === "enter" && !info.isDirectory) {
    return `${who} cannot enter ${path}: it is not a directory`;
  }
  if (!allowed(account, info, bits)) {
    return `${who} cannot ${VERBS[need]} ${await describe(path, info)}`;
  }
  return null;
}
