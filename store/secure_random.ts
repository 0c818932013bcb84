/**
 * Random bearer secrets and their digests, shared by the data-access modules.
 *
 * Secrets such as stream keys and session tokens are 256-bit random values, so a plain
 * SHA-256 (no salt, no slow hash) is enough to store them: there is nothing to guess,
 * and an unsalted digest lets the database look the secret up by index.
 * @module
 */
import { createHash, randomBytes } from "node:crypto";
import { Buffer } from "node:buffer";

/** `bytes` cryptographically random bytes, encoded as base64url without padding. */
export function randomToken(bytes = 32): string {
  if (!Number.isInteger(bytes) || bytes < 16 || bytes > 1024) {
    throw new RangeError(`Token size must be 16–1024 bytes, got ${bytes}`);
  }
  return Buffer.from(randomBytes(bytes)).toString("base64url");
}

/** The SHA-256 digest (32 bytes) of a secret's UTF-8 text, as stored in BYTEA columns. */
export function sha256(text: string): Uint8Array {
  return new Uint8Array(createHash("sha256").update(text, "utf8").digest());
}
