/**
 * Where backups are kept: a local directory or S3-compatible object storage, behind one
 * contract that states its guarantees.
 *
 * Contract (both backends):
 * - `put` is all-or-nothing: the key becomes visible only once every byte is stored (local:
 *   temp file + fsync + rename; S3: PutObject or a completed multipart upload, aborted on
 *   failure). Memory stays constant: at most one part (8 MiB) is buffered.
 * - `get` streams; a missing key is BACKUP_NOT_FOUND.
 * - `list(prefix)` returns every key under the prefix (read-after-write consistent on both).
 * - `delete` is idempotent: deleting a missing key succeeds.
 * - Keys are relative paths of letters, digits, `.`, `_`, `-` and `/`, never `..`.
 * @module
 */
import type { S3Client } from "@aws-sdk/client-s3";
import { describeError, RuntimeError } from "../../lib/errors.ts";

/** One stored object. */
export interface StoredObject {
  /** Its key relative to the storage root. */
  key: string;
  /** Size in bytes. */
  size: number;
}

/** A file being written in place (see {@linkcode BackupStorage.stage}). */
export interface StagedFile {
  /** Where to write. */
  path: string;
  /**
   * Starts writing its data to disk (fdatasync) without moving it, so the caller can do other
   * work (hash it) meanwhile; `commit` still syncs before the rename.
   */
  flush(): Promise<void>;
  /** Makes it durable and moves it to its key; returns its size. */
  commit(): Promise<{ size: number }>;
  /** Removes it; never throws. */
  abort(): Promise<void>;
}

/** A place to keep backups (see the module doc for the guarantees). */
export interface BackupStorage {
  /** `local` or `s3`. */
  readonly kind: "local" | "s3";
  /** Where a key lives, as a URL for people: file:///… or s3://bucket/prefix/… */
  locate(key: string): string;
  /** Stores a stream under `key`, all-or-nothing; returns the bytes stored. */
  put(
    key: string,
    body: ReadableStream<Uint8Array>,
    options?: { signal?: AbortSignal },
  ): Promise<{ size: number }>;
  /**
   * Local storage only: a temporary file beside `key`'s place that a program may write
   * directly (so the bytes need not pass through this process); `commit` fsyncs it and
   * renames it into place (all-or-nothing, like `put`), `abort` removes it.
   */
  stage?(key: string): Promise<StagedFile>;
  /**
   * Local storage only: the path of `key`'s file, so a program (openssl) can read it
   * directly while this process authenticates the same file beside it.
   */
  localPath?(key: string): string;
  /** Stores a small text (manifests). */
  putText(key: string, text: string): Promise<void>;
  /** Streams `key`; BACKUP_NOT_FOUND when missing. */
  get(key: string): Promise<ReadableStream<Uint8Array>>;
  /** Reads a small text; BACKUP_NOT_FOUND when missing. */
  getText(key: string): Promise<string>;
  /** Size of `key`, or null when missing. */
  stat(key: string): Promise<StoredObject | null>;
  /** Every object under `prefix` (sorted by key). */
  list(prefix: string): Promise<StoredObject[]>;
  /** Deletes `key`; succeeds when it is already gone. */
  delete(key: string): Promise<void>;
  /** Releases connections. */
  close(): void;
}

const KEY_RE = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*\/?$/;

function checkKey(key: string, allowEmpty = false): string {
  if ((allowEmpty && key === "") || (KEY_RE.test(key) && !key.split("/").includes(".."))) {
    return key;
  }
  throw new RuntimeError("VALIDATION_FAILED", `Invalid storage key: ${JSON.stringify(key)}`);
}

function storageError(action: string, where: string, err: unknown): RuntimeError {
  if (err instanceof RuntimeError) return err;
  return new RuntimeError(
    "STORAGE_FAILED",
    `Cannot ${action} ${where}: ${describeError(err)}`,
    { cause: err },
  );
}

