/**
 * A minimal streaming tar (POSIX ustar) writer for WAL backups: regular files only, names
 * up to 100 bytes, each file read once from disk while its SHA-256 is computed. GNU tar
 * and every other tar reads the result (`tar -x` is how restores unpack it).
 * @module
 */
import { createHash } from "node:crypto";
import { RuntimeError } from "../../lib/errors.ts";

/** A file written into the archive, with what was measured while writing it. */
export interface TarredFile {
  /** Name inside the archive. */
  name: string;
  /** Bytes. */
  size: number;
  /** Hex SHA-256 of its content. */
  sha256: string;
}

const BLOCK = 512;
const encoder = new TextEncoder();

function octal(value: number, width: number): string {
  return value.toString(8).padStart(width - 1, "0") + "\0";
}

/** The 512-byte ustar header of a regular file. */
export function tarHeader(
  name: string,
  options: { size: number; mtimeS: number; mode?: number },
): Uint8Array {
  const { size, mtimeS, mode = 0o640 } = options;
  const nameBytes = encoder.encode(name);
  if (nameBytes.length > 100 || nameBytes.length === 0) {
    throw new RuntimeError("INTERNAL", `Cannot tar ${name}: names must be 1-100 bytes`);
  }
  if (size >= 8 ** 11) {
    throw new RuntimeError("INTERNAL", `Cannot tar ${name}: ${size} bytes exceeds 8 GiB`);
  }
  const h = new Uint8Array(BLOCK);
  const put = (offset: number, text: string) => h.set(encoder.encode(text), offset);
  h.set(nameBytes, 0);
  put(100, octal(mode, 8));
  put(108, octal(0, 8));
  put(116, octal(0, 8));
  put(124, octal(size, 12));
  put(136, octal(Math.max(0, Math.floor(mtimeS)), 12));
  put(148, "        ");
  put(156, "0");
  put(257, "ustar\0");
  put(263, "00");
  let sum = 0;
  for (const b of h) sum += b;
  put(148, sum.toString(8).padStart(6, "0") + "\0 ");
  return h;
}

/**
 * Streams a tar of `files` (absolute paths, stored under their base names). The promise
 * `tarred` resolves with each file's size and SHA-256 once the archive is complete; a file
 * whose size changes while it is read fails the stream.
 */
export function tarFiles(
  files: string[],
): { stream: ReadableStream<Uint8Array>; tarred: Promise<TarredFile[]> } {
  let resolve!: (files: TarredFile[]) => void;
  let reject!: (err: unknown) => void;
  const tarred = new Promise<TarredFile[]>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  tarred.catch(() => {});
  const done: TarredFile[] = [];
  async function* generate(): AsyncGenerator<Uint8Array> {
    try {
      for (const path of files) {
        const name = path.slice(path.lastIndexOf("/") + 1);
        using file = await Deno.open(path, { read: true });
        const info = await file.stat();
        yield tarHeader(name, { size: info.size, mtimeS: (info.mtime?.getTime() ?? 0) / 1000 });
        const hash = createHash("sha256");
        let read = 0;
        const buffer = new Uint8Array(1024 * 1024);
        while (read < info.size) {
          const n = await file.read(buffer.subarray(0, Math.min(buffer.length, info.size - read)));
          if (n === null) break;
          hash.update(buffer.subarray(0, n));
          read += n;
          yield buffer.slice(0, n);
        }
        if (read !== info.size || (await file.read(new Uint8Array(1))) !== null) {
          throw new RuntimeError(
            "WAL_ARCHIVE_FAILED",
            `The archived file ${path} changed size while it was read`,
          );
        }
        const pad = (BLOCK - (info.size % BLOCK)) % BLOCK;
        if (pad) yield new Uint8Array(pad);
        done.push({ name, size: info.size, sha256: hash.digest("hex") });
      }
      yield new Uint8Array(BLOCK * 2);
      resolve(done);
    } catch (err) {
      reject(err);
      throw err;
    }
  }
  return { stream: ReadableStream.from(generate()), tarred };
}
