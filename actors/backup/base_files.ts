/**
 * File-level incremental base backups: a filter over the tar stream `pg_basebackup -Ft`
 * writes, keeping only the data files that changed since the parent base backup.
 *
 * Every regular file in the stream is hashed (SHA-256) as it passes. A file is left out —
 * referenced in the backup that already stores it — when its size and mtime equal the
 * parent's record and that mtime is older than the parent's start (a file written in the
 * second a backup started may change again within that second without its mtime moving,
 * the rule the well-known PostgreSQL backup tools follow). The SHA-256 of a left-out file
 * must equal the parent's too: if not (its content changed without its size or mtime),
 * the filter fails with {@linkcode IncrementalMismatch} and the caller copies everything
 * instead, so an assembled data directory is always byte for byte what pg_basebackup sent.
 *
 * Directories, symlinks, backup_label, backup_manifest, tablespace_map and pg_wal/ are
 * always kept. The output is a valid tar (the kept members verbatim, then the trailer).
 * pg_basebackup writes POSIX ustar members (names up to 100 bytes, or prefix + name);
 * anything else (GNU long names, pax headers) is refused rather than misread.
 * @module
 */
import { createHash } from "node:crypto";
import { RuntimeError } from "../../lib/errors.ts";

/** One regular file of a base backup and where its content is stored. */
export interface BaseFileEntry {
  /** Path inside the data directory (as in the tar). */
  path: string;
  /** Bytes. */
  size: number;
  /** Modification time, seconds since the epoch (the tar header's). */
  mtime: number;
  /** Hex SHA-256 of the content. */
  sha256: string;
  /** The backup whose tar holds this content (this one, or an ancestor). */
  in: string;
}

/** The parent a new incremental base backup is compared with. */
export interface IncrementalParent {
  /** Its name. */
  name: string;
  /** Its start, seconds since the epoch. */
  startedAtS: number;
  /** Its files. */
  files: BaseFileEntry[];
}

/** A file changed without its size or mtime changing: the run must copy everything. */
export class IncrementalMismatch extends Error {
  constructor(readonly path: string) {
    super(`${path} changed without its size or modification time changing`);
  }
}

/** What the filter saw. */
export interface FilterResult {
  /** Every regular file of the backup (copied and referenced). */
  files: BaseFileEntry[];
  /** Files copied into this backup. */
  copied: number;
  /** Their bytes. */
  copiedBytes: number;
  /** Files referenced in an ancestor. */
  referenced: number;
  /** Their bytes. */
  referencedBytes: number;
  /** Bytes of the whole stream read. */
  bytesRead: number;
}

const BLOCK = 512;
const decoder = new TextDecoder();

/** Always copied: they describe this backup, not the cluster's data. */
function alwaysCopied(path: string): boolean {
  return path === "backup_label" || path === "backup_manifest" ||
    path === "tablespace_map" || path.startsWith("pg_wal/");
}

function field(h: Uint8Array, offset: number, length: number): string {
  const bytes = h.subarray(offset, offset + length);
  const end = bytes.indexOf(0);
  return decoder.decode(end === -1 ? bytes : bytes.subarray(0, end));
}

function number(h: Uint8Array, offset: number, length: number, what: string): number {
  const bytes = h.subarray(offset, offset + length);
  if (bytes[0] & 0x80) {
    // base-256 (GNU / PostgreSQL for sizes of 8 GiB and more)
    let value = bytes[0] & 0x7f;
    for (let i = 1; i < bytes.length; i++) value = value * 256 + bytes[i];
    return value;
  }
  const text = field(h, offset, length).trim();
  if (!/^[0-7]*$/.test(text)) {
    throw new RuntimeError("BACKUP_FAILED", `pg_basebackup wrote a tar header with a bad ${what}`);
  }
  return text ? parseInt(text, 8) : 0;
}

function checksumOk(h: Uint8Array): boolean {
  const stored = number(h, 148, 8, "checksum");
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : h[i];
  return sum === stored;
}

/**
 * Filters a `pg_basebackup -Ft` stream for the backup `name` against `parent` (null: keep
 * everything, recording the file list a later incremental compares with).
 */
