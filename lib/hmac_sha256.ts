/**
 * HMAC-SHA256 (RFC 2104, FIPS 180-4) in plain TypeScript, for the message path: with the
 * key's inner and outer pad blocks compressed once per key, a MAC of a 300-byte envelope is
 * six block compressions and no call into the runtime. Deno's node:crypto createHash costs
 * more per call than the hashing itself (measured in bench/runtime.ts: the sealing of a
 * message was the largest cost of the message path), and WebCrypto's HMAC is asynchronous.
 * tests/lib/hmac_sha256_test.ts checks it byte for byte against node:crypto's createHmac.
 * @module
 */

import { createHmac } from "node:crypto";

const K = new Int32Array([
  0x428a2f98,
  0x71374491,
  0xb5c0fbcf,
  0xe9b5dba5,
  0x3956c25b,
  0x59f111f1,
  0x923f82a4,
  0xab1c5ed5,
  0xd807aa98,
  0x12835b01,
  0x243185be,
  0x550c7dc3,
  0x72be5d74,
  0x80deb1fe,
  0x9bdc06a7,
  0xc19bf174,
  0xe49b69c1,
  0xefbe4786,
  0x0fc19dc6,
  0x240ca1cc,
  0x2de92c6f,
  0x4a7484aa,
  0x5cb0a9dc,
  0x76f988da,
  0x983e5152,
  0xa831c66d,
  0xb00327c8,
  0xbf597fc7,
  0xc6e00bf3,
  0xd5a79147,
  0x06ca6351,
  0x14292967,
  0x27b70a85,
  0x2e1b2138,
  0x4d2c6dfc,
  0x53380d13,
  0x650a7354,
  0x766a0abb,
  0x81c2c92e,
  0x92722c85,
  0xa2bfe8a1,
  0xa81a664b,
  0xc24b8b70,
  0xc76c51a3,
  0xd192e819,
  0xd6990624,
  0xf40e3585,
  0x106aa070,
  0x19a4c116,
  0x1e376c08,
  0x2748774c,
  0x34b0bcb5,
  0x391c0cb3,
  0x4ed8aa4a,
  0x5b9cca4f,
  0x682e6ff3,
  0x748f82ee,
  0x78a5636f,
  0x84c87814,
  0x8cc70208,
  0x90befffa,
  0xa4506ceb,
  0xbef9a3f7,
  0xc67178f2,
]);

const INIT = new Int32Array([
  0x6a09e667,
  0xbb67ae85,
  0x3c6ef372,
  0xa54ff53a,
  0x510e527f,
  0x9b05688c,
  0x1f83d9ab,
  0x5be0cd19,
]);

const W = new Int32Array(64);

/** Compresses the 64-byte block of `data` at `off` into `h`. */
function compress(h: Int32Array, data: Uint8Array, off: number): void {
  const w = W;
  for (let i = 0; i < 16; i++) {
    const j = off + i * 4;
    w[i] = (data[j] << 24) | (data[j + 1] << 16) | (data[j + 2] << 8) | data[j + 3];
  }
  for (let i = 16; i < 64; i++) {
    const a = w[i - 15], b = w[i - 2];
    const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
    const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
    w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
  }
  let a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
  for (let i = 0; i < 64; i++) {
    const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
    const ch = (e & f) ^ (~e & g);
    const t1 = (hh + S1 + ch + K[i] + w[i]) | 0;
    const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
    const maj = (a & b) ^ (a & c) ^ (b & c);
    const t2 = (S0 + maj) | 0;
    hh = g;
    g = f;
    f = e;
    e = (d + t1) | 0;
    d = c;
    c = b;
    b = a;
    a = (t1 + t2) | 0;
  }
  h[0] = (h[0] + a) | 0;
  h[1] = (h[1] + b) | 0;
  h[2] = (h[2] + c) | 0;
  h[3] = (h[3] + d) | 0;
  h[4] = (h[4] + e) | 0;
  h[5] = (h[5] + f) | 0;
  h[6] = (h[6] + g) | 0;
  h[7] = (h[7] + hh) | 0;
}

/** A key ready for MACs: the hash states after its inner and outer pad blocks. */
export interface HmacKey {
  readonly inner: Int32Array;
  readonly outer: Int32Array;
  /** The key itself, for messages long enough that node:crypto is cheaper. */
  readonly raw: Uint8Array;
}

