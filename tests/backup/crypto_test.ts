import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import {
  authenticateFile,
  checkEncryptedFile,
  createAuthStream,
  createDecryptStream,
  createEncryptStream,
  type EncryptedFile,
  encryptionHeader,
  OPENSSL_PASS_ENV,
  opensslEncArgs,
  passphraseFromSecretKey,
  signManifest,
  verifyManifest,
} from "../../lib/backup_crypto.ts";
import { isRuntimeError } from "../../lib/errors.ts";

const KEY = "correct horse battery staple 42";
const ROOT = new URL("../../", import.meta.url);
const RSS_FIXTURE = new URL("tests/fixtures/encrypt_rss.ts", ROOT).pathname;

async function encrypt(data: Uint8Array, passphrase = KEY) {
  const enc = createEncryptStream(passphrase);
  const chunks: Uint8Array[] = [];
  // Uneven chunks, as a pipe delivers them.
  const parts = [data.subarray(0, 7), data.subarray(7, 70_000), data.subarray(70_000)];
  await ReadableStream.from(parts).pipeThrough(enc.stream).pipeTo(
    new WritableStream({ write: (c) => void chunks.push(c) }),
  );
  const bytes = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let o = 0;
  for (const c of chunks) bytes.set(c, (o += c.length) - c.length);
  return { bytes, meta: await enc.result };
}

async function decrypt(bytes: Uint8Array, meta: EncryptedFile, passphrase = KEY) {
  const dec = createDecryptStream(passphrase, {
    hmac: meta.hmac,
    sha256: meta.sha256,
    size: meta.size,
  });
  let n = 0;
  const out: Uint8Array[] = [];
  await ReadableStream.from([bytes.subarray(0, 10), bytes.subarray(10)]).pipeThrough(dec.stream)
    .pipeTo(new WritableStream({ write: (c) => void (n += c.length, out.push(c)) }));
  await dec.result;
  return { size: n, chunks: out };
}

