/**
 * The template of a new embedded database: a PGlite data directory just made by initdb and
 * shut down cleanly, made once per machine and PGlite version and copied into each new data
 * directory instead of running initdb again.
 *
 * initdb in WebAssembly is most of a first start (seconds of CPU, and a second PGlite instance
 * whose memory stays mapped until garbage collection). Its output does not depend on the data
 * directory, so the first new directory makes `pglite-<version>-pgdata` in the cache directory
 * and every later one is a file copy of it, which PGlite then opens like any existing database
 * (docs/scaling.md, "Embedded mode: memory and start time"). Every database made from one
 * template shares initdb's system identifier, which only streaming replication compares, and
 * embedded mode has none.
 *
 * The template appears atomically (made under a temporary name, then renamed), is used only when
 * this user owns it and nobody else may write it, and one that is not a complete data directory
 * is made again.
 * @module
 */
import type { PGlite, PGliteOptions } from "@electric-sql/pglite";
import { describeError } from "../lib/errors.ts";
import { type Logger, silentLogger } from "../lib/log.ts";

/**
 * The PGlite version deno.json pins (tests/store/embedded_template_test.ts checks it): the
 * template's name carries it, so an upgrade makes a new template.
 */
export const PGLITE_VERSION = "0.5.14";

/** Where the template of this PGlite version lives in `cacheDir`. */
export function templateDir(cacheDir: string): string {
  return `${cacheDir.replace(/\/$/, "")}/pglite-${PGLITE_VERSION}-pgdata`;
}

/** Options of {@linkcode seedFromTemplate}. */
export interface SeedOptions {
  /** The cache directory holding the template. */
  cacheDir: string;
  /** The new data directory to fill (it must not exist yet, or be empty). */
  pgdata: string;
  /** PGlite options of the instance that makes a missing template (its start parameters). */
  pgliteOptions?: PGliteOptions;
  /** Where making, refusing or replacing the template is logged. */
  log?: Logger;
}

/**
 * Fills the new data directory `pgdata` with a copy of the template, making the template first
 * when it is missing. False when that failed (nothing is left in `pgdata`; PGlite then runs
 * initdb itself).
 */
export async function seedFromTemplate(
  pglite: typeof PGlite,
  options: SeedOptions,
): Promise<boolean> {
  const log = options.log ?? silentLogger;
  const dir = templateDir(options.cacheDir);
  try {
    if (!(await usableTemplate(dir, log))) await makeTemplate(pglite, dir, options, log);
    copyTree(dir, options.pgdata);
    return true;
  } catch (err) {
    log.warn(`starting without the embedded database template ${dir}: ${describeError(err)}`);
    await Deno.remove(options.pgdata, { recursive: true }).catch(() => {});
    return false;
  }
}

/** True when `dir` is a complete template this user owns and only this user may write. */
async function usableTemplate(dir: string, log: Logger): Promise<boolean> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.lstat(dir);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
  const uid = Deno.uid();
  const trusted = info.isDirectory &&
    (uid === null || (info.uid === uid && ((info.mode ?? 0) & 0o022) === 0));
  const complete = trusted &&
    (await Promise.all(
      ["PG_VERSION", "global/pg_control"].map((f) =>
        Deno.stat(`${dir}/${f}`).then(() => 1, () => 0)
      ),
    )).every(Boolean);
  if (complete) return true;
  log.warn(
    trusted
      ? `making the embedded database template ${dir} again: it is not a complete data directory`
      : `replacing the embedded database template ${dir}: it must be a directory that belongs ` +
        `to this user and that nobody else may write`,
  );
  await Deno.remove(dir, { recursive: true });
  return false;
}

/** Runs initdb into a temporary directory, shuts PostgreSQL down cleanly, renames it to `dir`. */
async function makeTemplate(
  pglite: typeof PGlite,
  dir: string,
  options: SeedOptions,
  log: Logger,
): Promise<void> {
  const started = performance.now();
  await Deno.mkdir(options.cacheDir, { recursive: true, mode: 0o700 });
  const tmp = `${dir}.${Deno.pid}.tmp`;
  await Deno.remove(tmp, { recursive: true }).catch(() => {});
  try {
    const db = await pglite.create({ ...options.pgliteOptions, dataDir: tmp });
    await db.close();
    await Deno.chmod(tmp, 0o700);
    await Deno.rename(tmp, dir);
  } catch (err) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    // Another process may have made it meanwhile.
    if (await usableTemplate(dir, silentLogger).catch(() => false)) return;
    throw err;
  }
  log.info("made the embedded database template", {
    path: dir,
    ms: Math.round(performance.now() - started),
  });
}

/**
 * Copies the directory tree `from` to `to` (which must not exist yet, or be empty).
 * Synchronous: it runs once per new data directory during start-up, and ~1,000 small files
 * copy in 0.25-0.4 s this way against 0.5-1 s one awaited copy at a time (and a blocking-pool
 * thread per file when they are started together).
 */
function copyTree(from: string, to: string): void {
  Deno.mkdirSync(to, { recursive: true, mode: 0o700 });
  for (const entry of Deno.readDirSync(from)) {
    const [src, dst] = [`${from}/${entry.name}`, `${to}/${entry.name}`];
    if (entry.isDirectory) copyTree(src, dst);
    else if (entry.isFile) Deno.copyFileSync(src, dst);
  }
}