/**
 * From this many UTF-16 units on, node:crypto's createHmac is cheaper than the code here:
 * its fixed cost per call (≈ 7 µs in Deno 2.5) against ≈ 4.6 µs per KiB here (measured:
 * 300 bytes 2.6 vs 7.4 µs, 2,000 bytes 11.8 vs 7.6 µs, 20,000 bytes 92.6 vs 20.2 µs). A batch
 * of envelopes (actors/runtime/transport.ts) is such a message.
 */
const NATIVE_FROM = 1500;

/** Prepares a key of at most 64 bytes (the runtime's keys are 32). */
export function hmacKey(key: Uint8Array): HmacKey {
  if (key.length > 64) throw new TypeError("HMAC keys over 64 bytes are not supported here");
  const pad = new Uint8Array(64);
  const inner = INIT.slice(), outer = INIT.slice();
  pad.fill(0x36);
  for (let i = 0; i < key.length; i++) pad[i] ^= key[i];
  compress(inner, pad, 0);
  pad.fill(0x5c);
  for (let i = 0; i < key.length; i++) pad[i] ^= key[i];
  compress(outer, pad, 0);
  return { inner, outer, raw: key.slice() };
}

const encoder = new TextEncoder();
let buf = new Uint8Array(4096);
const tail = new Uint8Array(128);
const h = new Int32Array(8);

/** Hashes `len` bytes of `data` on from state `h`, `prefix` bytes already hashed before. */
function finish(data: Uint8Array, len: number, prefix: number): void {
  const full = len - (len % 64);
  for (let off = 0; off < full; off += 64) compress(h, data, off);
  const rest = len - full;
  tail.fill(0);
  tail.set(data.subarray(full, len));
  tail[rest] = 0x80;
  const blocks = rest + 9 > 64 ? 2 : 1;
  const bits = (len + prefix) * 8;
  const end = blocks * 64;
  // Messages here are far below 2^32 bits: the high word of the length stays 0.
  tail[end - 4] = bits >>> 24;
  tail[end - 3] = bits >>> 16;
  tail[end - 2] = bits >>> 8;
  tail[end - 1] = bits;
  compress(h, tail, 0);
  if (blocks === 2) compress(h, tail, 64);
}

const digest = new Uint8Array(32);
const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/** HMAC-SHA256 of the UTF-8 bytes of `message` under `key`, as 43 characters of base64url. */
export function hmacBase64url(key: HmacKey, message: string): string {
  if (message.length >= NATIVE_FROM) {
    return createHmac("sha256", key.raw).update(message, "utf8").digest("base64url");
  }
  return hmacBase64urlHere(key, message);
}

/** hmacBase64url computed by the code here whatever the length (tests compare both). */
export function hmacBase64urlHere(key: HmacKey, message: string): string {
  // UTF-8 is at most 3 bytes per UTF-16 unit.
  if (buf.length < message.length * 3) buf = new Uint8Array(message.length * 3 + 1024);
  const len = encoder.encodeInto(message, buf).written;
  h.set(key.inner);
  finish(buf, len, 64);
  for (let i = 0; i < 8; i++) {
    digest[i * 4] = h[i] >>> 24;
    digest[i * 4 + 1] = h[i] >>> 16;
    digest[i * 4 + 2] = h[i] >>> 8;
    digest[i * 4 + 3] = h[i];
  }
  h.set(key.outer);
  finish(digest, 32, 64);
  let out = "";
  let i = 0;
  for (; i + 3 <= 32; i += 3) {
    const n = (((h[i >> 2] >>> (24 - 8 * (i & 3))) & 0xff) << 16) |
      (((h[(i + 1) >> 2] >>> (24 - 8 * ((i + 1) & 3))) & 0xff) << 8) |
      ((h[(i + 2) >> 2] >>> (24 - 8 * ((i + 2) & 3))) & 0xff);
    out += B64[n >>> 18] + B64[(n >>> 12) & 63] + B64[(n >>> 6) & 63] + B64[n & 63];
  }
  // 32 = 30 + 2: the last two bytes give three characters, no padding.
  const n = (((h[30 >> 2] >>> (24 - 8 * (30 & 3))) & 0xff) << 8) |
    ((h[31 >> 2] >>> (24 - 8 * (31 & 3))) & 0xff);
  out += B64[n >>> 10] + B64[(n >>> 4) & 63] + B64[(n << 2) & 63];
  return out;
}

/** Compares two strings in time that depends only on their length. */
export function sameText(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}
