/**
 * Backup encryption: OpenSSL-compatible AES-256-CBC with a separate HMAC-SHA256, streamed in
 * constant memory through node:crypto, and the signature of backup manifests.
 *
 * File format: exactly what `openssl enc -aes-256-cbc -pbkdf2 -iter 100000 -md sha256`
 * writes: `Salted__`, an 8-byte random salt, then the CBC ciphertext (PKCS#7 padding).
 * PBKDF2-HMAC-SHA256(passphrase, salt, 100000) yields 80 bytes: the AES key (0-31) and IV
 * (32-47) that openssl derives, and an HMAC key (48-79). The HMAC-SHA256 of the whole file
 * under that key is kept in the manifest (encrypt-then-MAC), so tampering, truncation and a
 * wrong key are all detected before plaintext is trusted. Standard tools decrypt it:
 *
 * ```sh
 * openssl enc -d -aes-256-cbc -pbkdf2 -iter 100000 -md sha256 -pass env:BACKUP_ENCRYPTION_KEY \
 *   -in dump.pgc.zst.enc | zstd -d > dump.pgc
 * ```
 *
 * (docs/backup.md also shows how to check the HMAC with `openssl kdf` and `openssl dgst`.)
 *
 * Manifests are signed with HMAC-SHA256 under HMAC(master, manifest salt), where the master
 * key is PBKDF2-HMAC-SHA256(passphrase, "rootstream/backup-manifest/v1", 100000) — derived
 * once per process, so reading hundreds of manifests costs one key stretch, while a guess
 * at the passphrase still costs the full 100000 iterations. They also carry a key
 * fingerprint, so a wrong key is reported as BACKUP_KEY_MISMATCH rather than as corruption.
 * @module
 */
import { Buffer } from "node:buffer";
import { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync } from "node:crypto";
import { RuntimeError } from "./errors.ts";

/** The `encryption_method` recorded for encrypted backups. */
export const BACKUP_CIPHER = "aes-256-cbc+hmac-sha256";

/** PBKDF2 iterations of every backup file and manifest. */
export const PBKDF2_ITERATIONS = 100_000;

const MAGIC = new TextEncoder().encode("Salted__");
const HEADER_BYTES = 16;

/** What an encrypting stream wrote. */
export interface EncryptedFile {
  /** Bytes written (header included). */
  size: number;
  /** Hex SHA-256 of the bytes written. */
  sha256: string;
  /** Hex HMAC-SHA256 of the bytes written, under the file's derived MAC key. */
  hmac: string;
  /** Plaintext bytes read. */
  plainSize: number;
}

/** A transform plus the promise of its summary (resolved at the end of the stream). */
export interface CryptoTransform<T> {
  /** Pipe the data through this. */
  stream: TransformStream<Uint8Array, Uint8Array>;
  /**
   * Resolves when the stream has been flushed; rejects when it failed or was cancelled,
   * once nothing the stream started (such as deriving its key) still runs.
   */
  result: Promise<T>;
}

/** The keys of one encrypted file. */
interface FileKeys {
  key: Uint8Array;
  iv: Uint8Array;
  macKey: Uint8Array;
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("hex");
}

function checkPassphrase(passphrase: string): void {
  if (typeof passphrase !== "string" || passphrase.length < 16) {
    throw new RuntimeError(
      "CONFIG_INVALID",
      "The backup encryption passphrase must be at least 16 characters",
    );
  }
}

/** PBKDF2-HMAC-SHA256 in WebCrypto (async, off the event loop's critical path). */
async function pbkdf2(
  passphrase: string,
  salt: Uint8Array,
  iterations: number,
  bytes: number,
): Promise<Uint8Array> {
  const material = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(passphrase),
    "PBKDF2",
    false,
    ["deriveBits"],
  );
  const bits = await crypto.subtle.deriveBits(
    { name: "PBKDF2", hash: "SHA-256", salt: salt as BufferSource, iterations },
    material,
    bytes * 8,
  );
  return new Uint8Array(bits);
}

