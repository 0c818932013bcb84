/**
 * Requests between instances of one cluster (the review console reads every member's
 * `/actors`, `/charts`, `/metrics` and `/actors/stream`): each carries
 * `X-RS-Peer: v1:<from instance>:<expires ms>:<HMAC>`, the HMAC-SHA256 of the method, the
 * path with its query, both instance ids and the expiry, keyed by HKDF(RS_SECRET_KEY,
 * "rootstream/peer-http/v1"). Only instances that share the secret key can make one; it
 * is good for one path on one instance for a minute, for GET only, and grants operator
 * reads (api/authz/guard.ts), nothing else. So a member URL that an attacker planted
 * would get a credential only for the request it was sent. During a rotation of the key,
 * `previous` (RS_SECRET_KEY_PREVIOUS) is accepted too; requests are signed with the current one.
 * @module
 */
import { Buffer } from "node:buffer";
import { createHmac, hkdfSync, timingSafeEqual } from "node:crypto";

/** Signs and checks peer requests. */
export interface PeerSigner {
  /** This instance's id. */
  readonly instanceId: string;
  /** The header value for `GET path` sent to instance `to`. */
  sign(method: string, path: string, to: string): string;
  /** The sending instance's id when `header` is valid for this request here, else null. */
  verify(header: string, method: string, path: string): string | null;
}

/** Header that carries the signature. */
export const PEER_HEADER = "x-rs-peer";

const INSTANCE_RE = /^[\w.-]{1,64}$/;

/** How long a signature is accepted (ms), and how far ahead its expiry may be. */
const LIFETIME_MS = 60_000;

/** Creates the signer of this instance from the cluster's shared secret key. */
export function createPeerSigner(
  secretKey: Uint8Array,
  options: { instanceId: string; now: () => number; previous?: Uint8Array | null },
): PeerSigner {
  const derive = (root: Uint8Array) =>
    Buffer.from(hkdfSync("sha256", root, new Uint8Array(0), "rootstream/peer-http/v1", 32));
  const key = derive(secretKey);
  const keys = options.previous ? [key, derive(options.previous)] : [key];
  const { instanceId, now } = options;
  function mac(
    method: string,
    path: string,
    from: string,
    to: string,
    expires: number,
    k: Buffer = key,
  ) {
    return createHmac("sha256", k)
      .update(`v1\n${method.toUpperCase()}\n${path}\n${from}\n${to}\n${expires}`)
      .digest();
  }
  return {
    instanceId,
    sign(method, path, to) {
      const expires = now() + LIFETIME_MS;
      const sig = mac(method, path, instanceId, to, expires).toString("base64url");
      return `v1:${instanceId}:${expires}:${sig}`;
    },
    verify(header, method, path) {
      if (header.length > 256) return null;
      const parts = header.split(":");
      if (parts.length !== 4 || parts[0] !== "v1") return null;
      const [, from, exp, sig] = parts;
      if (!INSTANCE_RE.test(from) || !/^\d{1,15}$/.test(exp)) return null;
      const expires = Number(exp);
      const at = now();
      if (expires <= at || expires > at + LIFETIME_MS + 5_000) return null;
      // Compare the text, not decoded bytes: base64url's last character carries two unused
      // bits, so decoding would accept four spellings of one signature (an altered header
      // that still verified one time in sixteen).
      const given = Buffer.from(sig, "latin1");
      for (const k of keys) {
        const want = Buffer.from(
          mac(method, path, from, instanceId, expires, k).toString("base64url"),
        );
        if (given.length === want.length && timingSafeEqual(given, want)) return from;
      }
      return null;
    },
  };
}
