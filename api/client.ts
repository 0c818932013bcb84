/**
 * What a request says about its client: the device fingerprint it binds sessions to, its
 * address (the socket's, or with `trustProxy` the first `X-Forwarded-For` entry), its user
 * agent and, behind a trusted proxy, its location. Sessions record it; rate limits key on
 * the address.
 * @module
 */
import { isIP } from "node:net";
import type { Context } from "hono";
import type { RequestContext } from "../actors/sessions/mod.ts";

/** The client's address, or null when unknown. */
export function clientIp(c: Context, trustProxy: boolean): string | null {
  if (trustProxy) {
    const forwarded = c.req.header("x-forwarded-for")?.split(",")[0]?.trim();
    if (forwarded && isIP(forwarded)) return forwarded;
  }
  const info = c.env as { remoteAddr?: { hostname?: string } } | undefined;
  const host = info?.remoteAddr?.hostname;
  return host && isIP(host) ? host : null;
}

/** The client details of a request. */
export function requestContext(c: Context, trustProxy: boolean): RequestContext {
  const fingerprint = c.req.header("x-device-fingerprint")?.trim();
  return {
    fingerprint: fingerprint ? fingerprint.slice(0, 255) : null,
    ipAddress: clientIp(c, trustProxy),
    userAgent: c.req.header("user-agent") ?? null,
    geoLocation: trustProxy ? c.req.header("x-geo-location") ?? null : null,
  };
}