async function fileKeys(
  passphrase: string,
  salt: Uint8Array,
  iterations: number,
): Promise<FileKeys> {
  const out = await pbkdf2(passphrase, salt, iterations, 80);
  return { key: out.subarray(0, 32), iv: out.subarray(32, 48), macKey: out.subarray(48, 80) };
}

/** Compares two hex strings in constant time (for equal lengths). */
export function constantTimeEqualHex(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

/**
 * The default backup passphrase when BACKUP_ENCRYPTION_KEY is unset: base64 of
 * HKDF-SHA256(RS_SECRET_KEY, info "rootstream/backup/v1"), so it never equals a key another
 * part of the runtime uses. `deno task cli backup key` prints it for standard tools.
 */
export function passphraseFromSecretKey(secretKey: Uint8Array): string {
  if (!(secretKey instanceof Uint8Array) || secretKey.length !== 32) {
    throw new RuntimeError("CONFIG_INVALID", "The secret key must be 32 bytes");
  }
  const derived = hkdfSync("sha256", secretKey, new Uint8Array(0), "rootstream/backup/v1", 32);
  return Buffer.from(derived).toString("base64");
}

/** Encrypts a stream into the openssl `Salted__` format and measures what it wrote. */
export function createEncryptStream(
  passphrase: string,
  options: { iterations?: number; salt?: Uint8Array } = {},
): CryptoTransform<EncryptedFile> {
  checkPassphrase(passphrase);
  const iterations = options.iterations ?? PBKDF2_ITERATIONS;
  const salt = options.salt ?? crypto.getRandomValues(new Uint8Array(8));
  let resolve!: (value: EncryptedFile) => void;
  let reject!: (err: unknown) => void;
  const result = new Promise<EncryptedFile>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  result.catch(() => {});
  let cipher: ReturnType<typeof createCipheriv>;
  let mac: ReturnType<typeof createHmac>;
  const sha = createHash("sha256");
  let size = 0;
  let plainSize = 0;
  let finished = false;
  function emit(controller: TransformStreamDefaultController<Uint8Array>, bytes: Uint8Array) {
    if (!bytes.length) return;
    mac.update(bytes);
    sha.update(bytes);
    size += bytes.length;
    controller.enqueue(bytes);
  }
  // The key derivation start() runs; the result waits for it, so that a stream cancelled
  // meanwhile has nothing of its own still running once its result has settled.
  let started: Promise<void> = Promise.resolve();
  const stream = new TransformStream<Uint8Array, Uint8Array>({
    start(controller) {
      started = deriveAndBegin(controller);
      return started;
    },
    transform(chunk, controller) {
      plainSize += chunk.length;
      emit(controller, new Uint8Array(cipher.update(chunk)));
    },
    flush(controller) {
      const last = new Uint8Array(cipher.final());
      finished = true;
      emit(controller, last);
      resolve({ size, sha256: sha.digest("hex"), hmac: mac.digest("hex"), plainSize });
    },
    cancel(reason) {
      // Free the native cipher (it holds a resource until final() is called).
      if (cipher && !finished) {
        try {
          cipher.final();
        } catch {
          // released either way
        }
      }
      finished = true;
      const settle = () => reject(reason);
      started.then(settle, settle);
    },
  });
  async function deriveAndBegin(
    controller: TransformStreamDefaultController<Uint8Array>,
  ): Promise<void> {
    try {
      const keys = await fileKeys(passphrase, salt, iterations);
      cipher = createCipheriv("aes-256-cbc", keys.key, keys.iv);
      if (finished) {
        // Cancelled while the keys were derived (the storage refused at once): cancel()
        // found no cipher to free, so free it here.
        try {
          cipher.final();
        } catch {
          // released either way
        }
        return;
      }
      mac = createHmac("sha256", keys.macKey);
      const header = new Uint8Array(HEADER_BYTES);
      header.set(MAGIC, 0);
      header.set(salt, 8);
      emit(controller, header);
    } catch (err) {
      reject(err);
      throw err;
    }
  }
  return { stream, result };
}

/** Bytes hashed per call: node:crypto's per-call cost dominates below about 1 MiB. */
const HASH_BATCH = 1 << 20;

/** What {@linkcode createAuthStream} saw. */
export interface AuthenticatedFile {
  /** Bytes (header included). */
  size: number;
  /** Hex SHA-256 of the bytes (null when it was neither asked for nor to be compared). */
  sha256: string | null;
  /** Hex HMAC-SHA256 of the bytes under the file's derived MAC key. */
  hmac: string;
}

/**
 * The environment variable the openssl processes read the passphrase from (`-pass env:…`),
 * so it never appears on a command line.
 */
export const OPENSSL_PASS_ENV = "RS_BACKUP_PASSPHRASE";

/**
 * Arguments of `openssl enc` for the backup format: AES-256-CBC, key and IV from
 * PBKDF2-HMAC-SHA256 (`iterations`), passphrase from {@linkcode OPENSSL_PASS_ENV}. With a
 * salt (encrypting) openssl writes no `Salted__` header: {@linkcode encryptionHeader} is
 * prepended by the caller; decrypting, openssl reads the salt from the header.
 */
export function opensslEncArgs(
  mode: { encrypt: Uint8Array | null } | { decrypt: true },
  iterations: number = PBKDF2_ITERATIONS,
): string[] {
  const common = ["-aes-256-cbc", "-pbkdf2", "-iter", String(iterations), "-md", "sha256"];
  const pass = ["-pass", `env:${OPENSSL_PASS_ENV}`];
  if ("decrypt" in mode) return ["enc", "-d", ...common, ...pass];
  // Without -S openssl draws the salt itself and writes the header.
  return ["enc", "-e", ...common, ...(mode.encrypt ? ["-S", hex(mode.encrypt)] : []), ...pass];
}

/**
 * Authenticates an encrypted file on disk (one pass, 4 MiB reads): its size, SHA-256 and
 * HMAC under the key derived from the salt in its header. With `growing`, the file is still
 * being written: at its current end the reading waits for more until `growing` settles (the
 * writer finished), then reads to the end — so the hashing runs beside the writer.
 */
export async function authenticateFile(
  path: string,
  passphrase: string,
  options: {
    iterations?: number;
    name?: string;
    /** Also the SHA-256 (default true); the HMAC alone already proves integrity. */
    sha256?: boolean;
    /** Called after each read with the bytes read so far. */
    onProgress?: (bytes: number) => void;
    /** Aborting stops the reading (the promise rejects with the reason). */
    signal?: AbortSignal;
    /** Settles when the writer of a file still being written is done (see above). */
    growing?: Promise<unknown>;
  } = {},
): Promise<AuthenticatedFile> {
  checkPassphrase(passphrase);
  let written = !options.growing;
  options.growing?.then(() => written = true, () => written = true);
  using file = await Deno.open(path, { read: true });
  const buf = new Uint8Array(4 << 20);
  const sha = options.sha256 === false ? null : createHash("sha256");
  let mac: ReturnType<typeof createHmac> | null = null;
  let size = 0;
  while (true) {
    let n = 0;
    // Fill the buffer (a read may return less), so the header arrives in one piece.
    while (n < buf.length) {
      // Read before asking whether the writer is done: an end seen after it was done is final.
      const final = written;
      const got = await file.read(buf.subarray(n));
      if (got === null) {
        if (final) break;
        await new Promise((r) => setTimeout(r, GROWING_POLL_MS));
        options.signal?.throwIfAborted();
        continue;
      }
      n += got;
    }
    if (n === 0) break;
    const chunk = buf.subarray(0, n);
    if (!mac) {
      if (n < HEADER_BYTES || !MAGIC.every((b, i) => chunk[i] === b)) {
        throw new RuntimeError(
          "BACKUP_FAILED",
          `${options.name ?? path}: openssl did not write the \`Salted__\` header`,
        );
      }
      const keys = await fileKeys(
        passphrase,
        chunk.slice(8, 16),
        options.iterations ?? PBKDF2_ITERATIONS,
      );
      mac = createHmac("sha256", keys.macKey);
    }
    mac.update(chunk);
    sha?.update(chunk);
    size += n;
    options.onProgress?.(size);
    options.signal?.throwIfAborted();
    if (n < buf.length) break;
  }
  if (!mac) {
    throw new RuntimeError("BACKUP_FAILED", `${options.name ?? path}: openssl wrote nothing`);
  }
  return { size, sha256: sha ? sha.digest("hex") : null, hmac: mac.digest("hex") };
}

/** How long {@linkcode authenticateFile} waits at the end of a file still being written. */
const GROWING_POLL_MS = 10;

/** The 16-byte `Salted__` header of a file encrypted with `salt` (8 bytes). */
export function encryptionHeader(salt: Uint8Array): Uint8Array {
  if (salt.length !== 8) throw new RuntimeError("INTERNAL", "A backup salt is 8 bytes");
  const header = new Uint8Array(HEADER_BYTES);
  header.set(MAGIC, 0);
  header.set(salt, 8);
  return header;
}

/**
 * Authenticates an encrypted file as it streams past, in one pass and in 1 MiB batches:
 * the HMAC-SHA256 under the key derived from the passphrase and the salt in the file's
 * header (and, when asked, its SHA-256 and size). Encrypting (no `expect`), it reports
 * what it saw; decrypting (`expect`), it fails with BACKUP_CORRUPT at the end of the stream
 * on any mismatch, before it passes on the last batch, so the consumer (openssl -d) never
 * sees a complete stream that does not authenticate. The bytes pass unchanged (batched).
 */
export function createAuthStream(
  passphrase: string,
  options: {
    iterations?: number;
    sha256?: boolean;
    expect?: { hmac: string; sha256?: string; size?: number };
    name?: string;
    /** Bytes that go first (the header openssl does not write when given the salt). */
    prefix?: Uint8Array;
  } = {},
): CryptoTransform<AuthenticatedFile> {
  checkPassphrase(passphrase);
  const iterations = options.iterations ?? PBKDF2_ITERATIONS;
  const name = options.name ?? "backup file";
  const expect = options.expect;
  let resolve!: (value: AuthenticatedFile) => void;
  let reject!: (err: unknown) => void;
  const result = new Promise<AuthenticatedFile>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  result.catch(() => {});
  const sha = options.sha256 || expect?.sha256 ? createHash("sha256") : null;
  let mac: ReturnType<typeof createHmac> | null = null;
  let pending: Uint8Array[] = [];
  let pendingBytes = 0;
  let size = 0;
  function corrupt(detail: string): RuntimeError {
    return new RuntimeError("BACKUP_CORRUPT", `Cannot decrypt ${name}: ${detail}`);
  }
  function fail(err: RuntimeError): never {
    reject(err);
    throw err;
  }
  function take(): Uint8Array {
    const batch = pending.length === 1 ? pending[0] : Buffer.concat(pending, pendingBytes);
    pending = [];
    pendingBytes = 0;
    return batch;
  }
  async function hashBatch(batch: Uint8Array): Promise<void> {
    if (!mac) {
      if (batch.length < HEADER_BYTES || !MAGIC.every((b, i) => batch[i] === b)) {
        fail(corrupt("it does not start with the openssl `Salted__` header"));
      }
      const keys = await fileKeys(passphrase, batch.slice(8, 16), iterations);
      mac = createHmac("sha256", keys.macKey);
    }
    mac.update(batch);
    sha?.update(batch);
    size += batch.length;
  }
  if (options.prefix?.length) {
    pending.push(options.prefix);
    pendingBytes = options.prefix.length;
  }
  const stream = new TransformStream<Uint8Array, Uint8Array>({
    async transform(chunk, controller) {
      pending.push(chunk);
      pendingBytes += chunk.length;
      if (pendingBytes < HASH_BATCH) return;
      const batch = take();
      await hashBatch(batch);
      controller.enqueue(batch);
    },
    async flush(controller) {
      const batch = pendingBytes ? take() : null;
      if (batch) await hashBatch(batch);
      if (!mac) fail(corrupt(`it is truncated to ${size} bytes (no header)`));
      const digest = sha ? sha.digest("hex") : null;
      const hmac = mac.digest("hex");
      if (expect) {
        if (expect.size !== undefined && size !== expect.size) {
          fail(corrupt(`it is ${size} bytes, the manifest says ${expect.size} (truncated?)`));
        }
        if (expect.sha256 && !constantTimeEqualHex(digest!, expect.sha256)) {
          fail(corrupt("its SHA-256 does not match the manifest"));
        }
        if (!constantTimeEqualHex(hmac, expect.hmac.toLowerCase())) {
          fail(corrupt("its HMAC-SHA256 does not match (altered, truncated, or another key)"));
        }
      }
      if (batch) controller.enqueue(batch);
      resolve({ size, sha256: digest, hmac });
    },
    cancel(reason) {
      reject(reason);
    },
  });
  return { stream, result };
}

/** What a decrypting stream read. */
export interface DecryptedFile {
  /** Ciphertext bytes read. */
  size: number;
  /** Hex SHA-256 of the ciphertext read (null when no SHA-256 was given to compare). */
  sha256: string | null;
  /** Plaintext bytes written. */
  plainSize: number;
}

/**
 * Decrypts the openssl `Salted__` format, checking the file's HMAC (and optionally its
 * size and SHA-256) at the end. A mismatch fails the stream with BACKUP_CORRUPT, so a
 * consumer must treat what it wrote as unconfirmed until the stream finishes cleanly.
 */
export function createDecryptStream(
  passphrase: string,
  options: { hmac: string; sha256?: string; size?: number; iterations?: number; name?: string },
): CryptoTransform<DecryptedFile> {
  checkPassphrase(passphrase);
  const iterations = options.iterations ?? PBKDF2_ITERATIONS;
  const name = options.name ?? "backup file";
  let resolve!: (value: DecryptedFile) => void;
  let reject!: (err: unknown) => void;
  const result = new Promise<DecryptedFile>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  result.catch(() => {});
  let header = new Uint8Array(0);
  let decipher: ReturnType<typeof createDecipheriv> | null = null;
  let mac: ReturnType<typeof createHmac> | null = null;
  // The HMAC already proves integrity; the SHA-256 is only computed when asked to compare.
  const sha = options.sha256 ? createHash("sha256") : null;
  let size = 0;
  let plainSize = 0;
  /** Frees the native decipher (it holds a resource until final() is called). */
  function release(): void {
    try {
      decipher?.final();
    } catch {
      // Bad padding or no data: either way it is released now.
    }
    decipher = null;
  }
  function fail(err: RuntimeError): never {
    release();
    reject(err);
    throw err;
  }
  function corrupt(detail: string): RuntimeError {
    return new RuntimeError("BACKUP_CORRUPT", `Cannot decrypt ${name}: ${detail}`);
  }
  function out(controller: TransformStreamDefaultController<Uint8Array>, bytes: Uint8Array) {
    if (!bytes.length) return;
    plainSize += bytes.length;
    controller.enqueue(bytes);
  }
  const stream = new TransformStream<Uint8Array, Uint8Array>({
    async transform(chunk, controller) {
      size += chunk.length;
      sha?.update(chunk);
      if (!decipher) {
        const joined = new Uint8Array(header.length + chunk.length);
        joined.set(header);
        joined.set(chunk, header.length);
        if (joined.length < HEADER_BYTES) {
          header = joined;
          return;
        }
        if (!MAGIC.every((b, i) => joined[i] === b)) {
          fail(corrupt("it does not start with the openssl `Salted__` header"));
        }
        const keys = await fileKeys(passphrase, joined.slice(8, 16), iterations);
        decipher = createDecipheriv("aes-256-cbc", keys.key, keys.iv);
        mac = createHmac("sha256", keys.macKey);
        mac.update(joined.subarray(0, HEADER_BYTES));
        chunk = joined.subarray(HEADER_BYTES);
        header = new Uint8Array(0);
      }
      mac!.update(chunk);
      out(controller, new Uint8Array(decipher.update(chunk)));
    },
    flush(controller) {
      if (!decipher || !mac) fail(corrupt(`it is truncated to ${size} bytes (no header)`));
      if (options.size !== undefined && size !== options.size) {
        fail(corrupt(`it is ${size} bytes, the manifest says ${options.size} (truncated?)`));
      }
      const digest = sha ? sha.digest("hex") : null;
      if (digest !== null && !constantTimeEqualHex(digest, options.sha256!)) {
        fail(corrupt("its SHA-256 does not match the manifest"));
      }
      // Check the HMAC before the padding: a bad MAC means altered or foreign bytes,
      // whatever the padding happens to look like.
      if (!constantTimeEqualHex(mac.digest("hex"), options.hmac.toLowerCase())) {
        fail(
          corrupt("its HMAC-SHA256 does not match (altered, truncated, or another key)"),
        );
      }
      let last: Uint8Array;
      try {
        last = new Uint8Array(decipher.final());
      } catch {
        decipher = null;
        fail(corrupt("the padding is invalid after decryption"));
      }
      decipher = null;
      out(controller, last);
      resolve({ size, sha256: digest, plainSize });
    },
    cancel(reason) {
      release();
      reject(reason);
    },
  });
  return { stream, result };
}

/** The outcome of checking one stored file without decrypting it. */
export type FileCheckStatus = "ok" | "size_mismatch" | "checksum_mismatch" | "hmac_mismatch";

/**
 * Reads an encrypted file once and checks its size, SHA-256 and HMAC against what the
 * manifest recorded; a typed result, not an exception (the caller decides).
 */
export async function checkEncryptedFile(
  stream: ReadableStream<Uint8Array>,
  passphrase: string,
  expected: { size: number; sha256: string; hmac: string; iterations?: number },
): Promise<{ status: FileCheckStatus; size: number; sha256: string }> {
  checkPassphrase(passphrase);
  const sha = createHash("sha256");
  let header = new Uint8Array(0);
  let mac: ReturnType<typeof createHmac> | null = null;
  let size = 0;
  for await (let chunk of batched(stream)) {
    size += chunk.length;
    sha.update(chunk);
    if (!mac) {
      const joined = new Uint8Array(header.length + chunk.length);
      joined.set(header);
      joined.set(chunk, header.length);
      if (joined.length < HEADER_BYTES) {
        header = joined;
        continue;
      }
      const keys = await fileKeys(
        passphrase,
        joined.slice(8, 16),
        expected.iterations ?? PBKDF2_ITERATIONS,
      );
      mac = createHmac("sha256", keys.macKey);
      chunk = joined;
    }
    mac.update(chunk);
  }
  const digest = sha.digest("hex");
  if (size !== expected.size) return { status: "size_mismatch", size, sha256: digest };
  if (!constantTimeEqualHex(digest, expected.sha256)) {
    return { status: "checksum_mismatch", size, sha256: digest };
  }
  const ok = mac !== null && constantTimeEqualHex(mac.digest("hex"), expected.hmac);
  return { status: ok ? "ok" : "hmac_mismatch", size, sha256: digest };
}

/** Regroups a stream's chunks into batches of about {@linkcode HASH_BATCH} bytes. */
async function* batched(stream: ReadableStream<Uint8Array>): AsyncGenerator<Uint8Array> {
  let pending: Uint8Array[] = [];
  let bytes = 0;
  for await (const chunk of stream) {
    pending.push(chunk);
    bytes += chunk.length;
    if (bytes >= HASH_BATCH) {
      yield Buffer.concat(pending, bytes);
      pending = [];
      bytes = 0;
    }
  }
  if (bytes) yield Buffer.concat(pending, bytes);
}

/** The signature block of a manifest. */
export interface ManifestAuth {
  /** Always `hmac-sha256`. */
  alg: "hmac-sha256";
  /** Hex salt of this manifest's HMAC key. */
  salt: string;
  /** PBKDF2 iterations of the master key. */
  iterations: number;
  /** Hex 16-byte fingerprint of the key (derived from the master key, reveals nothing usable). */
  keyFingerprint: string;
  /** Hex HMAC-SHA256 of the canonical JSON of the manifest without `auth`. */
  hmac: string;
}

/** JSON with object keys sorted at every level (the form manifests are signed in). */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value));
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === "object") {
    return Object.fromEntries(
      Object.keys(value as Record<string, unknown>).sort().map((
        k,
      ) => [k, sortKeys((value as Record<string, unknown>)[k])]),
    );
  }
  return value;
}

