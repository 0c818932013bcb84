/**
 * Secrets at rest: AES-256-GCM under a key derived from the runtime's secret key
 * (RS_SECRET_KEY), with the key's id in every sealed value.
 *
 * Sealed format: `v1.<key id>.<iv>.<ciphertext+tag>` (base64url parts). The key id lets
 * an instance that was started with a different RS_SECRET_KEY say so plainly
 * (SECRET_KEY_MISMATCH) instead of reporting a corrupt value, and lets a key rotation
 * keep opening old values with `previousKeys` while sealing new ones with the current key.
 *
 * The AES key is not RS_SECRET_KEY itself but HKDF-SHA256(RS_SECRET_KEY, "secret-box/v1"),
 * so other users of the same root key (backup encryption, HMACs) never share a key with
 * this one. An optional `context` (e.g. `user_mfa:42`) is bound as GCM associated data:
 * a value copied onto another row does not open there.
 * @module
 */
import { Buffer } from "node:buffer";
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from "node:crypto";
import { RuntimeError } from "./errors.ts";

/** Seals and opens small secrets. */
export interface SecretBox {
  /** Id of the key new values are sealed with (8 hex characters, not secret). */
  readonly keyId: string;
  /** Encrypts `plaintext`; `context` must be given again to open it. */
  seal(plaintext: string | Uint8Array, options?: { context?: string }): string;
  /** Decrypts a sealed value; SECRET_KEY_MISMATCH or SECRET_INVALID when it cannot. */
  open(sealed: string, options?: { context?: string }): Uint8Array;
  /** {@linkcode SecretBox.open} decoded as UTF-8. */
  openText(sealed: string, options?: { context?: string }): string;
}

const VERSION = "v1";
const IV_BYTES = 12;
const TAG_BYTES = 16;
const SEALED_RE = /^v1\.([0-9a-f]{8})\.([A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]{22,})$/;

/** Derives `options.length` (32) bytes for `purpose` from a root key (HKDF-SHA256, empty salt). */
export function deriveKey(
  rootKey: Uint8Array,
  purpose: string,
  options: { length?: number } = {},
): Uint8Array {
  checkRootKey(rootKey);
  const length = options.length ?? 32;
  return new Uint8Array(hkdfSync("sha256", rootKey, new Uint8Array(0), purpose, length));
}

/** The public id of a root key: 8 hex characters derived from it (reveals nothing usable). */
export function secretKeyId(rootKey: Uint8Array): string {
  return Buffer.from(deriveKey(rootKey, "rootstream/key-id", { length: 4 })).toString("hex");
}

function checkRootKey(key: Uint8Array): void {
  if (!(key instanceof Uint8Array) || key.length !== 32) {
    throw new RuntimeError("CONFIG_INVALID", "The secret key must be 32 bytes");
  }
}

/** Creates a box sealing with `key`; `previousKeys` still open values sealed before a rotation. */
export function createSecretBox(
  key: Uint8Array,
  options: { previousKeys?: Uint8Array[] } = {},
): SecretBox {
  checkRootKey(key);
  const keys = new Map<string, Uint8Array>();
  for (const k of [key, ...(options.previousKeys ?? [])]) {
    const id = secretKeyId(k);
    if (!keys.has(id)) keys.set(id, deriveKey(k, "rootstream/secret-box/v1"));
  }
  const keyId = secretKeyId(key);
  const current = keys.get(keyId)!;

  function seal(plaintext: string | Uint8Array, sealOptions: { context?: string } = {}): string {
    const data = typeof plaintext === "string" ? Buffer.from(plaintext, "utf8") : plaintext;
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv("aes-256-gcm", current, iv);
    cipher.setAAD(Buffer.from(`${VERSION}.${keyId}.${sealOptions.context ?? ""}`, "utf8"));
    const body = Buffer.concat([cipher.update(data), cipher.final(), cipher.getAuthTag()]);
    return `${VERSION}.${keyId}.${Buffer.from(iv).toString("base64url")}.${
      body.toString("base64url")
    }`;
  }

  function open(sealed: string, openOptions: { context?: string } = {}): Uint8Array {
    const m = typeof sealed === "string" ? SEALED_RE.exec(sealed) : null;
    if (!m) {
      throw new RuntimeError(
        "SECRET_INVALID",
        "Cannot open a sealed secret: the format is invalid",
      );
    }
    const [, id, ivText, bodyText] = m;
    const k = keys.get(id);
    if (!k) {
      throw new RuntimeError(
        "SECRET_KEY_MISMATCH",
        `Cannot open a sealed secret: it was sealed with key ${id}, this instance has ${keyId}. ` +
          "HINT: every instance must run with the same RS_SECRET_KEY",
        { details: { keyId: id, currentKeyId: keyId } },
      );
    }
    const iv = Buffer.from(ivText, "base64url");
    const body = Buffer.from(bodyText, "base64url");
    if (body.length < TAG_BYTES) {
      throw new RuntimeError("SECRET_INVALID", "Cannot open a sealed secret: it is truncated");
    }
    try {
      const decipher = createDecipheriv("aes-256-gcm", k, iv);
      decipher.setAAD(Buffer.from(`${VERSION}.${id}.${openOptions.context ?? ""}`, "utf8"));
      decipher.setAuthTag(body.subarray(body.length - TAG_BYTES));
      const out = Buffer.concat([
        decipher.update(body.subarray(0, body.length - TAG_BYTES)),
        decipher.final(),
      ]);
      return new Uint8Array(out);
    } catch (err) {
      throw new RuntimeError(
        "SECRET_INVALID",
        "Cannot open a sealed secret: authentication failed (tampered, or another context)",
        { cause: err },
      );
    }
  }

  return {
    keyId,
    seal,
    open,
    openText: (sealed, o) => new TextDecoder().decode(open(sealed, o)),
  };
}