/** A local directory as backup storage. */
export function createLocalStorage(root: string): BackupStorage {
  const base = root.replace(/\/+$/, "") || "/";
  const path = (key: string) => `${base}/${checkKey(key)}`;

  async function syncDir(dir: string): Promise<void> {
    try {
      using handle = await Deno.open(dir, { read: true });
      await handle.sync();
    } catch {
      // Not every file system lets a directory be fsynced; the rename is still atomic.
    }
  }

  async function put(
    key: string,
    body: ReadableStream<Uint8Array>,
    options: { signal?: AbortSignal } = {},
  ): Promise<{ size: number }> {
    const target = path(key);
    const dir = target.replace(/\/[^/]+$/, "");
    const tmp = `${target}.tmp-${crypto.randomUUID().slice(0, 8)}`;
    let size = 0;
    try {
      await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
      const file = await Deno.open(tmp, { write: true, createNew: true, mode: 0o600 });
      try {
        for await (const chunk of body) {
          options.signal?.throwIfAborted();
          let offset = 0;
          while (offset < chunk.length) offset += await file.write(chunk.subarray(offset));
          size += chunk.length;
        }
        await file.sync();
      } finally {
        file.close();
      }
      await Deno.rename(tmp, target);
      await syncDir(dir);
      return { size };
    } catch (err) {
      await Deno.remove(tmp).catch(() => {});
      await dropEmptyDirs(target);
      throw storageError("write", target, err);
    }
  }

  /**
   * Removes the directories above `target` that are empty, up to the root: a failed write
   * (or a delete) leaves no empty backup folder, which a listing would show as an
   * unfinished backup.
   */
  async function dropEmptyDirs(target: string): Promise<void> {
    let dir = target.replace(/\/[^/]+$/, "");
    while (dir.length > base.length && dir.startsWith(`${base}/`)) {
      try {
        await Deno.remove(dir); // fails on a directory that is not empty: then stop
      } catch {
        break;
      }
      dir = dir.replace(/\/[^/]+$/, "");
    }
  }

  async function get(key: string): Promise<ReadableStream<Uint8Array>> {
    const target = path(key);
    try {
      const file = await Deno.open(target, { read: true });
      return file.readable;
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) {
        throw new RuntimeError("BACKUP_NOT_FOUND", `The backup file ${target} does not exist`);
      }
      throw storageError("read", target, err);
    }
  }

  async function list(prefix: string): Promise<StoredObject[]> {
    checkKey(prefix, true);
    const found: StoredObject[] = [];
    const start = prefix.includes("/") ? prefix.slice(0, prefix.lastIndexOf("/")) : "";
    async function walk(rel: string): Promise<void> {
      let entries: Deno.DirEntry[];
      try {
        entries = await Array.fromAsync(Deno.readDir(rel ? `${base}/${rel}` : base));
      } catch (err) {
        if (err instanceof Deno.errors.NotFound) return;
        throw storageError("list", `${base}/${rel}`, err);
      }
      for (const entry of entries) {
        const key = rel ? `${rel}/${entry.name}` : entry.name;
        if (entry.isDirectory) {
          if (key.startsWith(prefix) || prefix.startsWith(`${key}/`)) await walk(key);
        } else if (entry.isFile && key.startsWith(prefix) && !/\.tmp-[0-9a-f]{8}$/.test(key)) {
          const info = await Deno.stat(`${base}/${key}`);
          found.push({ key, size: info.size });
        }
      }
    }
    await walk(start);
    return found.sort((a, b) => a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
  }

  async function stage(key: string): Promise<StagedFile> {
    const target = path(key);
    const dir = target.replace(/\/[^/]+$/, "");
    const tmp = `${target}.tmp-${crypto.randomUUID().slice(0, 8)}`;
    try {
      await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
      (await Deno.open(tmp, { write: true, createNew: true, mode: 0o600 })).close();
    } catch (err) {
      await Deno.remove(tmp).catch(() => {});
      await dropEmptyDirs(target);
      throw storageError("write", target, err);
    }
    return {
      path: tmp,
      async flush() {
        try {
          using file = await Deno.open(tmp, { read: true, write: true });
          await file.syncData();
        } catch (err) {
          throw storageError("write", target, err);
        }
      },
      async commit() {
        try {
          using file = await Deno.open(tmp, { read: true, write: true });
          await file.sync();
          const { size } = await file.stat();
          await Deno.rename(tmp, target);
          await syncDir(dir);
          return { size };
        } catch (err) {
          await Deno.remove(tmp).catch(() => {});
          await dropEmptyDirs(target);
          throw storageError("write", target, err);
        }
      },
      async abort() {
        await Deno.remove(tmp).catch(() => {});
        await dropEmptyDirs(target);
      },
    };
  }

  return {
    kind: "local",
    locate: (key) => `file://${path(key)}`,
    put,
    stage,
    localPath: path,
    async putText(key, text) {
      await put(key, ReadableStream.from([new TextEncoder().encode(text)]));
    },
    get,
    async getText(key) {
      const target = path(key);
      try {
        return await Deno.readTextFile(target);
      } catch (err) {
        if (err instanceof Deno.errors.NotFound) {
          throw new RuntimeError("BACKUP_NOT_FOUND", `The backup file ${target} does not exist`);
        }
        throw storageError("read", target, err);
      }
    },
    async stat(key) {
      try {
        const info = await Deno.stat(path(key));
        return info.isFile ? { key, size: info.size } : null;
      } catch (err) {
        if (err instanceof Deno.errors.NotFound) return null;
        throw storageError("stat", path(key), err);
      }
    },
    list,
    async delete(key) {
      const target = path(key);
      try {
        await Deno.remove(target);
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) throw storageError("delete", target, err);
      }
      // Directories left empty go too, also when the file was never written.
      await dropEmptyDirs(target);
    },
    close() {},
  };
}