const MANIFEST_SALT = new TextEncoder().encode("rootstream/backup-manifest/v1");
const masterKeys = new Map<string, Promise<Uint8Array>>();

/** The manifest master key of a passphrase (stretched once per process and cached). */
function manifestMaster(passphrase: string, iterations: number): Promise<Uint8Array> {
  const id = `${iterations}:${createHash("sha256").update(passphrase).digest("hex")}`;
  let key = masterKeys.get(id);
  if (!key) {
    if (masterKeys.size >= 16) masterKeys.clear();
    key = pbkdf2(passphrase, MANIFEST_SALT, iterations, 32);
    key.catch(() => masterKeys.delete(id));
    masterKeys.set(id, key);
  }
  return key;
}

async function manifestKeys(passphrase: string, salt: Uint8Array, iterations: number) {
  const master = await manifestMaster(passphrase, iterations);
  return {
    macKey: new Uint8Array(createHmac("sha256", master).update(salt).digest()),
    fingerprint: createHmac("sha256", master).update("rootstream/key-fingerprint").digest("hex")
      .slice(0, 32),
  };
}

/** Returns `manifest` with an `auth` block signing it under the passphrase. */
export async function signManifest<T extends Record<string, unknown>>(
  manifest: T,
  passphrase: string,
  options: { iterations?: number } = {},
): Promise<T & { auth: ManifestAuth }> {
  checkPassphrase(passphrase);
  const { auth: _ignored, ...body } = manifest as T & { auth?: unknown };
  const iterations = options.iterations ?? PBKDF2_ITERATIONS;
  const salt = crypto.getRandomValues(new Uint8Array(16));
  const keys = await manifestKeys(passphrase, salt, iterations);
  const hmac = createHmac("sha256", keys.macKey).update(canonicalJson(body)).digest("hex");
  return {
    ...body,
    auth: {
      alg: "hmac-sha256",
      salt: hex(salt),
      iterations,
      keyFingerprint: keys.fingerprint,
      hmac,
    },
  } as T & { auth: ManifestAuth };
}