async function sh(script: string, env: Record<string, string>, stdin?: Uint8Array) {
  const child = new Deno.Command("bash", {
    args: ["-c", `set -euo pipefail; ${script}`],
    env,
    stdin: stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // Feed stdin while output() drains stdout, or a full pipe would block both sides.
  const feeding = stdin
    ? (async () => {
      const w = child.stdin.getWriter();
      await w.write(stdin);
      await w.close();
    })()
    : Promise.resolve();
  const [out] = await Promise.all([child.output(), feeding]);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return out.stdout;
}

Deno.test("backup encryption (openssl-compatible AES-256-CBC + HMAC-SHA256)", async (t) => {
  const data = new Uint8Array(randomBytes(300_001));
  const { bytes, meta } = await encrypt(data);

  await t.step("writes the openssl Salted__ format and measures it", () => {
    assert.equal(new TextDecoder().decode(bytes.subarray(0, 8)), "Salted__");
    assert.equal(meta.size, bytes.length);
    assert.equal(meta.plainSize, data.length);
    // CBC pads to whole 16-byte blocks after the 16-byte header.
    assert.equal(bytes.length, 16 + (Math.floor(data.length / 16) + 1) * 16);
  });

  await t.step("round-trips through the decrypting stream", async () => {
    const { chunks } = await decrypt(bytes, meta);
    const joined = new Uint8Array(data.length);
    let o = 0;
    for (const c of chunks) {
      joined.set(c, o);
      o += c.length;
    }
    assert.deepEqual(joined, data);
  });

  await t.step("openssl enc -d decrypts it byte for byte (the documented command)", async () => {
    const plain = await sh(
      "openssl enc -d -aes-256-cbc -pbkdf2 -iter 100000 -md sha256 -pass env:BACKUP_ENCRYPTION_KEY",
      { BACKUP_ENCRYPTION_KEY: KEY },
      bytes,
    );
    assert.deepEqual(plain, data);
  });

  await t.step("openssl kdf + dgst reproduce the HMAC (the documented check)", async () => {
    const file = await Deno.makeTempFile();
    try {
      await Deno.writeFile(file, bytes);
      const out = new TextDecoder().decode(
        await sh(
          `SALT=$(head -c 16 "$FILE" | tail -c 8 | od -An -tx1 | tr -d ' \\n')
           MACKEY=$(openssl kdf -keylen 80 -kdfopt digest:SHA256 -kdfopt pass:"$BACKUP_ENCRYPTION_KEY" \\
             -kdfopt hexsalt:$SALT -kdfopt iter:100000 PBKDF2 | tr -d ':\\n' | tail -c 64)
           openssl dgst -sha256 -mac HMAC -macopt hexkey:$MACKEY "$FILE"`,
          { BACKUP_ENCRYPTION_KEY: KEY, FILE: file },
        ),
      );
      assert.match(out.trim(), new RegExp(`= ${meta.hmac}$`));
    } finally {
      await Deno.remove(file);
    }
  });

  await t.step("a flipped byte, a truncation or another key fail the stream", async () => {
    const flipped = bytes.slice();
    flipped[5000] ^= 1;
    await assert.rejects(decrypt(flipped, meta), (e) => isRuntimeError(e, "BACKUP_CORRUPT"));
    await assert.rejects(
      decrypt(bytes.subarray(0, bytes.length - 16), meta),
      (e) => isRuntimeError(e, "BACKUP_CORRUPT") && /truncated/.test(e.message),
    );
    await assert.rejects(
      decrypt(bytes, meta, "another passphrase entirely"),
      (e) => isRuntimeError(e, "BACKUP_CORRUPT") && /HMAC/.test(e.message),
    );
  });

  await t.step("checkEncryptedFile types what is wrong without decrypting", async () => {
    const check = (b: Uint8Array, key = KEY) =>
      checkEncryptedFile(ReadableStream.from([b]), key, meta).then((r) => r.status);
    assert.equal(await check(bytes), "ok");
    assert.equal(await check(bytes.subarray(0, 1000)), "size_mismatch");
    const flipped = bytes.slice();
    flipped[100] ^= 0x80;
    assert.equal(await check(flipped), "checksum_mismatch");
    assert.equal(await check(bytes, "another passphrase entirely"), "hmac_mismatch");
  });

  await t.step("streams in constant memory (RSS flat over 300 MiB more data)", async () => {
    // Measured in a process of its own: under `deno test --parallel` this process's RSS
    // also holds whatever the other test files do meanwhile.
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--quiet", "--config", new URL("deno.json", ROOT).pathname, RSS_FIXTURE],
      cwd: ROOT.pathname,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, `encrypt_rss.ts failed: ${stderr}`);
    const { warm, peak, bytes } = JSON.parse(new TextDecoder().decode(out.stdout));
    assert.ok(bytes > 400 * 1024 * 1024, `only ${bytes} bytes came out`);
    assert.ok(peak - warm < 64 * 1024 * 1024, `RSS grew ${(peak - warm) >> 20} MiB`);
  });
});

/** Pipes `chunks` through `stage`; returns what came out. */
async function through(
  stage: TransformStream<Uint8Array, Uint8Array>,
  chunks: Uint8Array[],
): Promise<Uint8Array> {
  const out: Uint8Array[] = [];
  await ReadableStream.from(chunks).pipeThrough(stage).pipeTo(
    new WritableStream({ write: (c) => void out.push(c) }),
  );
  const bytes = new Uint8Array(out.reduce((n, c) => n + c.length, 0));
  let o = 0;
  for (const c of out) bytes.set(c, (o += c.length) - c.length);
  return bytes;
}

/** Splits into uneven pieces, as a pipe delivers them. */
function pieces(bytes: Uint8Array): Uint8Array[] {
  const cuts = [0, 5, 17, 70_000, 1_500_000, bytes.length].filter((n) => n <= bytes.length);
  return cuts.slice(1).map((end, i) => bytes.subarray(cuts[i], end));
}

Deno.test("openssl does the AES, one batched pass authenticates (the backup pipeline)", async (t) => {
  // Over the 1 MiB batch, so that the last batch is held back until the end.
  const data = new Uint8Array(randomBytes(2_500_003));
  const salt = new Uint8Array(randomBytes(8));
  const body = await sh(
    `openssl ${opensslEncArgs({ encrypt: salt }).join(" ")}`,
    { [OPENSSL_PASS_ENV]: KEY },
    data,
  );
  const sealing = createAuthStream(KEY, { sha256: true, prefix: encryptionHeader(salt) });
  const stored = await through(sealing.stream, pieces(body));
  const sealed = await sealing.result;

  await t.step("the stored file is the openssl format the JS decryptor reads", async () => {
    assert.equal(sealed.size, stored.length);
    assert.equal(stored.length, 16 + body.length);
    const { chunks } = await decrypt(stored, {
      size: sealed.size,
      sha256: sealed.sha256!,
      hmac: sealed.hmac,
      plainSize: data.length,
    });
    assert.deepEqual(new Uint8Array(Buffer.concat(chunks)), data);
  });

  await t.step("openssl -d with the same arguments restores it byte for byte", async () => {
    const plain = await sh(
      `openssl ${opensslEncArgs({ decrypt: true }).join(" ")}`,
      { [OPENSSL_PASS_ENV]: KEY },
      stored,
    );
    assert.deepEqual(plain, data);
  });

  await t.step("checking passes the bytes through unchanged when they authenticate", async () => {
    const check = createAuthStream(KEY, { expect: { hmac: sealed.hmac, size: sealed.size } });
    assert.deepEqual(await through(check.stream, pieces(stored)), stored);
    assert.equal((await check.result).hmac, sealed.hmac);
  });

  await t.step("a flipped byte fails at the end and the last batch is held back", async () => {
    const bad = stored.slice();
    bad[100] ^= 1;
    const check = createAuthStream(KEY, { expect: { hmac: sealed.hmac, size: sealed.size } });
    const out: Uint8Array[] = [];
    await assert.rejects(
      ReadableStream.from(pieces(bad)).pipeThrough(check.stream).pipeTo(
        new WritableStream({ write: (c) => void out.push(c) }),
      ),
      (e) => isRuntimeError(e, "BACKUP_CORRUPT") && /HMAC/.test(e.message),
    );
    await assert.rejects(check.result, (e) => isRuntimeError(e, "BACKUP_CORRUPT"));
    const passed = out.reduce((n, c) => n + c.length, 0);
    assert.ok(passed < stored.length, `${passed} of ${stored.length} bytes passed`);
  });

  await t.step("openssl drawing its own salt, authenticated on disk: the same format", async () => {
    const dir = await Deno.makeTempDir();
    try {
      const file = `${dir}/x.enc`;
      await sh(
        `openssl ${opensslEncArgs({ encrypt: null }).join(" ")} -out "${file}"`,
        { [OPENSSL_PASS_ENV]: KEY },
        data,
      );
      const onDisk = await authenticateFile(file, KEY);
      const bytes = await Deno.readFile(file);
      const check = createAuthStream(KEY, {
        expect: { hmac: onDisk.hmac, sha256: onDisk.sha256!, size: onDisk.size },
      });
      await through(check.stream, pieces(bytes));
      assert.equal((await check.result).sha256, onDisk.sha256);
      const plain = await sh(
        `openssl ${opensslEncArgs({ decrypt: true }).join(" ")} -in "${file}"`,
        { [OPENSSL_PASS_ENV]: KEY },
      );
      assert.deepEqual(plain, data);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });

  await t.step("a file hashed while it is still written: the same figures as after", async () => {
    const dir = await Deno.makeTempDir();
    try {
      const file = `${dir}/growing.enc`;
      using out = await Deno.open(file, { write: true, create: true });
      let release!: () => void;
      const writer = (async () => {
        // The header arrives in two writes; the reader must wait at each end it finds.
        for (let at = 0; at < stored.length;) {
          const size = at === 0 ? 7 : 700_001;
          const piece = stored.subarray(at, Math.min(at + size, stored.length));
          for (let w = 0; w < piece.length;) w += await out.write(piece.subarray(w));
          at += piece.length;
          await new Promise((r) => setTimeout(r, 15));
        }
      })();
      const done = new Promise<void>((r) => release = r);
      writer.then(release);
      const whileWritten = await authenticateFile(file, KEY, { growing: done });
      await writer;
      assert.deepEqual(whileWritten, await authenticateFile(file, KEY));
      assert.equal(whileWritten.size, stored.length);
      assert.equal(whileWritten.hmac, sealed.hmac);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });

  await t.step("another key and a missing header are BACKUP_CORRUPT", async () => {
    const other = createAuthStream("another passphrase 0123456789", {
      expect: { hmac: sealed.hmac },
    });
    await assert.rejects(
      through(other.stream, pieces(stored)),
      (e) => isRuntimeError(e, "BACKUP_CORRUPT"),
    );
    const headless = createAuthStream(KEY, { expect: { hmac: sealed.hmac } });
    await assert.rejects(
      through(headless.stream, [body.subarray(0, 4096)]),
      (e) => isRuntimeError(e, "BACKUP_CORRUPT") && /Salted__/.test(e.message),
    );
  });
});

Deno.test("manifest signatures", async (t) => {
  const manifest = { name: "20250115T020000Z-full-3fa9c1", files: [{ size: 10 }] };
  const signed = await signManifest(manifest, KEY);

  await t.step("verify accepts the signed manifest, in any key order", async () => {
    await verifyManifest(signed, KEY);
    const reordered = Object.fromEntries(Object.entries(signed).reverse());
    await verifyManifest(reordered, KEY);
  });

  await t.step("another key is BACKUP_KEY_MISMATCH, an edit is BACKUP_CORRUPT", async () => {
    await assert.rejects(
      verifyManifest(signed, "another passphrase entirely"),
      (e) => isRuntimeError(e, "BACKUP_KEY_MISMATCH"),
    );
    await assert.rejects(
      verifyManifest({ ...signed, files: [{ size: 11 }] }, KEY),
      (e) => isRuntimeError(e, "BACKUP_CORRUPT"),
    );
    const { auth: _auth, ...unsigned } = signed;
    await assert.rejects(verifyManifest(unsigned, KEY), (e) => isRuntimeError(e, "BACKUP_CORRUPT"));
  });

  await t.step("the default passphrase is derived from RS_SECRET_KEY, per key", () => {
    const a = new Uint8Array(32).fill(1);
    const b = new Uint8Array(32).fill(2);
    assert.equal(passphraseFromSecretKey(a), passphraseFromSecretKey(a));
    assert.notEqual(passphraseFromSecretKey(a), passphraseFromSecretKey(b));
    assert.notEqual(passphraseFromSecretKey(a), btoa(String.fromCharCode(...a)));
  });
});