/** Settings of {@linkcode createS3Storage}. */
export interface S3StorageOptions {
  /** Bucket name. */
  bucket: string;
  /** Key prefix inside the bucket (e.g. `rootstream/`). */
  prefix?: string;
  /** Endpoint of an S3-compatible server (default: AWS). */
  endpoint?: string;
  /** Region (default us-east-1). */
  region?: string;
  /** Access key; without it the AWS default credential chain is used. */
  accessKeyId?: string;
  /** Secret key. */
  secretAccessKey?: string;
  /** Path-style addressing (needed by most S3-compatible servers). */
  forcePathStyle?: boolean;
  /** Multipart part size in bytes (default 8 MiB, at least 5 MiB). */
  partSize?: number;
}

/** Reads a stream into fixed-size parts, one buffer at a time. */
async function* parts(
  body: ReadableStream<Uint8Array>,
  partSize: number,
): AsyncGenerator<Uint8Array> {
  let buffer = new Uint8Array(partSize);
  let filled = 0;
  for await (let chunk of body) {
    while (chunk.length) {
      const take = Math.min(chunk.length, partSize - filled);
      buffer.set(chunk.subarray(0, take), filled);
      filled += take;
      chunk = chunk.subarray(take);
      if (filled === partSize) {
        yield buffer;
        buffer = new Uint8Array(partSize);
        filled = 0;
      }
    }
  }
  if (filled) yield buffer.subarray(0, filled);
}

function isNotFound(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e?.name === "NoSuchKey" || e?.name === "NotFound" || e?.$metadata?.httpStatusCode === 404;
}

type S3Sdk = typeof import("@aws-sdk/client-s3");
let sdkPromise: Promise<S3Sdk> | null = null;

/**
 * The AWS SDK, loaded at the first S3 call: it is the largest module graph of the runtime
 * (about 16 MB resident when loaded), and most instances never talk to S3.
 */
function s3Sdk(): Promise<S3Sdk> {
  sdkPromise ??= import("@aws-sdk/client-s3");
  return sdkPromise;
}