/**
 * Checks a manifest's signature: BACKUP_KEY_MISMATCH when it was made with another key,
 * BACKUP_CORRUPT when it was altered or has no valid signature.
 */
export async function verifyManifest(
  manifest: Record<string, unknown>,
  passphrase: string,
  options: { name?: string } = {},
): Promise<void> {
  checkPassphrase(passphrase);
  const name = options.name ?? "the backup";
  const auth = manifest.auth as Partial<ManifestAuth> | undefined;
  if (
    !auth || auth.alg !== "hmac-sha256" || typeof auth.salt !== "string" ||
    !/^[0-9a-f]{32}$/.test(auth.salt) || typeof auth.iterations !== "number" ||
    auth.iterations < 1000 || auth.iterations > 10_000_000 ||
    typeof auth.keyFingerprint !== "string" || typeof auth.hmac !== "string"
  ) {
    throw new RuntimeError(
      "BACKUP_CORRUPT",
      `The manifest of ${name} has no valid signature block: it is damaged or not ours`,
    );
  }
  const keys = await manifestKeys(passphrase, Buffer.from(auth.salt, "hex"), auth.iterations);
  if (!constantTimeEqualHex(keys.fingerprint, auth.keyFingerprint)) {
    throw new RuntimeError(
      "BACKUP_KEY_MISMATCH",
      `Cannot use ${name}: it was encrypted with another key. HINT: set ` +
        "BACKUP_ENCRYPTION_KEY (or RS_SECRET_KEY) to the key in use when it was made",
    );
  }
  const { auth: _auth, ...body } = manifest;
  const hmac = createHmac("sha256", keys.macKey).update(canonicalJson(body)).digest("hex");
  if (!constantTimeEqualHex(hmac, auth.hmac)) {
    throw new RuntimeError(
      "BACKUP_CORRUPT",
      `The manifest of ${name} was altered after it was written: its signature does not match`,
    );
  }
}
