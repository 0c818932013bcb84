/**
 * What a request says about its client: the device fingerprint it binds sessions to, its
 * address, its user agent and, behind trusted proxies, its location. Sessions record it;
 * rate limits key on the address.
 *
 * The address: with `trustedProxyHops` = 0 the socket's peer. With N > 0 the runtime sits
 * behind N proxies it trusts, each of which appends the address it saw to
 * `X-Forwarded-For` (or, the first, overwrites the header): the client is the N-th entry
 * from the RIGHT. Entries further left were written by the client itself and prove
 * nothing, so they are never read: a spoofed header cannot change the address a limit
 * keys on.
 * @module
 */
import { isIP } from "node:net";
import type { Context } from "hono";
import type { RequestContext } from "../actors/sessions/mod.ts";

/** The socket peer's address, or null. */
function socketIp(c: Context): string | null {
  const info = c.env as { remoteAddr?: { hostname?: string } } | undefined;
  const host = info?.remoteAddr?.hostname;
  return host && isIP(host) ? host : null;
}

/**
 * The N-th entry from the right of an `X-Forwarded-For` value (N ≥ 1), or the leftmost one
 * when it has fewer (the request skipped an outer proxy); null when that entry is no IP.
 * Scans from the right and stops after N entries: a long header costs no more.
 */
export function forwardedFor(header: string, hops: number): string | null {
  let end = header.length;
  let entry = "";
  for (let i = 0; i < hops; i++) {
    const comma = header.lastIndexOf(",", end - 1);
    entry = header.slice(comma + 1, end).trim();
    if (comma < 0) break;
    end = comma;
  }
  return entry && isIP(entry) ? entry : null;
}

/** The client's address, or null when unknown. */
export function clientIp(c: Context, trustedProxyHops: number): string | null {
  if (trustedProxyHops > 0) {
    const header = c.req.header("x-forwarded-for");
    // No header, or an entry that is no address: the chain of proxies is broken, and the
    // peer (a proxy) is the only address known for sure.
    if (header) return forwardedFor(header, trustedProxyHops) ?? socketIp(c);
  }
  return socketIp(c);
}

/** The client details of a request. */
export function requestContext(c: Context, trustedProxyHops: number): RequestContext {
  const fingerprint = c.req.header("x-device-fingerprint")?.trim();
  return {
    fingerprint: fingerprint ? fingerprint.slice(0, 255) : null,
    ipAddress: clientIp(c, trustedProxyHops),
    userAgent: c.req.header("user-agent") ?? null,
    geoLocation: trustedProxyHops > 0 ? c.req.header("x-geo-location") ?? null : null,
  };
}