/** S3-compatible object storage (AWS S3, or any server speaking its REST protocol). */
export function createS3Storage(options: S3StorageOptions): BackupStorage {
  const bucket = options.bucket;
  const prefix = options.prefix ? options.prefix.replace(/^\/+/, "").replace(/\/?$/, "/") : "";
  if (prefix) checkKey(prefix);
  const partSize = Math.max(options.partSize ?? 8 * 1024 * 1024, 5 * 1024 * 1024);
  let created: S3Client | null = null;
  /** The client and the SDK's commands, made at the first call. */
  async function ready(): Promise<{ client: S3Client; m: S3Sdk }> {
    const m = await s3Sdk();
    created ??= newClient(m);
    return { client: created, m };
  }
  const newClient = (m: S3Sdk) =>
    new m.S3Client({
      region: options.region ?? "us-east-1",
      ...(options.endpoint ? { endpoint: options.endpoint } : {}),
      forcePathStyle: options.forcePathStyle ?? Boolean(options.endpoint),
      ...(options.accessKeyId && options.secretAccessKey
        ? {
          credentials: {
            accessKeyId: options.accessKeyId,
            secretAccessKey: options.secretAccessKey,
          },
        }
        : {}),
      // Checksums only where S3 requires them: S3-compatible servers often reject the
      // newer flexible-checksum headers. Integrity is ours anyway (SHA-256 + HMAC).
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
    });
  const objectKey = (key: string) => prefix + checkKey(key);
  const where = (key: string) => `s3://${bucket}/${objectKey(key)}`;

  async function put(
    key: string,
    body: ReadableStream<Uint8Array>,
    opts: { signal?: AbortSignal } = {},
  ): Promise<{ size: number }> {
    const Key = objectKey(key);
    const { client, m } = await ready();
    let uploadId: string | undefined;
    let size = 0;
    try {
      const done: { ETag: string; PartNumber: number }[] = [];
      for await (const part of parts(body, partSize)) {
        opts.signal?.throwIfAborted();
        size += part.length;
        if (uploadId === undefined && part.length < partSize) {
          // The whole object fits in one part: a single PutObject.
          await client.send(new m.PutObjectCommand({ Bucket: bucket, Key, Body: part }), {
            abortSignal: opts.signal,
          });
          return { size };
        }
        if (uploadId === undefined) {
          const created = await client.send(
            new m.CreateMultipartUploadCommand({ Bucket: bucket, Key }),
            { abortSignal: opts.signal },
          );
          uploadId = created.UploadId!;
        }
        const PartNumber = done.length + 1;
        const uploaded = await client.send(
          new m.UploadPartCommand({
            Bucket: bucket,
            Key,
            UploadId: uploadId,
            PartNumber,
            Body: part,
          }),
          { abortSignal: opts.signal },
        );
        done.push({ ETag: uploaded.ETag!, PartNumber });
      }
      if (uploadId === undefined) {
        await client.send(
          new m.PutObjectCommand({ Bucket: bucket, Key, Body: new Uint8Array() }),
          { abortSignal: opts.signal },
        );
        return { size };
      }
      await client.send(
        new m.CompleteMultipartUploadCommand({
          Bucket: bucket,
          Key,
          UploadId: uploadId,
          MultipartUpload: { Parts: done },
        }),
        { abortSignal: opts.signal },
      );
      return { size };
    } catch (err) {
      if (uploadId !== undefined) {
        await client.send(
          new m.AbortMultipartUploadCommand({ Bucket: bucket, Key, UploadId: uploadId }),
        ).catch(() => {});
      }
      throw storageError("upload", where(key), err);
    }
  }

  async function get(key: string): Promise<ReadableStream<Uint8Array>> {
    const { client, m } = await ready();
    try {
      const out = await client.send(
        new m.GetObjectCommand({ Bucket: bucket, Key: objectKey(key) }),
      );
      return out.Body!.transformToWebStream() as ReadableStream<Uint8Array>;
    } catch (err) {
      if (isNotFound(err)) {
        throw new RuntimeError(
          "BACKUP_NOT_FOUND",
          `The backup object ${where(key)} does not exist`,
        );
      }
      throw storageError("download", where(key), err);
    }
  }

  return {
    kind: "s3",
    locate: where,
    put,
    async putText(key, text) {
      await put(key, ReadableStream.from([new TextEncoder().encode(text)]));
    },
    get,
    async getText(key) {
      const stream = await get(key);
      return await new Response(stream).text();
    },
    async stat(key) {
      const { client, m } = await ready();
      try {
        const head = await client.send(
          new m.HeadObjectCommand({ Bucket: bucket, Key: objectKey(key) }),
        );
        return { key, size: head.ContentLength ?? 0 };
      } catch (err) {
        if (isNotFound(err)) return null;
        throw storageError("stat", where(key), err);
      }
    },
    async list(listPrefix) {
      checkKey(listPrefix, true);
      const { client, m } = await ready();
      const found: StoredObject[] = [];
      let token: string | undefined;
      try {
        do {
          const page = await client.send(
            new m.ListObjectsV2Command({
              Bucket: bucket,
              Prefix: prefix + listPrefix,
              ContinuationToken: token,
            }),
          );
          for (const o of page.Contents ?? []) {
            if (o.Key) found.push({ key: o.Key.slice(prefix.length), size: o.Size ?? 0 });
          }
          token = page.IsTruncated ? page.NextContinuationToken : undefined;
        } while (token);
      } catch (err) {
        throw storageError("list", `s3://${bucket}/${prefix}${listPrefix}`, err);
      }
      return found.sort((a, b) => a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
    },
    async delete(key) {
      const { client, m } = await ready();
      try {
        await client.send(new m.DeleteObjectCommand({ Bucket: bucket, Key: objectKey(key) }));
      } catch (err) {
        if (isNotFound(err)) return;
        throw storageError("delete", where(key), err);
      }
    },
    close() {
      created?.destroy();
    },
  };
}
