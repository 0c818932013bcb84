/**
 * The template of a new embedded database: PGlite's initdb output, made once per machine and
 * PGlite version and loaded into each new data directory instead of running initdb again.
 *
 * initdb in WebAssembly is most of a first start (seconds of CPU, and a second PGlite instance
 * whose memory stays mapped until garbage collection). Its output does not depend on the data
 * directory, so the first new directory makes `pglite-<version>-template.tar.gz` in the cache
 * directory and every later one starts from it (docs/scaling.md, "Embedded mode: memory and
 * start time"). Every database made from one template shares initdb's system identifier, which
 * only streaming replication compares, and embedded mode has none.
 *
 * The file is written atomically (a temporary name, then a rename), read only when this user
 * owns it and nobody else may write it, and a template that does not unpack is replaced.
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
export function templatePath(cacheDir: string): string {
  return `${cacheDir.replace(/\/$/, "")}/pglite-${PGLITE_VERSION}-template.tar.gz`;
}

/** Options of {@linkcode embeddedTemplate}. */
export interface TemplateOptions {
  /** The cache directory. */
  cacheDir: string;
  /** PGlite options of the instance that makes a missing template (its start parameters). */
  pgliteOptions?: PGliteOptions;
  /** Where making or replacing the template is logged. */
  log?: Logger;
}

/**
 * The template as an uncompressed tar for PGlite's `loadDataDir`, made (and cached) when
 * missing; null when it can neither be read nor made (PGlite then runs initdb itself).
 */
export async function embeddedTemplate(
  pglite: typeof PGlite,
  options: TemplateOptions,
): Promise<Blob | null> {
  const log = options.log ?? silentLogger;
  const path = templatePath(options.cacheDir);
  const cached = await readTemplate(path, log);
  if (cached) return cached;
  const started = performance.now();
  let tar: Blob;
  try {
    const db = await pglite.create({ ...options.pgliteOptions, dataDir: undefined });
    try {
      tar = await db.dumpDataDir("none");
    } finally {
      await db.close();
    }
  } catch (err) {
    log.warn(`could not make the embedded database template: ${describeError(err)}`);
    return null;
  }
  const tmp = `${path}.${Deno.pid}.tmp`;
  try {
    await Deno.mkdir(options.cacheDir, { recursive: true, mode: 0o700 });
    const gz = tar.stream().pipeThrough(new CompressionStream("gzip"));
    await Deno.writeFile(tmp, gz, { mode: 0o600 });
    await Deno.rename(tmp, path);
    log.info("made the embedded database template", {
      path,
      ms: Math.round(performance.now() - started),
    });
  } catch (err) {
    log.warn(`could not cache the embedded database template in ${path}: ${describeError(err)}`);
    await Deno.remove(tmp).catch(() => {});
  }
  return tar;
}

/** The cached template, or null when there is none or it is not to be trusted or read. */
async function readTemplate(path: string, log: Logger): Promise<Blob | null> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) {
      log.warn(`cannot read the embedded database template ${path}: ${describeError(err)}`);
    }
    return null;
  }
  let streaming = false;
  try {
    const info = await file.stat();
    const uid = Deno.uid();
    if (uid !== null && (info.uid !== uid || ((info.mode ?? 0) & 0o022) !== 0)) {
      log.warn(
        `ignoring the embedded database template ${path}: it must belong to this user and be ` +
          `writable by nobody else`,
      );
      return null;
    }
    streaming = true; // from here the stream closes the file when it ends or fails
    return await new Response(file.readable.pipeThrough(new DecompressionStream("gzip"))).blob();
  } catch (err) {
    log.warn(`replacing the unreadable embedded database template ${path}: ${describeError(err)}`);
    await Deno.remove(path).catch(() => {});
    return null;
  } finally {
    if (!streaming) file.close();
  }
}
