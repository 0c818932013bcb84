/**
 * PostgreSQL's archive_command for RootStream: copies one finished WAL file into the WAL
 * archive directory, safely.
 *
 * ```
 * archive_mode = on
 * archive_command = 'deno run --allow-read=/var/lib/rootstream/wal --allow-write=/var/lib/rootstream/wal --no-prompt /opt/rootstream/scripts/archive_wal.ts /var/lib/rootstream/wal %f < %p'
 * ```
 *
 * The WAL file comes on stdin (`< %p`), so the script needs no access to the data
 * directory at all; `archive_wal.ts <dir> %p %f` (reading the file itself) works too.
 *
 * PostgreSQL runs this as its own OS user, so that user must be able to run deno, read
 * this file and write into the archive: `deno task cli backup install-archiver` copies it
 * into a directory that user owns and proves all three with `archive_wal.ts --check <dir>`
 * (writes, syncs and removes a probe file) run as that user (docs/backup.md).
 *
 * - Atomic: written to a temporary name, fsynced, renamed, and the directory fsynced, so a
 *   crash never leaves a half-copied segment under a real name (PostgreSQL would then
 *   believe it archived).
 * - Idempotent: if the file is already archived with identical content (PostgreSQL retries
 *   after a crash between copy and acknowledgement) it succeeds; a *different* file of the
 *   same name is refused (exit 1), because overwriting it could destroy the only copy of
 *   history — another cluster writing into the same archive, for instance.
 * - Exit 0 only when the file is durably archived; anything else makes PostgreSQL keep the
 *   WAL and retry, and the reason goes to stderr (PostgreSQL's log).
 *
 * It imports nothing, so it starts fast and needs no dependency cache.
 * @module
 */

const NAME_RE = /^[0-9A-F]{8}(\.history|[0-9A-F]{16}(\.partial|\.[0-9A-F]{8}\.backup)?)$/;

/** Archives `data` (the content of PostgreSQL's %p) as `dir/name` (%f). */
export async function archiveWal(dir: string, name: string, data: Uint8Array): Promise<string> {
  if (!NAME_RE.test(name)) throw new Error(`refusing to archive ${name}: not a WAL file name`);
  const target = `${dir.replace(/\/+$/, "")}/${name}`;
  try {
    const existing = await Deno.readFile(target);
    if (await sameContent(existing, data)) return `${name} was already archived (identical)`;
    throw new Error(
      `refusing to overwrite ${target}: an archived file of that name has different content`,
    );
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  const tmp = `${dir.replace(/\/+$/, "")}/.${name}.tmp-${Deno.pid}`;
  const file = await Deno.open(tmp, { write: true, create: true, truncate: true, mode: 0o640 });
  try {
    let offset = 0;
    while (offset < data.length) offset += await file.write(data.subarray(offset));
    await file.sync();
  } catch (err) {
    file.close();
    await Deno.remove(tmp).catch(() => {});
    throw err;
  }
  file.close();
  await Deno.rename(tmp, target);
  try {
    using handle = await Deno.open(dir, { read: true });
    await handle.sync();
  } catch {
    // Some file systems cannot fsync a directory; the rename is atomic regardless.
  }
  return `archived ${name} (${data.length} bytes)`;
}

/** Proves `dir` takes a file: writes, syncs and removes a probe (what --check runs). */
export async function checkArchiveDir(dir: string): Promise<string> {
  const probe = `${dir.replace(/\/+$/, "")}/.archive_wal-check-${Deno.pid}`;
  const file = await Deno.open(probe, { write: true, create: true, truncate: true, mode: 0o600 });
  try {
    await file.write(new TextEncoder().encode("rootstream archive check\n"));
    await file.sync();
  } finally {
    file.close();
    await Deno.remove(probe).catch(() => {});
  }
  return `${dir} takes archived WAL`;
}

async function sameContent(a: Uint8Array, b: Uint8Array): Promise<boolean> {
  if (a.length !== b.length) return false;
  const [da, db] = await Promise.all([
    crypto.subtle.digest("SHA-256", a as BufferSource),
    crypto.subtle.digest("SHA-256", b as BufferSource),
  ]);
  const x = new Uint8Array(da);
  const y = new Uint8Array(db);
  return x.every((v, i) => v === y[i]);
}

if (import.meta.main) {
  const args = Deno.args;
  if (args.length !== 2 && args.length !== 3) {
    console.error(
      "usage: archive_wal.ts <archive-dir> %f < %p   |   archive_wal.ts <archive-dir> %p %f" +
        "   |   archive_wal.ts --check <archive-dir>",
    );
    Deno.exit(2);
  }
  try {
    // --check ends like an archiving run (no early exit), so it proves the whole path.
    if (args[0] === "--check") console.log(await checkArchiveDir(args[1]));
    else {
      const [dir, name] = args.length === 2 ? args : [args[0], args[2]];
      const data = args.length === 2
        ? new Uint8Array(await new Response(Deno.stdin.readable).arrayBuffer())
        : await Deno.readFile(args[1]);
      await archiveWal(dir, name, data);
    }
  } catch (err) {
    console.error(`archive_wal: ${err instanceof Error ? err.message : err}`);
    Deno.exit(1);
  }
}