export function filterBaseTar(
  input: ReadableStream<Uint8Array>,
  options: { name: string; parent: IncrementalParent | null },
): {
  stream: ReadableStream<Uint8Array>;
  result: Promise<FilterResult>;
  /** Bytes of the input read so far (for progress). */
  bytesRead: () => number;
} {
  const parentFiles = new Map((options.parent?.files ?? []).map((f) => [f.path, f]));
  const parentStart = options.parent?.startedAtS ?? 0;
  let resolve!: (r: FilterResult) => void;
  let reject!: (err: unknown) => void;
  const result = new Promise<FilterResult>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  result.catch(() => {});
  const out: FilterResult = {
    files: [],
    copied: 0,
    copiedBytes: 0,
    referenced: 0,
    referencedBytes: 0,
    bytesRead: 0,
  };
  const header = new Uint8Array(BLOCK);
  let headerBytes = 0;
  /** The member being read: its data left, padding left, whether it is copied. */
  type Member = {
    path: string;
    size: number;
    mtime: number;
    dataLeft: number;
    padLeft: number;
    copy: boolean;
    hash: ReturnType<typeof createHash> | null;
    was: BaseFileEntry | undefined;
  };
  let member: Member | null = null;
  let ended = false;

  function startMember(controller: TransformStreamDefaultController<Uint8Array>): Member | null {
    const h = header;
    if (h.every((b) => b === 0)) {
      ended = true;
      controller.enqueue(new Uint8Array(BLOCK * 2));
      return null;
    }
    if (!checksumOk(h)) {
      throw new RuntimeError("BACKUP_FAILED", "pg_basebackup wrote a tar header that is damaged");
    }
    const type = String.fromCharCode(h[156] || 48);
    const ustar = field(h, 257, 6) === "ustar";
    const prefix = ustar ? field(h, 345, 155) : "";
    const path = (prefix ? `${prefix}/` : "") + field(h, 0, 100);
    const size = number(h, 124, 12, "size");
    const mtime = number(h, 136, 12, "mtime");
    if (!"0257".includes(type)) {
      throw new RuntimeError(
        "BACKUP_FAILED",
        `pg_basebackup wrote a tar member of type ${JSON.stringify(type)} (${path}), which ` +
          "an incremental base backup does not handle; take a plain base backup",
      );
    }
    const regular = type === "0" || type === "7";
    const was = regular ? parentFiles.get(path) : undefined;
    const unchanged = regular && options.parent !== null && was !== undefined &&
      !alwaysCopied(path) && was.size === size && was.mtime === mtime &&
      mtime < parentStart - 1;
    const dataLeft = regular ? size : 0;
    member = {
      path,
      size,
      mtime,
      dataLeft,
      padLeft: (BLOCK - (dataLeft % BLOCK)) % BLOCK,
      copy: !unchanged,
      hash: regular ? createHash("sha256") : null,
      was,
    };
    if (member.copy) controller.enqueue(h.slice());
    return member;
  }

  function endMember(): void {
    const m = member!;
    member = null;
    if (!m.hash) return;
    const sha256 = m.hash.digest("hex");
    if (!m.copy) {
      if (sha256 !== m.was!.sha256) throw new IncrementalMismatch(m.path);
      out.referenced++;
      out.referencedBytes += m.size;
    } else {
      out.copied++;
      out.copiedBytes += m.size;
    }
    out.files.push({
      path: m.path,
      size: m.size,
      mtime: m.mtime,
      sha256,
      in: m.copy ? options.name : m.was!.in,
    });
  }

  const filter = new TransformStream<Uint8Array, Uint8Array>({
    transform(chunk, controller) {
      out.bytesRead += chunk.length;
      let at = 0;
      try {
        while (at < chunk.length && !ended) {
          if (!member) {
            const take = Math.min(BLOCK - headerBytes, chunk.length - at);
            header.set(chunk.subarray(at, at + take), headerBytes);
            headerBytes += take;
            at += take;
            if (headerBytes === BLOCK) {
              headerBytes = 0;
              const started = startMember(controller);
              if (started && started.dataLeft === 0 && started.padLeft === 0) endMember();
            }
            continue;
          }
          const m: Member = member;
          if (m.dataLeft > 0) {
            const take = Math.min(m.dataLeft, chunk.length - at);
            const piece = chunk.subarray(at, at + take);
            m.hash!.update(piece);
            if (m.copy) controller.enqueue(piece);
            m.dataLeft -= take;
            at += take;
          } else {
            const take = Math.min(m.padLeft, chunk.length - at);
            if (m.copy) controller.enqueue(chunk.subarray(at, at + take));
            m.padLeft -= take;
            at += take;
          }
          if (m.dataLeft === 0 && m.padLeft === 0) endMember();
        }
      } catch (err) {
        reject(err);
        throw err;
      }
    },
    flush() {
      if (!ended || member) {
        const err = new RuntimeError(
          "BACKUP_FAILED",
          "The pg_basebackup tar stream ended in the middle of a member (truncated)",
        );
        reject(err);
        throw err;
      }
      resolve(out);
    },
    cancel(reason) {
      reject(reason);
    },
  });
  return { stream: input.pipeThrough(filter), result, bytesRead: () => out.bytesRead };
}

/**
 * The files of `dir` (relative paths) a base backup's list does not name: what assembling
 * a chain must delete (files the cluster removed since an ancestor was taken).
 */
export async function filesNotListed(dir: string, listed: Set<string>): Promise<string[]> {
  const extra: string[] = [];
  async function walk(rel: string): Promise<void> {
    for await (const entry of Deno.readDir(rel ? `${dir}/${rel}` : dir)) {
      const path = rel ? `${rel}/${entry.name}` : entry.name;
      if (entry.isDirectory) await walk(path);
      else if (!entry.isSymlink && !listed.has(path)) extra.push(path);
    }
  }
  await walk("");
  return extra;
}
